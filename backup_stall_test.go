package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/storage"
)

// stuckWriter never returns from Write until unblock is closed.
type stuckWriter struct {
	unblock <-chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.unblock
	return len(p), nil
}

// A Backup to a writer that never returns stalls nothing else: while it
// waits, writes grow data.db far past bbolt's mapping (every commit remaps
// the file), and each Set and Get on the same member finishes within
// seconds. Backup returns its ctx's error as soon as ctx ends, with the
// Write still blocked.
func TestBackup_StalledWriter_DoesNotBlockReadsOrWrites(t *testing.T) {
	t.Cleanup(kv.SetBoltOptions(storage.BoltOptions{InitialMmapSize: 64 << 10, CommitInterval: 20 * time.Millisecond}))
	c := newCluster(t, 1)
	s := c.nodes[0]
	unblock := make(chan struct{})
	var unblockOnce sync.Once
	t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) }) // before the cluster closes
	ctx := ctxT(t, 60*time.Second)

	value := make([]byte, 4<<10)
	for i := 0; i < 300; i++ { // over 1 MiB: the backup stalls mid-scan
		if err := s.Set(ctx, fmt.Sprintf("old/%04d", i), value); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	if _, err := s.Get(ctx, "old/0000"); err != nil {
		t.Fatalf("Get: %v", err)
	}

	w := &stuckWriter{unblock: unblock, entered: make(chan struct{})}
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	backupErr := make(chan error, 1)
	go func() { backupErr <- s.Backup(bctx, w) }()
	select {
	case <-w.entered:
	case err := <-backupErr:
		t.Fatalf("Backup returned before writing: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Backup never wrote")
	}

	// 8 MiB of new keys, 128 times the initial mapping, 64 writes at a time.
	const rounds, perRound, opTimeout = 32, 64, 5 * time.Second
	start := time.Now()
	var slowest time.Duration
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make(chan error, perRound+2)
		op := func(what string, fn func(context.Context) error) {
			defer wg.Done()
			octx, ocancel := context.WithTimeout(ctx, opTimeout)
			defer ocancel()
			if err := fn(octx); err != nil {
				errs <- fmt.Errorf("%s: %w", what, err)
			}
		}
		t0 := time.Now()
		for i := 0; i < perRound; i++ {
			wg.Add(1)
			key := fmt.Sprintf("new/%04d/%04d", r, i)
			go op("Set "+key, func(ctx context.Context) error { return s.Set(ctx, key, value) })
		}
		wg.Add(2)
		go op("Get of a cached key", func(ctx context.Context) error {
			_, err := s.Get(ctx, "old/0000")
			return err
		})
		old := fmt.Sprintf("old/%04d", 1+r)
		go op("Get "+old, func(ctx context.Context) error {
			_, err := s.Get(ctx, old)
			return err
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v (each call has %v)", r, err, opTimeout)
		}
		slowest = max(slowest, time.Since(t0))
	}
	fi, err := os.Stat(filepath.Join(c.cfgs[0].DataDir, "data.db"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 4<<20 {
		t.Errorf("data.db is %d bytes: the test meant it to grow past 4 MiB", fi.Size())
	}
	t.Logf("%d writes in %v (slowest round %v), data.db %d KiB, while the backup's writer was stuck",
		rounds*perRound, time.Since(start).Round(time.Millisecond), slowest.Round(time.Millisecond), fi.Size()>>10)

	select {
	case err := <-backupErr:
		t.Fatalf("Backup returned while its writer was stuck: %v", err)
	default:
	}
	cancel()
	select {
	case err := <-backupErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Backup = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Backup did not return within 5 s of its ctx ending")
	}
}
