package syncstate

import (
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkChildrenWalk reads a state of 110k paths (10k directories of
// ten files) directory by directory, as a trusted restart compares the
// tree with it.
func BenchmarkChildrenWalk(b *testing.B) {
	p := filepath.Join(b.TempDir(), "state.db")
	const dirs, files = 10000, 10
	fillState(b, p, dirs, files, "d%05d", "/f%02d.html")
	s, err := Open(p, "job")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	for range b.N {
		// A restart's first read of each page faults it in.
		_ = s.db.View(func(tx *bolt.Tx) error { release(s.db, tx.Size()); return nil })
		for d := range dirs {
			if err := s.Children(fmt.Sprintf("d%05d", d), func(string, Record) error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
	}
}
