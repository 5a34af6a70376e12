package lsync

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"sync/atomic"
	"syscall"
	"time"
)

// FileData is one small file of a BatchWriter's batch.
type FileData struct {
	Path    string
	Data    []byte
	Mode    fs.FileMode
	ModTime time.Time
	// Own, when set, asks for this owner, as OwnerRequest does for
	// WriteFile: a target that gives it to the file before publishing it
	// sets Done or Err; otherwise the Reconciler chowns after landing.
	Own *OwnerRequest
}

// BatchWriter is implemented by targets that land many small files in one
// request (the receiver, protocol version 2). Each file is written like
// WriteFile: atomically, parents created, confined to the root.
type BatchWriter interface {
	// WriteFiles returns each file's outcome; an error wrapping
	// ErrDisconnected means the session broke.
	WriteFiles(ctx context.Context, files []FileData) []error
	// BatchLimits bounds one batch: files and content bytes.
	BatchLimits() (files, bytes int)
}

// BatchDirTimer is implemented by BatchWriters that can set a
// directory's mtime in a batch's request, after its files (the receiver,
// protocol version 4): a directory of a streamed pass whose files all go
// in one batch is then done in one request instead of two.
type BatchDirTimer interface {
	// DirBatches reports whether WriteFilesThen can be used: it then
	// also takes directories (a FileData with a directory mode and no
	// data, made as Mkdir makes it, owner included, in the order given).
	DirBatches() bool
	// WriteFilesThen is WriteFiles, then dir's mtime; done is false when
	// it was not set (the caller sets it), dirErr is its failure.
	WriteFilesThen(ctx context.Context, files []FileData, dir Entry) (errs []error, done bool, dirErr error)
}

// Small files go in batches: a 100k-file tree of a few hundred bytes each
// costs a request, a reply and several goroutine hand-offs per file
// otherwise, which made the client use three times rsync's CPU.
const (
	batchFileMax    = 64 << 10 // larger files keep their own request(s)
	batchesInFlight = 8        // bounds the memory of file contents read ahead
)

// batchable reports whether o can go in a batch: a plain upload of a small
// file, with nothing to check or move aside on the target first.
func batchable(o op) bool {
	return o.kind == opUpload && !o.guard && o.keepPeer == nil && !o.overDir && o.src.Size <= batchFileMax
}

