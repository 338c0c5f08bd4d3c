"""The training loop: data -> sharded step -> metrics and checkpoints, resumable, preemptible.

train(config, workdir):
  * validates the config (one-line errors) before anything compiles, and takes the workdir's
    lock (mmjax.workdir_lock: a second writer is refused, a dead one's lock taken over);
  * builds the mesh, initializes (or restores the latest committed checkpoint: state and the
    data iterator), compiles the step and prints a summary (params, FLOPs, mesh, shardings);
  * a fresh run with config.init_from starts from that checkpoint's parameters (fresh
    optimizer, step 0); config.freeze leaves the parameters it names untouched;
  * every log_every_steps: loss of each objective, learning rate, gradient norm, step time,
    model TFLOP/s, MFU (model FLOPs: 3 x forward) and HFU (the compiled step's FLOPs, remat
    included) to metrics.jsonl, TensorBoard and the progress bar (metrics stay on the
    device in between, so dispatch runs ahead);
  * every eval.every_steps (0: never): the registered evaluators of eval.evaluators that apply,
    on the test split with the current params, to metrics.jsonl ('eval/<evaluator>/<metric>')
    and TensorBoard; the schedule is by step, so a resumed run continues it;
  * saves asynchronously every checkpoint.every_steps, and on SIGTERM (preemption) saves and
    exits cleanly; a non-finite loss stops the run naming the step and the last good
    checkpoint (nan_policy='stop'), or is skipped and counted (nan_policy='skip').
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from mmjax import checkpoint as ckpt_lib
from mmjax import config_lib, configure, models, packing, sharding, tokenizers, train_lib
from mmjax import evaluators as evaluators_lib
from mmjax import objectives as objectives_lib
from mmjax.perf import chip_peak
from mmjax.workdir_lock import WorkdirLock
from mmjax.data import pipeline


class TrainingError(RuntimeError):
  """A run that must stop (non-finite loss), with a one-line message."""


class EventFile:
  """TensorBoard scalars written in the calling thread (tensorboardX's SummaryWriter writes
  from a thread of its own, which dies on a full disk and leaves the run blocked on its
  queue): a storage fault here is an OSError where the write is made."""

  def __init__(self, logdir: str):
    from tensorboardX import event_file_writer, summary  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    os.makedirs(logdir, exist_ok=True)
    self._event, self._scalar = event_pb2.Event, summary.scalar
    self._file = event_file_writer.EventsWriter(os.path.join(logdir, "events"))
    self.name = self._file._file_name  # pylint: disable=protected-access

  def write(self, step: int, metrics: Dict[str, float]):
    now = time.time()
    for k, v in metrics.items():
      self._file.write_event(self._event(wall_time=now, step=step, summary=self._scalar(k, v)))
    self._file.flush()

  def close(self):
    self._file.close()


class MetricWriter:
  """metrics.jsonl + TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.jsonl = None
    self.tb = None
    self.failed = False
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      try:
        self.tb = EventFile(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover
        self.tb = None

  def write(self, step: int, metrics: Dict[str, float]):
    if not self.enabled:
      return
    with self._storage(self.jsonl.name):
      self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self.jsonl.flush()
    if self.tb is not None:
      with self._storage(self.tb.name):
        self.tb.write(step, metrics)

  def close(self):
    """Closes both files; after a failed write (already reported) errors are dropped."""
    reported = self.failed
    for f in (self.jsonl, self.tb):
      if f is not None:
        try:
          with self._storage(f.name):
            f.close()
        except TrainingError:
          if not reported:
            raise

  @contextlib.contextmanager
  def _storage(self, path: str):
    """A storage fault of a metrics write as one TrainingError line (checkpoints go on)."""
    try:
      yield
    except OSError as e:
      self.failed = True
      raise TrainingError(f"writing metrics to {e.filename or path} failed: "
                          f"{os.strerror(e.errno or 0)}; the committed checkpoints are intact "
                          "and a rerun resumes from the last; free space and rerun") from None


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
  keep = {k for m in model.modalities for k in tokenizers.input_keys(m)}
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
      "  objectives  " + ", ".join(f"{k}={v}" for k, v in config.objectives.weights)
      + "".join(f"; {k} from step {s}" for k, s in config.objectives.starts),
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


class PeriodicEval:
  """eval.every_steps: the registered evaluators of eval.evaluators that apply, on the test
  split, with the current params. One context serves the whole run: the test data is read
  once and each evaluator's jitted functions compile once (at the first evaluation point)."""

  def __init__(self, cfg: config_lib.Config, model, mesh):
    self.cfg, self.model, self.mesh = cfg, model, mesh
    self.evaluators = evaluators_lib.resolve(cfg.eval.evaluators)
    self.ctx: Optional[evaluators_lib.EvalContext] = None

  def due(self, step: int) -> bool:
    return step % self.cfg.eval.every_steps == 0

  def __call__(self, params, step: int) -> Tuple[Dict[str, float], Dict[str, str]]:
    """({'eval/<evaluator>/<metric>': number}, {'<evaluator>/skipped': why}) at `step`."""
    if self.ctx is None:
      self.ctx = evaluators_lib.EvalContext(self.cfg, self.model, params, self.mesh, step)
    else:
      self.ctx.update(params, step)
    results = evaluators_lib.run_all(self.ctx, self.evaluators)
    skipped = {k: v for k, v in results.items() if k.endswith("/skipped")}
    numbers = {f"eval/{k}": float(v) for k, v in results.items()
               if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    return numbers, skipped


@dataclasses.dataclass
class _Run:
  """What set-up hands the loop."""
  cfg: config_lib.Config
  model: Any
  mesh: Any
  ckpt: Any
  data_it: Any
  state: Any
  start: int
  notes: List[str]
  compiled: Any
  next_batch: Callable[[], Any]
  skips: Any
  batch: Any
  flops: Tuple[float, float]  # model and hardware FLOPs per device per step
  peak: Tuple[float, str]
  evals: Optional[PeriodicEval]
  # the steps at which the program changes (configure.phase_starts: objectives.starts,
  # unmasked_steps), and compile(step) -> (executable, flops) of the phase from that step
  phases: Tuple[int, ...] = ()
  compile: Optional[Callable[[int], Tuple[Any, Tuple[float, float]]]] = None


@dataclasses.dataclass
class _Progress:
  """The loop's running record."""
  step: int
  last_saved: Optional[int]
  last_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  t_last: float = dataclasses.field(default_factory=time.perf_counter)
  since_log: int = 0
  eval_skips_shown: bool = False


def train(config, workdir: str, *, stop_after: Optional[int] = None,
          log_to_stdout: bool = True, devices=None) -> Dict[str, Any]:
  """Train (or resume) in `workdir` on `devices` (default: all). `config` is a ConfigDict
  (parsed here, once) or a Config. `stop_after` ends the run early at that step (tests,
  simulated preemption) after saving, as SIGTERM does.

  Metrics reach the host only on logging steps; the state's non-finite counters are read on
  logging and checkpoint steps (nothing is saved after a non-finite step under 'stop')."""
  devices = list(devices) if devices is not None else jax.devices()
  cfg = _validate(config, workdir, len(devices))
  # One writer per workdir (process 0 holds it for the whole run; mmjax.workdir_lock)
  with (WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()) as lock:
    return _train(cfg, workdir, stop_after, log_to_stdout, devices, lock)


def _train(cfg, workdir, stop_after, log_to_stdout, devices, lock) -> Dict[str, Any]:
  run = _set_up(cfg, workdir, devices)
  verbose = jax.process_index() == 0 and log_to_stdout
  if verbose:
    _print_summary(run)
    if lock is not None and lock.taken_over:
      print(f"  lock        took over the stale lock of a run that is gone "
            f"(host {lock.taken_over.get('host')}, pid {lock.taken_over.get('pid')})", flush=True)
  prog = _Progress(step=run.start, last_saved=run.start or None)
  with _StopSignal() as stop:
    writer = MetricWriter(workdir)
    bar = _progress(cfg.total_steps, run.start, verbose)
    try:
      _loop(run, prog, stop, writer, bar, stop_after, verbose)
    finally:
      run.ckpt.close()
      writer.close()
      if bar is not None:
        bar.close()
  if verbose:
    print(f"done: step {prog.step}/{cfg.total_steps}, loss "
          f"{prog.last_metrics.get('loss', float('nan')):.4f}, last checkpoint "
          f"{prog.last_saved} in {run.ckpt.directory}", flush=True)
  return {"step": prog.step, "state": run.state, "metrics": prog.last_metrics,
          "checkpoint_step": prog.last_saved}


def _validate(config, workdir: str, n_devices: int) -> config_lib.Config:
  """The typed config, checked against the devices, workdir and evaluators before anything
  is built (one-line ConfigError)."""
  cfg = configure.resolve(config)
  configure.check_mesh(cfg, n_devices)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir} is a file, not a folder; pass a new folder "
                                 "or a training run's workdir")
  if cfg.eval.every_steps < 0:
    raise config_lib.ConfigError(f"eval.every_steps={cfg.eval.every_steps} must be >= 0 "
                                 "(0: no evaluation during training)")
  if cfg.eval.every_steps:
    evaluators_lib.resolve(cfg.eval.evaluators)  # an unknown name fails now, not at step N
  return cfg


