package kv

import (
	"context"
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
	s *Store
	coalescer[*pendingWrite]
}

func newBatcher(s *Store) *batcher {
	return &batcher{s: s, coalescer: newCoalescer[*pendingWrite](maxBatchInFlight)}
}

// submit queues ops for the next batch and waits for its outcome, ctx, or
// Close. An error of ctx means the write may still be applied.
func (b *batcher) submit(ctx context.Context, ops []op) error {
	w := &pendingWrite{ops: ops, done: make(chan error, 1)}
	for _, o := range ops {
		w.size += len(o.Key) + len(o.Value) + 16
	}
	b.add(w)
	select {
	case err := <-w.done:
		if err != nil && b.s.halter.halted() != nil {
			return b.s.haltedWrite()
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.s.ctx.Done():
		return ErrClosed
	case <-b.s.halter.ch:
		return b.s.haltedWrite()
	}
}

// run issues batches until the Store closes. Owned by the Store.
func (b *batcher) run() {
	for _, w := range b.coalescer.run(b.s.ctx.Done(), takeWrites, b.issue) {
		w.done <- ErrClosed
	}
}

// takeWrites cuts the next batch, within maxBatchOps and maxBatchBytes
// (a single write may exceed them).
func takeWrites(queue []*pendingWrite) (batch, rest []*pendingWrite) {
	n, ops, size := 0, 0, 0
	for n < len(queue) {
		w := queue[n]
		if n > 0 && (ops+len(w.ops) > maxBatchOps || size+w.size > maxBatchBytes) {
			break
		}
		n, ops, size = n+1, ops+len(w.ops), size+w.size
	}
	return queue[:n:n], append([]*pendingWrite(nil), queue[n:]...)
}

// issue applies one batch through Raft and answers its writers when it
// commits. It returns once the entry is handed to Raft.
func (b *batcher) issue(batch []*pendingWrite, done func()) {
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
		done()
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
