package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// A command entry is the payload of one Raft log entry: the commands of
// one or more writers, applied in order in one engine transaction, each
// with a result of its own. Format 2, written by this version:
//
//	2                       format
//	uvarint time            the leader's clock as it proposed the entry, in ms
//	                        since the Unix epoch (0: none); the state machine
//	                        reads no clock of its own
//	uvarint sessions        the write sessions of the commands, each:
//	  id [16]byte             the session
//	  uvarint floor           every sequence below it has been answered
//	uvarint commands        each:
//	  byte kind               cmdTxn, cmdRegister or a lease command
//	  cmdTxn:
//	    uvarint session       0: none, else 1 + its place in the list above
//	    uvarint seq           only with a session
//	    uvarint n, n conds    If
//	    uvarint n, n ops      Then
//	    uvarint n, n ops      Else
//	  cmdRegister:
//	    nonce [8]byte         the session's ID is the entry's index, then this
//	  cmdGrant, cmdKeepAlive, cmdRevoke, cmdExpire:
//	    uvarint session, seq  as for cmdTxn
//	    uvarint n             the TTL in ms (cmdGrant), else the lease ID
//	    uvarint term          cmdExpire only: the deciding leader's term
//	cond: byte kind, key, then by kind: uvarint (revision, version), bytes
//	      (value) or nothing (exists)
//	op:   byte kind, key, then for a set: bytes (value), and for
//	      opSetLease a uvarint lease ID, for opSetTTL a uvarint TTL in ms
//	key, bytes: uvarint length, then the bytes
//
// Format 3 is format 2 with the lease commands and operations; an entry
// that holds none is written in format 2, which versions before leases
// read. A version that does not know format 3 halts on such an entry
// rather than skip it.
//
// Format 4 is format 3 with cmdSetQuota (space.go):
//
//	cmdSetQuota:
//	  uvarint session, seq  as for cmdTxn
//	  uvarint n             the quota in bytes (0: none)
//	  uvarint term          the proposing leader's term
//
// Only an entry that holds one is written in format 4; versions before
// the quota halt on it rather than skip it.
//
// A Set or a Delete is a cmdTxn without conditions and with one operation
// in Then. An entry without commands (the leader's term marker) only
// advances the applied index.
//
// Format 1, written by versions before revisions, is msgpack of
// {"o": [{"k": kind, "y": key, "v": value}]}: one command of sets and
// deletes, without a session. It is still read, for logs written by those
// versions.
//
// Restore entries (restore.go) start with another byte.
const (
	cmdVersion1 byte = 1
	cmdVersion  byte = 2
	cmdVersion3 byte = 3
	cmdVersion4 byte = 4
)

// Command kinds.
const (
	cmdTxn      uint8 = 1
	cmdRegister uint8 = 2
	// Lease commands (lease.go).
	cmdGrant     uint8 = 3
	cmdKeepAlive uint8 = 4
	cmdRevoke    uint8 = 5
	cmdExpire    uint8 = 6
	// cmdSetQuota sets the cluster's space quota (space.go).
	cmdSetQuota uint8 = 7
)

// isLeaseCmd says whether kind is a lease command.
func isLeaseCmd(kind uint8) bool { return kind >= cmdGrant && kind <= cmdExpire }

// Operation kinds.
const (
	opSet    uint8 = 1
	opDelete uint8 = 2
	opGet    uint8 = 3
	// On the wire only: an opSet with a lease, or with a TTL of its own.
	opSetLease uint8 = 4
	opSetTTL   uint8 = 5
)

// Condition kinds.
const (
	condModRev  uint8 = 1 // the key's ModRev is n (0: absent)
	condVersion uint8 = 2 // the key's Version is n (0: absent)
	condValue   uint8 = 3 // the key exists and holds value
	condExists  uint8 = 4 // the key exists
)

// sessionID names a write session: the index of the entry that registered
// it, then the nonce its Store chose, both big endian.
type sessionID [16]byte

