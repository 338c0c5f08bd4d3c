"""Evaluate a checkpoint on the devices at hand.

  python eval.py --workdir=DIR                 # latest checkpoint of a training run
  python eval.py --checkpoint=DIR/checkpoints/1500 [--evaluators=zero_shot,itm]
  python eval.py --workdir=DIR --config.data.source=jsonl --config.data.jsonl_path=m.jsonl \
      --config.data.class_names=names.txt --config.eval.batch_size=50

--config.KEY=VALUE overrides a key of the checkpoint's saved config (the value takes the key's
type), so a checkpoint can be evaluated on another dataset, batch size or mesh.
--eval_config=FILE[:ARG] applies a standard set's data / eval keys first (mmjax/data/standard.py):
  python eval.py --workdir=DIR --eval_config=configs/coco_retrieval.py:tfds=~/tensorflow_datasets
--suite=FILE[:ARG] scores several sets on one restore (mmjax/eval_suite.py: the file's format):
  python eval.py --workdir=DIR --suite=my_suite.py
Prints a table and writes DIR/eval/results.json (or ./eval/results.json with --checkpoint).
"""
import os
import sys

from mmjax import platforms

platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
platforms.apply_cpu_defaults()  # before jax: XLA:CPU flag, malloc (docs/process_settings.md)

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint is evaluated).")
flags.DEFINE_string("checkpoint", None, "A checkpoint step directory instead of --workdir.")
flags.DEFINE_list("evaluators", None, "Evaluators to run (default: the config's eval list).")
flags.DEFINE_string("eval_config", None, "A standard evaluation set: FILE[:ARG], e.g. "
                    "configs/imagenet_zeroshot.py:tfds=DIR (before --config overrides).")
flags.DEFINE_string("suite", None, "A suite file FILE[:ARG] listing several sets (each its data "
                    "and evaluators): one restore, a row per set and their mean.")
flags.DEFINE_string("out", None, "Folder for results.json (default: <workdir>/eval).")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator host:port.")
flags.DEFINE_integer("num_processes", None, "Process count (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
FLAGS = flags.FLAGS
_OVERRIDES = {}  # --config.KEY=VALUE, applied to the checkpoint's config


def main(argv):
  del argv
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from mmjax import evaluate  # pylint: disable=import-outside-toplevel
  if not FLAGS.workdir and not FLAGS.checkpoint:
    sys.exit("error: pass --workdir=DIR (a training run) or --checkpoint=DIR/checkpoints/STEP")
  logging.set_verbosity(logging.WARNING)
  if FLAGS.suite:
    return _suite()
  overrides = dict(_OVERRIDES)
  if FLAGS.eval_config:
    from mmjax.data import standard  # pylint: disable=import-outside-toplevel
    overrides = {**standard.eval_overrides(FLAGS.eval_config), **_OVERRIDES}
  results = evaluate.run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.evaluators,
                         overrides=overrides)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(evaluate.format_table(results))
    out = FLAGS.out or os.path.join(FLAGS.workdir or ".", "eval")
    print(f"wrote {evaluate.write_results(results, out)}")


def _suite():
  """--suite: every set of the suite file on one restored checkpoint, one table."""
  if FLAGS.evaluators or FLAGS.eval_config:
    flag = "--evaluators" if FLAGS.evaluators else "--eval_config"
    sys.exit(f"error: --suite does not combine with {flag}; a suite names each set's "
             "evaluators= and eval_config= in its entry (docs/evaluation.md)")
  from mmjax import eval_suite, evaluate  # pylint: disable=import-outside-toplevel
  results = eval_suite.run(FLAGS.workdir, FLAGS.checkpoint, eval_suite.load(FLAGS.suite),
                           overrides=_OVERRIDES)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(eval_suite.format_table(results))
    out = FLAGS.out or os.path.join(FLAGS.workdir or ".", "eval")
    print(f"wrote {evaluate.write_results(results, out)}")


def _parse(argv):
  from mmjax import cli  # pylint: disable=import-outside-toplevel
  try:
    argv, overrides = cli.split_overrides(argv)
  except ValueError as e:
    sys.exit(f"error: {e}")
  _OVERRIDES.update(overrides)
  return cli.parse_flags(argv)


if __name__ == "__main__":
  from mmjax import cli  # pylint: disable=import-outside-toplevel
  app.run(cli.report_user_errors(main), flags_parser=_parse)
