package kvtest

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// errPartitioned is what a dial across a partition returns.
var errPartitioned = errors.New("kvtest: network partitioned")

// fabric is the simulated network between the members of a Cluster. Every
// outbound connection and gossip packet of member i to member j passes
// through it, at i's side: partitions are symmetric, so the dialing side can
// enforce both directions of a connection.
type fabric struct {
	mu      sync.Mutex
	owner   map[string]int // transport and gossip addresses -> member
	cut     map[[2]int]bool
	latency time.Duration
	loss    float64
	changed chan struct{} // closed and replaced on every change
}

func newFabric() *fabric {
	return &fabric{owner: map[string]int{}, cut: map[[2]int]bool{}, changed: make(chan struct{})}
}

func (f *fabric) setOwner(addr string, i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.owner[addr] = i
}

// update applies fn to the fault state and wakes blocked connections.
func (f *fabric) update(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
	close(f.changed)
	f.changed = make(chan struct{})
}

// dialer returns the kv.Config.Dial hook of member i.
func (f *fabric) dialer(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if cut, _, _, _ := f.stateTo(i, addr); cut {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errPartitioned}
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newFaultConn(f, c, i, addr), nil
	}
}

// stateTo is state for the member that owns addr, looked up now: a member
// learns a peer's address by gossip while the peer is still opening,
// before the Cluster has recorded it. An address nobody owns has no faults.
func (f *fabric) stateTo(from int, addr string) (cut bool, latency time.Duration, loss float64, changed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	to, ok := f.owner[addr]
	if !ok {
		return false, 0, 0, f.changed
	}
	return f.cut[[2]int{from, to}], f.latency, f.loss, f.changed
}

// faultConn is a connection from member `from` to the member at addr that stalls
// while the two are partitioned (bytes are held, not lost, as TCP would),
// is delayed by the latency, and is reset with the loss probability per
// write.
type faultConn struct {
	net.Conn
	f    *fabric
	from int
	addr string // the owner is looked up on every use

	mu            sync.Mutex
	readDeadline  time.Time
	writeDeadline time.Time
	pending       []byte        // read while partitioned, not yet handed out
	dlChanged     chan struct{} // closed and replaced when a deadline changes
	closed        chan struct{}
	closeOnce     sync.Once
}

func newFaultConn(f *fabric, c net.Conn, from int, addr string) *faultConn {
	return &faultConn{Conn: c, f: f, from: from, addr: addr, closed: make(chan struct{}), dlChanged: make(chan struct{})}
}

// pass waits while the link is cut; it fails on close or at the deadline.
func (c *faultConn) pass(deadline func() time.Time) error {
	for {
		cut, _, _, changed := c.f.stateTo(c.from, c.addr)
		if !cut {
			return nil
		}
		var timeout <-chan time.Time
		var t *time.Timer
		c.mu.Lock()
		moved := c.dlChanged
		c.mu.Unlock()
		if dl := deadline(); !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		var err error
		select {
		case <-changed:
		case <-moved:
		case <-c.closed:
			err = net.ErrClosed
		case <-timeout:
			err = os.ErrDeadlineExceeded
		}
		if t != nil {
			t.Stop() // not deferred: the loop may go round many times
		}
		if err != nil {
			return err
		}
	}
}

func (c *faultConn) rdl() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.readDeadline }
func (c *faultConn) wdl() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.writeDeadline }

func (c *faultConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.pending) > 0 {
		c.mu.Unlock()
		if err := c.pass(c.rdl); err != nil {
			return 0, err
		}
		c.mu.Lock()
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(b)
	if n == 0 {
		return n, err
	}
	if perr := c.pass(c.rdl); perr != nil {
		// Keep what arrived for the next Read, as a stalled link would.
		c.mu.Lock()
		c.pending = append(c.pending, b[:n]...)
		c.mu.Unlock()
		return 0, perr
	}
	return n, err
}

func (c *faultConn) Write(b []byte) (int, error) {
	if err := c.pass(c.wdl); err != nil {
		return 0, err
	}
	_, latency, loss, _ := c.f.stateTo(c.from, c.addr)
	if loss > 0 && rand.Float64() < loss {
		c.Close()
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: errors.New("kvtest: connection reset (simulated loss)")}
	}
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *faultConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline, c.writeDeadline = t, t
	c.deadlineMoved()
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.deadlineMoved()
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *faultConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDeadline = t
	c.deadlineMoved()
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// deadlineMoved wakes the calls waiting in pass, which look at their
// deadline again, as a blocked call on a net.Conn does. c.mu is held.
func (c *faultConn) deadlineMoved() {
	close(c.dlChanged)
	c.dlChanged = make(chan struct{})
}

// gossipTransport is member i's memberlist transport seen through the
// fabric: packets to a cut peer, or lost, are dropped; streams stall like
// transport connections.
type gossipTransport struct {
	memberlist.NodeAwareTransport
	f *fabric
	i int
}

func (f *fabric) wrapGossip(i int) func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	return func(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		return &gossipTransport{NodeAwareTransport: t, f: f, i: i}
	}
}

// drop says whether a packet to addr is lost, after waiting the latency.
func (g *gossipTransport) drop(addr string) bool {
	cut, latency, loss, _ := g.f.stateTo(g.i, addr)
	if cut || loss > 0 && rand.Float64() < loss {
		return true
	}
	if latency > 0 {
		time.Sleep(latency)
	}
	return false
}

func (g *gossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if g.drop(addr) {
		return time.Now(), nil
	}
	return g.NodeAwareTransport.WriteTo(b, addr)
}

func (g *gossipTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	if g.drop(addr.Addr) {
		return time.Now(), nil
	}
	return g.NodeAwareTransport.WriteToAddress(b, addr)
}

func (g *gossipTransport) dial(addr string, dial func() (net.Conn, error)) (net.Conn, error) {
	if cut, _, _, _ := g.f.stateTo(g.i, addr); cut {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errPartitioned}
	}
	c, err := dial()
	if err != nil {
		return nil, err
	}
	return newFaultConn(g.f, c, g.i, addr), nil
}

func (g *gossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return g.dial(addr, func() (net.Conn, error) { return g.NodeAwareTransport.DialTimeout(addr, timeout) })
}

func (g *gossipTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return g.dial(addr.Addr, func() (net.Conn, error) { return g.NodeAwareTransport.DialAddressTimeout(addr, timeout) })
}
