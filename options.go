package kv

import (
	"crypto/tls"

	"github.com/hashicorp/memberlist"

	"context"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Defaults for Config fields left at their zero value.
const (
	// DefaultBindAddr is used when Config.BindAddr is empty: loopback, a free
	// port.
	DefaultBindAddr = "127.0.0.1:0"
	// DefaultGossipBindAddr is used when Config.GossipBindAddr is empty.
	DefaultGossipBindAddr = "127.0.0.1:0"
	// DefaultMaxKeySize is the longest key accepted, in bytes.
	DefaultMaxKeySize = 4 << 10
	// DefaultMaxValueSize is the longest value accepted, in bytes.
	DefaultMaxValueSize = 1 << 20
	// DefaultMaxTxnOps is how many conditions and operations a Txn may
	// hold in all.
	DefaultMaxTxnOps = 128
	// DefaultMaxVoters is how many members vote; members that join beyond it
	// replicate as non-voters.
	DefaultMaxVoters = 5
	// DefaultHeartbeatTimeout is how long a follower goes without hearing from
	// the leader before it starts an election.
	DefaultHeartbeatTimeout = time.Second
	// DefaultElectionTimeout is how long a candidate waits for votes.
	DefaultElectionTimeout = time.Second
	// DefaultLeaderLeaseTimeout is how long a leader stays leader without
	// reaching a quorum.
	DefaultLeaderLeaseTimeout = 500 * time.Millisecond
	// DefaultSnapshotThreshold is how many log entries past the last snapshot
	// trigger a new one.
	DefaultSnapshotThreshold = 8192
	// DefaultSnapshotBytes is how many bytes of log entries applied since the
	// last snapshot trigger a new one, whatever their count: group commit
	// packs up to 4 MiB of writes into one entry, so a count alone lets a
	// bulk load leave the whole data set in the log for a restart to replay.
	DefaultSnapshotBytes = 128 << 20
	// DefaultSnapshotInterval is how often the threshold is checked.
	DefaultSnapshotInterval = 2 * time.Minute
	// DefaultTrailingLogs is how many entries a snapshot leaves in the log,
	// so that a slightly lagging follower catches up without a snapshot.
	DefaultTrailingLogs = 10240
	// DefaultDeadMemberTimeout is how long gossip must have reported a member
	// dead before the leader removes it from the Raft configuration.
	DefaultDeadMemberTimeout = time.Minute
	// DefaultStabilizationTime is how long a non-voter must be alive and
	// caught up before it is promoted to voter.
	DefaultStabilizationTime = 10 * time.Second
	// DefaultAsyncWriteTimeout bounds how long a SetAsync or DeleteAsync keeps
	// trying to reach a leader.
	DefaultAsyncWriteTimeout = 30 * time.Second
)

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
	// NodeID names this instance in the cluster. Required; keep it stable
	// across restarts of the same DataDir.
	NodeID string
	// DataDir holds the Raft log, snapshots and the data file. Required
	// unless InMemory.
	DataDir string
	// InMemory keeps everything in memory (the Raft log, snapshots and the
	// data); nothing survives Close. For tests and caches.
	InMemory bool

	// BindAddr is the "host:port" of the TCP port that carries Raft and
	// member-to-member RPC. Port 0 picks a free port (see Store.Addr).
	// Default DefaultBindAddr.
	BindAddr string
	// AdvertiseAddr is what peers dial, when BindAddr is not reachable as is
	// (e.g. 0.0.0.0). Default: the bound address.
	AdvertiseAddr string
	// GossipBindAddr is the "host:port" for memberlist gossip (TCP and UDP).
	// Port 0 picks a free port (see Store.GossipAddr). Default
	// DefaultGossipBindAddr.
	GossipBindAddr string
	// GossipAdvertiseAddr is the gossip address other members use. Optional.
	GossipAdvertiseAddr string
	// Join lists gossip addresses of existing members. Empty for the first.
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
	// Logger receives the Store's logs, and those of Raft and memberlist.
	// nil discards them.
	Logger *slog.Logger

	// MaxKeySize limits keys, in bytes. Default DefaultMaxKeySize; at most
	// 32 KiB (bbolt's limit).
	MaxKeySize int
	// MaxValueSize limits values, in bytes. Default DefaultMaxValueSize; at
	// most 8 MiB.
	MaxValueSize int
	// MaxTxnOps limits the conditions and operations of a Txn, in all.
	// Default DefaultMaxTxnOps; at most 4096. (A Txn's keys and values are
	// also limited to 12 MiB in all, so that it fits in one frame of the
	// transport between members.)
	MaxTxnOps int
	// MaxVoters is how many members vote. Members that join beyond it
	// replicate and serve reads as non-voters, and replace voters that are
	// removed. Default DefaultMaxVoters.
	MaxVoters int
	// DeadMemberTimeout is how long gossip must report a member dead before
	// the leader removes it from the Raft configuration (only while the rest
	// keep a healthy quorum, never below 3 voters while 3 members are
	// alive). Default DefaultDeadMemberTimeout.
	DeadMemberTimeout time.Duration
	// StabilizationTime is how long a new member must be alive and caught
	// up before it is promoted to voter. Default DefaultStabilizationTime.
	StabilizationTime time.Duration

	// HeartbeatTimeout: default DefaultHeartbeatTimeout.
	HeartbeatTimeout time.Duration
	// ElectionTimeout: default DefaultElectionTimeout.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout: default DefaultLeaderLeaseTimeout.
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold: default DefaultSnapshotThreshold.
	SnapshotThreshold uint64
	// SnapshotBytes: default DefaultSnapshotBytes.
	SnapshotBytes uint64
	// SnapshotInterval: default DefaultSnapshotInterval.
	SnapshotInterval time.Duration
	// TrailingLogs: default DefaultTrailingLogs.
	TrailingLogs uint64
	// AsyncWriteTimeout: default DefaultAsyncWriteTimeout.
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
