"""Attention kernel benchmark: forward+backward time, peak memory and TFLOP/s per backend.

One measurement (prints ONE JSON line on stdout, never raises):
  python -m mmjax.bench.attention --impl=chunked --seq_len=32768 --heads=8 --head_dim=64 \\
      --batch=1 [--dtype=float32|bfloat16] [--causal=no] [--mode=fwd_bwd|fwd]

CPU sweep (no --impl): seq_len 1k..32k for xla and chunked, each measurement in a subprocess
with a timeout; xla rows whose dense scores exceed --max_bytes are reported as "would need N GiB"
instead of run. Prints a markdown table, writes attention_sweep.json + attention_sweep.png to --out:
  python -m mmjax.bench.attention [--heads=8 --head_dim=64 --batch=1 --out=docs/]   (~3.5 min on 2 cores)

GPU sweep (run in one process, each case guarded, one JSON line per case, then a table):
  python -m mmjax.bench.attention --gpu_sweep [--out=/tmp/gpu]
  xla, cudnn and pallas_gpu at 4k, 8k, 16k, 32k tokens, bf16, head_dim 64 and 128.

Conventions.
  time_s      median wall time of `reps` runs of the jitted step (after one warm-up run), each
              ended by block_until_ready. fwd_bwd = value_and_grad wrt q, k, v.
  tflops      achieved TFLOP/s with fwd FLOPs = 4 * B * H * N^2 * D (QK^T and PV) and
              fwd+bwd FLOPs = 3.5 x fwd (FlashAttention's convention: backward = 2.5 x forward;
              recomputation inside the kernels is not counted). Self-attention, Nq = Nk = N.
  peak_bytes  from the compiled executable's memory_analysis(): temp + arguments + outputs
              - aliased; on GPU a single measurement also reports the allocator's
              memory_stats()['peak_bytes_in_use'] as device_peak_bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

GiB = 1 << 30
CPU_SWEEP_LENS = (1024, 2048, 4096, 8192, 16384, 32768)
GPU_SWEEP_LENS = (4096, 8192, 16384, 32768)
# (head_dim, heads, batch): B * H = 32 for both, ~the shapes of ViT-L/LLM-size layers.
GPU_SWEEP_SHAPES = ((64, 16, 2), (128, 16, 2))
GPU_SWEEP_IMPLS = ("xla", "cudnn", "pallas_gpu")


FWD_BWD_FACTOR = 3.5  # fwd+bwd FLOPs / fwd FLOPs (FlashAttention's convention)


def attention_flops(batch, seq_len, heads, head_dim, mode="fwd_bwd") -> float:
  """Self-attention FLOPs of one step: attention.attention_core_flops, x 3.5 for fwd_bwd."""
  from mmjax.attention import attention_core_flops  # noqa: PLC0415
  fwd = float(attention_core_flops(batch, seq_len, seq_len, heads, head_dim))
  return fwd * (FWD_BWD_FACTOR if mode == "fwd_bwd" else 1.0)


def dense_score_bytes(batch, seq_len, heads) -> int:
  """Bytes of ONE f32 [B, H, N, N] score matrix (the xla path keeps ~3 in fwd+bwd)."""
  return 4 * batch * heads * seq_len * seq_len


def _compiled_peak(compiled) -> Optional[int]:
  try:
    from mmjax.perf import memory_bytes  # noqa: PLC0415
    return memory_bytes(compiled)
  except Exception:  # pragma: no cover - backend without memory analysis
    return None


def measure(impl: str, seq_len: int, heads: int, head_dim: int, batch: int = 1,
            dtype: str = "float32", mode: str = "fwd_bwd", reps: int = 3, warmup: int = 1,
            chunk_size: int = 512, max_bytes: Optional[int] = None,
            max_seconds: Optional[float] = None, device_peak: bool = True) -> Dict:
  """One measurement; returns a JSON-able dict with 'ok' and either numbers or 'error'."""
  rec = dict(impl=impl, seq_len=seq_len, heads=heads, head_dim=head_dim, batch=batch,
             dtype=dtype, mode=mode)
  t_start = time.perf_counter()
  try:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from mmjax import attention  # noqa: PLC0415

    rec["backend"] = jax.default_backend()
    rec["device"] = jax.devices()[0].device_kind
    dt = jnp.dtype(dtype)
    shape = (batch, seq_len, heads, head_dim)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, shape, jnp.float32).astype(dt) for kk in keys)

    def fwd(q, k, v):
      return attention.attention_kernel(q, k, v, impl=impl, chunk_size=chunk_size)[0]

    if mode == "fwd":
      step = jax.jit(fwd)
    else:
      def loss(q, k, v):
        return jnp.sum(jnp.square(fwd(q, k, v).astype(jnp.float32)))
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    t0 = time.perf_counter()
    compiled = step.lower(q, k, v).compile()
    rec["compile_s"] = round(time.perf_counter() - t0, 3)
    peak = _compiled_peak(compiled)
    rec["peak_bytes"] = peak
    if max_bytes is not None and peak is not None and peak > max_bytes:
      rec.update(ok=False, error=f"would need {peak / GiB:.1f} GiB (compiled memory_analysis) "
                 f"> --max_bytes {max_bytes / GiB:.1f} GiB; not run")
      return rec
    for _ in range(max(1, warmup)):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      t_warm = time.perf_counter() - t0
    n = reps
    if max_seconds is not None:  # stay inside the row's time budget
      left = max_seconds - (time.perf_counter() - t_start)
      n = max(0, min(reps, int(left / max(t_warm, 1e-9))))
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - t0)
    if not times:  # too slow for more than the warm-up: report that run
      times, rec["note"] = [t_warm], "time from the warm-up run only (row time budget)"
    rec["reps"] = len(times)
    rec["time_s"] = statistics.median(times)
    rec["tflops"] = attention_flops(batch, seq_len, heads, head_dim, mode) / rec["time_s"] / 1e12
    if device_peak:
      try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
          rec["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
      except Exception:  # pragma: no cover - CPU has no memory_stats
        pass
    rec["ok"] = True
  except Exception as e:  # OOM, compile failure, unsupported shape: a JSON line, not a crash
    msg = f"{type(e).__name__}: {e}"
    rec.update(ok=False, error=msg[:600])
  return rec


# ----------------------------------------------------------------------------- sweeps
def _fmt_bytes(b) -> str:
  return "-" if b is None else f"{b / GiB:.2f}"


def markdown_table(rows: List[Dict]) -> str:
  lines = ["| impl | seq_len | heads | head_dim | batch | dtype | time_s | TFLOP/s | peak GiB | note |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
  for r in rows:
    t = f"{r['time_s']:.4g}" if r.get("ok") else "-"
    tf = f"{r['tflops']:.4g}" if r.get("ok") else "-"
    note = r.get("error", r.get("note", "")).replace("|", "/")
    lines.append(f"| {r['impl']} | {r['seq_len']} | {r['heads']} | {r['head_dim']} | "
                 f"{r['batch']} | {r['dtype']} | {t} | {tf} | {_fmt_bytes(r.get('peak_bytes'))} | "
                 f"{note} |")
  return "\n".join(lines)


def pivot_table(rows: List[Dict]) -> str:
  """TFLOP/s with one column per impl, one row per (head_dim, seq_len)."""
  impls = list(dict.fromkeys(r["impl"] for r in rows))
  keys = list(dict.fromkeys((r["head_dim"], r["heads"], r["batch"], r["seq_len"]) for r in rows))
  lines = ["| head_dim | B x H | seq_len | " + " | ".join(f"{i} TFLOP/s" for i in impls) + " |",
           "|---:|---:|---:|" + "---:|" * len(impls)]
  for d, h, b, n in keys:
    cells = []
    for impl in impls:
      r = next((r for r in rows if (r["head_dim"], r["heads"], r["batch"], r["seq_len"],
                                    r["impl"]) == (d, h, b, n, impl)), None)
      cells.append(f"{r['tflops']:.1f}" if r and r.get("ok") else
                   ("OOM/skip" if r and "would need" in r.get("error", "") else "error"))
    lines.append(f"| {d} | {b}x{h} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def check_pallas_gpu(interpret: bool = False) -> Dict:
  """pallas_gpu vs xla on small masked inputs (Nq != Nk, segment ids): fwd and grads."""
  rec = dict(check="pallas_gpu_vs_xla")
  try:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from mmjax import attention  # noqa: PLC0415
    from mmjax.kernels import pallas_gpu  # noqa: PLC0415
    for dtype, tol in (("float32", 2e-2), ("bfloat16", 6e-2)):
      for d in (64, 128, 256):
        ks = jax.random.split(jax.random.key(1), 3)
        b, nq, nk, h = 2, 300, 520, 4
        q = jax.random.normal(ks[0], (b, nq, h, d)).astype(dtype)
        k = jax.random.normal(ks[1], (b, nk, h, d)).astype(dtype)
        v = jax.random.normal(ks[2], (b, nk, h, d)).astype(dtype)
        m = jnp.arange(nk)[None] < jnp.array([[400], [nk]])[:, 0][:, None]
        qs = (jnp.arange(nq)[None] * 2 // nq).repeat(b, 0)
        kvs = (jnp.arange(nk)[None] * 2 // nk).repeat(b, 0)
        kw = dict(kv_mask=m, q_segment_ids=qs, kv_segment_ids=kvs)

        def run(impl):
          def loss(q, k, v):
            o = (attention.xla_attention(q, k, v, **kw)[0] if impl == "xla" else
                 pallas_gpu.flash_attention(q, k, v, interpret=interpret, **kw))
            return jnp.sum(jnp.sin(o.astype(jnp.float32))), o
          return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        (_, ox), gx = run("xla")
        (_, op), gp = run("pallas")
        errs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - c.astype(jnp.float32))))
                for a, c in zip((ox,) + tuple(gx), (op,) + tuple(gp))]
        rec[f"{dtype}_d{d}_max_abs_err_out_dq_dk_dv"] = [round(e, 5) for e in errs]
        if max(errs) > tol:
          rec["ok"] = False
    rec.setdefault("ok", True)
  except Exception as e:
    rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:600]}")
  return rec


def _child(args, impl, n) -> Dict:
  cmd = [sys.executable, "-m", "mmjax.bench.attention", f"--impl={impl}", f"--seq_len={n}",
         f"--heads={args.heads}", f"--head_dim={args.head_dim}", f"--batch={args.batch}",
         f"--dtype={args.dtype}", f"--mode={args.mode}", f"--reps={args.reps}",
         f"--chunk_size={args.chunk_size}", f"--max_bytes={args.max_bytes}",
         f"--max_seconds={args.max_seconds}"]
  base = dict(impl=impl, seq_len=n, heads=args.heads, head_dim=args.head_dim, batch=args.batch,
              dtype=args.dtype, mode=args.mode, ok=False)
  try:
    # The child stops taking timed runs once its budget is spent; the parent kills it only if a
    # single run (or the compile) overruns by a wide margin.
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_seconds * 1.5 + 60)
  except subprocess.TimeoutExpired:
    return dict(base, error=f"stopped: over --max_seconds={args.max_seconds:g}")
  for line in reversed(p.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  tail = (p.stderr or "").strip().splitlines()[-1:] or [""]
  return dict(base, error=f"exit {p.returncode} (killed: out of memory?) {tail[0][:200]}")


def _plot(rows: List[Dict], path: str, title: str) -> None:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  several = len({r["head_dim"] for r in rows}) > 1  # one line per (impl, head_dim)
  name = lambda r: f"{r['impl']} D={r['head_dim']}" if several else r["impl"]
  for impl in sorted({name(r) for r in rows}):
    ok = [r for r in rows if name(r) == impl and r.get("ok")]
    if ok:
      xs = [r["seq_len"] for r in ok]
      axes[0].plot(xs, [r["time_s"] for r in ok], "o-", label=impl)
      axes[1].plot(xs, [r["peak_bytes"] / GiB for r in ok], "o-", label=impl)
    skipped = [r for r in rows if name(r) == impl and not r.get("ok") and r.get("peak_bytes")]
    if skipped:  # compiled but not run: its memory is still known
      axes[1].plot([r["seq_len"] for r in skipped], [r["peak_bytes"] / GiB for r in skipped],
                   "x", color=axes[1].lines[-1].get_color() if ok else None,
                   label=f"{impl} (compiled, not run)")
  for ax, ylabel in zip(axes, ("fwd+bwd time (s)", "peak memory (GiB, memory_analysis)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N (Nq = Nk)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def cpu_sweep(args) -> List[Dict]:
  lens = [int(x) for x in args.sweep_lens.split(",")] if args.sweep_lens else CPU_SWEEP_LENS
  impls = args.sweep_impls.split(",") if args.sweep_impls else ("xla", "chunked")
  rows = []
  for impl in impls:
    for n in lens:
      est = 3 * dense_score_bytes(args.batch, n, args.heads)
      if impl == "xla" and est > 4 * args.max_bytes:  # clearly hopeless: do not even compile
        rec = dict(impl=impl, seq_len=n, heads=args.heads, head_dim=args.head_dim,
                   batch=args.batch, dtype=args.dtype, mode=args.mode, ok=False,
                   peak_bytes=None,
                   error=f"would need ~{est / GiB:.0f} GiB (3 dense f32 NxN score buffers)")
      else:
        rec = _child(args, impl, n)
      rows.append(rec)
      print(json.dumps(rec), flush=True)
  return rows


def gpu_sweep(args) -> List[Dict]:
  """xla / cudnn / pallas_gpu in ONE process (CUDA start-up once), each case guarded."""
  import jax  # noqa: PLC0415
  lens = [int(x) for x in args.sweep_lens.split(",")] if args.sweep_lens else GPU_SWEEP_LENS
  impls = args.sweep_impls.split(",") if args.sweep_impls else GPU_SWEEP_IMPLS
  max_bytes = args.max_bytes
  try:
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit:
      max_bytes = min(max_bytes, int(0.9 * limit)) if args.max_bytes_set else int(0.9 * limit)
  except Exception:  # pragma: no cover
    pass
  if not args.no_check:
    print(json.dumps(check_pallas_gpu(interpret=jax.default_backend() != "gpu")), flush=True)
  rows = []
  t_all = time.perf_counter()
  for head_dim, heads, batch in GPU_SWEEP_SHAPES:
    for n in lens:
      for impl in impls:
        if args.max_total_seconds and time.perf_counter() - t_all > args.max_total_seconds:
          rec = dict(impl=impl, seq_len=n, heads=heads, head_dim=head_dim, batch=batch,
                     dtype="bfloat16", mode=args.mode, ok=False,
                     error="skipped: --max_total_seconds reached")
        elif impl == "xla" and 2 * dense_score_bytes(batch, n, heads) > max_bytes:
          est = 2 * dense_score_bytes(batch, n, heads)
          rec = dict(impl=impl, seq_len=n, heads=heads, head_dim=head_dim, batch=batch,
                     dtype="bfloat16", mode=args.mode, ok=False, peak_bytes=None,
                     error=f"would need > {est / GiB:.0f} GiB (2+ dense f32 NxN score buffers) "
                     f"> {max_bytes / GiB:.0f} GiB; not run")
        else:
          rec = measure(impl, n, heads, head_dim, batch, "bfloat16", args.mode, reps=args.reps,
                        warmup=1, chunk_size=args.chunk_size, max_bytes=max_bytes,
                        max_seconds=args.max_seconds, device_peak=False)
        rows.append(rec)
        print(json.dumps(rec), flush=True)
  return rows


GPU_TUNE_BLOCKS = ("128,64,64,64", "128,128,64,64", "64,64,64,64", "128,64,64,32",
                   "128,64,32,32", "128,128,128,64,8")


def gpu_tune(args) -> List[Dict]:
  """pallas_gpu block sizes (MMJAX_PALLAS_GPU_BLOCKS) at one length, head_dim 64 and 128."""
  rows = []
  n = args.seq_len
  for head_dim, heads, batch in GPU_SWEEP_SHAPES:
    for blocks in (args.tune_blocks.split(";") if args.tune_blocks else GPU_TUNE_BLOCKS):
      os.environ["MMJAX_PALLAS_GPU_BLOCKS"] = blocks
      rec = measure("pallas_gpu", n, heads, head_dim, batch, "bfloat16", args.mode,
                    reps=args.reps, device_peak=False, max_seconds=args.max_seconds)
      rec["blocks"] = blocks
      rows.append(rec)
      print(json.dumps(rec), flush=True)
  os.environ.pop("MMJAX_PALLAS_GPU_BLOCKS", None)
  return rows


def _write(rows, out, name, title):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(rows, f, indent=1)
  try:
    _plot(rows, os.path.join(out, f"{name}.png"), title)
  except Exception as e:  # pragma: no cover - matplotlib missing
    print(f"(no plot: {e})", file=sys.stderr)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--impl", default=None, help="one measurement of this backend; none = sweep")
  p.add_argument("--seq_len", type=int, default=4096)
  p.add_argument("--heads", type=int, default=None)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--causal", default="no", choices=("no", "yes"))
  p.add_argument("--mode", default="fwd_bwd", choices=("fwd_bwd", "fwd"))
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--chunk_size", type=int, default=512)
  p.add_argument("--max_bytes", type=float, default=None,
                 help="memory budget in bytes (default 16 GiB; GPU sweep: 90%% of the device)")
  p.add_argument("--max_seconds", type=float, default=120.0, help="time budget per row")
  p.add_argument("--max_total_seconds", type=float, default=0.0, help="GPU sweep: total budget")
  p.add_argument("--sweep_lens", default="", help="comma-separated lengths (sweeps)")
  p.add_argument("--sweep_impls", default="", help="comma-separated backends (sweeps)")
  p.add_argument("--gpu_sweep", action="store_true")
  p.add_argument("--gpu_tune", action="store_true", help="pallas_gpu block sizes at --seq_len")
  p.add_argument("--tune_blocks", default="", help="';'-separated MMJAX_PALLAS_GPU_BLOCKS values")
  p.add_argument("--no_check", action="store_true", help="GPU sweep: skip the correctness check")
  p.add_argument("--out", default="docs")
  args = p.parse_args(argv)
  args.max_bytes_set = args.max_bytes is not None
  args.max_bytes = int(args.max_bytes) if args.max_bytes is not None else 16 * GiB

  if args.impl:
    heads = args.heads or 8
    if args.causal == "yes":
      rec = dict(impl=args.impl, seq_len=args.seq_len, heads=heads, head_dim=args.head_dim,
                 batch=args.batch, dtype=args.dtype, ok=False,
                 error="causal masking is not offered by mmjax.attention (structural masks only)")
    else:
      rec = measure(args.impl, args.seq_len, heads, args.head_dim, args.batch, args.dtype,
                    args.mode, reps=args.reps, chunk_size=args.chunk_size,
                    max_bytes=args.max_bytes, max_seconds=args.max_seconds)
    print(json.dumps(rec), flush=True)
    return 0

  if args.gpu_tune:
    gpu_tune(args)
    return 0

  if args.gpu_sweep:
    rows = gpu_sweep(args)
    title = f"attention fwd+bwd, bf16, {rows[0].get('device', 'GPU') if rows else 'GPU'}"
    print(markdown_table(rows))
    print()
    print(pivot_table(rows))
    _write(rows, args.out, "attention_gpu_sweep", title)
    return 0

  args.heads = args.heads or 8
  rows = cpu_sweep(args)
  print(markdown_table(rows))
  _write(rows, args.out, "attention_sweep",
         f"attention fwd+bwd on CPU, B={args.batch} H={args.heads} D={args.head_dim} {args.dtype}")
  return 0


if __name__ == "__main__":
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # before jax is imported (docs/process_settings.md)
  sys.exit(main())
