// Package logging routes the log output of the third-party libraries used by
// cohortkv into a structured [*slog.Logger].
//
// hashicorp/raft logs through the [hclog.Logger] interface; [HCLog] provides an
// implementation of that interface backed by slog. hashicorp/memberlist logs
// through a standard library [*log.Logger] with "[LEVEL]" tags embedded in
// the text; [StdLog] returns such a logger whose lines are parsed and re-emitted
// as slog records at the matching level. Both lower the level of lines that
// report what a healthy cluster meets (a peer down, a vote refused, a
// connection closed at shutdown) so that errors are left for errors; see
// levels.go. [Discard] returns a logger that drops everything, for tests
// and for callers that do not want any output.
package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// LevelTrace is the slog level used for hclog's Trace level and for lines
// tagged "[TRACE]". It is one step (4) below [slog.LevelDebug].
const LevelTrace = slog.LevelDebug - 4

// ComponentKey is the attribute key under which the adapters record the name
// of the logging component (for example "raft" or "memberlist").
const ComponentKey = "component"

// Discard returns a logger whose handler drops every record. Its Enabled
// method always reports false, so adapters built on it do no formatting work.
func Discard() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

// HCLog returns an [hclog.Logger] that writes to l. If name is not empty
// every record carries a [ComponentKey] attribute with that name; Named and
// ResetNamed change it the way hclog changes its logger names (Named joins
// with a dot).
//
// hclog levels map to slog levels as Trace→[LevelTrace], Debug→Debug,
// Info→Info, Warn→Warn and Error→Error; a message logged with
// [hclog.NoLevel] is emitted at Info. Key/value arguments become slog
// attributes: a trailing key without a value is recorded under
// [hclog.MissingKey], non-string keys are formatted with fmt, [hclog.Format]
// values are rendered with fmt.Sprintf, hclog's Hex/Octal/Binary/Quote
// helpers become strings formatted like hclog does, and all other values
// (including errors) are passed to slog unchanged.
//
// The logger keeps its own minimum level, Info by default, which is shared
// with every logger derived from it through With, Named and ResetNamed, as
// with a default hclog logger. Messages below that level, or below what l's
// handler accepts, are dropped before any arguments are converted. A nil l
// means [slog.Default]. The returned logger is safe for concurrent use.
func HCLog(l *slog.Logger, name string) hclog.Logger {
	if l == nil {
		l = slog.Default()
	}
	level := new(atomic.Int32)
	level.Store(int32(hclog.Info))
	return newHCLogger(l, name, nil, level, newTamer())
}

// hcLogger implements hclog.Logger on top of slog. All fields are immutable
// after construction except the shared atomic level.
type hcLogger struct {
	base    *slog.Logger  // logger given to HCLog, without name or implied args
	logger  *slog.Logger  // base with the component and implied args applied
	name    string        // hclog name, recorded as the component attribute
	implied []any         // normalised With arguments: string key, value, ...
	level   *atomic.Int32 // minimum hclog.Level, shared with derived loggers
	tame    *tamer        // levels of expected conditions, shared likewise
}

var _ hclog.Logger = (*hcLogger)(nil)

func newHCLogger(base *slog.Logger, name string, implied []any, level *atomic.Int32, tame *tamer) *hcLogger {
	lg := base
	if name != "" {
		lg = lg.With(slog.String(ComponentKey, name))
	}
	if len(implied) > 0 {
		attrs := make([]any, 0, len(implied)/2)
		for i := 0; i < len(implied); i += 2 {
			attrs = append(attrs, slog.Attr{Key: implied[i].(string), Value: hcValue(implied[i+1])})
		}
		lg = lg.With(attrs...)
	}
	return &hcLogger{base: base, logger: lg, name: name, implied: implied, level: level, tame: tame}
}

// Log emits msg with the key/value pairs args at the given hclog level.
func (h *hcLogger) Log(level hclog.Level, msg string, args ...any) {
	h.log(level, msg, args)
}

// Trace emits msg with the key/value pairs args at [LevelTrace].
func (h *hcLogger) Trace(msg string, args ...any) { h.log(hclog.Trace, msg, args) }

