"""eval.py --suite: three local sets (a JSONL manifest with class names, an image folder, and
webdataset shards through a standard eval config) scored in one call on one restore: one
table with a row per set and their mean, one results.json, and each set's numbers equal to
its own eval.py run; the suite file's mistakes are one line."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax import config_lib, eval_suite
from mmjax.data import write
from tests.helpers import run_entry
from tests.test_multi_caption import DEV, init_checkpoint

NAMES = ("red", "green", "blue")
SINGLE = ("step", "fusion", "devices")


def _image(rng, path):
  Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny checkpoint, the three sets on disk, and the suite file naming them."""
  tmp = tmp_path_factory.mktemp("suite")
  workdir = init_checkpoint(str(tmp / "run"))
  rng = np.random.default_rng(0)
  (tmp / "jsonl" / "img").mkdir(parents=True)
  rows = []
  for i in range(12):
    _image(rng, tmp / "jsonl" / "img" / f"{i}.png")
    rows.append({"image": f"img/{i}.png", "caption": f"a {NAMES[i % 3]} thing {i}",
                 "label": i % 3})
  manifest = tmp / "jsonl" / "m.jsonl"
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp / "jsonl" / "names.txt").write_text("\n".join(NAMES) + "\n")
  for c in NAMES:
    (tmp / "folder" / c).mkdir(parents=True)
    for i in range(3):
      _image(rng, tmp / "folder" / c / f"{i}.png")
  (tmp / "caps" / "img").mkdir(parents=True)
  caps = tmp / "caps" / "m.jsonl"
  lines = []
  for i in range(8):  # 1 to 3 captions per image
    _image(rng, tmp / "caps" / "img" / f"{i}.png")
    lines.append(json.dumps({"image": f"img/{i}.png", "caption": [
        f"{NAMES[(i + j) % 3]} photo {i}{j}" for j in range(1 + i % 3)]}) + "\n")
  caps.write_text("".join(lines))
  shards = write.write("jsonl", str(caps), "wds", str(tmp / "wds"), shard_size=3)["pattern"]
  sets = {
      "digits_jsonl": (
          {"data": {"source": "jsonl", "jsonl_path": str(manifest),
                    "class_names": str(tmp / "jsonl" / "names.txt"),
                    "prompt_templates": "simple"},
           "evaluators": ("zero_shot", "retrieval"), "eval": {"batch_size": 8,
                                                               "num_examples": 12}},
          ["--evaluators=zero_shot,retrieval", "--config.data.source=jsonl",
           f"--config.data.jsonl_path={manifest}",
           f"--config.data.class_names={tmp / 'jsonl' / 'names.txt'}",
           "--config.data.prompt_templates=simple", "--config.eval.batch_size=8",
           "--config.eval.num_examples=12"]),
      "colours_folder": (
          {"data": {"source": "folder", "folder_path": str(tmp / "folder"),
                    "prompt_templates": "simple"}, "evaluators": "zero_shot"},
          ["--evaluators=zero_shot", "--config.data.source=folder",
           f"--config.data.folder_path={tmp / 'folder'}",
           "--config.data.prompt_templates=simple"]),
      "captions_wds": (
          {"eval_config": f"configs/flickr30k_retrieval.py:wds={shards}",
           "eval": {"num_examples": 8}},
          [f"--eval_config=configs/flickr30k_retrieval.py:wds={shards}",
           "--config.eval.num_examples=8"])}
  suite = tmp / "suite.py"
  suite.write_text("def get_config():\n  return {'sets': [\n" + "".join(
      f"      dict(name={name!r}, **{entry!r}),\n" for name, (entry, _) in sets.items())
      + "  ]}\n")
  return tmp, workdir, str(suite), sets


def _table(stdout):
  """The printed table as {row: {column: float}} (blank cells left out), by column ends."""
  lines = stdout.splitlines()
  at = next(i for i, ln in enumerate(lines) if ln.startswith("set "))
  header = lines[at]
  cols, ends, pos = [], [], 0
  for name in header.split()[1:]:
    pos = header.index(name, pos) + len(name)
    cols.append(name)
    ends.append(pos)
  out = {}
  for ln in lines[at + 1:]:
    if ":" in ln or ln.startswith("wrote"):
      break
    starts = [len(ln.split()[0])] + ends[:-1]
    cells = [ln[s:e].strip() for s, e in zip(starts, ends)]
    out[ln.split()[0]] = {c: float(v) for c, v in zip(cols, cells) if v}
  return out


