package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
	buildOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildKVServer builds this program once for the tests that run it as a
// process, and returns the binary's path.
func buildKVServer(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "kvserver-test-"); buildErr != nil {
			return
		}
		buildOut, buildErr = exec.Command("go", "build", "-o", filepath.Join(binDir, "kvserver"), ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(binDir, "kvserver")
}

// openStore opens an in-memory instance on 127.0.0.1 that the test closes.
// Alone (expect 1) it elects itself; with expect 2 it never knows a leader.
func openStore(t *testing.T, id string, expect int) *kv.Store {
	t.Helper()
	s, err := kv.Open(kv.Config{NodeID: id, InMemory: true, BootstrapExpect: expect})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if expect <= 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// serve serves the API over s on a real TCP port of 127.0.0.1.
func serve(t *testing.T, s *kv.Store, timeout time.Duration) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newAPI(s, timeout))
	t.Cleanup(srv.Close)
	return srv
}

// do sends one request and returns the status, the headers and the body.
func do(t *testing.T, method, url string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, b
}
