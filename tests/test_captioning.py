"""The describing family: the captioning decoder (cache, greedy, beam search, CapPa), the
prefix-LM mask on every attention backend and in the joint stream, the caption loss, and the
sharded CoCa step (1 vs 8 devices)."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import attention, config_lib, configure, decoder, generate, models, objectives, sharding
from tests.helpers import apply, init, random_batch, tiny_config
from tests.test_train_step import _run as run_steps

BOS, EOS, PAD = 1, 2, 0


def _coca(fusion="dual_encoder", vocab=None, **kw):
  cfg = tiny_config(fusion, **{"loss_weights.caption": 1.0, "loss_weights.mlm": 0.0,
                               "loss_weights.mim": 0.0, "loss_weights.itm": 0.0, **kw})
  if vocab:
    cfg.model.modalities.text.vocab_size = vocab
    del cfg["data"]  # the tokenizer would set the vocabulary back
  return cfg


@functools.lru_cache(maxsize=None)
def _model(fusion="dual_encoder", vocab=None):
  cfg = configure.resolve(_coca(fusion, vocab)) if not vocab else None
  model_cfg = cfg.model if cfg else configure.resolve_model(_coca(fusion, vocab))
  model = models.MultimodalModel(model_cfg)
  batch = random_batch(_coca(fusion), batch_size=3)
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  # Perturb every parameter so nothing sits at a symmetric init (zero biases, unit norms).
  @jax.jit
  def perturb(params):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  params = perturb(params)
  return model, params, batch


def test_cached_decoding_equals_the_teacher_forced_pass():
  model, params, batch = _model()
  memory, mask = apply(model, params, batch, method=model.caption_memory)
  ids = jnp.asarray(batch["text"][:, :-1])
  full, _ = apply(model, params, ids, memory, mask, method=model.caption_logits)
  blk, depth = model.cfg.modality("text").tower or model.cfg.block, model.cfg.decoder_depth
  cache = decoder.init_cache(blk, depth, ids.shape[0], ids.shape[1])
  steps = []
  step = jax.jit(lambda tok, cache, pos: model.apply(params, tok, memory, mask, cache=cache,
                                                     positions=pos, method=model.caption_logits))
  for t in range(ids.shape[1]):
    logits, cache = step(ids[:, t:t + 1], cache, jnp.full((ids.shape[0], 1), t, jnp.int32))
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, rtol=1e-4, atol=1e-4)
  # A two-token chunk into the cache (prompt prefill) is the same as two single steps.
  cache2 = decoder.init_cache(blk, depth, ids.shape[0], ids.shape[1])
  pos = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (ids.shape[0], 2))
  two, _ = apply(model, params, ids[:, :2], memory, mask, cache=cache2, positions=pos,
                       method=model.caption_logits)
  np.testing.assert_allclose(two, full[:, :2], rtol=1e-4, atol=1e-4)
  # The decoder is causal: changing token 5 changes no logit before position 5.
  other = ids.at[:, 5].set((ids[:, 5] + 7) % 200 + 4)
  changed, _ = apply(model, params, other, memory, mask, method=model.caption_logits)
  np.testing.assert_array_equal(changed[:, :5], full[:, :5])
  assert np.abs(np.asarray(changed[:, 5:] - full[:, 5:])).max() > 1e-3


def _sequence_logprob(model, params, batch, seqs):
  """sum_t log p(y_t | y_<t) of decoded sequences [B, L] up to and including the end token."""
  memory, mask = apply(model, params, batch, method=model.caption_memory)
  logits, _ = apply(model, params, jnp.asarray(seqs[:, :-1]), memory, mask,
                          method=model.caption_logits)
  logp = np.asarray(jax.nn.log_softmax(logits))
  tgt = seqs[:, 1:]
  lp = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  ended = np.cumsum(tgt == EOS, axis=1) - (tgt == EOS)
  return np.sum(np.where(ended == 0, lp, 0.0), axis=1)


def test_greedy_with_and_without_cache_and_beam_width_one_agree():
  model, params, batch = _model()
  x = {"image": batch["image"]}
  kw = dict(max_len=10, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  cached = generate.greedy(model, params, x, **kw)
  plain = generate.greedy(model, params, x, use_cache=False, **kw)
  beam1 = generate.beam_search(model, params, x, beam=1, **kw)
  np.testing.assert_array_equal(cached, plain)
  np.testing.assert_array_equal(cached, beam1)
  assert (cached[:, 0] == BOS).all()
  # Greedy is the argmax of each next-token distribution of its own prefix.
  memory, mask = apply(model, params, x, method=model.caption_memory)
  logits, _ = apply(model, params, jnp.asarray(cached[:, :-1]), memory, mask,
                          method=model.caption_logits)
  ended = np.cumsum(cached[:, :-1] == EOS, axis=1) > 0
  want = np.where(ended, PAD, np.argmax(np.asarray(logits), -1))
  np.testing.assert_array_equal(cached[:, 1:], want)
  # A wider beam never finds a worse caption (alpha = 0: the plain sum of log-probs).
  beam4 = generate.beam_search(model, params, x, beam=4, **kw)
  assert (_sequence_logprob(model, params, x, beam4)
          >= _sequence_logprob(model, params, x, cached) - 1e-4).all()


def test_beam_as_wide_as_the_vocabulary_is_exhaustive_search():
  vocab = 7
  model, params, batch = _model(vocab=vocab)
  x = {"image": batch["image"]}
  memory, mask = apply(model, params, x, method=model.caption_memory)
  b = memory.shape[0]
  # Every caption of max_len 3: [BOS, y1, y2]; after the end token only padding (log p 0).
  best = np.full(b, -np.inf)
  best_seq = np.zeros((b, 3), np.int64)
  for y1, y2 in itertools.product(range(vocab), repeat=2):
    if y1 == EOS and y2 != PAD:
      continue
    seq = np.tile([BOS, y1, y2], (b, 1))
    lp = _sequence_logprob(model, params, x, seq)
    better = lp > best
    best = np.where(better, lp, best)
    best_seq[better] = seq[better]
  got = generate.beam_search(model, params, x, max_len=3, beam=vocab, bos_id=BOS, eos_id=EOS,
                             pad_id=PAD)
  np.testing.assert_array_equal(got, best_seq)


def test_parallel_decoding_is_one_pass_over_mask_inputs():
  model, params, batch = _model()
  x = {"image": batch["image"]}
  gen = generate.Generator(model, params, sharding.make_mesh({"data": 1}, jax.devices()[:1]),
                           bos_id=BOS, eos_id=EOS, pad_id=PAD, mask_id=3)
  out = gen(x, max_len=8, parallel=True)
  memory, mask = apply(model, params, x, method=model.caption_memory)
  logits, _ = apply(model, params, jnp.full((3, 7), 3, jnp.int32), memory, mask,
                          method=model.caption_logits)
  arg = np.asarray(jnp.argmax(logits, -1))
  for r in range(3):
    row = list(arg[r])
    stop = row.index(EOS) + 1 if EOS in row else len(row)
    np.testing.assert_array_equal(out[r, 1:1 + stop], row[:stop])
    assert (out[r, 1 + stop:] == PAD).all()


def test_caption_loss_is_next_token_cross_entropy():
  model, params, batch = _model()
  cfg = configure.resolve(_coca())
  outs = apply(model, params, batch, jax.random.key(3), cfg.objectives,
                     method=model.pretraining_outputs)
  logits, targets, weights = outs["caption"]
  ids = batch["text"]
  np.testing.assert_array_equal(targets, ids[:, 1:])
  np.testing.assert_array_equal(weights, (ids[:, 1:] != PAD).astype(np.float32))
  lg = np.asarray(logits, np.float64)
  lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
  ce = lse - np.take_along_axis(lg, ids[:, 1:, None], -1)[..., 0]
  want = (ce * weights).sum() / weights.sum()
  loss, metrics = objectives.caption_loss(logits, targets, weights)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(want), rtol=1e-5)


def test_cappa_rows_read_only_mask_tokens():
  model, params, batch = _model()
  cfg = configure.resolve(_coca(**{"objectives.cappa_fraction": 1.0}))
  logits = apply(model, params, batch, jax.random.key(3), cfg.objectives,
                       method=model.pretraining_outputs)["caption"][0]
  memory, mask = apply(model, params, batch, method=model.caption_memory)
  want, _ = apply(model, params, jnp.full(batch["text"][:, :-1].shape, 3, jnp.int32), memory, mask,
                        method=model.caption_logits)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- prefix-LM mask

def _prefix_mask_numpy(n_other, prefix, length):
  """[B, N, N] bool from the definition: prefix-LM over [other; text]."""
  n = n_other + length
  out = np.zeros((len(prefix), n, n), bool)
  for b, p in enumerate(prefix):
    full = n_other + p  # the bidirectional block
    for i in range(n):
      for j in range(n):
        out[b, i, j] = j < full or (i >= full and j <= i)
  return out


def _prefix_positions(n_other, prefix, length):
  text = decoder.prefix_positions(jnp.asarray(prefix), length)
  return jnp.concatenate([jnp.zeros((len(prefix), n_other), jnp.int32), text], axis=1)


def test_prefix_positions_give_the_prefix_lm_mask():
  prefix, n_other, length = [1, 3, 6], 4, 7
  pos = _prefix_positions(n_other, prefix, length)
  mask = attention.make_mask(None, q_positions=pos, kv_positions=pos)[:, 0]
  np.testing.assert_array_equal(mask, _prefix_mask_numpy(n_other, prefix, length))


def _qkv(b, n, h=2, d=16, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (b, n, h, d), jnp.float32) for k in ks]


@pytest.mark.parametrize("impl", ["xla", "chunked", "pallas_gpu", "cudnn_even"])
def test_prefix_lm_mask_reaches_every_backend(impl, monkeypatch):
  """Forward and gradients against a dense NumPy softmax with the definition's mask (plus key
  padding). cudnn_even: the cuDNN path's even-length padding and dense mask, with XLA's dot
  product standing in for cuDNN (no GPU here). pallas_tpu refuses positions in one line."""
  prefix, n_other, length = [2, 5], 5, 8
  n = n_other + length
  q, k, v = _qkv(2, n)
  pos = _prefix_positions(n_other, prefix, length)
  kv_mask = jnp.ones((2, n), bool).at[1, -2:].set(False)
  dense = jnp.asarray(_prefix_mask_numpy(n_other, prefix, length)) & kv_mask[:, None, :]

  def ref(q, k, v):
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(dense[:, None], s, -1e30)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)

  if impl == "cudnn_even":
    attend = functools.partial(jax.nn.dot_product_attention, implementation="xla")
    fn = lambda q, k, v: attention._even_lengths_attention(  # pylint: disable=protected-access
        attend, q, k, v, kv_mask, None, None, False, pos, pos)
  else:
    if impl == "pallas_gpu":
      monkeypatch.setenv("MMJAX_PALLAS_INTERPRET", "1")
    fn = lambda q, k, v: attention.attention_kernel(
        q, k, v, impl=impl, kv_mask=kv_mask, q_positions=pos, kv_positions=pos, chunk_size=4)[0]
  w = jax.random.normal(jax.random.key(9), q.shape)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
  grad = lambda f: jax.jit(jax.grad(loss(f), (0, 1, 2)))
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-5, atol=1e-5)
  for g, r in zip(grad(fn)(q, k, v), grad(ref)(q, k, v)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
  if impl == "xla":
    with pytest.raises(ValueError, match="pallas_tpu takes static masks only"):
      attention.attention_kernel(q, k, v, impl="pallas_tpu", q_positions=pos, kv_positions=pos)


@pytest.mark.parametrize("fusion", ["early_concat", "hier_multi_to_one"])
def test_prefix_lm_joint_stream_never_sees_the_future(fusion):
  cfg = _coca(fusion, **{"loss_weights.caption": 0.0, "loss_weights.prefix_lm": 1.0,
                         "loss_weights.contrastive": 0.0 if fusion == "early_concat" else 1.0})
  model = models.build_model(configure.resolve(cfg))
  batch = random_batch(cfg, batch_size=2)
  batch["text"][:, 10:] = PAD
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  prefix = jnp.asarray([3, 3])
  pos = {"text": decoder.prefix_positions(prefix, batch["text"].shape[1])}

  def text_out(b):
    enc = apply(model, params, apply(model, params, b, method=model.embed), None, pos,
                      method=lambda m, e, s, p: m.fusion.encode(e, s, p))
    return apply(model, params, enc, pos, method=lambda m, e, p: m.fusion.interact(e, p))

  base = text_out(batch)
  for j, unchanged in ((6, slice(0, 6)), (1, None)):
    other = {k: np.array(v) for k, v in batch.items()}
    other["text"][:, j] = (other["text"][:, j] + 11) % 250 + 5
    out = text_out(other)
    if unchanged is not None:  # a suffix token: nothing before it, and no image token, moves
      np.testing.assert_allclose(out["tokens"]["text"][:, unchanged],
                                 base["tokens"]["text"][:, unchanged], atol=1e-6)
      np.testing.assert_allclose(out["tokens"]["image"], base["tokens"]["image"], atol=1e-6)
    else:  # a prefix token: the image tokens see it
      assert np.abs(np.asarray(out["tokens"]["image"] - base["tokens"]["image"])).max() > 1e-4
  # The objective's targets and weights: next tokens, suffix only.
  o = configure.resolve(cfg).objectives
  logits, targets, weights = apply(model, params, batch, jax.random.key(5), o,
                                         method=model.pretraining_outputs)["prefix_lm"]
  assert logits.shape == (2, 11, cfg.model.modalities.text.vocab_size)
  np.testing.assert_array_equal(targets, batch["text"][:, 1:])
  assert (np.asarray(weights)[:, 9:] == 0).all()  # padding targets carry no weight
  assert np.asarray(weights).sum() > 0


def test_prefix_lm_needs_a_joint_stream():
  with pytest.raises(config_lib.ConfigError, match="prefix_lm.*not available with fusion "
                     "'dual_encoder'"):
    configure.resolve(_coca(**{"loss_weights.prefix_lm": 1.0}))


# ---------------------------------------------------------------------------- sharded step

def _run(config, n_devices):
  losses, state, _ = run_steps(config, n_devices, steps=2)
  return losses, jax.device_get(state.params)


def test_coca_step_is_the_same_on_one_and_eight_devices():
  cfg = _coca(**{"objectives.cappa_fraction": 0.5})
  cfg.mesh.data = 1
  ref_losses, ref_params = _run(cfg, 1)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  losses, params = _run(cfg, 8)
  for ref, got in zip(ref_losses, losses):
    for k in ("loss", "contrastive/loss", "caption/loss", "caption/accuracy", "grad_norm"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
  chex.assert_trees_all_close(params, ref_params, atol=1e-5, rtol=1e-5)
  assert "caption_decoder" in params["params"]


def test_prefix_lm_model_generates_greedily_through_its_joint_stream():
  cfg = _coca("early_concat", **{"loss_weights.caption": 0.0, "loss_weights.prefix_lm": 1.0,
                                 "loss_weights.contrastive": 0.0})
  model = models.build_model(configure.resolve(cfg))
  batch = random_batch(cfg, batch_size=2)
  params = init(model, jax.random.key(0), batch, method=model.init_all)
  x = {"image": batch["image"]}
  ids = generate.greedy(model, params, x, max_len=8, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  logits = apply(model, params, x, jnp.asarray(ids), jnp.ones((2,), jnp.int32),
                       method=model.prefix_lm_logits)
  ended = np.cumsum(ids[:, :-1] == EOS, axis=1) > 0
  want = np.where(ended, PAD, np.argmax(np.asarray(logits[:, :-1]), -1))
  np.testing.assert_array_equal(ids[:, 1:], want)
  with pytest.raises(ValueError, match="decodes greedily only"):
    generate.Generator(model, params, sharding.make_mesh({"data": 1}, jax.devices()[:1]),
                       bos_id=BOS, eos_id=EOS, pad_id=PAD)(x, max_len=8, beam=2)


def test_decode_benchmark_runs_and_checks_cached_equals_uncached(capsys):
  from mmjax.bench import decode  # pylint: disable=import-outside-toplevel
  assert decode.main(["--batch=2", "--max_len=6", "--repeats=1", "--beams=1,2"]) == 0
  out = capsys.readouterr().out
  assert "cached and uncached greedy captions identical: True" in out
  assert "| beam2/cache |" in out and "tokens_per_s" in out