def _set_up(cfg: config_lib.Config, workdir: str, devices) -> _Run:
  """Mesh, state (fresh, init_from or resumed), data, the compiled step and periodic eval."""
  model = models.build_model(cfg.model)
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), devices)
  target, shard = train_lib.abstract_state(model, tx, mesh)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), keep=cfg.checkpoint.keep,
                               async_save=cfg.checkpoint.async_save)
  try:  # every exit before the loop closes the async checkpointer too
    data_it = make_data_iterator(cfg)
    state, start, notes = _initial_state(cfg, model, tx, mesh, (target, shard), ckpt, data_it,
                                         workdir)
    next_batch, skips = _batch_source(cfg, model, mesh, data_it)
    batch = next_batch()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=getattr(x, "sharding", None)),
                            (state, batch))  # the state is donated by the time unmasked runs

    def compile_step(c):  # the loop runs this executable: compiled once, up front
      lowered = train_lib.make_train_step(c, model, tx, schedule, mesh, shard).lower(*abstract)
      return lowered.compile(), tuple(
          f / mesh.size for f in train_lib.flop_counts(c, mesh, abstract[1], lowered))
    # the phase the run starts in (a resume may start past a switch); the later ones are
    # compiled when due, with the same parameters and state
    compiled, flops = compile_step(configure.phase_config(cfg, start))
    evals = PeriodicEval(cfg, model, mesh) if cfg.eval.every_steps else None
    phases = tuple(p for p in configure.phase_starts(cfg) if p > start)
    return _Run(cfg, model, mesh, ckpt, data_it, state, start, notes, compiled, next_batch,
                skips, batch, flops, chip_peak(), evals, phases,
                lambda step: compile_step(configure.phase_config(cfg, step)))
  except BaseException:
    ckpt.close()
    raise


