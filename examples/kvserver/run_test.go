package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// records is a slog.Handler that passes the records of one logger (not
// those of loggers derived with With or WithGroup) to a channel, dropping
// them when it is full.
type records chan slog.Record

func (r records) Enabled(context.Context, slog.Level) bool { return true }
func (r records) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r <- rec.Clone():
	default:
	}
	return nil
}
func (r records) WithAttrs([]slog.Attr) slog.Handler { return slog.DiscardHandler }
func (r records) WithGroup(string) slog.Handler      { return slog.DiscardHandler }

func testOptions(t *testing.T) options {
	return options{
		nodeID:   "n1",
		dataDir:  filepath.Join(t.TempDir(), "data"),
		bind:     "127.0.0.1:0",
		gossip:   "127.0.0.1:0",
		httpAddr: "127.0.0.1:0",
		timeout:  5 * time.Second,
	}
}

// With the HTTP port taken, kvserver fails before it opens the Store: the
// DataDir is not created, let alone bootstrapped.
func TestRun_HTTPPortTaken_FailsBeforeOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := testOptions(t)
	o.httpAddr = ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, o, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("run with a taken HTTP port: %v, want address already in use", err)
	}
	if _, err := os.Stat(o.dataDir); !os.IsNotExist(err) {
		t.Fatalf("DataDir %s exists after the failed start (%v)", o.dataDir, err)
	}
}

// "kvserver ready" comes once the HTTP port is bound, and names the bound
// address (after -http 127.0.0.1:0), which answers at once.
func TestRun_ReadyAfterHTTPBound(t *testing.T) {
	o := testOptions(t)
	logs := make(records, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, slog.New(logs)) }()

	var addr string
	deadline := time.After(30 * time.Second)
	for addr == "" {
		select {
		case rec := <-logs:
			if rec.Message != "kvserver ready" {
				continue
			}
			rec.Attrs(func(a slog.Attr) bool {
				if a.Key == "http" {
					addr = a.Value.String()
				}
				return true
			})
			if addr == "" {
				t.Fatal(`"kvserver ready" without an http attribute`)
			}
		case err := <-done:
			t.Fatalf("run returned before ready: %v", err)
		case <-deadline:
			t.Fatal(`no "kvserver ready" within 30 s`)
		}
	}
	code, _, body := do(t, "GET", "http://"+addr+"/health", nil)
	var h map[string]any
	if err := json.Unmarshal(body, &h); err != nil || (code != 200 && code != 503) {
		t.Fatalf("/health at %s right after ready: %d %s", addr, code, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after its ctx ended: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30 s of its ctx ending")
	}
}

// startRun runs kvserver with o until the test ends, and returns the bound
// HTTP address once it is ready, a function that stops it as SIGTERM
// does, and the channel run's result comes on.
func startRun(t *testing.T, o options) (addr string, stop func(), done <-chan error) {
	t.Helper()
	logs := make(records, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		ch <- run(ctx, o, slog.New(logs))
		close(exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			t.Error("run did not return within 60 s of the test's end")
		}
	})
	deadline := time.After(30 * time.Second)
	for addr == "" {
		select {
		case rec := <-logs:
			if rec.Message != "kvserver ready" {
				continue
			}
			rec.Attrs(func(a slog.Attr) bool {
				if a.Key == "http" {
					addr = a.Value.String()
				}
				return true
			})
		case err := <-ch:
			t.Fatalf("run returned before ready: %v", err)
		case <-deadline:
			t.Fatal(`no "kvserver ready" within 30 s`)
		}
	}
	return addr, cancel, ch
}

// A client that sends its body a byte at a time does not hold up a
// graceful stop: requests in flight get -timeout to finish, then the HTTP
// server is closed under the rest, so that the process exits well within
// the grace period of its orchestrator (kubernetes.yaml: 40 s) and a
// -leave-on-shutdown still has time to leave.
func TestRun_Shutdown_SlowClientDoesNotHoldItUp(t *testing.T) {
	o := testOptions(t)
	o.timeout = time.Second
	addr, stop, done := startRun(t, o)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("POST /api/set HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")); err != nil {
		t.Fatal(err)
	}
	trickle := make(chan struct{})
	defer close(trickle)
	go func() {
		for i := 0; i < 120; i++ {
			select {
			case <-trickle:
				return
			case <-time.After(250 * time.Millisecond):
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // the request is in the handler, reading its body
	start := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("stopped %v after SIGTERM with -timeout %v; want well under 10 s", took.Round(time.Millisecond), o.timeout)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("run did not return within 45 s of SIGTERM")
	}
}

// A request that waits the whole -timeout for a leader gets its answer,
// 503, however long -timeout is: the HTTP server's write deadline leaves
// room for it, rather than cutting the connection first.
func TestRun_LongTimeout_RequestStillAnswered(t *testing.T) {
	if testing.Short() {
		t.Skip("waits more than 30 s")
	}
	o := testOptions(t)
	o.bootstrapExpect = 2 // alone: never a leader
	o.timeout = 31 * time.Second
	addr, _, _ := startRun(t, o)
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get("http://" + addr + "/api/get?key=k")
	if err != nil {
		t.Fatalf("GET with -timeout %v and no leader: %v; want a 503 answer", o.timeout, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("GET with no leader: %d %s; want 503", resp.StatusCode, body)
	}
}

// A second SIGTERM or SIGINT during a graceful stop ends the process at
// once: the operator who presses Ctrl-C again is not kept waiting for
// requests in flight.
func TestBinary_SecondSignal_StopsAtOnce(t *testing.T) {
	bin := buildKVServer(t)
	ports := freePorts(t, 3)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-node-id", "n1", "-in-memory",
		"-bind", fmt.Sprintf("127.0.0.1:%d", ports[0]), "-gossip", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"-http", httpAddr, "-bootstrap-expect", "2", "-timeout", "20s")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	client := &http.Client{Timeout: 2 * time.Second}
	for i := 0; ; i++ {
		resp, err := client.Get("http://" + httpAddr + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 100 {
			t.Fatalf("kvserver not answering: %v\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A read that waits its -timeout (20 s) for a leader that never comes.
	go func() {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + httpAddr + "/api/get?key=k")
		if err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("still running 5 s after a second signal\n%s", out.String())
	}
}
