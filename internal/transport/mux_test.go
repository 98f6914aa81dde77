package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout bounds every wait in these tests; nothing should take close
// to it on a healthy machine.
const waitTimeout = 5 * time.Second

// logBuf collects log lines from the code under test.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitLog waits until the log contains substr.
func waitLog(t testing.TB, l *logBuf, substr string) {
	t.Helper()
	waitFor(t, "log line "+strconv.Quote(substr), func() bool { return strings.Contains(l.String(), substr) })
}

// within runs fn and fails the test when it does not return in time. It
// returns whether fn returned.
func within(t testing.TB, d time.Duration, what string, fn func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s did not return within %v", what, d)
		return false
	}
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// served is a Mux whose Serve runs in the background.
type served struct {
	*Mux
	serveErr chan error
}

// startMux starts a Mux (on a fresh listener unless cfg has one) after
// running setup (handler registration) on it. Cleanup closes it and checks
// that Serve returned nil.
func startMux(t testing.TB, cfg MuxConfig, setup ...func(*Mux)) *served {
	t.Helper()
	if cfg.Listener == nil {
		cfg.Listener = listen(t)
	}
	s := &served{Mux: NewMux(cfg), serveErr: make(chan error, 1)}
	for _, f := range setup {
		f(s.Mux)
	}
	go func() { s.serveErr <- s.Serve() }()
	t.Cleanup(func() {
		if !within(t, waitTimeout, "Mux.Close", func() { s.Close() }) {
			s.Raft().Close() // unblock a stuck handoff so the test run goes on
			return
		}
		select {
		case err := <-s.serveErr:
			if err != nil {
				t.Errorf("Serve returned %v after Close, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s
}

func dialRaw(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectClosedByPeer reads from c until the peer closes it (EOF or reset).
// Data the peer sent first is ignored.
func expectClosedByPeer(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	buf := make([]byte, 4096)
	for i := 0; i < 1<<16; i++ {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", waitTimeout)
		}
		return // io.EOF or connection reset: closed by the server
	}
	t.Fatal("peer kept sending")
}

func readExactly(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// acceptWithin calls sl.Accept and fails the test when it blocks too long.
func acceptWithin(t testing.TB, sl *StreamLayer) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := sl.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(waitTimeout):
		sl.Close() // unblocks the Accept goroutine
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		t.Fatal("Accept did not return a connection")
		return nil
	}
}

// connHandler hands routed connections to the test.
func connHandler(t testing.TB) (func(net.Conn), <-chan net.Conn) {
	ch := make(chan net.Conn, 16)
	t.Cleanup(func() {
		for {
			select {
			case c := <-ch:
				c.Close()
			default:
				return
			}
		}
	})
	return func(c net.Conn) { ch <- c }, ch
}

func recvConn(t testing.TB, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(waitTimeout):
		t.Fatal("handler got no connection")
		return nil
	}
}

func (m *Mux) pendingConns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

func TestMuxRoutesRPCToHandler(t *testing.T) {
	h, got := connHandler(t)
	m := NewMux(MuxConfig{Listener: listen(t)})
	m.Handle(ProtoRPC, h)
	s := &served{Mux: m, serveErr: make(chan error, 1)}
	go func() { s.serveErr <- m.Serve() }()
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-s.serveErr; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRPC, 'h', 'i'}); err != nil {
		t.Fatal(err)
	}
	sc := recvConn(t, got)
	if b := readExactly(t, sc, 2); string(b) != "hi" {
		t.Fatalf("handler read %q, want the bytes after the protocol byte", b)
	}
	// The handler owns the connection in both directions.
	if _, err := sc.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, c, 2); string(b) != "ok" {
		t.Fatalf("client read %q", b)
	}
}

