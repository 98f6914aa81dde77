// Command kvserver is a small program built on cohort/kv: each process
// embeds one instance (kv.Open) and serves a JSON HTTP API on its own port.
// Run three of them and break them: see README.md in this directory.
//
//	kvserver -node-id node1 -data-dir ./data/node1 -bind 127.0.0.1:7001 \
//	    -gossip 127.0.0.1:7101 -http 127.0.0.1:8001 -bootstrap-expect 3 \
//	    -join 127.0.0.1:7102,127.0.0.1:7103
//
// Every flag can also be set by an environment variable (KV_NODE_ID,
// KV_JOIN, ...); flags win. -h lists them.
//
// HTTP API:
//
//	POST   /api/set              {"key":"k","value":"v"}        -> {"success":true}
//	GET    /api/get?key=k[&stale=true]                          -> {"key":"k","value":"v","found":true}
//	GET    /api/list?prefix=p&limit=n&after=k[&stale=true]      -> {"pairs":[{"key":"k","value":"v"}]}
//	DELETE /api/delete?key=k                                    -> {"success":true}
//	GET    /api/stats                                           -> state, leader, term, commit_index, applied_index, members
//	GET    /health                                              -> 200 when a leader is known and this instance is caught up, else 503
//
// Errors are JSON {"error":"..."} with 400 (bad input), 404 (absent key),
// 503 (no leader, closed), 504 (timeout).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	kv "github.com/cohortkv/kv"
)

// options are the program's settings, from flags and environment.
type options struct {
	nodeID, dataDir, bind, advertise, gossip, gossipAdvertise, join, httpAddr string
	bootstrapExpect                                                           int
	inMemory, leaveOnShutdown, verbose                                        bool
	timeout                                                                   time.Duration
	tlsCert, tlsKey, tlsCA, gossipKey                                         string
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("kvserver", flag.ContinueOnError)
	fs.StringVar(&o.nodeID, "node-id", env("KV_NODE_ID", ""), "this instance's name, stable across restarts (KV_NODE_ID; required)")
	fs.StringVar(&o.dataDir, "data-dir", env("KV_DATA_DIR", ""), "directory for the Raft log, snapshots and data (KV_DATA_DIR; required unless -in-memory)")
	fs.BoolVar(&o.inMemory, "in-memory", envBool("KV_IN_MEMORY"), "keep everything in memory; nothing survives a restart (KV_IN_MEMORY)")
	fs.StringVar(&o.bind, "bind", env("KV_BIND", "127.0.0.1:7000"), "host:port of the Raft + member RPC port (KV_BIND)")
	fs.StringVar(&o.advertise, "advertise", env("KV_ADVERTISE", ""), "host:port peers dial, if -bind is not reachable as is (KV_ADVERTISE)")
	fs.StringVar(&o.gossip, "gossip", env("KV_GOSSIP", "127.0.0.1:7946"), "host:port of the gossip port, TCP and UDP (KV_GOSSIP)")
	fs.StringVar(&o.gossipAdvertise, "gossip-advertise", env("KV_GOSSIP_ADVERTISE", ""), "host:port members gossip to, if -gossip is not reachable as is (KV_GOSSIP_ADVERTISE)")
	fs.StringVar(&o.join, "join", env("KV_JOIN", ""), "comma-separated gossip addresses (host:port; DNS names resolve) of other members (KV_JOIN)")
	fs.IntVar(&o.bootstrapExpect, "bootstrap-expect", envInt("KV_BOOTSTRAP_EXPECT", 0), "voters to wait for before the first election; the same on the first members (KV_BOOTSTRAP_EXPECT; 0: 1 without -join)")
	fs.StringVar(&o.httpAddr, "http", env("KV_HTTP", "127.0.0.1:8000"), "host:port of the HTTP API (KV_HTTP)")
	fs.BoolVar(&o.leaveOnShutdown, "leave-on-shutdown", envBool("KV_LEAVE_ON_SHUTDOWN"), "on SIGINT/SIGTERM leave the cluster for good instead of a plain stop (KV_LEAVE_ON_SHUTDOWN)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long one HTTP request may wait for the cluster")
	fs.StringVar(&o.tlsCert, "tls-cert", env("KV_TLS_CERT", ""), "PEM certificate of this member for mutual TLS between members (KV_TLS_CERT)")
	fs.StringVar(&o.tlsKey, "tls-key", env("KV_TLS_KEY", ""), "PEM private key for -tls-cert (KV_TLS_KEY)")
	fs.StringVar(&o.tlsCA, "tls-ca", env("KV_TLS_CA", ""), "PEM CA certificate(s) that members' certificates chain to (KV_TLS_CA)")
	fs.StringVar(&o.gossipKey, "gossip-key", env("KV_GOSSIP_KEY", ""), "hex key (32, 48 or 64 hex digits) that encrypts gossip (KV_GOSSIP_KEY)")
	fs.BoolVar(&o.verbose, "v", envBool("KV_VERBOSE"), "log at Debug level (KV_VERBOSE)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "kvserver: one cohort/kv instance with a JSON HTTP API.\n\nUsage: kvserver [flags]\n\nFlags (each also read from the environment variable named in parentheses; flags win):\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.nodeID == "" {
		return o, errors.New("-node-id (KV_NODE_ID) is required")
	}
	if o.dataDir == "" && !o.inMemory {
		return o, errors.New("-data-dir (KV_DATA_DIR) is required unless -in-memory")
	}
	return o, nil
}

func (o options) config(logger *slog.Logger) (kv.Config, error) {
	cfg := kv.Config{
		NodeID:              o.nodeID,
		DataDir:             o.dataDir,
		InMemory:            o.inMemory,
		BindAddr:            o.bind,
		AdvertiseAddr:       o.advertise,
		GossipBindAddr:      o.gossip,
		GossipAdvertiseAddr: o.gossipAdvertise,
		BootstrapExpect:     o.bootstrapExpect,
		Logger:              logger,
	}
	for _, j := range strings.Split(o.join, ",") {
		if j = strings.TrimSpace(j); j != "" {
			cfg.Join = append(cfg.Join, j)
		}
	}
	if o.tlsCert != "" || o.tlsKey != "" || o.tlsCA != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return cfg, fmt.Errorf("TLS certificate: %w", err)
		}
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return cfg, fmt.Errorf("TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("TLS CA %s: no PEM certificate", o.tlsCA)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool}
	}
	if o.gossipKey != "" {
		key, err := hex.DecodeString(o.gossipKey)
		if err != nil {
			return cfg, fmt.Errorf("gossip key: %w", err)
		}
		cfg.GossipKey = key
	}
	return cfg, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvserver:", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(o, logger); err != nil {
		logger.Error("kvserver stopped", "error", err)
		os.Exit(1)
	}
}

