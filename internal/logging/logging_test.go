package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// record is a flattened slog.Record as seen by captureHandler.
type record struct {
	Level slog.Level
	Msg   string
	Attrs map[string]any
	PC    uintptr
}

// capture is the shared sink of a captureHandler and its derivatives.
type capture struct {
	mu       sync.Mutex
	level    slog.Level
	records  []record
	enabled  atomic.Int64
	handled  atomic.Int64
	disabled atomic.Int64
}

func (c *capture) all() []record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]record(nil), c.records...)
}

// captureHandler is a small slog.Handler recording every record, with
// With-attributes and groups flattened into dotted keys.
type captureHandler struct {
	c      *capture
	attrs  []slog.Attr
	groups string
}

func newCapture(level slog.Level) (*capture, *slog.Logger) {
	c := &capture{level: level}
	return c, slog.New(&captureHandler{c: c})
}

func (h *captureHandler) Enabled(_ context.Context, l slog.Level) bool {
	h.c.enabled.Add(1)
	ok := l >= h.c.level
	if !ok {
		h.c.disabled.Add(1)
	}
	return ok
}

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.c.handled.Add(1)
	attrs := map[string]any{}
	for _, a := range h.attrs {
		attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		attrs[h.groups+a.Key] = a.Value.Any()
		return true
	})
	h.c.mu.Lock()
	h.c.records = append(h.c.records, record{Level: r.Level, Msg: r.Message, Attrs: attrs, PC: r.PC})
	h.c.mu.Unlock()
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	nh := *h
	nh.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		nh.attrs = append(nh.attrs, slog.Attr{Key: h.groups + a.Key, Value: a.Value})
	}
	return &nh
}

func (h *captureHandler) WithGroup(name string) slog.Handler {
	nh := *h
	nh.groups = h.groups + name + "."
	return &nh
}

func only(t *testing.T, c *capture) record {
	t.Helper()
	rs := c.all()
	if len(rs) != 1 {
		t.Fatalf("got %d records, want 1: %+v", len(rs), rs)
	}
	return rs[0]
}

func TestHCLogLevels(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	l := HCLog(sl, "raft")
	l.SetLevel(hclog.Trace)

	l.Trace("t")
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	l.Log(hclog.Warn, "lw")
	l.Log(hclog.NoLevel, "ln")
	l.Log(hclog.Off, "off is not a message level")

	want := []record{
		{Level: LevelTrace, Msg: "t"},
		{Level: slog.LevelDebug, Msg: "d"},
		{Level: slog.LevelInfo, Msg: "i"},
		{Level: slog.LevelWarn, Msg: "w"},
		{Level: slog.LevelError, Msg: "e"},
		{Level: slog.LevelWarn, Msg: "lw"},
		{Level: slog.LevelInfo, Msg: "ln"},
	}
	got := c.all()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Level != w.Level || got[i].Msg != w.Msg {
			t.Errorf("record %d = %v %q, want %v %q", i, got[i].Level, got[i].Msg, w.Level, w.Msg)
		}
		if got[i].Attrs[ComponentKey] != "raft" {
			t.Errorf("record %d component = %v, want raft", i, got[i].Attrs[ComponentKey])
		}
	}
}

func TestHCLogDefaultLevelIsInfo(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	l := HCLog(sl, "raft")
	if got := l.GetLevel(); got != hclog.Info {
		t.Fatalf("GetLevel = %v, want info", got)
	}
	l.Trace("t")
	l.Debug("d")
	l.Info("i")
	if r := only(t, c); r.Msg != "i" {
		t.Fatalf("got %q", r.Msg)
	}
	if l.IsDebug() || l.IsTrace() || !l.IsInfo() || !l.IsWarn() || !l.IsError() {
		t.Fatalf("Is* wrong at default level")
	}
}

