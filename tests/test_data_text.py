"""Text tokenizers: the byte default fully; SentencePiece / HF when their packages are present."""
import numpy as np
import pytest

from mmjax.data import text


def test_byte_constants():
  tok = text.get_tokenizer("bytes")
  assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3)
  assert text.UNK_ID == 4 and text.BYTE_OFFSET == 5
  assert tok.vocab_size == text.BYTE_VOCAB_SIZE == 261


def test_byte_encode_layout_and_roundtrip():
  tok = text.ByteTokenizer()
  ids = tok.encode("a red circle", 20)
  assert ids.dtype == np.int32 and ids.shape == (20,)
  assert ids[0] == text.CLS_ID and ids[13] == text.SEP_ID
  assert np.all(ids[14:] == text.PAD_ID)
  assert ids[1] == ord("a") + text.BYTE_OFFSET
  assert tok.decode(ids) == "a red circle"
  assert ids.max() < tok.vocab_size


def test_byte_truncation_keeps_cls_and_sep():
  tok = text.ByteTokenizer()
  ids = tok.encode("x" * 100, 8)
  assert ids.shape == (8,) and ids[0] == text.CLS_ID and ids[-1] == text.SEP_ID
  assert tok.decode(ids) == "x" * 6
  assert list(tok.encode("", 4)) == [text.CLS_ID, text.SEP_ID, 0, 0]


def test_byte_unicode_and_decode_ignores_specials():
  tok = text.ByteTokenizer()
  s = "café ünïcode 猫"
  assert tok.decode(tok.encode(s, 64)) == s
  ids = tok.encode("ab", 6)
  ids[1] = text.MASK_ID
  assert tok.decode(ids) == "b"


def test_encode_batch():
  tok = text.ByteTokenizer()
  out = text.encode_batch(tok, ["a", "bb"], 5)
  assert out.shape == (2, 5) and out.dtype == np.int32
  assert text.encode_batch(tok, [], 5).shape == (0, 5)


def test_get_tokenizer_errors_are_one_line():
  with pytest.raises(ValueError) as e:
    text.get_tokenizer("wordpiece:/x")
  assert "unknown tokenizer spec" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises((FileNotFoundError, ImportError)) as e:
    text.get_tokenizer("hf:/nonexistent/tokenizer.json")
  assert "\n" not in str(e.value)


def test_sentencepiece_tokenizer(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(f"a {c} {s} left of a {s} shape" for c in
                              ("red", "green", "blue") for s in ("circle", "square")) * 20)
  prefix = str(tmp_path / "sp")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=24,
                                 model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                 minloglevel=2)
  tok = text.get_tokenizer(f"sentencepiece:{prefix}.model")
  assert (tok.pad_id, tok.cls_id, tok.sep_id) == (0, 2, 3)
  assert tok.mask_id == 24 and tok.vocab_size == 25  # [MASK] appended
  ids = tok.encode("a red circle", 16)
  assert ids[0] == tok.cls_id and tok.sep_id in ids and ids.shape == (16,)
  assert tok.decode(ids) == "a red circle"


def test_hf_tokenizer(tmp_path):
  tk = pytest.importorskip("tokenizers")
  model = tk.models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4,
                               "red": 5, "circle": 6}, unk_token="[UNK]")
  t = tk.Tokenizer(model)
  t.pre_tokenizer = tk.pre_tokenizers.Whitespace()
  path = str(tmp_path / "tokenizer.json")
  t.save(path)
  tok = text.get_tokenizer(f"hf:{path}")
  assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size) == (0, 2, 3, 7, 8)
  ids = tok.encode("a red circle", 8)
  assert list(ids) == [2, 4, 5, 6, 3, 0, 0, 0]
  assert tok.decode(ids) == "a red circle"


