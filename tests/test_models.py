"""The model built from a config: every fusion with real embedders, heads, clear config errors."""
import chex
import jax
import numpy as np
import pytest

from configs import default
from mmjax import fusion, models


def _cfg(name):
  c = default.get_config()
  c.model.fusion = name
  c.model.width, c.model.heads, c.model.mlp_dim = 32, 2, 64
  c.model.depth.update({"unimodal": 1, "joint": 1, "cross": 1, "post": 1})
  c.model.early_sum_align = "pad"
  return c


@pytest.mark.parametrize("name", fusion.FUSIONS)
def test_model_forward_and_heads(name):
  c = _cfg(name)
  model = models.build_model(c)
  batch = models.dummy_batch(c, 2)
  batch["image"] = np.random.RandomState(0).randn(*batch["image"].shape).astype(np.float32)
  batch["text"][:, 1:5] = 9
  params = model.init(jax.random.key(0), batch, method=model.init_all)
  out = jax.jit(model.apply)(params, batch)
  chex.assert_tree_all_finite(out)
  enc = model.apply(params, model.apply(params, batch, method=model.embed), method=model.encode)
  emb = model.apply(params, enc, method=model.contrastive_embedding)
  chex.assert_shape(emb["image"], (2, c.model.embed_dim))
  logits = model.apply(params, "text", out["tokens"]["text"], method=model.mlm_logits)
  n_text = 65 if name == "early_sum" else 32  # early_sum: one stream, padded to the longest
  chex.assert_shape(logits, (2, n_text, 261))
  pred = model.apply(params, "image", out["tokens"]["image"][:, 1:], method=model.mim_prediction)
  chex.assert_shape(pred, (2, 64, 4 * 4 * 3))
  itm = model.apply(params, out["joint"], method=model.itm_logits)
  chex.assert_shape(itm, (2, 2))


def test_config_errors_are_one_line():
  c = _cfg("early_concat")
  c.model.fusion = "late_fusion"
  with pytest.raises(ValueError, match="unknown model.fusion='late_fusion'") as e:
    models.build_model(c)
  assert "\n" not in str(e.value)
  c = _cfg("early_concat")
  c.model.width, c.model.heads = 30, 4
  with pytest.raises(ValueError, match="not divisible by model.heads"):
    models.build_model(c)
  c = _cfg("early_concat")
  c.model.dtype = "float8"
  with pytest.raises(ValueError, match="unknown dtype 'float8'"):
    models.build_model(c)
