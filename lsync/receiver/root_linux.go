package receiver

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
	"github.com/lockstep-ha/lockstep/lsync"
)

// Root is a directory tree the receiver confines every operation to. Each
// path is resolved below the root's descriptor, one directory at a time
// or with openat2, never following a symlink and never leaving the root;
// operations then act on the final name relative to its parent's
// descriptor.
type Root struct {
	path string
	fd   int // O_PATH
	// noOpenat2 is set once openat2 turned out to be missing (kernel
	// older than 5.6) or filtered (seccomp): the per-component walk gives
	// the same guarantee with more system calls.
	noOpenat2 atomic.Bool
	// anonLink is how putNew links an unnamed file in (linkEmptyPath,
	// linkProcFD, or linkNone: not at all).
	anonLink atomic.Int32
	// noMarks: files land without the delivery mark (opOptions).
	noMarks atomic.Bool
}

// OpenRoot opens dir as a confinement root. Like rsync it creates the last
// component when missing, but not missing ancestors (a typo, an unmounted
// volume).
func OpenRoot(dir string) (*Root, error) {
	if !path.IsAbs(dir) {
		return nil, fmt.Errorf("root %q must be an absolute path", dir)
	}
	dir = path.Clean(dir)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		if merr := unix.Mkdir(dir, 0o755); merr != nil && !errors.Is(merr, unix.EEXIST) {
			return nil, &fs.PathError{Op: "mkdir", Path: dir, Err: merr}
		}
		fd, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open root", Path: dir, Err: err}
	}
	return &Root{path: dir, fd: fd}, nil
}

// Path is the root as given.
func (r *Root) Path() string { return r.path }

// Close releases the root's descriptor.
func (r *Root) Close() error { return unix.Close(r.fd) }

// refusal is a path that would leave the root or cross a symlink. errno is
// what the client sees besides the refusal: ENOENT for reads and metadata
// (nothing at that path inside the tree), the cause for writes.
type refusal struct {
	errno unix.Errno
	why   string
}

func (e *refusal) Error() string { return e.why }

// invalid is a malformed request (a path that is not a clean relative
// path, an unknown handle).
type invalid struct{ why string }

func (e *invalid) Error() string { return e.why }

// checkRel accepts exactly the paths lsync.CleanRel produces: relative,
// already clean, no "..", no NUL. Anything else is a client bug or an
// attack and is refused rather than normalised.
func checkRel(rel string) error {
	c, err := lsync.CleanRel(rel)
	if err != nil {
		return &refusal{errno: unix.EINVAL, why: err.Error()}
	}
	if c != rel {
		return &refusal{errno: unix.EINVAL, why: fmt.Sprintf("path %q is not in canonical form (%q)", rel, c)}
	}
	return nil
}

func retryEINTR(fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// openDir opens the directory rel ("" is the root) with flags (O_PATH or
// O_RDONLY). With create, missing directories are made (mode 0755, as
// mkdir -p). reading tells how a symlink or non-directory on the way is
// reported: as absence (reads, metadata, removal) or as a refusal
// naming the component (writes).
func (r *Root) openDir(rel string, flags int, create, reading bool) (int, error) {
	if rel == "" {
		fd, err := unix.Openat(r.fd, ".", flags|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: r.path, Err: err}
		}
		return fd, nil
	}
	if !r.noOpenat2.Load() {
		fd, err := r.openat2Dir(rel, flags)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) && !r.openat2Works():
			r.noOpenat2.Store(true)
		case errors.Is(err, unix.ENOENT) && create:
			// The walk creates what is missing.
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV):
			// The walk names the offending component.
		default:
			return -1, &fs.PathError{Op: "open", Path: r.show(rel), Err: err}
		}
	}
	return r.walkDir(rel, flags, create, reading)
}

func (r *Root) openat2Dir(rel string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 8 {
		fd, err := unix.Openat2(r.fd, rel, &how)
		// EAGAIN: a rename somewhere in the tree raced with the
		// resolution (RESOLVE_BENEATH refuses to guess).
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		return fd, err
	}
	return -1, unix.EAGAIN
}

