"""Text tokenizers: text -> int32 ids [max_len] laid out as [CLS] tokens... [SEP] [PAD]...

Three backends behind one interface (`encode`, `decode`, `vocab_size`, `pad_id`, `cls_id`,
`sep_id`, `mask_id`):
  'bytes'                       UTF-8 bytes, no files needed (the default)
  'sentencepiece:/path/model'   a SentencePiece model (needs the `sentencepiece` package)
  'hf:/path/tokenizer.json'     a Hugging Face tokenizers file (needs the `tokenizers` package)
Special tokens a model file lacks are appended after its vocabulary, so ids stay unique.
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence

import numpy as np

# Byte tokenizer ids (mmjax.train_lib relies on PAD, CLS, SEP, MASK being 0..3).
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = 0, 1, 2, 3, 4
BYTE_OFFSET = 5
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256  # 261
SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID)


def _frame(ids: Sequence[int], max_len: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
  """[CLS] ids[:max_len-2] [SEP] padded with PAD -> int32 [max_len]."""
  if max_len < 2:
    raise ValueError(f"max_len={max_len} leaves no room for [CLS] and [SEP]; use max_len >= 2")
  body = np.asarray(ids, np.int32)[: max_len - 2]
  out = np.full((max_len,), pad_id, np.int32)
  out[0] = cls_id
  out[1:1 + body.size] = body
  out[1 + body.size] = sep_id
  return out


class ByteTokenizer:
  """UTF-8 bytes shifted by 5; ids 0..4 are PAD, CLS, SEP, MASK, UNK. vocab_size 261."""

  name = "bytes"
  vocab_size = BYTE_VOCAB_SIZE
  pad_id, cls_id, sep_id, mask_id, unk_id = PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID

  def tokenize(self, text: str) -> np.ndarray:
    """text -> int32 [n] ids without specials."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET

  def encode(self, text: str, max_len: int) -> np.ndarray:
    """text -> int32 [max_len]: [CLS] bytes [SEP] [PAD]..., truncated to fit."""
    return _frame(self.tokenize(text), max_len, CLS_ID, SEP_ID, PAD_ID)

  def decode(self, ids) -> str:
    """ids (any int sequence) -> text; specials are dropped, bad UTF-8 is replaced."""
    ids = np.asarray(ids).reshape(-1)
    body = ids[ids >= BYTE_OFFSET] - BYTE_OFFSET
    return body.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class _FileTokenizer:
  """Shared logic for file-backed tokenizers: specials looked up, missing ones appended."""

  _CANDIDATES = {
      "pad": ("[PAD]", "<pad>", "<|pad|>"),
      "cls": ("[CLS]", "<s>", "<|startoftext|>", "<bos>", "<|begin_of_text|>"),
      "sep": ("[SEP]", "</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>"),
      "mask": ("[MASK]", "<mask>", "<|mask|>"),
  }

  def _setup_specials(self, base_size: int, lookup, preset: Optional[dict] = None):
    preset = dict(preset or {})
    extra = 0
    for role, names in self._CANDIDATES.items():
      idx = preset.get(role)
      if idx is None or idx < 0:
        idx = next((i for i in (lookup(n) for n in names) if i is not None and i >= 0), None)
      if idx is None:
        idx = base_size + extra
        extra += 1
      setattr(self, f"{role}_id", int(idx))
    self.vocab_size = base_size + extra
    self._specials = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
    self._base_size = base_size

  def encode(self, text: str, max_len: int) -> np.ndarray:
    """text -> int32 [max_len]: [CLS] pieces [SEP] [PAD]..., truncated to fit."""
    return _frame(self.tokenize(text), max_len, self.cls_id, self.sep_id, self.pad_id)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)
           if int(i) not in self._specials and int(i) < self._base_size]
    return self._decode(ids)


class SentencePieceTokenizer(_FileTokenizer):
  """A SentencePiece model file; CLS/SEP default to its BOS/EOS ids."""

  def __init__(self, path: str):
    spm = _optional_import("sentencepiece", "sentencepiece")
    _require_file(path, "sentencepiece model")
    self.name = f"sentencepiece:{path}"
    self._sp = spm.SentencePieceProcessor(model_file=path)
    n = int(self._sp.get_piece_size())
    unk = self._sp.unk_id()

    def lookup(piece):
      i = self._sp.piece_to_id(piece)
      return None if i == unk and piece != self._sp.id_to_piece(unk) else i

    self._setup_specials(n, lookup, {"pad": self._sp.pad_id(), "cls": self._sp.bos_id(),
                                     "sep": self._sp.eos_id()})

  def tokenize(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def _decode(self, ids: List[int]) -> str:
    return self._sp.decode(ids)


class HFTokenizer(_FileTokenizer):
  """A Hugging Face `tokenizer.json`; its own post-processor is bypassed (we frame ids)."""

  def __init__(self, path: str):
    tk = _optional_import("tokenizers", "tokenizers")
    _require_file(path, "tokenizer.json")
    self.name = f"hf:{path}"
    self._tok = tk.Tokenizer.from_file(path)
    n = int(self._tok.get_vocab_size(with_added_tokens=True))
    self._setup_specials(n, self._tok.token_to_id)

  def tokenize(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def _decode(self, ids: List[int]) -> str:
    return self._tok.decode(ids)


def _optional_import(module: str, package: str):
  try:
    return __import__(module)
  except ImportError:
    raise ImportError(f"tokenizer needs the optional package '{package}', which is not "
                      f"installed; run `pip install {package}` or use tokenizer='bytes'") from None


def _require_file(path: str, what: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file not found: {path}; check data.tokenizer")


@functools.lru_cache(maxsize=16)
def get_tokenizer(spec: str = "bytes"):
  """'bytes' | 'sentencepiece:/path/model' | 'hf:/path/tokenizer.json' -> tokenizer (cached)."""
  spec = (spec or "bytes").strip()
  if spec == "bytes":
    return ByteTokenizer()
  kind, sep, path = spec.partition(":")
  if sep and kind in ("sentencepiece", "spm"):
    return SentencePieceTokenizer(os.path.expanduser(path))
  if sep and kind in ("hf", "huggingface"):
    return HFTokenizer(os.path.expanduser(path))
  raise ValueError(f"unknown tokenizer spec {spec!r}; use 'bytes', 'sentencepiece:/path/model' "
                   "or 'hf:/path/tokenizer.json'")


def encode_batch(tokenizer, texts: Sequence[str], max_len: int) -> np.ndarray:
  """[n] texts -> int32 [n, max_len]."""
  if not len(texts):
    return np.zeros((0, max_len), np.int32)
  return np.stack([tokenizer.encode(t, max_len) for t in texts])
