package kv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/metrics"
	"github.com/cohortkv/kv/internal/storage"
)

// The write pipeline: every write of a Store, synchronous or not, enters one
// queue before the call returns (SetAsync included), and leaves it in that
// order, in batches. On the leader a batch becomes one Raft entry (group
// commit): Raft.Apply is called for the batches in queue order, and Raft's
// log keeps that order. On a follower a batch is one forwarding RPC to the
// leader; the leader could otherwise receive, and append, two batches of
// this follower in the other order. On both, one batch is in flight
// (maxBatchInFlight): everything that arrives meanwhile, the followers'
// forwarded batches included, goes out in the next entry. With more in
// flight the same load is cut into more, smaller entries, and each costs
// raft, the disk and the state machine about as much as a large one: on
// two cores, 4 in flight gave 10–25% fewer writes/s on the leader and 30%
// fewer spread over the members at 16 callers. A write waits only while
// the batch before it is out; with no load it goes out alone at once.
// Every writer gets the result of its own command back: the state machine
// answers each command of an entry on its own.
//
// Every write carries this Store's write session and a sequence number
// (session.go, sessiontable.go), handed out as it is first sent and kept
// through its retries. A batch that certainly had no effect (no leader,
// the leader changed before it was sent, Raft refused it as not the
// leader) goes back to the head of the queue and is sent again after a
// backoff, before any later write; on the leader, should a later batch
// already be in Raft's hands (with more than one batch in flight), such an
// earlier one is failed instead of being retried behind it. A batch whose
// outcome is unknown (its reply was lost, its leader lost the leadership
// after Raft took it) goes back to the head of the queue too, and is sent again under the same sequences until it is
// answered or its caller's ctx ends: the session table applies a command
// at most once and answers a repeated one with its first result.
const (
	maxBatchOps      = 4096
	maxBatchBytes    = 1 << 20
	maxBatchInFlight = 1
)

// States of a pendingWrite.
const (
	wQueued  int32 = iota // in the queue: nothing sent
	wSent                 // handed to Raft or sent to the leader
	wDropped              // given up by its caller while queued: never sent
)

type pendingWrite struct {
	// cmds are the write's commands: one for a write of this Store (in
	// one, with its conditions and operations in conds and ops), those of
	// a forwarded batch for a remote one.
	cmds  []command
	one   [1]command
	conds [1]Cond
	ops   [2]Op
	size  int // bytes, about
	nops  int // conditions and operations
	// ctx is a synchronous caller's; an async write has a deadline instead.
	ctx      context.Context
	deadline time.Time
	// remote: a batch forwarded to this member by another: it goes into
	// this member's Raft log or fails with errNotLeader, and is never
	// forwarded or retried here (its sender does that).
	remote bool
	state  atomic.Int32
	last   atomic.Pointer[error] // the last retryable failure
	// maybe is set once an attempt had an unknown outcome: the write may
	// have been applied, so no later refusal means it was not.
	maybe atomic.Bool
	// sess is the session of the write's sequence, once it has one.
	sess *clientSession
	res  []cmdResult // one per command, set before a nil answer
	done chan error  // buffered; nil for an async write
	fut  *Future     // an async write's
}

// newOpWrite is the write of one Set or Delete.
func newOpWrite(o Op) *pendingWrite {
	w := &pendingWrite{}
	w.ops[0] = o
	w.one[0] = command{kind: cmdTxn, then: w.ops[:1]}
	w.cmds = w.one[:]
	w.size, w.nops = w.one[0].size(), 1
	return w
}

// newRemoteWrite is the write of a forwarded batch.
func newRemoteWrite(cmds []command) *pendingWrite {
	w := &pendingWrite{cmds: cmds, remote: true}
	for i := range cmds {
		w.size += cmds[i].size()
		w.nops += cmds[i].count()
	}
	return w
}

// answer reports the write's outcome. Each write is answered once.
func (w *pendingWrite) answer(err error) {
	w.release()
	if w.fut != nil {
		w.fut.finish(err)
		return
	}
	w.done <- err
}

// release tells the write's session that its sequence is answered.
func (w *pendingWrite) release() {
	if w.sess != nil {
		w.sess.answered(w.one[0].seq)
	}
}

