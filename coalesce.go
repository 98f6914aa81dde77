package kv

import "sync"

// coalescer gathers items from concurrent callers into batches, with at
// most a fixed number of batches in flight: a caller waits only while they
// are all out, and with no load an item goes out alone at once. It is the
// machinery of the leader's group commit (batcher) and of a follower's
// batched forwarding (forwarder).
type coalescer[T any] struct {
	kick chan struct{}
	slot chan struct{} // one token per batch in flight

	mu    sync.Mutex
	queue []T
}

func newCoalescer[T any](inFlight int) coalescer[T] {
	return coalescer[T]{kick: make(chan struct{}, 1), slot: make(chan struct{}, inFlight)}
}

// add queues it for a coming batch.
func (c *coalescer[T]) add(it T) {
	c.mu.Lock()
	c.queue = append(c.queue, it)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// run hands out batches until stop is closed, and then returns what is
// left in the queue. take cuts the next batch off the queue (an empty batch
// when nothing is to go) and returns the rest; issue starts a batch and
// calls done once it is over, which frees its slot.
func (c *coalescer[T]) run(stop <-chan struct{}, take func(queue []T) (batch, rest []T), issue func(batch []T, done func())) (left []T) {
	done := func() { <-c.slot }
	for {
		select {
		case <-stop:
			return c.drain()
		case <-c.kick:
		}
		for {
			select {
			case c.slot <- struct{}{}:
			case <-stop:
				return c.drain()
			}
			c.mu.Lock()
			batch, rest := take(c.queue)
			c.queue = rest
			c.mu.Unlock()
			if len(batch) == 0 {
				done()
				break
			}
			issue(batch, done)
		}
	}
}

func (c *coalescer[T]) drain() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	c.queue = nil
	return q
}
