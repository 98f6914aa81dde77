// Command kvctl is the operator's command-line tool for a cluster of
// kvserver processes (examples/kvserver): it talks to their HTTP API, on
// any member, as etcdctl does to etcd.
//
//	go install github.com/cohortkv/kv/cmd/kvctl@latest
//	kvctl --endpoints http://10.0.0.1:8000,http://10.0.0.2:8000 status
//
// "kvctl help" lists the commands, flags and exit codes; docs/operations.md
// has examples.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit codes: what a script can tell apart.
const (
	exitOK          = 0 // done
	exitError       = 1 // the server refused or failed the request, or a local error
	exitUsage       = 2 // bad command line
	exitNotFound    = 3 // get: no such key
	exitConflict    = 4 // the server answered 409 (a compare failed)
	exitUnavailable = 5 // no endpoint reachable, or all answered unavailable (no leader, shutting down)
	exitNoSpace     = 6 // the server answered 507: no space (disk full or quota)
	exitUnknown     = 7 // timed out on the server; a write's outcome is unknown
)

// defaultEndpoint is kvserver's default -http address.
const defaultEndpoint = "http://127.0.0.1:8000"

const usage = `kvctl: operate a cohort/kv cluster of kvserver processes through their HTTP API.

Usage:
  kvctl [flags] COMMAND [args] [flags]

Commands:
  status [--cluster]              each endpoint's member: state, term, commit and applied
                                  indexes, data size, and who leads (--cluster: every member
                                  of the cluster, also those not in --endpoints)
  members                         the member list: ID, addresses, gossip status, suffrage, leader
  get KEY [--stale]               print the key's value (exit 3 when absent)
  put KEY VALUE|- [--ttl D] [--lease ID]
                                  write a key; "-" reads the value from stdin
  del KEY                         delete a key (absent keys too)
  list PREFIX [--limit N] [--keys-only] [--stale]
                                  the keys under PREFIX, sorted, with their values
  watch PREFIX [--rev N]          print changes under PREFIX as they come, from revision N
                                  (default: from now), until interrupted; resumes on another
                                  endpoint when the stream breaks
  backup FILE [--stale]           save a copy of the whole data set to FILE ("-": stdout)
  restore FILE                    replace the whole data set with the copy in FILE (sent to
                                  the leader, which must be among --endpoints)
  compact                         compact the store's files (POST /api/compact)
  transfer-leadership [--to ID]   hand the leadership to voter ID, or to any caught-up voter
  help                            this text

Global flags (before or after the command):
  --endpoints URLS   comma-separated kvserver HTTP addresses, tried in order: the next is
                     tried when one is unreachable or answers unavailable (503)
                     (env KVCTL_ENDPOINTS; default ` + defaultEndpoint + `)
  --json             machine-readable output on stdout (JSON; one object a line for watch)
  --timeout D        bound of one request to one endpoint (default 15s)
  --progress         show the progress of backup and restore on stderr even when it is
                     not a terminal

Exit codes:
  0  done
  1  error: the request was refused or failed (the message says why)
  2  usage: bad command line
  3  not found: get of an absent key
  4  conflict: a compare failed (409)
  5  unavailable: no endpoint reachable, or none has a leader (503); nothing was done
  6  no space: the server is out of disk space or over its quota (507); nothing was written
  7  timed out on the server (504): a write's outcome is unknown, read before repeating it

Errors go to stderr as "kvctl: <what>: <endpoint>: <server message>".
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cliError is an error with the exit code it ends kvctl with.
type cliError struct {
	code int
	msg  string
}

func (e *cliError) Error() string { return e.msg }

func usageErr(format string, args ...any) error {
	return &cliError{exitUsage, fmt.Sprintf(format, args...)}
}

// globals are the flags every command takes.
type globals struct {
	endpoints string
	json      bool
	timeout   time.Duration
	progress  bool
}

func (g *globals) register(fs *flag.FlagSet) {
	def := defaultEndpoint
	if v := os.Getenv("KVCTL_ENDPOINTS"); v != "" {
		def = v
	}
	fs.StringVar(&g.endpoints, "endpoints", def, "comma-separated kvserver HTTP addresses (KVCTL_ENDPOINTS)")
	fs.BoolVar(&g.json, "json", false, "machine-readable JSON output")
	fs.DurationVar(&g.timeout, "timeout", 15*time.Second, "bound of one request to one endpoint")
	fs.BoolVar(&g.progress, "progress", false, "show backup and restore progress on stderr even when it is not a terminal")
}

// parse parses args with fs, flags and positional arguments mixed in any
// order, and returns the positional ones. After "--" every argument is
// positional (a value that starts with "-").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var after []string
	for i, a := range args {
		if a == "--" {
			args, after = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		// Parse stops at the first positional argument.
		if args = fs.Args(); len(args) == 0 {
			return append(pos, after...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// run runs kvctl with args and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var g globals
	// Global flags before the command.
	pre := flag.NewFlagSet("kvctl", flag.ContinueOnError)
	pre.SetOutput(io.Discard)
	g.register(pre)
	if err := pre.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "kvctl: %v (kvctl help)\n", err)
		return exitUsage
	}
	if pre.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	name, rest := pre.Arg(0), pre.Args()[1:]
	cmd, ok := commands[name]
	if name == "help" {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if !ok {
		fmt.Fprintf(stderr, "kvctl: unknown command %q (kvctl help)\n", name)
		return exitUsage
	}
	// The command's flags, and the global ones again, after the command.
	fs := flag.NewFlagSet("kvctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pre.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	var o opts
	cmd.flags(fs, &o)
	pos, err := parse(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if err == nil && (len(pos) < cmd.minArgs || len(pos) > cmd.maxArgs) {
		err = fmt.Errorf("%s takes %s", name, cmd.args)
	}
	if err == nil && g.timeout <= 0 {
		err = fmt.Errorf("--timeout %v: want more than 0", g.timeout)
	}
	var eps []string
	if err == nil {
		eps, err = parseEndpoints(g.endpoints)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvctl: %v (kvctl help)\n", err)
		return exitUsage
	}
	e := &env{ctx: ctx, g: g, c: newClient(eps, g.timeout), stdin: stdin, stdout: stdout, stderr: stderr}
	if err := cmd.run(e, pos, &o); err != nil {
		var ce *cliError
		if !errors.As(err, &ce) {
			ce = &cliError{exitError, err.Error()}
			if ctx.Err() != nil {
				ce.msg = "interrupted: " + ce.msg
			}
		}
		fmt.Fprintf(stderr, "kvctl: %s\n", strings.TrimSpace(ce.msg))
		return ce.code
	}
	return exitOK
}

// parseEndpoints splits a comma-separated list of HTTP addresses; a
// host:port without a scheme is taken as http://host:port.
func parseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return nil, fmt.Errorf("--endpoints: %q: want http:// or https://", e)
		}
		out = append(out, strings.TrimRight(e, "/"))
	}
	if len(out) == 0 {
		return nil, errors.New("--endpoints: empty")
	}
	return out, nil
}
