package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// stream is a watch stream read line by line.
type stream struct {
	t      *testing.T
	resp   *http.Response
	lines  chan map[string]any
	cancel context.CancelFunc
}

// openWatch opens GET url (a /api/watch) and fails the test unless it
// answers 200 with Content-Type application/x-ndjson.
func openWatch(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %d %s, want 200 application/x-ndjson", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &stream{t: t, resp: resp, lines: make(chan map[string]any, 1024), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"type": "not JSON", "line": sc.Text()}
			}
			s.lines <- m
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return s
}

// next returns the next line, failing the test after d; nil when the
// stream has ended.
func (s *stream) next(d time.Duration) map[string]any {
	s.t.Helper()
	select {
	case m := <-s.lines:
		return m
	case <-time.After(d):
		s.t.Fatalf("no line on the watch stream within %v", d)
		return nil
	}
}

// nextEvent skips progress lines and returns the next other line.
func (s *stream) nextEvent(d time.Duration) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		m := s.next(time.Until(deadline))
		if m == nil || m["type"] != "progress" {
			return m
		}
	}
}

func num(m map[string]any, field string) uint64 {
	f, _ := m[field].(float64)
	return uint64(f)
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	code, h, b := do(t, "POST", url, []byte(body))
	return code, jsonAnswer(t, body, code, h, b)
}

// serveAPI serves a on a real TCP port of 127.0.0.1.
func serveAPI(t *testing.T, a *api) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return srv
}

// A watch sees the puts and deletes under its prefix, in order, as the
// other endpoints encode them, the two changes of one transaction at one
// revision; not the changes outside the prefix, though they move its
// progress line on.
func TestAPI_Watch_SeesWrites(t *testing.T) {
	a := newAPI(openStore(t, "n1", 1), 5*time.Second)
	a.heartbeat = 100 * time.Millisecond
	srv := serveAPI(t, a)
	if code, _ := post(t, srv.URL+"/api/set", `{"key":"w/old","value":"before the watch"}`); code != 200 {
		t.Fatal(code)
	}
	w := openWatch(t, srv.URL+"/api/watch?prefix=w/")
	first := w.next(10 * time.Second)
	if first["type"] != "progress" || num(first, "rev") < getEntry(t, srv.URL, "w/old").ModRev {
		t.Fatalf("first line %v: want progress at the revision of the last write or later", first)
	}

	post(t, srv.URL+"/api/set", `{"key":"w/a","value":"1"}`)
	post(t, srv.URL+"/api/set", `{"key":"elsewhere","value":"x"}`)
	post(t, srv.URL+"/api/txn", `{"then":[{"op":"set","key":"w/b","value":"2"},{"op":"delete","key":"w/a"}]}`)
	a1, b := w.nextEvent(10*time.Second), w.nextEvent(10*time.Second)
	del := w.nextEvent(10 * time.Second)
	if a1["type"] != "put" || a1["key"] != "w/a" || a1["value"] != "1" || num(a1, "version") != 1 ||
		num(a1, "create_rev") != num(a1, "mod_rev") || a1["lease"] != float64(0) {
		t.Fatalf("first event %v: want the put of w/a", a1)
	}
	if b["type"] != "put" || b["key"] != "w/b" || del["type"] != "delete" || del["key"] != "w/a" ||
		num(b, "mod_rev") != num(del, "mod_rev") || num(b, "mod_rev") <= num(a1, "mod_rev") {
		t.Fatalf("the transaction's events: %v, %v: want the put of w/b and delete of w/a at one revision", b, del)
	}
	if _, ok := del["value"]; ok {
		t.Fatalf("delete event with a value: %v", del)
	}
	// A write outside the prefix: no event, but the progress line moves
	// past its revision.
	post(t, srv.URL+"/api/set", `{"key":"elsewhere","value":"y"}`)
	other := getEntry(t, srv.URL, "elsewhere").ModRev
	var last map[string]any
	for deadline := time.Now().Add(5 * time.Second); ; {
		select {
		case m := <-w.lines:
			if m["type"] != "progress" {
				t.Fatalf("line %v for a write outside the prefix", m)
			}
			last = m
		case <-time.After(time.Until(deadline)):
			t.Fatalf("progress stuck at %v, below the last write outside the prefix, %d", last, other)
		}
		if num(last, "rev") >= other {
			break
		}
	}
}

