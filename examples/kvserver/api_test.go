package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// jsonError decodes an error answer, failing the test unless it is JSON
// with a non-empty "error".
func jsonError(t *testing.T, what string, h http.Header, body []byte) map[string]any {
	t.Helper()
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", what, body, err)
	}
	if msg, _ := out["error"].(string); msg == "" {
		t.Fatalf("%s: body %s has no error", what, body)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: Content-Type %q", what, ct)
	}
	return out
}

// Unknown paths and wrong methods answer JSON like every other error; a
// 405 keeps its Allow header.
func TestAPI_NoRoute_AnswersJSON(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	for _, c := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/", 404, ""},
		{"GET", "/api/nope", 404, ""},
		{"POST", "/healthz", 404, ""},
		{"GET", "/api/set", 405, "POST"},
		{"POST", "/api/get?key=k", 405, "GET, HEAD"},
		{"PUT", "/api/delete", 405, "DELETE"},
		{"DELETE", "/health", 405, "GET, HEAD"},
	} {
		what := c.method + " " + c.path
		code, h, body := do(t, c.method, srv.URL+c.path, nil)
		if code != c.code {
			t.Errorf("%s: %d %s, want %d", what, code, body, c.code)
			continue
		}
		jsonError(t, what, h, body)
		if got := h.Get("Allow"); got != c.allow {
			t.Errorf("%s: Allow %q, want %q", what, got, c.allow)
		}
	}
}

// A body over the limit gets 413; one just within it is read.
func TestAPI_Set_BodyTooLarge_413(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	big := []byte(`{"key":"big","value":"` + strings.Repeat("a", 20<<20) + `"}`)
	code, h, body := do(t, "POST", srv.URL+"/api/set", big)
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("20 MiB body: %d %.200s, want 413", code, body)
	}
	jsonError(t, "20 MiB body", h, body)

	// Within maxBodyBytes, but a value over the library's limit: 400.
	over := []byte(`{"key":"big","value":"` + strings.Repeat("a", 2<<20) + `"}`)
	if code, _, body := do(t, "POST", srv.URL+"/api/set", over); code != http.StatusBadRequest || !strings.Contains(string(body), "value too large") {
		t.Fatalf("2 MiB value: %d %.200s, want 400 value too large", code, body)
	}
	// The largest value by default, every byte escaped: still read.
	escaped := []byte(`{"key":"big","value":"` + strings.Repeat(`\u0061`, kv.DefaultMaxValueSize) + `"}`)
	if len(escaped) > maxBodyBytes {
		t.Fatalf("maxBodyBytes %d is below an escaped largest value (%d bytes)", maxBodyBytes, len(escaped))
	}
	if code, _, body := do(t, "POST", srv.URL+"/api/set", escaped); code != 200 {
		t.Fatalf("largest value, escaped: %d %.200s", code, body)
	}
}

// The body is one JSON object with known fields and nothing after it but
// white space.
func TestAPI_Set_BodyMustBeOneObject(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	for _, body := range []string{
		`{"key":"k","value":"v"} junk`,
		`{"key":"k","value":"v"}{"key":"k2","value":"v2"}`,
		`{"key":"k","value":"v"} 1`,
		`{"key":"k","value":"v"}]`,
		`{"key":"k","value":"v","ttl":5}`,
		`{"key":"k"}`,
		`{"key":"k","value":`,
		``,
		`"not an object"`,
	} {
		code, h, out := do(t, "POST", srv.URL+"/api/set", []byte(body))
		if code != http.StatusBadRequest {
			t.Errorf("body %q: %d %s, want 400", body, code, out)
			continue
		}
		jsonError(t, fmt.Sprintf("body %q", body), h, out)
	}
	code, _, out := do(t, "GET", srv.URL+"/api/get?key=k", nil)
	if code != http.StatusNotFound {
		t.Fatalf("a refused body was written: get k: %d %s", code, out)
	}
	for _, body := range []string{"{\"key\":\"k\",\"value\":\"v\"}\n", " {\"key\":\"k\",\"value\":\"v\"} \r\n\t "} {
		if code, _, out := do(t, "POST", srv.URL+"/api/set", []byte(body)); code != 200 {
			t.Errorf("body %q: %d %s, want 200", body, code, out)
		}
	}
}

type listAnswer struct {
	Pairs    []entry `json:"pairs"`
	Revision uint64  `json:"revision"`
	More     *bool   `json:"more"`
	Next     string  `json:"next"`
}

