"""The SigLIP 2 recipe on the built-in image-text scenes, at a size a CPU trains.

  python train.py --config=configs/siglip2.py --workdir=runs/siglip2
  python eval.py --workdir=runs/siglip2

Five objectives on one image tower (Tschannen et al., 2025):
  sigmoid  the pairwise sigmoid alignment loss between the towers' embeddings;
  locca    a 2-layer decoder on the un-pooled image tokens: captioning (half the rows in
           parallel, CapPa), referring expressions (a region's caption -> its box as 4
           location tokens) and grounded captions (box -> the region's caption);
  silc     from 80% of training: local crops against the EMA teacher's whole image;
  tips     from 80% of training: masked patches predicting the EMA teacher's patch outputs.
The teacher is the parameters' EMA (optimizer.ema_decay); objectives.starts switches the late
objectives on (a second program is compiled then; a resume across the switch is exact).
"""
import ml_collections

from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.total_steps = 400
  c.model.fusion = "dual_encoder"
  c.model.depth.update({"unimodal": 2, "joint": 0, "post": 0, "cross": 0})
  c.model.decoder_depth = 2
  c.model.loc_bins = 32          # one bin per pixel of the 32 px scenes
  c.model.prototypes = 256
  c.model.objective_heads = ("sigmoid",)  # + the weighted ones (locca, silc, tips)
  c.model.modalities.text.max_len = 48
  c.data.text_len = 48           # two-object captions are <= 44 bytes + [CLS], [SEP]
  c.data.max_objects = 2
  c.data.regions = True          # each object's box and own caption (LocCa's region tasks)
  c.loss_weights = ml_collections.ConfigDict(
      {"sigmoid": 1.0, "locca": 1.0, "silc": 1.0, "tips": 0.25})
  c.objectives.cappa_fraction = 0.5
  c.objectives.starts = {"silc": 320, "tips": 320}
  c.optimizer.ema_decay = 0.99
  c.eval.evaluators = ("zero_shot", "retrieval", "referring", "grounded_caption", "dense_probe")
  c.eval.probe_train_examples = 1000
  c.eval.num_examples = 500
  return c
