#!/usr/bin/env bash
# Static checks of kvserver's Docker and Kubernetes files and run-local.sh,
# for machines where Docker and Kubernetes do not run. Each check runs if
# its tool is installed and is reported as skipped otherwise:
#
#   docker-compose config   the compose file against the Compose schema
#                           (Debian: docker-compose; or the docker compose plugin)
#   go run .                kubernetes.yaml decoded strictly into k8s.io/api types
#   node schema.mjs         kubernetes.yaml against the Kubernetes OpenAPI schema
#   node dockerfile.mjs     the Dockerfile with dockerfile-utils
#                           (both with node and npm: npm install here first)
#   hadolint                the Dockerfile, where hadolint is installed
#   promtool                alerts.yml (check rules) and its unit tests,
#                           alerts_test.yml (test rules)
#                           (Debian: prometheus; .ci/run installs it in CI)
#   run-local.sh and this script, with ShellCheck
#
#   examples/kvserver/validate/check.sh
#
# Exits non-zero if a check that ran failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kvserver="$(dirname "$here")"
failed=0

run() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed=1; fi
}
skip() { echo "== $1: skipped ($2)"; }

if docker compose version >/dev/null 2>&1; then
  run "docker compose config" docker compose -f "$kvserver/docker-compose.yml" config -q
elif command -v docker-compose >/dev/null; then
  run "docker-compose config" docker-compose -f "$kvserver/docker-compose.yml" config -q
else
  skip "compose config" "no docker compose or docker-compose"
fi

if command -v go >/dev/null; then
  # shellcheck disable=SC2317 # called through run
  strict() { (cd "$here" && go run . "$kvserver/kubernetes.yaml"); }
  run "kubernetes.yaml: strict decode into k8s.io/api" strict
else
  skip "kubernetes.yaml: strict decode" "no go"
fi

if command -v node >/dev/null && command -v npm >/dev/null; then
  if [[ ! -d $here/node_modules ]]; then
    (cd "$here" && npm install --no-package-lock --no-audit --no-fund --silent) || failed=1
  fi
  run "kubernetes.yaml: Kubernetes schema" node "$here/schema.mjs" "$kvserver/kubernetes.yaml"
  run "Dockerfile: dockerfile-utils" node "$here/dockerfile.mjs" "$kvserver/Dockerfile"
else
  skip "kubernetes.yaml schema and Dockerfile lint" "no node and npm"
fi

if command -v hadolint >/dev/null; then
  run "Dockerfile: hadolint" hadolint "$kvserver/Dockerfile"
else
  skip "hadolint" "not installed"
fi

if command -v promtool >/dev/null; then
  run "alerts.yml: promtool check rules" promtool check rules "$kvserver/alerts.yml"
  run "alerts.yml: promtool test rules" promtool test rules "$kvserver/alerts_test.yml"
else
  skip "promtool (alerts.yml)" "not installed"
fi

if command -v shellcheck >/dev/null; then
  run "shellcheck" shellcheck "$kvserver/run-local.sh" "$here/check.sh"
else
  skip "shellcheck" "not installed"
fi

exit $failed