// openat2Works tells a seccomp filter answering EPERM from a real
// permission problem: opening the root itself must succeed.
func (r *Root) openat2Works() bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH}
	fd, err := unix.Openat2(r.fd, ".", &how)
	if err != nil {
		return false
	}
	_ = unix.Close(fd)
	return true
}

// walkDir resolves rel one component at a time, each with
// openat(O_NOFOLLOW|O_DIRECTORY) below the previous one: a symlink
// anywhere fails instead of being followed.
func (r *Root) walkDir(rel string, flags int, create, reading bool) (int, error) {
	fd, err := unix.Openat(r.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: r.path, Err: err}
	}
	parts := strings.Split(rel, "/")
	for i, comp := range parts {
		fl := unix.O_PATH
		if i == len(parts)-1 {
			fl = flags
		}
		var next int
		err := retryEINTR(func() (err error) {
			next, err = unix.Openat(fd, comp, fl|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			return err
		})
		if errors.Is(err, unix.ENOENT) && create {
			if merr := unix.Mkdirat(fd, comp, 0o755); merr != nil && !errors.Is(merr, unix.EEXIST) {
				_ = unix.Close(fd)
				return -1, &fs.PathError{Op: "mkdir", Path: r.show(strings.Join(parts[:i+1], "/")), Err: merr}
			}
			err = retryEINTR(func() (err error) {
				next, err = unix.Openat(fd, comp, fl|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				return err
			})
		}
		if err != nil {
			sub := strings.Join(parts[:i+1], "/")
			cerr := r.classify(fd, comp, sub, err, reading)
			_ = unix.Close(fd)
			return -1, cerr
		}
		_ = unix.Close(fd)
		fd = next
	}
	return fd, nil
}

// classify turns the failure to open a directory component into a refusal
// when the component is a symlink or not a directory.
func (r *Root) classify(dirfd int, comp, sub string, err error, reading bool) error {
	var st unix.Stat_t
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		why := "is not a directory"
		if serr := unix.Fstatat(dirfd, comp, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			why = "is a symlink"
		}
		errno := err.(unix.Errno)
		if reading {
			errno = unix.ENOENT
		}
		return &refusal{errno: errno, why: fmt.Sprintf("%s %s inside the root; refusing to go through it", r.show(sub), why)}
	}
	return &fs.PathError{Op: "open", Path: r.show(sub), Err: err}
}

// show renders rel for messages (the client adds the host).
func (r *Root) show(rel string) string {
	if rel == "" {
		return r.path
	}
	return r.path + "/" + rel
}

// parent resolves rel's parent directory (O_PATH) and returns it with the
// final name.
func (r *Root) parent(rel string, create, reading bool) (int, string, error) {
	if err := checkRel(rel); err != nil {
		return -1, "", err
	}
	dir, name := path.Split(rel)
	fd, err := r.openDir(strings.TrimSuffix(dir, "/"), unix.O_PATH, create, reading)
	return fd, name, err
}

// Stat lstats rel.
func (r *Root) Stat(rel string) (Entry, error) {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return Entry{}, err
	}
	defer unix.Close(dfd)
	e, err := r.statAt(dfd, name)
	if err != nil {
		return Entry{}, &fs.PathError{Op: "lstat", Path: r.show(rel), Err: err}
	}
	e.Name = rel
	return e, nil
}

func (r *Root) statAt(dfd int, name string) (Entry, error) {
	var st unix.Stat_t
	if err := retryEINTR(func() error { return unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) }); err != nil {
		return Entry{}, err
	}
	e := Entry{
		Name: name, Mode: unixmode.FromStat(st.Mode), Size: st.Size,
		ModTime: time.Unix(st.Mtim.Unix()), UID: st.Uid, GID: st.Gid,
	}
	if e.Mode&fs.ModeSymlink != 0 {
		t, err := readlinkAt(dfd, name)
		if err != nil {
			return Entry{}, err
		}
		e.LinkTarget = t
	}
	return e, nil
}

