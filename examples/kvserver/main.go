// Command kvserver is a small program built on cohort/kv: each process
// embeds one instance (kv.Open) and serves a JSON HTTP API on its own port.
// Run three of them and break them: see README.md in this directory.
//
//	kvserver -node-id node1 -data-dir ./data/node1 -bind 127.0.0.1:7001 \
//	    -gossip 127.0.0.1:7101 -http 127.0.0.1:8001 -bootstrap-expect 3 \
//	    -join 127.0.0.1:7102,127.0.0.1:7103
//
// Every flag can also be set by an environment variable (KV_NODE_ID,
// KV_JOIN, ...); flags win. A value that does not parse, in a flag or a
// variable, stops kvserver at startup. -h lists them.
//
//	kvserver health [-http host:port] [-timeout 5s]
//
// probes the /health endpoint of the kvserver at -http (KV_HTTP; an
// unspecified host such as 0.0.0.0 means this machine) and exits 0 when
// it is healthy, 1 otherwise: a container healthcheck without curl.
//
// HTTP API:
//
//	POST   /api/set              {"key":"k","value":"v"[,"ttl":"10s"|"lease":N]} -> {"success":true}
//	GET    /api/get?key=k[&stale=true]                          -> {"key":"k","value":"v","found":true,"mod_rev":N,...}
//	GET    /api/list?prefix=p&limit=n&after=k[&stale=true]      -> {"pairs":[{"key":"k","value":"v",...}],"more":true,"next":"k","revision":N}
//	DELETE /api/delete?key=k                                    -> {"success":true}
//	POST   /api/cas              {"key":"k","value":"v","mod_rev":N} -> {"success":true,"mod_rev":M}; 409 on another revision
//	POST   /api/txn              {"if":[...],"then":[...],"else":[...]} -> {"succeeded":true,"revision":N,"gets":[...]}
//	GET    /api/watch?prefix=p[&from_rev=N]                     -> newline-delimited JSON: progress, events, heartbeats
//	POST   /api/lease/grant      {"ttl":"10s"}                  -> {"id":N,"ttl":"10s"}
//	POST   /api/lease/keepalive  {"id":N}                       -> {"id":N,"ttl":"10s"}; 404 when gone
//	POST   /api/lease/revoke     {"id":N}                       -> {"success":true}; 404 when gone
//	GET    /api/stats                                           -> state, leader, term, commit_index, applied_index, members
//	GET    /api/members                                         -> {"members":[{"id":"node1","addr":...,"suffrage":"voter",...}]}
//	GET    /api/backup[?stale=true]                             -> the whole data set (octet-stream); trailer Kv-Backup-Status: ok
//	POST   /api/restore          (body: a backup)               -> {"success":true,"bytes":N}; on the leader only (else 503)
//	POST   /api/transfer-leadership[?to=ID]                     -> {"success":true,"previous":"node1","leader":"node2"}
//	GET    /health                                              -> 200 when a leader is known and this instance is caught up, else 503
//	GET    /metrics                                             -> Prometheus metrics: the Store's cohortkv_*, Go's and the process's
//
// alerts.yml holds Prometheus alert rules on those metrics, and
// grafana-dashboard.json a dashboard.
//
// Errors are JSON {"error":"..."}: 400 bad input, 404 absent key or lease,
// or no such endpoint, 405 wrong method, 409 compare failed, 410 a watch
// from a revision no longer kept, 413 body too large, 503 not done and safe to
// retry (no leader, shutting down, this member halted), 504 time ran out
// with a leader known, or a write whose outcome is unknown
// ("outcome_unknown":true), 507 disk full. README.md has the details.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

