"""A small UNet for ``(C, H, W)`` images: ``net(x, t, context=None) -> (B, C, H, W)``.

The default network of the ODE families (FlowMatching, Diffusion, ContinuousFlow) on image shapes.

Example:
    >>> import torch
    >>> net = UNet(1, channels=(16, 32), num_classes=10)
    >>> net(torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyprobtf.nn.mlp import TimeEmbedding, time_tensor


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """``GroupNorm -> SiLU -> conv3x3``, twice, the embedding added in between as a per-channel scale and
    shift, plus a 1x1-conv skip when the width changes."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """A small UNet conditioned on a time/noise level and, optionally, on a context.

    ``len(channels)`` levels; the first works at full resolution and each next one at half the
    previous (a stride-2 conv down, nearest-neighbour upsampling and a conv up), so ``H`` and ``W``
    must be divisible by ``2 ** (len(channels) - 1)``. Each level has ``blocks`` residual blocks on
    the way down and on the way up (with skip connections); the time ``t`` (a float or a ``(B,)``
    tensor, on roughly ``[-2, 2]``) enters every block through :class:`~pyprobtf.nn.TimeEmbedding`.
    The output conv starts at zero.

    Args:
        in_channels: ``C`` of the input. out_channels: of the output (default ``in_channels``).
        channels: the width of each level.
        blocks: residual blocks per level and direction.
        emb_dim: width of the time (and context) embedding (default ``4 * channels[0]``).
        num_classes: condition on integer labels ``0 .. num_classes - 1`` (a learned embedding added to
            the time embedding).
        context_dim: condition on a ``(B, context_dim)`` vector (a linear map added to the time
            embedding); at most one of ``num_classes`` and ``context_dim``.
        dropout: dropout inside the residual blocks.

    Example:
        >>> net = UNet(3, channels=(16, 32, 32))
        >>> net(torch.randn(2, 3, 12, 20), 0.3).shape
        torch.Size([2, 3, 12, 20])
    """

    def __init__(self, in_channels: int, *, out_channels: int | None = None, channels: Sequence[int] = (16, 32),
                 blocks: int = 1, emb_dim: int | None = None, num_classes: int = 0, context_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        for key, value, low in (("in_channels", in_channels, 1), ("blocks", blocks, 1),
                                ("num_classes", num_classes, 0), ("context_dim", context_dim, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"UNet: `{key}` must be an int >= {low}; got {value!r}")
        channels = tuple(channels) if isinstance(channels, Sequence) else ()
        if not channels or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1
                               for c in channels):
            raise ValueError(f"UNet: `channels` must be a non-empty sequence of positive ints; got {channels!r}")
        if num_classes and context_dim:
            raise ValueError("UNet: give `num_classes` or `context_dim`, not both")
        out_channels = in_channels if out_channels is None else out_channels
        emb_dim = 4 * channels[0] if emb_dim is None else int(emb_dim)
        self.channels, self.levels = channels, len(channels)
        self.time = TimeEmbedding(emb_dim)
        self.labels = nn.Embedding(num_classes, emb_dim) if num_classes else None
        self.context = nn.Linear(context_dim, emb_dim) if context_dim else None
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        width = channels[0]
        for i, c in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(width, c, emb_dim, dropout))
                width = c
                skips.append(width)
            self.down.append(level)
            if i < self.levels - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = ResBlock(width, width, emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(channels))):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(width + skips.pop(), c, emb_dim, dropout))
                width = c
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(width, channels[i - 1], 3, padding=1))
                width = channels[i - 1]
        self.out_norm = nn.GroupNorm(_groups(width), width)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t, context: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.dim() != 4 or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNet: `x` must be (B, C, H, W) with H and W divisible by {factor} "
                             f"({self.levels} levels); got {tuple(x.shape)}")
        emb = self.time(time_tensor(t, x))
        if context is not None:
            if self.labels is not None:
                emb = emb + self.labels(context)
            elif self.context is not None:
                emb = emb + self.context(context.flatten(1).to(emb.dtype))
        h = self.stem(x)
        skips = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        h = self.middle(h, emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, skips.pop()], 1), emb)
            if i < self.levels - 1:
                h = self.upsample[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
