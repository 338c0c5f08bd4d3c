"""What every evaluator shares: jitted model stages and score helpers (the registry and the
evaluation context: mmjax.evaluators.base; the eval splits: mmjax.restore)."""
from __future__ import annotations


from typing import Any, Callable, Dict, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models, tokenizers
from mmjax.fusion import design_of
from mmjax.layers import l2_normalize
from mmjax.restore import to_host


class Evaluated:
  """A restored model with jitted stages, on the devices at hand."""

  def __init__(self, config, model: models.MultimodalModel, params, mesh, batch_sharding):
    """config: the typed Config (mmjax.config_lib) the model was built from."""
    self.config, self.model, self.params = config, model, params
    self.mesh, self.batch_sharding = mesh, batch_sharding
    self.a, self.b = model.modalities[0], model.modalities[1]
    self._encode = jax.jit(lambda p, b: model.apply(
        p, model.apply(p, b, method=model.embed), method=model.encode))
    self._embed_contrastive = jax.jit(lambda p, enc: model.apply(
        p, enc, method=model.contrastive_embedding))
    self._itm = jax.jit(lambda p, enc: jax.nn.log_softmax(model.apply(
        p, model.apply(p, enc, method=model.interact)["joint"], method=model.itm_logits))[:, 1])
    self._jits: Dict[Hashable, Any] = {}

  def jitted(self, key: Hashable, fn: Callable) -> Callable:
    """jax.jit(fn), made once per key: an evaluator's own stage compiles once however often
    it runs (every evaluation point of a training run)."""
    if key not in self._jits:
      self._jits[key] = jax.jit(fn)
    return self._jits[key]

  def encode(self, batch):
    return self._encode(self.params, self.put(batch))

  def embeddings(self, encoded) -> Dict[str, np.ndarray]:
    emb = self._embed_contrastive(self.params, encoded)
    return {m: to_host(l2_normalize(v)) for m, v in emb.items()}

  def itm_scores(self, encoded) -> np.ndarray:
    """log P(match) for each row's pairing of the encoded modalities."""
    return to_host(self._itm(self.params, encoded))

  def put(self, batch, extra: Sequence[str] = ()):
    """Host batch (the same on every process) -> global arrays sharded over the batch axes:
    the model's inputs and the `extra` keys (e.g. an evaluator's region queries)."""
    keep = {k for m in self.model.modalities for k in tokenizers.input_keys(m)} | set(extra)
    batch = {k: v for k, v in batch.items() if k in keep}
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), self.batch_sharding, lambda idx, x=x: np.asarray(x)[idx]), batch)

  @property
  def has_towers(self) -> bool:
    """Alignment embeddings are meaningful (the design has per-modality towers)."""
    return design_of(self.model.cfg).has_towers(self.model.modalities)

  @property
  def has_itm(self) -> bool:
    """The design has a joint output for the matching head."""
    return design_of(self.model.cfg).joint_output


RESOLUTION = 1e-4


def quantize(scores) -> np.ndarray:
  """Scores rounded to RESOLUTION before any comparison, so a metric never depends on the
  last bits of how a mesh laid out the computation (1 vs 8 devices give identical numbers).
  Evaluators count ties as misses (a collapsed model scores chance, not perfect)."""
  return np.round(np.asarray(scores, np.float64) / RESOLUTION) * RESOLUTION


def strictly_best(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """[N, C] scores, [N] correct column -> [N] bool: the correct column beats every other."""
  s = quantize(scores)
  c = s[np.arange(len(s)), correct][:, None]
  others = np.ones_like(s, bool)
  others[np.arange(len(s)), correct] = False
  return ~np.any((s >= c) & others, axis=1)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
  """Repeat the last row until the row count divides over `multiple` batch shards."""
  extra = (-x.shape[0]) % multiple
  return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def inputs(batch, *modalities):
  """The batch's inputs of `modalities`, with their `<m>_valid` flags (and native-aspect patch
  grids) where the batch has them
  (an absent modality stays absent when an evaluator encodes one side alone)."""
  return {k: batch[k] for m in modalities for k in tokenizers.input_keys(m) if k in batch}


def take(tree, idx):
  return jax.tree.map(lambda t: jnp.take(t, jnp.asarray(idx), axis=0), tree)


def concat(*trees):
  return jax.tree.map(lambda *t: jnp.concatenate(t, axis=0), *trees)
