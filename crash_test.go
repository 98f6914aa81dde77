package kv_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// runCrashChild is the test binary run as one instance in its own process:
// it opens a Store from the environment, prints its addresses and waits to
// be killed.
//
// Optional settings (unset: the defaults):
//
//	KV_CRASH_SNAPSHOT_THRESHOLD  Config.SnapshotThreshold
//	KV_CRASH_SNAPSHOT_INTERVAL   Config.SnapshotInterval (a time.Duration)
//	KV_CRASH_TRAILING_LOGS       Config.TrailingLogs
//	KV_CRASH_LOG                 a file the Store's logs are appended to
//	KV_CRASH_HTTP                set: serve /dump and /stats on 127.0.0.1
//	                             (see serveCrashInspect) and print its
//	                             address as a fourth field of READY
func runCrashChild() {
	var join []string
	if j := os.Getenv("KV_JOIN"); j != "" {
		join = strings.Split(j, ",")
	}
	expect := 0
	fmt.Sscan(os.Getenv("KV_EXPECT"), &expect)
	cfg := kv.Config{
		NodeID:          os.Getenv("KV_NODE_ID"),
		DataDir:         os.Getenv("KV_DATA_DIR"),
		Join:            join,
		BootstrapExpect: expect,
		MaxVoters:       3,
	}
	if v := os.Getenv("KV_CRASH_SNAPSHOT_THRESHOLD"); v != "" {
		fmt.Sscan(v, &cfg.SnapshotThreshold)
	}
	if v := os.Getenv("KV_CRASH_SNAPSHOT_INTERVAL"); v != "" {
		cfg.SnapshotInterval, _ = time.ParseDuration(v)
	}
	if v := os.Getenv("KV_CRASH_TRAILING_LOGS"); v != "" {
		fmt.Sscan(v, &cfg.TrailingLogs)
	}
	if path := os.Getenv("KV_CRASH_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		cfg.Logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
		cfg.Logger.Info("crash child starting", "pid", os.Getpid())
	}
	s, err := kv.Open(cfg)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if os.Getenv("KV_CRASH_HTTP") != "" {
		addr, err := serveCrashInspect(s)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("READY", s.Addr(), s.GossipAddr(), addr)
		select {}
	}
	fmt.Println("READY", s.Addr(), s.GossipAddr())
	select {}
}

// serveCrashInspect lets the parent look inside a child: GET /stats is the
// Store's Stats as JSON; GET /dump lists every pair (linearizable, or local
// state with ?stale=1) as lines "key<TAB>len<TAB>crc32c<TAB>head", head
// being the value up to its first '|' (at most 64 bytes), after a first
// line "applied <AppliedIndex>" and before a last line "end <count>".
func serveCrashInspect(s *kv.Store) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(s.Stats())
	})
	mux.HandleFunc("/dump", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		var opts []kv.ReadOption
		if r.URL.Query().Get("stale") != "" {
			opts = append(opts, kv.Stale())
		}
		applied := s.Stats().AppliedIndex
		pairs, err := s.List(ctx, "", opts...)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		bw := bufio.NewWriter(w)
		fmt.Fprintf(bw, "applied %d\n", applied)
		for _, p := range pairs {
			head := p.Value
			if i := bytes.IndexByte(head, '|'); i >= 0 {
				head = head[:i]
			}
			if len(head) > 64 {
				head = head[:64]
			}
			fmt.Fprintf(bw, "%s\t%d\t%08x\t%s\n", p.Key, len(p.Value), crc32.Checksum(p.Value, crashCRCTable), head)
		}
		fmt.Fprintf(bw, "end %d\n", len(pairs))
		bw.Flush()
	})
	go http.Serve(ln, mux)
	return ln.Addr().String(), nil
}

var crashCRCTable = crc32.MakeTable(crc32.Castagnoli)

type child struct {
	id, dir string
	cmd     *exec.Cmd
	gossip  string
	http    string // with KV_CRASH_HTTP: the inspection server's address
}

func startChild(t *testing.T, id, dir string, expect int, join []string) *child {
	t.Helper()
	return startChildEnv(t, id, dir, expect, join, nil)
}

// startChildEnv is startChild with extra environment settings for the child
// (see runCrashChild).
func startChildEnv(t *testing.T, id, dir string, expect int, join, env []string) *child {
	t.Helper()
	c, lines := spawnChild(t, id, dir, expect, join, env)
	c.waitReady(t, lines, 30*time.Second)
	return c
}

// spawnChild starts a child without waiting for it: lines delivers the
// first line it prints (READY or ERROR) and is closed when its output ends.
// The child is killed at the end of the test.
func spawnChild(t *testing.T, id, dir string, expect int, join, env []string) (*child, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KV_CRASH_CHILD=1", "KV_NODE_ID="+id, "KV_DATA_DIR="+dir,
		"KV_JOIN="+strings.Join(join, ","), fmt.Sprintf("KV_EXPECT=%d", expect))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	c := &child{id: id, dir: dir, cmd: cmd}
	t.Cleanup(c.kill)
	return c, lines
}

