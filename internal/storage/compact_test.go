package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fillPurged writes n keys of size-byte values into e, then deletes all but
// one in keep, flushes, and returns the model of what is left and the last
// index used.
func fillPurged(t testing.TB, e *Bolt, n, size, keep int) (map[string]string, uint64) {
	t.Helper()
	model := map[string]string{}
	idx := e.AppliedIndex()
	val := make([]byte, size)
	for i := 0; i < n; i += 1000 {
		idx++
		mustUpdate(t, e, idx, func(tx WriteTx) error {
			for j := i; j < min(i+1000, n); j++ {
				k := fmt.Sprintf("k%08d", j)
				v := fmt.Sprintf("%s-%s", k, val[:size-len(k)-1])
				if err := tx.Put([]byte(k), []byte(v)); err != nil {
					return err
				}
				model[k] = v
			}
			return nil
		})
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 1000 {
		idx++
		mustUpdate(t, e, idx, func(tx WriteTx) error {
			for j := i; j < min(i+1000, n); j++ {
				if j%keep == 0 {
					continue
				}
				k := fmt.Sprintf("k%08d", j)
				if err := tx.Delete([]byte(k)); err != nil {
					return err
				}
				delete(model, k)
			}
			return nil
		})
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	return model, idx
}

func modelPairs(model map[string]string) []kv {
	out := make([]kv, 0, len(model))
	for k, v := range model {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].k < out[j].k })
	return out
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// writer applies Updates to e until stopped, each putting and deleting a
// few random keys (old ones and new ones), and keeps the model.
type writer struct {
	e       *Bolt
	mu      sync.Mutex
	model   map[string]string
	idx     uint64
	n       atomic.Int64
	stop    chan struct{}
	done    chan struct{}
	err     error
	keySpan int
}

func startWriter(e *Bolt, model map[string]string, idx uint64, keySpan int) *writer {
	w := &writer{e: e, model: model, idx: idx, stop: make(chan struct{}), done: make(chan struct{}), keySpan: keySpan}
	go w.run()
	return w
}

func (w *writer) run() {
	defer close(w.done)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1_000_000; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		w.mu.Lock()
		w.idx++
		idx := w.idx
		changes := map[string]*string{}
		err := w.e.Update(idx, func(tx WriteTx) error {
			for range 4 {
				k := fmt.Sprintf("k%08d", r.IntN(w.keySpan))
				if r.IntN(3) == 0 {
					changes[k] = nil
					if err := tx.Delete([]byte(k)); err != nil {
						return err
					}
					continue
				}
				v := fmt.Sprintf("w%d-%s", idx, k)
				changes[k] = &v
				if err := tx.Put([]byte(k), []byte(v)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			w.err = err
			w.mu.Unlock()
			return
		}
		for k, v := range changes {
			if v == nil {
				delete(w.model, k)
			} else {
				w.model[k] = *v
			}
		}
		w.mu.Unlock()
		w.n.Add(1)
		if i%16 == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

func (w *writer) halt(t testing.TB) {
	t.Helper()
	close(w.stop)
	<-w.done
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
}

// waitWrites waits until w made n more Updates, then commits them into the
// file, so that they reach the file during the current step.
func (w *writer) waitWrites(t testing.TB, n int64) {
	from := w.n.Load()
	deadline := time.Now().Add(10 * time.Second)
	for w.n.Load() < from+n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := w.e.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

// compactUnderWrites compacts a purged file while a writer goes on, with
// writes landing in the file during every step, and returns the engine,
// the writer and the stats.
func compactUnderWrites(t *testing.T) (*Bolt, *writer, CompactStats, map[string]int) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBoltOpts(t, path, BoltOptions{CommitInterval: testCommitInterval})
	model, idx := fillPurged(t, e, 20000, 512, 10)
	w := startWriter(e, model, idx, 25000)
	steps := map[string]int{}
	old := compactHook
	compactHook = func(step string) {
		steps[step]++
		w.waitWrites(t, 50)
	}
	oldFinal := compactFinalKeys
	compactFinalKeys = 0 // rounds while any key is dirty, up to the bound
	t.Cleanup(func() { compactHook, compactFinalKeys = old, oldFinal })
	st, err := e.Compact(context.Background())
	if err != nil {
		w.halt(t)
		t.Fatalf("Compact: %v", err)
	}
	w.waitWrites(t, 50)
	w.halt(t)
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("the new file is still there after the compaction: %v", err)
	}
	return e, w, st, steps
}

// TestBolt_Compact_WritesDuringEveryStepLand: a compaction of a purged file
// under a writer whose Updates reach the file during the copy, during each
// dirty-key round and just before the pause keeps every one of them: the
// content afterwards, and after a reopen, is the writer's model, and the
// applied index its last. Its negative control is
// TestBolt_Compact_WithoutDirtyRoundsLosesWrites.
func TestBolt_Compact_WritesDuringEveryStepLand(t *testing.T) {
	e, w, st, steps := compactUnderWrites(t)
	t.Logf("stats %+v, steps %v, writes %d", st, steps, w.n.Load())
	if steps["copied"] != 1 || steps["round"] == 0 || steps["final"] != 1 {
		t.Fatalf("steps %v: want a copy, dirty rounds and a final step", steps)
	}
	if st.After >= st.Before/2 {
		t.Fatalf("file %d bytes after, %d before: not compacted", st.After, st.Before)
	}
	want := modelPairs(w.model)
	diffPairs(t, "after Compact", dump(t, e), want)
	if got := e.AppliedIndex(); got != w.idx {
		t.Fatalf("applied index %d, want %d", got, w.idx)
	}
	// Writes go on after it, on the new file.
	putAll(t, e, w.idx+1, []kv{{"after", "compact"}})
	w.model["after"] = "compact"
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := openBolt(t, e.Path())
	diffPairs(t, "after reopen", dump(t, e2), modelPairs(w.model))
	if got := e2.AppliedIndex(); got != w.idx+1 {
		t.Fatalf("applied index after reopen %d, want %d", got, w.idx+1)
	}
}

// TestBolt_Compact_WithoutDirtyRoundsLosesWrites is the negative control of
// the test above: with the dirty keys not copied again, writes made during
// the copy are missing, and the comparison with the model catches it.
func TestBolt_Compact_WithoutDirtyRoundsLosesWrites(t *testing.T) {
	compactSkipDirty = true
	t.Cleanup(func() { compactSkipDirty = false })
	e, w, _, _ := compactUnderWrites(t)
	got, want := dump(t, e), modelPairs(w.model)
	if fmt.Sprint(got) == fmt.Sprint(want) {
		t.Fatal("without the dirty-key rounds the content still matches: the test does not see lost writes")
	}
}

// TestBolt_Compact_RefusesASecond: a compaction while one runs fails with
// ErrCompacting, and the first goes on.
func TestBolt_Compact_RefusesASecond(t *testing.T) {
	e := openBolt(t, filepath.Join(t.TempDir(), "data.db"))
	model, _ := fillPurged(t, e, 3000, 200, 3)
	var second error
	old := compactHook
	compactHook = func(step string) {
		if step == "copied" {
			_, second = e.Compact(context.Background())
		}
	}
	t.Cleanup(func() { compactHook = old })
	if _, err := e.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(second, ErrCompacting) {
		t.Fatalf("second Compact: %v, want ErrCompacting", second)
	}
	diffPairs(t, "after Compact", dump(t, e), modelPairs(model))
}

// TestBolt_Compact_CrashMidCopyReopensClean: a process that died during the
// copy leaves the half-written new file; OpenBolt removes it and the data
// file is whole. A cancelled compaction removes its file itself.
func TestBolt_Compact_CrashMidCopyReopensClean(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	model, idx := fillPurged(t, e, 5000, 300, 4)
	ctx, cancel := context.WithCancel(context.Background())
	saved := path + ".saved"
	old := compactHook
	compactHook = func(step string) {
		if step == "copied" {
			b, err := os.ReadFile(path + compactSuffix)
			if err != nil {
				t.Errorf("read the new file: %v", err)
			}
			if err := os.WriteFile(saved, b, 0o600); err != nil {
				t.Error(err)
			}
			cancel()
		}
	}
	t.Cleanup(func() { compactHook = old })
	if _, err := e.Compact(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Compact: %v, want context.Canceled", err)
	}
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("a failed compaction left its file: %v", err)
	}
	diffPairs(t, "after the failed Compact", dump(t, e), modelPairs(model))
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// The crash: the half-written file is there at the next open.
	if err := os.Rename(saved, path+compactSuffix); err != nil {
		t.Fatal(err)
	}
	e2 := openBolt(t, path)
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("OpenBolt left the half-written file: %v", err)
	}
	diffPairs(t, "after reopen", dump(t, e2), modelPairs(model))
	if e2.AppliedIndex() != idx {
		t.Fatalf("applied index %d, want %d", e2.AppliedIndex(), idx)
	}
}

// TestBolt_Compact_AtOpen: a file mostly free and over the threshold is
// compacted by OpenBolt; one under it, or with compaction at open
// disabled, is not.
func TestBolt_Compact_AtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	model, idx := fillPurged(t, e, 20000, 512, 10)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	before := fileSize(t, path)
	for _, min := range []int64{-1, before + 1} {
		e, err := OpenBolt(path, BoltOptions{AutoCompactMinSize: min})
		if err != nil {
			t.Fatal(err)
		}
		e.Close()
		if got := fileSize(t, path); got != before {
			t.Fatalf("AutoCompactMinSize %d: file %d bytes, was %d", min, got, before)
		}
	}
	e2 := openBoltOpts(t, path, BoltOptions{AutoCompactMinSize: before / 2})
	after := fileSize(t, path)
	t.Logf("at open: %d -> %d bytes", before, after)
	if after >= before/2 {
		t.Fatalf("file %d bytes after open, %d before: not compacted", after, before)
	}
	diffPairs(t, "after open", dump(t, e2), modelPairs(model))
	if e2.AppliedIndex() != idx {
		t.Fatalf("applied index %d, want %d", e2.AppliedIndex(), idx)
	}
}

// TestBolt_Compact_DiskFull: when the new file does not fit, Compact fails
// with ErrDiskFull, removes it, and the engine goes on with its file.
func TestBolt_Compact_DiskFull(t *testing.T) {
	dir := mountTmpfs(t, 48<<20)
	path := filepath.Join(dir, "data.db")
	e := openBolt(t, path)
	// Little to reclaim: the new file is about as large as the old one.
	model, idx := fillPurged(t, e, 10000, 512, 1)
	t.Logf("data file %d bytes", fileSize(t, path))
	filler := fillFS(t, dir, 2<<20)
	_, err := e.Compact(context.Background())
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Compact on a full disk: %v, want ErrDiskFull", err)
	}
	t.Logf("Compact: %v", err)
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("the failed compaction left its file: %v", err)
	}
	diffPairs(t, "after the failed Compact", dump(t, e), modelPairs(model))
	os.Remove(filler)
	putAll(t, e, idx+1, []kv{{"k", "v"}})
	model["k"] = "v"
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Compact(context.Background()); err != nil {
		t.Fatalf("Compact once there is space: %v", err)
	}
	diffPairs(t, "after Compact", dump(t, e), modelPairs(model))
}

