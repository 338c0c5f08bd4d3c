"""Every fusion design: runs (jit or not, f32 or bf16), is padding-invariant, has the structure
the survey names, survives an absent modality, and costs what the survey says."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.configs import default
from mmjax import fusion, models, summary
from mmjax.layers import BlockConfig, Encoder
from tests.helpers import apply, init

D = 32
BLOCK = BlockConfig(width=D, num_heads=2, mlp_dim=64, attention_impl="xla")


def make(name, mods=("a", "b"), block=BLOCK, **kw):
  opts = dict(name=name, unimodal_depth=tuple((m, 1) for m in mods), joint_depth=1,
              post_depth=1, cross_depth=1, num_bottlenecks=2, early_sum_align="pad")
  opts.update(kw)
  return fusion.Fusion(fusion.FusionConfig(**opts), block, tuple(mods))


def inputs(lengths=(6, 5), valid=((6, 4), (5, 3)), seed=0, dtype=jnp.float32):
  rng = np.random.RandomState(seed)
  out = {}
  for m, n, v in zip("abc", lengths, valid):
    toks = jnp.asarray(rng.randn(len(v), n, D), dtype)
    mask = jnp.arange(n)[None] < jnp.asarray(v)[:, None]
    out[m] = (toks, mask)
  return out


def init_apply(mod, x, **kw):
  """Parameters and outputs of `mod` on `x`, each one compiled program."""
  params = init(mod, jax.random.key(0), x)
  return params, apply(mod, params, x, **kw)


def valid_outputs(out, x):
  """The outputs a padding change must not touch: valid tokens, pooled, joint."""
  res = {"joint": out["joint"], "pooled": out["pooled"]}
  for m, (_, mask) in x.items():
    t = out["tokens"][m]
    n = mask.shape[1]
    res[m] = jnp.where(mask[..., None], t[:, :n], 0.0)
  return res


@pytest.mark.parametrize("name", fusion.BUILTIN)
def test_runs_with_and_without_jit(name):
  mod, x = make(name), inputs(lengths=(6, 6), valid=((6, 4), (6, 3)))
  params = init(mod, jax.random.key(0), x)
  out = mod.apply(params, x)  # eager: every op dispatched alone
  jitted = jax.jit(mod.apply)(params, x)
  chex.assert_trees_all_close(jitted, out, atol=1e-5)
  for m in "ab":
    chex.assert_shape(out["tokens"][m], (2, 6, D))
    assert out["tokens"][m].dtype == jnp.float32
  two = fusion.get(name).multi_stream
  chex.assert_shape(out["joint"], (2, 2 * D if two else D))
  assert sorted(out["pooled"]) == (["a", "b"] if two else ["joint"])
  chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("name", fusion.BUILTIN)
def test_bf16_compute_with_f32_params(name):
  blk = dataclasses.replace(BLOCK, dtype=jnp.bfloat16)
  mod, x = make(name, block=blk), inputs(lengths=(6, 6), valid=((6, 4), (6, 3)),
                                         dtype=jnp.bfloat16)
  params, out = init_apply(mod, x)
  assert {l.dtype for l in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert out["tokens"]["a"].dtype == jnp.bfloat16
  chex.assert_tree_all_finite(out)
  ref = apply(mod, params, {m: (t.astype(jnp.float32), k) for m, (t, k) in x.items()})
  np.testing.assert_allclose(np.asarray(out["joint"], np.float32),
                             np.asarray(ref["joint"], np.float32), atol=0.15)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("name", fusion.BUILTIN)
@pytest.mark.parametrize("padded", ["a", "b"])
def test_padding_invariance(name, pool, padded):
  mod = make(name, pool=pool)
  x = inputs(lengths=(6, 6), valid=((6, 4), (6, 3)))
  params, out = init_apply(mod, x)
  toks, mask = x[padded]
  junk = 50.0 * jax.random.normal(jax.random.key(3), (2, 3, D))
  x_pad = dict(x)
  x_pad[padded] = (jnp.concatenate([toks, junk], 1),
                   jnp.concatenate([mask, jnp.zeros((2, 3), bool)], 1))
  out_pad = apply(mod, params, x_pad)
  chex.assert_trees_all_close(valid_outputs(out_pad, x), valid_outputs(out, x), atol=1e-5)


def _perturb(x, m, seed=7):
  t, k = x[m]
  y = dict(x)
  y[m] = (t + jax.random.normal(jax.random.key(seed), t.shape), k)
  return y


def _changed(a, b, mask=None):
  d = jnp.abs(a - b)
  if mask is not None:
    d = jnp.where(mask[..., None], d, 0.0)
  return float(jnp.max(d)) > 1e-4


def test_hier_multi_to_one_towers_are_independent():
  mod, x = make("hier_multi_to_one"), inputs()
  params = init(mod, jax.random.key(0), x)
  y = _perturb(x, "b")
  enc_x = apply(mod, params, x, method=mod.encode)
  enc_y = apply(mod, params, y, method=mod.encode)
  chex.assert_trees_all_close(enc_x["a"], enc_y["a"])  # Tf1(Z_A) never sees B
  assert _changed(apply(mod, params, x)["tokens"]["a"], apply(mod, params, y)["tokens"]["a"],
                  x["a"][1])  # Tf3 mixes


def test_hier_one_to_multi_first_stage_mixes():
  mod, x = make("hier_one_to_multi", unimodal_depth=()), inputs()
  params = init(mod, jax.random.key(0), x)
  y = _perturb(x, "b")
  _, sx = apply(mod, params, x, mutable=["intermediates"])
  _, sy = apply(mod, params, y, mutable=["intermediates"])
  stage1 = lambda s: s["intermediates"]["stage1"][0]["a"]
  assert _changed(stage1(sx), stage1(sy), x["a"][1])


def test_cross_attention_streams_exchange():
  for mode in ("pure", "self_cross"):
    mod, x = make("cross_attention", unimodal_depth=(), cross_mode=mode), inputs()
    params = init(mod, jax.random.key(0), x)
    ox, oy = apply(mod, params, x), apply(mod, params, _perturb(x, "b"))
    assert _changed(ox["tokens"]["a"], oy["tokens"]["a"], x["a"][1])
    oz = apply(mod, params, _perturb(x, "a"))
    assert _changed(ox["tokens"]["b"], oz["tokens"]["b"], x["b"][1])


def test_cross_attention_residual_form_and_shared_weights():
  """Pure cross layer, one layer: Z_A' = Z_A + MHSA(LN(Z_A), LN(Z_B)) (+ FFN); with B absent
  the attention adds exactly 0, so A's stream is Z_A + FFN(Z_A) only."""
  mod = make("cross_attention", unimodal_depth=(), share_cross=True)
  x = inputs()
  params = init(mod, jax.random.key(0), x)
  p = params["params"]
  assert "shared_cross_attn" in p and "cross_attn" not in p["cross_0_a"]
  x_absent = dict(x)
  x_absent["b"] = (x["b"][0], jnp.zeros_like(x["b"][1]))
  a_only = apply(mod, params, x_absent)["tokens"]["a"]
  y = _perturb(x_absent, "b")
  chex.assert_trees_all_close(apply(mod, params, y)["tokens"]["a"], a_only)