func newSessionID(index, nonce uint64) sessionID {
	var id sessionID
	binary.BigEndian.PutUint64(id[:8], index)
	binary.BigEndian.PutUint64(id[8:], nonce)
	return id
}

// command is one writer's command. Decoded commands alias the bytes they
// were decoded from, which must not change.
type command struct {
	kind uint8
	// The write session and the command's sequence in it (zero: none),
	// and the floor its Store reported: every sequence below it has been
	// answered.
	sess  sessionID
	seq   uint64
	floor uint64
	nonce uint64 // cmdRegister
	n     uint64 // a lease command's TTL in ms (cmdGrant) or lease ID
	term  uint64 // cmdExpire: the term of the leader that decided it (0: any)

	conds []Cond
	then  []Op
	els   []Op
}

// writes says whether either branch of c writes.
func (c *command) writes() bool {
	return hasWrite(c.then) || hasWrite(c.els)
}

func hasWrite(ops []Op) bool {
	for i := range ops {
		if ops[i].kind != opGet {
			return true
		}
	}
	return false
}

// size is a bound on c's encoded size, for the batch limits.
func (c *command) size() int {
	n := 16 + binary.MaxVarintLen64
	for i := range c.conds {
		n += 24 + len(c.conds[i].key) + len(c.conds[i].value)
	}
	for _, ops := range [][]Op{c.then, c.els} {
		for i := range ops {
			n += 16 + binary.MaxVarintLen64 + len(ops[i].key) + len(ops[i].value)
		}
	}
	return n
}

// count is the number of conditions and operations of c.
func (c *command) count() int { return len(c.conds) + len(c.then) + len(c.els) }

// encodeEntry encodes the commands of groups, in order, as one command
// entry stamped with time. Sessions are listed once, with the highest
// floor their commands carry.
func encodeEntry(time uint64, groups ...[]command) []byte {
	type sess struct {
		id    sessionID
		floor uint64
	}
	var (
		sessions []sess
		one      [2]sess
		n        int
		size     = 1 + binary.MaxVarintLen64*3
	)
	sessions = one[:0]
	for _, g := range groups {
		for i := range g {
			c := &g[i]
			n++
			size += c.size()
			if c.seq == 0 {
				continue
			}
			found := false
			for j := range sessions {
				if sessions[j].id == c.sess {
					sessions[j].floor = max(sessions[j].floor, c.floor)
					found = true
					break
				}
			}
			if !found {
				sessions = append(sessions, sess{c.sess, c.floor})
				size += 16 + binary.MaxVarintLen64
			}
		}
	}
	b := make([]byte, 0, size)
	b = append(b, entryFormat(groups))
	b = binary.AppendUvarint(b, time)
	b = binary.AppendUvarint(b, uint64(len(sessions)))
	for _, s := range sessions {
		b = append(b, s.id[:]...)
		b = binary.AppendUvarint(b, s.floor)
	}
	b = binary.AppendUvarint(b, uint64(n))
	for _, g := range groups {
		for i := range g {
			c := &g[i]
			b = append(b, c.kind)
			if c.kind == cmdRegister {
				b = binary.BigEndian.AppendUint64(b, c.nonce)
				continue
			}
			if c.seq == 0 {
				b = append(b, 0)
			} else {
				for j := range sessions {
					if sessions[j].id == c.sess {
						b = binary.AppendUvarint(b, uint64(j+1))
						break
					}
				}
				b = binary.AppendUvarint(b, c.seq)
			}
			if isLeaseCmd(c.kind) || c.kind == cmdSetQuota {
				b = binary.AppendUvarint(b, c.n)
				if c.kind == cmdExpire || c.kind == cmdSetQuota {
					b = binary.AppendUvarint(b, c.term)
				}
				continue
			}
			b = binary.AppendUvarint(b, uint64(len(c.conds)))
			for j := range c.conds {
				d := &c.conds[j]
				b = append(b, d.kind)
				b = appendBytes(b, d.key)
				switch d.kind {
				case condModRev, condVersion:
					b = binary.AppendUvarint(b, d.n)
				case condValue:
					b = appendBytes(b, unsafe.String(unsafe.SliceData(d.value), len(d.value)))
				}
			}
			b = appendOps(b, c.then)
			b = appendOps(b, c.els)
		}
	}
	return b
}

