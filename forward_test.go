package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// TestForward_ConcurrentWritesOnFollowers: many callers writing at once on
// the followers (their writes go to the leader in shared batches) all
// succeed, and every write is there, read linearizably on the leader.
func TestForward_ConcurrentWritesOnFollowers(t *testing.T) {
	c := kvtest.NewCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var followers []*kv.Store
	for i := range c.N() {
		if i != leader {
			followers = append(followers, c.Node(i))
		}
	}
	const callers, each = 48, 15
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := followers[g%len(followers)]
			for i := range each {
				if err := st.Set(ctx, fmt.Sprintf("fwd/%02d/%02d", g, i), []byte(fmt.Sprint(g*i))); err != nil {
					errs <- fmt.Errorf("caller %d write %d: %w", g, i, err)
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
	pairs, err := c.Node(leader).List(ctx, "fwd/")
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != callers*each {
		t.Fatalf("%d keys on the leader, want %d", len(pairs), callers*each)
	}
	for _, p := range pairs {
		var g, i int
		fmt.Sscanf(p.Key, "fwd/%d/%d", &g, &i)
		if string(p.Value) != fmt.Sprint(g*i) {
			t.Fatalf("%s = %q, want %d", p.Key, p.Value, g*i)
		}
	}
}

// TestForward_RefusedWriteFailsAlone: a follower whose limits are looser
// than the leader's forwards a write the leader refuses, together with
// good writes; the leader's refusal fails that write only.
func TestForward_RefusedWriteFailsAlone(t *testing.T) {
	// Member i accepts values up to i+1 KiB.
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.MaxValueSize = (i + 1) << 10
	}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if leader == 2 {
		// Member 2 must follow: crash it, and bring it back once another
		// leads.
		c.Kill(2)
		if leader, err = c.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		c.Restart(2)
	}
	f := c.Node(2)
	if err := f.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]error, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := []byte("small")
			if i == 7 {
				v = make([]byte, 2<<10+512) // within member 2's limit, over the leader's
			}
			results[i] = f.Set(ctx, fmt.Sprintf("r/%02d", i), v)
		}()
	}
	wg.Wait()
	for i, err := range results {
		switch {
		case i == 7 && (err == nil || !strings.Contains(err.Error(), "refused")):
			t.Fatalf("the oversized write: %v, want the leader's refusal", err)
		case i != 7 && err != nil:
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if _, err := c.Node(leader).Get(ctx, "r/07"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("refused write: Get = %v, want ErrNotFound", err)
	}
	if v, err := c.Node(leader).Get(ctx, "r/08"); err != nil || string(v) != "small" {
		t.Fatalf("r/08 = %q, %v", v, err)
	}
}
