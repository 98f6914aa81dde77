#!/usr/bin/env bash
# Starts three kvserver processes on 127.0.0.1 (HTTP on 8001-8003), or stops
# them. Data and logs go to ./kvserver-local/ under the current directory.
#
#   examples/kvserver/run-local.sh          # build and start node1..node3
#   examples/kvserver/run-local.sh start 2  # start (or restart) node2 only
#   examples/kvserver/run-local.sh stop     # stop all (SIGTERM: graceful)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${KV_LOCAL_DIR:-$PWD/kvserver-local}"
bin="$work/kvserver"
mkdir -p "$work"

start_node() {
  local i=$1 join=()
  for j in 1 2 3; do [[ $j != "$i" ]] && join+=("127.0.0.1:710$j"); done
  local IFS=,
  "$bin" -node-id "node$i" -data-dir "$work/node$i" \
    -bind "127.0.0.1:700$i" -gossip "127.0.0.1:710$i" -http "127.0.0.1:800$i" \
    -bootstrap-expect 3 -join "${join[*]}" >>"$work/node$i.log" 2>&1 &
  echo $! >"$work/node$i.pid"
  echo "node$i: pid $!, HTTP http://127.0.0.1:800$i, log $work/node$i.log"
}

case "${1:-start}" in
  start)
    (cd "$here/../.." && go build -o "$bin" ./examples/kvserver)
    if [[ -n "${2:-}" ]]; then start_node "$2"; else for i in 1 2 3; do start_node "$i"; done; fi
    ;;
  stop)
    for i in 1 2 3; do
      if [[ -f "$work/node$i.pid" ]]; then kill "$(cat "$work/node$i.pid")" 2>/dev/null || true; rm -f "$work/node$i.pid"; fi
    done
    ;;
  *) echo "usage: $0 [start [1|2|3] | stop]" >&2; exit 2 ;;
esac