// Debug emits msg with the key/value pairs args at [slog.LevelDebug].
func (h *hcLogger) Debug(msg string, args ...any) { h.log(hclog.Debug, msg, args) }

// Info emits msg with the key/value pairs args at [slog.LevelInfo].
func (h *hcLogger) Info(msg string, args ...any) { h.log(hclog.Info, msg, args) }

// Warn emits msg with the key/value pairs args at [slog.LevelWarn].
func (h *hcLogger) Warn(msg string, args ...any) { h.log(hclog.Warn, msg, args) }

// Error emits msg with the key/value pairs args at [slog.LevelError].
func (h *hcLogger) Error(msg string, args ...any) { h.log(hclog.Error, msg, args) }

// log must be called directly from the exported logging methods so that the
// caller's program counter is found two frames up.
func (h *hcLogger) log(level hclog.Level, msg string, args []any) {
	sl, ok := h.enabled(level)
	if !ok {
		return
	}
	if sl >= slog.LevelWarn {
		// Reports of expected conditions are lowered (levels.go).
		if tamed := h.tame.hclog(sl, msg, args); tamed != sl {
			if !h.logger.Enabled(context.Background(), tamed) {
				return
			}
			sl = tamed
		}
	}
	h.emit(sl, msg, args, callerPC(2))
}

// enabled reports whether a message at level passes both the stored level
// and the slog handler, and returns the slog level to log it at.
func (h *hcLogger) enabled(level hclog.Level) (slog.Level, bool) {
	switch {
	case level == hclog.NoLevel:
		level = hclog.Info
	case level >= hclog.Off:
		// Off is a threshold, not a message level.
		return 0, false
	case level < hclog.NoLevel:
		level = hclog.Trace
	}
	if level < hclog.Level(h.level.Load()) {
		return 0, false
	}
	sl := slogLevel(level)
	return sl, h.logger.Enabled(context.Background(), sl)
}

func (h *hcLogger) emit(level slog.Level, msg string, args []any, pc uintptr) {
	r := slog.NewRecord(time.Now(), level, msg, pc)
	forPairs(args, func(key string, val any) {
		r.AddAttrs(slog.Attr{Key: key, Value: hcValue(val)})
	})
	_ = h.logger.Handler().Handle(context.Background(), r)
}

// is reports whether messages at level would be emitted.
func (h *hcLogger) is(level hclog.Level) bool {
	_, ok := h.enabled(level)
	return ok
}

// IsTrace reports whether Trace messages would be emitted.
func (h *hcLogger) IsTrace() bool { return h.is(hclog.Trace) }

// IsDebug reports whether Debug messages would be emitted.
func (h *hcLogger) IsDebug() bool { return h.is(hclog.Debug) }

// IsInfo reports whether Info messages would be emitted.
func (h *hcLogger) IsInfo() bool { return h.is(hclog.Info) }

// IsWarn reports whether Warn messages would be emitted.
func (h *hcLogger) IsWarn() bool { return h.is(hclog.Warn) }

// IsError reports whether Error messages would be emitted.
func (h *hcLogger) IsError() bool { return h.is(hclog.Error) }

// ImpliedArgs returns a copy of the key/value pairs added with With.
func (h *hcLogger) ImpliedArgs() []any {
	return slices.Clone(h.implied)
}

// With returns a logger that adds the key/value pairs args to every message.
// A key given again replaces its earlier value; a trailing key without a
// value is recorded under [hclog.MissingKey].
func (h *hcLogger) With(args ...any) hclog.Logger {
	implied := slices.Clone(h.implied)
	forPairs(args, func(key string, val any) {
		for i := 0; i < len(implied); i += 2 {
			if implied[i] == key {
				implied[i+1] = val
				return
			}
		}
		implied = append(implied, key, val)
	})
	return newHCLogger(h.base, h.name, implied, h.level, h.tame)
}

// Name returns the logger's name, which is also its component attribute.
func (h *hcLogger) Name() string { return h.name }

// Named returns a logger whose name is the current name and name joined by a
// dot, or just name if the current name is empty.
func (h *hcLogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return newHCLogger(h.base, name, h.implied, h.level, h.tame)
}

