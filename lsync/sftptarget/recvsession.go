package sftptarget

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/receiver"
)

// recvSession is a session with `lockstep receive` on the peer, started
// over an SSH exec channel: the peer resolves every path below the root
// without following symlinks, so a hostile docroot can make an operation
// fail but never redirect it (see package receiver).
type recvSession struct {
	*transport
	host   string
	root   string
	sess   *ssh.Session
	client *receiver.Client
}

var (
	_ lsync.Target           = (*recvSession)(nil)
	_ lsync.DirRemover       = (*recvSession)(nil)
	_ lsync.ProtocolReporter = (*recvSession)(nil)
	_ lsync.Chowner          = (*recvSession)(nil)
	_ lsync.OwnerMapper      = (*recvSession)(nil)
)

// receiverCommand is what the peer's shell runs. A forced command in
// authorized_keys replaces it (and then fixes the root).
func (c *Connector) receiverCommand() string {
	return c.cfg.ReceiverCommand + " receive --root " + shellQuote(c.cfg.Path)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// peerStderr keeps the start of what the receiver writes to stderr (the
// reason it did not start: "command not found", a usage error) until the
// hello succeeded, and logs it afterwards.
type peerStderr struct {
	mu      sync.Mutex
	early   bytes.Buffer
	forward bool
	done    chan struct{}
}

const maxEarlyStderr = 4 << 10

func (p *peerStderr) run(r io.Reader, logger *slog.Logger) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		forward := p.forward
		if !forward && p.early.Len() < maxEarlyStderr {
			p.early.WriteString(line)
			p.early.WriteByte('\n')
		}
		p.mu.Unlock()
		if forward {
			logger.Warn("receiver on the peer says", "line", line)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *peerStderr) startForwarding() {
	p.mu.Lock()
	p.forward = true
	p.mu.Unlock()
}

func (p *peerStderr) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.TrimSpace(p.early.String())
}

// startReceiver runs the receiver on d and says hello in this build's
// protocol version, and again in the peer's when the peer runs an older
// receiver this build still speaks (it exits after answering a hello it
// cannot serve). On failure the SSH connection stays usable (for the
// SFTP fallback) unless the setup deadline fired.
func (c *Connector) startReceiver(ctx context.Context, d *dialed) (*recvSession, error) {
	s, err := c.startReceiverAs(ctx, d, receiver.Version)
	var ve *receiver.VersionError
	if errors.As(err, &ve) && ve.Older() && !d.expired() && ctx.Err() == nil {
		c.logger.Info("the peer's receiver is older; speaking its protocol version", "version", ve.Server, "ours", receiver.Version)
		return c.startReceiverAs(ctx, d, ve.Server)
	}
	return s, err
}