def test_byte_framing_options_and_lowercase():
  tok = text.get_tokenizer("bytes", {"cls": ""}, lowercase=True)
  assert tok.cls_id is None and tok.special_ids == (0, 1, 2, 3)
  ids = tok.encode("AB", 5)
  assert list(ids) == [ord("a") + 5, ord("b") + 5, text.SEP_ID, 0, 0]
  assert text.get_tokenizer("bytes").encode("AB", 5)[1] == ord("A") + 5  # default: as is
  assert text.get_tokenizer("bytes", {"sep": "", "cls": ""}).encode("ab", 2).tolist() == [
      ord("a") + 5, ord("b") + 5]
  assert text.get_tokenizer("bytes").ids_needed(True) == 261


def test_data_config_checks_tokenizer_specials():
  from mmjax.data import config as data_config
  cfg = data_config.resolve({"tokenizer_specials": {"cls": "", "pad": 0}, "lowercase": True})
  assert text.spec_from_config(cfg) == text.TokenizerSpec("bytes", (("cls", ""), ("pad", 0)),
                                                           True)
  assert text.spec_from_config(data_config.get_config()) == text.TokenizerSpec()
  with pytest.raises(ValueError, match="unknown data.tokenizer_specials key 'eos'") as e:
    data_config.resolve({"tokenizer_specials": {"eos": "</s>"}})
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="must be a token string"):
    data_config.resolve({"tokenizer_specials": {"mask": 1.5}})


def test_hf_framing_tokens_in_text_are_dropped(tmp_path):
  tk = pytest.importorskip("tokenizers")
  t = tk.Tokenizer(tk.models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4},
                                       unk_token="[UNK]"))
  t.pre_tokenizer = tk.pre_tokenizers.Whitespace()
  t.add_special_tokens(["[CLS]", "[SEP]", "[PAD]"])
  path = str(tmp_path / "tokenizer.json")
  t.save(path)
  tok = text.get_tokenizer(f"hf:{path}")
  assert list(tok.encode("a [SEP] a", 6)) == [2, 4, 4, 3, 0, 0]  # text cannot end it early
  assert tok.special_ids == (0, 2, 3, 5) and not tok.pad_is_token


TRICKY = ("A Photo of a CAT.", "snake_case_words", "  tabs\tand\nnew lines  ", "it's {x}!",
          "Ünïcode Straße — dash", "a_b-c_d", "", "!!!", "\u2003wide\u3000space")


def test_canonicalize_is_big_vision_open_clip_and_hf_siglip():
  """data.canonicalize reproduces open_clip's canonicalize_text (big_vision's) and Hugging
  Face's SiglipTokenizer.canonicalize_text (lowercasing on) on tricky strings."""
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from tests.helpers import REF_PY, ROOT  # pylint: disable=import-outside-toplevel
  r = subprocess.run([REF_PY, os.path.join(ROOT, "tests", "reference", "make_reference.py"),
                      "canonicalize"], input=json.dumps(TRICKY), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  big_vision, hf = json.loads(r.stdout)
  assert [text.clean(x, True, "big_vision") for x in TRICKY] == big_vision
  assert [text.clean(x, True, "hf") for x in TRICKY] == hf
  assert big_vision != hf  # the underscore rule differs, so each mode is tested
  assert text.clean("A_B.", False, "") == "A_B."


def test_canonicalize_reaches_the_ids_and_bad_modes_are_refused():
  from mmjax.data import config as data_config  # pylint: disable=import-outside-toplevel
  tok = text.get_tokenizer("bytes", lowercase=True, canonicalize="big_vision")
  assert np.array_equal(tok.encode("A_Cat, here!", 16),
                        text.get_tokenizer("bytes").encode("a cat here", 16))
  cfg = data_config.resolve({"lowercase": True, "canonicalize": "hf"})
  assert text.spec_from_config(cfg).canonicalize == "hf"
  with pytest.raises(ValueError, match="unknown data.canonicalize 'bigvision'; use ''"):
    data_config.resolve({"canonicalize": "bigvision"})