func readlinkAt(dfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dfd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

// ReadDir lists the directory rel ("" for the root), sorted by name,
// without following symlinks. Entries removed while listing are skipped.
func (r *Root) ReadDir(rel string) ([]Entry, error) {
	if rel != "" {
		if err := checkRel(rel); err != nil {
			return nil, err
		}
	}
	fd, err := r.openDir(rel, unix.O_RDONLY, false, true)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), r.show(rel))
	defer f.Close()
	// Readdirnames reads the open descriptor (getdents); each entry is
	// then looked at relative to it, never by a path.
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]Entry, 0, len(names))
	for _, n := range names {
		e, err := r.statAt(fd, n)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "lstat", Path: r.show(path.Join(rel, n)), Err: err}
		}
		out = append(out, e)
	}
	return out, nil
}

// Mkdir makes rel a directory with mode, creating missing parents and
// replacing a file or symlink in the way (unlinked, never followed).
func (r *Root) Mkdir(rel string, mode fs.FileMode) error {
	_, err := r.mkdirOwned(rel, mode, nil)
	return err
}

// mkdirOwned is Mkdir; with own set, the directory also gets that owner
// (version 4), through the descriptor its mode is set through (see
// chmodAt). A failed chown does not stop the mkdir: ownErr reports it.
func (r *Root) mkdirOwned(rel string, mode fs.FileMode, own *fileOwner) (ownErr, err error) {
	dfd, name, err := r.parent(rel, true, false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	err = unix.Mkdirat(dfd, name, 0o700)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if serr := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr != nil {
			return nil, &fs.PathError{Op: "mkdir", Path: r.show(rel), Err: serr}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if uerr := unix.Unlinkat(dfd, name, 0); uerr != nil && !errors.Is(uerr, unix.ENOENT) {
				return nil, &fs.PathError{Op: "remove", Path: r.show(rel), Err: uerr}
			}
			err = unix.Mkdirat(dfd, name, 0o700)
		} else {
			err = nil
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "mkdir", Path: r.show(rel), Err: err}
	}
	return r.chownChmodAt(dfd, name, rel, own, mode)
}

// tempName is a fresh hidden sibling name for name, cut to stay within
// NAME_MAX.
func tempName(name string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	if len(name) > 200 {
		name = name[:200]
	}
	return lsync.TempPrefix + name + "." + hex.EncodeToString(b[:])
}

// tempFile is a file being written beside its final name.
type tempFile struct {
	// mu orders writes against commit and abort, which close fd: a write
	// must never reach a descriptor number reused by another file.
	mu        sync.Mutex
	dfd       int // the parent directory, O_PATH
	name, tmp string
	rel       string
	fd        int
	// sharedDir: dfd belongs to the caller (putMany's files of one
	// directory), which closes it; release leaves it open.
	sharedDir bool
}

// create opens a new temp file (0600, O_EXCL, never through a symlink)
// beside rel.
func (r *Root) create(rel string) (*tempFile, error) {
	dfd, name, err := r.parent(rel, true, false)
	if err != nil {
		return nil, err
	}
	t, err := r.createAt(dfd, name, rel)
	if err != nil {
		_ = unix.Close(dfd)
		return nil, err
	}
	return t, nil
}

// createAt opens a new temp file for rel, whose final name is name, in
// its parent directory dfd (resolved by the caller, who keeps dfd on
// failure).
func (r *Root) createAt(dfd int, name, rel string) (*tempFile, error) {
	tmp := tempName(name)
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return nil, r.spaceHint(dfd, &fs.PathError{Op: "create", Path: r.show(path.Join(path.Dir(rel), tmp)), Err: err})
	}
	return &tempFile{dfd: dfd, name: name, tmp: tmp, rel: rel, fd: fd}, nil
}

func (r *Root) writeAt(t *tempFile, off int64, data []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd < 0 {
		return &invalid{why: "write: the file was already committed or aborted"}
	}
	if err := pwriteAll(t.fd, data, off); err != nil {
		return r.spaceHint(t.dfd, &fs.PathError{Op: "write", Path: r.show(path.Join(path.Dir(t.rel), t.tmp)), Err: err})
	}
	return nil
}

// pwriteAll writes all of data at off in fd.
func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		var n int
		if err := retryEINTR(func() (err error) { n, err = unix.Pwrite(fd, data, off); return err }); err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// commit sets mode and mtime on the temp file and renames it over its
