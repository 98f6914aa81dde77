package kv_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// A single in-memory instance is a complete cluster of one: handy in tests.
// Real deployments set DataDir and Join (see Config).
func ExampleOpen() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "greeting", []byte("hello")); err != nil {
		fmt.Println(err)
		return
	}
	v, err := s.Get(ctx, "greeting")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s\n", v)
	// Output: hello
}

func ExampleStore_Get() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "color", []byte("blue")); err != nil {
		fmt.Println(err)
		return
	}

	// A default Get is linearizable: it sees every write that completed
	// before it, whichever instance serves it.
	v, err := s.Get(ctx, "color")
	fmt.Printf("color: %s %v\n", v, err)

	// An absent key is an error wrapping ErrNotFound.
	if _, err := s.Get(ctx, "size"); errors.Is(err, kv.ErrNotFound) {
		fmt.Println("size: not found")
	}

	// Stale reads this instance's local state without asking the leader:
	// faster, but on a follower it may lag behind the latest writes.
	v, err = s.Get(ctx, "color", kv.Stale())
	fmt.Printf("color (stale): %s %v\n", v, err)
	// Output:
	// color: blue <nil>
	// size: not found
	// color (stale): blue <nil>
}

func ExampleStore_List() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	colors := map[string]string{"fruit/pear": "green", "fruit/apple": "red", "veg/leek": "green",
		"fruit/fig": "purple", "fruit/kiwi": "brown", "fruit/lime": "green"}
	for k, v := range colors {
		if err := s.Set(ctx, k, []byte(v)); err != nil {
			fmt.Println(err)
			return
		}
	}

	// All pairs under a prefix, sorted by key.
	pairs, err := s.List(ctx, "fruit/")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range pairs {
		fmt.Printf("%s = %s\n", p.Key, p.Value)
	}

	// Page through them two at a time: each page starts after the last key
	// of the previous one.
	after := ""
	for {
		page, err := s.List(ctx, "fruit/", kv.Limit(2), kv.After(after))
		if err != nil {
			fmt.Println(err)
			return
		}
		if len(page) == 0 {
			break
		}
		var keys []string
		for _, p := range page {
			keys = append(keys, p.Key)
		}
		fmt.Println("page:", keys)
		after = page[len(page)-1].Key
	}
	// Output:
	// fruit/apple = red
	// fruit/fig = purple
	// fruit/kiwi = brown
	// fruit/lime = green
	// fruit/pear = green
	// page: [fruit/apple fruit/fig]
	// page: [fruit/kiwi fruit/lime]
	// page: [fruit/pear]
}
func ExampleStore_SetAsync() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}

	// Start many writes at once: they are pipelined and share Raft entries.
	futures := make([]*kv.Future, 50)
	for i := range futures {
		futures[i] = s.SetAsync(fmt.Sprintf("event/%02d", i), []byte("payload"))
	}
	// Then collect each outcome.
	for i, f := range futures {
		if err := f.Wait(ctx); err != nil {
			fmt.Printf("write %d: %v\n", i, err)
			return
		}
	}
	pairs, err := s.List(ctx, "event/")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(len(pairs), "events, first", pairs[0].Key, "last", pairs[len(pairs)-1].Key)
	// Output: 50 events, first event/00 last event/49
}

func ExampleStore_Delete() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "session/42", []byte("alice")); err != nil {
		fmt.Println(err)
		return
	}

	if err := s.Delete(ctx, "session/42"); err != nil {
		fmt.Println(err)
		return
	}
	_, err = s.Get(ctx, "session/42")
	fmt.Println("after Delete:", errors.Is(err, kv.ErrNotFound))

	// Deleting an absent key is not an error.
	fmt.Println("Delete again:", s.Delete(ctx, "session/42"))
	// Output:
	// after Delete: true
	// Delete again: <nil>
}