def test_suite_of_three_sets_in_one_call(world):
  tmp, workdir, suite, sets = world
  r = run_entry(["eval.py", f"--workdir={workdir}", f"--suite={suite}", f"--out={tmp / 'out'}"])
  assert r.returncode == 0, r.stderr[-3000:]
  table = _table(r.stdout)
  assert list(table) == [*sets, "mean"], r.stdout
  res = json.load(open(tmp / "out" / "results.json"))
  assert set(res) == {"step", "fusion", "devices", "sets", "mean"} and res["step"] == 0
  assert list(res["sets"]) == list(sets)
  # one column per float metric; blank where a set has none
  assert "zero_shot/accuracy" not in table["captions_wds"]
  assert "retrieval/a2b_R@1" not in table["colours_folder"]
  assert res["sets"]["captions_wds"]["retrieval/captions"] == 15
  for col, v in res["mean"].items():
    have = [s[col] for s in res["sets"].values() if col in s]
    assert v == pytest.approx(np.mean(have)) and len(have) >= 1, col
    assert table["mean"][col] == pytest.approx(v, abs=5e-5), col
    for name in sets:
      if col in res["sets"][name]:
        assert table[name][col] == pytest.approx(res["sets"][name][col], abs=5e-5)
  assert sum("zero_shot/accuracy" in s for s in res["sets"].values()) == 2
  # each set alone through eval.py: the same numbers (restoring once changes nothing)
  for name, (_, args) in sets.items():
    out = tmp / f"alone_{name}"
    alone = run_entry(["eval.py", f"--workdir={workdir}", f"--out={out}", *args])
    assert alone.returncode == 0, alone.stderr[-3000:]
    one = json.load(open(out / "results.json"))
    assert {k: v for k, v in one.items() if k not in SINGLE} == res["sets"][name], name


@pytest.mark.parametrize("case,needle", [
    ("missing", "suite file nowhere.py not found"),
    ("evaluators", "--suite does not combine with --evaluators"),
    ("no_data", "set 'broken': JSONL manifest not found: /no/such.jsonl"),
    ("typo", "set 'broken': unknown config key data.clas_names (did you mean "
             "data.class_names?)")])
def test_eval_py_suite_errors_are_one_line(world, case, needle):
  tmp, workdir, suite, _ = world
  bad = {"no_data": "{'source': 'jsonl', 'jsonl_path': '/no/such.jsonl'}",
         "typo": f"{{'source': 'folder', 'folder_path': {str(tmp / 'folder')!r}, "
                 "'clas_names': 'a,b,c'}"}
  path = suite
  if case in bad:
    path = tmp / f"{case}.py"
    path.write_text("def get_config():\n  return {'sets': [dict(name='fine', data=dict("
                    f"source='folder', folder_path={str(tmp / 'folder')!r})), "
                    f"dict(name='broken', data={bad[case]})]}}\n")
  args = {"missing": ["--suite=nowhere.py"],
          "evaluators": [f"--suite={suite}", "--evaluators=zero_shot"]}.get(
              case, [f"--suite={path}"])
  r = run_entry(["eval.py", f"--workdir={workdir}", *args])
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  errors = [ln for ln in lines if ln.startswith("error:")]
  assert len(errors) == 1 and errors[0] == lines[-1] and needle in errors[0], r.stderr


@pytest.mark.parametrize("sets,needle", [
    ([{"data": {"source": "folder"}}], "set 0 has no name; give it name="),
    ([{"name": "a"}], "set 'a' has no data; give it data=dict("),
    ([{"name": "a", "dat": {}}], "set 'a' has unknown key 'dat' (did you mean data?)"),
    ([{"name": "a", "data": {}, "evaluator": "x"}], "(did you mean evaluators?)"),
    ([{"name": "a", "data": {}, "model": {"width": 8}}],
     "set 'a' sets model keys; the checkpoint is restored once"),
    ([{"name": "a", "data": {}}, {"name": "a", "data": {}}], "two sets are named 'a'"),
    ([{"name": "mean", "data": {}}], "may not be named 'mean'"),
    ([{"name": "a", "eval_config": "configs/coco_retrieval.py"}],
     "set 'a': coco_retrieval needs its copy on disk after the colon"),
    ([], "has no sets")])
def test_suite_file_mistakes_are_one_line(sets, needle):
  with pytest.raises(config_lib.ConfigError) as e:
    eval_suite.parse({"sets": sets}, "s.py")
  assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)
  with pytest.raises(config_lib.ConfigError, match=r"unknown suite key 'set' \(did you mean "
                     r"sets\?\)"):
    eval_suite.parse({"set": sets}, "s.py")


def test_a_set_that_changes_the_model_is_refused(world):
  tmp, workdir, _, _ = world
  folder = {"data.source": "folder", "data.folder_path": str(tmp / "folder"),
            "eval.evaluators": ("zero_shot",)}
  sets = [eval_suite.SuiteSet("plain", folder),
          eval_suite.SuiteSet("pad_5", {**folder, "data.tokenizer_specials": {"pad": 5}})]
  with pytest.raises(config_lib.ConfigError) as e:
    eval_suite.run(workdir, sets=sets, devices=DEV)
  msg = str(e.value)
  assert "\n" not in msg and "set 'pad_5' builds another model than set 'plain'" in msg, msg


def test_mean_and_table_of_hand_made_results():
  per = {"a": {"x/acc": 0.5, "x/examples": 10, "y/R@1": 0.25, "x/method": "m"},
         "b": {"x/acc": 1.0, "y/skipped": "no captions"}}
  avg = eval_suite.mean(per)
  assert avg == {"x/acc": 0.75, "y/R@1": 0.25}  # counts and notes are not averaged
  text = eval_suite.format_table({"step": 3, "fusion": "f", "devices": 1, "sets": per,
                                  "mean": avg})
  assert _table(text) == {"a": {"x/acc": 0.5, "y/R@1": 0.25}, "b": {"x/acc": 1.0},
                          "mean": {"x/acc": 0.75, "y/R@1": 0.25}}
  assert text.splitlines()[-1] == "b: y/skipped no captions"
