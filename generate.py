"""Caption with a trained checkpoint on the devices at hand.

  python generate.py --workdir=DIR                 # the config's test split, beside references
  python generate.py --workdir=DIR --images=FOLDER --beam=4 --out=captions.jsonl

--config.KEY=VALUE overrides a key of the checkpoint's saved config, as in eval.py. Prints one
JSON line per input ({"index" or "file", "reference", "caption"}); mmjax/generate.py documents
the decoding (greedy, beam search, prefix-LM).
"""
import sys

from mmjax import platforms

platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
platforms.apply_cpu_defaults()  # XLA:CPU flags, malloc (before jax starts)

from mmjax import cli, generate  # noqa: E402

if __name__ == "__main__":
  sys.exit(cli.report_user_errors(generate.main)())
