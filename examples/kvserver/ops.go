package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	kv "github.com/cohortkv/kv"
)

// The operator's endpoints: the member list, backup and restore of the
// whole data set, and a hand-over of the leadership. kvctl uses them.

const (
	// transferTimeout bounds /api/transfer-leadership beyond -timeout: a
	// hand-over takes an election or two.
	transferTimeout = 10 * time.Second
	// streamReadTimeout bounds one read of a restore upload: a client
	// that sends nothing for this long is cut off. The server's
	// ReadTimeout does not apply to the upload.
	streamReadTimeout = 30 * time.Second
	// backupStatusTrailer is the HTTP trailer of /api/backup: "ok" once
	// the whole copy was sent, else why it stopped. A body without it was
	// cut off.
	backupStatusTrailer = "Kv-Backup-Status"
)

func (a *api) opsRoutes() {
	a.mux.HandleFunc("GET /api/members", a.members)
	a.mux.HandleFunc("GET /api/backup", a.backup)
	a.mux.HandleFunc("POST /api/restore", a.restore)
	a.mux.HandleFunc("POST /api/transfer-leadership", a.transferLeadership)
}

// member is one member as /api/members and /api/stats answer it.
type member struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"`
	Gossip   string `json:"gossip_addr"`
	Status   string `json:"status"`
	Suffrage string `json:"suffrage"`
	Voter    bool   `json:"voter"`
	Leader   bool   `json:"leader"`
}

func (a *api) memberList() []member {
	members := []member{}
	for _, m := range a.store.Members() {
		members = append(members, member{m.ID, m.Addr, m.GossipAddr, fmt.Sprint(m.Status), fmt.Sprint(m.Suffrage), m.Voter, m.Leader})
	}
	return members
}

// members answers this member's view of the cluster: every member of the
// Raft configuration and of the gossip pool, sorted by ID.
func (a *api) members(w http.ResponseWriter, r *http.Request) {
	st := a.stats()
	writeJSON(w, http.StatusOK, map[string]any{"node_id": st.NodeID, "leader": st.Leader, "members": a.memberList()})
}

// transferLeadership hands the leadership over to the voter to= names, or
// with no to= to the voter most caught up, and answers the new leader.
func (a *api) transferLeadership(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	before := a.stats().Leader
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout+transferTimeout)
	defer cancel()
	if err := a.store.TransferLeadership(ctx, to); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "previous": before, "leader": a.stats().Leader})
}

// backup streams a copy of the whole data set (kv.Store.Backup) as
// application/octet-stream: every write that completed before the request
// is in it; with stale=true, this member's data as it is, without asking
// the leader. The body is chunked; its trailer Kv-Backup-Status is "ok"
// once the copy is complete, else the error that cut it short (a copy is
// checksummed, so Restore refuses a truncated one anyway).
func (a *api) backup(w http.ResponseWriter, r *http.Request) {
	opts, err := readOpts(r)
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	if len(opts) == 0 {
		// The linearizable barrier within -timeout, so that a member
		// without a leader answers 503 in time; then the copy of this
		// member's data, which reflects at least what the barrier saw.
		ctx, cancel := a.ctx(r)
		_, _, err := a.store.ListEntries(ctx, "", kv.Limit(1))
		cancel()
		if err != nil {
			a.fail(w, err)
			return
		}
	}
	w.Header().Set("Trailer", backupStatusTrailer)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="kv.backup"`)
	sw := &streamWriter{w: w, rc: http.NewResponseController(w)}
	err = a.store.Backup(r.Context(), sw, kv.Stale())
	if !sw.finish() {
		// Nothing sent yet: a plain error answer.
		w.Header().Del("Trailer")
		if err == nil {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			return
		}
		a.fail(w, err)
		return
	}
	status := "ok"
	if err != nil {
		status = err.Error()
	}
	w.Header().Set(backupStatusTrailer, status)
}

// streamWriter writes a backup to the client with a rolling deadline per
// write. Backup may give up while a Write is blocked and leave it running:
// finish waits for that Write, and no Write reaches the client after it.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	mu      sync.Mutex
	wrote   bool
	stopped bool
}

func (s *streamWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return 0, errors.New("backup stopped")
	}
	s.wrote = true
	s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return s.w.Write(p)
}

// finish stops further writes and says whether any byte was written.
func (s *streamWriter) finish() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	return s.wrote
}

// restore replaces the whole data set with the copy in the request body
// (application/octet-stream, as /api/backup wrote it): kv.Store.Restore.
// It runs on the leader only: another member answers 503 with the
// leader's NodeID in "leader". The answer comes once the restore is
// committed: {"success":true,"bytes":N}.
func (a *api) restore(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	if st := a.stats(); st.State != kv.StateLeader {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"error":  fmt.Sprintf("restore must be sent to the leader; %s is a %s, the leader is %q", st.NodeID, st.State, st.Leader),
			"leader": st.Leader,
		})
		return
	}
	body := &streamReader{r: r.Body, rc: rc}
	err := a.store.Restore(r.Context(), body)
	// The server's WriteTimeout counts from the request's headers: give
	// the answer its own time after a long upload.
	rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "bytes": body.n})
}

// streamReader reads an upload with a rolling deadline per read, in place
// of the server's ReadTimeout, which would cut a large upload.
type streamReader struct {
	r  io.Reader
	rc *http.ResponseController
	n  int64
}

func (s *streamReader) Read(p []byte) (int, error) {
	s.rc.SetReadDeadline(time.Now().Add(streamReadTimeout))
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}
