package kv_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// Close under a load of writes and reads returns promptly, every call ends
// with nil or ErrClosed, and nothing is left running (TestMain checks).
func TestStore_CloseUnderLoad(t *testing.T) {
	for round := 0; round < 8; round++ {
		s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t, 20*time.Second)
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					var err error
					if i%2 == 0 {
						err = s.Set(ctx, fmt.Sprintf("k%d/%d", g, i), []byte("v"))
					} else if _, err = s.Get(ctx, fmt.Sprintf("k%d/%d", g, i-1)); errors.Is(err, kv.ErrNotFound) {
						err = nil
					}
					if err != nil {
						if !errors.Is(err, kv.ErrClosed) {
							errs <- err
						}
						return
					}
				}
			}(g)
		}
		time.Sleep(time.Duration(round) * 15 * time.Millisecond) // close at different points of the load
		done := make(chan error, 1)
		go func() { done <- s.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: Close: %v", round, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("round %d: Close did not return within 15 s", round)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: a call failed with %v, want nil or ErrClosed", round, err)
		}
	}
}

// Closing a leader while followers forward writes to it: the followers'
// writes go on through the new leader without "outcome unknown" errors.
func TestCluster_LeaderCloseUnderForwardedWrites(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	for _, f := range c.followers() {
		s := c.nodes[f]
		wg.Add(1)
		go func(f int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				if err := s.Set(ctx, fmt.Sprintf("f%d/%d", f, i), []byte("v")); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		}(f)
	}
	time.Sleep(50 * time.Millisecond)
	if err := c.nodes[l].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[l] = nil
	wg.Wait()
	// Writes whose leader handed over under them are sent again to the
	// next one: none fails.
	for _, err := range failures {
		t.Errorf("write failed: %v", err)
	}
}

func TestOpen_MaxKeySizeWithinBbolt(t *testing.T) {
	if _, err := kv.Open(kv.Config{NodeID: "a", InMemory: true, MaxKeySize: 40000}); !errors.Is(err, kv.ErrInvalidConfig) {
		t.Fatalf("MaxKeySize over bbolt's 32 KiB: %v, want ErrInvalidConfig", err)
	}
}
