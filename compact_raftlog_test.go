package kv_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

func raftDBSize(t *testing.T, c *kvtest.Cluster, i int) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(c.Config(i).DataDir, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestStore_Compact_ShrinksRaftDB: after a load that Raft's snapshots then
// removed from the log, raft.db keeps its size; Compact shrinks it on
// every member without a restart, writes go on during and after it, and a
// member restarted afterwards starts from its compacted raft.db with
// every write.
func TestStore_Compact_ShrinksRaftDB(t *testing.T) {
	const (
		value  = 256 << 10
		values = 160 // 40 MiB through the log
	)
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(_ int, cfg *kv.Config) {
		cfg.TrailingBytes = 256 << 10
		cfg.SnapshotBytes = 1 << 30 // no snapshot during the load: it all stays in the log
	}))
	ctx := ctxT(t, 3*time.Minute)
	li, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := c.Node(li)
	want := map[string][]byte{}
	for i := 0; i < values; i++ {
		k, v := fmt.Sprintf("big/%03d", i), bytes.Repeat([]byte{byte('a' + i%26)}, value)
		if err := l.Set(ctx, k, v); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	all := []int{0, 1, 2}
	waitSameApplied(t, c, all)
	before := make([]int64, 3)
	for i := range 3 {
		if err := kv.TakeSnapshot(c.Node(i)); err != nil {
			t.Fatalf("node%d: snapshot: %v", i, err)
		}
		before[i] = raftDBSize(t, c, i)
	}
	if err := l.Set(ctx, "during", []byte("x")); err != nil {
		t.Fatal(err)
	}
	want["during"] = []byte("x")
	if err := c.Node((li + 1) % 3).Compact(ctx); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	li, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Node(li).Set(ctx, "after", []byte("y")); err != nil {
		t.Fatalf("write after Compact: %v", err)
	}
	want["after"] = []byte("y")
	waitSameApplied(t, c, all)
	for i := range 3 {
		after := raftDBSize(t, c, i)
		t.Logf("node%d: raft.db %d -> %d bytes", i, before[i], after)
		if after >= before[i]/2 {
			t.Errorf("node%d: raft.db %d bytes after Compact, %d before", i, after, before[i])
		}
	}
	// A member restarted on its compacted raft.db.
	r := (li + 1) % 3
	c.Stop(r)
	c.Restart(r)
	waitSameApplied(t, c, all)
	for k, v := range want {
		got, err := c.Node(r).Get(ctx, k, kv.Stale())
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("node%d after restart: %s: %d bytes, %v", r, k, len(got), err)
		}
	}
}
