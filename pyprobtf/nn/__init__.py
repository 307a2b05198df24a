"""Layers built on pyprobtf's ops.

- :class:`VectorQuantizer`: VQ-VAE's quantizer (nearest code by
  :func:`pyprobtf.ops.vq_nearest`, straight-through gradient, codebook and
  commitment losses, EMA codebook, dead-code replacement, k-means init).
- :class:`ConvEncoder`, :class:`ConvDecoder`: small convolutional networks between ``(C, H, W)`` images
  and a latent (a vector or a channel-first map); the decoder families' image defaults.
- :class:`CausalTransformer`: tokens ``(B, L)`` -> next-token logits ``(B, L, V)``; Autoregressive's default.
"""

from pyprobtf.nn.vector_quantizer import VectorQuantizer, VQOutput, code_statistics

__all__ = ["VQOutput", "VectorQuantizer", "code_statistics"]
from pyprobtf.nn.conv import ConvDecoder, ConvEncoder  # noqa: E402
from pyprobtf.nn.transformer import CausalTransformer  # noqa: E402

__all__ += ["CausalTransformer", "ConvDecoder", "ConvEncoder"]
