package kv

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// A command is the payload of one Raft log entry: a version byte, then a
// msgpack-encoded command. A command holds a batch of operations applied
// atomically; a command with no operations (the leader's term marker) only
// advances the applied index. Fields are keyed by short names and decoding
// ignores unknown ones, so later versions can add fields (client IDs for
// exactly-once retries, compare-and-set revisions, TTLs) without a migration.
const cmdVersion byte = 1

// Operation kinds.
const (
	opSet    uint8 = 1
	opDelete uint8 = 2
)

type op struct {
	Kind  uint8  `codec:"k"`
	Key   string `codec:"y"`
	Value []byte `codec:"v,omitempty"`
}

type command struct {
	Ops []op `codec:"o,omitempty"`
}

var cmdHandle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.RawToString = true
	h.WriteExt = true
	return h
}()

func encodeCommand(c *command) ([]byte, error) {
	var b []byte
	if err := codec.NewEncoderBytes(&b, cmdHandle).Encode(c); err != nil {
		return nil, err
	}
	out := make([]byte, 1+len(b))
	out[0] = cmdVersion
	copy(out[1:], b)
	return out, nil
}

// decodeCommand decodes a log entry's payload. It never panics.
func decodeCommand(b []byte) (c command, err error) {
	if len(b) == 0 || b[0] != cmdVersion {
		if len(b) == 0 {
			return c, errors.New("kv: empty command")
		}
		return c, fmt.Errorf("kv: unknown command version %d", b[0])
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("kv: malformed command: %v", r)
		}
	}()
	if err := codec.NewDecoderBytes(b[1:], cmdHandle).Decode(&c); err != nil {
		return c, fmt.Errorf("kv: malformed command: %w", err)
	}
	for _, o := range c.Ops {
		if o.Kind != opSet && o.Kind != opDelete {
			return c, fmt.Errorf("kv: unknown operation %d", o.Kind)
		}
		if o.Key == "" {
			return c, ErrEmptyKey
		}
	}
	return c, nil
}

// A stored value, as the data file keeps it under its key: a format byte,
// the key's create and modify revisions (the Raft indexes of the entries
// that created it and last wrote it), its version (writes since the create,
// 1 after it), then the value. Integers are 8 bytes big endian.
//
// Format 1, written before versions were counted, has no version: it
// decodes with version 1 when the key's last write created it (create ==
// mod), which is exact, and 2 otherwise, a lower bound (the key was written
// at least twice). The next write stores format 2 and counts on from there.
const (
	recVersion1 = 1
	recHeader1  = 17
	recVersion  = 2
	recHeader   = 25
)

// encodeRecord appends the record to dst.
func encodeRecord(dst []byte, create, mod, version uint64, value []byte) []byte {
	dst = append(dst, recVersion)
	dst = binary.BigEndian.AppendUint64(dst, create)
	dst = binary.BigEndian.AppendUint64(dst, mod)
	dst = binary.BigEndian.AppendUint64(dst, version)
	return append(dst, value...)
}

type record struct {
	create, mod, version uint64
	value                []byte // aliases the record
}

func decodeRecord(b []byte) (record, error) {
	switch {
	case len(b) >= recHeader && b[0] == recVersion:
		return record{
			create:  binary.BigEndian.Uint64(b[1:]),
			mod:     binary.BigEndian.Uint64(b[9:]),
			version: binary.BigEndian.Uint64(b[17:]),
			value:   b[recHeader:],
		}, nil
	case len(b) >= recHeader1 && b[0] == recVersion1:
		r := record{
			create:  binary.BigEndian.Uint64(b[1:]),
			mod:     binary.BigEndian.Uint64(b[9:]),
			version: 2,
			value:   b[recHeader1:],
		}
		if r.create == r.mod {
			r.version = 1
		}
		return r, nil
	}
	return record{}, fmt.Errorf("kv: corrupt value record of %d bytes", len(b))
}
