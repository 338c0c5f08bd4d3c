"""Pretraining objectives (survey Table 3): the losses as pure functions, and the registered
objectives that build their heads and compute their inputs from one shared pass.

  losses.py      every loss on arrays: contrastive_loss, sigmoid_loss, mlm_loss, mim_loss,
                 itm_loss, caption_loss, order_loss, mrc_loss, mrfr_loss, combine_losses
  base.py        Objective, the registry, SharedPass, pretraining_outputs / pretraining_loss
  alignment.py   contrastive, sigmoid          matching.py    itm
  describing.py  caption, prefix_lm            ordering.py    frame_order, sentence_order
  regions.py     mrc, mrfr                     masked.py      mlm, mim
  localization.py  locca                       distillation.py  silc, tips

A new objective is one file: subclass `Objective`, decorate it with `@register`
(tests/test_custom_objective.py trains one through train.py).
"""
from mmjax.objectives.losses import (AxisName, LossAndMetrics, Metrics, caption_loss,  # noqa: F401
                                     combine_losses, contrastive_loss, global_loss, itm_loss,
                                     mim_loss, mlm_loss, mrc_loss, mrfr_loss, order_loss,
                                     self_distillation_loss, sigmoid_loss)
from mmjax.objectives.base import (CachedRun, Objective, SharedPass, batch_keys,  # noqa: F401
                                   capability, check, check_weights, default_heads, dense,
                                   extra_heads, get, needs_teacher, teacher_outputs,
                                   layer_norm, streams,
                                   losses_from_outputs, names, per_modality,
                                   pretraining_loss, pretraining_outputs, pretraining_outputs_of,
                                   register, registered)
# The built-in objectives, in loss order (registration order).
from mmjax.objectives import (alignment, matching, describing, localization,  # noqa: F401,E402
                              ordering, regions, masked, distillation)
from mmjax.objectives.alignment import MULTI_POSITIVE, positive_keys  # noqa: F401,E402

BUILTIN = names()