func TestMuxRaftConnectionComesOutOfAccept(t *testing.T) {
	h, rpcConns := connHandler(t)
	m := startMux(t, MuxConfig{}, func(m *Mux) { m.Handle(ProtoRPC, h) })

	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRaft, 'p', 'i', 'n', 'g'}); err != nil {
		t.Fatal(err)
	}
	sc := acceptWithin(t, m.Raft())
	if b := readExactly(t, sc, 4); string(b) != "ping" {
		t.Fatalf("raft side read %q", b)
	}
	if _, err := sc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, c, 4); string(b) != "pong" {
		t.Fatalf("client read %q", b)
	}
	select {
	case <-rpcConns:
		t.Fatal("raft connection reached the RPC handler")
	default:
	}
}

func TestStreamLayerDialWritesProtoRaft(t *testing.T) {
	// A plain listener sees exactly what StreamLayer.Dial puts on the wire.
	ln := listen(t)
	defer ln.Close()
	var dials atomic.Int32
	var d net.Dialer
	m := NewMux(MuxConfig{Listener: listen(t), Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return d.DialContext(ctx, network, addr)
	}})
	defer m.Close()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := m.Raft().Dial(raft.ServerAddress(ln.Addr().String()), waitTimeout)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	sc, ok := <-accepted
	if !ok {
		t.Fatal("listener accepted nothing")
	}
	defer sc.Close()
	if b := readExactly(t, sc, 1); b[0] != ProtoRaft {
		t.Fatalf("first byte %#x, want ProtoRaft %#x", b[0], ProtoRaft)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("MuxConfig.Dial called %d times, want 1", n)
	}
	// Nothing else was written.
	sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := sc.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("extra bytes after the protocol byte: n=%d err=%v", n, err)
	}

	// Dial between two Muxes ends up in the other side's Accept.
	m2 := startMux(t, MuxConfig{})
	c2, err := m.Raft().Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c2.Close()
	sc2 := acceptWithin(t, m2.Raft())
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, sc2, 1); string(b) != "x" {
		t.Fatalf("read %q", b)
	}

	// Dial to an address where nothing listens fails.
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	if c, err := m.Raft().Dial(raft.ServerAddress(deadAddr), waitTimeout); err == nil {
		c.Close()
		t.Fatal("Dial to a closed port succeeded")
	}
}

func TestMuxDropsUnknownProtocol(t *testing.T) {
	var logs logBuf
	h, got := connHandler(t)
	m := startMux(t, MuxConfig{Logger: logs.logger()}, func(m *Mux) { m.Handle(ProtoRPC, h) })

	for _, b := range []byte{'X', 0, 0xFF} {
		c := dialRaw(t, m.Addr().String())
		if _, err := c.Write([]byte{b, 'j', 'u', 'n', 'k'}); err != nil {
			t.Fatal(err)
		}
		expectClosedByPeer(t, c)
	}
	waitLog(t, &logs, "unknown protocol")

	// The mux keeps serving.
	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRPC, '!'}); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, recvConn(t, got), 1); string(b) != "!" {
		t.Fatalf("read %q", b)
	}
}

func TestMuxHandleCustomProtocol(t *testing.T) {
	h, got := connHandler(t)
	m := startMux(t, MuxConfig{}, func(m *Mux) { m.Handle('Z', h) })
	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{'Z', 'z'}); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, recvConn(t, got), 1); string(b) != "z" {
		t.Fatalf("read %q", b)
	}
}

func TestMuxHandshakeTimeout(t *testing.T) {
	var logs logBuf
	const hs = 100 * time.Millisecond
	h, got := connHandler(t)
	m := startMux(t, MuxConfig{HandshakeTimeout: hs, Logger: logs.logger()}, func(m *Mux) { m.Handle(ProtoRPC, h) })

	c := dialRaw(t, m.Addr().String())
	start := time.Now()
	expectClosedByPeer(t, c)
	if el := time.Since(start); el < hs/2 {
		t.Fatalf("silent connection closed after %v, before the handshake timeout %v", el, hs)
	}
	waitLog(t, &logs, "before its protocol byte")
	waitFor(t, "untracked connection", func() bool { return m.pendingConns() == 0 })

	// A connection that does send its byte in time is unaffected by the
	// deadline once routed.
	c2 := dialRaw(t, m.Addr().String())
	if _, err := c2.Write([]byte{ProtoRPC}); err != nil {
		t.Fatal(err)
	}
	sc := recvConn(t, got)
	// Stay silent past the handshake timeout (nothing to poll for here): the
	// read deadline must have been cleared when the connection was routed.
	time.Sleep(3 * hs)
	if _, err := c2.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, sc, 4); string(b) != "late" {
		t.Fatalf("read %q", b)
	}
}

