package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
)

// etcdSystem is etcd embedded in the process (go.etcd.io/etcd/server/v3/embed),
// 3 members on 127.0.0.1 with default settings (fsync on, snapshot count,
// no auto-compaction, backend batch interval 100 ms and limit 10,000 unless
// set).
//
// How callers reach a member depends on mode:
//   - etcdInProc (the default): etcd's own in-process client,
//     go.etcd.io/etcd/server/v3/etcdserver/api/v3client, one per member. It
//     is a clientv3.Client whose KV calls go straight to the member's v3 RPC
//     service in the same process (quota check, then the server), with no
//     socket and no protobuf encoding: the way a program that embeds etcd
//     talks to it, as cohort's callers call their *kv.Store.
//   - etcdGRPC: clientv3 over gRPC on loopback, as a separate process
//     would. A client is one gRPC connection; callers share clients, conns
//     of them per member, or by default one per 32 callers (at most 16).
type etcdSystem struct {
	mode          string        // etcdInProc or etcdGRPC
	conns         int           // gRPC connections per member; 0: one per 32 callers, at most 16
	batchInterval time.Duration // embed.Config.BackendBatchInterval; 0: etcd's default
	batchLimit    int           // embed.Config.BackendBatchLimit; 0: etcd's default

	members  []*embed.Etcd
	urls     []string // client URL of each member
	leader   int
	follower int
	d        *dataset

	mu      sync.Mutex
	clients map[int][]*clientv3.Client // by member
	inproc  map[int]*clientv3.Client   // by member, etcdInProc

	// level of the members' logger: error while running, silenced at Close
	// (etcd logs its listeners' closing as errors).
	level zap.AtomicLevel
}

// The ways callers reach an etcd member (-etcd-client).
const (
	etcdInProc = "inproc"
	etcdGRPC   = "grpc"
)

func (s *etcdSystem) Name() string { return "etcd" }

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (s *etcdSystem) Start(dir string, d *dataset) error {
	s.d = d
	s.clients = map[int][]*clientv3.Client{}
	s.inproc = map[int]*clientv3.Client{}
	if s.mode == "" {
		s.mode = etcdInProc
	}
	if s.mode != etcdInProc && s.mode != etcdGRPC {
		return fmt.Errorf("unknown etcd client %q (want %s or %s)", s.mode, etcdInProc, etcdGRPC)
	}
	var peers, clients []url.URL
	var initial []string
	for i := range 3 {
		pp, err := freePort()
		if err != nil {
			return err
		}
		cp, err := freePort()
		if err != nil {
			return err
		}
		peers = append(peers, url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", pp)})
		clients = append(clients, url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", cp)})
		initial = append(initial, fmt.Sprintf("e%d=%s", i, peers[i].String()))
		s.urls = append(s.urls, clients[i].String())
	}
	type started struct {
		i   int
		e   *embed.Etcd
		err error
	}
	ch := make(chan started, 3)
	s.level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	zc := zap.NewProductionConfig()
	zc.Level = s.level
	zc.Sampling = nil
	lg, err := zc.Build()
	if err != nil {
		return err
	}
	for i := range 3 {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("e%d", i)
		cfg.Dir = filepath.Join(dir, "etcd", cfg.Name)
		cfg.ListenPeerUrls = []url.URL{peers[i]}
		cfg.AdvertisePeerUrls = []url.URL{peers[i]}
		cfg.ListenClientUrls = []url.URL{clients[i]}
		cfg.AdvertiseClientUrls = []url.URL{clients[i]}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "cohort-bench"
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg.Named(cfg.Name))
		if s.batchInterval > 0 {
			cfg.BackendBatchInterval = s.batchInterval
		}
		if s.batchLimit > 0 {
			cfg.BackendBatchLimit = s.batchLimit
		}
		go func() {
			e, err := embed.StartEtcd(cfg)
			ch <- started{i, e, err}
		}()
	}
	s.members = make([]*embed.Etcd, 3)
	var errs []error
	for range 3 {
		r := <-ch
		s.members[r.i] = r.e
		errs = append(errs, r.err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, e := range s.members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(time.Minute):
			return errors.New("etcd member not ready after 1 minute")
		}
	}
	if err := s.Prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const workers = 256
	var cs []*clientv3.Client
	for i := range workers {
		c, err := s.client(s.leader, i, workers)
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	next := 0
	var mu sync.Mutex
	return loadWithin(ctx, len(d.keys), workers, func(ctx context.Context, k int) error {
		mu.Lock()
		c := cs[next%len(cs)]
		next++
		mu.Unlock()
		_, err := c.Put(ctx, d.keys[k], d.valueStr)
		return err
	})
}

// Prepare finds the leader and waits until it serves a linearizable read.
func (s *etcdSystem) Prepare() error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for i, e := range s.members {
			if e.Server.Leader() == e.Server.MemberID() {
				c, err := s.client(i, 0, 1)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err = c.Get(ctx, "bench-probe")
				cancel()
				if err == nil {
					s.leader, s.follower = i, (i+1)%3
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("no etcd leader")
}

// client returns the client that caller i of c uses for member m.
func (s *etcdSystem) client(m, i, c int) (*clientv3.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == etcdInProc {
		cli := s.inproc[m]
		if cli == nil {
			cli = v3client.New(s.members[m].Server)
			s.inproc[m] = cli
		}
		return cli, nil
	}
	n := min((c+31)/32, 16)
	if s.conns > 0 {
		n = s.conns
	}
	j := i % n
	for len(s.clients[m]) <= j {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{s.urls[m]},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return nil, err
		}
		s.clients[m] = append(s.clients[m], cli)
	}
	return s.clients[m][j], nil
}

func (s *etcdSystem) Op(w workload, c, i int) opFunc {
	d := s.d
	member := s.leader
	switch w.ID {
	case "write-all":
		member = i % 3
	case "read-lin-follower", "read-stale":
		member = s.follower
	}
	cli, err := s.client(member, i, c)
	if err != nil {
		return func(context.Context, int) error { return err }
	}
	switch w.ID {
	case "write-leader", "write-all":
		return func(ctx context.Context, k int) error {
			_, err := cli.Put(ctx, d.keys[k], d.valueStr)
			return err
		}
	case "read-lin-leader", "read-lin-follower", "read-stale":
		var opts []clientv3.OpOption
		if w.ID == "read-stale" {
			opts = append(opts, clientv3.WithSerializable())
		}
		return func(ctx context.Context, k int) error {
			r, err := cli.Get(ctx, d.keys[k], opts...)
			if err != nil {
				return err
			}
			if len(r.Kvs) != 1 {
				return fmt.Errorf("get returned %d keys", len(r.Kvs))
			}
			return checkValue(r.Kvs[0].Value, d)
		}
	case "list100":
		return func(ctx context.Context, k int) error {
			r, err := cli.Get(ctx, d.prefix(k), clientv3.WithPrefix(), clientv3.WithLimit(100))
			if err != nil {
				return err
			}
			if len(r.Kvs) != 100 {
				return fmt.Errorf("list returned %d pairs, want 100", len(r.Kvs))
			}
			return nil
		}
	}
	return nil
}

func (s *etcdSystem) Close() error {
	s.level.SetLevel(zap.FatalLevel)
	for _, cs := range s.clients {
		for _, c := range cs {
			c.Close()
		}
	}
	for _, c := range s.inproc {
		c.Close()
	}
	for _, e := range s.members {
		if e != nil {
			e.Close()
		}
	}
	return nil
}
