package kv

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// fsm is the Raft state machine: it applies committed commands to the Engine,
// one engine transaction per Raft batch, and answers each command entry with
// one result per command (command.go), the session table (sessiontable.go)
// changing in the same transaction. It is deterministic: no clocks, network
// or randomness touch the data; time comes from the entries, stamped by the
// leader that proposed them.
type fsm struct {
	eng    storage.Engine
	logger *slog.Logger
	stop   <-chan struct{} // closed when the Store begins to close
	halt   func(error)     // stops this member (halt.go)
	rs     *restorer       // the staging of a restore in progress
	hist   *history        // the change log, as watchers read it (watch.go)

	mu      sync.Mutex
	applied chan struct{} // closed and replaced after every apply
	// abandoned is set when a batch could not be applied before the Store
	// stopped, or the member halted: from then on nothing is applied or
	// snapshotted, so that no later index can cover the hole.
	abandoned atomic.Bool
	// stuck holds the error of a batch that waits for disk space to be
	// applied (nil while apply goes on).
	stuck atomic.Pointer[error]
	// noSpace is set while writes are refused for space (space.go): the
	// first refusal, and the first write that passes after, are logged.
	noSpace atomic.Bool

	// Bytes of entries applied since the last snapshot; past snapBytes
	// one signal on wantSnap asks the Store for a snapshot.
	sinceSnap atomic.Uint64
	snapBytes uint64
	wantSnap  chan struct{}
	// beforeSnapshot, when set, runs as a snapshot is taken, before raft
	// compacts the log behind it (trailing.go).
	beforeSnapshot func()
}

var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.BatchingFSM = (*fsm)(nil)
)

func newFSM(eng storage.Engine, logger *slog.Logger, stop <-chan struct{}, halt func(error), hist WatchHistory) *fsm {
	return &fsm{eng: eng, logger: logger, stop: stop, halt: halt, rs: newRestorer("", eng, logger), hist: newHistory(eng.AppliedIndex(), hist), applied: make(chan struct{}), wantSnap: make(chan struct{}, 1)}
}

// stuckErr returns the error that keeps the state machine from applying
// while it waits for disk space, or nil.
func (f *fsm) stuckErr() error {
	if p := f.stuck.Load(); p != nil {
		return *p
	}
	return nil
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch implements raft.BatchingFSM. Raft hands it command and
// configuration entries; the engine records the last index of the batch.
// Entries at or below the engine's applied index (replayed after a restart)
// are skipped. Restore entries (restore.go) split the batch: each is carried
// out in its place, between engine transactions.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	resp := make([]any, len(logs))
	if len(logs) == 0 {
		return resp
	}
	if f.abandoned.Load() {
		return abandon(resp)
	}
	last := logs[len(logs)-1].Index
	from := f.eng.AppliedIndex()
	if last <= from {
		return resp
	}
	start := 0 // the first entry not applied yet
	for i, l := range logs {
		if l.Index <= from || l.Type != raft.LogCommand || !isRestoreEntry(l.Data) {
			continue
		}
		e, err := decodeRestoreEntry(l.Data)
		if err != nil {
			f.logger.Error("skipping undecodable log entry", "index", l.Index, "error", err)
			resp[i] = err
			continue
		}
		var ok bool
		if e.kind == restoreCommit {
			// The entries before it, then the install, which sets the
			// applied index to the commit's.
			var quota uint64
			ok = (i == start || logs[i-1].Index <= from || f.update(logs[i-1].Index, logs[start:i], resp[start:i], from)) &&
				f.retry(l.Index, "reading the quota", func() (err error) { quota, err = appliedQuota(f.eng); return err }) &&
				f.retry(l.Index, "installing a restore", func() error { return f.rs.commit(l.Index, e.id) }) &&
				f.restored(l.Index, quota)
		} else {
			// Staging first: once the engine records this index as
			// applied, a restart does not apply the entry again.
			f.rs.apply(e)
			ok = f.update(l.Index, logs[start:i], resp[start:i], from)
		}
		if !ok {
			return abandon(resp)
		}
		start = i + 1
	}
	if start < len(logs) && !f.update(last, logs[start:], resp[start:], from) {
		return abandon(resp)
	}
	f.notify()
	if f.snapBytes > 0 {
		var n uint64
		for _, l := range logs {
			n += uint64(len(l.Data))
		}
		if f.sinceSnap.Add(n) >= f.snapBytes {
			select {
			case f.wantSnap <- struct{}{}:
			default:
			}
		}
	}
	return resp
}

