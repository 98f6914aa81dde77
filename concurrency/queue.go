package concurrency

import (
	"context"
	"errors"
	"fmt"
	"math"

	kv "github.com/cohortkv/kv"
)

// A queue is what Mutex and Election share: under a prefix, one key per
// session (the prefix, a slash and the lease ID in hex), attached to the
// session's lease. The keys are served in the order of their CreateRev,
// then of their names (keys created in one Raft entry share a revision):
// the first holds the lock, or leads. The holder then writes its key once
// more (claim), so that its ModRev, the fencing token, is a revision of
// its own, above every earlier holder's.

// before says whether queue key a is served before b.
func before(a, b kv.Entry) bool {
	return a.CreateRev < b.CreateRev || a.CreateRev == b.CreateRev && a.Key < b.Key
}

// keyOf returns the queue key of sess under prefix.
func keyOf(prefix string, sess *Session) string {
	return fmt.Sprintf("%s%x", prefix, int64(sess.Lease()))
}

// neverRev is a ModRev no key ever has: the revision of a condition that
// must not hold.
const neverRev = math.MaxUint64

// enqueue creates key with value, attached to the session's lease, unless
// it exists, and returns its entry as the transaction left it (a key that
// existed is the session's own: its entry is returned as found).
func enqueue(ctx context.Context, sess *Session, key string, value []byte) (kv.Entry, error) {
	res, err := sess.store.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.Absent(key)},
		Then: []kv.Op{kv.OpSet(key, value, kv.WithLease(sess.Lease())), kv.OpGet(key)},
		Else: []kv.Op{kv.OpGet(key)},
	})
	if err != nil {
		return kv.Entry{}, err
	}
	if len(res.Gets) != 1 || res.Gets[0].ModRev == 0 {
		// The key was deleted in between: only the lease's end does that.
		return kv.Entry{}, ErrSessionLost
	}
	return res.Gets[0], nil
}

// waitTurn waits until the key of sess under prefix, created at rev, is
// the oldest of the queue: it lists the queue, and while a key created
// before its own is there, watches the newest of those until it is
// deleted, then lists again. It fails when ctx ends, when the session
// ends (ErrSessionLost) or when the key is found gone. With try, it does
// not wait: an older key makes it return ErrLocked.
func waitTurn(ctx context.Context, sess *Session, prefix, key string, rev uint64, try bool) error {
	wctx, stop := withSession(ctx, sess)
	defer stop()
	for {
		entries, listRev, err := sess.store.ListEntries(wctx, prefix)
		if err != nil {
			return waitErr(ctx, sess, err)
		}
		var pred, me kv.Entry
		for _, e := range entries {
			if e.Key == key {
				me = e
			}
		}
		if me.Key == "" || me.CreateRev != rev {
			return ErrSessionLost
		}
		for _, e := range entries {
			if e.Key != key && before(e, me) && (pred.Key == "" || before(pred, e)) {
				pred = e
			}
		}
		if pred.Key == "" {
			return nil
		}
		if try {
			return ErrLocked
		}
		if err := waitDelete(wctx, sess.store, pred.Key, listRev+1); err != nil && !errors.Is(err, kv.ErrCompacted) {
			return waitErr(ctx, sess, err)
		}
	}
}

// claim writes the key of a session that has reached the head of the
// queue again, if it is still at modRev, and returns its new entry: its
// ModRev is the holder's fencing token, a revision no earlier holder's
// token reaches (their keys were deleted before this write).
func claim(ctx context.Context, sess *Session, key string, modRev uint64, value []byte) (kv.Entry, error) {
	res, err := sess.store.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.ModRevIs(key, modRev)},
		Then: []kv.Op{kv.OpSet(key, value, kv.WithLease(sess.Lease())), kv.OpGet(key)},
	})
	if err != nil {
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return kv.Entry{}, ErrSessionLost
		}
		return kv.Entry{}, waitErr(ctx, sess, err)
	}
	if !res.Succeeded || len(res.Gets) != 1 || res.Gets[0].ModRev == 0 {
		// Only the lease's end changes the key under us.
		return kv.Entry{}, ErrSessionLost
	}
	return res.Gets[0], nil
}

// waitDelete waits until key is deleted at a revision >= from.
func waitDelete(ctx context.Context, s *kv.Store, key string, from uint64) error {
	for ev, err := range s.Watch(ctx, key, from) {
		if err != nil {
			return err
		}
		if ev.Type == kv.EventDelete && ev.Entry.Key == key {
			return nil
		}
	}
	return nil
}

// waitErr is the error of a call under ctx that failed with err:
// ErrSessionLost when the session ended under it (and ctx did not end).
func waitErr(ctx context.Context, sess *Session, err error) error {
	if ctx.Err() == nil && sess.ctx.Err() != nil {
		return ErrSessionLost
	}
	return err
}

// dequeue deletes key if it is still at rev (a best effort, bounded by the
// session's TTL, for a wait that failed: once the session ends, its lease
// takes the key with it).
func dequeue(ctx context.Context, sess *Session, key string, rev uint64) {
	if sess.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sess.ttl)
	defer cancel()
	ctx, stop := withSession(ctx, sess)
	defer stop()
	if rev == 0 {
		sess.store.Delete(ctx, key) //nolint:errcheck // best effort: the lease ends the key
		return
	}
	sess.store.Txn(ctx, kv.Txn{If: []kv.Cond{kv.ModRevIs(key, rev)}, Then: []kv.Op{kv.OpDelete(key)}}) //nolint:errcheck // likewise
}

// withSession returns ctx, also cancelled when sess ends.
func withSession(ctx context.Context, sess *Session) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(sess.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}
