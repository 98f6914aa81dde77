package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestFSMCommandRoundTrip(t *testing.T) {
	big := strings.Repeat("v", 1<<20)
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"term marker", nil},
		{"one set", []op{setOp("k", "v")}},
		{"empty value", []op{setOp("k", "")}},
		{"delete", []op{delOp("k")}},
		{"mixed", []op{setOp("a", "1"), delOp("b"), setOp("a", "2"), delOp("a")}},
		{"binary", []op{{Kind: opSet, Key: "\x00\xff\xfe key", Value: []byte{0, 1, 0xff, 0xc1}}}},
		{"large value", []op{setOp("big", big)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mustEncodeCommand(t, tc.ops...)
			if b[0] != cmdVersion {
				t.Fatalf("version byte %d, want %d", b[0], cmdVersion)
			}
			c, err := decodeCommand(b)
			if err != nil {
				t.Fatalf("decodeCommand: %v", err)
			}
			if len(c.Ops) != len(tc.ops) {
				t.Fatalf("%d ops decoded, want %d", len(c.Ops), len(tc.ops))
			}
			for i, o := range c.Ops {
				w := tc.ops[i]
				if o.Kind != w.Kind || o.Key != w.Key || !bytes.Equal(o.Value, w.Value) {
					t.Errorf("op %d = %+v, want %+v", i, o, w)
				}
			}
		})
	}
}

func TestDecodeCommandErrors(t *testing.T) {
	valid := mustEncodeCommand(t, setOp("key", "value"), delOp("other"))
	badKind := mustEncodeCommand(t, setOp("a", "1"), op{Kind: 3, Key: "b"})
	zeroKind := mustEncodeCommand(t, op{Kind: 0, Key: "b"})
	emptyKey := mustEncodeCommand(t, setOp("a", "1"), setOp("", "x"))
	emptyDeleteKey := mustEncodeCommand(t, delOp(""))
	for _, tc := range []struct {
		name string
		b    []byte
		is   error
	}{
		{"nil", nil, nil},
		{"empty", []byte{}, nil},
		{"version only", []byte{cmdVersion}, nil},
		{"version 0", append([]byte{0}, valid[1:]...), nil},
		{"version 2", append([]byte{2}, valid[1:]...), nil},
		{"version 255", append([]byte{0xff}, valid[1:]...), nil},
		{"truncated by one", valid[:len(valid)-1], nil},
		{"truncated in half", valid[:len(valid)/2], nil},
		{"not a map", []byte{cmdVersion, 0x05}, nil},
		{"reserved byte", []byte{cmdVersion, 0xc1}, nil},
		{"ops not an array", []byte{cmdVersion, 0x81, 0xa1, 'o', 0x05}, nil},
		{"ops of huge length", []byte{cmdVersion, 0x81, 0xa1, 'o', 0xdd, 0xff, 0xff, 0xff, 0xff}, nil},
		{"key of huge length", []byte{cmdVersion, 0x81, 0xa1, 'o', 0x91, 0x82, 0xa1, 'k', 0x01, 0xa1, 'y', 0xdb, 0xff, 0xff, 0xff, 0xff}, nil},
		{"unknown op kind", badKind, nil},
		{"op kind 0", zeroKind, nil},
		{"empty key", emptyKey, ErrEmptyKey},
		{"empty key in delete", emptyDeleteKey, ErrEmptyKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := decodeCommand(tc.b)
			if err == nil {
				t.Fatalf("decodeCommand(%x) = %+v, want an error", tc.b, c)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
		})
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, ops := range [][]op{
		nil,
		{setOp("k", "v")},
		{setOp("a", "1"), delOp("b"), setOp("a", "")},
		{{Kind: 3, Key: "x"}},
		{setOp("", "x")},
	} {
		b, err := encodeCommand(&command{Ops: ops})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{2, 0x80})
	f.Add([]byte{cmdVersion, 0xc1})
	f.Add([]byte{cmdVersion, 0x81, 0xa1, 'o', 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCommand(b)
		if err != nil {
			return
		}
		for _, o := range c.Ops {
			if o.Kind != opSet && o.Kind != opDelete || o.Key == "" {
				t.Fatalf("decodeCommand(%x) accepted op %+v", b, o)
			}
		}
		b2, err := encodeCommand(&c)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", c, err)
		}
		c2, err := decodeCommand(b2)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(c2.Ops) != len(c.Ops) {
			t.Fatalf("re-decode: %d ops, want %d", len(c2.Ops), len(c.Ops))
		}
		for i := range c.Ops {
			if c.Ops[i].Kind != c2.Ops[i].Kind || c.Ops[i].Key != c2.Ops[i].Key || !bytes.Equal(c.Ops[i].Value, c2.Ops[i].Value) {
				t.Fatalf("re-decode: op %d = %+v, want %+v", i, c2.Ops[i], c.Ops[i])
			}
		}
	})
}