func TestMuxDefaults(t *testing.T) {
	ln := listen(t)
	m := NewMux(MuxConfig{Listener: ln})
	defer m.Close()
	if m.cfg.HandshakeTimeout != DefaultHandshakeTimeout {
		t.Errorf("HandshakeTimeout %v, want %v", m.cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	}
	if m.Addr().String() != ln.Addr().String() {
		t.Errorf("Addr %v, want the listener's %v", m.Addr(), ln.Addr())
	}
	if m.Raft().Addr().String() != ln.Addr().String() {
		t.Errorf("Raft().Addr %v, want %v", m.Raft().Addr(), ln.Addr())
	}
}

func TestMuxAddrAdvertise(t *testing.T) {
	adv := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 7000}
	m := NewMux(MuxConfig{Listener: listen(t), Advertise: adv})
	defer m.Close()
	if m.Addr() != adv {
		t.Errorf("Addr() = %v, want the advertised %v", m.Addr(), adv)
	}
	if m.Raft().Addr() != adv {
		t.Errorf("Raft().Addr() = %v, want the advertised %v", m.Raft().Addr(), adv)
	}
}

func TestMuxClose(t *testing.T) {
	var logs logBuf
	m := NewMux(MuxConfig{Listener: listen(t), Logger: logs.logger()}) // default 5s handshake
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()

	// Two connections that never send their protocol byte.
	silent := []net.Conn{dialRaw(t, m.Addr().String()), dialRaw(t, m.Addr().String())}
	waitFor(t, "two connections awaiting their protocol byte", func() bool { return m.pendingConns() == 2 })

	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, c := range silent {
		expectClosedByPeer(t, c)
	}
	if el := time.Since(start); el >= DefaultHandshakeTimeout {
		t.Fatalf("unrouted connections closed by the handshake timeout, not by Close (%v)", el)
	}
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve returned %v after Close, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return after Close")
	}

	// Idempotent.
	for i := 0; i < 3; i++ {
		if err := m.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	// Serve after Close returns nil at once.
	if !within(t, waitTimeout, "Serve after Close", func() {
		if err := m.Serve(); err != nil {
			t.Errorf("Serve after Close: %v", err)
		}
	}) {
		t.FailNow()
	}
	// The raft stream layer is closed.
	var err error
	within(t, waitTimeout, "StreamLayer.Accept after Close", func() { _, err = m.Raft().Accept() })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := m.Raft().Close(); err != nil {
		t.Fatalf("StreamLayer.Close after Mux.Close: %v", err)
	}
}

func TestMuxCloseBeforeServe(t *testing.T) {
	m := NewMux(MuxConfig{Listener: listen(t)})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	within(t, waitTimeout, "Serve", func() {
		if err := m.Serve(); err != nil {
			t.Errorf("Serve after Close: %v", err)
		}
	})
}

func TestStreamLayerCloseLeavesMuxServing(t *testing.T) {
	h, got := connHandler(t)
	m := startMux(t, MuxConfig{}, func(m *Mux) { m.Handle(ProtoRPC, h) })
	if err := m.Raft().Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Raft().Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := m.Raft().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	// Raft connections are now closed instead of queued...
	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	expectClosedByPeer(t, c)
	// ...and the Mux itself still routes other protocols.
	c2 := dialRaw(t, m.Addr().String())
	if _, err := c2.Write([]byte{ProtoRPC}); err != nil {
		t.Fatal(err)
	}
	recvConn(t, got)
}

