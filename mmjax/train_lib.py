"""Train state, the optimizer, and the jitted, sharded train step.

The loss of a step is `objectives.pretraining_loss`: the model's `pretraining_outputs` (one
clean pass for alignment and hard-negative ITM, one masked pass for MLM and MIM) mapped to the
weighted objectives. Contrastive negatives span the global batch (all-gathered inside
`shard_map` over the batch axes); the sigmoid loss runs as a ppermute ring.

Randomness: step s uses fold_in(key(seed), s), so a resumed run replays exactly.
Non-finite loss or gradients never update the parameters, decided on the device: policy
'skip' drops the update and counts it in the state; 'stop' freezes the state until the loop
stops the run. Gradient accumulation (`grad_accum_steps` > 1, mmjax.accumulation) gives the
whole batch's loss and gradients from micro-batches (grad_accum_negatives='batch'), or
averages each micro-batch's own ('micro').
With optimizer.ema_decay = d > 0 the optimizer's last stage keeps an exponential moving
average of the parameters, ema <- d * ema + (1 - d) * params_new (`ema_params` reads it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Callable, NamedTuple, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import accumulation, attention, models, objectives, sharding
from mmjax.config_lib import Config, ConfigError
from mmjax.configure import resolve
from mmjax.perf import step_flops

NO_DECAY = re.compile(r"(bias|scale|embedding|cls|cls_pos|probe|mask_token|bottleneck_tokens|"
                      r"logit_scale|sigmoid_[tb]|sum_weights)$")


@flax.struct.dataclass
class TrainState:
  """step; params; opt_state; skipped: how many steps had a non-finite loss or gradient (their
  updates were dropped); first_skipped: the first such step (1-based), 0 if none."""
  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array
  first_skipped: jax.Array


# ------------------------------------------------------------------------------ optimizer

def learning_rate_schedule(config: Config) -> optax.Schedule:
  config = resolve(config)
  o = config.optimizer
  total = max(int(config.total_steps), 1)
  warmup = min(int(o.warmup_steps), total - 1) if total > 1 else 0
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=warmup, decay_steps=total,
      end_value=o.learning_rate * o.end_lr_ratio)


def weight_decay_mask(params):
  """True where weight decay applies: matrices, not norms, biases or embeddings."""
  def keep(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "value" and len(path) > 1:  # boxed (nn.Partitioned) leaf
      name = str(getattr(path[-2], "key", path[-2]))
    return bool(np.ndim(leaf) >= 2 and not NO_DECAY.search(name))
  return jax.tree_util.tree_map_with_path(keep, params)


def param_name(path) -> str:
  """'fusion/tower_image/layer_0/attn/key_kernel' for a key path into TrainState.params (the
  'params' collection and the boxes' .value dropped)."""
  keys = [str(k.key) if hasattr(k, "key") else str(k.idx) for k in path
          if not isinstance(k, jax.tree_util.GetAttrKey)]
  return "/".join(keys[1:] if len(keys) > 1 and keys[0] == "params" else keys)


def freeze_groups(config: Config) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
  """(entry, path prefixes) per config.freeze entry: a modality is its unimodal side
  (embed_<m>, fusion/tower_<m>, fusion/tower_proj_<m>, its pooling head map_<m>, proj_<m>),
  anything else a path prefix."""
  config = resolve(config)
  out = []
  for entry in config.freeze:
    e = entry.strip("/")
    e = e[len("params/"):] if e.startswith("params/") else e
    out.append((entry, (f"embed_{e}", f"fusion/tower_{e}", f"fusion/tower_proj_{e}",
                        f"map_{e}", f"proj_{e}") if e in config.model.names else (e,)))
  return tuple(out)


def frozen_mask(config: Config, params):
  """True for every parameter config.freeze names (a tree like `params`); an entry that
  matches no parameter is a one-line ConfigError."""
  config = resolve(config)
  groups = freeze_groups(config)
  hit = set()

  def frozen(path, _):
    name = param_name(path)
    out = False
    for entry, prefixes in groups:
      if any(name == p or name.startswith(p + "/") for p in prefixes):
        hit.add(entry)
        out = True
    return out
  # A boxed (nn.Partitioned) parameter is one leaf: frozen ones get no optimizer state at all.
  mask = jax.tree_util.tree_map_with_path(
      frozen, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  unmatched = [entry for entry, _ in groups if entry not in hit]
  if unmatched:
    names = config.model.names
    raise ConfigError(f"freeze entry {unmatched[0]!r} matches no parameter; use a modality "
                      f"name ({', '.join(names)}) or a parameter path prefix such as "
                      f"'fusion/tower_{names[0]}'")
  return mask


class EmaState(NamedTuple):
  """The parameters' exponential moving average (a tree like the parameters)."""
  ema: Any


def parameter_ema(decay: float) -> optax.GradientTransformation:
  """A last optimizer stage that leaves the updates as they are and keeps
  ema <- decay * ema + (1 - decay) * (params + updates), starting from the initial params."""
  def init(params):
    return EmaState(ema=jax.tree.map(jnp.array, params))

  def update(updates, state, params):
    ema = jax.tree.map(lambda e, p, u: (decay * e + (1.0 - decay) * (p + u)).astype(e.dtype),
                       state.ema, params, updates)
    return updates, EmaState(ema=ema)
  return optax.GradientTransformation(init, update)


def ema_params(opt_state):
  """The EMA parameters kept in an optimizer state (None without optimizer.ema_decay)."""
  return optax.tree_utils.tree_get(opt_state, "ema")


def evaluated_params(config: Config, state: TrainState):
  """The parameters evaluation scores: the EMA ones with eval.use_ema, else state.params."""
  if not config.eval.use_ema:
    return state.params
  ema = ema_params(state.opt_state)
  if ema is None:
    raise ConfigError("eval.use_ema=True but this run keeps no EMA parameters (it trained "
                      "with optimizer.ema_decay=0); drop eval.use_ema, or train with "
                      "optimizer.ema_decay, e.g. 0.999")
  return ema


def make_optimizer(config: Config) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ clipping) with the schedule; with config.freeze the frozen parameters get
  set_to_zero (no update, no weight decay, no Adam moments) and clipping sees the rest;
  optimizer.ema_decay > 0 adds parameter_ema last."""
  config = resolve(config)
  o = config.optimizer
  schedule = learning_rate_schedule(config)
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip) if o.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                  weight_decay=o.weight_decay, mask=weight_decay_mask))
  if config.freeze:
    labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                         frozen_mask(config, params))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if o.ema_decay:
    tx = optax.chain(tx, parameter_ema(o.ema_decay))
  return tx, schedule


# ------------------------------------------------------------------------------ state

def init_fn(model, tx):
  batch = models.dummy_batch(model.cfg, 2)

  def init(rng):
    variables = model.init(rng, batch, method=model.init_all)
    params = {"params": variables["params"]}
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), skipped=zero,
                      first_skipped=zero)
  return init


def state_shardings(model, tx, mesh):
  """(abstract unboxed state, its NamedShardings) from the logical rules table."""
  abstract = jax.eval_shape(init_fn(model, tx), jax.random.key(0))
  shard = sharding.logical_shardings(abstract, mesh)
  return nn.meta.unbox(abstract), shard


def abstract_state(model, tx, mesh):
  """The state as ShapeDtypeStructs carrying their shardings: the target of a restore or of
  an ahead-of-time compile. Returns (abstract state, shardings)."""
  abstract, shard = state_shardings(model, tx, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shard), shard


def create_state(config: Config, model, tx, mesh) -> Tuple[TrainState, Any]:
  """Initialize parameters and optimizer state directly into their shardings.

  The functions here take a Config, or a ConfigDict that they parse (library use)."""
  config = resolve(config)
  _, shard = state_shardings(model, tx, mesh)
  init = init_fn(model, tx)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shard)(
        jax.random.key(config.seed))
  return state, shard


# ------------------------------------------------------------------------------ step

def teacher_batch(model, teacher_params, batch, objectives_cfg):
  """The batch plus the EMA teacher's outputs (MultimodalModel.teacher_outputs, no dropout,
  no gradient) under the distilling objectives' teacher keys."""
  out = model.apply(teacher_params, batch, objectives_cfg, method=model.teacher_outputs)
  return dict(batch, **jax.lax.stop_gradient(out))


