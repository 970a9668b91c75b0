#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build rfrt there, run the CUDA tests (oracle parity,
# compute-sanitizer memcheck/racecheck) and the GPU benchmark suites, and leave logs + JSON in $OUT.
# The GPU machine has Python 3.12 + torch 2.11 + nvcc but no network: build against its own torch.
# RFRT_GPU_STEPS picks the steps (default all, in this order): "tests bench speed".
#   tests: every @pytest.mark.gpu test;  bench: the GPU benchmarks except bench_speed;
#   speed: bench_speed.py's GPU suite (fast paths, 1.3B shape) -> $OUT/speed-<commit>.json.
# The device tool allows 10 minutes per call: on a cold machine run "tests bench" and "speed" as two calls.
set -uo pipefail
out=${OUT:-/tmp/rfrt-gpu-out}
steps=${RFRT_GPU_STEPS:-"tests bench speed"}
mkdir -p "$out"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  pip install --no-build-isolation --no-deps . 2>&1 | tail -3
  python -c "import rfrt; print(rfrt.build_info())"
} > "$out/build.log" 2>&1
if [[ " $steps " == *" tests "* ]]; then
  python -m pytest -q -p no:cacheprovider -m gpu tests/ > "$out/gpu-tests.log" 2>&1
  echo "gpu tests exit $?" >> "$out/gpu-tests.log"
fi
if [[ " $steps " == *" bench "* ]]; then
  python -m pytest -q -p no:cacheprovider benchmarks/ -k gpu --ignore=benchmarks/bench_speed.py \
    --benchmark-json="$out/gpu-$commit.json" > "$out/gpu-bench.log" 2>&1
  echo "benchmarks exit $?" >> "$out/gpu-bench.log"
fi
if [[ " $steps " == *" speed "* ]]; then
  python -m pytest -q -p no:cacheprovider benchmarks/bench_speed.py -k gpu \
    --benchmark-json="$out/speed-$commit.json" --benchmark-columns=median,min,max,rounds \
    > "$out/speed-bench.log" 2>&1
  echo "speed benchmarks exit $?" >> "$out/speed-bench.log"
fi
tail -5 "$out"/*.log