// expired returns the error of a write whose time is up.
func (w *pendingWrite) expired() error {
	if w.ctx != nil {
		return w.ctx.Err()
	}
	if !w.deadline.IsZero() && !time.Now().Before(w.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (w *pendingWrite) lastErr() error {
	if p := w.last.Load(); p != nil {
		return *p
	}
	return nil
}

// requeued marks a write that is to be sent again.
func (w *pendingWrite) requeued(err error) {
	w.last.Store(&err)
	w.state.Store(wQueued)
}

// unsure marks a write whose attempt had an unknown outcome, to be sent
// again under its sequence.
func (w *pendingWrite) unsure(err error) {
	w.maybe.Store(true)
	w.requeued(err)
}

type pipeline struct {
	s    *Store
	q    writeQueue
	slot chan struct{} // one token per leader batch in flight
	// prev is closed once the outcome of the last batch handed to Raft has
	// been handled: outcomes are handled in the order of the batches.
	prev chan struct{} // run's own
	// sess is the Store's write session: nil until registered.
	sess atomic.Pointer[clientSession]

	mu   sync.Mutex
	redo []*pendingWrite // writes of leader batches to retry, in order

	// Tests: how many more answers to lose after the leader applied a
	// batch (as if it lost its leadership at once), and after the leader
	// answered a forwarded one (as if the connection dropped).
	loseApplied atomic.Int32
	loseReplies atomic.Int32

	// written holds the keys the batch being cut writes (cut's own).
	written map[string]struct{}
	// The batch being cut holds a lease revocation or expiry (cutDrops),
	// or a write of keys (cutWrites).
	cutDrops, cutWrites bool
}

func newPipeline(s *Store) *pipeline {
	prev := make(chan struct{})
	close(prev)
	return &pipeline{s: s, q: newWriteQueue(), slot: make(chan struct{}, maxBatchInFlight), prev: prev}
}

// submit queues w, or returns false once the Store is closing.
func (p *pipeline) submit(w *pendingWrite) bool {
	if w.fut == nil {
		w.done = make(chan error, 1)
	}
	return p.q.add(w)
}

// wait returns the outcome of a synchronous write, or an error once its
// ctx ends: the write is then dropped if it is still queued (it was not
// sent, or its earlier attempts certainly had no effect), or its outcome
// is unknown.
func (p *pipeline) wait(ctx context.Context, w *pendingWrite) error {
	select {
	case err := <-w.done:
		if err != nil {
			if herr := p.s.halter.halted(); herr != nil {
				return fmt.Errorf("%w (%w)", herr, err)
			}
		}
		return err
	case <-ctx.Done():
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.release()
			return p.giveUp(w, ctx.Err())
		}
		return unknownOutcome(ctx.Err(), w.lastErr())
	case <-p.s.halter.ch:
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.release()
			if w.maybe.Load() {
				return p.s.haltedWrite()
			}
			return p.s.halter.halted() // never sent
		}
		return p.s.haltedWrite()
	}
}

// giveUp is the error of a queued write whose time is up.
func (p *pipeline) giveUp(w *pendingWrite, ctxErr error) error {
	if w.maybe.Load() {
		return unknownOutcome(ctxErr, w.lastErr())
	}
	return p.s.giveUp(ctxErr, w.lastErr())
}

// unknownOutcome is the error of a write whose ctx ended after it may have
// been applied. It says what the last attempt met, and wraps ctxErr and
// ErrOutcomeUnknown, and a full disk or damage the last attempt met, but
// never an error that says "not applied" (ErrNoLeader, a refusal): an
// earlier attempt may have been.
func unknownOutcome(ctxErr, last error) error {
	switch {
	case last == nil:
		return fmt.Errorf("kv: write: %w (%w)", ctxErr, ErrOutcomeUnknown)
	case errors.Is(last, storage.ErrDiskFull):
		return fmt.Errorf("kv: write: %w (%w; the last attempt: %v: %w)", ctxErr, ErrOutcomeUnknown, last, storage.ErrDiskFull)
	case errors.Is(last, storage.ErrCorrupt):
		return fmt.Errorf("kv: write: %w (%w; the last attempt: %v: %w)", ctxErr, ErrOutcomeUnknown, last, storage.ErrCorrupt)
	}
	return fmt.Errorf("kv: write: %w (%w; the last attempt: %v)", ctxErr, ErrOutcomeUnknown, last)
}

