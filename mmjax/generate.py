"""Caption generation: jitted greedy and beam-search decoding with a key/value cache.

  greedy(...)       y_t = argmax_v log p(v | y_<t, memory), t = 1..max_len-1, from y_0 = [CLS];
                    after the end token every position is padding.
  beam_search(...)  keeps the `beam` best partial captions by sum_t log p; a finished caption
                    (end token emitted) keeps its score and is extended by padding; the result
                    is the best by score / lp(length), lp = ((5 + length) / 6)^alpha (GNMT;
                    alpha = 0: the plain sum). beam=1 is greedy (tested).
  parallel(...)     CapPa's parallel decoding: one pass with every input a [MASK].
  A prefix-LM model (loss_weights.prefix_lm, no decoder) decodes greedily through its joint
  stream with [CLS] as the text prefix, recomputing the stream each step (no cache).

Everything runs under one jit over the model's mesh: the memory (the caption source's tower
output) is computed once, the decoder reads one new token per step from its cache
(`use_cache=False` recomputes the whole prefix each step, for comparison). Batches are sharded
over the batch axes like the train step.

CLI: `python generate.py --workdir=DIR` (or `python -m mmjax.generate`) captions the config's
test split (beside the reference captions), or `--images=FOLDER` every image file in a folder;
`--beam`, `--max_len`, `--num_examples`, `--out=FILE.jsonl`, and `--config.KEY=VALUE` as in
eval.py.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Dict, List

from mmjax import platforms

if __name__ == "__main__":
  platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import decoder as decoder_lib  # noqa: E402
from mmjax import restore, sharding, tokenizers  # noqa: E402


def _decoder_cfg(model):
  cfg = model.cfg
  t = cfg.modality(cfg.caption_text)
  return t.tower or cfg.block, cfg.decoder_depth


def _check(model):
  heads = model.cfg.objective_heads
  if model.cfg.caption_text == "" or ("caption" not in heads and "prefix_lm" not in heads):
    raise ValueError("this model has neither a captioning decoder nor a prefix-LM head (train "
                     "it with loss_weights.caption > 0 or loss_weights.prefix_lm > 0); nothing "
                     "to generate with")


def _has_decoder(model) -> bool:
  return "caption" in model.cfg.objective_heads


def _append_argmax(ids, done, logp, t, pad_id: int, eos_id: int):
  """Greedy step: ids[:, t+1] = argmax logp (padding once a row has ended); -> (ids, done)."""
  nxt = jnp.where(done, pad_id, jnp.argmax(logp, axis=-1).astype(jnp.int32))
  ids = jax.lax.dynamic_update_slice_in_dim(ids, nxt[:, None], t + 1, axis=1)
  return ids, done | (nxt == eos_id)


def _greedy_prefix_lm(model, params, batch, *, max_len: int, bos_id: int, eos_id: int,
                      pad_id: int):
  b = next(iter(batch.values())).shape[0]
  ids = jnp.full((b, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)
  prefix = jnp.ones((b,), jnp.int32)

  def body(t, carry):
    ids, done = carry
    logits = model.apply(params, batch, ids, prefix, method=model.prefix_lm_logits)
    logp = jnp.take(logits, t, axis=1)
    return _append_argmax(ids, done, logp, t, pad_id, eos_id)
  return jax.lax.fori_loop(0, max_len - 1, body, (ids, jnp.zeros((b,), bool)))[0]


def _step_fn(model, params, memory, mask):
  def step(ids, cache, t):
    """ids [N, 1] at position t -> (log-probs [N, V], cache')."""
    pos = jnp.full(ids.shape, t, jnp.int32)
    logits, cache = model.apply(params, ids, memory, mask, cache=cache, positions=pos,
                                method=model.caption_logits)
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), cache
  return step


