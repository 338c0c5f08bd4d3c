"""Command-line helpers shared by train.py, eval.py and the benchmarks."""
from __future__ import annotations

import re
import sys

from absl import flags


def parse_flags(argv):
  """absl flag parsing where a bad flag or --config.KEY=VALUE is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    msg = " ".join(re.sub(r"\\n|[\\'\"]", " ", str(e)).split())
    sys.exit(f"error: bad config override: {msg} (check the key against the config file)")
