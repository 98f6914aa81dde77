package kv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/cohortkv/kv/internal/discovery"
	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// rebuildMarker is the file in DataDir that says a Rebuild has begun but is
// not finished: Open refuses to start on it, because an empty member that
// the others still count as a voter could hand out votes it already gave
// and lose entries it acknowledged.
const rebuildMarker = "REBUILDING"

// Rebuild repairs a member whose DataDir is damaged (Open failed with an
// error wrapping ErrCorrupt), or lost, by rebuilding it from the rest of the
// cluster. It is never done silently: only this call does it.
//
// Rebuild moves everything in cfg.DataDir aside, into a directory named
// damaged-<time> inside it (kept for inspection; delete it when done), then
// joins the gossip pool through cfg.Join and asks the leader to remove
// cfg.NodeID from the Raft configuration. The leader does so only when the
// remaining voters keep a quorum (the same rules as Leave). Rebuild returns
// nil once the member is out of the configuration. Then Open with the same
// Config starts an empty member that the leader adds back as a non-voter,
// sends the data to (as a snapshot, or its log), and promotes to voter once
// it has caught up, like any new member.
//
// The member must be stopped, and cfg must be the Config it runs with;
// cfg.Join must name at least one other member. Rebuild needs a leader
// elected without this member: it cannot rebuild the last voter, or a
// member whose loss leaves no quorum (restore from a Backup then, see
// Restore). If ctx ends first it returns the error; call it again with the
// same Config to go on. Until a Rebuild has returned nil, Open refuses the
// DataDir.
func Rebuild(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if cfg.InMemory {
		return fmt.Errorf("%w: Rebuild needs a DataDir, not InMemory", ErrInvalidConfig)
	}
	if len(cfg.Join) == 0 {
		return fmt.Errorf("%w: Rebuild needs Join: the data comes from the other members", ErrInvalidConfig)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = logging.Discard()
	}
	logger = logger.With("node", cfg.NodeID)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("kv: data dir: %w", err)
	}
	cluster, err := beginRebuild(cfg.DataDir, logger)
	if err != nil {
		return err
	}

	// A transport for the RPC to the leader. Binding BindAddr also checks
	// that the member is not running.
	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("kv: rebuild: listen on %s (is the member still running?): %w", cfg.BindAddr, err)
	}
	serverTLS, clientTLS := tlsConfigs(cfg.TLS)
	mux := transport.NewMux(transport.MuxConfig{Listener: ln, Dial: cfg.Dial, Logger: logger, ServerTLS: serverTLS, ClientTLS: clientTLS})
	defer mux.Close()
	pool := transport.NewPool(mux, 0, logger)
	pool.SetCluster(func() string { return cluster })
	defer pool.Close()

	// In gossip, the member says it is leaving: the leader removes only
	// members that say so.
	meta := discovery.Meta{
		ID:           cfg.NodeID,
		Addr:         mux.Addr().String(),
		Bootstrapped: true,
		Leaving:      true,
		ClusterID:    cluster,
		Nonce:        randomHex(8),
		Started:      time.Now().UnixNano(),
	}
	keyring, err := gossipKeyring(cfg.GossipKey)
	if err != nil {
		return err
	}
	gossip, err := discovery.Start(discovery.Config{
		Keyring:       keyring,
		Meta:          meta,
		BindAddr:      cfg.GossipBindAddr,
		AdvertiseAddr: cfg.GossipAdvertiseAddr,
		Join:          cfg.Join,
		Logger:        logger,
	})
	if errors.Is(err, discovery.ErrWrongCluster) {
		return fmt.Errorf("%w: %v", ErrWrongCluster, err)
	}
	if err != nil {
		return fmt.Errorf("kv: rebuild: %w", err)
	}
	defer gossip.Shutdown()

	logger.Warn("rebuild: asking the leader to remove this member so that it can rejoin empty")
	var last error
	for b := newBackoff(); ; {
		if len(gossip.Members()) <= 1 {
			gossip.Join(cfg.Join)
		}
		done, err := askRemoval(ctx, gossip, pool, cfg.NodeID)
		if done {
			break
		}
		if err != nil {
			last = err
		}
		if err := b.wait(ctx, nil); err != nil {
			if last != nil {
				return fmt.Errorf("kv: rebuild: %w (last error: %v)", err, last)
			}
			return fmt.Errorf("kv: rebuild: %w", err)
		}
	}
	if err := gossip.Leave(meta, 5*time.Second); err != nil {
		logger.Warn("rebuild: gossip leave failed", "error", err)
	}
	if err := os.Remove(filepath.Join(cfg.DataDir, rebuildMarker)); err != nil {
		return fmt.Errorf("kv: rebuild: %w", err)
	}
	if err := syncDir(cfg.DataDir); err != nil {
		return fmt.Errorf("kv: rebuild: %w", err)
	}
	logger.Warn("rebuild: member removed from the configuration; Open it to rejoin and receive the data")
	return nil
}

// askRemoval asks each alive member in turn to remove id; only the leader
// does it, the others answer "not the leader". done is true once the leader
// has removed id (or id was not in the configuration).
func askRemoval(ctx context.Context, gossip *discovery.Pool, pool *transport.Pool, id string) (done bool, err error) {
	var last error = ErrNoLeader
	self := gossip.Name()
	for _, m := range gossip.Members() {
		if m.Name == self || m.Status != discovery.StatusAlive || m.Addr == "" || m.Leaving {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := pool.Call(cctx, m.Addr, methodRemove, []byte(id))
		cancel()
		if err == nil {
			return true, nil
		}
		err, _ = fromWire(err)
		if !errors.Is(err, errNotLeader) {
			last = fmt.Errorf("%s: %w", m.ID, err)
		}
	}
	return false, last
}

// beginRebuild writes the marker (with the cluster ID, when it is known) and
// moves the damaged state aside. Run again after an interrupted Rebuild, it
// keeps the recorded cluster ID.
func beginRebuild(dir string, logger interface{ Warn(string, ...any) }) (cluster string, err error) {
	marker := filepath.Join(dir, rebuildMarker)
	if b, err := os.ReadFile(marker); err == nil {
		cluster = string(b)
	} else {
		cluster = readClusterID(filepath.Join(dir, "raft.db"))
		if err := writeFileSync(marker, []byte(cluster)); err != nil {
			return "", fmt.Errorf("kv: rebuild: %w", err)
		}
	}
	aside := filepath.Join(dir, "damaged-"+time.Now().UTC().Format("20060102T150405.000000000Z"))
	moved := 0
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("kv: rebuild: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if name == rebuildMarker || len(name) > 8 && name[:8] == "damaged-" {
			continue
		}
		if moved == 0 {
			if err := os.Mkdir(aside, 0o700); err != nil {
				return "", fmt.Errorf("kv: rebuild: %w", err)
			}
		}
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(aside, name)); err != nil {
			return "", fmt.Errorf("kv: rebuild: move %s aside: %w", name, err)
		}
		moved++
	}
	if moved > 0 {
		logger.Warn("rebuild: moved the old state aside", "dir", aside, "entries", moved)
	}
	return cluster, syncDir(dir)
}

// readClusterID reads the cluster ID from a (possibly damaged) Raft store;
// "" when it cannot.
func readClusterID(path string) string {
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	// Not compacted at open: the file is moved aside as it is.
	ls, err := storage.OpenLogStore(path, storage.LogStoreOptions{NoSync: true, AutoCompactMinSize: -1})
	if err != nil {
		return ""
	}
	defer ls.Close()
	id, err := ls.Get(keyClusterID)
	if err != nil {
		return ""
	}
	return string(id)
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
