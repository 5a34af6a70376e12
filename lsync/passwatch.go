package lsync

import "context"

type passWatchKey struct{}

// withPassWatch has the walks of ctx's pass watch the directories they
// list (see passWatch).
func withPassWatch(ctx context.Context, w *passWatch) context.Context {
	if w == nil {
		return ctx
	}
	return context.WithValue(ctx, passWatchKey{}, w)
}

func passWatchFrom(ctx context.Context) *passWatch {
	w, _ := ctx.Value(passWatchKey{}).(*passWatch)
	return w
}

// watchVouches reports whether the watch of a pass (quiet: it saw no
// change) stands for the verification after it: the pass landed
// everything, the state records what it read and landed, and the
// source's name still leads to the directory it read (a deploy that
// switched a symlink to the docroot meanwhile changed nothing the
// watch could see).
func (r *Reconciler) watchVouches(quiet bool, applied *Report) bool {
	if !quiet || applied == nil || !applied.InSync() || !r.canTrust() {
		return false
	}
	moved, err := r.Source.Refresh()
	return err == nil && !moved
}
