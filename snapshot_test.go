package kv_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// A follower that was down while the log was compacted catches up through a
// snapshot install, and everything survives its restart afterwards.
func TestCluster_FollowerCatchesUpThroughSnapshot(t *testing.T) {
	c := &cluster{t: t, dir: t.TempDir()}
	for i := 0; i < 3; i++ {
		var join []string
		if i > 0 {
			join = []string{c.nodes[0].GossipAddr()}
		}
		cfg := fastConfig(t, c.dir, fmt.Sprintf("n%d", i+1), 3, join)
		cfg.SnapshotThreshold = 64
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 16
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, s)
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(c.closeAll)
	ctx := ctxT(t, 90*time.Second)
	c.waitLeader()
	f := c.followers()[0]
	if err := c.nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[f] = nil
	w := c.nodes[c.waitLeader()]
	// Sequential writes: one Raft entry each, so the log grows past the
	// threshold and gets compacted.
	for i := 0; i < 400; i++ {
		if err := w.Set(ctx, fmt.Sprintf("snap/%03d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Delete(ctx, "snap/000"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for w.Stats().LastSnapshotIndex < 200 {
		if time.Now().After(deadline) {
			t.Fatalf("leader took no snapshot: %+v", w.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.open(f)
	back := c.nodes[f]
	check := func(s *kv.Store, stale bool) {
		t.Helper()
		var opts []kv.ReadOption
		if stale {
			opts = append(opts, kv.Stale())
		}
		pairs, err := s.List(ctx, "snap/", opts...)
		if err != nil {
			t.Fatal(err)
		}
		if len(pairs) != 399 || pairs[0].Key != "snap/001" || string(pairs[398].Value) != "399" {
			t.Fatalf("after catching up: %d pairs, first %v", len(pairs), pairs[:min(1, len(pairs))])
		}
	}
	check(back, false)
	// Raft records the installed snapshot just after the data is restored.
	for st := back.Stats(); st.LastSnapshotIndex == 0; st = back.Stats() {
		if ctx.Err() != nil {
			t.Fatalf("the follower did not install a snapshot: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Its data file survives a restart without replaying the snapshot.
	c.restart(f)
	c.waitLeader()
	check(c.nodes[f], false)
	check(c.nodes[f], true)

	// A data file behind the newest snapshot (here: lost) is rebuilt from the
	// snapshot and the log before the instance serves.
	if err := c.nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[f] = nil
	if err := os.Remove(filepath.Join(c.cfgs[f].DataDir, "data.db")); err != nil {
		t.Fatal(err)
	}
	c.open(f)
	check(c.nodes[f], false)
	check(c.nodes[f], true)
}

// Few large entries (group commit packs many writes into one) still
// trigger a snapshot once their bytes reach SnapshotBytes, so that a restart
// does not replay the whole data set from the log.
func TestStore_SnapshotByLogBytes(t *testing.T) {
	cfg := fastConfig(t, t.TempDir(), "solo", 1, nil)
	cfg.SnapshotBytes = 256 << 10
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().LastSnapshotIndex; got != 0 {
		t.Fatalf("snapshot before any write: %d", got)
	}
	value := bytes.Repeat([]byte("v"), 4<<10)
	for i := 0; i < 100; i++ { // 400 KiB of values
		if err := s.Set(ctx, fmt.Sprintf("k%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	for s.Stats().LastSnapshotIndex == 0 {
		if ctx.Err() != nil {
			t.Fatalf("no snapshot after %d KiB of log (SnapshotBytes 256 KiB): %+v", 400, s.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
