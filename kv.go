package kv

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/discovery"
	"github.com/cohortkv/kv/internal/hooks"
	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/metrics"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// Store is one instance of a replicated key-value store. It is safe for
// concurrent use by any number of goroutines. Open starts it; Close stops it.
type Store struct {
	cfg    Config
	logger *slog.Logger

	mux    *transport.Mux
	rpc    *transport.Server
	pool   *transport.Pool
	gossip *discovery.Pool
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	fsm    *fsm
	eng    storage.Engine
	logs   *storage.LogStore // nil when InMemory
	// sizes tracks the newest log entries' sizes, and bounded is raft
	// once it runs (trailing.go).
	sizes   *logSizes
	bounded atomic.Pointer[raft.Raft]
	// reloadMu serializes changes to raft's reloadable configuration
	// (read, modify, ReloadConfig).
	reloadMu sync.Mutex
	stable   raft.StableStore
	snaps    raft.SnapshotStore
	rlog     raft.LogStore // raft's log as reads look into it (the cache over logs; never halts the member)

	// Membership: the cluster ID (empty until bootstrapped or adopted), this
	// start's nonce, and the leader's view of member health.
	clusterMu sync.Mutex
	clusterID string
	nonce     string
	started   int64 // this start's time, orders incarnations in gossip
	leaving   atomic.Bool
	health    *health

	// readyTerm is the term in which this leader has committed an entry of
	// its own, so that its commit index is safe to serve reads from.
	readyTerm atomic.Uint64
	pipe      *pipeline

	// leaderChanged is closed and replaced whenever this member's idea of
	// the leader changes, so that calls waiting on a former leader give up.
	leaderMu      sync.Mutex
	leaderChanged chan struct{}

	verifyMu      sync.Mutex
	verifyNext    *verifyRound
	verifyRunning bool

	// A follower's linearizable reads share read index requests to the
	// leader (readindex.go): readNext is the round that reads join, sent
	// by the one runner goroutine after the round in flight.
	readMu      sync.Mutex
	readNext    *readRound
	readRunning bool
	readRPCs    atomic.Uint64 // requests sent (tests count them)
	readJoins   atomic.Uint64 // reads that joined a round (tests wait on it)
	// readIndexHook, set by tests, runs on the leader once it has taken
	// the commit index of a read index request.
	readIndexHook atomic.Pointer[func()]

	// Lifecycle: ctx ends when Close begins; every goroutine is started by
	// goFunc (or goRaft, for those that wait on raft futures) and awaited by
	// Close. raftStop closes just before raft shuts down: raft leaves
	// futures unanswered at shutdown, so nothing may wait on one after it.
	ctx       context.Context
	cancel    context.CancelFunc
	raftStop  chan struct{}
	lifeMu    sync.Mutex
	closing   bool
	wg        sync.WaitGroup
	rwg       sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	keyring   *memberlist.Keyring // nil without Config.GossipKey
	promise   promises            // this member's bootstrap promise
	// abrupt makes shutdown behave like a crash (kvtest's Kill).
	abrupt   atomic.Bool
	halter   *halter
	raftLogs []hclog.Logger // silenced at a halt
	// While the disk is full: when a write last tried to make room.
	probeMu   sync.Mutex
	lastProbe time.Time

	// Restore: one at a time; restoreOwn is the ID of this instance's
	// restore in progress. restoreHook and restoreChunk are set by tests
	// before Restore runs.
	restoreBusy atomic.Bool
	// compactBusy: one Compact (orchestration) at a time on this member.
	compactBusy  atomic.Bool
	restoreOwn   atomic.Pointer[restoreID]
	restoreHook  func(step string, n int)
	restoreChunk int
	// forwardHook, set by tests, sees the commands of each forwarded
	// batch this member takes in, before it queues them; it may block.
	forwardHook atomic.Pointer[func([]command)]

	met *storeMetrics // nil without Config.Metrics
}

// boltOptions are the options of every data file; tests change them
// (export_test.go) to make bbolt remap a small file often.
var boltOptions storage.BoltOptions

// logStoreOptions are the options of every raft.db; tests change them
// (export_test.go) to compact small files at open.
var logStoreOptions storage.LogStoreOptions

