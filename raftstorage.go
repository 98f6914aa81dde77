package kv

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// raftStorage is the log and stable store that hashicorp/raft is given: it
// stands between raft and the LogStore (or the in-memory stores) and turns
// the storage errors raft would panic on into a halt of this member.
//
// raft panics when it cannot save its current term, when it cannot read a
// committed entry it must apply, and when an entry it stored turns out not
// to decode as a configuration or to have an unknown type. So:
//   - an entry that could not be applied (a configuration that does not
//     decode, an unknown type) is refused before it is stored, as a peer's
//     bad request: nothing a peer sends can panic this process;
//   - a failed term write halts the member and reports success: the member
//     is fenced off before raft acts on the term, so no one learns it;
//   - a log entry that cannot be read halts the member and reads as a
//     no-op: fenced off and applying nothing, the member sends and applies
//     nothing built on it;
//   - a failed vote write halts the member and is reported (raft then does
//     not vote);
//   - a failed append that is not for lack of space halts the member once
//     appends have failed for failLimit with none succeeding: a disk that
//     only returns errors must not leave a member that stays in the
//     configuration and answers nothing;
//   - once halted, nothing is written any more (the term write reports
//     success, as above): the files keep what the member acknowledged.
type raftStorage struct {
	logs   raft.LogStore
	stable raft.StableStore
	halt   func(error)
	// halted says whether the member halted: from then on nothing is
	// written, so that its files keep what it acknowledged (raft, cut off,
	// may still try to truncate its log after a read that failed).
	halted func() bool

	mu        sync.Mutex
	failSince time.Time // first append failure since the last success

	sizes *logSizes // the sizes of the entries stored (trailing.go); may be nil

	// While starting is set (during raft.NewRaft, before raft runs), reads
	// go to headers when it is set: raft then only scans the log after the
	// last snapshot for configuration entries, and the commands there need
	// not be read into the heap. The state machine gets them whole later.
	// This holds as long as raft.Config.RestoreCommittedLogs stays off: with
	// it, NewRaft would apply committed entries itself.
	starting atomic.Bool
	headers  func(index uint64, l *raft.Log) error
}

const appendFailLimit = 5 * time.Second

var (
	_ raft.LogStore    = (*raftStorage)(nil)
	_ raft.StableStore = (*raftStorage)(nil)

	keyCurrentTerm = []byte("CurrentTerm") // hashicorp/raft's stable-store key
)

func (r *raftStorage) FirstIndex() (uint64, error) { return r.logs.FirstIndex() }
func (r *raftStorage) LastIndex() (uint64, error)  { return r.logs.LastIndex() }

func (r *raftStorage) GetLog(index uint64, l *raft.Log) error {
	var err error
	if r.headers != nil && r.starting.Load() {
		err = r.headers(index, l)
	} else {
		err = r.logs.GetLog(index, l)
	}
	if err == nil || err == raft.ErrLogNotFound {
		return err
	}
	r.halt(fmt.Errorf("read Raft log entry %d: %w", index, err))
	*l = raft.Log{Index: index, Type: raft.LogNoop}
	return nil
}

func (r *raftStorage) StoreLog(l *raft.Log) error { return r.StoreLogs([]*raft.Log{l}) }

func (r *raftStorage) StoreLogs(logs []*raft.Log) error {
	if r.isHalted() {
		return errHaltedStorage
	}
	for _, l := range logs {
		if err := checkEntry(l); err != nil {
			return err
		}
	}
	err := r.logs.StoreLogs(logs)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.failSince = time.Time{}
		if r.sizes != nil {
			r.sizes.stored(logs)
		}
	case errors.Is(err, storage.ErrCorrupt):
		r.halt(fmt.Errorf("append to the Raft log: %w", err))
	case errors.Is(err, storage.ErrDiskFull):
		// Raft answers the writes with the error (a leader steps down, a
		// follower refuses the entries); appends work again once there
		// is space.
	default:
		if r.failSince.IsZero() {
			r.failSince = time.Now()
		} else if time.Since(r.failSince) >= appendFailLimit {
			r.halt(fmt.Errorf("append to the Raft log failed for %v: %w", appendFailLimit, err))
		}
	}
	return err
}

func (r *raftStorage) DeleteRange(min, max uint64) error {
	if r.isHalted() {
		return errHaltedStorage
	}
	err := r.logs.DeleteRange(min, max)
	if errors.Is(err, storage.ErrCorrupt) {
		r.halt(fmt.Errorf("delete Raft log entries %d..%d: %w", min, max, err))
	}
	return err
}

func (r *raftStorage) Set(key, val []byte) error {
	if r.isHalted() {
		return errHaltedStorage
	}
	err := r.stable.Set(key, val)
	if err != nil {
		r.halt(fmt.Errorf("save Raft state %q: %w", key, err))
	}
	return err
}

func (r *raftStorage) SetUint64(key []byte, val uint64) error {
	if r.isHalted() {
		if bytes.Equal(key, keyCurrentTerm) {
			return nil // raft panics on an error here
		}
		return errHaltedStorage
	}
	err := r.stable.SetUint64(key, val)
	if err != nil {
		r.halt(fmt.Errorf("save Raft state %q: %w", key, err))
		if bytes.Equal(key, keyCurrentTerm) {
			return nil // raft panics on this one; the member is fenced off
		}
	}
	return err
}

func (r *raftStorage) Get(key []byte) ([]byte, error)       { return r.stable.Get(key) }
func (r *raftStorage) GetUint64(key []byte) (uint64, error) { return r.stable.GetUint64(key) }

// errHaltedStorage is what raft gets for a write after the member halted.
var errHaltedStorage = errors.New("kv: member halted: its Raft storage takes no more writes")

func (r *raftStorage) isHalted() bool { return r.halted != nil && r.halted() }

// knownLogTypes are the entries raft can apply in this cluster (protocol
// version 3: the deprecated peer changes are never written).
var knownLogTypes = []raft.LogType{raft.LogCommand, raft.LogNoop, raft.LogBarrier, raft.LogConfiguration}

func knownType(t raft.LogType) bool {
	for _, k := range knownLogTypes {
		if t == k {
			return true
		}
	}
	return false
}

// checkEntry refuses an entry that raft would panic on when it applies it.
func checkEntry(l *raft.Log) error {
	if !knownType(l.Type) {
		return fmt.Errorf("kv: refusing Raft log entry %d of unknown type %d", l.Index, l.Type)
	}
	if l.Type == raft.LogConfiguration {
		if err := decodeConfiguration(l.Data); err != nil {
			return fmt.Errorf("kv: refusing Raft log entry %d: %w", l.Index, err)
		}
	}
	return nil
}

// decodeConfiguration checks that b decodes as a configuration: raft's
// DecodeConfiguration panics otherwise.
func decodeConfiguration(b []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("configuration entry does not decode: %v", r)
		}
	}()
	raft.DecodeConfiguration(b)
	return nil
}
