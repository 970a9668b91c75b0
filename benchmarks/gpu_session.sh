#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build rfrt there, run the CUDA tests (oracle parity,
# compute-sanitizer memcheck/racecheck) and the GPU benchmark suites, and leave logs + JSON in $OUT.
# The GPU machine has Python 3.12 + torch 2.11 + nvcc but no network: build against its own torch.
set -uo pipefail
out=${OUT:-/tmp/rfrt-gpu-out}
mkdir -p "$out"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  pip install --no-build-isolation --no-deps . 2>&1 | tail -3
  python -c "import rfrt; print(rfrt.build_info())"
} > "$out/build.log" 2>&1
python -m pytest -q -p no:cacheprovider -m gpu tests/ > "$out/gpu-tests.log" 2>&1
echo "gpu tests exit $?" >> "$out/gpu-tests.log"
python -m pytest -q -p no:cacheprovider benchmarks/ -k gpu \
  --benchmark-json="$out/gpu-$commit.json" > "$out/gpu-bench.log" 2>&1
echo "benchmarks exit $?" >> "$out/gpu-bench.log"
tail -5 "$out"/*.log
