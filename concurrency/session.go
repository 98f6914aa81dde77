package concurrency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	kv "github.com/cohortkv/kv"
)

// Session is a lease that a goroutine of its own keeps alive until Close:
// the keys that Mutex and Election write for it are attached to the lease,
// so they vanish, through Raft, once the session is lost. Its methods are
// safe for concurrent use.
//
// A session is lost when KeepAlive reports that the lease is gone
// (kv.ErrLeaseNotFound), when its Store closes, or when no renewal could
// be made before the TTL, counted on this process's clock from the last
// renewal that succeeded, ran out: the cluster may then have expired the
// lease. Done is closed then, and a lost session stays lost: open a new
// one.
type Session struct {
	store *kv.Store
	id    kv.LeaseID
	ttl   time.Duration

	ctx    context.Context // cancelled when the session ends (lost or closed)
	cancel context.CancelFunc
	done   chan struct{} // closed with cancel, once the keepalive goroutine has stopped
	lost   chan struct{} // closed when the lease is known to be gone from the cluster

	closeOnce sync.Once
	closeErr  error
}

// SessionOption changes how NewSession opens a Session.
type SessionOption func(*sessionOptions)

type sessionOptions struct {
	ctx context.Context
}

// WithContext bounds the Grant that NewSession makes by ctx (without it,
// NewSession waits for a leader for as long as it takes, as a write with
// context.Background does). ctx does not bound the session itself.
func WithContext(ctx context.Context) SessionOption {
	return func(o *sessionOptions) { o.ctx = ctx }
}

// NewSession grants a lease of ttl on s and starts keeping it alive: it is
// renewed every ttl/3 until Close, or until the session is lost. ttl is
// how long the keys of the session outlive a process that stops renewing
// them (a crash, a partition, a pause); it must be positive, and is
// rounded up to a whole millisecond. Shorter means faster failover, and
// more renewals through Raft. Keep it well above the time the cluster
// takes to replace a leader (HeartbeatTimeout plus ElectionTimeout plus a
// commit: about 2 to 3 s with the defaults, so 10 s is a safe TTL there):
// no renewal lands while there is no leader, and a session that could not
// renew for its TTL is lost, on every member at once.
func NewSession(s *kv.Store, ttl time.Duration, opts ...SessionOption) (*Session, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("concurrency: session TTL %v: it must be positive", ttl)
	}
	o := sessionOptions{ctx: context.Background()}
	for _, opt := range opts {
		opt(&o)
	}
	start := time.Now()
	id, err := s.Grant(o.ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("concurrency: grant a session lease: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sess := &Session{
		store:  s,
		id:     id,
		ttl:    ttl,
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		lost:   make(chan struct{}),
	}
	go sess.keepAlive(start.Add(ttl))
	return sess, nil
}

// Store returns the Store the session was opened on.
func (s *Session) Store() *kv.Store { return s.store }

// Lease returns the ID of the session's lease.
func (s *Session) Lease() kv.LeaseID { return s.id }

// TTL returns the TTL of the session's lease.
func (s *Session) TTL() time.Duration { return s.ttl }

// Done returns a channel that is closed when the session ends: when its
// lease is lost (see Session) or when Close is called. Locks held and
// elections won through the session are then no longer safe to rely on.
func (s *Session) Done() <-chan struct{} { return s.done }

// keepAlive renews the lease every ttl/3 until the session ends. deadline
// is when the lease may expire, on this process's clock, unless renewed:
// the TTL after the last renewal (or the grant) that succeeded was sent.
func (s *Session) keepAlive(deadline time.Time) {
	defer close(s.done)
	defer s.cancel()
	interval := s.ttl / 3
	retry := min(interval, 50*time.Millisecond)
	wait := interval
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		if !sent.Before(deadline) {
			return // the TTL ran out on our clock
		}
		ctx, cancel := context.WithDeadline(s.ctx, deadline)
		_, err := s.store.KeepAlive(ctx, s.id)
		cancel()
		switch {
		case err == nil:
			deadline, wait = sent.Add(s.ttl), interval
		case errors.Is(err, kv.ErrLeaseNotFound):
			close(s.lost)
			return
		case errors.Is(err, kv.ErrClosed), s.ctx.Err() != nil:
			return
		default:
			wait = retry // the deadline check above ends the retries
		}
		t.Reset(max(0, min(wait, time.Until(deadline))))
	}
}

// Close ends the session: it stops the renewals and revokes the lease,
// which deletes the session's keys (releasing its locks, resigning its
// elections) at once. The revocation is given the session's TTL; if it
// fails, the lease expires by itself within its TTL. Close is idempotent:
// later calls return what the first one did. It returns nil when the lease
// was already gone.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		select {
		case <-s.lost:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
		defer cancel()
		if err := s.store.Revoke(ctx, s.id); err != nil && !errors.Is(err, kv.ErrLeaseNotFound) {
			s.closeErr = fmt.Errorf("concurrency: revoke session lease %d: %w", s.id, err)
		}
	})
	return s.closeErr
}
