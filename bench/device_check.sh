#!/usr/bin/env bash
# GPU checks, run once on a lent H100/H200 (see README "Benchmarks"). Uses the device's own
# python3 (jax with CUDA); ml_collections travels as a wheel in .whl/.
# Writes one log per check to $OUT (or ./device_out).
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print(jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  echo "== $name: $*" | tee "$OUT/$name.log"
  timeout "$t" "$@" >>"$OUT/$name.log" 2>&1; echo "exit $?" >>"$OUT/$name.log"
  tail -n 3 "$OUT/$name.log"
}
run step_default_bf16 120 python3 -m mmjax.bench.step --config=configs/default.py \
  --config.model.dtype=bfloat16 --config.batch_size=512 --steps=20
run step_clip_b16_bf16 150 python3 -m mmjax.bench.step --config=configs/clip_vit_b16.py \
  --config.model.dtype=bfloat16 --config.batch_size=256 --steps=10
run attention_gpu_sweep 200 python3 -m mmjax.bench.attention --gpu_sweep --max_total_seconds=170 --out="$OUT"
