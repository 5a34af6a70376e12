package receiver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// serverWorkers is how many requests the server works on at once. File
// system calls block; a few workers overlap them (and the disk's queue)
// while the client keeps dozens of requests in flight.
const serverWorkers = 8

// Serve speaks the protocol on in/out, confined to root, until the client
// closes its side (nil) or ctx ends. in is closed when ctx ends, which is
// what unblocks a read of stdin.
func Serve(ctx context.Context, in io.ReadCloser, out io.Writer, root string, logger *slog.Logger) error {
	return serve(ctx, in, out, root, logger, serveHooks{})
}

// serveHooks are what tests change in a server: tweak is applied to the
// opened root (to force the per-component walk), ids replaces this
// host's user database (to map names to ids they do not have here), and
// version makes the server speak an older version as its newest (to
// play a peer running an older release). Only the package's tests set
// them; `lockstep receive` calls Serve.
type serveHooks struct {
	tweak   func(*Root)
	ids     idLookup
	version uint32
}

// serve is Serve with test hooks.
func serve(ctx context.Context, in io.ReadCloser, out io.Writer, root string, logger *slog.Logger, hooks serveHooks) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	br := bufio.NewReaderSize(in, 64<<10)
	typ, _, payload, err := readFrame(br, nil)
	if err != nil {
		return fmt.Errorf("receiver: reading hello: %w", err)
	}
	d := dec{b: payload}
	magic, version := d.str(), d.u32()
	if typ != typeHello || d.done() != nil || magic != Magic {
		return errors.New("receiver: the client did not open with a lockstep hello")
	}
	r, rerr := OpenRoot(root)
	// An older client is served in its own version: its hello check
	// passes, and it never sends what it does not know.
	ours := Version
	if hooks.version != 0 {
		ours = hooks.version
	}
	served := ours
	if version >= MinVersion && version < ours {
		served = version
	}
	var e enc
	e.str(Magic)
	e.u32(served)
	e.str(path.Clean(root))
	// Why this receiver cannot serve (the root cannot be opened), so
	// that the client reports it instead of a broken session.
	if rerr != nil {
		e.str(rerr.Error())
	} else {
		e.str("")
	}
	if err := writeFrame(out, typeHello, 0, e.b); err != nil {
		if r != nil {
			_ = r.Close()
		}
		return fmt.Errorf("receiver: writing hello: %w", err)
	}
	if version != served {
		if r != nil {
			_ = r.Close()
		}
		return fmt.Errorf("receiver: the client speaks protocol version %d, this receiver speaks %d", version, ours)
	}
	if rerr != nil {
		return fmt.Errorf("receiver: %w", rerr)
	}
	defer r.Close()
	if hooks.tweak != nil {
		hooks.tweak(r)
	}
	ids := hooks.ids
	if ids == nil {
		ids = hostIDs
	}
	s := &server{root: r, logger: logger, handles: map[uint32]any{}, version: served, ids: ids}
	return s.serve(ctx, in, br, out)
}

type request struct {
	typ     byte
	id      uint32
	payload []byte
}

type reply struct {
	typ     byte
	id      uint32
	payload []byte
}

type server struct {
	root   *Root
	logger *slog.Logger
	// version is the protocol version of this conversation.
	version uint32
	// ids maps owner names to this host's ids (version 3).
	ids idLookup

	mu      sync.Mutex
	handles map[uint32]any // *tempFile or *os.File
	nextH   uint32
}

