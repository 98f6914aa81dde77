package kvtest_test

import (
	"context"
	"fmt"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// profiles is a tiny service built on the store: it keeps display names.
type profiles struct{ db *kv.Store }

func (p profiles) Rename(ctx context.Context, user, name string) error {
	return p.db.Set(ctx, "profile/"+user, []byte(name))
}

func (p profiles) Name(ctx context.Context, user string) (string, error) {
	v, err := p.db.Get(ctx, "profile/"+user)
	return string(v), err
}

// Test a service against a 3-instance cluster, and keep testing it while
// the leader crashes. In a test, kvtest.NewCluster(t, 3) does the same and
// cleans up by itself.
func ExampleStart() {
	c, err := kvtest.Start(3, kvtest.InMemory())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Two instances of the service, on two members.
	a, b := profiles{c.Node(0)}, profiles{c.Node(1)}
	if err := a.Rename(ctx, "ada", "Ada L."); err != nil {
		fmt.Println(err)
		return
	}
	name, err := b.Name(ctx, "ada")
	fmt.Println(name, err)

	// The leader crashes; the survivors elect another and go on.
	c.Kill(c.Leader())
	survivor := profiles{c.Node(c.Leader())}
	if err := survivor.Rename(ctx, "ada", "Ada Lovelace"); err != nil {
		fmt.Println(err)
		return
	}
	name, err = survivor.Name(ctx, "ada")
	fmt.Println(name, err)
	// Output:
	// Ada L. <nil>
	// Ada Lovelace <nil>
}

// Wait for a key written with a TTL to expire on every member, without a
// fixed sleep: WaitKeyGone watches each member until it applies the
// deletion.
func ExampleCluster_WaitKeyGone() {
	c, err := kvtest.Start(3, kvtest.InMemory())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := c.Node(0).Set(ctx, "session/ada", []byte("online"), kv.TTL(500*time.Millisecond)); err != nil {
		fmt.Println(err)
		return
	}
	for i := range c.N() {
		if err := c.WaitKeyGone(ctx, i, "session/ada"); err != nil {
			fmt.Println(err)
			return
		}
		_, err := c.Node(i).Get(ctx, "session/ada", kv.Stale())
		fmt.Printf("node%d: %v\n", i, err)
	}
	// Output:
	// node0: kv: key not found
	// node1: kv: key not found
	// node2: kv: key not found
}