// A member whose DataDir is damaged (Open fails with ErrCorrupt) or lost
// (ErrLostState) is rebuilt from the others. That is an operator's
// decision, never automatic: give your service a way to run Rebuild with
// the Config it runs with, such as a -rebuild flag, used while the member
// is stopped. Rebuild moves the old files aside and has the leader drop the
// member from the configuration; the next start opens it empty, and the
// leader catches it up and promotes it. (This example is not run: it needs
// a cluster at those addresses.)
func ExampleRebuild() {
	rebuild := flag.Bool("rebuild", false, "rebuild this member from the cluster, then exit")
	flag.Parse()
	cfg := kv.Config{
		NodeID:         "node3",
		DataDir:        "/var/lib/myservice/kv",
		BindAddr:       "10.0.0.3:7000",
		GossipBindAddr: "10.0.0.3:7946",
		Join:           []string{"10.0.0.1:7946", "10.0.0.2:7946"},
	}
	if *rebuild {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := kv.Rebuild(ctx, cfg); err != nil {
			log.Fatalf("rebuild: %v", err) // run it again to go on
		}
		log.Print("rebuilt: start the service again, without -rebuild")
		return
	}
	s, err := kv.Open(cfg)
	if errors.Is(err, kv.ErrCorrupt) || errors.Is(err, kv.ErrLostState) {
		log.Fatalf("%v: stop this member and start it with -rebuild", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
}

// A secured instance: mutual TLS on the transport port and encrypted gossip.
// In production the certificates come from your CA (each member's
// certificate valid for server and client auth); kvtest.NewCA makes a
// throwaway one for tests and this example.
func Example_secure() {
	ca, err := kvtest.NewCA()
	if err != nil {
		fmt.Println(err)
		return
	}
	tlsConfig, err := ca.TLSConfig("node1") // Certificates + RootCAs + ClientCAs
	if err != nil {
		fmt.Println(err)
		return
	}
	gossipKey := make([]byte, 32) // share it with every member; keep it secret
	if _, err := rand.Read(gossipKey); err != nil {
		fmt.Println(err)
		return
	}
	s, err := kv.Open(kv.Config{
		NodeID:         "node1",
		InMemory:       true,
		BindAddr:       "127.0.0.1:0",
		GossipBindAddr: "127.0.0.1:0",
		TLS:            tlsConfig,
		GossipKey:      gossipKey,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Set(ctx, "greeting", []byte("hello over mTLS")); err != nil {
		fmt.Println(err)
		return
	}
	v, err := s.Get(ctx, "greeting")
	fmt.Println(string(v), err)
	// Output: hello over mTLS <nil>
}

// Back up the data set to a file, then roll the cluster back to it with
// Restore. Backup works on any member and does not stop writes; the copy
// reflects every write that completed before the call.
func ExampleStore_Backup() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "config/mode", []byte("blue")); err != nil {
		fmt.Println(err)
		return
	}

	dir, err := os.MkdirTemp("", "kv-backup-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "kv.backup")
	f, err := os.Create(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	err = s.Backup(ctx, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Println("backup:", err)
		return
	}

	// Later writes are not in the backup...
	if err := s.Set(ctx, "config/mode", []byte("green")); err != nil {
		fmt.Println(err)
		return
	}
	// ...and a Restore on the leader brings every member back to it.
	f, err = os.Open(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	if err := s.Restore(ctx, f); err != nil {
		fmt.Println("restore:", err)
		return
	}
	v, err := s.Get(ctx, "config/mode")
	fmt.Printf("config/mode: %s %v\n", v, err)
	// Output: config/mode: blue <nil>
}

// Seed a new cluster with the data of another one: Backup on any member of
// the old cluster, Restore on the leader of the new one. Restore replaces
// the whole data set of the new cluster.
func ExampleStore_Restore() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	open := func(id string) (*kv.Store, error) {
		s, err := kv.Open(kv.Config{NodeID: id, InMemory: true})
		if err != nil {
			return nil, err
		}
		if err := s.WaitForLeader(ctx); err != nil {
			s.Close()
			return nil, err
		}
		return s, nil
	}

	old, err := open("old1")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	for _, k := range []string{"user/ada", "user/grace", "user/linus"} {
		if err := old.Set(ctx, k, []byte("active")); err != nil {
			fmt.Println(err)
			return
		}
	}
	var backup bytes.Buffer // a file or object storage in practice
	if err := old.Backup(ctx, &backup); err != nil {
		fmt.Println("backup:", err)
		return
	}

	// A cluster of its own (a single instance here), with data that the
	// restore replaces.
	fresh, err := open("new1")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fresh.Close()
	if err := fresh.Set(ctx, "scratch", []byte("x")); err != nil {
		fmt.Println(err)
		return
	}
	if err := fresh.Restore(ctx, &backup); err != nil { // on the leader
		fmt.Println("restore:", err)
		return
	}
	pairs, err := fresh.List(ctx, "")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range pairs {
		fmt.Printf("%s = %s\n", p.Key, p.Value)
	}
	// Output:
	// user/ada = active
	// user/grace = active
	// user/linus = active
}

// Members merges the Raft configuration with what gossip knows. Here a
// second instance joins a cluster whose MaxVoters is 1, so the leader adds
// it as a non-voter and never promotes it: it replicates the data and
// serves reads, but does not vote. (With the default MaxVoters, 5, it would
// stay a non-voter too, so that the number of voters stays odd, until a
// third member is ready to be promoted with it.)
func ExampleStore_Members() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true, MaxVoters: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer first.Close()
	if err := first.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	second, err := kv.Open(kv.Config{NodeID: "node2", InMemory: true, MaxVoters: 1,
		Join: []string{first.GossipAddr()}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer second.Close()

	// Wait until the leader has added the new member to the configuration.
	for {
		ms := first.Members()
		if len(ms) == 2 && ms[1].Suffrage == kv.SuffrageNonVoter && ms[1].Status == kv.StatusAlive {
			break
		}
		select {
		case <-ctx.Done():
			fmt.Println("node2 was not added:", ctx.Err())
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, m := range first.Members() {
		fmt.Printf("%s: %s, %s, leader=%t\n", m.ID, m.Status, m.Suffrage, m.Leader)
	}
	// Output:
	// node1: alive, voter, leader=true
	// node2: alive, non-voter, leader=false
}

// Leave is a permanent exit: the leader removes the member from the Raft
// configuration, the member leaves gossip and closes. (Close, by contrast,
// is a stop after which the member is expected back.)
func ExampleStore_Leave() {
	c, err := kvtest.Start(3, kvtest.InMemory())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	leader := c.Node(c.Leader())
	voters := func() (n int) {
		for _, m := range leader.Members() {
			if m.Voter {
				n++
			}
		}
		return n
	}
	fmt.Println("voters before:", voters())

	// A follower leaves, for instance as its machine is retired.
	leaver := c.Node((c.Leader() + 1) % 3)
	if err := leaver.Leave(ctx); err != nil {
		fmt.Println("leave:", err)
		return
	}
	fmt.Println("voters after:", voters())
	fmt.Println("leaver closed:", errors.Is(leaver.Set(ctx, "k", nil), kv.ErrClosed))

	// The two that remain still form a cluster and take writes.
	fmt.Println("write:", leader.Set(ctx, "k", []byte("v")))
	// Output:
	// voters before: 3
	// voters after: 2
	// leaver closed: true
	// write: <nil>
}

// An optimistic counter: read the value and its revision, write the next
// value only if nobody wrote in between, and on a conflict read again. Any
// number of goroutines, on any instances, can increment it without losing
// an increment.
func ExampleStore_CompareAndSet() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}

	increment := func() error {
		for {
			e, err := s.GetEntry(ctx, "hits")
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				return err
			}
			n, _ := strconv.Atoi(string(e.Value)) // absent: ModRev 0, n 0
			_, err = s.CompareAndSet(ctx, "hits", []byte(strconv.Itoa(n+1)), e.ModRev)
			if !errors.Is(err, kv.ErrConflict) {
				return err // nil: applied exactly once
			}
			// Somebody else incremented first: try again on their value.
		}
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := increment(); err != nil {
				fmt.Println(err)
			}
		}()
	}
	wg.Wait()

	e, err := s.GetEntry(ctx, "hits")
	fmt.Printf("hits = %s, version %d, %v\n", e.Value, e.Version, err)

	// A conflict carries the key's current entry.
	_, err = s.CompareAndSet(ctx, "hits", []byte("0"), 1)
	var ce *kv.ConflictError
	if errors.As(err, &ce) {
		fmt.Printf("conflict: hits is at %s\n", ce.Current.Value)
	}
	// Output:
	// hits = 10, version 10, <nil>
	// conflict: hits is at 10
}

// A transfer between two accounts: both balances change in one transaction,
// and only if neither changed since they were read; every reader sees the
// same total.
func ExampleStore_Txn() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// Open both accounts, if neither exists yet.
	if _, err := s.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.Absent("acct/alice"), kv.Absent("acct/bob")},
		Then: []kv.Op{kv.OpSet("acct/alice", []byte("100")), kv.OpSet("acct/bob", []byte("0"))},
	}); err != nil {
		fmt.Println(err)
		return
	}

	transfer := func(from, to string, amount int) (bool, error) {
		a, err := s.GetEntry(ctx, from)
		if err != nil {
			return false, err
		}
		b, err := s.GetEntry(ctx, to)
		if err != nil {
			return false, err
		}
		av, _ := strconv.Atoi(string(a.Value))
		bv, _ := strconv.Atoi(string(b.Value))
		if av < amount {
			return false, nil
		}
		res, err := s.Txn(ctx, kv.Txn{
			If: []kv.Cond{kv.ModRevIs(from, a.ModRev), kv.ModRevIs(to, b.ModRev)},
			Then: []kv.Op{
				kv.OpSet(from, []byte(strconv.Itoa(av-amount))),
				kv.OpSet(to, []byte(strconv.Itoa(bv+amount))),
			},
			// If either changed, nothing is written; read both instead.
			Else: []kv.Op{kv.OpGet(from), kv.OpGet(to)},
		})
		return res.Succeeded, err
	}
	ok, err := transfer("acct/alice", "acct/bob", 30)
	fmt.Println("transfer:", ok, err)

	entries, _, err := s.ListEntries(ctx, "acct/")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range entries {
		fmt.Printf("%s = %s (version %d)\n", e.Key, e.Value, e.Version)
	}
	// Output:
	// transfer: true <nil>
	// acct/alice = 70 (version 2)
	// acct/bob = 30 (version 2)
}

