package kv_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

func TestMain(m *testing.M) {
	if os.Getenv("KV_CRASH_CHILD") != "" {
		runCrashChild() // never returns: the parent kills it
	}
	code := m.Run()
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks polls for goroutines left running, for up to 5 s: memberlist
// ends a probe that was in flight at Shutdown on its own, shortly after.
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testLogger sends the Store's logs to t.Log when KV_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("KV_TEST_LOG") == "" {
		return nil
	}
	w := &tWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) }) // runs after the clusters' cleanups
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter sends log lines to t.Log until the test ends (memberlist may log
// from a probe that outlives Close by a moment).
type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// cluster is n instances on 127.0.0.1 with real files.
type cluster struct {
	t     testing.TB
	kc    *kvtest.Cluster // nil for clusters grown by hand (membership tests)
	dir   string
	nodes []*kv.Store // nil when closed
	cfgs  []kv.Config
}

func fastConfig(t testing.TB, dir, id string, expect int, join []string) kv.Config {
	return kv.Config{
		NodeID:          id,
		DataDir:         filepath.Join(dir, id),
		BindAddr:        "127.0.0.1:0",
		GossipBindAddr:  "127.0.0.1:0",
		Join:            join,
		BootstrapExpect: expect,
		Logger:          testLogger(t),
	}
}

// newCluster starts n members named n1..nN through kvtest (the same test
// clusters users get), on real files with the kvtest fault hooks in place.
func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	kc := kvtest.NewCluster(t, n, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.NodeID = fmt.Sprintf("n%d", i+1)
	}))
	c := &cluster{t: t, kc: kc}
	for i := 0; i < n; i++ {
		c.nodes = append(c.nodes, kc.Node(i))
		c.cfgs = append(c.cfgs, kc.Config(i))
	}
	return c
}

// closeAll closes every open node gracefully.
func (c *cluster) closeAll() {
	for i, s := range c.nodes {
		if s != nil {
			if err := s.Close(); err != nil {
				c.t.Errorf("close n%d: %v", i+1, err)
			}
			c.nodes[i] = nil
		}
	}
}

// waitLeader waits until every open node knows the same leader, which is one
// of them, and returns its position.
func (c *cluster) waitLeader() int {
	c.t.Helper()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		leader, agree := "", true
		for _, s := range c.nodes {
			if s == nil {
				continue
			}
			l := s.Stats().Leader
			if l == "" || leader != "" && l != leader {
				agree = false
				break
			}
			leader = l
		}
		if agree && leader != "" {
			for i, s := range c.nodes {
				if s != nil && s.Stats().NodeID == leader && s.Stats().State == kv.StateLeader {
					return i
				}
			}
		}
		last = leader
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no agreed leader among the open nodes within 30 s (last seen %q)", last)
	return -1
}

func (c *cluster) followers() []int {
	l := c.waitLeader()
	var out []int
	for i, s := range c.nodes {
		if s != nil && i != l {
			out = append(out, i)
		}
	}
	return out
}

// restart closes node i (if open) and opens it again from its DataDir on new
// ports, joining through the open nodes.
func (c *cluster) restart(i int) {
	c.t.Helper()
	if c.nodes[i] != nil {
		if err := c.nodes[i].Close(); err != nil {
			c.t.Fatalf("close n%d: %v", i+1, err)
		}
		c.nodes[i] = nil
	}
	c.open(i)
}

// open starts node i again with the same NodeID and DataDir, joining
// through the open nodes (kvtest.Restart for kvtest clusters).
func (c *cluster) open(i int) {
	c.t.Helper()
	if c.kc != nil {
		c.kc.Restart(i)
		c.nodes[i] = c.kc.Node(i)
		return
	}
	cfg := c.cfgs[i]
	cfg.Join = nil
	for j, s := range c.nodes {
		if s != nil && j != i {
			cfg.Join = append(cfg.Join, s.GossipAddr())
		}
	}
	s, err := kv.Open(cfg)
	if err != nil {
		c.t.Fatalf("reopen n%d: %v", i+1, err)
	}
	c.nodes[i] = s
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