func appendOps(b []byte, ops []Op) []byte {
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for i := range ops {
		o := &ops[i]
		kind := o.kind
		switch {
		case kind != opSet:
		case o.ttl != 0:
			kind = opSetTTL
		case o.lease != 0:
			kind = opSetLease
		}
		b = append(b, kind)
		b = appendBytes(b, o.key)
		if o.kind == opSet {
			b = appendBytes(b, unsafe.String(unsafe.SliceData(o.value), len(o.value)))
		}
		switch kind {
		case opSetTTL:
			b = binary.AppendUvarint(b, o.ttl)
		case opSetLease:
			b = binary.AppendUvarint(b, o.lease)
		}
	}
	return b
}

// entryFormat is the format an entry of groups is written in: format 3 or
// 4 only when it needs it, so that older versions read the rest.
func entryFormat(groups [][]command) byte {
	for _, g := range groups {
		for i := range g {
			if g[i].kind == cmdSetQuota {
				return cmdVersion4
			}
		}
	}
	for _, g := range groups {
		for i := range g {
			c := &g[i]
			if isLeaseCmd(c.kind) {
				return cmdVersion3
			}
			for _, ops := range [2][]Op{c.then, c.els} {
				for j := range ops {
					if ops[j].lease != 0 || ops[j].ttl != 0 {
						return cmdVersion3
					}
				}
			}
		}
	}
	return cmdVersion
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoded is a decoded command entry.
type decoded struct {
	time uint64
	cmds []command
}

// errMalformed is wrapped by the errors of entries and replies that do not
// decode.
var errMalformed = errors.New("kv: malformed command")

// knownFormat says whether a command entry's first byte names a format
// this version reads: a command format, or a restore entry (an empty entry
// is damage, not a format).
func knownFormat(b []byte) bool {
	return len(b) == 0 || b[0] == cmdVersion || b[0] == cmdVersion3 || b[0] == cmdVersion4 || b[0] == cmdVersion1 || b[0] == entryRestore
}

// decodeEntry decodes a command entry of either format. It never panics;
// the commands alias b.
func decodeEntry(b []byte) (d decoded, err error) {
	if len(b) == 0 {
		return d, fmt.Errorf("%w: empty", errMalformed)
	}
	defer func() {
		if r := recover(); r != nil {
			d, err = decoded{}, fmt.Errorf("%w: %v", errMalformed, r)
		}
	}()
	switch b[0] {
	case cmdVersion, cmdVersion3, cmdVersion4:
		r := reader{b: b[1:], v3: b[0] >= cmdVersion3, v4: b[0] == cmdVersion4}
		d, err = r.entry()
		if err == nil && len(r.b) > 0 {
			err = fmt.Errorf("%w: %d bytes after the last command", errMalformed, len(r.b))
		}
		return d, err
	case cmdVersion1:
		return decodeEntry1(b)
	}
	return d, fmt.Errorf("%w: unknown format %d", errMalformed, b[0])
}

// reader reads the encoding of commands and results; it fails, never
// panics, on bytes that end early or say more than they hold.
type reader struct {
	b  []byte
	v3 bool // format 3 or 4: lease commands and operations may come
	v4 bool // format 4: cmdSetQuota may come
}

var errShort = errors.New("ends early")

func (r *reader) uvarint() (uint64, error) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, errShort
	}
	r.b = r.b[n:]
	return v, nil
}

func (r *reader) byte() (byte, error) {
	if len(r.b) == 0 {
		return 0, errShort
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, nil
}

func (r *reader) bytes() ([]byte, error) {
	n, err := r.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)) {
		return nil, errShort
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v, nil
}