def make_train_step(config: Config, model, tx, schedule, mesh, state_sharding,
                    unroll_accumulation: bool = False) -> Callable:
  """jit(step)(state, batch) -> (state, metrics), sharded per the rules; state donated.
  unroll_accumulation: the micro-batch loop unrolled (for counting its FLOPs).

  A non-finite loss or gradient norm never updates the parameters; the decision is made on
  the device. nan_policy 'skip' drops that update and counts it (state.skipped); 'stop'
  freezes the state from the first such step on (state.first_skipped), so the loop can stop
  at its next look at the state without anything having moved meanwhile.
  """
  config = resolve(config)
  accum = config.grad_accum_steps
  stop = config.nan_policy == "stop"
  # Frozen parameters: no gradient flows into them (their backward is dead code) and they are
  # carried over as they are, so they stay bitwise unchanged.
  frozen = (frozen_mask(config, state_sharding.params) if config.freeze else
            jax.tree.map(lambda _: False, state_sharding.params))

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    if objectives.needs_teacher(config.objectives):  # SILC / TIPS: the EMA teacher's outputs
      batch = teacher_batch(model, ema_params(state.opt_state), batch, config.objectives)

    def trainable(params):  # frozen parameters pass no gradient
      return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)

    def loss_fn(params, micro, r):
      return objectives.pretraining_loss(model, trainable(params), micro, r, config.objectives,
                                         mesh)

    if accum == 1:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    elif config.grad_accum_negatives == "micro":
      loss, metrics, grads = accumulation.micro_average(
          jax.value_and_grad(loss_fn, has_aux=True), state.params,
          accumulation.split(batch, accum, mesh), rng, accum, unroll_accumulation)
    else:
      loss, metrics, grads = accumulation.cached_outputs(
          model, config, mesh, trainable, state.params, accumulation.split(batch, accum, mesh),
          rng, accum, unroll_accumulation)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = jax.tree.map(lambda n, o, f: o if f else n, params, state.params, frozen)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & (state.skipped == 0) if stop else finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
    bad = (~finite).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state), skipped=state.skipped + bad,
        first_skipped=jnp.where((state.first_skipped == 0) & (bad > 0), state.step + 1,
                                state.first_skipped))
    metrics = dict(metrics)
    metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                   skipped=1.0 - finite.astype(jnp.float32))
    return new_state, metrics

  batch_sh = NamedSharding(mesh, P(sharding.BATCH_AXES))
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sh),
                   out_shardings=(state_sharding, NamedSharding(mesh, P())),
                   donate_argnums=(0,))

  def run(state, batch):
    with _step_context(mesh):
      return jitted(state, batch)
  run.jitted = jitted
  run.lower = lambda state, batch: _lower(jitted, mesh, state, batch)
  return run


