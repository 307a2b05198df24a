"""Small convolutional encoders and decoders for ``(C, H, W)`` images: the image defaults of the decoder families.

:class:`ConvEncoder` maps images ``(B, C, H, W)`` to a latent of shape ``latent_shape``
(a vector ``(k,)`` or a channel-first map ``(c, h, w)``); :class:`ConvDecoder` maps
such a latent back to images. Both have ``len(channels)`` levels: level ``i`` runs
at resolution ``H / 2^i`` with ``channels[i]`` channels (a 3x3 convolution at
full resolution, then a strided 4x4 convolution per level; the decoder mirrors
it with transposed convolutions), so ``H`` and ``W`` must be divisible by ``2^(len(channels) - 1)``;
a map latent has the last level's resolution.

Example:
    >>> import torch
    >>> enc = ConvEncoder((1, 8, 8), (16,), channels=(16, 32), heads=2)   # a VAE's (mean, log_std)
    >>> mean, log_std = enc(torch.zeros(5, 1, 8, 8))
    >>> mean.shape
    torch.Size([5, 16])
    >>> dec = ConvDecoder((16,), (1, 8, 8), channels=(16, 32))
    >>> dec(mean).shape
    torch.Size([5, 1, 8, 8])
    >>> ConvEncoder((1, 8, 8), (4, 4, 4))(torch.zeros(2, 1, 8, 8)).shape    # a channel-first code map
    torch.Size([2, 4, 4, 4])
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(0.2),
               "elu": nn.ELU}


def _shape(owner: str, name: str, value, length=None) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    ok = isinstance(value, (tuple, list, torch.Size)) and len(value) > 0 and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in value)
    if not ok or (length is not None and len(value) not in length):
        want = " or ".join(f"{n}" for n in length) if length else "1 or more"
        raise ValueError(f"{owner}: `{name}` must be a tuple of {want} positive ints; got {value!r}")
    return tuple(int(d) for d in value)


def _check_layout(owner: str, image_shape, latent_shape, channels, activation):
    image_shape = _shape(owner, "event_shape", image_shape, (3,))
    latent_shape = _shape(owner, "latent_shape", latent_shape, (1, 3))
    channels = _shape(owner, "channels", channels)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: `activation` must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    factor = 2 ** (len(channels) - 1)
    _, height, width = image_shape
    if height % factor or width % factor:
        raise ValueError(f"{owner}: the image size {height}x{width} must be divisible by 2^(len(channels) - 1) = "
                         f"{factor} (channels={channels})")
    low = (height // factor, width // factor)
    if len(latent_shape) == 3 and latent_shape[1:] != low:
        raise ValueError(f"{owner}: a map latent must have the last level's resolution {low} (image "
                         f"{height}x{width}, {len(channels)} levels); got latent_shape={latent_shape}")
    return image_shape, latent_shape, channels, low


class ConvEncoder(nn.Module):
    """Images ``(B, C, H, W)`` -> latents ``(B, *latent_shape)`` (see the module docstring).

    Args:
        event_shape: the image shape ``(C, H, W)``.
        latent_shape: ``(k,)`` (a linear layer on the flattened last level) or ``(c, h, w)`` (a 1x1
            convolution at the last level, whose resolution ``(h, w)`` must be).
        channels: channels per level (level ``i`` at resolution ``H / 2^i``).
        heads: outputs of that shape; ``heads > 1`` returns a tuple (e.g. ``(mean, log_std)``).
        activation: ``"silu"``, ``"relu"``, ``"gelu"``, ``"leaky_relu"`` (slope 0.2) or ``"elu"``.
    """

    def __init__(self, event_shape, latent_shape, *, channels=(16, 32), heads: int = 1, activation: str = "silu"):
        super().__init__()
        image_shape, self.latent_shape, channels, low = _check_layout("ConvEncoder", event_shape, latent_shape,
                                                                     channels, activation)
        if isinstance(heads, bool) or not isinstance(heads, numbers.Integral) or heads < 1:
            raise ValueError(f"ConvEncoder: `heads` must be a positive int; got {heads!r}")
        self.heads = int(heads)
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], channels[0], 3, padding=1), act()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]
        self.body = nn.Sequential(*layers)
        if len(self.latent_shape) == 1:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * math.prod(low),
                                                              self.heads * self.latent_shape[0]))
        else:
            self.head = nn.Conv2d(channels[-1], self.heads * self.latent_shape[0], 1)

    def forward(self, x: torch.Tensor):
        out = self.head(self.body(x))
        if self.heads == 1:
            return out
        return out.chunk(self.heads, dim=1)


class ConvDecoder(nn.Module):
    """Latents ``(B, *latent_shape)`` -> images ``(B, C, H, W)`` (see the module docstring).

    Args:
        latent_shape: ``(k,)`` or ``(c, h, w)`` (``(h, w)`` the resolution of the lowest level).
        event_shape: the image shape ``(C, H, W)``.
        channels: channels per level, listed from the highest resolution as for :class:`ConvEncoder`
            (the decoder runs them in reverse).
        activation: as for :class:`ConvEncoder`.

    The output is unbounded (no squashing): the families work on standardised pixels.
    """

    def __init__(self, latent_shape, event_shape, *, channels=(16, 32), activation: str = "silu"):
        super().__init__()
        image_shape, self.latent_shape, channels, low = _check_layout("ConvDecoder", event_shape, latent_shape,
                                                                     channels, activation)
        act = ACTIVATIONS[activation]
        channels = channels[::-1]
        if len(self.latent_shape) == 1:
            self.stem = nn.Sequential(nn.Linear(self.latent_shape[0], channels[0] * math.prod(low)),
                                      nn.Unflatten(1, (channels[0], *low)), act())
        else:
            self.stem = nn.Sequential(nn.Conv2d(self.latent_shape[0], channels[0], 3, padding=1), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]
        layers.append(nn.Conv2d(channels[-1], image_shape[0], 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z))