// final name; a directory in the way is removed first (the source turned
// a directory into a file).
func (r *Root) commit(t *tempFile, mode fs.FileMode, mtime time.Time) error {
	_, err := r.commitOwned(t, mode, mtime, nil)
	return err
}

// fileOwner is the owner and group a file gets before it is published
// (putmany, version 4), in this host's ids.
type fileOwner struct{ uid, gid int }

// commitOwned is commit; with own set, the temp file gets that owner
// first, through its descriptor (never by name: nothing the peer swaps
// in can be chowned instead). A failed chown does not stop the file:
// ownErr reports it (a peer user that may not chown), and the file lands
// with the receiver's owner, as a put and a failed chown would leave it.
func (r *Root) commitOwned(t *tempFile, mode fs.FileMode, mtime time.Time, own *fileOwner) (ownErr, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	defer r.release(t)
	tmpShown := r.show(path.Join(path.Dir(t.rel), t.tmp))
	if own != nil {
		// Before the chmod: a chown clears set-user-ID and set-group-ID
		// bits, which the chmod then sets as the source has them.
		if err := unix.Fchown(t.fd, own.uid, own.gid); err != nil {
			ownErr = &fs.PathError{Op: "chown", Path: r.show(t.rel), Err: err}
		}
	}
	return ownErr, r.publish(t, mode, mtime, tmpShown)
}

// publish is the rest of commitOwned, t.mu held.
func (r *Root) publish(t *tempFile, mode fs.FileMode, mtime time.Time, tmpShown string) error {
	if err := unix.Fchmod(t.fd, unixmode.ToUnix(mode)); err != nil {
		r.discard(t)
		return &fs.PathError{Op: "chmod", Path: tmpShown, Err: err}
	}
	var held unix.Stat_t
	if err := unix.Fstat(t.fd, &held); err != nil {
		r.discard(t)
		return &fs.PathError{Op: "fstat", Path: tmpShown, Err: err}
	}
	// A two-way node reads it to tell this delivery from its own files.
	if !r.noMarks.Load() {
		lsync.MarkDelivered(t.fd, t.rel, held.Size, mtime)
	}
	err := unix.Close(t.fd)
	t.fd = -1
	if err != nil {
		r.discard(t)
		return r.spaceHint(t.dfd, &fs.PathError{Op: "close", Path: tmpShown, Err: err})
	}
	if err := setMtime(t.dfd, t.tmp, mtime); err != nil {
		r.discard(t)
		return &fs.PathError{Op: "chtimes", Path: tmpShown, Err: err}
	}
	if err := r.swapIn(t.dfd, t.tmp, t.name, t.rel, &held, tmpShown); err != nil {
		r.discard(t)
		return err
	}
	return nil
}

// swapIn renames the temp name tmp over name if tmp still names the file
// held. The rename publishes whatever has the temp name: a peer user that
// moved the file aside and put a symlink there meanwhile would get its
// link published as the file (nothing outside is touched: every call
// here is relative to dfd and never follows a final symlink).
func (r *Root) swapIn(dfd int, tmp, name, rel string, held *unix.Stat_t, tmpShown string) error {
	var named unix.Stat_t
	if err := unix.Fstatat(dfd, tmp, &named, unix.AT_SYMLINK_NOFOLLOW); err != nil || named.Dev != held.Dev || named.Ino != held.Ino {
		return &refusal{errno: unix.ESTALE, why: tmpShown + ": the temp file was replaced on the peer while it was written; not published"}
	}
	return r.replace(dfd, tmp, name, rel)
}

// discard removes the temp file of a failed write.
func (r *Root) discard(t *tempFile) {
	_ = unix.Unlinkat(t.dfd, t.tmp, 0)
}

// release closes what a temp file holds.
func (r *Root) release(t *tempFile) {
	if t.fd >= 0 {
		_ = unix.Close(t.fd)
		t.fd = -1
	}
	if t.dfd >= 0 {
		if !t.sharedDir {
			_ = unix.Close(t.dfd)
		}
		t.dfd = -1
	}
}

// abort drops an unfinished temp file.
func (r *Root) abort(t *tempFile) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd >= 0 {
		_ = unix.Close(t.fd)
		t.fd = -1
	}
	if t.dfd >= 0 {
		r.discard(t)
	}
	r.release(t)
}

