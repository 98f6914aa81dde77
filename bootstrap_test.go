package kv_test

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/discovery"
)

// startHand opens members named ids, all with BootstrapExpect expect, each
// joining the gossip of the first, and closes them at the end of the test.
func startHand(t *testing.T, expect int, ids ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir()}
	t.Cleanup(c.closeAll)
	for _, id := range ids {
		var join []string
		if len(c.nodes) > 0 {
			join = []string{c.nodes[0].GossipAddr()}
		}
		cfg := fastConfig(t, c.dir, id, expect, join)
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatalf("open %s: %v", id, err)
		}
		c.nodes = append(c.nodes, s)
		c.cfgs = append(c.cfgs, cfg)
	}
	return c
}

// hide returns a bootstrap view in which member self does not see the
// members hidden[self].
func hide(hidden map[string][]string) func(string, []discovery.Member) []discovery.Member {
	return func(self string, ms []discovery.Member) []discovery.Member {
		return slices.DeleteFunc(ms, func(m discovery.Member) bool { return slices.Contains(hidden[self], m.ID) })
	}
}

// watchOneCluster polls the members for d and fails the test if two of
// them ever record different cluster IDs, or two lead in the same term.
func watchOneCluster(t *testing.T, c *cluster, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		ids := map[string]string{}
		leaders := map[uint64]string{}
		for _, s := range c.nodes {
			st := s.Stats()
			if st.ClusterID != "" {
				ids[st.ClusterID] = st.NodeID
			}
			if st.State == kv.StateLeader {
				if other, ok := leaders[st.Term]; ok {
					t.Fatalf("two leaders in term %d: %s and %s", st.Term, other, st.NodeID)
				}
				leaders[st.Term] = st.NodeID
			}
		}
		if len(ids) > 1 {
			t.Fatalf("two clusters formed: %v (cluster ID -> a member)", ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitOneCluster waits until every member records the same cluster ID and
// knows the same leader.
func waitOneCluster(t *testing.T, c *cluster, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	var last []kv.Stats
	for time.Now().Before(deadline) {
		last = last[:0]
		agree := true
		for _, s := range c.nodes {
			st := s.Stats()
			last = append(last, st)
			if st.ClusterID == "" || st.Leader == "" || st.ClusterID != last[0].ClusterID || st.Leader != last[0].Leader {
				agree = false
			}
		}
		if agree {
			return last[0].ClusterID
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, st := range last {
		t.Logf("%s: cluster %q leader %q state %v members %d", st.NodeID, st.ClusterID, st.Leader, st.State, st.Members)
	}
	t.Fatalf("the members did not form one cluster within %v", d)
	return ""
}

// Four instances expect 3 while gossip views are partial: n1 sees
// {n1,n2,n3}, n4 sees {n2,n3,n4}, n2 and n3 see all four. Each partial set
// is a valid bootstrap set in its own view, but only a set every member of
// which promised it bootstraps: exactly one cluster forms, and n4 joins it.
func TestBootstrap_PartialViews_FormOneCluster(t *testing.T) {
	t.Cleanup(kv.SetBootstrapView(hide(map[string][]string{"n1": {"n4"}, "n4": {"n1"}})))
	c := startHand(t, 3, "n1", "n2", "n3", "n4")
	watchOneCluster(t, c, 5*time.Second)
	id := waitOneCluster(t, c, 30*time.Second)
	t.Logf("one cluster %s", id)
}

// Two members propose overlapping sets at once (n1 sees {n1,n2,n3}; n2 and
// n4 see {n2,n3,n4}): whichever way n2 and n3 promise, at most one set
// bootstraps.
func TestBootstrap_CompetingProposals_AtMostOneCluster(t *testing.T) {
	t.Cleanup(kv.SetBootstrapView(hide(map[string][]string{"n1": {"n4"}, "n2": {"n1"}, "n4": {"n1"}})))
	c := startHand(t, 3, "n1", "n2", "n3", "n4")
	watchOneCluster(t, c, 8*time.Second)
}

// A member whose DataDir was emptied must not come back under its NodeID
// while the cluster counts it as a voter: it would vote without the log it
// acknowledged. Open refuses it with ErrLostState; after Rebuild it opens
// and rejoins.
func TestOpen_EmptyDataDirOfVoter_Refused(t *testing.T) {
	c := startHand(t, 3, "n1", "n2", "n3")
	c.waitLeader()
	ctx := ctxT(t, 60*time.Second)
	if err := c.nodes[0].Set(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	victim := 2
	if err := c.nodes[victim].Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	c.nodes[victim] = nil
	cfg := c.cfgs[victim]
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	cfg.Join = []string{c.nodes[0].GossipAddr(), c.nodes[1].GossipAddr()}

	s, err := kv.Open(cfg)
	if err == nil {
		s.Close()
		t.Fatal("Open of an empty DataDir under a voter's NodeID succeeded")
	}
	if !errors.Is(err, kv.ErrLostState) {
		t.Fatalf("Open = %v, want ErrLostState", err)
	}
	t.Logf("Open: %v", err)

	if err := kv.Rebuild(ctx, cfg); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	s, err = kv.Open(cfg)
	if err != nil {
		t.Fatalf("Open after Rebuild: %v", err)
	}
	c.nodes[victim] = s
	c.cfgs[victim] = cfg
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := s.Get(ctx, "k", kv.Stale())
		if err == nil && string(v) == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rebuilt member never served the data: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
