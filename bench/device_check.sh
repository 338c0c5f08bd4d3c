#!/usr/bin/env bash
# The whole GPU check in one go, on a lent H100/H200, within 8 minutes (README "Benchmarks"):
#   1. which XLA GPU flags this jax accepts (an unknown flag aborts XLA, so each is probed);
#   2. ViT-B/16 CLIP, bf16, cuDNN attention inside the step (attention.impl=cudnn: an error if
#      cuDNN cannot run it, never a silent fallback), batch 256: default XLA flags, then tuned;
#   3. with the faster flags: larger batches, and remat=dots at the largest, to find the best
#      batch that fits (a batch that does not fit is logged and the sweep stops);
#   4. the tiny default model and a short attention-kernel sweep.
# Every check is `python -m mmjax.bench.step`, whose last line is JSON with step_s,
# examples_per_s, mfu (model FLOPs: 3 x forward) and hfu (the compiled step's FLOPs);
# summary.jsonl collects them. Uses the device's own python3 (jax with CUDA); wheels the
# device lacks (ml_collections) travel in .whl/.
#
#   bash bench/device_check.sh              # on the GPU, writes to $OUT (or ./device_out)
#   DRY_RUN=1 bash bench/device_check.sh    # on a CPU: the same sequence on tiny shapes
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
DRY=${DRY_RUN:-0}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1
: > "$OUT/summary.jsonl"
START=$(date +%s)

if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  CLIP="--config=tests/tiny_config.py --config.attention.impl=xla"  # float32: bf16 is slow on CPU
  DEFAULT="--config=tests/tiny_config.py --config.batch_size=16"
  B0=8; BATCHES="16"; STEPS="--steps=1 --warmup=1 --repeats=1"
  TUNED="--xla_cpu_enable_fast_min_max=false --xla_no_such_flag_for_the_probe=true"
else
  CLIP="--config=configs/clip_vit_b16.py --config.model.dtype=bfloat16 --config.attention.impl=cudnn"
  DEFAULT="--config=configs/default.py --config.model.dtype=bfloat16 --config.batch_size=512"
  B0=256; BATCHES="384 512 768"; STEPS="--steps=5 --warmup=2 --repeats=2"
  # JAX's GPU performance guide and MaxText's GPU defaults (single host: no collective flags).
  TUNED="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false
         --xla_gpu_enable_highest_priority_async_stream=true --xla_gpu_enable_while_loop_double_buffering=true"
fi

$PY -c "import jax, flax, optax, ml_collections" 2>/dev/null || {
  echo "error: $PY cannot import jax, flax, optax and ml_collections; set PYTHON=<a python that has them>, or put the missing wheels in .whl/"; exit 1; }
$PY - <<'PY' 2>&1 | tee "$OUT/env.txt"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print(jax.devices())
PY
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"

# 1. Keep the flags this XLA knows.
GOOD=""
for f in $TUNED; do
  if XLA_FLAGS="$f" timeout 60 $PY -c "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()" \
       >/dev/null 2>&1; then GOOD="$GOOD $f"; else echo "flag not accepted here: $f" | tee -a "$OUT/env.txt"; fi
done
GOOD=${GOOD# }
echo "tuned XLA_FLAGS: $GOOD" | tee -a "$OUT/env.txt"

SCALE=${TIMEOUT_SCALE:-1}  # a loaded CPU dry run may need more time per check
run() {  # name, timeout, XLA_FLAGS, args...: one bench.step run; its JSON joins summary.jsonl
  local name=$1 t=$(( $2 * SCALE )) xf=$3; shift 3
  echo "== $name: XLA_FLAGS='$xf' $PY -m mmjax.bench.step $*" | tee "$OUT/$name.log"
  XLA_FLAGS="$xf" timeout "$t" $PY -m mmjax.bench.step "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "exit $rc" >>"$OUT/$name.log"
  local js; js=$(grep '^{' "$OUT/$name.log" | tail -n 1)
  if [ $rc = 0 ] && [ -n "$js" ]; then
    echo "{\"check\": \"$name\", \"result\": $js}" >>"$OUT/summary.jsonl"
    grep -E '^  step ' "$OUT/$name.log" | tail -n 1
  else
    grep -iE 'error|resource|out of memory' "$OUT/$name.log" | tail -n 2
  fi
  return $rc
}
elapsed() { echo $(( $(date +%s) - START )); }

# 2. batch 256 (DRY: 8), default flags vs tuned flags.
run clip_b${B0}_default_flags 120 "" $CLIP --config.batch_size=$B0 $STEPS
run clip_b${B0}_tuned_flags 120 "$GOOD" $CLIP --config.batch_size=$B0 $STEPS
best=$($PY - "$OUT/summary.jsonl" <<'PY'
import json, sys
rows = {r["check"]: r["result"] for r in map(json.loads, open(sys.argv[1]))}
d = [v["step_s"] for k, v in rows.items() if k.endswith("_default_flags")]
t = [v["step_s"] for k, v in rows.items() if k.endswith("_tuned_flags")]
print("tuned" if t and (not d or t[0] < d[0]) else "default")
PY
)
FLAGS=""; [ "$best" = tuned ] && FLAGS="$GOOD"
echo "faster at batch $B0: $best flags" | tee -a "$OUT/env.txt"

# 3. Larger batches with the faster flags until one does not fit (or time runs short).
last=$B0
for b in $BATCHES; do
  [ "$(elapsed)" -gt 300 ] && { echo "skipping batch $b: $(elapsed) s used" | tee -a "$OUT/env.txt"; break; }
  run clip_b${b} 100 "$FLAGS" $CLIP --config.batch_size=$b $STEPS || break
  last=$b
done
[ "$(elapsed)" -lt 360 ] && \
  run clip_b${last}_remat_dots 100 "$FLAGS" $CLIP --config.batch_size=$last --config.model.remat=dots $STEPS

# 4. The tiny default, and a short attention sweep.
[ "$(elapsed)" -lt 400 ] && run default_bf16 60 "$FLAGS" $DEFAULT $STEPS
if [ "$(elapsed)" -lt 420 ]; then
  echo "== attention sweep" | tee "$OUT/attention.log"
  if [ "$DRY" = 1 ]; then
    timeout 60 $PY -m mmjax.bench.attention --impl=xla --seq_len=128 --batch=1 --heads=2 \
      --head_dim=32 --reps=1 --out="$OUT" >>"$OUT/attention.log" 2>&1
  else
    timeout 50 $PY -m mmjax.bench.attention --gpu_sweep --max_total_seconds=40 --out="$OUT" \
      >>"$OUT/attention.log" 2>&1
  fi
  echo "exit $?" >>"$OUT/attention.log"
fi
echo "device check done in $(elapsed) s; summary: $OUT/summary.jsonl" | tee -a "$OUT/env.txt"
