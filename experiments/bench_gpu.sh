#!/usr/bin/env bash
# The prepared device check (experiments/bench_gpu.py; docs/gpu.md). Run from the repository root.
#
#   bash experiments/bench_gpu.sh prepare   # here: recipes + MNI subjects (+ the monai wheel) into .bench_gpu/
#   bash experiments/bench_gpu.sh run       # on the device: the report into $OUT (or ./bench_gpu_out)
#   bash experiments/bench_gpu.sh quick     # here, on the CPU, tiny sizes (what tests/test_bench_gpu.py runs)
#
# The device tool's call after `prepare` (the folder travels by carry; ~9 minutes of the 15):
#   run(command="bash experiments/bench_gpu.sh run", carry=[".bench_gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=.bench_gpu
case "${1:-}" in
  prepare)
    python -m experiments.bench_gpu --prepare --data "$DATA"
    # TransMorph's Swin blocks come from monai (pure Python, ~2 MB): carried as a wheel for Python 3.12
    mkdir -p "$DATA/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DATA/wheels" monai==1.6.1 \
      || echo "warning: monai wheel not downloaded: TransMorph will report monai missing on the device" >&2
    du -sh "$DATA"
    ;;
  run)
    OUT="${OUT:-$PWD/bench_gpu_out}"
    mkdir -p "$OUT"
    if compgen -G "$DATA/wheels/*.whl" > /dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bench_site \
        "$DATA"/wheels/*.whl && export PYTHONPATH="/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    python3 -m experiments.bench_gpu --data "$DATA" --out "$OUT" "${@:2}" 2>&1 | tee "$OUT/bench_gpu.log"
    ;;
  quick)
    OUT="${OUT:-/tmp/bench_gpu_quick}"
    python -m experiments.bench_gpu --prepare --quick --data "$OUT/data"
    python -m experiments.bench_gpu --quick --device cpu --data "$OUT/data" --out "$OUT" "${@:2}"
    ;;
  *)
    echo "usage: bash experiments/bench_gpu.sh prepare | run [bench_gpu.py options] | quick" >&2
    exit 2
    ;;
esac