func TestHCLogSetLevelFilters(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	parent := HCLog(sl, "raft")
	child := parent.Named("snapshot").With("k", "v")

	child.SetLevel(hclog.Warn) // shared with the parent, like hclog
	if parent.GetLevel() != hclog.Warn || child.GetLevel() != hclog.Warn {
		t.Fatalf("levels = %v/%v, want warn", parent.GetLevel(), child.GetLevel())
	}
	parent.Info("dropped")
	child.Info("dropped")
	parent.Warn("kept")
	if r := only(t, c); r.Msg != "kept" || r.Level != slog.LevelWarn {
		t.Fatalf("got %+v", r)
	}
	if c.enabled.Load() != 1 {
		t.Fatalf("handler Enabled called %d times; messages below the stored level must be dropped before it", c.enabled.Load())
	}
	if parent.IsInfo() || !parent.IsWarn() || !parent.IsError() {
		t.Fatal("Is* ignore the stored level")
	}

	parent.SetLevel(hclog.Off)
	parent.Error("dropped")
	if parent.IsError() {
		t.Fatal("IsError at Off")
	}
	parent.SetLevel(hclog.NoLevel)
	if parent.GetLevel() != hclog.Info {
		t.Fatalf("NoLevel should restore info, got %v", parent.GetLevel())
	}
	if n := len(c.all()); n != 1 {
		t.Fatalf("got %d records", n)
	}
}

func TestHCLogConsultsHandlerLevel(t *testing.T) {
	c, sl := newCapture(slog.LevelWarn)
	l := HCLog(sl, "raft")
	l.SetLevel(hclog.Trace)
	if l.IsTrace() || l.IsDebug() || l.IsInfo() {
		t.Fatal("Is* ignore the handler level")
	}
	if !l.IsWarn() || !l.IsError() {
		t.Fatal("IsWarn/IsError false")
	}
	l.Info("dropped", "expensive", hclog.Fmt("%d", 1))
	if c.handled.Load() != 0 {
		t.Fatal("record below handler level handled")
	}
}

func TestHCLogNames(t *testing.T) {
	c, sl := newCapture(slog.LevelInfo)
	l := HCLog(sl, "raft")
	if l.Name() != "raft" {
		t.Fatalf("Name = %q", l.Name())
	}
	n := l.Named("snapshot")
	if n.Name() != "raft.snapshot" {
		t.Fatalf("Named name = %q", n.Name())
	}
	r := l.ResetNamed("other")
	unnamed := l.ResetNamed("")
	fromEmpty := HCLog(sl, "").Named("x")

	l.Info("a")
	n.Info("b")
	r.Info("c")
	unnamed.Info("d")
	fromEmpty.Info("e")

	rs := c.all()
	want := []any{"raft", "raft.snapshot", "other", nil, "x"}
	for i, w := range want {
		got, ok := rs[i].Attrs[ComponentKey]
		if w == nil {
			if ok {
				t.Errorf("record %d has component %v, want none", i, got)
			}
			continue
		}
		if got != w {
			t.Errorf("record %d component = %v, want %v", i, got, w)
		}
	}
}

func TestHCLogArgs(t *testing.T) {
	c, sl := newCapture(slog.LevelInfo)
	l := HCLog(sl, "raft")
	boom := errors.New("boom")

	l.Info("msg",
		"str", "s",
		"int", 7,
		"err", boom,
		"fmt", hclog.Fmt("%d-%s", 3, "x"),
		"hex", hclog.Hex(255),
		"oct", hclog.Octal(8),
		"bin", hclog.Binary(5),
		"quote", hclog.Quote("a\nb"),
		42, "non-string key",
		"dangling")

	r := only(t, c)
	want := map[string]any{
		ComponentKey:     "raft",
		"str":            "s",
		"int":            int64(7),
		"err":            boom,
		"fmt":            "3-x",
		"hex":            "0xff",
		"oct":            "010",
		"bin":            "0b101",
		"quote":          "a\nb",
		"42":             "non-string key",
		hclog.MissingKey: "dangling",
	}
	if len(r.Attrs) != len(want) {
		t.Errorf("attrs = %v, want %v", r.Attrs, want)
	}
	for k, w := range want {
		if got := r.Attrs[k]; got != w {
			t.Errorf("attr %q = %#v, want %#v", k, got, w)
		}
	}

	// A lone value and malformed Fmt must not panic.
	l.Info("lone", "only")
	l.Info("badfmt", "f", hclog.Format{1, 2}, "empty", hclog.Format{})
	rs := c.all()
	if got := rs[1].Attrs[hclog.MissingKey]; got != "only" {
		t.Errorf("lone value = %v", got)
	}
	if got := rs[2].Attrs["f"]; got != "1 2" {
		t.Errorf("bad fmt = %q", got)
	}
}