func init() {
	hooks.Crash = func(store any) error {
		s, ok := store.(*Store)
		if !ok {
			return fmt.Errorf("kv: crash of a %T", store)
		}
		s.abrupt.Store(true)
		return s.Close()
	}
	hooks.LeaseExists = func(store any, id int64) (bool, error) {
		s, ok := store.(*Store)
		if !ok {
			return false, fmt.Errorf("kv: lease lookup on a %T", store)
		}
		return s.leaseExists(id)
	}
}

// Open starts an instance: it opens DataDir, listens on BindAddr, joins the
// gossip pool through Join and takes part in Raft. It returns without
// waiting for a leader (see WaitForLeader). On error nothing is left running.
func Open(cfg Config) (*Store, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = logging.Discard()
	}
	logger = logger.With("node", cfg.NodeID)
	warnInsecure(cfg, logger)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{cfg: cfg, logger: logger, ctx: ctx, cancel: cancel, raftStop: make(chan struct{}), leaderChanged: make(chan struct{}), halter: newHalter()}
	s.pipe = newPipeline(s)
	s.health = newHealth()
	s.met = newMetrics(s)
	if err := s.open(); err != nil {
		s.shutdown()
		return nil, err
	}
	return s, nil
}

func (s *Store) open() error {
	cfg := s.cfg
	// Storage.
	var (
		logStore    raft.LogStore
		stableStore raft.StableStore
	)
	if cfg.InMemory {
		s.eng = storage.NewMemory()
		mem := raft.NewInmemStore()
		logStore, stableStore = mem, mem
		s.snaps = raft.NewInmemSnapshotStore()
	} else {
		if err := storage.MkdirAllSynced(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("kv: data dir: %w", err)
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, rebuildMarker)); err == nil {
			return fmt.Errorf("kv: DataDir %s holds an unfinished Rebuild: run Rebuild again with this Config before Open", cfg.DataDir)
		}
		bopts := boltOptions
		bopts.Logger = s.logger
		bopts.ObserveCommit = s.met.observer(metrics.DataCommit)
		eng, err := storage.OpenBolt(filepath.Join(cfg.DataDir, "data.db"), bopts)
		if err != nil {
			return err
		}
		s.eng = eng
		lopts := logStoreOptions
		lopts.Logger = s.logger
		lopts.ObserveAppend = s.met.observer(metrics.LogFsync)
		s.logs, err = storage.OpenLogStore(filepath.Join(cfg.DataDir, "raft.db"), lopts)
		if err != nil {
			return err
		}
		cache, err := newCachedLog(logCacheEntries, s.logs)
		if err != nil {
			return err
		}
		logStore, stableStore = cache, s.logs
		// The data file's lock makes this DataDir ours: snapshots left
		// half-written by a crash can go (raft skips but never removes them).
		s.removePartialSnapshots()
		s.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, logging.HCLog(s.logger, "snapshots"))
		if err != nil {
			return fmt.Errorf("kv: snapshot store: %w", err)
		}
		if err := s.catchUpFromSnapshot(); err != nil {
			return err
		}
		if err := s.verifyLogTail(); err != nil {
			return err
		}
		// A data file of a version before the quota gets its size.
		if err := migrateSpace(s.eng); err != nil {
			return fmt.Errorf("kv: computing the size of the data: %w", err)
		}
	}
	s.fsm = newFSM(s.eng, s.logger, s.ctx.Done(), s.halt, s.cfg.WatchHistory)
	if !cfg.InMemory {
		// Stages restores in DataDir, and removes what an interrupted one
		// left there.
		s.fsm.rs = newRestorer(cfg.DataDir, s.eng, s.logger)
	}
	s.fsm.snapBytes = cfg.SnapshotBytes
	s.fsm.beforeSnapshot = s.boundTrailing
	s.sizes = newLogSizes(cfg.TrailingLogs)
	if err := s.primeSizes(); err != nil {
		return err
	}

	// Transport.
	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("kv: listen on %s: %w", cfg.BindAddr, err)
	}
	var adv net.Addr = ln.Addr()
	if cfg.AdvertiseAddr != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("%w: AdvertiseAddr: %v", ErrInvalidConfig, err)
		}
		adv = a
	}
	serverTLS, clientTLS := tlsConfigs(cfg.TLS)
	s.mux = transport.NewMux(transport.MuxConfig{Listener: ln, Advertise: adv, Dial: cfg.Dial, Logger: s.logger, ServerTLS: serverTLS, ClientTLS: clientTLS})
	s.rpc = transport.NewServer(transport.ServerConfig{Handler: s.handleRPC, Logger: s.logger, Cluster: s.cluster})
	s.mux.Handle(transport.ProtoRPC, s.rpc.ServeConn)
	s.pool = transport.NewPool(s.mux, 0, s.logger)
	s.pool.SetCluster(s.cluster)

	// Raft.
	hasState, err := raft.HasExistingState(logStore, stableStore, s.snaps)
	if err != nil {
		return fmt.Errorf("kv: read raft state: %w", err)
	}
	s.stable = stableStore
	if id, err := stableStore.Get(keyClusterID); err == nil {
		s.clusterID = string(id)
	}
	s.nonce = randomHex(8)
	s.started = time.Now().UnixNano()
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:                s.mux.Raft(),
		MaxPool:               3,
		Timeout:               10 * time.Second,
		Logger:                s.raftLogger("raft-net"),
		ServerAddressProvider: addressBook{s},
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = s.raftLogger("raft")
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.BatchApplyCh = true
	// Followers learn the commit index within this, which bounds how long a
	// linearizable read on a follower waits after a write.
	rc.CommitTimeout = 20 * time.Millisecond
	rc.MaxAppendEntries = raftMaxAppendEntries
	// The data file survives restarts and knows its applied index, so raft
	// need not replay the snapshot into it (catchUpFromSnapshot covered the
	// case where the file is behind the snapshot).
	rc.NoSnapshotRestoreOnStart = !cfg.InMemory
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	// Gossip, before Raft: Raft resolves peer addresses through it.
	gossipTransport, err := s.gossipTransport()
	if err != nil {
		return err
	}
	if s.keyring, err = gossipKeyring(cfg.GossipKey); err != nil {
		return err
	}
	s.gossip, err = discovery.Start(discovery.Config{
		Meta:          s.meta(hasState),
		BindAddr:      cfg.GossipBindAddr,
		AdvertiseAddr: cfg.GossipAdvertiseAddr,
		Join:          cfg.Join,
		Logger:        s.logger,
		Transport:     gossipTransport,
		Keyring:       s.keyring,
	})
	if err != nil && gossipTransport != nil {
		gossipTransport.Shutdown()
	}
	if errors.Is(err, discovery.ErrWrongCluster) {
		return fmt.Errorf("%w: %v", ErrWrongCluster, err)
	}
	if err != nil {
		return err
	}
	if err := s.loadPromise(); err != nil {
		return err
	}
	if !hasState {
		if err := s.checkNotLostVoter(); err != nil {
			return err
		}
	}
	gate := &voteGate{NetworkTransport: s.trans, ch: make(chan raft.RPC)}
	rs := &raftStorage{logs: logStore, stable: stableStore, halt: s.halt, halted: func() bool { return s.halter.halted() != nil }, sizes: s.sizes}
	s.rlog = logStore
	var rfsm raft.FSM = s.fsm
	if s.met != nil {
		rfsm = &timedFSM{fsm: s.fsm, met: s.met}
	}
	if s.logs != nil {
		rs.headers = s.logs.GetLogHeader
		rs.starting.Store(true)
	}
	s.raft, err = raft.NewRaft(rc, rfsm, rs, rs, s.snaps, gate)
	rs.starting.Store(false)
	if err != nil {
		return fmt.Errorf("kv: start raft: %w", err)
	}
	s.bounded.Store(s.raft)
	s.goFunc(func() { gate.run(s, s.raftStop) })
	if err := s.halter.halted(); err != nil {
		return err
	}

	s.logger.Info("started", "addr", s.Addr(), "gossip", s.GossipAddr(), "existing_state", hasState, "in_memory", cfg.InMemory)

	if !hasState {
		s.goRaft(s.bootstrapLoop)
	} else {
		s.electAloneAtOnce()
	}
	s.goRaft(s.pipe.run)
	obs := make(chan raft.Observation, 64)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	s.raft.RegisterObserver(observer)
	s.goFunc(func() {
		defer s.raft.DeregisterObserver(observer)
		var leader raft.ServerID // as last observed
		for {
			select {
			case o := <-obs:
				lo := o.Data.(raft.LeaderObservation)
				s.logLeader(lo)
				s.met.leaderSeen(leader, lo.LeaderID)
				leader = lo.LeaderID
				s.leaderMu.Lock()
				close(s.leaderChanged)
				s.leaderChanged = make(chan struct{})
				s.leaderMu.Unlock()
			case <-s.ctx.Done():
				return
			}
		}
	})
	// Serve the port only now: RPC handlers use raft and the write pipeline.
	s.goFunc(func() {
		if err := s.mux.Serve(); err != nil {
			s.logger.Error("transport stopped", "error", err)
		}
	})
	s.goFunc(s.joinLoop)
	s.goRaft(s.leaderLoop)
	s.goFunc(s.expireLoop)
	s.goRaft(s.snapshotLoop)
	return s.registerMetrics()
}

