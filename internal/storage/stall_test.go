package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// gatedWriter is a snapshot consumer that stalls: every Write waits until
// release is closed.
type gatedWriter struct {
	release <-chan struct{}
	entered chan struct{} // closed at the first Write
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// within runs fn and fails the test if it has not returned after d.
func within(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s still blocked after %v", what, d)
	}
}

// A snapshot whose consumer stalls must not stall anyone else: the file
// grows far past bbolt's mapping (every commit remaps it), and commits,
// Updates, point reads (cache hits and misses) and views each finish within
// seconds; once the consumer goes on, the snapshot holds what the file held
// when it was taken.
func TestBolt_StalledSnapshotReader_DoesNotBlockCommitsOrReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e, err := OpenBolt(path, BoltOptions{NoSync: true, InitialMmapSize: 64 << 10, CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	release := make(chan struct{})
	var releaseOnce sync.Once
	unstall := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unstall) // before Close: a blocked call must be able to end

	before := randomPairs(7, 200)
	putAll(t, e, 1, before)
	if err := e.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if _, _, err := e.Lookup(before[0].k, nil); err != nil { // cached from now on
		t.Fatalf("Lookup: %v", err)
	}

	snap, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	w := &gatedWriter{release: release, entered: make(chan struct{})}
	streamed := make(chan error, 1)
	go func() {
		err := WriteSnapshot(w, snap.AppliedIndex(), snap)
		snap.Release() // before the answer: the test then looks for its copy
		streamed <- err
	}()
	select {
	case <-w.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the snapshot never wrote")
	}

	// 16 MiB of new keys, 256 times the initial mapping.
	const rounds, perRound, valueSize = 32, 128, 4 << 10
	value := bytes.Repeat([]byte("v"), valueSize)
	start := time.Now()
	var slowest time.Duration
	for r := 0; r < rounds; r++ {
		idx := uint64(2 + r)
		t0 := time.Now()
		within(t, 5*time.Second, fmt.Sprintf("Update %d", idx), func() error {
			return e.Update(idx, func(tx WriteTx) error {
				for i := 0; i < perRound; i++ {
					if err := tx.Put([]byte(fmt.Sprintf("grow/%04d/%04d", r, i)), value); err != nil {
						return err
					}
				}
				// A key only the file knows: the Update reads the file.
				_, _ = tx.Get([]byte(before[1+r].k))
				return nil
			})
		})
		within(t, 5*time.Second, fmt.Sprintf("Flush after %d", idx), e.Flush)
		within(t, 5*time.Second, "Lookup of a cached key", func() error {
			_, ok, err := e.Lookup(before[0].k, nil)
			if err == nil && !ok {
				err = fmt.Errorf("%q not found", before[0].k)
			}
			return err
		})
		within(t, 5*time.Second, "Lookup of a key read from the file", func() error {
			_, ok, err := e.Lookup(before[100+r].k, nil)
			if err == nil && !ok {
				err = fmt.Errorf("%q not found", before[100+r].k)
			}
			return err
		})
		within(t, 5*time.Second, "View", func() error {
			return e.View(func(tx ReadTx) error {
				_, _ = tx.Get([]byte(fmt.Sprintf("grow/%04d/%04d", r, 0)))
				return nil
			})
		})
		slowest = max(slowest, time.Since(t0))
	}
	if got, want := e.DurableIndex(), uint64(1+rounds); got != want {
		t.Errorf("DurableIndex = %d, want %d", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data file grew to %d KiB past a 64 KiB mapping in %v (slowest round %v) while the snapshot stalled",
		fi.Size()>>10, time.Since(start).Round(time.Millisecond), slowest.Round(time.Millisecond))

	unstall()
	select {
	case err := <-streamed:
		if err != nil {
			t.Fatalf("WriteSnapshot: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the snapshot did not finish once its consumer went on")
	}
	var got []kv
	var index uint64
	err = ReadSnapshot(bytes.NewReader(w.buf.Bytes()), func(i uint64) error { index = i; return nil }, func(k, v []byte) error {
		got = append(got, kv{string(k), string(v)})
		return nil
	})
	if err != nil {
		t.Fatalf("ReadSnapshot: %v", err)
	}
	if index != 1 {
		t.Errorf("snapshot index = %d, want 1", index)
	}
	diffPairs(t, "stalled snapshot", got, sortedPairs(before))
	if names, _ := filepath.Glob(path + snapCopyInfix + "*"); len(names) != 0 {
		t.Errorf("snapshot copies left after Release: %v", names)
	}
}

// While a commit waits to remap the file (here for a reader that holds a
// transaction open), every Begin waits behind it; no engine lock may be
// held across one. Point reads the layers or the cache answer, and an
// Update whose reads they answer, finish at once.
func TestBolt_PendingRemap_DoesNotBlockLayerAndCacheReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e, err := OpenBolt(path, BoltOptions{NoSync: true, InitialMmapSize: 64 << 10, CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	putAll(t, e, 1, []kv{{"cached", "c"}, {"cold", "f"}})
	if err := e.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if _, _, err := e.Lookup("cached", nil); err != nil {
		t.Fatalf("Lookup: %v", err)
	}

	// A reader from outside the engine's locks holds the mapping.
	e.mu.RLock()
	rtx, err := e.db.Begin(false)
	e.mu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	var rollback sync.Once
	end := func() { rollback.Do(func() { rtx.Rollback() }) }
	t.Cleanup(end)

	// 1 MiB the committer will write, remapping the file.
	value := bytes.Repeat([]byte("v"), 4<<10)
	mustUpdate(t, e, 2, func(tx WriteTx) error {
		for i := 0; i < 256; i++ {
			if err := tx.Put([]byte(fmt.Sprintf("big/%04d", i)), value); err != nil {
				return err
			}
		}
		return nil
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.RLock()
		committing := e.flushing != nil
		e.mu.RUnlock()
		if committing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the committer never took the layer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // into the remap, waiting for rtx
	missed := make(chan error, 1)
	go func() { // a read of the file: waits for the remap
		_, _, err := e.Lookup("cold", nil)
		missed <- err
	}()
	time.Sleep(100 * time.Millisecond)

	within(t, 3*time.Second, "Lookup of a key in the layer being committed", func() error {
		_, ok, err := e.Lookup("big/0007", nil)
		if err == nil && !ok {
			err = fmt.Errorf("not found")
		}
		return err
	})
	within(t, 3*time.Second, "Lookup of a cached key", func() error {
		_, ok, err := e.Lookup("cached", nil)
		if err == nil && !ok {
			err = fmt.Errorf("not found")
		}
		return err
	})
	within(t, 3*time.Second, "Update reading a cached key", func() error {
		return e.Update(3, func(tx WriteTx) error {
			if _, ok := tx.Get([]byte("cached")); !ok {
				return fmt.Errorf("cached key not found")
			}
			return tx.Put([]byte("new"), []byte("n"))
		})
	})
	select {
	case err := <-missed:
		t.Logf("the file read did not wait for the remap (%v): the commit had not reached it", err)
	default:
	}
	end()
	within(t, 10*time.Second, "Flush after the reader ended", e.Flush)
	select {
	case err := <-missed:
		if err != nil {
			t.Fatalf("Lookup of a file key: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lookup of a file key still blocked after the remap")
	}
}