def lower_forward_loss(config: Config, model, mesh, state_sharding, state, batch):
  """The lowered forward of the step's loss (no gradient, no optimizer): the program whose
  FLOPs, times 3, are the step's model FLOPs (perf.model_flops). Remat changes only the
  backward, so this count is the same with and without it."""
  config = resolve(config)

  def forward(params, batch, step):
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    return objectives.pretraining_loss(model, params, batch, rng, config.objectives, mesh)[0]

  jitted = jax.jit(forward, in_shardings=(state_sharding.params,
                                          NamedSharding(mesh, P(sharding.BATCH_AXES)),
                                          state_sharding.step))
  return _lower(jitted, mesh, state.params, batch, state.step)


def _unscanned(config: Config) -> Config:
  """The config with every layer stack unrolled (model.scan off, towers included)."""
  m = config.model
  mods = tuple(dataclasses.replace(x, tower=dataclasses.replace(x.tower, scan=False))
               if x.tower is not None else x for x in m.modalities)
  model = dataclasses.replace(m, block=dataclasses.replace(m.block, scan=False), modalities=mods)
  return dataclasses.replace(config, model=model)


def flop_counts(config: Config, mesh, batch, lowered_step=None) -> Tuple[float, float]:
  """(model FLOPs, hardware FLOPs) of one global train step, from XLA's count of lowered
  programs (perf.step_flops). Model FLOPs: 3 x the forward loss (backward = 2 x forward, no
  recomputation, no optimizer), plus 1 x the EMA teacher's forward where an objective distils
  from one -> MFU. Hardware FLOPs: the whole step as it runs (remat
  recomputation and the optimizer included) -> HFU. A scanned stack is counted unrolled (XLA
  counts a loop body once), and so is the micro-batch loop of grad_accum_steps > 1;
  `lowered_step` (the step already lowered) is reused when neither loop is there.
  `batch`: arrays or ShapeDtypeStructs."""
  config = resolve(config)
  scanned = config.model.block.scan or any(t.scan for _, t in config.model.tower_blocks)
  if scanned:
    config, lowered_step = _unscanned(config), None
  if config.grad_accum_steps > 1:
    lowered_step = None
  model = models.build_model(config.model)
  tx, schedule = make_optimizer(config)
  state, shard = abstract_state(model, tx, mesh)
  if lowered_step is None:
    lowered_step = make_train_step(config, model, tx, schedule, mesh, shard,
                                   unroll_accumulation=True).lower(state, batch)
  teacher = 0.0
  if objectives.needs_teacher(config.objectives):  # the EMA teacher: a forward, no backward
    lowered, outputs = _lower_teacher(config, model, mesh, shard, state, batch)
    teacher, batch = step_flops(lowered), dict(batch, **outputs)
  forward = lower_forward_loss(config, model, mesh, shard, state, batch)
  return 3.0 * step_flops(forward) + teacher, step_flops(lowered_step)


def _lower_teacher(config: Config, model, mesh, state_sharding, state, batch):
  """(the lowered teacher forward, its outputs as ShapeDtypeStructs): counted once in the
  model FLOPs, and handed to the forward loss so that it does not recount it."""
  fn = lambda p, b: model.apply(p, b, config.objectives, method=model.teacher_outputs)
  jitted = jax.jit(fn, in_shardings=(state_sharding.params,
                                     NamedSharding(mesh, P(sharding.BATCH_AXES))))
  with _step_context(mesh):
    outputs = jax.eval_shape(fn, state.params, batch)
  return _lower(jitted, mesh, state.params, batch), outputs


@contextlib.contextmanager
def _step_context(mesh):
  """Trace under the mesh, the logical sharding rules, and attention `auto` resolving for the
  mesh's platform (a TPU slice compiled from a CPU host lowers the TPU kernels)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES), \
      attention.target_platform(mesh.devices.flat[0].platform):
    yield


def _lower(jitted, mesh, *args):
  with _step_context(mesh):
    return jitted.lower(*args)
