# Sourced by quickstart.sh and test.sh: create the virtualenv and install molgen once.
# CPU torch 2.13.0 goes in first, so that no dependency pulls a CUDA build.
VENV="${MOLGEN_VENV:-.venv}"
if [ ! -x "$VENV/bin/molgen" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "torch==2.13.0"
  "$VENV/bin/pip" install --quiet -e ".[test]"
  # MOSES reference data (train/test SMILES, FCD statistics, filters); its pinned dependencies do
  # not install on current Python and molgen never imports it, so it comes without them.
  "$VENV/bin/pip" install --quiet --no-deps "molsets==0.3.1"
fi
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