// from_rev replays the changes since a revision; one no longer kept is
// 410 Gone with the oldest revision kept, before any line; and a stream
// that this kvserver ends has an error line last.
func TestAPI_Watch_FromRev(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "n1", InMemory: true, WatchHistory: kv.WatchHistory{Revisions: 5}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	a := newAPI(s, 5*time.Second)
	srv := serveAPI(t, a)
	for i := range 3 {
		post(t, srv.URL+"/api/set", fmt.Sprintf(`{"key":"k%d","value":"%d"}`, i, i))
	}
	start := getEntry(t, srv.URL, "k0").ModRev
	w := openWatch(t, fmt.Sprintf("%s/api/watch?prefix=k&from_rev=%d", srv.URL, start))
	if p := w.next(10 * time.Second); p["type"] != "progress" || num(p, "rev") != start-1 {
		t.Fatalf("first line %v, want progress at %d", p, start-1)
	}
	for i := range 3 {
		if m := w.nextEvent(10 * time.Second); m["key"] != fmt.Sprintf("k%d", i) {
			t.Fatalf("replayed event %d: %v", i, m)
		}
	}

	// Five revisions kept in the data file, and the last 16 MiB of
	// changes in memory: after 20 writes of 1 MiB, start is gone.
	big := make([]byte, kv.DefaultMaxValueSize)
	for i := range 20 {
		if err := s.Set(ctx, "later", big); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	code, h, body := do(t, "GET", fmt.Sprintf("%s/api/watch?prefix=k&from_rev=%d", srv.URL, start), nil)
	out := jsonError(t, "watch from a compacted revision", h, body)
	if code != http.StatusGone || out["compacted"] != true || num(out, "oldest_rev") <= start {
		t.Fatalf("watch from a compacted revision: %d %s, want 410 with compacted and oldest_rev", code, body)
	}
	// The oldest revision it names can be watched from.
	openWatch(t, fmt.Sprintf("%s/api/watch?from_rev=%d", srv.URL, num(out, "oldest_rev")))

	// The kvserver stops: the stream ends with an error line, 503.
	a.stopWatches()
	end := w.nextEvent(10 * time.Second)
	if end["type"] != "error" || end["status"] != float64(503) || end["error"] == "" {
		t.Fatalf("last line %v: want an error line with status 503", end)
	}
	if m := w.next(10 * time.Second); m != nil {
		t.Fatalf("line %v after the error line", m)
	}

	if code, h, body := do(t, "GET", srv.URL+"/api/watch", nil); code != 503 {
		t.Fatalf("watch on a stopping kvserver: %d %s, want 503", code, body)
	} else {
		jsonError(t, "watch on a stopping kvserver", h, body)
	}
	for _, q := range []string{"from_rev=-1", "from_rev=x", "from_rev=1.5"} {
		code, h, body := do(t, "GET", srv.URL+"/api/watch?"+q, nil)
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", q, code, body)
			continue
		}
		jsonError(t, q, h, body)
	}
}

// A watch stream outlives the HTTP server's WriteTimeout: that bounds a
// request's answer, not a stream.
func TestAPI_Watch_OutlivesWriteTimeout(t *testing.T) {
	a := newAPI(openStore(t, "n1", 1), 5*time.Second)
	a.heartbeat = 100 * time.Millisecond
	srv := httptest.NewUnstartedServer(a)
	srv.Config.WriteTimeout = 500 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	w := openWatch(t, srv.URL+"/api/watch?prefix=p/")
	began := time.Now()
	for time.Since(began) < 2*time.Second {
		if m := w.next(5 * time.Second); m == nil || m["type"] != "progress" {
			t.Fatalf("after %v of a stream with WriteTimeout 500ms: %v", time.Since(began).Round(time.Millisecond), m)
		}
	}
	post(t, srv.URL+"/api/set", `{"key":"p/late","value":"v"}`)
	if m := w.nextEvent(5 * time.Second); m["key"] != "p/late" {
		t.Fatalf("event after 2 s: %v", m)
	}
}

// A SIGTERM with a watch stream open: the stream ends with an error line
// at once, and kvserver stops without waiting -timeout for it.
func TestRun_Shutdown_EndsWatchStreams(t *testing.T) {
	o := testOptions(t)
	o.timeout = 5 * time.Second
	addr, stop, done := startRun(t, o)
	base := "http://" + addr
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, _, _ := do(t, "GET", base+"/health", nil); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not healthy within 30 s")
		}
	}
	w := openWatch(t, base+"/api/watch?prefix=")
	w.next(10 * time.Second)
	began := time.Now()
	stop()
	if end := w.nextEvent(10 * time.Second); end["type"] != "error" || end["status"] != float64(503) {
		t.Fatalf("last line at shutdown: %v, want an error line with status 503", end)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if took := time.Since(began); took > o.timeout {
			t.Fatalf("stopped %v after SIGTERM with a watch open; want less than -timeout %v", took.Round(time.Millisecond), o.timeout)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30 s of SIGTERM")
	}
}

