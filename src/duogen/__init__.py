"""duogen: multimodal next-token models and latent diffusion over one codec, compared fairly.

The package import is kept light: subpackages import torch, transformers and
friends only when they are used.
"""

__version__ = "0.1.0"
