"""Evaluate a checkpoint on the devices at hand.

  python eval.py --workdir=DIR                 # latest checkpoint of a training run
  python eval.py --checkpoint=DIR/checkpoints/1500 [--evaluators=zero_shot,itm]

Prints a table and writes DIR/eval/results.json (or ./eval/results.json with --checkpoint).
"""
import os
import sys

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint is evaluated).")
flags.DEFINE_string("checkpoint", None, "A checkpoint step directory instead of --workdir.")
flags.DEFINE_list("evaluators", None, "Evaluators to run (default: the config's eval list).")
flags.DEFINE_string("out", None, "Folder for results.json (default: <workdir>/eval).")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator host:port.")
flags.DEFINE_integer("num_processes", None, "Process count (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from mmjax import checkpoint, evaluate  # pylint: disable=import-outside-toplevel
  if not FLAGS.workdir and not FLAGS.checkpoint:
    sys.exit("error: pass --workdir=DIR (a training run) or --checkpoint=DIR/checkpoints/STEP")
  logging.set_verbosity(logging.WARNING)
  try:
    results = evaluate.run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.evaluators)
  except (checkpoint.CheckpointError, ValueError) as e:
    sys.exit(f"error: {e}")
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(evaluate.format_table(results))
    out = FLAGS.out or os.path.join(FLAGS.workdir or ".", "eval")
    print(f"wrote {evaluate.write_results(results, out)}")


if __name__ == "__main__":
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