// gossipTransport is nil (memberlist's own) unless Config.WrapGossipTransport
// is set.
func (s *Store) gossipTransport() (memberlist.Transport, error) {
	if s.cfg.WrapGossipTransport == nil {
		return nil, nil
	}
	host, ps, err := net.SplitHostPort(s.cfg.GossipBindAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: GossipBindAddr: %v", ErrInvalidConfig, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return nil, fmt.Errorf("%w: GossipBindAddr port %q", ErrInvalidConfig, ps)
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host},
		BindPort:  port,
		Logger:    logging.StdLog(s.logger, "memberlist"),
	})
	if err != nil {
		return nil, fmt.Errorf("kv: gossip transport on %s: %w", s.cfg.GossipBindAddr, err)
	}
	return s.cfg.WrapGossipTransport(nt), nil
}

func (s *Store) meta(bootstrapped bool) discovery.Meta {
	return discovery.Meta{
		ID:           s.cfg.NodeID,
		Addr:         s.mux.Addr().String(),
		Expect:       s.cfg.BootstrapExpect,
		Bootstrapped: bootstrapped,
		Leaving:      s.leaving.Load(),
		ClusterID:    s.cluster(),
		Nonce:        s.nonce,
		Started:      s.started,
	}
}

// keyClusterID is where the stable store keeps the cluster ID.
var keyClusterID = []byte("cohort_cluster_id")