def _full_fn(model, params, memory, mask):
  def full(ids, t):
    """ids [N, L] (valid through t) -> log-probs [N, V] at position t, no cache."""
    logits, _ = model.apply(params, ids, memory, mask, method=model.caption_logits)
    return jax.nn.log_softmax(jnp.take(logits, t, axis=1).astype(jnp.float32))
  return full


def _greedy(model, params, batch, *, max_len: int, bos_id: int, eos_id: int, pad_id: int,
            use_cache: bool = True):
  memory, mask = model.apply(params, batch, method=model.caption_memory)
  b = memory.shape[0]
  ids = jnp.full((b, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)
  done = jnp.zeros((b,), bool)
  if use_cache:
    blk, depth = _decoder_cfg(model)
    step = _step_fn(model, params, memory, mask)

    def body(t, carry):
      ids, cache, done = carry
      logp, cache = step(jax.lax.dynamic_slice_in_dim(ids, t, 1, axis=1), cache, t)
      ids, done = _append_argmax(ids, done, logp, t, pad_id, eos_id)
      return ids, cache, done
    carry = (ids, decoder_lib.init_cache(blk, depth, b, max_len), done)
  else:
    full = _full_fn(model, params, memory, mask)

    def body(t, carry):
      ids, done = carry
      logp = full(ids, t)
      return _append_argmax(ids, done, logp, t, pad_id, eos_id)
    carry = (ids, done)
  return jax.lax.fori_loop(0, max_len - 1, body, carry)[0]


def _beam(model, params, batch, *, max_len: int, beam: int, bos_id: int, eos_id: int,
          pad_id: int, alpha: float = 0.0):
  memory, mask = model.apply(params, batch, method=model.caption_memory)
  b, k = memory.shape[0], beam
  rep = lambda x: jnp.repeat(x, k, axis=0)  # [B, ...] -> [B*K, ...], beams of a row adjacent
  step = _step_fn(model, params, rep(memory), rep(mask))
  blk, depth = _decoder_cfg(model)
  seqs = jnp.full((b, k, max_len), pad_id, jnp.int32).at[:, :, 0].set(bos_id)
  scores = jnp.full((b, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0)  # one live beam at first
  done = jnp.zeros((b, k), bool)
  lengths = jnp.ones((b, k), jnp.int32)

  def body(t, carry):
    seqs, scores, done, lengths, cache = carry
    logp, cache = step(seqs[:, :, t].reshape(b * k, 1), cache, t)
    v = logp.shape[-1]
    logp = logp.reshape(b, k, v)
    stay = jnp.full((v,), -jnp.inf, jnp.float32).at[pad_id].set(0.0)  # finished: pad, free
    logp = jnp.where(done[:, :, None], stay[None, None], logp)
    cand = (scores[:, :, None] + logp).reshape(b, k * v)
    scores, idx = jax.lax.top_k(cand, k)
    src, tok = idx // v, (idx % v).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, src.reshape((b, k) + (1,) * (x.ndim - 2)), axis=1)
    seqs, done, lengths = take(seqs), take(done), take(lengths)
    seqs = jax.lax.dynamic_update_slice_in_dim(seqs, tok[:, :, None], t + 1, axis=2)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | (tok == eos_id)
    flat = (jnp.arange(b)[:, None] * k + src).reshape(-1)
    cache = tuple((kc[flat], vc[flat], i) for kc, vc, i in cache)
    return seqs, scores, done, lengths, cache

  carry = (seqs, scores, done, lengths, decoder_lib.init_cache(blk, depth, b * k, max_len))
  seqs, scores, done, lengths, _ = jax.lax.fori_loop(0, max_len - 1, body, carry)
  norm = scores / (((5.0 + lengths) / 6.0) ** alpha) if alpha else scores
  best = jnp.argmax(norm, axis=1)
  return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]


def _parallel(model, params, batch, *, max_len: int, bos_id: int, eos_id: int, pad_id: int,
              mask_id: int):
  memory, mask = model.apply(params, batch, method=model.caption_memory)
  b = memory.shape[0]
  inputs = jnp.full((b, max_len - 1), mask_id, jnp.int32)
  logits, _ = model.apply(params, inputs, memory, mask, method=model.caption_logits)
  out = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  ended = jnp.cumsum((out == eos_id).astype(jnp.int32), axis=1)
  out = jnp.where((ended - (out == eos_id)) > 0, pad_id, out)  # padding after the first end
  return jnp.concatenate([jnp.full((b, 1), bos_id, jnp.int32), out], axis=1)


class Generator:
  """Jitted decoding for one model on one mesh. ids come back as numpy [B, max_len]."""

  def __init__(self, model, params, mesh, *, bos_id: int, eos_id: int, pad_id: int,
               mask_id: int = -1):
    _check(model)
    self.model, self.params, self.mesh = model, params, mesh
    self.ids = dict(bos_id=int(bos_id), eos_id=int(eos_id), pad_id=int(pad_id))
    self.mask_id = int(mask_id)
    self._fns: Dict[Any, Any] = {}

  def _fn(self, key, make):
    if key not in self._fns:
      self._fns[key] = jax.jit(make)
    return self._fns[key]

  def __call__(self, batch, *, max_len: int, beam: int = 1, use_cache: bool = True,
               alpha: float = 0.0, parallel: bool = False) -> np.ndarray:
    model = self.model
    src = model.cfg.caption_source
    batch = {k: v for k, v in batch.items() if k in tokenizers.input_keys(src)}
    if not _has_decoder(model):
      if beam > 1 or parallel:
        raise ValueError("a prefix-LM model decodes greedily only; use beam=1 (eval."
                         "caption_beam=1), or train a decoder (loss_weights.caption)")
      fn = self._fn(("prefix_lm", max_len), functools.partial(
          _greedy_prefix_lm, model, max_len=max_len, **self.ids))
    elif parallel:
      fn = self._fn(("parallel", max_len), functools.partial(
          _parallel, model, max_len=max_len, mask_id=self.mask_id, **self.ids))
    elif beam > 1:
      fn = self._fn(("beam", max_len, beam, alpha), functools.partial(
          _beam, model, max_len=max_len, beam=beam, alpha=alpha, **self.ids))
    else:
      fn = self._fn(("greedy", max_len, use_cache), functools.partial(
          _greedy, model, max_len=max_len, use_cache=use_cache, **self.ids))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      return restore.to_host(fn(self.params, batch))  # every process gets every caption


def greedy(model, params, batch, *, max_len: int, bos_id: int, eos_id: int, pad_id: int,
           use_cache: bool = True) -> np.ndarray:
  """Greedy captions [B, max_len] (module docstring); a one-off jit of `_greedy`."""
  _check(model)
  if not _has_decoder(model):
    return np.asarray(jax.jit(functools.partial(
        _greedy_prefix_lm, model, max_len=max_len, bos_id=bos_id, eos_id=eos_id,
        pad_id=pad_id))(params, batch))
  return np.asarray(jax.jit(functools.partial(
      _greedy, model, max_len=max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
      use_cache=use_cache))(params, batch))


def beam_search(model, params, batch, *, max_len: int, beam: int, bos_id: int, eos_id: int,
                pad_id: int, alpha: float = 0.0) -> np.ndarray:
  """Beam-search captions [B, max_len] (module docstring)."""
  _check(model)
  return np.asarray(jax.jit(functools.partial(
      _beam, model, max_len=max_len, beam=beam, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
      alpha=alpha))(params, batch))


def decode_texts(tokenizer, ids) -> List[str]:
  """Token ids [B, L] -> caption strings (special tokens and padding dropped)."""
  return [tokenizer.decode(row) for row in np.asarray(ids)]


def for_config(config, model, params, mesh) -> Generator:
  """A Generator with the ids of the config's tokenizer (data.tokenizer)."""
  from mmjax.data import text as text_lib  # pylint: disable=import-outside-toplevel
  tok = text_lib.from_config(config.data)
  if tok.cls_id is None or tok.sep_id is None:
    raise ValueError(f"captioning needs start and end tokens; data.tokenizer="
                     f"{config.data.tokenizer} has cls={tok.cls_id}, sep={tok.sep_id} "
                     "(data.tokenizer_specials)")
  return Generator(model, params, mesh, bos_id=tok.cls_id, eos_id=tok.sep_id,
                   pad_id=tok.pad_id, mask_id=-1 if tok.mask_id is None else tok.mask_id)


# ------------------------------------------------------------------------------ CLI

def _folder_images(config, folder: str, limit: int):
  """Every image file in `folder` (sorted), preprocessed as the model's training data was."""
  from mmjax.data import decode  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--images={folder} is not a folder; give a folder of image files")
  exts = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(exts))[:limit or None]
  if not files:
    raise ValueError(f"--images={folder} has no image files ({', '.join(exts)})")
  stats = restore.trained_on_builtin(config)
  images = [decode.model_image(os.path.join(folder, f), config.data, stats, f"({f})")
            for f in files]
  src = config.model.caption_source
  if decode.max_patches(config.data):  # native aspect: patch rows and their grids
    return files, {src: np.stack([r for r, _ in images]),
                   f"{src}_patch_grid": np.stack([g for _, g in images])}
  return files, {src: np.stack(images)}


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  from mmjax import cli  # pylint: disable=import-outside-toplevel
  from mmjax.data import text as text_lib  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--checkpoint", default=None)
  p.add_argument("--images", default="", help="a folder of images to caption")
  p.add_argument("--num_examples", type=int, default=16)
  p.add_argument("--beam", type=int, default=1)
  p.add_argument("--alpha", type=float, default=0.0)
  p.add_argument("--max_len", type=int, default=0, help="0: data.text_len")
  p.add_argument("--out", default="", help="also write the captions as JSONL here")
  rest, overrides = cli.split_overrides(list(sys.argv[1:] if argv is None else argv))
  args = p.parse_args(rest)
  if args.beam < 1:
    raise ValueError(f"--beam={args.beam} must be >= 1")
  config, model, params, mesh, step = restore.restore(args.workdir, args.checkpoint, overrides)
  gen = for_config(config, model, params, mesh)
  tok = text_lib.from_config(config.data)
  max_len = args.max_len or config.data.text_len
  src = model.cfg.caption_source
  if args.images:
    if config.model.modality(src).kind != "image":
      raise ValueError(f"--images needs a model that captions images; this one captions {src}")
    names, inputs = _folder_images(config, args.images, args.num_examples)
    rows = [{"file": n} for n in names]
    batches = [inputs]
  else:
    batches = restore.eval_batches(config, config.eval.batch_size, args.num_examples, mesh.size)
    rows = [{"index": int(i), "reference": r} for b in batches
            for i, r in zip(b["index"], decode_texts(tok, b[model.cfg.caption_text]))]
  n_dev = mesh.size
  captions = []
  for b in batches:
    n = len(b[src])
    pad = (-n) % n_dev  # a folder of any size: pad to the device count, drop after
    put = {}
    for k in tokenizers.input_keys(src):
      if k in b:
        x = np.asarray(b[k])
        xb = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        put[k] = jax.make_array_from_callback(xb.shape, sharding.batch_sharding(mesh),
                                              lambda idx, a=xb: a[idx])
    ids = gen(put, max_len=max_len, beam=args.beam, alpha=args.alpha)
    captions += decode_texts(tok, ids[:n])
  for r, c in zip(rows, captions):
    r["caption"] = c
    print(json.dumps(r), flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  print(f"captioned {len(rows)} inputs from step {step}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  from mmjax import cli as _cli  # pylint: disable=ungrouped-imports
  sys.exit(_cli.report_user_errors(main)())
