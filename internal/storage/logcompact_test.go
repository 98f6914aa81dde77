package storage

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// purgedLogStore writes a raft.db of 20000 entries of 1000 bytes and a
// stable key, deletes all but the last 1000 entries, closes it and returns
// its size.
func purgedLogStore(t *testing.T, path string) int64 {
	t.Helper()
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1000)
	for i := uint64(1); i <= 20000; i += 500 {
		if err := s.StoreLogs(withData(lsTestLogs(i, i+499), data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set([]byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 19000); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return fileSize(t, path)
}

// TestLogStore_CompactAtOpen_KeepsTheOriginalWhenTheCopyDiffers: a
// compaction at open whose new file does not hold what the original holds
// (an entry missing, a stable key missing, an entry too many: broken on
// purpose through logCompactHook) is not renamed in: the store opens on
// the original, whole, a warning says why, and the new file is gone.
func TestLogStore_CompactAtOpen_KeepsTheOriginalWhenTheCopyDiffers(t *testing.T) {
	breaks := map[string]func(tx *bolt.Tx) error{
		"an entry missing": func(tx *bolt.Tx) error {
			return tx.Bucket(logStoreBucketLogs).Delete(uint64Key(19500))
		},
		"the first entry missing": func(tx *bolt.Tx) error {
			return tx.Bucket(logStoreBucketLogs).Delete(uint64Key(19001))
		},
		"an entry too many": func(tx *bolt.Tx) error {
			return tx.Bucket(logStoreBucketLogs).Put(uint64Key(20001), []byte("x"))
		},
		"a stable key missing": func(tx *bolt.Tx) error {
			return tx.Bucket(logStoreBucketConf).Delete([]byte("k"))
		},
		"a stable value changed": func(tx *bolt.Tx) error {
			return tx.Bucket(logStoreBucketConf).Put([]byte("k"), []byte("w"))
		},
	}
	for name, breakIt := range breaks {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "raft.db")
			before := purgedLogStore(t, path)
			old := logCompactHook
			logCompactHook = func(ndb *bolt.DB) {
				if err := ndb.Update(breakIt); err != nil {
					t.Errorf("break the copy: %v", err)
				}
			}
			t.Cleanup(func() { logCompactHook = old })
			var logs syncBuffer
			s, err := OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: before / 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			t.Logf("log: %s", logs.String())
			if got := fileSize(t, path); got != before {
				t.Fatalf("raft.db %d bytes after open, %d before: the differing copy was renamed in", got, before)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "differs") {
				t.Fatalf("no warning about the differing copy: %q", logs.String())
			}
			if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
				t.Fatalf("the new file is left: %v", err)
			}
			checkPurgedLogStore(t, s)
		})
	}
}

// checkPurgedLogStore checks the content purgedLogStore leaves.
func checkPurgedLogStore(t *testing.T, s *LogStore) {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != 19001 || last != 20000 {
		t.Fatalf("indexes %d..%d, want 19001..20000", first, last)
	}
	for _, i := range []uint64{19001, 19500, 20000} {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
	}
	if v, err := s.Get([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("Get(k): %q, %v", v, err)
	}
}

func uint64Key(i uint64) []byte {
	var b [8]byte
	for j := 7; j >= 0; j-- {
		b[j] = byte(i)
		i >>= 8
	}
	return b[:]
}

// TestLogStore_CompactAtOpen_KeepsTheFileLocked: right after the
// compaction at open renames its new file over raft.db, another opener of
// raft.db finds it locked, and the store opens on the compacted file.
func TestLogStore_CompactAtOpen_KeepsTheFileLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	before := purgedLogStore(t, path)
	var openErr error
	renamed := false
	old := afterRename
	afterRename = func(p string) {
		if p != path {
			return
		}
		renamed = true
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond})
		if err == nil {
			db.Close()
		}
		openErr = err
	}
	t.Cleanup(func() { afterRename = old })
	s, err := OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: before / 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !renamed {
		t.Fatal("no compaction at open")
	}
	if !errors.Is(openErr, berrors.ErrTimeout) {
		t.Fatalf("another open of raft.db after the rename: %v, want a timeout on its lock", openErr)
	}
	if after := fileSize(t, path); after >= before/2 {
		t.Fatalf("raft.db %d bytes after open, %d before: not compacted", after, before)
	}
	checkPurgedLogStore(t, s)
}
