package kv

import (
	"context"
	"sync"
	"time"
)

// Group commit: on the leader, concurrent writes (local callers and writes
// forwarded by followers) are coalesced into one Raft entry, so that a burst
// of small writes costs a few log appends instead of one each. A write waits
// only while the previous batches are in flight; with no load a write goes
// out alone at once.
const (
	maxBatchOps      = 4096
	maxBatchBytes    = 4 << 20
	maxBatchInFlight = 4
)

type pendingWrite struct {
	ops  []op
	size int
	done chan error // buffered: the batch's outcome
}

type batcher struct {
	s    *Store
	kick chan struct{}
	slot chan struct{} // one token per batch in flight

	mu    sync.Mutex
	queue []*pendingWrite
}

func newBatcher(s *Store) *batcher {
	return &batcher{s: s, kick: make(chan struct{}, 1), slot: make(chan struct{}, maxBatchInFlight)}
}

// submit queues ops for the next batch and waits for its outcome, ctx, or
// Close. An error of ctx means the write may still be applied.
func (b *batcher) submit(ctx context.Context, ops []op) error {
	w := &pendingWrite{ops: ops, done: make(chan error, 1)}
	for _, o := range ops {
		w.size += len(o.Key) + len(o.Value) + 16
	}
	b.mu.Lock()
	b.queue = append(b.queue, w)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.s.ctx.Done():
		return ErrClosed
	}
}

// run issues batches until the Store closes. Owned by the Store.
func (b *batcher) run() {
	for {
		select {
		case <-b.s.ctx.Done():
			b.failQueued(ErrClosed)
			return
		case <-b.kick:
		}
		for {
			select {
			case b.slot <- struct{}{}:
			case <-b.s.ctx.Done():
				b.failQueued(ErrClosed)
				return
			}
			batch := b.take()
			if len(batch) == 0 {
				<-b.slot
				break
			}
			b.issue(batch)
		}
	}
}

func (b *batcher) take() []*pendingWrite {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ops, size := 0, 0, 0
	for n < len(b.queue) {
		w := b.queue[n]
		if n > 0 && (ops+len(w.ops) > maxBatchOps || size+w.size > maxBatchBytes) {
			break
		}
		n, ops, size = n+1, ops+len(w.ops), size+w.size
	}
	batch := b.queue[:n:n]
	b.queue = append([]*pendingWrite(nil), b.queue[n:]...)
	return batch
}

func (b *batcher) failQueued(err error) {
	b.mu.Lock()
	q := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, w := range q {
		w.done <- err
	}
}

// issue applies one batch through Raft and answers its writers when it
// commits. It returns once the entry is handed to Raft.
func (b *batcher) issue(batch []*pendingWrite) {
	var c command
	if len(batch) == 1 {
		c.Ops = batch[0].ops
	} else {
		for _, w := range batch {
			c.Ops = append(c.Ops, w.ops...)
		}
	}
	finish := func(err error) {
		for _, w := range batch {
			w.done <- err
		}
		<-b.slot
	}
	cmd, err := encodeCommand(&c)
	if err != nil {
		finish(err)
		return
	}
	f := b.s.raft.Apply(cmd, 10*time.Second)
	if !b.s.goRaft(func() {
		err := translateRaftErr(f.Error())
		if err == nil {
			if rerr, ok := f.Response().(error); ok {
				err = rerr
			}
		}
		finish(err)
	}) {
		finish(ErrClosed)
	}
}
