package main

import (
	"bytes"
	"context"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestProbeURL(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8001": "http://127.0.0.1:8001/health",
		"0.0.0.0:8000":   "http://127.0.0.1:8000/health",
		":8000":          "http://127.0.0.1:8000/health",
		"[::]:8000":      "http://[::1]:8000/health",
		"node1:8000":     "http://node1:8000/health",
	} {
		if got, err := probeURL(addr); err != nil || got != want {
			t.Errorf("probeURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := probeURL("8000"); err == nil {
		t.Error("probeURL(8000) without a colon: no error")
	}
}

// "kvserver health" exits 0 for a healthy kvserver, 1 for one without a
// leader, and 1 when nothing listens.
func TestHealthCommand(t *testing.T) {
	healthy := serve(t, openStore(t, "n1", 1), time.Second)
	leaderless := serve(t, openStore(t, "lonely", 2), time.Second)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	hostPort := func(u string) string { p, _ := url.Parse(u); return p.Host }
	_, port, _ := net.SplitHostPort(hostPort(healthy.URL))

	for _, c := range []struct {
		name string
		args []string
		env  string
		code int
		out  string
	}{
		{"healthy", []string{"-http", hostPort(healthy.URL)}, "", 0, "healthy, leader n1"},
		{"unspecified host", []string{"-http", "0.0.0.0:" + port}, "", 0, "healthy"},
		{"from KV_HTTP", nil, "0.0.0.0:" + port, 0, "healthy"},
		{"flag over KV_HTTP", []string{"-http", hostPort(healthy.URL)}, closed, 0, "healthy"},
		{"no leader", []string{"-http", hostPort(leaderless.URL)}, "", 1, "no leader known"},
		{"nothing listens", []string{"-http", closed}, "", 1, "refused"},
		{"stray argument", []string{"-http", hostPort(healthy.URL), "now"}, "", 1, "unexpected argument"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("KV_HTTP", c.env)
			var stdout, stderr bytes.Buffer
			code := health(c.args, &stdout, &stderr)
			out := stdout.String() + stderr.String()
			if code != c.code || !strings.Contains(out, c.out) {
				t.Fatalf("health %v (KV_HTTP=%q): exit %d, output %q; want %d and %q", c.args, c.env, code, out, c.code, c.out)
			}
		})
	}
}

// The binary dispatches "health" to the probe: what a container's
// healthcheck runs.
func TestBinary_HealthSubcommand(t *testing.T) {
	bin := buildKVServer(t)
	healthy := serve(t, openStore(t, "n1", 1), time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "health")
	cmd.Env = append(cmd.Environ(), "KV_HTTP="+strings.TrimPrefix(healthy.URL, "http://"))
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "healthy") {
		t.Fatalf("kvserver health on a healthy node: %v\n%s", err, out)
	}
	healthy.Close()
	cmd = exec.CommandContext(ctx, bin, "health")
	cmd.Env = append(cmd.Environ(), "KV_HTTP="+strings.TrimPrefix(healthy.URL, "http://"))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("kvserver health with nothing listening: %v, want exit status 1\n%s", err, out)
	}
}

// A -timeout that is not positive is refused: http.Client takes 0 (and
// less) for "wait forever", and a probe of a stopped kvserver (SIGSTOP: the
// kernel still accepts its connections) would then never return.
func TestHealthCommand_TimeoutMustBePositive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, timeout := range []string{"0", "-1s"} {
		var stdout, stderr bytes.Buffer
		done := make(chan int, 1)
		go func() { done <- health([]string{"-http", ln.Addr().String(), "-timeout", timeout}, &stdout, &stderr) }()
		select {
		case code := <-done:
			if code != 1 || !strings.Contains(stderr.String(), "-timeout") {
				t.Fatalf("health -timeout %s: exit %d, %q; want 1 and a word about -timeout", timeout, code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("health -timeout %s against a server that never answers: still waiting after 10 s", timeout)
		}
	}
}
