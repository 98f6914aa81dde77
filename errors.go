package kv

import (
	"errors"
	"fmt"

	"github.com/cohortkv/kv/internal/storage"
)

// Errors returned by a Store. Compare with errors.Is: returned errors often
// wrap them with detail.
var (
	// ErrNotFound is returned by Get for an absent key.
	ErrNotFound = errors.New("kv: key not found")
	// ErrClosed is returned by every call on a closed Store, and by calls
	// that were in flight when it closed. A write that Close caught after it
	// was handed to Raft or sent to the leader returns an error wrapping
	// both ErrClosed and ErrOutcomeUnknown; a plain ErrClosed means the
	// write was never sent and is not applied.
	ErrClosed = errors.New("kv: store closed")
	// ErrNoLeader is returned when no leader could be reached before the
	// call's context ended; the call had no effect.
	ErrNoLeader = errors.New("kv: no leader")
	// ErrOutcomeUnknown is wrapped by the error of a write that may or may
	// not have been applied, and may still be: it was handed to Raft or
	// sent to the leader, and no answer came back in time. Writes whose
	// answer is lost are sent again under their session sequence, so this
	// remains only when the write's ctx ended while it was in flight (the
	// error wraps ctx's error too), the Store closed under it (ErrClosed
	// too), this member halted, or its session expired (ErrSessionExpired).
	// Such a write is applied at most once, possibly after its error was
	// returned (its entry may already be in a Raft log). A write's error
	// either wraps ErrOutcomeUnknown or means the write was not applied
	// and never will be; nil means it was applied, once. An error that
	// wraps ErrOutcomeUnknown never wraps ErrNoLeader.
	ErrOutcomeUnknown = errors.New("kv: write outcome unknown")
	// ErrLeadershipLost wraps ErrOutcomeUnknown.
	//
	// Deprecated: writes no longer return it. A write whose leader lost
	// its leadership after the write entered the log, or whose connection
	// to the leader dropped after it was sent, is sent again under its
	// session sequence until it is answered, and is applied at most once.
	ErrLeadershipLost = fmt.Errorf("kv: leadership lost: %w", ErrOutcomeUnknown)
	// ErrSessionExpired is wrapped by the error of a write that was being
	// sent again after an attempt that may have been applied, when the
	// state machine no longer held the record of that attempt: its write
	// session was dropped (unused for an hour of the leaders' time, or the
	// least recently used when more than 16384 would be kept), or its own
	// result was (a session keeps the results of its 65536 latest writes).
	// It is not applied again. It wraps ErrOutcomeUnknown. The Store
	// registers a new session for its next writes on its own.
	ErrSessionExpired = fmt.Errorf("kv: write session expired: %w", ErrOutcomeUnknown)
	// ErrConflict is wrapped by the error of a CompareAndSet or
	// CompareAndDelete whose key was not at the revision given: nothing was
	// written. errors.As to *ConflictError gives the key's current entry.
	ErrConflict = errors.New("kv: conflict")
	// ErrWrongCluster is returned by Open when the members it was told to
	// Join belong to another cluster than its DataDir. Clusters never merge.
	ErrWrongCluster = errors.New("kv: members of another cluster")
	// ErrNotVoter is wrapped by the error of TransferLeadership when the
	// member named is not a voter in the Raft configuration (no member has
	// that NodeID, or it is a non-voter), or, with no member named, when
	// the leader is the only voter. Nothing changed.
	ErrNotVoter = errors.New("kv: not a voter")
	// ErrNewerFormat is wrapped by the halt error of a member whose Raft
	// log holds an entry in a format newer than its version of this
	// package reads: a member of a newer version wrote it. The member
	// halts when it comes to apply the entry, rather than skip it and
	// diverge; like every halt error, this one wraps ErrCorrupt too.
	// Upgrade the member and start it again.
	ErrNewerFormat = errors.New("kv: log entry from a newer version")
	// ErrLostState is returned by Open when DataDir holds no Raft state but
	// the cluster it joins counts this NodeID as a voter (its DataDir was
	// emptied or replaced): it would vote without the log it acknowledged.
	// Rebuild repairs such a member.
	ErrLostState = errors.New("kv: voter without its Raft state")
	// ErrCorrupt is wrapped by errors that report damaged files in DataDir:
	// a data file record or page, a Raft log record or a snapshot that fails
	// its checksum or cannot be read. The error names the file. Open returns
	// it for a damaged DataDir; reads return it for a damaged record. Such a
	// member is repaired with Rebuild, never silently.
	ErrCorrupt = storage.ErrCorrupt
)

// Errors for bad input. Nothing is written when a call returns one of them.
var (
	// ErrEmptyKey is returned for an empty key.
	ErrEmptyKey = errors.New("kv: empty key")
	// ErrKeyTooLarge is returned for a key longer than Config.MaxKeySize.
	ErrKeyTooLarge = errors.New("kv: key too large")
	// ErrValueTooLarge is returned for a value longer than Config.MaxValueSize.
	ErrValueTooLarge = errors.New("kv: value too large")
	// ErrReservedKey is returned for a key that starts with "\xff\xffkv/":
	// such keys hold the store's own state (its write sessions), which
	// reads do not show.
	ErrReservedKey = errors.New("kv: reserved key")
	// ErrInvalidTxn is wrapped by the error of a Txn that cannot run: a
	// zero Cond or Op, or two writes to one key in a branch.
	ErrInvalidTxn = errors.New("kv: invalid transaction")
	// ErrTxnTooLarge is wrapped by the error of a Txn over the limits: more
	// than Config.MaxTxnOps conditions and operations, more than about 12
	// MiB of keys and values, or Gets that would return more than 8 MiB of
	// keys and values.
	ErrTxnTooLarge = errors.New("kv: transaction too large")
	// ErrInvalidConfig is wrapped by Open's errors for a Config it cannot use.
	ErrInvalidConfig = errors.New("kv: invalid config")
)

// Errors of Compact.
var (
	// ErrCompactIncomplete is wrapped by Compact's error when some members
	// were not compacted (down, unreachable, failed, or ctx ended first):
	// the compaction was partial. The error names each such member and
	// its cause; the other members were compacted.
	ErrCompactIncomplete = errors.New("kv: compaction incomplete")
	// ErrCompacting is wrapped by the error of a compaction refused
	// because one already runs on that member.
	ErrCompacting = errors.New("kv: a compaction is already running")
)

// ErrNoSpace is wrapped by the errors of writes refused because they would
// take the data the cluster stores beyond its space quota
// (Config.QuotaBytes of the leader; see Stats.QuotaBytes and
// Stats.DataBytes): such a write was not applied, and never will be.
// Writes that do not grow the data (deletes, overwrites with a value no
// larger, transactions that shrink it), lease commands and reads go on.
// Delete data, or raise the quota on the leader, and write again. It is
// not ErrDiskFull, which reports a member's own file system without space.
var ErrNoSpace = errors.New("kv: space quota reached")

// ErrDiskFull is wrapped by the errors of calls refused because a file
// system of this member has no space left: writes while the Raft log or
// the data file cannot grow (nothing was written), and every call on a
// member that halted for it. Reads of what is stored keep working while
// the member can still apply. Writes resume on their own once space is
// freed.
var ErrDiskFull = storage.ErrDiskFull
