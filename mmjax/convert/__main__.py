"""python -m mmjax.convert {hf,open_clip} ...: see mmjax/convert/__init__.py."""
import argparse
import sys


def main(argv=None) -> int:
  from mmjax import cli, platforms  # pylint: disable=import-outside-toplevel
  platforms.set_default_platforms()  # before jax: no TPU backend on hosts without TPUs
  platforms.apply_cpu_defaults()  # XLA:CPU flag, malloc (docs/process_settings.md)
  return cli.report_user_errors(_main)(argv)


def _main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mmjax.convert",
                              description="Convert a CLIP / SigLIP / SigLIP 2 checkpoint to an mmjax "
                                          "workdir (eval.py --workdir, train.py init_from).")
  sub = p.add_subparsers(dest="format", required=True)
  hf = sub.add_parser("hf", help="a Hugging Face folder (config.json + model.safetensors)")
  hf.add_argument("--src", required=True, help="the folder save_pretrained wrote")
  hf.add_argument("--max_patches", type=int, default=-1,
                  help="SigLIP 2 only: -1 (default) NaFlex at the checkpoint's num_patches, "
                       "0 fixed resolution (square images), N NaFlex at N patches")
  oc = sub.add_parser("open_clip", help="an open_clip state dict")
  oc.add_argument("--weights", required=True, help=".safetensors, .bin or .pt state dict")
  oc.add_argument("--model", default="", help="open_clip model name, e.g. ViT-B-16")
  oc.add_argument("--model_config", default="", help="or an open_clip model-config JSON")
  for s in (hf, oc):
    s.add_argument("--out", required=True, help="the new mmjax workdir")
    s.add_argument("--tokenizer", default="",
                   help="data.tokenizer spec: hf:/path/tokenizer.json or sentencepiece:/path")
  args = p.parse_args(argv)
  from mmjax.convert import common  # pylint: disable=import-outside-toplevel
  if args.format == "hf":
    from mmjax.convert import hf  # pylint: disable=import-outside-toplevel
    config, params = hf.convert(args.src, args.tokenizer, args.max_patches)
    source = f"hf:{args.src}"
  else:
    if not args.model and not args.model_config:
      raise common.ConvertError("pass --model=NAME (e.g. ViT-B-16) or --model_config=FILE")
    from mmjax.convert import open_clip  # pylint: disable=import-outside-toplevel
    config, params = open_clip.convert(args.weights, args.tokenizer, args.model,
                                       args.model_config)
    source = f"open_clip:{args.model or args.model_config}:{args.weights}"
  common.write_workdir(config, params, args.out, source)
  print(f"wrote {args.out}: {common.count(params) / 1e6:.2f}M parameters "
        f"({config.model.fusion}, {config.data.tokenizer})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
