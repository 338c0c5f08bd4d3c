"""bottleneck on the built-in image-text set, at the size every configs/fusion/ entry shares
(width 128, 4 transformer blocks on each token's path; compare parameters in its summary)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "bottleneck"
  c.model.depth.update({'unimodal': 1, 'joint': 3, 'post': 0, 'cross': 0})
  return c
