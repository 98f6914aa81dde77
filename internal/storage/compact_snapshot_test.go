package storage

import (
	"context"
	"maps"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBolt_Compact_SnapshotCopyDoesNotStretchThePause: a snapshot whose
// copy of the live file runs (held open here for three seconds) when a
// compaction reaches its final step, with writes waiting in the layers,
// does not stretch the pause of apply to the copy's length: the
// compaction waits for the copy before it pauses. The content afterwards
// is the writer's, and the snapshot reads its own point in time.
func TestBolt_Compact_SnapshotCopyDoesNotStretchThePause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBoltOpts(t, path, BoltOptions{CommitInterval: testCommitInterval})
	model, idx := fillPurged(t, e, 20000, 512, 10)
	w := startWriter(e, model, idx, 25000)
	const hold = 3 * time.Second
	release := make(chan struct{})
	entered := make(chan struct{})
	oldCopy := snapCopyHook
	snapCopyHook = func() {
		close(entered)
		<-release
	}
	var (
		snap      Snapshot
		snapModel map[string]string
		snapIdx   uint64
		snapErr   error
	)
	old := compactHook
	compactHook = func(step string) {
		if step != "final" {
			return
		}
		w.mu.Lock() // between two Updates: the model is the snapshot's
		snap, snapErr = e.Snapshot()
		snapModel, snapIdx = maps.Clone(w.model), w.idx
		w.mu.Unlock()
		if snapErr != nil {
			close(release)
			return
		}
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Error("the snapshot's copy never started")
		}
		// Writes in the layers, which the final step must get into the
		// new file; the committer now waits for the copy.
		from := w.n.Load()
		for deadline := time.Now().Add(10 * time.Second); w.n.Load() < from+50 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		time.AfterFunc(hold, func() { close(release) })
	}
	t.Cleanup(func() { compactHook, snapCopyHook = old, oldCopy })
	st, err := e.Compact(context.Background())
	w.halt(t)
	if snapErr != nil {
		t.Fatalf("Snapshot: %v", snapErr)
	}
	defer snap.Release()
	if err != nil {
		t.Fatalf("Compact: %v", err)
	}
	t.Logf("stats %+v, snapshot copy held %v", st, hold)
	if st.Stall > hold/4 {
		t.Fatalf("apply paused %v while a snapshot copy ran for %v: the final step waited for the copy", st.Stall, hold)
	}
	if st.After >= st.Before/2 {
		t.Fatalf("file %d bytes after, %d before: not compacted", st.After, st.Before)
	}
	diffPairs(t, "after Compact", dump(t, e), modelPairs(w.model))
	if got := e.AppliedIndex(); got != w.idx {
		t.Fatalf("applied index %d, want %d", got, w.idx)
	}
	if snap.AppliedIndex() != snapIdx {
		t.Fatalf("snapshot at %d, want %d", snap.AppliedIndex(), snapIdx)
	}
	var got []kv
	if err := snap.Scan(nil, func(k, v []byte) bool {
		got = append(got, kv{string(k), string(v)})
		return true
	}); err != nil {
		t.Fatalf("snapshot Scan: %v", err)
	}
	diffPairs(t, "snapshot", got, modelPairs(snapModel))
}

// TestBolt_Compact_SwapErrorsSayCompaction: a compaction whose rename
// fails, and one whose directory sync fails after the rename (which breaks
// the engine), report a compaction in their errors, never a restore; so do
// the engine's later calls once broken.
func TestBolt_Compact_SwapErrorsSayCompaction(t *testing.T) {
	for _, c := range []struct {
		name  string
		op    faultOp
		broke bool
	}{
		{"rename", opRename, false},
		{"sync dir", opSync, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "data.db")
			e := openBolt(t, path)
			model, idx := fillPurged(t, e, 3000, 200, 3)
			fs := newFaultSet(c.op, 1, syscall.EIO)
			fs.prefix = filepath.Clean(dir)
			faults.Store(fs)
			_, err := e.Compact(context.Background())
			faults.Store(nil)
			t.Logf("Compact: %v", err)
			if err == nil || !strings.Contains(err.Error(), "compact") || strings.Contains(err.Error(), "restore") {
				t.Fatalf("Compact: %v, want an error that names the compaction and no restore", err)
			}
			if strings.Count(err.Error(), "storage:") != 1 {
				t.Fatalf("Compact: %v: want one storage: prefix", err)
			}
			uerr := e.Update(idx+1, func(tx WriteTx) error { return tx.Put([]byte("a"), []byte("b")) })
			if !c.broke {
				if uerr != nil {
					t.Fatalf("Update after a failed rename: %v", uerr)
				}
				model["a"] = "b"
				diffPairs(t, "after the failed Compact", dump(t, e), modelPairs(model))
				return
			}
			t.Logf("Update: %v", uerr)
			if uerr == nil || !strings.Contains(uerr.Error(), "compact") || strings.Contains(uerr.Error(), "restore") {
				t.Fatalf("Update of the broken engine: %v, want an error that names the compaction and no restore", uerr)
			}
		})
	}
}
