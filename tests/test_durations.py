"""The durations record (tests/durations.py): every test over 60 s says why, and the files run
longest first."""
import json

from tests import durations


def test_every_test_over_60_s_has_a_reason_beside_it():
  record = json.loads(durations.RECORD.read_text())["tests"]
  why = durations.reasons()
  slow = sorted({durations.base_name(t) for t, (wall, _) in record.items()
                 if wall > durations.LIMIT_S} & durations.test_functions())
  missing = [t for t in slow if t not in why]
  assert not missing, (f"tests over {durations.LIMIT_S:.0f} s need a '# over 60 s: <reason>' "
                       f"comment above their def: {missing}")


def test_reasons_are_read_from_the_comment_above_the_def(tmp_path, monkeypatch):
  (tmp_path / "tests").mkdir()
  (tmp_path / "tests" / "test_x.py").write_text(
      "# over 60 s: trains\n# twice\n@decorator\ndef test_slow():\n  pass\n\n"
      "# a plain comment\ndef test_fast():\n  pass\n")
  monkeypatch.setattr(durations, "ROOT", tmp_path)
  assert durations.reasons() == {"tests/test_x.py::test_slow": "trains twice"}


def test_longest_files_first_and_new_files_before_known_ones(tmp_path, monkeypatch):
  record = tmp_path / "durations.json"
  record.write_text(json.dumps({"files": {"tests/a.py": {"wall": 5.0},
                                          "tests/b.py": {"wall": 50.0}}}))
  monkeypatch.setattr(durations, "RECORD", record)
  order = durations.file_order(["tests/a.py", "tests/b.py", "tests/new.py", "tests/a.py"])
  assert sorted(order, key=order.get) == ["tests/new.py", "tests/b.py", "tests/a.py"]


def test_per_file_sums_and_slowest():
  rows = [{"test": "tests/a.py::t1", "wall": 1.0, "compile": 0.5},
          {"test": "tests/a.py::t2", "wall": 2.0, "compile": 1.0},
          {"test": "tests/b.py::t[x]", "wall": 9.0, "compile": 0.0}]
  files = durations.per_file(rows)
  assert list(files) == ["tests/b.py", "tests/a.py"]
  assert files["tests/a.py"] == {"tests": 2, "wall": 3.0, "compile": 1.5}
  assert [r["test"] for r in durations.slowest(rows, 2)] == ["tests/b.py::t[x]", "tests/a.py::t2"]