// goroutineBlockedIn reports whether some goroutine's stack contains fn.
func goroutineBlockedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return bytes.Contains(buf[:n], []byte(fn))
}

// A raft connection that nobody Accepts (no NetworkTransport yet, or one that
// is slow) must not make Mux.Close hang: Close documents that it closes the
// Raft stream layer, and it must do so before waiting for routing goroutines.
func TestMuxCloseWithUnacceptedRaftConn(t *testing.T) {
	m := NewMux(MuxConfig{Listener: listen(t)})
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()

	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "raft connection waiting in StreamLayer.handoff", func() bool {
		return goroutineBlockedIn("transport.(*StreamLayer).handoff")
	})
	closed := within(t, 2*time.Second, "Mux.Close with a raft connection nobody accepted", func() { m.Close() })
	if !closed {
		t.Error("BUG: Mux.Close waits (m.wg.Wait) for route goroutines before closing the stream layer " +
			"(m.raft.close), but a route goroutine blocks in StreamLayer.handoff until the layer is closed")
		m.Raft().Close() // unblock so the test run can go on
		waitFor(t, "Close to finish", func() bool { return !goroutineBlockedIn("transport.(*Mux).Close") })
	}
	if err := <-serveErr; err != nil {
		t.Errorf("Serve: %v", err)
	}
	expectClosedByPeer(t, c)
}

// flakyListener fails Accept a few times with a non-closed error.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

type tempErr struct{}

func (tempErr) Error() string   { return "accept: too many open files (fake)" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

func TestMuxServeRetriesTransientAcceptErrors(t *testing.T) {
	var logs logBuf
	fl := &flakyListener{Listener: listen(t)}
	fl.fails.Store(3)
	h, got := connHandler(t)
	m := startMux(t, MuxConfig{Listener: fl, Logger: logs.logger()}, func(m *Mux) { m.Handle(ProtoRPC, h) })

	c := dialRaw(t, m.Addr().String())
	if _, err := c.Write([]byte{ProtoRPC, 'k'}); err != nil {
		t.Fatal(err)
	}
	if b := readExactly(t, recvConn(t, got), 1); string(b) != "k" {
		t.Fatalf("read %q", b)
	}
	if n := strings.Count(logs.String(), "accept failed"); n != 3 {
		t.Fatalf("logged %d accept failures, want 3:\n%s", n, logs.String())
	}
}

func TestMuxCloseDuringAcceptBackoff(t *testing.T) {
	fl := &flakyListener{Listener: listen(t)}
	fl.fails.Store(1 << 30)
	var logs logBuf
	m := NewMux(MuxConfig{Listener: fl, Logger: logs.logger()})
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()
	waitLog(t, &logs, "accept failed")
	m.Close()
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return")
	}
}

func TestMuxServeListenerClosedUnderneath(t *testing.T) {
	ln := listen(t)
	m := NewMux(MuxConfig{Listener: ln})
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve() }()
	ln.Close()
	select {
	case err := <-serveErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve: %v, want an error wrapping net.ErrClosed", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return")
	}
	m.Close()
}

func TestMuxDialHonoursContext(t *testing.T) {
	m := NewMux(MuxConfig{Listener: listen(t), Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := m.Dial(ctx, "127.0.0.1:1", ProtoRPC); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v", err)
	}
	if _, err := m.Raft().Dial("127.0.0.1:1", 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("StreamLayer.Dial: %v", err)
	}
}

func TestMuxDialWriteFails(t *testing.T) {
	ln := listen(t)
	defer ln.Close()
	var d net.Dialer
	m := NewMux(MuxConfig{Listener: listen(t), Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			c.Close() // writing the protocol byte fails
		}
		return c, err
	}})
	defer m.Close()
	if c, err := m.Dial(context.Background(), ln.Addr().String(), ProtoRPC); err == nil {
		c.Close()
		t.Fatal("Dial succeeded though writing the protocol byte failed")
	}
}