// Put lands a whole file: temp file, content, mode, mtime, rename.
func (r *Root) Put(rel string, mode fs.FileMode, mtime time.Time, data []byte) error {
	t, err := r.create(rel)
	if err != nil {
		return err
	}
	if err := r.writeAt(t, 0, data); err != nil {
		r.abort(t)
		return err
	}
	return r.commit(t, mode, mtime)
}

// putFile is one file of a putMany.
type putFile struct {
	rel   string
	mode  fs.FileMode
	mtime time.Time
	data  []byte
	own   *fileOwner // nil: the receiver's owner
}

// putResult is a putMany file's outcome: err when it did not land,
// ownErr when it landed without the owner asked for.
type putResult struct{ err, ownErr error }

// putMany lands files like a Put each (plus the owner, see commitOwned),
// and makes directories (a directory mode, version 4) like a mkdir each,
// in the order given: one that fails or is refused does not stop the
// others. Consecutive
// files of one directory share its resolution (the client sends a
// directory's files together): one openat2 or walk for them instead of
// one per file. The descriptor is that of the directory as it was
// resolved below the root, so sharing it gives a file no other place to
// land than a resolution of its own would have given it a moment later;
// a directory that fails to resolve is resolved again for the next file.
// A file is written unnamed and linked in complete where it can be (see
// putNew), else through a temp name like a Put.
func (r *Root) putMany(files []putFile) []putResult {
	res := make([]putResult, len(files))
	dfd, dir := -1, ""
	var born birth // of dir's new files
	defer func() {
		if dfd >= 0 {
			_ = unix.Close(dfd)
		}
	}()
	for i, f := range files {
		if f.mode.IsDir() {
			// A directory (version 4): as a mkdir with its owner.
			res[i].ownErr, res[i].err = r.mkdirOwned(f.rel, f.mode, f.own)
			continue
		}
		if err := checkRel(f.rel); err != nil {
			res[i].err = err
			continue
		}
		d, name := path.Split(f.rel)
		if dfd < 0 || d != dir {
			if dfd >= 0 {
				_ = unix.Close(dfd)
				dfd = -1
			}
			fd, err := r.openDir(strings.TrimSuffix(d, "/"), unix.O_PATH, true, false)
			if err != nil {
				res[i].err = err
				continue
			}
			dfd, dir, born = fd, d, birth{}
		}
		if pr, ok := r.putNew(dfd, name, f, &born); ok {
			res[i] = pr
			continue
		}
		t, err := r.createAt(dfd, name, f.rel)
		if err != nil {
			res[i].err = err
			continue
		}
		t.sharedDir = true
		if err := r.writeAt(t, 0, f.data); err != nil {
			r.abort(t)
			res[i].err = err
			continue
		}
		res[i].ownErr, res[i].err = r.commitOwned(t, f.mode, f.mtime, f.own)
	}
	return res
}

// replace renames tmp over name in the directory dfd. rename(2) replaces
// a file or symlink at name itself, never what it points to.
func (r *Root) replace(dfd int, tmp, name, rel string) error {
	err := unix.Renameat(dfd, tmp, dfd, name)
	if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		if rerr := r.removeAt(dfd, name, rel); rerr != nil {
			return rerr
		}
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		return &fs.PathError{Op: "rename", Path: r.show(rel), Err: err}
	}
	return nil
}

// Symlink atomically replaces rel by a symlink to target. The target is
// data: it is stored as given and never resolved here.
func (r *Root) Symlink(rel, target string) error {
	dfd, name, err := r.parent(rel, true, false)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := tempName(name)
	if err := unix.Symlinkat(target, dfd, tmp); err != nil {
		return &fs.PathError{Op: "symlink", Path: r.show(path.Join(path.Dir(rel), tmp)), Err: err}
	}
	if err := r.replace(dfd, tmp, name, rel); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	return nil
}

