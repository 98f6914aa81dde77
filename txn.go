package kv

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/cohortkv/kv/internal/storage"
)

// Txn is a transaction: if every condition in If holds, the operations of
// Then run, else those of Else, atomically, at one revision (see
// Store.Txn). An empty If holds.
type Txn struct {
	If   []Cond
	Then []Op
	Else []Op
}

// Cond is a condition of a Txn, made by ModRevIs, VersionIs, ValueIs,
// Exists or Absent. The zero Cond is invalid.
type Cond struct {
	kind  uint8
	key   string
	n     uint64
	value []byte
}

// ModRevIs holds when key's ModRev is rev; rev 0 holds when key is absent.
func ModRevIs(key string, rev uint64) Cond { return Cond{kind: condModRev, key: key, n: rev} }

// VersionIs holds when key's Version is n; n 0 holds when key is absent.
func VersionIs(key string, n uint64) Cond { return Cond{kind: condVersion, key: key, n: n} }

// ValueIs holds when key exists and its value equals value (nil and empty
// are equal). The Cond keeps value: the caller must not change it until
// the Txn returns.
func ValueIs(key string, value []byte) Cond { return Cond{kind: condValue, key: key, value: value} }

// Exists holds when key exists.
func Exists(key string) Cond { return Cond{kind: condExists, key: key} }

// Absent holds when key does not exist; it is ModRevIs(key, 0).
func Absent(key string) Cond { return ModRevIs(key, 0) }

// Op is an operation of a Txn, made by OpSet, OpDelete or OpGet. The zero
// Op is invalid.
type Op struct {
	kind  uint8
	key   string
	value []byte
	lease uint64 // an opSet's lease (0: none)
	ttl   uint64 // an opSet's own lease's TTL in ms (0: none)
	bad   error  // an invalid option
}

// OpSet writes value under key. The Op keeps value: the caller must not
// change it until the Txn returns. Options are those of Set: WithLease and
// TTL; a Txn whose branch to run names a lease that does not exist writes
// nothing and fails with ErrLeaseNotFound. An invalid option makes the
// Txn fail with ErrInvalidTxn.
func OpSet(key string, value []byte, opts ...WriteOption) Op {
	o := Op{kind: opSet, key: key, value: value}
	if err := writeOpts(&o, opts); err != nil {
		o.bad = err
	}
	return o
}

// OpDelete removes key; an absent key is not an error.
func OpDelete(key string) Op { return Op{kind: opDelete, key: key} }

// OpGet reads key, as the branch's writes before it left it: its Entry
// comes back in TxnResult.Gets (ModRev 0 when absent).
func OpGet(key string) Op { return Op{kind: opGet, key: key} }

// TxnResult is the outcome of a Txn.
type TxnResult struct {
	// Succeeded says whether every condition held (and Then ran).
	Succeeded bool
	// Revision is the revision of the Raft entry the transaction was
	// applied in: its writes have it as their ModRev. A transaction
	// without writes in either branch is a read, served like Get, and
	// Revision is the store revision it read at.
	Revision uint64
	// Gets holds one Entry per OpGet of the branch that ran, in order;
	// ModRev 0 (and no Value) for an absent key. The values are the
	// caller's.
	Gets []Entry
}

// ConflictError is the error of a CompareAndSet or CompareAndDelete whose
// key was not at the expected revision. It wraps ErrConflict.
type ConflictError struct {
	// Current is the key's entry as the write found it (Key set, the rest
	// zero when Found is false). When a write was retried after its first
	// answer was lost, it may be a later state.
	Current Entry
	// Found says whether the key existed.
	Found bool
}

// Error says which key conflicted, and where it was.
func (e *ConflictError) Error() string {
	if !e.Found {
		return fmt.Sprintf("%v: key %q is absent", ErrConflict, e.Current.Key)
	}
	return fmt.Sprintf("%v: key %q is at revision %d", ErrConflict, e.Current.Key, e.Current.ModRev)
}

// Unwrap returns ErrConflict.
func (e *ConflictError) Unwrap() error { return ErrConflict }

func conflictOf(key string, res cmdResult) error {
	ce := &ConflictError{Current: Entry{Key: key}}
	if len(res.gets) == 1 && res.gets[0].ModRev != 0 {
		ce.Current, ce.Found = res.gets[0], true
	}
	return ce
}