func (s *StreamLayer) tracked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func TestStreamLayerCloseClosesItsConns(t *testing.T) {
	m1 := startMux(t, MuxConfig{})
	m2 := startMux(t, MuxConfig{})
	sl := m1.Raft()

	// One inbound connection...
	raw := dialRaw(t, m1.Addr().String())
	if _, err := raw.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	in := acceptWithin(t, sl)
	// ...one outbound...
	out, err := sl.Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	peer := acceptWithin(t, m2.Raft())
	// ...and one that is closed by its user, which the layer forgets.
	gone, err := sl.Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	goneRemote := acceptWithin(t, m2.Raft())
	if n := sl.tracked(); n != 3 {
		t.Fatalf("layer tracks %d connections, want 3", n)
	}
	gone.Close()
	gone.Close() // idempotent
	expectClosedByPeer(t, goneRemote)
	if n := sl.tracked(); n != 2 {
		t.Fatalf("layer tracks %d connections after one closed, want 2", n)
	}

	if err := sl.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosedByPeer(t, raw)  // the inbound one
	expectClosedByPeer(t, peer) // the outbound one, seen from the other Mux
	if _, err := in.Write([]byte("x")); err == nil {
		t.Fatal("write on an inbound connection after StreamLayer.Close succeeded")
	}
	if _, err := out.Write([]byte("x")); err == nil {
		t.Fatal("write on an outbound connection after StreamLayer.Close succeeded")
	}
	if n := sl.tracked(); n != 0 {
		t.Fatalf("layer tracks %d connections after Close", n)
	}

	// Dial after Close fails, and the connection it opened is closed.
	if c, err := sl.Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout); !errors.Is(err, net.ErrClosed) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial after Close: %v, want net.ErrClosed", err)
	}
	expectClosedByPeer(t, acceptWithin(t, m2.Raft()))
}

// --- hashicorp/raft NetworkTransport over two Muxes ---

func newNetTransport(t *testing.T, m *served) *raft.NetworkTransport {
	t.Helper()
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  m.Raft(),
		MaxPool: 2,
		Timeout: waitTimeout,
		Logger:  hclog.NewNullLogger(),
	})
	t.Cleanup(func() {
		tr.CloseStreams() // closes pooled outbound conns, so the peer's handlers end
		tr.Close()
	})
	return tr
}

// serveRaftRPCs answers RPCs from tr's consumer until stop closes.
func serveRaftRPCs(t *testing.T, tr *raft.NetworkTransport) (got <-chan any) {
	t.Helper()
	ch := make(chan any, 16)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case rpc := <-tr.Consumer():
				ch <- rpc.Command
				switch cmd := rpc.Command.(type) {
				case *raft.AppendEntriesRequest:
					rpc.Respond(&raft.AppendEntriesResponse{
						Term:    cmd.Term,
						LastLog: cmd.PrevLogEntry + uint64(len(cmd.Entries)),
						Success: true,
					}, nil)
				case *raft.RequestVoteRequest:
					rpc.Respond(&raft.RequestVoteResponse{Term: cmd.Term, Granted: true}, nil)
				default:
					rpc.Respond(nil, errors.New("unexpected RPC"))
				}
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return ch
}

