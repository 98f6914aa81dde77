package kv_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
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

// A follower installs the leader's snapshot while a snapshot of its own
// data file is still open, and catches up. Here a Backup stuck on its
// writer holds it; raft holds one the same way between the state machine's
// Snapshot and Persist, while it waits for its main loop, which a snapshot
// install occupies until the data file is restored. A restore that waited
// for every open snapshot of the file it replaces never finished.
func TestCluster_SnapshotInstallWhileLocalSnapshotOpen(t *testing.T) {
	kc := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.NodeID = fmt.Sprintf("n%d", i+1)
		cfg.SnapshotThreshold = 64
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 16
	}))
	ctx := ctxT(t, 90*time.Second)
	l := kc.Leader()
	f := (l + 1) % 3
	if err := kc.Node(l).Set(ctx, "before", []byte("x")); err != nil {
		t.Fatal(err)
	}
	fs := kc.Node(f)
	if _, err := fs.Get(ctx, "before"); err != nil {
		t.Fatal(err)
	}

	pr, pw := io.Pipe()
	backup := make(chan error, 1)
	go func() { backup <- fs.Backup(ctx, pw, kv.Stale()) }()
	defer func() {
		pr.CloseWithError(io.ErrClosedPipe)
		if err := <-backup; err == nil {
			t.Errorf("Backup into a closed pipe succeeded")
		}
	}()
	// One byte read: the Backup holds its snapshot and waits on the pipe.
	if _, err := io.ReadFull(pr, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	kc.Isolate(f)
	l = kc.Leader()
	w := kc.Node(l)
	for i := 0; i < 300; i++ {
		if err := w.Set(ctx, fmt.Sprintf("snap/%03d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for w.Stats().LastSnapshotIndex < 200 {
		if time.Now().After(deadline) {
			t.Fatalf("leader took no snapshot: %+v", w.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	kc.Heal()

	// The follower can only catch up through the leader's snapshot.
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pairs, err := fs.List(lctx, "snap/")
	if err != nil {
		t.Fatalf("linearizable List on the follower after the install: %v (%+v)", err, fs.Stats())
	}
	if len(pairs) != 300 {
		t.Fatalf("List on the follower: %d pairs, want 300", len(pairs))
	}
	// The data file holds the restored snapshot before raft records it as
	// installed, so a read can finish a moment before raft's own figures
	// catch up. The leader kept only 16 entries past its snapshot, so log
	// replication alone cannot bring the follower here.
	deadline = time.Now().Add(10 * time.Second)
	for {
		st := fs.Stats()
		if st.LastSnapshotIndex >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower caught up without installing a snapshot: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