// TestLogStore_CompactAtOpen: a raft.db whose entries raft deleted is
// compacted by OpenLogStore when mostly free and over the threshold, with
// every remaining entry and the stable keys intact; with compaction at
// open disabled it keeps its size.
func TestLogStore_CompactAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
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
	before := fileSize(t, path)
	s, err = OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := fileSize(t, path); got != before {
		t.Fatalf("disabled: %d bytes, was %d", got, before)
	}
	s, err = OpenLogStore(path, LogStoreOptions{AutoCompactMinSize: before / 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after := fileSize(t, path)
	t.Logf("raft.db at open: %d -> %d bytes", before, after)
	if after >= before/2 {
		t.Fatalf("raft.db %d bytes after open, %d before: not compacted", after, before)
	}
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Fatalf("the new file is left: %v", err)
	}
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != 19001 || last != 20000 {
		t.Fatalf("indexes %d..%d, want 19001..20000", first, last)
	}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		want := lsTestLog(i)
		if l.Term != want.Term || len(l.Data) != len(data) {
			t.Fatalf("GetLog(%d): term %d, %d bytes", i, l.Term, len(l.Data))
		}
	}
	if v, err := s.Get([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("Get(k): %q, %v", v, err)
	}
	if err := s.StoreLogs(lsTestLogs(20001, 20001)); err != nil {
		t.Fatal(err)
	}
}
