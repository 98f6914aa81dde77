package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openFilesNamed returns the files this process holds open whose path
// starts with prefix.
func openFilesNamed(t *testing.T, prefix string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []string
	for _, fd := range fds {
		name, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	return out
}

// TestBolt_Close_StopsARunningCompaction: Close during a compaction
// returns only once the compaction has stopped: its new file is removed
// and closed, and Compact fails with ErrClosed. Without that, Close
// returned with the half-written file on disk and open.
func TestBolt_Close_StopsARunningCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	fillPurged(t, e, 3000, 200, 3)
	closed := make(chan struct{})
	old := compactHook
	compactHook = func(step string) {
		if step != "copied" {
			return
		}
		go func() {
			e.Close()
			close(closed)
		}()
		// Let Close run while the compaction is between two steps: until
		// it returns, or a while (a Close that waits for the compaction
		// waits for this hook).
		select {
		case <-closed:
		case <-time.After(time.Second):
		}
	}
	t.Cleanup(func() { compactHook = old })
	res := make(chan error, 1)
	go func() {
		_, err := e.Compact(context.Background())
		res <- err
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Errorf("Close returned with the compaction's new file on disk: %v", err)
	}
	if open := openFilesNamed(t, path+compactSuffix); len(open) > 0 {
		t.Errorf("Close returned with the compaction's new file open: %v", open)
	}
	select {
	case err := <-res:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Compact during Close: %v, want ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Compact did not return after Close")
	}
	if _, err := e.Compact(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Compact after Close: %v, want ErrClosed", err)
	}
}

// TestBolt_Compact_SnapshotOpenAcrossTheSwap: a snapshot taken before a
// compaction reads, after the swap, the content of its own point in time,
// and its Release closes the replaced file: no handle of it is left.
func TestBolt_Compact_SnapshotOpenAcrossTheSwap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	model, idx := fillPurged(t, e, 3000, 200, 3)
	snap, err := e.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	putAll(t, e, idx+1, []kv{{"k00000000", "changed"}, {"new", "key"}})
	if _, err := e.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []kv
	if err := snap.Scan(nil, func(k, v []byte) bool {
		got = append(got, kv{string(k), string(v)})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	diffPairs(t, "snapshot after the swap", got, modelPairs(model))
	if snap.AppliedIndex() != idx {
		t.Fatalf("snapshot at %d, want %d", snap.AppliedIndex(), idx)
	}
	snap.Release()
	if open := openFilesNamed(t, path); len(open) != 1 || open[0] != path {
		t.Fatalf("files open after Release: %v, want only %s", open, path)
	}
}
