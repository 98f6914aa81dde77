package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// LeaseID names a lease. IDs are positive; 0 means no lease.
type LeaseID int64

// WriteOption changes how Set writes, made by WithLease or TTL.
type WriteOption struct {
	isTTL bool
	lease LeaseID
	ttl   time.Duration
}

// WithLease attaches the key to lease id: the key is deleted, through
// Raft, when the lease expires or is revoked. WithLease(0) attaches it to
// no lease. A later write of the key
// without the option detaches it. A write naming a lease that does not
// exist is not applied; its error wraps ErrLeaseNotFound.
func WithLease(id LeaseID) WriteOption { return WriteOption{lease: id} }

// TTL gives the key a lease of its own that expires after d: the key is
// deleted once d has passed since this write (at least d; see Grant for
// how much later). A later write of the key ends that lease, and the key
// then lives as the later write says; but once another key is attached to
// the lease WithLease (Entry.Lease names it), it is a lease like any other
// and ends only when it expires or is revoked. d is rounded up to a whole
// millisecond.
func TTL(d time.Duration) WriteOption { return WriteOption{isTTL: true, ttl: d} }

// ErrLeaseNotFound is returned by KeepAlive and Revoke, and by a write
// that names a lease, when the lease does not exist: it was never
// granted, or it expired or was revoked. Nothing was written.
var ErrLeaseNotFound = errors.New("kv: lease not found")

// ErrInvalidTTL is returned for a TTL (of Grant, or the TTL option) that is
// not positive or is longer than ten years. Nothing was written.
var ErrInvalidTTL = errors.New("kv: invalid lease TTL")

// maxLeaseTTL bounds a lease's TTL, and maxLeaseN what a lease command or
// operation may carry (an ID or a TTL in ms).
const (
	maxLeaseTTL = 10 * 365 * 24 * time.Hour
	maxLeaseN   = 1<<63 - 1
)

// Grant creates a lease that expires ttl after the grant unless KeepAlive
// renews it, and returns its ID. Keys written WithLease(id) are deleted
// when it expires or is revoked.
//
// Expiry is decided by the leader, on its clock, and carried out through
// Raft: the leader stamps its clock into the log entries that grant and
// renew a lease, the state machine stores the deadline, and the leader
// proposes the expiry once the deadline has passed on its clock. No
// member's apply reads a clock. A lease thus lives at least its TTL, as
// long as the members' clocks agree (keep them synchronized, as for any
// lease-based system); a new leader waits out an election timeout before
// it expires anything, and so does a leader that was paused for a second
// or more, so that the renewals the pause held up land first. It is expired at most about 100 ms plus a commit
// after its deadline while a leader is in office; when the leader changes,
// add the election and one ElectionTimeout.
//
// Grant is a write: its errors are Set's. ttl must be positive (it is
// rounded up to a whole millisecond) and at most ten years.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (_ LeaseID, err error) {
	defer s.met.wroteAt(&err)
	ms, err := ttlMillis(ttl)
	if err != nil {
		return 0, err
	}
	res, err := s.leaseCmd(ctx, cmdGrant, ms)
	if err != nil {
		return 0, err
	}
	return LeaseID(res.rev), nil
}

// KeepAlive renews lease id: it expires its TTL after the renewal, unless
// renewed again. It returns the TTL left, which is the lease's TTL. Call
// it well within the TTL (a third of it, say): each renewal is a write
// through Raft. An error wrapping ErrLeaseNotFound means the lease is gone
// and its keys are deleted or being deleted; other errors are Set's.
func (s *Store) KeepAlive(ctx context.Context, id LeaseID) (_ time.Duration, err error) {
	defer s.met.wroteAt(&err)
	if id <= 0 {
		return 0, fmt.Errorf("%w: lease %d", ErrLeaseNotFound, id)
	}
	res, err := s.leaseCmd(ctx, cmdKeepAlive, uint64(id))
	if err != nil {
		return 0, err
	}
	return time.Duration(res.rev) * time.Millisecond, nil
}

// Revoke ends lease id at once and deletes its keys, in one revision. An
// error wrapping ErrLeaseNotFound means the lease did not exist (a Revoke
// that is retried after its answer was lost gets the first answer, not
// this error); other errors are Set's.
func (s *Store) Revoke(ctx context.Context, id LeaseID) (err error) {
	defer s.met.wroteAt(&err)
	if id <= 0 {
		return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, id)
	}
	_, err = s.leaseCmd(ctx, cmdRevoke, uint64(id))
	return err
}

func ttlMillis(ttl time.Duration) (uint64, error) {
	if ttl <= 0 || ttl > maxLeaseTTL {
		return 0, fmt.Errorf("%w: %v: it must be positive and at most %v", ErrInvalidTTL, ttl, maxLeaseTTL)
	}
	return uint64((ttl + time.Millisecond - 1) / time.Millisecond), nil
}

