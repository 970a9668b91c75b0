#!/usr/bin/env bash
# One device call (<= 600 s) on a lent GPU machine: build rfrt with CUDA, then measure, highest value first,
# appending every result under $OUT as it comes, and print a compact summary table last.
#
#   RFRT_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_session.sh      # on the device (no .git there)
#   RFRT_GPU_DRY_RUN=1 bash benchmarks/gpu_session.sh                              # CPU dry run, tiny shapes
#
# Stages (each time-boxed; the whole script stops starting stages at RFRT_DEADLINE_S, default 510 s):
#   build     cmake, RFRT_CUDA=ON, nvcc located explicitly, sm_90 only; build_info()["cuda"] asserted.
#             Full log in build.log. If it fails, the probes run torch-only (--no-core).
#   stream    the random-weight 1.3B DiT streaming (gpu_probe.py stream): FPS, first chunk, graph vs eager
#   micro     SDPA backends at the real views, GEMMs, FP8, the rfrt kernels, copy/matmul peaks
#   kernels   device RingCache vs the CPU kernels at the real geometry, error flag, opcheck
#   tests     pytest -m gpu tests/ (per-test timeout), the real-geometry graph test included
#   memcheck, initcheck  compute-sanitizer (torch's caching allocator off), rfrt kernels only; the dry run
#             runs the same workload without the tool ("sanitize")
#   profile   one chunk under torch.profiler: time per category, top kernels
# Files back (7 of the 8 allowed): summary.txt build.log probe.jsonl probe.log tests.log sanitizer.log profile.txt
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=${RFRT_GPU_DRY_RUN:-0}
# A dry run on a small shared CPU box starts Python slowly: its boxes and deadline are scaled up (x3).
SCALE=${RFRT_BOX_SCALE:-$([ "$DRY" = 1 ] && echo 3 || echo 1)}
DEADLINE=$((START + ${RFRT_DEADLINE_S:-$((510 * SCALE))}))
OUT=${OUT:-/tmp/rfrt-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
COMMIT=${RFRT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 1 ]; then
  PROBE_ARGS="--device cpu --tiny"
else
  PROBE_ARGS="--device cuda"
fi
: > "$OUT/probe.jsonl"
: > "$OUT/summary.txt"
STAGES=()

note() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/probe.log"; }

# run_stage NAME SECONDS LOG CMD...: time-boxed by `timeout`, never aborts the script, records its status.
run_stage() {
  local name=$1 box=$(($2 * SCALE)) log=$3
  shift 3
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -le 5 ]; then
    note "stage $name skipped: past the deadline"
    STAGES+=("$name skipped-deadline 0")
    return 0
  fi
  [ "$box" -gt "$left" ] && box=$left
  note "stage $name (box ${box}s)"
  local t0 rc
  t0=$(date +%s)
  # shell functions run in a child bash (exported below), so `timeout` can kill the whole stage
  timeout --kill-after=5 "$box" bash -c '"$@"' stage "$@" >> "$log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  [ "$rc" -ne 0 ] && [ "$status" = ok ] && status="rc=$rc"
  note "stage $name: $status in ${dt}s"
  STAGES+=("$name $status $dt")
}

probe() {  # probe STAGE [args]: gpu_probe.py with the session's deadline, JSON lines into probe.jsonl
  local stage=$1
  shift
  # shellcheck disable=SC2086
  "$PY" benchmarks/gpu_probe.py "$stage" $PROBE_ARGS $CORE_ARGS --out "$OUT/probe.jsonl" --deadline "$DEADLINE" "$@"
}

# ---- environment ----
{
  echo "commit $COMMIT  dry_run $DRY  start $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version() if torch.cuda.is_available() else None)"
} > "$OUT/build.log" 2>&1

# ---- build ----
find_nvcc() {
  for c in "${CUDACXX:-}" "$(command -v nvcc 2>/dev/null)" /usr/local/cuda/bin/nvcc; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }
  done
  "$PY" - <<'PY' 2>/dev/null
import glob, site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]:
    for c in glob.glob(d + "/nvidia/cu1*/bin/nvcc"):
        print(c); sys.exit(0)
