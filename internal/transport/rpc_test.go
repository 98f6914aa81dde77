package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rpcNode is a served Mux with an RPC Server behind ProtoRPC. It records the
// server side of every RPC connection.
type rpcNode struct {
	*served
	srv  *Server
	logs *logBuf

	mu    sync.Mutex
	conns []net.Conn
}

func startRPC(t testing.TB, h Handler, tweak ...func(*ServerConfig)) *rpcNode {
	t.Helper()
	n := &rpcNode{logs: &logBuf{}}
	cfg := ServerConfig{Handler: h, Logger: n.logs.logger()}
	for _, f := range tweak {
		f(&cfg)
	}
	n.srv = NewServer(cfg)
	// Registered before the Mux: the Mux closes first, then the Server.
	t.Cleanup(func() { within(t, waitTimeout, "Server.Close", n.srv.Close) })
	n.served = startMux(t, MuxConfig{Logger: n.logs.logger()}, func(m *Mux) {
		m.Handle(ProtoRPC, func(c net.Conn) {
			n.mu.Lock()
			n.conns = append(n.conns, c)
			n.mu.Unlock()
			n.srv.ServeConn(c)
		})
	})
	return n
}

func (n *rpcNode) addr() string { return n.Addr().String() }

func (n *rpcNode) connCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

// dropConns closes the server side of every RPC connection so far.
func (n *rpcNode) dropConns() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.conns {
		c.Close()
	}
}

// newPool returns a Pool dialling through its own (unserved) Mux.
func newPool(t testing.TB, maxFrame int, dial Dialer) *Pool {
	t.Helper()
	m := NewMux(MuxConfig{Listener: listen(t), Dial: dial})
	t.Cleanup(func() { m.Close() })
	p := NewPool(m, maxFrame, nil)
	t.Cleanup(func() { within(t, waitTimeout, "Pool.Close", p.Close) })
	return p
}

func echo(_ context.Context, method uint8, body []byte) ([]byte, error) {
	return append([]byte{method}, body...), nil
}

// callResult runs Call in the background.
type callResult struct {
	body []byte
	err  error
}

func goCall(ctx context.Context, p *Pool, addr string, method uint8, body []byte) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		b, err := p.Call(ctx, addr, method, body)
		ch <- callResult{b, err}
	}()
	return ch
}

func result(t testing.TB, ch <-chan callResult) callResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout):
		t.Fatal("Call did not return")
		return callResult{}
	}
}

func recv(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// poolConn returns the Pool's current connection to addr, if any.
func poolConn(p *Pool, addr string) *clientConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns[addr]
}

func TestRPCRoundTrip(t *testing.T) {
	n := startRPC(t, echo)
	p := newPool(t, 0, nil)
	ctx := context.Background()
	cases := []struct {
		method uint8
		body   []byte
	}{
		{1, []byte("hello")},
		{0, nil},
		{255, []byte{0, 1, 2, 0xc1, 0xff}},
		{7, bytes.Repeat([]byte("x"), 1<<20)},
	}
	for _, c := range cases {
		got, err := p.Call(ctx, n.addr(), c.method, c.body)
		if err != nil {
			t.Fatalf("Call(%d): %v", c.method, err)
		}
		if want := append([]byte{c.method}, c.body...); !bytes.Equal(got, want) {
			t.Fatalf("Call(%d) = %d bytes, want %d", c.method, len(got), len(want))
		}
	}
	if c := n.connCount(); c != 1 {
		t.Fatalf("%d connections for sequential calls, want 1 reused", c)
	}
}

func TestRPCNilReply(t *testing.T) {
	n := startRPC(t, func(context.Context, uint8, []byte) ([]byte, error) { return nil, nil })
	p := newPool(t, 0, nil)
	got, err := p.Call(context.Background(), n.addr(), 1, []byte("x"))
	if err != nil || len(got) != 0 {
		t.Fatalf("Call = %q, %v; want empty, nil", got, err)
	}
}

