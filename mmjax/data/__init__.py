"""Data layer: built-in synthetic multimodal tasks, TFDS / JSONL / folder / shard sources, grain.

  config.py    get_config(): every data key with its default; resolve() validates
  text.py      tokenizers: bytes (default), sentencepiece:PATH, hf:PATH
  builtin.py   image_text / video_text / audio_text / audio_video, generated per index
  sources.py   TfdsSource (ArrayRecord, no TensorFlow), JsonlSource (manifest), FolderSource
  shards.py    webdataset tar / ArrayRecord shards: brace patterns, tar index, member decoding
  write.py     python -m mmjax.data.write: a manifest or image folder -> wds / ArrayRecord shards
  decode.py    image / video / audio decoding and preprocessing of external examples
  audio.py     WAV I/O and numpy log-mel
  pipeline.py  make_dataset (grain, per-process shards, checkpointable), to_global_arrays
  standard.py  standard evaluation sets: eval.py --eval_config, Karpathy JSON -> JSONL
  imagenet_classes.py  CLIP's 1000 ImageNet class names, in label (sorted-wnid) order

Submodules are imported explicitly (`from mmjax.data import pipeline`); this file imports
nothing, so `mmjax.data.text` stays cheap to import.
"""
