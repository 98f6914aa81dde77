package kv

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Set stores value under key. It returns nil once the write is committed on
// a majority and applied on the leader; any instance accepts it (a follower
// forwards it to the leader). While there is no leader it waits and retries
// until ctx ends.
//
// Writes are exactly-once. Each carries this Store's write session and a
// sequence number; when its answer is lost, or its leader changes under it
// (raft's ErrLeadershipLost included), it is sent again under the same
// sequence until it is answered or ctx ends, and the state machine applies
// it at most once (a repeated one gets the result of the first). A write
// thus waits out elections and partitions for as long as ctx allows: give
// ctx a deadline. nil means the write was applied, once. An error wrapping
// ErrOutcomeUnknown means it may or may not have been applied, and may
// still be, never twice: ctx ended while it was in flight (the error wraps
// ctx's error too), the Store closed under it (ErrClosed too), this member
// halted, or its session expired (ErrSessionExpired). Any other error
// means it was not applied and never will be (bad input, ErrNoLeader, a
// plain ErrClosed, ErrDiskFull).
//
// Writes issued one after another by one goroutine, through Set, Delete,
// SetAsync and DeleteAsync alike, are applied in the order they were
// issued, as with Raft's own Apply: a write never overtakes an earlier one
// of the same goroutine, retries included.
//
// Options attach the key to a lease (WithLease) or give it a TTL of its own
// (TTL); a write without them detaches the key from any lease it had.
func (s *Store) Set(ctx context.Context, key string, value []byte, opts ...WriteOption) (err error) {
	defer s.met.wroteAt(&err)
	if err := s.validate(key, value); err != nil {
		return err
	}
	o := Op{kind: opSet, key: key, value: value}
	if err := writeOpts(&o, opts); err != nil {
		return err
	}
	res, err := s.writeCmd(ctx, newOpWrite(o))
	if err == nil && res.status == resNoLease {
		return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, o.lease)
	}
	return err
}

// Delete removes key. Deleting an absent key is not an error. Its errors
// and ordering are those of Set.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.validate(key, nil)
	if err == nil {
		_, err = s.writeCmd(ctx, newOpWrite(Op{kind: opDelete, key: key}))
	}
	s.met.wrote(err)
	return err
}

// SetAsync starts a Set and returns at once; the Future reports its
// outcome, with the meanings Set's errors have. The write keeps trying, its
// retries under the same sequence included, for Config.AsyncWriteTimeout
// instead of a ctx. Many writes in flight are pipelined.
//
// The write is queued before SetAsync returns: writes that one goroutine
// issues (SetAsync, DeleteAsync, Set, Delete) are applied in the order it
// issued them, whether or not it waits for their futures in between.
func (s *Store) SetAsync(key string, value []byte) *Future {
	if err := s.validate(key, value); err != nil {
		return s.refused(err)
	}
	return s.async(newOpWrite(Op{kind: opSet, key: key, value: value}))
}

// DeleteAsync starts a Delete and returns at once. Like SetAsync it queues
// the write before it returns, in order with the goroutine's other writes.
func (s *Store) DeleteAsync(key string) *Future {
	if err := s.validate(key, nil); err != nil {
		return s.refused(err)
	}
	return s.async(newOpWrite(Op{kind: opDelete, key: key}))
}

// Future is the outcome of an asynchronous write. Safe for concurrent use.
type Future struct {
	done chan struct{}
	err  error
	met  *storeMetrics // counts the outcome; nil without metrics
}

// Done returns a channel closed once the write is committed and applied, or
// has failed.
func (f *Future) Done() <-chan struct{} { return f.done }

// Wait returns the write's outcome once Done is closed: nil when it was
// applied, an error wrapping ErrOutcomeUnknown when it may or may not have
// been, any other error when it was not. If ctx ends first Wait returns an
// error wrapping ctx.Err() and ErrOutcomeUnknown, and the write goes on.
func (f *Future) Wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return fmt.Errorf("kv: wait: %w (%w)", ctx.Err(), ErrOutcomeUnknown)
	}
}

func failedFuture(err error) *Future {
	f := &Future{done: make(chan struct{}), err: err}
	close(f.done)
	return f
}

// refused is the Future of an async write refused before it was queued.
func (s *Store) refused(err error) *Future {
	s.met.wrote(err)
	return failedFuture(err)
}