func TestHCLogWith(t *testing.T) {
	c, sl := newCapture(slog.LevelInfo)
	l := HCLog(sl, "raft")
	w := l.With("a", 1, "b", "x")
	w2 := w.With("b", "y", "c", true, "odd")
	named := w2.Named("sub")

	if got := w.ImpliedArgs(); fmt.Sprint(got) != "[a 1 b x]" {
		t.Errorf("ImpliedArgs = %v", got)
	}
	if got := w2.ImpliedArgs(); fmt.Sprint(got) != "[a 1 b y c true "+hclog.MissingKey+" odd]" {
		t.Errorf("ImpliedArgs = %v", got)
	}
	if len(l.ImpliedArgs()) != 0 {
		t.Errorf("parent ImpliedArgs = %v", l.ImpliedArgs())
	}
	// Mutating the returned slice must not affect the logger.
	w.ImpliedArgs()[1] = 99

	w.Info("w", "d", 4)
	w2.Info("w2")
	named.Info("named")

	rs := c.all()
	check := func(i int, want map[string]any) {
		t.Helper()
		if len(rs[i].Attrs) != len(want) {
			t.Errorf("record %d attrs = %v, want %v", i, rs[i].Attrs, want)
		}
		for k, v := range want {
			if rs[i].Attrs[k] != v {
				t.Errorf("record %d attr %q = %#v, want %#v", i, k, rs[i].Attrs[k], v)
			}
		}
	}
	check(0, map[string]any{ComponentKey: "raft", "a": int64(1), "b": "x", "d": int64(4)})
	check(1, map[string]any{ComponentKey: "raft", "a": int64(1), "b": "y", "c": true, hclog.MissingKey: "odd"})
	check(2, map[string]any{ComponentKey: "raft.sub", "a": int64(1), "b": "y", "c": true, hclog.MissingKey: "odd"})
}

func TestHCLogJSONOutput(t *testing.T) {
	var buf bytes.Buffer
	sl := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: LevelTrace, AddSource: true}))
	l := HCLog(sl, "raft").With("node", "n1")
	l.SetLevel(hclog.Trace)
	l.Trace("tracing")
	l.Error("failed", "error", errors.New("disk full"), "extra")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	var m0, m1 map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m0); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &m1); err != nil {
		t.Fatal(err)
	}
	if m0["level"] != "DEBUG-4" || m0["msg"] != "tracing" || m0["component"] != "raft" || m0["node"] != "n1" {
		t.Errorf("line 0 = %v", m0)
	}
	if m1["level"] != "ERROR" || m1["msg"] != "failed" || m1["error"] != "disk full" || m1[hclog.MissingKey] != "extra" {
		t.Errorf("line 1 = %v", m1)
	}
	src, _ := m1["source"].(map[string]any)
	if file, _ := src["file"].(string); filepath.Base(file) != "logging_test.go" {
		t.Errorf("source = %v, want the calling test file", m1["source"])
	}
}