// ResetNamed returns a logger whose name is name, ignoring the current name.
// An empty name removes the component attribute.
func (h *hcLogger) ResetNamed(name string) hclog.Logger {
	return newHCLogger(h.base, name, h.implied, h.level, h.tame)
}

// SetLevel changes the minimum level of this logger and of every logger it
// shares its level with (its parent and all loggers derived from either).
// [hclog.NoLevel] restores the default, Info; [hclog.Off] drops everything.
func (h *hcLogger) SetLevel(level hclog.Level) {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	h.level.Store(int32(level))
}

// GetLevel returns the minimum level set with SetLevel (Info by default).
func (h *hcLogger) GetLevel() hclog.Level {
	return hclog.Level(h.level.Load())
}

// StandardLogger returns a *log.Logger without prefix or flags that writes
// through StandardWriter(opts).
func (h *hcLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

// StandardWriter returns an io.Writer that logs each written line through
// this logger. opts is interpreted like hclog does: ForceLevel logs every line
// at that level after stripping any "[LEVEL]" tag; otherwise InferLevels
// picks the level from a leading "[TRACE]", "[DEBUG]", "[INFO]", "[WARN]",
// "[ERR]" or "[ERROR]" tag and strips it (InferLevelsWithTimestamp first
// skips a timestamp in front of the tag); without either, lines are logged
// unchanged at Info. Unlike hclog, a nil opts means InferLevels.
func (h *hcLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{InferLevels: true}
	}
	return &hcWriter{
		h:           h,
		infer:       opts.InferLevels,
		inferStamps: opts.InferLevelsWithTimestamp,
		force:       opts.ForceLevel,
	}
}

type hcWriter struct {
	h           *hcLogger
	infer       bool
	inferStamps bool
	force       hclog.Level
}

// Write logs p as one message. It always reports len(p) bytes written.
func (w *hcWriter) Write(p []byte) (int, error) {
	line := bytes.TrimRight(p, " \t\r\n")
	level := hclog.Info
	switch {
	case w.force != hclog.NoLevel:
		_, line, _ = parseLevel(line)
		level = w.force
	case w.infer:
		if w.inferStamps {
			line = trimTimestamp(line)
		}
		level, line, _ = parseLevel(line)
	}
	sl, ok := w.h.enabled(level)
	if !ok {
		return len(p), nil
	}
	// Skip log.(*Logger).output and its exported caller (Print, Output...).
	w.h.emit(sl, string(line), nil, callerPC(3))
	return len(p), nil
}

// StdLog returns a *log.Logger (no prefix, flags 0) suitable for
// memberlist's Config.Logger. Each line written to it is logged to l with a
// [ComponentKey] attribute set to name (omitted if name is empty). A leading
// "[LEVEL]" tag selects the level and is removed from the message: TRACE →
// [LevelTrace], DEBUG → Debug, INFO → Info, WARN → Warn, ERR or ERROR →
// Error; lines without a tag are logged at Info. A timestamp in front of the
// tag (as produced when the logger's flags are changed) is skipped, and
// trailing whitespace including the newline is trimmed. The handler's
// Enabled method is consulted before the message string and record are built.
// A nil l means [slog.Default].
func StdLog(l *slog.Logger, name string) *log.Logger {
	if l == nil {
		l = slog.Default()
	}
	if name != "" {
		l = l.With(slog.String(ComponentKey, name))
	}
	return log.New(&stdWriter{h: l.Handler(), tame: newTamer()}, "", 0)
}

type stdWriter struct {
	h    slog.Handler
	tame *tamer
}

// Write logs p as one record. It reports len(p) bytes written and the
// handler's error, if any.
func (w *stdWriter) Write(p []byte) (int, error) {
	line := trimTimestamp(bytes.TrimRight(p, " \t\r\n"))
	level, line, _ := parseLevel(line)
	sl := slogLevel(level)
	if sl >= slog.LevelWarn {
		sl = w.tame.line(sl, line)
	}
	ctx := context.Background()
	if !w.h.Enabled(ctx, sl) {
		return len(p), nil
	}
	// Skip log.(*Logger).output and its exported caller (Printf, Output...).
	r := slog.NewRecord(time.Now(), sl, string(line), callerPC(3))
	return len(p), w.h.Handle(ctx, r)
}

