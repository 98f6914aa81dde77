package storage

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
)

// readCache keeps copies of records read from the data file, and of keys
// found absent there, for Lookup: a point read that hits it takes no bbolt
// transaction and allocates nothing but the copy it returns.
//
// It caches the file only: the layers are looked up before it. A commit of
// a layer invalidates the keys it wrote (after bumping gen, under which a
// reader that read the file before the commit would otherwise put back the
// old record), and Restore empties it.
type readCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
	limit  int // bytes per shard
}

const (
	cacheShards = 32
	// cacheBytes is the budget of the cache: enough for the hot keys of
	// most services; data larger than it is served by bbolt as before.
	cacheBytes = 64 << 20
	// cacheEntryOverhead approximates the heap cost of an entry beyond
	// its key and value.
	cacheEntryOverhead = 48
)

type cacheShard struct {
	mu    sync.RWMutex
	m     map[string]*cacheEntry // pointers: refresh updates in place
	bytes int
}

type cacheEntry struct {
	value   []byte // the record, checksum stripped
	present bool   // false: the key is absent from the file
}

func newReadCache(total int) *readCache {
	c := &readCache{seed: maphash.MakeSeed(), limit: total / cacheShards}
	for i := range c.shards {
		c.shards[i].m = map[string]*cacheEntry{}
	}
	return c
}

func (c *readCache) shard(key string) *cacheShard {
	return &c.shards[maphash.String(c.seed, key)%cacheShards]
}

// get appends the cached record of key to dst. hit says whether the cache
// knows the key; present whether it is in the file.
func (c *readCache) get(key string, dst []byte) (out []byte, present, hit bool) {
	sh := c.shard(key)
	sh.mu.RLock()
	ent, hit := sh.m[key]
	present = hit && ent.present
	if present {
		dst = append(dst, ent.value...)
	}
	sh.mu.RUnlock()
	return dst, present, hit
}

// put records what the file holds for key, as read in a transaction begun
// while gen was the current generation: if a commit has happened since,
// the record may be outdated and is not kept.
func (c *readCache) put(key string, value []byte, present bool, gen uint64, current *atomic.Uint64) {
	size := len(key) + len(value) + cacheEntryOverhead
	if size > c.limit/4 {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if current.Load() != gen {
		return
	}
	if old, ok := sh.m[key]; ok {
		delete(sh.m, key)
		sh.bytes -= len(key) + len(old.value) + cacheEntryOverhead
	}
	// Evict arbitrary entries (map order is random) until it fits.
	for k, ent := range sh.m {
		if sh.bytes+size <= c.limit {
			break
		}
		delete(sh.m, k)
		sh.bytes -= len(k) + len(ent.value) + cacheEntryOverhead
	}
	var v []byte
	if present {
		v = append(make([]byte, 0, len(value)), value...)
	}
	sh.m[strings.Clone(key)] = &cacheEntry{value: v, present: present} // key may alias a caller's bytes
	sh.bytes += size
}

// refresh records what a commit wrote for key, if the cache knows key (it
// does not take in keys nobody read): value, or absent when del.
func (c *readCache) refresh(key, value []byte, del bool) {
	sh := c.shard(string(key))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ent, ok := sh.m[string(key)]
	if !ok {
		return
	}
	sh.bytes -= len(ent.value)
	if del {
		ent.value, ent.present = nil, false
		return
	}
	if len(key)+len(value)+cacheEntryOverhead > c.limit/4 {
		delete(sh.m, string(key))
		sh.bytes -= len(key) + cacheEntryOverhead
		return
	}
	// Reuse the old copy's memory when it fits.
	ent.value = append(ent.value[:0], value...)
	ent.present = true
	sh.bytes += len(value)
}

// clear drops everything.
func (c *readCache) clear() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		clear(sh.m)
		sh.bytes = 0
		sh.mu.Unlock()
	}
}
