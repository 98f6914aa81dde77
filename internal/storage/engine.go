// Package storage holds the durable parts of a cohort/kv instance: the Raft log
// and stable store (LogStore, on bbolt), and the key-value data itself behind
// the small Engine interface, with a bbolt implementation for data larger than
// memory and an in-memory one for Config.InMemory.
//
// The snapshot stream format shared by every Engine is written by
// WriteSnapshot and read by ReadSnapshot; it carries a CRC-32C checksum so that
// a damaged snapshot is refused before it replaces any data.
package storage

import (
	"errors"
	"fmt"
	"io"
)

// Engine is the key-value data of one instance, as the state machine sees it.
// Keys are ordered bytewise. Every write happens in Update, which also records
// the Raft index it applies, so that the data and its applied index never
// disagree after a crash.
//
// Implementations are safe for concurrent use: one Update at a time (the state
// machine is single-threaded), any number of concurrent View and Snapshot.
type Engine interface {
	// AppliedIndex returns the index recorded by the last successful Update or
	// Restore (0 for an empty engine).
	AppliedIndex() uint64
	// Update runs fn in one atomic write transaction that also records index
	// as applied. If fn returns an error nothing of it is kept.
	Update(index uint64, fn func(tx WriteTx) error) error
	// View runs fn on a consistent read-only view of the data. Slices handed
	// to fn are valid only until fn returns.
	View(fn func(tx ReadTx) error) error
	// ViewApplied is View that also hands fn the applied index the view
	// reflects: that of the last Update or Restore whose writes it sees.
	ViewApplied(fn func(tx ReadTx, index uint64) error) error
	// Snapshot returns a consistent point-in-time view that stays valid, and
	// blocks neither Update nor Restore, until Release.
	Snapshot() (Snapshot, error)
	// Restore replaces the whole content, atomically, with a stream written
	// by WriteSnapshot, and records the stream's index as applied. On error
	// the previous content is kept. It is Stage followed by Install.
	Restore(r io.Reader) error
	// Stage reads a stream written by WriteSnapshot into storage beside the
	// live data (a synced file next to it, or memory), checking it whole;
	// readers and Update see nothing of it until Install. One restore is
	// staged at a time: Stage and Restore discard an earlier staged one,
	// whose Install then fails. The stream's index is ignored.
	Stage(r io.Reader) (Staged, error)
	// FileSize returns the size of the data file and the bytes of it in use
	// (its size less its free pages), as recently as the implementation
	// knows them; 0, 0 for an engine without a file. It never blocks, and
	// is safe after Close.
	FileSize() (size, inUse int64)
	// Close releases the engine. It is idempotent.
	Close() error
}

// PointReader is implemented by engines that read one key without a
// transaction (Bolt and Memory do): the fast path of a point read.
type PointReader interface {
	// Lookup appends the value of key to dst and returns it; ok is false
	// when key is absent.
	Lookup(key string, dst []byte) (value []byte, ok bool, err error)
}

// ReadTx reads from a consistent view of an Engine.
type ReadTx interface {
	// Get returns the value of key; ok is false when key is absent. The value
	// is valid only during the transaction.
	Get(key []byte) (value []byte, ok bool)
	// Scan calls fn for every key >= from in ascending order until fn
	// returns false. Slices are valid only during the call.
	Scan(from []byte, fn func(key, value []byte) bool) error
}

// WriteTx is a read-write transaction. Reads see the transaction's own writes.
type WriteTx interface {
	ReadTx
	// Put stores value under key. The engine copies both: the caller may
	// reuse the slices as soon as Put returns.
	Put(key, value []byte) error
	// Delete removes key; an absent key is not an error.
	Delete(key []byte) error
}

// Staged is a restore that Engine.Stage built beside an engine's data. It
// belongs to the caller, who must Install or Discard it; it is not safe for
// concurrent use.
type Staged interface {
	// Install makes the staged data the engine's whole content, atomically,
	// with index recorded as its applied index. It returns an error, with
	// the previous content still in place, if the staged data cannot be
	// switched in; an error from a failure after the switch began (a bbolt
	// file renamed into place that cannot be synced or opened) leaves the
	// engine refusing every further call with that error (see Bolt). Either
	// way the Staged is used up.
	Install(index uint64) error
	// Discard drops the staged data. It is idempotent and does nothing
	// after Install.
	Discard()
}

// Snapshot is a point-in-time view of an Engine. It must be released.
type Snapshot interface {
	ReadTx
	// AppliedIndex is the index the view reflects.
	AppliedIndex() uint64
	// Release frees the view. It is idempotent.
	Release()
}

// Errors returned by the engines.
var (
	// ErrClosed is returned by an Engine after Close.
	ErrClosed = errors.New("storage: engine closed")
	// ErrCorrupt is wrapped by every error that reports damaged stored
	// bytes: a data file, a log record or a snapshot that fails its checks.
	// The error's text names the file (and the key or index when known).
	ErrCorrupt = errors.New("storage: damaged")
	// ErrCorruptSnapshot is returned when a snapshot stream fails its
	// checks. It wraps ErrCorrupt.
	ErrCorruptSnapshot = fmt.Errorf("%w snapshot", ErrCorrupt)
	// ErrCorruptData is returned when the data file fails its checks: a
	// record whose checksum does not match, or a file bbolt cannot read. It
	// wraps ErrCorrupt.
	ErrCorruptData = fmt.Errorf("%w data file", ErrCorrupt)
	// ErrDiskFull is wrapped by errors of writes that failed because the
	// file system has no space left (ENOSPC, EDQUOT). Nothing is damaged:
	// the write can succeed once space is freed.
	ErrDiskFull = errors.New("storage: disk full")
)

// errStagedGone is Staged.Install's error for a staged restore that was
// discarded, replaced by a newer one, or already installed.
var errStagedGone = errors.New("storage: staged restore discarded or already installed")
