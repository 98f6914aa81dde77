package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks polls for goroutines left running, for up to 10 s. After
// Shutdown, memberlist lets timers it started finish on their own: a probe in
// flight waits for its ack (the probe interval, scaled up to 8x by
// memberlist's awareness), and an indirect ping it relays waits
// ProbeTimeout before it sends its nack.
func findLeaks() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := goleak.Find()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Failure detection runs on memberlist.DefaultLANConfig (1 s probes, a
// suspicion timeout of several seconds), which the Pool does not let a caller
// shorten: detecting a dead member is allowed this long.
const (
	joinTimeout = 10 * time.Second
	deadTimeout = 30 * time.Second
)

// startPool starts a pool on 127.0.0.1 with a free port, shut down at the
// end of the test.
func startPool(t *testing.T, meta Meta, join ...string) *Pool {
	t.Helper()
	p, err := Start(Config{Meta: meta, BindAddr: "127.0.0.1:0", Join: join})
	if err != nil {
		t.Fatalf("start %s: %v", meta.ID, err)
	}
	t.Cleanup(func() {
		if err := p.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", meta.ID, err)
		}
	})
	return p
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitClosed waits for ch to be closed.
func waitClosed(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatalf("after %v, %s not closed", timeout, what)
	}
}

// memberStatus is a condition: p sees id with status want.
func memberStatus(p *Pool, id string, want Status) func() error {
	return func() error {
		m, ok := p.Lookup(id)
		if !ok {
			return fmt.Errorf("%s does not know %s", p.Name(), id)
		}
		if m.Status != want {
			return fmt.Errorf("%s sees %s as %v, want %v", p.Name(), id, m.Status, want)
		}
		return nil
	}
}

// seesAll is a condition: p lists exactly the pools ps, alive, with their
// metadata and gossip addresses.
func seesAll(p *Pool, ps map[string]*Pool, metas map[string]Meta) func() error {
	return func() error {
		ms := p.Members()
		if len(ms) != len(ps) {
			return fmt.Errorf("%s lists %d members, want %d: %+v", p.Name(), len(ms), len(ps), ms)
		}
		for i, m := range ms {
			if i > 0 && ms[i-1].ID >= m.ID {
				return fmt.Errorf("members not sorted by ID: %q before %q", ms[i-1].ID, m.ID)
			}
			q, ok := ps[m.ID]
			if !ok {
				return fmt.Errorf("unexpected member %+v", m)
			}
			if m.Status != StatusAlive {
				return fmt.Errorf("%s sees %s as %v", p.Name(), m.ID, m.Status)
			}
			if m.Meta != metas[m.ID] {
				return fmt.Errorf("%s sees %s with meta %+v, want %+v", p.Name(), m.ID, m.Meta, metas[m.ID])
			}
			if m.Name != q.Name() || m.GossipAddr != q.Addr() {
				return fmt.Errorf("%s sees %s as %s at %s, want %s at %s", p.Name(), m.ID, m.Name, m.GossipAddr, q.Name(), q.Addr())
			}
		}
		return nil
	}
}

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{ID: "n1"},
		{ID: "n1", Addr: "127.0.0.1:7000"},
		{ID: "node-with-a-long-name", Addr: "[::1]:65535", Expect: 5, Bootstrapped: true},
		{ID: "n\x00\xff", Addr: "", Expect: -1},
	} {
		b, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("encode %+v: %v", m, err)
		}
		got, err := DecodeMeta(b)
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if got != m {
			t.Errorf("round trip: got %+v, want %+v", got, m)
		}
	}
}

