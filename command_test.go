package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/cohortkv/kv/internal/storage"
)

// encodeEntry1 encodes ops as versions before revisions wrote them.
func encodeEntry1(t testing.TB, ops ...Op) []byte {
	t.Helper()
	var c command1
	for _, o := range ops {
		c.Ops = append(c.Ops, op1{Kind: o.kind, Key: o.key, Value: o.value})
	}
	var b []byte
	if err := codec.NewEncoderBytes(&b, cmdHandle).Encode(&c); err != nil {
		t.Fatal(err)
	}
	return append([]byte{cmdVersion1}, b...)
}

// sameCommand says how a and b differ, or "" when they do not.
func sameCommand(a, b *command) string {
	if a.kind != b.kind || a.seq != b.seq || a.nonce != b.nonce || a.n != b.n || a.term != b.term || a.seq != 0 && a.sess != b.sess {
		return fmt.Sprintf("kind/session/seq/nonce/n %d %x %d %d %d, want %d %x %d %d %d", a.kind, a.sess, a.seq, a.nonce, a.n, b.kind, b.sess, b.seq, b.nonce, b.n)
	}
	if len(a.conds) != len(b.conds) || len(a.then) != len(b.then) || len(a.els) != len(b.els) {
		return fmt.Sprintf("%d/%d/%d conditions/then/else, want %d/%d/%d", len(a.conds), len(a.then), len(a.els), len(b.conds), len(b.then), len(b.els))
	}
	for i := range a.conds {
		x, y := a.conds[i], b.conds[i]
		if x.kind != y.kind || x.key != y.key || x.n != y.n || !bytes.Equal(x.value, y.value) {
			return fmt.Sprintf("condition %d = %+v, want %+v", i, x, y)
		}
	}
	for _, br := range [][2][]Op{{a.then, b.then}, {a.els, b.els}} {
		for i := range br[0] {
			x, y := br[0][i], br[1][i]
			if x.kind != y.kind || x.key != y.key || !bytes.Equal(x.value, y.value) || x.lease != y.lease || x.ttl != y.ttl {
				return fmt.Sprintf("operation %d = %+v, want %+v", i, x, y)
			}
		}
	}
	return ""
}

