"""Zero-shot classification with prompt templates (CLIP): top-1 accuracy over the classes.

Towers (dual encoder, unimodal towers): class embedding = normalized mean over templates of
the normalized prompt embeddings; prediction = argmax_c <z_x, z_c>. Fusion without towers:
prediction = argmax_c log P(match | x, prompt_c) from the ITM head (first template).
Correct means the true class scores strictly highest (ties are misses).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mmjax.data import builtin, prompts as prompts_lib, sources, text as text_lib
from mmjax.evaluators import base
from mmjax.evaluators.common import concat, inputs, pad_rows, strictly_best, take


def _chunks(ev, ids: np.ndarray, chunk: int):
  """[n, L] ids in row chunks of `chunk` (a multiple of the devices), the last one padded,
  so every chunk has one shape (one compile)."""
  n_dev = ev.mesh.size
  chunk = max(n_dev, min(chunk, len(ids) + (-len(ids)) % n_dev) // n_dev * n_dev)
  return [pad_rows(ids[i:i + chunk], chunk) for i in range(0, len(ids), chunk)]


def classifier(ev, prompts: np.ndarray, text: Optional[str] = None) -> np.ndarray:
  """[C, E] class embeddings of prompt ids [C, T, L] (class x template x length) in the text
  modality `text` (default: the second): z_c = normalize(mean_t normalize(f(prompt_ct))).
  Prompts are encoded eval.batch_size at a time (C x T can be large: 1000 classes x 80)."""
  c, t, l = prompts.shape
  text = text or ev.b
  z = np.concatenate([ev.embeddings(ev.encode({text: ids}))[text]
                      for ids in _chunks(ev, prompts.reshape(c * t, l), ev.config.eval.batch_size)])
  z = z[:c * t].reshape(c, t, -1).mean(1)
  return z / np.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)


def evaluate(ev, batches, prompts: np.ndarray) -> dict:
  """prompts: int ids [C, T, L] (class x template x length). batches yield 'label'."""
  c = prompts.shape[0]
  chunk = ev.config.eval.batch_size
  correct = total = 0
  if ev.has_towers:
    z = classifier(ev, prompts)
    for batch in batches:
      za = ev.embeddings(ev.encode(inputs(batch, ev.a)))[ev.a]
      correct += int(np.sum(strictly_best(za @ z.T, batch["label"])))
      total += len(za)
    method = "embedding similarity"
  else:
    enc_prompts = concat(*(ev.encode({ev.b: ids}) for ids in _chunks(ev, prompts[:, 0], chunk)))
    for batch in batches:
      enc_x = ev.encode(inputs(batch, ev.a))
      n = len(batch["label"])
      scores = np.zeros((n, c))
      for k in range(c):
        pair = {ev.a: enc_x[ev.a], ev.b: take(enc_prompts[ev.b], np.full((n,), k))}
        scores[:, k] = ev.itm_scores(pair)
      correct += int(np.sum(strictly_best(scores, batch["label"])))
      total += n
    method = "ITM head"
  return {"zero_shot/accuracy": correct / max(total, 1), "zero_shot/chance": 1.0 / c,
          "zero_shot/num_classes": c, "zero_shot/examples": total,
          "zero_shot/method": method}


NAMES_HINT = ("set data.class_names (a list, a text file with one name per line, or "
              "'cat,dog,...'; on eval.py: --config.data.class_names=...)")


def zero_shot_classes(data_cfg) -> Tuple[Optional[Tuple[str, ...]], Tuple[str, ...], str]:
  """(names, templates, why): data.class_names, else the source's own names (built-in task,
  TFDS ClassLabel); data.prompt_templates, else the built-in task's, else openai_imagenet.
  names is None when there are none; `why` then says which key to set."""
  names = prompts_lib.parse_class_names(data_cfg.class_names)
  if names is None:
    names = sources.source_class_names(data_cfg)
  templates = prompts_lib.parse_templates(data_cfg.prompt_templates)
  if templates is None:
    templates = (tuple(builtin.prompt_templates(data_cfg.task)) if data_cfg.source == "builtin"
                 else prompts_lib.TEMPLATE_SETS[prompts_lib.DEFAULT_TEMPLATES])
  why = ""
  if names is None:
    what = (f"the TFDS label feature {data_cfg.feature_keys.get('label', 'label')!r} is not a "
            "ClassLabel with names" if data_cfg.source == "tfds" else
            "the shards' folder has no classes.txt" if data_cfg.source in ("wds", "array_record")
            else "a JSONL manifest has no class names" if data_cfg.source == "jsonl"
            else f"a {data_cfg.source} source has no class names")
    why = f"{what}; {NAMES_HINT}"
  return names, templates, why


def class_prompts(config, names=None, templates=None) -> np.ndarray:
  """[C, T, L] token ids (config.data.tokenizer, length data.text_len) of every class name in
  every template; names / templates default to zero_shot_classes(config.data)."""
  if names is None or templates is None:
    default_names, default_templates, why = zero_shot_classes(config.data)
    names = default_names if names is None else names
    templates = default_templates if templates is None else templates
    if names is None:
      raise ValueError(f"no class names for zero-shot: {why}")
  tok = text_lib.from_config(config.data)
  length = config.data.text_len
  return np.stack([np.stack([tok.encode(p, length) for p in row])
                   for row in prompts_lib.prompts(names, templates)])


def check_labels(batches, num_classes: int, what: str, split: str = "test") -> None:
  """Every label in [0, num_classes), else a one-line ValueError naming the fix."""
  labels = np.concatenate([b["label"] for b in batches])
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{split} label {int(bad[0])} is out of range of the {num_classes} "
                     f"{what}; give one name per label 0..{int(labels.max())} "
                     "(data.class_names) or fix the labels")


@base.register
class ZeroShot(base.Evaluator):
  """Top-1 accuracy over data.class_names (or the source's own) x data.prompt_templates."""
  name = "zero_shot"

  def applies(self, ctx):
    if not ctx.text_second:
      return f"needs a text modality second; the model pairs {ctx.a}/{ctx.b}"
    if not ctx.labelled:
      return "the test split has no labels"
    return zero_shot_classes(ctx.config.data)[2] or None

  def run(self, ctx):
    batches = ctx.test_batches()
    classes, templates, _ = zero_shot_classes(ctx.config.data)
    check_labels(batches, len(classes), "class names")
    ids = ctx.cached("zero_shot/prompts", lambda: class_prompts(ctx.config, classes, templates))
    return evaluate(ctx, batches, ids)
