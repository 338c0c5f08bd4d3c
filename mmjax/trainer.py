"""The training loop: data -> sharded step -> metrics and checkpoints, resumable, preemptible.

train(config, workdir):
  * validates the config (one-line errors) before anything compiles;
  * builds the mesh, initializes (or restores the latest committed checkpoint: state and the
    data iterator), compiles the step and prints a summary (params, FLOPs, mesh, shardings);
  * per step: loss of each objective, learning rate, gradient norm, step time, TFLOP/s, MFU
    to metrics.jsonl, TensorBoard and the progress bar;
  * saves asynchronously every checkpoint.every_steps, and on SIGTERM (preemption) saves and
    exits cleanly; a non-finite loss stops the run naming the step and the last good
    checkpoint (nan_policy='stop'), or is skipped and counted (nan_policy='skip').
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from mmjax import checkpoint as ckpt_lib
from mmjax import config_lib, models, sharding, train_lib
from mmjax.perf import chip_peak, step_flops
from mmjax.data import pipeline


class TrainingError(RuntimeError):
  """A run that must stop (non-finite loss), with a one-line message."""


class MetricWriter:
  """metrics.jsonl + TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.jsonl = None
    self.tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover
        self.tb = None

  def write(self, step: int, metrics: Dict[str, float]):
    if not self.enabled:
      return
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, v, step)

  def close(self):
    if self.jsonl:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def _progress(total, initial, enabled):
  if not enabled:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0)


def make_data_iterator(config, split: str = "train", seed: Optional[int] = None):
  ds = pipeline.make_dataset(
      config.data, split, global_batch_size=config.batch_size,
      seed=config.seed if seed is None else seed, process_index=jax.process_index(),
      process_count=jax.process_count(), shuffle=True, repeat=True,
      num_workers=config.data.get("num_workers", 0))
  return iter(ds)


def model_inputs(batch: Dict[str, Any], model) -> Dict[str, Any]:
  """The model's modalities (+ validity flags) out of a data batch."""
  keep = set(model.modalities) | {f"{m}_valid" for m in model.modalities}
  return {k: v for k, v in batch.items() if k in keep}


def _summary(config, state, flops, mesh, peak) -> str:
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  sharded = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)
                if not x.sharding.is_fully_replicated)
  lines = [
      f"mmjax: {config.model.fusion} over {list(config.model.modalities.keys())}",
      f"  params      {n_params / 1e6:.2f}M ({sharded / max(n_params, 1):.0%} sharded)",
      f"  FLOPs       {flops * mesh.size / config.batch_size / 1e9:.3f} GFLOP per "
      f"example per train step (XLA)",
      f"  mesh        {dict(mesh.shape)} over {mesh.size} {jax.devices()[0].platform} "
      f"device(s), {jax.process_count()} process(es)",
      f"  data        {config.data.source}:{config.data.get('task', '')}, global batch "
      f"{config.batch_size}",
      f"  objectives  " + ", ".join(f"{k}={v}" for k, v in config.loss_weights.items() if v),
      f"  peak        {peak[0] * 1e3:.1f} GFLOP/s per device ({peak[1]})",
  ]
  return "\n".join(lines)


def train(config, workdir: str, *, stop_after: Optional[int] = None,
          log_to_stdout: bool = True, devices=None) -> Dict[str, Any]:
  """Train (or resume) in `workdir` on `devices` (default: all). `stop_after` ends the run
  early at that step (tests, simulated preemption) after saving, as SIGTERM does."""
  devices = list(devices) if devices is not None else jax.devices()
  config_lib.validate(config, len(devices))
  model = models.build_model(config)
  tx, schedule = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  abstract, shard = train_lib.state_shardings(config, model, tx, mesh)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=config.checkpoint.keep,
                               async_save=config.checkpoint.get("async_save", True))
  data_it = make_data_iterator(config)
  start = ckpt.latest_step()
  if start is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shard)
    state = ckpt.restore(start, target, data_it)
    logging.info("resumed from step %d", start)
  else:
    state, _ = train_lib.create_state(config, model, tx, mesh)
    start = 0
  step_fn = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  batch_sh = sharding.batch_sharding(mesh)

  def next_batch():
    return pipeline.to_global_arrays(model_inputs(next(data_it), model), batch_sh)

  batch = next_batch()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()  # the loop runs this executable: compiled once, up front
  flops = step_flops(lowered) / mesh.size
  peak = chip_peak()
  primary = jax.process_index() == 0
  if primary and log_to_stdout:
    print(_summary(config, state, flops, mesh, peak), flush=True)
    if start:
      print(f"  resumed     from checkpoint step {start}", flush=True)

  stop = {"signal": None}

  def on_sigterm(signum, _frame):
    stop["signal"] = signum
  old_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None

  writer = MetricWriter(workdir)
  bar = _progress(config.total_steps, start, primary and log_to_stdout)
  last_saved = start if start else None
  last_metrics: Dict[str, float] = {}
  skipped_total = 0
  step = start
  t_last = time.perf_counter()
  try:
    while step < config.total_steps:
      state, metrics = compiled(state, batch)
      step += 1
      done = step >= config.total_steps
      preempted = stop["signal"] is not None or (stop_after is not None and step >= stop_after)
      if done or preempted or step % config.checkpoint.every_steps == 0:
        # Before the next batch is drawn: the saved iterator state is exactly "after step".
        ckpt.save(step, state, data_it, config, force=True)
        saved_now = True
      else:
        saved_now = False
      if not (done or preempted):
        batch = next_batch()  # overlaps with the step running on the devices
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      step_time, t_last = now - t_last, now
      m = {k: float(v) for k, v in metrics.items()}
      if m["skipped"]:
        skipped_total += 1
        if config.get("nan_policy", "stop") == "stop":
          raise TrainingError(
              f"non-finite loss at step {step} (loss={m['loss']}); the update was not applied. "
              f"Last good checkpoint: step {last_saved} in {ckpt.directory}. Lower "
              "optimizer.learning_rate, check the data, or set nan_policy='skip'")
      if saved_now:
        last_saved = step
      m.update(step_time_s=step_time, skipped_total=float(skipped_total),
               tflops_per_device=flops / step_time / 1e12,
               mfu=flops / step_time / 1e12 / peak[0],
               examples_per_s=config.batch_size / step_time)
      last_metrics = m
      if step % config.log_every_steps == 0 or done or step == start + 1:
        writer.write(step, m)
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", ex_s=f"{m['examples_per_s']:.0f}",
                        mfu=f"{m['mfu']:.1%}", refresh=False)
      if preempted:
        logging.warning("stopping at step %d (preemption); checkpoint saved", step)
        break
  finally:
    ckpt.close()
    writer.close()
    if bar is not None:
      bar.close()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  if primary and log_to_stdout:
    print(f"done: step {step}/{config.total_steps}, loss {last_metrics.get('loss', float('nan')):.4f}, "
          f"last checkpoint {last_saved} in {ckpt.directory}", flush=True)
  return {"step": step, "state": state, "metrics": last_metrics, "checkpoint_step": last_saved}


def _main_thread() -> bool:
  import threading  # pylint: disable=import-outside-toplevel
  return threading.current_thread() is threading.main_thread()
