package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// A backup taken on a follower of one cluster seeds another cluster: every
// member of the new cluster serves the data, writes go on, and it survives
// a restart. A damaged backup is refused and changes nothing.
func TestBackupRestore_SeedsAnotherCluster(t *testing.T) {
	src := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	f := src.nodes[src.followers()[0]]
	for i := 0; i < 500; i++ {
		if err := f.Set(ctx, fmt.Sprintf("b/%03d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := f.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	backup := buf.Bytes()

	dst := newCluster(t, 3)
	l := dst.nodes[dst.waitLeader()]
	if err := l.Set(ctx, "only-in-dst", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// A damaged copy is refused.
	bad := bytes.Clone(backup)
	bad[len(bad)/2] ^= 0xff
	if err := l.Restore(ctx, bytes.NewReader(bad)); err == nil {
		t.Fatal("Restore of a damaged backup succeeded")
	}
	if v, err := l.Get(ctx, "only-in-dst"); err != nil || string(v) != "x" {
		t.Fatalf("after a refused restore: %q, %v", v, err)
	}
	// Restore runs on the leader only.
	if err := dst.nodes[dst.followers()[0]].Restore(ctx, bytes.NewReader(backup)); !errors.Is(err, kv.ErrNoLeader) {
		t.Fatalf("Restore on a follower: %v", err)
	}
	if err := l.Restore(ctx, bytes.NewReader(backup)); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		for i, s := range dst.nodes {
			pairs, err := s.List(ctx, "")
			if err != nil {
				t.Fatalf("%s: n%d: %v", when, i+1, err)
			}
			if len(pairs) != 500 || pairs[0].Key != "b/000" || string(pairs[499].Value) != "499" {
				t.Fatalf("%s: n%d has %d pairs", when, i+1, len(pairs))
			}
		}
	}
	check("after restore")
	if err := dst.nodes[0].Set(ctx, "b/000", []byte("new")); err != nil {
		t.Fatal(err)
	}
	dst.restart(dst.followers()[0])
	dst.waitLeader()
	for i, s := range dst.nodes {
		if v, err := s.Get(ctx, "b/000"); err != nil || string(v) != "new" {
			t.Fatalf("n%d after restart: %q, %v", i+1, v, err)
		}
	}
}

// A cluster that lost its majority cannot elect a leader; a stale Backup
// of a survivor saves what it holds, and seeds a new cluster.
func TestBackup_StaleFromSurvivorOfLostMajority(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)
	for i := 0; i < 30; i++ {
		if err := c.Node(0).Set(ctx, fmt.Sprintf("k%02d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	survivor := c.Node(0)
	// Every member applied everything before the others die.
	if _, err := survivor.Get(ctx, "k29"); err != nil {
		t.Fatal(err)
	}
	c.Kill(1)
	c.Kill(2)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := survivor.Backup(short, io.Discard)
	cancel()
	if err == nil {
		t.Fatal("linearizable Backup succeeded without a majority")
	}
	var buf bytes.Buffer
	if err := survivor.Backup(ctx, &buf, kv.Stale()); err != nil {
		t.Fatalf("stale Backup of a survivor: %v", err)
	}
	fresh, err := kv.Open(kv.Config{NodeID: "fresh", InMemory: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Restore(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	got, err := fresh.List(ctx, "")
	if err != nil || len(got) != 30 {
		t.Fatalf("restored %d pairs, %v; want 30", len(got), err)
	}
}