// CompareAndSet writes value under key only if key's ModRev is modRev (0:
// only if key is absent), and returns the write's revision, the key's new
// ModRev. When key is at another revision nothing is written and the error
// is a *ConflictError, which wraps ErrConflict and carries the key's
// current entry. Other errors are Set's; like every write it is applied
// at most once, retries included.
//
// The revision returned is that of the Raft entry the write was applied
// in, which it shares with the other writes group-committed into that
// entry: a write to key later in the same entry that compared no ModRev
// of key (a Set, say) leaves key at that revision too. A ModRev read with
// GetEntry is always that of key's last write; compare against one read
// back when writes that compare no ModRev may also change key.
func (s *Store) CompareAndSet(ctx context.Context, key string, value []byte, modRev uint64) (_ uint64, err error) {
	defer s.met.wroteAt(&err)
	if err := s.validate(key, value); err != nil {
		return 0, err
	}
	w := s.newTxnWrite(Cond{kind: condModRev, key: key, n: modRev}, Op{kind: opSet, key: key, value: value}, key)
	res, err := s.writeCmd(ctx, w)
	if err != nil {
		return 0, err
	}
	if res.status != resOK {
		return 0, conflictOf(key, res)
	}
	return res.rev, nil
}

// CompareAndDelete removes key only if its ModRev is modRev. With modRev 0
// it succeeds, deleting nothing, when key is absent. When key is at another
// revision nothing is written and the error is a *ConflictError (see
// CompareAndSet). Other errors are Delete's.
func (s *Store) CompareAndDelete(ctx context.Context, key string, modRev uint64) (err error) {
	defer s.met.wroteAt(&err)
	if err := s.validate(key, nil); err != nil {
		return err
	}
	w := s.newTxnWrite(Cond{kind: condModRev, key: key, n: modRev}, Op{kind: opDelete, key: key}, key)
	res, err := s.writeCmd(ctx, w)
	if err != nil {
		return err
	}
	if res.status != resOK {
		return conflictOf(key, res)
	}
	return nil
}

// newTxnWrite is the write of a compare-and-set or compare-and-delete: if
// cond, then op, else a read of key (the entry a ConflictError carries).
func (s *Store) newTxnWrite(cond Cond, op Op, key string) *pendingWrite {
	w := &pendingWrite{}
	w.conds[0], w.ops[0], w.ops[1] = cond, op, Op{kind: opGet, key: key}
	w.one[0] = command{kind: cmdTxn, conds: w.conds[:], then: w.ops[:1], els: w.ops[1:]}
	w.cmds = w.one[:]
	w.size, w.nops = w.one[0].size(), 3
	return w
}

// Txn applies t: if every condition in t.If holds, the operations of
// t.Then, else those of t.Else, in order, atomically at one revision. The
// conditions are evaluated by the state machine as it applies the
// transaction, on the state every earlier write left; no other write comes
// between. An OpGet sees the writes of its branch before it.
//
// A transaction holds at most Config.MaxTxnOps conditions and operations
// in all and about 12 MiB of keys and values, and no two writes (OpSet,
// OpDelete) to one key in a branch: otherwise the error wraps
// ErrTxnTooLarge or ErrInvalidTxn and nothing is written. The Gets of the branch that runs may hold at most 8 MiB of keys
// and values (ErrTxnTooLarge, found as the transaction is applied: then
// neither branch runs). A transaction without writes in either branch is a
// read: it is served as a linearizable Get is. Other errors are Set's.
func (s *Store) Txn(ctx context.Context, t Txn) (TxnResult, error) {
	c := command{kind: cmdTxn, conds: t.If, then: t.Then, els: t.Else}
	if !c.writes() {
		s.met.read(false)
		if err := s.usable(); err != nil {
			return TxnResult{}, err
		}
		if err := s.validateCmd(&c); err != nil {
			return TxnResult{}, err
		}
		return s.readTxn(ctx, &c)
	}
	res, err := s.writeTxn(ctx, &c)
	s.met.wrote(err)
	return res, err
}

// writeTxn is Txn for a transaction that writes in a branch.
func (s *Store) writeTxn(ctx context.Context, c *command) (TxnResult, error) {
	if err := s.usable(); err != nil {
		return TxnResult{}, err
	}
	if err := s.validateCmd(c); err != nil {
		return TxnResult{}, err
	}
	w := &pendingWrite{}
	w.one[0] = *c
	w.cmds = w.one[:]
	w.size, w.nops = c.size(), c.count()
	res, err := s.writeCmd(ctx, w)
	if err != nil {
		return TxnResult{}, err
	}
	if res.status == resNoLease {
		return TxnResult{}, fmt.Errorf("%w: named by an OpSet of the branch to run", ErrLeaseNotFound)
	}
	return TxnResult{Succeeded: res.status == resOK, Revision: res.rev, Gets: res.gets}, nil
}

// readTxn evaluates a transaction without writes on this member, after a
// linearizable read barrier, on one view of the data.
func (s *Store) readTxn(ctx context.Context, c *command) (TxnResult, error) {
	if err := s.linearize(ctx); err != nil {
		return TxnResult{}, err
	}
	var out TxnResult
	err := s.eng.ViewApplied(func(tx storage.ReadTx, index uint64) error {
		ok, err := evalConds(tx, c.conds)
		if err != nil {
			return err
		}
		ops := c.els
		if ok {
			ops = c.then
		}
		out = TxnResult{Succeeded: ok, Revision: index}
		size := 0
		for i := range ops {
			e, err := getEntry(tx, ops[i].key)
			if err != nil {
				return err
			}
			e.Value = bytes.Clone(e.Value)
			if e.ModRev != 0 && e.Value == nil {
				e.Value = []byte{}
			}
			size += len(e.Key) + len(e.Value)
			out.Gets = append(out.Gets, e)
		}
		if size > maxTxnGetBytes {
			return fmt.Errorf("%w: the Gets would exceed %d bytes", ErrTxnTooLarge, maxTxnGetBytes)
		}
		return nil
	})
	if err != nil {
		return TxnResult{}, s.engineErr(err)
	}
	return out, nil
}

