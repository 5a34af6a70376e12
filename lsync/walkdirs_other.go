//go:build !linux

package lsync

// listDirBeneath is Linux's openat2 shortcut; elsewhere os.Root lists.
func listDirBeneath(*beneath, string, func(*Entry) bool, *passWatch) ([]Entry, bool, error) {
	return nil, false, nil
}

func countDirBeneath(*beneath, string) (int, []string, bool, error) { return 0, nil, false, nil }
