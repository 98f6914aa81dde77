package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is three kvserver processes on 127.0.0.1 and a kvctl binary.
type cluster struct {
	t     *testing.T
	dir   string
	ctl   string
	https []string // endpoints, http://127.0.0.1:port
	cmds  []*exec.Cmd
}

func build(t *testing.T, dir, out, pkg string) string {
	t.Helper()
	bin := filepath.Join(dir, out)
	if b, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return bin
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func startCluster(t *testing.T) *cluster {
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir,
		ctl: build(t, dir, "kvctl", "."),
	}
	server := build(t, dir, "kvserver", "github.com/cohortkv/kv/examples/kvserver")
	ports := freePorts(t, 9)
	for i := 0; i < 3; i++ {
		var join []string
		for j := 0; j < 3; j++ {
			if j != i {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", ports[3+j]))
			}
		}
		httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[6+i])
		c.https = append(c.https, "http://"+httpAddr)
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(server,
			"-node-id", fmt.Sprintf("node%d", i+1),
			"-data-dir", filepath.Join(dir, fmt.Sprintf("node%d", i+1)),
			"-bind", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"-gossip", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"-http", httpAddr, "-bootstrap-expect", "3", "-join", strings.Join(join, ","),
			"-timeout", "2s")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.cmds = append(c.cmds, cmd)
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
			log.Close()
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				if len(b) > 3000 {
					b = b[len(b)-3000:]
				}
				t.Logf("node%d log (tail):\n%s", i+1, b)
			}
		})
	}
	client := &http.Client{Timeout: 2 * time.Second}
	c.waitFor("three healthy members", 60*time.Second, func() bool {
		for _, ep := range c.https {
			resp, err := client.Get(ep + "/health")
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return false
			}
		}
		return true
	})
	return c
}