func TestRPCHandlerErrors(t *testing.T) {
	n := startRPC(t, func(_ context.Context, method uint8, _ []byte) ([]byte, error) {
		switch method {
		case 1:
			return []byte("ignored"), &Error{Code: 7, Msg: "not leader"}
		case 2:
			return nil, fmt.Errorf("wrapped: %w", &Error{Code: 9, Msg: "inner"})
		case 3:
			return nil, errors.New("boom")
		}
		return nil, nil
	})
	p := newPool(t, 0, nil)
	cases := []struct {
		method uint8
		code   uint8
		msg    string
	}{
		{1, 7, "not leader"},
		{2, 9, "inner"},
		{3, CodeInternal, "boom"},
	}
	for _, c := range cases {
		body, err := p.Call(context.Background(), n.addr(), c.method, nil)
		var re *Error
		if !errors.As(err, &re) {
			t.Fatalf("method %d: err %v (%T), want *Error", c.method, err, err)
		}
		if re.Code != c.code || re.Msg != c.msg || re.Error() != c.msg {
			t.Fatalf("method %d: got {%d %q}, want {%d %q}", c.method, re.Code, re.Msg, c.code, c.msg)
		}
		if body != nil {
			t.Fatalf("method %d: body %q alongside an error", c.method, body)
		}
		if errors.Is(err, ErrNotSent) || errors.Is(err, ErrConnLost) {
			t.Fatalf("method %d: remote error %v classed as a transport failure", c.method, err)
		}
	}
}

// Code 0 means "no error" on the wire, so a handler's *Error{Code: 0} must
// not turn into a successful reply.
func TestRPCHandlerErrorCodeZero(t *testing.T) {
	n := startRPC(t, func(context.Context, uint8, []byte) ([]byte, error) {
		return []byte("partial"), &Error{Code: 0, Msg: "code zero"}
	})
	p := newPool(t, 0, nil)
	body, err := p.Call(context.Background(), n.addr(), 1, nil)
	if err == nil {
		t.Fatalf("BUG: handler returned *Error{Code: 0} but Call succeeded (body %q): "+
			"Server.call copies Code 0 into the reply, which Pool.Call reads as success", body)
	}
}

func TestRPCHandlerPanic(t *testing.T) {
	n := startRPC(t, func(_ context.Context, method uint8, body []byte) ([]byte, error) {
		if method == 1 {
			panic("kaboom")
		}
		return body, nil
	})
	p := newPool(t, 0, nil)
	for i := 0; i < 3; i++ {
		_, err := p.Call(context.Background(), n.addr(), 1, nil)
		var re *Error
		if !errors.As(err, &re) || re.Code != CodeInternal || !strings.Contains(re.Msg, "kaboom") {
			t.Fatalf("panicking handler: %v, want *Error CodeInternal mentioning the panic", err)
		}
		if got, err := p.Call(context.Background(), n.addr(), 2, []byte("alive")); err != nil || string(got) != "alive" {
			t.Fatalf("call after panic: %q, %v", got, err)
		}
	}
	if c := n.connCount(); c != 1 {
		t.Fatalf("%d connections, want the first one to survive the panics", c)
	}
	waitLog(t, n.logs, "panicked")
}

func TestRPCHandlerSeesCallerDeadline(t *testing.T) {
	type seen struct {
		ok bool
		dl time.Time
	}
	seenc := make(chan seen, 1)
	n := startRPC(t, func(ctx context.Context, _ uint8, _ []byte) ([]byte, error) {
		dl, ok := ctx.Deadline()
		seenc <- seen{ok, dl}
		return nil, nil
	})
	p := newPool(t, 0, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	clientDL, _ := ctx.Deadline()
	if _, err := p.Call(ctx, n.addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	s := <-seenc
	if !s.ok {
		t.Fatal("handler ctx has no deadline though the caller had one")
	}
	// The server's deadline is its receive time plus the caller's remaining
	// time: never earlier than the caller's, later only by the transit time.
	if d := s.dl.Sub(clientDL); d < -50*time.Millisecond || d > time.Second {
		t.Fatalf("handler deadline off the caller's by %v", d)
	}

	if _, err := p.Call(context.Background(), n.addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	if s := <-seenc; s.ok {
		t.Fatalf("handler ctx has deadline %v though the caller had none", s.dl)
	}
}

func TestRPCHandlerCtxExpires(t *testing.T) {
	n := startRPC(t, func(ctx context.Context, _ uint8, _ []byte) ([]byte, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(waitTimeout):
			return nil, errors.New("handler ctx never ended")
		}
	})
	p := newPool(t, 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Call(ctx, n.addr(), 1, nil)
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Call took %v", el)
	}
	// The caller's ctx and the handler's expire together: either outcome is
	// fine, but not a transport failure.
	var re *Error
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &re) && strings.Contains(re.Msg, "deadline")) {
		t.Fatalf("Call: %v", err)
	}
}

