"""Train (or resume) a multimodal transformer.

  python train.py --config=configs/default.py --workdir=runs/default [--config.KEY=VALUE ...]

Rerunning on a workdir resumes from its latest committed checkpoint. Multi-host: pass
--coordinator/--num_processes/--process_id (or MMJAX_COORDINATOR, ...), or run on a TPU pod
or under SLURM, where jax.distributed starts by itself.
"""
from mmjax import platforms

platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
platforms.apply_cpu_defaults()  # before jax: XLA:CPU flag, malloc (docs/process_settings.md)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and TensorBoard go.")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator host:port.")
flags.DEFINE_integer("num_processes", None, "Process count (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from mmjax import cli, config_lib  # pylint: disable=import-outside-toplevel  (no jax)
  config = cli.config_value(_CONFIG)
  if not config.get("imports"):  # a plugin may register what the config names
    config_lib.parse(config)  # a bad key or value: one line before jax is even imported
  from mmjax import sharding  # pylint: disable=import-outside-toplevel
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from mmjax import trainer  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)
  trainer.train(config, FLAGS.workdir)


if __name__ == "__main__":
  from mmjax import cli  # pylint: disable=import-outside-toplevel
  app.run(cli.report_user_errors(main), flags_parser=cli.parse_flags)
