"""Run records of the resumable benchmarks (siglip2_ablation, fusion_grid): one JSON file per
run, read back on the next invocation, written atomically so a killed run leaves no half file."""
from __future__ import annotations

import json
import os
from typing import Any, Optional


def read(path: str) -> Optional[Any]:
  """The JSON at `path`, or None where there is none."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as fh:
    return json.load(fh)


def write(path: str, obj) -> None:
  """obj as JSON at `path` (via path.tmp and a rename), folders created."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as fh:
    json.dump(obj, fh, indent=1)
  os.replace(path + ".tmp", path)
