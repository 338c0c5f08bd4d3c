"""Text packing (mmjax.packing): the round trip, the text tower's per-example outputs, the MLM
loss and its gradient equal to the unpacked ones, a packed train step, the config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config_lib, configure, models, objectives, packing, sharding, train_lib
from mmjax.tokenizers import TextEmbedder
from tests.helpers import apply, apply_overrides, random_batch, tiny_config


def _ids(seed=0, b=16, length=12, lo=0):
  """Framed-like rows: random tokens in a prefix of random length (0..L), pad 0 after."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(5, 261, size=(b, length)).astype(np.int32)
  lens = rng.randint(lo, length + 1, size=b)
  lens[:2] = (0, length)  # an empty and a full example
  ids[np.arange(length)[None] >= lens[:, None]] = 0
  return ids, lens


# ------------------------------------------------------------------------------ host side

def test_pack_round_trip_and_layout():
  ids, lens = _ids()
  b, length = ids.shape
  p = packing.pack(ids, ids != 0)
  np.testing.assert_array_equal(packing.unpack(p), ids)
  np.testing.assert_array_equal(p.lengths, lens)
  assert p.ids.shape[1] == length and len(p.ids) < b  # fewer rows, none longer than L
  assert (p.segment_ids > 0).sum(axis=1).max() <= length
  # The flat index reproduces the packed ids, and each example lies whole in one row.
  np.testing.assert_array_equal(np.where(p.index >= 0, ids.reshape(-1)[p.index], 0), p.ids)
  for e in range(b):
    where = np.argwhere(p.index // length == e) if lens[e] else np.zeros((0, 2), int)
    assert len(where) == lens[e]
    if not lens[e]:
      assert p.example_row[e] == -1
      continue
    rows, cols = where[:, 0], where[:, 1]
    assert (rows == p.example_row[e]).all()
    np.testing.assert_array_equal(cols, p.example_start[e] + np.arange(lens[e]))
    np.testing.assert_array_equal(p.positions[rows, cols], np.arange(lens[e]))
    assert (p.segment_ids[rows, cols] == p.example_segment[e]).all()
  # Segment ids are 1..k per row, one per example placed there; pads are 0.
  for r in range(len(p.ids)):
    segs = p.segment_ids[r][p.segment_ids[r] > 0]
    k = int((p.example_row == r).sum())
    assert sorted(set(segs.tolist())) == list(range(1, k + 1))
    assert (p.index[r][p.segment_ids[r] == 0] == -1).all()


def test_pack_rows_fixed_and_overflow():
  ids, _ = _ids(seed=1)
  need = packing.pack(ids, ids != 0).ids.shape[0]
  p = packing.pack(ids, ids != 0, num_rows=need + 3)
  assert p.ids.shape[0] == need + 3 and (p.segment_ids[need:] == 0).all()
  np.testing.assert_array_equal(packing.unpack(p), ids)
  with pytest.raises(ValueError, match="needs .* packed rows"):
    packing.pack(ids, ids != 0, num_rows=need - 1)
  before, after, rows_b, rows_a = packing.efficiency(ids != 0)
  assert rows_a == need and after == pytest.approx(before * rows_b / rows_a)


def test_inner_invalid_tokens_and_eos_mask_match_the_model():
  # key_mask='eos': everything up to the first eos (2) counts, pads may be real tokens (CLIP).
  ids = np.array([[1, 7, 8, 2, 2, 2], [1, 9, 2, 0, 0, 0], [1, 2, 5, 5, 5, 5]], np.int32)
  ref = TextEmbedder(width=8, key_mask="eos", eos_id=2).token_mask(jnp.asarray(ids))
  got = packing.host_token_mask(ids, "eos", 0, 2)
  np.testing.assert_array_equal(got, np.asarray(ref))
  np.testing.assert_array_equal(packing.span_lengths(got), [4, 3, 2])
  # An invalid token inside the span is carried (and stays invalid on the device side).
  valid = np.array([[True, False, True, False]])
  p = packing.pack(np.array([[5, 6, 7, 0]]), valid)
  assert p.lengths[0] == 3
  np.testing.assert_array_equal(
      np.asarray(packing.gather_packed(jnp.asarray(valid), jnp.asarray(p.index), False)),
      [[True, False, True, False]])


def test_gather_scatter_are_inverse():
  ids, _ = _ids(seed=2)
  p = packing.pack(ids, ids != 0)
  x = jnp.asarray(np.random.RandomState(0).randn(*ids.shape, 3), jnp.float32)
  back = packing.scatter_unpacked(packing.gather_packed(x, jnp.asarray(p.index)),
                                  jnp.asarray(p.index), ids.shape[0])
  span = (np.arange(ids.shape[1])[None] < p.lengths[:, None])[..., None]
  np.testing.assert_array_equal(np.asarray(back), np.where(span, np.asarray(x), 0))
  seg, pos = packing.index_segments(jnp.asarray(p.index), ids.shape[1])
  np.testing.assert_array_equal(np.asarray(pos), p.positions)
  # Device segment ids (example + 1) partition the slots exactly like the host's 1..k.
  same_dev = np.asarray(seg)[:, :, None] == np.asarray(seg)[:, None, :]
  same_host = p.segment_ids[:, :, None] == p.segment_ids[:, None, :]
  np.testing.assert_array_equal(same_dev, same_host)


# ------------------------------------------------------------------------------ the model

def _dual(impl="xla", causal=False, **kw):
  c = tiny_config("dual_encoder", **kw)
  c.attention.impl = impl
  c.attention.chunk_size = 4
  c.objectives.pack_text = True
  if causal:
    c.model.modalities.text.update({"causal": True})
  return c


_PARAMS = {}


def _setup(config, seed=0):
  """Model, parameters (initialised once: impl, causal and loss weights do not change them)
  and a batch."""
  model = models.build_model(config)
  batch = random_batch(config, seed=seed)
  if "p" not in _PARAMS:
    _PARAMS["p"] = jax.jit(lambda r: model.init(r, batch, method=model.init_all))(
        jax.random.key(0))
  return model, _PARAMS["p"], batch


def _tower(model, m, ids):
  emb = model.embedders[m]
  tokens, mask = emb(ids)
  return model.fusion.encode({m: (tokens, mask)})[m][0]


def _tower_packed(model, m, ids, index, segments=True):
  emb = model.embedders[m]
  seg, pos = packing.index_segments(index, ids.shape[1])
  tokens, _ = emb(packing.gather_packed(ids, index, emb.pad_id), positions=pos)
  mask = packing.gather_packed(emb.token_mask(ids), index, False)
  return model.encode_packed(m, tokens, mask, seg if segments else None)


@pytest.mark.parametrize("impl,causal", [("xla", False), ("chunked", False), ("xla", True)])
def test_text_tower_packed_equals_unpacked(impl, causal):
  config = _dual(impl, causal)
  model, params, batch = _setup(config)
  ids = jnp.asarray(batch["text"])
  index = jnp.asarray(packing.pack(batch["text"], batch["text"] != 0).index)
  ref = apply(model, params, "text", ids, method=_tower)
  got = apply(model, params, "text", ids, index, method=_tower_packed)
  assert got.shape[0] < ref.shape[0]  # really packed
  back = packing.scatter_unpacked(got, index, ids.shape[0])
  valid = np.asarray(batch["text"] != 0)
  np.testing.assert_allclose(np.asarray(back)[valid], np.asarray(ref)[valid], atol=2e-5,
                             rtol=1e-5)
  # Control: without segment ids, examples sharing a row leak into each other.
  leak = apply(model, params, "text", ids, index, False, method=_tower_packed)
  leak = packing.scatter_unpacked(leak, index, ids.shape[0])
  assert np.abs(np.asarray(leak)[valid] - np.asarray(ref)[valid]).max() > 1e-3


def _with_index(config, batch, num_rows=None):
  cfg = configure.resolve(config)
  rows = num_rows or config_lib.pack_rows(cfg)
  return packing.add_pack_index(batch, cfg.model, rows)


def test_packed_losses_and_gradients_equal_unpacked():
  """MLM packed beside MIM on the unpacked image stream: every loss and every
  parameter's gradient equal the unpacked batch's; so does the jitted train step's first step
  (host transform from the config, pack_rows, sharding). Equal gradients of the MLM head's
  bias, (1/N) sum_masked (softmax - onehot(target)), pin the same masked tokens and count."""
  config = _dual(**{"loss_weights.contrastive": 0.0})  # (contrastive: the CLI check, README)
  model, params, batch = _setup(config)
  obj = configure.resolve(config).objectives
  need = packing.pack(batch["text"], batch["text"] != 0).ids.shape[0]
  packed_batch = _with_index(config, batch, need)  # the fewest rows: the most sharing
  assert packed_batch["text_pack_index"].shape[0] < batch["text"].shape[0]
  rng = jax.random.fold_in(jax.random.key(config.seed), 0)  # the train step's at step 0

  def loss(p, b):
    return objectives.pretraining_loss(model, p, b, rng, obj)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, m_ref), g_ref = grad(params, batch)
  (_, m_got), g_got = grad(params, packed_batch)
  assert {"mlm/loss", "mim/loss"} <= set(m_ref)
  assert float(m_ref["mlm/loss"]) > 0
  for k in m_ref:
    np.testing.assert_allclose(float(m_got[k]), float(m_ref[k]), rtol=1e-5, atol=1e-6,
                               err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-6), g_got, g_ref)

  config.objectives.pack_rows = need
  config.mesh.data = 1
  tx, schedule = train_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state, shard = train_lib.create_state(config, model, tx, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               {"params": jax.device_get(nn.meta.unbox(params["params"]))})
  step = train_lib.make_train_step(config, model, tx, schedule, mesh, shard)
  _, metrics = step(state, jax.device_put(_with_index(config, batch),
                                          sharding.batch_sharding(mesh)))
  for k in m_ref:
    np.testing.assert_allclose(float(metrics[k]), float(m_ref[k]), rtol=1e-5, atol=1e-6,
                               err_msg=k)
  np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(g_ref)),
                             rtol=1e-4)


