package kv

import (
	"sync"

	"github.com/hashicorp/raft"
)

// hashicorp/raft's replication pipeline can deadlock when a follower
// refuses an append (its storage failed, or its log conflicts) while more
// appends are in flight: raft's decoder stops at the refusal, the
// transport's response reader then waits for ever to hand the next response
// to it, and the sender waits for ever on that reader. Replication to the
// follower stops for good, and Raft's Shutdown, hence Close, hangs.
//
// drainedPipeline takes every response off the transport's pipeline at
// once and queues it for raft, so that the reader and the sender never
// wait on raft's decoder: the sender returns, sees the decoder gone, and
// closes the pipeline as raft means it to.
type drainedPipeline struct {
	raft.AppendPipeline
	out  chan raft.AppendFuture
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// AppendEntriesPipeline implements raft.Transport with a drained pipeline.
func (g *voteGate) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := g.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return newDrainedPipeline(p), nil
}

func newDrainedPipeline(p raft.AppendPipeline) *drainedPipeline {
	d := &drainedPipeline{AppendPipeline: p, out: make(chan raft.AppendFuture), stop: make(chan struct{}), done: make(chan struct{})}
	go d.run() // ends at Close, which raft always calls
	return d
}

func (d *drainedPipeline) run() {
	defer close(d.done)
	in := d.AppendPipeline.Consumer()
	var queue []raft.AppendFuture
	for {
		var out chan raft.AppendFuture
		var next raft.AppendFuture
		if len(queue) > 0 {
			out, next = d.out, queue[0]
		}
		select {
		case f := <-in:
			queue = append(queue, f)
		case out <- next:
			queue[0] = nil
			queue = queue[1:]
		case <-d.stop:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (d *drainedPipeline) Consumer() <-chan raft.AppendFuture { return d.out }

// Close implements raft.AppendPipeline.
func (d *drainedPipeline) Close() error {
	err := d.AppendPipeline.Close()
	d.once.Do(func() { close(d.stop) })
	<-d.done
	return err
}
