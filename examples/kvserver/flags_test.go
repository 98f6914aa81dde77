package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestFlags(t *testing.T) {
	t.Setenv("KV_NODE_ID", "from-env")
	t.Setenv("KV_JOIN", "127.0.0.1:1, 127.0.0.1:2")
	o, err := parseFlags([]string{"-in-memory", "-bootstrap-expect", "3"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "from-env" || len(cfg.Join) != 2 || cfg.Join[1] != "127.0.0.1:2" || cfg.BootstrapExpect != 3 || !cfg.InMemory {
		t.Fatalf("config from env and flags: %+v", cfg)
	}
	o, err = parseFlags([]string{"-node-id", "flag-wins", "-data-dir", t.TempDir()})
	if err != nil || o.nodeID != "flag-wins" {
		t.Fatalf("flag over env: %+v %v", o, err)
	}
	t.Setenv("KV_NODE_ID", "")
	if _, err := parseFlags([]string{"-in-memory"}); err == nil {
		t.Fatal("missing node ID accepted")
	}
	if _, err := parseFlags([]string{"-node-id", "x"}); err == nil {
		t.Fatal("missing data dir accepted")
	}
	o, _ = parseFlags([]string{"-node-id", "x", "-in-memory", "-gossip-key", "zz"})
	if _, err := o.config(nil); err == nil {
		t.Fatal("bad gossip key accepted")
	}
}

func TestFlags_Timeout_FromEnvironment(t *testing.T) {
	if o, err := parseFlags([]string{"-node-id", "x", "-in-memory"}); err != nil || o.timeout != 5*time.Second {
		t.Fatalf("default timeout: %v %v, want 5s", o.timeout, err)
	}
	t.Setenv("KV_TIMEOUT", "1500ms")
	if o, err := parseFlags([]string{"-node-id", "x", "-in-memory"}); err != nil || o.timeout != 1500*time.Millisecond {
		t.Fatalf("KV_TIMEOUT=1500ms: %v %v", o.timeout, err)
	}
	if o, err := parseFlags([]string{"-node-id", "x", "-in-memory", "-timeout", "3s"}); err != nil || o.timeout != 3*time.Second {
		t.Fatalf("-timeout 3s over KV_TIMEOUT: %v %v", o.timeout, err)
	}
}

// Every flag reads its variable: each one appears in -h, after its flag.
func TestFlags_EveryFlagHasAVariable(t *testing.T) {
	out, _ := exec.Command(buildKVServer(t), "-h").CombinedOutput()
	for flagName, env := range envVars {
		i := -1
		for _, end := range []string{" ", "\t", "\n"} {
			if j := strings.Index(string(out), "  -"+flagName+end); j >= 0 {
				i = j
			}
		}
		if i < 0 {
			t.Errorf("-h does not list -%s:\n%s", flagName, out)
			continue
		}
		rest := string(out[i:])
		if next := strings.Index(rest[3:], "\n  -"); next >= 0 {
			rest = rest[:next+3]
		}
		if !strings.Contains(rest, "("+env+")") {
			t.Errorf("-h does not name %s for -%s:\n%s", env, flagName, rest)
		}
	}
}

// A value that does not parse is an error that names the variable and the
// value, not a silent default.
func TestFlags_BadEnvironmentValue_IsAnError(t *testing.T) {
	for env, value := range map[string]string{
		"KV_BOOTSTRAP_EXPECT":  "three",
		"KV_IN_MEMORY":         "yes please",
		"KV_LEAVE_ON_SHUTDOWN": "sometimes",
		"KV_VERBOSE":           "very",
		"KV_TIMEOUT":           "5",
	} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, value)
			_, err := parseFlags([]string{"-node-id", "x", "-data-dir", t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), env) || !strings.Contains(err.Error(), `"`+value+`"`) {
				t.Fatalf("%s=%q: error %v, want one naming the variable and the value", env, value, err)
			}
		})
	}
	for _, c := range []struct{ env, value string }{
		{"KV_BOOTSTRAP_EXPECT", "-1"},
		{"KV_TIMEOUT", "0s"},
		{"KV_TIMEOUT", "-1s"},
	} {
		t.Setenv(c.env, c.value)
		if _, err := parseFlags([]string{"-node-id", "x", "-in-memory"}); err == nil || !strings.Contains(err.Error(), c.env) {
			t.Errorf("%s=%s: error %v, want one naming the variable", c.env, c.value, err)
		}
		t.Setenv(c.env, "")
	}
	if _, err := parseFlags([]string{"-node-id", "x", "-in-memory", "extra"}); err == nil {
		t.Error("a stray argument was accepted")
	}
}

// The program itself refuses to start on a bad variable: exit status 2 and
// a message on stderr, before it opens anything.
func TestBinary_BadEnvironmentValue_ExitsNonZero(t *testing.T) {
	dataDir := t.TempDir() + "/data"
	// Bounded: a kvserver that ignored the variable would run on.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildKVServer(t), "-node-id", "x", "-data-dir", dataDir, "-http", "127.0.0.1:0", "-bind", "127.0.0.1:0", "-gossip", "127.0.0.1:0")
	cmd.Env = append(cmd.Environ(), "KV_BOOTSTRAP_EXPECT=three")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2\n%s", err, out)
	}
	if !strings.Contains(string(out), `"three" for KV_BOOTSTRAP_EXPECT`) {
		t.Fatalf("output does not name the variable and value:\n%s", out)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("the data dir was created (%v): kvserver got as far as kv.Open", err)
	}
}

// A -bind on every interface (the image's KV_BIND=0.0.0.0:7000) needs
// -advertise: peers would otherwise be told to dial 0.0.0.0:7000 (or
// [::]:7000), which from another container or host reaches their own port,
// not this member.
func TestFlags_UnspecifiedBind_NeedsAdvertise(t *testing.T) {
	for _, bind := range []string{"0.0.0.0:7000", "[::]:7000", ":7000"} {
		_, err := parseFlags([]string{"-node-id", "x", "-in-memory", "-bind", bind})
		if err == nil || !strings.Contains(err.Error(), "KV_ADVERTISE") {
			t.Errorf("-bind %s without -advertise: %v; want an error naming KV_ADVERTISE", bind, err)
		}
		if _, err := parseFlags([]string{"-node-id", "x", "-in-memory", "-bind", bind, "-advertise", "10.0.0.1:7000"}); err != nil {
			t.Errorf("-bind %s -advertise 10.0.0.1:7000: %v", bind, err)
		}
	}
	if _, err := parseFlags([]string{"-node-id", "x", "-in-memory", "-bind", "127.0.0.1:7000"}); err != nil {
		t.Errorf("-bind 127.0.0.1:7000: %v", err)
	}
}