# ------------------------------------------------------------------------------ config

@pytest.mark.parametrize("fusion,overrides,match", [
    ("early_concat", {}, "dual_encoder"),
    ("hier_multi_to_one", {}, "dual_encoder"),
    ("dual_encoder", {"loss_weights.mlm": 0.0}, "loss_weights.mlm"),
    ("dual_encoder", {"grad_accum_steps": 2}, "grad_accum_steps=1"),
    ("dual_encoder", {"objectives.pack_rows": 9}, "pack_rows=9"),
    ("dual_encoder", {"model.modalities.text.key_mask": "none"}, "key_mask"),
    ("dual_encoder", {"model.modalities.text.add_cls": True}, "add_cls=False"),
])
def test_config_errors(fusion, overrides, match):
  c = apply_overrides(tiny_config(fusion), dict(overrides, **{"objectives.pack_text": True}))
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    configure.resolve(c)
  assert "\n" not in str(e.value)
  c.objectives.pack_text = False  # the same config without packing is fine
  if fusion == "dual_encoder" and "loss_weights.mlm" not in overrides:
    configure.resolve(c)


def test_config_ok_and_mesh_check():
  c = tiny_config("dual_encoder")
  c.objectives.pack_text, c.objectives.pack_rows = True, 6
  cfg = configure.resolve(c)
  assert cfg.objectives.pack_text and config_lib.pack_rows(cfg) == 6
  c.mesh.data = 4
  with pytest.raises(config_lib.ConfigError, match="pack_rows=6 is not divisible"):
    configure.check_mesh(configure.resolve(c), 4)
  c.objectives.pack_rows = 0
  assert configure.check_mesh(configure.resolve(c), 4)[0] == 4
  with pytest.raises(config_lib.ConfigError, match="unknown config key objectives.pack"):
    c.objectives.pack = True
    configure.resolve(c)