// run sends the queue's writes until the Store closes. Owned by the Store.
func (p *pipeline) run() {
	stop := p.s.ctx.Done()
	defer p.shutdown()
	// The write session is registered as soon as there is a leader, so
	// that the first write need not wait for it.
	early := time.NewTicker(20 * time.Millisecond)
	defer early.Stop()
	earlyC := early.C
	b := newBackoff()
	for {
		select {
		case <-stop:
			return
		case <-p.q.kick:
		case <-earlyC:
			if _, id := p.s.raft.LeaderWithID(); id == "" && p.sess.Load() == nil {
				continue
			}
			if p.sess.Load() != nil || p.register(stop) == nil {
				early.Stop()
				earlyC = nil
			}
			continue
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if p.retrying() {
				// Every batch in flight has been answered before the
				// retried writes go back to the head of the queue.
				if !p.idle(stop) {
					return
				}
				p.mu.Lock()
				redo := p.redo
				p.redo = nil
				p.mu.Unlock()
				p.q.pushFront(redo)
				if b.wait(context.Background(), stop) != nil {
					return
				}
				continue
			}
			if cur := p.sess.Load(); cur == nil || cur.lost.Load() {
				if len(p.q.take(p.expire)) == 0 && p.q.empty() {
					break // nothing to send
				}
				if err := p.register(stop); err != nil {
					p.noteQueued(err)
					if b.wait(context.Background(), stop) != nil {
						return
					}
				}
				continue
			}
			if p.s.raft.State() == raft.Leader {
				select {
				case p.slot <- struct{}{}:
				case <-stop:
					return
				}
				if p.retrying() {
					// The batch that freed the slot is to be sent
					// again: it goes before any later one.
					<-p.slot
					continue
				}
				batch := p.q.take(p.cut)
				if len(batch) == 0 {
					<-p.slot
					break
				}
				p.issue(batch)
				b = newBackoff()
				continue
			}
			batch := p.q.take(p.cut)
			if len(batch) == 0 {
				break
			}
			if p.forward(batch) {
				if b.wait(context.Background(), stop) != nil {
					return
				}
			} else {
				b = newBackoff()
			}
		}
	}
}

func (p *pipeline) retrying() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.redo) > 0
}

// idle waits until no leader batch is in flight.
func (p *pipeline) idle(stop <-chan struct{}) bool {
	for i := 0; i < cap(p.slot); i++ {
		select {
		case p.slot <- struct{}{}:
		case <-stop:
			for ; i > 0; i-- {
				<-p.slot
			}
			return false
		}
	}
	for i := 0; i < cap(p.slot); i++ {
		<-p.slot
	}
	return true
}

// shutdown answers every write still queued (with ErrClosed when it was
// never sent, or its attempts certainly had no effect), once the batches
// in flight are over.
func (p *pipeline) shutdown() {
	for _, w := range p.q.close() {
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(closedErr(w))
		}
	}
	for i := 0; i < cap(p.slot); i++ {
		p.slot <- struct{}{}
	}
	p.mu.Lock()
	redo := p.redo
	p.redo = nil
	p.mu.Unlock()
	for _, w := range redo {
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(closedErr(w))
		}
	}
}

// closedErr is the error of a write that Close caught in the queue.
func closedErr(w *pendingWrite) error {
	if w.maybe.Load() {
		return errClosedUnknown
	}
	return ErrClosed
}

// register registers a new write session for this Store, through this
// member's Raft on the leader, else through the leader.
func (p *pipeline) register(stop <-chan struct{}) error {
	c := registerCommand()
	var rev uint64
	if p.s.raft.State() == raft.Leader {
		if err := p.s.diskFullRefusal(); err != nil {
			p.refuseQueued(err)
			return err
		}
		res, err := p.apply(encodeEntry(leaderTime(), []command{c}), stop)
		if err == nil && (len(res) != 1 || res[0].status != resOK) {
			err = fmt.Errorf("kv: registering a write session: results %v", res)
		}
		if err != nil {
			return err
		}
		rev = res[0].rev
	} else {
		r := p.call([][]command{{c}})
		if r.err != nil {
			if errors.Is(r.err, errDiskFullRefused) {
				p.refuseQueued(r.err)
			}
			return r.err
		}
		if r.res[0].status != resOK {
			return fmt.Errorf("kv: registering a write session: results %v", r.res)
		}
		rev = r.res[0].rev
	}
	p.sess.Store(newClientSession(newSessionID(rev, c.nonce)))
	return nil
}