func (c *cluster) waitFor(what string, d time.Duration, ok func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kvctl runs kvctl with args (and stdin) and returns its stdout, stderr
// and exit code.
func (c *cluster) kvctl(stdin string, args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctl, args...)
	cmd.Env = append(os.Environ(), "KVCTL_ENDPOINTS=")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("kvctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ok runs kvctl and fails the test unless it exits 0.
func (c *cluster) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.kvctl("", args...)
	if code != 0 {
		c.t.Fatalf("kvctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (c *cluster) eps(i ...int) string {
	var s []string
	for _, j := range i {
		s = append(s, c.https[j])
	}
	return strings.Join(s, ",")
}

// statusJSON is kvctl status --json on every endpoint.
func (c *cluster) statusJSON(endpoints string) []map[string]any {
	c.t.Helper()
	var rows []map[string]any
	out := c.ok("status", "--json", "--endpoints", endpoints)
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		c.t.Fatalf("status --json: %v: %q", err, out)
	}
	return rows
}

// leader is the NodeID every answering member names as leader, or "".
func leaderOf(rows []map[string]any) string {
	leader := ""
	for _, r := range rows {
		if r["error"] != nil {
			continue
		}
		l, _ := r["leader"].(string)
		if l == "" || leader != "" && l != leader {
			return ""
		}
		leader = l
	}
	return leader
}

// kvctl against three kvserver processes: every command, its JSON output,
// its exit codes, and failover past a dead endpoint.
func TestKVCtl_E2E(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs kvserver processes")
	}
	c := startCluster(t)
	all := c.eps(0, 1, 2)

	// status: one leader, named by everyone.
	out := c.ok("status", "--endpoints", all)
	if n := strings.Count(out, " leader "); n != 1 || !strings.Contains(out, "\nleader: node") {
		t.Fatalf("status: want one member in state leader and a leader line:\n%s", out)
	}
	rows := c.statusJSON(all)
	states := map[string]int{}
	for _, r := range rows {
		states[fmt.Sprint(r["state"])]++
	}
	if len(rows) != 3 || states["leader"] != 1 || states["follower"] != 2 || leaderOf(rows) == "" {
		t.Fatalf("status --json: %v", rows)
	}

	// members: three voters.
	var ms []map[string]any
	if err := json.Unmarshal([]byte(c.ok("members", "--json", "--endpoints", all)), &ms); err != nil || len(ms) != 3 {
		t.Fatalf("members --json: %v %v", ms, err)
	}
	if out := c.ok("members", "--endpoints", all); strings.Count(out, "voter") != 3 {
		t.Fatalf("members:\n%s", out)
	}

	// put, get, list, del; global flags before or after the command.
	c.ok("--endpoints", all, "put", "app/a", "1")
	if out, _, code := c.kvctl("from stdin", "put", "app/b", "-", "--endpoints", all); code != 0 || out != "OK\n" {
		t.Fatalf("put from stdin: %d %q", code, out)
	}
	if got := c.ok("get", "app/a", "--endpoints", c.eps(1)); got != "1\n" {
		t.Fatalf("get app/a: %q", got)
	}
	var entry map[string]any
	if err := json.Unmarshal([]byte(c.ok("get", "app/b", "--json", "--endpoints", c.eps(2))), &entry); err != nil ||
		entry["value"] != "from stdin" || entry["mod_rev"].(float64) <= 0 {
		t.Fatalf("get --json app/b: %v %v", entry, err)
	}
	if got := c.ok("list", "app/", "--endpoints", all); got != "app/a\t1\napp/b\tfrom stdin\n" {
		t.Fatalf("list: %q", got)
	}
	var listed struct {
		Pairs []struct{ Key, Value string }
		Count int
	}
	if err := json.Unmarshal([]byte(c.ok("list", "app/", "--json", "--limit", "1", "--endpoints", all)), &listed); err != nil ||
		listed.Count != 1 || listed.Pairs[0].Key != "app/a" {
		t.Fatalf("list --json --limit 1: %+v %v", listed, err)
	}
	c.ok("del", "app/a", "--endpoints", all)
	out, errOut, code := c.kvctl("", "get", "app/a", "--endpoints", all)
	if code != exitNotFound || out != "" || !strings.Contains(errOut, "kvctl: get app/a: key not found") {
		t.Fatalf("get of a deleted key: exit %d, stdout %q, stderr %q; want exit 3", code, out, errOut)
	}
	if _, errOut, code := c.kvctl("", "put", "only-key", "--endpoints", all); code != exitUsage || !strings.Contains(errOut, "kvctl: put takes") {
		t.Fatalf("put without a value: exit %d, %q; want 2", code, errOut)
	}

	// watch: a put made after it started comes out.
	watchCmd := exec.Command(c.ctl, "watch", "w/", "--json", "--endpoints", all)
	pipe, err := watchCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := watchCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watchCmd.Process.Kill(); watchCmd.Wait() })
	lines := make(chan map[string]any, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"bad": sc.Text()}
			}
			lines <- m
		}
	}()
	next := func() map[string]any {
		select {
		case m := <-lines:
			return m
		case <-time.After(15 * time.Second):
			t.Fatal("watch: no line within 15 s")
		}
		return nil
	}
	if m := next(); m["type"] != "progress" {
		t.Fatalf("watch: first line %v, want progress", m)
	}
	c.ok("put", "w/1", "seen", "--endpoints", c.eps(2))
	for m := next(); m["type"] != "put"; m = next() {
		if m == nil || m["type"] != "progress" {
			t.Fatalf("watch: %v, want the put", m)
		}
	}
	watchCmd.Process.Kill()
	watchCmd.Wait()

	// backup, change, restore: the data is back.
	c.ok("put", "app/c", "before", "--endpoints", all)
	file := filepath.Join(c.dir, "kv.backup")
	var bk struct {
		Bytes int64
		File  string
	}
	if err := json.Unmarshal([]byte(c.ok("backup", file, "--json", "--progress", "--endpoints", all)), &bk); err != nil || bk.Bytes == 0 || bk.File != file {
		t.Fatalf("backup --json: %+v %v", bk, err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Size() != bk.Bytes {
		t.Fatalf("backup file: %v %v, want %d bytes", fi, err, bk.Bytes)
	}
	c.ok("put", "app/c", "after", "--endpoints", all)
	c.ok("del", "app/b", "--endpoints", all)
	// Sent to a follower alone, it is refused: restore runs on the leader.
	lead := leaderOf(c.statusJSON(all))
	leaderIdx := int(lead[len(lead)-1] - '1')
	follower := (leaderIdx + 1) % 3
	if _, errOut, code := c.kvctl("", "restore", file, "--endpoints", c.eps(follower)); code != exitUnavailable || !strings.Contains(errOut, "include its HTTP address") {
		t.Fatalf("restore through a follower only: exit %d %q, want 5", code, errOut)
	}
	// With the leader last in the list: kvctl finds it.
	c.ok("restore", file, "--endpoints", c.eps(follower, (leaderIdx+2)%3, leaderIdx))
	c.waitFor("restored data on every member", 10*time.Second, func() bool {
		for i := range c.https {
			out, _, _ := c.kvctl("", "get", "app/c", "--stale", "--endpoints", c.eps(i))
			if out != "before\n" {
				return false
			}
		}
		return true
	})
	if got := c.ok("get", "app/b", "--endpoints", all); got != "from stdin\n" {
		t.Fatalf("app/b after restore: %q", got)
	}

	// compact: every member's data file, the leader last.
	if out := c.ok("compact", "--json", "--endpoints", all); !strings.Contains(out, `"success": true`) && !strings.Contains(out, `"success":true`) {
		t.Fatalf("compact: %q", out)
	}
	c.waitFor("a leader after compact", 10*time.Second, func() bool { return leaderOf(c.statusJSON(all)) != "" })

	// transfer-leadership to a follower: it leads.
	old := leaderOf(c.statusJSON(all))
	target := "node1"
	if old == target {
		target = "node2"
	}
	if out := c.ok("transfer-leadership", "--to", target, "--endpoints", all); !strings.Contains(out, "-> "+target) {
		t.Fatalf("transfer-leadership: %q", out)
	}
	c.waitFor(target+" leading", 10*time.Second, func() bool { return leaderOf(c.statusJSON(all)) == target })
	if _, errOut, code := c.kvctl("", "transfer-leadership", "--to", "nobody", "--endpoints", all); code != exitError || !strings.Contains(errOut, "not a voter") {
		t.Fatalf("transfer-leadership --to nobody: exit %d %q", code, errOut)
	}

	// Failover: a dead endpoint first in the list.
	dead := 0
	if target == "node1" {
		dead = 1
	}
	c.cmds[dead].Process.Kill()
	c.cmds[dead].Wait()
	rest := []int{}
	for i := range c.https {
		if i != dead {
			rest = append(rest, i)
		}
	}
	deadFirst := c.eps(append([]int{dead}, rest...)...)
	c.ok("put", "after-kill", "x", "--endpoints", deadFirst)
	if got := c.ok("get", "after-kill", "--endpoints", deadFirst); got != "x\n" {
		t.Fatalf("get with the dead endpoint first: %q", got)
	}
	if out := c.ok("status", "--endpoints", deadFirst); !strings.Contains(out, "connection refused") || !strings.Contains(out, "leader: "+target) {
		t.Fatalf("status with a dead member:\n%s", out)
	}

	// Nothing reachable: exit 5, and the message names the endpoints.
	unused := fmt.Sprintf("http://127.0.0.1:%d", freePorts(t, 1)[0])
	_, errOut, code = c.kvctl("", "get", "after-kill", "--endpoints", c.eps(dead)+","+unused)
	if code != exitUnavailable || !strings.Contains(errOut, c.https[dead]) || !strings.Contains(errOut, unused) {
		t.Fatalf("no endpoint reachable: exit %d %q, want 5 naming both", code, errOut)
	}
	// compact with a member down: the others are compacted, and the error
	// says which was not.
	_, errOut, code = c.kvctl("", "compact", "--endpoints", c.eps(rest...))
	if code != exitError || !strings.Contains(errOut, "2 of 3 members compacted") || !strings.Contains(errOut, fmt.Sprintf("node%d", dead+1)) {
		t.Fatalf("compact with a member down: exit %d %q", code, errOut)
	}
}
