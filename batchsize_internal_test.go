package kv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Group commit keeps a Raft entry within 1 MiB of writes (a single larger
// write goes alone), so that what raft holds in memory at once (an append,
// an AppendEntries RPC, a batch for the state machine, the replay of the
// log at a restart: at most raftMaxAppendEntries entries each) stays within
// 64 MiB.
func TestBatch_EntriesWithinMaxBatchBytes(t *testing.T) {
	const bound = 1 << 20
	dir := t.TempDir()
	if raftMaxAppendEntries*bound > 64<<20 {
		t.Fatalf("%d entries of %d bytes: more than 64 MiB at once", raftMaxAppendEntries, bound)
	}
	cfg := internalConfig(dir, "solo", 1, nil, &syncBuffer{})
	cfg.MaxValueSize = maxMaxValueSize
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	first := s.raft.LastIndex() + 1
	// 96 writers of 128 KiB values: 12 MiB in flight at once, far more
	// than one entry may carry.
	value := make([]byte, 128<<10)
	var wg sync.WaitGroup
	errs := make(chan error, 96)
	for w := range 96 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 4 {
				if err := s.Set(ctx, fmt.Sprintf("w%02d/%d", w, i), value); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// One more write alone, larger than the bound: it still goes through.
	if err := s.Set(ctx, "big", make([]byte, bound+1)); err != nil {
		t.Fatal(err)
	}
	last := s.raft.LastIndex()
	grouped, alone := 0, 0
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.rlog.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		d, err := decodeEntry(l.Data)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		// Each write adds a key, a session and a header to its value.
		n, size := len(d.cmds), len(l.Data)
		switch {
		case n == 1 && size > bound:
			alone++
		case size > bound+n*128:
			t.Errorf("entry %d carries %d writes in %d bytes: more than %d", i, n, size, bound)
		case n > 1:
			grouped++
		}
	}
	if grouped == 0 {
		t.Errorf("no entry of %d..%d groups writes: the load did not exercise group commit", first, last)
	}
	if alone != 1 {
		t.Errorf("%d entries hold a single write larger than the bound, want 1", alone)
	}
}
