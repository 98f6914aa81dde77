package concurrency

import (
	"context"
	"errors"
	"sync"
	"time"

	kv "github.com/cohortkv/kv"
)

// Election elects a leader among the Sessions that campaign under a
// prefix, in the order they began to campaign: the leader is the oldest
// candidate's key under prefix + "/", and its value is the leader's value
// (an address, a name). Losing the session loses the leadership.
//
// Campaign, Proclaim and Resign are for one goroutine at a time; Leader,
// Observe, Rev, IsLeader and Key are safe for concurrent use.
type Election struct {
	sess   *Session
	prefix string // the queue's prefix: the Election's prefix and a slash
	key    string

	mu     sync.Mutex
	leader bool
	rev    uint64 // the key's ModRev as Campaign claimed it, while leader
	modRev uint64 // the key's ModRev, while leader
}

// NewElection returns an Election on the keys under prefix + "/", one per
// campaigning Session. It does not touch the Store.
func NewElection(sess *Session, prefix string) *Election {
	e := &Election{sess: sess, prefix: prefix + "/"}
	e.key = keyOf(e.prefix, sess)
	return e
}

// Key returns the key of this Election's Session under the prefix: it
// exists while the Election campaigns or leads.
func (e *Election) Key() string { return e.key }

// Campaign puts this session forward with value and waits until it leads,
// ctx ends, or the session ends (ErrSessionLost). When it fails it
// withdraws. A session that already campaigns (from another Election on
// the same prefix) keeps its place; its value is replaced.
//
// As with Mutex.Lock, leading is a fact about the Store, not a promise
// about this process's future: guard the writes of the leader with
// IsLeader.
func (e *Election) Campaign(ctx context.Context, value string) error {
	if e.sess.ctx.Err() != nil {
		return ErrSessionLost
	}
	wctx, stop := withSession(ctx, e.sess)
	ent, err := enqueue(wctx, e.sess, e.key, []byte(value))
	if err == nil && string(ent.Value) != value {
		var res kv.TxnResult
		res, err = e.sess.store.Txn(wctx, kv.Txn{
			If:   []kv.Cond{kv.ModRevIs(e.key, ent.ModRev)},
			Then: []kv.Op{kv.OpSet(e.key, []byte(value), kv.WithLease(e.sess.Lease()))},
		})
		if err == nil && !res.Succeeded {
			err = ErrSessionLost // only the lease's end changes the key under us
		}
		ent.ModRev = res.Revision
	}
	stop()
	if err != nil {
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return ErrSessionLost
		}
		if errors.Is(err, kv.ErrOutcomeUnknown) {
			dequeue(ctx, e.sess, e.key, 0)
		}
		return waitErr(ctx, e.sess, err)
	}
	if err := waitTurn(ctx, e.sess, e.prefix, e.key, ent.CreateRev, false); err != nil {
		dequeue(ctx, e.sess, e.key, ent.ModRev)
		return err
	}
	led, err := claim(ctx, e.sess, e.key, ent.ModRev, []byte(value))
	if err != nil {
		dequeue(ctx, e.sess, e.key, ent.ModRev)
		return err
	}
	e.mu.Lock()
	e.leader, e.rev, e.modRev = true, led.ModRev, led.ModRev
	e.mu.Unlock()
	return nil
}

// Proclaim replaces the leader's value, without an election. It fails
// with ErrElectionNotLeader when this Election does not lead.
func (e *Election) Proclaim(ctx context.Context, value string) error {
	e.mu.Lock()
	leader, modRev := e.leader, e.modRev
	e.mu.Unlock()
	if !leader {
		return ErrElectionNotLeader
	}
	res, err := e.sess.store.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.ModRevIs(e.key, modRev)},
		Then: []kv.Op{kv.OpSet(e.key, []byte(value), kv.WithLease(e.sess.Lease()))},
	})
	if errors.Is(err, kv.ErrLeaseNotFound) || (err == nil && !res.Succeeded) {
		e.mu.Lock()
		e.leader, e.rev, e.modRev = false, 0, 0
		e.mu.Unlock()
		return ErrElectionNotLeader
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.modRev = res.Revision
	e.mu.Unlock()
	return nil
}

