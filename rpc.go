package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// RPC methods between members, on the transport's RPC protocol.
const (
	// methodApply: body is a command; the leader validates it, applies it
	// through Raft and replies once it is committed and applied.
	methodApply uint8 = 1
	// methodReadIndex: the leader confirms its leadership and replies with
	// an index that covers every write committed before the request.
	methodReadIndex uint8 = 2
	// methodRemove: body is the NodeID of a member that leaves; the leader
	// removes it from the configuration.
	methodRemove uint8 = 3
	// methodStatus: the member replies with its term and applied index.
	methodStatus uint8 = 4
	// methodPromise: body is a bootstrap promise request (promise.go); the
	// member promises the set, durably, or refuses with codeRefused.
	methodPromise uint8 = 5
	// methodVoter: body is a NodeID; the member replies with the index of
	// its Raft configuration and whether the NodeID is a voter in it.
	methodVoter uint8 = 6
	// methodCompact: the member compacts its own data file (handing its
	// leadership over first if it leads) and replies when done with the
	// outcome, sizes and timings (compact.go).
	methodCompact uint8 = 7
	// methodTransfer: body is the NodeID of a voter, or empty for any; the
	// leader hands its leadership over (leadership.go) and replies once it
	// has stepped down. A NodeID that is not a voter is refused with
	// codeBadRequest.
	methodTransfer uint8 = 8
)

// Error codes of the RPC replies.
const (
	codeNotLeader  uint8 = 1 // not the leader, nothing done: retry elsewhere
	codeClosed     uint8 = 2 // the member is closing, nothing done
	codeBadRequest uint8 = 3 // the command is invalid
	codeUnknown    uint8 = 4 // the write may or may not have been applied
	codeTimeout    uint8 = 5 // the caller's deadline passed on the leader, nothing done
	// The write may or may not have been applied, and the leader's log
	// store reported a full disk, or damage.
	codeUnknownDiskFull uint8 = 6
	codeUnknownCorrupt  uint8 = 7
	// The leader refused the write for want of disk space: nothing done.
	codeDiskFull uint8 = 8
	codeRefused  uint8 = 9 // a bootstrap promise refused
	// The batch was applied, but the results do not fit in one reply:
	// the follower asks again for each write alone.
	codeReplyTooLarge uint8 = 10
)

// maxReplyBytes bounds the reply to a forwarded batch: one frame of the
// transport, less room for its envelope.
const maxReplyBytes = transport.DefaultMaxFrame - 64<<10

// errReplyTooLarge is the error of a forwarded batch that was applied but
// whose results did not fit in one reply.
var errReplyTooLarge = errors.New("kv: the leader's reply did not fit in a frame")

// errNotLeader is the internal, retryable "ask the leader" condition.
var errNotLeader = errors.New("kv: not the leader")

func (s *Store) handleRPC(ctx context.Context, method uint8, body []byte) ([]byte, error) {
	if s.isClosed() {
		return nil, &transport.Error{Code: codeClosed, Msg: ErrClosed.Error()}
	}
	if err := s.halter.halted(); err != nil && method != methodStatus {
		// Nothing done: the caller asks whoever leads without us.
		return nil, &transport.Error{Code: codeNotLeader, Msg: err.Error()}
	}
	switch method {
	case methodApply:
		d, err := decodeEntry(body)
		for i := 0; err == nil && i < len(d.cmds); i++ {
			err = s.validateCmd(&d.cmds[i])
		}
		if err != nil {
			return nil, &transport.Error{Code: codeBadRequest, Msg: err.Error()}
		}
		if h := s.forwardHook.Load(); h != nil {
			(*h)(d.cmds)
		}
		res, err := s.applyLocal(ctx, d.cmds)
		if herr := s.halter.halted(); err != nil && herr != nil && !errors.Is(err, ErrOutcomeUnknown) && !errors.Is(err, errUnsure) {
			// Dropped before it was sent: the follower asks the next
			// leader.
			return nil, &transport.Error{Code: codeNotLeader, Msg: herr.Error()}
		}
		if err != nil {
			return nil, toWire(err)
		}
		reply := appendResults(nil, res)
		if len(reply) > maxReplyBytes {
			return nil, &transport.Error{Code: codeReplyTooLarge, Msg: fmt.Sprintf("kv: results of %d bytes, over %d", len(reply), maxReplyBytes)}
		}
		return reply, nil
	case methodReadIndex:
		idx, err := s.readIndexLocal(ctx)
		if err != nil {
			return nil, toWire(err)
		}
		return binary.BigEndian.AppendUint64(nil, idx), nil
	case methodRemove:
		if len(body) == 0 || len(body) > 1024 {
			return nil, &transport.Error{Code: codeBadRequest, Msg: "bad member ID"}
		}
		return nil, toWire(s.removeMember(ctx, string(body)))
	case methodStatus:
		return s.statusReply(), nil
	case methodPromise:
		return s.handlePromise(body)
	case methodVoter:
		if len(body) == 0 || len(body) > 1024 {
			return nil, &transport.Error{Code: codeBadRequest, Msg: "bad member ID"}
		}
		return s.voterReply(string(body)), nil
	case methodCompact:
		return s.compactReply(ctx), nil
	case methodTransfer:
		return nil, s.handleTransfer(ctx, body)
	}
	return nil, &transport.Error{Code: codeBadRequest, Msg: fmt.Sprintf("unknown method %d", method)}
}

