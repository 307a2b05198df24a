"""Public building blocks: the default networks of the families, and layers built on pyprobtf's ops.

- :class:`MLP`, :class:`TimeEmbedding` (Fourier features of a time/noise level, then an MLP),
  :class:`FourierTime`, :class:`FourierFeatures` and :class:`TimeMLP`, the vector field
  ``net(x, t, context=None)`` of the ODE families for vectors;
- :class:`UNet`: a small UNet ``net(x, t, context=None)`` for ``(C, H, W)`` images, the default of the
  ODE families on image shapes;
- :class:`VectorQuantizer`: VQ-VAE's quantizer (nearest code by
  :func:`pyprobtf.ops.vq_nearest`, straight-through gradient, codebook and
  commitment losses, EMA codebook, dead-code replacement, k-means init).
- :class:`ConvEncoder`, :class:`ConvDecoder`: small convolutional networks between ``(C, H, W)`` images
  and a latent (a vector or a channel-first map); the decoder families' image defaults.
- :class:`CausalTransformer`: tokens ``(B, L)`` -> next-token logits ``(B, L, V)``; Autoregressive's default.
"""

from pyprobtf.nn.mlp import MLP, FourierFeatures, FourierTime, TimeEmbedding, TimeMLP
from pyprobtf.nn.unet import UNet
from pyprobtf.nn.vector_quantizer import VectorQuantizer, VQOutput, code_statistics

from pyprobtf.nn.conv import ConvDecoder, ConvEncoder  # noqa: E402
from pyprobtf.nn.transformer import CausalTransformer  # noqa: E402

__all__ = ["MLP", "CausalTransformer", "ConvDecoder", "ConvEncoder", "FourierFeatures", "FourierTime", "TimeEmbedding",
           "TimeMLP", "UNet", "VQOutput", "VectorQuantizer", "code_statistics"]
