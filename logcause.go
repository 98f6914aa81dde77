package kv

import (
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// Raft's LogCache reports a failed StoreLogs as text ("%q"), which loses the
// log store's error: storage.ErrDiskFull or ErrCorrupt could no longer be
// found with errors.Is in the error of the writes of that append. The
// cache goes between two wrappers: the inner one keeps the log store's last
// error, the outer one returns it (raft appends from one goroutine, so the
// last error is the one of this append).

// lastErrLog is the log store under the cache, keeping its last error.
type lastErrLog struct {
	raft.LogStore
	mu   sync.Mutex
	last error
}

func (l *lastErrLog) StoreLogs(logs []*raft.Log) error {
	err := l.LogStore.StoreLogs(logs)
	if err != nil {
		l.mu.Lock()
		l.last = err
		l.mu.Unlock()
	}
	return err
}

func (l *lastErrLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

func (l *lastErrLog) take() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.last
	l.last = nil
	return err
}

// causeLog is the cache over a lastErrLog, as raft sees it.
type causeLog struct {
	raft.LogStore // the cache
	inner         *lastErrLog
}

func (c causeLog) StoreLogs(logs []*raft.Log) error {
	err := c.LogStore.StoreLogs(logs)
	if err != nil {
		if cause := c.inner.take(); cause != nil {
			return fmt.Errorf("kv: raft log: %w", cause)
		}
	}
	return err
}

func (c causeLog) StoreLog(log *raft.Log) error { return c.StoreLogs([]*raft.Log{log}) }

// newCachedLog returns raft's LogCache of size entries over store, with
// the log store's errors kept.
// logCacheEntries is how many of the newest log entries raft keeps in
// memory for replication: with entries of up to maxBatchBytes, at most 64
// MiB.
const logCacheEntries = 64

func newCachedLog(size int, store raft.LogStore) (raft.LogStore, error) {
	inner := &lastErrLog{LogStore: store}
	cache, err := raft.NewLogCache(size, inner)
	if err != nil {
		return nil, err
	}
	return causeLog{LogStore: cache, inner: inner}, nil
}