def test_dual_encoder_never_mixes():
  mod, x = make("dual_encoder"), inputs()
  params = init(mod, jax.random.key(0), x)
  ox, oy = apply(mod, params, x), apply(mod, params, _perturb(x, "b"))
  chex.assert_trees_all_close(ox["tokens"]["a"], oy["tokens"]["a"])
  chex.assert_trees_all_close(ox["pooled"]["a"], oy["pooled"]["a"])


@pytest.mark.parametrize("weights", ["fixed", "learned"])
def test_early_sum_is_a_single_stream_on_the_weighted_sum(weights):
  mod = make("early_sum", unimodal_depth=(), early_sum_weights=weights, early_sum_align="none",
             joint_depth=2)
  x = inputs(lengths=(6, 6), valid=((6, 6), (6, 6)))
  params = init(mod, jax.random.key(0), x)
  a, b = 1.0, 1.0
  if weights == "learned":
    params = jax.tree.map(lambda v: v, params)
    params["params"]["sum_weights"] = jnp.array([0.3, 2.0])
    a, b = 0.3, 2.0
  out = apply(mod, params, x)["tokens"]["a"]
  z = a * x["a"][0] + b * x["b"][0]
  ref = Encoder(BLOCK, 2, name="joint").apply({"params": params["params"]["joint"]}, z,
                                              x["a"][1])
  chex.assert_trees_all_close(out, ref, atol=1e-5)


def test_early_sum_rejects_unequal_lengths():
  mod, x = make("early_sum", early_sum_align="none"), inputs(lengths=(6, 5))
  with pytest.raises(ValueError, match="early_sum needs aligned tokens of equal length"):
    init(mod, jax.random.key(0), x)


