package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	kv "github.com/cohortkv/kv"
)

// ttl is a duration in a request body: a JSON string in Go's duration
// syntax ("10s", "1m30s", "500ms"), more than 0. A bare number is refused:
// it would leave the unit to guess.
type ttl time.Duration

func (d *ttl) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf(`"ttl" %s: want a duration string such as "10s", "1m30s" or "500ms"`, b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`"ttl" %q: want a duration such as "10s", "1m30s" or "500ms"`, s)
	}
	if v <= 0 {
		return fmt.Errorf(`"ttl" %q: want more than 0`, s)
	}
	*d = ttl(v)
	return nil
}

// leaseID checks the ID of a lease named in a body: the IDs that
// /api/lease/grant answers are positive.
func leaseID(field string, id *int64) (kv.LeaseID, error) {
	if id == nil {
		return 0, fmt.Errorf("body: %q is required", field)
	}
	if *id <= 0 {
		return 0, fmt.Errorf("body: %q %d: want a lease ID from /api/lease/grant, more than 0", field, *id)
	}
	return kv.LeaseID(*id), nil
}

// leaseAnswer is the answer of grant and keepalive: the lease and its TTL.
func leaseAnswer(id kv.LeaseID, d time.Duration) map[string]any {
	return map[string]any{"id": int64(id), "ttl": d.String()}
}

// leaseGrant creates a lease: {"ttl":"10s"} -> {"id":N,"ttl":"10s"}.
func (a *api) leaseGrant(w http.ResponseWriter, r *http.Request) {
	var req struct {
		TTL *ttl `json:"ttl"`
	}
	if !decodeBody(w, r, &req, `{"ttl":"10s"}`) {
		return
	}
	if req.TTL == nil {
		badRequest(w, `body: "ttl" is required`)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	id, err := a.store.Grant(ctx, time.Duration(*req.TTL))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, leaseAnswer(id, time.Duration(*req.TTL)))
}

// leaseKeepAlive renews a lease: {"id":N} -> {"id":N,"ttl":"10s"}; 404 when
// it expired or was revoked.
func (a *api) leaseKeepAlive(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID *int64 `json:"id"`
	}
	if !decodeBody(w, r, &req, `{"id":N}`) {
		return
	}
	id, err := leaseID("id", req.ID)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	left, err := a.store.KeepAlive(ctx, id)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, leaseAnswer(id, left))
}

// leaseRevoke ends a lease and deletes its keys: {"id":N} ->
// {"success":true}; 404 when it did not exist.
func (a *api) leaseRevoke(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID *int64 `json:"id"`
	}
	if !decodeBody(w, r, &req, `{"id":N}`) {
		return
	}
	id, err := leaseID("id", req.ID)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.store.Revoke(ctx, id); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}