func list(t *testing.T, srv *httptest.Server, query url.Values) listAnswer {
	t.Helper()
	code, _, body := do(t, "GET", srv.URL+"/api/list?"+query.Encode(), nil)
	if code != 200 {
		t.Fatalf("list %s: %d %s", query.Encode(), code, body)
	}
	var out listAnswer
	if err := json.Unmarshal(body, &out); err != nil || out.More == nil {
		t.Fatalf("list %s: %v, body %.300s", query.Encode(), err, body)
	}
	return out
}

// /api/list returns at most defaultListLimit pairs without limit=, says
// whether there are more, and pages with after=next.
func TestAPI_List_DefaultLimitAndPaging(t *testing.T) {
	s := openStore(t, "n1", 1)
	srv := serve(t, s, 10*time.Second)
	const n = defaultListLimit + 5
	var futures []*kv.Future
	for i := range n {
		futures = append(futures, s.SetAsync(fmt.Sprintf("k/%05d", i), []byte(fmt.Sprint(i))))
	}
	s.SetAsync("l/other", []byte("x")) // outside the prefix
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, f := range futures {
		if err := f.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}

	first := list(t, srv, url.Values{"prefix": {"k/"}})
	if len(first.Pairs) != defaultListLimit || !*first.More || first.Next != fmt.Sprintf("k/%05d", defaultListLimit-1) {
		t.Fatalf("no limit: %d pairs, more %v, next %q; want %d, true, the last key", len(first.Pairs), *first.More, first.Next, defaultListLimit)
	}
	rest := list(t, srv, url.Values{"prefix": {"k/"}, "after": {first.Next}})
	if len(rest.Pairs) != 5 || *rest.More || rest.Next != "" || rest.Pairs[0].Key != fmt.Sprintf("k/%05d", defaultListLimit) {
		t.Fatalf("second page: %+v", rest)
	}

	// Page by 300 through all of them: each key once, in order.
	var keys []string
	q := url.Values{"prefix": {"k/"}, "limit": {"300"}}
	for page := 0; ; page++ {
		if page > n/300+1 {
			t.Fatalf("more than %d pages of 300 for %d keys", page, n)
		}
		a := list(t, srv, q)
		if len(a.Pairs) > 300 {
			t.Fatalf("limit=300 returned %d pairs", len(a.Pairs))
		}
		for _, p := range a.Pairs {
			keys = append(keys, p.Key)
		}
		if !*a.More {
			break
		}
		q.Set("after", a.Next)
	}
	if len(keys) != n {
		t.Fatalf("paging returned %d keys, want %d", len(keys), n)
	}
	for i, k := range keys {
		if want := fmt.Sprintf("k/%05d", i); k != want {
			t.Fatalf("key %d: %q, want %q", i, k, want)
		}
	}

	// A page that ends exactly at the last key says there are no more.
	exact := list(t, srv, url.Values{"prefix": {"k/"}, "limit": {fmt.Sprint(n)}})
	if len(exact.Pairs) != n || *exact.More {
		t.Fatalf("limit=%d: %d pairs, more %v", n, len(exact.Pairs), *exact.More)
	}

	for _, limit := range []string{"0", "-1", fmt.Sprint(maxListLimit + 1), "lots"} {
		code, h, body := do(t, "GET", srv.URL+"/api/list?limit="+limit, nil)
		if code != http.StatusBadRequest {
			t.Errorf("limit=%s: %d, want 400", limit, code)
			continue
		}
		jsonError(t, "limit="+limit, h, body)
	}
}