PY
}
build() {
  local bdir cuda
  if [ "$DRY" = 1 ]; then
    bdir=build/gpu-session-dry; cuda=OFF
  else
    bdir=build/gpu-session; cuda=ON
    NVCC=$(find_nvcc)
    echo "nvcc: ${NVCC:-not found}"
    [ -n "${NVCC:-}" ] || return 3
    "$NVCC" --version | tail -2
    # The PyPI toolkit ships lib/ while nvcc links from lib64/.
    [ -d "$(dirname "$NVCC")/../lib64" ] || ln -sfn lib "$(dirname "$NVCC")/../lib64" 2>/dev/null || true
  fi
  local gen=Ninja
  command -v ninja >/dev/null || gen="Unix Makefiles"
  cmake -S . -B "$bdir" -G "$gen" -DRFRT_CUDA=$cuda ${NVCC:+-DCMAKE_CUDA_COMPILER="$NVCC"} \
    -DCMAKE_CUDA_ARCHITECTURES=90 -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DPython_EXECUTABLE="$(command -v "$PY")" || return 4
  cmake --build "$bdir" -j "${RFRT_BUILD_JOBS:-16}" -v || return 5
  local so
  so=$(ls "$bdir"/_C*.so | head -n 1)
  cp "$so" "python/rfrt/.$(basename "$so").tmp" && mv -f "python/rfrt/.$(basename "$so").tmp" "python/rfrt/$(basename "$so")"
  if [ "$DRY" = 1 ]; then
    "$PY" -c "import rfrt; i = rfrt.build_info(); print(i)"
  else
    "$PY" -c "import rfrt; i = rfrt.build_info(); print(i); assert i['cuda'] and '90' in i['cuda_architectures'], i"
  fi
}
CORE_ARGS=""
export START DEADLINE OUT PY DRY PROBE_ARGS CORE_ARGS
export -f note probe find_nvcc build
run_stage build 170 "$OUT/build.log" build
if [ "${STAGES[-1]#build }" != "ok ${STAGES[-1]##* }" ]; then
  note "build failed: torch-only measurements (--no-core); see build.log"
  CORE_ARGS="--no-core"
  export CORE_ARGS
fi

# ---- measurements, highest value first ----
run_stage stream 170 "$OUT/probe.log" probe stream
run_stage micro 70 "$OUT/probe.log" probe micro
if [ -z "$CORE_ARGS" ]; then
  run_stage kernels 50 "$OUT/probe.log" probe kernels
  run_stage tests 100 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ -o timeout=60 \
    -x --maxfail=5 -rs
  if command -v compute-sanitizer >/dev/null && [ "$DRY" != 1 ]; then
    san() {  # san TOOL: memcheck sees out-of-bounds accesses only outside torch's caching allocator: turn it off
      echo "== $1 =="
      local rc filter
      for filter in "--kernel-name kns=rfrt" "--filter kns=rfrt"; do  # current syntax, then the older one
        # shellcheck disable=SC2086
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" $filter --error-exitcode 9 \
          --print-limit 20 "$PY" benchmarks/gpu_probe.py sanitize --device cuda --out "$OUT/probe.jsonl" \
          > "/tmp/rfrt-san-$1.log" 2>&1
        rc=$?
        cat "/tmp/rfrt-san-$1.log"
        grep -qiE "unrecognized option|unknown option|invalid option" "/tmp/rfrt-san-$1.log" || break
        echo "(filter '$filter' refused, retrying)"
      done
      echo "$1 exit $rc"
      return $rc
    }
    export -f san
    run_stage memcheck 60 "$OUT/sanitizer.log" san memcheck
    run_stage initcheck 50 "$OUT/sanitizer.log" san initcheck
  else
    echo "compute-sanitizer not run (dry run or not installed)" > "$OUT/sanitizer.log"
    run_stage sanitize 40 "$OUT/sanitizer.log" probe sanitize
  fi
fi
run_stage profile 40 "$OUT/probe.log" probe profile --profile-out "$OUT/profile.txt"
[ -f "$OUT/tests.log" ] || echo "gpu tests not run (build failed)" > "$OUT/tests.log"
[ -f "$OUT/sanitizer.log" ] || echo "sanitizer not run (build failed)" > "$OUT/sanitizer.log"
[ -f "$OUT/profile.txt" ] || echo "no profile" > "$OUT/profile.txt"

# ---- summary table, printed last ----
{
  echo "rfrt GPU session  commit $COMMIT  dry_run $DRY  total $(( $(date +%s) - START ))s"
  printf '%-10s %-16s %s\n' stage status seconds
  for s in "${STAGES[@]}"; do printf '%-10s %-16s %s\n' $s; done
  echo
  grep -E "passed|failed|error|skipped" "$OUT/tests.log" | tail -1
  grep -E "ERROR SUMMARY|exit [0-9]" "$OUT/sanitizer.log" | head -4
  "$PY" - "$OUT/probe.jsonl" <<'PY'
import json, sys
keys = ("ms_per_chunk", "fps_dit_only", "first_chunk_cold_s", "first_chunk_after_warmup_s", "first_chunk_warm_s",
        "max_abs_graphs_vs_eager",
        "chosen", "auto_tflops", "cudnn_tflops", "flash_tflops", "tflops", "ms", "gbs", "kv_max_abs", "ok",
        "matmul_tflops", "copy_gbs", "unfused_ms", "fused_ms", "bf16_ms", "finite", "est_fps_dit_only", "skipped")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("name") == "stage-done":
        continue
    cells = []
    for k in keys:
        if k in r:
            v = r[k]
            cells.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    print(f"{r['stage']:<8} {r.get('name', ''):<26} " + " ".join(cells)[:200])
PY
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