func TestHCLogStandardLogger(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	l := HCLog(sl, "raft")
	l.SetLevel(hclog.Trace)

	std := l.StandardLogger(nil) // nil options infer levels
	std.Print("[ERR] something broke")
	std.Print("[DEBUG]   details\n")
	std.Print("[TRACE] fine")
	std.Print("[WARN] careful")
	std.Print("[INFO] fyi")
	std.Print("[ERROR] bad")
	std.Print("no tag")
	std.Print("[NOTALEVEL] x")

	want := []record{
		{Level: slog.LevelError, Msg: "something broke"},
		{Level: slog.LevelDebug, Msg: "details"},
		{Level: LevelTrace, Msg: "fine"},
		{Level: slog.LevelWarn, Msg: "careful"},
		{Level: slog.LevelInfo, Msg: "fyi"},
		{Level: slog.LevelError, Msg: "bad"},
		{Level: slog.LevelInfo, Msg: "no tag"},
		{Level: slog.LevelInfo, Msg: "[NOTALEVEL] x"},
	}
	got := c.all()
	if len(got) != len(want) {
		t.Fatalf("got %d records: %+v", len(got), got)
	}
	for i, w := range want {
		if got[i].Level != w.Level || got[i].Msg != w.Msg || got[i].Attrs[ComponentKey] != "raft" {
			t.Errorf("record %d = %+v, want %v %q", i, got[i], w.Level, w.Msg)
		}
	}

	// Options behave like hclog's.
	c2, sl2 := newCapture(LevelTrace)
	l2 := HCLog(sl2, "x")
	l2.StandardLogger(&hclog.StandardLoggerOptions{}).Print("[WARN] kept verbatim")
	l2.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("[INFO] forced")
	w := l2.StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true, InferLevelsWithTimestamp: true})
	log.New(w, "", log.LstdFlags|log.Lmicroseconds).Print("[WARN] stamped")
	l2.StandardLogger(nil).Print("[DEBUG] below stored level")

	want = []record{
		{Level: slog.LevelInfo, Msg: "[WARN] kept verbatim"},
		{Level: slog.LevelError, Msg: "forced"},
		{Level: slog.LevelWarn, Msg: "stamped"},
	}
	got = c2.all()
	if len(got) != len(want) {
		t.Fatalf("got %d records: %+v", len(got), got)
	}
	for i, w := range want {
		if got[i].Level != w.Level || got[i].Msg != w.Msg {
			t.Errorf("record %d = %v %q, want %v %q", i, got[i].Level, got[i].Msg, w.Level, w.Msg)
		}
	}
}

func TestStdLogLevels(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	std := StdLog(sl, "memberlist")
	if std.Flags() != 0 || std.Prefix() != "" {
		t.Fatalf("flags %d prefix %q", std.Flags(), std.Prefix())
	}

	cases := []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1234", slog.LevelDebug, "memberlist: Stream connection from=127.0.0.1:1234"},
		{"[INFO] memberlist: joined", slog.LevelInfo, "memberlist: joined"},
		{"[WARN] memberlist: careful", slog.LevelWarn, "memberlist: careful"},
		{"[ERR] memberlist: failed", slog.LevelError, "memberlist: failed"},
		{"[ERROR] memberlist: failed too", slog.LevelError, "memberlist: failed too"},
		{"[TRACE] memberlist: tiny", LevelTrace, "memberlist: tiny"},
		{"no tag at all", slog.LevelInfo, "no tag at all"},
		{"[WARNING] unknown tag", slog.LevelInfo, "[WARNING] unknown tag"},
		{"2026/01/02 15:04:05 [WARN] memberlist: with timestamp", slog.LevelWarn, "memberlist: with timestamp"},
		{"", slog.LevelInfo, ""},
	}
	for _, tc := range cases {
		std.Println(tc.line)
	}
	// Printf without a trailing newline gets one added by log; raw writes
	// with CRLF are trimmed too.
	std.Writer().Write([]byte("[WARN] raw\r\n"))

	got := c.all()
	if len(got) != len(cases)+1 {
		t.Fatalf("got %d records, want %d", len(got), len(cases)+1)
	}
	for i, tc := range cases {
		r := got[i]
		if r.Level != tc.level || r.Msg != tc.msg {
			t.Errorf("%q: got %v %q, want %v %q", tc.line, r.Level, r.Msg, tc.level, tc.msg)
		}
		if r.Attrs[ComponentKey] != "memberlist" {
			t.Errorf("%q: component = %v", tc.line, r.Attrs[ComponentKey])
		}
	}
	if last := got[len(got)-1]; last.Level != slog.LevelWarn || last.Msg != "raw" {
		t.Errorf("raw write: %+v", last)
	}
}

func TestStdLogTimestampFlags(t *testing.T) {
	c, sl := newCapture(slog.LevelDebug)
	std := StdLog(sl, "memberlist")
	std.SetFlags(log.LstdFlags | log.Lmicroseconds)
	std.Printf("[DEBUG] memberlist: Using dynamic bind port %d", 7946)
	r := only(t, c)
	if r.Level != slog.LevelDebug || r.Msg != "memberlist: Using dynamic bind port 7946" {
		t.Fatalf("got %+v", r)
	}
}

