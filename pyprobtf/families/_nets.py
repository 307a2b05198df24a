"""Small networks the families are built from: MLPs and a time-conditioned vector field."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU,
               "softplus": nn.Softplus}


def check_hidden(owner: str, hidden) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive layer widths (an int ``h`` means ``(h, h)``)."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (int(hidden), int(hidden))
    try:
        widths = tuple(hidden)
    except TypeError:
        widths = None
    if not widths or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in widths):
        raise ValueError(f"{owner}: `hidden` must be a positive int or a non-empty sequence of them; got {hidden!r}")
    return tuple(int(w) for w in widths)


def check_activation(owner: str, activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: `activation` must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    return activation


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear``; the last layer starts at zero with ``zero_last`` (an identity flow)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "silu",
                 zero_last: bool = False):
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        last = nn.Linear(width, n_out)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)


class FourierTime(nn.Module):
    """A scalar time per row -> ``[t, sin(w_k t), cos(w_k t)]``, fixed frequencies ``w_k`` from 1 to ``max_freq``."""

    def __init__(self, n_frequencies: int = 16, max_freq: float = 100.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), n_frequencies))
        self.register_buffer("freqs", freqs, persistent=False)
        self.size = 1 + 2 * n_frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1)
        angles = t * self.freqs.to(t.dtype)
        return torch.cat([t, angles.sin(), angles.cos()], 1)


class FourierFeatures(nn.Module):
    """``x -> [u, sin(2^k u), cos(2^k u)]`` for ``k < n_frequencies``, per coordinate, with ``u = x / scale``.

    Fixed frequencies 1, 2, 4, ... (radians per unit of ``u``) let an MLP draw sharp features of
    low-dimensional data (an MLP on raw coordinates is biased towards smooth functions).
    ``scale`` (a buffer, saved with the model) is the data's scale: families set it from data in
    ``initialize``. With ``n_frequencies = 0`` this is ``x / scale``.
    """

    def __init__(self, dim: int, n_frequencies: int):
        super().__init__()
        if isinstance(n_frequencies, bool) or not isinstance(n_frequencies, numbers.Integral) or n_frequencies < 0:
            raise ValueError(f"`x_frequencies` must be a non-negative int; got {n_frequencies!r}")
        self.register_buffer("freqs", 2.0 ** torch.arange(int(n_frequencies), dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(1.0))
        self.size = dim * (1 + 2 * int(n_frequencies))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x / self.scale.to(x.dtype)
        if not self.freqs.numel():
            return u
        angles = (u[:, :, None] * self.freqs.to(x.dtype)).flatten(1)
        return torch.cat([u, angles.sin(), angles.cos()], 1)


class TimeField(nn.Module):
    """``net(x, t, context) -> (B, dim)``: an MLP on ``[x, Fourier(x), Fourier(t), context]``.

    ``t`` is a float or a ``(B,)`` tensor; it is the net's own time input (each
    family maps its clock onto roughly [-2, 2] first). ``x`` enters through
    :class:`FourierFeatures` with ``x_frequencies`` frequencies.
    """

    def __init__(self, dim: int, hidden: Sequence[int], *, context_dim: int = 0, activation: str = "silu",
                 n_frequencies: int = 16, max_freq: float = 100.0, x_frequencies: int = 0):
        super().__init__()
        self.time = FourierTime(n_frequencies, max_freq)
        self.x_features = FourierFeatures(dim, x_frequencies)
        self.net = MLP(self.x_features.size + self.time.size + context_dim, hidden, dim, activation)

    def forward(self, x: torch.Tensor, t, context: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = x.new_full((x.shape[0],), float(t))
        elif t.dim() == 0:
            t = t.to(x).expand(x.shape[0])
        parts = [self.x_features(x), self.time(t.to(x))]
        if context is not None:
            parts.append(context)
        return self.net(torch.cat(parts, 1))