// leaseCmd writes one lease command and returns its result.
func (s *Store) leaseCmd(ctx context.Context, kind uint8, n uint64) (cmdResult, error) {
	return s.leaseCmdIn(ctx, kind, n, 0)
}

// leaseCmdIn is leaseCmd for an expiry decided by the leader of term.
func (s *Store) leaseCmdIn(ctx context.Context, kind uint8, n, term uint64) (cmdResult, error) {
	if err := s.usable(); err != nil {
		return cmdResult{}, err
	}
	w := &pendingWrite{}
	w.one[0] = command{kind: kind, n: n, term: term}
	w.cmds = w.one[:]
	w.size, w.nops = w.one[0].size(), 1
	res, err := s.writeCmd(ctx, w)
	if err != nil {
		return res, err
	}
	if res.status == resNoLease {
		return res, fmt.Errorf("%w: lease %d", ErrLeaseNotFound, n)
	}
	return res, nil
}

// writeOpts applies opts to the Op of a Set.
func writeOpts(o *Op, opts []WriteOption) error {
	for _, opt := range opts {
		switch {
		case opt.isTTL:
			ms, err := ttlMillis(opt.ttl)
			if err != nil {
				return err
			}
			o.ttl, o.lease = ms, 0
		case opt.lease < 0:
			return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, opt.lease)
		case opt.lease > 0:
			o.lease, o.ttl = uint64(opt.lease), 0
		}
		// WithLease(0), like a zero WriteOption, attaches to no lease.
	}
	return nil
}

// Lease state, under keys of the store's own state, changed by the state
// machine in the transaction of the entry that changes it:
//
//	sysLeasePrefix + id      TTL in ms (8), deadline in leader ms (8), flags (1)
//	sysExpiryPrefix + deadline + id    (empty): the leases by deadline
//	sysLeaseKeyPrefix + id + key       (empty): the keys of each lease
//	sysLeaseNextKey          the next lease ID (8)
//
// A key's record carries its lease's ID too (record format 3). IDs and
// deadlines are 8 bytes big endian, so that keys sort by them.
const (
	sysLeasePrefix    = sysPrefix + "l/"
	sysExpiryPrefix   = sysPrefix + "e/"
	sysLeaseKeyPrefix = sysPrefix + "k/"
	sysLeaseNextKey   = sysPrefix + "lnext"
)

// leaseOwnKey flags a lease that TTL made for one key: it ends when the key
// is deleted or written again. A write WithLease of another key makes it
// a lease like any other (share): it then ends when it expires or is
// revoked, and the keys attached to it go with it. leaseExpiring flags a
// lease whose expiry has begun (its keys take more than one expiry entry):
// it is gone for KeepAlive and WithLease, and its next expiry entry goes on
// whatever the time.
const (
	leaseOwnKey   = 1
	leaseExpiring = 2
)

type leaseRec struct {
	ttl, deadline uint64
	flags         byte
}

func leaseKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(sysLeasePrefix), id)
}

func expiryKey(deadline, id uint64) []byte {
	b := binary.BigEndian.AppendUint64([]byte(sysExpiryPrefix), deadline)
	return binary.BigEndian.AppendUint64(b, id)
}

func leaseKeyKey(id uint64, key string) []byte {
	b := binary.BigEndian.AppendUint64([]byte(sysLeaseKeyPrefix), id)
	return append(b, key...)
}

func getLease(tx storage.ReadTx, id uint64) (leaseRec, bool, error) {
	b, ok := tx.Get(leaseKey(id))
	if !ok {
		return leaseRec{}, false, nil
	}
	if len(b) != 17 {
		return leaseRec{}, false, fmt.Errorf("%w: lease %d: record of %d bytes", storage.ErrCorruptData, id, len(b))
	}
	return leaseRec{ttl: binary.BigEndian.Uint64(b), deadline: binary.BigEndian.Uint64(b[8:]), flags: b[16]}, true, nil
}

func putLease(tx storage.WriteTx, id uint64, l leaseRec) error {
	b := make([]byte, 0, 17)
	b = binary.BigEndian.AppendUint64(b, l.ttl)
	b = binary.BigEndian.AppendUint64(b, l.deadline)
	b = append(b, l.flags)
	if err := tx.Put(leaseKey(id), b); err != nil {
		return err
	}
	return tx.Put(expiryKey(l.deadline, id), nil)
}