func run(o options, logger *slog.Logger) error {
	cfg, err := o.config(logger)
	if err != nil {
		return err
	}
	store, err := kv.Open(cfg)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:              o.httpAddr,
		Handler:           newAPI(store, o.timeout),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ListenAndServe() }()
	logger.Info("kvserver ready", "node", o.nodeID, "http", o.httpAddr, "transport", store.Addr(), "gossip", store.GossipAddr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		logger.Info("shutting down", "signal", s.String(), "leave", o.leaveOnShutdown)
	case err := <-serveErr:
		store.Close()
		return fmt.Errorf("http: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	if o.leaveOnShutdown {
		if err := store.Leave(ctx); err != nil {
			logger.Warn("leave failed; closing instead", "error", err)
		} else {
			return nil
		}
	}
	return store.Close()
}

// api serves the HTTP API over one Store.
type api struct {
	store   *kv.Store
	timeout time.Duration
}

func newAPI(store *kv.Store, timeout time.Duration) http.Handler {
	a := &api{store: store, timeout: timeout}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/set", a.set)
	mux.HandleFunc("GET /api/get", a.get)
	mux.HandleFunc("GET /api/list", a.list)
	mux.HandleFunc("DELETE /api/delete", a.del)
	mux.HandleFunc("GET /api/stats", a.stats)
	mux.HandleFunc("GET /health", a.health)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// fail maps the library's errors to HTTP statuses.
func fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, kv.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, kv.ErrEmptyKey), errors.Is(err, kv.ErrKeyTooLarge), errors.Is(err, kv.ErrValueTooLarge):
		status = http.StatusBadRequest
	case errors.Is(err, kv.ErrCorrupt):
		// This instance halted (or a record it holds is damaged): ask
		// another one.
		status = http.StatusServiceUnavailable
	case errors.Is(err, kv.ErrDiskFull):
		status = http.StatusInsufficientStorage
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, kv.ErrOutcomeUnknown):
		// ErrOutcomeUnknown: the write may or may not have happened.
		status = http.StatusGatewayTimeout
	case errors.Is(err, kv.ErrNoLeader), errors.Is(err, kv.ErrClosed):
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func badRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
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

func (a *api) set(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Key   *string `json:"key"`
		Value *string `json:"value"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20))
	if err := dec.Decode(&req); err != nil {
		badRequest(w, "body: want JSON {\"key\":\"...\",\"value\":\"...\"}: "+err.Error())
		return
	}
	if req.Key == nil || req.Value == nil {
		badRequest(w, `body: both "key" and "value" are required`)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.store.Set(ctx, *req.Key, []byte(*req.Value)); err != nil {
		fail(w, err)
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
	v, err := a.store.Get(ctx, key, opts...)
	if errors.Is(err, kv.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]any{"key": key, "found": false, "error": err.Error()})
		return
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": key, "value": string(v), "found": true})
}

type pair struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts, err := readOpts(r)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			badRequest(w, fmt.Sprintf("limit=%q: want a number >= 0", s))
			return
		}
		if n > 0 {
			opts = append(opts, kv.Limit(n))
		}
	}
	if q.Has("after") {
		opts = append(opts, kv.After(q.Get("after")))
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	pairs, err := a.store.List(ctx, q.Get("prefix"), opts...)
	if err != nil {
		fail(w, err)
		return
	}
	out := make([]pair, len(pairs))
	for i, p := range pairs {
		out[i] = pair{p.Key, string(p.Value)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"pairs": out})
}

func (a *api) del(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	if err := a.store.Delete(ctx, r.URL.Query().Get("key")); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func (a *api) stats(w http.ResponseWriter, r *http.Request) {
	st := a.store.Stats()
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
		"members":             members,
	})
}

// healthMaxLag is how many committed entries an instance may still have to
// apply and be healthy: a few are normal under load.
const healthMaxLag = 256

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	st := a.store.Stats()
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
