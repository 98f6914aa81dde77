package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// env is what a command runs with.
type env struct {
	ctx            context.Context
	g              globals
	c              *client
	stdin          io.Reader
	stdout, stderr io.Writer
}

// opts holds every command's own flags; each command registers its own.
type opts struct {
	cluster, stale, keysOnly bool
	ttl                      time.Duration
	lease, limit             int64
	rev                      uint64
	to                       string
}

type command struct {
	args             string // what it takes, for messages
	minArgs, maxArgs int
	flags            func(fs *flag.FlagSet, o *opts)
	run              func(e *env, args []string, o *opts) error
}

func noFlags(*flag.FlagSet, *opts) {}

var commands map[string]command

func init() {
	commands = map[string]command{
		"status": {"no arguments", 0, 0, func(fs *flag.FlagSet, o *opts) {
			fs.BoolVar(&o.cluster, "cluster", false, "every member of the cluster")
		}, status},
		"members": {"no arguments", 0, 0, noFlags, members},
		"get": {"KEY", 1, 1, func(fs *flag.FlagSet, o *opts) {
			fs.BoolVar(&o.stale, "stale", false, "read the member's local data")
		}, get},
		"put": {"KEY VALUE (VALUE - reads stdin)", 2, 2, func(fs *flag.FlagSet, o *opts) {
			fs.DurationVar(&o.ttl, "ttl", 0, "delete the key after this long")
			fs.Int64Var(&o.lease, "lease", 0, "attach the key to this lease")
		}, put},
		"del": {"KEY", 1, 1, noFlags, del},
		"list": {"PREFIX", 1, 1, func(fs *flag.FlagSet, o *opts) {
			fs.Int64Var(&o.limit, "limit", 0, "at most this many keys (0: all)")
			fs.BoolVar(&o.keysOnly, "keys-only", false, "print the keys only")
			fs.BoolVar(&o.stale, "stale", false, "read the member's local data")
		}, list},
		"watch": {"PREFIX", 1, 1, func(fs *flag.FlagSet, o *opts) {
			fs.Uint64Var(&o.rev, "rev", 0, "from this revision (0: from now)")
		}, watch},
		"backup": {"FILE", 1, 1, func(fs *flag.FlagSet, o *opts) {
			fs.BoolVar(&o.stale, "stale", false, "copy the member's data as it is, without a leader")
		}, backup},
		"restore":             {"FILE", 1, 1, noFlags, restore},
		"compact":             {"no arguments", 0, 0, noFlags, compact},
		"transfer-leadership": {"no arguments (--to ID)", 0, 0, func(fs *flag.FlagSet, o *opts) { fs.StringVar(&o.to, "to", "", "NodeID of the voter to lead") }, transferLeadership},
	}
}

// printJSON writes v as one line of JSON.
func (e *env) printJSON(v any) error {
	return json.NewEncoder(e.stdout).Encode(v)
}

// raw writes a JSON body as it came, on one line.
func (e *env) raw(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("the answer is not JSON: %q", b)
	}
	return e.printJSON(v)
}

// --- status, members ---

// statsRow is one endpoint's /api/stats, or why it did not answer.
type statsRow struct {
	endpoint string
	stats    map[string]any
	err      error
}

func str(m map[string]any, k string) string {
	switch v := m[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case nil:
		return ""
	}
	return fmt.Sprint(m[k])
}

// dbKeys are the fields of /api/stats that give the data file's size, the
// logical size of the data and the quota, when the kvserver reports them.
var dbKeys = []struct{ key, title string }{{"db_size", "DB SIZE"}, {"db_in_use", "DB IN USE"}, {"data_bytes", "DATA"}, {"quota_bytes", "QUOTA"}}

