package transport

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// StreamLayer carries hashicorp/raft's NetworkTransport over the Mux: inbound
// ProtoRaft connections come out of Accept, and Dial opens connections that
// start with ProtoRaft. Close closes every connection it handed out, inbound
// and outbound, so that none of raft's connection goroutines outlive it.
type StreamLayer struct {
	m      *Mux
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}

	mu      sync.Mutex
	conns   map[*streamConn]struct{}
	shut    bool
	fenced  bool
	inbound sync.WaitGroup // accepted connections their owner has not closed yet
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// errFenced is Dial's error once the layer is closed or fenced.
var errFenced = errors.New("transport: raft traffic stopped on this member")

func newStreamLayer(m *Mux) *StreamLayer {
	return &StreamLayer{m: m, ch: make(chan net.Conn), closed: make(chan struct{}), conns: map[*streamConn]struct{}{}}
}

// streamConn removes itself from the layer's set when its owner closes it.
type streamConn struct {
	net.Conn
	s       *StreamLayer
	once    sync.Once
	inbound bool
}

func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		if c.inbound {
			c.s.inbound.Done()
		}
	})
	return c.Conn.Close()
}

func (s *StreamLayer) track(c net.Conn, inbound bool) (net.Conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut || s.fenced {
		c.Close()
		return nil, false
	}
	sc := &streamConn{Conn: c, s: s, inbound: inbound}
	s.conns[sc] = struct{}{}
	if inbound {
		s.inbound.Add(1)
	}
	return sc, true
}

// WaitInbound waits, for at most timeout, until the owner of every accepted
// connection has closed it. hashicorp/raft's NetworkTransport closes an
// inbound connection when its handler goroutine ends, and does not wait for
// those goroutines itself; a handler may still be writing raft's stable
// store (a heartbeat's term) just after Close. Call it after closing the
// transport and before closing raft's stores. It reports whether all closed.
func (s *StreamLayer) WaitInbound(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { // ends when the last handler closes its connection
		s.inbound.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// handoff passes an inbound connection to Accept, or closes it when the layer
// is closed or fenced.
func (s *StreamLayer) handoff(c net.Conn) {
	s.mu.Lock()
	fenced := s.fenced
	s.mu.Unlock()
	if fenced {
		c.Close()
		return
	}
	select {
	case s.ch <- c:
	case <-s.closed:
		c.Close()
	}
}

// Accept implements net.Listener.
func (s *StreamLayer) Accept() (net.Conn, error) {
	for {
		select {
		case c := <-s.ch:
			if tc, ok := s.track(c, true); ok {
				return tc, nil
			}
		case <-s.closed:
			return nil, net.ErrClosed
		}
	}
}

// Close implements net.Listener: Accept stops and every connection of the
// layer is closed. The Mux's own listener is closed by Mux.Close.
func (s *StreamLayer) Close() error {
	s.close()
	return nil
}

func (s *StreamLayer) close() {
	s.once.Do(func() { close(s.closed) })
	s.mu.Lock()
	s.shut = true
	conns := s.conns
	s.conns = map[*streamConn]struct{}{}
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// Fence cuts the member off Raft for good: every connection of the layer
// is closed, connections that arrive later are dropped, and Dial fails. Raft
// keeps running on the member but can neither send nor receive, so it
// neither leads nor votes: the way a member that cannot go on stops taking
// part at once, without waiting for raft's own shutdown.
func (s *StreamLayer) Fence() {
	s.mu.Lock()
	s.fenced = true
	conns := s.conns
	s.conns = map[*streamConn]struct{}{}
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close() // the owner's Close still runs once (inbound count)
	}
}

// Addr implements net.Listener: the advertised address.
func (s *StreamLayer) Addr() net.Addr { return s.m.Addr() }

// Dial implements raft.StreamLayer.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.m.Dial(ctx, string(address), ProtoRaft)
	if err != nil {
		return nil, err
	}
	tc, ok := s.track(c, false)
	if !ok {
		s.mu.Lock()
		shut := s.shut
		s.mu.Unlock()
		if shut {
			return nil, net.ErrClosed
		}
		return nil, errFenced
	}
	return tc, nil
}
