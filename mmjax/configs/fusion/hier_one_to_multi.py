"""hier_one_to_multi on the built-in image-text set, at the size every configs/fusion/ entry shares
(width 128, 4 transformer blocks on each token's path; compare parameters in its summary)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "hier_one_to_multi"
  c.model.depth.update({'unimodal': 1, 'joint': 2, 'post': 1, 'cross': 0})
  return c