func TestRPCPipelined(t *testing.T) {
	const N = 200
	var (
		inside  atomic.Int32
		maxIn   atomic.Int32
		allIn   = make(chan struct{})
		allOnce sync.Once
	)
	n := startRPC(t, func(ctx context.Context, method uint8, body []byte) ([]byte, error) {
		if method == 0 { // warm-up
			return nil, nil
		}
		cur := inside.Add(1)
		defer inside.Add(-1)
		for {
			m := maxIn.Load()
			if cur <= m || maxIn.CompareAndSwap(m, cur) {
				break
			}
		}
		if cur == N {
			allOnce.Do(func() { close(allIn) })
		}
		select {
		case <-allIn:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(waitTimeout):
			return nil, fmt.Errorf("only %d calls in flight at once", inside.Load())
		}
		return append([]byte("re:"), body...), nil
	})
	p := newPool(t, 0, nil)
	if _, err := p.Call(context.Background(), n.addr(), 0, nil); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, N)
	for i := 0; i < N; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fmt.Sprintf("req-%d", i)
			got, err := p.Call(ctx, n.addr(), 1, []byte(req))
			if err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
				return
			}
			if string(got) != "re:"+req {
				errs <- fmt.Errorf("call %d got reply %q", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxIn.Load(); m != N {
		t.Errorf("at most %d calls overlapped, want %d", m, N)
	}
	if c := n.connCount(); c != 1 {
		t.Errorf("%d connections, want all calls pipelined on 1", c)
	}
}

// Concurrent first calls race to dial; all must work and the Pool must end
// up with one connection.
func TestRPCConcurrentFirstCalls(t *testing.T) {
	n := startRPC(t, echo)
	p := newPool(t, 0, nil)
	const N = 50
	var wg sync.WaitGroup
	errs := make(chan error, N)
	for i := 0; i < N; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprint(i))
			got, err := p.Call(context.Background(), n.addr(), 3, body)
			if err != nil {
				errs <- err
			} else if !bytes.Equal(got, append([]byte{3}, body...)) {
				errs <- fmt.Errorf("call %d got %q", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	p.mu.Lock()
	conns := len(p.conns)
	p.mu.Unlock()
	if conns != 1 {
		t.Fatalf("pool holds %d connections, want 1", conns)
	}
	t.Logf("%d concurrent first calls dialled %d connections", N, n.connCount())
}

// blockingHandler blocks method 1 until release closes (or its ctx ends) and
// echoes everything else.
func blockingHandler() (h Handler, entered chan struct{}, release chan struct{}) {
	entered = make(chan struct{}, 16)
	release = make(chan struct{})
	h = func(ctx context.Context, method uint8, body []byte) ([]byte, error) {
		if method != 1 {
			return echo(ctx, method, body)
		}
		entered <- struct{}{}
		select {
		case <-release:
			return []byte("released"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h, entered, release
}

func TestRPCCallCtxCancel(t *testing.T) {
	h, entered, release := blockingHandler()
	n := startRPC(t, h)
	defer close(release)
	p := newPool(t, 0, nil)

	ctx, cancel := context.WithCancel(context.Background())
	res := goCall(ctx, p, n.addr(), 1, nil)
	recv(t, entered, "handler")
	start := time.Now()
	cancel()
	r := result(t, res)
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancelled Call returned after %v", el)
	}
	if r.err != ctx.Err() || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled Call: %v, want ctx.Err()", r.err)
	}

	// A deadline, with the handler ignoring it: the caller still returns.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	dlHandlerDone := make(chan struct{})
	n2 := startRPC(t, func(context.Context, uint8, []byte) ([]byte, error) {
		<-dlHandlerDone
		return nil, nil
	})
	defer close(dlHandlerDone)
	start = time.Now()
	_, err := p.Call(ctx2, n2.addr(), 1, nil)
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Call past its deadline returned after %v", el)
	}
	if !errors.Is(err, context.DeadlineExceeded) || err != ctx2.Err() {
		t.Fatalf("Call past its deadline: %v", err)
	}

	// The connection survives an abandoned call; the late reply is dropped.
	if got, err := p.Call(context.Background(), n.addr(), 2, []byte("after")); err != nil || string(got) != "\x02after" {
		t.Fatalf("call after a cancelled one: %q, %v", got, err)
	}
	if c := n.connCount(); c != 1 {
		t.Fatalf("%d connections, want 1", c)
	}

	// A ctx that is already done fails before anything is sent.
	calls := n.connCount()
	_, err = p.Call(ctx, n.addr(), 2, nil)
	if !errors.Is(err, ErrNotSent) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Call with a cancelled ctx: %v, want ErrNotSent and context.Canceled", err)
	}
	if n.connCount() != calls {
		t.Fatal("Call with a cancelled ctx dialled")
	}
}

func TestRPCNothingListening(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	p := newPool(t, 0, nil)
	for i := 0; i < 2; i++ {
		_, err := p.Call(context.Background(), addr, 1, []byte("x"))
		if !errors.Is(err, ErrNotSent) || errors.Is(err, ErrConnLost) {
			t.Fatalf("Call to a closed port: %v, want ErrNotSent", err)
		}
	}
	if c := poolConn(p, addr); c != nil {
		t.Fatal("failed dial left a pooled connection")
	}
}

func TestRPCServerDropsConnMidCall(t *testing.T) {
	h, entered, release := blockingHandler()
	n := startRPC(t, h)
	p := newPool(t, 0, nil)
	if _, err := p.Call(context.Background(), n.addr(), 2, nil); err != nil { // dial once
		t.Fatal(err)
	}

	res := goCall(context.Background(), p, n.addr(), 1, nil)
	res2 := goCall(context.Background(), p, n.addr(), 1, nil)
	recv(t, entered, "handler")
	recv(t, entered, "handler")
	n.dropConns()
	for _, ch := range []<-chan callResult{res, res2} {
		r := result(t, ch)
		if !errors.Is(r.err, ErrConnLost) || errors.Is(r.err, ErrNotSent) {
			t.Fatalf("Call when the server dropped the connection: %v, want ErrConnLost", r.err)
		}
	}
	close(release) // the handlers' replies now fail to write
	waitLog(t, n.logs, "RPC reply failed")

	got, err := p.Call(context.Background(), n.addr(), 2, []byte("again"))
	if err != nil || string(got) != "\x02again" {
		t.Fatalf("call after the connection was lost: %q, %v", got, err)
	}
	if c := n.connCount(); c != 2 {
		t.Fatalf("%d connections, want a redial", c)
	}
}

// faults injects write failures into a faultConn.
type faults struct {
	fail    atomic.Bool   // writes fail
	block   atomic.Bool   // the next write blocks: it signals blocked, then waits for unblock
	blocked chan struct{} // buffered
	unblock chan error    // nil: go on writing; else the write fails with it
}

func newFaults() *faults {
	return &faults{blocked: make(chan struct{}, 1), unblock: make(chan error, 1)}
}

type faultConn struct {
	net.Conn
	f *faults
}

func (c faultConn) Write(b []byte) (int, error) {
	if c.f.block.CompareAndSwap(true, false) {
		c.f.blocked <- struct{}{}
		if err := <-c.f.unblock; err != nil {
			return 0, err
		}
	}
	if c.f.fail.Load() {
		return 0, errors.New("injected write failure")
	}
	return c.Conn.Write(b)
}

func faultDialer(f *faults) Dialer {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return faultConn{c, f}, nil
	}
}

