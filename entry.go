package kv

import "context"

// Entry is a key with its value and revisions. A revision is the Raft index
// of the log entry that made a change; the store's revision is the index
// of the last entry it applied. Revisions only grow; gaps are allowed (the
// log holds entries that change no key). Writes that share a Raft entry
// (group commit, or one Txn) share its revision; two writes of one key
// never share an entry.
type Entry struct {
	Key   string
	Value []byte
	// CreateRev is the revision of the write that created the key: the
	// first write after it was absent (a delete ends a key's life, the
	// next write creates it anew).
	CreateRev uint64
	// ModRev is the revision of the last write to the key.
	ModRev uint64
	// Version counts the writes since the create: 1 after it. Keys last
	// written by a version of this package that did not count versions
	// report 1 if that write created them and 2 otherwise; their count
	// goes on from there.
	Version uint64
	// Lease is the lease the key is attached to (WithLease, TTL), or 0.
	Lease LeaseID
}

func entryOf(key string, r record) Entry {
	return Entry{Key: key, Value: r.value, CreateRev: r.create, ModRev: r.mod, Version: r.version, Lease: LeaseID(r.lease)}
}

// GetEntry is Get with the key's revisions: it returns the Entry of key, or
// an error wrapping ErrNotFound. Its consistency and options are Get's. The
// returned Value is the caller's.
func (s *Store) GetEntry(ctx context.Context, key string, opts ...ReadOption) (Entry, error) {
	r, err := s.lookup(ctx, key, opts)
	if err != nil {
		return Entry{}, err
	}
	return entryOf(key, r), nil
}

// ListEntries is List with revisions: the entries whose keys start with
// prefix, sorted by key, with List's consistency and options. rev is the
// store revision the result reflects, taken from the same view of the data
// as the entries: every change with a revision up to rev is in the result,
// none after it, so that changes from rev+1 on continue it with no gap. For
// a linearizable read, rev is at least the revision of every write that
// completed before the call. The returned slice and its values are the
// caller's.
func (s *Store) ListEntries(ctx context.Context, prefix string, opts ...ReadOption) (entries []Entry, rev uint64, err error) {
	rev, err = s.scan(ctx, prefix, opts, func(k []byte, r record) int {
		entries = append(entries, entryOf(string(k), r))
		entries[len(entries)-1].Value = cloneValue(r.value)
		return len(entries)
	})
	if err != nil {
		return nil, 0, err
	}
	return entries, rev, nil
}
