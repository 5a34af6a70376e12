package receiver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lockstep-ha/lockstep/internal/ownerdb"
	"github.com/lockstep-ha/lockstep/lsync"
)

// ErrClosed is returned for requests on a client whose connection is gone.
var ErrClosed = errors.New("receiver connection closed")

// VersionError is a hello from a receiver of another protocol version.
type VersionError struct{ Server, Client uint32 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("the peer's receiver speaks protocol version %d, this lockstep speaks %d", e.Server, e.Client)
}

// Older reports whether the server is older than the client but still
// spoken by it: the client then says hello again, in the server's
// version, on a new channel (the server exits after answering a hello
// it cannot serve).
func (e *VersionError) Older() bool {
	return e.Server >= MinClientVersion && e.Server < e.Client
}

// Error is a failed request. It matches its errno (errors.Is(err,
// fs.ErrNotExist) for ENOENT) and, when the receiver refused the path
// because it leaves the root or crosses a symlink, lsync.ErrRefused.
type Error struct {
	Op      string
	Errno   syscall.Errno // 0 when the request was malformed
	Refused bool
	Msg     string // from the receiver; names the path on the peer
}

func (e *Error) Error() string { return e.Op + ": " + e.Msg }

func (e *Error) Unwrap() []error {
	var errs []error
	if e.Errno != 0 {
		errs = append(errs, e.Errno)
	}
	if e.Refused {
		errs = append(errs, lsync.ErrRefused)
	}
	return errs
}

// Hello opens the conversation in protocol version (Version, or an older
// one a *VersionError asked for: see VersionError.Older) and reads the
// receiver's hello. A receiver of another version is reported as a
// *VersionError (the receiver then exits).
func Hello(r io.Reader, w io.Writer, version uint32) (root string, err error) {
	var e enc
	e.str(Magic)
	e.u32(version)
	if err := writeFrame(w, typeHello, 0, e.b); err != nil {
		return "", err
	}
	typ, _, payload, err := readFrame(r, nil)
	if err != nil {
		return "", err
	}
	d := dec{b: payload}
	magic, served := d.str(), d.u32()
	if typ != typeHello || magic != Magic || d.err != nil {
		return "", errors.New("the peer did not answer with a lockstep receiver hello")
	}
	if served != version {
		return "", &VersionError{Server: served, Client: version}
	}
	root, problem := d.str(), d.str()
	if err := d.done(); err != nil {
		return "", err
	}
	if problem != "" {
		return "", fmt.Errorf("the receiver cannot serve %s: %s", root, problem)
	}
	return root, nil
}

type response struct {
	typ     byte
	payload []byte
}

// Client multiplexes concurrent requests over one receiver connection:
// each caller's request is tagged with an id, and one goroutine hands the
// replies back, so many requests are in flight at once.
type Client struct {
	// version is the protocol version the hello agreed on.
	version uint32

	w       *bufio.Writer
	wmu     sync.Mutex
	writers atomic.Int32 // callers waiting to write; the last one flushes

	mu      sync.Mutex
	pending map[uint32]chan response
	nextID  uint32
	err     error // set once the connection failed

	done chan struct{} // the reader has returned

	ownerMu sync.Mutex
	// ownerIDs caches MapOwner's answers, as long as the receiver's own
	// cache keeps its lookups: every file of a docroot asks for the same
	// few owners, and a user added on the peer is seen in a minute.
	ownerIDs map[lsync.Owner]mappedOwner
}

type mappedOwner struct {
	uid, gid uint32
	until    time.Time
}

// NewClient starts the reply reader on r; it runs until r fails or ends
// (the caller closes the connection). version is the one Hello agreed on.
func NewClient(r io.Reader, w io.Writer, version uint32) *Client {
	c := &Client{
		version:  version,
		ownerIDs: map[lsync.Owner]mappedOwner{},
		w:        bufio.NewWriterSize(w, 64<<10),
		pending:  map[uint32]chan response{},
		done:     make(chan struct{}),
	}
	go c.read(bufio.NewReaderSize(r, 64<<10))
	return c
}

func (c *Client) read(r io.Reader) {
	defer close(c.done)
	for {
		typ, id, payload, err := readFrame(r, nil)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrClosed
			}
			c.fail(err)
			return
		}
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ok {
			ch <- response{typ: typ, payload: payload} // buffered: never blocks
		}
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
}

