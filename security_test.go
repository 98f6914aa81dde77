package kv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/transport"
	"github.com/cohortkv/kv/kvtest"
)

func TestSecure_MutualTLSClusterWorks(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Secure(), kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)
	l := c.Leader()
	f := (l + 1) % 3
	// A write on a follower is forwarded over the TLS transport; a read on
	// another follower asks the leader for a read index over it.
	if err := c.Node(f).Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatalf("write through a follower: %v", err)
	}
	if v, err := c.Node((l+2)%3).Get(ctx, "k"); err != nil || string(v) != "v1" {
		t.Fatalf("linearizable read on a follower: %q, %v", v, err)
	}
	c.Kill(l)
	nl := c.Leader()
	if err := c.Node(nl).Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	c.Restart(l)
	if v, err := c.Node(l).Get(ctx, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("restarted member reads %q, %v", v, err)
	}
}

// tryRPC dials addr with cfg (nil: plaintext), sends an RPC frame and
// reports whether any reply byte came back.
// rpcFrame encodes m as a transport frame: 4-byte length, msgpack.
func rpcFrame(m transport.Message) []byte {
	b, err := transport.Encode(m)
	if err != nil {
		panic(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// evilWrite is a well-formed forwarded write (method 1) of k0 = "evil", as
// a member of another cluster would send it.
func evilWrite(seq uint64) []byte {
	cmd, err := transport.Encode(map[string]any{"o": []map[string]any{{"k": 1, "y": "k0", "v": []byte("evil")}}})
	if err != nil {
		panic(err)
	}
	return append([]byte{'C'}, rpcFrame(transport.Message{Seq: seq, Method: 1, Cluster: "some-other-cluster", Body: append([]byte{1}, cmd...)})...)
}

func tryRPC(addr string, cfg *tls.Config) (replied bool, err error) {
	raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false, err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(3 * time.Second))
	var conn net.Conn = raw
	if cfg != nil {
		tc := tls.Client(raw, cfg)
		if err := tc.Handshake(); err != nil {
			return false, err
		}
		conn = tc
	}
	// Protocol byte, then a status request (method 4), as a member would
	// send it.
	if _, err := conn.Write(append([]byte{'C'}, rpcFrame(transport.Message{Seq: 1, Method: 4})...)); err != nil {
		return false, err
	}
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return false, err
	}
	return true, nil
}

func TestSecure_UntrustedPeersAreRefused(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Secure(), kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 60*time.Second)
	if err := c.Node(0).Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	addr := c.Node(0).Addr()

	other, err := kvtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.TLSConfig("intruder")
	if err != nil {
		t.Fatal(err)
	}
	expiredCert, err := c.CA().Issue("expired", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := c.CA().TLSConfig("friend")
	if err != nil {
		t.Fatal(err)
	}
	pool := c.CA().Pool()
	for name, cfg := range map[string]*tls.Config{
		"plaintext":                 nil,
		"certificate of another CA": {Certificates: foreign.Certificates, InsecureSkipVerify: true},
		"no certificate":            {RootCAs: pool, ServerName: "localhost"},
		"expired certificate":       {Certificates: []tls.Certificate{expiredCert}, RootCAs: pool, ServerName: "localhost"},
	} {
		if replied, err := tryRPC(addr, cfg); replied || err == nil {
			t.Errorf("%s: the transport answered an RPC (err %v)", name, err)
		}
	}
	// The control: a certificate of the cluster's CA gets an answer.
	ok := trusted.Clone()
	ok.ServerName = "localhost"
	if replied, err := tryRPC(addr, ok); !replied {
		t.Fatalf("trusted certificate refused: %v", err)
	}

	// A whole instance with the gossip key but a certificate of another CA
	// joins gossip, yet is never added, never receives data, and cannot
	// write.
	intruder, err := kv.Open(kv.Config{
		NodeID:         "intruder",
		InMemory:       true,
		BindAddr:       "127.0.0.1:0",
		GossipBindAddr: "127.0.0.1:0",
		Join:           []string{c.Node(0).GossipAddr()},
		TLS:            foreign,
		GossipKey:      c.GossipKey(),
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close()
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	err = intruder.Set(short, "k", []byte("evil"))
	cancel()
	if err == nil {
		t.Fatal("intruder's write accepted")
	}
	time.Sleep(2 * time.Second) // several reconcile rounds of the leader
	for _, m := range c.Node(c.Leader()).Members() {
		if m.ID == "intruder" && m.Suffrage != kv.SuffrageNone {
			t.Fatalf("intruder entered the configuration: %+v", m)
		}
	}
	if _, err := intruder.Get(ctx, "k", kv.Stale()); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("intruder holds the data: %v", err)
	}
	for i := 0; i < 3; i++ {
		if v, err := c.Node(i).Get(ctx, "k"); err != nil || string(v) != "v" {
			t.Fatalf("node%d: k = %q, %v", i, v, err)
		}
	}
}

func TestSecure_WrongGossipKeyCannotJoin(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Secure(), kvtest.Logger(testLogger(t)))
	tc, err := c.CA().TLSConfig("stranger")
	if err != nil {
		t.Fatal(err)
	}
	wrong := make([]byte, 32)
	rand.Read(wrong)
	stranger, err := kv.Open(kv.Config{
		NodeID:         "stranger",
		InMemory:       true,
		BindAddr:       "127.0.0.1:0",
		GossipBindAddr: "127.0.0.1:0",
		Join:           []string{c.Node(0).GossipAddr(), c.Node(1).GossipAddr()},
		TLS:            tc,
		GossipKey:      wrong,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	time.Sleep(3 * time.Second)
	if n := len(stranger.Members()); n != 1 {
		t.Fatalf("member with a wrong gossip key sees %d members", n)
	}
	for i := 0; i < 3; i++ {
		for _, m := range c.Node(i).Members() {
			if m.ID == "stranger" {
				t.Fatalf("node%d sees the stranger: %+v", i, m)
			}
		}
	}
}

func TestSecure_GossipKeyRotation(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Secure(), kvtest.InMemory(), kvtest.Logger(testLogger(t)))
	newKey := make([]byte, 32)
	rand.Read(newKey)
	for _, step := range []func(i int) error{
		func(i int) error { return c.Node(i).GossipKeyring().AddKey(newKey) },
		func(i int) error { return c.Node(i).GossipKeyring().UseKey(newKey) },
		func(i int) error { return c.Node(i).GossipKeyring().RemoveKey(c.GossipKey()) },
	} {
		for i := 0; i < 3; i++ {
			if err := step(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	tc, err := c.CA().TLSConfig("newcomer")
	if err != nil {
		t.Fatal(err)
	}
	join := func(key []byte) *kv.Store {
		s, err := kv.Open(kv.Config{
			NodeID: fmt.Sprintf("newcomer-%x", key[:2]), InMemory: true,
			BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0",
			Join: []string{c.Node(0).GossipAddr()}, TLS: tc, GossipKey: key, Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	oldOnly := join(c.GossipKey())
	defer oldOnly.Close()
	fresh := join(newKey)
	defer fresh.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(fresh.Members()) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("member with the rotated key sees %d members", len(fresh.Members()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(oldOnly.Members()); n != 1 {
		t.Fatalf("member with the retired key sees %d members", n)
	}
}

func TestSecure_CertificateRotationWithoutRestart(t *testing.T) {
	ca, err := kvtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[tls.Certificate]
	first, err := ca.Issue("solo", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	current.Store(&first)
	s, err := kv.Open(kv.Config{
		NodeID: "solo", InMemory: true, Logger: testLogger(t),
		TLS: &tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil },
			RootCAs:        ca.Pool(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	serial := func() string {
		client, _ := ca.TLSConfig("probe")
		client.ServerName = "localhost"
		conn, err := tls.Dial("tcp", s.Addr(), client)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	if got := serial(); got != first.Leaf.SerialNumber.String() {
		t.Fatalf("served certificate %s, want %s", got, first.Leaf.SerialNumber)
	}
	second, err := ca.Issue("solo", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	current.Store(&second)
	if got := serial(); got != second.Leaf.SerialNumber.String() {
		t.Fatalf("after rotation served %s, want %s", got, second.Leaf.SerialNumber)
	}
	if err := s.Set(ctxT(t, 10*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// A hostile client on the transport port, for a few seconds: random bytes,
// huge length prefixes, truncated frames, idle (slowloris) connections and
// well-formed RPCs from outside the cluster. Every member stays up, its
// data unchanged, and memory stays bounded.
func TestHostile_TransportPortFlood(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("secure=%v", secure), func(t *testing.T) {
			opts := []kvtest.Option{kvtest.InMemory(), kvtest.Logger(testLogger(t))}
			if secure {
				opts = append(opts, kvtest.Secure())
			}
			c := kvtest.NewCluster(t, 3, opts...)
			ctx := ctxT(t, 60*time.Second)
			for i := 0; i < 20; i++ {
				if err := c.Node(0).Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
					t.Fatal(err)
				}
			}
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)

			payload := func(kind int) []byte {
				switch kind % 5 {
				case 0: // random bytes
					b := make([]byte, 1+kind%4096)
					rand.Read(b)
					return b
				case 1: // RPC protocol with a huge length prefix
					return []byte{'C', 0x7f, 0xff, 0xff, 0xff, 1, 2, 3}
				case 2: // Raft protocol with garbage
					b := make([]byte, 64)
					rand.Read(b)
					return append([]byte{'R'}, b...)
				case 3: // a truncated frame
					return []byte{'C', 0, 0, 1, 0, 1, 0}
				default: // a valid-looking forwarded write from another cluster
					return evilWrite(uint64(kind))
				}
			}
			var wg sync.WaitGroup
			stop := time.Now().Add(3 * time.Second)
			var sent atomic.Int64
			for w := 0; w < 6; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for n := 0; time.Now().Before(stop) && n < 5000; n++ {
						addr := c.Node(n % 3).Addr()
						conn, err := net.DialTimeout("tcp", addr, time.Second)
						if err != nil {
							continue
						}
						if w == 0 {
							// slowloris: open and sit idle
							time.Sleep(50 * time.Millisecond)
							conn.Close()
							continue
						}
						conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
						conn.Write(payload(w*7919 + n))
						io.Copy(io.Discard, conn)
						conn.Close()
						sent.Add(1)
					}
				}(w)
			}
			wg.Wait()
			t.Logf("sent %d hostile connections", sent.Load())

			runtime.GC()
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
				t.Fatalf("heap grew by %d MiB under the flood", grew>>20)
			}
			for i := 0; i < 3; i++ {
				got, err := c.Node(i).List(ctx, "")
				if err != nil {
					t.Fatalf("node%d after the flood: %v", i, err)
				}
				if len(got) != 20 {
					t.Fatalf("node%d holds %d keys after the flood, want 20", i, len(got))
				}
				for _, p := range got {
					if !bytes.Equal(p.Value, []byte("v"+p.Key[1:])) {
						t.Fatalf("node%d: %s = %q", i, p.Key, p.Value)
					}
				}
			}
			for i := 0; i < 3; i++ {
				if err := c.Node(i).Set(ctx, fmt.Sprint("after", i), []byte("ok")); err != nil {
					t.Fatalf("node%d write after the flood: %v", i, err)
				}
			}
		})
	}
}
