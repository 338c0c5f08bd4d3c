"""Captioning metrics: BLEU against sacrebleu (an independent implementation), CIDEr-D against a
hand-computed case and its defining properties (clipping, length penalty), exact match,
tokenization and the input errors."""
import math

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from mmjax.evaluators import caption_metrics as cm


# ---------------------------------------------------------------------------------------------
# BLEU

def _sacrebleu(cands, refs, order):
  """sacrebleu's corpus BLEU-order on whitespace tokens, no smoothing (score in 0-100). It needs
  the same number of reference streams for every segment: pad each list with its first
  reference (a repeat changes neither the clipping maxima nor the closest length)."""
  width = max(len(r) for r in refs)
  streams = [[r[j] if j < len(r) else r[0] for r in refs] for j in range(width)]
  metric = BLEU(tokenize="none", smooth_method="none", force=True, max_ngram_order=order)
  return metric.corpus_score(list(cands), streams)


def _has_length_tie(cand, refs):
  """Two references of different lengths equally close to the candidate's length."""
  n = len(cand.split())
  best = min(abs(len(r.split()) - n) for r in refs)
  return len({len(r.split()) for r in refs if abs(len(r.split()) - n) == best}) > 1


def _random_corpus(seed, cand_len, ref_len, vocab, n=40):
  """Random captions over a small vocabulary (so 4-grams match), 1-4 references each, with no
  closest-length tie (the two implementations break ties alike, but the test should not rely on
  it). cand_len, ref_len: (min, max) token counts."""
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(vocab)]

  def sent(lo, hi):
    return " ".join(rng.choice(words, size=int(rng.integers(lo, hi + 1))))

  cands, refs = [], []
  while len(cands) < n:
    c = sent(*cand_len)
    rs = [sent(*ref_len) for _ in range(int(rng.integers(1, 5)))]
    if not _has_length_tie(c, rs):
      cands.append(c)
      refs.append(rs)
  return cands, refs


# (seed, candidate lengths, reference lengths, vocabulary, brevity penalty < 1)
@pytest.mark.parametrize("seed,cand_len,ref_len,vocab,short", [
    (0, (4, 14), (4, 14), 6, None), (1, (10, 16), (4, 10), 6, False),
    (2, (4, 8), (9, 14), 3, True)])
def test_bleu_matches_sacrebleu(seed, cand_len, ref_len, vocab, short):
  cands, refs = _random_corpus(seed, cand_len, ref_len, vocab)
  ours = cm.bleu(cands, refs)
  for k in range(1, 5):
    theirs = _sacrebleu(cands, refs, k)
    assert theirs.score > 1  # every order has matches: no smoothing in play on either side
    np.testing.assert_allclose(ours[f"bleu{k}"], theirs.score / 100, rtol=1e-7)
  if short is not None:  # the brevity penalty is exercised (short) or not (long candidates)
    assert (theirs.bp < 1) == short


def test_bleu_hand_case_and_coco_smoothing():
  # c = "a b c d", r = "a b c e": matches 3/4 unigrams, 2/3 bigrams, 1/2 trigrams, 0/1 4-grams;
  # equal lengths, BP = 1. coco-caption adds 1e-15 above and 1e-9 below, so BLEU-4 is tiny,
  # not 0: (3/4 * 2/3 * 1/2 * 1e-15 / (1 + 1e-9))^(1/4) ~ 1.26e-4.
  out = cm.bleu(["a b c d"], [["a b c e"]])
  assert out.keys() == {"bleu1", "bleu2", "bleu3", "bleu4"}
  np.testing.assert_allclose(out["bleu1"], 3 / 4, rtol=1e-8)
  np.testing.assert_allclose(out["bleu2"], math.sqrt(3 / 4 * 2 / 3), rtol=1e-8)
  np.testing.assert_allclose(out["bleu3"], (3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3), rtol=1e-8)
  np.testing.assert_allclose(out["bleu4"], (1 / 4 * 1e-15 / (1 + 1e-9)) ** (1 / 4), rtol=1e-6)
  assert cm.bleu(["a b c d"], [["a b c d"]])["bleu4"] == pytest.approx(1.0, abs=1e-8)


def test_bleu_clipping_closest_length_and_tie():
  # "the the the the" against "the cat": clipped unigram precision 1/4 (not 4/4).
  assert cm.bleu(["the the the the"], [["the cat"]], max_n=1)["bleu1"] == pytest.approx(0.25)
  # Closest reference length: |c| = 3, references of 2 and 5 tokens -> R = 2 < C = 3, BP = 1,
  # BLEU-1 = 2/3 (matches "a", "b"). The 5-token one would give BP = e^(1-5/3).
  assert cm.bleu(["a b c"], [["a b", "x y z u v"]], 1)["bleu1"] == pytest.approx(2 / 3)
  # A tie (lengths 2 and 4 both 1 away from 3): coco-caption takes the shorter, BP = 1. The
  # longer one would give BP = e^(1-4/3) and BLEU-1 = 2/3 * 0.7165.
  assert cm.bleu(["a b c"], [["x y z w", "a b"]], 1)["bleu1"] == pytest.approx(2 / 3)
  # Short candidate: C = 2, R = 4, BP = e^(1 - 4/2); both unigrams match.
  assert cm.bleu(["a b"], [["a b c d"]], 1)["bleu1"] == pytest.approx(math.exp(-1))


