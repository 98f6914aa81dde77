package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/faultinject"
)

// TestFaultWalk_Member fails, one at a time, each kind of file operation a
// member's storage makes (the Nth of the kind, on that member's files
// only) while the cluster takes writes and the member restarts, and checks
// what users rely on at each site:
//   - no panic (the test process would die);
//   - every failed call returns an error that says what happened (a
//     sentinel: ErrCorrupt, ErrDiskFull, ErrOutcomeUnknown, ErrNoLeader,
//     ErrClosed, or the context's);
//   - the member recovers once the fault clears, by itself or with a
//     restart (or Rebuild, if it reports damage), or it halts cleanly
//     while the others go on;
//   - no acknowledged write is lost, on any member.
//
// COHORT_FAULT_WALK_DEEP=1 walks more operations of each kind.
func TestFaultWalk_Member(t *testing.T) {
	if testing.Short() {
		t.Skip("fault walk: not in -short")
	}
	ns, errs := []int{1, 3}, []error{syscall.EIO, syscall.ENOSPC}
	if os.Getenv("COHORT_FAULT_WALK_DEEP") != "" {
		ns = []int{1, 2, 3, 5, 8, 13}
	}
	w := newWalkCluster(t)
	defer w.closeAll()
	ctx := ctxT(t, 15*time.Minute)
	round := 0
	// A disk that keeps failing: the member halts or keeps refusing, and
	// comes back with a restart once the fault is gone.
	for _, op := range []string{"write", "sync", "commit"} {
		victim := round % 3
		round++
		w.step(ctx, op+"/sticky", victim, faultinject.Fault{Op: op, N: 1, Sticky: true, Err: syscall.EIO, PathPrefix: w.cfgs[victim].DataDir})
	}
	for _, op := range faultinject.Ops {
		for _, n := range ns {
			for _, ferr := range errs {
				if ferr == syscall.ENOSPC && n > ns[0] && len(ns) == 2 {
					continue
				}
				name := fmt.Sprintf("%s#%d/%v", op, n, ferr)
				victim := round % 3
				round++
				w.step(ctx, name, victim, faultinject.Fault{Op: op, N: n, Err: ferr, PathPrefix: w.cfgs[victim].DataDir})
			}
		}
	}
	t.Logf("%d fault sites walked, %d fired, %d acknowledged writes checked on every member", round, w.fired, len(w.acked))
	if w.fired*3 < round { // the higher Ns of the deep walk go past what a step does
		t.Fatalf("only %d of %d faults fired: the walk does not reach the operations it names", w.fired, round)
	}
}

type walkCluster struct {
	t     *testing.T
	cfgs  []kv.Config
	nodes []*kv.Store
	acked map[string][]byte
	fired int
}

