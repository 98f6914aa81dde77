package kv

import (
	"context"
	"time"

	"github.com/cohortkv/kv/internal/discovery"
	"github.com/cohortkv/kv/internal/storage"
)

// SetBoltOptions makes the Stores opened from now on open their data files
// with opts, until the returned function restores the defaults. Tests only;
// not safe while Stores are being opened.
func SetBoltOptions(opts storage.BoltOptions) (restore func()) {
	old := boltOptions
	boltOptions = opts
	return func() { boltOptions = old }
}

// SetBootstrapView makes every Store's bootstrap decision see the gossip
// members view(self, members) returns instead of its whole view, until the
// returned function restores it. Tests only.
func SetBootstrapView(view func(self string, members []discovery.Member) []discovery.Member) (restore func()) {
	old := bootstrapView
	bootstrapView = view
	return func() { bootstrapView = old }
}

// SetRestoreHook makes Restore on s call fn before it proposes each chunk
// ("chunk", its number from 0) and the commit ("commit", 0). Set it before
// Restore runs.
func SetRestoreHook(s *Store, fn func(step string, n int)) { s.restoreHook = fn }

// SetRestoreChunkSize sets the size of the chunk entries of Restore on s.
func SetRestoreChunkSize(s *Store, n int) { s.restoreChunk = n }

// LoseApplied makes the next n batches that s, leading, hands to Raft
// report a lost leadership once applied, as if it had lost it at once.
func LoseApplied(s *Store, n int) { s.pipe.loseApplied.Store(int32(n)) }

// LoseReplies makes the next n batches that s forwards to the leader lose
// their reply once the leader has applied them.
func LoseReplies(s *Store, n int) { s.pipe.loseReplies.Store(int32(n)) }

// SetSessionsOff makes every state machine ignore write sessions (no
// write is recognised as applied before) until the returned function
// restores them. Tests only: it shows what the session table prevents.
func SetSessionsOff() (restore func()) {
	sessionsOff.Store(true)
	return func() { sessionsOff.Store(false) }
}

// SetSessionLimits sets the session table's expiry (in leader time) and
// its cap on sessions, until the returned function restores them. Tests
// only; every member of a test cluster must see the same values.
func SetSessionLimits(ttl time.Duration, max int) (restore func()) {
	oldTTL, oldMax := sessionTTL.Load(), maxSessions.Load()
	sessionTTL.Store(uint64(ttl / time.Millisecond))
	maxSessions.Store(uint64(max))
	return func() { sessionTTL.Store(oldTTL); maxSessions.Store(oldMax) }
}

// SetLogStoreOptions makes the Stores opened from now on open their raft.db
// with opts, until restore is called.
func SetLogStoreOptions(opts storage.LogStoreOptions) (restore func()) {
	old := logStoreOptions
	logStoreOptions = opts
	return func() { logStoreOptions = old }
}

// TakeSnapshot makes s take a Raft snapshot now.
func TakeSnapshot(s *Store) error { return s.raft.Snapshot().Error() }

// LogBytes returns the first and last index of s's Raft log on disk, and
// the bytes of the records between them.
func LogBytes(s *Store) (first, last uint64, bytes int64, err error) {
	if first, err = s.logs.FirstIndex(); err != nil {
		return
	}
	if last, err = s.logs.LastIndex(); err != nil {
		return
	}
	err = s.logs.RecordSizes(func(_ uint64, size int) bool {
		bytes += int64(size)
		return true
	})
	return
}

// SetTrailingBoundOff turns Config.TrailingBytes off in every Store until
// the returned function restores it. Tests only: it shows what the bound
// does.
func SetTrailingBoundOff() (restore func()) {
	noTrailingBound.Store(true)
	return func() { noTrailingBound.Store(false) }
}

// Halt makes s halt with cause, as a failure of its storage would.
func Halt(s *Store, cause error) { s.halt(cause) }

// CompactEngine compacts s's data file directly: no leadership hand-over.
func CompactEngine(ctx context.Context, s *Store) error {
	_, err := s.eng.(*storage.Bolt).Compact(ctx)
	return err
}

// CompactMember asks member id, from s, to compact its data file, as
// Compact does for each member.
func CompactMember(ctx context.Context, s *Store, id string) error {
	return s.compactMember(ctx, id)
}

// ReadIndexRPCs returns how many read index requests s has sent to a
// leader for its linearizable reads.
func ReadIndexRPCs(s *Store) uint64 { return s.readRPCs.Load() }

// ReadIndexJoins returns how many linearizable reads on s, a follower, have
// joined a read index round.
func ReadIndexJoins(s *Store) uint64 { return s.readJoins.Load() }

// SetReadIndexHook makes s, leading, call fn once it has taken the commit
// index of each read index request, before it confirms its leadership; nil
// removes it.
func SetReadIndexHook(s *Store, fn func()) {
	if fn == nil {
		s.readIndexHook.Store(nil)
		return
	}
	s.readIndexHook.Store(&fn)
}

// HoldForwarded makes s call fn with the key and value of each Set of each
// batch forwarded to it, before it takes the batch in; fn may block, to
// hold the batch back. nil removes it.
func HoldForwarded(s *Store, fn func(key string, value []byte)) {
	if fn == nil {
		s.forwardHook.Store(nil)
		return
	}
	h := func(cmds []command) {
		for i := range cmds {
			for _, o := range cmds[i].then {
				if o.kind == opSet {
					fn(o.key, o.value)
				}
			}
		}
	}
	s.forwardHook.Store(&h)
}
