// Package kvtest runs in-process cohort/kv clusters for tests, as
// net/http/httptest runs HTTP servers: real instances on 127.0.0.1 with real
// Raft, gossip and TCP, in temporary directories (or in memory), cleaned up
// by the test.
//
// Faults act on the real traffic: every member's transport connections and
// gossip packets pass through the Cluster's simulated network (the
// kv.Config.Dial and kv.Config.WrapGossipTransport hooks), so Partition,
// Isolate, SetLatency and SetLoss exercise the same code paths that run in
// production. Kill stops a member as a crash would (no leadership hand-off,
// no gossip leave); Restart brings it back with the same NodeID and DataDir.
//
//	func TestMyService(t *testing.T) {
//		c := kvtest.NewCluster(t, 3)
//		svc := myservice.New(c.Node(0))
//		// ... exercise svc; c.Kill(c.Leader()); c.Partition([]int{0}, []int{1, 2}); ...
//	}
package kvtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/hooks"
)

// Option changes how NewCluster builds a cluster.
type Option func(*options)

type options struct {
	secure    bool
	inMemory  bool
	configure func(i int, cfg *kv.Config)
	logger    *slog.Logger
	noWait    bool
}

// InMemory runs every member with kv.Config.InMemory: faster, but a member
// that is killed cannot be restarted (its state is gone).
func InMemory() Option { return func(o *options) { o.inMemory = true } }

// Configure lets the test adjust member i's Config (timeouts, limits,
// snapshot thresholds, NodeID) before it first opens. It runs after the
// Cluster has filled in its defaults (NodeID node<i>, DataDir under the
// cluster's directory, 127.0.0.1 addresses, BootstrapExpect n, the fault
// hooks); Join is set after it. Replacing Dial or WrapGossipTransport takes
// that member's traffic out of the fault injection.
func Configure(fn func(i int, cfg *kv.Config)) Option {
	return func(o *options) { o.configure = fn }
}

// Secure runs the cluster as production should: mutual TLS on the
// transport, with certificates from a fresh throwaway CA (Cluster.CA), and
// encrypted gossip under a random key (Cluster.GossipKey).
func Secure() Option { return func(o *options) { o.secure = true } }

// Logger sends every member's log to l (default: discarded).
func Logger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Cluster is a set of in-process kv instances on 127.0.0.1. Its methods are
// safe for concurrent use; they fail the test (or, for a Cluster from Start,
// panic) when the cluster cannot do what they ask.
type Cluster struct {
	opts  options
	dir   string
	rmDir bool
	net   *fabric
	fatal func(format string, args ...any)

	ca        *CA
	gossipKey []byte

	mu    sync.Mutex
	nodes []*kv.Store
	cfgs  []kv.Config
}

// NewCluster starts n members, waits until they agree on a leader, and
// registers t.Cleanup to close them all.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c, err := start(t.TempDir(), false, t.Fatalf, n, opts...)
	if err != nil {
		t.Fatalf("kvtest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("kvtest: close: %v", err)
		}
	})
	return c
}

// Start is NewCluster for code without a testing.TB (TestMain, examples,
// benchmarks' setup): the caller must Close the Cluster, and methods panic
// where NewCluster's would fail the test.
func Start(n int, opts ...Option) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "kvtest-")
	if err != nil {
		return nil, err
	}
	c, err := start(dir, true, func(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }, n, opts...)
	if err != nil {
		os.RemoveAll(dir)
	}
	return c, err
}

func start(dir string, rmDir bool, fatal func(string, ...any), n int, opts ...Option) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("cluster of %d members", n)
	}
	c := &Cluster{dir: dir, rmDir: rmDir, net: newFabric(), fatal: fatal}
	for _, o := range opts {
		o(&c.opts)
	}
	if c.opts.secure {
		var err error
		if c.ca, err = NewCA(); err != nil {
			return nil, err
		}
		c.gossipKey = make([]byte, 32)
		if _, err := rand.Read(c.gossipKey); err != nil {
			return nil, err
		}
	}
	c.nodes = make([]*kv.Store, n)
	c.cfgs = make([]kv.Config, n)
	for i := 0; i < n; i++ {
		cfg := kv.Config{
			NodeID:              fmt.Sprintf("node%d", i),
			BindAddr:            "127.0.0.1:0",
			GossipBindAddr:      "127.0.0.1:0",
			BootstrapExpect:     n,
			InMemory:            c.opts.inMemory,
			Logger:              c.opts.logger,
			Dial:                c.net.dialer(i),
			WrapGossipTransport: c.net.wrapGossip(i),
		}
		if !cfg.InMemory {
			cfg.DataDir = filepath.Join(dir, cfg.NodeID)
		}
		if c.ca != nil {
			tc, err := c.ca.TLSConfig(cfg.NodeID)
			if err != nil {
				c.Close()
				return nil, err
			}
			cfg.TLS = tc
			cfg.GossipKey = c.gossipKey
		}
		if c.opts.configure != nil {
			c.opts.configure(i, &cfg)
		}
		if i > 0 {
			cfg.Join = []string{c.nodes[0].GossipAddr()}
		}
		c.cfgs[i] = cfg
		if err := c.open(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// open starts member i from its Config, joining through the running
// members.
func (c *Cluster) open(i int) error {
	c.mu.Lock()
	cfg := c.cfgs[i]
	var join []string
	for j, s := range c.nodes {
		if s != nil && j != i {
			join = append(join, s.GossipAddr())
		}
	}
	c.mu.Unlock()
	if len(join) > 0 {
		cfg.Join = join
	}
	s, err := kv.Open(cfg)
	if err != nil {
		return fmt.Errorf("open %s: %w", cfg.NodeID, err)
	}
	c.net.setOwner(s.Addr(), i)
	c.net.setOwner(s.GossipAddr(), i)
	c.mu.Lock()
	c.nodes[i] = s
	c.mu.Unlock()
	return nil
}

// CA returns the cluster's certificate authority (nil unless Secure).
func (c *Cluster) CA() *CA { return c.ca }

// GossipKey returns the cluster's gossip key (nil unless Secure).
func (c *Cluster) GossipKey() []byte { return c.gossipKey }

// N returns the number of members, running or not.
func (c *Cluster) N() int { return len(c.cfgs) }

// Node returns member i, or nil while it is stopped.
func (c *Cluster) Node(i int) *kv.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Config returns the Config member i runs with.
func (c *Cluster) Config(i int) kv.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[i]
}

// Leader waits up to 30 s for a leader that a majority of the members
// recognise and returns its index.
func (c *Cluster) Leader() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	i, err := c.WaitLeader(ctx)
	if err != nil {
		c.fatal("kvtest: %v", err)
	}
	return i
}

