#!/usr/bin/env bash
# Install what the tests need, start the real servers, run every test session.
#   bash scripts/test.sh                 # lint, types, core, every plugin, end-to-end, docs, Go interop
#   bash scripts/test.sh -s tests_core   # any nox arguments
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${MACHINERY_TOOLS:-$PWD/.venv-tools}"
if [ ! -x "$TOOLS/bin/nox" ] || [ ! -x "$TOOLS/bin/uv" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check 'nox>=2024.4' 'uv>=0.4'
fi
export PATH="$TOOLS/bin:$PATH"

bash scripts/start-services
bash scripts/install-chromium  # machinery-dashboard's browser tests
# shellcheck disable=SC1091
source "${SVC_DIR:-/tmp/ci-services}/env.sh"

if [ "$#" -gt 0 ]; then
  exec nox "$@"
fi
if [ -n "${MACHINERY_TEST_SERIAL:-}" ]; then
  exec nox -t lint core plugins e2e docs interop
fi
# Two streams at once: the plugins' sessions, and the rest (lint, types, core, e2e, docs, Go
# interop). Their tests mostly wait on servers, so on a 2-core machine the two together take
# about as long as the plugins alone (MACHINERY_TEST_SERIAL=1 runs them one after the other).
# Each stream's output is shown when it ends; the exit status is non-zero if either failed.
logs="$(mktemp -d)"
echo "running the plugins' sessions and the others in parallel; output in $logs/ when each ends"
nox -t plugins > "$logs/plugins.log" 2>&1 &
plugins=$!
nox -t lint core e2e docs interop > "$logs/others.log" 2>&1 &
others=$!
status=0
wait "$others" || status=$?
echo "== lint, types, core, e2e, docs, interop (exit $status) =="
cat "$logs/others.log"
pstatus=0
wait "$plugins" || pstatus=$?
echo "== plugins (exit $pstatus) =="
cat "$logs/plugins.log"
if [ "$status" -ne 0 ] || [ "$pstatus" -ne 0 ]; then
  echo "FAILED: lint/core/e2e/docs/interop exit $status, plugins exit $pstatus"
  exit 1
fi
