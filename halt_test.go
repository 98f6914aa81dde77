package kv_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// A member whose data file holds a damaged record halts when a write to
// that key reaches its state machine, whether it leads or follows: it stops
// taking part, every call on it fails with ErrCorrupt, the others elect a
// leader and go on, Close returns promptly, and Rebuild repairs it.
func TestHalt_DamagedRecord(t *testing.T) {
	for _, lead := range []bool{false, true} {
		name := "follower"
		if lead {
			name = "leader"
		}
		t.Run(name, func(t *testing.T) { testHaltDamagedRecord(t, lead) })
	}
}

func testHaltDamagedRecord(t *testing.T, lead bool) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 120*time.Second)
	l := c.waitLeader()
	marker := []byte("DAMAGE-ME-0123456789-abcdefghijklmnop")
	if err := c.nodes[l].Set(ctx, "victim", marker); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := c.nodes[l].Set(ctx, fmt.Sprintf("other/%02d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	v := c.followers()[0]
	// Every member has the key; the victim's copy then gets damaged.
	if _, err := c.nodes[v].Get(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[v].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[v] = nil
	damageFile(t, filepath.Join(c.cfgs[v].DataDir, "data.db"), marker)
	c.open(v)
	waitCaughtUp(t, ctx, c, v)

	if lead {
		// Move the leadership to the victim: cut the leader off until
		// one of the others leads, until that is the victim.
		for round := 0; ; round++ {
			l = c.waitLeader()
			if l == v {
				break
			}
			if round == 12 {
				t.Skip("the damaged member never won an election in 12 rounds")
			}
			var rest []int
			for i := range c.nodes {
				if i != l {
					rest = append(rest, i)
				}
			}
			c.kc.Partition([]int{l}, rest)
			waitLeaderAmong(t, c, rest)
			c.kc.Heal()
		}
	}

	healthy := (v + 1) % 3
	// The write reaches every state machine; the victim cannot apply it.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := c.nodes[healthy].Set(wctx, "victim", []byte("new"))
	cancel()
	if err != nil && !errors.Is(err, kv.ErrOutcomeUnknown) {
		t.Fatalf("write to the damaged key: %v (want nil, or an outcome-unknown error)", err)
	}
	// The others go on: writes and linearizable reads on both.
	octx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	for i := range c.nodes {
		if i == v {
			continue
		}
		for j := 0; j < 5; j++ {
			if err := c.nodes[i].Set(octx, fmt.Sprintf("after/%d/%d", i, j), []byte("y")); err != nil {
				t.Fatalf("write on n%d after the halt: %v", i+1, err)
			}
		}
		got, err := c.nodes[i].Get(octx, "victim")
		if err != nil || string(got) != "new" {
			t.Fatalf("read on n%d after the halt: %q, %v", i+1, got, err)
		}
	}

	waitHalted(t, c.nodes[v])
	if _, err := c.nodes[v].Get(ctx, "other/00", kv.Stale()); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("Get on the halted member: %v, want ErrCorrupt", err)
	}
	if err := c.nodes[v].Set(ctx, "k", []byte("v")); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("Set on the halted member: %v, want ErrCorrupt", err)
	}
	if st := c.nodes[v].Stats(); st.State != kv.StateShutdown || st.Halted == "" {
		t.Fatalf("Stats of the halted member: %+v", st)
	}

	closed := make(chan error, 1)
	go func() { closed <- c.nodes[v].Close() }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close of the halted member did not return within 15 s")
	}
	c.nodes[v] = nil

	cfg := c.cfgs[v]
	for i, s := range c.nodes {
		if s != nil && i != v {
			cfg.Join = append(cfg.Join[:0:0], s.GossipAddr())
			break
		}
	}
	if err := kv.Rebuild(ctx, cfg); err != nil {
		t.Fatalf("Rebuild of the halted member: %v", err)
	}
	c.cfgs[v] = cfg
	c.open(v)
	got, err := c.nodes[v].Get(ctx, "victim")
	if err != nil || string(got) != "new" {
		t.Fatalf("read on the rebuilt member: %q, %v", got, err)
	}
}

// waitCaughtUp waits until member i has applied what the leader committed.
func waitCaughtUp(t *testing.T, ctx context.Context, c *cluster, i int) {
	t.Helper()
	if _, err := c.nodes[i].Get(ctx, "other/00"); err != nil {
		t.Fatalf("n%d does not catch up: %v", i+1, err)
	}
}

func waitLeaderAmong(t *testing.T, c *cluster, among []int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, i := range among {
			if c.nodes[i].Stats().State == kv.StateLeader {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no leader among %v within 30 s", among)
}

func waitHalted(t *testing.T, s *kv.Store) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Halted == "" {
		if time.Now().After(deadline) {
			t.Fatalf("member did not halt within 30 s: %+v", s.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
