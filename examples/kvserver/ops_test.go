package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// A backup downloaded from /api/backup ends with the trailer that says it
// is complete, and /api/restore loads it back: a key deleted after the
// backup is there again.
func TestAPI_BackupRestore_RoundTrip(t *testing.T) {
	s := openStore(t, "n1", 1)
	srv := serve(t, s, 5*time.Second)
	if code, _, body := do(t, "POST", srv.URL+"/api/set", []byte(`{"key":"k","value":"v1"}`)); code != 200 {
		t.Fatalf("set: %d %s", code, body)
	}
	resp, err := http.Get(srv.URL + "/api/backup")
	if err != nil {
		t.Fatal(err)
	}
	copyBytes, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(copyBytes) == 0 {
		t.Fatalf("backup: %d, %d bytes, %v", resp.StatusCode, len(copyBytes), err)
	}
	if got := resp.Trailer.Get(backupStatusTrailer); got != "ok" {
		t.Fatalf("backup trailer %q, want ok", got)
	}
	if code, _, body := do(t, "DELETE", srv.URL+"/api/delete?key=k", nil); code != 200 {
		t.Fatalf("delete: %d %s", code, body)
	}
	code, _, body := do(t, "POST", srv.URL+"/api/restore", copyBytes)
	if code != 200 {
		t.Fatalf("restore: %d %s", code, body)
	}
	var out struct {
		Bytes int `json:"bytes"`
	}
	json.Unmarshal(body, &out)
	if out.Bytes != len(copyBytes) {
		t.Fatalf("restore answered %s, want bytes %d", body, len(copyBytes))
	}
	if code, _, body := do(t, "GET", srv.URL+"/api/get?key=k", nil); code != 200 || !bytes.Contains(body, []byte(`"value":"v1"`)) {
		t.Fatalf("get after restore: %d %s", code, body)
	}
	// A damaged copy is refused, and nothing changes.
	bad := append([]byte(nil), copyBytes...)
	bad[len(bad)/2] ^= 0xff
	if code, _, body := do(t, "POST", srv.URL+"/api/restore", bad); code == 200 {
		t.Fatalf("restore of a damaged copy: %d %s", code, body)
	}
}

// Without a leader, backup and restore answer 503 within -timeout, and
// members still answers this member's view.
func TestAPI_Ops_NoLeader(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 2), 500*time.Millisecond)
	for _, c := range []struct{ method, path string }{{"GET", "/api/backup"}, {"POST", "/api/restore"}} {
		code, h, body := do(t, c.method, srv.URL+c.path, []byte("x"))
		if code != 503 {
			t.Errorf("%s %s without a leader: %d %s, want 503", c.method, c.path, code, body)
			continue
		}
		jsonError(t, c.path, h, body)
	}
	code, _, body := do(t, "GET", srv.URL+"/api/members", nil)
	var out struct {
		Members []member `json:"members"`
	}
	if err := json.Unmarshal(body, &out); code != 200 || err != nil || len(out.Members) != 1 || out.Members[0].ID != "n1" {
		t.Fatalf("members: %d %s", code, body)
	}
}

// A transfer to a member that is not a voter is a bad request; to the
// leader itself, nothing to do.
func TestAPI_TransferLeadership(t *testing.T) {
	srv := serve(t, openStore(t, "n1", 1), 5*time.Second)
	code, h, body := do(t, "POST", srv.URL+"/api/transfer-leadership?to=nobody", nil)
	if code != 400 {
		t.Fatalf("transfer to nobody: %d %s, want 400", code, body)
	}
	jsonError(t, "transfer", h, body)
	if code, _, body := do(t, "POST", srv.URL+"/api/transfer-leadership?to=n1", nil); code != 200 || !bytes.Contains(body, []byte(`"leader":"n1"`)) {
		t.Fatalf("transfer to the leader: %d %s", code, body)
	}
}
