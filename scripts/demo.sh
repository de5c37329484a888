#!/usr/bin/env bash
# Install machinery-core and machinery-demo (the `machinery demo` command, a CLI plugin) into
# .venv and run the demo: a worker and a producer on the embedded default transport (no server
# needed), showing each result as it arrives.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MACHINERY_VENV:-$PWD/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check ./core ./plugins/machinery-demo
exec "$VENV/bin/machinery" demo "$@"