// grant creates a lease of ttl ms at leader time now and returns its ID.
func (a *applier) grant(now, ttl uint64, flags byte) (uint64, error) {
	id := uint64(1)
	if b, ok := a.tx.Get([]byte(sysLeaseNextKey)); ok && len(b) == 8 {
		id = binary.BigEndian.Uint64(b)
	}
	if err := a.tx.Put([]byte(sysLeaseNextKey), binary.BigEndian.AppendUint64(nil, id+1)); err != nil {
		return 0, err
	}
	return id, putLease(a.tx, id, leaseRec{ttl: ttl, deadline: satAdd(now, ttl), flags: flags})
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// dropLease removes lease id (whose record is l) and its expiry entry; its
// keys are the caller's to handle.
func (a *applier) dropLease(id uint64, l leaseRec) error {
	if err := a.tx.Delete(expiryKey(l.deadline, id)); err != nil {
		return err
	}
	return a.tx.Delete(leaseKey(id))
}

// attach and detach keep the index of a lease's keys. Detaching the last
// key of a lease that TTL made ends the lease.
func (a *applier) attach(id uint64, key string) error {
	if id == 0 {
		return nil
	}
	return a.tx.Put(leaseKeyKey(id, key), nil)
}

// share clears the own-key flag of lease id, which a write WithLease
// attaches a key to: the lease may hold other keys than the one TTL made
// it for, and must not end with that one.
func (a *applier) share(id uint64) error {
	l, ok, err := getLease(a.tx, id)
	if err != nil || !ok || l.flags&leaseOwnKey == 0 {
		return err
	}
	l.flags &^= leaseOwnKey
	return putLease(a.tx, id, l)
}

func (a *applier) detach(id uint64, key string) error {
	if id == 0 {
		return nil
	}
	if err := a.tx.Delete(leaseKeyKey(id, key)); err != nil {
		return err
	}
	l, ok, err := getLease(a.tx, id)
	if err != nil || !ok || l.flags&leaseOwnKey == 0 {
		return err
	}
	// Only its key is on it: a write WithLease of another key shares it.
	return a.dropLease(id, l)
}

// leasesExist says whether every lease the sets of ops name exists.
func (a *applier) leasesExist(ops []Op) (bool, error) {
	for i := range ops {
		if id := ops[i].lease; ops[i].kind == opSet && id != 0 && ops[i].ttl == 0 {
			if l, ok, err := getLease(a.tx, id); err != nil || !ok || l.flags&leaseExpiring != 0 {
				return false, err
			}
		}
	}
	return true, nil
}

// expireBatch bounds the keys one expiry command deletes, so that a lease
// with very many keys is expired in several entries, each of bounded size.
const expireBatch = 1024

// leaseCommand applies a lease command at index, at leader time now.
func (a *applier) leaseCommand(index, now uint64, c *command) (cmdResult, error) {
	res := cmdResult{status: resOK, rev: index}
	if c.kind == cmdGrant {
		id, err := a.grant(now, c.n, 0)
		res.rev = id
		return res, err
	}
	l, ok, err := getLease(a.tx, c.n)
	if err != nil {
		return res, err
	}
	if !ok {
		return cmdResult{status: resNoLease, rev: index}, nil
	}
	switch c.kind {
	case cmdKeepAlive:
		if l.flags&leaseExpiring != 0 {
			return cmdResult{status: resNoLease, rev: index}, nil
		}
		if err := a.tx.Delete(expiryKey(l.deadline, c.n)); err != nil {
			return res, err
		}
		l.deadline = satAdd(now, l.ttl)
		res.rev = l.ttl
		return res, putLease(a.tx, c.n, l)
	case cmdExpire:
		if c.term != 0 && c.term != a.term {
			// Decided by a leader of another term, and carried to this
			// one's log (a write retried across a leader change): only
			// the leader that decided it may expire, after its wait.
			return cmdResult{status: resFailed, rev: index}, nil
		}
		if l.deadline > now && l.flags&leaseExpiring == 0 {
			// Renewed since the leader saw it expire.
			return cmdResult{status: resFailed, rev: index}, nil
		}
		done, err := a.deleteLeaseKeys(index, c.n, expireBatch)
		if err != nil {
			return res, err
		}
		if !done {
			// Some of its keys are gone: it cannot be renewed.
			if l.flags&leaseExpiring == 0 {
				l.flags |= leaseExpiring
				err = putLease(a.tx, c.n, l)
			}
			return res, err
		}
		return res, a.dropLease(c.n, l)
	default: // cmdRevoke
		if _, err := a.deleteLeaseKeys(index, c.n, -1); err != nil {
			return res, err
		}
		return res, a.dropLease(c.n, l)
	}
}

// deleteLeaseKeys deletes up to max keys of lease id (all for max < 0), at
// index, and says whether none is left.
func (a *applier) deleteLeaseKeys(index, id uint64, max int) (bool, error) {
	prefix := leaseKeyKey(id, "")
	var keys []string
	more := false
	err := a.tx.Scan(prefix, func(k, _ []byte) bool {
		if !bytes.HasPrefix(k, prefix) {
			return false
		}
		if max >= 0 && len(keys) == max {
			more = true
			return false
		}
		keys = append(keys, string(k[len(prefix):]))
		return true
	})
	if err != nil {
		return false, err
	}
	for _, key := range keys {
		if err := a.tx.Delete(leaseKeyKey(id, key)); err != nil {
			return false, err
		}
		if err := a.deleteKey(index, key, false); err != nil {
			return false, err
		}
	}
	return !more, nil
}

// expiryTick is how often a leader looks for leases past their deadline.
const expiryTick = 100 * time.Millisecond

// stallGap is how long the expiry loop may go without running before it
// counts as stalled (its process paused, its machine starved).
const stallGap = time.Second

// expirySince returns when a leader's wait of an ElectionTimeout before it
// expires anything starts: at since, unless the leader is new (newTerm) or
// its loop, which last ran at last, has stalled: then now.
func expirySince(since, last, now time.Time, newTerm bool) time.Time {
	if newTerm || (!last.IsZero() && now.Sub(last) > stallGap) {
		return now
	}
	return since
}

// expireLoop runs on every member for the life of the Store; it acts while
// this member leads: once it has led for an ElectionTimeout, it proposes the
// expiry of every lease whose deadline has passed on its clock. The state
// machine checks the deadline again against the time the entry carries, so
// a renewal that wins the race keeps the lease. A leader whose loop stalled
// (its process paused, say: no renewal could commit meanwhile) waits an
// ElectionTimeout again, as a new leader does, so that the renewals the
// stall held up land before it expires anything.
func (s *Store) expireLoop() {
	t := time.NewTicker(expiryTick)
	defer t.Stop()
	var term uint64
	var since, ran time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		last := ran
		ran = now
		if s.raft.State() != raft.Leader {
			term = 0
			continue
		}
		cur := s.raft.CurrentTerm()
		since = expirySince(since, last, now, cur != term)
		term = cur
		if time.Since(since) < s.cfg.ElectionTimeout || s.readyTerm.Load() != term {
			continue
		}
		// While expiries go through and more are due (a lease of many
		// keys takes several), go on without waiting for the next tick,
		// for at most a second.
		for start := time.Now(); time.Since(start) < time.Second && !s.isClosed(); {
			ids, err := s.expiredLeases(leaderTime(), 256)
			if err != nil {
				s.logger.Warn("cannot read lease deadlines", "error", err)
				break
			}
			if len(ids) == 0 || s.expire(ids, term) == 0 {
				break
			}
		}
		ran = time.Now()
	}
}

