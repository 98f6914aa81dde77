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
// BoltOptions.CommitInterval (4 s), or sooner once it holds flushBytes.
// etcd's backend batches its bbolt commits the same way.
//
// Nothing acknowledged depends on it: the Raft log, fsynced on a majority
// before any entry is applied, is the record. After a crash the file's
// applied index lags by what the layers held, and Raft applies those
// entries again from its log (the state machine skips what the file
// already has). Snapshot commits every layer first, so the file is never
// behind the newest snapshot, and Raft never compacts entries the file
// still needs.
//
// Why 4 s and 24 MiB: a commit rewrites every page of the file that one of
// its writes touches, and writes spread over a file of many pages touch
// most of them whatever their number; so the cost of a commit grows with
// the file more than with the writes, and fewer, larger commits cost less
// per write (a commit every 65,536 random writes over 100,000 keys takes
// about 40% less CPU per write than one every 16,384:
// BenchmarkBoltRandomWrites). The bounds: a layer holds at most about
// flushBytes of heap (two while one is being committed), and after a crash
// at most that much, or CommitInterval, of the log is applied again.
const (
	flushInterval = 4 * time.Second // the default CommitInterval
	// flushBytes is the size at which a layer is committed whatever its
	// age: about 80,000 writes of 17-byte keys and 100-byte values.
	flushBytes = 24 << 20
	// maxPendingBytes bounds the layer while a commit is slow or failing:
	// past it Update commits itself, and fails if that fails (disk full),
	// so that the state machine retries instead of growing the heap.
	maxPendingBytes = 64 << 20
	// layerItemOverhead approximates the heap cost of one item beyond its
	// key and value: its B-tree slot and its entry in the layer's index.
	layerItemOverhead = 160
)