// startReceiverAs is startReceiver in one protocol version.
func (c *Connector) startReceiverAs(ctx context.Context, d *dialed, version uint32) (*recvSession, error) {
	sess, err := d.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open exec channel: %w", err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		_ = sess.Close()
		return nil, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		_ = sess.Close()
		return nil, err
	}
	stderr, err := sess.StderrPipe()
	if err != nil {
		_ = sess.Close()
		return nil, err
	}
	cmd := c.receiverCommand()
	if err := sess.Start(cmd); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("the peer refused to run %q: %w", cmd, err)
	}
	errOut := &peerStderr{done: make(chan struct{})}
	go errOut.run(stderr, c.logger)

	type helloResult struct {
		root string
		err  error
	}
	hello := make(chan helloResult, 1)
	go func() {
		root, err := receiver.Hello(stdout, stdin, version)
		hello <- helloResult{root, err}
	}()
	// Half the connect timeout: a peer that runs something else than a
	// receiver (a forced command that waits for input) must leave time
	// for the SFTP fallback on the same connection.
	timer := time.NewTimer(max(c.cfg.ConnectTimeout/2, time.Second))
	defer timer.Stop()
	var res helloResult
	select {
	case res = <-hello:
	case <-timer.C:
		_ = sess.Close()
		res = <-hello
		res.err = fmt.Errorf("no hello from %q within %s", cmd, max(c.cfg.ConnectTimeout/2, time.Second))
	case <-ctx.Done():
		_ = sess.Close()
		<-hello
		c.waitStderr(errOut)
		return nil, ctx.Err()
	}
	if res.err != nil {
		reason := c.explainReceiverFailure(sess, cmd, res.err, errOut)
		_ = sess.Close()
		c.waitStderr(errOut)
		return nil, reason
	}
	if res.root != c.cfg.Path {
		_ = sess.Close()
		c.waitStderr(errOut)
		return nil, fmt.Errorf("the receiver on the peer serves %q but the target path is %q (a forced command in authorized_keys must name the same root)", res.root, c.cfg.Path)
	}
	if !d.ready() {
		_ = sess.Close()
		_ = d.client.Close()
		c.waitStderr(errOut)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("connection setup with %s timed out after %s", c.addr, c.cfg.ConnectTimeout)
	}
	errOut.startForwarding()
	s := &recvSession{
		transport: newTransport(c, d.client),
		host:      c.cfg.Host,
		root:      c.cfg.Path,
		sess:      sess,
		client:    receiver.NewClient(stdout, stdin, version),
	}
	s.wg.Go(func() { <-errOut.done })
	s.wg.Go(func() {
		select {
		case <-s.client.Done():
			// The receiver exited or its channel broke while the SSH
			// connection may still be up: the session is unusable.
			s.fail(fmt.Errorf("receiver: %w", s.client.Err()))
		case <-s.done:
		}
	})
	c.logger.Info("connected", "addr", c.addr, "user", c.cfg.User, "path", c.cfg.Path,
		"protocol", "lockstep-receiver", "version", version)
	return s, nil
}

// waitStderr gives the stderr reader of a failed start a moment to see
// the channel close. It always ends once the connection closes.
func (c *Connector) waitStderr(p *peerStderr) {
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

// explainReceiverFailure names the cause: the command missing on the peer
// (exit 127), a receiver of another protocol version, or what it said.
func (c *Connector) explainReceiverFailure(sess *ssh.Session, cmd string, err error, errOut *peerStderr) error {
	var ve *receiver.VersionError
	if errors.As(err, &ve) {
		if ve.Older() {
			return err // said again in the peer's version by startReceiver
		}
		return fmt.Errorf("%w (upgrade lockstep on both nodes to the same release)", err)
	}
	// The exit status follows the end of output closely.
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-time.After(2 * time.Second):
		_ = sess.Close()
		werr = <-waited
	}
	c.waitStderr(errOut)
	said := errOut.text()
	if said != "" {
		said = "; it said: " + said
	}
	var ee *ssh.ExitError
	if errors.As(werr, &ee) {
		if ee.ExitStatus() == 127 {
			return fmt.Errorf("%q is not installed on the peer (exit 127; set receiver_command to its path)%s", c.cfg.ReceiverCommand, said)
		}
		return fmt.Errorf("%q exited with status %d before the hello%s", cmd, ee.ExitStatus(), said)
	}
	return fmt.Errorf("%q: %w%s", cmd, err, said)
}

// Close implements lsync.Target.
func (s *recvSession) Close() error {
	s.close(func() { _ = s.sess.Close() })
	<-s.client.Done()
	return nil
}

// check classifies an error: a reply from the receiver concerns one path;
// anything else means the session is unusable.
func (s *recvSession) check(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var re *receiver.Error
	if errors.As(err, &re) {
		return fmt.Errorf("%s: %w", s.host, err)
	}
	if dead := s.deadErr(); dead != nil {
		return s.disconnected(fmt.Errorf("%w (%w)", dead, err))
	}
	s.fail(err)
	return s.disconnected(err)
}

func (s *recvSession) abs(rel string) string { return path.Join(s.root, rel) }

func entryOf(rel string, e receiver.Entry) lsync.Entry {
	return lsync.Entry{Path: rel, Mode: e.Mode, Size: e.Size, ModTime: e.ModTime, LinkTarget: e.LinkTarget, UID: e.UID, GID: e.GID, Owned: true}
}

// Walk implements lsync.Target.
func (s *recvSession) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	if err := s.alive(ctx); err != nil {
		return err
	}
	return walkTarget(ctx, sub, s.Stat, s.readDir, fn)
}