// waitReady waits for the READY line of a child from spawnChild and records
// its addresses.
func (c *child) waitReady(t *testing.T, lines <-chan string, timeout time.Duration) {
	t.Helper()
	select {
	case l, ok := <-lines:
		f := strings.Fields(l)
		if !ok || len(f) < 3 || len(f) > 4 || f[0] != "READY" {
			c.kill()
			t.Fatalf("child %s: %q (exit %v)", c.id, l, c.cmd.ProcessState)
		}
		c.gossip = f[2]
		if len(f) == 4 {
			c.http = f[3]
		}
	case <-time.After(timeout):
		c.kill()
		t.Fatalf("child %s did not start within %v", c.id, timeout)
	}
}

// kill sends SIGKILL: no Close, no fsync beyond what was already done.
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		c.cmd.Process.Signal(syscall.SIGKILL)
		c.cmd.Wait()
	}
}

// childCluster starts three voters as child processes and opens this
// process as a non-voting member (MaxVoters 3) that drives the test.
func childCluster(t *testing.T, prefix string) (map[string]*child, *kv.Store) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	kids := map[string]*child{}
	var seeds []string
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		k := startChild(t, id, filepath.Join(dir, id), 3, seeds)
		kids[id] = k
		seeds = append(seeds, k.gossip)
	}
	me, err := kv.Open(kv.Config{NodeID: "driver", InMemory: true, Join: seeds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { me.Close() })
	return kids, me
}

// Every acknowledged write survives kill -9 of the leader during a write
// burst, and then kill -9 of every voter at once: acknowledged means on disk
// on a majority.
func TestCrash_KillNineKeepsAcknowledgedWrites(t *testing.T) {
	kids, me := childCluster(t, "c")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := me.Set(ctx, "hello", []byte("world")); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	acked := map[string]string{}
	burst := func(prefix string, n int) {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < n; i++ {
					k, v := fmt.Sprintf("%s/%d/%d", prefix, g, i), fmt.Sprint(i)
					wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
					err := me.Set(wctx, k, []byte(v))
					wcancel()
					if err == nil {
						mu.Lock()
						acked[k] = v
						mu.Unlock()
					}
				}
			}(g)
		}
		wg.Wait()
	}
	check := func(when string) {
		t.Helper()
		pairs, err := me.List(ctx, "")
		if err != nil {
			t.Fatalf("%s: List: %v", when, err)
		}
		got := map[string]string{}
		for _, p := range pairs {
			got[p.Key] = string(p.Value)
		}
		mu.Lock()
		defer mu.Unlock()
		for k, v := range acked {
			if got[k] != v {
				t.Fatalf("%s: acknowledged %s=%s lost (have %q)", when, k, v, got[k])
			}
		}
		t.Logf("%s: all %d acknowledged writes present", when, len(acked))
	}

	// kill -9 the leader in the middle of a burst, then restart it.
	done := make(chan struct{})
	go func() { burst("a", 60); close(done) }()
	time.Sleep(200 * time.Millisecond)
	leader := me.Stats().Leader
	k := kids[leader]
	if k == nil {
		t.Fatalf("leader %q is not a child", leader)
	}
	k.kill()
	<-done
	kids[leader] = startChild(t, leader, k.dir, 3, []string{me.GossipAddr()})
	check("after kill -9 of the leader")

	// kill -9 every voter at once right after a burst, restart them all.
	burst("b", 30)
	for _, k := range kids {
		k.kill()
	}
	for id, k := range kids {
		kids[id] = startChild(t, id, k.dir, 3, []string{me.GossipAddr()})
	}
	check("after kill -9 of every voter")
	if len(acked) < 100 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
}

// A leader paused with SIGSTOP is replaced: linearizable reads and writes go
// on through the new leader, and after SIGCONT the old one rejoins as a
// follower without serving anything stale.
func TestCrash_PausedLeader(t *testing.T) {
	kids, me := childCluster(t, "p")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := me.Set(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	old := me.Stats().Leader
	paused := kids[old]
	if paused == nil {
		t.Fatalf("leader %q is not a child", old)
	}
	if err := paused.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			paused.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	// A write goes through once a new leader is elected; attempts that went
	// to the paused leader end with their own deadline.
	start := time.Now()
	var werr error
	for time.Since(start) < 30*time.Second {
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		werr = me.Set(wctx, "k", []byte("during"))
		wcancel()
		if werr == nil {
			break
		}
	}
	if werr != nil {
		t.Fatalf("no write succeeded while the leader was paused: %v", werr)
	}
	t.Logf("writes resumed %v after the pause", time.Since(start).Round(time.Millisecond))
	if l := me.Stats().Leader; l == old {
		t.Fatalf("paused %s still leads", old)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	v, err := me.Get(rctx, "k")
	rcancel()
	if err != nil || string(v) != "during" {
		t.Fatalf("linearizable Get while the old leader is paused = %q, %v", v, err)
	}
	resume()
	if err := me.Set(ctx, "k", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if v, err := me.Get(ctx, "k"); err != nil || string(v) != "after" {
		t.Fatalf("Get after resume = %q, %v", v, err)
	}
}
