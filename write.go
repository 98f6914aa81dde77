package kv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Set stores value under key. It returns nil once the write is committed on
// a majority and applied on the leader; any instance accepts it (a follower
// forwards it to the leader). While the leader changes it retries until ctx
// ends.
func (s *Store) Set(ctx context.Context, key string, value []byte) error {
	if err := s.validate(key, value); err != nil {
		return err
	}
	return s.write(ctx, &command{Ops: []op{{Kind: opSet, Key: key, Value: value}}})
}

// Delete removes key. Deleting an absent key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.validate(key, nil); err != nil {
		return err
	}
	return s.write(ctx, &command{Ops: []op{{Kind: opDelete, Key: key}}})
}

// SetAsync starts a Set and returns at once. Many writes in flight are
// pipelined. The write keeps trying for at most Config.AsyncWriteTimeout.
func (s *Store) SetAsync(key string, value []byte) *Future {
	if err := s.validate(key, value); err != nil {
		return failedFuture(err)
	}
	return s.async(&command{Ops: []op{{Kind: opSet, Key: key, Value: value}}})
}

// DeleteAsync starts a Delete and returns at once.
func (s *Store) DeleteAsync(key string) *Future {
	if err := s.validate(key, nil); err != nil {
		return failedFuture(err)
	}
	return s.async(&command{Ops: []op{{Kind: opDelete, Key: key}}})
}

// Future is the outcome of an asynchronous write. Safe for concurrent use.
type Future struct {
	done chan struct{}
	err  error
}

// Done returns a channel closed once the write is committed and applied, or
// has failed.
func (f *Future) Done() <-chan struct{} { return f.done }

// Wait returns the write's outcome once Done is closed, or ctx.Err() if ctx
// ends first (the write goes on).
func (f *Future) Wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func failedFuture(err error) *Future {
	f := &Future{done: make(chan struct{}), err: err}
	close(f.done)
	return f
}

func (s *Store) async(c *command) *Future {
	f := &Future{done: make(chan struct{})}
	ok := s.goFunc(func() {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.AsyncWriteTimeout)
		defer cancel()
		f.err = s.write(ctx, c)
		close(f.done)
	})
	if !ok {
		return failedFuture(ErrClosed)
	}
	return f
}

func (s *Store) validate(key string, value []byte) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.validateOps([]op{{Key: key, Value: value}})
}

func (s *Store) validateOps(ops []op) error {
	for _, o := range ops {
		switch {
		case o.Key == "":
			return ErrEmptyKey
		case len(o.Key) > s.cfg.MaxKeySize:
			return fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(o.Key), s.cfg.MaxKeySize)
		case len(o.Value) > s.cfg.MaxValueSize:
			return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(o.Value), s.cfg.MaxValueSize)
		}
	}
	return nil
}

// write sends a command to the leader (itself, or over RPC) and retries with
// backoff while there is none, as long as the command certainly had no
// effect.
func (s *Store) write(ctx context.Context, c *command) error {
	var last error
	for b := newBackoff(); ; {
		if err := ctx.Err(); err != nil {
			return s.giveUp(err, last)
		}
		if err := s.usable(); err != nil {
			return err
		}
		err, retry := s.writeOnce(ctx, c)
		if err == nil || !retry {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("kv: write: %w", err)
			}
			return err
		}
		last = err
		if err := b.wait(ctx, s.ctx.Done()); err != nil {
			return s.giveUp(err, last)
		}
	}
}

// writeOnce makes one attempt: through this member's Raft if it leads, else
// forwarded to the leader. retry says whether the attempt certainly had no
// effect.
func (s *Store) writeOnce(ctx context.Context, c *command) (err error, retry bool) {
	if s.raft.State() == raft.Leader {
		err = s.applyLocal(ctx, c.Ops)
		return err, errors.Is(err, errNotLeader)
	}
	return s.fwd.submit(ctx, c.Ops)
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

// applyLocal applies ops through this member's Raft, which must lead,
// coalesced with concurrent writes into one entry.
func (s *Store) applyLocal(ctx context.Context, ops []op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.diskFullRefusal(); err != nil {
		return err
	}
	return s.batch.submit(ctx, ops)
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