// WaitLeader waits until a running member leads and a majority of all
// members (counting it) name it as leader, and returns its index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		c.mu.Lock()
		nodes := append([]*kv.Store(nil), c.nodes...)
		c.mu.Unlock()
		votes := map[string]int{}
		for _, s := range nodes {
			if s != nil {
				if l := s.Stats().Leader; l != "" {
					votes[l]++
				}
			}
		}
		for i, s := range nodes {
			if s == nil {
				continue
			}
			st := s.Stats()
			if st.State == kv.StateLeader && votes[st.NodeID] > len(nodes)/2 {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader recognised by a majority: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Kill stops member i abruptly, as a crash would: its connections are cut at
// once, with no leadership hand-off and no gossip leave. Its DataDir stays
// for Restart.
func (c *Cluster) Kill(i int) {
	s := c.take(i)
	if s == nil {
		return
	}
	if err := hooks.Crash(s); err != nil {
		c.fatal("kvtest: kill node%d: %v", i, err)
	}
}

// Stop closes member i gracefully (kv.Store.Close).
func (c *Cluster) Stop(i int) {
	s := c.take(i)
	if s == nil {
		return
	}
	if err := s.Close(); err != nil {
		c.fatal("kvtest: stop node%d: %v", i, err)
	}
}

func (c *Cluster) take(i int) *kv.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.nodes[i]
	c.nodes[i] = nil
	return s
}

// Restart starts a stopped member again with the same NodeID and DataDir
// (on new ports; members find each other through gossip), stopping it
// abruptly first if it is running. It does not wait for it to catch up.
func (c *Cluster) Restart(i int) {
	if c.opts.inMemory {
		c.fatal("kvtest: node%d cannot restart: an InMemory member's state is gone with it", i)
		return
	}
	c.Kill(i)
	if err := c.open(i); err != nil {
		c.fatal("kvtest: restart: %v", err)
	}
}

// Partition splits the members into groups that cannot reach each other;
// members not named form one more group. It replaces earlier partitions.
func (c *Cluster) Partition(groups ...[]int) {
	group := make([]int, c.N())
	for i := range group {
		group[i] = -1
	}
	for g, members := range groups {
		for _, i := range members {
			group[i] = g
		}
	}
	c.net.update(func() {
		c.net.cut = map[[2]int]bool{}
		for a := range group {
			for b := range group {
				if a != b && group[a] != group[b] {
					c.net.cut[[2]int{a, b}] = true
				}
			}
		}
	})
}

// CutOneWay cuts the link from member from to member to in one direction:
// the connections that from opens to to stall (as Partition stalls them)
// and from's gossip packets to to are lost, while to still reaches from.
// A Raft leader cut one way from a follower keeps serving that follower's
// requests but sends it no log entries. It adds to the partitions in place;
// Partition and Heal replace it.
func (c *Cluster) CutOneWay(from, to int) {
	c.net.update(func() { c.net.cut[[2]int{from, to}] = true })
}

// Isolate cuts member i off from all the others.
func (c *Cluster) Isolate(i int) { c.Partition([]int{i}) }

// Heal removes every partition, latency and loss.
func (c *Cluster) Heal() {
	c.net.update(func() {
		c.net.cut = map[[2]int]bool{}
		c.net.latency = 0
		c.net.loss = 0
	})
}

// SetLatency delays every message between members by d (each transport
// write and gossip packet). 0 removes it.
func (c *Cluster) SetLatency(d time.Duration) {
	c.net.update(func() { c.net.latency = d })
}

// SetLoss drops a fraction p (0..1) of the messages between members: gossip
// packets are lost; a transport write resets its connection, as a lost
// segment that TCP gives up on would.
func (c *Cluster) SetLoss(p float64) {
	c.net.update(func() { c.net.loss = min(max(p, 0), 1) })
}

// Close stops every running member gracefully; a Cluster from Start also
// removes its directory.
func (c *Cluster) Close() error {
	var errs []error
	for i := range c.cfgs {
		if s := c.take(i); s != nil {
			if err := s.Close(); err != nil {
				errs = append(errs, fmt.Errorf("node%d: %w", i, err))
			}
		}
	}
	if c.rmDir {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
