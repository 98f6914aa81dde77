package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// The RPC protocol runs on connections that start with ProtoRPC. Both ways a
// connection carries frames: a 4-byte big-endian length, then a msgpack
// Message. Requests and responses are matched by Seq, so one connection
// carries many calls at once (pipelining); responses may come in any order.

// Message is one RPC frame.
type Message struct {
	Seq     uint64 `codec:"s"`
	Method  uint8  `codec:"m,omitempty"`
	Timeout int64  `codec:"t,omitempty"` // request: how long the caller waits, in ns
	Code    uint8  `codec:"c,omitempty"` // response: 0, or the error's code
	Error   string `codec:"e,omitempty"` // response: error text
	Body    []byte `codec:"b,omitempty"`
	// Cluster is the caller's cluster ID on requests (empty while it has
	// none); a server of another cluster refuses the request.
	Cluster string `codec:"k,omitempty"`
}

// Defaults for the RPC protocol.
const (
	// DefaultMaxFrame caps the size of one frame, both ways.
	DefaultMaxFrame = 16 << 20
	// DefaultMaxInFlight caps the calls one inbound connection may have in
	// flight; reading pauses beyond it.
	DefaultMaxInFlight = 512
	// frameReadTimeout bounds reading the rest of a frame once its length
	// arrived, and writing one frame.
	frameIOTimeout = 10 * time.Second
)

// Errors of the RPC client. A call that fails with ErrNotSent never reached
// the peer and may be retried freely; after ErrConnLost the outcome is
// unknown.
var (
	ErrNotSent       = errors.New("transport: request not sent")
	ErrConnLost      = errors.New("transport: connection lost before the reply")
	ErrClosed        = errors.New("transport: closed")
	ErrFrameTooLarge = errors.New("transport: frame too large")
)

// Error is an error returned by the remote handler. Code is the handler's
// classification; the RPC layer itself uses CodeInternal.
type Error struct {
	Code uint8
	Msg  string
}

// CodeInternal is the code of a handler error that carries no *Error.
const CodeInternal uint8 = 255

// CodeWrongCluster is the reply code for a request from a member of another
// cluster.
const CodeWrongCluster uint8 = 254

func (e *Error) Error() string { return e.Msg }

var mh = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.RawToString = true
	h.WriteExt = true
	return h
}()

// Encode encodes v with the msgpack handle every cohort/kv message uses.
func Encode(v any) ([]byte, error) {
	var b []byte
	err := codec.NewEncoderBytes(&b, mh).Encode(v)
	return b, err
}

// Decode decodes msgpack bytes into v. It never panics on malformed input.
func Decode(b []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("transport: malformed message: %v", r)
		}
	}()
	return codec.NewDecoderBytes(b, mh).Decode(v)
}

func writeFrame(w *bufio.Writer, m *Message, max int) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	if len(b) > max {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(b), max)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Flush()
}

// readFrame reads one frame. Waiting for a frame to start has no deadline
// (idle pooled connections are fine); once its length arrived, the rest must
// follow within frameIOTimeout.
func readFrame(c net.Conn, r *bufio.Reader, max int, m *Message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(max) {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	c.SetReadDeadline(time.Now().Add(frameIOTimeout))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	*m = Message{}
	if err := Decode(b, m); err != nil {
		// Not %w: a truncated body must not look like a clean hang-up (EOF).
		return fmt.Errorf("transport: malformed frame: %v", err)
	}
	return nil
}

// Handler serves one call. ctx ends when the caller's timeout passes or the
// server closes. A returned *Error keeps its Code across the wire.
type Handler func(ctx context.Context, method uint8, body []byte) ([]byte, error)

// ServerConfig configures a Server.
type ServerConfig struct {
	Handler Handler
	// Cluster, when set, returns this member's cluster ID: requests that
	// carry another one are refused with CodeWrongCluster before the
	// handler sees them.
	Cluster     func() string
	Logger      *slog.Logger
	MaxFrame    int // 0: DefaultMaxFrame
	MaxInFlight int // 0: DefaultMaxInFlight
}

// Server serves RPC connections handed to it by the Mux. Safe for concurrent
// use.
type Server struct {
	cfg    ServerConfig
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	lastRead atomic.Int64 // UnixNano of the last request read
	inFlight atomic.Int64
}

// NewServer returns a Server; hand it connections with ServeConn.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = DefaultMaxFrame
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
}

// ServeConn takes ownership of c and serves it in the background until the
// peer hangs up, sends something malformed, or the Server closes.
func (s *Server) ServeConn(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(c)
}

func (s *Server) serve(c net.Conn) {
	defer s.wg.Done()
	var (
		calls sync.WaitGroup
		wmu   sync.Mutex
		bw    = bufio.NewWriter(c)
		br    = bufio.NewReader(c)
		sem   = make(chan struct{}, s.cfg.MaxInFlight)
	)
	defer func() {
		c.Close()
		calls.Wait()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	for {
		var req Message
		err := readFrame(c, br, s.cfg.MaxFrame, &req)
		s.lastRead.Store(time.Now().UnixNano())
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.cfg.Logger.Warn("transport: dropping RPC connection", "remote", c.RemoteAddr(), "error", err)
			}
			return
		}
		select {
		case sem <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		calls.Add(1)
		s.inFlight.Add(1)
		go func() {
			defer func() { <-sem; s.inFlight.Add(-1); calls.Done() }()
			resp := s.call(&req)
			wmu.Lock()
			defer wmu.Unlock()
			c.SetWriteDeadline(time.Now().Add(frameIOTimeout))
			err := writeFrame(bw, resp, s.cfg.MaxFrame)
			if errors.Is(err, ErrFrameTooLarge) {
				// Nothing was written: answer with the error instead.
				err = writeFrame(bw, &Message{Seq: resp.Seq, Code: CodeInternal, Error: err.Error()}, s.cfg.MaxFrame)
			}
			if err != nil {
				s.cfg.Logger.Warn("transport: RPC reply failed", "remote", c.RemoteAddr(), "error", err)
				c.Close()
			}
		}()
	}
}

func (s *Server) call(req *Message) (resp *Message) {
	resp = &Message{Seq: req.Seq}
	if s.cfg.Cluster != nil && req.Cluster != "" {
		if local := s.cfg.Cluster(); local != "" && local != req.Cluster {
			resp.Code, resp.Error = CodeWrongCluster, fmt.Sprintf("request of cluster %q refused by cluster %q", req.Cluster, local)
			return resp
		}
	}
	defer func() {
		if r := recover(); r != nil {
			s.cfg.Logger.Error("transport: RPC handler panicked", "method", req.Method, "panic", r)
			resp.Code, resp.Error, resp.Body = CodeInternal, fmt.Sprintf("internal error: %v", r), nil
		}
	}()
	ctx := s.ctx
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.Timeout))
		defer cancel()
	}
	body, err := s.cfg.Handler(ctx, req.Method, req.Body)
	if err != nil {
		var re *Error
		if errors.As(err, &re) && re.Code != 0 {
			resp.Code, resp.Error = re.Code, re.Msg
		} else {
			resp.Code, resp.Error = CodeInternal, err.Error()
		}
		return resp
	}
	resp.Body = body
	return resp
}

// Drain waits, for at most max, until no call is in flight and none has
// arrived for quiet: the owner answers calls with a retryable error meanwhile,
// so that peers move elsewhere before the connections close.
func (s *Server) Drain(quiet, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		idle := time.Since(time.Unix(0, s.lastRead.Load()))
		if s.inFlight.Load() == 0 && idle >= quiet {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close closes every connection, cancels running handlers and waits for
// them. Idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.cancel()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
