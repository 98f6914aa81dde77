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
//	err = s.Delete(ctx, "user:42")
//
// Any instance serves any call. Writes on a follower are forwarded to the
// leader over the member RPC protocol; SetAsync and DeleteAsync return a
// Future at once, and many of them in flight are pipelined. Concurrent writes
// are coalesced on the leader into few Raft entries (group commit).
//
// Keys are non-empty strings of at most Config.MaxKeySize bytes, values at
// most Config.MaxValueSize bytes. Errors are the exported sentinels
// (ErrNotFound, ErrClosed, ErrNoLeader, ErrOutcomeUnknown,
// ErrLeadershipLost, ErrEmptyKey, ErrKeyTooLarge, ErrValueTooLarge,
// ErrInvalidConfig, ErrWrongCluster, ErrLostState, ErrCorrupt, ErrDiskFull),
// wrapped with detail: compare them with errors.Is.
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
// ErrNoLeader and the context's error; such a write was never sent.
//
// A write's error says what became of it: an error wrapping
// ErrOutcomeUnknown (ErrLeadershipLost wraps it) means the write may or may
// not have been applied, and retrying it may apply it twice; any other
// error means it was not applied. Writes that one goroutine issues, SetAsync
// and DeleteAsync included, are applied in the order it issued them.
//
// # Durability
//
// A write that returned nil is committed on a majority of voters: every one
// of them has it in its Raft log on disk (fsync'd), so it survives any
// minority of crashes, kill -9 included. Each instance keeps three things in
// DataDir: raft.db (the Raft log, checksummed records in bbolt; new
// entries are appended to raft.db.tail with one fdatasync per batch and
// moved into raft.db every 8 MiB), raft.db.state (Raft's term and vote, in
// a preallocated file that a full disk cannot stop), data.db (the key-value data in bbolt,
// with the index it reflects stored in the same transactions, written in the
// background once a second: after a crash the entries since are applied
// again from the log) and snapshots/ (Raft snapshots, which compact the
// log; one is taken every Config.SnapshotThreshold entries or
// Config.SnapshotBytes of log, whichever comes first). Backup writes a consistent, checksummed copy of the data from any
// instance; Restore, on the leader, sends such a copy through the Raft log,
// staged beside the data on every member and installed by all at one commit
// entry (until then, and if it fails, the old data serves). On
// restart an instance opens its data file as it is, applies only the log
// entries the file does not have yet (Raft reads the log after the newest
// snapshot), and rejoins. InMemory keeps all of this in memory;
// nothing survives Close.
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
// apply, a log entry it cannot read, a term it cannot save, or a disk that
// keeps failing. It cuts itself off Raft at once (it neither leads nor
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
// the departure.
//
// # Caveats
//
//   - BootstrapExpect must be the same on the instances that form the
//     cluster. If more instances than BootstrapExpect expect to bootstrap at
//     the same time, none does (they could see different subsets and form
//     two clusters): start exactly BootstrapExpect of them, then the rest.
//   - A write whose error wraps ErrOutcomeUnknown (ErrLeadershipLost, a
//     context that ended after the write was sent, Close with the write in
//     flight) may have been applied.
//   - memberlist does not expose suspicion: Members reports a member alive
//     until gossip declares it dead (a few seconds after it stops answering).
//   - Without Config.TLS and Config.GossipKey the transport and gossip ports
//     are unauthenticated (Open warns when they are bound beyond loopback):
//     set both, or bind them to a private network.
//   - After Close returns, a gossip probe that was in flight may linger for
//     up to a second inside memberlist before it ends on its own.
package kv