func TestRPCWriteFailure(t *testing.T) {
	n := startRPC(t, echo)
	f := newFaults()
	fail := &f.fail
	p := newPool(t, 0, faultDialer(f))
	if _, err := p.Call(context.Background(), n.addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	_, err := p.Call(context.Background(), n.addr(), 1, []byte("lost"))
	if !errors.Is(err, ErrConnLost) {
		t.Fatalf("Call whose write failed: %v, want ErrConnLost", err)
	}
	if poolConn(p, n.addr()) != nil {
		t.Fatal("broken connection still pooled")
	}
	fail.Store(false)
	if got, err := p.Call(context.Background(), n.addr(), 1, []byte("ok")); err != nil || string(got) != "\x01ok" {
		t.Fatalf("call after a write failure: %q, %v", got, err)
	}
	if c := n.connCount(); c != 2 {
		t.Fatalf("%d connections, want a redial", c)
	}
}

func TestRPCRequestTooLarge(t *testing.T) {
	var calls atomic.Int32
	n := startRPC(t, func(ctx context.Context, m uint8, b []byte) ([]byte, error) {
		calls.Add(1)
		return echo(ctx, m, b)
	})
	const max = 1024
	p := newPool(t, max, nil)

	// On a fresh Pool and on an established connection.
	for i := 0; i < 2; i++ {
		_, err := p.Call(context.Background(), n.addr(), 1, make([]byte, 2*max))
		if !errors.Is(err, ErrFrameTooLarge) || !errors.Is(err, ErrNotSent) {
			t.Fatalf("oversized request: %v, want ErrFrameTooLarge and ErrNotSent", err)
		}
		if calls.Load() != int32(i) {
			t.Fatal("the handler saw the oversized request")
		}
		if got, err := p.Call(context.Background(), n.addr(), 1, []byte("small")); err != nil || string(got) != "\x01small" {
			t.Fatalf("call after an oversized one: %q, %v", got, err)
		}
	}
	if c := n.connCount(); c != 1 {
		t.Fatalf("%d connections: the oversized request broke the connection", c)
	}
}

func TestRPCServerRejectsOversizedFrame(t *testing.T) {
	n := startRPC(t, echo, func(c *ServerConfig) { c.MaxFrame = 1024 })
	p := newPool(t, 0, nil)
	_, err := p.Call(context.Background(), n.addr(), 1, make([]byte, 4096))
	if !errors.Is(err, ErrConnLost) {
		t.Fatalf("request over the server's MaxFrame: %v, want ErrConnLost", err)
	}
	waitLog(t, n.logs, "frame too large")
	// (Pool.Call may report ErrConnLost a moment before the broken connection
	// leaves the pool: see TestPoolDropsBrokenConnBeforeReporting.)
	waitFor(t, "the broken connection to leave the pool", func() bool { return poolConn(p, n.addr()) == nil })
	if got, err := p.Call(context.Background(), n.addr(), 1, []byte("ok")); err != nil || string(got) != "\x01ok" {
		t.Fatalf("call after: %q, %v", got, err)
	}
}

func TestRPCReplyTooLarge(t *testing.T) {
	n := startRPC(t, func(_ context.Context, m uint8, b []byte) ([]byte, error) {
		if m == 1 {
			return make([]byte, 4096), nil
		}
		return b, nil
	}, func(c *ServerConfig) { c.MaxFrame = 1024 })
	p := newPool(t, 0, nil)
	_, err := p.Call(context.Background(), n.addr(), 1, nil)
	if err == nil {
		t.Fatal("reply over the server's MaxFrame succeeded")
	}
	t.Logf("reply over MaxFrame: %v", err)
	if got, err := p.Call(context.Background(), n.addr(), 2, []byte("ok")); err != nil || string(got) != "ok" {
		t.Fatalf("call after: %q, %v", got, err)
	}
}

func frame(body []byte) []byte {
	b := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(len(body)))
	return append(b, body...)
}