// Resign gives up the leadership: it deletes this leader's key, so that
// the next candidate leads. It returns nil when this Election does not
// lead.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	leader, modRev := e.leader, e.modRev
	e.mu.Unlock()
	if !leader {
		return nil
	}
	_, err := e.sess.store.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.ModRevIs(e.key, modRev)},
		Then: []kv.Op{kv.OpDelete(e.key)},
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.leader, e.rev, e.modRev = false, 0, 0
	e.mu.Unlock()
	return nil
}

// Leader returns the current leader's value (a linearizable read), or
// ErrElectionNoLeader when nobody campaigns.
func (e *Election) Leader(ctx context.Context) (string, error) {
	l, _, err := e.leaderEntry(ctx)
	if err != nil {
		return "", err
	}
	return string(l.Value), nil
}

// leaderEntry returns the oldest key of the queue (Key "" when there is
// none) and the revision of the read.
func (e *Election) leaderEntry(ctx context.Context) (kv.Entry, uint64, error) {
	entries, rev, err := e.sess.store.ListEntries(ctx, e.prefix)
	if err != nil {
		return kv.Entry{}, 0, err
	}
	var l kv.Entry
	for _, ent := range entries {
		if l.Key == "" || before(ent, l) {
			l = ent
		}
	}
	if l.Key == "" {
		return l, rev, ErrElectionNoLeader
	}
	return l, rev, nil
}

// Rev returns the revision at which this leader claimed the leadership
// (Campaign writes its key once more when its turn comes), while it leads;
// 0 otherwise. Like Mutex.Rev it serves as a fencing token: successive
// leaders' revisions strictly grow.
func (e *Election) Rev() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rev
}

// IsLeader returns a Txn condition that holds only while this Election
// leads, with the value it last set: its key is at the revision Campaign
// or Proclaim left it at. Before Campaign and after Resign it never holds.
func (e *Election) IsLeader() kv.Cond {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leader {
		return kv.ModRevIs(e.key, neverRev)
	}
	return kv.ModRevIs(e.key, e.modRev)
}

// Observe returns a channel that receives the leader's value when Observe
// starts (if someone leads) and each time the leader or its value changes.
// A goroutine feeds it until ctx ends, or the Store closes; it then closes
// the channel: cancel ctx when done. The channel is unbuffered: the
// goroutine waits for each value to be received, and the changes of one
// leader's value come in order, each once. A leader that comes and goes
// while a value waits to be received may be missed; the current one never
// is.
func (e *Election) Observe(ctx context.Context) <-chan string {
	ch := make(chan string)
	go e.observe(ctx, ch)
	return ch
}

// observeRetry is how long Observe waits before it tries again after an
// error (no leader reachable, say).
const observeRetry = 100 * time.Millisecond

func (e *Election) observe(ctx context.Context, ch chan<- string) {
	defer close(ch)
	s := e.sess.store
	var last kv.Entry // the leader entry last sent
	send := func(l kv.Entry) bool {
		if l.Key == last.Key && l.CreateRev == last.CreateRev && string(l.Value) == string(last.Value) {
			return true
		}
		select {
		case ch <- string(l.Value):
			last = l
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		l, rev, err := e.leaderEntry(ctx)
		switch {
		case errors.Is(err, ErrElectionNoLeader):
			// Wait for a candidate, then read again.
			err = waitPut(ctx, s, e.prefix, rev+1)
		case err == nil:
			if !send(l) {
				return
			}
			err = e.followLeader(ctx, l, rev+1, send)
		}
		if errors.Is(err, kv.ErrClosed) {
			return
		}
		if err != nil && !errors.Is(err, kv.ErrCompacted) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(observeRetry):
			}
		}
	}
}

// followLeader sends the values of leader l from revision from on, until
// its key is deleted (nil) or the watch ends (its error).
func (e *Election) followLeader(ctx context.Context, l kv.Entry, from uint64, send func(kv.Entry) bool) error {
	for ev, err := range e.sess.store.Watch(ctx, l.Key, from) {
		if err != nil {
			return err
		}
		if ev.Entry.Key != l.Key {
			continue
		}
		if ev.Type == kv.EventDelete {
			return nil
		}
		if !send(ev.Entry) {
			return ctx.Err()
		}
	}
	return ctx.Err()
}

// waitPut waits until a key under prefix is written at a revision >= from.
func waitPut(ctx context.Context, s *kv.Store, prefix string, from uint64) error {
	for ev, err := range s.Watch(ctx, prefix, from) {
		if err != nil {
			return err
		}
		if ev.Type == kv.EventPut {
			return nil
		}
	}
	return ctx.Err()
}
