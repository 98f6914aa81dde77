package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/metrics"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// Pair is a key and its value, as List returns them.
type Pair struct {
	Key   string
	Value []byte // the caller's: List returns copies
}

// Get returns the value of key, or an error wrapping ErrNotFound. By default
// the read is linearizable on any instance: it reflects every write that
// completed before Get was called. With Stale() it reads this instance's
// local state at once. The returned slice is the caller's.
func (s *Store) Get(ctx context.Context, key string, opts ...ReadOption) ([]byte, error) {
	r, err := s.lookup(ctx, key, opts)
	if err != nil {
		return nil, err
	}
	return r.value, nil
}

// lookup reads the record of key; its value is the caller's, never nil.
func (s *Store) lookup(ctx context.Context, key string, opts []ReadOption) (record, error) {
	ro := collect(opts)
	s.met.read(ro.stale)
	if err := s.validate(key, nil); err != nil {
		return record{}, err
	}
	if !ro.stale {
		if err := s.linearize(ctx); err != nil {
			return record{}, err
		}
	}
	if pr, ok := s.eng.(storage.PointReader); ok {
		b, found, err := pr.Lookup(key, nil)
		if err != nil {
			return record{}, s.engineErr(err)
		}
		if !found {
			return record{}, ErrNotFound
		}
		r, err := decodeRecord(b)
		if err != nil {
			return record{}, err
		}
		if r.value == nil {
			r.value = []byte{}
		}
		return r, nil // b is a copy: the caller's
	}
	var out record
	err := s.eng.View(func(tx storage.ReadTx) error {
		b, ok := tx.Get([]byte(key))
		if !ok {
			return ErrNotFound
		}
		r, err := decodeRecord(b)
		if err != nil {
			return err
		}
		out = r
		out.value = bytes.Clone(r.value)
		if out.value == nil {
			out.value = []byte{}
		}
		return nil
	})
	return out, s.engineErr(err)
}

// List returns the pairs whose keys start with prefix, sorted by key, with
// the same consistency as Get. Limit and After page through large results.
// The returned slice and its values are the caller's.
func (s *Store) List(ctx context.Context, prefix string, opts ...ReadOption) ([]Pair, error) {
	var out []Pair
	_, err := s.scan(ctx, prefix, opts, func(k []byte, r record) int {
		out = append(out, Pair{Key: string(k), Value: cloneValue(r.value)})
		return len(out)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// cloneValue copies v, never returning nil.
func cloneValue(v []byte) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	return bytes.Clone(v)
}

// scan calls add for every key under prefix that opts select, in key
// order, on one view of the data, until add returns Limit; it returns the
// applied index of that view.
func (s *Store) scan(ctx context.Context, prefix string, opts []ReadOption, add func(k []byte, r record) int) (uint64, error) {
	ro := collect(opts)
	s.met.read(ro.stale)
	if err := s.usable(); err != nil {
		return 0, err
	}
	if !ro.stale {
		if err := s.linearize(ctx); err != nil {
			return 0, err
		}
	}
	from := []byte(prefix)
	if ro.hasAf && ro.after >= prefix {
		from = append([]byte(ro.after), 0) // the smallest key after it
	}
	var rev uint64
	err := s.eng.ViewApplied(func(tx storage.ReadTx, index uint64) error {
		rev = index
		var derr error
		sys := false // the store's own keys are next: skip them
		fn := func(k, v []byte) bool {
			if !bytes.HasPrefix(k, []byte(prefix)) {
				return false
			}
			if isSysKey(k) {
				sys = true
				return false
			}
			r, err := decodeRecord(v)
			if err != nil {
				derr = fmt.Errorf("key %q: %w", k, err)
				return false
			}
			n := add(k, r)
			return ro.limit <= 0 || n < ro.limit
		}
		err := tx.Scan(from, fn)
		if err == nil && derr == nil && sys {
			err = tx.Scan(sysEnd, fn)
		}
		if err == nil {
			err = derr
		}
		return err
	})
	if err != nil {
		return 0, s.engineErr(err)
	}
	return rev, nil
}

func (s *Store) engineErr(err error) error {
	if errors.Is(err, storage.ErrClosed) {
		return ErrClosed
	}
	return err
}

// linearize returns once this instance's data reflects every write committed
// before it was called: it gets a read index from the leader (itself, or over
// RPC) and waits until its state machine has applied that far. It retries
// while there is no leader until ctx ends.
func (s *Store) linearize(ctx context.Context) error {
	var last error
	for b := newBackoff(); ; {
		if err := ctx.Err(); err != nil {
			return s.readGiveUp(err, last)
		}
		if err := s.usable(); err != nil {
			return err
		}
		t0 := s.met.now()
		idx, err := s.readIndex(ctx)
		if err == nil {
			s.met.since(metrics.ReadIndex, t0)
			if err := s.waitApplied(ctx, idx); err != nil {
				return err
			}
			// A member that halted meanwhile may not have applied what
			// it was waiting for.
			return s.halter.halted()
		}
		if errors.Is(err, ErrClosed) && s.isClosed() {
			return ErrClosed
		}
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
			// This caller's wait ended; the round it joined goes on.
			return s.readGiveUp(cerr, last)
		}
		last = err
		if err := b.wait(ctx, s.ctx.Done()); err != nil {
			return s.readGiveUp(err, last)
		}
	}
}

// readGiveUp is the error of a linearizable read that ran out of time
// before a leader confirmed a read index: it wraps ctxErr and ErrNoLeader,
// and says why the last attempt failed.
func (s *Store) readGiveUp(ctxErr, last error) error {
	if err := s.usable(); err != nil {
		return err
	}
	if last == nil || last == ErrNoLeader || last == errNotLeader {
		return fmt.Errorf("kv: read not confirmed by a leader: %w (%w)", ctxErr, ErrNoLeader)
	}
	if errors.Is(last, ErrNoLeader) {
		return fmt.Errorf("kv: read not confirmed by a leader: %w (%w)", ctxErr, last)
	}
	return fmt.Errorf("kv: read not confirmed by a leader: %w (%w: %v)", ctxErr, ErrNoLeader, last)
}

// readRPCErr is the error of a read index request to the leader at addr
// that failed. A request lost on the way leaves nothing unknown, unlike a
// write's: the next attempt asks whoever leads then.
func readRPCErr(addr string, err error) error {
	out, _ := fromWire(err)
	if !errors.Is(out, errUnsure) && !errors.Is(out, ErrOutcomeUnknown) {
		return out
	}
	cause := err.Error()
	var re *transport.Error
	if errors.As(err, &re) {
		cause = re.Msg
	}
	return fmt.Errorf("%w: leader %s did not confirm the read: %s", ErrNoLeader, addr, cause)
}

// verifyErr words the failure of a leadership check for the reads that
// wait on it: nothing was written, and the read goes to whoever leads next.
func verifyErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", ErrClosed, err)
	}
	return unconfirmed{err}
}

