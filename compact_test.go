package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// purge writes n keys of size-byte values through s, then deletes all but
// every keep-th, and returns the keys left.
func purge(t *testing.T, s *kv.Store, n, size, keep int) map[string][]byte {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	left := map[string][]byte{}
	var fs []*kv.Future
	for i := range n {
		k := fmt.Sprintf("bulk/%06d", i)
		v := []byte(fmt.Sprintf("%s=%s", k, strings.Repeat("x", size)))
		fs = append(fs, s.SetAsync(k, v))
		if i%keep == 0 {
			left[k] = v
		}
	}
	for i := range n {
		if i%keep != 0 {
			fs = append(fs, s.DeleteAsync(fmt.Sprintf("bulk/%06d", i)))
		}
	}
	for _, f := range fs {
		if err := f.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return left
}

func dataFileSize(t *testing.T, c *kvtest.Cluster, i int) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(c.Config(i).DataDir, "data.db"))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// waitSameApplied waits until every running member applied the same index.
func waitSameApplied(t *testing.T, c *kvtest.Cluster, nodes []int) uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		idx := c.Node(nodes[0]).Stats().AppliedIndex
		same := true
		for _, i := range nodes[1:] {
			if c.Node(i).Stats().AppliedIndex != idx {
				same = false
			}
		}
		if same {
			return idx
		}
		if time.Now().After(deadline) {
			t.Fatal("members did not reach the same applied index")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStore_Compact_ShrinksEveryMemberUnderLoad: after a purge, Compact
// shrinks every member's data.db while writers keep succeeding and
// linearizable reads are served on every member; afterwards every
// acknowledged write is there and the members hold identical data.
func TestStore_Compact_ShrinksEveryMemberUnderLoad(t *testing.T) {
	// A short change log: the purged values do not stay in it.
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(_ int, cfg *kv.Config) {
		cfg.WatchHistory = kv.WatchHistory{Revisions: 1000, Bytes: 1 << 20}
	}))
	ctx := ctxT(t, 3*time.Minute)
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := purge(t, c.Node(l), 12000, 1000, 10)
	all := []int{0, 1, 2}
	waitSameApplied(t, c, all)
	// The purge reaches each file with the next commits of its layers.
	before := make([]int64, 3)
	for range 20 {
		time.Sleep(1200 * time.Millisecond)
		stable := true
		for i := range 3 {
			sz := dataFileSize(t, c, i)
			stable = stable && sz == before[i]
			before[i] = sz
		}
		if stable {
			break
		}
	}

	var (
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		ackMu   sync.Mutex
		acked   = map[string]string{}
		writes  atomic.Int64
		reads   [3]atomic.Int64
		failure atomic.Pointer[error]
	)
	fail := func(err error) { failure.CompareAndSwap(nil, &err) }
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("live/%d/%06d", w, i), fmt.Sprint(i)
				wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := c.Node(w).Set(wctx, k, []byte(v))
				cancel()
				if err != nil {
					fail(fmt.Errorf("write %s on node%d: %w", k, w, err))
					return
				}
				ackMu.Lock()
				acked[k] = v
				ackMu.Unlock()
				writes.Add(1)
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("bulk/%06d", (i*10)%12000)
				rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				v, err := c.Node(w).Get(rctx, k)
				cancel()
				if err != nil || string(v) != string(left[k]) {
					fail(fmt.Errorf("linearizable read of %s on node%d: %q, %v", k, w, v, err))
					return
				}
				reads[w].Add(1)
			}
		}()
	}
	// progress waits until every writer and reader has gone on by one
	// more call (writes are counted together).
	progress := func(what string) {
		w, r := writes.Load(), [3]int64{reads[0].Load(), reads[1].Load(), reads[2].Load()}
		deadline := time.Now().Add(20 * time.Second)
		for writes.Load() == w || reads[0].Load() == r[0] || reads[1].Load() == r[1] || reads[2].Load() == r[2] {
			if failure.Load() != nil || time.Now().After(deadline) {
				t.Errorf("no progress %s", what)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	progress("before Compact")
	// Any member may be asked: a follower here.
	start := time.Now()
	cerr := c.Node((l + 1) % 3).Compact(ctx)
	took := time.Since(start)
	w0, r0 := writes.Load(), [3]int64{reads[0].Load(), reads[1].Load(), reads[2].Load()}
	progress("after Compact")
	close(stop)
	wg.Wait()
	if cerr != nil {
		t.Fatalf("Compact: %v", cerr)
	}
	if p := failure.Load(); p != nil {
		t.Fatal(*p)
	}
	t.Logf("Compact took %v; %d writes and %v linearizable reads by its end, none failed", took, w0, r0)
	for i := range 3 {
		after := dataFileSize(t, c, i)
		t.Logf("node%d: data.db %d -> %d bytes", i, before[i], after)
		if after >= before[i]/2 {
			t.Errorf("node%d: data.db %d bytes after Compact, %d before", i, after, before[i])
		}
	}
	// Every acknowledged write, read linearizably.
	l, _ = c.WaitLeader(ctx)
	for k, v := range acked {
		got, err := c.Node(l).Get(ctx, k)
		if err != nil || string(got) != v {
			t.Fatalf("acknowledged %s=%s: read %q, %v", k, v, got, err)
		}
	}
	// Identical members: entries with their revisions, applied index.
	idx := waitSameApplied(t, c, all)
	var first []kv.Entry
	for i := range 3 {
		es, _, err := c.Node(i).ListEntries(ctx, "", kv.Stale())
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = es
			continue
		}
		if !slices.EqualFunc(first, es, func(a, b kv.Entry) bool {
			return a.Key == b.Key && string(a.Value) == string(b.Value) && a.CreateRev == b.CreateRev && a.ModRev == b.ModRev && a.Version == b.Version
		}) {
			t.Fatalf("node%d's entries differ from node0's (%d and %d entries)", i, len(es), len(first))
		}
	}
	if want := len(left) + len(acked); len(first) != want {
		t.Fatalf("%d entries, want %d", len(first), want)
	}
	t.Logf("members identical at applied index %d, %d entries", idx, len(first))
}

// TestStore_Compact_MemberDown: a member that is down is skipped and named;
// the others are compacted, and the error wraps ErrCompactIncomplete.
func TestStore_Compact_MemberDown(t *testing.T) {
	c := kvtest.NewCluster(t, 3)
	ctx := ctxT(t, 2*time.Minute)
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	purge(t, c.Node(l), 3000, 500, 10)
	down := (l + 1) % 3
	c.Stop(down)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = c.Node(l).Compact(cctx)
	if !errors.Is(err, kv.ErrCompactIncomplete) {
		t.Fatalf("Compact with node%d down: %v, want ErrCompactIncomplete", down, err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("node%d", down)) || !strings.Contains(err.Error(), "2 of 3") {
		t.Fatalf("error does not name node%d or say 2 of 3: %v", down, err)
	}
	t.Log(err)
	if err := c.Node(l).Set(ctx, "after", []byte("x")); err != nil {
		t.Fatal(err)
	}
}