// The statuses of the library's errors: 503 when the request had no
// effect and may go again (no leader, closed, halted), 504 when time ran
// out with a leader known or a write's outcome is unknown.
func TestStatus_OfLibraryErrors(t *testing.T) {
	led := newAPI(openStore(t, "n1", 1), time.Second)
	leaderless := newAPI(openStore(t, "lonely", 2), time.Second)
	if st := leaderless.store.Stats(); st.Leader != "" {
		t.Fatalf("a member expecting 2 voters, alone, knows leader %q", st.Leader)
	}
	// A member that halted (its Stats say so; halting a real one needs a
	// failing disk).
	halted := newAPI(led.store, time.Second)
	halted.stats = func() kv.Stats {
		return kv.Stats{NodeID: "halted", State: kv.StateShutdown, Halted: "kv: member halted: no space left on device"}
	}
	deadlineNoLeader := fmt.Errorf("kv: write: %w (%w)", context.DeadlineExceeded, kv.ErrNoLeader)
	for _, c := range []struct {
		err                error
		led, alone, halted int
		unknown            bool
	}{
		{kv.ErrNotFound, 404, 404, 404, false},
		{kv.ErrEmptyKey, 400, 400, 400, false},
		{fmt.Errorf("%w: 5000 bytes", kv.ErrKeyTooLarge), 400, 400, 400, false},
		{kv.ErrValueTooLarge, 400, 400, 400, false},
		{kv.ErrNoLeader, 503, 503, 503, false},
		{deadlineNoLeader, 503, 503, 503, false},
		{kv.ErrClosed, 503, 503, 503, false},
		{fmt.Errorf("kv: member halted: %w", kv.ErrCorrupt), 503, 503, 503, false},
		// A full disk: 507, unless this member halted for it.
		{fmt.Errorf("kv: %w", kv.ErrDiskFull), 507, 507, 503, false},
		// The cluster's space quota: 507 on every member.
		{fmt.Errorf("%w: the write would take the data beyond the cluster's quota of 10 bytes; it was not applied", kv.ErrNoSpace), 507, 507, 507, false},
		// A deadline alone: 504 while a leader is known, else 503.
		{fmt.Errorf("kv: %w", context.DeadlineExceeded), 504, 503, 503, false},
		{fmt.Errorf("kv: write: %w (%w)", context.DeadlineExceeded, kv.ErrOutcomeUnknown), 504, 504, 504, true},
		{fmt.Errorf("wrapped: %w", kv.ErrLeadershipLost), 504, 504, 504, true},
		{fmt.Errorf("%w with the write in flight (%w)", kv.ErrClosed, kv.ErrOutcomeUnknown), 504, 504, 504, true},
		{fmt.Errorf("%w: leader: full: %w", kv.ErrOutcomeUnknown, kv.ErrDiskFull), 504, 504, 504, true},
	} {
		for _, a := range []struct {
			api  *api
			want int
		}{{led, c.led}, {leaderless, c.alone}, {halted, c.halted}} {
			rec := httptest.NewRecorder()
			a.api.fail(rec, c.err)
			what := fmt.Sprintf("%v (on %s)", c.err, a.api.stats().NodeID)
			if rec.Code != a.want {
				t.Errorf("%s: status %d, want %d", what, rec.Code, a.want)
			}
			out := jsonError(t, what, rec.Header(), rec.Body.Bytes())
			if unknown, _ := out["outcome_unknown"].(bool); unknown != c.unknown {
				t.Errorf("%s: outcome_unknown %v, want %v", what, out["outcome_unknown"], c.unknown)
			}
		}
	}
}

// A write that a leader cut off from its followers has handed to Raft,
// when the request's time runs out: 504, outcome unknown. The leader's
// long lease keeps it leading meanwhile.
func TestAPI_WriteOutcomeUnknown_504(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Configure(func(_ int, cfg *kv.Config) {
		cfg.HeartbeatTimeout = 5 * time.Second
		cfg.ElectionTimeout = 5 * time.Second
		cfg.LeaderLeaseTimeout = 5 * time.Second
	}))
	leader := c.Leader()
	srv := serve(t, c.Node(leader), 300*time.Millisecond)
	// A first write registers the member's write session with the
	// cluster: later writes go straight to Raft.
	if code, _, body := do(t, "POST", srv.URL+"/api/set", []byte(`{"key":"first","value":"v"}`)); code != 200 {
		t.Fatalf("first write: %d %s", code, body)
	}
	for i := range c.N() {
		if i != leader {
			c.Kill(i)
		}
	}
	code, h, body := do(t, "POST", srv.URL+"/api/set", []byte(`{"key":"k","value":"v"}`))
	out := jsonError(t, "write without followers", h, body)
	if code != http.StatusGatewayTimeout || out["outcome_unknown"] != true {
		t.Fatalf("write on a leader without followers: %d %s, want 504 with outcome_unknown", code, body)
	}
	if st := c.Node(leader).Stats(); st.Leader == "" {
		t.Fatalf("the leader stepped down during the test: the lease is too short for it")
	}
}

// TestAPI_Compact: POST /api/compact compacts the cluster and answers
// JSON; a bad timeout is 400, and GET is not allowed.
func TestAPI_Compact(t *testing.T) {
	dir := t.TempDir()
	s, err := kv.Open(kv.Config{NodeID: "c1", DataDir: dir, BootstrapExpect: 1, BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, s, 5*time.Second)
	code, _, body := do(t, "POST", srv.URL+"/api/compact?timeout=1m", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"success":true`) {
		t.Fatalf("POST /api/compact: %d %s", code, body)
	}
	code, h, body := do(t, "POST", srv.URL+"/api/compact?timeout=soon", nil)
	if code != http.StatusBadRequest {
		t.Fatalf("bad timeout: %d %s", code, body)
	}
	jsonError(t, "bad timeout", h, body)
	if code, _, body := do(t, "GET", srv.URL+"/api/compact", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /api/compact: %d %s", code, body)
	}
}