def test_bottleneck_routes_only_through_bottleneck_tokens():
  x = inputs()
  one = make("bottleneck", unimodal_depth=(), joint_depth=1)
  params = init(one, jax.random.key(0), x)
  # One fusion layer: A attends to [A; B_init]; B_init is a parameter, so A can't see B yet.
  chex.assert_trees_all_close(apply(one, params, x)["tokens"]["a"],
                              apply(one, params, _perturb(x, "b"))["tokens"]["a"])
  two = make("bottleneck", unimodal_depth=(), joint_depth=2)
  params = init(two, jax.random.key(0), x)
  assert _changed(apply(two, params, x)["tokens"]["a"],
                  apply(two, params, _perturb(x, "b"))["tokens"]["a"], x["a"][1])
  # And A's attention keys are exactly its own tokens plus the bottlenecks.
  blk = dataclasses.replace(BLOCK, capture_weights=True)
  cap = make("bottleneck", unimodal_depth=(), joint_depth=2, block=blk)
  _, state = apply(cap, params, x, mutable=["intermediates"])
  w = state["intermediates"]["fusion_0_a"]["attn"]["attention_weights"][0]
  chex.assert_shape(w, (2, 2, 6 + 2, 6 + 2))


@pytest.mark.parametrize("name", fusion.BUILTIN)
def test_absent_modality_is_defined(name):
  mod = make(name)
  x = inputs(lengths=(6, 6), valid=((6, 4), (6, 3)))
  params = init(mod, jax.random.key(0), x)
  for gone in "ab":
    y = dict(x)
    y[gone] = (x[gone][0], jnp.zeros_like(x[gone][1]))
    out = apply(mod, params, y)
    chex.assert_tree_all_finite(out)
    g = jax.jit(jax.grad(lambda p: jnp.sum(mod.apply(p, y)["joint"])))(params)
    chex.assert_tree_all_finite(g)


@pytest.mark.parametrize("name", fusion.BUILTIN)
def test_three_modalities(name):
  mods = ("a", "b", "c")
  mod = make(name, mods=mods)
  x = inputs(lengths=(6, 6, 6), valid=((6, 4), (6, 3), (5, 6)))
  params, out = init_apply(mod, x)
  for m in mods:
    chex.assert_shape(out["tokens"][m], (2, 6, D))
  chex.assert_tree_all_finite(out)
  if name in ("cross_attention",):  # queries of A attend to C(B, C)
    assert _changed(out["tokens"]["a"], apply(mod, params, _perturb(x, "c"))["tokens"]["a"],
                    x["a"][1])


def test_validate_errors():
  with pytest.raises(ValueError, match="unknown model.fusion='late'"):
    fusion.design_of(fusion.FusionConfig(name="late"))  # pylint: disable=expression-not-assigned
  with pytest.raises(ValueError, match="needs a unimodal tower"):
    fusion.design_of(fusion.FusionConfig(name="dual_encoder")).validate(("a", "b"))
  with pytest.raises(ValueError, match="two or more modalities"):
    fusion.design_of(fusion.FusionConfig(name="early_concat")).validate(("a",))


def _attn_flops(name, image_shape=(32, 32, 3), text_len=32, **depth):
  c = default.get_config()
  c.model.fusion = name
  c.model.depth.unimodal = 0
  c.model.depth.joint = 1
  c.model.depth.cross = 1
  c.model.depth.update(depth)
  c.model.modalities.image.input_shape = image_shape
  c.model.modalities.text.max_len = text_len
  c.model.width, c.model.heads, c.model.mlp_dim = 32, 2, 64
  return summary.summarize(c)["attention_flops"]


def test_attention_cost_grows_as_the_survey_says():
  # early_concat: O((N_A + N_B)^2): both token counts double -> ~4x.
  base = _attn_flops("early_concat")
  both = _attn_flops("early_concat", image_shape=(32, 64, 3), text_len=64)
  assert 3.7 < both / base < 4.1, both / base
  # cross_attention (pure): O(N_A * N_B): one count doubles -> ~2x.
  base = _attn_flops("cross_attention", joint=0)
  one = _attn_flops("cross_attention", joint=0, text_len=64)
  assert 1.9 < one / base < 2.1, one / base
  # dual encoder: O(N_A^2 + N_B^2): only the text doubles -> text part 4x, image unchanged.
  base = _attn_flops("dual_encoder", unimodal=1)
  one = _attn_flops("dual_encoder", unimodal=1, text_len=64)
  n_img, n_txt = 65, 32
  expect = (n_img ** 2 + 4 * n_txt ** 2) / (n_img ** 2 + n_txt ** 2)
  assert abs(one / base - expect) < 0.05


def test_summary_reports_params_and_xla_flops():
  c = default.get_config()
  s = summary.summarize(c)
  assert s["params"]["total"] == sum(v for k, v in s["params"].items() if k != "total")
  assert s["forward_flops"] > s["attention_flops"] > 0
  table = summary.format_table(s)
  assert "params total" in table and "forward GFLOPs" in table
