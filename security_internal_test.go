package kv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:0": true, "127.8.9.10:7000": true, "[::1]:7000": true, "localhost:1": true,
		"0.0.0.0:7000": false, ":7000": false, "10.0.0.1:7000": false, "[::]:1": false, "garbage": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestWarnInsecure(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	base := Config{NodeID: "n", Logger: logger, BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0"}
	warnInsecure(base, logger)
	if buf.Len() != 0 {
		t.Fatalf("warned on loopback: %s", buf.String())
	}
	exposed := base
	exposed.BindAddr = "10.1.2.3:7000" // never bound: only the warning is tested
	warnInsecure(exposed, logger)
	if !strings.Contains(buf.String(), "SECURITY") || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("want one security warning, got %q", buf.String())
	}
	buf.Reset()
	secured := exposed
	secured.TLS = &tls.Config{}
	secured.GossipKey = make([]byte, 16)
	warnInsecure(secured, logger)
	if buf.Len() != 0 {
		t.Fatalf("warned although secured: %s", buf.String())
	}
}

func TestSecurityConfigValidation(t *testing.T) {
	for name, cfg := range map[string]Config{
		"short gossip key": {GossipKey: make([]byte, 10)},
		"TLS without cert": {TLS: &tls.Config{RootCAs: x509.NewCertPool()}},
		"TLS without CA":   {TLS: &tls.Config{Certificates: []tls.Certificate{{}}}},
	} {
		cfg.NodeID, cfg.InMemory = "n", true
		if _, err := Open(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Open = %v, want ErrInvalidConfig", name, err)
		}
	}
	server, client := tlsConfigs(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }, ClientCAs: x509.NewCertPool()})
	if server.MinVersion != tls.VersionTLS13 || server.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("server TLS: min %x auth %v", server.MinVersion, server.ClientAuth)
	}
	if client.RootCAs == nil || client.GetClientCertificate == nil || client.VerifyConnection == nil {
		t.Fatal("client TLS lacks its CA, certificate hook or verification")
	}
	if err := client.VerifyConnection(tls.ConnectionState{}); err == nil {
		t.Fatal("a peer without certificate verified")
	}
}
