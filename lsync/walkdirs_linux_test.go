package lsync

import (
	"encoding/binary"
	"slices"
	"testing"
)

// dirent encodes one struct linux_dirent64 record with reclen as given
// (0: the real length, padded to 8 bytes as the kernel does).
func dirent(name string, typ byte, reclen int) []byte {
	n := direntHeader + len(name) + 1
	n = (n + 7) &^ 7
	rec := make([]byte, n)
	if reclen == 0 {
		reclen = n
	}
	binary.NativeEndian.PutUint16(rec[16:], uint16(reclen))
	rec[18] = typ
	copy(rec[direntHeader:], name)
	return rec
}

// TestParseDirentsBounds: a getdents buffer is parsed by its own record
// lengths; a record that is shorter than its header, reaches past the
// buffer or is cut off ends the parse instead of reading out of bounds
// or looping.
func TestParseDirentsBounds(t *testing.T) {
	good := slices.Concat(dirent(".", 4, 0), dirent("..", 4, 0), dirent("a.html", 8, 0), dirent("sub", 4, 0))
	for _, tc := range []struct {
		name string
		buf  []byte
		want []string
	}{
		{"well formed", good, []string{"a.html/8", "sub/4"}},
		{"reclen zero", slices.Concat(dirent("a", 8, 0), dirent("b", 8, 0)[:16], []byte{0, 0, 8, 'b', 0}), []string{"a/8"}},
		{"reclen below the header", slices.Concat(dirent("a", 8, 0), dirent("b", 8, 5)), []string{"a/8"}},
		{"reclen past the buffer", slices.Concat(dirent("a", 8, 0), dirent("b", 8, 4096)), []string{"a/8"}},
		{"record cut short", slices.Concat(dirent("a", 8, 0), dirent("bbbbbbbb", 8, 0)[:22]), []string{"a/8"}},
		{"header cut short", slices.Concat(dirent("a", 8, 0), make([]byte, 10)), []string{"a/8"}},
		{"name without NUL fills the record", func() []byte {
			r := dirent("abcde", 8, 0) // 19+6 → 32: name area 13 bytes
			for i := direntHeader; i < len(r); i++ {
				r[i] = 'x'
			}
			return r
		}(), []string{"xxxxxxxxxxxxx/8"}},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			parseDirents(tc.buf, func(name []byte, typ byte) {
				got = append(got, string(name)+"/"+string('0'+typ))
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
