// Package receiver is lockstep's write agent on a peer: `lockstep receive
// --root PATH` serves a small binary protocol on stdin/stdout (an SSH exec
// channel) and performs every file operation a sync needs strictly inside
// PATH, and Client speaks that protocol.
//
// # Why not SFTP
//
// SFTP names files by path strings that the server resolves afresh on every
// request, following symlinks in parent components. A client can lstat each
// component first, but the peer's docroot can change between that check and
// the request: a directory swapped for a symlink (renameat2 RENAME_EXCHANGE
// makes the swap atomic and repeatable) redirects the write outside the
// root. The receiver resolves every parent directory itself with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) (or, on kernels without
// openat2, one openat(O_NOFOLLOW) per component) and then acts with *at
// system calls relative to that directory's descriptor, so no path string
// is ever handed to the kernel whole and a swap can at worst make an
// operation fail.
//
// # Protocol (version 3)
//
// Every message is a frame: a 4-byte big-endian length, then that many
// bytes: a 1-byte type, a 4-byte request id, and the payload. Strings and
// byte slices are a 4-byte length and the bytes; integers are big-endian.
//
// The client opens with a hello frame (type 'H', id 0: the string
// "lockstep-receiver" and its uint32 version); the server answers with the
// same magic, its own version, the root it serves and, when it cannot
// serve it, why (empty otherwise). The hello frames keep
// this layout in every version, so that either side can tell a mismatch and
// the client can fall back to SFTP. After the hello the client sends
// requests; each gets exactly one reply (typeOK with the op's result, or
// typeError) with the request's id. Requests are served concurrently:
// replies may come back in any order, and a client keeps many requests in
// flight.
//
// # Versions
//
// A server serves its own version and every older one down to
// MinVersion: it answers an older client's hello with the client's
// version and refuses the requests that version does not have. A server
// answers a newer client's hello with its own version and then exits, so
// a client that can speak that version too opens a new channel and says
// hello in it (see Hello); a client falls back to SFTP before a server
// older than MinClientVersion.
//
// # Ownership by name (version 3)
//
// A chown carries the source's user and group names besides the numbers
// ("" where the source has no name for an id); the receiver gives each
// name the id it has on the peer, and keeps the number where the name is
// unknown there, as rsync -a does. opOwnerIDs answers the same mapping
// without changing anything, so that the client compares the source's
// owner with the peer's in the peer's ids. Up to version 2 a chown
// carries the numbers only.
//
// # Owners of a putmany (version 4)
//
// Each file of an opPutMany carries, after its data, a byte: 0 for no
// owner, 1 followed by uid, gid, user and group as in a chown. The
// receiver maps the names as for a chown and gives the temp file that
// owner through its descriptor before it is published, so that a file
// lands with its owner in one request instead of a put and a chown by
// path (a round trip, a path resolution and a request per file, the
// largest part of both sides' work on an initial sync run as root). A
// file's result is then 0, 1 and an error (not landed), or 2 and an
// error: landed, but its owner could not be set (a peer user that may
// not chown); the file then has the receiver's owner, as after a put
// and a failed chown. An opMkdir carries the same owner byte (and
// owner) after its mode, and its reply the same 0, or 2 and an error:
// the directory and its owner in one request instead of two.
//
// After its files, a version 4 opPutMany carries a byte: 0, or 1
// followed by a path and an mtime: that directory's mtime is set (as
// by an opChtimes) after every file of the request, and its outcome
// follows the files' results (0, or 1 and an error). An entry whose mode
// is a directory's (no data) is made as an opMkdir with that owner
// makes it, in its place in the order. A directory whose new
// subdirectories and files all go in one request is then done in one
// round trip.
//
// # Session options (version 5)
//
// opOptions carries a uint32 of option bits the client asks for; the
// reply carries the bits the server applied (a server leaves out those
// it does not know, so that a later bit needs no new version). The only
// bit, optNoDeliveryMarks, is sent by a one-way job: nothing on its
// peer reads the delivery mark (DeliveredXattr, for a two-way merge), so
// the receiver stops setting it on the files it lands, an fsetxattr per
// file of an initial sync saved. Without the request, and for every
// older client, files get the mark.
package receiver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"
)

// Version is the protocol version this build speaks. A client talks only
// to a server of its own version (otherwise it falls back to SFTP); a
// server also serves older clients down to MinVersion, answering their
// hello with their version and refusing the requests they cannot know.
//
// Version 2 added opPutMany (many small files in one request); version 3
// owner names in opChown, and opOwnerIDs; version 4 an owner per file of
// opPutMany; version 5 opOptions.
const Version uint32 = 5

// MinVersion is the oldest client version a server still serves.
const MinVersion uint32 = 1

// MinClientVersion is the oldest server version a client still speaks
// (the client relies on opPutMany); before an older server it falls back
// to SFTP.
const MinClientVersion uint32 = 2

// maxOwnerName bounds a user or group name in a request. Longer names do
// not exist (useradd allows 32 bytes), and a lookup of one would be a
// scan of the user database for nothing.
const maxOwnerName = 256

// Magic opens both hello frames.
const Magic = "lockstep-receiver"

// maxFrame bounds a frame, so that a corrupt or hostile length cannot make
// either side allocate without limit. The largest legitimate frames are
// directory listings.
const maxFrame = 64 << 20

// maxChunk is the largest file content carried by one put, write or read.
const maxChunk = 256 << 10

