package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
	wal "github.com/hashicorp/raft-wal"
)

// raftSystem is hashicorp/raft with nothing around it: 3 voters over
// raft.NewTCPTransport on 127.0.0.1, the log store cohort uses
// (storage.OpenLogStore, fsync on) behind raft.NewLogCache(512), file
// snapshots, the raft.Config cohort uses, and an in-memory map as the state
// machine, one log entry per write. It is the ceiling of what raft itself
// does on this machine; it has no forwarding, no follower reads and no
// range reads, so those cells are empty.
//
// With wal set it runs on hashicorp/raft-wal instead (system "raft-wal"):
// the fastest raw raft log store we know, one fsync per append.
type raftSystem struct {
	wal      bool
	nodes    []*rawNode
	leader   int
	follower int
	d        *dataset
}

type rawNode struct {
	r     *raft.Raft
	fsm   *mapFSM
	trans *raft.NetworkTransport
	logs  io.Closer
}

func (s *raftSystem) Name() string {
	if s.wal {
		return "raft-wal"
	}
	return "raft"
}

// rawRaftConfig is the raft.Config cohort/kv runs with (kv.go).
func rawRaftConfig(id string) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft-" + id, Level: hclog.Error, Output: os.Stderr})
	rc.BatchApplyCh = true
	rc.CommitTimeout = 20 * time.Millisecond
	rc.MaxAppendEntries = 256
	return rc
}

func (s *raftSystem) Start(dir string, d *dataset) error {
	s.d = d
	var servers []raft.Server
	for i := range 3 {
		id := fmt.Sprintf("raft%d", i)
		ndir := filepath.Join(dir, s.Name(), id)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return err
		}
		var (
			logs   raft.LogStore
			stable raft.StableStore
			closer io.Closer
		)
		if s.wal {
			wdir := filepath.Join(ndir, "wal")
			if err := os.MkdirAll(wdir, 0o700); err != nil {
				return err
			}
			w, err := wal.Open(wdir)
			if err != nil {
				return err
			}
			logs, stable, closer = w, w, w
		} else {
			l, err := storage.OpenLogStore(filepath.Join(ndir, "raft.db"), storage.LogStoreOptions{})
			if err != nil {
				return err
			}
			logs, stable, closer = l, l, l
		}
		n := &rawNode{logs: closer, fsm: newMapFSM()}
		s.nodes = append(s.nodes, n)
		cache, err := raft.NewLogCache(512, logs)
		if err != nil {
			return err
		}
		snaps, err := raft.NewFileSnapshotStore(ndir, 2, io.Discard)
		if err != nil {
			return err
		}
		n.trans, err = raft.NewTCPTransport("127.0.0.1:0", nil, 3, 10*time.Second, io.Discard)
		if err != nil {
			return err
		}
		n.r, err = raft.NewRaft(rawRaftConfig(id), n.fsm, cache, stable, snaps, n.trans)
		if err != nil {
			return err
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: n.trans.LocalAddr()})
	}
	if err := s.nodes[0].r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return err
	}
	if err := s.Prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := s.nodes[s.leader].r
	err := loadWithin(ctx, len(d.keys), 256, func(ctx context.Context, k int) error {
		return r.Apply(encodeSet(d.keys[k], d.value), 10*time.Second).Error()
	})
	if err != nil {
		return err
	}
	// Wait until every member has applied everything.
	last := r.LastIndex()
	for _, n := range s.nodes {
		if err := n.fsm.waitApplied(ctx, last); err != nil {
			return err
		}
	}
	return nil
}

