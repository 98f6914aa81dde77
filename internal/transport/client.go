package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Pool is the RPC client: one pipelined connection per peer address, dialled
// on first use and replaced when it breaks. Safe for concurrent use.
type Pool struct {
	mux      *Mux
	maxFrame int
	logger   *slog.Logger

	cluster func() string // stamps requests; nil: none

	mu     sync.Mutex
	conns  map[string]*clientConn
	closed bool
	wg     sync.WaitGroup
}

// SetCluster makes every request carry the cluster ID f returns, so that a
// member of another cluster refuses it. Call it before the first Call.
func (p *Pool) SetCluster(f func() string) { p.cluster = f }

// NewPool returns a Pool that dials through m. maxFrame 0 means
// DefaultMaxFrame.
func NewPool(m *Mux, maxFrame int, logger *slog.Logger) *Pool {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Pool{mux: m, maxFrame: maxFrame, logger: logger, conns: map[string]*clientConn{}}
}

type clientConn struct {
	p    *Pool
	addr string
	c    net.Conn

	wmu sync.Mutex
	bw  *bufio.Writer

	mu      sync.Mutex
	seq     uint64
	pending map[uint64]chan *Message
	broken  bool
}

// Call sends one request to addr and waits for its reply or ctx. The reply's
// remote error, if any, is returned as *Error. Errors wrapping ErrNotSent
// mean the peer never saw the request.
func (p *Pool) Call(ctx context.Context, addr string, method uint8, body []byte) ([]byte, error) {
	return p.CallAbort(ctx, nil, 0, addr, method, body)
}

// CallAbort is Call that also gives up, with an error wrapping ErrConnLost
// (the peer may have acted on the request), when no reply came within grace
// after abort was closed.
func (p *Pool) CallAbort(ctx context.Context, abort <-chan struct{}, grace time.Duration, addr string, method uint8, body []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	cc, err := p.get(ctx, addr)
	if err != nil {
		return nil, err
	}
	req := &Message{Method: method, Body: body}
	if p.cluster != nil {
		req.Cluster = p.cluster()
	}
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = int64(time.Until(dl))
		if req.Timeout <= 0 {
			return nil, fmt.Errorf("%w: %w", ErrNotSent, context.DeadlineExceeded)
		}
	}
	ch := make(chan *Message, 1)
	cc.mu.Lock()
	if cc.broken {
		cc.mu.Unlock()
		return nil, fmt.Errorf("%w: connection to %s broken", ErrNotSent, addr)
	}
	cc.seq++
	req.Seq = cc.seq
	cc.pending[req.Seq] = ch
	cc.mu.Unlock()

	cc.wmu.Lock()
	cc.c.SetWriteDeadline(time.Now().Add(frameIOTimeout))
	stop := cc.interruptWrite(ctx, abort, grace)
	err = writeFrame(cc.bw, req, p.maxFrame)
	stop()
	cc.wmu.Unlock()
	if err != nil {
		cc.forget(req.Seq)
		if errors.Is(err, ErrFrameTooLarge) {
			return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
		}
		cc.fail(err)
		cause := err
		var op *net.OpError
		if errors.As(err, &op) {
			cause = op.Err
		}
		return nil, fmt.Errorf("%w: sending to %s: %v", ErrConnLost, addr, cause)
	}
	var expired <-chan time.Time
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				return nil, fmt.Errorf("%w: %s", ErrConnLost, addr)
			}
			if resp.Code != 0 {
				return nil, &Error{Code: resp.Code, Msg: resp.Error}
			}
			return resp.Body, nil
		case <-ctx.Done():
			cc.forget(req.Seq)
			return nil, ctx.Err()
		case <-abort:
			abort = nil
			t := time.NewTimer(grace)
			defer t.Stop()
			expired = t.C
		case <-expired:
			cc.forget(req.Seq)
			return nil, fmt.Errorf("%w: call to %s abandoned", ErrConnLost, addr)
		}
	}
}

