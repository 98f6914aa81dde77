// Package concurrency builds locks and leader elections on a kv.Store, in
// the manner of etcd's clientv3/concurrency.
//
// A Session is a lease that a goroutine keeps alive (NewSession, Close). A
// Mutex and an Election write one key per Session under their prefix
// (the prefix, a slash, the lease ID in hex), attached to the Session's
// lease, and serve the keys in the order they were created (CreateRev,
// then the key's name for keys created at one revision): the first key
// holds the lock, or leads. Each waiter watches the key just before its
// own, so a release wakes one waiter, and waiters acquire in the order
// they queued. When a process crashes or is cut off,
// its lease expires after the Session's TTL and its keys are deleted
// through Raft, which hands the lock to the next waiter.
//
// # Fencing
//
// A lock cannot stop the world. A process that holds it can be paused
// (a long garbage collection, SIGSTOP, a virtual machine migrating) or cut
// off by the network for longer than its Session's TTL; its lease then
// expires, another process takes the lock, and the first one, when it
// runs again, still believes it holds the lock. Anything it writes then
// races with the new holder.
//
// The fencing token is what makes such a stale holder harmless. Mutex.Rev
// is the revision at which the holder claimed the lock (its key's ModRev,
// written again when its turn came): it strictly grows with each new
// holder. Mutex.IsOwner is a Txn condition that holds only while that key
// is still as this holder claimed it, so a write that matters must be
// guarded by it:
//
//	res, err := s.Txn(ctx, kv.Txn{
//		If:   []kv.Cond{m.IsOwner()},
//		Then: []kv.Op{kv.OpSet("balance", newBalance)},
//	})
//	if err == nil && !res.Succeeded {
//		// The lock was lost: nothing was written.
//	}
//
// The condition is checked by the state machine, atomically with the
// write, at the write's place in the Raft log: a stale holder's write
// fails however late it arrives, even one sent before the lock was lost
// and delayed past it. A write to another system can be fenced the same
// way if that system remembers the highest Rev it has seen and refuses
// smaller ones. A write that is not guarded has no such protection: the
// lock only orders the processes that check it. Election.IsLeader and
// Election.Rev do the same for a leader.
//
// Session.Done tells a holder that its lock is lost or may be: it is
// closed when the lease is found gone, or when it could not be renewed
// before the TTL ran out on this process's clock. It is a hint for
// stopping work early, not a guarantee: a paused process learns nothing
// until it runs again.
package concurrency