func (s *recvSession) readDir(ctx context.Context, rel string) ([]lsync.Entry, error) {
	list, err := s.client.ReadDir(ctx, rel)
	if err != nil {
		return nil, s.check(err)
	}
	out := make([]lsync.Entry, 0, len(list))
	for _, e := range list {
		child := e.Name
		if rel != "" {
			child = rel + "/" + e.Name
		}
		out = append(out, entryOf(child, e))
	}
	return out, nil
}

// Stat implements lsync.Target.
func (s *recvSession) Stat(ctx context.Context, rel string) (lsync.Entry, error) {
	rel, err := clean(rel)
	if err != nil {
		return lsync.Entry{}, err
	}
	e, err := s.client.Stat(ctx, rel)
	if err != nil {
		return lsync.Entry{}, s.check(err)
	}
	return entryOf(rel, e), nil
}

// chunkBufs recycles the buffers a file is read into before its put;
// smallPutBufs those of files known to be small. Most files of a docroot are
// a few KiB: a 256 KiB buffer each, with a hundred uploads in flight,
// made up a third of a big pass's memory.
var (
	chunkBufs    = sync.Pool{New: func() any { b := make([]byte, receiver.MaxPut); return &b }}
	smallPutBufs = sync.Pool{New: func() any { b := make([]byte, smallPut); return &b }}
)

// smallPut is the buffer for a file whose reader says it is smaller (a
// file that grew meanwhile still fits the chunked path).
const smallPut = 16 << 10

// sizer is implemented by readers that know the size of what they read
// (lsync's upload reader: the file's size when it was opened).
type sizer interface{ Size() int64 }

// largeFileChunks bounds the chunks of one file in flight.
const largeFileChunks = 8

// WriteFile implements lsync.Target: a file up to receiver.MaxPut is one
// request; a larger one is written in chunks, pipelined, then committed.
func (s *recvSession) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.alive(ctx); err != nil {
		return err
	}
	if err := s.writeFile(ctx, rel, r, mode, mtime, nil); err != nil {
		var serr *sourceError
		if errors.As(err, &serr) {
			return serr.err
		}
		return fmt.Errorf("upload %s:%s: %w", s.host, s.abs(rel), err)
	}
	return nil
}

// WriteFileIf implements lsync.GuardedWriter. The receiver renames on its
// side, so the path is looked at right before the request that publishes
// the file (a round trip of a window).
func (s *recvSession) WriteFileIf(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, expect *lsync.Entry) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.alive(ctx); err != nil {
		return err
	}
	guard := func() error { return guardPath(ctx, s.Stat, rel, expect) }
	if err := s.writeFile(ctx, rel, r, mode, mtime, guard); err != nil {
		var serr *sourceError
		if errors.As(err, &serr) {
			return serr.err
		}
		return fmt.Errorf("upload %s:%s: %w", s.host, s.abs(rel), err)
	}
	return nil
}

func (s *recvSession) writeFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, guard func() error) error {
	cr := newContextReader(ctx, r)
	pool := &chunkBufs
	if sz, ok := r.(sizer); ok && sz.Size() < smallPut {
		pool = &smallPutBufs
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	n, rerr := readFull(cr, buf)
	switch {
	case rerr == io.EOF:
		if guard != nil {
			if err := guard(); err != nil {
				return err
			}
		}
		return s.check(s.client.Put(ctx, rel, mode, mtime, buf[:n]))
	case rerr != nil:
		return rerr
	}
	h, err := s.client.Create(ctx, rel)
	if err != nil {
		return s.check(err)
	}
	if err := s.writeChunks(ctx, h, buf[:n], cr); err != nil {
		if s.deadErr() == nil {
			_ = s.client.Abort(context.WithoutCancel(ctx), h)
		}
		return err
	}
	if guard != nil {
		if err := guard(); err != nil {
			_ = s.client.Abort(context.WithoutCancel(ctx), h)
			return err
		}
	}
	return s.check(s.client.Commit(ctx, h, mode, mtime))
}

func (s *recvSession) writeChunks(ctx context.Context, h uint32, first []byte, r io.Reader) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(largeFileChunks)
	chunk := append([]byte(nil), first...)
	var off int64
	for {
		data, at := chunk, off
		g.Go(func() error { return s.check(s.client.Write(gctx, h, at, data)) })
		off += int64(len(chunk))
		chunk = make([]byte, receiver.MaxPut)
		m, rerr := readFull(r, chunk)
		chunk = chunk[:m]
		if rerr == io.EOF {
			if m > 0 {
				data, at := chunk, off
				g.Go(func() error { return s.check(s.client.Write(gctx, h, at, data)) })
			}
			return g.Wait()
		}
		if rerr != nil {
			_ = g.Wait()
			return rerr
		}
		if gctx.Err() != nil {
			return g.Wait()
		}
	}
}

