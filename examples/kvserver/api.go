package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	kv "github.com/cohortkv/kv"
)

const (
	// maxBodyBytes bounds a request body: room for the largest value the
	// library accepts by default (1 MiB), even with every byte escaped in
	// JSON. A larger body gets 413.
	maxBodyBytes = 16 << 20
	// defaultListLimit is how many pairs /api/list returns without limit=;
	// maxListLimit is the most it returns at once. Larger results page with
	// after=.
	defaultListLimit = 1000
	maxListLimit     = 10000
)

// api serves the HTTP API over one Store. Every answer, errors included
// (unknown paths and wrong methods too), is JSON.
type api struct {
	store   *kv.Store
	stats   func() kv.Stats // store.Stats; tests replace it
	timeout time.Duration
	mux     *http.ServeMux

	heartbeat time.Duration // between progress lines of a quiet watch; tests shorten it
	stopping  chan struct{} // closed by stopWatches
	stopOnce  sync.Once
}

func newAPI(store *kv.Store, timeout time.Duration) *api {
	a := &api{store: store, stats: store.Stats, timeout: timeout, mux: http.NewServeMux(),
		heartbeat: defaultHeartbeat, stopping: make(chan struct{})}
	a.mux.HandleFunc("POST /api/set", a.set)
	a.mux.HandleFunc("GET /api/get", a.get)
	a.mux.HandleFunc("GET /api/list", a.list)
	a.mux.HandleFunc("DELETE /api/delete", a.del)
	a.mux.HandleFunc("POST /api/cas", a.cas)
	a.mux.HandleFunc("POST /api/txn", a.txn)
	a.mux.HandleFunc("GET /api/watch", a.watch)
	a.mux.HandleFunc("POST /api/lease/grant", a.leaseGrant)
	a.mux.HandleFunc("POST /api/lease/keepalive", a.leaseKeepAlive)
	a.mux.HandleFunc("POST /api/lease/revoke", a.leaseRevoke)
	a.mux.HandleFunc("GET /api/stats", a.statsHandler)
	a.mux.HandleFunc("POST /api/compact", a.compact)
	a.mux.HandleFunc("GET /health", a.health)
	a.opsRoutes()
	return a
}

// serveMetrics serves g's metrics at GET /metrics, in Prometheus's text
// format (or OpenMetrics, when the scraper asks for it).
func (a *api) serveMetrics(g prometheus.Gatherer) {
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true}))
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h, pattern := a.mux.Handler(r); pattern == "" {
		// No route: ServeMux's own answer is a plain-text 404, or 405
		// with the Allow header. Keep its status and Allow, answer JSON.
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		switch allow := rec.header.Get("Allow"); {
		case rec.code == http.StatusMethodNotAllowed:
			w.Header().Set("Allow", allow)
			writeError(w, rec.code, fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow))
		case rec.code == http.StatusNotFound:
			writeError(w, rec.code, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
		default:
			writeError(w, rec.code, http.StatusText(rec.code))
		}
		return
	}
	a.mux.ServeHTTP(w, r)
}

// statusRecorder keeps the status and headers a handler writes, and drops
// its body.
type statusRecorder struct {
	header http.Header
	code   int
}

func (s *statusRecorder) Header() http.Header { return s.header }

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(b), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func badRequest(w http.ResponseWriter, msg string) {
	writeError(w, http.StatusBadRequest, msg)
}

// fail answers an error of the Store. The body of a write whose outcome is
// unknown says so: "outcome_unknown":true; that of a watch from a revision
// no longer kept has "compacted":true and the oldest revision kept,
// "oldest_rev".
func (a *api) fail(w http.ResponseWriter, err error) {
	writeJSON(w, a.status(err), errorBody(err))
}

func errorBody(err error) map[string]any {
	body := map[string]any{"error": err.Error()}
	if errors.Is(err, kv.ErrOutcomeUnknown) {
		body["outcome_unknown"] = true
	}
	var ce *kv.CompactedError
	if errors.As(err, &ce) {
		body["compacted"] = true
		body["oldest_rev"] = ce.Oldest
	}
	return body
}