func (r *reader) str() (string, error) {
	v, err := r.bytes()
	return unsafe.String(unsafe.SliceData(v), len(v)), err
}

// count reads a count of items of at least min bytes each.
func (r *reader) count(min int) (int, error) {
	n, err := r.uvarint()
	if err != nil {
		return 0, err
	}
	if n > uint64(len(r.b)/min) {
		return 0, fmt.Errorf("count %d over what %d bytes can hold", n, len(r.b))
	}
	return int(n), nil
}

func (r *reader) entry() (d decoded, err error) {
	wrap := func(what string, err error) error { return fmt.Errorf("%w: %s: %v", errMalformed, what, err) }
	if d.time, err = r.uvarint(); err != nil {
		return d, wrap("time", err)
	}
	ns, err := r.count(17)
	if err != nil {
		return d, wrap("sessions", err)
	}
	type sess struct {
		id    sessionID
		floor uint64
	}
	sessions := make([]sess, ns)
	for i := range sessions {
		if len(r.b) < 16 {
			return d, wrap("session", errShort)
		}
		copy(sessions[i].id[:], r.b)
		r.b = r.b[16:]
		if sessions[i].floor, err = r.uvarint(); err != nil {
			return d, wrap("session floor", err)
		}
	}
	nc, err := r.count(2)
	if err != nil {
		return d, wrap("commands", err)
	}
	if nc == 0 {
		return d, nil
	}
	d.cmds = make([]command, nc)
	// The operations and conditions of every command share two arrays;
	// each command's slices are cut from them once they are complete.
	type span struct{ conds, then, els [2]int }
	spans := make([]span, nc)
	ops := make([]Op, 0, nc)
	var conds []Cond
	for i := range d.cmds {
		c := &d.cmds[i]
		if c.kind, err = r.byte(); err != nil {
			return d, wrap("command", err)
		}
		switch c.kind {
		case cmdRegister:
			if len(r.b) < 8 {
				return d, wrap("register", errShort)
			}
			c.nonce = binary.BigEndian.Uint64(r.b)
			r.b = r.b[8:]
			continue
		case cmdTxn:
		case cmdGrant, cmdKeepAlive, cmdRevoke, cmdExpire:
			if !r.v3 {
				return d, fmt.Errorf("%w: lease command in a format 2 entry", errMalformed)
			}
		case cmdSetQuota:
			if !r.v4 {
				return d, fmt.Errorf("%w: quota command in an entry of format 2 or 3", errMalformed)
			}
		default:
			return d, fmt.Errorf("%w: unknown command kind %d", errMalformed, c.kind)
		}
		si, err := r.uvarint()
		if err != nil {
			return d, wrap("command session", err)
		}
		if si > uint64(len(sessions)) {
			return d, fmt.Errorf("%w: command of session %d of %d", errMalformed, si, len(sessions))
		}
		if si > 0 {
			c.sess, c.floor = sessions[si-1].id, sessions[si-1].floor
			if c.seq, err = r.uvarint(); err != nil {
				return d, wrap("sequence", err)
			}
			if c.seq == 0 {
				return d, fmt.Errorf("%w: sequence 0", errMalformed)
			}
		}
		if c.kind == cmdSetQuota {
			if c.n, err = r.uvarint(); err != nil {
				return d, wrap("quota", err)
			}
			if c.n > maxQuota {
				return d, fmt.Errorf("%w: quota of %d bytes", errMalformed, c.n)
			}
			if c.term, err = r.uvarint(); err != nil {
				return d, wrap("quota term", err)
			}
			continue
		}
		if isLeaseCmd(c.kind) {
			if c.n, err = r.uvarint(); err != nil {
				return d, wrap("lease", err)
			}
			if c.n == 0 || c.n > maxLeaseN {
				return d, fmt.Errorf("%w: lease command of %d", errMalformed, c.n)
			}
			if c.kind == cmdExpire {
				if c.term, err = r.uvarint(); err != nil {
					return d, wrap("expiry term", err)
				}
			}
			continue
		}
		sp := &spans[i]
		n, err := r.count(2)
		if err != nil {
			return d, wrap("conditions", err)
		}
		sp.conds[0] = len(conds)
		for range n {
			var k Cond
			if k.kind, err = r.byte(); err != nil {
				return d, wrap("condition", err)
			}
			if k.key, err = r.str(); err != nil {
				return d, wrap("condition key", err)
			}
			switch k.kind {
			case condModRev, condVersion:
				k.n, err = r.uvarint()
			case condValue:
				k.value, err = r.bytes()
			case condExists:
			default:
				return d, fmt.Errorf("%w: unknown condition kind %d", errMalformed, k.kind)
			}
			if err != nil {
				return d, wrap("condition", err)
			}
			if k.key == "" {
				return d, ErrEmptyKey
			}
			conds = append(conds, k)
		}
		sp.conds[1] = len(conds)
		for _, br := range []*[2]int{&sp.then, &sp.els} {
			n, err := r.count(2)
			if err != nil {
				return d, wrap("operations", err)
			}
			br[0] = len(ops)
			for range n {
				var o Op
				if o.kind, err = r.byte(); err != nil {
					return d, wrap("operation", err)
				}
				if o.key, err = r.str(); err != nil {
					return d, wrap("operation key", err)
				}
				switch o.kind {
				case opSet:
					if o.value, err = r.bytes(); err != nil {
						return d, wrap("value", err)
					}
				case opSetLease, opSetTTL:
					if !r.v3 {
						return d, fmt.Errorf("%w: lease operation in a format 2 entry", errMalformed)
					}
					if o.value, err = r.bytes(); err != nil {
						return d, wrap("value", err)
					}
					n, err := r.uvarint()
					if err != nil {
						return d, wrap("lease", err)
					}
					if n == 0 || n > maxLeaseN {
						return d, fmt.Errorf("%w: lease operation of %d", errMalformed, n)
					}
					if o.kind == opSetTTL {
						o.ttl = n
					} else {
						o.lease = n
					}
					o.kind = opSet
				case opDelete, opGet:
				default:
					return d, fmt.Errorf("%w: unknown operation %d", errMalformed, o.kind)
				}
				if o.key == "" {
					return d, ErrEmptyKey
				}
				ops = append(ops, o)
			}
			br[1] = len(ops)
		}
	}
	for i := range d.cmds {
		c, sp := &d.cmds[i], &spans[i]
		if c.kind != cmdTxn {
			continue
		}
		if sp.conds[1] > sp.conds[0] {
			c.conds = conds[sp.conds[0]:sp.conds[1]:sp.conds[1]]
		}
		if sp.then[1] > sp.then[0] {
			c.then = ops[sp.then[0]:sp.then[1]:sp.then[1]]
		}
		if sp.els[1] > sp.els[0] {
			c.els = ops[sp.els[0]:sp.els[1]:sp.els[1]]
		}
	}
	return d, nil
}

