package sftptarget

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/lsync"
)

// session is one live SSH connection with its SFTP channels; it implements
// lsync.Target. Once the transport fails the session is dead for good and
// every method returns an error wrapping lsync.ErrDisconnected: the job
// then dials a new one.
//
// SFTP resolves each path string afresh on the server, following symlinks
// in parent components, and its setstat follows a final symlink too.
// Every operation therefore lstats each ancestor immediately before it is
// sent (nothing is remembered between operations: a directory seen as
// real a moment ago may be a symlink now). What remains, for a peer user
// who can swap a directory or file for a symlink within one round trip:
//   - any request can go through a parent swapped between its lstats and
//     the request (creation, rename, removal of that name elsewhere);
//   - a new file's mode and owner are set through its open handle and
//     cannot be redirected; its mtime is set by path, after an lstat shows
//     the temp name still holds the file, and checked after (fill);
//   - a change of mode, owner or mtime alone, and a new directory's mode
//     and owner, are sent by path, checked before and after (setByPath):
//     a swap within the round trip lands it outside, and is refused after;
//   - a removal re-checks its directory before every removeChunk entries.
//
// The receiver session (recvsession.go) has none of these windows.
type session struct {
	*transport
	host string // for error messages: "host:/abs/path"
	root string // absolute, cleaned
	// Several SFTP channels share the connection: OpenSSH serves each
	// channel with its own single-threaded sftp-server process, which is
	// the bottleneck for many small files.
	clients []*sftp.Client
	next    atomic.Uint32
	// fallback is why receiver: auto could not use the receiver ("" when
	// SFTP was asked for).
	fallback string
}

var (
	_ lsync.Target           = (*session)(nil)
	_ lsync.DirRemover       = (*session)(nil)
	_ lsync.ProtocolReporter = (*session)(nil)
)

// Protocol implements lsync.ProtocolReporter.
func (s *session) Protocol() string { return "sftp" }

// Fallback implements lsync.ProtocolReporter.
func (s *session) Fallback() string { return s.fallback }

func newSession(c *Connector, client *ssh.Client, clients []*sftp.Client) *session {
	return &session{
		transport: newTransport(c, client),
		host:      c.cfg.Host,
		root:      c.cfg.Path,
		clients:   clients,
	}
}

// Close implements lsync.Target.
func (s *session) Close() error {
	s.close(func() {
		for _, c := range s.clients {
			_ = c.Close()
		}
	})
	return nil
}

// check classifies an error returned by the SFTP client. Server status
// replies (no such file, permission denied, failure) concern one path;
// anything else means the channel is unusable.
func (s *session) check(op, remote string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if dead := s.deadErr(); dead != nil {
		return s.disconnected(fmt.Errorf("%s %s: %w", op, remote, dead))
	}
	if isStatusError(err) {
		return &fs.PathError{Op: op, Path: s.host + ":" + remote, Err: err}
	}
	s.fail(err)
	return s.disconnected(fmt.Errorf("%s %s: %w", op, remote, err))
}

func isStatusError(err error) bool {
	if errors.Is(err, sftp.ErrSSHFxConnectionLost) || errors.Is(err, sftp.ErrSSHFxNoConnection) {
		return false
	}
	var se *sftp.StatusError
	return errors.As(err, &se) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, fs.ErrExist)
}

func (s *session) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dead := s.deadErr(); dead != nil {
		return s.disconnected(dead)
	}
	return nil
}

// cl picks the channel for the next request or request sequence.
func (s *session) cl() *sftp.Client {
	return s.clients[int(s.next.Add(1))%len(s.clients)]
}

func (s *session) abs(rel string) string {
	return path.Join(s.root, rel)
}

// prepareRoot makes sure the root is a directory; like rsync it creates
// the last component but not missing ancestors, which usually mean a typo
// or an unmounted volume.
func (s *session) prepareRoot(ctx context.Context) error {
	if err := s.alive(ctx); err != nil {
		return err
	}
	fi, err := s.cl().Stat(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		if merr := s.cl().Mkdir(s.root); merr != nil {
			return fmt.Errorf("target %s: create root: %w", s.name, s.check("mkdir", s.root, merr))
		}
		s.logger.Info("created target root", "path", s.root)
		return nil
	}
	if err != nil {
		return fmt.Errorf("target %s: root: %w", s.name, s.check("stat", s.root, err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("target %s: root %s:%s is not a directory", s.name, s.host, s.root)
	}
	return nil
}

// ensureParents checks that every ancestor of rel below the root is a real
// directory, creating missing ones when create is set. This is what keeps
// a symlink planted on the target from redirecting writes outside the root
// (up to the race described on session).
//
// Every ancestor is lstat'ed afresh for every operation, all of them at
// once (one round trip, not one per level). Without create (reads,
// metadata, removal), an ancestor that is missing, a symlink or a file
// means rel does not exist inside the confined tree: the error then
// matches fs.ErrNotExist as well.
func (s *session) ensureParents(ctx context.Context, rel string, create bool) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	if err := s.alive(ctx); err != nil {
		return err
	}
	parts := strings.Split(dir, "/")
	c := s.cl()
	infos, errs := s.lstatLevels(c, parts)
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if errs[i] == nil {
			if err := s.checkDir(p, infos[i], create); err != nil {
				return err
			}
			continue
		}
		if !errors.Is(errs[i], fs.ErrNotExist) || !create {
			return s.check("lstat", s.abs(p), errs[i])
		}
		// Missing from here down: create each level, lstat'ing again
		// where a concurrent writer won the race.
		for j := i; j < len(parts); j++ {
			if err := s.makeDir(c, strings.Join(parts[:j+1], "/")); err != nil {
				return err
			}
		}
		return nil
	}
	return nil
}

