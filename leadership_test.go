package kv_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// waitLeaderIs waits until a majority of c names member want as leader.
func waitLeaderIs(t *testing.T, c *kvtest.Cluster, want int) {
	t.Helper()
	ctx := ctxT(t, 20*time.Second)
	for {
		if got, err := c.WaitLeader(ctx); err != nil {
			t.Fatalf("waiting for member %d to lead: %v", want, err)
		} else if got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("member %d does not lead: %v", want, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// From the leader and from a follower, a transfer to a named voter makes
// that voter the leader; the caller knows the new leader when it returns.
func TestStore_TransferLeadership_ToNamedVoter(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)

	// On the leader.
	leader := c.Leader()
	target := (leader + 1) % 3
	id := c.Config(target).NodeID
	if err := c.Node(leader).TransferLeadership(ctx, id); err != nil {
		t.Fatalf("transfer from the leader to %s: %v", id, err)
	}
	if got := c.Node(leader).Stats().Leader; got != id {
		t.Fatalf("the old leader knows %q as leader after the transfer, want %s", got, id)
	}
	waitLeaderIs(t, c, target)

	// On a follower, naming the other follower.
	leader = target
	caller := (leader + 1) % 3
	target = (leader + 2) % 3
	id = c.Config(target).NodeID
	if err := c.Node(caller).TransferLeadership(ctx, id); err != nil {
		t.Fatalf("transfer from follower %s to %s: %v", c.Config(caller).NodeID, id, err)
	}
	if got := c.Node(caller).Stats().Leader; got != id {
		t.Fatalf("the caller knows %q as leader after the transfer, want %s", got, id)
	}
	waitLeaderIs(t, c, target)

	// Naming the leader does nothing.
	if err := c.Node(caller).TransferLeadership(ctx, id); err != nil {
		t.Fatalf("transfer to the leader itself: %v", err)
	}
	// Writes go on with the new leader.
	if err := c.Node(caller).Set(ctx, "after", []byte("transfer")); err != nil {
		t.Fatal(err)
	}
}

// With no member named, the leadership moves to another voter, also when
// a follower asks.
func TestStore_TransferLeadership_AnyVoterFromFollower(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)
	old := c.Leader()
	follower := (old + 1) % 3
	if err := c.Node(follower).TransferLeadership(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if got := c.Node(follower).Stats().Leader; got == "" || got == c.Config(old).NodeID {
		t.Fatalf("leader after the transfer: %q, want another than %s", got, c.Config(old).NodeID)
	}
	if now := c.Leader(); now == old {
		t.Fatalf("member %d still leads", old)
	}
}

// An unknown NodeID and a non-voter are refused with ErrNotVoter, on the
// leader and on a follower, and the leader stays.
func TestStore_TransferLeadership_NotVoter(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)
	leader := c.Leader()
	// A fourth member joins as a non-voter: three voters stay an odd count.
	fourth, err := kv.Open(kv.Config{NodeID: "fourth", InMemory: true, Join: []string{c.Node(0).GossipAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	nonVoter := "fourth"
	for added := false; !added; {
		for _, m := range c.Node(leader).Members() {
			added = added || m.ID == nonVoter && m.Suffrage == kv.SuffrageNonVoter
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the fourth member was not added: %+v", c.Node(leader).Members())
		case <-time.After(50 * time.Millisecond):
		}
	}
	leaderID := c.Config(leader).NodeID
	follower := (leader + 1) % 3
	for _, caller := range []*kv.Store{c.Node(leader), c.Node(follower), fourth} {
		for _, to := range []string{"no-such-node", nonVoter} {
			err := caller.TransferLeadership(ctx, to)
			if !errors.Is(err, kv.ErrNotVoter) {
				t.Errorf("transfer to %q from %s: %v, want ErrNotVoter", to, caller.Stats().NodeID, err)
			}
		}
	}
	if got := c.Node(leader).Stats().Leader; got != leaderID {
		t.Fatalf("leader %q after refused transfers, want %s", got, leaderID)
	}
}

// A single voter has nobody to hand over to.
func TestStore_TransferLeadership_OnlyVoter(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "solo", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.TransferLeadership(ctx, ""); !errors.Is(err, kv.ErrNotVoter) {
		t.Fatalf("transfer with one voter: %v, want ErrNotVoter", err)
	}
	if err := s.TransferLeadership(ctx, "solo"); err != nil {
		t.Fatalf("transfer to itself, the leader: %v", err)
	}
}

// Hand the leadership to a chosen member, for instance before maintenance
// on the leader's machine. Any member can ask.
func ExampleStore_TransferLeadership() {
	c, err := kvtest.Start(3, kvtest.InMemory())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	leader := c.Leader()
	next := c.Config((leader + 1) % 3).NodeID
	follower := c.Node((leader + 2) % 3)
	if err := follower.TransferLeadership(ctx, next); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("the chosen member leads:", follower.Stats().Leader == next)

	// A NodeID that is not a voter is refused.
	err = follower.TransferLeadership(ctx, "nobody")
	fmt.Println(errors.Is(err, kv.ErrNotVoter))
	// Output:
	// the chosen member leads: true
	// true
}

// A member that is the only voter elects itself at once, when it bootstraps
// alone and when it restarts, rather than waiting out a heartbeat timeout
// for a leader that cannot exist. The timeouts here are far longer than
// the wait allowed, which raft's own timer could not meet.
func TestLeadership_LoneVoterElectsItselfAtOnce(t *testing.T) {
	cfg := kv.Config{
		NodeID:             "alone",
		DataDir:            filepath.Join(t.TempDir(), "alone"),
		BindAddr:           "127.0.0.1:0",
		GossipBindAddr:     "127.0.0.1:0",
		BootstrapExpect:    1,
		HeartbeatTimeout:   30 * time.Second,
		ElectionTimeout:    30 * time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
	}
	for _, when := range []string{"first start", "restart"} {
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = s.WaitForLeader(ctx)
		if err == nil {
			err = s.Set(ctx, "k", []byte(when))
		}
		cancel()
		if cerr := s.Close(); cerr != nil {
			t.Fatal(cerr)
		}
		if err != nil {
			t.Fatalf("%s: %v (a heartbeat timeout is 30 s)", when, err)
		}
	}
}
