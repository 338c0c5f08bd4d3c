"""Captioning metrics: corpus BLEU-1..4 and CIDEr-D as coco-caption computes them, exact match.

Pure Python + NumPy. Candidate c_i (one per image i = 1..I) with references r_i1..r_iM_i; every
caption goes through tokenize() first; |s| = its number of tokens, a k-gram = k consecutive tokens.
  tokenize:  lowercase, every character but a letter / digit / apostrophe -> space, split,
             strip apostrophes at the ends of tokens.
  BLEU-N  = BP * (p_1 * ... * p_N)^(1/N)                              (per corpus, N = 1..max_n)
  p_k     = (sum_i sum_g min(#g in c_i, max_j #g in r_ij) + 1e-15) / (sum_i guess_ik + 1e-9)
  guess_ik = max(|c_i| - k + 1, 0), the number of k-grams of c_i; g ranges over k-grams
  BP      = exp(1 - R/C) if C < R else 1;  C = sum_i |c_i|,  R = sum_i |r_i*|
  r_i*    = the reference closest in length to c_i (a tie goes to the shorter one)
  g_m(s)  = vector over m-grams w of (#w in s) * log(I / max(1, df(w)))
  df(w)   = #{i : w occurs in some r_ij}
  sim_m(c, r) = <min(g_m(c), g_m(r)), g_m(r)> / (|g_m(c)| |g_m(r)|)  (0 if a norm is 0; min: "-D")
  CIDEr-D_i = 10 / (n M_i) sum_j exp(-(|c_i| - |r_ij|)^2 / (2 sigma^2)) sum_{m<=n} sim_m(c_i, r_ij)
  CIDEr-D = mean_i CIDEr-D_i                                          (sigma = 6, n = 4)
  exact match = mean_i 1[tokenize(c_i) == tokenize(r_ij) for some j]
BLEU follows coco-caption's Bleu scorer (option 'closest', its 1e-15 / 1e-9 terms, so a corpus
without any matching 4-gram gets a tiny BLEU-4, not 0); CIDEr-D its CiderD (df over the evaluated
corpus's reference sets). coco-caption measures the length in the penalty in bigrams, which changes
nothing: it differs only for an empty caption, whose similarity is 0 anyway.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

_SMALL, _TINY = 1e-9, 1e-15  # coco-caption's BLEU guards (denominator, numerator)
_NOT_WORD = re.compile(r"[^\w\s']|_")


def tokenize(text: str) -> list[str]:
  """COCO-caption normalization done in Python (no Java PTB tokenizer).

  Lowercases, turns every character that is not a letter, digit or apostrophe into a space
  (typographic ' -> '), splits on whitespace and strips apostrophes at the ends of tokens
  (quotes), dropping tokens left empty. Unlike the PTB tokenizer, clitics stay attached
  ("dog's" is one token) and hyphens split words.

  Args:
    text: a caption.

  Returns:
    The list of tokens.
  """
  text = _NOT_WORD.sub(" ", text.lower().replace("\u2019", "'"))
  return [t for t in (t.strip("'") for t in text.split()) if t]


def _ngrams(tokens: list[str], n: int) -> Counter:
  """Counts of every k-gram (a tuple of k tokens) of tokens, k = 1..n."""
  return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1)
                 for i in range(len(tokens) - k + 1))


def _prepare(candidates, references) -> tuple[list[list[str]], list[list[list[str]]]]:
  """Validates the inputs (module doc) and tokenizes them."""
  if isinstance(candidates, str) or isinstance(references, str):
    raise ValueError("candidates and references must be sequences, not a single string")
  if len(candidates) != len(references):
    raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference sets; "
                     "give one list of references per candidate")
  if not candidates:
    raise ValueError("no candidates; give at least one caption to score")
  for i, (c, refs) in enumerate(zip(candidates, references)):
    if not isinstance(c, str):
      raise ValueError(f"candidates[{i}] is a {type(c).__name__}, not a string")
    if isinstance(refs, str):
      raise ValueError(f"references[{i}] is a string; give a list of reference captions")
    if len(refs) == 0:
      raise ValueError(f"references[{i}] is empty; give every candidate at least one reference")
    for j, r in enumerate(refs):
      if not isinstance(r, str):
        raise ValueError(f"references[{i}][{j}] is a {type(r).__name__}, not a string")
  return ([tokenize(c) for c in candidates],
          [[tokenize(r) for r in refs] for refs in references])


def _bleu(cands, refs, max_n: int) -> dict:
  if max_n < 1:
    raise ValueError(f"max_n must be at least 1, got {max_n}")
  correct, guess = [0] * max_n, [0] * max_n
  test_len = ref_len = 0
  for c, rs in zip(cands, refs):
    max_ref = Counter()
    for r in rs:
      max_ref |= _ngrams(r, max_n)  # | keeps the larger count of each n-gram
    for g, count in _ngrams(c, max_n).items():
      correct[len(g) - 1] += min(count, max_ref[g])
    for k in range(max_n):
      guess[k] += max(len(c) - k, 0)
    test_len += len(c)
    ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
  ratio = (test_len + _TINY) / (ref_len + _SMALL)
  bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
  out, prod = {}, 1.0
  for k in range(max_n):
    prod *= (correct[k] + _TINY) / (guess[k] + _SMALL)
    out[f"bleu{k + 1}"] = float(bp * prod ** (1 / (k + 1)))
  return out


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> dict:
  """Corpus BLEU-1..max_n exactly as coco-caption's Bleu scorer computes it (module doc).

  Args:
    candidates: one caption per example.
    references: per example, its reference captions (at least one).
    max_n: the largest n-gram order.

  Returns:
    {'bleu1': ..., ..., f'bleu{max_n}': ...}, floats in [0, 1].

  Raises:
    ValueError: the inputs do not pair up (module doc), or max_n < 1.
  """
  return _bleu(*_prepare(candidates, references), max_n)


def _cider_d(cands, refs, n: int, sigma: float) -> tuple[float, np.ndarray]:
  if n < 1 or not sigma > 0:
    raise ValueError(f"need n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
  ref_counts = [[_ngrams(r, n) for r in rs] for rs in refs]
  df = Counter()
  for counts in ref_counts:
    df.update(set().union(*counts))  # each image counts once per n-gram
  log_images = math.log(len(cands))

  def tfidf(counts):
    """Per order: {n-gram: tf * idf} and its norm."""
    vec = [{} for _ in range(n)]
    for g, tf in counts.items():
      vec[len(g) - 1][g] = tf * (log_images - math.log(max(1.0, df[g])))
    return vec, [math.sqrt(sum(v * v for v in d.values())) for d in vec]

  per = np.zeros(len(cands))
  for i, (c, rs, rcounts) in enumerate(zip(cands, refs, ref_counts)):
    vec_c, norm_c = tfidf(_ngrams(c, n))
    total = 0.0
    for r, counts in zip(rs, rcounts):
      vec_r, norm_r = tfidf(counts)
      penalty = math.exp(-(len(c) - len(r)) ** 2 / (2 * sigma ** 2))
      for k in range(n):
        if norm_c[k] > 0 and norm_r[k] > 0:
          dot = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0)
                    for g, v in vec_c[k].items())
          total += penalty * dot / (norm_c[k] * norm_r[k])
    per[i] = 10.0 * total / (n * len(rs))
  return float(per.mean()), per


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, np.ndarray]:
  """CIDEr-D (Vedantam et al. 2015) as coco-caption's CiderD computes it (module doc).

  The document frequency is taken over the reference sets of this corpus, so a corpus of one
  image scores 0 (every idf is log 1 = 0).

  Args:
    candidates: one caption per example.
    references: per example, its reference captions (at least one).
    n: the largest n-gram order.
    sigma: the width of the Gaussian length penalty.

  Returns:
    (corpus score, per-example scores [I] float64); the corpus score is their mean.

  Raises:
    ValueError: the inputs do not pair up (module doc), or n < 1, or sigma <= 0.
  """
  return _cider_d(*_prepare(candidates, references), n, sigma)


def _exact_match(cands, refs) -> float:
  return float(np.mean([any(c == r for r in rs) for c, rs in zip(cands, refs)]))


def exact_match(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """The fraction of candidates whose tokens equal those of one of its references.

  Args:
    candidates: one caption per example.
    references: per example, its reference captions (at least one).

  Returns:
    A float in [0, 1].

  Raises:
    ValueError: the inputs do not pair up (module doc).
  """
  return _exact_match(*_prepare(candidates, references))


def score_all(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
  """BLEU-1..4, CIDEr-D (n = 4, sigma = 6) and exact match of one corpus, tokenized once.

  Args:
    candidates: one caption per example.
    references: per example, its reference captions (at least one).

  Returns:
    {'bleu1', 'bleu2', 'bleu3', 'bleu4', 'cider', 'exact_match'}: floats.

  Raises:
    ValueError: the inputs do not pair up (module doc).
  """
  cands, refs = _prepare(candidates, references)
  return {**_bleu(cands, refs, 4), "cider": _cider_d(cands, refs, 4, 6.0)[0],
          "exact_match": _exact_match(cands, refs)}