// unconfirmed is errNotLeader for a leader that a majority did not confirm.
type unconfirmed struct{ cause error }

func (e unconfirmed) Error() string {
	return fmt.Sprintf("a majority did not confirm this member's leadership (%v)", e.cause)
}

func (e unconfirmed) Is(target error) bool { return target == errNotLeader }

// readIndexLocal runs on the leader. The commit index is safe once an entry
// of the current term has committed (markTerm); it is read before a
// heartbeat round confirms the leadership, and the term must not change in
// between. Every committed data entry is then at or below the returned
// index, and the entry at the index is one the state machines see.
func (s *Store) readIndexLocal(ctx context.Context) (uint64, error) {
	term := s.raft.CurrentTerm()
	if s.raft.State() != raft.Leader || s.leaving.Load() {
		// A leaving leader is handing over: let the next one answer.
		return 0, errNotLeader
	}
	if s.readyTerm.Load() != term {
		// The leader loop commits the term's marker entry; until then the
		// commit index may lag what earlier leaders committed.
		return 0, fmt.Errorf("%w: leader of term %d not ready for reads yet", errNotLeader, term)
	}
	idx := s.raft.CommitIndex()
	if hook := s.readIndexHook.Load(); hook != nil {
		(*hook)()
	}
	if err := s.verifyLeader(ctx); err != nil {
		return 0, err
	}
	if s.raft.CurrentTerm() != term || s.readyTerm.Load() != term {
		return 0, errNotLeader
	}
	return idx, nil
}

type verifyRound struct {
	done chan struct{}
	err  error
}

// verifyLeader confirms this member still leads with one heartbeat round
// that starts after the call. Concurrent callers share rounds.
func (s *Store) verifyLeader(ctx context.Context) error {
	s.verifyMu.Lock()
	r := s.verifyNext
	if r == nil {
		r = &verifyRound{done: make(chan struct{})}
		s.verifyNext = r
	}
	if !s.verifyRunning {
		if !s.goRaft(s.runVerify) {
			s.verifyMu.Unlock()
			return ErrClosed
		}
		s.verifyRunning = true
	}
	s.verifyMu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
}

func (s *Store) runVerify() {
	for {
		s.verifyMu.Lock()
		r := s.verifyNext
		s.verifyNext = nil
		if r == nil {
			s.verifyRunning = false
			s.verifyMu.Unlock()
			return
		}
		s.verifyMu.Unlock()
		if s.isClosed() {
			r.err = ErrClosed
		} else {
			r.err = verifyErr(s.raft.VerifyLeader().Error())
		}
		close(r.done)
	}
}

// waitApplied waits until the state machine has applied index, or raft
// has applied it and nothing between is an entry the state machine sees
// (raft's no-op and barrier entries never reach it). It fails at once when
// this member halts, or cannot apply for want of disk space.
func (s *Store) waitApplied(ctx context.Context, index uint64) error {
	var poll *time.Ticker
	defer func() {
		if poll != nil {
			poll.Stop()
		}
	}()
	for {
		ch := s.fsm.appliedChan()
		applied := s.eng.AppliedIndex()
		if applied >= index || s.noDataBetween(applied, index) {
			return nil
		}
		if err := s.halter.halted(); err != nil {
			return err
		}
		if err := s.fsm.stuckErr(); err != nil {
			return fmt.Errorf("kv: this member cannot apply index %d yet: %w", index, err)
		}
		if poll == nil {
			// Raft applies no-op entries without telling the state
			// machine: look again now and then.
			poll = time.NewTicker(5 * time.Millisecond)
		}
		select {
		case <-ch:
		case <-poll.C:
		case <-ctx.Done():
			return fmt.Errorf("kv: wait for index %d: %w", index, ctx.Err())
		case <-s.ctx.Done():
			return ErrClosed
		case <-s.halter.ch:
		}
	}
}

// noDataBetween says whether raft has applied index and no entry in
// (applied, index] is one the state machine applies: then the data already
// reflects index.
func (s *Store) noDataBetween(applied, index uint64) bool {
	if s.rlog == nil || index-applied > 1024 || s.raft.AppliedIndex() < index {
		return false
	}
	var l raft.Log
	for i := applied + 1; i <= index; i++ {
		if err := s.rlog.GetLog(i, &l); err != nil || l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}
