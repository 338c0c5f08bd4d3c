"""The model built from a config: every fusion with real embedders, heads, clear config errors."""
import chex
import jax
import numpy as np
import pytest

from mmjax.configs import default
from mmjax import config_lib, configure, fusion, models
import jax.numpy as jnp
from tests.helpers import apply, init, tiny_config


def _cfg(name):
  c = default.get_config()
  c.model.fusion = name
  c.model.width, c.model.heads, c.model.mlp_dim = 32, 2, 64
  c.model.depth.update({"unimodal": 1, "joint": 1, "cross": 1, "post": 1})
  c.model.early_sum_align = "pad"
  return c


@pytest.mark.parametrize("name", fusion.BUILTIN)
def test_model_forward_and_heads(name):
  c = _cfg(name)
  model = models.build_model(c)
  batch = models.dummy_batch(c, 2)
  batch["image"] = np.random.RandomState(0).randn(*batch["image"].shape).astype(np.float32)
  batch["text"][:, 1:5] = 9
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  out = jax.jit(model.apply)(params, batch)
  chex.assert_tree_all_finite(out)
  enc = apply(model, params, apply(model, params, batch, method=model.embed), method=model.encode)
  emb = apply(model, params, enc, method=model.contrastive_embedding)
  chex.assert_shape(emb["image"], (2, c.model.embed_dim))
  logits = apply(model, params, "text", out["tokens"]["text"], method=model.mlm_logits)
  n_text = 65 if name == "early_sum" else 32  # early_sum: one stream, padded to the longest
  chex.assert_shape(logits, (2, n_text, 261))
  pred = apply(model, params, "image", out["tokens"]["image"][:, 1:], method=model.mim_prediction)
  chex.assert_shape(pred, (2, 64, 4 * 4 * 3))
  itm = apply(model, params, out["joint"], method=model.itm_logits)
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


@pytest.mark.parametrize("name", ["dual_encoder", "hier_multi_to_one", "cross_attention"])
def test_towers_of_their_own_width(name):
  """text at width 16 (2 heads, MLP 32: the model's ratio of 2) beside a 32-wide model: its
  embedder and tower run at 16; a fusion design maps the tower to 32 through tower_proj_text,
  a dual encoder meets only in the contrastive projections. The image side is unchanged."""
  c = _cfg(name)
  c.model.modalities.text.update({"width": 16, "heads": 2})
  model = models.build_model(c)
  batch = models.dummy_batch(c, 2)
  batch["text"][:, 1:5] = 9
  params = init(model, jax.random.key(0), batch, method=model.init_all)["params"]
  p = jax.tree.map(lambda x: x.value.shape if hasattr(x, "value") else x.shape, params,
                   is_leaf=lambda x: hasattr(x, "value"))
  f = p["fusion"]
  assert p["embed_text"]["token_embedding"][-1] == 16
  assert f["tower_text"]["layer_0"]["mlp"]["fc1"]["kernel"] == (16, 32)
  assert f["tower_image"]["layer_0"]["mlp"]["fc1"]["kernel"] == (32, 64)
  assert p["proj_text"]["kernel"] == (16 if name == "dual_encoder" else 32, c.model.embed_dim)
  if name == "dual_encoder":
    assert not any(k.startswith("tower_proj") for k in f)
  else:
    assert f["tower_proj_text"]["kernel"] == (16, 32) and "tower_proj_image" not in f
  out = apply(model, {"params": params}, batch)
  chex.assert_tree_all_finite(out)
  # Same widths everywhere: no projection, the parameter tree of before.
  same = models.build_model(_cfg(name))
  p_same = init(same, jax.random.key(0), batch, method=same.init_all)["params"]
  assert not any(k.startswith("tower_proj") for k in p_same["fusion"])


def test_tower_width_errors():
  c = _cfg("dual_encoder")
  c.model.modalities.text.update({"width": 20, "heads": 3})
  with pytest.raises(ValueError, match="modalities.text.width=20 is not divisible"):
    models.build_model(c)
  c = _cfg("dual_encoder")
  c.model.modalities.text.width = 16
  c.model.pool_combine = "product"
  with pytest.raises(ValueError, match="different widths"):
    models.build_model(c)


