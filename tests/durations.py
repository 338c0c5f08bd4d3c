"""Where the suite's time goes: wall and compile seconds per test and per file.

tests/conftest.py records every test (setup, call and teardown) into one JSON-lines file per
xdist worker under $MMJAX_DURATIONS_DIR (make test sets it); compile seconds are XLA backend
compiles in the test's own process (a compile served by the persistent cache counts only its
load), not in the subprocesses it starts.

  python -m tests.durations             # the 25 slowest tests of the last run (make test prints it)
  python -m tests.durations --write     # tests/durations.json + docs/test_durations.md (make durations)

tests/durations.json also orders the files for the next run, longest first. A test over
LIMIT_S seconds states why on a comment line `# over 60 s: <reason>` right above its `def`
(tests/test_durations.py holds the suite to that); the report shows the reason.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "durations.json"
REPORT = ROOT / "docs" / "test_durations.md"
DEFAULT_DIR = ROOT / ".pytest_cache" / "mmjax-durations"
LIMIT_S = 60.0
_compile = {"seconds": 0.0, "count": 0}


def reasons() -> dict[str, str]:
  """{'tests/test_x.py::test_name': reason} from `# over 60 s: reason` comments above a def."""
  out = {}
  for path in sorted((ROOT / "tests").glob("test_*.py")):
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
      m = re.match(r"\s*# over 60 s: (.+)", line)
      if not m:
        continue
      why, j = [m.group(1).strip()], i + 1
      while j < len(lines) and lines[j].lstrip().startswith(("#", "@")):
        if lines[j].lstrip().startswith("#"):  # the reason goes on over comment lines
          why.append(lines[j].lstrip()[1:].strip())
        j += 1
      d = re.match(r"\s*def (test_\w+)", lines[j]) if j < len(lines) else None
      if d:
        out[f"tests/{path.name}::{d.group(1)}"] = " ".join(why)
  return out


def test_functions() -> set[str]:
  """Every 'tests/test_x.py::test_name' defined in the test files now."""
  out = set()
  for path in sorted((ROOT / "tests").glob("test_*.py")):
    for m in re.finditer(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M):
      out.add(f"tests/{path.name}::{m.group(1)}")
  return out


def cpu_name() -> str:
  """The processor's model name and widest vector ISA (mmjax.perf.processor)."""
  from mmjax.perf import processor  # pylint: disable=import-outside-toplevel  (imports jax)
  return processor() or "an unknown processor"


def base_name(nodeid: str) -> str:
  """'tests/t.py::test_x[param]' -> 'tests/t.py::test_x'."""
  return nodeid.split("[")[0]


def listen_for_compiles() -> None:
  import jax.monitoring  # pylint: disable=import-outside-toplevel

  def on_duration(event, duration, **kwargs):
    del kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      _compile["seconds"] += duration
      _compile["count"] += 1
  jax.monitoring.register_event_duration_secs_listener(on_duration)


@contextlib.contextmanager
def record(nodeid: str):
  """Times one test; appends {test, wall, compile, compiles} to this worker's file."""
  out = os.environ.get("MMJAX_DURATIONS_DIR")
  t, c, n = time.perf_counter(), _compile["seconds"], _compile["count"]
  try:
    yield
  finally:
    if out:
      row = {"test": nodeid, "wall": round(time.perf_counter() - t, 2),
             "compile": round(_compile["seconds"] - c, 2), "compiles": _compile["count"] - n}
      os.makedirs(out, exist_ok=True)
      name = os.environ.get("PYTEST_XDIST_WORKER", "main")
      with open(os.path.join(out, f"{name}.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def file_order(files: list[str]) -> dict[str, int]:
  """Rank of each test file, longest recorded wall time first; files not yet recorded go first
  (their cost is unknown, and a long one started last is what this ordering avoids)."""
  known = json.loads(RECORD.read_text())["files"] if RECORD.exists() else {}
  unique = sorted(set(files), key=lambda f: (f in known, -known.get(f, {}).get("wall", 0), f))
  return {f: i for i, f in enumerate(unique)}


def load_rows(folder: str | os.PathLike) -> list[dict]:
  rows = {}
  for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        rows[row["test"]] = row
  return list(rows.values())


def per_file(rows: list[dict]) -> dict[str, dict]:
  files = collections.defaultdict(lambda: {"tests": 0, "wall": 0.0, "compile": 0.0})
  for r in rows:
    f = files[r["test"].split("::")[0]]
    f["tests"] += 1
    f["wall"] += r["wall"]
    f["compile"] += r["compile"]
  return {k: {"tests": v["tests"], "wall": round(v["wall"], 1), "compile": round(v["compile"], 1)}
          for k, v in sorted(files.items(), key=lambda kv: -kv[1]["wall"])}


def slowest(rows: list[dict], n: int) -> list[dict]:
  return sorted(rows, key=lambda r: -r["wall"])[:n]


def report(rows: list[dict], reasons: dict[str, str]) -> str:
  files = per_file(rows)
  total_wall = sum(r["wall"] for r in rows)
  total_compile = sum(r["compile"] for r in rows)
  lines = [
      "# Test durations", "",
      "Written by `make durations` (a full `make test`, then `python -m tests.durations "
      "--write`). Wall seconds per test include setup and teardown; compile seconds are XLA "
      "compiles in the test's own process (subprocesses not counted). The two xdist workers "
      "run side by side, so the suite's elapsed time is about half the summed wall time. "
      "Tests over 60 s give their reason beside them (`# over 60 s:` above the def).", "",
      f"{len(rows)} tests; summed wall {total_wall:.0f} s; summed in-process compile "
      f"{total_compile:.0f} s; recorded on {cpu_name()}, {os.cpu_count()} cores.", "",
      "## Slowest 25 tests", "",
      "| test | wall s | compile s | why it takes this long |", "|---|---:|---:|---|"]
  for r in slowest(rows, 25):
    why = reasons.get(base_name(r["test"]), "") if r["wall"] > LIMIT_S else ""
    lines.append(f"| `{r['test']}` | {r['wall']:.1f} | {r['compile']:.1f} | {why} |")
  lines += ["", "## Per file", "", "| file | tests | wall s | compile s |", "|---|---:|---:|---:|"]
  for f, v in files.items():
    lines.append(f"| `{f}` | {v['tests']} | {v['wall']:.1f} | {v['compile']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  folder = os.environ.get("MMJAX_DURATIONS_DIR", str(DEFAULT_DIR))
  rows = load_rows(folder)
  if not rows:
    print(f"no durations recorded under {folder}")
    return 0
  print(f"slowest 25 of {len(rows)} tests (wall s, in-process compile s):")
  for r in slowest(rows, 25):
    print(f"  {r['wall']:7.1f} {r['compile']:7.1f}  {r['test']}")
  if "--write" in argv:
    RECORD.write_text(json.dumps({"files": per_file(rows),
                                  "tests": {r["test"]: [r["wall"], r["compile"]]
                                            for r in sorted(rows, key=lambda r: r["test"])}},
                                 indent=1) + "\n")
    REPORT.write_text(report(rows, reasons()))
    print(f"wrote {RECORD.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