func TestStdLogDisabledIsCheap(t *testing.T) {
	c, sl := newCapture(slog.LevelWarn)
	std := StdLog(sl, "memberlist")
	std.Print("[DEBUG] dropped")
	std.Print("[INFO] dropped")
	std.Print("dropped")
	std.Print("[WARN] kept")
	if c.handled.Load() != 1 || c.disabled.Load() != 3 {
		t.Fatalf("handled %d disabled %d", c.handled.Load(), c.disabled.Load())
	}

	line := []byte("[DEBUG] memberlist: nothing to see\n")
	w := std.Writer()
	allocs := testing.AllocsPerRun(100, func() {
		_, _ = w.Write(line)
	})
	if allocs != 0 {
		t.Errorf("disabled write allocated %v times", allocs)
	}
}

func TestStdLogSource(t *testing.T) {
	var buf bytes.Buffer
	sl := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{AddSource: true}))
	StdLog(sl, "memberlist").Printf("[WARN] memberlist: %s", "x")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["component"] != "memberlist" || m["level"] != "WARN" || m["msg"] != "memberlist: x" {
		t.Errorf("got %v", m)
	}
	src, _ := m["source"].(map[string]any)
	if file, _ := src["file"].(string); filepath.Base(file) != "logging_test.go" {
		t.Errorf("source = %v, want the calling test file", m["source"])
	}
}

func TestDiscard(t *testing.T) {
	d := Discard()
	if d.Enabled(context.Background(), slog.LevelError) {
		t.Fatal("Discard logger enabled")
	}
	l := HCLog(d, "raft")
	l.Error("nothing", "k", "v")
	if l.IsError() {
		t.Fatal("IsError on discard")
	}
	StdLog(d, "memberlist").Print("[ERR] nothing")
	StdLog(nil, "nil-uses-default") // must not panic
	HCLog(nil, "nil-uses-default")
}

func TestConcurrentLogging(t *testing.T) {
	var buf bytes.Buffer
	sl := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: LevelTrace}))
	root := HCLog(sl, "raft")
	root.SetLevel(hclog.Debug)
	std := StdLog(sl, "memberlist")
	stdFromHC := root.StandardLogger(nil)

	const goroutines, perG = 32, 50
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := root.Named(fmt.Sprint("g", g)).With("g", g)
			for i := range perG {
				l.Debug("debug", "i", i, "err", errors.New("e"))
				l.Trace("trace dropped")
				_ = l.IsTrace()
				root.SetLevel(hclog.Debug) // concurrent SetLevel is safe
				_ = l.GetLevel()
				std.Printf("[INFO] memberlist: i=%d", i)
				stdFromHC.Print("[WARN] via standard logger")
			}
		}()
	}
	wg.Wait()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if want := goroutines * perG * 3; len(lines) != want {
		t.Fatalf("got %d lines, want %d", len(lines), want)
	}
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
	}
}

func TestMemberlistIntegration(t *testing.T) {
	c, sl := newCapture(slog.LevelDebug)
	conf := memberlist.DefaultLocalConfig()
	conf.BindAddr = "127.0.0.1"
	conf.BindPort = 0
	conf.AdvertiseAddr = "127.0.0.1"
	conf.Name = "t1"
	conf.Logger = StdLog(sl, "memberlist")

	m, err := memberlist.Create(conf)
	if err != nil {
		t.Fatalf("create memberlist: %v", err)
	}
	if err := m.Shutdown(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	rs := c.all()
	if len(rs) == 0 {
		t.Fatal("no memberlist records arrived through the adapter")
	}
	for _, r := range rs {
		if r.Attrs[ComponentKey] != "memberlist" {
			t.Errorf("record without component: %+v", r)
		}
		if strings.HasPrefix(r.Msg, "[") {
			t.Errorf("level tag not stripped: %q", r.Msg)
		}
	}
	var sawBindPort bool
	for _, r := range rs {
		if r.Level == slog.LevelDebug && strings.Contains(r.Msg, "Using dynamic bind port") {
			sawBindPort = true
		}
	}
	if !sawBindPort {
		t.Errorf("expected the dynamic bind port debug record, got %+v", rs)
	}
	if a := net.ParseIP(conf.BindAddr); a == nil || !a.IsLoopback() {
		t.Fatalf("bind address %q is not loopback", conf.BindAddr)
	}
}
