package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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
