"""Sentinel values shared by every attention backend (mmjax.attention and the Pallas kernels).

MASK_VALUE  logit of a masked (query, key) pair: finite, so a row whose keys are all masked
            never turns into NaN, and far below any real logit, so its softmax weight is 0
            wherever the row has a valid key.
KV_PAD_ID   segment id of padded / masked keys.
Q_PAD_ID    segment id of query rows padded to a chunk or block multiple; no query matches a
            padded key. User segment ids must be > Q_PAD_ID (any non-negative id is fine).
"""
import jax.numpy as jnp

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
KV_PAD_ID = int(jnp.iinfo(jnp.int32).min)
Q_PAD_ID = int(jnp.iinfo(jnp.int32).min) + 1