def _initial_state(cfg, model, tx, mesh, abstract, ckpt, data_it, workdir: str):
  """(state, start step, notes): the latest checkpoint of workdir (state and data iterator),
  else config.init_from's parameters, else a fresh init."""
  target, shard = abstract
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
  return state, start, notes


def _batch_source(cfg, model, mesh, data_it):
  """(next_batch, skips): next_batch() is the next global batch of model inputs; skips counts
  the examples data.on_error='skip' dropped so far."""
  batch_sh = sharding.batch_sharding(mesh)
  extra = (("label",) if cfg.objectives.multi_positive == "label" else ()  # multi-positive
           ) + objectives_lib.batch_keys(cfg.objectives.active)  # LocCa's regions
  skips = pipeline.SkipCounter()

  def next_batch():
    raw = skips.update(next(data_it))
    inputs = dict(model_inputs(raw, model), **{k: raw[k] for k in extra if k in raw})
    if cfg.objectives.pack_text:  # MLM text packing: the rows' source indices (mmjax.packing)
      inputs = packing.add_pack_index(inputs, cfg.model, config_lib.pack_rows(cfg)
                                      // jax.process_count(), jax.process_index())
    if cfg.objectives.pack_images:  # the image tower on packed rows (native aspect)
      inputs = packing.add_image_pack_index(
          inputs, cfg.model, config_lib.image_pack_rows(cfg) // jax.process_count(),
          cfg.objectives.image_pack_len, jax.process_index())
    return pipeline.to_global_arrays(inputs, batch_sh)
  return next_batch, skips


def _print_summary(run: _Run) -> None:
  print(_summary(run.cfg, run.state, run.flops, run.mesh, run.peak), flush=True)
  if run.start:
    print(f"  resumed     from checkpoint step {run.start}", flush=True)
  for note in run.notes:
    print(note, flush=True)
  if run.evals is not None:
    print(f"  eval        every {run.cfg.eval.every_steps} steps: "
          f"{', '.join(run.cfg.eval.evaluators)}", flush=True)


class _StopSignal:
  """SIGTERM (preemption) sets `signal` instead of killing the process, inside `with`."""

  def __init__(self):
    self.signal = None
    self._old = None
    self._installed = False

  def _on(self, signum, _frame):
    self.signal = signum

  def __enter__(self):
    if _main_thread():
      self._old, self._installed = signal.signal(signal.SIGTERM, self._on), True
    return self

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._old)


def _loop(run: _Run, prog: _Progress, stop: _StopSignal, writer: MetricWriter, bar,
          stop_after: Optional[int], verbose: bool) -> None:
  """Steps until total_steps, preemption or stop_after; saves, evaluates and logs on the way.
  run.state is the latest state whatever ends the loop."""
  cfg, batch = run.cfg, run.batch
  while prog.step < cfg.total_steps:
    if run.phases and prog.step >= run.phases[0]:
      _next_phase(run, prog, verbose)
    run.state, metrics = run.compiled(run.state, batch)
    prog.step += 1
    prog.since_log += 1
    step = prog.step
    done = step >= cfg.total_steps
    preempted = stop.signal is not None or (stop_after is not None and step >= stop_after)
    save_now = done or preempted or step % cfg.checkpoint.every_steps == 0
    log_now = step % cfg.log_every_steps == 0 or done or step == run.start + 1
    skipped = _check_finite(run, prog) if (save_now or log_now) else None
    if run.evals is not None and run.evals.due(step):  # before the save: a resume never
      _evaluate(run, prog, writer, verbose)          # skips this step's evaluation
    if save_now:
      # Before the next batch is drawn: the saved iterator state is exactly "after step".
      run.ckpt.save(step, run.state, run.data_it, cfg.source, force=True)
      prog.last_saved = step
    if not (done or preempted):
      batch = run.next_batch()  # overlaps with the step running on the devices
    if log_now:
      _log(run, prog, metrics, skipped, writer, bar)
    if bar is not None:
      bar.update(1)
    if preempted:
      logging.warning("stopping at step %d (preemption); checkpoint saved", step)
      break