func TestRPCGarbageFrames(t *testing.T) {
	n := startRPC(t, echo)
	p := newPool(t, 0, nil)
	if _, err := p.Call(context.Background(), n.addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	healthy := poolConn(p, n.addr())

	rng := rand.New(rand.NewSource(1))
	random := make([]byte, 256)
	rng.Read(random)
	random[0] = 0xFF // length prefix far beyond MaxFrame

	cases := []struct {
		name      string
		data      []byte
		closeSend bool
	}{
		{"random bytes", random, false},
		{"huge length", []byte{0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3}, false},
		{"just over MaxFrame", binary.BigEndian.AppendUint32(nil, DefaultMaxFrame+1), false},
		{"not msgpack", frame([]byte{0xc1, 0xc1, 0xc1}), false},
		{"msgpack string", frame([]byte{0xa5, 'h', 'e', 'l', 'l', 'o'}), false},
		{"msgpack int", frame([]byte{0x01}), false},
		{"truncated map", frame([]byte{0x81, 0xa1, 's'}), false},
		{"bin32 claims 2GiB", frame([]byte{0x81, 0xa1, 'b', 0xc6, 0x7f, 0xff, 0xff, 0xff}), false},
		{"truncated frame", append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3), true},
		{"truncated header", []byte{0, 0}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := strings.Count(n.logs.String(), "dropping RPC connection")
			conn := dialRaw(t, n.addr())
			if _, err := conn.Write(append([]byte{ProtoRPC}, c.data...)); err != nil {
				t.Fatal(err)
			}
			if c.closeSend {
				conn.(*net.TCPConn).CloseWrite()
			}
			expectClosedByPeer(t, conn)
			if c.name != "truncated header" { // a clean-ish EOF is not logged
				// Decode reports a truncated msgpack body as io.EOF, which
				// Server.serve takes for a clean hang-up and does not log.
				waitFor(t, "a log line for the dropped connection", func() bool {
					return strings.Count(n.logs.String(), "dropping RPC connection") > before
				})
			}
			got, err := p.Call(context.Background(), n.addr(), 9, []byte(c.name))
			if err != nil || !bytes.Equal(got, append([]byte{9}, c.name...)) {
				t.Fatalf("healthy connection after garbage: %q, %v", got, err)
			}
			if poolConn(p, n.addr()) != healthy {
				t.Fatal("the healthy connection was replaced")
			}
		})
	}
}