func (s *server) serve(ctx context.Context, in io.Closer, br *bufio.Reader, out io.Writer) error {
	reqs := make(chan request, 64)
	replies := make(chan reply, 64)
	stop := context.AfterFunc(ctx, func() { _ = in.Close() })
	defer stop()

	var workers sync.WaitGroup
	for range serverWorkers {
		workers.Go(func() {
			for rq := range reqs {
				replies <- s.handle(rq)
			}
		})
	}
	writeErr := make(chan error, 1)
	go func() {
		// The single writer batches replies: it flushes only when no
		// other reply is ready, so a busy server sends few, large writes.
		bw := bufio.NewWriterSize(out, 64<<10)
		var err error
		for rp := range replies {
			if err != nil {
				continue // drain, so that workers never block
			}
			err = writeFrame(bw, rp.typ, rp.id, rp.payload)
			if err == nil && len(replies) == 0 {
				err = bw.Flush()
			}
		}
		if err == nil {
			err = bw.Flush()
		}
		writeErr <- err
	}()

	var readErr error
	for {
		typ, id, payload, err := readFrame(br, nil)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				readErr = err
			}
			break
		}
		reqs <- request{typ: typ, id: id, payload: payload}
	}
	close(reqs)
	workers.Wait()
	close(replies)
	werr := <-writeErr
	s.closeHandles()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if readErr != nil {
		return fmt.Errorf("receiver: %w", readErr)
	}
	if werr != nil && !errors.Is(werr, syscall.EPIPE) {
		return fmt.Errorf("receiver: %w", werr)
	}
	return nil
}

// closeHandles drops what a client left open: temp files of unfinished
// writes are removed, so a cut connection leaves nothing behind.
func (s *server) closeHandles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, v := range s.handles {
		switch x := v.(type) {
		case *tempFile:
			s.root.abort(x)
		case *os.File:
			_ = x.Close()
		}
		delete(s.handles, h)
	}
}

func (s *server) addHandle(v any) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextH++
	s.handles[s.nextH] = v
	return s.nextH
}

func (s *server) getHandle(h uint32) (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.handles[h]
	return v, ok
}

// takeHandle removes h so that no other request uses it meanwhile.
func (s *server) takeHandle(h uint32) (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.handles[h]
	delete(s.handles, h)
	return v, ok
}

func (s *server) handle(rq request) reply {
	out, err := s.do(rq)
	if err != nil {
		var inv *invalid
		if errors.As(err, &inv) {
			// A client bug or a hostile client; the peer logs the
			// receiver's stderr.
			s.logger.Warn("malformed request", "op", opNames[rq.typ], "err", err)
		}
		return reply{typ: typeError, id: rq.id, payload: s.encodeError(rq.typ, err)}
	}
	return reply{typ: typeOK, id: rq.id, payload: out}
}

// encodeError sends the errno (so that the client can tell "not found"
// from "permission denied") and a message naming the path.
func (s *server) encodeError(op byte, err error) []byte {
	var e enc
	var rf *refusal
	var inv *invalid
	var errno unix.Errno
	switch {
	case errors.As(err, &rf):
		e.u8(kindRefused)
		e.u32(uint32(rf.errno))
	case errors.As(err, &inv):
		e.u8(kindInvalid)
		e.u32(uint32(unix.EINVAL))
	case errors.As(err, &errno):
		e.u8(kindErrno)
		e.u32(uint32(errno))
	default:
		e.u8(kindErrno)
		e.u32(uint32(unix.EIO))
	}
	e.str(err.Error())
	return e.b
}

