"""Public building blocks: the default networks of the families, and layers built on pyprobtf's ops.

- :class:`MLP`, :class:`TimeEmbedding` (Fourier features of a time/noise level, then an MLP),
  :class:`FourierTime`, :class:`FourierFeatures` and :class:`TimeMLP`, the vector field
  ``net(x, t, context=None)`` of the ODE families for vectors;
- :class:`UNet`: a small UNet ``net(x, t, context=None)`` for ``(C, H, W)`` images, the default of the
  ODE families on image shapes;
- :class:`VectorQuantizer`: VQ-VAE's quantizer (nearest code by
  :func:`pyprobtf.ops.vq_nearest`, straight-through gradient, codebook and
  commitment losses, EMA codebook, dead-code replacement, k-means init).
"""

from pyprobtf.nn.mlp import MLP, FourierFeatures, FourierTime, TimeEmbedding, TimeMLP
from pyprobtf.nn.unet import UNet
from pyprobtf.nn.vector_quantizer import VectorQuantizer, VQOutput, code_statistics

__all__ = ["MLP", "FourierFeatures", "FourierTime", "TimeEmbedding", "TimeMLP", "UNet", "VQOutput",
           "VectorQuantizer", "code_statistics"]