func TestRaftNetworkTransportOverMux(t *testing.T) {
	m1 := startMux(t, MuxConfig{})
	m2 := startMux(t, MuxConfig{})
	// Registered after the Muxes so they close first (cleanup is LIFO).
	t1 := newNetTransport(t, m1)
	t2 := newNetTransport(t, m2)
	got2 := serveRaftRPCs(t, t2)
	got1 := serveRaftRPCs(t, t1)

	if t1.LocalAddr() != raft.ServerAddress(m1.Addr().String()) {
		t.Fatalf("LocalAddr %q, want %q", t1.LocalAddr(), m1.Addr())
	}

	addr2 := raft.ServerAddress(m2.Addr().String())
	ae := &raft.AppendEntriesRequest{
		RPCHeader:    raft.RPCHeader{ID: []byte("n1"), Addr: []byte(t1.LocalAddr())},
		Term:         7,
		PrevLogEntry: 10,
		PrevLogTerm:  6,
		Entries: []*raft.Log{
			{Index: 11, Term: 7, Type: raft.LogCommand, Data: []byte("hello")},
			{Index: 12, Term: 7, Type: raft.LogCommand, Data: []byte("world")},
		},
		LeaderCommitIndex: 11,
	}
	var aeResp raft.AppendEntriesResponse
	if err := t1.AppendEntries("n2", addr2, ae, &aeResp); err != nil {
		t.Fatalf("AppendEntries: %v", err)
	}
	if !aeResp.Success || aeResp.Term != 7 || aeResp.LastLog != 12 {
		t.Fatalf("AppendEntries response %+v", aeResp)
	}
	select {
	case cmd := <-got2:
		req, ok := cmd.(*raft.AppendEntriesRequest)
		if !ok || len(req.Entries) != 2 || string(req.Entries[1].Data) != "world" || req.Term != 7 {
			t.Fatalf("receiver got %#v", cmd)
		}
	case <-time.After(waitTimeout):
		t.Fatal("receiver consumed nothing")
	}

	// And the other way, a RequestVote.
	rv := &raft.RequestVoteRequest{
		RPCHeader:    raft.RPCHeader{ID: []byte("n2"), Addr: []byte(t2.LocalAddr())},
		Term:         8,
		LastLogIndex: 12,
		LastLogTerm:  7,
	}
	var rvResp raft.RequestVoteResponse
	if err := t2.RequestVote("n1", raft.ServerAddress(m1.Addr().String()), rv, &rvResp); err != nil {
		t.Fatalf("RequestVote: %v", err)
	}
	if !rvResp.Granted || rvResp.Term != 8 {
		t.Fatalf("RequestVote response %+v", rvResp)
	}
	select {
	case cmd := <-got1:
		if req, ok := cmd.(*raft.RequestVoteRequest); !ok || req.Term != 8 {
			t.Fatalf("receiver got %#v", cmd)
		}
	case <-time.After(waitTimeout):
		t.Fatal("receiver consumed nothing")
	}

	// A second AppendEntries reuses the pooled connection.
	aeResp = raft.AppendEntriesResponse{}
	ae.Entries = nil
	ae.PrevLogEntry = 12
	if err := t1.AppendEntries("n2", addr2, ae, &aeResp); err != nil || !aeResp.Success {
		t.Fatalf("second AppendEntries: %+v, %v", aeResp, err)
	}
	<-got2
}

func TestStreamLayerFenceCutsRaftTraffic(t *testing.T) {
	m1 := startMux(t, MuxConfig{})
	m2 := startMux(t, MuxConfig{})
	sl := m1.Raft()
	raw := dialRaw(t, m1.Addr().String())
	if _, err := raw.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	in := acceptWithin(t, sl)
	defer in.Close()
	out, err := sl.Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	peer := acceptWithin(t, m2.Raft())

	sl.Fence()
	expectClosedByPeer(t, raw)
	expectClosedByPeer(t, peer)
	if _, err := sl.Dial(raft.ServerAddress(m2.Addr().String()), waitTimeout); err == nil {
		t.Fatal("Dial after Fence succeeded")
	}
	// A new inbound connection is dropped, not handed to raft.
	raw2 := dialRaw(t, m1.Addr().String())
	if _, err := raw2.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	expectClosedByPeer(t, raw2)
	if n := sl.tracked(); n != 0 {
		t.Fatalf("layer tracks %d connections after Fence", n)
	}
	// The other protocols on the port are not affected, and Close still
	// works.
	if err := sl.Close(); err != nil {
		t.Fatal(err)
	}
}