func (s *server) do(rq request) ([]byte, error) {
	d := dec{b: rq.payload}
	var e enc
	bad := func() error {
		if err := d.done(); err != nil {
			return &invalid{why: fmt.Sprintf("%s: %v", opNames[rq.typ], err)}
		}
		return nil
	}
	switch rq.typ {
	case opStat:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		x, err := s.root.Stat(rel)
		if err != nil {
			return nil, err
		}
		e.entry(x)
	case opReadDir:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		list, err := s.root.ReadDir(rel)
		if err != nil {
			return nil, err
		}
		e.u32(uint32(len(list)))
		for _, x := range list {
			e.entry(x)
		}
		if len(e.b) > maxFrame-64 {
			// One listing is one reply: refuse this directory rather
			// than send a frame the client must treat as corrupt.
			return nil, &fs.PathError{Op: "readdir", Path: s.root.show(rel), Err: unix.EFBIG}
		}
	case opMkdir:
		rel, mode := d.str(), fs.FileMode(d.u32())
		if s.version < 4 {
			if err := bad(); err != nil {
				return nil, err
			}
			return nil, s.root.Mkdir(rel, mode)
		}
		own, err := s.owner(&d)
		if err := bad(); err != nil {
			return nil, err
		}
		if err != nil {
			return nil, err
		}
		ownErr, err := s.root.mkdirOwned(rel, mode, own)
		if err != nil {
			return nil, err
		}
		s.ownerOutcome(&e, ownErr)
	case opPut:
		rel, mode, mtime, data := d.str(), fs.FileMode(d.u32()), d.time(), d.bytes()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Put(rel, mode, mtime, data)
	case opPutMany:
		if s.version < 2 {
			return nil, &invalid{why: "putmany is not part of protocol version " + strconv.Itoa(int(s.version))}
		}
		n := d.u32()
		if int(n) > len(d.b)/16 {
			return nil, &invalid{why: "putmany: count exceeds the payload"}
		}
		puts := make([]putFile, 0, n)
		var ownErr error // the first malformed owner
		for range n {
			p := putFile{rel: d.str(), mode: fs.FileMode(d.u32()), mtime: d.time(), data: d.bytes()}
			if p.mode.IsDir() && (s.version < 4 || len(p.data) != 0) && ownErr == nil {
				ownErr = &invalid{why: "putmany: a directory with content, or before version 4"}
			}
			if s.version >= 4 {
				own, err := s.owner(&d)
				if err != nil && ownErr == nil {
					ownErr = err
				}
				p.own = own
			}
			puts = append(puts, p)
		}
		// Version 4: a directory whose mtime is set after the files.
		then, thenRel, thenMtime := false, "", time.Time{}
		if s.version >= 4 && d.u8() != 0 {
			then, thenRel, thenMtime = true, d.str(), d.time()
		}
		if err := bad(); err != nil {
			return nil, err
		}
		if ownErr != nil {
			return nil, ownErr // before any file is written
		}
		// Each file is an opPut of its own, confined alike: one that is
		// refused or fails does not stop the others.
		e.u32(n)
		for _, res := range s.root.putMany(puts) {
			if res.err != nil {
				e.u8(1)
				e.bytes(s.encodeError(opPut, res.err))
				continue
			}
			s.ownerOutcome(&e, res.ownErr)
		}
		if then {
			// An opChtimes of its own, after every file of the request.
			if err := s.root.Chtimes(thenRel, thenMtime); err != nil {
				e.u8(1)
				e.bytes(s.encodeError(opChtimes, err))
			} else {
				e.u8(0)
			}
		}
	case opCreate:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		t, err := s.root.create(rel)
		if err != nil {
			return nil, err
		}
		e.u32(s.addHandle(t))
	case opWrite:
		h, off, data := d.u32(), d.i64(), d.bytes()
		if err := bad(); err != nil {
			return nil, err
		}
		t, err := s.tempFile(h)
		if err != nil {
			return nil, err
		}
		return nil, s.root.writeAt(t, off, data)
	case opCommit:
		h, mode, mtime := d.u32(), fs.FileMode(d.u32()), d.time()
		if err := bad(); err != nil {
			return nil, err
		}
		v, _ := s.takeHandle(h)
		t, ok := v.(*tempFile)
		if !ok {
			return nil, &invalid{why: fmt.Sprintf("commit: no file being written with handle %d", h)}
		}
		return nil, s.root.commit(t, mode, mtime)
	case opAbort:
		h := d.u32()
		if err := bad(); err != nil {
			return nil, err
		}
		v, _ := s.takeHandle(h)
		if t, ok := v.(*tempFile); ok {
			s.root.abort(t)
		}
	case opSymlink:
		rel, target := d.str(), d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Symlink(rel, target)
	case opChtimes:
		rel, mtime := d.str(), d.time()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Chtimes(rel, mtime)
	case opChmod:
		rel, mode := d.str(), fs.FileMode(d.u32())
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Chmod(rel, mode)
	case opChown:
		rel, uid, gid := d.str(), d.u32(), d.u32()
		var user, group string
		if s.version >= 3 {
			user, group = d.str(), d.str()
		}
		if err := bad(); err != nil {
			return nil, err
		}
		if err := checkOwnerNames(user, group); err != nil {
			return nil, err
		}
		// The names are mapped before the path is resolved: the chown
		// itself is the same confined fchownat as for numbers.
		uid, gid = localIDs(s.ids, uid, gid, user, group)
		return nil, s.root.Chown(rel, int(uid), int(gid))
	case opOwnerIDs:
		if s.version < 3 {
			return nil, &invalid{why: "ownerids is not part of protocol version " + strconv.Itoa(int(s.version))}
		}
		uid, gid, user, group := d.u32(), d.u32(), d.str(), d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		if err := checkOwnerNames(user, group); err != nil {
			return nil, err
		}
		uid, gid = localIDs(s.ids, uid, gid, user, group)
		e.u32(uid)
		e.u32(gid)
	case opOptions:
		if s.version < 5 {
			return nil, &invalid{why: "options is not part of protocol version " + strconv.Itoa(int(s.version))}
		}
		asked := d.u32()
		if err := bad(); err != nil {
			return nil, err
		}
		applied := asked & knownOptions
		s.root.noMarks.Store(applied&OptNoDeliveryMarks != 0)
		e.u32(applied)
	case opRename:
		from, to := d.str(), d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Rename(from, to)
	case opRemoveAll:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.RemoveAll(rel)
	case opRmdir:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		return nil, s.root.Rmdir(rel)
	case opOpen:
		rel := d.str()
		if err := bad(); err != nil {
			return nil, err
		}
		f, size, err := s.root.open(rel)
		if err != nil {
			return nil, err
		}
		e.u32(s.addHandle(f))
		e.i64(size)
	case opRead:
		h, off, n := d.u32(), d.i64(), d.u32()
		if err := bad(); err != nil {
			return nil, err
		}
		v, _ := s.getHandle(h)
		f, ok := v.(*os.File)
		if !ok {
			return nil, &invalid{why: fmt.Sprintf("read: no open file with handle %d", h)}
		}
		buf := make([]byte, min(n, maxChunk))
		m, err := f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		e.bytes(buf[:m])
	case opClose:
		h := d.u32()
		if err := bad(); err != nil {
			return nil, err
		}
		v, _ := s.takeHandle(h)
		if f, ok := v.(*os.File); ok {
			_ = f.Close()
		}
	default:
		return nil, &invalid{why: fmt.Sprintf("unknown request type %q", rq.typ)}
	}
	return e.b, nil
}