// Mkdir implements lsync.Target.
func (s *recvSession) Mkdir(ctx context.Context, rel string, mode fs.FileMode) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	// From version 4 on, a requested owner goes with the mkdir (see
	// lsync.OwnerRequest): no chown by path after it.
	own := lsync.RequestedOwner(ctx)
	var o *lsync.Owner
	if own != nil {
		o = &own.Owner
	}
	res := s.client.MkdirOwned(ctx, rel, mode, o)
	if res.Err != nil {
		return s.check(res.Err)
	}
	switch {
	case own == nil:
	case res.OwnerErr != nil:
		own.Err = fmt.Errorf("chown %s:%s: %w", s.host, s.abs(rel), s.check(res.OwnerErr))
	case res.OwnerSet:
		own.Done = true
	}
	return nil
}

// Symlink implements lsync.Target.
func (s *recvSession) Symlink(ctx context.Context, rel, linkTarget string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	return s.check(s.client.Symlink(ctx, rel, linkTarget))
}

// Chtimes implements lsync.Target.
func (s *recvSession) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	return s.check(s.client.Chtimes(ctx, rel, mtime))
}

// Chmod implements lsync.Target.
func (s *recvSession) Chmod(ctx context.Context, rel string, mode fs.FileMode) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	return s.check(s.client.Chmod(ctx, rel, permBits(mode)))
}

// Lchown implements lsync.Chowner: the receiver maps own's names to the
// peer's ids (protocol version 3; the numbers before).
func (s *recvSession) Lchown(ctx context.Context, rel string, own lsync.Owner) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	return s.check(s.client.Lchown(ctx, rel, own))
}

// MapsOwnerNames implements lsync.OwnerMapper.
func (s *recvSession) MapsOwnerNames() bool { return s.client.MapsOwnerNames() }

// MapOwner implements lsync.OwnerMapper.
func (s *recvSession) MapOwner(ctx context.Context, own lsync.Owner) (uid, gid uint32, err error) {
	uid, gid, err = s.client.MapOwner(ctx, own)
	return uid, gid, s.check(err)
}

// Rename implements lsync.Target.
func (s *recvSession) Rename(ctx context.Context, from, to string) error {
	from, err := clean(from)
	if err != nil {
		return err
	}
	to, err = clean(to)
	if err != nil {
		return err
	}
	return s.check(s.client.Rename(ctx, from, to))
}

// RemoveAll implements lsync.Target.
func (s *recvSession) RemoveAll(ctx context.Context, rel string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	return s.check(s.client.RemoveAll(ctx, rel))
}