func (s *session) makeDir(c *sftp.Client, p string) error {
	remote := s.abs(p)
	merr := c.Mkdir(remote)
	if merr == nil {
		return nil
	}
	fi, err := c.Lstat(remote)
	if err != nil {
		return s.check("mkdir", remote, merr)
	}
	return s.checkDir(p, fi, true)
}

// errSymlinkParent is returned when a write would go through a symlink.
var errSymlinkParent = fmt.Errorf("parent is a symlink on the target; refusing to write through it: %w", lsync.ErrRefused)

var errNotDirParent = fmt.Errorf("parent is not a directory on the target: %w", lsync.ErrRefused)

func (s *session) checkDir(p string, fi os.FileInfo, create bool) error {
	var why error
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		why = errSymlinkParent
	case !fi.IsDir():
		why = errNotDirParent
	default:
		return nil
	}
	if !create {
		why = fmt.Errorf("%w (%w)", fs.ErrNotExist, why)
	}
	return &fs.PathError{Op: "confine", Path: s.host + ":" + s.abs(p), Err: why}
}

func clean(rel string) (string, error) {
	c, err := lsync.CleanRel(rel)
	if err != nil {
		return "", fmt.Errorf("refusing target path: %w", err)
	}
	return c, nil
}

// cleanDir is clean for a directory, "" naming the root.
func cleanDir(rel string) (string, error) {
	if rel == "" {
		return "", nil
	}
	return clean(rel)
}

// tempName returns a unique hidden sibling of rel. Long names are cut so
// that the temp name stays within NAME_MAX.
func tempName(rel string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	base := path.Base(rel)
	if len(base) > 200 {
		base = base[:200]
	}
	return path.Join(path.Dir(rel), lsync.TempPrefix+base+"."+hex.EncodeToString(b[:]))
}

func permBits(mode fs.FileMode) fs.FileMode {
	return mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// walkPrefetch bounds the directory listings in flight during Walk: the
// walk is a series of round trips, so listing siblings ahead of the
// callback makes a large tree walk several times faster.
const walkPrefetch = 16

// Walk implements lsync.Target.
func (s *session) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	if err := s.alive(ctx); err != nil {
		return err
	}
	return walkTarget(ctx, sub, s.Stat, s.readDir, fn)
}

// walkTarget is Walk for both session kinds, which differ in how they
// stat and list.
func walkTarget(ctx context.Context, sub string, stat func(context.Context, string) (lsync.Entry, error),
	readDir func(context.Context, string) ([]lsync.Entry, error), fn func(lsync.Entry) error,
) error {
	if sub != "" {
		e, err := stat(ctx, sub)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || err == nil && !e.Mode.IsDir() {
			return nil
		}
		if err != nil {
			return err
		}
	}
	w := &walker{readDir: readDir, sem: make(chan struct{}, walkPrefetch)}
	ctx, cancel := context.WithCancel(ctx)
	defer w.wg.Wait() // runs after cancel: prefetchers stop early
	defer cancel()
	return w.walk(ctx, sub, w.list(ctx, sub), fn)
}

// walker lists directories ahead of the callback; readDir is the
// session's (SFTP or receiver).
type walker struct {
	readDir func(ctx context.Context, rel string) ([]lsync.Entry, error)
	sem     chan struct{}
	wg      sync.WaitGroup
}

// listing is one directory read ahead of the callback.
type listing struct {
	done    chan struct{}
	entries []lsync.Entry
	err     error
}

func (w *walker) list(ctx context.Context, rel string) *listing {
	l := &listing{done: make(chan struct{})}
	w.wg.Go(func() {
		defer close(l.done)
		select {
		case w.sem <- struct{}{}:
		case <-ctx.Done():
			l.err = ctx.Err()
			return
		}
		defer func() { <-w.sem }()
		l.entries, l.err = w.readDir(ctx, rel)
	})
	return l
}

