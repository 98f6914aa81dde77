#!/usr/bin/env bash
# Starts three kvserver processes on 127.0.0.1 (HTTP on 8001-8003), or stops
# them. Data, logs and pid files go to ./kvserver-local/ under the current
# directory (KV_LOCAL_DIR sets another).
#
#   examples/kvserver/run-local.sh          # build, start node1..node3
#   examples/kvserver/run-local.sh start 2  # build, start node2 (stopping it first if it runs)
#   examples/kvserver/run-local.sh stop     # stop all three and wait until they have exited
#   examples/kvserver/run-local.sh stop 2   # stop node2 only
#
# stop sends SIGTERM (a graceful stop: a leader hands over first), waits up
# to KV_LOCAL_STOP_TIMEOUT seconds (default 45) for the processes to exit,
# then kills those still running with SIGKILL.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${KV_LOCAL_DIR:-$PWD/kvserver-local}"
stop_timeout="${KV_LOCAL_STOP_TIMEOUT:-45}"
[[ $stop_timeout =~ ^[0-9]+$ ]] || { echo "KV_LOCAL_STOP_TIMEOUT=$stop_timeout: want whole seconds" >&2; exit 2; }
bin="$work/kvserver"
mkdir -p "$work"

# running_pid prints the pid of node $1 if its pid file names a kvserver
# process that has not exited. A pid file left by a process that is gone
# (its pid perhaps reused by another program) names none.
running_pid() {
  local f="$work/node$1.pid" pid state comm
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r state comm < <(ps -o stat=,comm= -p "$pid" 2>/dev/null) || return 1
  [[ $comm == *kvserver* && $state != Z* ]] || return 1
  echo "$pid"
}

# stop_nodes stops the nodes named in its arguments and returns once each
# has exited.
stop_nodes() {
  local i pid left tick=0
  for i in "$@"; do
    if pid=$(running_pid "$i"); then
      echo "node$i: stopping pid $pid (SIGTERM)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  while :; do
    left=()
    for i in "$@"; do running_pid "$i" >/dev/null && left+=("$i"); done
    ((${#left[@]} == 0)) && break
    if ((tick >= stop_timeout * 10)); then
      for i in "${left[@]}"; do
        if pid=$(running_pid "$i"); then
          echo "node$i: still running ${stop_timeout}s after SIGTERM: SIGKILL to pid $pid" >&2
          kill -KILL "$pid" 2>/dev/null || true
        fi
      done
      # A killed process is gone at once; wait a little for the kernel.
      for ((tick = 0; tick < 50; tick++)); do
        left=()
        for i in "$@"; do running_pid "$i" >/dev/null && left+=("$i"); done
        ((${#left[@]} == 0)) && break
        sleep 0.1
      done
      ((${#left[@]} == 0)) || { echo "nodes ${left[*]} survived SIGKILL" >&2; exit 1; }
      break
    fi
    sleep 0.1
    tick=$((tick + 1))
  done
  for i in "$@"; do
    rm -f "$work/node$i.pid"
    echo "node$i: stopped"
  done
}

start_node() {
  local i=$1 join=()
  stop_nodes "$i" >/dev/null
  for j in 1 2 3; do [[ $j != "$i" ]] && join+=("127.0.0.1:710$j"); done
  local IFS=,
  "$bin" -node-id "node$i" -data-dir "$work/node$i" \
    -bind "127.0.0.1:700$i" -gossip "127.0.0.1:710$i" -http "127.0.0.1:800$i" \
    -bootstrap-expect 3 -join "${join[*]}" >>"$work/node$i.log" 2>&1 &
  echo $! >"$work/node$i.pid"
  echo "node$i: pid $!, HTTP http://127.0.0.1:800$i, log $work/node$i.log"
}

nodes() {
  case "${1:-}" in
    "") echo 1 2 3 ;;
    1 | 2 | 3) echo "$1" ;;
    *) echo "node $1: want 1, 2 or 3" >&2; exit 2 ;;
  esac
}

case "${1:-start}" in
  start)
    ns=$(nodes "${2:-}")
    (cd "$here/../.." && go build -o "$bin" ./examples/kvserver)
    for i in $ns; do start_node "$i"; done
    ;;
  stop)
    ns=$(nodes "${2:-}")
    # shellcheck disable=SC2086 # word splitting wanted
    stop_nodes $ns
    ;;
  *) echo "usage: $0 [start [1|2|3] | stop [1|2|3]]" >&2; exit 2 ;;
esac
