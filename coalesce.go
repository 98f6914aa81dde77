package kv

import "sync"

// writeQueue is the ordered queue of a Store's writes: they leave it in the
// order they entered it (a write sent back by a retryable failure goes back
// to its head, before every later write). Safe for concurrent use.
type writeQueue struct {
	kick chan struct{} // a signal that the queue is not empty

	mu     sync.Mutex
	items  []*pendingWrite
	closed bool
}

func newWriteQueue() writeQueue { return writeQueue{kick: make(chan struct{}, 1)} }

// add appends w; false once the queue is closed (nothing was queued).
func (q *writeQueue) add(w *pendingWrite) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, w)
	q.mu.Unlock()
	q.signal()
	return true
}

// pushFront puts ws back at the head, in their order.
func (q *writeQueue) pushFront(ws []*pendingWrite) {
	if len(ws) == 0 {
		return
	}
	q.mu.Lock()
	q.items = append(append([]*pendingWrite(nil), ws...), q.items...)
	q.mu.Unlock()
	q.signal()
}

func (q *writeQueue) signal() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// take cuts the next batch off the head with cut.
func (q *writeQueue) take(cut func(queue []*pendingWrite) (batch, rest []*pendingWrite)) []*pendingWrite {
	q.mu.Lock()
	defer q.mu.Unlock()
	batch, rest := cut(q.items)
	q.items = rest
	return batch
}

// empty says whether nothing is queued.
func (q *writeQueue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) == 0
}

// close refuses later adds and returns what is left.
func (q *writeQueue) close() []*pendingWrite {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	left := q.items
	q.items = nil
	return left
}
