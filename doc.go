// Package kv is an embeddable, strongly consistent, replicated key-value
// store. Each instance of your service calls Open; the instances find each
// other by gossip (hashicorp/memberlist), agree through Raft
// (hashicorp/raft) over one TCP port inside your process, and keep their
// data in bbolt files. There is no separate database to run.
//
// # Basics
//
// Open starts an instance and returns a *Store, the only handle, safe for
// concurrent use. The first instances of a cluster set BootstrapExpect to
// the number of voters to wait for; later ones list any member's gossip
// address in Join:
//
//	s, err := kv.Open(kv.Config{
//		NodeID:          "node1",
//		DataDir:         "/var/lib/myapp/kv",
//		BindAddr:        "10.0.0.1:7000", // Raft and member RPC
//		GossipBindAddr:  "10.0.0.1:7946",
//		Join:            []string{"10.0.0.2:7946"},
//		BootstrapExpect: 3,
//		Logger:          slog.Default(),
//	})
//	...
//	defer s.Close()
//	wctx, cancel := context.WithTimeout(ctx, time.Minute)
//	defer cancel()
//	if err := s.WaitForLeader(wctx); err != nil { // a bounded wait: a wrong Join fails loudly
//		return err
//	}
//	err = s.Set(ctx, "user:42", []byte("Ada"))
//	v, err := s.Get(ctx, "user:42")
//	pairs, err := s.List(ctx, "user:", kv.Limit(100))
//	e, err := s.GetEntry(ctx, "user:42") // with its revisions
//	rev, err := s.CompareAndSet(ctx, "user:42", []byte("Ada L."), e.ModRev)
//	err = s.Delete(ctx, "user:42")
//
// Any instance serves any call. Writes on a follower are forwarded to the
// leader over the member RPC protocol; SetAsync and DeleteAsync return a
// Future at once, and many of them in flight are pipelined. Concurrent writes
// are coalesced on the leader into few Raft entries (group commit).
//
// Keys are non-empty strings of at most Config.MaxKeySize bytes that do not
// start with the reserved prefix "\xff\xffkv/", values at most
// Config.MaxValueSize bytes. Errors are the exported sentinels
// (ErrNotFound, ErrClosed, ErrNoLeader, ErrOutcomeUnknown,
// ErrSessionExpired, ErrConflict, ErrEmptyKey, ErrKeyTooLarge,
// ErrValueTooLarge, ErrReservedKey, ErrInvalidTxn, ErrTxnTooLarge,
// ErrInvalidConfig, ErrWrongCluster, ErrLostState, ErrNewerFormat,
// ErrCorrupt, ErrDiskFull), wrapped with detail: compare them with
// errors.Is. ErrLeadershipLost is deprecated: no call returns it.
//
// # Consistency
//
// Writes are linearizable. A default Get or List is linearizable on every
// instance: the instance asks the leader for a read index (the leader
// confirms it still leads with a round of heartbeats and returns its commit
// index, once an entry of its own term has committed), waits until its own
// state machine has applied that index, then reads locally. A read therefore
// sees every write that completed before it started, whichever instance
// served either. Stale reads (the Stale option) skip the round trip and read
// the instance's local state at once: fast and available without a leader,
// but possibly behind.
//
// While there is no leader (an election, a lost majority), calls retry with
// backoff until their context ends, then return an error that wraps both
// ErrNoLeader and the context's error; such a write was not applied.
// Writes that one goroutine issues, SetAsync and DeleteAsync included, are
// applied in the order it issued them.
//
// Every change has a revision: the index of the Raft log entry that made
// it. GetEntry and ListEntries return a key's Entry: ModRev, the revision
// of its last write; CreateRev, that of the write that created it (a delete
// ends a key's life, the next write creates it anew); and Version, the
// number of writes since the create (1 after it). The store's revision is
// the index of the last entry it applied; ListEntries returns the one its
// result reflects, so that the changes from the next revision on continue
// it. Revisions only grow, with gaps (entries such as configuration changes
// write no key). Writes of different keys that the leader group-commits into
// one entry share its revision, and the writes of one Txn always share one;
// two writes of one key never share an entry, so the revision a write
// returns is its own for that key.
//
// CompareAndSet writes a key only if its ModRev is the one given (0: only
// if the key is absent) and returns the new one; CompareAndDelete deletes
// likewise. On a mismatch nothing is written and the error is a
// *ConflictError, which wraps ErrConflict and carries the key's current
// entry. Txn evaluates its conditions (ModRevIs, VersionIs, ValueIs,
// Exists, Absent) in the state machine as it applies the transaction, on
// the state every earlier write left, then runs Then if all hold, else
// Else: OpSet, OpDelete and OpGet, in order, atomically, at one revision,
// with no other write in between; the OpGet results come back in
// TxnResult.Gets. A Txn holds at most Config.MaxTxnOps conditions and
// operations (128 by default, 4096 at most) and about 12 MiB of keys and
// values, and its Gets return at most 8 MiB (ErrTxnTooLarge); two writes
// to one key in a branch are refused (ErrInvalidTxn). A Txn that writes in
// neither branch is a read, served as a linearizable Get is.
//
// # Watch
//
// Watch yields the changes to the keys under a prefix, from a revision on,
// in revision order, each once, with no gaps: ListEntries, then Watch from
// the revision it returned plus one, keeps a cache or a configuration in
// step with the store without missing or repeating a change. The changes
// of one revision (a Txn, or writes group-committed together) come
// together. Deletes come as delete events, the expiry of a lease's keys
// included. A watch is a stream of the member's own applied state: on a
// follower it runs slightly behind the leader, as the follower applies.
// The changes come from a change log in the data file, written in the same
// transaction as the changes and so carried by restarts and snapshots (a
// Backup leaves it out: a Restore starts it anew); a Watch can resume,
// after a restart or on another member, from the last revision it saw plus
// one. Config.WatchHistory bounds the log (by
// default the last 100000 revisions within 64 MiB); a Watch from a revision
// older than what is kept ends at once with a *CompactedError. A watcher
// that reads slowly never slows writes: it reads what it missed from the
// log, and ends with ErrCompacted if it falls behind what is kept.
// WatchProgress also yields progress events: the first once the watch has
// caught up with the member's applied state, then at most one a second
// while revisions pass, so that a watcher knows when it is synced and can
// resume a quiet prefix from a recent revision.
//
// # Leases
//
// Grant creates a lease with a TTL; Set with WithLease attaches keys to it,
// and TTL gives one key a lease of its own. When the lease expires (no
// KeepAlive within its TTL) or is revoked, its keys are deleted, through
// Raft, at one revision. Expiry is decided by the leader on its clock, never
// by a member's clock in apply: the leader stamps its clock into the
// entries that grant and renew leases, the state machine stores absolute
// deadlines, and the leader proposes the expiry of a lease whose deadline
// has passed; the state machine checks it against the time the expiry
// entry carries, so a renewal that got there first wins. A new leader waits
// one ElectionTimeout before it expires anything, and so does a leader
// that was paused (its process stopped for a second or more). A key lives at least its
// TTL, provided the members' clocks agree; it goes about 100 ms plus a
// commit after its deadline, plus the election and an ElectionTimeout when
// the leader changes. A write of the key without the lease detaches it, so
// an overwrite survives the lease. Package concurrency builds sessions,
// locks with fencing tokens and elections on leases and Watch.
//
// # Durability
//
// A write that returned nil is committed on a majority of voters: every one
// of them has it in its Raft log on disk (fsync'd), so it survives any
// minority of crashes, kill -9 included. Each instance keeps four things in
// DataDir: raft.db (the Raft log, checksummed records in bbolt; new entries
// are appended to raft.db.tail with one fdatasync per batch and moved into
// raft.db every 8 MiB), raft.db.state (Raft's term and vote, in a
// preallocated file that a full disk cannot stop), data.db (the key-value
// data in bbolt, with the index it reflects stored in the same transactions,
// written in the background once a second: after a crash the entries since
// are applied again from the log) and snapshots/ (Raft snapshots, which
// compact the log; one is taken every Config.SnapshotThreshold entries or
// Config.SnapshotBytes of log, whichever comes first). Backup writes a
// consistent, checksummed copy of the data from any instance; Restore, on
// the leader, sends such a copy through the Raft log, staged beside the data
// on every member and installed by all at one commit entry (until then, and
// if it fails, the old data serves). On restart an instance opens its data
// file as it is, applies only the log entries the file does not have yet
// (Raft reads the log after the newest snapshot), and rejoins. InMemory
// keeps all of this in memory; nothing survives Close.
//
// Writes are exactly-once. Every write carries its Store's write session and
// a sequence number. A write whose answer is lost (a dropped connection, a
// leader that lost its leadership after Raft took the entry, raft's
// ErrLeadershipLost, a leader that crashed) is sent again under the same
// sequence, to whoever leads, until it is answered or its ctx ends; the
// state machine applies a sequence at most once and answers a repeat with
// the first result. So a write waits out elections and partitions for as
// long as its ctx allows: give it a deadline (SetAsync and DeleteAsync use
// Config.AsyncWriteTimeout). A write's error says what became of it. nil:
// applied, once. An error wrapping ErrOutcomeUnknown: it may or may not
// have been applied, and may still be, never twice; only these leave it so:
// the ctx ended with the write in flight (the error wraps the ctx's error
// too), Close caught it in flight (ErrClosed too), this member halted, or
// its write session expired (ErrSessionExpired; see Caveats). Any other
// error: not applied, and never will be; an error wrapping ErrNoLeader
// never wraps ErrOutcomeUnknown. No write returns ErrLeadershipLost.
//
// The state machine keeps the write sessions in the data file, changed in
// the same transactions as the writes they record, so restarts, snapshots,
// Backup and Restore carry them.
//
// Damaged files are detected, never served: log records and data records
// carry a CRC-32C, snapshots a CRC-32C and raft's CRC-64. Open of a damaged
// DataDir, and a read of a damaged record, fail with an error wrapping
// ErrCorrupt that names the file. Rebuild repairs such a member from the
// others: it moves the files aside, has the leader drop the member from the
// configuration, and the next Open rejoins it empty, to be caught up and
// promoted like a new member.
//
// A member that cannot go on halts: a damaged record its state machine must
// apply, a log entry it cannot read (one in a format newer than its version
// reads halts it with ErrNewerFormat), a term it cannot save, or a disk
// that keeps failing. It cuts itself off Raft at once (it neither leads nor
// votes; the others elect a leader and go on), applies nothing more, and
// every call on it fails with an error wrapping ErrCorrupt (or ErrDiskFull);
// Stats().Halted says why. A full disk alone halts nothing: writes are
// refused with ErrDiskFull, reads of what is stored go on, and writes resume
// once space is freed.
//
// # Membership
//
// Each member gossips its NodeID and transport address. With BootstrapExpect
// N, an instance without Raft state waits until N members that all expect N
// are in the gossip pool. The lowest NodeID of that set asks each member of
// it to promise the set, and bootstraps Raft once all N have; a member
// promises one set only, ever, and until it holds Raft state votes only for
// members of that set. So two clusters never form, even while gossip shows
// different members different parts of the pool. An instance that finds a
// member with Raft state already never bootstraps: the leader adds it. An
// instance that opens with an empty DataDir under the NodeID of a voter of
// its cluster is refused (ErrLostState): Rebuild repairs it.
//
// The leader keeps the Raft configuration in step with gossip. A member that
// joins is added as a non-voter and promoted to voter once it has been alive
// and caught up for StabilizationTime, keeping the number of voters odd and
// at most MaxVoters (3 or 4 members have 3 voters; see Config.MaxVoters). A
// member that called Leave is removed at once; one that gossip has reported
// dead for DeadMemberTimeout is removed then, but only while the alive
// voters keep a majority before and after the change (a leader cut off on a
// minority side removes nothing) and never below 3 voters while 3 members
// are alive; a healthy non-voter takes its place. Peers are dialled by NodeID
// through gossip, so a member restarted on a new address, or a whole cluster
// restarted on new ports, finds itself again. Gossip from a member of
// another cluster is refused, and Open fails with ErrWrongCluster when its
// Join seeds belong to another cluster than its DataDir.
//
// Close is a stop, not a departure: a leader hands leadership to a follower
// first, and the instance stays in the configuration, expected back. Leave is
// the departure. TransferLeadership moves the leadership on demand, to a
// named voter or to any, from any member.
//
// # Operations
//
// Config.Metrics takes a Prometheus registry of the caller's: the Store's
// cohortkv_* series (leader, indexes, writes and reads by outcome, fsync
// and commit latencies, file and data sizes, members by status) carry a
// node label, so several Stores share one registry. Nothing is registered
// anywhere else.
//
// Config.QuotaBytes bounds the logical size of the data (keys and their
// stored records, Stats.DataBytes). A write that would grow the data
// beyond it fails with an error wrapping ErrNoSpace, and was not applied;
// deletes, writes that do not grow the data, and reads go on. The quota is
// a cluster setting: the leader's Config governs, through the Raft log, so
// every member decides the same.
//
// bbolt keeps its files at their peak size. Compact, on any member,
// rewrites every member's data file and Raft log file one member at a
// time, the leader last after handing its leadership over, while the
// cluster serves; a member pauses for a short final step of each file. A
// member also compacts both files at Open when most of either is free.
// Config.TrailingBytes bounds by size the Raft log a snapshot leaves
// behind.
//
// # Caveats
//
//   - BootstrapExpect must be the same on the instances that form the
//     cluster. If more instances than BootstrapExpect expect to bootstrap at
//     the same time, none does (they could see different subsets and form
//     two clusters): start exactly BootstrapExpect of them, then the rest.
//   - A write whose error wraps ErrOutcomeUnknown (its context ended after
//     it was sent, Close or a halt caught it in flight, its session
//     expired) may have been applied, or may be later, once.
//   - Keys that start with "\xff\xffkv/" are reserved: the store keeps its
//     write sessions under them. Writes, Txn conditions and operations, and
//     Get of such a key fail with ErrReservedKey; List and ListEntries never
//     return them.
//   - Write sessions are bounded: every Open registers one, which is
//     dropped once unused for an hour (of the leader's clock, see below),
//     or when it is the least recently used and more than 16384 would be
//     kept; a session keeps the results of its 65536 latest writes. A write that was being sent again when the record of
//     its earlier attempt went this way fails with ErrSessionExpired (its
//     outcome unknown) rather than risk a second apply; the Store registers
//     a new session for its next writes on its own.
//   - Session expiry runs on the clock of the leader, which stamps it into
//     every entry it proposes; the state machine reads no clock. A leader
//     whose clock is an hour or more ahead of its predecessor's expires the
//     sessions at once: their Stores register new ones, and writes being
//     sent again at that moment may fail with ErrSessionExpired.
//   - A revision names a Raft entry, not one write: writes of different
//     keys group-committed together share one. Writes of one key never
//     share an entry, so a hot key gets at most one write per entry.
//   - Upgrades: this version writes Raft commands and value records in
//     format 2. Development builds from before these formats do not read
//     them and skip commands they cannot decode, so a cluster mixing them
//     with this version diverges: upgrade such a cluster by stopping every
//     member, then starting them all on this version, which reads the
//     older formats. A member whose log holds an
//     entry in a format newer than it reads halts with ErrNewerFormat
//     instead of diverging; upgrade it.
//   - memberlist does not expose suspicion: Members reports a member alive
//     until gossip declares it dead (a few seconds after it stops answering).
//   - Without Config.TLS and Config.GossipKey the transport and gossip ports
//     are unauthenticated (Open warns when they are bound beyond loopback):
//     set both, or bind them to a private network.
//   - After Close returns, a gossip probe that was in flight may linger for
//     up to a second inside memberlist before it ends on its own.
package kv
