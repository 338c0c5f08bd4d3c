"""The tokenizer seam: PAD / CLS / SEP / MASK come from data.tokenizer, never the byte ids."""
import itertools

import jax
import numpy as np
import pytest

import mmjax
from mmjax import config_lib, configure, masking, models, tokenizers
from mmjax.data import builtin, text as text_lib
from tests.helpers import tiny_config

RELATIONS = ("left of", "right of", "above", "below")
CORPUS = [f"a {c} {s} {r} a {c2} {s2} and above a {c} {s2}"
          for c, s, r, c2, s2 in itertools.product(builtin.COLOURS, builtin.SHAPES, RELATIONS,
                                                   builtin.COLOURS[:2], builtin.SHAPES[:2])]


@pytest.fixture(scope="module")
def spm_spec(tmp_path_factory):
  """A SentencePiece model whose [MASK] is id 4 (its EOS is 3, the byte tokenizer's MASK)."""
  spm = pytest.importorskip("sentencepiece")
  d = tmp_path_factory.mktemp("spm")
  (d / "corpus.txt").write_text("\n".join(CORPUS))
  spm.SentencePieceTrainer.train(
      input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=40, model_type="word",
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=["[MASK]"],
      hard_vocab_limit=False, minloglevel=2)
  return f"sentencepiece:{d / 'sp'}.model"


@pytest.fixture(scope="module")
def hf_spec(tmp_path_factory):
  """A trained WordPiece tokenizer: [MASK]=0 (the byte PAD), [SEP]=2, [CLS]=3, [PAD]=4."""
  tk = pytest.importorskip("tokenizers")
  tok = tk.Tokenizer(tk.models.WordPiece(unk_token="[UNK]"))
  tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
  tok.train_from_iterator(CORPUS, tk.trainers.WordPieceTrainer(
      vocab_size=80, special_tokens=["[MASK]", "[UNK]", "[SEP]", "[CLS]", "[PAD]"]))
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  tok.save(str(path))
  return f"hf:{path}"


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
  """A hand-made CLIP-like vocabulary: id 0 is the real token '!', no pad, no mask."""
  tk = pytest.importorskip("tokenizers")
  vocab = {"!": 0, "a": 1, "red": 2, "circle": 3, "[UNK]": 4, "<|startoftext|>": 5,
           "<|endoftext|>": 6}
  tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
  path = tmp_path_factory.mktemp("clip") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def _config(spec, **overrides):
  weights = {"loss_weights.contrastive": 0.0, "loss_weights.itm": 0.0, "loss_weights.mim": 0.0,
             "loss_weights.mlm": 1.0}
  c = tiny_config("early_concat", **{**weights, **overrides})
  c.model.depth.update({"unimodal": 0, "joint": 1, "cross": 0, "post": 0})  # compiles fast
  c.data.tokenizer = spec
  c.data.text_len = c.model.modalities.text.max_len
  return c


def _first_end(ids, sep):
  return np.argmax(ids == sep, axis=1)


