"""Audio in numpy: WAV reading (stdlib `wave`) and log-mel spectrograms.

Frames are 25 ms Hann windows every 10 ms (AST / MBT style); mel scale is HTK (2595 log10).
"""
from __future__ import annotations

import functools
import wave

import numpy as np

WINDOW_S = 0.025
HOP_S = 0.010


def frame_params(sample_rate: int):
  """-> (window, hop, n_fft) in samples for this rate."""
  win = int(round(WINDOW_S * sample_rate))
  hop = int(round(HOP_S * sample_rate))
  n_fft = 1 << (win - 1).bit_length()
  return win, hop, n_fft


def num_samples(num_frames: int, sample_rate: int) -> int:
  """Waveform length that gives exactly `num_frames` frames."""
  win, hop, _ = frame_params(sample_rate)
  return win + hop * (num_frames - 1)


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, mel_bins: int, fmin: float = 20.0,
                   fmax: float | None = None) -> np.ndarray:
  """Triangular mel filters [n_fft//2 + 1, mel_bins] (float32, read-only)."""
  fmax = fmax or sample_rate / 2
  freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), mel_bins + 2))
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo) / np.maximum(mid - lo, 1e-9)
  down = (hi - freqs[:, None]) / np.maximum(hi - mid, 1e-9)
  fb = np.clip(np.minimum(up, down), 0.0, None).astype(np.float32)
  fb.setflags(write=False)
  return fb


@functools.lru_cache(maxsize=32)
def _sparse_filterbank(sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax):
  """The filterbank as (fft-bin index [nnz], weight [nnz], start of each mel bin [mel_bins]).

  Applied with a gather + np.add.reduceat: no BLAS call, so no BLAS thread wake-ups per clip
  (a small float matmul here costs 10x more when OpenBLAS threads are asleep).
  """
  fb = mel_filterbank(sample_rate, n_fft, mel_bins, fmin, fmax)
  idx, wts, starts = [], [], []
  for m in range(mel_bins):
    nz = np.flatnonzero(fb[:, m])
    if nz.size == 0:  # an empty filter still needs one (zero-weight) entry for reduceat
      nz = np.array([0])
    starts.append(len(idx))
    idx.extend(nz.tolist())
    wts.extend(fb[nz, m].tolist())
  out = (np.asarray(idx, np.int64), np.asarray(wts, np.float32), np.asarray(starts, np.int64))
  for a in out:
    a.setflags(write=False)
  return out


@functools.lru_cache(maxsize=8)
def _hann(win: int) -> np.ndarray:
  w = np.hanning(win + 1)[:-1].astype(np.float32)
  w.setflags(write=False)
  return w


def log_mel(wave_: np.ndarray, sample_rate: int, mel_bins: int, num_frames: int | None = None,
            fmax: float | None = None) -> np.ndarray:
  """Mono waveform [N] -> log-mel [T, mel_bins] float32 (T = num_frames: cropped / zero-padded).

  fmax (default: Nyquist) fixes the top mel edge, so clips at different rates share mel bins.
  """
  x = np.asarray(wave_, np.float32).reshape(-1)
  win, hop, n_fft = frame_params(sample_rate)
  if num_frames is not None:
    need = num_samples(num_frames, sample_rate)
    x = x[:need] if x.size >= need else np.pad(x, (0, need - x.size))
  elif x.size < win:
    x = np.pad(x, (0, win - x.size))
  t = 1 + (x.size - win) // hop
  frames = np.lib.stride_tricks.as_strided(
      x, shape=(t, win), strides=(x.strides[0] * hop, x.strides[0]), writeable=False)
  power = np.abs(np.fft.rfft(frames * _hann(win), n=n_fft, axis=-1)) ** 2
  idx, wts, starts = _sparse_filterbank(sample_rate, n_fft, mel_bins, 20.0, fmax)
  mel = np.add.reduceat(power.astype(np.float32)[:, idx] * wts, starts, axis=1)
  return np.log(mel + 1e-6).astype(np.float32)


def normalize_spectrogram(spec: np.ndarray) -> np.ndarray:
  """Per-clip standardization: [T, F] -> zero mean, unit variance (float32)."""
  spec = np.asarray(spec, np.float32)
  return ((spec - spec.mean()) / (spec.std() + 1e-5)).astype(np.float32)


def fit_frames(spec: np.ndarray, num_frames: int) -> np.ndarray:
  """Crop or pad (with the clip minimum) the time axis of [T, F] to num_frames."""
  t = spec.shape[0]
  if t >= num_frames:
    return spec[:num_frames]
  fill = spec.min() if spec.size else 0.0
  return np.concatenate([spec, np.full((num_frames - t,) + spec.shape[1:], fill, spec.dtype)])


def read_wav(path: str):
  """16-bit / 8-bit / 32-bit PCM WAV -> (mono float32 [N] in [-1, 1], sample_rate)."""
  with wave.open(path, "rb") as w:
    rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
    raw = w.readframes(n)
  if width == 1:
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 2:
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
  elif width == 4:
    x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
  else:
    raise ValueError(f"unsupported WAV sample width {width * 8} bits in {path}; "
                     "convert it to 16-bit PCM")
  return x.reshape(-1, ch).mean(axis=1), rate


def write_wav(path: str, wave_: np.ndarray, sample_rate: int):
  """Mono float [-1, 1] -> 16-bit PCM WAV (used by tests and data export)."""
  pcm = (np.clip(np.asarray(wave_, np.float32), -1, 1) * 32767).astype("<i2")
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.tobytes())
