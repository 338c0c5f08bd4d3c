"""Fusion scaling sweep: how each cross-modal interaction's cost grows with token counts.

  python -m mmjax.bench.fusion [--config=configs/default.py] [--quick] [--out=DIR]
      [--sizes=64,128,256,512,1024] [--batch_size=8] [--timed_steps=3] [--fusions=a,b]
      [--widths=64,128,256] [--depth_scales=1,2,4] [--wd_size=256] [--train=all|both|none]

For every registered fusion design (mmjax.fusion.names(), or --fusions) and every point of a
token sweep (image tokens N_A and text length N_B: both together, and each alone from the
smallest size) it records parameters, forward FLOPs per example (XLA cost analysis, and the
analytic matmul count of fusion_cost.analytic_forward_flops), attention-core FLOPs per example
(sown by every attention, summary.sown_attention_flops_by_path; total and "interaction" =
without the unimodal pre-towers, see below), the survey's cost formula at those token counts
(design.attention_cost), train-step compile time, train-step time (median of --timed_steps
steps on one device, synthetic batch, train_lib's real step) and the train step's compiled
memory (perf.memory_bytes). A second sweep at --wd_size tokens per modality scales the width
(head_dim fixed, MLP 4x width) and every stage depth (x --depth_scales). Writes
fusion_scaling.csv / .json, log-log plots and summary.md to --out, and prints the markdown
tables (fitted exponents beside the survey's cost column; width and depth exponents).

Each point's config is the base config with the design's mmjax/configs/fusion/<name>.py stage
depths and loss weights; a design that ships no config keeps the base's depths, with the loss
weights it cannot serve set to 0 (fusion_sweep.sweep_config).

FLOPs are counted with attention.impl=xla: `auto` picks the chunked kernel for long sequences,
a loop whose body XLA's cost analysis counts once. The train step keeps the config's impl.

Exponents are log-log slopes of attention FLOPs against actual token counts ([CLS] included):
"both" fits against N = N_A + N_B with N_A and N_B doubling together; "N_B" fits against N_B with
N_A fixed. The interaction count leaves out the unimodal towers (`tower_*`) that precede the
interaction in our configs (a prelude, not the design the survey's cost column describes),
except for designs whose towers are the design (`towers_are_design`: dual_encoder,
hier_multi_to_one).

Quick mode: two tiny sizes, width 32, one layer per stage, batch 2.

Modules: fusion_cost (analytic FLOPs, survey cost), fusion_sweep (configs, measure, run),
fusion_report (fits, tables, plots, files); this one is the command line.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a program, not imported: before jax is imported
  from mmjax import platforms  # pylint: disable=import-outside-toplevel
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)

from absl import app, flags
from ml_collections import config_flags

from mmjax.fusion import names
from mmjax.bench.fusion_sweep import measure, run, sweep_config  # noqa: F401  (re-exported)

__all__ = ["measure", "run", "sweep_config"]


def _define_flags():
  """Defined at run time; `config` is shared with mmjax.bench.step (imported by fusion_sweep),
  which defines it on import with the same default."""
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", "configs/default.py", "Base config.",
                                    lock_config=False)
  flags.DEFINE_boolean("quick", False, "Two tiny sizes, width 32, one layer per stage.")
  flags.DEFINE_string("out", "docs/fusion_scaling", "Output directory.")
  flags.DEFINE_list("sizes", None, "Token sizes (default 16,32 quick; 64..1024 full).")
  flags.DEFINE_integer("batch_size", None, "Train-step batch (2 quick, 8 full).")
  flags.DEFINE_integer("timed_steps", None, "Timed steps (median; 2 quick, 3 full).")
  flags.DEFINE_list("fusions", None, "Fusions to sweep (default: every registered design).")
  flags.DEFINE_list("widths", [], "Widths to sweep at --wd_size tokens (head_dim kept, MLP 4x).")
  flags.DEFINE_list("depth_scales", [], "Multipliers of every stage depth, at --wd_size tokens.")
  flags.DEFINE_integer("wd_size", 256, "Tokens per modality of the width/depth sweep.")
  flags.DEFINE_enum("train", None, ["all", "both", "none"],
                    "Which points compile and time the train step (each compile is ~15 s on "
                    "2 loaded CPU cores): all, both (N_A and N_B doubling; full default), none "
                    "(quick default: FLOPs, params only).")


def main(argv):
  del argv
  f = flags.FLAGS
  sizes = [int(s) for s in f.sizes] if f.sizes else None
  unknown = [x for x in f.fusions or () if x not in names()]
  if unknown:
    raise app.UsageError(f"unknown fusion(s) {unknown}; choose from {', '.join(names())}")
  res = run(f.config, f.out, f.quick, sizes, f.batch_size, f.timed_steps, f.fusions,
            f.train, widths=[int(w) for w in f.widths],
            depth_scales=[int(s) for s in f.depth_scales], wd_size=f.wd_size)
  print(res["table"])


if __name__ == "__main__":
  _define_flags()
  from mmjax.cli import parse_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_flags)