func status(e *env, _ []string, o *opts) error {
	rows := make([]statsRow, len(e.c.endpoints))
	done := make(chan struct{}, len(rows))
	for i, ep := range e.c.endpoints {
		go func() {
			defer func() { done <- struct{}{} }()
			r, err := e.c.do(e.ctx, "status", request{method: "GET", path: "/api/stats", idempotent: true, order: []string{ep}})
			if err != nil {
				msg := strings.TrimPrefix(err.Error(), "status: ")
				msg = strings.TrimPrefix(msg, "no endpoint available: ")
				err = &cliError{exitUnavailable, strings.TrimPrefix(msg, ep+": ")}
			}
			rows[i] = statsRow{endpoint: ep, err: err}
			if err == nil {
				rows[i].stats = r.object()
				delete(rows[i].stats, "members")
			}
		}()
	}
	for range rows {
		<-done
	}
	answered := 0
	for _, r := range rows {
		if r.err == nil {
			answered++
		}
	}
	var others []map[string]any // --cluster: members without an endpoint
	if o.cluster && answered > 0 {
		if ms, err := memberList(e); err == nil {
			known := map[string]bool{}
			for _, r := range rows {
				if r.err == nil {
					known[str(r.stats, "node_id")] = true
				}
			}
			for _, m := range ms {
				if id := str(m, "id"); !known[id] {
					others = append(others, m)
				}
			}
		}
	}
	if e.g.json {
		out := []map[string]any{}
		for _, r := range rows {
			m := map[string]any{"endpoint": r.endpoint}
			for k, v := range r.stats {
				m[k] = v
			}
			if r.err != nil {
				m["error"] = r.err.Error()
			}
			out = append(out, m)
		}
		for _, m := range others {
			out = append(out, map[string]any{"endpoint": "", "node_id": str(m, "id"), "gossip_status": str(m, "status"),
				"error": "no HTTP endpoint known for this member: add it to --endpoints"})
		}
		if err := e.printJSON(out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		head := []string{"ENDPOINT", "ID", "STATE", "LEADER", "TERM", "COMMIT", "APPLIED"}
		var db []string
		for _, k := range dbKeys {
			for _, r := range rows {
				if _, ok := r.stats[k.key]; ok {
					db = append(db, k.key)
					head = append(head, k.title)
					break
				}
			}
		}
		fmt.Fprintln(tw, strings.Join(append(head, "ERROR"), "\t"))
		leaders := map[string]bool{}
		for _, r := range rows {
			if r.err != nil {
				cells := []string{r.endpoint, "-", "-", "-", "-", "-", "-"}
				for range db {
					cells = append(cells, "-")
				}
				fmt.Fprintln(tw, strings.Join(append(cells, r.err.Error()), "\t"))
				continue
			}
			s := r.stats
			if l := str(s, "leader"); l != "" {
				leaders[l] = true
			}
			cells := []string{r.endpoint, str(s, "node_id"), str(s, "state"), str(s, "leader"), str(s, "term"), str(s, "commit_index"), str(s, "applied_index")}
			for _, k := range db {
				cells = append(cells, bytesCell(s[k]))
			}
			fmt.Fprintln(tw, strings.Join(append(cells, str(s, "halted")), "\t"))
		}
		for _, m := range others {
			cells := []string{"-", str(m, "id"), "(" + str(m, "status") + ")", "-", "-", "-", "-"}
			for range db {
				cells = append(cells, "-")
			}
			fmt.Fprintln(tw, strings.Join(append(cells, "no HTTP endpoint known: add it to --endpoints"), "\t"))
		}
		tw.Flush()
		if answered > 0 {
			switch names := sortedKeys(leaders); len(names) {
			case 0:
				fmt.Fprintln(e.stdout, "no leader known")
			case 1:
				fmt.Fprintf(e.stdout, "leader: %s\n", names[0])
			default:
				fmt.Fprintf(e.stdout, "members disagree on the leader (an election under way?): %s\n", strings.Join(names, ", "))
			}
		}
	}
	if answered == 0 {
		return &cliError{exitUnavailable, "status: no endpoint answered"}
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// bytesCell formats a byte count of a JSON answer.
func bytesCell(v any) string {
	if f, ok := v.(float64); ok {
		return humanBytes(int64(f))
	}
	return fmt.Sprint(v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// memberList is the member list of the first endpoint that answers:
// /api/members, or the members of /api/stats from an older kvserver.
func memberList(e *env) ([]map[string]any, error) {
	r, err := e.c.do(e.ctx, "members", request{method: "GET", path: "/api/members", idempotent: true})
	if err != nil && r != nil && r.resp.StatusCode == http.StatusNotFound {
		r, err = e.c.do(e.ctx, "members", request{method: "GET", path: "/api/stats", idempotent: true})
	}
	if err != nil {
		return nil, err
	}
	var body struct {
		Members []map[string]any `json:"members"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		return nil, fmt.Errorf("members: %s: the answer is not JSON: %v", r.endpoint, err)
	}
	return body.Members, nil
}

func members(e *env, _ []string, _ *opts) error {
	ms, err := memberList(e)
	if err != nil {
		return err
	}
	if e.g.json {
		if ms == nil {
			ms = []map[string]any{}
		}
		return e.printJSON(ms)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDR\tGOSSIP\tSTATUS\tSUFFRAGE\tLEADER")
	for _, m := range ms {
		suffrage := str(m, "suffrage")
		if suffrage == "" { // an older kvserver: voter only
			suffrage = "non-voter"
			if m["voter"] == true {
				suffrage = "voter"
			}
		}
		leader := ""
		if m["leader"] == true {
			leader = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", str(m, "id"), str(m, "addr"), str(m, "gossip_addr"), str(m, "status"), suffrage, leader)
	}
	return tw.Flush()
}

// --- keys ---

func get(e *env, args []string, o *opts) error {
	q := url.Values{"key": {args[0]}}
	if o.stale {
		q.Set("stale", "true")
	}
	r, err := e.c.do(e.ctx, "get "+args[0], request{method: "GET", path: "/api/get?" + q.Encode(), idempotent: true})
	if err != nil {
		var ce *cliError
		if errors.As(err, &ce) && ce.code == exitNotFound {
			return &cliError{exitNotFound, fmt.Sprintf("get %s: key not found", args[0])}
		}
		return err
	}
	if e.g.json {
		return e.raw(r.body)
	}
	var body struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		return fmt.Errorf("get: %s: the answer is not JSON: %v", r.endpoint, err)
	}
	_, err = fmt.Fprintln(e.stdout, body.Value)
	return err
}

func put(e *env, args []string, o *opts) error {
	value := args[1]
	if value == "-" {
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return fmt.Errorf("put: reading the value from stdin: %v", err)
		}
		value = string(b)
	}
	body := map[string]any{"key": args[0], "value": value}
	switch {
	case o.ttl != 0 && o.lease != 0:
		return usageErr("put: --ttl or --lease, not both")
	case o.ttl < 0:
		return usageErr("put: --ttl %v: want more than 0", o.ttl)
	case o.ttl > 0:
		body["ttl"] = o.ttl.String()
	case o.lease != 0:
		body["lease"] = o.lease
	}
	r, err := e.c.do(e.ctx, "put "+args[0], request{method: "POST", path: "/api/set", body: jsonBody(body)})
	if err != nil {
		return err
	}
	if e.g.json {
		return e.raw(r.body)
	}
	_, err = fmt.Fprintln(e.stdout, "OK")
	return err
}

func del(e *env, args []string, _ *opts) error {
	r, err := e.c.do(e.ctx, "del "+args[0], request{method: "DELETE", path: "/api/delete?" + url.Values{"key": {args[0]}}.Encode()})
	if err != nil {
		return err
	}
	if e.g.json {
		return e.raw(r.body)
	}
	_, err = fmt.Fprintln(e.stdout, "OK")
	return err
}

// list pages through the keys under the prefix. Each page is a
// linearizable read of its own: a listing of many pages is not one
// snapshot.
func list(e *env, args []string, o *opts) error {
	if o.limit < 0 {
		return usageErr("list: --limit %d: want 0 (all) or more", o.limit)
	}
	type pair struct {
		Key       string `json:"key"`
		Value     string `json:"value"`
		CreateRev uint64 `json:"create_rev"`
		ModRev    uint64 `json:"mod_rev"`
		Version   uint64 `json:"version"`
		Lease     int64  `json:"lease"`
	}
	var all []pair
	var rev uint64
	more, after := true, ""
	first := true
	for more && (o.limit == 0 || int64(len(all)) < o.limit) {
		q := url.Values{"prefix": {args[0]}, "limit": {"1000"}}
		if o.limit > 0 {
			q.Set("limit", strconv.FormatInt(min(1000, o.limit-int64(len(all))), 10))
		}
		if !first {
			q.Set("after", after)
		}
		if o.stale {
			q.Set("stale", "true")
		}
		r, err := e.c.do(e.ctx, "list "+args[0], request{method: "GET", path: "/api/list?" + q.Encode(), idempotent: true})
		if err != nil {
			return err
		}
		var page struct {
			Pairs    []pair `json:"pairs"`
			More     bool   `json:"more"`
			Next     string `json:"next"`
			Revision uint64 `json:"revision"`
		}
		if err := json.Unmarshal(r.body, &page); err != nil {
			return fmt.Errorf("list: %s: the answer is not JSON: %v", r.endpoint, err)
		}
		all = append(all, page.Pairs...)
		rev = max(rev, page.Revision)
		more, after, first = page.More, page.Next, false
	}
	if e.g.json {
		if all == nil {
			all = []pair{}
		}
		return e.printJSON(map[string]any{"pairs": all, "count": len(all), "revision": rev, "more": more})
	}
	w := bufio.NewWriter(e.stdout)
	for _, p := range all {
		if o.keysOnly {
			fmt.Fprintln(w, p.Key)
		} else {
			fmt.Fprintf(w, "%s\t%s\n", p.Key, p.Value)
		}
	}
	return w.Flush()
}

// --- watch ---

// watch streams the changes under the prefix. When a stream breaks (its
// member stops or dies), it resumes on the endpoints in order from the
// revision after the last one it printed: nothing is missed or repeated.
func watch(e *env, args []string, o *opts) error {
	from := o.rev
	var seen watchSeen
	for attempt := 0; ; attempt++ {
		q := url.Values{"prefix": {args[0]}}
		if from > 0 {
			q.Set("from_rev", strconv.FormatUint(from, 10))
		}
		r, err := e.c.do(e.ctx, "watch "+args[0], request{method: "GET", path: "/api/watch?" + q.Encode(), idempotent: true, stream: true})
		if e.ctx.Err() != nil {
			return nil // interrupted: the normal end
		}
		if err != nil {
			return err
		}
		next, broke, err := e.readWatch(r, from, &seen)
		if e.ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		from = next
		fmt.Fprintf(e.stderr, "kvctl: watch: %s: stream ended (%s); resuming from revision %d\n", r.endpoint, broke, from)
		select {
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		case <-e.ctx.Done():
			return nil
		}
	}
}

// readWatch prints the stream's lines until it ends, and returns the
// revision to resume from and why it ended; an error ends the watch.
// watchSeen is the revision of the last event printed and the keys printed
// at it: a stream resumed from that revision (to get the rest of a
// transaction cut off) skips them.
type watchSeen struct {
	rev  uint64
	keys map[string]bool
}

func (e *env) readWatch(r *reply, from uint64, seen *watchSeen) (next uint64, why string, err error) {
	defer r.resp.Body.Close()
	go func() {
		<-e.ctx.Done()
		r.resp.Body.Close()
	}()
	next = from
	sc := bufio.NewScanner(r.resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var line struct {
			Type      string  `json:"type"`
			Key       string  `json:"key"`
			Value     *string `json:"value"`
			ModRev    uint64  `json:"mod_rev"`
			Rev       uint64  `json:"rev"`
			Error     string  `json:"error"`
			Status    int     `json:"status"`
			OldestRev uint64  `json:"oldest_rev"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return next, "", fmt.Errorf("watch: %s: a line that is not JSON: %q", r.endpoint, sc.Bytes())
		}
		switch line.Type {
		case "progress":
			next = max(next, line.Rev+1)
		case "put", "delete":
			// A transaction's events share a revision: resume from it
			// until a later one comes, and skip what was printed.
			next = max(next, line.ModRev)
			if line.ModRev == seen.rev && seen.keys[line.Key] {
				continue
			}
			if line.ModRev != seen.rev {
				seen.rev, seen.keys = line.ModRev, map[string]bool{}
			}
			seen.keys[line.Key] = true
		case "error":
			if line.Status == http.StatusServiceUnavailable {
				return next, line.Error, nil
			}
			if line.OldestRev > 0 {
				return next, "", fmt.Errorf("watch: %s: %s (oldest revision kept: %d; list again, or watch from it)", r.endpoint, line.Error, line.OldestRev)
			}
			return next, "", fmt.Errorf("watch: %s: %s", r.endpoint, line.Error)
		}
		if e.g.json {
			if _, err := e.stdout.Write(append(sc.Bytes(), '\n')); err != nil {
				return next, "", err
			}
			continue
		}
		switch line.Type {
		case "put":
			v := ""
			if line.Value != nil {
				v = *line.Value
			}
			_, err = fmt.Fprintf(e.stdout, "PUT %s %s (rev %d)\n", line.Key, v, line.ModRev)
		case "delete":
			_, err = fmt.Fprintf(e.stdout, "DELETE %s (rev %d)\n", line.Key, line.ModRev)
		}
		if err != nil {
			return next, "", err
		}
	}
	if err := sc.Err(); err != nil {
		return next, err.Error(), nil
	}
	return next, "closed by the server", nil
}

// --- backup, restore ---

func backup(e *env, args []string, o *opts) error {
	path := "/api/backup"
	if o.stale {
		path += "?stale=true"
	}
	began := time.Now()
	r, err := e.c.do(e.ctx, "backup", request{method: "GET", path: path, idempotent: true, stream: true})
	if err != nil {
		return err
	}
	defer r.resp.Body.Close()
	var out io.Writer = e.stdout
	var f *os.File
	file := args[0]
	if file != "-" {
		// Into a temporary file beside FILE, renamed once complete and
		// synced: FILE is never a partial copy.
		f, err = os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.part")
		if err != nil {
			return fmt.Errorf("backup: %v", err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		out = f
	}
	p := startProgress(e, "backup", r.resp.ContentLength)
	n, err := io.Copy(out, p.reader(r.resp.Body))
	p.finish()
	if err != nil {
		return fmt.Errorf("backup: %s: after %d bytes: %v", r.endpoint, n, err)
	}
	if st := r.resp.Trailer.Get("Kv-Backup-Status"); st != "ok" {
		if st == "" {
			st = "the copy was cut short"
		}
		return fmt.Errorf("backup: %s: after %d bytes: %s", r.endpoint, n, st)
	}
	if f != nil {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("backup: %v", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("backup: %v", err)
		}
		if err := os.Rename(f.Name(), file); err != nil {
			return fmt.Errorf("backup: %v", err)
		}
		syncDir(filepath.Dir(file))
	}
	took := time.Since(began)
	if e.g.json {
		return e.printJSON(map[string]any{"file": file, "bytes": n, "endpoint": r.endpoint, "seconds": took.Seconds()})
	}
	if file != "-" {
		fmt.Fprintf(e.stdout, "backup: %s (%s) from %s in %v\n", file, humanBytes(n), r.endpoint, took.Round(time.Millisecond))
	}
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// restore sends the copy to the leader: the endpoint whose member leads is
// tried first.
func restore(e *env, args []string, _ *opts) error {
	f, err := os.Open(args[0])
	if err != nil {
		return fmt.Errorf("restore: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("restore: %v", err)
	}
	order := e.leaderFirst()
	var p *progress
	body := func() (io.Reader, error) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		if p != nil {
			p.finish()
		}
		p = startProgress(e, "restore", fi.Size())
		return p.reader(f), nil
	}
	r, err := e.c.do(e.ctx, "restore", request{method: "POST", path: "/api/restore", body: body, stream: true, order: order})
	if p != nil {
		p.finish()
	}
	var ce *cliError
	if errors.As(err, &ce) && ce.code == exitUnavailable && strings.Contains(ce.msg, "must be sent to the leader") {
		ce.msg += " (restore must reach the leader: include its HTTP address in --endpoints)"
	}
	if err != nil {
		return err
	}
	defer r.resp.Body.Close()
	b, err := io.ReadAll(r.resp.Body)
	if err != nil {
		return &cliError{exitUnknown, fmt.Sprintf("restore: %s: reading the answer: %v: read the data to see whether it was restored", r.endpoint, err)}
	}
	if e.g.json {
		var m map[string]any
		json.Unmarshal(b, &m)
		if m == nil {
			m = map[string]any{}
		}
		m["file"], m["endpoint"] = args[0], r.endpoint
		return e.printJSON(m)
	}
	fmt.Fprintf(e.stdout, "restore: %s (%s) restored through %s\n", args[0], humanBytes(fi.Size()), r.endpoint)
	return nil
}

// leaderFirst orders the endpoints with the one whose member leads first.
func (e *env) leaderFirst() []string {
	order := append([]string(nil), e.c.endpoints...)
	for i, ep := range order {
		r, err := e.c.do(e.ctx, "stats", request{method: "GET", path: "/api/stats", idempotent: true, order: []string{ep}})
		if err == nil && str(r.object(), "state") == "leader" {
			order[0], order[i] = order[i], order[0]
			break
		}
	}
	return order
}

// --- compact, transfer-leadership ---

func compact(e *env, _ []string, _ *opts) error {
	r, err := e.c.do(e.ctx, "compact", request{method: "POST", path: "/api/compact"})
	if err != nil {
		return err
	}
	if e.g.json {
		return e.raw(r.body)
	}
	m := r.object()
	var parts []string
	for _, k := range sortedAnyKeys(m) {
		if k != "success" {
			parts = append(parts, fmt.Sprintf("%s=%s", k, str(m, k)))
		}
	}
	fmt.Fprintf(e.stdout, "compacted through %s %s\n", r.endpoint, strings.Join(parts, " "))
	return nil
}

func sortedAnyKeys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func transferLeadership(e *env, _ []string, o *opts) error {
	path := "/api/transfer-leadership"
	if o.to != "" {
		path += "?" + url.Values{"to": {o.to}}.Encode()
	}
	r, err := e.c.do(e.ctx, "transfer-leadership", request{method: "POST", path: path})
	if err != nil {
		return err
	}
	if e.g.json {
		return e.raw(r.body)
	}
	m := r.object()
	fmt.Fprintf(e.stdout, "leader: %s -> %s\n", str(m, "previous"), str(m, "leader"))
	return nil
}
