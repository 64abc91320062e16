#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py), as run on a device machine: installs carried wheels
# (.whl/: pydantic, pymatgen, spglib and their dependencies, downloaded on a machine with a
# package registry) without any network, puts the workspace sources on PYTHONPATH, runs the check.
# Usage: bash bench/gpu_check.sh [--dry-run] [--tests] [gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-index --find-links .whl .whl/*.whl || echo "warning: some wheels did not install"
fi
export PYTHONPATH="packages/xtal-repr/src:packages/flowcore/src:packages/xtal-eval/src:packages/crystalflow-cli/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