// finish records the outcome of an async write and wakes its waiters.
func (f *Future) finish(err error) {
	f.err = err
	f.met.wrote(err)
	close(f.done)
}

// async queues w, before it returns, for at most AsyncWriteTimeout.
func (s *Store) async(w *pendingWrite) *Future {
	w.fut = &Future{done: make(chan struct{}), met: s.met}
	w.deadline = time.Now().Add(s.cfg.AsyncWriteTimeout)
	if !s.pipe.submit(w) {
		return s.refused(ErrClosed)
	}
	return w.fut
}

func (s *Store) validate(key string, value []byte) error {
	if err := s.usable(); err != nil {
		return err
	}
	if err := s.validateKey(key); err != nil {
		return err
	}
	if len(value) > s.cfg.MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(value), s.cfg.MaxValueSize)
	}
	return nil
}

func (s *Store) validateKey(key string) error {
	switch {
	case key == "":
		return ErrEmptyKey
	case len(key) > s.cfg.MaxKeySize:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(key), s.cfg.MaxKeySize)
	case len(key) >= len(sysPrefix) && key[:len(sysPrefix)] == sysPrefix:
		return fmt.Errorf("%w: %q", ErrReservedKey, key)
	}
	return nil
}

// writeCmd queues the write of one command on the write pipeline
// (batch.go) and waits for its result.
func (s *Store) writeCmd(ctx context.Context, w *pendingWrite) (cmdResult, error) {
	if err := ctx.Err(); err != nil {
		return cmdResult{}, fmt.Errorf("kv: %w", err)
	}
	if err := s.usable(); err != nil {
		return cmdResult{}, err
	}
	w.ctx = ctx
	if !s.pipe.submit(w) {
		return cmdResult{}, ErrClosed
	}
	if err := s.pipe.wait(ctx, w); err != nil {
		return cmdResult{}, err
	}
	switch r := w.res[0]; r.status {
	case resTooLarge:
		return r, fmt.Errorf("%w: the Gets would exceed %d bytes", ErrTxnTooLarge, maxTxnGetBytes)
	case resInvalid:
		return r, fmt.Errorf("%w: refused by the state machine", ErrReservedKey)
	case resNoSpace:
		return r, errNoSpace(r.rev)
	}
	return w.res[0], nil
}

// giveUp is the error of a call that ran out of time while retrying.
func (s *Store) giveUp(ctxErr, last error) error {
	if err := s.usable(); err != nil {
		return err
	}
	if last == nil {
		return fmt.Errorf("kv: %w", ctxErr)
	}
	if errors.Is(last, errNotLeader) {
		last = ErrNoLeader
	}
	if !errors.Is(last, ErrNoLeader) {
		last = fmt.Errorf("%w: %v", ErrNoLeader, last)
	}
	return fmt.Errorf("%w (%w)", ctxErr, last)
}

// applyLocal applies the commands of a batch forwarded by a follower
// through this member's Raft, coalesced with concurrent writes into one
// entry, or fails with errNotLeader (nothing done) if this member does not
// lead by the time they go out.
func (s *Store) applyLocal(ctx context.Context, cmds []command) ([]cmdResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := newRemoteWrite(cmds)
	w.ctx = ctx
	if !s.pipe.submit(w) {
		return nil, ErrClosed
	}
	if err := s.pipe.wait(ctx, w); err != nil {
		return nil, err
	}
	return w.res, nil
}

// leaderAddr returns the leader's transport address, preferring what gossip
// says about the leader's NodeID over the Raft configuration.
func (s *Store) leaderAddr() (string, bool) {
	addr, id := s.raft.LeaderWithID()
	if id == "" {
		return "", false
	}
	if a, err := (addressBook{s}).ServerAddr(id); err == nil {
		return string(a), true
	}
	return string(addr), addr != ""
}

// backoff spaces retries: 5 ms doubling to 200 ms, with jitter from the
// clock's low bits.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 5 * time.Millisecond} }

func (b *backoff) wait(ctx context.Context, stop <-chan struct{}) error {
	d := b.d + time.Duration(time.Now().UnixNano()%int64(b.d/2+1))
	b.d = min(2*b.d, 200*time.Millisecond)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return ErrClosed
	}
}
