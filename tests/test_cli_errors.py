"""Every user mistake at train.py / eval.py / python -m mmjax.convert ends in one line.

Each case runs the real entry point as a subprocess and checks: a non-zero exit, exactly one
stderr line starting with 'error:', no 'Traceback' anywhere, and every existing checkpoint
file byte-identical afterwards. Most cases fail at config or data validation, before any
compile; one real 2-step checkpoint per module serves the resume and eval cases.
"""
import hashlib
import json
import os
import shutil
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_entry

TINY = ("--config=tests/tiny_config.py", "--config.mesh.data=-1")


def _run(args):
  return run_entry(args, timeout=300)


def _hashes(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Data files, manifests, tokenizers and one trained 2-step workdir (plus damaged copies)."""
  w = tmp_path_factory.mktemp("world")
  rng = np.random.RandomState(0)
  for i in range(8):
    Image.fromarray(rng.randint(0, 255, (16, 16, 3), np.uint8)).save(w / f"img{i}.png")
  (w / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  (w / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
  (w / "clip.txt").write_text("not a video")
  (w / "bad.npy").write_bytes(b"\x93NUMPY garbage")
  with wave.open(str(w / "ok.wav"), "wb") as f:
    f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
    f.writeframes(np.zeros(1600, np.int16).tobytes())
  good = [{"image": f"img{i}.png", "caption": f"photo {i}", "label": i % 2} for i in range(8)]
  m = {
      "good": good,
      "bad_json": good[:3] + ['{"image": "img3.png", "caption": '] + good[4:],
      "missing_image": good[:7] + [{"image": "nope.png", "caption": "x", "label": 0}],
      "corrupt_image": [dict(r, image="bad.png") for r in good],
      "empty": [],
      "mixed_keys": good[:4] + [{"image": r["image"], "caption": "x"} for r in good[4:]],
      "label_not_int": [dict(r, label="cat") for r in good],
      "label_float": [dict(r, label=0.5) for r in good],
      "unknown_key": [dict(r, imgae="img0.png") for r in good],
      "not_object": good[:2] + ["[1, 2, 3]"] + good[3:],
      "missing_audio": [{"audio": "nope.wav", "caption": "x"}] * 8,
      "corrupt_audio": [{"audio": "bad.wav", "caption": "x"}] * 8,
      "audio_format": [{"audio": "clip.txt", "caption": "x"}] * 8,
      "video_format": [{"video": "clip.txt", "caption": "x"}] * 8,
      "corrupt_video": [{"video": "bad.npy", "caption": "x"}] * 8,
  }
  for name, rows in m.items():
    _jsonl(w / f"{name}.jsonl", rows)
  (w / "garbage_tokenizer.json").write_text("{this is not json")
  (w / "garbage.model").write_bytes(b"\x00\x01 not a sentencepiece model")
  (w / "afile").write_text("a file, not a folder")
  (w / "empty_dir").mkdir()
  (w / "empty_tfds").mkdir()
  run = w / "run"
  r = _run(["train.py", *TINY, f"--workdir={run}", "--config.total_steps=2",
            "--config.checkpoint.async_save=false"])
  assert r.returncode == 0, r.stderr[-3000:]
  steps = sorted(os.listdir(run / "checkpoints"))
  assert steps == ["2"], steps
  step = run / "checkpoints" / "2"
  # A truncated file inside the step directory (the largest array file of the state).
  trunc = w / "trunc"
  shutil.copytree(run, trunc)
  files = [os.path.join(d, f) for d, _, fs in os.walk(trunc / "checkpoints" / "2" / "state")
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 3)
  no_state = w / "no_state"
  shutil.copytree(run, no_state)
  shutil.rmtree(no_state / "checkpoints" / "2" / "state")
  no_config = w / "no_config"
  shutil.copytree(run, no_config)
  shutil.rmtree(no_config / "checkpoints" / "2" / "config")
  assert step.is_dir()
  return w


def _train(*extra):
  return lambda w: ["train.py", *TINY, f"--workdir={w / 'new'}", *extra]


def _resume(workdir, *extra):
  return lambda w: ["train.py", *TINY, f"--workdir={w / workdir}", "--config.total_steps=4",
                    *extra]


def _jsonl_train(name, *extra):
  return lambda w: ["train.py", *TINY, f"--workdir={w / 'new'}", "--config.data.source=jsonl",
                    f"--config.data.jsonl_path={w / (name + '.jsonl')}", *extra]


def _tok(spec):
  return lambda w: ["train.py", *TINY, f"--workdir={w / 'new'}",
                    f"--config.data.tokenizer={spec.format(w=w)}"]


def _eval(*extra):
  return lambda w: ["eval.py", *[e.format(w=w) for e in extra]]


def _convert(*extra):
  return lambda w: ["-m", "mmjax.convert", *[e.format(w=w) for e in extra]]


# (case id, argv builder, a substring (or a tuple of them) the error line must hold, any case)
CASES = [
    # config: unknown keys at each level
    ("unknown_top_key", _train("--config.bogus=1"), "bogus"),
    ("unknown_model_key", _train("--config.model.widht=64"), "widht"),
    ("unknown_depth_key", _train("--config.model.depth.middle=1"), "middle"),
    ("unknown_modality_option", _train("--config.model.modalities.image.pach=4"), "pach"),
    ("unknown_data_key", _train("--config.data.sorce=jsonl"), "sorce"),
    ("unknown_flag", _train("--bogus_flag=1"), "bogus_flag"),
    ("missing_workdir", lambda w: ["train.py", *TINY], "workdir"),
    ("missing_config_file", lambda w: ["train.py", "--config=configs/nope.py",
                                       f"--workdir={w / 'new'}"], "nope.py"),
    # config: bad values
    ("width_not_int", _train("--config.model.width=wide"), "wide"),
    ("bool_not_bool", _train("--config.checkpoint.async_save=maybe"), "maybe"),
    ("heads_do_not_divide", _train("--config.model.heads=5"), "heads"),
    ("unknown_fusion", _train("--config.model.fusion=late_fusion"),
     "error: unknown model.fusion='late_fusion'"),
    ("itm_with_dual_encoder", _train("--config.model.fusion=dual_encoder"), "itm"),
    ("early_sum_unaligned", _train("--config.model.fusion=early_sum",
                                   "--config.loss_weights.contrastive=0.0"), "early_sum"),
    ("unknown_modality_kind", _train("--config.model.modalities.image.kind=picture"),
     "picture"),
    ("bad_dtype", _train("--config.model.dtype=float17"), "float17"),
    ("bad_nan_policy", _train("--config.nan_policy=ignore"), "nan_policy"),
    ("bad_freeze", _train("--config.freeze=sound"), "freeze"),
    ("attention_flashy", _train("--config.attention.impl=flashy"), "flashy"),
    ("attention_cudnn_float32", _train("--config.attention.impl=cudnn"), "cudnn"),
    # mesh
    ("mesh_too_big", _train("--config.mesh.data=4"), "mesh"),
    ("batch_not_divisible_by_accum", _train("--config.grad_accum_steps=3"), "batch_size"),
    ("bad_accum_negatives", _train("--config.grad_accum_negatives=all"), "grad_accum_negatives"),
    ("patch_dropout_out_of_range", _train("--config.model.patch_dropout=1.5"), "patch_dropout"),
    # data config, tokenizers, TFDS
    ("unknown_data_source", _train("--config.data.source=nope"), "source"),
    ("text_len_too_small", _train("--config.data.text_len=1"), "text_len"),
    ("vocab_too_small", _train("--config.model.modalities.text.vocab_size=100"), "vocab_size"),
    ("tokenizer_missing", _tok("hf:{w}/nope/tokenizer.json"), "not found"),
    ("tokenizer_corrupt_hf", _tok("hf:{w}/garbage_tokenizer.json"), "tokenizer"),
    ("tokenizer_corrupt_spm", _tok("sentencepiece:{w}/garbage.model"), "garbage.model"),
    ("tokenizer_unknown_spec", _tok("wordpiece"), "wordpiece"),
    ("tfds_dir_missing", _train("--config.data.source=tfds", "--config.data.tfds_name=x",
                                "--config.data.tfds_data_dir=/nonexistent/tfds"), "tfds"),
    ("tfds_dataset_missing", lambda w: _train(
        "--config.data.source=tfds", "--config.data.tfds_name=not_a_set",
        f"--config.data.tfds_data_dir={w / 'empty_tfds'}")(w), "not_a_set"),
    # manifests
    ("manifest_missing", _jsonl_train("no_such_manifest"), "not found"),
    ("manifest_bad_json", _jsonl_train("bad_json"), "line 4"),
    ("manifest_missing_image", _jsonl_train("missing_image"), "nope.png"),
    ("manifest_corrupt_image", _jsonl_train("corrupt_image"), "bad.png"),
    ("manifest_empty", _jsonl_train("empty"), "no examples"),
    ("manifest_mixed_keys", _jsonl_train("mixed_keys"), "mixes"),
    ("manifest_label_not_int", _jsonl_train("label_not_int"), "label"),
    ("manifest_unknown_key", _jsonl_train("unknown_key"), "imgae"),
    ("manifest_not_object", _jsonl_train("not_object"), "line 3"),
    ("manifest_missing_audio", _jsonl_train("missing_audio"), "nope.wav"),
    ("manifest_corrupt_audio", _jsonl_train("corrupt_audio"), "bad.wav"),
    ("manifest_video_format", _jsonl_train("video_format"), "clip.txt"),
    ("manifest_corrupt_video", _jsonl_train("corrupt_video"), "bad.npy"),
    # shards and folders
    ("wds_no_shards", _train("--config.data.source=wds"), "wds_shards"),
    ("wds_shard_missing", lambda w: _train("--config.data.source=wds",
                                           f"--config.data.wds_shards={w}/s-{{000..003}}.tar")(w),
     "shard not found"),
    ("wds_not_a_tar", lambda w: _train("--config.data.source=wds",
                                       f"--config.data.wds_shards={w / 'afile'}")(w),
     "not a readable tar"),
    ("wds_bad_shard_assign", _train("--config.data.source=wds", "--config.data.wds_shards=x.tar",
                                    "--config.data.shard_assign=hosts"), "shard_assign"),
    ("folder_missing", _train("--config.data.source=folder",
                              "--config.data.folder_path=/nonexistent/in1k"), "not found"),
    # workdirs and checkpoints
    ("workdir_is_a_file", lambda w: ["train.py", *TINY, f"--workdir={w / 'afile'}"],
     "is a file"),
    ("resume_changed_width", _resume("run", "--config.model.width=64"), "model.width"),
    ("resume_changed_depth", _resume("run", "--config.model.depth.unimodal=2"),
     "model.depth.unimodal"),
    ("resume_changed_fusion", _resume("run", "--config.model.fusion=early_concat"),
     "model.fusion"),
    ("resume_truncated_file", _resume("trunc"), "corrupt"),
    ("resume_missing_state", _resume("no_state"), "corrupt"),
    ("init_from_missing", _train("--config.init_from=/nonexistent/run"), "init_from"),
    ("init_from_a_file", lambda w: _train(f"--config.init_from={w / 'afile'}")(w), "init_from"),
    ("eval_truncated_file", _eval("--workdir={w}/trunc"), "corrupt"),
    ("eval_missing_config", _eval("--workdir={w}/no_config"), "config"),
    ("eval_missing_state", _eval("--workdir={w}/no_state"), "corrupt"),
    ("eval_checkpoint_missing", _eval("--checkpoint={w}/nope/checkpoints/5"), "does not exist"),
    ("eval_workdir_is_a_file", _eval("--workdir={w}/afile"), "afile"),
    ("eval_no_target", _eval(), "--workdir"),
    ("eval_empty_workdir", _eval("--workdir={w}/empty_dir"), ("no checkpoint in", "train first")),
    ("eval_unknown_override", _eval("--workdir={w}/run", "--config.model.widht=1"), "widht"),
    ("eval_unknown_evaluator", _eval("--workdir={w}/run", "--evaluators=nope"), "nope"),
    ("eval_manifest_missing", _eval("--workdir={w}/run", "--config.data.source=jsonl",
                                    "--config.data.jsonl_path={w}/nope.jsonl"), "not found"),
    # converters
    ("convert_hf_missing", _convert("hf", "--src={w}/nope", "--out={w}/conv"), "nope"),
    ("convert_open_clip_missing", _convert("open_clip", "--weights={w}/nope.bin",
                                           "--model=ViT-B-16", "--tokenizer=bytes",
                                           "--out={w}/conv"), "nope.bin"),
    ("convert_open_clip_no_model", _convert("open_clip", "--weights={w}/bad.npy",
                                            "--out={w}/conv"), "--model"),
]


@pytest.mark.parametrize("name,argv,want", CASES, ids=[c[0] for c in CASES])
def test_one_line_error(world, name, argv, want):
  del name
  dirs = [world / d for d in ("run", "trunc", "no_state", "no_config")]
  before = [_hashes(d) for d in dirs]
  r = _run(argv(world))
  both = r.stdout + r.stderr
  assert r.returncode != 0, both[-3000:]
  assert "Traceback" not in both, both[-3000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  for part in want if isinstance(want, tuple) else (want,):
    assert part.lower() in errors[0].lower(), errors[0]
  assert "delete" not in errors[0].lower(), errors[0]
  assert [_hashes(d) for d in dirs] == before, "a checkpoint changed"


def test_nan_before_the_first_save(world):
  r = _run(_train("--config.optimizer.learning_rate=1e30", "--config.optimizer.warmup_steps=1",
                  "--config.optimizer.grad_clip=0.0", "--config.total_steps=6",
                  "--config.checkpoint.every_steps=100")(world))
  both = r.stdout + r.stderr
  assert r.returncode == 1 and "Traceback" not in both, both[-3000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and "no checkpoint saved yet" in errors[0].lower(), r.stderr[-3000:]
  assert "Event loop is closed" not in both


def test_resume_mismatch_names_both_values(world):
  r = _run(_resume("run", "--config.model.width=64")(world))
  line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")][0]
  assert "model.width" in line and "32" in line and "64" in line, line
  assert "--workdir" in line and "delete" not in line, line


def test_failed_restore_noise_is_dropped_and_other_unraisables_are_not(monkeypatch):
  """A failed restore's leftover tensorstore callbacks raise 'Event loop is closed' as
  unraisable exceptions (tracebacks after the one-line error): the hook installed before a
  restore drops those and passes every other one on."""
  import gc  # pylint: disable=import-outside-toplevel
  from mmjax import checkpoint  # pylint: disable=import-outside-toplevel
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  checkpoint._quiet_closed_loop_callbacks()  # pylint: disable=protected-access
  checkpoint._quiet_closed_loop_callbacks()  # pylint: disable=protected-access  (idempotent)

  class Raises:
    def __init__(self, msg):
      self.msg = msg

    def __del__(self):
      raise RuntimeError(self.msg)

  Raises("Event loop is closed")
  Raises("a real bug")
  gc.collect()
  assert seen == ["a real bug"]


@pytest.mark.parametrize("kind", ["Task", "Future"])
def test_orbax_read_task_records_are_dropped_by_their_traceback(kind):
  """asyncio's 'Task (or Future) exception was never retrieved' record for a failed orbax read
  is dropped when only its traceback names orbax (the repr does not always); others pass. A
  Future's record once reached a CI run's terminal as a traceback after the one-line error."""
  import logging  # pylint: disable=import-outside-toplevel
  from mmjax import checkpoint  # pylint: disable=import-outside-toplevel

  def record(filename, message=f"{kind} exception was never retrieved\nfuture: <{kind} finished>"):
    try:
      exec(compile("raise Exception('read failed')", filename, "exec"))  # pylint: disable=exec-used
    except Exception:  # pylint: disable=broad-except
      info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, "x", 1, message, None, info)
  keep = checkpoint._DropOrbaxReadTasks().filter  # pylint: disable=protected-access
  assert not keep(record("/site-packages/orbax/checkpoint/serialization.py"))
  assert keep(record("/home/user/my_code.py"))
  assert keep(record("/site-packages/orbax/checkpoint/serialization.py", "Unclosed client"))


def test_checkpointer_waits_for_orbax_start_up_cleanup(monkeypatch, tmp_path):
  """orbax cleans unfinished temporary step directories in a background thread when a manager
  opens. A run that stops before its first save (a bad init_from) must not exit with that
  thread alive: at interpreter shutdown it prints 'cannot schedule new futures after
  shutdown'. The Checkpointer returns only once the clean-up has finished."""
  import asyncio  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.path import temporary_paths  # pylint: disable=import-outside-toplevel
  from mmjax import checkpoint  # pylint: disable=import-outside-toplevel
  done = []
  real = temporary_paths.cleanup_temporary_paths

  async def slow_cleanup(*args, **kwargs):
    await asyncio.sleep(0.5)
    await real(*args, **kwargs)
    done.append(True)

  monkeypatch.setattr(temporary_paths, "cleanup_temporary_paths", slow_cleanup)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert done == [True]
  ckpt.close()