// restored follows the install of a restore at index: the restored data
// carries the change log of the store it came from, whose revisions are
// not this store's, so the log starts anew after index and every Watch
// that has not reached it ends with ErrCompacted. It carries that store's
// quota too: the cluster keeps its own (space.go).
func (f *fsm) restored(index, quota uint64) bool {
	if !f.retry(index, "starting the change log after a restore", func() error {
		return f.eng.Update(index, func(tx storage.WriteTx) error {
			if err := keepQuota(tx, quota); err != nil {
				return err
			}
			return resetHistory(tx, index+1)
		})
	}) {
		return false
	}
	f.hist.reset(index)
	return true
}

// abandon answers every entry of a batch that will not be applied here.
func abandon(resp []any) []any {
	for i := range resp {
		resp[i] = ErrClosed
	}
	return resp
}

// update applies the command entries of logs above from in one engine
// transaction that records index as applied, writing their responses into
// resp. It returns false if the Store stopped before it succeeded.
func (f *fsm) update(index uint64, logs []*raft.Log, resp []any, from uint64) bool {
	for _, l := range logs {
		if l.Index > from && l.Type == raft.LogCommand && !knownFormat(l.Data) {
			// Skipping it would be the same on every member of this
			// version, but not on those of the version that wrote it.
			f.halt(fmt.Errorf("%w: entry %d is in format %d, this version reads %d to %d: upgrade this member", ErrNewerFormat, l.Index, l.Data[0], cmdVersion1, cmdVersion4))
			return false
		}
	}
	var ev spaceEvents
	var sp space
	apply := func(tx storage.WriteTx) error {
		a := applier{tx: tx, sessions: sessionTable{tx: tx}, hist: f.hist.begin(tx, from), space: spaceTx{tx: tx}}
		if err := a.space.load(); err != nil {
			return err
		}
		for i, l := range logs {
			if l.Index <= from || l.Type != raft.LogCommand || isRestoreEntry(l.Data) {
				continue
			}
			d, err := decodeEntry(l.Data)
			if err != nil {
				// Leaders validate commands before they enter the log, so
				// this is damage; skipping it is the same on every member.
				f.logger.Error("skipping undecodable log entry", "index", l.Index, "error", err)
				resp[i] = err
				continue
			}
			a.term = l.Term
			res, err := a.entry(l.Index, &d)
			if err != nil {
				return err
			}
			if res != nil {
				resp[i] = res
			}
		}
		if err := a.hist.end(); err != nil {
			return err
		}
		if err := a.space.flush(); err != nil {
			return err
		}
		ev, sp = a.space.ev, a.space.sp
		return a.sessions.flush(a.buf)
	}
	if !f.retry(index, "applying committed entries", func() error { return f.eng.Update(index, apply) }) {
		return false
	}
	f.hist.committed(index)
	f.noteSpace(ev, sp)
	return true
}

// retry runs fn until it succeeds, or the Store stops or this member halts
// (then it returns false and nothing more is applied). A failed commit or
// restore install must not be skipped: later entries build on it. Damage
// halts the member at once; a full disk is waited out (reads of what is
// applied go on, and writes are refused meanwhile); any other error is
// retried for applyRetryLimit before the member halts.
func (f *fsm) retry(index uint64, what string, fn func() error) bool {
	start := time.Now()
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		err := fn()
		if err == nil {
			if f.stuck.Swap(nil) != nil {
				f.logger.Info(what+" again: the disk has space", "index", index)
			}
			return true
		}
		switch {
		case errors.Is(err, storage.ErrClosed):
			f.abandoned.Store(true)
		case errors.Is(err, storage.ErrCorrupt) || f.engineBroken():
			f.halt(fmt.Errorf("%s at index %d: %w", what, index, err))
			f.abandoned.Store(true)
		case errors.Is(err, storage.ErrDiskFull):
			if f.stuck.Swap(&err) == nil {
				f.logger.Error(what+" waits for disk space; writes are refused meanwhile", "index", index, "error", err)
				f.notify()
			}
		case time.Since(start) >= applyRetryLimit:
			f.halt(fmt.Errorf("%s at index %d failed for %v: %w", what, index, applyRetryLimit, err))
			f.abandoned.Store(true)
		default:
			f.logger.Error(what+" failed; retrying", "index", index, "error", err, "retry_in", delay)
		}
		if f.abandoned.Load() {
			return false
		}
		select {
		case <-f.stop:
			f.abandoned.Store(true)
			return false
		case <-time.After(delay):
		}
	}
}

// applyRetryLimit is how long the state machine retries a batch that fails
// for a reason other than damage or a full disk before the member halts.
const applyRetryLimit = 10 * time.Second

// applier applies the commands of the entries of one engine transaction.
type applier struct {
	tx       storage.WriteTx
	sessions sessionTable
	hist     *histTx // the changes of the transaction, for the change log
	term     uint64  // the term of the entry being applied
	buf      []byte  // Put copies: one buffer serves every record
	space    spaceTx // the data's size and the quota (space.go)
}

