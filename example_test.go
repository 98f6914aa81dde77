package kv_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"time"

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

// A member whose DataDir is damaged is rebuilt from the others: Rebuild
// moves its files aside and has the leader drop it from the configuration;
// the next Open rejoins it empty and the leader catches it up.
func ExampleRebuild() {
	cfg := kv.Config{
		NodeID:         "node3",
		DataDir:        "/var/lib/myservice/kv",
		BindAddr:       "127.0.0.1:7003",
		GossipBindAddr: "127.0.0.1:7103",
		Join:           []string{"127.0.0.1:7101", "127.0.0.1:7102"},
	}
	s, err := kv.Open(cfg)
	if errors.Is(err, kv.ErrCorrupt) {
		log.Printf("damaged DataDir, rebuilding from the cluster: %v", err)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := kv.Rebuild(ctx, cfg); err != nil {
			log.Fatalf("rebuild: %v", err)
		}
		s, err = kv.Open(cfg)
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
