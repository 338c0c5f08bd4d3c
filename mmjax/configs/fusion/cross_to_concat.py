"""cross_to_concat on the built-in image-text set, at the size every configs/fusion/ entry shares
(width 128, 4 transformer blocks on each token's path; compare parameters in its summary)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "cross_to_concat"
  c.model.depth.update({'unimodal': 1, 'joint': 2, 'post': 0, 'cross': 1})
  return c