// envVars names the environment variable of each flag that has one.
var envVars = map[string]string{
	"node-id":           "KV_NODE_ID",
	"data-dir":          "KV_DATA_DIR",
	"in-memory":         "KV_IN_MEMORY",
	"bind":              "KV_BIND",
	"advertise":         "KV_ADVERTISE",
	"gossip":            "KV_GOSSIP",
	"gossip-advertise":  "KV_GOSSIP_ADVERTISE",
	"join":              "KV_JOIN",
	"bootstrap-expect":  "KV_BOOTSTRAP_EXPECT",
	"http":              "KV_HTTP",
	"leave-on-shutdown": "KV_LEAVE_ON_SHUTDOWN",
	"timeout":           "KV_TIMEOUT",
	"tls-cert":          "KV_TLS_CERT",
	"tls-key":           "KV_TLS_KEY",
	"tls-ca":            "KV_TLS_CA",
	"gossip-key":        "KV_GOSSIP_KEY",
	"v":                 "KV_VERBOSE",
}

// fromEnv sets each flag of fs named in vars from its environment variable,
// when that is set and not empty, through the flag's own parser: a value
// that does not parse is an error naming the variable. It also adds the
// variable's name to the flag's usage. Flags parsed afterwards win.
func fromEnv(fs *flag.FlagSet, vars map[string]string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name, ok := vars[f.Name]
		if !ok {
			return
		}
		f.Usage += " (" + name + ")"
		v := os.Getenv(name)
		if v == "" || err != nil {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("invalid value %q for %s (-%s): %s", v, name, f.Name, want(f.Value, serr))
		}
	})
	return err
}

// want says what a flag of v's kind takes, after err from its parser.
func want(v flag.Value, err error) string {
	if g, ok := v.(flag.Getter); ok {
		switch g.Get().(type) {
		case bool:
			return "want true or false"
		case int:
			return "want a whole number"
		case time.Duration:
			return "want a duration such as 500ms, 5s or 1m"
		}
	}
	return err.Error()
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("kvserver", flag.ContinueOnError)
	fs.StringVar(&o.nodeID, "node-id", "", "this instance's name, stable across restarts; required")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for the Raft log, snapshots and data; required unless -in-memory")
	fs.BoolVar(&o.inMemory, "in-memory", false, "keep everything in memory; nothing survives a restart")
	fs.StringVar(&o.bind, "bind", "127.0.0.1:7000", "host:port of the Raft + member RPC port")
	fs.StringVar(&o.advertise, "advertise", "", "host:port peers dial, if -bind is not reachable as is")
	fs.StringVar(&o.gossip, "gossip", "127.0.0.1:7946", "host:port of the gossip port, TCP and UDP")
	fs.StringVar(&o.gossipAdvertise, "gossip-advertise", "", "host:port members gossip to, if -gossip is not reachable as is")
	fs.StringVar(&o.join, "join", "", "comma-separated gossip addresses (host:port; DNS names resolve) of other members")
	fs.IntVar(&o.bootstrapExpect, "bootstrap-expect", 0, "voters to wait for before the first election; the same on the first members (0: 1 without -join)")
	fs.StringVar(&o.httpAddr, "http", "127.0.0.1:8000", "host:port of the HTTP API")
	fs.BoolVar(&o.leaveOnShutdown, "leave-on-shutdown", false, "on SIGINT/SIGTERM leave the cluster for good instead of a plain stop")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long one HTTP request may wait for the cluster (a leader, a majority) before it fails")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate of this member for mutual TLS between members")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for -tls-cert")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA certificate(s) that members' certificates chain to")
	fs.StringVar(&o.gossipKey, "gossip-key", "", "hex key (32, 48 or 64 hex digits) that encrypts gossip")
	fs.BoolVar(&o.verbose, "v", false, "log at Debug level")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `kvserver: one cohort/kv instance with a JSON HTTP API.

Usage:
  kvserver [flags]         run an instance
  kvserver health [flags]  probe a running instance's /health (kvserver health -h)

Flags (each also read from the environment variable named in parentheses; flags win):
`)
		fs.PrintDefaults()
	}
	if err := fromEnv(fs, envVars); err != nil {
		return o, err
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q (flags only; or: kvserver health)", fs.Arg(0))
	case o.nodeID == "":
		return o, errors.New("-node-id (KV_NODE_ID) is required")
	case o.dataDir == "" && !o.inMemory:
		return o, errors.New("-data-dir (KV_DATA_DIR) is required unless -in-memory")
	case o.bootstrapExpect < 0:
		return o, fmt.Errorf("-bootstrap-expect (KV_BOOTSTRAP_EXPECT) %d: want 0 or more", o.bootstrapExpect)
	case o.timeout <= 0:
		return o, fmt.Errorf("-timeout (KV_TIMEOUT) %v: want more than 0", o.timeout)
	case o.advertise == "" && unspecified(o.bind):
		return o, fmt.Errorf("-bind (KV_BIND) %s listens on every interface: set -advertise (KV_ADVERTISE) to the host:port peers dial, or they would dial their own port", o.bind)
	}
	return o, nil
}

