package lsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// TempPrefix starts the name of every file we write before renaming it into
// place. Watchers and tree walks on both sides ignore such names, and a
// reconciliation pass removes leftovers of a crashed transfer.
const TempPrefix = ".lockstep-tmp-"

// ErrDisconnected wraps errors that mean the session to a target is gone;
// the job then reconnects with backoff and catches up by reconciliation.
// Any other error is about one path (permission, disk full) and is retried
// for that path without tearing down the session.
var ErrDisconnected = errors.New("target disconnected")

// Entry describes one node of a tree. Path is slash-separated and relative
// to the tree root ("" is never returned for the root itself).
type Entry struct {
	Path       string
	Mode       fs.FileMode // includes type bits (fs.ModeDir, fs.ModeSymlink)
	Size       int64
	ModTime    time.Time
	LinkTarget string // for symlinks only
	// UID and GID are the numeric owner and group when Owned (a target
	// that does not report them leaves Owned false).
	UID, GID uint32
	Owned    bool
	// ListErr is set on a directory a Walk could not list (permission,
	// I/O error): its contents are unknown, so nothing below it is
	// deleted or assumed missing, and the walk goes on without it.
	ListErr error
}

// Target is where a job writes. All paths are relative to the target root
// and have passed CleanRel; implementations must additionally refuse to
// write through a parent component that is a symlink, so a write can never
// leave the root.
type Target interface {
	// Walk visits every entry below sub ("" for the whole tree; sub
	// itself is not visited), parents before children. A sub that does
	// not exist or is not a directory (a symlink included) has no entries.
	// A directory that cannot be listed is visited with ListErr set, and
	// the walk goes on. fn may return fs.SkipDir for a directory.
	// Names starting with TempPrefix are reported too, so that the caller
	// can clean them up.
	Walk(ctx context.Context, sub string, fn func(Entry) error) error
	// Stat returns the entry without following a final symlink; a missing
	// path yields an error matching fs.ErrNotExist.
	Stat(ctx context.Context, rel string) (Entry, error)
	// WriteFile lands content atomically: written to a TempPrefix name in
	// the same directory, mode and mtime set, then renamed over rel.
	// Missing parent directories are created.
	WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error
	// Mkdir creates rel (and missing parents) and sets its mode.
	Mkdir(ctx context.Context, rel string, mode fs.FileMode) error
	// Symlink atomically replaces rel by a symlink to linkTarget.
	Symlink(ctx context.Context, rel, linkTarget string) error
	// Chtimes sets the mtime of rel (used on directories after their
	// contents were written).
	Chtimes(ctx context.Context, rel string, mtime time.Time) error
	// Chmod sets the permission bits of rel.
	Chmod(ctx context.Context, rel string, mode fs.FileMode) error
	// Rename moves from to to, replacing to.
	Rename(ctx context.Context, from, to string) error
	// RemoveAll removes rel recursively; a missing path is not an error.
	RemoveAll(ctx context.Context, rel string) error
	// Open reads back a file (checksum mode and verification).
	Open(ctx context.Context, rel string) (io.ReadCloser, error)
	Close() error
}

// Chowner is implemented by targets that can set ownership; the owner of
// a symlink is the link's own. A target that maps names (OwnerMapper)
// uses own's names where it knows them, the others own's numbers.
type Chowner interface {
	Lchown(ctx context.Context, rel string, own Owner) error
}

// ProtocolReporter is implemented by targets that can say how they reach
// the peer, for status and metrics: Protocol is "receiver v4", "sftp" or
// "local"; Fallback, when receiver: auto had to fall back to SFTP, says
// why the receiver could not be used ("" otherwise). Over SFTP a hostile
// peer has race windows the receiver does not have (README, threat
// model), so an unnoticed fallback must not be silent.
type ProtocolReporter interface {
	Protocol() string
	Fallback() string
}

// OwnerRequest asks WriteFile (and WriteFileIf) to give the file it lands
// this owner before publishing it, through the open temp file; Mkdir
// (the receiver, version 4) to give the directory this owner with it.
// Targets whose chown by path can follow a symlink the peer swapped in
// meanwhile (SFTP: setstat has no no-follow form) honour it; the
// Reconciler then skips its chown by path after landing. A target that
// ignores it leaves Done and Err unset, and the chown after landing runs
// as before.
type OwnerRequest struct {
	Owner
	// Set by the target: Done once the owner is set, Err when setting it
	// failed (the file still lands, with the SSH user's owner; the
	// Reconciler treats Err as it treats a failed chown).
	Done bool
	Err  error
}

type ownerKey struct{}

// WithOwner returns ctx carrying req for the target's WriteFile.
func WithOwner(ctx context.Context, req *OwnerRequest) context.Context {
	return context.WithValue(ctx, ownerKey{}, req)
}

// RequestedOwner returns the OwnerRequest in ctx, or nil.
func RequestedOwner(ctx context.Context) *OwnerRequest {
	req, _ := ctx.Value(ownerKey{}).(*OwnerRequest)
	return req
}

// ErrChangedOnTarget means the path changed on the target between the
// comparison and the write: nothing was replaced, and the path is compared
// again (two-way: an edit there meanwhile becomes a conflict, with a copy,
// instead of being overwritten).
var ErrChangedOnTarget = errors.New("changed on the target since it was compared")

// GuardedWriter is implemented by targets that can check, right before
// the rename that publishes a file, that the path still holds what the
// comparison saw (expect; nil: nothing there), and otherwise fail with
// ErrChangedOnTarget. Two-way sync uses it so that the window in which a
// peer's edit can be overwritten shrinks from a whole upload to one
// lstat.
type GuardedWriter interface {
	WriteFileIf(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, expect *Entry) error
}

// StillIs reports whether got, the path on the target now, is what a
// comparison saw (expect), both absent included; mtimes compare at whole
// seconds when either side has no more.
func StillIs(got, expect *Entry) bool { return identical(expect, got) }

// Connector opens sessions to one target. The job owns reconnection and
// backoff; a Connector only dials.
type Connector interface {
	Connect(ctx context.Context) (Target, error)
	// Name is the target's configured name, for logs and status.
	Name() string
}

// CleanRel normalises a relative path and refuses anything that could
// escape the root: absolute paths, "..", NUL bytes.
func CleanRel(rel string) (string, error) {
	if strings.ContainsRune(rel, 0) {
		return "", fmt.Errorf("path %q contains a NUL byte", rel)
	}
	if path.IsAbs(rel) || strings.HasPrefix(rel, "\\") {
		return "", fmt.Errorf("path %q is absolute; expected a path relative to the root", rel)
	}
	c := path.Clean(rel)
	if c == "." || c == "" {
		return "", fmt.Errorf("path %q names the root itself", rel)
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path %q escapes the root", rel)
	}
	return c, nil
}

// ErrRefused marks an operation a target refused because it would leave
// the target root or go through a symlink there (a hostile or corrupted
// peer docroot). The path is not retried until the next full pass, and is
// logged once and counted in lockstep_sync_refused_total.
var ErrRefused = errors.New("refused: the path leaves the target root or crosses a symlink on the target")

// DirRemover is implemented by targets that can remove a directory only
// when it is empty. Two-way mode uses it before a file or symlink takes
// the place of a directory on the peer, so that a directory with content
// is never removed for it: that is a type conflict, kept and reported.
type DirRemover interface {
	RemoveEmptyDir(ctx context.Context, rel string) error
}