func (w *walker) walk(ctx context.Context, rel string, l *listing, fn func(lsync.Entry) error) error {
	select {
	case <-l.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if l.err != nil {
		if rel != "" && errors.Is(l.err, fs.ErrNotExist) {
			return nil // removed while we walked
		}
		return l.err
	}
	subs := map[string]*listing{}
	for _, e := range l.entries {
		if e.Mode.IsDir() {
			subs[e.Path] = w.list(ctx, e.Path)
		}
	}
	for _, e := range l.entries {
		if e.Mode.IsDir() {
			// Look at the listing before fn sees the directory: one that
			// cannot be listed is reported as such and left out.
			sl := subs[e.Path]
			select {
			case <-sl.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if sl.err != nil && !errors.Is(sl.err, fs.ErrNotExist) && !errors.Is(sl.err, lsync.ErrDisconnected) {
				e.ListErr = sl.err
				if err := fn(e); err != nil && !errors.Is(err, fs.SkipDir) {
					return err
				}
				continue
			}
		}
		err := fn(e)
		if e.Mode.IsDir() && errors.Is(err, fs.SkipDir) {
			continue
		}
		if err != nil {
			return err
		}
		if e.Mode.IsDir() {
			if err := w.walk(ctx, e.Path, subs[e.Path], fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// readDir lists one directory (lstat attributes: READDIR never follows
// symlinks), sorted by name, with symlink targets resolved.
func (s *session) readDir(ctx context.Context, rel string) ([]lsync.Entry, error) {
	remote := s.root
	if rel != "" {
		remote = s.abs(rel)
	}
	c := s.cl()
	infos, err := c.ReadDirContext(ctx, remote)
	if err != nil {
		return nil, s.check("readdir", remote, err)
	}
	slices.SortFunc(infos, func(a, b os.FileInfo) int { return strings.Compare(a.Name(), b.Name()) })
	out := make([]lsync.Entry, 0, len(infos))
	for _, fi := range infos {
		name := fi.Name()
		if name == "." || name == ".." {
			continue
		}
		child := name
		if rel != "" {
			child = rel + "/" + name
		}
		e := lsync.Entry{Path: child, Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
		setOwner(&e, fi)
		if fi.Mode()&fs.ModeSymlink != 0 {
			t, err := c.ReadLink(s.abs(child))
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since the listing
			}
			if err != nil {
				return nil, s.check("readlink", s.abs(child), err)
			}
			e.LinkTarget = t
		}
		out = append(out, e)
	}
	return out, nil
}

func (s *session) entry(rel string, fi os.FileInfo) (lsync.Entry, error) {
	e := lsync.Entry{Path: rel, Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
	setOwner(&e, fi)
	if fi.Mode()&fs.ModeSymlink != 0 {
		remote := s.abs(rel)
		t, err := s.cl().ReadLink(remote)
		if err != nil {
			return e, s.check("readlink", remote, err)
		}
		e.LinkTarget = t
	}
	return e, nil
}

// Stat implements lsync.Target.
func (s *session) Stat(ctx context.Context, rel string) (lsync.Entry, error) {
	rel, err := clean(rel)
	if err != nil {
		return lsync.Entry{}, err
	}
	if err := s.ensureParents(ctx, rel, false); err != nil {
		return lsync.Entry{}, err
	}
	remote := s.abs(rel)
	fi, err := s.cl().Lstat(remote)
	if err != nil {
		return lsync.Entry{}, s.check("lstat", remote, err)
	}
	return s.entry(rel, fi)
}

// WriteFile implements lsync.Target.
func (s *session) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.writeFile(ctx, rel, r, mode, mtime, nil); err != nil {
		return fmt.Errorf("upload %s:%s: %w", s.host, s.abs(rel), err)
	}
	return nil
}

// WriteFileIf implements lsync.GuardedWriter: the path is looked at again
// right before the rename (one round trip of a window).
func (s *session) WriteFileIf(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, expect *lsync.Entry) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	guard := func() error { return guardPath(ctx, s.Stat, rel, expect) }
	if err := s.writeFile(ctx, rel, r, mode, mtime, guard); err != nil {
		return fmt.Errorf("upload %s:%s: %w", s.host, s.abs(rel), err)
	}
	return nil
}

// guardPath fails with ErrChangedOnTarget unless rel is what expect says
// (nil: absent).
func guardPath(ctx context.Context, stat func(context.Context, string) (lsync.Entry, error), rel string, expect *lsync.Entry) error {
	e, err := stat(ctx, rel)
	var got *lsync.Entry
	switch {
	case err == nil:
		got = &e
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if !lsync.StillIs(got, expect) {
		return fmt.Errorf("%s: %w", rel, lsync.ErrChangedOnTarget)
	}
	return nil
}

func (s *session) writeFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, guard func() error) error {
	if err := s.ensureParents(ctx, rel, true); err != nil {
		return err
	}
	tmp := s.abs(tempName(rel))
	c := s.cl()
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return s.withSpaceHint(tmp, s.check("create", tmp, err))
	}
	// SFTP v3's open carries no mode in pkg/sftp, so sftp-server creates
	// the file with its umask (0644, usually): made private before the
	// first byte is written, the content is never readable by others
	// before the rename. (The receiver creates it 0600 in one call.)
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		s.removeTemp(tmp)
		return s.check("chmod", tmp, err)
	}
	written, err := s.fill(ctx, c, f, tmp, r, mode, mtime, lsync.RequestedOwner(ctx))
	if err != nil {
		s.removeTemp(tmp)
		return err
	}
	if guard != nil {
		if err := guard(); err != nil {
			s.removeTemp(tmp)
			return err
		}
	}
	// The rename publishes whatever has the temp name now: the peer may
	// have moved the file aside and put a symlink (or a file of its own)
	// there while it was written.
	if err := s.stillOurs(c, tmp, written); err != nil {
		s.removeTemp(tmp)
		return err
	}
	if err := s.replace(ctx, c, tmp, rel); err != nil {
		s.removeTemp(tmp)
		return err
	}
	return nil
}

// replace renames tmp over rel. A real directory in the way (the source
// turned a directory into a file or symlink) is removed first; the rename
// itself never follows a symlink at rel.
func (s *session) replace(ctx context.Context, c *sftp.Client, tmp, rel string) error {
	final := s.abs(rel)
	err := c.PosixRename(tmp, final)
	if err == nil {
		return nil
	}
	fi, lerr := c.Lstat(final)
	if lerr != nil || !fi.IsDir() {
		return s.check("rename", final, err)
	}
	if err := s.removeTree(ctx, rel); err != nil {
		return err
	}
	return s.check("rename", final, c.PosixRename(tmp, final))
}

// smallFile is the largest content sent as a single SSH_FXP_WRITE: one
// maximal SFTP packet, which is also pkg/sftp's default write size.
const smallFile = 32 << 10

// largeFileRequests bounds the writes in flight for one file larger than
// smallFile. Sixteen packets (512 KiB) cover the bandwidth-delay product
// of a LAN; pkg/sftp's default of 64 only adds goroutines and buffers
// while many files are in flight at once.
const largeFileRequests = 16

// smallBufs recycles the buffers that hold a whole small file between
// the local read and its single write request.
var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallFile); return &b }}