// The format 1 encoding.
type op1 struct {
	Kind  uint8  `codec:"k"`
	Key   string `codec:"y"`
	Value []byte `codec:"v,omitempty"`
}

type command1 struct {
	Ops []op1 `codec:"o,omitempty"`
}

var cmdHandle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.RawToString = true
	h.WriteExt = true
	return h
}()

// decodeEntry1 decodes a format 1 entry into one command without a
// session. It never panics.
func decodeEntry1(b []byte) (d decoded, err error) {
	defer func() {
		if r := recover(); r != nil {
			d, err = decoded{}, fmt.Errorf("%w: %v", errMalformed, r)
		}
	}()
	var c command1
	if err := codec.NewDecoderBytes(b[1:], cmdHandle).Decode(&c); err != nil {
		return d, fmt.Errorf("%w: %w", errMalformed, err)
	}
	if len(c.Ops) == 0 {
		return d, nil
	}
	cmd := command{kind: cmdTxn, then: make([]Op, len(c.Ops))}
	for i, o := range c.Ops {
		if o.Kind != opSet && o.Kind != opDelete {
			return d, fmt.Errorf("%w: unknown operation %d", errMalformed, o.Kind)
		}
		if o.Key == "" {
			return d, ErrEmptyKey
		}
		cmd.then[i] = Op{kind: o.Kind, key: o.Key, value: o.Value}
	}
	d.cmds = []command{cmd}
	return d, nil
}