func TestDecodeMetaErrors(t *testing.T) {
	noID, err := EncodeMeta(Meta{Addr: "127.0.0.1:1", Expect: 3, Bootstrapped: true})
	if err != nil {
		t.Fatal(err)
	}
	valid, err := EncodeMeta(Meta{ID: "n1", Addr: "127.0.0.1:7000", Expect: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"without ID", noID},
		{"msgpack nil", []byte{0xc0}},
		{"empty map", []byte{0x80}},
		{"integer", []byte{0x05}},
		{"string", []byte{0xa2, 'h', 'i'}},
		{"reserved byte", []byte{0xc1}},
		{"truncated", valid[:len(valid)-3]},
		{"map of huge length", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"string of huge length", []byte{0x81, 0xa2, 'i', 'd', 0xdb, 0xff, 0xff, 0xff, 0xff}},
		{"ID of wrong type", []byte{0x81, 0xa2, 'i', 'd', 0x01}},
		{"text", []byte("this is not msgpack at all")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := DecodeMeta(tc.b)
			if err == nil {
				t.Fatalf("DecodeMeta(%x) = %+v, want an error", tc.b, m)
			}
		})
	}
}

func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{
		{ID: "n1", Addr: "127.0.0.1:7000", Expect: 3, Bootstrapped: true},
		{ID: "x"},
		{Addr: "127.0.0.1:7000"},
	} {
		b, err := EncodeMeta(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{0xc0})
	f.Add([]byte{0xc1})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x81, 0xa2, 'i', 'd', 0xdb, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		if m.ID == "" {
			t.Fatalf("DecodeMeta(%x) accepted a Meta without ID: %+v", b, m)
		}
		b2, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		m2, err := DecodeMeta(b2)
		if err != nil || m2 != m {
			t.Fatalf("re-decode of %+v: %+v, %v", m, m2, err)
		}
	})
}