// List a prefix, then follow it: Watch from the revision the list reflects
// plus one misses and repeats nothing.
func ExampleStore_Watch() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "config/a", []byte("1")); err != nil {
		fmt.Println(err)
		return
	}
	entries, rev, err := s.ListEntries(ctx, "config/")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range entries {
		fmt.Printf("listed %s=%s\n", e.Key, e.Value)
	}
	go func() {
		s.Set(ctx, "config/b", []byte("2"))
		s.Set(ctx, "other", []byte("not under config/"))
		s.Delete(ctx, "config/a")
	}()
	n := 0
	for ev, err := range s.Watch(ctx, "config/", rev+1) {
		if err != nil {
			fmt.Println(err) // ctx ended, Close, or kv.ErrCompacted: list again
			return
		}
		fmt.Printf("%s %s %s\n", ev.Type, ev.Entry.Key, ev.Entry.Value)
		if n++; n == 2 {
			break
		}
	}
	// Output:
	// listed config/a=1
	// put config/b 2
	// delete config/a
}

// A key with a TTL of its own goes once the TTL has passed; keys attached
// to a granted lease go together when it expires or is revoked.
func ExampleStore_Grant() {
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	id, err := s.Grant(ctx, 30*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, k := range []string{"live/a", "live/b"} {
		if err := s.Set(ctx, k, []byte("up"), kv.WithLease(id)); err != nil {
			fmt.Println(err)
			return
		}
	}
	if _, err := s.KeepAlive(ctx, id); err != nil { // renew well within the TTL
		fmt.Println(err)
		return
	}
	if err := s.Revoke(ctx, id); err != nil { // or let it expire
		fmt.Println(err)
		return
	}
	pairs, _ := s.List(ctx, "live/")
	fmt.Println(len(pairs), "keys left")
	if _, err := s.KeepAlive(ctx, id); errors.Is(err, kv.ErrLeaseNotFound) {
		fmt.Println("lease gone")
	}
	// Output:
	// 0 keys left
	// lease gone
}

// After a purge the data files keep their size until they are compacted:
// Compact, on any member, compacts every member's file in turn while the
// cluster serves. A member that could not be compacted is named in an
// error wrapping ErrCompactIncomplete.
func ExampleStore_Compact() {
	dir, err := os.MkdirTemp("", "kv-compact-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	s, err := kv.Open(kv.Config{NodeID: "node1", DataDir: dir, BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	for i := range 100 {
		if err := s.Set(ctx, fmt.Sprintf("job/%03d", i), bytes.Repeat([]byte("x"), 1000)); err != nil {
			fmt.Println(err)
			return
		}
	}
	for i := range 99 {
		if err := s.Delete(ctx, fmt.Sprintf("job/%03d", i)); err != nil {
			fmt.Println(err)
			return
		}
	}
	err = s.Compact(ctx)
	if errors.Is(err, kv.ErrCompactIncomplete) {
		fmt.Println("some members were not compacted:", err)
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	pairs, err := s.List(ctx, "job/")
	fmt.Println(len(pairs), err)
	// Output: 1 <nil>
}

// Config.Metrics takes a Prometheus registry of your own; serve it with
// promhttp. Every series is labelled with the Store's NodeID.
func ExampleConfig_metrics() {
	reg := prometheus.NewRegistry()
	s, err := kv.Open(kv.Config{NodeID: "node1", InMemory: true, Metrics: reg})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "greeting", []byte("hello")); err != nil {
		fmt.Println(err)
		return
	}

	// In a program: http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})).
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "cohortkv_has_leader") || strings.HasPrefix(line, `cohortkv_writes_total{node="node1",result="ok"}`) {
			fmt.Println(line)
		}
	}
	// Output:
	// cohortkv_has_leader{node="node1"} 1
	// cohortkv_writes_total{node="node1",result="ok"} 1
}
