package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's tour, as a user would run it: three kvserver processes on
// 127.0.0.1; write, read from another node, kill -9 the leader, keep
// writing (watches see the writes, the killed node's resumed on a
// survivor), restart it, see it catch up. Then two stop, and the third
// answers 503 (no leader) once its KV_TIMEOUT has passed.
func TestE2E_Tour(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three processes")
	}
	const requestTimeout = 2 * time.Second
	dir := t.TempDir()
	bin := buildKVServer(t)
	ports := freePorts(t, 9)
	type node struct {
		args []string
		http string
		cmd  *exec.Cmd
		log  *os.File
	}
	nodes := make([]*node, 3)
	for i := range nodes {
		var join []string
		for j := 0; j < 3; j++ {
			if j != i {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", ports[3+j]))
			}
		}
		n := &node{http: fmt.Sprintf("127.0.0.1:%d", ports[6+i])}
		n.args = []string{
			"-node-id", fmt.Sprintf("node%d", i+1),
			"-data-dir", filepath.Join(dir, fmt.Sprintf("node%d", i+1)),
			"-bind", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"-gossip", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"-http", n.http,
			"-bootstrap-expect", "3",
			"-join", strings.Join(join, ","),
		}
		nodes[i] = n
	}
	start := func(i int) {
		t.Helper()
		n := nodes[i]
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		n.log = f
		n.cmd = exec.Command(bin, n.args...)
		// The request timeout comes from the environment.
		n.cmd.Env = append(os.Environ(), "KV_TIMEOUT="+requestTimeout.String())
		n.cmd.Stdout, n.cmd.Stderr = f, f
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i, n := range nodes {
			if n.cmd != nil && n.cmd.ProcessState == nil {
				n.cmd.Process.Kill()
				n.cmd.Wait()
			}
			if n.log != nil {
				n.log.Close()
			}
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
				t.Logf("node%d log (tail):\n%s", i+1, tail(string(b), 3000))
			}
		}
	})
	for i := range nodes {
		start(i)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	call := func(method, addr, path string, body any) (int, map[string]any) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, "http://"+addr+path, rd)
		resp, err := client.Do(req)
		if err != nil {
			return 0, map[string]any{"error": err.Error()}
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	healthy := func(i int) bool { code, _ := call("GET", nodes[i].http, "/health", nil); return code == 200 }

	// 1. All three up and healthy.
	for i := range nodes {
		waitFor(fmt.Sprintf("node%d healthy", i+1), 60*time.Second, func() bool { return healthy(i) })
	}
	// 2. Write on node1, read on node2 (linearizable) and node3 (stale, eventually).
	if code, out := call("POST", nodes[0].http, "/api/set", map[string]string{"key": "greeting", "value": "hello"}); code != 200 || out["success"] != true {
		t.Fatalf("set: %d %v", code, out)
	}
	if code, out := call("GET", nodes[1].http, "/api/get?key=greeting", nil); code != 200 || out["value"] != "hello" || out["found"] != true {
		t.Fatalf("get on node2: %d %v", code, out)
	}
	waitFor("stale read on node3", 10*time.Second, func() bool {
		_, out := call("GET", nodes[2].http, "/api/get?key=greeting&stale=true", nil)
		return out["value"] == "hello"
	})
	// Errors say what happened.
	if code, _ := call("GET", nodes[0].http, "/api/get?key=absent", nil); code != 404 {
		t.Fatalf("absent key: %d, want 404", code)
	}
	if code, _ := call("POST", nodes[0].http, "/api/set", map[string]string{"key": "", "value": "x"}); code != 400 {
		t.Fatalf("empty key: %d, want 400", code)
	}
	if code, _ := call("POST", nodes[0].http, "/api/set", "not an object"); code != 400 {
		t.Fatalf("bad body: %d, want 400", code)
	}

	// Watch after-kill/ on every node, as the README's tour does.
	watches := make([]*stream, len(nodes))
	for i := range nodes {
		watches[i] = openWatch(t, "http://"+nodes[i].http+"/api/watch?prefix=after-kill/")
	}

	// 3. Find the leader and kill -9 it.
	_, st := call("GET", nodes[0].http, "/api/stats", nil)
	leaderID, _ := st["leader"].(string)
	var leader int = -1
	for i := range nodes {
		if fmt.Sprintf("node%d", i+1) == leaderID {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("no leader in stats: %v", st)
	}
	nodes[leader].cmd.Process.Signal(syscall.SIGKILL)
	nodes[leader].cmd.Wait()
	other := (leader + 1) % 3

	// 4. Keep writing through a survivor: a new leader takes over.
	for i := 0; i < 10; i++ {
		key := fmt.Sprintf("after-kill/%d", i)
		waitFor("write "+key, 30*time.Second, func() bool {
			code, _ := call("POST", nodes[other].http, "/api/set", map[string]string{"key": key, "value": fmt.Sprint(i)})
			return code == 200
		})
	}
	code, out := call("GET", nodes[other].http, "/api/list?prefix=after-kill/&limit=5", nil)
	if pairs, _ := out["pairs"].([]any); code != 200 || len(pairs) != 5 {
		t.Fatalf("list with limit: %d %v", code, out)
	}

	// The watches of the survivors see the writes made after the kill.
	// The killed node's stream has ended: resumed on a survivor from the
	// revision after its last line, it sees them all too.
	seesAll := func(w *stream, what string) {
		t.Helper()
		var rev uint64
		seen, next := map[string]bool{}, 0
		for len(seen) < 10 {
			m := w.nextEvent(30 * time.Second)
			if m == nil || m["type"] != "put" || num(m, "mod_rev") <= rev {
				t.Fatalf("%s: event %v after %d of the 10 writes (last revision %d)", what, m, len(seen), rev)
			}
			rev = num(m, "mod_rev")
			key := m["key"].(string)
			if !seen[key] {
				// A write retried after a lost answer may come twice;
				// the keys still come in the order written.
				if want := fmt.Sprintf("after-kill/%d", next); key != want || m["value"] != fmt.Sprint(next) {
					t.Fatalf("%s: event %v, want %s", what, m, want)
				}
				seen[key] = true
				next++
			}
		}
	}
	for i := range nodes {
		if i != leader {
			seesAll(watches[i], fmt.Sprintf("watch on node%d", i+1))
		}
	}
	var upTo uint64
	for m := watches[leader].next(30 * time.Second); m != nil; m = watches[leader].next(30 * time.Second) {
		if m["type"] != "progress" {
			t.Fatalf("the killed leader's stream: %v, want only progress lines", m)
		}
		upTo = num(m, "rev")
	}
	seesAll(openWatch(t, fmt.Sprintf("http://%s/api/watch?prefix=after-kill/&from_rev=%d", nodes[other].http, upTo+1)),
		"the killed leader's watch, resumed on a survivor")

	// 5. Restart it: it catches up with what it missed.
	start(leader)
	waitFor("restarted node healthy", 60*time.Second, func() bool { return healthy(leader) })
	waitFor("restarted node caught up", 30*time.Second, func() bool {
		code, out := call("GET", nodes[leader].http, "/api/get?key=after-kill/9", nil)
		return code == 200 && out["value"] == "9"
	})
	if code, out := call("DELETE", nodes[leader].http, "/api/delete?key=greeting", nil); code != 200 || out["success"] != true {
		t.Fatalf("delete: %d %v", code, out)
	}
	if code, _ := call("GET", nodes[other].http, "/api/get?key=greeting", nil); code != 404 {
		t.Fatalf("deleted key on another node: %d, want 404", code)
	}
	_, st = call("GET", nodes[leader].http, "/api/stats", nil)
	if members, _ := st["members"].([]any); len(members) != 3 || st["leader"] == "" {
		t.Fatalf("stats after the tour: %v", st)
	}

	// 6. SIGTERM: every process stops cleanly. After two have stopped the
	// third has no majority: once it knows no leader, writes and
	// linearizable reads answer 503 after the request timeout, and stale
	// reads still answer.
	stopNode := func(i int) {
		t.Helper()
		n := nodes[i]
		n.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- n.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node%d exit after SIGTERM: %v", i+1, err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("node%d did not stop within 40 s of SIGTERM", i+1)
		}
	}
	last := other
	for i := range nodes {
		if i != last {
			stopNode(i)
		}
	}
	waitFor("the last node to know no leader", 30*time.Second, func() bool {
		code, out := call("GET", nodes[last].http, "/health", nil)
		return code == 503 && out["reason"] == "no leader known"
	})
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/api/set", map[string]string{"key": "no-majority", "value": "x"}},
		{"GET", "/api/get?key=after-kill/1", nil},
		{"GET", "/api/list?prefix=after-kill/", nil},
		{"DELETE", "/api/delete?key=after-kill/1", nil},
	} {
		began := time.Now()
		code, out := call(c.method, nodes[last].http, c.path, c.body)
		took := time.Since(began)
		if msg, _ := out["error"].(string); code != 503 || msg == "" {
			t.Errorf("%s %s with no leader: %d %v, want 503 and a JSON error", c.method, c.path, code, out)
		}
		if took < requestTimeout-100*time.Millisecond || took > requestTimeout+3*time.Second {
			t.Errorf("%s %s with no leader answered after %v, want about KV_TIMEOUT=%v", c.method, c.path, took, requestTimeout)
		}
	}
	if code, out := call("GET", nodes[last].http, "/api/get?key=after-kill/1&stale=true", nil); code != 200 || out["value"] != "1" {
		t.Errorf("stale read with no leader: %d %v", code, out)
	}
	stopNode(last)
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