// uploadBatches uploads ops (all batchable) through bw, in batches. With
// then set, when the ops make one batch and bw is a BatchDirTimer, then's
// mtime is set in the batch's request after the files: thenDone says so,
// and thenErr is its outcome.
func (r *Reconciler) uploadBatches(ctx context.Context, bw BatchWriter, ops []op,
	fail func(op, error) error, done func(op, int64), filesDone, bytesDone *atomic.Int64,
	then *Entry, thenDone *bool, thenErr *error,
) error {
	maxFiles, maxBytes := bw.BatchLimits()
	// Groups are runs of ops, not copies: an op is a few hundred bytes,
	// and a first sync of 100k files copied each one several times.
	var groups [][]op
	start := 0
	var curBytes int64
	for i, o := range ops {
		size := o.src.Size
		if o.kind == opMkdir {
			size = 0 // no content
		}
		if i > start && (i-start >= maxFiles || curBytes+size > int64(maxBytes)) {
			groups = append(groups, ops[start:i:i])
			start, curBytes = i, 0
		}
		curBytes += size
	}
	if start < len(ops) {
		groups = append(groups, ops[start:])
	}
	dt, _ := bw.(BatchDirTimer)
	if len(groups) != 1 || dt == nil || !dt.DirBatches() {
		then = nil
	}
	return parallel(ctx, min(r.Concurrency, batchesInFlight), len(groups), func(i int) error {
		files := make([]FileData, 0, len(groups[i]))
		sent := make([]*op, 0, len(groups[i]))
		budget := int64(maxBytes)
		for k := range groups[i] {
			o := &groups[i][k]
			if o.kind == opMkdir {
				// Only with then (see execute): made first, in order.
				fd := FileData{Path: o.path, Mode: o.src.Mode}
				if r.wantsOwner(*o) {
					fd.Own = &OwnerRequest{Owner: r.ownerFor(*o)}
				}
				files = append(files, fd)
				sent = append(sent, o)
				continue
			}
			fd, err := r.readSmall(o.path, o.src, budget)
			if err != nil {
				if err := fail(*o, err); err != nil {
					return err
				}
				continue
			}
			budget -= int64(len(fd.Data))
			if r.wantsOwner(*o) {
				fd.Own = &OwnerRequest{Owner: r.ownerFor(*o)}
			}
			o.src = Entry{Path: o.path, Mode: fd.Mode, Size: int64(len(fd.Data)), ModTime: fd.ModTime,
				UID: o.src.UID, GID: o.src.GID, Owned: o.src.Owned}
			files = append(files, fd)
			sent = append(sent, o)
		}
		if len(files) == 0 {
			return nil
		}
		var errs []error
		if then != nil {
			errs, *thenDone, *thenErr = dt.WriteFilesThen(ctx, files, *then)
		} else {
			errs = bw.WriteFiles(ctx, files)
		}
		for j, po := range sent {
			o := *po
			if errs[j] != nil {
				if err := fail(o, errs[j]); err != nil {
					return err
				}
				continue
			}
			n := int64(len(files[j].Data))
			var err error
			if own := files[j].Own; own != nil && (own.Done || own.Err != nil) {
				o.ownSet = own.Err == nil
				err = r.chownOutcome(o, own.Err) // set while landing
			} else {
				o.ownSet, err = r.chownSet(ctx, bw, o)
			}
			if err != nil {
				if err := fail(o, err); err != nil {
					return err
				}
				continue
			}
			if o.kind == opMkdir {
				done(o, 0)
				continue
			}
			// What the state and the landed cache record is the version
			// that went out (see upload).
			r.rememberLanded(o.src)
			if r.OnTransfer != nil {
				r.OnTransfer(n)
			}
			r.Progress.transferred(n)
			filesDone.Add(1)
			bytesDone.Add(n)
			done(o, n)
		}
		return nil
	})
}

// fileStat is what readWhole's fstat found.
type fileStat struct {
	mode  fs.FileMode
	size  int64
	mtime time.Time
}

// readSmall reads the whole file rel, refusing a symlink, a file that is
// no longer regular, larger than max, or that changed while being read
// (errSourceChanged: retried after the next quiet period). seen is rel
// as the comparison saw it (lstat'ed by the walk).
//
// A file that still has seen's size and mtime after it was read (fstat)
// was the same from the walk's lstat to the end of the read: the read
// is all it costs (Source.readWhole: openat2, read, fstat, close). Any
// other outcome, errors included, is left to the careful path, which
// takes the file as it is when opened (fstat, read, fstat).
func (r *Reconciler) readSmall(rel string, seen Entry, max int64) (FileData, error) {
	if seen.Mode.IsRegular() && seen.Size <= max {
		data, st, ok, err := r.Source.readWhole(rel, seen.Size)
		if ok && err == nil && st.mode.IsRegular() && st.size == seen.Size && int64(len(data)) == st.size && st.mtime.Equal(seen.ModTime) {
			return FileData{Path: rel, Data: data, Mode: st.mode, ModTime: st.mtime}, nil
		}
	}
	f, err := r.Source.openFile(rel)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return FileData{}, errSourceChanged // became a symlink meanwhile
		}
		return FileData{}, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return FileData{}, err
	}
	if !before.Mode().IsRegular() || before.Size() > max {
		return FileData{}, errSourceChanged
	}
	// One read of one byte more than the size: a regular file returns
	// all of it at once, and the fstat below tells whether it changed
	// (a second read only to see EOF would cost 100k system calls on a
	// 100k-file tree). A short read is a change and is retried.
	data := make([]byte, before.Size()+1)
	n, err := f.Read(data)
	if err != nil && err != io.EOF {
		return FileData{}, err
	}
	after, err := f.Stat()
	if err != nil {
		return FileData{}, err
	}
	if int64(n) != before.Size() || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		return FileData{}, errSourceChanged
	}
	return FileData{Path: rel, Data: data[:n], Mode: before.Mode(), ModTime: before.ModTime()}, nil
}
