package kv

import (
	"crypto/tls"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"context"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Defaults for Config fields left at their zero value. Each is what the
// field of the same name gets; the field's doc says what it does and when
// to change it.
const (
	// DefaultBindAddr is used when Config.BindAddr is empty: loopback, a free
	// port. Fine for tests and a single process; a cluster of machines needs
	// an address the others can reach.
	DefaultBindAddr = "127.0.0.1:0"
	// DefaultGossipBindAddr is used when Config.GossipBindAddr is empty:
	// loopback, a free port.
	DefaultGossipBindAddr = "127.0.0.1:0"
	// DefaultMaxKeySize is the longest key accepted, in bytes: 4 KiB.
	DefaultMaxKeySize = 4 << 10
	// DefaultMaxValueSize is the longest value accepted, in bytes: 1 MiB.
	DefaultMaxValueSize = 1 << 20
	// DefaultMaxTxnOps is how many conditions and operations a Txn may
	// hold in all.
	DefaultMaxTxnOps = 128
	// DefaultMaxVoters is how many members vote at most: 5, which tolerates
	// two failures. Members beyond it replicate as non-voters, and so does
	// a member whose promotion would make the number of voters even.
	DefaultMaxVoters = 5
	// DefaultHeartbeatTimeout is how long a follower goes without hearing
	// from the leader before it starts an election: 1 s (raft randomizes it
	// between 1x and 2x).
	DefaultHeartbeatTimeout = time.Second
	// DefaultElectionTimeout is how long a candidate waits for votes before
	// it starts another election: 1 s (randomized between 1x and 2x).
	DefaultElectionTimeout = time.Second
	// DefaultLeaderLeaseTimeout is how long a leader stays leader without
	// hearing from a quorum: 500 ms.
	DefaultLeaderLeaseTimeout = 500 * time.Millisecond
	// DefaultSnapshotThreshold is how many log entries past the last snapshot
	// trigger a new one: 8192.
	DefaultSnapshotThreshold = 8192
	// DefaultSnapshotBytes is how many bytes of log entries applied since the
	// last snapshot trigger a new one, whatever their count: 128 MiB. Group
	// commit packs up to 1 MiB of writes into one entry, so a count alone
	// would let a bulk load leave the whole data set in the log for a
	// restart to read.
	DefaultSnapshotBytes = 128 << 20
	// DefaultSnapshotInterval is how often Raft checks SnapshotThreshold:
	// every 2 minutes (randomized between 1x and 2x).
	DefaultSnapshotInterval = 2 * time.Minute
	// DefaultTrailingLogs is how many entries a snapshot leaves in the log,
	// so that a slightly lagging follower catches up without a snapshot:
	// 10240.
	DefaultTrailingLogs = 10240
	// DefaultDeadMemberTimeout is how long gossip must have reported a member
	// dead before the leader removes it from the Raft configuration: 1
	// minute.
	DefaultDeadMemberTimeout = time.Minute
	// DefaultStabilizationTime is how long a non-voter must be alive and
	// caught up before it is promoted to voter: 10 s.
	DefaultStabilizationTime = 10 * time.Second
	// DefaultAsyncWriteTimeout bounds how long a SetAsync or DeleteAsync
	// keeps trying: 30 s.
	DefaultAsyncWriteTimeout = 30 * time.Second
	// DefaultWatchHistoryRevisions and DefaultWatchHistoryBytes are what
	// the fields of Config.WatchHistory get: the last 100000 revisions
	// that changed a key, within 64 MiB of changes. With a write pattern
	// of a few hundred writes a second, that is minutes of history: enough
	// for a watcher to reconnect, or a member to restart, and resume.
	DefaultWatchHistoryRevisions = 100000
	DefaultWatchHistoryBytes     = 64 << 20
	// DefaultQuotaBytes is the space quota a leader sets for the cluster
	// when Config.QuotaBytes is 0: 2 GiB of data, as etcd's default.
	DefaultQuotaBytes = 2 << 30
	// DefaultTrailingBytes is about how many bytes of entries a snapshot
	// leaves in the log when Config.TrailingBytes is 0: 64 MiB.
	DefaultTrailingBytes = 64 << 20
)

// WatchHistory bounds the change log Watch reads from (Config.WatchHistory).
// The oldest revisions are dropped while either bound is passed; a
// negative field keeps no bound of that kind.
type WatchHistory struct {
	// Revisions is how many revisions that changed a key are kept at most.
	// Default DefaultWatchHistoryRevisions.
	Revisions int
	// Bytes is how many bytes of changes (keys and values) are kept at
	// most. Default DefaultWatchHistoryBytes.
	Bytes int64
}

// Limits on the configurable sizes, so that a command always fits one frame
// of the transport.
const (
	maxMaxKeySize   = 32 << 10 // bbolt's limit on a key
	maxMaxValueSize = 8 << 20
	maxMaxTxnOps    = maxBatchOps
)

// Config configures a Store. The zero value of every field but NodeID and
// DataDir (or InMemory) is a working default. Open copies it.
type Config struct {
	// NodeID names this instance in the cluster. Required. Keep it stable
	// across restarts of the same DataDir: the Raft configuration and peers
	// know the member by it (its addresses may change). Two instances with
	// the same NodeID in one cluster are a misconfiguration.
	NodeID string
	// DataDir holds the Raft log, snapshots and the data file (see the
	// package documentation, # Durability). Required unless InMemory. Put it
	// on a local disk with a working fsync; one DataDir per instance.
	DataDir string
	// InMemory keeps everything in memory (the Raft log, snapshots and the
	// data); nothing survives Close. For tests and caches.
	InMemory bool

	// BindAddr is the "host:port" of the TCP port that carries Raft and
	// member-to-member RPC. Port 0 picks a free port (see Store.Addr).
	// Default DefaultBindAddr (loopback): set an address the other members
	// can reach, or 0.0.0.0 with AdvertiseAddr.
	BindAddr string
	// AdvertiseAddr is the "host:port" peers dial to reach BindAddr, when
	// BindAddr is not reachable as is (0.0.0.0, a container, NAT). A host
	// name is resolved once, at Open. Default: the bound address.
	AdvertiseAddr string
	// GossipBindAddr is the "host:port" for memberlist gossip (TCP and UDP,
	// the same port). Port 0 picks a free port (see Store.GossipAddr).
	// Default DefaultGossipBindAddr (loopback).
	GossipBindAddr string
	// GossipAdvertiseAddr is the "ip:port" other members gossip to, when
	// GossipBindAddr is not reachable as is; memberlist needs an IP address
	// here, not a host name. Default: the bound address (with 0.0.0.0,
	// memberlist picks a private IP of this host).
	GossipAdvertiseAddr string
	// Join lists gossip addresses ("host:port"; a DNS name that resolves to
	// several members is fine) of other members. Empty only for an instance
	// that starts a cluster on its own. Open tries them once and returns;
	// while the instance sees no other member it tries again every 2 s, so
	// members may start in any order.
	Join []string
	// BootstrapExpect is how many voters to wait for before the first
	// election. Every member that forms the cluster must set the same value.
	// 0 with an empty Join means 1 (a single-node cluster); 0 with Join means
	// this instance only joins an existing cluster. An instance with Raft
	// state in DataDir never bootstraps again.
	//
	// The cluster forms once exactly BootstrapExpect members expecting it
	// see each other in gossip: the lowest NodeID of the set bootstraps
	// Raft after every member of the set has promised it, and a member
	// promises one set only, ever (the promise is kept in DataDir). So two
	// clusters never form, even while instances see different parts of the
	// pool; a proposer refused retries with a fresh view. Starting more
	// instances expecting N than N forms no cluster.
	BootstrapExpect int
	// Logger receives the Store's logs, and those of Raft and memberlist,
	// with a "node" attribute. nil discards them (only the SECURITY warning
	// of an unprotected cluster goes to slog.Default then): set one in
	// production, since bootstrap progress, membership changes and halts
	// are reported only there.
	Logger *slog.Logger

	// MaxKeySize limits keys, in bytes. Default DefaultMaxKeySize (4 KiB);
	// at most 32 KiB (bbolt's limit). A longer key is refused with
	// ErrKeyTooLarge and nothing is written. Set the same value on every
	// member: a write is checked by the member it is called on and again by
	// the leader.
	MaxKeySize int
	// MaxValueSize limits values, in bytes. Default DefaultMaxValueSize (1
	// MiB); at most 8 MiB. A longer value is refused with ErrValueTooLarge
	// and nothing is written. Every value travels through the Raft log and
	// is written on every member, so large values cost on every write; raise
	// it only for occasional large values. Set the same value on every
	// member.
	MaxValueSize int
	// MaxTxnOps limits the conditions and operations of a Txn, in all.
	// Default DefaultMaxTxnOps; at most 4096. (A Txn's keys and values are
	// also limited to 12 MiB in all, so that it fits in one frame of the
	// transport between members.)
	MaxTxnOps int
	// WatchHistory bounds the change log that Watch reads: the changes
	// of the most recent revisions, kept in the data file (and so in
	// snapshots; a Backup leaves them out). A Watch from an older revision ends with
	// ErrCompacted. Default DefaultWatchHistory. Set the same on every
	// member: the log is trimmed as entries are applied, and a member
	// that catches up from a snapshot gets the leader's.
	WatchHistory WatchHistory
	// MaxVoters is how many members vote at most. Default DefaultMaxVoters
	// (5). The members that bootstrap the cluster all start as voters; a
	// member that joins later is added as a non-voter, and the leader
	// promotes it once it has caught up for StabilizationTime, keeping the
	// number of voters in service (a voter dead for DeadMemberTimeout, or
	// leaving, is not) odd and at most MaxVoters, rounded down to odd: an
	// even number tolerates no more failures than one fewer, and every
	// write would wait for one more member. So 2 healthy members have 1
	// voter, 3 or 4 have 3, and 5 or more have 5; when two non-voters are
	// ready together they are promoted one after the other. Members beyond
	// it replicate and serve reads as non-voters, and take the place of a
	// voter that dies or leaves. Voters are never demoted, so a cluster
	// that bootstrapped with an even BootstrapExpect, or that lost a voter
	// with no non-voter to promote, keeps an even count. More voters
	// tolerate more failures, but every write waits for a majority of them:
	// 3 or 5 suit most clusters. Set the same value on every member:
	// whichever leads applies its own. See docs/operations.md, "How many
	// voters".
	MaxVoters int
	// DeadMemberTimeout is how long gossip must report a member dead before
	// the leader removes it from the Raft configuration (only while the rest
	// keep a healthy quorum, never below 3 voters while 3 members are
	// alive). Default DefaultDeadMemberTimeout (1 minute). A member that
	// comes back after its removal is added again as a new non-voter. Raise
	// it when members may stay down longer (a slow reboot, a rescheduled
	// pod that waits for its volume) and you would rather keep their place;
	// lower it to replace crashed voters with healthy non-voters sooner.
	// A member that calls Leave is removed at once, whatever this says.
	DeadMemberTimeout time.Duration
	// StabilizationTime is how long a new member must be alive in gossip and
	// caught up with the leader before it is promoted to voter. Default
	// DefaultStabilizationTime (10 s). It keeps a member that flaps, or
	// still catches up, from counting towards the quorum. Lower it in tests.
	StabilizationTime time.Duration

	// HeartbeatTimeout is how long a follower goes without hearing from the
	// leader before it starts an election (Raft randomizes it between 1x
	// and 2x; the leader sends heartbeats ten times as often). Default
	// DefaultHeartbeatTimeout (1 s). It bounds how fast a crashed leader is
	// replaced: lower it on a fast, quiet network for quicker failover;
	// raise it where round trips or pauses (GC, a busy VM) approach it, or
	// elections start for nothing. A follower's linearizable read also gives
	// up on an unresponsive leader after HeartbeatTimeout+ElectionTimeout
	// and asks again. Must be at least LeaderLeaseTimeout.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes before it
	// starts another election (randomized between 1x and 2x). Default
	// DefaultElectionTimeout (1 s). Must be at least HeartbeatTimeout;
	// change it together with HeartbeatTimeout.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader keeps its leadership without
	// hearing from a quorum: a leader cut off on a minority side steps down
	// after it, and writes and linearizable reads wait for the new leader
	// that the majority elects. Default DefaultLeaderLeaseTimeout (500 ms);
	// at most HeartbeatTimeout (Open refuses more). Lower it together with
	// HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold is how many Raft log entries past the last snapshot
	// make Raft take a new one, checked every SnapshotInterval. Default
	// DefaultSnapshotThreshold (8192). A snapshot compacts the log: a
	// restart reads the log after the newest snapshot, and a follower too
	// far behind is sent the snapshot instead. An entry can carry many
	// writes (group commit), so SnapshotBytes bounds the log by size too.
	SnapshotThreshold uint64
	// SnapshotBytes also triggers a snapshot once this many bytes of log
	// entries have been applied since the last one, whatever their count.
	// Default DefaultSnapshotBytes (128 MiB). It bounds how much log a
	// restart reads after a bulk load. Lower it to make restarts faster at
	// the cost of more frequent snapshots (each one copies the data file);
	// raise it when the data set is large and snapshots cost more than the
	// log they save.
	SnapshotBytes uint64
	// SnapshotInterval is how often Raft checks SnapshotThreshold
	// (randomized between 1x and 2x). Default DefaultSnapshotInterval (2
	// minutes). SnapshotBytes is checked as entries are applied, not on
	// this interval.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries a snapshot leaves in the log behind
	// it, so that a follower that is briefly behind catches up from the log
	// instead of receiving a whole snapshot. Default DefaultTrailingLogs
	// (10240). It counts entries, not bytes: with large entries the log
	// keeps more on disk (see docs/operations.md, Sizing). Raise it if
	// followers that were down for a short while keep receiving snapshots.
	TrailingLogs uint64
	// TrailingBytes bounds the entries a snapshot leaves in the log by
	// size: the log keeps at most TrailingLogs entries, and of them no
	// more than about TrailingBytes of the newest (the newest entry is
	// always kept, whatever its size). With group commit one entry can
	// hold up to 1 MiB of writes, so a count alone would let the log keep
	// many GiB after a bulk load. Default DefaultTrailingBytes (64 MiB); a
	// negative value keeps no bound by size. A follower further behind
	// than the log reaches receives a snapshot instead.
	TrailingBytes int64
	// QuotaBytes is the space quota: the most bytes of data the cluster
	// stores, counted as the bytes of every key plus its stored record
	// (the value and a header of 25 bytes, 33 for a key on a lease). The
	// store's own state (write sessions, leases, the watch history) does
	// not count; nor does the files' free space (compact them to return
	// it). A write that would take the data beyond the quota is refused
	// with an error wrapping ErrNoSpace, on every member alike; deletes,
	// writes that do not grow the data, lease commands and reads go on.
	// Default DefaultQuotaBytes (2 GiB); negative: no quota.
	//
	// The quota is a cluster setting: the leader sets the cluster's to its
	// own QuotaBytes once it leads (through the Raft log, so every member
	// applies the same), and until a leader has, there is none. Set the
	// same value on every member; after a change, the next leader's
	// governs. See docs/operations.md, "Space".
	QuotaBytes int64
	// AsyncWriteTimeout is how long a SetAsync or DeleteAsync write keeps
	// trying: waiting for a leader (during an election, or with no
	// majority), and sending the write again after an attempt whose answer
	// was lost (an attempt in flight when it passes is awaited first). Then
	// its Future fails: with an error wrapping ErrOutcomeUnknown if an
	// attempt may have been applied, else with one that means the write was
	// not applied. A synchronous write is bounded by its ctx instead.
	// Default DefaultAsyncWriteTimeout (30 s). Lower it when a caller would
	// rather fail fast.
	AsyncWriteTimeout time.Duration

	// Dial, when set, opens every outbound connection of the transport
	// (Raft and RPC). It is the hook for fault injection; nil means a
	// net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS, when set, secures the transport port with mutual TLS: every
	// connection, Raft and member RPC alike, is TLS 1.3, and each side must
	// present a certificate that chains to the configured CA before any byte
	// of Raft or RPC is read. The config needs this member's certificate
	// (Certificates, or GetCertificate — and GetClientCertificate for
	// outbound connections if the two differ; both hooks allow rotation
	// without restart) and the CA: RootCAs verifies the members this one
	// dials, ClientCAs the members that dial it (each defaults to the
	// other). Certificates need both the server and client auth extended key
	// usages. With ServerName empty a peer's certificate is checked against
	// the CA only, not against its address (members are dialled by IP); set
	// ServerName to require that name in every member's certificate.
	// MinVersion is raised to TLS 1.3. nil: plaintext (see the warning in
	// the package docs).
	TLS *tls.Config
	// GossipKey, when set (16, 24 or 32 bytes: AES-128/192/256), encrypts
	// and authenticates all gossip; members without the key can neither
	// join nor read it. Rotate it with GossipKeyring.
	GossipKey []byte

	// WrapGossipTransport, when set, wraps the gossip transport (UDP and
	// TCP, bound to GossipBindAddr) that memberlist uses: the hook for fault
	// injection on gossip traffic, as Dial is for the transport. kvtest
	// uses both. nil means memberlist's transport as it is.
	WrapGossipTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport

	// Metrics, when set, receives this Store's Prometheus collectors at
	// Open; Close unregisters them, so that a Store reopened with the same
	// NodeID registers again. nil (the default): no metrics. Pass your own
	// registry (prometheus.NewRegistry, or prometheus.DefaultRegisterer if
	// you want them there); the Store never touches Prometheus's default
	// registry by itself. Every series carries the constant label node =
	// NodeID, so several Stores can register into one registry; Open fails
	// with an error wrapping ErrInvalidConfig if metrics of a Store with
	// this NodeID are already registered there.
	//
	// Series, all named cohortkv_*:
	//   - has_leader, is_leader, halted (gauges, 0 or 1), raft_term,
	//     commit_index, applied_index (gauges), raft_last_contact_seconds
	//     (gauge: time since a leader last contacted this member, or since
	//     it started if none has; 0 on the leader);
	//   - leader_changes_seen_total (counter: changes to a leader other
	//     than the last one this member knew);
	//   - writes_total{result="ok|conflict|error"} (counter: write calls on
	//     this member, the async forms and lease calls included; conflict
	//     is an ErrConflict outcome), reads_total{consistency=
	//     "linearizable|stale"} (counter: read calls on this member);
	//   - histograms, in seconds: log_fsync_duration_seconds (a Raft log
	//     append with its fdatasync), data_commit_duration_seconds (a
	//     commit of the data file with its fsync), snapshot_duration_seconds
	//     (a state machine snapshot taken and persisted),
	//     forward_duration_seconds (a write batch a follower forwards, round
	//     trip to the leader), read_index_duration_seconds (obtaining the
	//     read index of a linearizable read), fsm_apply_duration_seconds (a
	//     batch of committed entries applied), raft_commit_duration_seconds
	//     (on the leader: an entry handed to Raft until its result);
	//   - db_size_bytes, db_size_in_use_bytes (gauges: the data file's size,
	//     and that less its free pages; 0 in memory), quota_bytes (gauge:
	//     the space quota, 0 for none), members{status="alive|suspect|dead|
	//     left"} (gauge: members by gossip status, as Members reports them).
	//
	// Gauges are read when the registry is scraped, cheaply and without
	// blocking on the network. hashicorp/raft and memberlist emit metrics
	// of their own through hashicorp/go-metrics' global sink; the Store
	// leaves that global state alone, and measures the figures operators
	// take from it (last contact, FSM apply time, commit time, term)
	// itself. docs/operations.md lists what to alert on.
	Metrics prometheus.Registerer
}

// withDefaults returns a copy of c with defaults filled in, or an error
// wrapping ErrInvalidConfig.
func (c Config) withDefaults() (Config, error) {
	if c.NodeID == "" {
		return c, fmt.Errorf("%w: NodeID is required", ErrInvalidConfig)
	}
	if !c.InMemory && c.DataDir == "" {
		return c, fmt.Errorf("%w: DataDir is required unless InMemory", ErrInvalidConfig)
	}
	if c.BindAddr == "" {
		c.BindAddr = DefaultBindAddr
	}
	if c.GossipBindAddr == "" {
		c.GossipBindAddr = DefaultGossipBindAddr
	}
	for name, a := range map[string]string{"BindAddr": c.BindAddr, "AdvertiseAddr": c.AdvertiseAddr, "GossipBindAddr": c.GossipBindAddr, "GossipAdvertiseAddr": c.GossipAdvertiseAddr} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return c, fmt.Errorf("%w: %s %q: %v", ErrInvalidConfig, name, a, err)
		}
	}
	switch len(c.GossipKey) {
	case 0, 16, 24, 32:
	default:
		return c, fmt.Errorf("%w: GossipKey of %d bytes; want 16, 24 or 32", ErrInvalidConfig, len(c.GossipKey))
	}
	if c.TLS != nil {
		if len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil {
			return c, fmt.Errorf("%w: TLS without a certificate (Certificates or GetCertificate)", ErrInvalidConfig)
		}
		if c.TLS.RootCAs == nil && c.TLS.ClientCAs == nil {
			return c, fmt.Errorf("%w: TLS without a CA (RootCAs or ClientCAs)", ErrInvalidConfig)
		}
	}
	if c.BootstrapExpect < 0 {
		return c, fmt.Errorf("%w: BootstrapExpect %d", ErrInvalidConfig, c.BootstrapExpect)
	}
	if c.BootstrapExpect == 0 && len(c.Join) == 0 {
		c.BootstrapExpect = 1
	}
	def := func(v *int, d, max int, name string) error {
		if *v == 0 {
			*v = d
		}
		if *v < 0 || max > 0 && *v > max {
			return fmt.Errorf("%w: %s %d out of range", ErrInvalidConfig, name, *v)
		}
		return nil
	}
	if err := def(&c.MaxKeySize, DefaultMaxKeySize, maxMaxKeySize, "MaxKeySize"); err != nil {
		return c, err
	}
	if err := def(&c.MaxValueSize, DefaultMaxValueSize, maxMaxValueSize, "MaxValueSize"); err != nil {
		return c, err
	}
	if err := def(&c.MaxTxnOps, DefaultMaxTxnOps, maxMaxTxnOps, "MaxTxnOps"); err != nil {
		return c, err
	}
	if c.WatchHistory.Revisions == 0 {
		c.WatchHistory.Revisions = DefaultWatchHistoryRevisions
	}
	if c.WatchHistory.Bytes == 0 {
		c.WatchHistory.Bytes = DefaultWatchHistoryBytes
	}
	if err := def(&c.MaxVoters, DefaultMaxVoters, 0, "MaxVoters"); err != nil {
		return c, err
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	dur(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	dur(&c.ElectionTimeout, DefaultElectionTimeout)
	dur(&c.LeaderLeaseTimeout, DefaultLeaderLeaseTimeout)
	dur(&c.SnapshotInterval, DefaultSnapshotInterval)
	dur(&c.AsyncWriteTimeout, DefaultAsyncWriteTimeout)
	dur(&c.DeadMemberTimeout, DefaultDeadMemberTimeout)
	dur(&c.StabilizationTime, DefaultStabilizationTime)
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return c, fmt.Errorf("%w: LeaderLeaseTimeout %v above HeartbeatTimeout %v", ErrInvalidConfig, c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = DefaultSnapshotBytes
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.TrailingBytes == 0 {
		c.TrailingBytes = DefaultTrailingBytes
	}
	if c.QuotaBytes == 0 {
		c.QuotaBytes = DefaultQuotaBytes
	}
	return c, nil
}

// ReadOption changes how Get and List read.
type ReadOption struct {
	kind readOptionKind
	n    int
	key  string
}

type readOptionKind uint8

const (
	optNone readOptionKind = iota
	optStale
	optLimit
	optAfter
)

type readOptions struct {
	stale bool
	limit int
	after string
	hasAf bool
}

// collect reads the options without calling through function values, so
// that a Get allocates nothing for them.
func collect(opts []ReadOption) readOptions {
	var ro readOptions
	for _, o := range opts {
		switch o.kind {
		case optStale:
			ro.stale = true
		case optLimit:
			ro.limit = o.n
		case optAfter:
			ro.after, ro.hasAf = o.key, true
		}
	}
	return ro
}

// Stale serves the read from this instance's local state at once, without a
// round trip to the leader: fast, but possibly behind the latest writes (see
// the package documentation, # Consistency).
func Stale() ReadOption { return ReadOption{kind: optStale} }

// Limit makes List return at most n pairs. n <= 0 means no limit.
func Limit(n int) ReadOption { return ReadOption{kind: optLimit, n: n} }

// After makes List return only keys strictly greater than key: pass the last
// key of a page to get the next one.
func After(key string) ReadOption { return ReadOption{kind: optAfter, key: key} }
