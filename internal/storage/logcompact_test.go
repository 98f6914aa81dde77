package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// raftLikeWriter changes a LogStore the way Raft does until stopped:
// appends at the end, deletions from the front (after a snapshot),
// conflicts (a suffix deleted and stored again with a later term), stable
// keys, and checkpoints of the tail; and keeps the model of what the
// store holds.
type raftLikeWriter struct {
	s          *LogStore
	mu         sync.Mutex
	model      map[uint64]raft.Log // index -> entry
	first      uint64
	last       uint64
	term       uint64
	conf       string
	iterations atomic.Int64
	stop, done chan struct{}
	err        error
}

func (w *raftLikeWriter) entry(i uint64) *raft.Log {
	return &raft.Log{Index: i, Term: w.term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("%0200d/%d", i, w.term))}
}

func (w *raftLikeWriter) store(from, to uint64) error {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, w.entry(i))
	}
	if err := w.s.StoreLogs(logs); err != nil {
		return err
	}
	for _, l := range logs {
		w.model[l.Index] = *l
	}
	w.last = max(w.last, to)
	return nil
}

func (w *raftLikeWriter) run() {
	defer close(w.done)
	for it := 1; it <= 100_000; it++ {
		select {
		case <-w.stop:
			return
		default:
		}
		w.mu.Lock()
		err := w.step(it)
		w.mu.Unlock()
		if err != nil {
			w.err = err
			return
		}
		w.iterations.Add(1)
		time.Sleep(100 * time.Microsecond)
	}
}

func (w *raftLikeWriter) step(it int) error {
	switch {
	case it%23 == 0: // a snapshot: the front goes
		to := w.first + 50
		if err := w.s.DeleteRange(w.first, to); err != nil {
			return err
		}
		for i := w.first; i <= to; i++ {
			delete(w.model, i)
		}
		w.first = to + 1
	case it%17 == 0: // a conflict: a suffix stored again with a new term
		from := w.last - 5
		if err := w.s.DeleteRange(from, w.last); err != nil {
			return err
		}
		for i := from; i <= w.last; i++ {
			delete(w.model, i)
		}
		w.last = from - 1
		w.term++
		return w.store(from, from+8)
	case it%11 == 0:
		w.conf = fmt.Sprintf("conf-%d", it)
		return w.s.Set([]byte("k"), []byte(w.conf))
	case it%7 == 0:
		return w.s.Checkpoint()
	}
	return w.store(w.last+1, w.last+4)
}

// check compares s with the model.
func (w *raftLikeWriter) check(t *testing.T, what string, s *LogStore) {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != w.first || last != w.last {
		t.Fatalf("%s: indexes %d..%d, want %d..%d", what, first, last, w.first, w.last)
	}
	if len(w.model) != int(last-first+1) {
		t.Fatalf("%s: model of %d entries for %d..%d", what, len(w.model), first, last)
	}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("%s: GetLog(%d): %v", what, i, err)
		}
		want := w.model[i]
		if l.Term != want.Term || !bytes.Equal(l.Data, want.Data) {
			t.Fatalf("%s: entry %d: term %d, %d bytes; want term %d, %d bytes", what, i, l.Term, len(l.Data), want.Term, len(want.Data))
		}
	}
	if v, err := s.Get([]byte("k")); err != nil || string(v) != w.conf {
		t.Fatalf("%s: Get(k) = %q, %v; want %q", what, v, err, w.conf)
	}
}

