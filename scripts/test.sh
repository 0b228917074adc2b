#!/usr/bin/env bash
# Set up (virtualenv + install) if needed, then run the whole test suite. CPU only, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOLGEN_VENV:-.venv}"
if [ ! -x "$VENV/bin/molgen" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # the CPU wheel of torch first, so that no dependency pulls a CUDA build
  "$VENV/bin/pip" install --quiet "torch==2.13.0"
  "$VENV/bin/pip" install --quiet -e ".[test]"
fi
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