def test_bleu_tokenizes_its_inputs():
  assert cm.bleu(["A Dog, running."], [["a dog running"]]) == cm.bleu(
      ["a dog running"], [["a dog running"]])


# ---------------------------------------------------------------------------------------------
# CIDEr-D

def test_cider_d_hand_computed():
  # Image 1: candidate "a dog dog", references "a dog runs", "a dog".
  # Image 2: candidate "a cat sits", reference "a cat".           I = 2 images, l = log 2.
  # df over the reference sets: "a" in both -> idf log(2/2) = 0; every other n-gram (dog, runs,
  # cat, a dog, dog runs, a dog runs, a cat; and candidate-only ones, df 0 -> max(1, 0) = 1)
  # has idf log(2/1) = l. So l cancels out of every cosine below.
  # Candidate 1, tf-idf: uni {a: 0, dog: 2l}, |.| = 2l; bi {a dog: l, dog dog: l}, |.| = l sqrt2;
  #   tri {a dog dog: l}; no 4-grams.
  # vs "a dog runs" (same length, penalty 1): uni {dog: l, runs: l}, |.| = l sqrt2;
  #   sim_1 = min(2l, l) * l / (2l * l sqrt2) = 1/(2 sqrt2)   (clipped: 2l -> l)
  #   sim_2 = (a dog) l*l / (l sqrt2 * l sqrt2) = 1/2;  sim_3 = 0 (a dog dog != a dog runs)
  # vs "a dog" (length 2, penalty e^(-1/72)): uni {dog: l}, bi {a dog: l}, no trigram:
  #   sim_1 = min(2l, l) * l / (2l * l) = 1/2;  sim_2 = l*l / (l sqrt2 * l) = 1/sqrt2;  sim_3 = 0
  # CIDEr-D_1 = 10 / (4 * 2) * [(1/(2 sqrt2) + 1/2) + e^(-1/72) (1/2 + 1/sqrt2)] = 2.5550134
  # Candidate 2: uni {a: 0, cat: l, sits: l}, bi {a cat: l, cat sits: l}, tri {a cat sits: l}
  # vs "a cat" (penalty e^(-1/72)): uni {cat: l}, bi {a cat: l}:
  #   sim_1 = l*l / (l sqrt2 * l) = 1/sqrt2 = sim_2;  sim_3 = sim_4 = 0
  # CIDEr-D_2 = 10 / (4 * 1) * e^(-1/72) * 2/sqrt2 = 2.5 sqrt2 e^(-1/72) = 3.4867687
  e = math.exp(-1 / 72)
  s1 = 10 / 8 * ((1 / (2 * math.sqrt(2)) + 1 / 2) + e * (1 / 2 + 1 / math.sqrt(2)))
  s2 = 2.5 * math.sqrt(2) * e
  assert (s1, s2) == pytest.approx((2.5550134, 3.4867687), abs=1e-7)  # the numbers above
  corpus, per = cm.cider_d(["a dog dog", "a cat sits"], [["a dog runs", "a dog"], ["a cat"]])
  assert isinstance(per, np.ndarray) and per.shape == (2,)
  np.testing.assert_allclose(per, [s1, s2], rtol=1e-12)
  assert corpus == pytest.approx((s1 + s2) / 2, rel=1e-12)
  assert cm.score_all(["a dog dog", "a cat sits"],
                      [["a dog runs", "a dog"], ["a cat"]])["cider"] == pytest.approx(corpus)


_REFS = [["a man riding a horse on the beach"], ["two cats sleeping on a red sofa"],
         ["a plate of food with broccoli and rice"], ["dog runs"]]
_CANDS = ["a man riding a horse on the beach", "two cats on a sofa",
          "a plate of rice and broccoli", "a dog"]


def test_cider_d_identical_beats_shuffled():
  _, per = cm.cider_d(_CANDS, _REFS)
  # Identical to its only reference: every cosine is 1, no length penalty -> 10.
  assert per[0] == pytest.approx(10.0)
  shuffled = ["beach the on horse a riding man a"] + _CANDS[1:]
  _, per_s = cm.cider_d(shuffled, _REFS)
  assert per_s[0] < per[0] - 1  # same unigrams, the higher orders are lost
  np.testing.assert_allclose(per_s[1:], per[1:])  # the df does not depend on the candidates
  # Another image's reference as the candidate scores lower still.
  _, per_o = cm.cider_d([_REFS[1][0]] + _CANDS[1:], _REFS)
  assert per_o[0] < per_s[0]