func setMtime(dfd int, name string, mtime time.Time) error {
	ts := unix.NsecToTimespec(mtime.UnixNano())
	return unix.UtimesNanoAt(dfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// Chtimes sets rel's mtime (and atime); on a symlink, the link's own.
func (r *Root) Chtimes(rel string, mtime time.Time) error {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := setMtime(dfd, name, mtime); err != nil {
		return &fs.PathError{Op: "chtimes", Path: r.show(rel), Err: err}
	}
	return nil
}

// Chmod sets rel's permission bits. A symlink at rel is refused: Linux
// symlinks have no mode of their own, and changing the mode of what it
// points to is exactly the escape this package exists to prevent.
func (r *Root) Chmod(rel string, mode fs.FileMode) error {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return r.chmodAt(dfd, name, rel, mode)
}

// chmodAt pins name with an O_PATH|O_NOFOLLOW descriptor, checks that it
// is not a symlink, and changes the mode of exactly that inode.
func (r *Root) chmodAt(dfd int, name, rel string, mode fs.FileMode) error {
	_, err := r.chownChmodAt(dfd, name, rel, nil, mode)
	return err
}

// chownChmodAt is chmodAt; with own set, the pinned inode gets that
// owner first (as Chown gives it: the same checks, the same call), and a
// failed chown is reported in ownErr, the chmod done all the same.
func (r *Root) chownChmodAt(dfd int, name, rel string, own *fileOwner, mode fs.FileMode) (ownErr, err error) {
	err = r.chmodPinned(dfd, name, rel, mode, func(fd int) {
		if own == nil {
			return
		}
		// Before the chmod: a chown clears set-user-ID and set-group-ID
		// bits, which the chmod then sets as the source has them.
		if err := unix.Fchownat(fd, "", own.uid, own.gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			ownErr = &fs.PathError{Op: "chown", Path: r.show(rel), Err: err}
		}
	})
	return ownErr, err
}

// chmodPinned is chmodAt, calling before(fd) with the pinned inode once
// it passed the checks, right before its chmod.
func (r *Root) chmodPinned(dfd int, name, rel string, mode fs.FileMode, before func(fd int)) error {
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: r.show(rel), Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "chmod", Path: r.show(rel), Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return &refusal{errno: unix.ELOOP, why: fmt.Sprintf("%s is a symlink; refusing to change the mode of what it points to", r.show(rel))}
	}
	if err := r.sharedInode(&st, rel, "mode"); err != nil {
		return err
	}
	before(fd)
	// fchmodat2(AT_EMPTY_PATH) (Linux 6.6) changes the pinned inode
	// itself; older kernels reach it through its /proc/self/fd magic
	// link, which names that inode, not a path.
	err = unix.Fchmodat(fd, "", unixmode.ToUnix(mode), unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		err = unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unixmode.ToUnix(mode), 0)
	}
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: r.show(rel), Err: err}
	}
	return nil
}

// sharedInode refuses a metadata change on a non-directory with more
// than one name. A mode or owner belongs to the inode, not to the name:
// a hard link the peer's web user made to a file of its own elsewhere on
// the filesystem (fs.protected_hardlinks allows that; with it off, to any
// file) would hand that file to the source's owner or mode. Directories
// cannot be hard-linked (their st_nlink counts subdirectories).
func (r *Root) sharedInode(st *unix.Stat_t, rel, what string) error {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Nlink <= 1 {
		return nil
	}
	return &refusal{errno: unix.EMLINK, why: fmt.Sprintf("%s has %d hard links; refusing to change the %s of an inode shared with names the sync does not own", r.show(rel), st.Nlink, what)}
}

// Chown sets rel's owner and group (a symlink's own). Like chmodAt it
// pins the inode first (O_PATH|O_NOFOLLOW), so that the link count it
// checks is that of the inode it changes.
func (r *Root) Chown(rel string, uid, gid int) error {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var fd int
	err = retryEINTR(func() (err error) {
		fd, err = unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return &fs.PathError{Op: "chown", Path: r.show(rel), Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "chown", Path: r.show(rel), Err: err}
	}
	if err := r.sharedInode(&st, rel, "owner"); err != nil {
		return err
	}
	// AT_EMPTY_PATH acts on the pinned inode itself, a symlink's own.
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chown", Path: r.show(rel), Err: err}
	}
	return nil
}