// Result statuses of a command.
const (
	// resOK: applied; a Txn's conditions held and Then ran.
	resOK uint8 = 1
	// resFailed: a Txn's conditions did not hold and Else ran (for a
	// compare-and-set, a conflict).
	resFailed uint8 = 2
	// resNoSession: not applied: the state machine does not know the
	// command's session (never registered here, or expired).
	resNoSession uint8 = 3
	// resStale: not applied: the sequence is below its session's floor,
	// so the command was answered already.
	resStale uint8 = 4
	// resTooLarge: not applied: the Gets of the branch to run would be
	// larger than maxTxnGetBytes.
	resTooLarge uint8 = 5
	// resInvalid: not applied: the command names a key of the store's
	// own state (leaders refuse such commands before the log).
	resInvalid uint8 = 6
	// resNoLease: not applied: the lease the command names does not
	// exist (never granted, expired or revoked).
	resNoLease uint8 = 7
	// resNoSpace: not applied: the command would take the data beyond
	// the cluster's space quota (space.go); rev is the quota.
	resNoSpace uint8 = 8
)

// cmdResult is the outcome of one command as the state machine applied it.
type cmdResult struct {
	status uint8
	// rev is the entry's index (for cmdRegister, with the nonce, the
	// session); for cmdGrant the lease's ID, for cmdKeepAlive its TTL
	// in ms.
	rev  uint64
	gets []Entry // a Txn's OpGet results, in order; ModRev 0 when absent
}

// appendResults encodes results, for the reply to a forwarded batch.
//
//	uvarint n, then each: byte status, uvarint rev, uvarint gets, then each
//	get: key, uvarint ModRev, and when it is not 0: uvarint CreateRev,
//	uvarint Version, bytes value
//
// and, only when a get has a lease: uvarint m, then m times: uvarint
// result, uvarint get (their places above), uvarint lease. Without it the
// encoding is the one of versions before leases.
func appendResults(b []byte, res []cmdResult) []byte {
	b = binary.AppendUvarint(b, uint64(len(res)))
	for i := range res {
		r := &res[i]
		b = append(b, r.status)
		b = binary.AppendUvarint(b, r.rev)
		b = binary.AppendUvarint(b, uint64(len(r.gets)))
		for j := range r.gets {
			g := &r.gets[j]
			b = appendBytes(b, g.Key)
			b = binary.AppendUvarint(b, g.ModRev)
			if g.ModRev != 0 {
				b = binary.AppendUvarint(b, g.CreateRev)
				b = binary.AppendUvarint(b, g.Version)
				b = appendBytes(b, unsafe.String(unsafe.SliceData(g.Value), len(g.Value)))
			}
		}
	}
	m := 0
	for i := range res {
		for j := range res[i].gets {
			if res[i].gets[j].Lease != 0 {
				m++
			}
		}
	}
	if m == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(m))
	for i := range res {
		for j := range res[i].gets {
			if l := res[i].gets[j].Lease; l != 0 {
				b = binary.AppendUvarint(b, uint64(i))
				b = binary.AppendUvarint(b, uint64(j))
				b = binary.AppendUvarint(b, uint64(l))
			}
		}
	}
	return b
}