// fill writes the content and metadata of an open temp file and closes
// it; written is the file as the handle last saw it, for stillOurs.
//
// Mode and owner are set through the handle (FSETSTAT): they reach the
// file that was created, whatever the peer does to its name meanwhile.
// pkg/sftp v1.13 has no FSETSTAT for times (File.Chtimes), so the mtime
// is set by path, which follows a symlink put at the temp name. That
// setstat is therefore sent only after an lstat of the name showed the
// handle's file, and the handle is asked afterwards whether the times
// reached it: a swap within that one round trip still hands the
// source's atime and mtime to the file the symlink points to (never
// its mode, owner or content), and is refused loudly.
func (s *session) fill(ctx context.Context, c *sftp.Client, f *sftp.File, tmp string, r io.Reader, mode fs.FileMode, mtime time.Time, own *lsync.OwnerRequest) (os.FileInfo, error) {
	if err := s.writeContent(ctx, f, tmp, r); err != nil {
		_ = f.Close()
		return nil, err
	}
	written, err := s.setMeta(ctx, c, f, tmp, mode, mtime, own)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := s.withSpaceHint(tmp, s.check("close", tmp, f.Close())); err != nil {
		return nil, err
	}
	return written, nil
}

// setMeta gives the open temp file its owner (when asked), mode and times.
func (s *session) setMeta(ctx context.Context, c *sftp.Client, f *sftp.File, tmp string, mode fs.FileMode, mtime time.Time, own *lsync.OwnerRequest) (os.FileInfo, error) {
	perm := permBits(mode)
	chmod := func() error { return s.check("chmod", tmp, f.Chmod(perm)) }
	if own != nil {
		chown := func() error {
			err := f.Chown(int(own.UID), int(own.GID))
			if err != nil && isStatusError(err) && errors.Is(err, fs.ErrPermission) {
				own.Err = &fs.PathError{Op: "chown", Path: s.host + ":" + tmp, Err: err}
				return nil // lands with the SSH user's owner; the Reconciler says so
			}
			if err == nil {
				own.Done = true
			}
			return s.check("chown", tmp, err)
		}
		if perm&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			// chown clears set-id bits: the mode goes second.
			if err := chown(); err != nil {
				return nil, err
			}
			if err := chmod(); err != nil {
				return nil, err
			}
		} else {
			var g errgroup.Group
			g.Go(chown)
			g.Go(chmod)
			if err := g.Wait(); err != nil {
				return nil, err
			}
		}
	} else if err := chmod(); err != nil {
		return nil, err
	}
	if err := s.alive(ctx); err != nil {
		return nil, err
	}
	if _, err := s.sameAsHandle(c, f, tmp); err != nil {
		return nil, err
	}
	if err := s.check("chtimes", tmp, c.Chtimes(tmp, mtime, mtime)); err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, s.check("fstat", tmp, err)
	}
	if fi.ModTime().Unix() != mtime.Unix() {
		return nil, s.refuse("chtimes", tmp, "the temp file was swapped while its times were set: they may have been set on the file a symlink there pointed to")
	}
	return fi, nil
}