// maxTxnGetBytes bounds the keys and values the Gets of one transaction
// return, so that the reply to a forwarded transaction fits in one frame
// of the member-to-member transport.
const maxTxnGetBytes = 8 << 20

// maxCmdBytes bounds the encoded size of one command (a transaction's
// keys and values), so that a forwarded one fits in one frame.
const maxCmdBytes = 12 << 20

// validateCmd checks a command against the limits of this member's Config.
func (s *Store) validateCmd(c *command) error {
	if c.kind == cmdRegister {
		return nil
	}
	if isLeaseCmd(c.kind) {
		if c.kind == cmdGrant && c.n > uint64(maxLeaseTTL/time.Millisecond) {
			return fmt.Errorf("%w: lease TTL of %d ms", ErrInvalidTxn, c.n)
		}
		return nil
	}
	if c.kind == cmdSetQuota {
		return nil
	}
	if c.kind != cmdTxn {
		return fmt.Errorf("%w: command kind %d", ErrInvalidTxn, c.kind)
	}
	if n := c.count(); n > s.cfg.MaxTxnOps {
		return fmt.Errorf("%w: %d conditions and operations, limit %d (Config.MaxTxnOps)", ErrTxnTooLarge, n, s.cfg.MaxTxnOps)
	}
	if n := c.size(); n > maxCmdBytes {
		return fmt.Errorf("%w: about %d bytes, limit %d", ErrTxnTooLarge, n, maxCmdBytes)
	}
	for i := range c.conds {
		d := &c.conds[i]
		switch d.kind {
		case condModRev, condVersion, condExists:
		case condValue:
			if len(d.value) > s.cfg.MaxValueSize {
				return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(d.value), s.cfg.MaxValueSize)
			}
		default:
			return fmt.Errorf("%w: condition %d is not one made by ModRevIs, VersionIs, ValueIs, Exists or Absent", ErrInvalidTxn, i)
		}
		if err := s.validateKey(d.key); err != nil {
			return err
		}
	}
	for _, br := range []struct {
		name string
		ops  []Op
	}{{"Then", c.then}, {"Else", c.els}} {
		for i := range br.ops {
			o := &br.ops[i]
			if o.bad != nil {
				return fmt.Errorf("%w: %s operation %d: %w", ErrInvalidTxn, br.name, i, o.bad)
			}
			if o.ttl > uint64(maxLeaseTTL/time.Millisecond) {
				return fmt.Errorf("%w: %s operation %d: TTL of %d ms", ErrInvalidTxn, br.name, i, o.ttl)
			}
			switch o.kind {
			case opSet:
				if len(o.value) > s.cfg.MaxValueSize {
					return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(o.value), s.cfg.MaxValueSize)
				}
			case opDelete, opGet:
			default:
				return fmt.Errorf("%w: %s operation %d is not one made by OpSet, OpDelete or OpGet", ErrInvalidTxn, br.name, i)
			}
			if err := s.validateKey(o.key); err != nil {
				return err
			}
			if o.kind == opGet {
				continue
			}
			for j := range i {
				if p := &br.ops[j]; p.kind != opGet && p.key == o.key {
					return fmt.Errorf("%w: two writes to key %q in %s", ErrInvalidTxn, o.key, br.name)
				}
			}
		}
	}
	return nil
}

// evalConds says whether every condition holds on tx.
func evalConds(tx storage.ReadTx, conds []Cond) (bool, error) {
	for i := range conds {
		d := &conds[i]
		e, err := getEntry(tx, d.key)
		if err != nil {
			return false, err
		}
		var ok bool
		switch d.kind {
		case condModRev:
			ok = e.ModRev == d.n
		case condVersion:
			ok = e.Version == d.n
		case condValue:
			ok = e.ModRev != 0 && bytes.Equal(e.Value, d.value)
		case condExists:
			ok = e.ModRev != 0
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// getEntry reads key from tx: ModRev 0 when absent. Value aliases tx.
func getEntry(tx storage.ReadTx, key string) (Entry, error) {
	b, ok := tx.Get(keyBytes(key))
	if !ok {
		return Entry{Key: key}, nil
	}
	r, err := decodeRecord(b)
	if err != nil {
		return Entry{}, fmt.Errorf("key %q: %w", key, err)
	}
	return entryOf(key, r), nil
}
