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

// A stored value: a version byte, the create and modify revisions (the Raft
// indexes of the entries that created and last wrote the key), the value.
const (
	recVersion = 1
	recHeader  = 17
)

func encodeRecord(create, mod uint64, value []byte) []byte {
	b := make([]byte, recHeader+len(value))
	b[0] = recVersion
	binary.BigEndian.PutUint64(b[1:], create)
	binary.BigEndian.PutUint64(b[9:], mod)
	copy(b[recHeader:], value)
	return b
}

type record struct {
	create, mod uint64
	value       []byte // aliases the engine's memory
}

func decodeRecord(b []byte) (record, error) {
	if len(b) < recHeader || b[0] != recVersion {
		return record{}, fmt.Errorf("kv: corrupt value record of %d bytes", len(b))
	}
	return record{
		create: binary.BigEndian.Uint64(b[1:]),
		mod:    binary.BigEndian.Uint64(b[9:]),
		value:  b[recHeader:],
	}, nil
}
