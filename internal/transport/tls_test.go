package transport_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/cohortkv/kv/internal/transport"
	"github.com/cohortkv/kv/kvtest"
)

// A mux with server and client TLS: an RPC between two of them works; a
// client of another CA, or without TLS, gets nothing, and the server keeps
// serving.
func TestMuxTLS(t *testing.T) {
	ca, err := kvtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	conf := func(name string) (server, client *tls.Config) {
		c, err := ca.TLSConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		server = c.Clone()
		server.ClientAuth = tls.RequireAndVerifyClientCert
		server.MinVersion = tls.VersionTLS13
		client = c.Clone()
		client.ServerName = "localhost"
		return server, client
	}
	start := func(name string) (*transport.Mux, *transport.Pool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		st, ct := conf(name)
		m := transport.NewMux(transport.MuxConfig{Listener: ln, ServerTLS: st, ClientTLS: ct, HandshakeTimeout: time.Second})
		srv := transport.NewServer(transport.ServerConfig{Handler: func(ctx context.Context, method uint8, body []byte) ([]byte, error) {
			return append([]byte("echo:"), body...), nil
		}})
		m.Handle(transport.ProtoRPC, srv.ServeConn)
		done := make(chan struct{})
		go func() { m.Serve(); close(done) }()
		p := transport.NewPool(m, 0, nil)
		t.Cleanup(func() { p.Close(); srv.Close(); m.Close(); <-done })
		return m, p
	}
	a, _ := start("a")
	_, pb := start("b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := pb.Call(ctx, a.Addr().String(), 1, []byte("hi"))
	if err != nil || string(got) != "echo:hi" {
		t.Fatalf("RPC over mutual TLS: %q, %v", got, err)
	}

	other, _ := kvtest.NewCA()
	foreign, _ := other.TLSConfig("x")
	foreign.InsecureSkipVerify = true
	for name, cfg := range map[string]*tls.Config{"another CA": foreign, "plaintext": nil} {
		conn, err := net.DialTimeout("tcp", a.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		var c net.Conn = conn
		if cfg != nil {
			tc := tls.Client(conn, cfg)
			tc.Handshake()
			c = tc
		}
		c.Write([]byte{transport.ProtoRPC, 0, 0, 0, 4, 1, 2, 3, 4})
		var b [1]byte
		if n, _ := c.Read(b[:]); n > 0 {
			t.Errorf("%s: the server answered", name)
		}
		conn.Close()
	}
	// A client that does not trust the server's CA fails its handshake.
	distrust, _ := other.TLSConfig("y")
	distrust.ServerName = "localhost"
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	bad := transport.NewMux(transport.MuxConfig{Listener: ln, ClientTLS: distrust, HandshakeTimeout: time.Second})
	defer bad.Close()
	if _, err := bad.Dial(ctx, a.Addr().String(), transport.ProtoRPC); err == nil {
		t.Fatal("dial with an untrusted certificate succeeded")
	}
	if got, err := pb.Call(ctx, a.Addr().String(), 1, []byte("again")); err != nil || string(got) != "echo:again" {
		t.Fatalf("server after refusals: %q, %v", got, err)
	}
}

// Requests stamped with another cluster's ID are refused before the
// handler runs.
func TestServerRefusesOtherCluster(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := transport.NewMux(transport.MuxConfig{Listener: ln})
	called := false
	srv := transport.NewServer(transport.ServerConfig{
		Cluster: func() string { return "mine" },
		Handler: func(ctx context.Context, method uint8, body []byte) ([]byte, error) { called = true; return nil, nil },
	})
	m.Handle(transport.ProtoRPC, srv.ServeConn)
	done := make(chan struct{})
	go func() { m.Serve(); close(done) }()
	defer func() { srv.Close(); m.Close(); <-done }()
	for _, cluster := range []string{"theirs", "mine"} {
		p := transport.NewPool(m, 0, nil)
		p.SetCluster(func() string { return cluster })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := p.Call(ctx, m.Addr().String(), 1, nil)
		cancel()
		p.Close()
		var te *transport.Error
		if cluster == "theirs" {
			if !errorsAs(err, &te) || te.Code != transport.CodeWrongCluster || called {
				t.Fatalf("other cluster's request: %v (handler called %v)", err, called)
			}
		} else if err != nil || !called {
			t.Fatalf("own cluster's request: %v (handler called %v)", err, called)
		}
	}
}

func errorsAs(err error, target **transport.Error) bool {
	for err != nil {
		if e, ok := err.(*transport.Error); ok {
			*target = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}