// sameAsHandle lstats the temp name and fstats the handle in one round
// trip, and refuses unless the name still holds the handle's file.
func (s *session) sameAsHandle(c *sftp.Client, f *sftp.File, tmp string) (os.FileInfo, error) {
	var named, held os.FileInfo
	var g errgroup.Group
	g.Go(func() (err error) {
		named, err = c.Lstat(tmp)
		return err
	})
	g.Go(func() (err error) {
		held, err = f.Stat()
		return err
	})
	if err := g.Wait(); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, s.refuse("lstat", tmp, "the temp file was moved away while it was written")
		}
		return nil, s.check("lstat", tmp, err)
	}
	if !sameFile(named, held) {
		return nil, s.refuse("lstat", tmp, "the temp file was replaced while it was written ("+describe(named)+" where "+describe(held)+" was written)")
	}
	return held, nil
}

// stillOurs refuses unless tmp, about to be renamed, is the file written
// (written: the handle's last fstat).
func (s *session) stillOurs(c *sftp.Client, tmp string, written os.FileInfo) error {
	named, err := c.Lstat(tmp)
	if errors.Is(err, fs.ErrNotExist) {
		return s.refuse("rename", tmp, "the temp file was moved away before it was published")
	}
	if err != nil {
		return s.check("lstat", tmp, err)
	}
	if !sameFile(named, written) {
		return s.refuse("rename", tmp, "the temp file was replaced before it was published ("+describe(named)+" where "+describe(written)+" was written)")
	}
	return nil
}

// sameFile tells whether named (an lstat) is held (an fstat of the file
// lockstep created). SFTP v3 attributes carry no device or inode number
// (OpenSSH sends none), so identity is the attributes lockstep set: a
// regular file with the same size, mode, owner and mtime. A file the peer
// forges to match has the owner lockstep gave it, and could be written by
// that user after landing anyway.
func sameFile(named, held os.FileInfo) bool {
	if !named.Mode().IsRegular() || !held.Mode().IsRegular() {
		return false
	}
	if named.Size() != held.Size() || named.Mode() != held.Mode() || !named.ModTime().Equal(held.ModTime()) {
		return false
	}
	a, aok := named.Sys().(*sftp.FileStat)
	b, bok := held.Sys().(*sftp.FileStat)
	return aok == bok && (!aok || a.UID == b.UID && a.GID == b.GID)
}

func describe(fi os.FileInfo) string {
	d := fmt.Sprintf("%v size %d mtime %d", fi.Mode(), fi.Size(), fi.ModTime().Unix())
	if st, ok := fi.Sys().(*sftp.FileStat); ok {
		d += fmt.Sprintf(" owner %d:%d", st.UID, st.GID)
	}
	return d
}

// refuse is a refusal (lsync.ErrRefused: counted, logged once per path)
// for something the peer did to a name lockstep was using.
func (s *session) refuse(op, remote, why string) error {
	return &fs.PathError{Op: op, Path: s.host + ":" + remote, Err: fmt.Errorf("%s: %w", why, lsync.ErrRefused)}
}

// writeContent copies r into f. Most files of a docroot fit in one SFTP
// packet: those are read whole and sent as one request, which spares the
// per-file goroutines and buffers of pkg/sftp's concurrent ReadFrom.
func (s *session) writeContent(ctx context.Context, f *sftp.File, tmp string, r io.Reader) error {
	cr := newContextReader(ctx, r)
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := *bp
	n, rerr := readFull(cr, buf)
	var err error
	switch {
	case rerr == io.EOF:
		if n > 0 {
			_, err = f.WriteAt(buf[:n], 0)
		}
	case rerr != nil:
		err = rerr
	default:
		rest := io.MultiReader(bytes.NewReader(buf[:n]), cr)
		_, err = f.ReadFromWithConcurrency(rest, largeFileRequests)
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var serr *sourceError
	if errors.As(err, &serr) {
		return serr.err
	}
	return s.withSpaceHint(tmp, s.check("write", tmp, err))
}

// readFull reads until b is full or r fails; unlike io.ReadFull it
// returns io.EOF unchanged after a partial read.
func readFull(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// withSpaceHint adds the free space of the target filesystem to a generic
// SFTP failure: OpenSSH reports ENOSPC as a bare "Failure".
func (s *session) withSpaceHint(remote string, err error) error {
	var se *sftp.StatusError
	if err == nil || !errors.As(err, &se) || se.FxCode() != sftp.ErrSSHFxFailure {
		return err
	}
	st, serr := s.cl().StatVFS(path.Dir(remote))
	if serr != nil {
		return err
	}
	return fmt.Errorf("%w (is the target filesystem full? %d bytes and %d inodes free)", err, st.FreeSpace(), st.Ffree)
}

func (s *session) removeTemp(tmp string) {
	if s.deadErr() != nil {
		return // a later reconciliation removes leftovers
	}
	if err := s.cl().Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logger.Warn("cannot remove temp file", "path", tmp, "err", err)
	}
}

// Mkdir implements lsync.Target. A non-directory in the way (the source
// turned a file or symlink into a directory) is replaced.
func (s *session) Mkdir(ctx context.Context, rel string, mode fs.FileMode) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.ensureParents(ctx, rel, true); err != nil {
		return err
	}
	if err := s.alive(ctx); err != nil {
		return err
	}
	remote := s.abs(rel)
	c := s.cl()
	if merr := c.Mkdir(remote); merr != nil {
		fi, err := c.Lstat(remote)
		if err != nil {
			return s.check("mkdir", remote, merr)
		}
		if !fi.IsDir() {
			// SSH_FXP_REMOVE unlinks; it never follows a symlink.
			if err := c.Remove(remote); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return s.check("remove", remote, err)
			}
			if err := c.Mkdir(remote); err != nil {
				return s.check("mkdir", remote, err)
			}
		}
	}
	// The mode by path (a directory has no handle SFTP can setstat): a
	// symlink put in its place meanwhile is refused, and the mode is only
	// sent when the directory does not have it already (umask 022 and
	// the usual 0755).
	return s.setByPath(ctx, "chmod", rel,
		fmt.Errorf("the directory just made was replaced by a symlink: %w", lsync.ErrRefused),
		hasPerm(mode), func(c *sftp.Client, remote string) error { return c.Chmod(remote, permBits(mode)) })
}

