#!/usr/bin/env bash
# The fusion grid (python -m mmjax.bench.fusion_grid) on a lent GPU, in one call:
#   every design x 3 budgets (3, 10, 30 TFLOPs) x 5 seeds, each run cached in $OUT/runs, so a
#   second call (or a CPU later) continues where the first stopped; the report (summary.md,
#   grid.json, quality_vs_flops.png) is written from whatever is done when the time is up.
# Seeds of one design and budget compile the same programs: the persistent compilation cache
# ($OUT/xla_cache) lets the later seeds skip compiling.
#
#   bash bench/fusion_grid_gpu.sh              # on the GPU, writes to $OUT (or ./device_out)
#   DRY_RUN=1 bash bench/fusion_grid_gpu.sh    # on a CPU: two designs, quick shapes
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
LIMIT=${LIMIT_S:-540}   # seconds for the training; the report follows
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=$OUT/xla_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
ARGS="--workdir=$OUT/runs --out=$OUT/report"
if [ "${DRY_RUN:-0}" = 1 ]; then
  export JAX_PLATFORMS=cpu
  ARGS="$ARGS --quick --designs=dual_encoder,cross_attention --budgets_pflops=0.000001 --seeds=0"
  LIMIT=${LIMIT_S:-300}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/card.txt"
timeout "$LIMIT" $PY -m mmjax.bench.fusion_grid $ARGS > "$OUT/grid.log" 2>&1
echo "grid: exit $? after at most ${LIMIT} s (124: the time limit; the next call resumes)"
$PY -m mmjax.bench.fusion_grid $ARGS --report_only > "$OUT/report.log" 2>&1 || tail -20 "$OUT/report.log"
grep "cells done" "$OUT/report.log"