// RemoveEmptyDir implements lsync.DirRemover.
func (s *recvSession) RemoveEmptyDir(ctx context.Context, rel string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	err = s.client.Rmdir(ctx, rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return s.check(err)
}

// Open implements lsync.Target.
func (s *recvSession) Open(ctx context.Context, rel string) (io.ReadCloser, error) {
	rel, err := clean(rel)
	if err != nil {
		return nil, err
	}
	h, _, err := s.client.Open(ctx, rel)
	if err != nil {
		return nil, s.check(err)
	}
	return &recvReader{s: s, ctx: ctx, h: h}, nil
}

// recvReader reads a remote file in chunks, one request ahead of the
// caller.
type recvReader struct {
	s      *recvSession
	ctx    context.Context
	h      uint32
	off    int64
	buf    []byte
	eof    bool
	closed bool
}

func (r *recvReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		data, err := r.s.client.ReadAt(r.ctx, r.h, r.off, receiver.MaxPut)
		if err != nil {
			return 0, r.s.check(err)
		}
		if len(data) == 0 {
			r.eof = true
			return 0, io.EOF
		}
		r.buf = data
		r.off += int64(len(data))
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *recvReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	return r.s.check(r.s.client.CloseFile(context.WithoutCancel(r.ctx), r.h))
}

// ReadDir implements lsync.DirLister: one directory, one round trip.
func (s *recvSession) ReadDir(ctx context.Context, rel string) ([]lsync.Entry, error) {
	if err := s.alive(ctx); err != nil {
		return nil, err
	}
	rel, err := cleanDir(rel)
	if err != nil {
		return nil, err
	}
	return s.readDir(ctx, rel)
}

// WriteFiles implements lsync.BatchWriter: small files land many to a
// request, each confined and published like a WriteFile of its own.
func (s *recvSession) WriteFiles(ctx context.Context, files []lsync.FileData) []error {
	errs, _, _ := s.WriteFilesThen(ctx, files, lsync.Entry{})
	return errs
}

// SkipDeliveryMarks asks the receiver (version 5) to land files without
// the delivery mark, for a one-way job; an older one keeps marking them.
func (s *recvSession) SkipDeliveryMarks(ctx context.Context) error {
	_, err := s.client.SetOptions(ctx, receiver.OptNoDeliveryMarks)
	return s.check(err)
}

// DirBatches implements lsync.BatchDirTimer: version 4.
func (s *recvSession) DirBatches() bool { return s.client.PutsOwners() }

// WriteFilesThen implements lsync.BatchDirTimer: from version 4 on, dir's
// mtime goes in the files' request, set after them (dir.Path "": none).
func (s *recvSession) WriteFilesThen(ctx context.Context, files []lsync.FileData, dir lsync.Entry) (errs []error, done bool, dirErr error) {
	errs = make([]error, len(files))
	if err := s.alive(ctx); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs, false, nil
	}
	var then *receiver.DirTime
	if dir.Path != "" {
		rel, err := clean(dir.Path)
		if err != nil {
			return errs, true, err
		}
		then = &receiver.DirTime{Rel: rel, MTime: dir.ModTime}
	}
	puts := make([]receiver.PutFile, 0, len(files))
	idx := make([]int, 0, len(files))
	for i, f := range files {
		rel, err := clean(f.Path)
		if err != nil {
			errs[i] = err
			continue
		}
		p := receiver.PutFile{Rel: rel, Mode: f.Mode, MTime: f.ModTime, Data: f.Data}
		if f.Own != nil {
			own := f.Own.Owner
			p.Owner = &own
		}
		puts = append(puts, p)
		idx = append(idx, i)
	}
	if len(puts) == 0 {
		return errs, false, nil
	}
	// From version 4 on, a file lands with its owner (set through the
	// temp file's descriptor): no chown by path after it.
	res, done, err := s.client.PutManyThen(ctx, puts, then)
	var te *receiver.ThenError
	if errors.As(err, &te) {
		dirErr = fmt.Errorf("chtimes %s:%s: %w", s.host, s.abs(then.Rel), s.check(te.Err))
		err = nil
	}
	for j, i := range idx {
		var r receiver.PutResult
		if err != nil {
			r.Err = err
		} else {
			r = res[j]
		}
		if r.Err != nil {
			errs[i] = fmt.Errorf("upload %s:%s: %w", s.host, s.abs(puts[j].Rel), s.check(r.Err))
			continue
		}
		if own := files[i].Own; own != nil {
			switch {
			case r.OwnerErr != nil:
				own.Err = fmt.Errorf("chown %s:%s: %w", s.host, s.abs(puts[j].Rel), s.check(r.OwnerErr))
			case r.OwnerSet:
				own.Done = true
			}
		}
	}
	return errs, done, dirErr
}

// BatchLimits implements lsync.BatchWriter.
func (s *recvSession) BatchLimits() (files, bytes int) {
	return receiver.MaxPutManyFiles, receiver.MaxPutManyBytes
}

// Protocol implements lsync.ProtocolReporter.
func (s *recvSession) Protocol() string { return fmt.Sprintf("receiver v%d", s.client.Version()) }

// Fallback implements lsync.ProtocolReporter.
func (s *recvSession) Fallback() string { return "" }