// entry applies the commands of the entry at index and returns their
// results (nil for an entry without commands). An error is the engine's:
// the transaction fails.
func (a *applier) entry(index uint64, d *decoded) ([]cmdResult, error) {
	if len(d.cmds) == 0 {
		return nil, nil
	}
	res := make([]cmdResult, len(d.cmds))
	ticked := false
	defer a.hist.endEntry(index)
	for i := range d.cmds {
		c := &d.cmds[i]
		if !ticked && (c.kind == cmdRegister || c.seq != 0) {
			if err := a.sessions.tick(d.time); err != nil {
				return nil, err
			}
			ticked = true
		}
		r, err := a.command(index, d.time, c)
		if err != nil {
			return nil, err
		}
		res[i] = r
	}
	return res, nil
}

// command applies one command at index, at leader time now.
func (a *applier) command(index, now uint64, c *command) (cmdResult, error) {
	if c.kind == cmdRegister {
		return cmdResult{status: resOK, rev: index}, a.sessions.register(newSessionID(index, c.nonce), now)
	}
	var sess *sessState
	if c.seq != 0 && !sessionsOff.Load() {
		s, err := a.sessions.get(c.sess)
		if err != nil {
			return cmdResult{}, err
		}
		if s == nil {
			return cmdResult{status: resNoSession}, nil
		}
		if err := a.sessions.use(s, now, c.floor); err != nil {
			return cmdResult{}, err
		}
		if c.seq < s.floor {
			return cmdResult{status: resStale}, nil
		}
		if i, ok := s.find(c.seq); ok {
			return a.sessions.replay(s, s.at(i))
		}
		sess = s
	}
	if c.kind == cmdSetQuota {
		res := a.setQuota(c)
		if sess != nil {
			return res, a.sessions.record(sess, c.seq, res)
		}
		return res, nil
	}
	if isLeaseCmd(c.kind) {
		res, err := a.leaseCommand(index, now, c)
		if err == nil && sess != nil && res.status == resOK {
			err = a.sessions.record(sess, c.seq, res)
		}
		return res, err
	}
	if touchesSysKeys(c) {
		// Leaders refuse such commands; one in the log is refused here
		// alike on every member, before it can read or write the table.
		return cmdResult{status: resInvalid, rev: index}, nil
	}
	ok, err := evalConds(a.tx, c.conds)
	if err != nil {
		return cmdResult{}, err
	}
	res := cmdResult{status: resFailed, rev: index}
	ops := c.els
	if ok {
		res.status, ops = resOK, c.then
	}
	if hasWrite(ops) && hasGet(ops) {
		n, err := getsSize(a.tx, ops)
		if err != nil {
			return cmdResult{}, err
		}
		if n > maxTxnGetBytes {
			return cmdResult{status: resTooLarge, rev: index}, nil
		}
	}
	if ok, err := a.leasesExist(ops); err != nil || !ok {
		return cmdResult{status: resNoLease, rev: index}, err
	}
	if grow := a.growth(ops); !a.space.fits(grow) {
		a.space.ev.refused = true
		res := cmdResult{status: resNoSpace, rev: a.space.sp.quota}
		if sess != nil {
			return res, a.sessions.record(sess, c.seq, res)
		}
		return res, nil
	} else if grow > 0 {
		a.space.ev.grew = true
	}
	size := 0
	for i := range ops {
		o := &ops[i]
		switch o.kind {
		case opSet:
			if err := a.setKey(index, now, o); err != nil {
				return cmdResult{}, err
			}
		case opDelete:
			if err := a.deleteKey(index, o.key, true); err != nil {
				return cmdResult{}, err
			}
		case opGet:
			e, err := getEntry(a.tx, o.key)
			if err != nil {
				return cmdResult{}, err
			}
			if e.ModRev != 0 {
				e.Value = cloneValue(e.Value)
			}
			size += len(e.Key) + len(e.Value)
			res.gets = append(res.gets, e)
		}
	}
	if size > maxTxnGetBytes {
		return cmdResult{status: resTooLarge, rev: index}, nil // nothing was written
	}
	if sess != nil && hasWrite(ops) {
		if err := a.sessions.record(sess, c.seq, res); err != nil {
			return cmdResult{}, err
		}
	}
	return res, nil
}