def _next_phase(run: _Run, prog: _Progress, verbose: bool) -> None:
  """From this step on the step runs the next phase's program (objectives.starts switching an
  objective on, unmasked_steps encoding every patch); compiling it is left out of the next
  logged step_time."""
  t0 = time.perf_counter()
  cfg, step = run.cfg, prog.step
  run.compiled, run.flops = run.compile(step)
  run.phases = tuple(p for p in run.phases if p > step)
  if verbose:
    gflop = f"{run.flops[0] * run.mesh.size / cfg.batch_size / 1e9:.3f} GFLOP model per example"
    started = [k for k, s in cfg.objectives.starts if s == step]
    if started:
      print(f"from step {step}: {', '.join(started)} on, {gflop} per train step", flush=True)
    if cfg.unmasked_steps and step == cfg.total_steps - cfg.unmasked_steps:
      print(f"unmasked from step {step}: every patch encoded, {gflop} per train step",
            flush=True)
  prog.t_last += time.perf_counter() - t0


def _check_finite(run: _Run, prog: _Progress) -> int:
  """Stop (policy 'stop') once the state has seen a non-finite step: a host sync."""
  state = run.state
  skipped, first = (int(x) for x in jax.device_get((state.skipped, state.first_skipped)))
  if skipped and run.cfg.nan_policy == "stop":
    saved = (f"Last good checkpoint: step {prog.last_saved} in {run.ckpt.directory}"
             if prog.last_saved is not None else "No checkpoint saved yet")
    raise TrainingError(
        f"non-finite loss at step {first}; its update was not applied and the run stopped. "
        f"{saved}. Lower optimizer.learning_rate, check the data, or set nan_policy='skip'")
  return skipped


def _evaluate(run: _Run, prog: _Progress, writer: MetricWriter, verbose: bool) -> None:
  """One evaluation point: a metrics.jsonl record {'step', 'eval/<evaluator>/<metric>'} and
  TensorBoard scalars. Its time is left out of the next logged step_time."""
  t0 = time.perf_counter()
  numbers, skipped = run.evals(train_lib.evaluated_params(run.cfg, run.state), prog.step)
  if numbers:
    writer.write(prog.step, numbers)
  if verbose:
    if skipped and not prog.eval_skips_shown:
      for k, why in skipped.items():
        print(f"  eval        {k.split('/')[0]} skipped: {why}", flush=True)
    shown = ", ".join(f"{k[5:]}={v:.4g}" for k, v in numbers.items())
    print(f"eval at step {prog.step}: {shown or 'no evaluator applies'}", flush=True)
  prog.eval_skips_shown = True
  prog.t_last += time.perf_counter() - t0


def _log(run: _Run, prog: _Progress, metrics, skipped: int, writer: MetricWriter, bar) -> None:
  """The logging step's record: losses, step time, TFLOP/s, MFU / HFU, data skips."""
  cfg, (flops, hw_flops), peak = run.cfg, run.flops, run.peak
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  now = time.perf_counter()
  step_time, prog.t_last, prog.since_log = (now - prog.t_last) / prog.since_log, now, 0
  m.update(step_time_s=step_time, skipped_total=float(skipped),
           tflops_per_device=flops / step_time / 1e12,
           hw_tflops_per_device=hw_flops / step_time / 1e12,
           mfu=flops / step_time / 1e12 / peak[0],
           hfu=hw_flops / step_time / 1e12 / peak[0],
           examples_per_s=cfg.batch_size / step_time)
  if run.skips.active:
    m["data/skipped"] = float(run.skips.total())
  prog.last_metrics = m
  writer.write(prog.step, m)
  if bar is not None:
    bar.set_postfix(loss=f"{m['loss']:.3f}", ex_s=f"{m['examples_per_s']:.0f}",
                    mfu=f"{m['mfu']:.1%}", hfu=f"{m['hfu']:.1%}", refresh=False)


def _main_thread() -> bool:
  import threading  # pylint: disable=import-outside-toplevel
  return threading.current_thread() is threading.main_thread()
