package kv

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Pacing raft's reads of committed entries to the state machine.
//
// raft reads the committed entries it has not applied from the log and
// hands them to the state machine in batches of MaxAppendEntries, through
// a channel that holds 128 batches. When the state machine applies more
// slowly than raft reads (a member that restarts after a crash re-applies
// what its data file had not committed, and every write there costs a
// B-tree update), raft runs up to 128 batches ahead, each entry a copy in
// the heap: hundreds of MiB with large values.
//
// applyPace holds raft's read of a committed entry while the state machine
// is busy and the entry lies more than paceWindow entries past the newest
// one handed to it, so that no more than about paceWindow entries (of up
// to maxBatchBytes each) wait in memory. What it holds back is only reads
// the state machine's own progress releases: entries not committed yet
// (a leader reading new entries to replicate them) never wait, and a wait
// ends when the state machine goes idle, when the Store closes or halts,
// or after paceMaxWait, after which pacing stays off until the state
// machine moves again.
type applyPace struct {
	handed  atomic.Uint64 // the newest index handed to the state machine
	busy    atomic.Bool   // the state machine is applying a batch
	stalled atomic.Bool   // a wait timed out: off until handed moves

	mu    sync.Mutex
	moved chan struct{} // closed when handed or busy changes
}

const (
	// paceWindow is how far raft may read ahead of the state machine, in
	// entries: at least one batch (raft reads a whole batch before it
	// hands any of it over), and one more to keep the state machine fed.
	paceWindow = 2 * raftMaxAppendEntries
)

// paceMaxWait bounds one wait: a state machine that makes no progress for
// that long is stuck on something else (a failing disk it retries), and
// holding raft back would only stall it too. A variable for tests.
var paceMaxWait = 2 * time.Second

// Test hooks, nil outside tests: paceApplyHook runs in ApplyBatch before
// the state machine, paceReadHook once a read of index may go on.
var (
	paceApplyHook atomic.Pointer[func(p *applyPace)]
	paceReadHook  atomic.Pointer[func(p *applyPace, index uint64)]
)

func newApplyPace() *applyPace { return &applyPace{moved: make(chan struct{})} }

func (p *applyPace) signal() {
	p.mu.Lock()
	close(p.moved)
	p.moved = make(chan struct{})
	p.mu.Unlock()
}

func (p *applyPace) changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.moved
}

// ahead says whether a read of index must wait.
func (p *applyPace) ahead(index uint64) bool {
	return p.busy.Load() && !p.stalled.Load() && index > p.handed.Load()+paceWindow
}

// wait returns once a read of index, committed as of commit, may go on,
// or done is closed.
func (p *applyPace) wait(index uint64, commit func() uint64, done, halted <-chan struct{}) {
	if !p.ahead(index) || index > commit() {
		return
	}
	var timeout <-chan time.Time
	for {
		ch := p.changed()
		if !p.ahead(index) {
			return
		}
		if timeout == nil {
			t := time.NewTimer(paceMaxWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ch:
		case <-timeout:
			p.stalled.Store(true)
			return
		case <-done:
			return
		case <-halted:
			return
		}
	}
}

// begin and end frame the application of logs.
func (p *applyPace) begin(logs []*raft.Log) {
	if len(logs) == 0 {
		return
	}
	if last := logs[len(logs)-1].Index; last > p.handed.Load() {
		p.handed.Store(last)
	}
	p.stalled.Store(false)
	p.busy.Store(true)
	p.signal()
}

func (p *applyPace) end() {
	p.busy.Store(false)
	p.signal()
}

// pacedFSM is the state machine raft is given: it tells the pace what
// raft has handed over.
type pacedFSM struct {
	raft.BatchingFSM
	pace *applyPace
}

var _ raft.BatchingFSM = (*pacedFSM)(nil)

// Apply implements raft.FSM.
func (p *pacedFSM) Apply(l *raft.Log) any { return p.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch implements raft.BatchingFSM.
func (p *pacedFSM) ApplyBatch(logs []*raft.Log) []any {
	p.pace.begin(logs)
	defer p.pace.end()
	if h := paceApplyHook.Load(); h != nil {
		(*h)(p.pace)
	}
	return p.BatchingFSM.ApplyBatch(logs)
}
