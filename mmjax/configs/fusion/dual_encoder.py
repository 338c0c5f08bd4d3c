"""dual_encoder on the built-in image-text set, at the size every configs/fusion/ entry shares
(width 128, 4 transformer blocks on each token's path; compare parameters in its summary)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "dual_encoder"
  c.model.depth.update({'unimodal': 4, 'joint': 0, 'post': 0, 'cross': 0})
  c.loss_weights.itm = 0.0  # no fused representation to match on
  return c