// Err is the reason the connection failed, nil while it is usable.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done is closed once the reply reader stopped (connection gone).
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) call(ctx context.Context, typ byte, payload []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan response, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	if err := c.send(typ, id, payload); err != nil {
		c.fail(err)
		return nil, c.Err()
	}
	select {
	case rp, ok := <-ch:
		if !ok {
			return nil, c.Err()
		}
		if rp.typ == typeError {
			return nil, decodeError(typ, rp.payload)
		}
		if rp.typ != typeOK {
			err := fmt.Errorf("receiver protocol: unexpected reply type %q", rp.typ)
			c.fail(err)
			return nil, c.Err()
		}
		return rp.payload, nil
	case <-ctx.Done():
		// The reply, when it comes, finds no one waiting and is dropped.
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// send writes one frame. Concurrent callers queue on the lock and only
// the last one flushes, so a burst of requests leaves in few writes.
func (c *Client) send(typ byte, id uint32, payload []byte) error {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := writeFrame(c.w, typ, id, payload)
	if c.writers.Add(-1) == 0 && err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		return err
	}
	return nil
}

func decodeError(op byte, payload []byte) error {
	d := dec{b: payload}
	kind, errno, msg := d.u8(), syscall.Errno(d.u32()), d.str()
	if d.done() != nil {
		return &Error{Op: opNames[op], Errno: syscall.EIO, Msg: "malformed error reply"}
	}
	e := &Error{Op: opNames[op], Errno: errno, Msg: msg, Refused: kind == kindRefused}
	if kind == kindInvalid {
		e.Errno = 0
	}
	return e
}

func (c *Client) simple(ctx context.Context, typ byte, e *enc) error {
	_, err := c.call(ctx, typ, e.b)
	return err
}

// Stat lstats rel.
func (c *Client) Stat(ctx context.Context, rel string) (Entry, error) {
	var e enc
	e.str(rel)
	out, err := c.call(ctx, opStat, e.b)
	if err != nil {
		return Entry{}, err
	}
	d := dec{b: out}
	x := d.entry()
	return x, d.done()
}

// ReadDir lists the directory rel ("" is the root), sorted by name.
func (c *Client) ReadDir(ctx context.Context, rel string) ([]Entry, error) {
	var e enc
	e.str(rel)
	out, err := c.call(ctx, opReadDir, e.b)
	if err != nil {
		return nil, err
	}
	d := dec{b: out}
	n := d.u32()
	if int(n) > len(out)/8 {
		return nil, errShort
	}
	list := make([]Entry, 0, n)
	for range n {
		list = append(list, d.entry())
	}
	return list, d.done()
}

// Mkdir makes rel (and missing parents) a directory with mode.
func (c *Client) Mkdir(ctx context.Context, rel string, mode fs.FileMode) error {
	return c.MkdirOwned(ctx, rel, mode, nil).Err
}

// MkdirOwned is Mkdir; with own set and a receiver of version 4, the
// directory also gets that owner (the outcome says whether it did, as a
// PutResult does for a file). Older receivers ignore own, and the caller
// chowns afterwards.
func (c *Client) MkdirOwned(ctx context.Context, rel string, mode fs.FileMode, own *lsync.Owner) PutResult {
	var e enc
	e.str(rel)
	e.u32(uint32(mode))
	owners := c.PutsOwners()
	if owners {
		e.owner(own)
	}
	out, err := c.call(ctx, opMkdir, e.b)
	if err != nil || !owners {
		return PutResult{Err: err}
	}
	d := dec{b: out}
	res := d.ownerOutcome(own != nil)
	if err := d.done(); err != nil {
		return PutResult{Err: err}
	}
	return res
}

// owner encodes a version 4 owner (see server.owner).
func (e *enc) owner(own *lsync.Owner) {
	if own == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.u32(own.UID)
	e.u32(own.GID)
	e.str(own.User)
	e.str(own.Group)
}

// ownerOutcome decodes a version 4 result of a putmany file or a mkdir
// that did not fail (see server.ownerOutcome); asked tells whether an
// owner was sent.
func (d *dec) ownerOutcome(asked bool) PutResult {
	switch d.u8() {
	case 0:
		return PutResult{OwnerSet: asked}
	case 2:
		return PutResult{OwnerErr: decodeError(opChown, d.bytes())}
	}
	if d.err == nil {
		d.err = errors.New("receiver protocol: unknown owner outcome")
	}
	return PutResult{}
}

// MaxPut is the largest file Put sends in one request.
const MaxPut = maxChunk

// Put lands a small file (at most MaxPut bytes) in one request.
func (c *Client) Put(ctx context.Context, rel string, mode fs.FileMode, mtime time.Time, data []byte) error {
	if len(data) > MaxPut {
		return fmt.Errorf("put %s: %d bytes exceed the %d of one request", rel, len(data), MaxPut)
	}
	e := enc{b: make([]byte, 0, len(rel)+len(data)+40)}
	e.str(rel)
	e.u32(uint32(mode))
	e.time(mtime)
	e.bytes(data)
	return c.simple(ctx, opPut, &e)
}

// PutFile is one file of a PutMany; from version 4 on, an entry with a
// directory mode (and no data) is a directory, made as Mkdir makes it.
type PutFile struct {
	Rel   string
	Mode  fs.FileMode
	MTime time.Time
	Data  []byte
	// Owner, when set and the receiver speaks version 4, is given to
	// the file before it is published (see PutsOwners); older receivers
	// ignore it, and the caller chowns afterwards.
	Owner *lsync.Owner
}

// PutResult is one file's outcome of a PutManyOwned.
type PutResult struct {
	Err error // the file did not land
	// OwnerSet: the file landed with its Owner; OwnerErr: it landed,
	// but the owner could not be set there (version 4, Owner set).
	OwnerSet bool
	OwnerErr error
}

// MaxPutMany bounds a PutMany: the files' content in bytes, and their
// number.
const (
	MaxPutManyBytes = MaxPut
	MaxPutManyFiles = 256
)

// PutsOwners reports whether a PutMany gives files their Owner
// (protocol version 4).
func (c *Client) PutsOwners() bool { return c.version >= 4 }

// PutMany lands small files in one request (protocol version 2), each
// like a Put of its own: errs holds each file's outcome; err is set when
// the request as a whole failed (then no file's outcome is known).
func (c *Client) PutMany(ctx context.Context, files []PutFile) (errs []error, err error) {
	res, err := c.PutManyOwned(ctx, files)
	if err != nil {
		return nil, err
	}
	errs = make([]error, len(res))
	for i, r := range res {
		errs[i] = r.Err
	}
	return errs, nil
}

// PutManyOwned is PutMany, with each file's owner outcome.
func (c *Client) PutManyOwned(ctx context.Context, files []PutFile) ([]PutResult, error) {
	res, _, err := c.PutManyThen(ctx, files, nil)
	return res, err
}

// SetOptions asks the receiver for the option bits opts (Opt*) and
// returns those it applied: none before protocol version 5.
func (c *Client) SetOptions(ctx context.Context, opts uint32) (uint32, error) {
	if c.version < 5 {
		return 0, nil
	}
	var e enc
	e.u32(opts)
	out, err := c.call(ctx, opOptions, e.b)
	if err != nil {
		return 0, err
	}
	d := dec{b: out}
	applied := d.u32()
	return applied, d.done()
}

// DirTime is a directory whose mtime a PutManyThen sets after its files.
type DirTime struct {
	Rel   string
	MTime time.Time
}

// PutManyThen is PutManyOwned; with then set and a receiver of version
// 4, then's mtime is set after the files, in the same request, and
// thenErr is its outcome (done false: not sent, the caller sets it).
func (c *Client) PutManyThen(ctx context.Context, files []PutFile, then *DirTime) (res []PutResult, thenDone bool, err error) {
	res, thenErr, err := c.putMany(ctx, files, then)
	if err != nil {
		return nil, false, err
	}
	if then != nil && c.PutsOwners() {
		if thenErr != nil {
			return res, true, &ThenError{Err: thenErr}
		}
		return res, true, nil
	}
	return res, false, nil
}

// ThenError is the failure of a PutManyThen's directory mtime alone:
// the files' outcomes are in its results.
type ThenError struct{ Err error }

func (e *ThenError) Error() string { return e.Err.Error() }
func (e *ThenError) Unwrap() error { return e.Err }

// putManyBufs recycles putmany requests (the files' content plus about
// 80 bytes each): an initial sync sends one per directory, and making
// each afresh was a tenth of the client's allocations.
var putManyBufs sync.Pool

func (c *Client) putMany(ctx context.Context, files []PutFile, then *DirTime) ([]PutResult, error, error) {
	size := 0
	for _, f := range files {
		size += len(f.Data)
	}
	if size > MaxPutManyBytes || len(files) > MaxPutManyFiles {
		return nil, nil, fmt.Errorf("putmany: %d files, %d bytes exceed one request's %d, %d", len(files), size, MaxPutManyFiles, MaxPutManyBytes)
	}
	owners := c.PutsOwners()
	for _, f := range files {
		if f.Mode.IsDir() && (!owners || len(f.Data) != 0) {
			return nil, nil, fmt.Errorf("putmany: directory %s with content, or in protocol version %d", f.Rel, c.version)
		}
	}
	buf, _ := putManyBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	if need := size + len(files)*80 + 64; cap(*buf) < need {
		*buf = make([]byte, 0, need)
	}
	e := enc{b: (*buf)[:0]}
	e.u32(uint32(len(files)))
	for _, f := range files {
		e.str(f.Rel)
		e.u32(uint32(f.Mode))
		e.time(f.MTime)
		e.bytes(f.Data)
		if owners {
			e.owner(f.Owner)
		}
	}
	if owners {
		if then == nil {
			e.u8(0)
		} else {
			e.u8(1)
			e.str(then.Rel)
			e.time(then.MTime)
		}
	}
	out, err := c.call(ctx, opPutMany, e.b)
	// The request is written out by now (call returns after send).
	*buf = e.b[:0]
	putManyBufs.Put(buf)
	if err != nil {
		return nil, nil, err
	}
	d := dec{b: out}
	if n := d.u32(); int(n) != len(files) {
		return nil, nil, fmt.Errorf("receiver protocol: putmany answered %d results for %d files", n, len(files))
	}
	res := make([]PutResult, len(files))
	for i, f := range files {
		if !owners {
			if d.u8() != 0 {
				res[i].Err = decodeError(opPut, d.bytes())
			}
			continue
		}
		if len(d.b) > 0 && d.b[0] == 1 {
			d.u8()
			res[i].Err = decodeError(opPut, d.bytes())
			continue
		}
		res[i] = d.ownerOutcome(f.Owner != nil)
	}
	var thenErr error
	if owners && then != nil && d.u8() != 0 {
		thenErr = decodeError(opChtimes, d.bytes())
	}
	return res, thenErr, d.done()
}

// Create starts a file written in chunks; it lands with Commit.
func (c *Client) Create(ctx context.Context, rel string) (uint32, error) {
	var e enc
	e.str(rel)
	out, err := c.call(ctx, opCreate, e.b)
	if err != nil {
		return 0, err
	}
	d := dec{b: out}
	h := d.u32()
	return h, d.done()
}

// Write writes one chunk (at most MaxPut bytes) at off.
func (c *Client) Write(ctx context.Context, h uint32, off int64, data []byte) error {
	e := enc{b: make([]byte, 0, len(data)+20)}
	e.u32(h)
	e.i64(off)
	e.bytes(data)
	return c.simple(ctx, opWrite, &e)
}

// Commit sets mode and mtime and renames the file into place.
func (c *Client) Commit(ctx context.Context, h uint32, mode fs.FileMode, mtime time.Time) error {
	var e enc
	e.u32(h)
	e.u32(uint32(mode))
	e.time(mtime)
	return c.simple(ctx, opCommit, &e)
}

// Abort drops a file being written.
func (c *Client) Abort(ctx context.Context, h uint32) error {
	var e enc
	e.u32(h)
	return c.simple(ctx, opAbort, &e)
}

// Symlink atomically replaces rel by a symlink to target.
func (c *Client) Symlink(ctx context.Context, rel, target string) error {
	var e enc
	e.str(rel)
	e.str(target)
	return c.simple(ctx, opSymlink, &e)
}

// Chtimes sets rel's mtime, never through a symlink.
func (c *Client) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	var e enc
	e.str(rel)
	e.time(mtime)
	return c.simple(ctx, opChtimes, &e)
}

