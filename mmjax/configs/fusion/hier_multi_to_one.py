"""hier_multi_to_one on the built-in image-text set, at the size every configs/fusion/ entry shares
(width 128, 4 transformer blocks on each token's path; compare parameters in its summary)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "hier_multi_to_one"
  c.model.depth.update({'unimodal': 2, 'joint': 2, 'post': 0, 'cross': 0})
  return c
