"""Self-distillation of the image tower from an EMA teacher (SigLIP 2's late phase).

The teacher is the EMA of the student's parameters (optimizer.ema_decay), heads included; the
train step runs it on the clean images without gradient (teacher_outputs) and hands its
outputs to the student's losses in the batch ('teacher_silc', 'teacher_tips'). Called
without them (pretraining_loss on a bare batch) the student itself, under stop_gradient, is
the teacher. Both losses are losses.self_distillation_loss: the teacher's logits centred over
the batch and sharpened (objectives.distill_teacher_temp), the student's softened
(distill_student_temp), cross entropy between the two.

  silc  SILC: objectives.silc_crops local crops per image (random boxes of
        objectives.silc_crop_scale of its area, aspect 3/4..4/3, resized to the image's size)
        through the student, each crop's image embedding -> head [K], against the teacher's
        head on the whole image (the global view): local-to-global correspondence.
  tips  TIPS: the student sees the image with objectives.tips_mask_ratio of its patches
        replaced by the [MASK] token; at the masked patches its tokens -> head [K] predict the
        teacher's head on the same patches of the clean image (iBOT-style masked prediction).
K = model.prototypes. Each head is an MLP (width -> width, GELU) then a linear map onto K.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import masking
from mmjax.objectives import base
from mmjax.objectives.losses import self_distillation_loss
from mmjax import tokenizers

class DistillHead(nn.Module):
  """x [..., D] -> logits [..., K] float32: Dense(D) -> GELU -> LayerNorm -> Dense(K)."""
  prototypes: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense = lambda n, name, axes: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype,
                                           name=name, kernel_init=nn.with_logical_partitioning(
                                               nn.initializers.lecun_normal(), axes))
    h = nn.gelu(dense(d, "hidden", ("embed", "mlp"))(x))
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln")(h)
    return dense(self.prototypes, "out", ("mlp", None))(h).astype(jnp.float32)


def image_modality(cfg) -> str:
  """The model's first image modality ('' if none)."""
  return next((m.name for m in cfg.modalities if m.kind == "image"), "")


def _check(name: str, model) -> None:
  if not image_modality(model):
    raise ValueError(f"loss_weights.{name} distils an image tower and the model has no image "
                     f"modality; set loss_weights.{name}=0")


def local_crops(rng, images, n: int, scale) -> jax.Array:
  """images [B, H, W, C] -> [B * n, H, W, C]: n random crops per image (area in `scale` of the
  image, aspect in [3/4, 4/3], inside the image), each resized back to H x W (linear,
  antialiased); rows are image-major (b * n + i)."""
  b, h, w, c = images.shape
  ka, kr, ky, kx = jax.random.split(rng, 4)
  area = jax.random.uniform(ka, (b, n), minval=scale[0], maxval=scale[1])
  ratio = jnp.exp(jax.random.uniform(kr, (b, n), minval=math.log(3 / 4), maxval=math.log(4 / 3)))
  ch, cw = jnp.minimum(jnp.sqrt(area * ratio), 1.0), jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  y0 = jax.random.uniform(ky, (b, n)) * (1.0 - ch)
  x0 = jax.random.uniform(kx, (b, n)) * (1.0 - cw)

  def one(img, y, x, hh, ww):
    return jax.image.scale_and_translate(
        img, (h, w, c), (0, 1), jnp.stack([1.0 / hh, 1.0 / ww]),
        jnp.stack([-y * h / hh, -x * w / ww]), "linear", antialias=True)
  crops = jax.vmap(jax.vmap(one, (None, 0, 0, 0, 0)))(images, y0, x0, ch, cw)
  return crops.reshape(b * n, h, w, c).astype(images.dtype)


def _image_only(model, batch):
  m = image_modality(model.cfg)
  return {k: v for k, v in batch.items() if k in tokenizers.input_keys(m)}


def global_logits(model, batch):
  """The SILC head on the whole images' embeddings: [B, K]."""
  m = image_modality(model.cfg)
  z = model.contrastive_embedding(model.encode(model.embed(_image_only(model, batch))))[m]
  return model.heads["silc"]["head"](z)


def patch_logits(model, batch, mask=None):
  """The TIPS head on the image tower's patch tokens ([CLS] dropped), with `mask` [B, N]
  patches replaced by [MASK]: [B, N, K]."""
  m = image_modality(model.cfg)
  tokens, _ = model.encode(model.embed(_image_only(model, batch),
                                       None if mask is None else {m: mask}))[m]
  return model.heads["tips"]["head"](tokens[:, base.stream_start(model, m):])


def _teacher(model, shared, key: str, fn):
  got = shared.batch.get(key)
  return jax.lax.stop_gradient(fn(model, shared.batch) if got is None else got)


class _Distillation(base.Objective):

  def check(self, model, objectives):
    _check(self.name, model)

  def heads(self, model):
    blk = model.cfg.block
    return {"head": DistillHead(model.cfg.prototypes, blk.dtype, blk.param_dtype,
                                name=f"{self.name}_head")}

  def losses(self, outputs, objectives, mesh=None):
    student, teacher, weights = outputs
    return {self.name: self_distillation_loss(student, teacher, weights,
                                              objectives.distill_student_temp,
                                              objectives.distill_teacher_temp)}


@base.register
class Silc(_Distillation):
  """Local crops against the EMA teacher's global view (module docstring)."""
  name = "silc"
  survey_name = "self-distillation, local-to-global (SILC, SigLIP 2)"
  teacher_key = "teacher_silc"

  def teacher(self, model, batch):
    return global_logits(model, batch)

  def init(self, model, batch, encoded, out):
    global_logits(model, batch)

  def outputs(self, model, shared):
    cfg, m = shared.config, image_modality(model.cfg)
    images = shared.batch[m]
    crops = local_crops(jax.random.fold_in(shared.rng, 14), images, cfg.silc_crops,
                        cfg.silc_crop_scale)
    student = global_logits(model, {m: crops}).reshape(images.shape[0], cfg.silc_crops, -1)
    teacher = _teacher(model, shared, self.teacher_key, global_logits)
    teacher = jnp.broadcast_to(teacher[:, None], student.shape)
    return student, teacher, jnp.ones(student.shape[:2], jnp.float32)


@base.register
class Tips(_Distillation):
  """Masked patches predicting the EMA teacher's patch outputs (module docstring)."""
  name = "tips"
  survey_name = "masked prediction of teacher features (TIPS, SigLIP 2)"
  teacher_key = "teacher_tips"

  def heads(self, model):
    m = model.cfg.modality(image_modality(model.cfg) or model.cfg.modalities[0].name)
    blk = m.tower or model.cfg.block
    return {"head": DistillHead(model.cfg.prototypes, blk.dtype, blk.param_dtype,
                                name=f"{self.name}_head")}

  def teacher(self, model, batch):
    return patch_logits(model, batch)

  def init(self, model, batch, encoded, out):
    patch_logits(model, batch)

  def outputs(self, model, shared):
    teacher = _teacher(model, shared, self.teacher_key, patch_logits)
    b, n = teacher.shape[:2]
    mask = masking.random_patch_mask(jax.random.fold_in(shared.rng, 15), b, n,
                                     shared.config.tips_mask_ratio)
    return patch_logits(model, shared.batch, mask), teacher, mask.astype(jnp.float32)

