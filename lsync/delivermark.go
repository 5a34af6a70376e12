package lsync

import (
	"strconv"
	"strings"
	"time"
)

// DeliveredXattr is the extended attribute a lockstep receiver (and the
// local target) puts on every file it lands: the path and the version
// (size, mtime) delivered, and when. A two-way node whose merge has no
// base for a file it holds, which the peer lacks, reads it: a file still
// holding the very version the peer delivered moments ago is the peer's,
// and the peer has since moved or deleted it — pushing it back would
// resurrect it. The watcher's delivery tags say the same from the rename
// events, but they miss a file delivered into a directory before the
// directory was watched (the peer creates a directory and fills it at
// once), and they do not survive a restart; the mark does both. A local
// edit (size or mtime), a rename (the path) or time (deliveryTTL, as for
// the tags) makes it void. Where the filesystem has no user xattrs, or
// over SFTP, only the tags remain.
const DeliveredXattr = "user.lockstep.delivered"

// DeliveryMark is DeliveredXattr's value for rel landed as (size, mtime)
// at landed.
func DeliveryMark(rel string, size int64, mtime, landed time.Time) []byte {
	return []byte("1 " + strconv.FormatInt(size, 10) + " " + strconv.FormatInt(mtime.UnixNano(), 10) + " " +
		strconv.FormatInt(landed.Unix(), 10) + " " + rel)
}

// deliveredAs reports that mark says rel was delivered as e within
// deliveryTTL of now.
func deliveredAs(mark []byte, rel string, e Entry, now time.Time) bool {
	size, mtime, landed, ok := parseMark(mark, rel)
	age := now.Sub(time.Unix(landed, 0))
	return ok && size == e.Size && mtime == e.ModTime.UnixNano() && age > -time.Minute && age < deliveryTTL
}

// parseMark reads a DeliveryMark for rel: the version's size and mtime
// (ns), and when it landed (Unix seconds).
func parseMark(mark []byte, rel string) (size, mtimeNs, landed int64, ok bool) {
	f := strings.SplitN(string(mark), " ", 5)
	if len(f) != 5 || f[0] != "1" || f[4] != rel {
		return 0, 0, 0, false
	}
	size, err1 := strconv.ParseInt(f[1], 10, 64)
	mtimeNs, err2 := strconv.ParseInt(f[2], 10, 64)
	landed, err3 := strconv.ParseInt(f[3], 10, 64)
	return size, mtimeNs, landed, err1 == nil && err2 == nil && err3 == nil
}
