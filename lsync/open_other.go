//go:build !linux

package lsync

import "os"

// beneath is Linux's openat2 shortcut; elsewhere os.Root does the work.
type beneath struct{}

func openBeneath(string) (*beneath, error) { return nil, nil }

func (b *beneath) openFile(string, string) (*os.File, bool, error) { return nil, false, nil }

func (b *beneath) readWhole(string, string, int64) ([]byte, fileStat, bool, error) {
	return nil, fileStat{}, false, nil
}

func (b *beneath) realDir(string) (bool, bool) { return false, false }

func (b *beneath) look(string, string) (lookup, bool) { return 0, false }

func (b *beneath) close() error { return nil }