// noteQueued records err as the last failure of the queued writes, which
// wait for a write session.
func (p *pipeline) noteQueued(err error) {
	p.q.take(func(queue []*pendingWrite) (batch, rest []*pendingWrite) {
		for _, w := range queue {
			w.last.Store(&err)
		}
		return nil, queue
	})
}

// refuseQueued answers the queued writes that certainly had no effect with
// err: a leader with a full disk refuses every write.
func (p *pipeline) refuseQueued(err error) {
	p.q.take(func(queue []*pendingWrite) (batch, rest []*pendingWrite) {
		for _, w := range queue {
			if w.state.Load() != wQueued {
				continue
			}
			if w.maybe.Load() {
				rest = append(rest, w)
				continue
			}
			if w.state.CompareAndSwap(wQueued, wDropped) {
				w.answer(err)
			}
		}
		return nil, rest
	})
}

// apply hands one entry to Raft and waits for the state machine's results.
func (p *pipeline) apply(cmd []byte, stop <-chan struct{}) ([]cmdResult, error) {
	fc := make(chan raft.ApplyFuture, 1)
	out := make(chan error, 1)
	var res []cmdResult
	if !p.s.goRaft(func() {
		f := <-fc
		err := translateRaftErr(f.Error())
		if err == nil {
			switch r := f.Response().(type) {
			case []cmdResult:
				res = r
			case error:
				err = r
			}
		}
		out <- err
	}) {
		return nil, ErrClosed
	}
	fc <- p.s.raft.Apply(cmd, 10*time.Second)
	select {
	case err := <-out:
		return res, err
	case <-stop:
		return nil, ErrClosed
	}
}

// leaderTime is the time a leader stamps on the entries it proposes.
func leaderTime() uint64 { return uint64(time.Now().UnixMilli()) }

// expire answers the queued writes whose time is up, and leaves the rest.
func (p *pipeline) expire(queue []*pendingWrite) (batch, rest []*pendingWrite) {
	for _, w := range queue {
		if w.state.Load() != wQueued {
			continue
		}
		if err := w.expired(); err != nil {
			if w.state.CompareAndSwap(wQueued, wDropped) {
				w.answer(p.giveUp(w, err))
			}
			continue
		}
		rest = append(rest, w)
	}
	return nil, rest
}

// cut takes the next batch off the queue, within maxBatchOps and
// maxBatchBytes (a single write may exceed them), marking its writes sent
// and giving each write of this Store its session and sequence. Writes
// whose callers gave up are left out; expired ones are answered.
func (p *pipeline) cut(queue []*pendingWrite) (batch, rest []*pendingWrite) {
	cur := p.sess.Load()
	n, ops, size := 0, 0, 0
	clear(p.written)
	p.cutDrops, p.cutWrites = false, false
	for ; n < len(queue); n++ {
		w := queue[n]
		if w.state.Load() != wQueued {
			continue
		}
		if err := w.expired(); err != nil {
			if w.state.CompareAndSwap(wQueued, wDropped) {
				w.answer(p.giveUp(w, err))
			}
			continue
		}
		again := p.writesAgain(w)
		if len(batch) > 0 && (ops+w.nops > maxBatchOps || size+w.size > maxBatchBytes || again) {
			break
		}
		if !w.state.CompareAndSwap(wQueued, wSent) {
			continue
		}
		if !w.remote {
			sequence(w, cur)
		}
		batch = append(batch, w)
		ops, size = ops+w.nops, size+w.size
	}
	return batch, append([]*pendingWrite(nil), queue[n:]...)
}

