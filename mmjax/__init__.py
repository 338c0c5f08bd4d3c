"""mmjax: multimodal transformers in JAX/Flax, layered as the survey is.

tokenizers -> attention -> layers -> fusion -> models -> objectives -> train_lib.
"""
__version__ = "0.1.0"
