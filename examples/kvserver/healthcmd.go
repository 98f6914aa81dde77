package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// health runs "kvserver health": it asks the kvserver at -http (KV_HTTP)
// for /health and returns the exit code, 0 when that answers 200, 1
// otherwise (Docker reserves 2). It needs no shell and no curl, so it
// serves as the healthcheck of a distroless container.
func health(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kvserver health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("http", "127.0.0.1:8000", "host:port of the kvserver's HTTP API; an unspecified host (0.0.0.0, ::) means this machine")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `kvserver health: exit 0 if the kvserver at -http answers 200 on /health (a leader is known and it is caught up), else 1.

Usage: kvserver health [flags]

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fromEnv(fs, map[string]string{"http": "KV_HTTP"}); err != nil {
		fmt.Fprintln(stderr, "kvserver health:", err)
		return 1
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kvserver health: unexpected argument %q\n", fs.Arg(0))
		return 1
	}
	if *timeout <= 0 {
		// http.Client would wait forever.
		fmt.Fprintf(stderr, "kvserver health: -timeout %v: want more than 0\n", *timeout)
		return 1
	}
	url, err := probeURL(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "kvserver health:", err)
		return 1
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(stderr, "kvserver health:", err)
		return 1
	}
	defer resp.Body.Close()
	var body struct {
		Leader string `json:"leader"`
		Reason string `json:"reason"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "kvserver health: %s: unhealthy (%s): %s\n", url, resp.Status, body.Reason)
		return 1
	}
	fmt.Fprintf(stdout, "kvserver health: %s: healthy, leader %s\n", url, body.Leader)
	return 0
}

// probeURL is the /health URL of a kvserver whose -http is addr: an empty
// or unspecified host (0.0.0.0, ::) means this machine.
func probeURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("-http %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/health", nil
}