func (s *raftSystem) Prepare() error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for i, n := range s.nodes {
			if n.r.State() == raft.Leader {
				// A marker entry of the leader's term, applied by the
				// state machine: from then on the commit index is one the
				// map sees (raft does not hand its no-op and barrier
				// entries to the FSM). cohort commits the same kind of
				// marker when it becomes leader.
				if err := n.r.Apply(nil, 10*time.Second).Error(); err != nil {
					break
				}
				s.leader, s.follower = i, (i+1)%3
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("no raft leader")
}

func (s *raftSystem) Op(w workload, c, i int) opFunc {
	d := s.d
	if len(s.nodes) < 3 {
		return func(context.Context, int) error { return errors.New("not started") }
	}
	leader, follower := s.nodes[s.leader], s.nodes[s.follower]
	switch w.ID {
	case "write-leader":
		return func(ctx context.Context, k int) error {
			return leader.r.Apply(encodeSet(d.keys[k], d.value), 10*time.Second).Error()
		}
	case "read-lin-leader":
		// The read index protocol on the leader: note the commit index,
		// confirm leadership with a heartbeat round (VerifyLeader; raft
		// shares a round among concurrent callers), wait until the state
		// machine has applied that index, read. No Barrier per read.
		return func(ctx context.Context, k int) error {
			idx := leader.r.CommitIndex()
			if err := leader.r.VerifyLeader().Error(); err != nil {
				return err
			}
			if err := leader.fsm.waitApplied(ctx, idx); err != nil {
				return err
			}
			v, ok := leader.fsm.get(d.keys[k])
			if !ok {
				return errors.New("not found")
			}
			return checkValue(v, d)
		}
	case "read-stale":
		return func(ctx context.Context, k int) error {
			v, ok := follower.fsm.get(d.keys[k])
			if !ok {
				return errors.New("not found")
			}
			return checkValue(v, d)
		}
	}
	return nil
}

func (s *raftSystem) Close() error {
	var errs []error
	for _, n := range s.nodes {
		if n.r != nil {
			errs = append(errs, n.r.Shutdown().Error())
		}
		if n.trans != nil {
			errs = append(errs, n.trans.Close())
		}
		errs = append(errs, n.logs.Close())
	}
	return errors.Join(errs...)
}

// encodeSet is the raw state machine's command: key length, key, value.
func encodeSet(key string, value []byte) []byte {
	b := make([]byte, 2+len(key)+len(value))
	binary.BigEndian.PutUint16(b, uint16(len(key)))
	copy(b[2:], key)
	copy(b[2+len(key):], value)
	return b
}

// mapFSM is a map under a RWMutex. Values alias the log entries' data.
type mapFSM struct {
	mu sync.RWMutex
	m  map[string][]byte

	applied  atomic.Uint64
	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after every apply
}

func newMapFSM() *mapFSM {
	return &mapFSM{m: map[string][]byte{}, notify: make(chan struct{})}
}

var _ raft.BatchingFSM = (*mapFSM)(nil)

func (f *mapFSM) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch applies what raft hands over at once under one lock, as
// cohort's state machine does in one engine transaction.
func (f *mapFSM) ApplyBatch(logs []*raft.Log) []any {
	if len(logs) == 0 {
		return nil
	}
	f.mu.Lock()
	for _, l := range logs {
		if l.Type == raft.LogCommand && len(l.Data) >= 2 {
			n := int(binary.BigEndian.Uint16(l.Data))
			if 2+n <= len(l.Data) {
				f.m[string(l.Data[2:2+n])] = l.Data[2+n:]
			}
		}
	}
	f.mu.Unlock()
	f.applied.Store(logs[len(logs)-1].Index)
	f.notifyMu.Lock()
	close(f.notify)
	f.notify = make(chan struct{})
	f.notifyMu.Unlock()
	return make([]any, len(logs))
}

// get returns a copy of the value, as cohort's Get does.
func (f *mapFSM) get(key string) ([]byte, bool) {
	f.mu.RLock()
	v, ok := f.m[key]
	f.mu.RUnlock()
	if !ok {
		return nil, false
	}
	return bytes.Clone(v), true
}

func (f *mapFSM) waitApplied(ctx context.Context, idx uint64) error {
	for {
		f.notifyMu.Lock()
		ch := f.notify
		f.notifyMu.Unlock()
		if f.applied.Load() >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *mapFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	cp := make(map[string][]byte, len(f.m))
	for k, v := range f.m {
		cp[k] = v
	}
	return mapSnapshot(cp), nil
}

func (f *mapFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m := map[string][]byte{}
	r := bufio.NewReader(rc)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		kl, vl := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:])
		b := make([]byte, kl+vl)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		m[string(b[:kl])] = b[kl:]
	}
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	return nil
}

type mapSnapshot map[string][]byte

func (s mapSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriter(sink)
	var hdr [8]byte
	for k, v := range s {
		binary.BigEndian.PutUint32(hdr[:4], uint32(len(k)))
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(v)))
		w.Write(hdr[:])
		w.WriteString(k)
		w.Write(v)
	}
	if err := w.Flush(); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (mapSnapshot) Release() {}
