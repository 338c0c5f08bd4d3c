"""Text tokenizers: text -> int32 ids [max_len] laid out as [CLS] tokens... [SEP] [PAD]...

Three backends behind one interface (`encode`, `decode`, `tokenize`, `vocab_size`, `pad_id`,
`cls_id`, `sep_id`, `mask_id`, `special_ids`, `pad_is_token`, `ids_needed`):
  'bytes'                       UTF-8 bytes, no files needed (the default)
  'sentencepiece:/path/model'   a SentencePiece model (needs the `sentencepiece` package)
  'hf:/path/tokenizer.json'     a Hugging Face tokenizers file (needs the `tokenizers` package)

Framing is configurable, so one tokenizer reproduces a published model's convention:
  specials   role -> token, for 'cls' (the start token), 'sep' (the end token), 'pad' and
             'mask': a token of the vocabulary, an int id, or '' for none (not for 'pad').
             A role left out is the model's own (BOS / EOS / PAD ids, usual names such as
             [CLS], <s>, <|startoftext|>) or, if it has none, a new id after its vocabulary.
  lowercase  lowercase the text before tokenizing
  canonicalize  SigLIP's text cleaning, after lowercasing: punctuation dropped, whitespace
             collapsed and stripped. 'big_vision' (open_clip's SigLIP tokenizer too) first turns
             '_' into a space; 'hf' (Hugging Face's SiglipTokenizer) drops it; '' keeps the text.
The end token is kept when text is truncated; framing tokens inside the text are dropped.
  BERT / default  {}                                                  [CLS] .. [SEP] [PAD]..
  CLIP, open_clip {'cls': '<|startoftext|>', 'sep': '<|endoftext|>', 'pad': 0}, lowercase
  CLIP, HF        {'cls': '<|startoftext|>', 'sep': '<|endoftext|>', 'pad': '<|endoftext|>'}
  SigLIP          {'cls': ''} with its SentencePiece model: .. </s> <pad>.., text_len 64,
                  lowercase, canonicalize='big_vision'
`pad_is_token` is True when the pad id is also a real token (CLIP): padding is then told
apart by position (everything after the first end token), never by id.
"""
from __future__ import annotations

