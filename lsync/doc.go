// Package lsync keeps a directory tree identical on a set of targets (peer
// nodes over SFTP, or local directories), replacing lsyncd + rsync.
//
// # Pipeline
//
// A Job owns one Watcher (inotify spoken directly, one watch per
// directory; a new directory is scanned right after its watch is added;
// the watch-descriptor → path map is renamed in place when a directory
// moves, so that every event carries the path it had when it happened),
// one Batcher (a single goroutine that collapses events per path and emits
// a batch after a quiet `delay`, at most `max_delay` after its first
// event) and one worker per target. Each worker has its own queue and
// session, so a target that is down only accumulates pending paths (bounded:
// beyond DefaultMaxPendingPaths the queue turns into one full rescan) and
// never holds up the others. A worker reconnects with exponential backoff
// and catches up with a full reconciliation that also content-checks the
// paths still pending (see Comparison). A target whose session can
// announce its own death (the SFTP keepalive, via a Disconnected channel)
// is shown as disconnected at once, even while idle.
//
// Batches carry paths, not operations: what a path needs is decided when
// the batch is applied, from the source's state at that moment and the
// target's Stat. Stale or reordered events therefore cannot produce a wrong
// result, "create then delete" uploads nothing (the path still costs one
// Stat, and is deleted on the target if it is there after all, e.g. a file
// a peer delivered and that was renamed away here within the batch),
// "delete then create" uploads, and a change the target already has (a
// file a peer just delivered) is not sent again. Directory renames are
// paired by inode (the old name's RENAME with the new name's CREATE) and
// replayed as a Rename on the target; if the target refuses it, the new
// subtree is uploaded and only then is the old name deleted.
//
// # Convergence
//
// A batch is exact only if every path it names is the path that changed.
// Where that cannot be proved, the smallest subtree that covers the doubt
// is compared whole (a listing of both sides, like a full pass limited to
// it):
//
//   - a renamed directory's new subtree, after the rename is replayed: an
//     earlier batch may have found entries of it already gone from the
//     old name in the source and deleted them on the target;
//   - a directory created and renamed within one batch (Batch.Scan);
//   - paths queued, waiting for a retry, or in the batch being applied
//     when a directory rename is queued are listed under the new name too.
//
// The root causes found under churn, each with its fix: fsnotify kept
// reporting a moved directory's old path until it was watched again (the
// watcher speaks inotify itself and renames its watch → path map in
// place); changes queued under a directory's old name were applied to a
// name that no longer existed (they follow the rename); a batch deleted
// entries of a subtree that a later batch renamed (the renamed subtree is
// compared whole); a directory created and renamed in one batch was never
// listed (Batch.Scan); and one path failing over and over made every other
// path's retry wait for its backoff (each path backs off on its own).
//
// A batch could also end between the two events of one directory rename
// (the old name, then the new one, under load more than the 10 ms quiet
// delay apart). The old name then went out alone, as a path gone from the
// source (deleted on the target), and the new name came as a bare mkdir:
// the watcher reports nothing below a moved directory, so the files that
// moved with it stayed missing. The batcher keeps an unpaired old name for
// one more batch; a new name that pairs with it has its whole subtree
// compared. It looked like a landed-cache bug (the cache had just been made
// to expire) but is none: convergence never depends on the cache, which is
// only read on whole-second targets (TestChurnConvergesWithoutLandedCache
// runs churn on one with every lookup missing).
//
// Known gap, a pair's first seconds in two-way: until a path's merge base
// is recorded, a node's pass takes a directory the peer's pass has just
// made here for its own (a directory carries no delivery mark), and can
// put it back on the peer after the peer's user removed it, replacing
// what that user made there in the same instant (a symlink, in
// TestTwoWayDirectoryReplacedBySymlinkPropagates before it waited for
// both connect passes: a few runs in a hundred). Without a state (the Go
// API only; every configured job has one) a verification pass does the
// same at any time.
//
// inotify overflow rebuilds the watch map and rescans everything. The
// periodic verification stays as a backstop; what it has to repair
// although no event queued it is drift, logged as an error and counted in
// lockstep_sync_verify_repairs_total, so that it can never be silent.
//
// # Where the ideas live
//
// watcher.go speaks inotify and keeps the watch → path map; batcher.go
// collapses events into batches; job.go owns the workers, their queues
// and reconnection. A pass or batch walks the source (source.go, a
// root that follows its name), decides per path what the target needs
// (compare.go; merge.go for the two-way three-way merge against the sync
// state in lsync/syncstate), plans passes and batches (reconcile.go),
// holds mass deletions (guard.go) and carries the operations out
// (execute.go). Targets are lsync/localtarget and lsync/sftptarget (the
// lockstep receiver of lsync/receiver, or SFTP).
//
// # Guarantees
//
//   - Files land atomically (temp name starting with TempPrefix, rename;
//     the local target also fsyncs before the rename, the receiver and
//     SFTP do not, like rsync): a crash of lockstep never shows a half
//     file. A power loss of the peer host may leave a landed file empty
//     with its mtime (torn, in merge.go): one-way repairs it by size, and
//     two-way never takes it for an edit. Leftover temp files of a
//     crashed run are removed by the next reconciliation.
//   - A file that changes while it is read is not landed: the copy fails at
//     EOF when size or mtime moved, and the path is retried after the next
//     quiet period.
//   - Symlinks are copied as symlinks and never followed; all source reads
//     go through an os.Root, so nothing outside the source root is read,
//     and a path below a symlinked source directory does not exist.
//   - Writes never leave a target's root: targets refuse (ErrRefused) any
//     operation through a symlink or non-directory on the target. Over
//     SSH, lsync/receiver makes that hold against a peer docroot changing
//     under the operation; over plain SFTP a one-round-trip race remains
//     (README, threat model). A refusal is logged once per path, counted
//     in lockstep_sync_refused_total and left to the next full pass.
//   - Per-path failures (permission, disk full) are logged with the path,
//     counted in lockstep_sync_errors_total and retried with backoff; they
//     never count as transferred.
//   - inotify overflow triggers a rescan; running out of
//     fs.inotify.max_user_watches stops the job with a WatchLimitError
//     naming the sysctl and the count needed.
//
// # Comparison
//
// Entries are equal when type, permission bits, size and mtime match (with
// `checksum: true`, content hashes of same-sized files instead of mtimes).
// Mtimes compare at one-second granularity when either side carries whole
// seconds only (SFTP v3). Directory mtimes are restored after their
// contents were written.
//
// Whole seconds hide a same-size rewrite within the second of the
// target's copy. Paths known to have changed are therefore compared by
// content (SHA-256 of both sides) whenever size and mtime match only at
// whole-second granularity, unless the worker itself just landed exactly
// that version (size and nanosecond mtime; a bounded cache, so trailing
// events cost no read-back). Such paths are those of live batches, and
// those that had events while the target was down or a full pass was
// queued: the pending set is never dropped in favour of the full pass, it
// is handed to it (Reconciler.CatchUp). When the set overflows
// (DefaultMaxPendingPaths, in the batcher or a target's queue, or an
// inotify overflow), the pass content-checks every file whose source mtime
// is at most SuspectSlack older than the first dropped event instead; a
// write whose event took longer than that to arrive, or an mtime set
// explicitly to an older time (tar, cp -p, touch -d) is then not covered.
// Otherwise full passes (the startup pass, periodic verification, `sync
// --once`) know no changed paths beyond those pending and cannot tell such
// a rewrite from the copy the target has; a same-second rewrite made while
// lockstep was not running is only found with `checksum: true`.
//
// # Two-way sync and conflicts
//
// With `two_way: true` on both nodes (each node's job targets the other),
// the trees converge without ping-pong because a delivered file arrives
// with the sender's size, mtime and mode, so the receiver's own job finds
// nothing to send back. Conflicts (both sides changed the same path) follow
// one rule, applied identically on both nodes:
//
//   - the newer mtime wins;
//   - on equal mtimes (and different sizes) the node whose name sorts first
//     wins (the target's configured name is taken as the peer's node name);
//     a same-second change of a file whose copy on the peer is still the
//     one this node landed there is not a conflict: it is newer;
//   - the losing node logs "two-way conflict: keeping the peer's copy" with
//     both mtimes; its version is overwritten when the winner pushes.
//
// A type conflict (a file or symlink on one node where the other has a
// directory with entries) is never resolved by removing the directory:
// both are kept and the conflict is logged. A directory replaces the
// peer's symlink only when it changed after the symlink was made.
//
// Full passes in two-way mode never delete on the target (a file present
// only on the peer is the peer's to push, and deleting it would race with
// its creation there); deletions made while both run propagate live.
// One race remains: a full pass (at connect or verification) that delivers
// a file whose own live event is still queued, followed by a rename or
// delete of that file on the peer within the batch delay, makes the queued
// event upload it again; the old name then survives on both nodes.
package lsync