// Symlink implements lsync.Target.
func (s *session) Symlink(ctx context.Context, rel, linkTarget string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.ensureParents(ctx, rel, true); err != nil {
		return err
	}
	tmp := s.abs(tempName(rel))
	c := s.cl()
	if err := c.Symlink(linkTarget, tmp); err != nil {
		return s.check("symlink", tmp, err)
	}
	if err := s.replace(ctx, c, tmp, rel); err != nil {
		s.removeTemp(tmp)
		return err
	}
	return nil
}

// setByPath applies a metadata change (apply) to rel by path, which is
// all SFTP has for a file lockstep does not hold open (setstat follows
// symlinks, in the final component too, and OpenSSH's lsetstat@openssh.com
// is not in pkg/sftp). has tells whether an lstat shows the change made.
//
// The ancestors and rel are lstat'ed in one round trip right before the
// setstat, and again right after it. Before: a symlink at rel gets
// atSymlink (a symlink's own metadata cannot be set over SFTP), a symlink
// or non-directory among the ancestors means rel is not in the tree, and
// a change already made is not sent. After: a symlink at rel or among the
// ancestors, or rel without the change, means the peer swapped something
// within that round trip and the setstat may have reached a file outside
// the root; that is refused (counted, logged once per path). What remains
// is detection, not prevention: a swap within the one round trip between
// the first lstat and the setstat still lands the change outside. The
// receiver (lockstep receive) has no such window.
func (s *session) setByPath(ctx context.Context, op, rel string, atSymlink error, has func(os.FileInfo) bool, apply func(c *sftp.Client, remote string) error) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.alive(ctx); err != nil {
		return err
	}
	c := s.cl()
	remote := s.abs(rel)
	fi, err := s.lstatChain(c, rel)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return &fs.PathError{Op: op, Path: s.host + ":" + remote, Err: atSymlink}
	}
	if has(fi) {
		return nil
	}
	if err := s.check(op, remote, apply(c, remote)); err != nil {
		return err
	}
	after, err := s.lstatChain(c, rel)
	switch {
	case errors.Is(err, lsync.ErrRefused):
		return s.refuse(op, remote, "a parent became a symlink while the "+op+" was sent; it may have reached a file outside the root")
	case errors.Is(err, fs.ErrNotExist):
		return nil // removed meanwhile: the next comparison sees it
	case err != nil:
		return err
	case after.Mode()&fs.ModeSymlink != 0:
		return s.refuse(op, remote, "became a symlink while the "+op+" was sent; it may have reached the file the symlink points to")
	case !has(after):
		return s.refuse(op, remote, "does not show the "+op+" just made ("+describe(after)+"): swapped meanwhile, the change may have reached another file")
	}
	return nil
}

// lstatLevels lstats every level of the path parts spell, all at once
// (one round trip, not one per level).
func (s *session) lstatLevels(c *sftp.Client, parts []string) ([]os.FileInfo, []error) {
	infos := make([]os.FileInfo, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i := range parts {
		wg.Go(func() { infos[i], errs[i] = c.Lstat(s.abs(strings.Join(parts[:i+1], "/"))) })
	}
	wg.Wait()
	return infos, errs
}

// lstatChain lstats every ancestor of rel and rel itself in one round
// trip. An ancestor that is missing, a symlink or not a directory means
// rel is not in the confined tree: the error matches fs.ErrNotExist, and
// lsync.ErrRefused for a symlink or non-directory.
func (s *session) lstatChain(c *sftp.Client, rel string) (os.FileInfo, error) {
	parts := strings.Split(rel, "/")
	infos, errs := s.lstatLevels(c, parts)
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if errs[i] != nil {
			return nil, s.check("lstat", s.abs(p), errs[i])
		}
		if i < len(parts)-1 {
			if err := s.checkDir(p, infos[i], false); err != nil {
				return nil, err
			}
		}
	}
	return infos[len(parts)-1], nil
}

