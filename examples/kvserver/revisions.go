package main

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	kv "github.com/cohortkv/kv"
)

// entry is a key with its revisions, as /api/get, /api/cas, /api/txn and
// /api/list answer it.
type entry struct {
	Key       string `json:"key"`
	Value     string `json:"value"`
	CreateRev uint64 `json:"create_rev"`
	ModRev    uint64 `json:"mod_rev"`
	Version   uint64 `json:"version"`
	Lease     int64  `json:"lease"` // 0: none
}

func toEntry(e kv.Entry) entry {
	return entry{Key: e.Key, Value: string(e.Value), CreateRev: e.CreateRev, ModRev: e.ModRev, Version: e.Version, Lease: int64(e.Lease)}
}

// conflict answers 409 with the key's current entry (null when absent).
func conflict(w http.ResponseWriter, ce *kv.ConflictError, err error) {
	body := map[string]any{"error": err.Error(), "conflict": true, "found": ce.Found, "current": nil}
	if ce.Found {
		body["current"] = toEntry(ce.Current)
	}
	writeJSON(w, http.StatusConflict, body)
}

// cas is a compare-and-set, or with "delete":true a compare-and-delete, on
// the key's mod_rev (0: the key must be absent).
func (a *api) cas(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Key    *string `json:"key"`
		Value  *string `json:"value"`
		ModRev *uint64 `json:"mod_rev"`
		Delete bool    `json:"delete"`
	}
	if !decodeBody(w, r, &req, `{"key":"...","value":"...","mod_rev":N} or {"key":"...","mod_rev":N,"delete":true}`) {
		return
	}
	switch {
	case req.Key == nil || req.ModRev == nil:
		badRequest(w, `body: "key" and "mod_rev" are required (mod_rev 0: only if absent)`)
		return
	case req.Delete && req.Value != nil:
		badRequest(w, `body: "value" with "delete":true`)
		return
	case !req.Delete && req.Value == nil:
		badRequest(w, `body: "value" is required (or "delete":true)`)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	var rev uint64
	var err error
	if req.Delete {
		err = a.store.CompareAndDelete(ctx, *req.Key, *req.ModRev)
	} else {
		rev, err = a.store.CompareAndSet(ctx, *req.Key, []byte(*req.Value), *req.ModRev)
	}
	var ce *kv.ConflictError
	if errors.As(err, &ce) {
		conflict(w, ce, err)
		return
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	body := map[string]any{"success": true}
	if !req.Delete {
		body["mod_rev"] = rev
	}
	writeJSON(w, http.StatusOK, body)
}

// txnCond is one condition of /api/txn: the key's mod_rev (0: absent).
type txnCond struct {
	Key    *string `json:"key"`
	ModRev *uint64 `json:"mod_rev"`
}

// txnOp is one operation of /api/txn: "set" (key, value), "delete" (key)
// or "get" (key).
type txnOp struct {
	Op    string  `json:"op"`
	Key   *string `json:"key"`
	Value *string `json:"value"`
	// A set's lease, or TTL of its own, as for /api/set.
	Lease *int64 `json:"lease"`
	TTL   *ttl   `json:"ttl"`
}

func toOps(branch string, in []txnOp) ([]kv.Op, error) {
	out := make([]kv.Op, 0, len(in))
	for i, o := range in {
		if o.Key == nil {
			return nil, fmt.Errorf("%s[%d]: \"key\" is required", branch, i)
		}
		switch o.Op {
		case "set":
			if o.Value == nil {
				return nil, fmt.Errorf("%s[%d]: set needs \"value\"", branch, i)
			}
			var opts []kv.WriteOption
			switch {
			case o.Lease != nil && o.TTL != nil:
				return nil, fmt.Errorf("%s[%d]: give \"lease\" or \"ttl\", not both", branch, i)
			case o.Lease != nil:
				id, err := leaseID("lease", o.Lease)
				if err != nil {
					return nil, fmt.Errorf("%s[%d]: %v", branch, i, err)
				}
				opts = append(opts, kv.WithLease(id))
			case o.TTL != nil:
				opts = append(opts, kv.TTL(time.Duration(*o.TTL)))
			}
			out = append(out, kv.OpSet(*o.Key, []byte(*o.Value), opts...))
		case "delete", "get":
			if o.Value != nil || o.Lease != nil || o.TTL != nil {
				return nil, fmt.Errorf("%s[%d]: %s takes no \"value\", \"lease\" or \"ttl\"", branch, i, o.Op)
			}
			if o.Op == "delete" {
				out = append(out, kv.OpDelete(*o.Key))
			} else {
				out = append(out, kv.OpGet(*o.Key))
			}
		default:
			return nil, fmt.Errorf("%s[%d]: \"op\" %q: want set, delete or get", branch, i, o.Op)
		}
	}
	return out, nil
}

// txn runs a transaction: if every condition holds, then; else, else.
func (a *api) txn(w http.ResponseWriter, r *http.Request) {
	var req struct {
		If   []txnCond `json:"if"`
		Then []txnOp   `json:"then"`
		Else []txnOp   `json:"else"`
	}
	if !decodeBody(w, r, &req, `{"if":[{"key":"...","mod_rev":N}],"then":[{"op":"set","key":"...","value":"..."}],"else":[...]}`) {
		return
	}
	var t kv.Txn
	for i, c := range req.If {
		if c.Key == nil || c.ModRev == nil {
			badRequest(w, fmt.Sprintf(`if[%d]: "key" and "mod_rev" are required`, i))
			return
		}
		t.If = append(t.If, kv.ModRevIs(*c.Key, *c.ModRev))
	}
	var err error
	if t.Then, err = toOps("then", req.Then); err == nil {
		t.Else, err = toOps("else", req.Else)
	}
	if err != nil {
		badRequest(w, "body: "+err.Error())
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	res, err := a.store.Txn(ctx, t)
	if err != nil {
		a.fail(w, err)
		return
	}
	gets := make([]*entry, len(res.Gets))
	for i, g := range res.Gets {
		if g.ModRev != 0 {
			e := toEntry(g)
			gets[i] = &e
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"succeeded": res.Succeeded, "revision": res.Revision, "gets": gets})
}