// writesAgain says whether w writes a key that a write already in the
// batch being cut writes, and records w's keys as written otherwise. A
// revision is the index of the entry that made a change: two writes of one
// key in one entry would share it, and a compare-and-set on the revision
// the first returned would succeed over the second. Such a write starts
// the next entry instead. (The writes of one command are checked when it
// is made: a Txn writes a key once per branch.) A lease's revocation or
// expiry deletes keys not named in its command: it shares an entry only
// with others of its kind.
func (p *pipeline) writesAgain(w *pendingWrite) bool {
	if p.written == nil {
		p.written = map[string]struct{}{}
	}
	drops, writes := false, false
	for i := range w.cmds {
		switch k := w.cmds[i].kind; {
		case k == cmdRevoke || k == cmdExpire:
			drops = true
		case k == cmdTxn:
			writes = writes || w.cmds[i].writes()
		}
	}
	if (p.cutDrops && writes) || (p.cutWrites && drops) {
		return true
	}
	for i := range w.cmds {
		for _, branch := range [2][]Op{w.cmds[i].then, w.cmds[i].els} {
			for _, o := range branch {
				if o.kind != opGet {
					if _, ok := p.written[o.key]; ok {
						return true
					}
				}
			}
		}
	}
	for i := range w.cmds {
		for _, branch := range [2][]Op{w.cmds[i].then, w.cmds[i].els} {
			for _, o := range branch {
				if o.kind != opGet {
					p.written[o.key] = struct{}{}
				}
			}
		}
	}
	p.cutDrops = p.cutDrops || drops
	p.cutWrites = p.cutWrites || writes
	return false
}

// sequence gives a write of this Store its session and sequence, or keeps
// the ones it has. A write whose earlier attempts certainly had no effect,
// under a session the state machine lost, gets a new one.
func sequence(w *pendingWrite, cur *clientSession) {
	c := &w.one[0]
	if c.seq != 0 {
		if w.sess == cur || w.maybe.Load() {
			return
		}
		w.release()
	}
	w.sess, c.sess, c.seq = cur, cur.id, cur.assign()
}

// groups returns the commands of batch, with the current floor of each
// write's session.
func groups(batch []*pendingWrite) [][]command {
	g := make([][]command, len(batch))
	for i, w := range batch {
		if w.sess != nil {
			w.one[0].floor = w.sess.floorNow()
		}
		g[i] = w.cmds
	}
	return g
}

// issue hands one batch to Raft; a goroutine answers its writers once Raft
// has, after the batches issued before it.
func (p *pipeline) issue(batch []*pendingWrite) {
	prev, mine := p.prev, make(chan struct{})
	p.prev = mine
	cmd := encodeEntry(leaderTime(), groups(batch)...)
	if err := p.s.diskFullRefusal(); err != nil {
		<-prev
		p.complete(batch, err, nil)
		close(mine)
		<-p.slot
		return
	}
	// The goroutine that waits for Raft's answer starts first: once Close
	// has begun none can, and then the batch is not sent at all.
	fc := make(chan raft.ApplyFuture, 1)
	t0 := p.s.met.now()
	if !p.s.goRaft(func() {
		f := <-fc
		err := f.Error()
		var resp any
		if err == nil {
			p.s.met.since(metrics.RaftCommit, t0)
			resp = f.Response()
			if p.loseApplied.Load() > 0 && p.loseApplied.Add(-1) >= 0 {
				err, resp = raft.ErrLeadershipLost, nil
			}
		}
		<-prev
		p.complete(batch, err, resp)
		close(mine)
		<-p.slot
	}) {
		<-prev
		for _, w := range batch {
			w.state.Store(wDropped)
			w.answer(closedErr(w)) // not sent
		}
		close(mine)
		<-p.slot
		return
	}
	fc <- p.s.raft.Apply(cmd, 10*time.Second)
}

