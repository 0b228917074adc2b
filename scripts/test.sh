#!/usr/bin/env bash
# Set up (virtualenv + install) if needed, then run the whole test suite. CPU only, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