// Chmod sets rel's permission bits; a symlink at rel is refused.
func (c *Client) Chmod(ctx context.Context, rel string, mode fs.FileMode) error {
	var e enc
	e.str(rel)
	e.u32(uint32(mode))
	return c.simple(ctx, opChmod, &e)
}

// Version is the protocol version of this connection.
func (c *Client) Version() uint32 { return c.version }

// MapsOwnerNames reports whether the receiver maps owner names
// (protocol version 3).
func (c *Client) MapsOwnerNames() bool { return c.version >= 3 }

// Lchown sets the owner and group of rel itself (a symlink's own). From
// version 3 on, own's names go too and the receiver gives them their ids
// there (the number where a name is unknown there); before, the numbers.
func (c *Client) Lchown(ctx context.Context, rel string, own lsync.Owner) error {
	var e enc
	e.str(rel)
	e.u32(own.UID)
	e.u32(own.GID)
	if c.MapsOwnerNames() {
		e.str(own.User)
		e.str(own.Group)
	}
	return c.simple(ctx, opChown, &e)
}

// MapOwner returns the ids a Lchown with own gives on the peer, without
// changing anything (own's numbers before version 3). Answers are
// cached for ownerdb.DefaultTTL.
func (c *Client) MapOwner(ctx context.Context, own lsync.Owner) (uid, gid uint32, err error) {
	if !c.MapsOwnerNames() || own.User == "" && own.Group == "" {
		return own.UID, own.GID, nil
	}
	now := time.Now()
	c.ownerMu.Lock()
	m, ok := c.ownerIDs[own]
	c.ownerMu.Unlock()
	if ok && now.Before(m.until) {
		return m.uid, m.gid, nil
	}
	var e enc
	e.u32(own.UID)
	e.u32(own.GID)
	e.str(own.User)
	e.str(own.Group)
	out, err := c.call(ctx, opOwnerIDs, e.b)
	if err != nil {
		return 0, 0, err
	}
	d := dec{b: out}
	uid, gid = d.u32(), d.u32()
	if err := d.done(); err != nil {
		return 0, 0, err
	}
	c.ownerMu.Lock()
	c.ownerIDs[own] = mappedOwner{uid: uid, gid: gid, until: now.Add(ownerdb.DefaultTTL)}
	c.ownerMu.Unlock()
	return uid, gid, nil
}