// complete handles the outcome of a leader batch.
func (p *pipeline) complete(batch []*pendingWrite, raftErr error, resp any) {
	err := translateRaftErr(raftErr)
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() {
		if len(p.redo) > 0 {
			p.q.signal() // run retries them even if nothing else is queued
		}
	}()
	if errors.Is(err, errNotLeader) {
		for _, w := range batch {
			if w.remote {
				w.answer(err) // its follower retries it
				continue
			}
			w.requeued(err)
			p.redo = append(p.redo, w)
		}
		return
	}
	if errors.Is(err, errDiskFullRefused) {
		// Refused before Raft: nothing was written.
		for _, w := range batch {
			if w.maybe.Load() {
				w.requeued(err)
				p.redo = append(p.redo, w)
				continue
			}
			w.answer(err)
		}
		return
	}
	// This batch may be in the log: earlier ones waiting to be retried
	// would come after it. Those that certainly had no effect are failed;
	// those that may have (their entries precede this one, so they are in
	// the log if it is) go again under their sequences.
	redo := p.redo[:0]
	for _, w := range p.redo {
		if w.maybe.Load() {
			redo = append(redo, w)
			continue
		}
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(fmt.Errorf("%w: not retried: a later write entered the log first (%v)", ErrNoLeader, w.lastErr()))
		}
	}
	p.redo = redo
	var res []cmdResult
	if err == nil {
		switch r := resp.(type) {
		case []cmdResult:
			res = r
		case error:
			err = outcomeOf(r)
		}
	}
	if err == nil {
		n := 0
		for _, w := range batch {
			n += len(w.cmds)
		}
		if len(res) != n {
			err = fmt.Errorf("%w: %d results for %d commands", errUnsure, len(res), n)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrOutcomeUnknown), errors.Is(err, ErrClosed):
		err = outcomeOf(err)
		for _, w := range batch {
			w.answer(err)
		}
		return
	default:
		// Raft took the entry and lost it, or its log store failed
		// (the entry may be on disk all the same): unknown.
		for _, w := range batch {
			if w.remote {
				w.answer(fmt.Errorf("%w: %w", errUnsure, err)) // its follower retries it
				continue
			}
			w.unsure(err)
			p.redo = append(p.redo, w)
		}
		return
	}
	off := 0
	for _, w := range batch {
		r := res[off : off+len(w.cmds) : off+len(w.cmds)]
		off += len(w.cmds)
		if w.remote {
			w.res = r
			w.answer(nil)
			continue
		}
		if p.settle(w, r) {
			p.redo = append(p.redo, w)
		}
	}
}

// settle answers a write of this Store with its result, or says that it
// goes back to the queue: the state machine no longer holds its session,
// and it was never applied, so it is sent again under a new one.
func (p *pipeline) settle(w *pendingWrite, res []cmdResult) (again bool) {
	switch res[0].status {
	case resNoSession:
		if w.sess != nil {
			w.sess.lost.Store(true)
		}
		if !w.maybe.Load() {
			w.requeued(errSessionLost)
			return true
		}
		w.answer(fmt.Errorf("%w: its first attempt may have been applied", ErrSessionExpired))
		return false
	case resStale:
		w.answer(fmt.Errorf("%w: its sequence was answered already", ErrSessionExpired))
		return false
	case resNoSpace:
		if w.fut != nil {
			// An async write has no writeCmd to read its result.
			w.answer(errNoSpace(res[0].rev))
			return false
		}
	}
	w.res = res
	w.answer(nil)
	return false
}

// errSessionLost is the retryable failure of a write whose session the
// state machine no longer holds.
var errSessionLost = errors.New("kv: the write session expired; registering a new one")

// errUnsure is wrapped by the error of one attempt of a write whose
// outcome is unknown: its reply was lost, or its leader lost the
// leadership after Raft took it. The write is sent again under its
// sequence.
var errUnsure = errors.New("kv: the attempt's outcome is unknown")

// errClosedUnknown is the error of a write that Close caught after it was
// handed to Raft or sent to the leader.
var errClosedUnknown = fmt.Errorf("%w with the write in flight (%w)", ErrClosed, ErrOutcomeUnknown)

// outcomeOf classifies the error of a write that was handed to Raft and
// that is not retried: an error that does not say "not applied" means the
// outcome is unknown.
func outcomeOf(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrOutcomeUnknown):
		return err
	case errors.Is(err, ErrClosed):
		// Raft shut down under it, or the state machine stopped with the
		// entry committed.
		return errClosedUnknown
	}
	return fmt.Errorf("kv: write: %w: %w", ErrOutcomeUnknown, err)
}