func (s *Store) cluster() string {
	s.clusterMu.Lock()
	defer s.clusterMu.Unlock()
	return s.clusterID
}

// setCluster records the cluster this instance belongs to, durably.
func (s *Store) setCluster(id string) error {
	s.clusterMu.Lock()
	defer s.clusterMu.Unlock()
	if s.clusterID == id {
		return nil
	}
	if err := s.stable.Set(keyClusterID, []byte(id)); err != nil {
		return fmt.Errorf("kv: store cluster ID: %w", err)
	}
	s.clusterID = id
	s.logger.Info("cluster ID recorded", "cluster", id)
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// catchUpFromSnapshot restores the newest snapshot into the data file when
// the file is behind it (a crash during a snapshot install, or a lost data
// file), before raft starts without restoring snapshots itself.
func (s *Store) catchUpFromSnapshot() error {
	metas, err := s.snaps.List()
	if err != nil {
		return fmt.Errorf("kv: list snapshots: %w", err)
	}
	if len(metas) == 0 || metas[0].Index <= s.eng.AppliedIndex() {
		return nil
	}
	// Raft takes the newest snapshot's index as applied without reading it
	// (NoSnapshotRestoreOnStart), so only that snapshot can fill the gap.
	m := metas[0]
	_, rc, err := s.snaps.Open(m.ID)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		// raft's snapshot store checks the file's CRC-64 as it opens it.
		err = fmt.Errorf("%w snapshot %s: %v", storage.ErrCorrupt, filepath.Join(s.cfg.DataDir, "snapshots", m.ID), err)
	}
	if err == nil {
		// The snapshot's index counts raft's no-op and barrier entries,
		// which the data file never sees: when the data it holds is no
		// newer than the file, the file is current, and only its index
		// moves up to the snapshot's.
		br := bufio.NewReaderSize(rc, 64<<10)
		var hdr []byte
		var dataIndex uint64
		if hdr, err = br.Peek(storage.SnapshotHeaderSize); err == nil {
			dataIndex, err = storage.SnapshotIndex(hdr)
		}
		switch {
		case err != nil:
			err = fmt.Errorf("%w snapshot %s: %v", storage.ErrCorrupt, filepath.Join(s.cfg.DataDir, "snapshots", m.ID), err)
		case dataIndex <= s.eng.AppliedIndex():
			err = s.eng.Update(m.Index, func(storage.WriteTx) error { return nil })
			if err == nil {
				rc.Close()
				return nil
			}
		default:
			err = s.eng.Restore(br)
		}
		rc.Close()
	}
	if err != nil {
		return fmt.Errorf("kv: data file is at index %d, behind snapshot %s (index %d), which does not restore: %w", s.eng.AppliedIndex(), m.ID, m.Index, err)
	}
	s.logger.Info("data file restored from snapshot", "snapshot", m.ID, "index", m.Index)
	return nil
}