def test_cider_d_clips_repeated_words():
  # Reference "dog runs"; candidate "dog sits" vs "dog" repeated 6 times + "sits". Without the
  # clipping min(), the unigram cosine of the repeated one would RISE (6/sqrt(37*2) = 0.70 vs
  # 1/2); with it, it falls to 1/sqrt(37*2). A huge sigma switches the length penalty off.
  plain = "dog sits"
  repeated = "dog dog dog dog dog dog sits"
  for sigma in (1e6, 6.0):
    _, per_p = cm.cider_d(_CANDS[:3] + [plain], _REFS, sigma=sigma)
    _, per_r = cm.cider_d(_CANDS[:3] + [repeated], _REFS, sigma=sigma)
    assert per_r[3] < per_p[3]
  # With the penalty off, only unigrams match (no shared bigram): 10/4 * the cosine.
  _, per_p = cm.cider_d(_CANDS[:3] + [plain], _REFS, sigma=1e6)
  _, per_r = cm.cider_d(_CANDS[:3] + [repeated], _REFS, sigma=1e6)
  assert per_p[3] == pytest.approx(2.5 * 0.5, rel=1e-9)
  assert per_r[3] == pytest.approx(2.5 / math.sqrt(74), rel=1e-9)


def test_cider_d_length_penalty():
  ref = _REFS[0][0]
  padded = ref + " " + ref  # the same n-grams twice (plus the joining bigrams and so on)
  _, per = cm.cider_d([ref] + _CANDS[1:], _REFS)
  _, per_pad = cm.cider_d([padded] + _CANDS[1:], _REFS)
  assert per_pad[0] < per[0]
  # With one reference the penalty is a single factor exp(-(16 - 8)^2 / (2 * 6^2)).
  _, per_free = cm.cider_d([padded] + _CANDS[1:], _REFS, sigma=1e6)
  assert per_pad[0] == pytest.approx(per_free[0] * math.exp(-64 / 72), rel=1e-9)
  _, per_wide = cm.cider_d([padded] + _CANDS[1:], _REFS, sigma=12.0)
  assert per_pad[0] < per_wide[0] < per_free[0]


def test_cider_d_single_image_corpus_is_zero():
  # df over a corpus of one image: every idf is log(1/1) = 0.
  corpus, per = cm.cider_d(["a dog"], [["a dog"]])
  assert corpus == 0.0 and per.tolist() == [0.0]


# ---------------------------------------------------------------------------------------------
# Exact match, tokenize, score_all, errors

def test_exact_match():
  cands = ["A dog.", "a cat on a mat", "two birds", "the sky"]
  refs = [["a dog"], ["a mat", "A cat, on a mat!"], ["two  birds flying"], ["sky"]]
  assert cm.exact_match(cands, refs) == pytest.approx(0.5)
  assert cm.exact_match(["x"], [["y", "x"]]) == 1.0
  assert cm.exact_match(["x"], [["x y"]]) == 0.0


def test_tokenize():
  assert cm.tokenize("A Man\u2019s HAT, on-the table!! 'quoted' 2 Caf\u00e9_x  ") == [
      "a", "man's", "hat", "on", "the", "table", "quoted", "2", "caf\u00e9", "x"]
  assert cm.tokenize("") == [] and cm.tokenize(" ... ' ") == []
  assert cm.tokenize("Two dogs.") == cm.tokenize("two   dogs")


def test_score_all():
  out = cm.score_all(_CANDS, _REFS)
  assert list(out) == ["bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact_match"]
  assert all(type(v) is float for v in out.values())
  assert {k: out[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")} == cm.bleu(_CANDS, _REFS)
  assert out["cider"] == cm.cider_d(_CANDS, _REFS)[0]
  assert out["exact_match"] == 0.25


@pytest.mark.parametrize("fn", [cm.bleu, cm.cider_d, cm.exact_match, cm.score_all])
def test_input_errors(fn):
  with pytest.raises(ValueError, match=r"got 2 candidates but 1 reference sets"):
    fn(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match=r"references\[1\] is empty"):
    fn(["a", "b"], [["a"], []])
  with pytest.raises(ValueError, match=r"references\[0\] is a string"):
    fn(["a"], ["a"])
  with pytest.raises(ValueError, match=r"no candidates"):
    fn([], [])
  with pytest.raises(ValueError, match=r"not a single string"):
    fn("a dog", [["a dog"]])
  with pytest.raises(ValueError, match=r"candidates\[0\] is a int"):
    fn([3], [["a"]])
  with pytest.raises(ValueError, match=r"references\[0\]\[1\] is a NoneType"):
    fn(["a"], [["a", None]])


def test_parameter_errors():
  with pytest.raises(ValueError, match="max_n"):
    cm.bleu(["a"], [["a"]], max_n=0)
  with pytest.raises(ValueError, match="sigma"):
    cm.cider_d(["a"], [["a"]], sigma=0.0)