// setKey applies a set at index, at leader time now: the key's record, its
// lease (a TTL makes one), and the change.
func (a *applier) setKey(index, now uint64, o *Op) error {
	key := keyBytes(o.key)
	create, version, oldLease := index, uint64(1), uint64(0)
	var oldSize int64
	if old, ok := a.tx.Get(key); ok {
		oldSize = int64(len(key) + len(old))
		if r, err := decodeRecord(old); err == nil {
			create, version, oldLease = r.create, r.version+1, r.lease
		}
	}
	lease := o.lease
	if o.ttl != 0 {
		id, err := a.grant(now, o.ttl, leaseOwnKey)
		if err != nil {
			return err
		}
		lease = id
	}
	if lease != oldLease {
		if err := a.detach(oldLease, o.key); err != nil {
			return err
		}
		if err := a.attach(lease, o.key); err != nil {
			return err
		}
		if o.ttl == 0 && lease != 0 {
			if err := a.share(lease); err != nil {
				return err
			}
		}
	}
	a.buf = encodeLeased(a.buf[:0], create, index, version, lease, o.value)
	if err := a.tx.Put(key, a.buf); err != nil {
		return err
	}
	a.space.add(int64(len(key)+len(a.buf)) - oldSize)
	a.hist.put(o.key, create, index, version, lease, o.value)
	return nil
}

// deleteKey deletes key at index, if it exists, with the change; detach
// says whether to take it off its lease's keys (the caller has not).
func (a *applier) deleteKey(index uint64, key string, detach bool) error {
	kb := keyBytes(key)
	old, ok := a.tx.Get(kb)
	if !ok {
		return nil
	}
	if detach {
		if r, err := decodeRecord(old); err == nil {
			if err := a.detach(r.lease, key); err != nil {
				return err
			}
		}
	}
	if err := a.tx.Delete(kb); err != nil {
		return err
	}
	a.space.add(-int64(len(kb) + len(old)))
	a.hist.del(key, index)
	return nil
}

// touchesSysKeys says whether c names a key of the store's own state.
func touchesSysKeys(c *command) bool {
	for i := range c.conds {
		if isSysKey(keyBytes(c.conds[i].key)) {
			return true
		}
	}
	for _, ops := range [2][]Op{c.then, c.els} {
		for i := range ops {
			if isSysKey(keyBytes(ops[i].key)) {
				return true
			}
		}
	}
	return false
}

func hasGet(ops []Op) bool {
	for i := range ops {
		if ops[i].kind == opGet {
			return true
		}
	}
	return false
}

// getsSize is the size of the keys and values the Gets of ops would
// return, each after the writes of ops before it.
func getsSize(tx storage.ReadTx, ops []Op) (int, error) {
	n := 0
	for i := range ops {
		if ops[i].kind != opGet {
			continue
		}
		n += len(ops[i].key)
		written := false
		for j := i - 1; j >= 0; j-- {
			if p := &ops[j]; p.kind != opGet && p.key == ops[i].key {
				n += len(p.value) // a delete's is empty
				written = true
				break
			}
		}
		if !written {
			e, err := getEntry(tx, ops[i].key)
			if err != nil {
				return 0, err
			}
			n += len(e.Value)
		}
	}
	return n, nil
}

func (f *fsm) notify() {
	f.mu.Lock()
	close(f.applied)
	f.applied = make(chan struct{})
	f.mu.Unlock()
}

// appliedChan returns a channel closed at the next apply or restore.
func (f *fsm) appliedChan() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Snapshot implements raft.FSM: a consistent point-in-time view of the
// engine; Persist streams it without holding the data in memory.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if f.abandoned.Load() {
		return nil, ErrClosed
	}
	if err := f.rs.holdsSnapshots(); err != nil {
		return nil, err
	}
	if f.beforeSnapshot != nil {
		f.beforeSnapshot()
	}
	s, err := f.eng.Snapshot()
	if err != nil {
		return nil, err
	}
	f.sinceSnap.Store(0)
	return &fsmSnapshot{s: s}, nil
}

// Restore implements raft.FSM: it replaces the data atomically. A restore
// being staged is dropped: the snapshot supersedes what was staged.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.rs.drop("a Raft snapshot is installed")
	defer func() { f.hist.reset(f.eng.AppliedIndex()) }()
	if err := f.eng.Restore(rc); err != nil {
		err = fmt.Errorf("kv: restore snapshot: %w", err)
		if f.engineBroken() {
			// The install failed past the point of no return (the new
			// file is in place, the engine cannot use it): raft would go
			// on with a state machine that applies nothing.
			f.halt(err)
			f.abandoned.Store(true)
		}
		return err
	}
	f.notify()
	return nil
}

// engineBroken says whether the engine refuses every call (a failed
// install left it without a usable file).
func (f *fsm) engineBroken() bool {
	err := f.eng.View(func(storage.ReadTx) error { return nil })
	return err != nil && !errors.Is(err, storage.ErrClosed)
}

type fsmSnapshot struct{ s storage.Snapshot }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := storage.WriteSnapshot(sink, s.s.AppliedIndex(), s.s); err != nil {
		sink.Cancel()
		return fmt.Errorf("kv: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.s.Release() }