// errSymlinkMeta: SFTP's setstat follows symlinks, so a symlink's own
// metadata cannot be set; the change is skipped, not sent to whatever the
// link points to.
var errSymlinkMeta = fmt.Errorf("is a symlink; SFTP cannot change a symlink's own metadata: %w", errors.ErrUnsupported)

// setOwner copies the numeric owner SFTP reports (v3 has no names).
func setOwner(e *lsync.Entry, fi os.FileInfo) {
	if st, ok := fi.Sys().(*sftp.FileStat); ok {
		e.UID, e.GID, e.Owned = st.UID, st.GID, true
	}
}

// Lchown implements lsync.Chowner. SFTP's setstat follows symlinks, so
// a symlink keeps the SSH user as its owner. A file lockstep uploads gets
// its owner through the open temp file (lsync.OwnerRequest); this is for
// directories and for a chown alone. SFTP (version 3) carries numeric
// ids only: own's names cannot be mapped on the peer, the numbers go
// (the job says so once, see lsync.OwnerMapper).
func (s *session) Lchown(ctx context.Context, rel string, own lsync.Owner) error {
	uid, gid := own.UID, own.GID
	return s.setByPath(ctx, "chown", rel, errSymlinkMeta,
		func(fi os.FileInfo) bool {
			st, ok := fi.Sys().(*sftp.FileStat)
			return ok && st.UID == uid && st.GID == gid
		},
		func(c *sftp.Client, remote string) error { return c.Chown(remote, int(uid), int(gid)) })
}

// Chtimes implements lsync.Target.
func (s *session) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	return s.setByPath(ctx, "chtimes", rel, errSymlinkMeta,
		func(fi os.FileInfo) bool { return fi.ModTime().Unix() == mtime.Unix() },
		func(c *sftp.Client, remote string) error { return c.Chtimes(remote, mtime, mtime) })
}

// Chmod implements lsync.Target.
func (s *session) Chmod(ctx context.Context, rel string, mode fs.FileMode) error {
	return s.setByPath(ctx, "chmod", rel, errSymlinkMeta, hasPerm(mode),
		func(c *sftp.Client, remote string) error { return c.Chmod(remote, permBits(mode)) })
}

func hasPerm(mode fs.FileMode) func(os.FileInfo) bool {
	return func(fi os.FileInfo) bool { return permBits(fi.Mode()) == permBits(mode) }
}

// Rename implements lsync.Target.
func (s *session) Rename(ctx context.Context, from, to string) error {
	from, err := clean(from)
	if err != nil {
		return err
	}
	to, err = clean(to)
	if err != nil {
		return err
	}
	if err := s.ensureParents(ctx, from, false); err != nil {
		return err
	}
	if err := s.ensureParents(ctx, to, true); err != nil {
		return err
	}
	return s.check("rename", s.abs(from)+" -> "+s.abs(to), s.cl().PosixRename(s.abs(from), s.abs(to)))
}

// RemoveAll implements lsync.Target.
func (s *session) RemoveAll(ctx context.Context, rel string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.ensureParents(ctx, rel, false); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // nothing at rel inside the tree
		}
		return err
	}
	remote := s.abs(rel)
	fi, err := s.cl().Lstat(remote)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return s.check("lstat", remote, err)
	}
	if !fi.IsDir() {
		return s.removeFile(remote)
	}
	return s.removeTree(ctx, rel)
}

// RemoveEmptyDir implements lsync.DirRemover: SSH_FXP_RMDIR fails on a
// directory with entries (and on a symlink).
func (s *session) RemoveEmptyDir(ctx context.Context, rel string) error {
	rel, err := clean(rel)
	if err != nil {
		return err
	}
	if err := s.ensureParents(ctx, rel, false); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	remote := s.abs(rel)
	err = s.cl().RemoveDirectory(remote)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return s.check("rmdir", remote, err)
}

func (s *session) removeFile(remote string) error {
	err := s.cl().Remove(remote)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return s.check("remove", remote, err)
}

// removeChunk is how many entries of a directory removeTree removes
// concurrently after one re-check (each removal is a round trip).
const removeChunk = 16