func TestStatusString(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		want string
	}{
		{StatusAlive, "alive"},
		{StatusSuspect, "suspect"},
		{StatusDead, "dead"},
		{StatusLeft, "left"},
		{Status(4), "Status(4)"},
		{Status(-1), "Status(-1)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Status(%d).String() = %q, want %q", int(tc.s), got, tc.want)
		}
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Meta: Meta{ID: "n1"}, BindAddr: "127.0.0.1"},
		{Meta: Meta{ID: "n1"}, BindAddr: "127.0.0.1:notaport"},
		{Meta: Meta{ID: "n1"}, BindAddr: "127.0.0.1:70000"},
		{Meta: Meta{ID: "n1"}, BindAddr: "127.0.0.1:0", AdvertiseAddr: "nope"},
		{Meta: Meta{ID: "n1", Addr: string(make([]byte, 1000))}, BindAddr: "127.0.0.1:0"},
	} {
		if p, err := Start(cfg); err == nil {
			p.Shutdown()
			t.Errorf("Start(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestPoolAddr(t *testing.T) {
	p := startPool(t, Meta{ID: "solo", Addr: "127.0.0.1:1"})
	host, port, err := net.SplitHostPort(p.Addr())
	if err != nil {
		t.Fatalf("Addr() = %q: %v", p.Addr(), err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("Addr() host %q is not a loopback IP", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		t.Errorf("Addr() port %q, want a non-zero port", port)
	}
	// A pool alone knows itself; Join with no seeds contacts nobody.
	if n := p.Join(nil); n != 0 {
		t.Errorf("Join(nil) = %d", n)
	}
	ms := p.Members()
	if len(ms) != 1 || ms[0].ID != "solo" || ms[0].Status != StatusAlive || ms[0].GossipAddr != p.Addr() || ms[0].Name != p.Name() {
		t.Errorf("Members() of a lone pool = %+v", ms)
	}
	if _, ok := p.Lookup("other"); ok {
		t.Error("Lookup of an unknown ID succeeded")
	}
	// Shutdown is idempotent.
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
}

func TestJoinUnreachableSeed(t *testing.T) {
	// A port that was free a moment ago: nobody answers there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	p := startPool(t, Meta{ID: "n1"}, dead) // a failed join is not an error
	if n := p.Join([]string{dead}); n != 0 {
		t.Errorf("Join(unreachable) = %d", n)
	}
	if ms := p.Members(); len(ms) != 1 {
		t.Errorf("Members() = %+v", ms)
	}
}

// threePools starts n1, n2, n3, the last two joining n1, and waits until each
// sees all three.
func threePools(t *testing.T) ([]*Pool, map[string]*Pool, map[string]Meta) {
	t.Helper()
	metas := map[string]Meta{}
	byID := map[string]*Pool{}
	var pools []*Pool
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("n%d", i)
		m := Meta{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", 7000+i), Expect: 3}
		var join []string
		if i > 1 {
			join = []string{pools[0].Addr()}
		}
		p := startPool(t, m, join...)
		metas[id] = m
		byID[id] = p
		pools = append(pools, p)
	}
	for _, p := range pools {
		waitFor(t, joinTimeout, p.Name()+" to see all three", seesAll(p, byID, metas))
	}
	return pools, byID, metas
}

func TestPoolMembers(t *testing.T) {
	t.Parallel()
	pools, byID, metas := threePools(t)
	for _, p := range pools {
		if p.Name() == "" {
			t.Errorf("empty gossip name")
		}
		for id, q := range byID {
			m, ok := p.Lookup(id)
			if !ok {
				t.Fatalf("%s: Lookup(%s) failed", p.Name(), id)
			}
			if m.Meta != metas[id] || m.Status != StatusAlive || m.GossipAddr != q.Addr() || m.Name != q.Name() {
				t.Errorf("%s: Lookup(%s) = %+v", p.Name(), id, m)
			}
		}
		// The slice is the caller's.
		ms := p.Members()
		ms[0].ID = "scribbled"
		if again := p.Members(); again[0].ID != "n1" {
			t.Errorf("Members() shares its slice: %+v", again)
		}
	}
}

func TestPoolSetMetaAndChanged(t *testing.T) {
	t.Parallel()
	a := startPool(t, Meta{ID: "a", Addr: "127.0.0.1:1", Expect: 2})
	joined := a.Changed()
	bMeta := Meta{ID: "b", Addr: "127.0.0.1:2", Expect: 2}
	b := startPool(t, bMeta, a.Addr())
	waitClosed(t, joined, joinTimeout, "a.Changed() at b's join")
	waitFor(t, joinTimeout, "a to see b", memberStatus(a, "b", StatusAlive))
	waitFor(t, joinTimeout, "b to see a", memberStatus(b, "a", StatusAlive))

	// A channel taken after the change is a new one, still open.
	ch := a.Changed()
	if ch == joined {
		t.Fatal("Changed() returned the closed channel again")
	}
	bMeta.Bootstrapped = true
	bMeta.Addr = "127.0.0.1:3"
	if err := b.SetMeta(bMeta); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	waitClosed(t, ch, joinTimeout, "a.Changed() at b's SetMeta")
	waitFor(t, joinTimeout, "a to see b bootstrapped", func() error {
		m, ok := a.Lookup("b")
		if !ok || m.Meta != bMeta {
			return fmt.Errorf("a sees b as %+v (known %v), want meta %+v", m, ok, bMeta)
		}
		return nil
	})
	// b sees its own new metadata at once.
	if m, _ := b.Lookup("b"); m.Meta != bMeta {
		t.Errorf("b sees itself as %+v", m)
	}
}

// TestPoolSetMetaOversized: metadata over memberlist.MetaMaxSize is refused by
// Start, and must be refused by SetMeta too; otherwise NodeMeta hands
// memberlist nil, the member gossips empty metadata, the others keep stale
// metadata and a newcomer ignores the member altogether.
func TestPoolSetMetaOversized(t *testing.T) {
	t.Parallel()
	a := startPool(t, Meta{ID: "a", Addr: "127.0.0.1:1"})
	bMeta := Meta{ID: "b", Addr: "127.0.0.1:2"}
	b := startPool(t, bMeta, a.Addr())
	waitFor(t, joinTimeout, "a to see b", memberStatus(a, "b", StatusAlive))

	if err := b.SetMeta(Meta{ID: "b", Addr: string(make([]byte, 1000))}); err == nil {
		t.Error("SetMeta of metadata over memberlist.MetaMaxSize returned nil, want an error (as Start does)")
	}
	// Whatever SetMeta did, a newcomer must still see b.
	c := startPool(t, Meta{ID: "c", Addr: "127.0.0.1:3"}, a.Addr())
	waitFor(t, joinTimeout, "c to see a and c", func() error {
		if _, ok := c.Lookup("a"); !ok {
			return errors.New("c does not know a")
		}
		return nil
	})
	waitFor(t, joinTimeout, "c to see b", memberStatus(c, "b", StatusAlive))
	if m, _ := c.Lookup("b"); m.Meta != bMeta {
		t.Errorf("c sees b with meta %+v, want %+v", m.Meta, bMeta)
	}
}

func TestPoolDeadAndLeft(t *testing.T) {
	t.Parallel()
	pools, _, _ := threePools(t)
	n1, n2, n3 := pools[0], pools[1], pools[2]

	changed := n1.Changed()
	if err := n3.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// memberlist does not expose its suspicion, so n3 goes from alive to dead.
	waitFor(t, deadTimeout, "n1 to see n3 dead", memberStatus(n1, "n3", StatusDead))
	waitFor(t, deadTimeout, "n2 to see n3 dead", memberStatus(n2, "n3", StatusDead))
	waitClosed(t, changed, time.Second, "n1.Changed() at n3's death")
	if ms := n1.Members(); len(ms) != 3 {
		t.Errorf("a dead member must stay listed: %+v", ms)
	}

	changed = n1.Changed()
	if err := n2.Leave(Meta{ID: "n2", Addr: "127.0.0.1:2"}, 5*time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := n2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, joinTimeout, "n1 to see n2 gone", func() error {
		if m, _ := n1.Lookup("n2"); m.Status < StatusDead {
			return fmt.Errorf("n1 sees n2 as %v", m.Status)
		}
		return nil
	})
	waitClosed(t, changed, time.Second, "n1.Changed() at n2's leave")
	if err := memberStatus(n1, "n2", StatusLeft)(); err != nil {
		t.Errorf("after Leave: %v", err)
	}
	if err := memberStatus(n1, "n1", StatusAlive)(); err != nil {
		t.Error(err)
	}
	if ms := n1.Members(); len(ms) != 3 {
		t.Errorf("Members() = %+v", ms)
	}
}

// incarnations returns the gossip names p holds for id, with their statuses.
func incarnations(p *Pool, id string) map[string]Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]Status{}
	for name, e := range p.members {
		if e.ID == id {
			out[name] = e.Status
		}
	}
	return out
}

func TestPoolRestartedIncarnation(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, a, b2 *Pool, want Meta) {
		t.Helper()
		waitFor(t, joinTimeout, "a to see the new incarnation of b", func() error {
			m, ok := a.Lookup("b")
			if !ok {
				return errors.New("b unknown")
			}
			if m.Status != StatusAlive || m.Meta != want || m.Name != b2.Name() || m.GossipAddr != b2.Addr() {
				return fmt.Errorf("Lookup(b) = %+v, want alive %+v named %s at %s", m, want, b2.Name(), b2.Addr())
			}
			return nil
		})
		var ids []string
		for _, m := range a.Members() {
			ids = append(ids, m.ID)
		}
		if fmt.Sprint(ids) != "[a b]" {
			t.Errorf("Members() IDs = %v, want [a b]", ids)
		}
	}

	// The new incarnation joins before the old one is found dead.
	t.Run("before failure detection", func(t *testing.T) {
		t.Parallel()
		a := startPool(t, Meta{ID: "a", Addr: "127.0.0.1:1"})
		b := startPool(t, Meta{ID: "b", Addr: "127.0.0.1:2"}, a.Addr())
		waitFor(t, joinTimeout, "a to see b", memberStatus(a, "b", StatusAlive))
		old := b.Name()
		b.Shutdown()

		want := Meta{ID: "b", Addr: "127.0.0.1:3"}
		b2 := startPool(t, want, a.Addr())
		if b2.Name() == old || b2.Addr() == b.Addr() {
			t.Fatalf("restart reused name %s or address %s", old, b.Addr())
		}
		check(t, a, b2, want)
		// Once the old one is found dead, the new one is still preferred.
		waitFor(t, deadTimeout, "a to see the old incarnation dead", func() error {
			if st, ok := incarnations(a, "b")[old]; ok && st != StatusDead {
				return fmt.Errorf("old incarnation %s is %v", old, st)
			}
			return nil
		})
		check(t, a, b2, want)
		if m, _ := b2.Lookup("b"); m.Name != b2.Name() {
			t.Errorf("b2 sees b as %+v", m)
		}
	})

	// The old incarnation is found dead first, then the new one joins.
	t.Run("after failure detection", func(t *testing.T) {
		t.Parallel()
		a := startPool(t, Meta{ID: "a", Addr: "127.0.0.1:1"})
		b := startPool(t, Meta{ID: "b", Addr: "127.0.0.1:2"}, a.Addr())
		waitFor(t, joinTimeout, "a to see b", memberStatus(a, "b", StatusAlive))
		old := b.Name()
		b.Shutdown()
		waitFor(t, deadTimeout, "a to see b dead", memberStatus(a, "b", StatusDead))

		want := Meta{ID: "b", Addr: "127.0.0.1:3", Bootstrapped: true}
		b2 := startPool(t, want, a.Addr())
		check(t, a, b2, want)
		// The departed incarnation is forgotten.
		if inc := incarnations(a, "b"); len(inc) != 1 || inc[b2.Name()] != StatusAlive {
			t.Errorf("a holds incarnations %v of b (old %s, new %s)", inc, old, b2.Name())
		}
	})
}

// TestPoolSurvivesGarbage sends random and half-valid packets and streams to
// a pool's gossip port; the pool must keep working.
func TestPoolSurvivesGarbage(t *testing.T) {
	t.Parallel()
	a := startPool(t, Meta{ID: "a", Addr: "127.0.0.1:1"})
	b := startPool(t, Meta{ID: "b", Addr: "127.0.0.1:2"}, a.Addr())
	waitFor(t, joinTimeout, "a to see b", memberStatus(a, "b", StatusAlive))

	rng := rand.New(rand.NewPCG(1, 2))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var payloads [][]byte
	for typ := 0; typ < 256; typ++ {
		// Every message type byte, followed by random bytes or nothing.
		payloads = append(payloads, append([]byte{byte(typ)}, garbage(rng.IntN(200))...), []byte{byte(typ)})
	}
	for range 50 {
		payloads = append(payloads, garbage(1+rng.IntN(1400)))
	}
	payloads = append(payloads, nil, bytes.Repeat([]byte{0xff}, 1400))

	// UDP.
	u, err := net.Dial("udp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		if len(p) == 0 {
			continue
		}
		if _, err := u.Write(p); err != nil {
			t.Fatalf("udp write: %v", err)
		}
	}
	u.Close()

	// TCP: one connection per payload, each closed after writing (memberlist
	// reads a stream until EOF or its timeout).
	for _, p := range payloads {
		c, err := net.DialTimeout("tcp", a.Addr(), 5*time.Second)
		if err != nil {
			t.Fatalf("tcp dial: %v", err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(p)
		c.Close()
	}

	// Still working: a still sees b, and a newcomer joining through a is
	// seen by everyone.
	c := startPool(t, Meta{ID: "c", Addr: "127.0.0.1:3"}, a.Addr())
	for _, p := range []*Pool{a, b, c} {
		for _, id := range []string{"a", "b", "c"} {
			waitFor(t, joinTimeout, p.Name()+" to see "+id, memberStatus(p, id, StatusAlive))
		}
	}
	// And nothing died from it meanwhile: a few probe rounds later all are
	// still alive.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, id := range []string{"a", "b", "c"} {
			if err := memberStatus(a, id, StatusAlive)(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}
