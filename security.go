package kv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/hashicorp/memberlist"
)

// tlsConfigs derives the transport's server and client TLS configs from
// Config.TLS: TLS 1.3, client certificates required and verified on the
// server side, the server's certificate verified against the CA on the
// client side (and against ServerName when it is set).
func tlsConfigs(c *tls.Config) (server, client *tls.Config) {
	if c == nil {
		return nil, nil
	}
	server = c.Clone()
	server.MinVersion = tls.VersionTLS13
	server.ClientAuth = tls.RequireAndVerifyClientCert
	if server.ClientCAs == nil {
		server.ClientCAs = c.RootCAs
	}

	client = c.Clone()
	client.MinVersion = tls.VersionTLS13
	if client.RootCAs == nil {
		client.RootCAs = c.ClientCAs
	}
	if client.GetClientCertificate == nil && len(client.Certificates) == 0 && c.GetCertificate != nil {
		get := c.GetCertificate
		client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return get(&tls.ClientHelloInfo{})
		}
	}
	if client.ServerName == "" {
		// Members are dialled by address: verify the chain, not the name.
		roots := client.RootCAs
		client.InsecureSkipVerify = true
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("kv: peer presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			return err
		}
	}
	return server, client
}

// gossipKeyring is memberlist's keyring for Config.GossipKey (nil without).
func gossipKeyring(key []byte) (*memberlist.Keyring, error) {
	if len(key) == 0 {
		return nil, nil
	}
	kr, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return nil, fmt.Errorf("%w: GossipKey: %v", ErrInvalidConfig, err)
	}
	return kr, nil
}

// GossipKeyring returns the keyring that encrypts this member's gossip, nil
// when Config.GossipKey is not set. Rotate a key without a restart, on every
// member in turn: AddKey(new) everywhere, then UseKey(new) everywhere, then
// RemoveKey(old) everywhere. Members accept gossip under any key in their
// ring and send under the primary one.
func (s *Store) GossipKeyring() *memberlist.Keyring { return s.keyring }

// warnInsecure logs one prominent warning when the ports are reachable
// beyond this host without TLS or a gossip key.
func warnInsecure(cfg Config, logger *slog.Logger) {
	if cfg.TLS != nil && len(cfg.GossipKey) > 0 {
		return
	}
	exposed := !isLoopback(cfg.BindAddr) || !isLoopback(cfg.GossipBindAddr)
	if !exposed {
		return
	}
	if cfg.Logger == nil {
		logger = slog.Default()
	}
	logger.Warn("SECURITY: this cohort/kv instance listens beyond loopback without authentication: anyone who reaches its ports can join the cluster or write data; set Config.TLS (mutual TLS on the transport) and Config.GossipKey (encrypted gossip)",
		"node", cfg.NodeID, "addr", cfg.BindAddr, "gossip", cfg.GossipBindAddr, "tls", cfg.TLS != nil, "gossip_key", len(cfg.GossipKey) > 0)
}

// isLoopback says whether a bind address is on loopback only.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
