// Command quickstart is a guided tour of cohort/kv: it starts a three-member
// cluster inside one process on 127.0.0.1, reads and writes through every
// member, then stops the leader and watches the others carry on.
//
//	go run ./examples/quickstart      # quiet
//	go run ./examples/quickstart -v   # with the Store's logs on stderr
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	kv "github.com/cohortkv/kv"
)

func main() {
	verbose := flag.Bool("v", false, "log at Info level to stderr")
	flag.Parse()
	var logger *slog.Logger // nil: the Store stays quiet
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	// Every wait below derives from this context: the tour never hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	err := run(ctx, logger)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, logger *slog.Logger) error {
	dir, err := os.MkdirTemp("", "kv-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir) // runs last, after every Store is closed

	// 1. Start three instances. Port 0 lets the OS pick free ports; the 2nd
	// and 3rd find the cluster through the 1st's gossip address. All three
	// set BootstrapExpect 3, so the first election waits for everyone.
	var nodes []*kv.Store
	defer func() { // on an error path; Close is idempotent
		for _, s := range nodes {
			s.Close()
		}
	}()
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("node%d", i)
		cfg := kv.Config{NodeID: id, DataDir: filepath.Join(dir, id), BootstrapExpect: 3, Logger: logger,
			BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0"}
		if i > 1 {
			cfg.Join = []string{nodes[0].GossipAddr()}
		}
		s, err := kv.Open(cfg)
		if err != nil {
			return fmt.Errorf("open %s: %w", id, err)
		}
		nodes = append(nodes, s)
		fmt.Printf("started %s: raft+rpc on %s, gossip on %s\n", id, s.Addr(), s.GossipAddr())
	}

	// 2. Open returns at once; the election happens in the background.
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	for _, s := range nodes {
		if err := s.WaitForLeader(wctx); err != nil {
			return err
		}
	}
	leader, err := waitLeader(ctx, nodes, "") // the one they all agree on
	if err != nil {
		return err
	}
	// The two followers: they survive step 8.
	survivors := slices.DeleteFunc(slices.Clone(nodes), func(s *kv.Store) bool { return s == leader })
	follower := survivors[0]
	fmt.Printf("\n%s was elected leader (term %d)\n", name(leader), leader.Stats().Term)

	// 3. Any instance accepts writes: a follower forwards them to the leader.
	if err := follower.Set(ctx, "greeting", []byte("hello from "+name(follower))); err != nil {
		return err
	}
	fmt.Printf("\nSet greeting on %s (a follower)\n", name(follower))

	// 4. A default Get is linearizable on every instance: each one sees the
	// write that just returned, followers included.
	for _, s := range nodes {
		v, err := s.Get(ctx, "greeting")
		if err != nil {
			return err
		}
		fmt.Printf("  Get greeting on %s: %q\n", name(s), v)
	}

	// 5. List returns the pairs under a prefix, sorted by key.
	for _, user := range []string{"carol", "alice", "bob"} {
		if err := leader.Set(ctx, "users/"+user, []byte(user+"@example.com")); err != nil {
			return err
		}
	}
	pairs, err := follower.List(ctx, "users/")
	if err != nil {
		return err
	}
	fmt.Printf("\nList users/ on %s:\n", name(follower))
	for _, p := range pairs {
		fmt.Printf("  %s = %s\n", p.Key, p.Value)
	}

	// 6. SetAsync returns a Future at once: the writes are in flight together
	// and share Raft entries. Wait collects each outcome. The follower sends
	// them to the leader in batches, and the leader packs each batch into
	// one Raft log entry (group commit): one disk flush and one replication
	// round for many writes. The leader's log shows how few entries they took.
	before := leader.Stats().LastLogIndex
	start := time.Now()
	futures := make([]*kv.Future, 100)
	for i := range futures {
		futures[i] = follower.SetAsync(fmt.Sprintf("batch/%03d", i), []byte{byte(i)})
	}
	for _, f := range futures {
		if err := f.Wait(ctx); err != nil {
			return err
		}
	}
	took := time.Since(start).Round(time.Millisecond)
	entries := leader.Stats().LastLogIndex - before
	unit := "entries"
	if entries == 1 {
		unit = "entry"
	}
	fmt.Printf("\n100 SetAsync writes committed in %v, in %d Raft log %s (group commit)\n", took, entries, unit)

	// 7. Stats is each instance's own view of Raft (a follower's applied index
	// may trail the leader's until the next heartbeat); Members merges the Raft
	// configuration with what gossip knows. The indexes count Raft log
	// entries, not writes: after the 104 writes above, applied is far below
	// 104, because group commit put many writes into each entry.
	fmt.Println("\nStats (applied is a Raft log index: it counts entries, not writes):")
	for _, s := range nodes {
		st := s.Stats()
		fmt.Printf("  %s: %-8s leader=%s term=%d applied=%d\n", st.NodeID, st.State, st.Leader, st.Term, st.AppliedIndex)
	}
	fmt.Printf("Members, as %s sees them:\n", name(follower))
	for _, m := range follower.Members() {
		fmt.Printf("  %s at %s: %s voter=%t leader=%t\n", m.ID, m.Addr, m.Status, m.Voter, m.Leader)
	}

	// 8. Failover: stop the leader. Close hands leadership to a follower
	// first, so the others need not wait out an election timeout. We wait
	// until both survivors know the new leader, to show how long the
	// hand-off took. A write issued meanwhile on a survivor would not fail:
	// the library sends it to the new leader, again under the same sequence
	// if an attempt was in flight, and it is applied once.
	fmt.Printf("\nClosing the leader, %s...\n", name(leader))
	start = time.Now()
	if err := leader.Close(); err != nil {
		return err
	}
	newLeader, err := waitLeader(ctx, survivors, name(leader))
	if err != nil {
		return err
	}
	fmt.Printf("  %s took over in term %d, %v after the close began\n",
		name(newLeader), newLeader.Stats().Term, time.Since(start).Round(time.Millisecond))
	if err := survivors[0].Set(ctx, "after-failover", []byte("still here")); err != nil {
		return err
	}
	fmt.Printf("  Set after-failover on %s succeeded: the cluster is writable again\n", name(survivors[0]))
	v, err := survivors[1].Get(ctx, "after-failover")
	if err != nil {
		return err
	}
	fmt.Printf("  Get after-failover on %s: %q\n", name(survivors[1]), v)

	// 9. Close the rest. Each stays a member, expected back with its DataDir.
	for _, s := range survivors {
		if err := s.Close(); err != nil {
			return err
		}
	}
	fmt.Println("\nAll closed. Bye!")
	return nil
}

func name(s *kv.Store) string { return s.Stats().NodeID }

// waitLeader polls until every one of nodes names the same leader, one of
// them and not old, and returns it.
func waitLeader(ctx context.Context, nodes []*kv.Store, old string) (*kv.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		id, agree := nodes[0].Stats().Leader, true
		for _, s := range nodes {
			agree = agree && s.Stats().Leader == id
		}
		for _, s := range nodes {
			if agree && id != old && name(s) == id {
				return s, nil
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("no agreed leader among %d instances: %w", len(nodes), ctx.Err())
		}
	}
}
