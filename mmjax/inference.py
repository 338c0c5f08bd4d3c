"""A checkpoint restored for use from Python: `mmjax.load(path)`.

  model = mmjax.load("runs/clip")                 # a workdir or <workdir>/checkpoints/<step>
  z_img = model.encode_image(["cat.jpg", pil_image, uint8_array])  # [N, E], L2-normalized
  z_txt = model.encode_text(["a photo of a cat", "a photo of a dog"])  # [N, E]
  logits = model.similarity(z_img, z_txt)   # [N_img, N_txt]: the learned scale (and bias)
  classes = model.zero_shot_classifier(["cat", "dog"])  # [C, E], prompt-ensembled
  predictions = (model.encode_image(files) @ classes.T).argmax(-1)

Inputs are preprocessed exactly as the data pipeline preprocesses the checkpoint's data
(mmjax.data.decode on its data config): an image of any size and mode is resized to
data.image_size and made RGB as data.image_resize says (a converted open_clip or Hugging
Face model: as that library preprocesses), and normalized with data.image_mean /
data.image_std (a model trained on the built-in set: with that set's own pixel statistics,
as its training batches were); a text is tokenized by the checkpoint's
tokenizer with its framing at data.text_len. Inputs go through in eval.batch_size rows sharded
over the local devices (the last chunk padded): one compile per modality and chunk size.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

import jax
import numpy as np

from mmjax import restore as restore_lib
from mmjax import sharding
from mmjax.data import decode
from mmjax.evaluators import zero_shot
from mmjax.evaluators.common import Evaluated, pad_rows


class LoadError(ValueError):
  """A modality the model lacks, inputs of the wrong kind (one line: the problem, the fix)."""


class Loaded:
  """A restored model, its config and parameters on the local devices (see module doc)."""

  def __init__(self, config, model, params, mesh, step: int):
    self.config, self.model, self.params, self.mesh, self.step = (config, model, params,
                                                                  mesh, step)
    self._ev = Evaluated(config, model, params, mesh, sharding.batch_sharding(mesh))
    self._pre = decode.Preprocessor(config.data)
    self._raw = jax.jit(lambda p, enc: model.apply(p, enc, method=model.contrastive_embedding))

  @property
  def modalities(self) -> tuple:
    return tuple(self.model.modalities)

  def modality(self, kind: str) -> str:
    """The first modality of `kind` ('image', 'text', ...); LoadError if there is none."""
    for m in self.config.model.modalities:
      if m.kind == kind:
        return m.name
    have = ", ".join(f"{m.name} ({m.kind})" for m in self.config.model.modalities)
    raise LoadError(f"the model has no {kind} modality (it has {have}); use encode(<name>, "
                    "inputs) with one of its modalities")

  # -- preprocessing ------------------------------------------------------------------------

  def preprocess(self, modality: str, inputs: Sequence[Any]):
    """Model-ready host inputs [N, ...] of one modality, as the data pipeline makes them
    (native-aspect images, data.max_patches: {modality: patch rows, '<m>_patch_grid': grids})."""
    kind = self._kind(modality)
    one_array = (kind == "image" and isinstance(inputs, np.ndarray)
                 and inputs.ndim in (2, 3))  # one [H, W(, C)] image, not a batch of rows
    if (isinstance(inputs, (str, bytes, os.PathLike)) or not hasattr(inputs, "__len__")
        or one_array):
      inputs = [inputs]
    if kind == "text":
      bad = [type(t).__name__ for t in inputs if not isinstance(t, str)]
      if bad:
        raise LoadError(f"encode_text takes strings; got {bad[0]}")
      tok, length = self._pre.tokenizer, self.config.data.text_len
      return np.stack([tok.encode(t, length) for t in inputs]).astype(np.int32)
    if kind == "image":
      stats = restore_lib.trained_on_builtin(self.config)
      images = [decode.model_image(_plain_image(x), self.config.data, stats) for x in inputs]
      if decode.max_patches(self.config.data):  # native aspect: patch rows and their grids
        return {modality: np.stack([r for r, _ in images]),
                f"{modality}_patch_grid": np.stack([g for _, g in images])}
      return np.stack(images)
    if kind in ("video", "audio"):
      return np.stack([self._pre.decode(i, {kind: x})[kind] for i, x in enumerate(inputs)])
    return np.stack([np.asarray(x) for x in inputs])

  def _kind(self, modality: str) -> str:
    if modality not in self.modalities:
      raise LoadError(f"the model has no modality {modality!r}; it has "
                      f"{', '.join(self.modalities)}")
    return self.config.model.modality(modality).kind

  # -- embeddings ---------------------------------------------------------------------------

  def encode(self, modality: str, inputs: Sequence[Any], normalize: bool = True) -> np.ndarray:
    """[N, E] alignment embeddings of `inputs` (L2-normalized unless normalize=False)."""
    self._kind(modality)
    if not self._ev.has_towers:
      raise LoadError(f"fusion {self.config.model.fusion.name!r} has no per-modality "
                      "embedding (no unimodal towers); encode needs a dual encoder or a "
                      "design with towers")
    x = self.preprocess(modality, inputs)
    return self.encode_preprocessed(modality, x, normalize)

  def encode_preprocessed(self, modality: str, x, normalize: bool = True):
    """encode() of inputs already preprocessed ([N, ...] model-ready arrays, or preprocess's
    dict of them)."""
    inputs = x if isinstance(x, dict) else {modality: x}
    n, n_dev, out = len(inputs[modality]), self.mesh.size, []
    chunk = max(n_dev, min(self.config.eval.batch_size, n + (-n) % n_dev) // n_dev * n_dev)
    for i in range(0, n, chunk):
      enc = self._ev.encode({k: pad_rows(v[i:i + chunk], chunk) for k, v in inputs.items()})
      z = (self._ev.embeddings(enc)[modality] if normalize else
           restore_lib.to_host(self._raw(self.params, enc)[modality]))
      out.append(z[:n - i])
    return np.concatenate(out) if out else np.zeros((0, self.config.model.embed_dim), np.float32)

  def encode_image(self, images: Sequence[Any], normalize: bool = True) -> np.ndarray:
    """PIL images, file paths, bytes, or uint8 / float [H, W(, C)] arrays -> [N, E]."""
    return self.encode(self.modality("image"), images, normalize)

  def encode_text(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
    """Strings -> [N, E], tokenized with the checkpoint's tokenizer and framing."""
    return self.encode(self.modality("text"), texts, normalize)

  def zero_shot_classifier(self, class_names: Sequence[str],
                           templates: Optional[Sequence[str]] = None) -> np.ndarray:
    """[C, E]: per class, the normalized mean over templates of the normalized prompt
    embeddings (eval.py's zero-shot formula). templates default as eval.py's: the config's
    data.prompt_templates, else its built-in task's, else openai_imagenet."""
    if templates is None:
      templates = zero_shot.zero_shot_classes(self.config.data)[1]
    ids = zero_shot.class_prompts(self.config, tuple(class_names), tuple(templates))
    return zero_shot.classifier(self._ev, ids)

  def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[Na, Nb] alignment logits: exp(logit_scale) cos(a, b) (CLIP), or exp(t) cos(a, b) + bias
    for a sigmoid (SigLIP) model."""
    kind = "sigmoid" if "sigmoid" in self.config.model.objective_heads else "contrastive"
    logits = self.model.apply(self.params, np.asarray(a), np.asarray(b), kind,
                              method=self.model.alignment_logits)
    return restore_lib.to_host(logits)

  def caption(self, images: Sequence[Any], max_len: int = 0, beam: int = 1) -> List[str]:
    """Captions of images by the model's decoder (or prefix-LM joint stream)."""
    from mmjax import generate  # pylint: disable=import-outside-toplevel
    src = self.config.model.caption_source
    try:
      gen = generate.for_config(self.config, self.model, self.params, self.mesh)
    except ValueError as e:
      raise LoadError(str(e)) from None
    x = self.preprocess(src, images)
    inputs = x if isinstance(x, dict) else {src: x}
    n, n_dev = len(inputs[src]), self.mesh.size
    ids = gen(self._ev.put({k: pad_rows(v, n + (-n) % n_dev) for k, v in inputs.items()}),
              max_len=max_len or self.config.data.text_len, beam=beam)[:n]
    return generate.decode_texts(self._pre.tokenizer, ids)


def _plain_image(x):
  """An image input as it is (decode.resize_image reads it); LoadError for any other kind."""
  if not (hasattr(x, "getbands") or isinstance(x, (str, bytes, bytearray, os.PathLike,
                                                   np.ndarray))):
    raise LoadError(f"encode_image takes PIL images, file paths, bytes or arrays; got "
                    f"{type(x).__name__}")
  return x


def load(path: str, devices=None, ema: bool = False) -> Loaded:
  """A workdir (its latest checkpoint) or a <workdir>/checkpoints/<step> directory, restored
  onto `devices` (default: every local device), whatever mesh trained it; ema=True: its EMA
  parameters (a run trained with optimizer.ema_decay)."""
  path = os.fspath(path)
  step_dir = os.path.basename(os.path.normpath(path)).isdigit()
  config, model, params, mesh, step = restore_lib.restore(
      workdir=None if step_dir else path, checkpoint=path if step_dir else None,
      overrides={"eval.use_ema": True} if ema else None, devices=devices)
  return Loaded(config, model, params, mesh, step)