// owner decodes the owner of a version 4 putmany file or mkdir: a byte,
// 0 for none, 1 followed by uid, gid, user and group as in a chown. The
// names are checked and mapped as a chown's are; an error is a malformed
// request.
func (s *server) owner(d *dec) (*fileOwner, error) {
	if d.u8() == 0 {
		return nil, nil
	}
	uid, gid, user, group := d.u32(), d.u32(), d.str(), d.str()
	if d.err != nil {
		return nil, nil // reported by the caller's bad()
	}
	if err := checkOwnerNames(user, group); err != nil {
		return nil, err
	}
	uid, gid = localIDs(s.ids, uid, gid, user, group)
	return &fileOwner{uid: int(uid), gid: int(gid)}, nil
}

// ownerOutcome encodes the outcome of a version 4 putmany file or mkdir
// that was done: 0 (with the owner, if one was asked for), or 2 and why
// the owner could not be set.
func (s *server) ownerOutcome(e *enc, ownErr error) {
	if ownErr == nil {
		e.u8(0)
		return
	}
	e.u8(2)
	e.bytes(s.encodeError(opChown, ownErr))
}

func (s *server) tempFile(h uint32) (*tempFile, error) {
	v, _ := s.getHandle(h)
	t, ok := v.(*tempFile)
	if !ok {
		return nil, &invalid{why: fmt.Sprintf("write: no file being written with handle %d", h)}
	}
	return t, nil
}
