package kv_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cohortkv/kv"
)

// WatchProgress says when a watch has caught up (every change up to a
// revision yielded), and keeps saying how far it is while revisions pass
// that change nothing under its prefix, at most once a second; Watch
// never yields progress.
func TestWatchProgress_SyncedAndQuietPrefix(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	var last uint64
	for i := 0; i < 5; i++ {
		rev, err := s.CompareAndSet(ctx, fmt.Sprint("p/", i), []byte("v"), 0)
		if err != nil {
			t.Fatal(err)
		}
		last = rev
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan kv.Event, 1024)
	go func() {
		defer close(events)
		for ev, err := range s.WatchProgress(wctx, "p/", 1) {
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	// Catch-up: the five puts, then progress at least at the last one.
	puts := 0
	for puts < 5 {
		ev := <-events
		if ev.Type == kv.EventProgress {
			t.Fatalf("progress at %d before the catch-up's %d puts came", ev.Entry.ModRev, 5-puts)
		}
		puts++
	}
	synced := <-events
	if synced.Type != kv.EventProgress || synced.Entry.ModRev < last {
		t.Fatalf("after the catch-up: %v at %d, want progress at %d or later", synced.Type, synced.Entry.ModRev, last)
	}
	// Progress claims only what was applied: a write after it comes later.
	rev, err := s.CompareAndSet(ctx, "p/next", []byte("v"), 0)
	if err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Type == kv.EventProgress {
			continue
		}
		if ev.Entry.Key != "p/next" || ev.Entry.ModRev != rev || rev <= synced.Entry.ModRev {
			t.Fatalf("after progress at %d: %v %q at %d (written at %d)", synced.Entry.ModRev, ev.Type, ev.Entry.Key, ev.Entry.ModRev, rev)
		}
		break
	}

	// Writes elsewhere: progress moves past them, at most once a second.
	start := time.Now()
	var otherRev uint64
	for time.Since(start) < 2500*time.Millisecond {
		rev, err := s.CompareAndSet(ctx, "other", []byte(time.Now().String()), 0)
		if err != nil {
			e, gerr := s.GetEntry(ctx, "other")
			if gerr != nil {
				t.Fatal(err, gerr)
			}
			rev, err = s.CompareAndSet(ctx, "other", []byte("x"), e.ModRev)
			if err != nil {
				t.Fatal(err)
			}
		}
		otherRev = rev
		time.Sleep(20 * time.Millisecond)
	}
	n, seen := 0, uint64(0)
	deadline := time.After(5 * time.Second)
	for seen < otherRev {
		select {
		case ev := <-events:
			if ev.Type != kv.EventProgress {
				t.Fatalf("an event of another prefix: %v %q", ev.Type, ev.Entry.Key)
			}
			if ev.Entry.ModRev < seen {
				t.Fatalf("progress went back from %d to %d", seen, ev.Entry.ModRev)
			}
			n, seen = n+1, ev.Entry.ModRev
		case <-deadline:
			t.Fatalf("progress reached %d, not the last write elsewhere at %d", seen, otherRev)
		}
	}
	if elapsed := time.Since(start); n > int(elapsed/time.Second)+2 {
		t.Errorf("%d progress events in %v: more than one a second", n, elapsed)
	}

	// Watch yields no progress.
	pctx, pcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer pcancel()
	for ev, err := range s.Watch(pctx, "p/", rev+1) {
		if err == nil {
			t.Fatalf("Watch yielded %v at %d", ev.Type, ev.Entry.ModRev)
		}
	}
}