// Frame types: requests (client to server) and replies.
const (
	typeHello byte = 'H'

	opStat      byte = 's' // rel → entry
	opReadDir   byte = 'd' // rel ("" = root) → entries, sorted by name
	opMkdir     byte = 'm' // rel, mode → (creates parents; replaces a non-directory); version 4: see below
	opPut       byte = 'p' // rel, mode, mtime, data → (whole small file)
	opCreate    byte = 'c' // rel → handle (temp file beside rel, parents created)
	opWrite     byte = 'w' // handle, offset, data →
	opCommit    byte = 'C' // handle, mode, mtime → (renamed over rel)
	opAbort     byte = 'A' // handle → (temp file removed)
	opSymlink   byte = 'l' // rel, target →
	opChtimes   byte = 't' // rel, mtime →
	opChmod     byte = 'M' // rel, mode →
	opChown     byte = 'o' // rel, uid, gid → (version 3: rel, uid, gid, user, group →)
	opRename    byte = 'r' // from, to →
	opRemoveAll byte = 'R' // rel →
	opRmdir     byte = 'D' // rel → (an empty directory only)
	opOpen      byte = 'O' // rel → handle, size
	opRead      byte = 'x' // handle, offset, n → data (empty at EOF)
	opClose     byte = 'X' // handle →
	// Version 2.
	opPutMany byte = 'P' // count, count × (rel, mode, mtime, data) → count × result (u8 0, or 1 and an error); version 4: see below
	// Version 3.
	opOwnerIDs byte = 'u' // uid, gid, user, group → uid, gid (the ids a chown with them gives, nothing changed)
	// Version 5.
	opOptions byte = 'S' // option bits asked → option bits applied

	typeOK    byte = 'k'
	typeError byte = 'e'
)

var opNames = map[byte]string{
	opStat: "stat", opReadDir: "readdir", opMkdir: "mkdir", opPut: "put", opCreate: "create",
	opWrite: "write", opCommit: "commit", opAbort: "abort", opSymlink: "symlink", opChtimes: "chtimes",
	opChmod: "chmod", opChown: "chown", opRename: "rename", opRemoveAll: "removeall", opRmdir: "rmdir",
	opOpen: "open", opRead: "read", opClose: "close", opPutMany: "putmany", opOwnerIDs: "ownerids",
	opOptions: "options",
}

// Option bits of an opOptions (version 5).
const (
	// OptNoDeliveryMarks: files are landed without the delivery mark.
	OptNoDeliveryMarks uint32 = 1 << 0

	knownOptions = OptNoDeliveryMarks
)

// Error kinds carried by a typeError reply.
const (
	kindErrno   byte = 0 // a system call failed (errno)
	kindRefused byte = 1 // the path leaves the root or crosses a symlink
	kindInvalid byte = 2 // malformed request
)

func writeFrame(w io.Writer, typ byte, id uint32, payload []byte) error {
	var hdr [9]byte
	binary.BigEndian.PutUint32(hdr[0:4], uint32(5+len(payload)))
	hdr[4] = typ
	binary.BigEndian.PutUint32(hdr[5:9], id)
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// readFrame reads one frame; buf is reused when large enough.
func readFrame(r io.Reader, buf []byte) (typ byte, id uint32, payload []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 5 || n > maxFrame {
		return 0, 0, nil, fmt.Errorf("receiver protocol: frame length %d out of range", n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, nil, err
	}
	return buf[0], binary.BigEndian.Uint32(buf[1:5]), buf[5:], nil
}

// enc builds a payload.
type enc struct{ b []byte }

func (e *enc) u8(v byte)    { e.b = append(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)  { e.u64(uint64(v)) }
func (e *enc) bytes(v []byte) {
	e.u32(uint32(len(v)))
	e.b = append(e.b, v...)
}
func (e *enc) str(v string) {
	e.u32(uint32(len(v)))
	e.b = append(e.b, v...)
}
func (e *enc) time(t time.Time) {
	e.i64(t.Unix())
	e.u32(uint32(t.Nanosecond()))
}

var errShort = errors.New("receiver protocol: truncated payload")

// dec reads a payload; the first error sticks and later reads return
// zero values, so a decoder is checked once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = errShort
		return false
	}
	return true
}

func (d *dec) u8() byte {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *dec) i64() int64 { return int64(d.u64()) }

// bytes returns a slice aliasing the payload.
func (d *dec) bytes() []byte {
	n := d.u32()
	if !d.need(int(n)) {
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) str() string { return string(d.bytes()) }

func (d *dec) time() time.Time {
	s := d.i64()
	ns := d.u32()
	if ns >= 1e9 {
		if d.err == nil {
			d.err = errors.New("receiver protocol: nanoseconds out of range")
		}
		return time.Time{}
	}
	return time.Unix(s, int64(ns))
}

// done reports a decoding error, or trailing bytes.
func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("receiver protocol: %d trailing bytes", len(d.b))
	}
	return d.err
}

// Entry is one directory entry as the receiver reports it (lstat: a
// symlink is described, never followed).
type Entry struct {
	Name       string // a single path component (readdir) or the relative path (stat)
	Mode       fs.FileMode
	Size       int64
	ModTime    time.Time
	UID, GID   uint32
	LinkTarget string
}

func (e *enc) entry(x Entry) {
	e.str(x.Name)
	e.u32(uint32(x.Mode))
	e.i64(x.Size)
	e.time(x.ModTime)
	e.u32(x.UID)
	e.u32(x.GID)
	e.str(x.LinkTarget)
}

func (d *dec) entry() Entry {
	return Entry{
		Name: d.str(), Mode: fs.FileMode(d.u32()), Size: d.i64(), ModTime: d.time(),
		UID: d.u32(), GID: d.u32(), LinkTarget: d.str(),
	}
}