func newWalkCluster(t *testing.T) *walkCluster {
	dir := t.TempDir()
	w := &walkCluster{t: t, acked: map[string][]byte{}}
	for i := 0; i < 3; i++ {
		cfg := fastConfig(t, dir, fmt.Sprintf("n%d", i+1), 3, nil)
		// Snapshots and log compaction often, so that checkpoints of
		// the log and deletes of its entries happen within each step.
		cfg.SnapshotThreshold = 32
		cfg.TrailingLogs = 16
		cfg.SnapshotInterval = 200 * time.Millisecond
		w.cfgs = append(w.cfgs, cfg)
	}
	for i := range w.cfgs {
		if i > 0 {
			w.cfgs[i].Join = []string{w.nodes[0].GossipAddr()}
		}
		s, err := kv.Open(w.cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		w.nodes = append(w.nodes, s)
	}
	ctx := ctxT(t, 30*time.Second)
	for _, s := range w.nodes {
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// leader returns the position of the member that leads, or -1.
func (w *walkCluster) leader() int {
	for i, s := range w.nodes {
		if s != nil && s.Stats().State == kv.StateLeader {
			return i
		}
	}
	return -1
}

func (w *walkCluster) closeAll() {
	for _, s := range w.nodes {
		if s != nil {
			s.Close()
		}
	}
}

// clear says whether err names what happened with one of the sentinels.
func clearErr(err error) bool {
	for _, target := range []error{kv.ErrCorrupt, kv.ErrDiskFull, kv.ErrOutcomeUnknown, kv.ErrNoLeader, kv.ErrClosed, context.DeadlineExceeded, context.Canceled} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

func (w *walkCluster) write(ctx context.Context, i int, key string) {
	w.t.Helper()
	val := bytes.Repeat([]byte(key), 64)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := w.nodes[i].Set(wctx, key, val)
	cancel()
	switch {
	case err == nil:
		w.acked[key] = val
	case !clearErr(err):
		w.t.Fatalf("write %s on n%d: an error that says nothing of what happened: %v", key, i+1, err)
	}
}

func (w *walkCluster) step(ctx context.Context, name string, victim int, f faultinject.Fault) {
	t := w.t
	t.Logf("fault site %s on n%d", name, victim+1)
	remove := faultinject.Install(f)
	// Writes through every member while the fault is in place.
	for i := 0; i < 24; i++ {
		w.write(ctx, i%3, fmt.Sprintf("walk/%s/%02d", name, i))
	}
	if f.Sticky && f.Op != "commit" {
		// Appends that keep failing with I/O errors halt the member
		// (after a few seconds: a failure that clears must not).
		deadline := time.Now().Add(20 * time.Second)
		for i := 0; w.nodes[victim].Stats().Halted == ""; i++ {
			if time.Now().After(deadline) {
				t.Fatalf("%s: n%d, whose appends keep failing, did not halt: %+v", name, victim+1, w.nodes[victim].Stats())
			}
			w.write(ctx, (victim+1+i%2)%3, fmt.Sprintf("walk/%s/more/%03d", name, i))
			time.Sleep(50 * time.Millisecond)
		}
		if err := w.nodes[victim].Set(ctx, "x", nil); !errors.Is(err, kv.ErrCorrupt) {
			t.Fatalf("%s: write on the halted n%d: %v, want ErrCorrupt", name, victim+1, err)
		}
		// The others go on without it.
		w.write(ctx, (victim+1)%3, "walk/"+name+"/others")
		if _, ok := w.acked["walk/"+name+"/others"]; !ok {
			t.Fatalf("%s: the others do not take writes while n%d is halted", name, victim+1)
		}
	}
	// A Backup restored while the fault is in place: the same data, so
	// that whether it commits or not, nothing acknowledged changes.
	if l := w.leader(); l >= 0 {
		var buf bytes.Buffer
		bctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if err := w.nodes[l].Backup(bctx, &buf); err == nil {
			if err := w.nodes[l].Restore(bctx, bytes.NewReader(buf.Bytes())); err != nil && !clearErr(err) && !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("%s: Restore on n%d: an error that says nothing of what happened: %v", name, l+1, err)
			}
		} else if !clearErr(err) && !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%s: Backup on n%d: an error that says nothing of what happened: %v", name, l+1, err)
		}
		cancel()
	}
	// A restart under the fault: the operations of Open and Close.
	// Restarts keep the member's ports, as a restarted process does.
	cfg := w.cfgs[victim]
	cfg.BindAddr, cfg.GossipBindAddr = w.nodes[victim].Addr(), w.nodes[victim].GossipAddr()
	if err := w.nodes[victim].Close(); err != nil && !clearErr(err) && !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s: close n%d under the fault: %v", name, victim+1, err)
	}
	w.nodes[victim] = nil
	cfg.Join = []string{w.nodes[(victim+1)%3].GossipAddr()}
	if s, err := kv.Open(cfg); err == nil {
		w.nodes[victim] = s
	} else if !errors.Is(err, kv.ErrCorrupt) && !errors.Is(err, kv.ErrDiskFull) && !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s: open n%d under the fault: an error that says nothing of what happened: %v", name, victim+1, err)
	}
	fired := remove()
	if fired {
		w.fired++
	}
	halted := w.nodes[victim] != nil && w.nodes[victim].Stats().Halted != ""
	t.Logf("fault site %s: fired %v, open under the fault ok %v, halted %v", name, fired, w.nodes[victim] != nil, halted)

	// The fault is gone: the member comes back by itself, or with a
	// restart, or with Rebuild when it reports damage.
	if s := w.nodes[victim]; s != nil && s.Stats().Halted != "" {
		if _, err := s.Get(ctx, "x", kv.Stale()); !errors.Is(err, kv.ErrCorrupt) && !errors.Is(err, kv.ErrDiskFull) {
			t.Fatalf("%s: call on the halted n%d: %v", name, victim+1, err)
		}
		s.Close()
		w.nodes[victim] = nil
	}
	if w.nodes[victim] == nil {
		s, err := kv.Open(cfg)
		if errors.Is(err, kv.ErrCorrupt) {
			t.Logf("%s: n%d reports damage after the fault (%v): Rebuild", name, victim+1, err)
			if err := kv.Rebuild(ctx, cfg); err != nil {
				t.Fatalf("%s: Rebuild n%d: %v", name, victim+1, err)
			}
			s, err = kv.Open(cfg)
		}
		if err != nil {
			t.Fatalf("%s: reopen n%d once the fault is gone: %v", name, victim+1, err)
		}
		w.nodes[victim] = s
	}
	w.cfgs[victim] = cfg
	deadline := time.Now().Add(45 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := w.nodes[victim].Set(wctx, "walk/after/"+name, []byte("ok"))
		cancel()
		if err == nil {
			w.acked["walk/after/"+name] = []byte("ok")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: n%d does not take writes once the fault is gone: %v", name, victim+1, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nothing acknowledged is lost, on any member.
	for i, s := range w.nodes {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		got, err := s.List(lctx, "walk/")
		cancel()
		if err != nil {
			t.Fatalf("%s: List on n%d: %v", name, i+1, err)
		}
		have := make(map[string][]byte, len(got))
		for _, p := range got {
			have[p.Key] = p.Value
		}
		for k, v := range w.acked {
			if !bytes.Equal(have[k], v) {
				t.Fatalf("%s: acknowledged %s lost on n%d", name, k, i+1)
			}
		}
	}
}