// Frames with a valid length and a random body: the server either answers
// (the body happened to decode) or drops the connection; it never panics.
func TestRPCRandomFrameBodies(t *testing.T) {
	n := startRPC(t, echo)
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 100; i++ {
		body := make([]byte, 1+rng.Intn(64))
		rng.Read(body)
		if i%2 == 0 {
			body[0] = 0x80 | byte(rng.Intn(16)) // a fixmap header, to get further into decoding
		}
		conn, err := net.DialTimeout("tcp", n.addr(), waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(append([]byte{ProtoRPC}, frame(body)...)); err != nil {
			t.Fatal(err)
		}
		conn.(*net.TCPConn).CloseWrite()
		expectClosedByPeer(t, conn)
		conn.Close()
	}
	p := newPool(t, 0, nil)
	if got, err := p.Call(context.Background(), n.addr(), 1, []byte("ok")); err != nil || string(got) != "\x01ok" {
		t.Fatalf("call after random frames: %q, %v", got, err)
	}
}

func TestServerCloseCancelsHandlersAndWaits(t *testing.T) {
	cancelled := make(chan struct{})
	proceed := make(chan struct{})
	entered := make(chan struct{})
	var returned atomic.Bool
	n := startRPC(t, func(ctx context.Context, _ uint8, _ []byte) ([]byte, error) {
		close(entered)
		<-ctx.Done()
		close(cancelled)
		<-proceed
		returned.Store(true)
		return nil, ctx.Err()
	})
	p := newPool(t, 0, nil)
	res := goCall(context.Background(), p, n.addr(), 1, nil)
	recv(t, entered, "handler")

	closeDone := make(chan struct{})
	go func() { n.srv.Close(); close(closeDone) }()
	recv(t, cancelled, "handler ctx to be cancelled by Server.Close")
	select {
	case <-closeDone:
		t.Fatal("Server.Close returned while a handler was still running")
	default:
	}
	close(proceed)
	recv(t, closeDone, "Server.Close")
	if !returned.Load() {
		t.Fatal("Server.Close returned before the handler")
	}

	r := result(t, res)
	var re *Error
	if !errors.Is(r.err, ErrConnLost) && !errors.As(r.err, &re) {
		t.Fatalf("call in flight during Server.Close: %v", r.err)
	}

	// Idempotent, and new connections are closed at once.
	within(t, waitTimeout, "second Server.Close", n.srv.Close)
	conn := dialRaw(t, n.addr())
	if _, err := conn.Write([]byte{ProtoRPC}); err != nil {
		t.Fatal(err)
	}
	expectClosedByPeer(t, conn)
	_, err := p.Call(context.Background(), n.addr(), 1, nil)
	if err == nil {
		t.Fatal("call to a closed Server succeeded")
	}
}

func TestServerMaxInFlight(t *testing.T) {
	h, entered, release := blockingHandler()
	n := startRPC(t, h, func(c *ServerConfig) { c.MaxInFlight = 2 })
	p := newPool(t, 0, nil)
	if _, err := p.Call(context.Background(), n.addr(), 2, nil); err != nil {
		t.Fatal(err)
	}
	var res []<-chan callResult
	for i := 0; i < 3; i++ {
		res = append(res, goCall(context.Background(), p, n.addr(), 1, nil))
	}
	recv(t, entered, "first handler")
	recv(t, entered, "second handler")
	// Asserting that something does not happen needs a grace period.
	select {
	case <-entered:
		t.Fatal("a third call ran beyond MaxInFlight 2")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	for _, ch := range res {
		if r := result(t, ch); r.err != nil || string(r.body) != "released" {
			t.Fatalf("call: %q, %v", r.body, r.err)
		}
	}
}

// Server.Close while the read loop waits for a MaxInFlight slot.
func TestServerCloseWhileReaderBlocked(t *testing.T) {
	h, entered, _ := blockingHandler() // handlers end with Server.Close
	n := startRPC(t, h, func(c *ServerConfig) { c.MaxInFlight = 1 })
	p := newPool(t, 0, nil)
	r1 := goCall(context.Background(), p, n.addr(), 1, nil)
	recv(t, entered, "handler")
	r2 := goCall(context.Background(), p, n.addr(), 1, nil)
	waitFor(t, "second request to be sent", func() bool {
		cc := poolConn(p, n.addr())
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return cc.seq == 2
	})
	within(t, waitTimeout, "Server.Close", n.srv.Close)
	for _, ch := range []<-chan callResult{r1, r2} {
		if r := result(t, ch); r.err == nil {
			t.Fatal("call succeeded across Server.Close")
		}
	}
}

func TestServerServeConnAfterClose(t *testing.T) {
	srv := NewServer(ServerConfig{Handler: echo})
	srv.Close()
	ln := listen(t)
	defer ln.Close()
	c := dialRaw(t, ln.Addr().String())
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	srv.ServeConn(sc)
	expectClosedByPeer(t, c)
}

func TestPoolClose(t *testing.T) {
	h, entered, release := blockingHandler()
	n := startRPC(t, h)
	defer close(release)
	p := newPool(t, 0, nil)
	if _, err := p.Call(context.Background(), n.addr(), 2, nil); err != nil { // dial once
		t.Fatal(err)
	}

	res := goCall(context.Background(), p, n.addr(), 1, nil)
	res2 := goCall(context.Background(), p, n.addr(), 1, nil)
	recv(t, entered, "handler")
	recv(t, entered, "handler")
	within(t, waitTimeout, "Pool.Close", p.Close)
	for _, ch := range []<-chan callResult{res, res2} {
		if r := result(t, ch); !errors.Is(r.err, ErrConnLost) {
			t.Fatalf("pending call at Pool.Close: %v, want ErrConnLost", r.err)
		}
	}
	for i := 0; i < 2; i++ {
		_, err := p.Call(context.Background(), n.addr(), 2, nil)
		if !errors.Is(err, ErrNotSent) || !errors.Is(err, ErrClosed) {
			t.Fatalf("Call after Pool.Close: %v, want ErrNotSent and ErrClosed", err)
		}
	}
	within(t, waitTimeout, "second Pool.Close", p.Close)
	if c := n.connCount(); c != 1 {
		t.Fatalf("%d connections: Call after Close dialled", c)
	}
}

func TestPoolCloseEmpty(t *testing.T) {
	m := NewMux(MuxConfig{Listener: listen(t)})
	defer m.Close()
	p := NewPool(m, 0, nil)
	if p.maxFrame != DefaultMaxFrame {
		t.Fatalf("maxFrame %d, want DefaultMaxFrame", p.maxFrame)
	}
	p.Close()
	p.Close()
}

// --- Message encoding ---

func TestMessageEncodeDecode(t *testing.T) {
	msgs := []Message{
		{},
		{Seq: 1},
		{Seq: 1<<64 - 1, Method: 255, Timeout: int64(time.Hour), Body: []byte{0, 1, 2, 0xc1}},
		{Seq: 42, Code: CodeInternal, Error: "internal error: ünïcødé \x00 and bytes \xff"},
		{Seq: 7, Timeout: -5, Body: bytes.Repeat([]byte{0xAB}, 70000)},
	}
	for _, m := range msgs {
		b, err := Encode(&m)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", m, err)
		}
		var got Message
		if err := Decode(b, &got); err != nil {
			t.Fatalf("Decode: %v", err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
		// Decoding into a used Message: readFrame resets it first, Decode
		// itself merges, so only check the fields present.
	}
	// Empty bodies are omitted and come back nil.
	b, err := Encode(&Message{Seq: 3, Body: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	var got Message
	if err := Decode(b, &got); err != nil || got.Seq != 3 || len(got.Body) != 0 {
		t.Fatalf("empty body: %+v, %v", got, err)
	}
	// Omitted fields keep the wire small.
	if b, _ := Encode(&Message{Seq: 1}); len(b) > 4 {
		t.Fatalf("Message{Seq: 1} encodes to %d bytes: %x", len(b), b)
	}
}

func TestEncodeDecodeOtherTypes(t *testing.T) {
	type rec struct {
		Name string
		Vals []int64
		M    map[string]string
	}
	in := rec{Name: "a", Vals: []int64{-1, 0, 1 << 40}, M: map[string]string{"k": "v"}}
	b, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	var out rec
	if err := Decode(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
	// Strings decode as strings, not []byte, into interfaces (RawToString).
	b, _ = Encode("s")
	var v any
	if err := Decode(b, &v); err != nil || v != "s" {
		t.Fatalf("decode into any: %#v, %v", v, err)
	}
	// Decoding into a non-pointer fails instead of panicking.
	if err := Decode(b, out); err == nil {
		t.Fatal("Decode into a non-pointer succeeded")
	}
}

func TestDecodeGarbageNeverPanics(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	prefixes := [][]byte{
		nil,
		{0x80 | 6}, // fixmap
		{0xde, 0xff, 0xff},
		{0xdf, 0xff, 0xff, 0xff, 0xff},
		{0xdc, 0xff, 0xff},
		{0xdd, 0xff, 0xff, 0xff, 0xff},
		{0x81, 0xa1, 'b', 0xc6, 0xff, 0xff, 0xff, 0xff},
		{0x81, 0xa1, 'e', 0xdb, 0xff, 0xff, 0xff, 0xff},
		{0x81, 0xa1, 's', 0xcf},
		{0xc7, 0xff, 0x01}, // ext8
		{0xd4, 0xff},       // fixext1, type -1 (timestamp)
	}
	for i := 0; i < 3000; i++ {
		pre := prefixes[rng.Intn(len(prefixes))]
		b := make([]byte, len(pre)+rng.Intn(48))
		copy(b, pre)
		rng.Read(b[len(pre):])
		var m Message
		_ = Decode(b, &m)
		var v any
		_ = Decode(b, &v)
		var mm map[string]any
		_ = Decode(b, &mm)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range []Message{
		{},
		{Seq: 1, Method: 2, Timeout: 3, Body: []byte("body")},
		{Seq: 9, Code: CodeInternal, Error: "boom"},
	} {
		b, err := Encode(&m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xc1})
	f.Add([]byte{0xc0})
	f.Add([]byte{0x81, 0xa1, 'b', 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		if err := Decode(b, &m); err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same Message.
		b2, err := Encode(&m)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		var m2 Message
		if err := Decode(b2, &m2); err != nil {
			t.Fatalf("decode re-encoded %x: %v", b2, err)
		}
		if len(m.Body) == 0 {
			m.Body = nil // omitempty drops empty bodies
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %+v != %+v", m2, m)
		}
	})
}