// status maps an error of the Store to an HTTP status. 503 means the
// request had no effect and may be sent again, later or to another member;
// 504 means time ran out while a leader was known, or a write's outcome is
// unknown (it may have been applied, or may be later).
func (a *api) status(err error) int {
	switch {
	case errors.Is(err, kv.ErrNotFound), errors.Is(err, kv.ErrLeaseNotFound):
		return http.StatusNotFound
	case errors.Is(err, kv.ErrCompacted):
		return http.StatusGone
	case errors.Is(err, kv.ErrEmptyKey), errors.Is(err, kv.ErrKeyTooLarge), errors.Is(err, kv.ErrValueTooLarge),
		errors.Is(err, kv.ErrReservedKey), errors.Is(err, kv.ErrInvalidTxn), errors.Is(err, kv.ErrInvalidTTL), errors.Is(err, kv.ErrTxnTooLarge),
		errors.Is(err, kv.ErrNotVoter):
		return http.StatusBadRequest
	case errors.Is(err, kv.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, kv.ErrOutcomeUnknown):
		// Before the others: a write caught by a halt, a full disk, Close
		// or a deadline after it was sent wraps them too.
		return http.StatusGatewayTimeout
	case errors.Is(err, kv.ErrNoSpace):
		// The cluster's space quota: the write was not applied; writes
		// that grow the data resume once data is deleted.
		return http.StatusInsufficientStorage
	case errors.Is(err, kv.ErrDiskFull):
		if a.stats().Halted != "" {
			// This member halted: another one can answer.
			return http.StatusServiceUnavailable
		}
		// Nothing was written; writes resume once space is freed.
		return http.StatusInsufficientStorage
	case errors.Is(err, kv.ErrCorrupt), errors.Is(err, kv.ErrNewerFormat):
		// This member halted, or a record it holds is damaged: another
		// one can answer.
		return http.StatusServiceUnavailable
	case errors.Is(err, kv.ErrNoLeader), errors.Is(err, kv.ErrClosed):
		// Before DeadlineExceeded: a call that ran out of time without a
		// leader wraps both.
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		if a.stats().Leader == "" {
			return http.StatusServiceUnavailable
		}
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func (a *api) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), a.timeout)
}

func readOpts(r *http.Request) ([]kv.ReadOption, error) {
	var opts []kv.ReadOption
	if s := r.URL.Query().Get("stale"); s != "" {
		stale, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("stale=%q: want true or false", s)
		}
		if stale {
			opts = append(opts, kv.Stale())
		}
	}
	return opts, nil
}

// decodeBody decodes the request body, one JSON object of at most
// maxBodyBytes with only the fields of v, into v. It answers the request
// and returns false if it cannot.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, want string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One value only: what follows it must be white space.
		if err = dec.Decode(&json.RawMessage{}); err == io.EOF {
			return true
		} else if err == nil {
			err = errors.New("more data after the JSON object")
		}
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than %d bytes", tooLarge.Limit))
		return false
	}
	badRequest(w, "body: want JSON "+want+": "+err.Error())
	return false
}

func (a *api) set(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Key   *string `json:"key"`
		Value *string `json:"value"`
		TTL   *ttl    `json:"ttl"`
		Lease *int64  `json:"lease"`
	}
	if !decodeBody(w, r, &req, `{"key":"...","value":"..."} (and "ttl":"10s" or "lease":N)`) {
		return
	}
	if req.Key == nil || req.Value == nil {
		badRequest(w, `body: both "key" and "value" are required`)
		return
	}
	var opts []kv.WriteOption
	switch {
	case req.TTL != nil && req.Lease != nil:
		badRequest(w, `body: "ttl" or "lease", not both`)
		return
	case req.TTL != nil:
		opts = append(opts, kv.TTL(time.Duration(*req.TTL)))
	case req.Lease != nil:
		id, err := leaseID("lease", req.Lease)
		if err != nil {
			badRequest(w, err.Error())
			return
		}
		opts = append(opts, kv.WithLease(id))
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.store.Set(ctx, *req.Key, []byte(*req.Value), opts...); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	opts, err := readOpts(r)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	e, err := a.store.GetEntry(ctx, key, opts...)
	if errors.Is(err, kv.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]any{"key": key, "found": false, "error": err.Error()})
		return
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": key, "value": string(e.Value), "found": true,
		"create_rev": e.CreateRev, "mod_rev": e.ModRev, "version": e.Version, "lease": int64(e.Lease)})
}

