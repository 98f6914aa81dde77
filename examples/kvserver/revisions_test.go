package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// jsonAnswer decodes a JSON answer, failing the test unless it is JSON
// with an "error" exactly when the status is not 200.
func jsonAnswer(t *testing.T, what string, code int, h http.Header, body []byte) map[string]any {
	t.Helper()
	if code != 200 {
		return jsonError(t, what, h, body)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil || h.Get("Content-Type") != "application/json" {
		t.Fatalf("%s: body %q (%s): %v", what, body, h.Get("Content-Type"), err)
	}
	if _, ok := out["error"]; ok {
		t.Fatalf("%s: 200 with an error: %s", what, body)
	}
	return out
}

// getEntry reads key through /api/get and returns its entry (ModRev 0 when
// absent).
func getEntry(t *testing.T, base, key string) entry {
	t.Helper()
	code, _, body := do(t, "GET", base+"/api/get?key="+url.QueryEscape(key), nil)
	if code == 404 {
		return entry{Key: key}
	}
	var e entry
	if code != 200 || json.Unmarshal(body, &e) != nil {
		t.Fatalf("get %s: %d %s", key, code, body)
	}
	return e
}

// /api/get answers the revisions; /api/cas writes only on the revision it
// names, and answers a mismatch with 409 and the current entry.
func TestAPI_CompareAndSet(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	cas := func(body string) (int, map[string]any) {
		t.Helper()
		code, h, b := do(t, "POST", srv.URL+"/api/cas", []byte(body))
		return code, jsonAnswer(t, body, code, h, b)
	}
	code, out := cas(`{"key":"k","value":"one","mod_rev":0}`)
	if code != 200 || out["success"] != true {
		t.Fatalf("create-only CAS of an absent key: %d %v", code, out)
	}
	e := getEntry(t, srv.URL, "k")
	if e.Value != "one" || e.Version != 1 || e.CreateRev == 0 || e.ModRev != e.CreateRev || uint64(out["mod_rev"].(float64)) != e.ModRev {
		t.Fatalf("after the create: %+v (CAS answered %v)", e, out)
	}
	// Again create-only: 409 with the current entry.
	code, out = cas(`{"key":"k","value":"two","mod_rev":0}`)
	cur, _ := out["current"].(map[string]any)
	if code != 409 || out["conflict"] != true || out["found"] != true || cur == nil || cur["value"] != "one" || uint64(cur["mod_rev"].(float64)) != e.ModRev {
		t.Fatalf("create-only CAS of a present key: %d %v", code, out)
	}
	// On the right revision.
	code, out = cas(fmt.Sprintf(`{"key":"k","value":"two","mod_rev":%d}`, e.ModRev))
	e2 := getEntry(t, srv.URL, "k")
	if code != 200 || e2.Value != "two" || e2.Version != 2 || e2.CreateRev != e.CreateRev || e2.ModRev <= e.ModRev {
		t.Fatalf("CAS on the current revision: %d %v; then %+v", code, out, e2)
	}
	// Compare-and-delete on a stale revision, then on the right one.
	if code, out = cas(fmt.Sprintf(`{"key":"k","mod_rev":%d,"delete":true}`, e.ModRev)); code != 409 {
		t.Fatalf("CAS delete on a stale revision: %d %v", code, out)
	}
	if code, out = cas(fmt.Sprintf(`{"key":"k","mod_rev":%d,"delete":true}`, e2.ModRev)); code != 200 {
		t.Fatalf("CAS delete on the current revision: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "k"); e.ModRev != 0 {
		t.Fatalf("after the delete: %+v", e)
	}
	// A conflict on an absent key: found false, current null.
	code, out = cas(`{"key":"k","value":"x","mod_rev":5}`)
	if code != 409 || out["found"] != false || out["current"] != nil {
		t.Fatalf("CAS of an absent key on a revision: %d %v", code, out)
	}
	for _, bad := range []string{`{"value":"x","mod_rev":0}`, `{"key":"k","value":"x"}`, `{"key":"k","mod_rev":0}`, `{"key":"k","value":"x","mod_rev":0,"delete":true}`, `{"key":"k","value":"x","mod_rev":-1}`} {
		if code, out := cas(bad); code != 400 {
			t.Errorf("%s: %d %v, want 400", bad, code, out)
		}
	}
}

// /api/txn runs then or else atomically, with the gets of the branch that
// ran; a refused transaction is 400.
func TestAPI_Txn(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	txn := func(body string) (int, map[string]any) {
		t.Helper()
		code, h, b := do(t, "POST", srv.URL+"/api/txn", []byte(body))
		return code, jsonAnswer(t, body, code, h, b)
	}
	code, out := txn(`{"if":[{"key":"a","mod_rev":0},{"key":"b","mod_rev":0}],"then":[{"op":"set","key":"a","value":"10"},{"op":"set","key":"b","value":"5"},{"op":"get","key":"a"}],"else":[{"op":"get","key":"a"}]}`)
	gets, _ := out["gets"].([]any)
	if code != 200 || out["succeeded"] != true || len(gets) != 1 || gets[0].(map[string]any)["value"] != "10" {
		t.Fatalf("opening two accounts: %d %v", code, out)
	}
	a, b := getEntry(t, srv.URL, "a"), getEntry(t, srv.URL, "b")
	if a.ModRev != b.ModRev || uint64(out["revision"].(float64)) != a.ModRev {
		t.Fatalf("one transaction, one revision: a %+v, b %+v, answer %v", a, b, out)
	}
	// Stale revisions: else runs, nothing written; its get of an absent key is null.
	code, out = txn(fmt.Sprintf(`{"if":[{"key":"a","mod_rev":%d}],"then":[{"op":"delete","key":"a"}],"else":[{"op":"get","key":"a"},{"op":"get","key":"nope"}]}`, a.ModRev-1))
	gets, _ = out["gets"].([]any)
	if code != 200 || out["succeeded"] != false || len(gets) != 2 || gets[0].(map[string]any)["value"] != "10" || gets[1] != nil {
		t.Fatalf("else branch: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "a"); e.ModRev != a.ModRev {
		t.Fatalf("else branch wrote: %+v", e)
	}
	for _, bad := range []string{
		`{"then":[{"op":"set","key":"a","value":"1"},{"op":"set","key":"a","value":"2"}]}`, // one key written twice
		`{"then":[{"op":"put","key":"a","value":"1"}]}`,
		`{"then":[{"op":"set","key":"a"}]}`,
		`{"then":[{"op":"get","key":"a","value":"1"}]}`,
		`{"if":[{"key":"a"}],"then":[]}`,
		`{"then":[{"op":"set","value":"1"}]}`,
		`{"then":[{"op":"set","key":"","value":"1"}]}`,
		`{"then":[{"op":"set","key":"l","value":"1","lease":1,"ttl":"1s"}]}`,
		`{"then":[{"op":"set","key":"l","value":"1","lease":-1}]}`,
		`{"then":[{"op":"set","key":"l","value":"1","ttl":"0s"}]}`,
		`{"then":[{"op":"delete","key":"l","ttl":"1s"}]}`,
	} {
		if code, out := txn(bad); code != 400 {
			t.Errorf("%s: %d %v, want 400", bad, code, out)
		}
	}
	// A lock as a transaction: create the key on a lease only if absent.
	code, h, body := do(t, "POST", srv.URL+"/api/lease/grant", []byte(`{"ttl":"30s"}`))
	grant := jsonAnswer(t, "grant", code, h, body)
	id := int64(grant["id"].(float64))
	code, out = txn(fmt.Sprintf(`{"if":[{"key":"lock","mod_rev":0}],"then":[{"op":"set","key":"lock","value":"me","lease":%d}],"else":[{"op":"get","key":"lock"}]}`, id))
	if code != 200 || out["succeeded"] != true {
		t.Fatalf("lock on a lease: %d %v", code, out)
	}
	if e := getEntry(t, srv.URL, "lock"); e.Lease != id {
		t.Fatalf("the lock's key: %+v, want lease %d", e, id)
	}
	if code, out := txn(`{"then":[{"op":"set","key":"gone","value":"x","lease":999999}]}`); code != 404 {
		t.Errorf("a set on an unknown lease: %d %v, want 404", code, out)
	}
	if code, out := txn(`{"then":[{"op":"set","key":"ttl","value":"x","ttl":"30s"}]}`); code != 200 {
		t.Errorf("a set with a TTL: %d %v", code, out)
	} else if e := getEntry(t, srv.URL, "ttl"); e.Lease == 0 {
		t.Errorf("a set with a TTL has no lease: %+v", e)
	}
}

// /api/list answers entries with their revisions, and the revision the
// page was read at.
func TestAPI_List_Revisions(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	for _, k := range []string{"p/a", "p/b"} {
		if code, _, body := do(t, "POST", srv.URL+"/api/set", []byte(`{"key":"`+k+`","value":"v"}`)); code != 200 {
			t.Fatalf("set %s: %d %s", k, code, body)
		}
	}
	out := list(t, srv, url.Values{"prefix": {"p/"}})
	if len(out.Pairs) != 2 || out.Pairs[0].ModRev == 0 || out.Pairs[1].ModRev <= out.Pairs[0].ModRev || out.Revision < out.Pairs[1].ModRev || out.Pairs[0].Version != 1 {
		t.Fatalf("list with revisions: %+v", out)
	}
}