def test_pretraining_outputs_cover_every_pair_and_objective():
  """Three modalities: alignment on each of the 3 pairs, MLM on the text, MIM on the image;
  the loss is the weighted sum, and each pair's loss is InfoNCE on the model's embeddings."""
  from mmjax import configure, objectives  # pylint: disable=import-outside-toplevel
  c = _cfg("hier_multi_to_one")
  c.model.modalities.feat = {"kind": "features", "in_dim": 8, "input_shape": (5,),
                             "max_len": 5}
  c.loss_weights.update({"contrastive": 1.0, "sigmoid": 0.5, "mlm": 0.5, "mim": 0.25,
                         "itm": 1.0})
  cfg = configure.resolve(c)
  model = models.build_model(cfg)
  rng = np.random.RandomState(0)
  batch = models.dummy_batch(cfg, 4)
  batch["image"] = rng.randn(*batch["image"].shape).astype(np.float32)
  batch["text"][:, 1:9] = rng.randint(5, 261, size=(4, 8))
  batch["feat"] = rng.randn(*batch["feat"].shape).astype(np.float32)
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  loss, metrics = jax.jit(lambda p, b, r: objectives.pretraining_loss(
      model, p, b, r, cfg.objectives))(params, batch, jax.random.key(1))
  assert cfg.model.names == ("feat", "image", "text")  # ConfigDict keys come sorted
  pairs = ("feat_image", "feat_text", "image_text")
  names = ([f"contrastive_{p}" for p in pairs] + [f"sigmoid_{p}" for p in pairs]
           + ["itm", "mlm", "mim"])
  assert sorted(k[:-len("/loss")] for k in metrics if k.endswith("/loss")) == sorted(names)
  weight = lambda n: cfg.objectives.weight(n.split("_")[0])
  total = sum(weight(n) * float(metrics[f"{n}/loss"]) for n in names)
  assert float(loss) == pytest.approx(total, rel=1e-6)
  emb = apply(model, params, apply(model, params, apply(model, params, batch, method=model.embed),
                                        method=model.encode), method=model.contrastive_embedding)
  want, _ = objectives.contrastive_loss(emb["feat"], emb["text"],
                                        params["params"]["logit_scale"])
  assert float(metrics["contrastive_feat_text/loss"]) == pytest.approx(float(want), rel=1e-5)


def test_text_key_masks_and_last_token_pooling():
  from mmjax import tokenizers
  from mmjax.fusion.base import pool_tokens
  ids = jnp.asarray([[7, 5, 9, 0, 9, 0], [7, 9, 9, 9, 9, 9]])
  eos = tokenizers.TextEmbedder(width=4, key_mask="eos", eos_id=9)
  np.testing.assert_array_equal(eos.token_mask(ids), [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
  pad = tokenizers.TextEmbedder(width=4, key_mask="pad", pad_id=0)
  np.testing.assert_array_equal(pad.token_mask(ids), [[1, 1, 1, 0, 1, 0], [1] * 6])
  assert bool(jnp.all(tokenizers.TextEmbedder(width=4, key_mask="none").token_mask(ids)))
  tokens = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
  last = pool_tokens(tokens, eos.token_mask(ids), "last")  # the end token itself
  np.testing.assert_array_equal(last[:, 0], [2.0, 7.0])


def test_objective_heads_build_only_what_they_name():
  cfg = tiny_config("dual_encoder")
  cfg.model.objective_heads = ("sigmoid",)
  cfg.loss_weights = {"contrastive": 0.0, "sigmoid": 1.0, "mlm": 0.0, "mim": 0.0, "itm": 0.0}
  cfg.model.modalities.image.update({"pool": "map", "proj_bias": False,
                                     "type_embedding": False, "mim_token": False})
  model = models.build_model(cfg)
  params = init(model, jax.random.key(0), models.dummy_batch(cfg), method=model.init_all)
  top = set(params["params"])
  assert {"sigmoid_t", "sigmoid_b", "map_image"} <= top
  assert not top & {"logit_scale", "itm_head", "mlm_head_text", "mim_head_image"}
  assert "bias" not in params["params"]["proj_image"]
  assert "type_embedding" not in params["params"]["embed_image"]
  cfg.loss_weights.contrastive = 1.0
  with pytest.raises(config_lib.ConfigError, match="no contrastive head"):
    configure.resolve(cfg)