@pytest.mark.parametrize("which", ["spm", "hf"])
def test_mlm_uses_the_tokenizers_mask_and_specials(which, spm_spec, hf_spec, monkeypatch):
  spec = {"spm": spm_spec, "hf": hf_spec}[which]
  cfg = configure.resolve(_config(spec))
  tok = text_lib.from_config(cfg.data)
  assert tok.mask_id != text_lib.MASK_ID
  text = cfg.model.modality("text")
  assert (text.option("pad_id"), text.option("mask_id"), tuple(text.option("special_ids"))) == (
      tok.pad_id, tok.mask_id, tok.special_ids)
  model = models.build_model(cfg)
  params = jax.jit(lambda k: model.init(k, models.dummy_batch(cfg, 2), method=model.init_all))(
      jax.random.key(0))
  batch = mmjax.example_batch(cfg)  # the real pipeline encodes the built-in captions
  ids = batch["text"]
  assert np.all(ids[:, 0] == tok.cls_id) and np.all((ids == tok.sep_id).sum(1) == 1)
  calls = []

  def spy(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(kwargs)
    calls.append(out)
    return out

  real = masking.bert_mask
  monkeypatch.setattr(masking, "bert_mask", spy)

  def run(p, b, r):  # the masked ids that bert_mask handed to the model come back out
    out = model.apply(p, b, r, cfg.objectives, method=model.pretraining_outputs)
    return out, calls[-1]

  out, (masked, targets, weights) = jax.jit(run)(params, batch, jax.random.key(1))
  masked, targets, weights = map(np.asarray, (masked, targets, weights))
  assert calls[0]["mask_id"] == tok.mask_id
  assert out["mlm"]["text"][0].shape == ids.shape + (text.option("vocab_size"),)
  np.testing.assert_array_equal(targets, ids)
  chosen = weights > 0
  assert chosen.any() and (masked[chosen] == tok.mask_id).any()
  assert not np.isin(ids[chosen], tok.special_ids).any()  # never [CLS], [SEP], [PAD], [MASK]
  pos = np.arange(ids.shape[1])[None]
  assert not (chosen & (pos >= _first_end(ids, tok.sep_id)[:, None])).any()  # nor padding
  np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
  assert not np.isin(masked[~chosen & np.isin(ids, tok.special_ids)], [tok.mask_id]).any()

  # The same options over many rows: replacements are never special, [MASK] is 80%.
  many = np.tile(ids, (64, 1))
  m, _, w = map(np.asarray, masking.bert_mask(
      jax.random.key(2), many, mask_id=text.option("mask_id"),
      vocab_size=text.option("vocab_size"), special_ids=text.option("special_ids"),
      valid_mask=many != text.option("pad_id")))
  sel = w > 0
  frac = (m[sel] == tok.mask_id).mean()
  assert abs(frac - 0.8) < 0.06
  replaced = m[sel & (m != many) & (m != tok.mask_id)]
  assert replaced.size and not np.isin(replaced, tok.special_ids).any()
  assert replaced.max() < text.option("vocab_size")


def test_vocab_too_small_and_contradictions_are_one_line(spm_spec):
  tok = text_lib.get_tokenizer(spm_spec)
  need = tok.ids_needed(True)
  with pytest.raises(config_lib.ConfigError) as e:
    configure.resolve(_config(spm_spec, **{"model.modalities.text.vocab_size": need - 1}))
  assert str(e.value) == (
      f"model.modalities.text.vocab_size={need - 1} is smaller than the tokenizer's {need} ids "
      f"(data.tokenizer={spm_spec}); set model.modalities.text.vocab_size={need}")
  c = _config(spm_spec)
  c.model.modalities.text.mask_id = 3  # the byte [MASK]: here the SentencePiece EOS
  with pytest.raises(config_lib.ConfigError, match="mask_id=3 contradicts") as e:
    configure.resolve(c)
  assert "\n" not in str(e.value)
  c = _config(spm_spec)
  c.model.modalities.text.special_ids = (0, 1, 2, 3)
  with pytest.raises(config_lib.ConfigError, match=r"lacks the tokenizer's special id\(s\) \[4\]"):
    configure.resolve(c)
  del c.model.modalities.text["vocab_size"]
  del c.model.modalities.text["special_ids"]
  assert configure.resolve(c).model.modality("text").option("vocab_size") == need  # filled


def test_bytes_default_is_unchanged():
  c = tiny_config()
  text = configure.resolve(c).model.modality("text")
  assert dict(text.options) == {"vocab_size": 261, "max_len": 12}
  assert (text.option("pad_id"), text.option("mask_id"), text.option("special_ids")) == (
      0, 3, (0, 1, 2, 3))


def test_clip_framing(clip_path):
  clip = {"cls": "<|startoftext|>", "sep": "<|endoftext|>"}
  open_clip = text_lib.get_tokenizer(f"hf:{clip_path}", {**clip, "pad": 0}, lowercase=True)
  hf = text_lib.get_tokenizer(f"hf:{clip_path}", {**clip, "pad": "<|endoftext|>"},
                              lowercase=True)
  assert list(open_clip.encode("A Red circle", 8)) == [5, 1, 2, 3, 6, 0, 0, 0]
  assert list(open_clip.encode("a red circle !", 8)) == [5, 1, 2, 3, 0, 6, 0, 0]  # '!' is id 0
  assert list(hf.encode("A Red circle", 8)) == [5, 1, 2, 3, 6, 6, 6, 6]
  assert list(hf.encode("a red circle red", 4)) == [5, 1, 2, 6]  # the end token is kept
  assert open_clip.pad_is_token and hf.pad_is_token
  assert (open_clip.mask_id, open_clip.vocab_size) == (7, 8)  # no [MASK]: appended
  assert open_clip.decode([5, 1, 2, 3, 0, 6, 0, 0]) == "a red circle !"
  # Through the config: padding is told apart by position, since id 0 is a real token.
  c = _config(f"hf:{clip_path}", **{"loss_weights.mlm": 0.0, "loss_weights.mim": 0.5,
                                    "model.modalities.text.vocab_size": 7})
  c.data.tokenizer_specials = {**clip, "pad": 0}
  c.data.lowercase = True
  text = configure.resolve(c).model.modality("text")  # 7 ids suffice without MLM
  keys = ("pad_id", "key_mask", "eos_id")
  assert tuple(text.option(k) for k in keys) == (0, "eos", 6)
  emb = tokenizers.TextEmbedder(width=8, **{k: text.option(k) for k in keys})
  ids = np.array([[5, 1, 2, 3, 0, 6, 0, 0]], np.int32)
  np.testing.assert_array_equal(np.asarray(emb.token_mask(ids))[0], [1, 1, 1, 1, 1, 1, 0, 0])
  with pytest.raises(config_lib.ConfigError, match="vocab_size=7 is smaller than the "
                     "tokenizer's 8 ids"):
    c.loss_weights.mlm = 0.5  # with MLM the appended [MASK] (id 7) needs a row
    configure.resolve(c)


def test_siglip_framing(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  (tmp_path / "c.txt").write_text("\n".join(CORPUS))
  spm.SentencePieceTrainer.train(
      input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "sig"), vocab_size=30,
      model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  spec = f"sentencepiece:{tmp_path / 'sig'}.model"
  tok = text_lib.get_tokenizer(spec, {"cls": ""})
  piece = lambda w: tok._sp.piece_to_id("\u2581" + w)  # noqa: E731  pylint: disable=protected-access
  words = [piece(w) for w in ("a", "red", "circle")]
  assert min(words) > 2 and (tok.cls_id, tok.sep_id, tok.pad_id) == (None, 1, 0)
  assert list(tok.encode("a red circle", 6)) == words + [1, 0, 0]  # no start, '</s>', <pad>
  assert list(tok.encode("a red circle", 3)) == words[:2] + [1]
  assert tok.decode(tok.encode("a red circle", 6)) == "a red circle"
  n = tok._sp.get_piece_size()  # pylint: disable=protected-access
  assert not tok.pad_is_token and tok.mask_id == n  # no [MASK]: appended after the pieces
  c = _config(spec, **{"loss_weights.mlm": 0.0, "loss_weights.mim": 0.5,
                       "model.modalities.text.max_len": 64})
  c.data.tokenizer_specials = {"cls": ""}
  c.data.text_len = 64
  batch = mmjax.example_batch(c)
  assert np.all(batch["text"][:, 0] != 0) and np.all((batch["text"] == 1).sum(1) == 1)


def test_bad_specials_are_one_line(clip_path):
  for specials, match in [({"bos": "x"}, "unknown data.tokenizer_specials key 'bos'"),
                          ({"pad": ""}, "leaves no padding token"),
                          ({"sep": "<|endoftex|>"}, "is not a token of"),
                          ({"cls": 99}, "is outside")]:
    with pytest.raises(ValueError, match=match) as e:
      text_lib.get_tokenizer(f"hf:{clip_path}", specials)
    assert "\n" not in str(e.value)
