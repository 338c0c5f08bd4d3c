"""Cross-modal interaction (survey Table 2): fusion designs as registered objects.

  early_sum           Z = Tf(sum_m a_m * Z_m)                       aligned tokens only
  early_concat        Z = Tf(C(Z_A, Z_B))                            single stream
  hier_multi_to_one   Z = Tf3(C(Tf1(Z_A), Tf2(Z_B)))
  hier_one_to_multi   (Z_A, Z_B) = split(Tf1(C(Z_A, Z_B))); Z_A = Tf2(Z_A); Z_B = Tf3(Z_B)
  cross_attention     Z_A += MHSA(Q_A, K_B, V_B); Z_B += MHSA(Q_B, K_A, V_A)
  cross_to_concat     the cross-attention streams, then Z = Tf(C(Z_A, Z_B))
  dual_encoder        Z_A = Tf1(Z_A); Z_B = Tf2(Z_B); no interaction (late fusion)
  bottleneck          per layer and modality [Z_m; B_m] = Tf_m([Z_m; B]); B = mean_m B_m (MBT)

One file per family (early.py, hierarchical.py, cross.py, late.py, bottleneck.py), each a
`FusionDesign` subclass registered by name (base.py says what a design declares). A new
design is a subclass with `@register` anywhere: `model.fusion=<its name>` then trains,
evaluates and benchmarks it.
"""
from mmjax.fusion.base import (Fusion, FusionConfig, FusionDesign, Tokens, block_flops,
                               combine_pooled, concat, cross_block_flops, design_of, get, joint_encoder,
                               names, pool_tokens, pool_unimodal, register, split)
from mmjax.fusion import early, hierarchical, cross, late, bottleneck  # noqa: F401  (register)

BUILTIN = names()  # the designs this package ships (a snapshot of the registry at import)

__all__ = ["BUILTIN", "Fusion", "FusionConfig", "FusionDesign", "Tokens", "block_flops", "combine_pooled",
           "concat", "cross_block_flops", "design_of", "get", "joint_encoder", "names", "pool_tokens",
           "pool_unimodal", "register", "split"]