// slogLevel maps a valid hclog message level to a slog level.
func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

var levelTags = []struct {
	tag   []byte
	level hclog.Level
}{
	{[]byte("[TRACE]"), hclog.Trace},
	{[]byte("[DEBUG]"), hclog.Debug},
	{[]byte("[INFO]"), hclog.Info},
	{[]byte("[WARN]"), hclog.Warn},
	{[]byte("[ERROR]"), hclog.Error},
	{[]byte("[ERR]"), hclog.Error},
}

// parseLevel recognises a leading level tag in line. It returns the level
// (Info if there is no tag), line without the tag and the spaces after it,
// and whether a tag was found.
func parseLevel(line []byte) (hclog.Level, []byte, bool) {
	if len(line) == 0 || line[0] != '[' {
		return hclog.Info, line, false
	}
	for _, t := range levelTags {
		if bytes.HasPrefix(line, t.tag) {
			return t.level, bytes.TrimLeft(line[len(t.tag):], " \t"), true
		}
	}
	return hclog.Info, line, false
}

// trimTimestamp removes a leading standard-library-style timestamp
// ("2006/01/02 15:04:05.000000 ") if, and only if, a "[" follows it.
func trimTimestamp(line []byte) []byte {
	i := 0
	for i < len(line) {
		c := line[i]
		if (c >= '0' && c <= '9') || c == ' ' || c == '/' || c == ':' || c == '.' || c == '-' || c == '+' || c == 'T' || c == 'Z' {
			i++
			continue
		}
		break
	}
	if i > 0 && i < len(line) && line[i] == '[' {
		return line[i:]
	}
	return line
}

// callerPC returns the program counter of the function skip frames above the
// caller of callerPC (skip 1 is the caller's caller).
func callerPC(skip int) uintptr {
	var pcs [1]uintptr
	// Skip runtime.Callers, callerPC and the function calling callerPC.
	runtime.Callers(skip+2, pcs[:])
	return pcs[0]
}

// forPairs calls fn for every key/value pair in hclog-style args. A trailing
// CapturedStacktrace is recorded under "stacktrace" and any other trailing
// value under hclog.MissingKey, as hclog does.
func forPairs(args []any, fn func(key string, val any)) {
	n := len(args)
	if n%2 != 0 {
		n--
	}
	for i := 0; i < n; i += 2 {
		fn(keyString(args[i]), args[i+1])
	}
	if n < len(args) {
		extra := args[n]
		if st, ok := extra.(hclog.CapturedStacktrace); ok {
			fn("stacktrace", st)
		} else {
			fn(hclog.MissingKey, extra)
		}
	}
}

func keyString(k any) string {
	switch k := k.(type) {
	case string:
		return k
	case fmt.Stringer:
		return k.String()
	default:
		return fmt.Sprint(k)
	}
}

// hcValue converts an hclog argument value into a slog value.
func hcValue(v any) slog.Value {
	switch v := v.(type) {
	case hclog.Format:
		return slog.StringValue(formatFmt(v))
	case hclog.Hex:
		return slog.StringValue("0x" + strconv.FormatUint(uint64(v), 16))
	case hclog.Octal:
		return slog.StringValue("0" + strconv.FormatUint(uint64(v), 8))
	case hclog.Binary:
		return slog.StringValue("0b" + strconv.FormatUint(uint64(v), 2))
	case hclog.Quote:
		return slog.StringValue(string(v))
	case hclog.CapturedStacktrace:
		return slog.StringValue(string(v))
	default:
		return slog.AnyValue(v)
	}
}

// formatFmt renders an hclog.Format without panicking on malformed input.
func formatFmt(f hclog.Format) string {
	if len(f) == 0 {
		return ""
	}
	if format, ok := f[0].(string); ok {
		return fmt.Sprintf(format, f[1:]...)
	}
	return fmt.Sprint(f...)
}
