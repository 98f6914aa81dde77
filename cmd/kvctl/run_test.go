package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fake answers every request with status and body, and counts them.
func fake(t *testing.T, status int, body string) (*httptest.Server, *int) {
	t.Helper()
	n := new(int)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*n++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, n
}

func runKVCtl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	t.Setenv("KVCTL_ENDPOINTS", "")
	var out, errOut strings.Builder
	code := run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

// Each answer maps to its exit code, and the message names the endpoint
// and the server's words; 503 moves on to the next endpoint, other
// answers do not.
func TestRun_ExitCodes(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		args   []string
		code   int
		says   string
	}{
		{404, `{"key":"k","found":false,"error":"kv: key not found"}`, []string{"get", "k"}, exitNotFound, "key not found"},
		{409, `{"error":"kv: conflict"}`, []string{"put", "k", "v"}, exitConflict, "kv: conflict"},
		{507, `{"error":"kv: no space left"}`, []string{"put", "k", "v"}, exitNoSpace, "kv: no space left"},
		{504, `{"error":"deadline","outcome_unknown":true}`, []string{"del", "k"}, exitUnknown, "deadline"},
		{400, `{"error":"kv: empty key"}`, []string{"put", "", "v"}, exitError, "kv: empty key"},
		{404, `{"error":"no such endpoint: POST /api/compact"}`, []string{"compact"}, exitError, "does not have this endpoint"},
		{503, `{"error":"kv: no leader"}`, []string{"get", "k"}, exitUnavailable, "kv: no leader"},
	} {
		first, n1 := fake(t, 503, `{"error":"kv: no leader"}`)
		second, n2 := fake(t, c.status, c.body)
		third, n3 := fake(t, 200, `{}`)
		if c.status == 503 {
			third.Close()
		}
		args := append([]string{"--endpoints", first.URL + "," + second.URL + "," + third.URL}, c.args...)
		_, errOut, code := runKVCtl(t, args...)
		if code != c.code || !strings.Contains(errOut, c.says) || !strings.HasPrefix(errOut, "kvctl: ") {
			t.Errorf("%v answered %d: exit %d, stderr %q; want exit %d saying %q", c.args, c.status, code, errOut, c.code, c.says)
		}
		if c.status != 503 && (*n1 != 1 || *n2 != 1 || *n3 != 0) {
			t.Errorf("%v: requests %d, %d, %d; want the first two endpoints once each", c.args, *n1, *n2, *n3)
		}
	}
}

func TestRun_Usage(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"get"}, {"get", "a", "b"}, {"status", "--bogus"}, {"--timeout", "0s", "status"}} {
		if _, _, code := runKVCtl(t, args...); code != exitUsage {
			t.Errorf("kvctl %v: exit %d, want 2", args, code)
		}
	}
	if out, _, code := runKVCtl(t, "help"); code != 0 || !strings.Contains(out, "Exit codes:") {
		t.Errorf("kvctl help: exit %d\n%s", code, out)
	}
}

// Flags go anywhere; after "--" everything is an argument.
func TestParse_FlagsAnywhere(t *testing.T) {
	var g globals
	var o opts
	fs := newTestFlagSet(&g, &o)
	pos, err := parse(fs, []string{"k", "--json", "--ttl", "5s", "--", "-v"})
	if err != nil || !reflect.DeepEqual(pos, []string{"k", "-v"}) || !g.json || o.ttl.String() != "5s" {
		t.Fatalf("parse: %v %v json=%v ttl=%v", pos, err, g.json, o.ttl)
	}
}

func newTestFlagSet(g *globals, o *opts) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	g.register(fs)
	commands["put"].flags(fs, o)
	return fs
}

// lockedBuffer is a strings.Builder safe for a reader and a writer.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A watch whose stream breaks resumes from the revision of the last event
// it printed: the rest of a transaction cut off comes, and nothing is
// printed twice.
func TestWatch_ResumesWithoutGapOrRepeat(t *testing.T) {
	var calls atomic.Int32
	var froms []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		froms = append(froms, r.URL.Query().Get("from_rev"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-ndjson")
		if calls.Add(1) == 1 {
			// Revision 12 is a transaction of b and c, cut off after b.
			fmt.Fprintln(w, `{"type":"progress","rev":10}`)
			fmt.Fprintln(w, `{"type":"put","key":"a","value":"1","mod_rev":11}`)
			fmt.Fprintln(w, `{"type":"put","key":"b","value":"2","mod_rev":12}`)
			return
		}
		fmt.Fprintln(w, `{"type":"put","key":"b","value":"2","mod_rev":12}`)
		fmt.Fprintln(w, `{"type":"put","key":"c","value":"3","mod_rev":12}`)
		fmt.Fprintln(w, `{"type":"delete","key":"a","mod_rev":13}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"watch", "", "--endpoints", srv.URL}, strings.NewReader(""), &out, &errOut)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "DELETE a") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("watch ended with %d: %s", code, errOut.String())
	}
	want := "PUT a 1 (rev 11)\nPUT b 2 (rev 12)\nPUT c 3 (rev 12)\nDELETE a (rev 13)\n"
	if got := out.String(); got != want {
		t.Fatalf("watch printed\n%s\nwant\n%s", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(froms) != 2 || froms[0] != "" || froms[1] != "12" {
		t.Fatalf("from_rev of the requests: %q, want none then 12", froms)
	}
}