// removeTree deletes the real directory rel (never following symlinks:
// READDIR reports lstat attributes, REMOVE and RMDIR do not follow a final
// symlink). SFTP resolves the parent components of every path afresh, so
// before each chunk of removals, and before each directory's listing and
// rmdir, rel and its ancestors are lstat'ed again: a directory the peer
// swaps for a symlink meanwhile stops the deletion with a refusal instead
// of deleting the same names wherever the symlink points. The remaining
// window is one round trip of up to removeChunk removals.
func (s *session) removeTree(ctx context.Context, rel string) error {
	remote := s.abs(rel)
	c := s.cl()
	if gone, err := s.confirmDir(ctx, c, rel); gone || err != nil {
		return err
	}
	infos, err := c.ReadDirContext(ctx, remote)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return s.check("readdir", remote, err)
	}
	var files []string
	for _, fi := range infos {
		if fi.Name() == "." || fi.Name() == ".." {
			continue
		}
		child := rel + "/" + fi.Name()
		if fi.IsDir() {
			if err := s.removeTree(ctx, child); err != nil {
				return err
			}
			continue
		}
		files = append(files, child)
	}
	for chunk := range slices.Chunk(files, removeChunk) {
		if gone, err := s.confirmDir(ctx, c, rel); gone || err != nil {
			return err
		}
		g, _ := errgroup.WithContext(ctx)
		for _, child := range chunk {
			g.Go(func() error { return s.removeFile(s.abs(child)) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	if gone, err := s.confirmDir(ctx, c, rel); gone || err != nil {
		return err
	}
	err = c.RemoveDirectory(remote)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return s.check("rmdir", remote, err)
}

// confirmDir lstats rel and its ancestors (one round trip) during a
// removal: gone when rel no longer exists, a refusal when it or an
// ancestor is a symlink or not a directory any more.
func (s *session) confirmDir(ctx context.Context, c *sftp.Client, rel string) (gone bool, err error) {
	if err := s.alive(ctx); err != nil {
		return false, err
	}
	fi, err := s.lstatChain(c, rel)
	switch {
	case errors.Is(err, lsync.ErrRefused):
		return false, s.refuse("remove", s.abs(rel), "a parent was replaced by a symlink or file during the removal; stopped")
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	case err != nil:
		return false, err
	case !fi.IsDir():
		return false, s.refuse("remove", s.abs(rel), "was replaced by "+describe(fi)+" during the removal; stopped")
	}
	return false, nil
}

// Open implements lsync.Target.
func (s *session) Open(ctx context.Context, rel string) (io.ReadCloser, error) {
	rel, err := clean(rel)
	if err != nil {
		return nil, err
	}
	if err := s.ensureParents(ctx, rel, false); err != nil {
		return nil, err
	}
	remote := s.abs(rel)
	fi, err := s.cl().Lstat(remote)
	if err != nil {
		return nil, s.check("lstat", remote, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: s.host + ":" + remote, Err: errors.New("not a regular file")}
	}
	f, err := s.cl().Open(remote)
	if err != nil {
		return nil, s.check("open", remote, err)
	}
	return &remoteFile{s: s, f: f, remote: remote}, nil
}

type remoteFile struct {
	s      *session
	f      *sftp.File
	remote string
}

func (r *remoteFile) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && err != io.EOF {
		err = r.s.check("read", r.remote, err)
	}
	return n, err
}

// WriteTo keeps io.Copy on the pipelined read path of pkg/sftp.
func (r *remoteFile) WriteTo(w io.Writer) (int64, error) {
	n, err := r.f.WriteTo(destWriter{w})
	if err != nil {
		var we *destError
		if errors.As(err, &we) {
			return n, we.err
		}
		err = r.s.check("read", r.remote, err)
	}
	return n, err
}

func (r *remoteFile) Close() error {
	return r.s.check("close", r.remote, r.f.Close())
}

// sourceError marks a failure to read the local content, so that it is
// not mistaken for a broken connection.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// destError is the same for the writer side of remoteFile.WriteTo.
type destError struct{ err error }

func (e *destError) Error() string { return e.err.Error() }
func (e *destError) Unwrap() error { return e.err }

type destWriter struct{ w io.Writer }

func (d destWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	if err != nil {
		err = &destError{err: err}
	}
	return n, err
}

// contextReader stops an upload when ctx is cancelled, marks local read
// errors, and advertises the size when known so that pkg/sftp pipelines
// the writes (-1 means unknown: pipeline at full depth).
type contextReader struct {
	ctx  context.Context
	r    io.Reader
	size int64
}

func newContextReader(ctx context.Context, r io.Reader) *contextReader {
	size := int64(-1)
	switch v := r.(type) {
	case interface{ Len() int }:
		size = int64(v.Len())
	case interface{ Size() int64 }:
		size = v.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if fi, err := v.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
	}
	return &contextReader{ctx: ctx, r: r, size: size}
}

func (c *contextReader) Size() int64 { return c.size }

func (c *contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{err: err}
	}
	return n, err
}

// ReadDir implements lsync.DirLister.
func (s *session) ReadDir(ctx context.Context, rel string) ([]lsync.Entry, error) {
	if err := s.alive(ctx); err != nil {
		return nil, err
	}
	rel, err := cleanDir(rel)
	if err != nil {
		return nil, err
	}
	return s.readDir(ctx, rel)
}
