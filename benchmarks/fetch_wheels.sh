#!/usr/bin/env bash
# Download, here, the wheels device_check.sh installs on a device machine that has only
# torch, transformers and sentencepiece: spactor's other import-time dependencies
# (pure-Python wheels). Usage: benchmarks/fetch_wheels.sh [DIR]  (default: .whl, which
# .git/info/exclude should ignore; carry it to the device with the working tree).
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$dir" omegaconf==2.4.0 torchdata==0.11.0
ls -l "$dir"
