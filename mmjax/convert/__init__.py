"""Import published dual encoders (CLIP, SigLIP, SigLIP 2) into mmjax workdirs.

  python -m mmjax.convert hf --src=DIR --out=WORKDIR [--tokenizer=SPEC] [--max_patches=N]
  python -m mmjax.convert open_clip --model=ViT-B-16 --weights=FILE --tokenizer=SPEC --out=W

One module per source format (hf.py: Hugging Face folders, SigLIP 2 as NaFlex or at fixed
resolution; open_clip.py: open_clip state dicts); common.py holds the config of the architecture, the layout changes and the writer.
The workdir holds step 0 (the converted parameters, a fresh optimizer state) and the config,
so `eval.py --workdir=W` evaluates it and `train.py --config.init_from=W` starts from it.
"""
from mmjax.convert.common import ConvertError, write_workdir  # noqa: F401
