"""The training loop: data -> sharded step -> metrics and checkpoints, resumable, preemptible.

train(config, workdir):
  * validates the config (one-line errors) before anything compiles;
  * builds the mesh, initializes (or restores the latest committed checkpoint: state and the
    data iterator), compiles the step and prints a summary (params, FLOPs, mesh, shardings);
  * every log_every_steps: loss of each objective, learning rate, gradient norm, step time,
    TFLOP/s, MFU to metrics.jsonl, TensorBoard and the progress bar (metrics stay on the
    device in between, so dispatch runs ahead);
  * saves asynchronously every checkpoint.every_steps, and on SIGTERM (preemption) saves and
    exits cleanly; a non-finite loss stops the run naming the step and the last good
    checkpoint (nan_policy='stop'), or is skipped and counted (nan_policy='skip').
"""
from __future__ import annotations

import dataclasses
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


def make_data_iterator(config: config_lib.Config, split: str = "train",
                       seed: Optional[int] = None):
  ds = pipeline.make_dataset(
      config.data, split, global_batch_size=config.batch_size,
      seed=config.seed if seed is None else seed, process_index=jax.process_index(),
      process_count=jax.process_count(), shuffle=True, repeat=True,
      num_workers=config.data.num_workers)
  return iter(ds)


def model_inputs(batch: Dict[str, Any], model) -> Dict[str, Any]:
  """The model's modalities (+ validity flags) out of a data batch."""
  keep = set(model.modalities) | {f"{m}_valid" for m in model.modalities}
  return {k: v for k, v in batch.items() if k in keep}


def _summary(config: config_lib.Config, state, flops, mesh, peak) -> str:
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  sharded = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)
                if not x.sharding.is_fully_replicated)
  lines = [
      f"mmjax: {config.model.fusion.name} over {list(config.model.names)}",
      f"  params      {n_params / 1e6:.2f}M ({sharded / max(n_params, 1):.0%} sharded)",
      f"  FLOPs       {flops * mesh.size / config.batch_size / 1e9:.3f} GFLOP per "
      f"example per train step (XLA)",
      f"  mesh        {dict(mesh.shape)} over {mesh.size} {jax.devices()[0].platform} "
      f"device(s), {jax.process_count()} process(es)",
      f"  data        {config.data.source}:{config.data.task}, global batch "
      f"{config.batch_size}",
      "  objectives  " + ", ".join(f"{k}={v}" for k, v in config.objectives.weights),
      f"  peak        {peak[0] * 1e3:.1f} GFLOP/s per device ({peak[1]})",
  ]
  return "\n".join(lines)


def train(config, workdir: str, *, stop_after: Optional[int] = None,
          log_to_stdout: bool = True, devices=None) -> Dict[str, Any]:
  """Train (or resume) in `workdir` on `devices` (default: all). `config` is a ConfigDict
  (parsed here, once) or a Config. `stop_after` ends the run early at that step (tests,
  simulated preemption) after saving, as SIGTERM does.

  Metrics reach the host only on logging steps; the state's non-finite counters are read on
  logging and checkpoint steps (nothing is saved after a non-finite step under 'stop')."""
  devices = list(devices) if devices is not None else jax.devices()
  cfg = config_lib.parse(config)
  config_lib.check_mesh(cfg, len(devices))
  model = models.build_model(cfg.model)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), devices)
  target, shard = train_lib.abstract_state(model, tx, mesh)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=cfg.checkpoint.keep,
                               async_save=cfg.checkpoint.async_save)
  data_it = make_data_iterator(cfg)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, target, data_it)
    logging.info("resumed from step %d", start)
  else:
    state, _ = train_lib.create_state(cfg, model, tx, mesh)
    start = 0
  step_fn = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
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
    print(_summary(cfg, state, flops, mesh, peak), flush=True)
    if start:
      print(f"  resumed     from checkpoint step {start}", flush=True)

  stop = {"signal": None}

  def on_sigterm(signum, _frame):
    stop["signal"] = signum
  old_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None

  writer = MetricWriter(workdir)
  bar = _progress(cfg.total_steps, start, primary and log_to_stdout)
  last_saved = start if start else None
  last_metrics: Dict[str, float] = {}
  step = start
  t_last, since_log = time.perf_counter(), 0

  def check_finite():
    """Stop (policy 'stop') once the state has seen a non-finite step: a host sync."""
    skipped, first = (int(x) for x in jax.device_get((state.skipped, state.first_skipped)))
    if skipped and cfg.nan_policy == "stop":
      saved = (f"Last good checkpoint: step {last_saved} in {ckpt.directory}"
               if last_saved is not None else "No checkpoint saved yet")
      raise TrainingError(
          f"non-finite loss at step {first}; its update was not applied and the run stopped. "
          f"{saved}. Lower optimizer.learning_rate, check the data, or set nan_policy='skip'")
    return skipped

  try:
    while step < cfg.total_steps:
      state, metrics = compiled(state, batch)
      step += 1
      since_log += 1
      done = step >= cfg.total_steps
      preempted = stop["signal"] is not None or (stop_after is not None and step >= stop_after)
      save_now = done or preempted or step % cfg.checkpoint.every_steps == 0
      log_now = step % cfg.log_every_steps == 0 or done or step == start + 1
      skipped = check_finite() if (save_now or log_now) else None
      if save_now:
        # Before the next batch is drawn: the saved iterator state is exactly "after step".
        ckpt.save(step, state, data_it, cfg.source, force=True)
        last_saved = step
      if not (done or preempted):
        batch = next_batch()  # overlaps with the step running on the devices
      if log_now:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        step_time, t_last, since_log = (now - t_last) / since_log, now, 0
        m.update(step_time_s=step_time, skipped_total=float(skipped),
                 tflops_per_device=flops / step_time / 1e12,
                 mfu=flops / step_time / 1e12 / peak[0],
                 examples_per_s=cfg.batch_size / step_time)
        last_metrics = m
        writer.write(step, m)
        if bar is not None:
          bar.set_postfix(loss=f"{m['loss']:.3f}", ex_s=f"{m['examples_per_s']:.0f}",
                          mfu=f"{m['mfu']:.1%}", refresh=False)
      if bar is not None:
        bar.update(1)
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
    print(f"done: step {step}/{cfg.total_steps}, loss "
          f"{last_metrics.get('loss', float('nan')):.4f}, last checkpoint {last_saved} in "
          f"{ckpt.directory}", flush=True)
  return {"step": step, "state": state, "metrics": last_metrics, "checkpoint_step": last_saved}


def _main_thread() -> bool:
  import threading  # pylint: disable=import-outside-toplevel
  return threading.current_thread() is threading.main_thread()