// snapshotLoop takes a snapshot when the state machine has applied
// Config.SnapshotBytes of log since the last one (raft's own trigger counts
// entries only).
func (s *Store) snapshotLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.fsm.wantSnap:
		}
		if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
			s.logger.Warn("snapshot by log size failed", "error", err)
		} else if err == nil {
			s.logger.Info("snapshot taken: log size since the last one reached SnapshotBytes", "bytes", s.cfg.SnapshotBytes)
		}
	}
}

// removePartialSnapshots deletes snapshots/*.tmp: snapshots that a crash
// interrupted before raft completed them.
func (s *Store) removePartialSnapshots() {
	tmps, _ := filepath.Glob(filepath.Join(s.cfg.DataDir, "snapshots", "*.tmp"))
	for _, dir := range tmps {
		if err := os.RemoveAll(dir); err != nil {
			s.logger.Warn("removing an unfinished snapshot failed", "dir", dir, "error", err)
			continue
		}
		s.logger.Info("removed an unfinished snapshot left by a crash", "dir", dir)
	}
}

// raftMaxAppendEntries is how many entries go at most into one append, one
// AppendEntries RPC and one batch handed to the state machine; with entries
// of up to maxBatchBytes, that bounds each to 16 MiB. Group commit puts
// many writes in one entry and keeps one batch in flight, so more would
// not batch more.
const raftMaxAppendEntries = 16

// verifyLogTail checks the log entries raft reads as it starts (those after
// the newest snapshot): raft panics on one it cannot read, and a damaged
// entry must fail Open with an error naming the file instead.
func (s *Store) verifyLogTail() error {
	var from uint64 = 1
	metas, err := s.snaps.List()
	if err != nil {
		return fmt.Errorf("kv: list snapshots: %w", err)
	}
	if len(metas) > 0 {
		from = metas[0].Index + 1
	}
	return s.logs.Verify(from)
}

// goFunc runs f in a goroutine that Close waits for. It returns false, and
// runs nothing, once Close has begun.
func (s *Store) goFunc(f func()) bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// goRaft is goFunc for goroutines that wait on raft futures: Close waits for
// them before it shuts raft down.
func (s *Store) goRaft(f func()) bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	s.rwg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.rwg.Done()
		f()
	}()
	return true
}

func (s *Store) isClosed() bool {
	select {
	case <-s.ctx.Done():
		return true
	default:
		return false
	}
}

// Close stops the instance gracefully: new calls fail with ErrClosed; a
// leader hands its leadership to a healthy follower first, so that the
// others need not wait out an election timeout; then Raft, gossip (without
// leaving: the instance stays a member and is expected back), the transport
// and the files are closed, and every goroutine has ended when Close
// returns. Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.shutdown() })
	return s.closeErr
}

