package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// crashCopy copies the files of the open store s into a new directory, as a
// crash would leave them (s is not closed, so the tail still holds what it
// holds), and returns the copy's path.
func crashCopy(t *testing.T, s *LogStore) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "raft.db")
	for _, suffix := range []string{"", ".tail", ".state"} {
		b, err := os.ReadFile(s.Path() + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func openAt(t *testing.T, path string) *LogStore {
	t.Helper()
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatalf("OpenLogStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func assertRange(t *testing.T, s *LogStore, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if f != first || l != last {
		t.Fatalf("log holds %d..%d, want %d..%d", f, l, first, last)
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		lsAssertLogEqual(t, lsTestLog(i), &got)
	}
}

// TestLogTail_CrashKeepsEveryStoredLog: what StoreLogs returned for is in
// the tail file, and a store opened on the files a crash left has it all.
func TestLogTail_CrashKeepsEveryStoredLog(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	for i := uint64(1); i <= 300; i += 10 {
		if err := s.StoreLogs(lsTestLogs(i, i+9)); err != nil {
			t.Fatal(err)
		}
	}
	if s.mem.first != 1 || len(s.mem.recs) != 300 {
		t.Fatalf("the tail holds %d records from %d, want 300 from 1", len(s.mem.recs), s.mem.first)
	}
	assertRange(t, s, 1, 300)
	c := openAt(t, crashCopy(t, s))
	assertRange(t, c, 1, 300)
	if len(c.mem.recs) != 0 {
		t.Fatalf("after replay the tail still holds %d records", len(c.mem.recs))
	}
	// The replayed store goes on: a new epoch, and its frames replay too.
	if err := c.StoreLogs(lsTestLogs(301, 310)); err != nil {
		t.Fatal(err)
	}
	c2 := openAt(t, crashCopy(t, c))
	assertRange(t, c2, 1, 310)
}

// lastFrameOffsets returns the offsets of the frames of the tail file's
// current epoch.
func lastFrameOffsets(t *testing.T, b []byte) []int {
	t.Helper()
	var salt [tailSaltSize]byte
	copy(salt[:], b[8:16])
	var offs []int
	var l raft.Log
	for off := tailHeaderSize; ; {
		_, _, next, ok := tailFrameAt(b, off, salt, &l)
		if !ok {
			return offs
		}
		offs = append(offs, off)
		off = next
	}
}

// crashedTail stores 3 batches of 10 logs through the tail and returns the
// path of a crash copy of the store and the bytes of its tail file.
func crashedTail(t *testing.T) (path string, tail []byte) {
	t.Helper()
	s := lsOpenTestStore(t, LogStoreOptions{})
	for i := uint64(1); i <= 30; i += 10 {
		if err := s.StoreLogs(lsTestLogs(i, i+9)); err != nil {
			t.Fatal(err)
		}
	}
	path = crashCopy(t, s)
	tail, err := os.ReadFile(path + ".tail")
	if err != nil {
		t.Fatal(err)
	}
	return path, tail
}

// TestLogTail_TornAppend: a crash in the middle of an append leaves any of
// its pages written: the batch's frames that did not reach the disk, and
// those after them, are dropped without an error; earlier batches stay.
func TestLogTail_TornAppend(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame int // which frame of the last batch (10 frames) is torn
	}{{"first frame", 0}, {"middle frame", 5}, {"last frame", 9}} {
		t.Run(tc.name, func(t *testing.T) {
			path, b := crashedTail(t)
			offs := lastFrameOffsets(t, b)
			if len(offs) != 30 {
				t.Fatalf("%d frames in the tail, want 30", len(offs))
			}
			off := offs[20+tc.frame]
			for i := off + tailFrameHeader; i < off+tailFrameHeader+6; i++ {
				b[i] = 0
			}
			if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
				t.Fatal(err)
			}
			c := openAt(t, path)
			assertRange(t, c, 1, uint64(20+tc.frame))
		})
	}
}