// decodeResults decodes what appendResults encoded. It never panics; the
// results alias b.
func decodeResults(b []byte) (res []cmdResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: results: %v", errMalformed, r)
		}
	}()
	r := reader{b: b}
	wrap := func(err error) error { return fmt.Errorf("%w: results: %v", errMalformed, err) }
	n, err := r.count(3)
	if err != nil {
		return nil, wrap(err)
	}
	res = make([]cmdResult, n)
	for i := range res {
		c := &res[i]
		if c.status, err = r.byte(); err != nil {
			return nil, wrap(err)
		}
		if c.status < resOK || c.status > resNoSpace {
			return nil, wrap(fmt.Errorf("unknown status %d", c.status))
		}
		if c.rev, err = r.uvarint(); err != nil {
			return nil, wrap(err)
		}
		ng, err := r.count(2)
		if err != nil {
			return nil, wrap(err)
		}
		if ng > 0 {
			c.gets = make([]Entry, ng)
		}
		for j := range c.gets {
			g := &c.gets[j]
			if g.Key, err = r.str(); err != nil {
				return nil, wrap(err)
			}
			if g.ModRev, err = r.uvarint(); err != nil {
				return nil, wrap(err)
			}
			if g.ModRev == 0 {
				continue
			}
			if g.CreateRev, err = r.uvarint(); err != nil {
				return nil, wrap(err)
			}
			if g.Version, err = r.uvarint(); err != nil {
				return nil, wrap(err)
			}
			if g.Value, err = r.bytes(); err != nil {
				return nil, wrap(err)
			}
		}
	}
	if len(r.b) > 0 {
		m, err := r.count(3)
		if err == nil && m == 0 {
			err = errors.New("an empty list of leases")
		}
		if err != nil {
			return nil, wrap(err)
		}
		for range m {
			var i, j, l uint64
			if i, err = r.uvarint(); err == nil {
				if j, err = r.uvarint(); err == nil {
					l, err = r.uvarint()
				}
			}
			if err != nil {
				return nil, wrap(err)
			}
			if i >= uint64(len(res)) || j >= uint64(len(res[i].gets)) || res[i].gets[j].ModRev == 0 || l == 0 || l > maxLeaseN {
				return nil, wrap(fmt.Errorf("lease %d of get %d of result %d", l, j, i))
			}
			res[i].gets[j].Lease = LeaseID(l)
		}
	}
	if len(r.b) > 0 {
		return nil, wrap(fmt.Errorf("%d bytes after the last result", len(r.b)))
	}
	return res, nil
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
//
// Format 3 is format 2 with the ID of the key's lease after the version;
// it is written only for a key attached to a lease.
const (
	recVersion1 = 1
	recHeader1  = 17
	recVersion  = 2
	recHeader   = 25
	recVersion3 = 3
	recHeader3  = 33
)

// encodeRecord appends the record to dst.
func encodeRecord(dst []byte, create, mod, version uint64, value []byte) []byte {
	dst = append(dst, recVersion)
	dst = binary.BigEndian.AppendUint64(dst, create)
	dst = binary.BigEndian.AppendUint64(dst, mod)
	dst = binary.BigEndian.AppendUint64(dst, version)
	return append(dst, value...)
}

// encodeLeased appends the record of a key attached to a lease to dst.
func encodeLeased(dst []byte, create, mod, version, lease uint64, value []byte) []byte {
	if lease == 0 {
		return encodeRecord(dst, create, mod, version, value)
	}
	dst = append(dst, recVersion3)
	dst = binary.BigEndian.AppendUint64(dst, create)
	dst = binary.BigEndian.AppendUint64(dst, mod)
	dst = binary.BigEndian.AppendUint64(dst, version)
	dst = binary.BigEndian.AppendUint64(dst, lease)
	return append(dst, value...)
}

type record struct {
	create, mod, version uint64
	lease                uint64
	value                []byte // aliases the record
}

func decodeRecord(b []byte) (record, error) {
	switch {
	case len(b) >= recHeader3 && b[0] == recVersion3:
		return record{
			create:  binary.BigEndian.Uint64(b[1:]),
			mod:     binary.BigEndian.Uint64(b[9:]),
			version: binary.BigEndian.Uint64(b[17:]),
			lease:   binary.BigEndian.Uint64(b[25:]),
			value:   b[recHeader3:],
		}, nil
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
