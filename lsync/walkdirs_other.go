//go:build !linux

package lsync

// listDirBeneath is Linux's openat2 shortcut; elsewhere os.Root lists.
func listDirBeneath(*beneath, string, func(Entry) *Entry) ([]Entry, bool, error) {
	return nil, false, nil
}
