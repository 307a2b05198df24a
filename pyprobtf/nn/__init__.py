"""Layers built on pyprobtf's ops.

- :class:`VectorQuantizer`: VQ-VAE's quantizer (nearest code by
  :func:`pyprobtf.ops.vq_nearest`, straight-through gradient, codebook and
  commitment losses, EMA codebook, dead-code replacement, k-means init).
"""

from pyprobtf.nn.vector_quantizer import VectorQuantizer, VQOutput, code_statistics

__all__ = ["VQOutput", "VectorQuantizer", "code_statistics"]