// expire proposes the expiry of leases ids, all at once (the write
// pipeline packs them into few entries), and waits for the answers.
// It returns how many expiries were applied.
func (s *Store) expire(ids []uint64, term uint64) int {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var applied atomic.Int64
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.leaseCmdIn(ctx, cmdExpire, id, term)
			switch {
			case err == nil && res.status == resOK:
				applied.Add(1)
			case err != nil && !errors.Is(err, ErrLeaseNotFound) && !s.isClosed():
				s.logger.Debug("lease expiry not applied yet", "lease", id, "error", err)
			}
		}()
	}
	wg.Wait()
	return int(applied.Load())
}

// leaseExists says whether lease id is in this member's applied state
// (kvtest's WaitLeaseExpired reads it).
func (s *Store) leaseExists(id int64) (bool, error) {
	if err := s.usable(); err != nil {
		return false, err
	}
	if id <= 0 {
		return false, nil
	}
	var ok bool
	err := s.eng.View(func(tx storage.ReadTx) error {
		var err error
		_, ok, err = getLease(tx, uint64(id))
		return err
	})
	return ok, s.engineErr(err)
}

// expiredLeases returns up to max leases whose deadline is at or before now.
func (s *Store) expiredLeases(now uint64, max int) ([]uint64, error) {
	var ids []uint64
	prefix := []byte(sysExpiryPrefix)
	err := s.eng.View(func(tx storage.ReadTx) error {
		return tx.Scan(prefix, func(k, _ []byte) bool {
			if len(k) != len(prefix)+16 || string(k[:len(prefix)]) != sysExpiryPrefix {
				return false
			}
			if binary.BigEndian.Uint64(k[len(prefix):]) > now || len(ids) == max {
				return false
			}
			ids = append(ids, binary.BigEndian.Uint64(k[len(prefix)+8:]))
			return true
		})
	})
	return ids, s.engineErr(err)
}
