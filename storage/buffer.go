package storage

import (
	"bytes"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/google/btree"
)

// Write-behind: Bolt.Update does not commit to the file. Its writes join an
// in-memory layer (pending) that readers consult before the file; a
// background committer moves the layer into the file in one bbolt
// transaction (one pair of fsyncs for many Raft entries) every
// BoltOptions.CommitInterval (1 s), or sooner once it holds flushBytes.
// etcd's backend batches
// its bbolt commits the same way.
//
// Nothing acknowledged depends on it: the Raft log, fsynced on a majority
// before any entry is applied, is the record. After a crash the file's
// applied index lags by what the layers held, and Raft applies those
// entries again from its log (the state machine skips what the file
// already has). Snapshot commits every layer first, so the file is never
// behind the newest snapshot, and Raft never compacts entries the file
// still needs.
const (
	flushInterval = time.Second // the default CommitInterval
	flushBytes    = 16 << 20
	// maxPendingBytes bounds the layer while a commit is slow or failing:
	// past it Update commits itself, and fails if that fails (disk full),
	// so that the state machine retries instead of growing the heap.
	maxPendingBytes = 64 << 20
	// layerItemOverhead approximates the heap cost of one item beyond its
	// key and value.
	layerItemOverhead = 64
)

// layer is a set of writes not yet committed to the file. A published
// layer is never modified: Update works on a lazy clone and publishes the
// clone.
type layer struct {
	t     *btree.BTreeG[layerItem]
	index uint64    // the applied index the layer brings the file to
	bytes int       // approximate heap size of the writes
	since time.Time // when its first write was made
}

type layerItem struct {
	key, value []byte
	del        bool // a deletion: the key is absent whatever the file says
}

func layerLess(a, b layerItem) bool { return bytes.Compare(a.key, b.key) < 0 }

// layerDegree is the B-tree degree of a layer: every Update copies the
// nodes on the path to each key it writes (copy on write), so smaller nodes
// copy less.
const layerDegree = 8

func newLayer() *layer { return &layer{t: btree.NewG(layerDegree, layerLess)} }

func (l *layer) empty() bool { return l == nil || l.t.Len() == 0 }

// get looks key up in l: found says whether l decides it (a value, or a
// deletion when ok is false).
func (l *layer) get(key []byte) (value []byte, ok, found bool) {
	if l == nil {
		return nil, false, false
	}
	it, found := l.t.Get(layerItem{key: key})
	if !found {
		return nil, false, false
	}
	return it.value, !it.del, true
}

// next returns l's first item with a key >= from (or > from when after).
func (l *layer) next(from []byte, after bool) (layerItem, bool) {
	if l == nil {
		return layerItem{}, false
	}
	var out layerItem
	var ok bool
	l.t.AscendGreaterOrEqual(layerItem{key: from}, func(it layerItem) bool {
		if after && bytes.Equal(it.key, from) {
			return true
		}
		out, ok = it, true
		return false
	})
	return out, ok
}

// layeredTx reads through the newest layer, then the one being committed,
// then the file. The three are captured together, so the view is
// consistent: the file holds either everything before flushing or that too.
//
// With cache set (an Update's reads), Get answers for the file from the
// read cache when it can, and caches what it reads: during an Update no
// layer is swapped, so the file differs from the cache only in keys of mid.
type layeredTx struct {
	top, mid *layer // either may be nil
	file     boltTx
	cache    *readCache
	gen      uint64
	cur      *atomic.Uint64
}

func (t layeredTx) Get(key []byte) ([]byte, bool) {
	if v, ok, found := t.top.get(key); found {
		return v, ok
	}
	if v, ok, found := t.mid.get(key); found {
		return v, ok
	}
	if t.cache == nil {
		return t.file.Get(key)
	}
	k := unsafe.String(unsafe.SliceData(key), len(key))
	if v, present, hit := t.cache.get(k, nil); hit {
		return v, present
	}
	v, ok := t.file.Get(key)
	if *t.file.err == nil {
		t.cache.put(k, v, ok, t.gen, t.cur)
	}
	return v, ok
}

// Scan merges the layers and the file in key order; for a key in several,
// the newest wins, and a deletion hides the key.
func (t layeredTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	if t.top.empty() && t.mid.empty() {
		return t.file.Scan(from, fn)
	}
	if from == nil {
		from = []byte{}
	}
	top, topOK := t.top.next(from, false)
	mid, midOK := t.mid.next(from, false)
	stopped := false
	emit := func(it layerItem) bool {
		if it.del {
			return true
		}
		if !fn(it.key, it.value) {
			stopped = true
			return false
		}
		return true
	}
	// drain emits the layers' items below limit (all of them when limit is
	// nil), returning false once fn stops.
	drain := func(limit []byte) bool {
		for topOK || midOK {
			var it layerItem
			switch {
			case topOK && midOK:
				c := bytes.Compare(top.key, mid.key)
				if c <= 0 {
					it = top
				} else {
					it = mid
				}
			case topOK:
				it = top
			default:
				it = mid
			}
			if limit != nil && bytes.Compare(it.key, limit) >= 0 {
				return true
			}
			if !emit(it) {
				return false
			}
			if topOK && bytes.Equal(top.key, it.key) {
				top, topOK = t.top.next(it.key, true)
			}
			if midOK && bytes.Equal(mid.key, it.key) {
				mid, midOK = t.mid.next(it.key, true)
			}
		}
		return true
	}
	err := t.file.Scan(from, func(k, v []byte) bool {
		if !drain(k) {
			return false
		}
		// The layers shadow the file's record of k.
		shadowed := false
		if topOK && bytes.Equal(top.key, k) {
			shadowed = true
			if !emit(top) {
				return false
			}
			top, topOK = t.top.next(k, true)
			if midOK && bytes.Equal(mid.key, k) {
				mid, midOK = t.mid.next(k, true)
			}
		} else if midOK && bytes.Equal(mid.key, k) {
			shadowed = true
			if !emit(mid) {
				return false
			}
			mid, midOK = t.mid.next(k, true)
		}
		if shadowed {
			return true
		}
		if !fn(k, v) {
			stopped = true
			return false
		}
		return true
	})
	if err != nil || stopped {
		return err
	}
	drain(nil)
	return nil
}

// writeLayerTx is the WriteTx of an Update: writes go to next (a clone of
// the pending layer), reads see them first.
type writeLayerTx struct {
	layeredTx
	next *layer
}

func (t writeLayerTx) Put(key, value []byte) error {
	k, v := bytes.Clone(key), bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	t.next.t.ReplaceOrInsert(layerItem{key: k, value: v})
	t.next.bytes += len(k) + len(v) + layerItemOverhead
	return nil
}

func (t writeLayerTx) Delete(key []byte) error {
	t.next.t.ReplaceOrInsert(layerItem{key: bytes.Clone(key), del: true})
	t.next.bytes += len(key) + layerItemOverhead
	return nil
}