// list answers at most limit pairs (defaultListLimit without limit=), and
// says whether there are more: then next is the last key returned, to pass
// as after= for the next page.
func (a *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts, err := readOpts(r)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	limit := defaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			badRequest(w, fmt.Sprintf("limit=%q: want a number from 1 to %d (page with after=)", s, maxListLimit))
			return
		}
		limit = n
	}
	// One more than asked for says whether there are more.
	opts = append(opts, kv.Limit(limit+1))
	if q.Has("after") {
		opts = append(opts, kv.After(q.Get("after")))
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	entries, rev, err := a.store.ListEntries(ctx, q.Get("prefix"), opts...)
	if err != nil {
		a.fail(w, err)
		return
	}
	more := len(entries) > limit
	if more {
		entries = entries[:limit]
	}
	out := make([]entry, len(entries))
	for i, e := range entries {
		out[i] = toEntry(e)
	}
	body := map[string]any{"pairs": out, "more": more, "revision": rev}
	if more {
		body["next"] = out[len(out)-1].Key
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *api) del(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.store.Delete(ctx, r.URL.Query().Get("key")); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

// defaultCompactTimeout bounds POST /api/compact without timeout=: a
// compaction copies every member's live data, one member after another.
const defaultCompactTimeout = time.Hour

// compact compacts every member's data file (Store.Compact), one after
// another, and answers when all are done: {"success":true,"took":"1.2s"}.
// The query's timeout= (a Go duration, default 1h) bounds it. A compaction
// already running answers 409; one that skipped or failed on some members
// answers 500 with "partial":true and the members in "error" (the others
// were compacted).
func (a *api) compact(w http.ResponseWriter, r *http.Request) {
	timeout := defaultCompactTimeout
	if v := r.URL.Query().Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			badRequest(w, fmt.Sprintf("timeout %q: want a positive duration such as 10m", v))
			return
		}
		timeout = d
	}
	// The server's write timeout is sized for one short request.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(timeout + 10*time.Second))
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	start := time.Now()
	err := a.store.Compact(ctx)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"success": true, "took": time.Since(start).String()})
	case errors.Is(err, kv.ErrCompactIncomplete):
		body := errorBody(err)
		body["partial"] = true
		writeJSON(w, http.StatusInternalServerError, body)
	case errors.Is(err, kv.ErrCompacting):
		writeJSON(w, http.StatusConflict, errorBody(err))
	default:
		a.fail(w, err)
	}
}

func (a *api) statsHandler(w http.ResponseWriter, r *http.Request) {
	st := a.stats()
	type member struct {
		ID     string `json:"id"`
		Addr   string `json:"addr"`
		Gossip string `json:"gossip_addr"`
		Status string `json:"status"`
		Voter  bool   `json:"voter"`
		Leader bool   `json:"leader"`
	}
	var members []member
	for _, m := range a.store.Members() {
		members = append(members, member{m.ID, m.Addr, m.GossipAddr, fmt.Sprint(m.Status), m.Voter, m.Leader})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"node_id":             st.NodeID,
		"state":               fmt.Sprint(st.State),
		"leader":              st.Leader,
		"term":                st.Term,
		"commit_index":        st.CommitIndex,
		"applied_index":       st.AppliedIndex,
		"last_snapshot_index": st.LastSnapshotIndex,
		"cluster_id":          st.ClusterID,
		"db_size":             st.DBSize,
		"db_in_use":           st.DBInUse,
		"data_bytes":          st.DataBytes,
		"quota_bytes":         st.QuotaBytes,
		"members":             members,
	})
}

// healthMaxLag is how many committed entries an instance may still have to
// apply and be healthy: a few are normal under load.
const healthMaxLag = 256

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	st := a.stats()
	switch {
	case st.Halted != "":
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"healthy": false, "reason": st.Halted})
	case st.Leader == "":
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"healthy": false, "reason": "no leader known"})
	case st.AppliedIndex+healthMaxLag < st.CommitIndex:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"healthy": false, "reason": fmt.Sprintf("catching up: applied %d of %d", st.AppliedIndex, st.CommitIndex)})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"healthy": true, "leader": st.Leader})
	}
}
