// Package transport is the one TCP port of a cohort/kv instance. The first
// byte of every inbound connection names its protocol: ProtoRaft connections
// go to hashicorp/raft's NetworkTransport through the StreamLayer, ProtoRPC
// connections to the member-to-member RPC server (forwarded writes and read
// index requests). Anything else is dropped with a log line.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Protocol bytes: the first byte a dialer writes on a new connection.
const (
	ProtoRaft byte = 'R'
	ProtoRPC  byte = 'C'
)

// DefaultHandshakeTimeout bounds how long an inbound connection may take to
// send its protocol byte.
const DefaultHandshakeTimeout = 5 * time.Second

// Dialer opens outbound connections. It is the hook for tests that inject
// faults into the real TCP traffic; nil means a net.Dialer.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// MuxConfig configures a Mux.
type MuxConfig struct {
	// Listener is the bound TCP listener the Mux takes over and closes.
	Listener net.Listener
	// Advertise is the address peers dial; nil means Listener.Addr().
	Advertise net.Addr
	// Dial opens outbound connections; nil means a net.Dialer.
	Dial Dialer
	// Logger receives one line per dropped connection; nil discards.
	Logger *slog.Logger
	// HandshakeTimeout: 0 means DefaultHandshakeTimeout. It bounds the TLS
	// handshake and the protocol byte together.
	HandshakeTimeout time.Duration
	// ServerTLS, when set, makes every inbound connection a TLS server
	// connection: the handshake (and the verification of the peer's
	// certificate the config asks for) completes before the protocol byte
	// is read.
	ServerTLS *tls.Config
	// ClientTLS, when set, makes every outbound connection a TLS client
	// connection, handshaken before the protocol byte is written.
	ClientTLS *tls.Config
}

// Mux owns the listener and hands each inbound connection to its protocol.
// Safe for concurrent use.
type Mux struct {
	cfg  MuxConfig
	raft *StreamLayer

	mu       sync.Mutex
	handlers map[byte]func(net.Conn)
	conns    map[net.Conn]struct{} // inbound connections not yet handed over
	closed   bool
	done     chan struct{}
	wg       sync.WaitGroup
}

// NewMux wraps cfg.Listener. Call Serve to start accepting.
func NewMux(cfg MuxConfig) *Mux {
	if cfg.Advertise == nil {
		cfg.Advertise = cfg.Listener.Addr()
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	m := &Mux{
		cfg:      cfg,
		handlers: map[byte]func(net.Conn){},
		conns:    map[net.Conn]struct{}{},
		done:     make(chan struct{}),
	}
	m.raft = newStreamLayer(m)
	m.handlers[ProtoRaft] = m.raft.handoff
	return m
}

// Addr returns the advertised address.
func (m *Mux) Addr() net.Addr { return m.cfg.Advertise }

// Raft returns the StreamLayer for raft.NewNetworkTransportWithConfig.
func (m *Mux) Raft() *StreamLayer { return m.raft }

// Handle routes connections that start with proto to h, which owns the
// connection from then on. Register handlers before Serve.
func (m *Mux) Handle(proto byte, h func(net.Conn)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.handlers[proto] = h
}

// Dial opens a connection to addr for proto: it dials and writes the protocol
// byte.
func (m *Mux) Dial(ctx context.Context, addr string, proto byte) (net.Conn, error) {
	conn, err := m.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if m.cfg.ClientTLS != nil {
		tc := tls.Client(conn, m.cfg.ClientTLS)
		hctx, cancel := context.WithTimeout(ctx, m.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("transport: TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
	}
	if _, err := conn.Write([]byte{proto}); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// Serve accepts connections until Close. It returns nil after Close.
func (m *Mux) Serve() error {
	var delay time.Duration
	for {
		conn, err := m.cfg.Listener.Accept()
		if err != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || !errors.Is(err, net.ErrClosed) {
				// Transient (e.g. too many open files): back off and go on.
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else if delay *= 2; delay > time.Second {
					delay = time.Second
				}
				m.cfg.Logger.Warn("transport: accept failed", "error", err, "retry_in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-m.done:
					return nil
				}
			}
			return fmt.Errorf("transport: accept: %w", err)
		}
		delay = 0
		if !m.track(conn) {
			conn.Close()
			return nil
		}
		go m.route(conn)
	}
}

func (m *Mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.conns[c] = struct{}{}
	m.wg.Add(1)
	return true
}

func (m *Mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.conns, c)
	m.mu.Unlock()
}

// route reads the protocol byte and hands the connection over.
func (m *Mux) route(conn net.Conn) {
	defer m.wg.Done()
	raw := conn
	conn.SetDeadline(time.Now().Add(m.cfg.HandshakeTimeout))
	if m.cfg.ServerTLS != nil {
		tc := tls.Server(conn, m.cfg.ServerTLS)
		if err := tc.Handshake(); err != nil {
			m.untrack(raw)
			m.cfg.Logger.Warn("transport: refused connection: TLS handshake failed", "remote", conn.RemoteAddr(), "error", err)
			conn.Close()
			return
		}
		conn = tc
	}
	var b [1]byte
	_, err := conn.Read(b[:])
	m.untrack(raw)
	if err != nil {
		m.cfg.Logger.Debug("transport: dropped connection before its protocol byte", "remote", conn.RemoteAddr(), "error", err)
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	m.mu.Lock()
	h, ok := m.handlers[b[0]]
	closed := m.closed
	m.mu.Unlock()
	if !ok || closed {
		if !closed {
			m.cfg.Logger.Warn("transport: dropped connection with unknown protocol", "remote", conn.RemoteAddr(), "byte", fmt.Sprintf("%#02x", b[0]))
		}
		conn.Close()
		return
	}
	h(conn)
}

// Close stops accepting, closes connections not yet handed over and the Raft
// stream layer, and waits for the accept path to finish. Handlers own (and
// close) the connections they received. Idempotent.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	err := m.cfg.Listener.Close()
	m.raft.close() // before waiting: a routing goroutine may wait in handoff
	m.wg.Wait()
	return err
}