// TestLogTail_DamageIsNotTornAppend: a damaged frame followed by a whole
// later batch is not what a crash leaves: Open fails naming the tail file.
func TestLogTail_DamageIsNotTornAppend(t *testing.T) {
	path, b := crashedTail(t)
	off := lastFrameOffsets(t, b)[4] // in the first batch
	b[off+tailFrameHeader+3] ^= 0xFF
	if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenLogStore(path, LogStoreOptions{})
	if !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), path+".tail") {
		t.Fatalf("OpenLogStore: %v, want ErrCorruptLog naming %s.tail", err, path)
	}
}

// TestLogTail_Checkpoints fills the tail several times over, with batches
// of all sizes (one larger than the whole tail), a suffix deleted and
// rewritten and the head compacted, then checks the log after a crash and
// after a clean reopen.
func TestLogTail_Checkpoints(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	big := make([]byte, 64<<10)
	next := uint64(1)
	var want []*raft.Log
	store := func(n int, data []byte) {
		var logs []*raft.Log
		for range n {
			l := lsTestLog(next)
			if data != nil {
				l.Data = data
			}
			logs = append(logs, l)
			next++
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
		want = append(want, logs...)
	}
	for range 40 {
		store(5, big) // 320 KiB a batch: a checkpoint every ~25 batches
		store(20, nil)
	}
	store(200, big) // 12.5 MiB: larger than the tail
	store(3, nil)
	// A new leader's suffix replaces ours.
	if err := s.DeleteRange(next-10, next-1); err != nil {
		t.Fatal(err)
	}
	next -= 10
	want = want[:len(want)-10]
	store(7, nil)
	// Compaction.
	if err := s.DeleteRange(1, 100); err != nil {
		t.Fatal(err)
	}
	want = want[100:]
	check := func(s *LogStore) {
		t.Helper()
		f, _ := s.FirstIndex()
		l, _ := s.LastIndex()
		if f != want[0].Index || l != want[len(want)-1].Index {
			t.Fatalf("log holds %d..%d, want %d..%d", f, l, want[0].Index, want[len(want)-1].Index)
		}
		for _, w := range want {
			var got raft.Log
			if err := s.GetLog(w.Index, &got); err != nil {
				t.Fatalf("GetLog(%d): %v", w.Index, err)
			}
			lsAssertLogEqual(t, w, &got)
		}
		if err := s.Verify(f); err != nil {
			t.Fatal(err)
		}
	}
	store(4, nil)
	check(s)
	check(openAt(t, crashCopy(t, s)))
	check(lsReopenTestStore(t, s))
}

// TestLogTail_NewFileCutShort: a crash while the tail file was being
// created leaves it short; Open makes it whole.
func TestLogTail_NewFileCutShort(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if err := s.StoreLogs(lsTestLogs(1, 5)); err != nil {
		t.Fatal(err)
	}
	path := crashCopy(t, s)
	if err := os.Truncate(path+".tail", 4096); err != nil {
		t.Fatal(err)
	}
	c := openAt(t, path)
	assertRange(t, c, 1, 5)
	if fi, err := os.Stat(path + ".tail"); err != nil || fi.Size() != int64(tailSize) {
		t.Fatalf("tail file: %v, %v", fi, err)
	}
}

// TestLogTail_DamagedHeaderUsesCopy: with the header damaged, the copy at
// the end of the file holds the epoch, and the frames are replayed.
func TestLogTail_DamagedHeaderUsesCopy(t *testing.T) {
	path, b := crashedTail(t)
	b[10] ^= 0xFF // in the salt
	if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
		t.Fatal(err)
	}
	assertRange(t, openAt(t, path), 1, 30)
	// Both damaged: Open fails.
	path, b = crashedTail(t)
	b[10] ^= 0xFF
	b[len(b)-10] ^= 0xFF
	if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLogStore(path, LogStoreOptions{}); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("OpenLogStore with both headers damaged: %v, want ErrCorruptLog", err)
	}
}