// record1 is a value record of format 1, as versions before revisions
// counted versions wrote it.
func record1(create, mod uint64, value string) []byte {
	b := []byte{recVersion1}
	b = binary.BigEndian.AppendUint64(b, create)
	b = binary.BigEndian.AppendUint64(b, mod)
	return append(b, value...)
}

func TestRecordRoundTrip(t *testing.T) {
	b := encodeRecord(nil, 3, 7, 4, []byte("value"))
	r, err := decodeRecord(b)
	if err != nil || r.create != 3 || r.mod != 7 || r.version != 4 || string(r.value) != "value" {
		t.Fatalf("decodeRecord = %+v, %v", r, err)
	}
	// encodeRecord appends.
	if b2 := encodeRecord([]byte("x"), 3, 7, 4, []byte("value")); !bytes.Equal(b2[1:], b) {
		t.Errorf("encodeRecord appended %x, want %x", b2[1:], b)
	}
	for _, bad := range [][]byte{nil, b[:recHeader-1], append([]byte{3}, b[1:]...), append([]byte{0}, b[1:]...), record1(1, 1, "")[:recHeader1-1]} {
		if _, err := decodeRecord(bad); err == nil {
			t.Errorf("decodeRecord(%x) succeeded", bad)
		}
	}
}

func TestRecordFormat1(t *testing.T) {
	for _, tc := range []struct {
		b       []byte
		want    record
		comment string
	}{
		{record1(5, 5, "v"), record{create: 5, mod: 5, version: 1, value: []byte("v")}, "created by its last write: exactly 1"},
		{record1(5, 9, "v"), record{create: 5, mod: 9, version: 2, value: []byte("v")}, "written again since: at least 2"},
		{record1(5, 9, ""), record{create: 5, mod: 9, version: 2, value: []byte{}}, "empty value"},
	} {
		r, err := decodeRecord(tc.b)
		if err != nil || r.create != tc.want.create || r.mod != tc.want.mod || r.version != tc.want.version || !bytes.Equal(r.value, tc.want.value) {
			t.Errorf("%s: decodeRecord(%x) = %+v, %v; want %+v", tc.comment, tc.b, r, err, tc.want)
		}
	}
}

// FuzzDecodeRecord: a stored value record read back from the data file
// either decodes to what its bytes say or is refused; it never panics.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(nil, 1, 2, 2, []byte("value")))
	f.Add(encodeRecord(nil, 0, 0, 0, nil))
	f.Add(record1(1, 2, "value"))
	f.Add([]byte{})
	f.Add([]byte{recVersion})
	f.Add([]byte{9, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again := encodeRecord(nil, r.create, r.mod, r.version, r.value)
		if b[0] == recVersion1 {
			again = record1(r.create, r.mod, string(r.value))
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("record %x decodes to %+v, which encodes to %x", b, r, again)
		}
	})
}
