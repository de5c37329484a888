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
exec nox -t lint core plugins e2e docs interop