// errRefused is wrapped by the error of a request the leader refused as
// invalid.
var errRefused = errors.New("kv: leader refused the request")

// toWire turns a local error into the reply error.
func toWire(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNotLeader):
		return &transport.Error{Code: codeNotLeader, Msg: err.Error()}
	case errors.Is(err, errDiskFullRefused):
		return &transport.Error{Code: codeDiskFull, Msg: err.Error()}
	case errors.Is(err, ErrOutcomeUnknown) && errors.Is(err, storage.ErrDiskFull):
		return &transport.Error{Code: codeUnknownDiskFull, Msg: err.Error()}
	case errors.Is(err, ErrOutcomeUnknown) && errors.Is(err, storage.ErrCorrupt):
		return &transport.Error{Code: codeUnknownCorrupt, Msg: err.Error()}
	case errors.Is(err, ErrOutcomeUnknown), errors.Is(err, errUnsure):
		return &transport.Error{Code: codeUnknown, Msg: err.Error()}
	case errors.Is(err, ErrClosed):
		return &transport.Error{Code: codeClosed, Msg: err.Error()}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &transport.Error{Code: codeTimeout, Msg: err.Error()}
	}
	return err
}

// fromWire turns an RPC error into a local one; retry says whether the call
// certainly had no effect and may go to the leader again. An error
// wrapping errUnsure means the call may have had its effect.
func fromWire(err error) (out error, retry bool) {
	var re *transport.Error
	switch {
	case errors.As(err, &re):
		switch re.Code {
		case codeNotLeader:
			return errNotLeader, true
		case codeClosed:
			return errNotLeader, true
		case codeBadRequest:
			return fmt.Errorf("%w: %s", errRefused, re.Msg), false
		case codeDiskFull:
			return fmt.Errorf("kv: leader: %s: %w", re.Msg, errDiskFullRefused), false
		case codeTimeout:
			// The request's deadline passed on the leader before its
			// writes were sent: nothing was done.
			return fmt.Errorf("%w: leader: %s", ErrNoLeader, re.Msg), true
		case codeUnknown, codeUnknownDiskFull, codeUnknownCorrupt:
			return fmt.Errorf("%w: leader: %s", errUnsure, re.Msg), false
		case codeReplyTooLarge:
			return fmt.Errorf("%w: %s", errReplyTooLarge, re.Msg), false
		}
		return fmt.Errorf("%w: leader: %s", errUnsure, re.Msg), false
	case errors.Is(err, transport.ErrNotSent):
		return fmt.Errorf("%w: %v", ErrNoLeader, err), true
	}
	// The connection was lost, or the call timed out, after the request
	// may have reached the leader.
	return fmt.Errorf("%w: %v", errUnsure, err), false
}

// translateRaftErr maps raft's errors to ours. errNotLeader means nothing
// was done; errUnsure, that Raft took the entry and may commit it.
func translateRaftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %v", errNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %v", errUnsure, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", ErrClosed, err)
	}
	return err
}