import functools
import numbers
import os
import string
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# Byte tokenizer ids: PAD, CLS, SEP, MASK are 0..3 (the TextEmbedder's defaults).
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = 0, 1, 2, 3, 4
BYTE_OFFSET = 5
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256  # 261
SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID)
ROLES = ("pad", "cls", "sep", "mask")  # the order missing specials are appended in
_NAMES = {
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "cls": ("[CLS]", "<s>", "<|startoftext|>", "<bos>", "<|begin_of_text|>"),
    "sep": ("[SEP]", "</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
}


CANONICALIZE = ("", "big_vision", "hf")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TokenizerSpec(NamedTuple):
  """What builds a tokenizer (hashable, picklable): backend spec, role overrides, lowercase,
  canonicalize."""
  spec: str = "bytes"
  specials: Tuple[Tuple[str, Any], ...] = ()
  lowercase: bool = False
  canonicalize: str = ""


def check_canonicalize(mode) -> str:
  """data.canonicalize, checked (one-line ValueError)."""
  mode = str(mode or "")
  if mode not in CANONICALIZE:
    raise ValueError(f"unknown data.canonicalize {mode!r}; use '' (off), 'big_vision' "
                     "(SigLIP as big_vision and open_clip clean it) or 'hf' (Hugging Face's "
                     "SiglipTokenizer)")
  return mode


def clean(text: str, lowercase: bool = False, canonicalize: str = "") -> str:
  """The text a tokenizer reads: lowercased, then canonicalized (see the module doc)."""
  if lowercase:
    text = text.lower()
  if canonicalize:
    if canonicalize == "big_vision":
      text = text.replace("_", " ")
    text = " ".join(text.translate(_PUNCTUATION).split())
  return text


def check_specials(specials) -> Tuple[Tuple[str, Any], ...]:
  """A role -> token mapping, checked, as a sorted tuple (one-line ValueError)."""
  items = dict(specials.items()) if hasattr(specials, "items") else dict(specials or ())
  out = []
  for role, v in sorted(items.items()):
    if role not in ROLES:
      raise ValueError(f"unknown data.tokenizer_specials key {role!r}; use "
                       f"{', '.join(ROLES)}")
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
      if v < 0:
        raise ValueError(f"data.tokenizer_specials.{role}={v} is negative; give an id >= 0")
      v = int(v)
    elif not isinstance(v, str):
      raise ValueError(f"data.tokenizer_specials.{role}={v!r} must be a token string, an int "
                       "id or '' (none)")
    if role == "pad" and v == "":
      raise ValueError("data.tokenizer_specials.pad='' leaves no padding token; name one "
                       "(or an id), or leave pad out")
    out.append((role, v))
  return tuple(out)


def _frame(ids: Sequence[int], max_len: int, cls_id: Optional[int], sep_id: Optional[int],
           pad_id: int) -> np.ndarray:
  """[CLS] ids[:room] [SEP] padded with PAD -> int32 [max_len] (cls / sep None: left out)."""
  head = [] if cls_id is None else [cls_id]
  tail = [] if sep_id is None else [sep_id]
  if max_len < len(head) + len(tail):
    raise ValueError(f"max_len={max_len} leaves no room for the start and end tokens; use "
                     f"max_len >= {len(head) + len(tail)}")
  body = np.asarray(ids, np.int32)[: max_len - len(head) - len(tail)]
  out = np.full((max_len,), pad_id, np.int32)
  out[:len(head)] = head
  out[len(head):len(head) + body.size] = body
  out[len(head) + body.size:len(head) + body.size + len(tail)] = tail
  return out


class _Tokenizer:
  """Roles, framing and the id bookkeeping every backend shares."""

  name = "?"
  lowercase = False
  canonicalize = ""

  def _setup_roles(self, base_size: int, lookup, native: Dict[str, int], control,
                   specials=(), lowercase: bool = False):
    """base_size: ids [0, base_size) are the model's own; lookup: token -> id or None;
    native: the model's own role ids (< 0 = none); control: its special / control ids."""
    self.lowercase = bool(lowercase)
    self._base_size = int(base_size)
    self._control = frozenset(int(i) for i in control)
    overrides = dict(check_specials(specials))
    extra, dedicated_pad = 0, True
    for role in ROLES:
      if role in overrides:
        v = overrides[role]
        if v == "":
          idx = None
        elif isinstance(v, int):
          if v >= base_size:
            raise ValueError(f"data.tokenizer_specials.{role}={v} is outside {self.name}'s "
                             f"{base_size} ids; give an id below {base_size}")
          idx = v
        else:
          idx = lookup(v)
          if idx is None or idx < 0:
            raise ValueError(f"data.tokenizer_specials.{role}={v!r} is not a token of "
                             f"{self.name}; name one it has, give an id, or leave {role} out")
        if role == "pad":
          dedicated_pad = idx in self._control or (isinstance(v, str) and v in _NAMES["pad"])
      else:
        idx = native.get(role, -1)
        if idx is None or idx < 0:
          idx = next((i for i in (lookup(n) for n in _NAMES[role]) if i is not None and i >= 0),
                     None)
        if idx is None:
          idx = base_size + extra
          extra += 1
      setattr(self, f"{role}_id", None if idx is None else int(idx))
    self.vocab_size = base_size + extra
    roles = {self.cls_id, self.sep_id, self.mask_id} - {None}
    self.pad_is_token = self.pad_id in roles or not dedicated_pad
    self._roles = frozenset(roles | {self.pad_id})
    # Framing tokens the text itself may not produce (a pad that is a real token stays).
    self._strip = np.asarray(sorted(roles | ({self.pad_id} if dedicated_pad else set())),
                             np.int32)

  @property
  def role_ids(self) -> Tuple[int, ...]:
    """The ids of the framing roles and [MASK] that this tokenizer defines."""
    return tuple(sorted(self._roles))

  @property
  def special_ids(self) -> Tuple[int, ...]:
    """Never masked nor drawn as random replacements: the roles and the model's control ids."""
    return tuple(sorted(self._roles | self._control))

  def ids_needed(self, mlm: bool) -> int:
    """The embedding rows a run needs: every id encode produces (+ [MASK] with MLM)."""
    ids = [self._base_size] + [i + 1 for i in (self.pad_id, self.cls_id, self.sep_id)
                               if i is not None]
    if mlm and self.mask_id is not None:
      ids.append(self.mask_id + 1)
    return max(ids)

  def tokenize(self, text: str) -> np.ndarray:
    """text -> int32 [n] ids without framing tokens."""
    ids = self._tokenize(clean(text, self.lowercase, self.canonicalize))
    return ids[~np.isin(ids, self._strip)] if self._strip.size else ids

  def encode(self, text: str, max_len: int) -> np.ndarray:
    """text -> int32 [max_len]: [CLS] pieces [SEP] [PAD]..., truncated to fit ([SEP] kept)."""
    return _frame(self.tokenize(text), max_len, self.cls_id, self.sep_id, self.pad_id)


class ByteTokenizer(_Tokenizer):
  """UTF-8 bytes shifted by 5; ids 0..4 are PAD, CLS, SEP, MASK, UNK. vocab_size 261."""

  _BYTE_NAMES = {"[PAD]": PAD_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID,
                 "[UNK]": UNK_ID}

  def __init__(self, specials=(), lowercase: bool = False):
    self.name = "bytes"
    self._setup_roles(BYTE_VOCAB_SIZE, self._BYTE_NAMES.get,
                      {"pad": PAD_ID, "cls": CLS_ID, "sep": SEP_ID, "mask": MASK_ID},
                      (PAD_ID, CLS_ID, SEP_ID, MASK_ID), specials, lowercase)

  def _tokenize(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET

  def decode(self, ids) -> str:
    """ids (any int sequence) -> text; specials are dropped, bad UTF-8 is replaced."""
    ids = np.asarray(ids).reshape(-1)
    body = ids[ids >= BYTE_OFFSET] - BYTE_OFFSET
    return body.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class _FileTokenizer(_Tokenizer):
  """File-backed tokenizers: decode stops at the end token and drops framing tokens."""

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.sep_id is not None and self.sep_id in ids:
      ids = ids[:ids.index(self.sep_id)]
    drop = set(self._strip.tolist()) | self._control
    return self._decode([i for i in ids if i not in drop and i < self._base_size])


class SentencePieceTokenizer(_FileTokenizer):
  """A SentencePiece model file; CLS / SEP / PAD default to its BOS / EOS / PAD ids."""

  def __init__(self, path: str, specials=(), lowercase: bool = False):
    spm = _optional_import("sentencepiece", "sentencepiece")
    _require_file(path, "sentencepiece model")
    self.name = f"sentencepiece:{path}"
    self._sp = _load(lambda: spm.SentencePieceProcessor(model_file=path), path,
                     "a SentencePiece model")
    n = int(self._sp.get_piece_size())
    unk = self._sp.unk_id()

    def lookup(piece):
      i = self._sp.piece_to_id(piece)
      return None if i == unk and piece != self._sp.id_to_piece(unk) else i

    control = [i for i in range(n) if self._sp.is_control(i)]
    self._setup_roles(n, lookup, {"pad": self._sp.pad_id(), "cls": self._sp.bos_id(),
                                  "sep": self._sp.eos_id()}, control, specials, lowercase)

  def _tokenize(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32).reshape(-1)

  def _decode(self, ids: List[int]) -> str:
    return self._sp.decode(ids)


class HFTokenizer(_FileTokenizer):
  """A Hugging Face `tokenizer.json`; its own post-processor is bypassed (we frame ids)."""

  def __init__(self, path: str, specials=(), lowercase: bool = False):
    tk = _optional_import("tokenizers", "tokenizers")
    _require_file(path, "tokenizer.json")
    self.name = f"hf:{path}"
    self._tok = _load(lambda: tk.Tokenizer.from_file(path), path, "a Hugging Face tokenizer.json")
    n = int(self._tok.get_vocab_size(with_added_tokens=True))
    added = getattr(self._tok, "get_added_tokens_decoder", dict)()
    control = [i for i, t in added.items() if getattr(t, "special", False)]
    self._setup_roles(n, self._tok.token_to_id, {}, control, specials, lowercase)

  def _tokenize(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids,
                      np.int32).reshape(-1)

  def _decode(self, ids: List[int]) -> str:
    return self._tok.decode(ids)


def _optional_import(module: str, package: str):
  try:
    return __import__(module)
  except ImportError:
    raise ImportError(f"tokenizer needs the optional package '{package}', which is not "
                      f"installed; run `pip install {package}` or use tokenizer='bytes'") from None


def _load(fn, path: str, what: str):
  """fn() -> a loaded tokenizer; an unreadable file is one ValueError naming it."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise ValueError(f"cannot read tokenizer file {path} ({type(e).__name__}: {first}); it is "
                     f"not {what}: fix data.tokenizer or replace the file") from None


def _require_file(path: str, what: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file not found: {path}; check data.tokenizer")


def get_tokenizer(spec="bytes", specials=None, lowercase: bool = False, canonicalize: str = ""):
  """'bytes' | 'sentencepiece:/path/model' | 'hf:/path/tokenizer.json' (or a TokenizerSpec)
  with optional role overrides, lowercasing and canonicalization (see the module doc) ->
  tokenizer (cached)."""
  if not isinstance(spec, TokenizerSpec):
    spec = TokenizerSpec((spec or "bytes").strip(), check_specials(specials), bool(lowercase),
                         check_canonicalize(canonicalize))
  return _build(spec)


@functools.lru_cache(maxsize=16)
def _build(spec: TokenizerSpec):
  kind, sep, path = spec.spec.partition(":")
  opts = dict(specials=spec.specials, lowercase=spec.lowercase)
  if spec.spec == "bytes":
    tok = ByteTokenizer(**opts)
  elif sep and kind in ("sentencepiece", "spm"):
    tok = SentencePieceTokenizer(os.path.expanduser(path), **opts)
  elif sep and kind in ("hf", "huggingface"):
    tok = HFTokenizer(os.path.expanduser(path), **opts)
  else:
    tok = None
  if tok is not None:
    tok.canonicalize = check_canonicalize(spec.canonicalize)
    return tok
  raise ValueError(f"unknown tokenizer spec {spec.spec!r}; use 'bytes', "
                   "'sentencepiece:/path/model' or 'hf:/path/tokenizer.json'")


def spec_from_config(cfg) -> TokenizerSpec:
  """The TokenizerSpec of a data config (data.tokenizer, .tokenizer_specials, .lowercase,
  .canonicalize); keys it lacks take their defaults."""
  get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
  return TokenizerSpec(str(get("tokenizer", "bytes") or "bytes").strip(),
                       check_specials(get("tokenizer_specials", None) or {}),
                       bool(get("lowercase", False)),
                       check_canonicalize(get("canonicalize", "")))


def from_config(cfg):
  """The tokenizer a data config describes (cached)."""
  return get_tokenizer(spec_from_config(cfg))


def encode_batch(tokenizer, texts: Sequence[str], max_len: int) -> np.ndarray:
  """[n] texts -> int32 [n, max_len]."""
  if not len(texts):
    return np.zeros((0, max_len), np.int32)
  return np.stack([tokenizer.encode(t, max_len) for t in texts])