// shutdown runs in this order: stop accepting calls; unregister the
// metrics; hand off leadership; answer forwarded calls that still arrive
// with "closed" until they stop, then close the RPC server; wait for the
// goroutines that wait on raft futures; stop raft; stop gossip; close the
// transport; wait for the other goroutines; close the files.
func (s *Store) shutdown() error {
	s.lifeMu.Lock()
	s.closing = true
	s.lifeMu.Unlock()
	s.cancel()
	// A scrape in progress may still read the Store: metricsState is safe
	// at every step below.
	s.met.unregister()

	var errs []error
	if s.abrupt.Load() {
		// As if the process died: cut every connection and go silent in
		// gossip at once; no hand-off, no draining.
		s.logger.Warn("crashing (abrupt stop)")
		if s.mux != nil {
			s.mux.Close()
		}
		if s.rpc != nil {
			s.rpc.Close()
		}
		if s.pool != nil {
			s.pool.Close()
		}
		if s.gossip != nil {
			s.gossip.Shutdown()
		}
	}
	wasLeader := false
	if s.raft != nil && !s.abrupt.Load() {
		wasLeader = s.raft.State() == raft.Leader
		if wasLeader && s.hasOtherVoter() {
			if err := s.raft.LeadershipTransfer().Error(); err != nil {
				s.logger.Warn("leadership transfer on close failed", "error", err)
			} else {
				s.logger.Info("leadership handed over on close")
			}
		}
	}
	if s.rpc != nil {
		if wasLeader {
			// Followers still forwarding to us get a retryable "closed"
			// until they have noticed the new leader.
			s.rpc.Drain(100*time.Millisecond, 2*time.Second)
		}
		s.rpc.Close()
	}
	// Calls waiting on raft futures end once raft answers them. A leader
	// that keeps its leadership but can no longer commit answers them only
	// as it stops: after a while, raft stops under them.
	if !waitTimeout(&s.rwg, closeWait) {
		s.logger.Warn("calls still wait on Raft; stopping it under them", "after", closeWait)
	}
	close(s.raftStop)
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
	}
	if !waitTimeout(&s.rwg, closeWait) {
		s.logger.Error("calls still wait on Raft after it stopped", "after", closeWait)
	}
	if s.gossip != nil {
		if err := s.gossip.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("gossip shutdown: %w", err))
		}
	}
	if s.trans != nil {
		s.trans.Close()
		// Raft's connection handlers outlive its Shutdown for a moment and
		// may still write its stable store: let them end before the stores
		// close.
		if !s.mux.Raft().WaitInbound(10 * time.Second) {
			s.logger.Warn("raft connection handlers still running after 10 s")
		}
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.mux != nil {
		s.mux.Close()
	}
	s.wg.Wait()
	if s.fsm != nil {
		s.fsm.rs.close()
	}
	if s.eng != nil {
		if err := s.eng.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.logs != nil {
		if err := s.logs.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.raft != nil {
		s.logger.Info("closed")
	}
	return errors.Join(errs...)
}

// closeWait bounds how long Close waits for calls on Raft at each step.
const closeWait = 10 * time.Second

// waitTimeout waits for wg for at most d, and says whether it is done. (A
// goroutine waits on for it after a timeout.)
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// logLeader logs a change of leader as this member sees it; the leader
// itself logs "became leader" from its leader loop.
func (s *Store) logLeader(o raft.LeaderObservation) {
	switch {
	case o.LeaderID == "":
		if !s.isClosed() {
			s.logger.Info("no leader known; waiting for an election", "term", s.raft.CurrentTerm())
		}
	case string(o.LeaderID) != s.cfg.NodeID:
		s.logger.Info("following leader", "leader", string(o.LeaderID), "leader_addr", string(o.LeaderAddr), "term", s.raft.CurrentTerm())
	}
}

// leaderChange returns a channel closed at the next change of leader.
func (s *Store) leaderChange() <-chan struct{} {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	return s.leaderChanged
}

func (s *Store) hasOtherVoter() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && srv.ID != raft.ServerID(s.cfg.NodeID) {
			return true
		}
	}
	return false
}

// Addr returns the transport address peers dial (the bound one after port
// 0, or AdvertiseAddr).
func (s *Store) Addr() string { return s.mux.Addr().String() }

// GossipAddr returns the gossip address actually bound (after port 0).
func (s *Store) GossipAddr() string { return s.gossip.Addr() }

// WaitForLeader blocks until this instance knows a leader, ctx ends
// (ctx.Err()), or the Store closes (ErrClosed).
func (s *Store) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.isClosed() {
			return ErrClosed
		}
		if _, id := s.raft.LeaderWithID(); id != "" {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("kv: wait for leader: %w", ctx.Err())
		case <-s.ctx.Done():
			return ErrClosed
		}
	}
}

// addressBook resolves a Raft server ID to its current transport address
// through gossip, so that a member restarted on a new port is reached before
// the configuration records its new address.
type addressBook struct{ s *Store }

func (a addressBook) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a.s.gossip != nil {
		// Whatever gossip last heard is the best guess, even from a member
		// it considers dead: after a partition members can hold each other
		// dead while they are fine, and the address in the Raft
		// configuration may be older still.
		if m, ok := a.s.gossip.Lookup(string(id)); ok && m.Addr != "" {
			return raft.ServerAddress(m.Addr), nil
		}
	}
	return "", fmt.Errorf("kv: no gossip address for %s", id)
}