// TestLogStore_Compact_UnderRaftLikeLoad: raft.db compacted while a writer
// appends, deletes the front, rewrites a conflicting suffix, sets stable
// keys and checkpoints the tail, with changes landing during the copy,
// the rounds and right before the final step, and a reader checks entries
// throughout: the file shrinks, and afterwards, and after a reopen, the
// store holds exactly the writer's model. Its negative control is
// logCompactSkipDirty (the changes made during the copy not applied): the
// compaction then fails its content check, and the file is kept.
func TestLogStore_Compact_UnderRaftLikeLoad(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("nosync=%v", noSync), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "raft.db")
			purgedLogStore(t, path)
			s, err := OpenLogStore(path, LogStoreOptions{NoSync: noSync, AutoCompactMinSize: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { s.Close() }()
			w := &raftLikeWriter{s: s, model: map[uint64]raft.Log{}, first: 19001, last: 20000, term: 5000, conf: "v", stop: make(chan struct{}), done: make(chan struct{})}
			data := make([]byte, 1000)
			for i := w.first; i <= w.last; i++ {
				l := lsTestLog(i)
				l.Data = data
				w.model[i] = *l
			}
			w.check(t, "before", s)
			go w.run()
			readerStop, readerDone := make(chan struct{}), make(chan struct{})
			var readErr error
			reads := 0
			go func() {
				defer close(readerDone)
				for n := 0; n < 1_000_000; n++ {
					select {
					case <-readerStop:
						return
					default:
					}
					w.mu.Lock()
					i := w.first + uint64(n)%(w.last-w.first+1)
					var l raft.Log
					err := s.GetLog(i, &l)
					if err == nil && l.Term != w.model[i].Term {
						err = fmt.Errorf("entry %d: term %d, want %d", i, l.Term, w.model[i].Term)
					}
					w.mu.Unlock()
					if err != nil {
						readErr = err
						return
					}
					reads++
				}
			}()
			steps := map[string]int{}
			old := logCompactHookStep
			logCompactHookStep = func(step string) {
				steps[step]++
				from := w.iterations.Load()
				for deadline := time.Now().Add(10 * time.Second); w.iterations.Load() < from+60 && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
			}
			t.Cleanup(func() { logCompactHookStep = old })
			st, cerr := s.Compact(context.Background())
			// Changes after it too.
			from := w.iterations.Load()
			for deadline := time.Now().Add(10 * time.Second); w.iterations.Load() < from+60 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			close(w.stop)
			<-w.done
			close(readerStop)
			<-readerDone
			if w.err != nil {
				t.Fatalf("writer: %v", w.err)
			}
			if readErr != nil {
				t.Fatalf("reader: %v", readErr)
			}
			t.Logf("stats %+v, steps %v, writer iterations %d, reads %d", st, steps, w.iterations.Load(), reads)
			if cerr != nil {
				t.Fatalf("Compact: %v", cerr)
			}
			if steps["copied"] != 1 || steps["round"] == 0 || steps["final"] != 1 {
				t.Fatalf("steps %v: want a copy, rounds and a final step", steps)
			}
			if st.After >= st.Before/2 {
				t.Fatalf("raft.db %d bytes after, %d before: not compacted", st.After, st.Before)
			}
			if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
				t.Fatalf("the new file is left: %v", err)
			}
			w.check(t, "after Compact", s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = OpenLogStore(path, LogStoreOptions{NoSync: noSync, AutoCompactMinSize: -1})
			if err != nil {
				t.Fatal(err)
			}
			w.check(t, "after reopen", s)
		})
	}
}

// TestLogStore_Compact_CloseStopsIt: Close during a compaction waits for
// it; the compaction stops with ErrClosed and removes its file, a second
// one meanwhile fails with ErrCompacting, and the store reopens whole.
func TestLogStore_Compact_CloseStopsIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	purgedLogStore(t, path)
	s, err := OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	var second error
	closed := make(chan error, 1)
	old := logCompactHookStep
	logCompactHookStep = func(step string) {
		if step != "copied" {
			return
		}
		_, second = s.Compact(context.Background())
		go func() { closed <- s.Close() }()
		for deadline := time.Now().Add(10 * time.Second); !s.stopping.Load() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	t.Cleanup(func() { logCompactHookStep = old })
	if _, err := s.Compact(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Compact during Close: %v, want ErrClosed", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !errors.Is(second, ErrCompacting) {
		t.Fatalf("second Compact: %v, want ErrCompacting", second)
	}
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("the new file is left: %v", err)
	}
	s, err = OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkPurgedLogStore(t, s)
}

// TestLogStore_Compact_DirSyncFailureBreaksTheStore: when the directory
// cannot be synced after the rename, the rename may not be durable, so
// the store refuses every read and write from then on (its member halts
// and must be reopened); it closes cleanly, and reopens whole on the file
// the rename left.
func TestLogStore_Compact_DirSyncFailureBreaksTheStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "raft.db")
	purgedLogStore(t, path)
	s, err := OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	fs := newFaultSet(opSync, 1, syscall.EIO)
	fs.prefix = filepath.Clean(dir)
	faults.Store(fs)
	_, cerr := s.Compact(context.Background())
	faults.Store(nil)
	t.Logf("Compact: %v", cerr)
	if cerr == nil || !strings.Contains(cerr.Error(), "reopen") {
		t.Fatalf("Compact with a failing directory sync: %v, want the store broken", cerr)
	}
	var l raft.Log
	if err := s.GetLog(19500, &l); err == nil {
		t.Fatal("GetLog of a broken store succeeded")
	}
	if err := s.StoreLogs(lsTestLogs(20001, 20001)); err == nil {
		t.Fatal("StoreLogs of a broken store succeeded")
	}
	if err := s.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	s, err = OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkPurgedLogStore(t, s)
}
