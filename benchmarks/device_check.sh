#!/usr/bin/env bash
# One command on one H100/H200: benchmarks/device_check.sh OUT_DIR [--cpu-dry-run] [options]
# Writes OUT_DIR/device_check.json and OUT_DIR/device_check.md (see benchmarks/device_check.py).
# spactor runs from this checkout (PYTHONPATH); its import-time dependencies that the machine
# lacks (omegaconf, torchdata) are installed from wheels in $SPACTOR_WHEELS (default: .whl in
# the checkout, made by benchmarks/fetch_wheels.sh) into a private folder.
set -euo pipefail
out=${1:?usage: benchmarks/device_check.sh OUT_DIR [--cpu-dry-run] [options]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
# (torchdata < 0.8 has no stateful_dataloader; finding its spec does not import torch)
if ! "$python" -c "import omegaconf, importlib.util as u; assert u.find_spec('torchdata.stateful_dataloader')" 2>/dev/null; then
  wheels=${SPACTOR_WHEELS:-$root/.whl}
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "device_check.sh: omegaconf/torchdata are missing and $wheels holds no wheels (run benchmarks/fetch_wheels.sh)" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/spactor-device-site
  if "$python" -m pip --version >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  else  # no pip (an environment made by uv, say): these pure-Python wheels are zips of importable files
    for wheel in "$wheels"/*.whl; do "$python" -m zipfile -e "$wheel" "$site"; done
  fi
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
SPACTOR_DEVICE_CHECK_STARTED=$(date +%s.%N)  # the Python side's budget counts from here, as the timeout does
export SPACTOR_DEVICE_CHECK_STARTED
cd "$root"
# The Python side stops starting sections at its budget (450 s); this is the hard stop.
exec timeout --signal=TERM --kill-after=10 "${SPACTOR_DEVICE_CHECK_TIMEOUT:-470}" "$python" -m benchmarks.device_check "$out" "$@"