func (p *Pool) get(ctx context.Context, addr string) (*clientConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrNotSent, ErrClosed)
	}
	if cc := p.conns[addr]; cc != nil {
		p.mu.Unlock()
		return cc, nil
	}
	p.mu.Unlock()

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := p.mux.Dial(dctx, addr, ProtoRPC)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", ErrNotSent, addr, err)
	}
	cc := &clientConn{p: p, addr: addr, c: c, bw: bufio.NewWriter(c), pending: map[uint64]chan *Message{}}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, fmt.Errorf("%w: %w", ErrNotSent, ErrClosed)
	}
	if old := p.conns[addr]; old != nil { // lost a dial race: use the winner
		c.Close()
		return old, nil
	}
	p.conns[addr] = cc
	p.wg.Add(1)
	go cc.readLoop()
	return cc, nil
}

func (cc *clientConn) readLoop() {
	defer cc.p.wg.Done()
	br := bufio.NewReader(cc.c)
	for {
		var m Message
		if err := readFrame(cc.c, br, cc.p.maxFrame, &m); err != nil {
			cc.fail(err)
			return
		}
		cc.mu.Lock()
		ch := cc.pending[m.Seq]
		delete(cc.pending, m.Seq)
		cc.mu.Unlock()
		if ch != nil {
			ch <- &m
		}
	}
}

func (cc *clientConn) forget(seq uint64) {
	cc.mu.Lock()
	delete(cc.pending, seq)
	cc.mu.Unlock()
}

// fail marks the connection broken, drops it from the pool and fails every
// call waiting on it.
func (cc *clientConn) fail(err error) {
	// Out of the pool first, so that whoever reports this failure can rely
	// on the next call dialling afresh.
	cc.p.mu.Lock()
	if cc.p.conns[cc.addr] == cc {
		delete(cc.p.conns, cc.addr)
	}
	cc.p.mu.Unlock()
	cc.mu.Lock()
	if cc.broken {
		cc.mu.Unlock()
		return
	}
	cc.broken = true
	pending := cc.pending
	cc.pending = nil
	cc.mu.Unlock()
	cc.c.Close()
	for _, ch := range pending {
		close(ch)
	}
	cc.p.logger.Debug("transport: RPC connection closed", "peer", cc.addr, "error", err)
}

// Close closes every connection and waits for their readers. Idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]*clientConn, 0, len(p.conns))
	for _, cc := range p.conns {
		conns = append(conns, cc)
	}
	p.mu.Unlock()
	for _, cc := range conns {
		cc.fail(ErrClosed)
	}
	p.wg.Wait()
}

// interruptWrite makes the frame write under way give up, as the wait for
// the reply does, when ctx ends or grace has passed since abort closed: a
// write blocked on a peer that stopped reading (cut off, paused) would
// otherwise hold the connection, and every call queued behind it, for up
// to frameIOTimeout. The write then fails and with it the connection (a
// frame may be half sent), and the call's outcome is unknown. The returned
// func ends the watch; call it once the write has returned, before wmu is
// released.
func (cc *clientConn) interruptWrite(ctx context.Context, abort <-chan struct{}, grace time.Duration) (stop func()) {
	if ctx.Done() == nil && abort == nil {
		return func() {}
	}
	var mu sync.Mutex
	done := false
	fire := func() {
		mu.Lock()
		if !done {
			cc.c.SetWriteDeadline(time.Now())
		}
		mu.Unlock()
	}
	stopCtx := context.AfterFunc(ctx, fire)
	var quit chan struct{}
	if abort != nil {
		quit = make(chan struct{})
		go func() {
			select {
			case <-abort:
			case <-quit:
				return
			}
			t := time.NewTimer(grace)
			defer t.Stop()
			select {
			case <-t.C:
				fire()
			case <-quit:
			}
		}()
	}
	return func() {
		mu.Lock()
		done = true
		mu.Unlock()
		stopCtx()
		if quit != nil {
			close(quit)
		}
	}
}
