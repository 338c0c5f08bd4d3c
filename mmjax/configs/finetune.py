"""Fine-tune (or LiT-train) from an mmjax workdir, e.g. one written by `python -m mmjax.convert`.

  python train.py --config=configs/finetune.py:runs/clip_b16 --workdir=runs/lit \\
      --config.freeze=image --config.data.source=jsonl --config.data.jsonl_path=train.jsonl

get_config(WORKDIR) is the config saved with WORKDIR's latest checkpoint (the architecture
exactly as converted or trained), starting from its parameters (init_from) with a fine-tuning
schedule: lower learning rate, short warm-up. Override anything with --config.KEY=VALUE.
"""
from mmjax import checkpoint as ckpt_lib


def get_config(workdir: str = ""):
  if not workdir:
    raise ValueError("configs/finetune.py needs the workdir to start from: "
                     "--config=configs/finetune.py:runs/clip_b16")
  ckpt, step = ckpt_lib.find_checkpoint(workdir)
  c = ckpt.restore_config(step)
  ckpt.close()
  for key in ("converted_from",):
    if key in c:
      del c[key]
  c.init_from = workdir
  c.total_steps = 1000
  c.batch_size = 64
  c.optimizer.learning_rate = 1e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.1
  c.checkpoint.every_steps = 500
  return c
