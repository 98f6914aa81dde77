package kv

import (
	"github.com/cohortkv/kv/discovery"
	"github.com/cohortkv/kv/storage"
)

// SetBoltOptions makes the Stores opened from now on open their data files
// with opts, until the returned function restores the defaults. Tests only;
// not safe while Stores are being opened.
func SetBoltOptions(opts storage.BoltOptions) (restore func()) {
	old := boltOptions
	boltOptions = opts
	return func() { boltOptions = old }
}

// SetBootstrapView makes every Store's bootstrap decision see the gossip
// members view(self, members) returns instead of its whole view, until the
// returned function restores it. Tests only.
func SetBootstrapView(view func(self string, members []discovery.Member) []discovery.Member) (restore func()) {
	old := bootstrapView
	bootstrapView = view
	return func() { bootstrapView = old }
}

// SetRestoreHook makes Restore on s call fn before it proposes each chunk
// ("chunk", its number from 0) and the commit ("commit", 0). Set it before
// Restore runs.
func SetRestoreHook(s *Store, fn func(step string, n int)) { s.restoreHook = fn }

// SetRestoreChunkSize sets the size of the chunk entries of Restore on s.
func SetRestoreChunkSize(s *Store, n int) { s.restoreChunk = n }