func TestCommandRoundTrip(t *testing.T) {
	big := strings.Repeat("v", 1<<20)
	s1, s2 := newSessionID(7, 0xfeedface), newSessionID(9, 1)
	set := func(k, v string) Op { return OpSet(k, []byte(v)) }
	txn := func(sess sessionID, seq, floor uint64, conds []Cond, then, els []Op) command {
		return command{kind: cmdTxn, sess: sess, seq: seq, floor: floor, conds: conds, then: then, els: els}
	}
	for _, tc := range []struct {
		name   string
		time   uint64
		groups [][]command
	}{
		{"term marker", 0, nil},
		{"one set", 1700000000000, [][]command{{txn(sessionID{}, 0, 0, nil, []Op{set("k", "v")}, nil)}}},
		{"empty value", 1, [][]command{{txn(s1, 1, 1, nil, []Op{set("k", "")}, nil)}}},
		{"delete", 2, [][]command{{txn(s1, 5, 3, nil, []Op{OpDelete("k")}, nil)}}},
		{"register", 3, [][]command{{{kind: cmdRegister, nonce: 0x0102030405060708}}}},
		{"compare-and-set", 4, [][]command{{txn(s2, 1<<40, 1<<39, []Cond{ModRevIs("k", 12)}, []Op{set("k", "v")}, []Op{OpGet("k")})}}},
		{"every condition", 5, [][]command{{txn(s1, 2, 1, []Cond{ModRevIs("a", 0), VersionIs("b", 3), ValueIs("c", []byte("x")), ValueIs("c2", nil), Exists("d"), Absent("e")}, []Op{set("a", "1"), OpDelete("b"), OpGet("c")}, []Op{OpGet("a"), OpGet("b")})}}},
		{"binary", 6, [][]command{{txn(s1, 3, 1, nil, []Op{{kind: opSet, key: "\x00\xff\xfe key", value: []byte{0, 1, 0xff, 0xc1}}}, nil)}}},
		{"large value", 7, [][]command{{txn(s1, 4, 1, nil, []Op{set("big", big)}, nil)}}},
		{"group commit", 8, [][]command{
			{txn(s1, 10, 9, nil, []Op{set("a", "1")}, nil)},
			{txn(s2, 3, 2, []Cond{Exists("x")}, nil, []Op{OpGet("x")}), txn(s2, 4, 2, nil, []Op{OpDelete("y")}, nil)},
			{txn(s1, 11, 10, nil, []Op{set("b", "2")}, nil), {kind: cmdRegister, nonce: 9}},
			{txn(sessionID{}, 0, 0, nil, []Op{set("c", "3")}, nil)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeEntry(tc.time, tc.groups...)
			if b[0] != cmdVersion {
				t.Fatalf("format byte %d, want %d", b[0], cmdVersion)
			}
			d, err := decodeEntry(b)
			if err != nil {
				t.Fatalf("decodeEntry: %v", err)
			}
			if d.time != tc.time {
				t.Errorf("time %d, want %d", d.time, tc.time)
			}
			var want []command
			for _, g := range tc.groups {
				want = append(want, g...)
			}
			if len(d.cmds) != len(want) {
				t.Fatalf("%d commands decoded, want %d", len(d.cmds), len(want))
			}
			// Each session is listed once, with the highest floor of its
			// commands.
			floors := map[sessionID]uint64{}
			for _, c := range want {
				if c.seq != 0 {
					floors[c.sess] = max(floors[c.sess], c.floor)
				}
			}
			for i := range d.cmds {
				if diff := sameCommand(&d.cmds[i], &want[i]); diff != "" {
					t.Errorf("command %d: %s", i, diff)
				}
				if c := d.cmds[i]; c.seq != 0 && c.floor != floors[c.sess] {
					t.Errorf("command %d: floor %d, want %d", i, c.floor, floors[c.sess])
				}
			}
		})
	}
}

func TestCommandFormat1(t *testing.T) {
	b := encodeEntry1(t, OpSet("a", []byte("1")), OpDelete("b"), OpSet("a", nil))
	d, err := decodeEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	want := command{kind: cmdTxn, then: []Op{OpSet("a", []byte("1")), OpDelete("b"), OpSet("a", nil)}}
	if len(d.cmds) != 1 || d.time != 0 {
		t.Fatalf("decoded %+v", d)
	}
	if diff := sameCommand(&d.cmds[0], &want); diff != "" {
		t.Fatal(diff)
	}
	if d, err := decodeEntry(encodeEntry1(t)); err != nil || len(d.cmds) != 0 {
		t.Fatalf("a format 1 term marker: %+v, %v", d, err)
	}
	for _, bad := range []struct {
		b  []byte
		is error
	}{
		{encodeEntry1(t, OpSet("a", nil), Op{kind: opGet, key: "b"}), nil},
		{encodeEntry1(t, Op{kind: 0, key: "b"}), nil},
		{encodeEntry1(t, OpSet("", []byte("x"))), ErrEmptyKey},
		{[]byte{cmdVersion1, 0xc1}, nil},
		{[]byte{cmdVersion1, 0x81, 0xa1, 'o', 0xdd, 0xff, 0xff, 0xff, 0xff}, nil},
		{[]byte{cmdVersion1, 0x81, 0xa1, 'o', 0x91, 0x82, 0xa1, 'k', 0x01, 0xa1, 'y', 0xdb, 0xff, 0xff, 0xff, 0xff}, nil},
	} {
		if d, err := decodeEntry(bad.b); err == nil || bad.is != nil && !errors.Is(err, bad.is) {
			t.Errorf("decodeEntry(%x) = %+v, %v; want an error (%v)", bad.b, d, err, bad.is)
		}
	}
}

func TestDecodeEntryErrors(t *testing.T) {
	s1 := newSessionID(1, 2)
	valid := encodeEntry(5, []command{{kind: cmdTxn, sess: s1, seq: 3, floor: 1, conds: []Cond{ValueIs("c", []byte("v"))}, then: []Op{OpSet("key", []byte("value")), OpDelete("other")}, els: []Op{OpGet("g")}}})
	// Every cut of a valid entry fails, and never panics.
	for n := 0; n < len(valid); n++ {
		if d, err := decodeEntry(valid[:n]); err == nil {
			t.Errorf("decodeEntry of the first %d of %d bytes = %+v, want an error", n, len(valid), d)
		}
	}
	hdr := []byte{cmdVersion, 5, 0} // time 5, no sessions
	cmd := func(rest ...byte) []byte { return append(append(append([]byte(nil), hdr...), 1), rest...) }
	for _, tc := range []struct {
		name string
		b    []byte
		is   error
	}{
		{"nil", nil, errMalformed},
		{"format 0", append([]byte{0}, valid[1:]...), errMalformed},
		{"format 5", append([]byte{5}, valid[1:]...), errMalformed},
		{"quota command in format 3", append([]byte{cmdVersion3}, encodeEntry(5, []command{{kind: cmdSetQuota, n: 10, term: 2}})[1:]...), errMalformed},
		{"lease command in format 2", cmd(cmdGrant, 0, 5), errMalformed},
		{"lease operation in format 2", cmd(cmdTxn, 0, 0, 1, opSetTTL, 1, 'k', 0, 5, 0), errMalformed},
		{"format 255", append([]byte{0xff}, valid[1:]...), errMalformed},
		{"trailing byte", append(append([]byte(nil), valid...), 0), errMalformed},
		{"huge session count", []byte{cmdVersion, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}, errMalformed},
		{"huge command count", []byte{cmdVersion, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, errMalformed},
		{"unknown command kind", cmd(9), errMalformed},
		{"session out of range", cmd(cmdTxn, 1, 1, 0, 0, 0), errMalformed},
		{"sequence 0", append([]byte{cmdVersion, 5, 1}, append(make([]byte, 16), 1, 1, cmdTxn, 1, 0, 0, 0, 0)...), errMalformed},
		{"unknown condition", cmd(cmdTxn, 0, 1, 9, 1, 'k', 0, 0), errMalformed},
		{"condition with an empty key", cmd(cmdTxn, 0, 1, condExists, 0, 0, 0), ErrEmptyKey},
		{"unknown operation", cmd(cmdTxn, 0, 0, 1, 9, 1, 'k', 0), errMalformed},
		{"operation with an empty key", cmd(cmdTxn, 0, 0, 1, opDelete, 0, 0), ErrEmptyKey},
		{"key longer than the entry", cmd(cmdTxn, 0, 0, 1, opDelete, 0x7f, 'k', 0), errMalformed},
		{"value longer than the entry", cmd(cmdTxn, 0, 0, 1, opSet, 1, 'k', 0x7f, 0), errMalformed},
		{"short register", cmd(cmdRegister, 1, 2, 3), errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := decodeEntry(tc.b)
			if err == nil {
				t.Fatalf("decodeEntry(%x) = %+v, want an error", tc.b, d)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
		})
	}
}

func FuzzDecodeCommand(f *testing.F) {
	s1 := newSessionID(1, 2)
	for _, g := range [][]command{
		nil,
		{{kind: cmdTxn, then: []Op{OpSet("k", []byte("v"))}}},
		{{kind: cmdTxn, sess: s1, seq: 4, floor: 2, conds: []Cond{ModRevIs("a", 3), ValueIs("b", nil), Exists("c"), VersionIs("d", 1)}, then: []Op{OpSet("a", []byte("1")), OpDelete("b")}, els: []Op{OpGet("a")}}},
		{{kind: cmdRegister, nonce: 7}, {kind: cmdTxn, then: []Op{OpDelete("x")}}},
		// Format 3: lease commands and operations.
		{{kind: cmdGrant, n: 5000}, {kind: cmdKeepAlive, sess: s1, seq: 5, floor: 2, n: 3}, {kind: cmdRevoke, n: 1 << 40}, {kind: cmdExpire, n: 1}, {kind: cmdExpire, n: 2, term: 7}},
		{{kind: cmdTxn, then: []Op{{kind: opSet, key: "l", value: []byte("v"), lease: 7}, {kind: opSet, key: "t", value: nil, ttl: 250}}, els: []Op{{kind: opSet, key: "e", lease: 1}}}},
		// Format 4: the quota command.
		{{kind: cmdSetQuota, n: 1 << 30, term: 3}, {kind: cmdSetQuota, sess: s1, seq: 6, floor: 2, term: 4}, {kind: cmdGrant, n: 5000}},
	} {
		b := encodeEntry(9, g)
		f.Add(b)
		f.Add(b[:len(b)-1])
		if b[0] == cmdVersion3 {
			f.Add(append([]byte{cmdVersion}, b[1:]...)) // as a format 2 entry
		}
	}
	f.Add([]byte{})
	f.Add([]byte{cmdVersion1, 0xc1})
	f.Add([]byte{cmdVersion1, 0x81, 0xa1, 'o', 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeEntry(b)
		if err != nil {
			return
		}
		for i := range d.cmds {
			c := &d.cmds[i]
			if c.kind != cmdTxn && c.kind != cmdRegister && !isLeaseCmd(c.kind) && c.kind != cmdSetQuota {
				t.Fatalf("decodeEntry(%x) accepted command kind %d", b, c.kind)
			}
			if c.kind == cmdSetQuota && (b[0] != cmdVersion4 || c.n > maxQuota || c.count() != 0) {
				t.Fatalf("decodeEntry(%x) accepted quota command %+v", b, c)
			}
			if isLeaseCmd(c.kind) && (b[0] != cmdVersion3 && b[0] != cmdVersion4 || c.n == 0 || c.n > maxLeaseN || c.count() != 0) {
				t.Fatalf("decodeEntry(%x) accepted lease command %+v", b, c)
			}
			for _, o := range append(append([]Op(nil), c.then...), c.els...) {
				if o.kind < opSet || o.kind > opGet || o.key == "" {
					t.Fatalf("decodeEntry(%x) accepted op %+v", b, o)
				}
				if (o.lease != 0 || o.ttl != 0) && (b[0] != cmdVersion3 && b[0] != cmdVersion4 || o.kind != opSet || o.lease != 0 && o.ttl != 0) {
					t.Fatalf("decodeEntry(%x) accepted lease operation %+v (a format 2 reader must refuse it)", b, o)
				}
			}
			for _, k := range c.conds {
				if k.kind < condModRev || k.kind > condExists || k.key == "" {
					t.Fatalf("decodeEntry(%x) accepted condition %+v", b, k)
				}
			}
		}
		d2, err := decodeEntry(encodeEntry(d.time, d.cmds))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(d2.cmds) != len(d.cmds) {
			t.Fatalf("re-decode: %d commands, want %d", len(d2.cmds), len(d.cmds))
		}
		for i := range d.cmds {
			if diff := sameCommand(&d2.cmds[i], &d.cmds[i]); diff != "" {
				t.Fatalf("re-decode: command %d: %s", i, diff)
			}
		}
	})
}

func TestResultsRoundTrip(t *testing.T) {
	res := []cmdResult{
		{status: resOK, rev: 9},
		{status: resFailed, rev: 10, gets: []Entry{{Key: "a", Value: []byte("x"), CreateRev: 3, ModRev: 8, Version: 2}, {Key: "gone"}, {Key: "e", Value: []byte{}, CreateRev: 4, ModRev: 4, Version: 1}}},
		{status: resNoSession},
		{status: resStale},
		{status: resTooLarge, rev: 11},
	}
	b := appendResults([]byte("prefix"), res)
	got, err := decodeResults(b[len("prefix"):])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(res) {
		t.Fatalf("decoded %v, want %v", got, res)
	}
	if got[1].gets[2].Value == nil {
		t.Errorf("an empty value decodes as nil")
	}
	valid := b[len("prefix"):]
	for n := 0; n < len(valid); n++ {
		if r, err := decodeResults(valid[:n]); err == nil {
			t.Errorf("decodeResults of the first %d of %d bytes = %v, want an error", n, len(valid), r)
		}
	}
	for _, bad := range [][]byte{append(append([]byte(nil), valid...), 0), {1, 0, 1, 0}, {1, 9, 1, 0}, {0xff, 0xff, 0xff, 0xff, 0x0f}} {
		if r, err := decodeResults(bad); err == nil || !errors.Is(err, errMalformed) {
			t.Errorf("decodeResults(%x) = %v, %v; want an error", bad, r, err)
		}
	}
}

func FuzzDecodeResults(f *testing.F) {
	f.Add(appendResults(nil, []cmdResult{{status: resOK, rev: 3}, {status: resFailed, rev: 4, gets: []Entry{{Key: "k", Value: []byte("v"), CreateRev: 1, ModRev: 2, Version: 2}, {Key: "x"}}}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := decodeResults(b)
		if err != nil {
			return
		}
		if again := appendResults(nil, res); !bytes.Equal(again, b) {
			// Varints have more than one encoding; decoding again must agree.
			res2, err := decodeResults(again)
			if err != nil || fmt.Sprint(res2) != fmt.Sprint(res) {
				t.Fatalf("results %x decode to %v, which encode to %x, which decode to %v, %v", b, res, again, res2, err)
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
	f.Add(encodeLeased(nil, 1, 2, 2, 7, []byte("leased")))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again := encodeRecord(nil, r.create, r.mod, r.version, r.value)
		switch b[0] {
		case recVersion1:
			again = record1(r.create, r.mod, string(r.value))
		case recVersion3:
			// Written only with a lease, but read as it says without.
			again = encodeLeased(nil, r.create, r.mod, r.version, max(r.lease, 1), r.value)
			binary.BigEndian.PutUint64(again[25:], r.lease)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("record %x decodes to %+v, which encodes to %x", b, r, again)
		}
	})
}

// FuzzDecodeChanges: the changes of a revision read back from the change
// log in the data file decode to puts and deletes of non-empty keys, or
// are refused as damage; they never panic.
func FuzzDecodeChanges(f *testing.F) {
	f.Add([]byte{1, byte(EventPut), 1, 'k', 5, 1, 0, 1, 'v'})
	f.Add([]byte{2, byte(EventDelete), 1, 'a', byte(EventPut), 1, 'b', 3, 2, 7, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := decodeChanges(9, b)
		if err != nil {
			if !errors.Is(err, storage.ErrCorruptData) {
				t.Fatalf("decodeChanges(%x): %v, not ErrCorruptData", b, err)
			}
			return
		}
		for _, ev := range evs {
			if ev.Type != EventPut && ev.Type != EventDelete || ev.Entry.ModRev != 9 {
				t.Fatalf("decodeChanges(%x): %+v", b, ev)
			}
		}
	})
}