// layer is a set of writes not yet committed to the file. Update fills the
// pending layer in place under the engine's lock; a view takes a clone of
// it (copy on write), which later writes leave as it was, and the layer
// being committed is not modified.
//
// The layer that Update fills (pending) also indexes its items by key in
// a hash map, idx: the state machine reads the record each write replaces,
// and a lookup in the map costs the same whatever the layer holds, where
// one in the B-tree walks a path of nodes that grows with it. idx changes
// with the tree, under the same lock; a clone taken for a view has none
// (it would go on changing with the live layer) and is read through its
// tree.
type layer struct {
	t     *btree.BTreeG[layerItem]
	idx   map[string]layerItem // the items of t by key, or nil
	index uint64               // the applied index the layer brings the file to
	bytes int                  // approximate heap size of the writes
	since time.Time            // when its first write was made
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

// newIndexedLayer returns an empty layer with an index, for Update to fill.
func newIndexedLayer() *layer {
	l := newLayer()
	l.idx = map[string]layerItem{}
	return l
}

// put adds it to l (replacing an item of the same key); k is it.key as a
// string sharing its bytes.
func (l *layer) put(k string, it layerItem) {
	l.t.ReplaceOrInsert(it)
	if l.idx != nil {
		l.idx[k] = it
	}
}

func (l *layer) empty() bool { return l == nil || l.t.Len() == 0 }

// get looks key up in l: found says whether l decides it (a value, or a
// deletion when ok is false).
func (l *layer) get(key []byte) (value []byte, ok, found bool) {
	if l == nil {
		return nil, false, false
	}
	if l.idx != nil {
		it, found := l.idx[string(key)] // no copy: the conversion is only a map key
		if !found {
			return nil, false, false
		}
		return it.value, !it.del, true
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
	// extra, when set, is a layer newer than top (an Update's own writes,
	// for Scan).
	extra *layer
}

func (t layeredTx) Get(key []byte) ([]byte, bool) {
	if v, ok, found := t.extra.get(key); found {
		return v, ok
	}
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

// layerCursor walks one layer in key order.
type layerCursor struct {
	l   *layer
	it  layerItem
	ok  bool
	pos int // the layer's age: 0 is the newest
}

// Scan merges the layers and the file in key order; for a key in several,
// the newest wins, and a deletion hides the key.
func (t layeredTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	var curs []*layerCursor
	for i, l := range []*layer{t.extra, t.top, t.mid} {
		if !l.empty() {
			curs = append(curs, &layerCursor{l: l, pos: i})
		}
	}
	if len(curs) == 0 {
		return t.file.Scan(from, fn)
	}
	if from == nil {
		from = []byte{}
	}
	for _, c := range curs {
		c.it, c.ok = c.l.next(from, false)
	}
	stopped := false
	// head returns the cursor holding the smallest key (the newest layer
	// among equal keys), or nil when every layer is done.
	head := func() *layerCursor {
		var best *layerCursor
		for _, c := range curs {
			if !c.ok {
				continue
			}
			if best == nil {
				best = c
				continue
			}
			if d := bytes.Compare(c.it.key, best.it.key); d < 0 || d == 0 && c.pos < best.pos {
				best = c
			}
		}
		return best
	}
	// advance moves every cursor at key past it.
	advance := func(key []byte) {
		for _, c := range curs {
			if c.ok && bytes.Equal(c.it.key, key) {
				c.it, c.ok = c.l.next(key, true)
			}
		}
	}
	// drain emits the layers' items below limit (all of them when limit is
	// nil), returning false once fn stops.
	drain := func(limit []byte) bool {
		for {
			h := head()
			if h == nil || limit != nil && bytes.Compare(h.it.key, limit) >= 0 {
				return true
			}
			it := h.it
			advance(it.key)
			if !it.del && !fn(it.key, it.value) {
				stopped = true
				return false
			}
		}
	}
	err := t.file.Scan(from, func(k, v []byte) bool {
		if !drain(k) {
			return false
		}
		// The layers shadow the file's record of k.
		if h := head(); h != nil && bytes.Equal(h.it.key, k) {
			it := h.it
			advance(k)
			if !it.del && !fn(it.key, it.value) {
				stopped = true
				return false
			}
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

// writeBuf holds the writes of one Update until it succeeds.
type writeBuf struct {
	m     map[string]layerItem
	bytes int
	// sorted holds the writes in key order once a Scan has needed them,
	// and is kept up to date from then on, so that an Update that scans
	// often does not sort its writes again each time.
	sorted *layer
}

func (b *writeBuf) set(k string, it layerItem) {
	b.m[k] = it
	if b.sorted != nil {
		b.sorted.t.ReplaceOrInsert(it)
	}
}

// writeLayerTx is the WriteTx of an Update: writes go to buf, reads see
// them first.
type writeLayerTx struct {
	layeredTx
	buf *writeBuf
}

func (t writeLayerTx) Get(key []byte) ([]byte, bool) {
	if it, ok := t.buf.m[string(key)]; ok {
		return it.value, !it.del
	}
	return t.layeredTx.Get(key)
}

func (t writeLayerTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	if len(t.buf.m) == 0 {
		return t.layeredTx.Scan(from, fn)
	}
	// The buffer as one more layer, the newest, sorted once.
	if t.buf.sorted == nil {
		l := newLayer()
		for _, it := range t.buf.m {
			l.t.ReplaceOrInsert(it)
		}
		t.buf.sorted = l
	}
	lt := t.layeredTx
	lt.extra = t.buf.sorted
	return lt.Scan(from, fn)
}

// Put and Delete key the buffer by a copy of key whose bytes also serve as
// the item's key (never written to).
func (t writeLayerTx) Put(key, value []byte) error {
	k, v := string(key), bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	t.buf.set(k, layerItem{key: unsafe.Slice(unsafe.StringData(k), len(k)), value: v})
	t.buf.bytes += len(k) + len(v) + layerItemOverhead
	return nil
}

func (t writeLayerTx) Delete(key []byte) error {
	k := string(key)
	t.buf.set(k, layerItem{key: unsafe.Slice(unsafe.StringData(k), len(k)), del: true})
	t.buf.bytes += len(k) + layerItemOverhead
	return nil
}
