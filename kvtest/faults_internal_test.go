package kvtest

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// connPair returns a fault connection from member 0 to member 1 (its
// listener registered as member 1's address) and the accepted far end.
func connPair(t *testing.T) (*fabric, net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := newFabric()
	f.setOwner(ln.Addr().String(), 1)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := f.dialer(0)(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	far := <-accepted
	t.Cleanup(func() { c.Close(); far.Close() })
	return f, c, far
}

func cut(f *fabric, on bool) {
	f.update(func() {
		f.cut = map[[2]int]bool{}
		if on {
			f.cut[[2]int{0, 1}], f.cut[[2]int{1, 0}] = true, true
		}
	})
}

func TestFaultConn_PartitionStallsAndHealDelivers(t *testing.T) {
	f, c, far := connPair(t)
	cut(f, true)
	// Writes stall until the deadline...
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write across a partition: %v", err)
	}
	c.SetWriteDeadline(time.Time{})
	// ...and bytes that arrive are held, not lost.
	far.Write([]byte("held"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read across a partition: %d %v", n, err)
	}
	c.SetDeadline(time.Time{})
	go func() { time.Sleep(50 * time.Millisecond); cut(f, false) }()
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "held" {
		t.Fatalf("after heal: %q %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	far.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := io.ReadFull(far, buf[:2]); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("far end read %q %v", buf[:n], err)
	}
	// A dial across a partition fails at once.
	cut(f, true)
	if _, err := f.dialer(0)(t.Context(), "tcp", far.LocalAddr().String()); !errors.Is(err, errPartitioned) {
		t.Fatalf("dial across a partition: %v", err)
	}
	// Close wakes a stalled reader.
	go func() { time.Sleep(50 * time.Millisecond); c.Close() }()
	if _, err := c.Read(buf); err == nil {
		t.Fatal("read on a closed stalled conn succeeded")
	}
}

func TestFaultConn_LatencyAndLoss(t *testing.T) {
	f, c, _ := connPair(t)
	f.update(func() { f.latency = 40 * time.Millisecond })
	start := time.Now()
	if _, err := c.Write([]byte("slow")); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("write took %v with 40 ms latency", d)
	}
	f.update(func() { f.latency, f.loss = 0, 1 })
	if _, err := c.Write([]byte("lost")); err == nil {
		t.Fatal("write with loss 1 succeeded")
	}
	if _, err := c.Write([]byte("after")); err == nil {
		t.Fatal("write on a reset conn succeeded")
	}
}

func TestGossipTransport_DropsAcrossPartition(t *testing.T) {
	f := newFabric()
	f.setOwner("127.0.0.1:1", 1)
	g := &gossipTransport{f: f, i: 0}
	cut(f, true)
	if !g.drop("127.0.0.1:1") {
		t.Fatal("packet across a partition not dropped")
	}
	if g.drop("127.0.0.1:2") {
		t.Fatal("packet to an unknown address dropped")
	}
	if _, err := g.dial("127.0.0.1:1", func() (net.Conn, error) { t.Fatal("dialled across a partition"); return nil, nil }); !errors.Is(err, errPartitioned) {
		t.Fatalf("stream dial across a partition: %v", err)
	}
	cut(f, false)
	f.update(func() { f.loss = 1 })
	if !g.drop("127.0.0.1:1") {
		t.Fatal("packet with loss 1 not dropped")
	}
	if ts, err := g.WriteTo([]byte("x"), "127.0.0.1:1"); err != nil || ts.IsZero() {
		t.Fatalf("dropped WriteTo: %v %v", ts, err)
	}
}