// unspecified says whether hostPort has no host, or 0.0.0.0 or ::, which
// peers cannot dial.
func unspecified(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false // kv.Open says what is wrong with it
	}
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
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
	if len(os.Args) > 1 && os.Args[1] == "health" {
		os.Exit(health(os.Args[2:], os.Stdout, os.Stderr))
	}
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first signal starts a graceful stop; a second one ends the
		// process at once.
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, o, logger); err != nil {
		logger.Error("kvserver stopped", "error", err)
		os.Exit(1)
	}
}

// run serves until ctx ends (SIGINT or SIGTERM), then stops gracefully.
// It binds the HTTP port before it opens the Store, so that a taken port
// fails before anything is written to the DataDir, and logs "kvserver
// ready" once both are up.
func run(ctx context.Context, o options, logger *slog.Logger) error {
	cfg, err := o.config(logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	// A registry of our own, not Prometheus's global default one.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Metrics = reg
	store, err := kv.Open(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	api := newAPI(store, o.timeout)
	api.serveMetrics(reg)
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       readTimeout,
		// Counted from the end of the headers: reading the body, waiting
		// up to -timeout for the cluster, then answering. A watch stream
		// replaces it with a deadline per write (streamWriteTimeout).
		WriteTimeout: readTimeout + o.timeout + answerTime,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for requests to end; watch streams end when told.
	srv.RegisterOnShutdown(api.stopWatches)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("kvserver ready", "node", o.nodeID, "http", ln.Addr().String(), "transport", store.Addr(), "gossip", store.GossipAddr())

	select {
	case <-ctx.Done():
		logger.Info("shutting down", "cause", context.Cause(ctx), "leave", o.leaveOnShutdown)
	case err := <-serveErr:
		store.Close()
		return fmt.Errorf("http: %w", err)
	}
	// Requests in flight have -timeout to finish; a client still sending
	// its body after that is cut off, so that the stop fits the grace
	// period of an orchestrator (kubernetes.yaml, docker-compose.yml).
	dctx, cancel := context.WithTimeout(context.Background(), o.timeout+answerTime)
	err = srv.Shutdown(dctx)
	cancel()
	if err != nil {
		logger.Warn("requests still running after -timeout; closing their connections", "error", err)
		srv.Close()
	}
	if o.leaveOnShutdown {
		lctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		err := store.Leave(lctx)
		cancel()
		if err == nil {
			return nil
		}
		logger.Warn("leave failed; closing instead", "error", err)
	}
	return store.Close()
}

const (
	// readTimeout bounds reading one request, body included.
	readTimeout = 30 * time.Second
	// answerTime is what a request has, beyond -timeout, to answer.
	answerTime = 2 * time.Second
	// leaveTimeout bounds Leave at a stop with -leave-on-shutdown: time
	// for the leader to promote a non-voter in this member's place first.
	leaveTimeout = 20 * time.Second
)