// Rename moves from to to, replacing to; missing parents of to are made.
func (r *Root) Rename(from, to string) error {
	fdfd, fname, err := r.parent(from, false, true)
	if err != nil {
		return err
	}
	defer unix.Close(fdfd)
	tdfd, tname, err := r.parent(to, true, false)
	if err != nil {
		return err
	}
	defer unix.Close(tdfd)
	if err := unix.Renameat(fdfd, fname, tdfd, tname); err != nil {
		return &fs.PathError{Op: "rename", Path: r.show(from) + " -> " + r.show(to), Err: err}
	}
	return nil
}

// RemoveAll removes rel and everything below it; a missing path (also
// one below a symlink or a file: nothing there is inside the tree) is not
// an error.
func (r *Root) RemoveAll(rel string) error {
	if err := checkRel(rel); err != nil {
		return err
	}
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || isRefusal(err) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	return r.removeAt(dfd, name, rel)
}

func isRefusal(err error) bool {
	var rf *refusal
	return errors.As(err, &rf)
}

// removeAt removes name in dfd recursively. Every directory is opened with
// O_NOFOLLOW below its parent's descriptor and emptied through its own
// descriptor; unlinkat removes a symlink, never its target.
func (r *Root) removeAt(dfd int, name, rel string) error {
	for attempt := 0; ; attempt++ {
		err := unix.Unlinkat(dfd, name, 0)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
			return &fs.PathError{Op: "remove", Path: r.show(rel), Err: err}
		}
		var fd int
		oerr := retryEINTR(func() (err error) {
			fd, err = unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			return err
		})
		switch {
		case errors.Is(oerr, unix.ENOENT):
			return nil
		case errors.Is(oerr, unix.ELOOP) || errors.Is(oerr, unix.ENOTDIR):
			if attempt < 3 {
				continue // replaced by a symlink or file meanwhile: unlink that
			}
			return &fs.PathError{Op: "remove", Path: r.show(rel), Err: err}
		case oerr != nil:
			return &fs.PathError{Op: "remove", Path: r.show(rel), Err: oerr}
		}
		f := os.NewFile(uintptr(fd), r.show(rel))
		names, lerr := f.Readdirnames(-1)
		for _, n := range names {
			if cerr := r.removeAt(fd, n, rel+"/"+n); cerr != nil && lerr == nil {
				lerr = cerr
			}
		}
		_ = f.Close()
		if lerr != nil {
			return lerr
		}
		err = unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		// Something was created inside meanwhile (empty it again), or
		// the directory was swapped for something else (unlink that).
		if !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTDIR) || attempt >= 3 {
			return &fs.PathError{Op: "rmdir", Path: r.show(rel), Err: err}
		}
	}
}

// Rmdir removes rel only when it is an empty directory.
func (r *Root) Rmdir(rel string) error {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil {
		return &fs.PathError{Op: "rmdir", Path: r.show(rel), Err: err}
	}
	return nil
}

// open opens the regular file rel for reading, never through a symlink.
func (r *Root) open(rel string) (*os.File, int64, error) {
	dfd, name, err := r.parent(rel, false, true)
	if err != nil {
		return nil, 0, err
	}
	defer unix.Close(dfd)
	var fd int
	err = retryEINTR(func() (err error) {
		// O_NONBLOCK: a FIFO planted at rel must not hang the server.
		fd, err = unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, 0, &fs.PathError{Op: "open", Path: r.show(rel), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd)
		return nil, 0, &fs.PathError{Op: "open", Path: r.show(rel), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		_ = unix.Close(fd)
		return nil, 0, &fs.PathError{Op: "open", Path: r.show(rel), Err: errors.New("not a regular file")}
	}
	return os.NewFile(uintptr(fd), r.show(rel)), st.Size, nil
}

// spaceHint adds the free space of the filesystem to ENOSPC/EDQUOT.
func (r *Root) spaceHint(dfd int, err error) error {
	if !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EDQUOT) {
		return err
	}
	var st unix.Statfs_t
	if unix.Fstatfs(dfd, &st) != nil {
		return err
	}
	return fmt.Errorf("%w (%d bytes and %d inodes free)", err, uint64(st.Bavail)*uint64(st.Bsize), st.Ffree)
}
