package kv

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// clientSession is a Store's write session (see sessiontable.go): the ID
// the state machine registered, the next sequence to hand out, and which
// sequences have been answered. Safe for concurrent use.
type clientSession struct {
	id   sessionID
	lost atomic.Bool // the state machine no longer holds it

	mu    sync.Mutex
	next  uint64              // the next sequence
	floor uint64              // every sequence below it has been answered
	done  map[uint64]struct{} // answered sequences above floor
}

func newClientSession(id sessionID) *clientSession {
	return &clientSession{id: id, next: 1, floor: 1, done: map[uint64]struct{}{}}
}

// assign hands out the next sequence.
func (s *clientSession) assign() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.next
	s.next++
	return seq
}

// answered records that seq will not be sent again: its caller has its
// answer, or has given up.
func (s *clientSession) answered(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.floor {
		return
	}
	if seq > s.floor {
		s.done[seq] = struct{}{}
		return
	}
	s.floor++
	for {
		if _, ok := s.done[s.floor]; !ok {
			return
		}
		delete(s.done, s.floor)
		s.floor++
	}
}

// floorNow returns the current floor.
func (s *clientSession) floorNow() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.floor
}

// registerCommand returns a command that registers a session, and its
// nonce.
func registerCommand() command {
	var b [8]byte
	rand.Read(b[:])
	return command{kind: cmdRegister, nonce: binary.BigEndian.Uint64(b[:])}
}
