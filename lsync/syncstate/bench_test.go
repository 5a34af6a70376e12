package syncstate

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkChildrenWalk reads a state of 110k paths (10k directories of
// ten files) directory by directory, as a trusted restart compares the
// tree with it.
func BenchmarkChildrenWalk(b *testing.B) {
	p := filepath.Join(b.TempDir(), "state.db")
	s, err := Open(p, "job")
	if err != nil {
		b.Fatal(err)
	}
	const dirs, files = 10000, 10
	for d := 0; d < dirs; d += 100 {
		puts := map[string]Record{}
		for dd := d; dd < d+100; dd++ {
			puts[fmt.Sprintf("d%05d", dd)] = Record{Mode: uint32(os.ModeDir | 0o755)}
			for f := range files {
				puts[fmt.Sprintf("d%05d/f%02d.html", dd, f)] = Record{Mode: 0o644, Size: 256, MTimeNs: 1}
			}
		}
		if err := s.Update(puts, nil); err != nil {
			b.Fatal(err)
		}
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
