package concurrency

import (
	"context"
	"errors"
	"sync"

	kv "github.com/cohortkv/kv"
)

// Mutex is a distributed lock, fair and kept by a Session: the lock is
// held by the oldest key under its prefix, and each waiter waits for the
// key just older than its own, so waiters acquire in the order they
// queued. Losing the session loses the lock.
//
// A Mutex is for one goroutine at a time (Lock, then Unlock); Rev, IsOwner
// and Key are safe for concurrent use. Two Mutexes of one Session on one
// prefix share a key, hence the lock: give each a Session of its own.
type Mutex struct {
	sess   *Session
	prefix string // the queue's prefix: the Mutex's prefix and a slash
	key    string

	mu     sync.Mutex
	held   bool
	rev    uint64 // the fencing token (the key's ModRev as Lock claimed it), while held
	modRev uint64 // the key's ModRev, while held
}

// NewMutex returns a Mutex on the keys under prefix + "/", one per waiting
// or holding Session. It does not touch the Store.
func NewMutex(sess *Session, prefix string) *Mutex {
	m := &Mutex{sess: sess, prefix: prefix + "/"}
	m.key = keyOf(m.prefix, sess)
	return m
}

// Key returns the key of this Mutex's Session under the prefix: it exists
// while the Mutex waits for the lock or holds it.
func (m *Mutex) Key() string { return m.key }

// Lock waits until it holds the lock, ctx ends, or the session ends
// (ErrSessionLost). It queues a key for the session, attached to its
// lease, and waits for the deletion of the key queued just before it, until
// no older one remains. When it fails it takes its key out of the queue.
//
// Holding the lock means that no other holder's key is older, as of a
// linearizable read, and that no other Lock can return until this key is
// deleted. It does not mean this process will still hold it a moment from
// now: the session may be lost while the process is paused or cut off.
// Guard the writes the lock protects with IsOwner (see the package
// documentation).
func (m *Mutex) Lock(ctx context.Context) error { return m.lock(ctx, false) }

// TryLock is Lock without the wait: it fails with ErrLocked, having taken
// its key out of the queue, when another holder has the lock.
func (m *Mutex) TryLock(ctx context.Context) error { return m.lock(ctx, true) }

func (m *Mutex) lock(ctx context.Context, try bool) error {
	if m.sess.ctx.Err() != nil {
		return ErrSessionLost
	}
	wctx, stop := withSession(ctx, m.sess)
	e, err := enqueue(wctx, m.sess, m.key, nil)
	stop()
	if err != nil {
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return ErrSessionLost
		}
		if errors.Is(err, kv.ErrOutcomeUnknown) {
			dequeue(ctx, m.sess, m.key, 0)
		}
		return waitErr(ctx, m.sess, err)
	}
	if err := waitTurn(ctx, m.sess, m.prefix, m.key, e.CreateRev, try); err != nil {
		dequeue(ctx, m.sess, m.key, e.ModRev)
		return err
	}
	held, err := claim(ctx, m.sess, m.key, e.ModRev, nil)
	if err != nil {
		dequeue(ctx, m.sess, m.key, e.ModRev)
		return err
	}
	m.mu.Lock()
	m.held, m.rev, m.modRev = true, held.ModRev, held.ModRev
	m.mu.Unlock()
	return nil
}

// Unlock releases the lock: it deletes this holder's key, if it is still
// the one Lock made. It returns ErrLockReleased when the Mutex does not
// hold the lock. A lock lost since (the session's lease expired) is
// released already, and Unlock returns nil.
func (m *Mutex) Unlock(ctx context.Context) error {
	m.mu.Lock()
	held, modRev := m.held, m.modRev
	m.mu.Unlock()
	if !held {
		return ErrLockReleased
	}
	_, err := m.sess.store.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.ModRevIs(m.key, modRev)},
		Then: []kv.Op{kv.OpDelete(m.key)},
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.held, m.rev, m.modRev = false, 0, 0
	m.mu.Unlock()
	return nil
}

// Rev returns the fencing token of the lock: the revision at which this
// holder claimed it (Lock writes the holder's key once more when its turn
// comes, so that the token is a revision of its own), while Lock has
// succeeded and Unlock has not been called; 0 otherwise. Tokens of
// successive holders strictly grow, so a
// resource that remembers the highest token it has seen can refuse a
// stale holder that does not write through this Store.
func (m *Mutex) Rev() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// IsOwner returns a Txn condition that holds only while this holder owns
// the lock: this holder's key is still the one Lock made (kv.ModRevIs of
// the key and its revision). Before Lock and after Unlock it never holds.
// Put it in the If of every write the lock protects, so that the write
// fails once the lock was lost, however late it arrives.
func (m *Mutex) IsOwner() kv.Cond {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.held {
		return kv.ModRevIs(m.key, neverRev)
	}
	return kv.ModRevIs(m.key, m.modRev)
}
