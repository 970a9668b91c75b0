#!/bin/bash
# Issue 12's claims table (the paper's Table 3 in miniature) on the endless world: one evaluate_claims process per
# arm (16 held-out prompts x noise seeds 0 1, 60 chunks = 180 frames each), skipping arms whose JSON exists, then
# the table. Run from the checkout root after the stages of train/README.md ("The embedded default model"):
#   bash train/claims_default.sh [OUT_DIR=runs/claims] [JOBS=1]
# The sink, alpha and bf16 arms stream the full student (S) with another sink or precision (bf16: the student in
# bfloat16 with the reference's rounding of the EMA sink, "cache", or the fp32 accumulator); the other arms are
# other students (DMD variants, the ODE init shipped before, the on-policy student shipped after it, the
# world-teacher student = the shipped default model, the last two with their own sink and bf16 arms, the previous
# default model).
set -euo pipefail
OUT=${1:-runs/claims}; JOBS=${2:-1}; S=runs/default/redmd/export
mkdir -p "$OUT"
ARMS=(
  "a_full|full: Re-DMD beta 2, EMA sink 0.999|$S:0.999"
  "b_plain|without Re-DMD (plain DMD)|runs/default/dmd_plain/export:0.999"
  "c_static|static sink (alpha 1)|$S:1.0"
  "d_nosink|no sink (alpha 0, sliding window)|$S:0.0"
  "e_a099|alpha 0.99|$S:0.99"
  "f_a09|alpha 0.9|$S:0.9"
  "g_a05|alpha 0.5|$S:0.5"
  "h_trainstatic|training sink static (Re-DMD beta 2)|runs/default/redmd_static/export:0.999"
  "i_b05|Re-DMD beta 0.5|runs/default/redmd_b05/export:0.999"
  "i_b5|Re-DMD beta 5|runs/default/redmd_b5/export:0.999"
  "j_bf16cache|bf16 model, sink_precision cache (reference rounding)|$S:0.999:cache:bf16"
  "j_bf16fp32|bf16 model, fp32 sink accumulator|$S:0.999:fp32:bf16"
  "k_ode|ODE init (no DMD; the default model shipped before), EMA sink 0.999|runs/default/ode/export:0.999"
  "l_ship_nosink|the ODE init, no sink|runs/default/ode/export:0.0"
  "m_onpolicy|on-policy student (shipped before the world-teacher step), EMA sink 0.999|runs/default/onpolicy/export:0.999"
  "n_onpolicy_nosink|the on-policy student, no sink|runs/default/onpolicy/export:0.0"
  "o_onpolicy_bf16cache|the on-policy student in bf16, sink_precision cache|runs/default/onpolicy/export:0.999:cache:bf16"
  "o_onpolicy_bf16fp32|the on-policy student in bf16, fp32 sink accumulator|runs/default/onpolicy/export:0.999:fp32:bf16"
  "p_world|world-teacher student (the shipped default model), EMA sink 0.999|runs/default/ode_world/export:0.999"
  "q_world_nosink|the shipped default model, no sink|runs/default/ode_world/export:0.0"
  "r_world_bf16cache|the shipped default model in bf16, sink_precision cache|runs/default/ode_world/export:0.999:cache:bf16"
  "r_world_bf16fp32|the shipped default model in bf16, fp32 sink accumulator|runs/default/ode_world/export:0.999:fp32:bf16"
  "z_prev|previous default model (ec20772)|runs/init/python/rfrt/default_model:0.999"
)
run_arm() {  # FILE NAME SPEC
  python -m train.evaluate_claims run --arm "$2=$3" --prompts 16 --seeds 0 1 --chunks 60 --json "$OUT/$1.json" \
    > "$OUT/$1.log" 2>&1 || { echo "arm $1 failed: see $OUT/$1.log" >&2; return 1; }
}
for arm in "${ARMS[@]}"; do
  IFS='|' read -r file name spec <<< "$arm"
  [ -f "$OUT/$file.json" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  run_arm "$file" "$name" "$spec" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done
python -m train.evaluate_claims table "$OUT"/*.json --out "$OUT/table.md"