// Rename moves from to to, replacing to.
func (c *Client) Rename(ctx context.Context, from, to string) error {
	var e enc
	e.str(from)
	e.str(to)
	return c.simple(ctx, opRename, &e)
}

// RemoveAll removes rel recursively, never following a symlink.
func (c *Client) RemoveAll(ctx context.Context, rel string) error {
	var e enc
	e.str(rel)
	return c.simple(ctx, opRemoveAll, &e)
}

// Rmdir removes rel only if it is an empty directory.
func (c *Client) Rmdir(ctx context.Context, rel string) error {
	var e enc
	e.str(rel)
	return c.simple(ctx, opRmdir, &e)
}

// Open opens the regular file rel for reading.
func (c *Client) Open(ctx context.Context, rel string) (h uint32, size int64, err error) {
	var e enc
	e.str(rel)
	out, err := c.call(ctx, opOpen, e.b)
	if err != nil {
		return 0, 0, err
	}
	d := dec{b: out}
	h, size = d.u32(), d.i64()
	return h, size, d.done()
}

// ReadAt reads up to n bytes at off; an empty result means EOF.
func (c *Client) ReadAt(ctx context.Context, h uint32, off int64, n int) ([]byte, error) {
	var e enc
	e.u32(h)
	e.i64(off)
	e.u32(uint32(min(n, maxChunk)))
	out, err := c.call(ctx, opRead, e.b)
	if err != nil {
		return nil, err
	}
	d := dec{b: out}
	data := d.bytes()
	return data, d.done()
}

// CloseFile releases a handle from Open.
func (c *Client) CloseFile(ctx context.Context, h uint32) error {
	var e enc
	e.u32(h)
	return c.simple(ctx, opClose, &e)
}
