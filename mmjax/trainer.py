"""The training loop: data -> sharded step -> metrics and checkpoints, resumable, preemptible.

train(config, workdir):
  * validates the config (one-line errors) before anything compiles;
  * builds the mesh, initializes (or restores the latest committed checkpoint: state and the
    data iterator), compiles the step and prints a summary (params, FLOPs, mesh, shardings);
  * a fresh run with config.init_from starts from that checkpoint's parameters (fresh
    optimizer, step 0); config.freeze leaves the parameters it names untouched;
  * every log_every_steps: loss of each objective, learning rate, gradient norm, step time,
    model TFLOP/s, MFU (model FLOPs: 3 x forward) and HFU (the compiled step's FLOPs, remat
    included) to metrics.jsonl, TensorBoard and the progress bar (metrics stay on the
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
from mmjax import config_lib, models, packing, sharding, train_lib
from mmjax.perf import chip_peak
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
      f"  FLOPs       {flops[0] * mesh.size / config.batch_size / 1e9:.3f} GFLOP model (3 x "
      f"forward), {flops[1] * mesh.size / config.batch_size / 1e9:.3f} GFLOP hardware "
      f"(remat, optimizer) per example per train step (XLA)",
      f"  mesh        {dict(mesh.shape)} over {mesh.size} {jax.devices()[0].platform} "
      f"device(s), {jax.process_count()} process(es)",
      f"  data        {config.data.source}:{config.data.task}, global batch "
      f"{config.batch_size}",
      "  objectives  " + ", ".join(f"{k}={v}" for k, v in config.objectives.weights),
      f"  peak        {peak[0] * 1e3:.1f} GFLOP/s per device ({peak[1]})",
  ]
  return "\n".join(lines)


def init_from(path: str, target, tx, state_sharding, fresh):
  """A state at step 0 with the parameters of the checkpoint at `path` (a workdir or
  <workdir>/checkpoints/<step>) and a fresh optimizer state. `target` is the abstract state;
  `fresh()` makes a fresh state, called only when the checkpoint lacks some parameters (they
  keep its init). Returns (state, a summary line of what was restored)."""
  params, missing, unused, where = ckpt_lib.restore_params(path, target.params)
  if missing:
    state = fresh()
    params = jax.tree.map(lambda p, f: f if isinstance(p, jax.ShapeDtypeStruct) else p,
                          params, state.params)
  else:
    zero = lambda s: jax.device_put(np.zeros((), np.int32), s)
    state = train_lib.TrainState(
        step=zero(state_sharding.step), params=None, opt_state=None,
        skipped=zero(state_sharding.skipped), first_skipped=zero(state_sharding.first_skipped))
  opt_state = jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params)
  total = len(jax.tree.leaves(params))
  note = (f"  init_from   {where}: {total - len(missing)} of {total} parameter arrays restored "
          "(fresh optimizer state, step 0)")
  if missing:
    note += f"; fresh init, not in the checkpoint: {', '.join(missing)}"
  if unused:
    note += f"; {unused} checkpoint arrays unused"
  return state.replace(params=params, opt_state=opt_state), note


# Model keys that do not change the saved state's layout (a resume may change them).
_RESUME_FREE = ("model.dtype", "model.remat", "model.dropout")


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_resume(ckpt, step, cfg: config_lib.Config, workdir: str):
  """A one-line ConfigError, before anything is restored, when this run's model config differs
  from the one the checkpoint was trained with (an intact checkpoint, not a corrupt one)."""
  try:
    saved = json.loads(ckpt.restore_config(step).to_json_best_effort()).get("model")
  except ckpt_lib.CheckpointError:
    return  # an unreadable config: restoring names the checkpoint as corrupt
  now = json.loads(cfg.source.to_json_best_effort()).get("model")
  if not isinstance(saved, dict) or not isinstance(now, dict):
    return
  was, want = _flat(saved, "model."), _flat(now, "model.")
  diff = [k for k in sorted(set(was) & set(want))
          if was[k] != want[k] and k not in _RESUME_FREE]
  if diff:
    shown = ", ".join(f"{k}={was[k]!r} in the checkpoint vs {want[k]!r} requested"
                      for k in diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
    raise config_lib.ConfigError(
        f"cannot resume {workdir} (checkpoint step {step}) with another model: {shown}; pass "
        f"--workdir=<a new folder> for a new run, or rerun with the checkpoint's values "
        f"(saved in {ckpt.directory}/{step}/config)")


def _restore(ckpt, step, target, data_it, cfg: config_lib.Config):
  """ckpt.restore, naming a changed config.freeze (it changes the optimizer state's layout)."""
  try:
    return ckpt.restore(step, target, data_it)
  except ckpt_lib.CheckpointError as error:
    try:
      was = config_lib.freeze_entries(ckpt.restore_config(step).get("freeze"))
    except (ckpt_lib.CheckpointError, config_lib.ConfigError):
      raise error from None
    if was != cfg.freeze:
      raise config_lib.ConfigError(
          f"the checkpoint at step {step} in {ckpt.directory} was trained with "
          f"freeze={','.join(was)!r}, this run has freeze={','.join(cfg.freeze)!r}; resume with "
          "the same freeze, or start a new workdir with init_from=<this workdir>") from None
    raise error from None


def _freeze_note(cfg: config_lib.Config, params) -> str:
  """How many parameters train and how many config.freeze keeps as they are."""
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
  frozen = sum(n for n, f in zip(sizes, jax.tree.leaves(train_lib.frozen_mask(cfg, params)))
               if f)
  return (f"  trainable   {sum(sizes) - frozen:,} params; frozen {frozen:,} "
          f"(freeze={','.join(cfg.freeze)})")


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
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir} is a file, not a folder; pass a new folder "
                                 "or a training run's workdir")
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=cfg.checkpoint.keep,
                               async_save=cfg.checkpoint.async_save)
  try:  # every exit before the loop closes the async checkpointer too
    data_it = make_data_iterator(cfg)
    notes = [_freeze_note(cfg, target.params)] if cfg.freeze else []
    start = ckpt.latest_step()
    if start is not None:
      _check_resume(ckpt, start, cfg, workdir)
      state = _restore(ckpt, start, target, data_it, cfg)
      logging.info("resumed from step %d", start)
      if cfg.init_from:  # resuming takes precedence over init_from
        notes.append(f"  init_from   ignored: resumed from this workdir's step {start}")
    else:
      start = 0
      fresh = lambda: train_lib.create_state(cfg, model, tx, mesh)[0]
      if cfg.init_from:
        state, note = init_from(cfg.init_from, target, tx, shard, fresh)
        notes.append(note)
      else:
        state = fresh()
    for note in notes:
      logging.info(note.strip())
    step_fn = train_lib.make_train_step(cfg, model, tx, schedule, mesh, shard)
    batch_sh = sharding.batch_sharding(mesh)
    extra = ("label",) if cfg.objectives.multi_positive == "label" else ()  # multi-positive keys

    skips = pipeline.SkipCounter()  # data.on_error='skip': examples dropped so far

    def next_batch():
      raw = skips.update(next(data_it))
      inputs = dict(model_inputs(raw, model), **{k: raw[k] for k in extra if k in raw})
      if cfg.objectives.pack_text:  # MLM text packing: the rows' source indices (mmjax.packing)
        inputs = packing.add_pack_index(inputs, cfg.model, config_lib.pack_rows(cfg)
                                        // jax.process_count(), jax.process_index())
      return pipeline.to_global_arrays(inputs, batch_sh)

    batch = next_batch()
    lowered = step_fn.lower(state, batch)
    compiled = lowered.compile()  # the loop runs this executable: compiled once, up front
    flops, hw_flops = (f / mesh.size for f in train_lib.flop_counts(cfg, mesh, batch, lowered))
    peak = chip_peak()
    primary = jax.process_index() == 0
    if primary and log_to_stdout:
      print(_summary(cfg, state, (flops, hw_flops), mesh, peak), flush=True)
      if start:
        print(f"  resumed     from checkpoint step {start}", flush=True)
      for note in notes:
        print(note, flush=True)

  except BaseException:
    ckpt.close()
    raise

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
                 hw_tflops_per_device=hw_flops / step_time / 1e12,
                 mfu=flops / step_time / 1e12 / peak[0],
                 hfu=hw_flops / step_time / 1e12 / peak[0],
                 examples_per_s=cfg.batch_size / step_time)
        if skips.active:
          m["data/skipped"] = float(skips.total())
        last_metrics = m
        writer.write(step, m)
        if bar is not None:
          bar.set_postfix(loss=f"{m['loss']:.3f}", ex_s=f"{m['examples_per_s']:.0f}",
                          mfu=f"{m['mfu']:.1%}", hfu=f"{m['hfu']:.1%}", refresh=False)
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