// A key written with "ttl" disappears after it: the watch sees its delete.
func TestAPI_Set_TTL_KeyDisappears(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	w := openWatch(t, srv.URL+"/api/watch?prefix=t/")
	began := time.Now()
	if code, out := post(t, srv.URL+"/api/set", `{"key":"t/k","value":"v","ttl":"1s"}`); code != 200 {
		t.Fatalf("set with ttl: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "t/k"); e.Value != "v" || e.Lease <= 0 {
		t.Fatalf("key with a ttl: %+v, want its value and a lease", e)
	}
	put, del := w.nextEvent(10*time.Second), w.nextEvent(15*time.Second)
	if put["type"] != "put" || num(put, "lease") == 0 || del["type"] != "delete" || del["key"] != "t/k" {
		t.Fatalf("events of a key with ttl 1s: %v then %v", put, del)
	}
	if took := time.Since(began); took < time.Second {
		t.Fatalf("key with ttl 1s deleted after %v", took)
	}
	if code, _, body := do(t, "GET", srv.URL+"/api/get?key=t/k", nil); code != 404 {
		t.Fatalf("get after the ttl: %d %s, want 404", code, body)
	}
}

// Leases: grant, attach a key, keep alive, revoke (the key goes with it);
// a lease that is gone is 404; bad ttl and lease IDs are 400.
func TestAPI_Leases(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	code, out := post(t, srv.URL+"/api/lease/grant", `{"ttl":"1m"}`)
	id := num(out, "id")
	if code != 200 || id == 0 || out["ttl"] != "1m0s" {
		t.Fatalf("grant: %d %v", code, out)
	}
	if code, out := post(t, srv.URL+"/api/set", fmt.Sprintf(`{"key":"l/k","value":"v","lease":%d}`, id)); code != 200 {
		t.Fatalf("set with lease: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "l/k"); uint64(e.Lease) != id {
		t.Fatalf("key on lease %d: %+v", id, e)
	}
	if code, out := post(t, srv.URL+"/api/lease/keepalive", fmt.Sprintf(`{"id":%d}`, id)); code != 200 || out["ttl"] != "1m0s" || num(out, "id") != id {
		t.Fatalf("keepalive: %d %v", code, out)
	}
	if code, out := post(t, srv.URL+"/api/lease/revoke", fmt.Sprintf(`{"id":%d}`, id)); code != 200 || out["success"] != true {
		t.Fatalf("revoke: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "l/k"); e.ModRev != 0 {
		t.Fatalf("key of a revoked lease: %+v", e)
	}
	for _, c := range []struct{ path, body string }{
		{"/api/lease/keepalive", fmt.Sprintf(`{"id":%d}`, id)},
		{"/api/lease/revoke", fmt.Sprintf(`{"id":%d}`, id)},
		{"/api/lease/revoke", `{"id":999999}`},
		{"/api/set", fmt.Sprintf(`{"key":"l/k","value":"v","lease":%d}`, id)},
	} {
		if code, out := post(t, srv.URL+c.path, c.body); code != 404 || !strings.Contains(fmt.Sprint(out["error"]), "lease not found") {
			t.Errorf("%s %s (lease gone): %d %v, want 404 lease not found", c.path, c.body, code, out)
		}
	}
	if e := getEntry(t, srv.URL, "l/k"); e.ModRev != 0 {
		t.Fatalf("a write on a revoked lease was applied: %+v", e)
	}
	for _, c := range []struct{ path, body string }{
		{"/api/lease/grant", `{}`},
		{"/api/lease/grant", `{"ttl":5}`},
		{"/api/lease/grant", `{"ttl":"soon"}`},
		{"/api/lease/grant", `{"ttl":"0s"}`},
		{"/api/lease/grant", `{"ttl":"-1s"}`},
		{"/api/lease/grant", `{"ttl":"100000h"}`}, // over ten years
		{"/api/lease/keepalive", `{}`},
		{"/api/lease/keepalive", `{"id":-1}`},
		{"/api/lease/keepalive", `{"id":0}`},
		{"/api/lease/revoke", `{"id":"1"}`},
		{"/api/lease/revoke", `{"id":-5}`},
		{"/api/set", `{"key":"k","value":"v","lease":-3}`},
		{"/api/set", `{"key":"k","value":"v","lease":0}`},
		{"/api/set", `{"key":"k","value":"v","ttl":"soon"}`},
		{"/api/set", `{"key":"k","value":"v","ttl":10}`},
		{"/api/set", `{"key":"k","value":"v","ttl":"-2s"}`},
		{"/api/set", fmt.Sprintf(`{"key":"k","value":"v","ttl":"10s","lease":%d}`, id)},
	} {
		if code, out := post(t, srv.URL+c.path, c.body); code != 400 {
			t.Errorf("%s %s: %d %v, want 400", c.path, c.body, code, out)
		}
	}
	if e := getEntry(t, srv.URL, "k"); e.ModRev != 0 {
		t.Fatalf("a refused set was applied: %+v", e)
	}
}
