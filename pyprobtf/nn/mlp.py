"""Vector networks: :class:`MLP`, time/noise embeddings and the time-conditioned vector field :class:`TimeMLP`.

Example:
    >>> import torch
    >>> from pyprobtf.nn import TimeMLP
    >>> net = TimeMLP(2, (64, 64))
    >>> net(torch.randn(5, 2), torch.rand(5)).shape
    torch.Size([5, 2])
"""

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
    """``activation`` if it names one of :data:`ACTIVATIONS`; a ValueError naming ``owner`` otherwise."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: `activation` must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    return activation


def time_tensor(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` (a float, a 0-d or a ``(B,)`` tensor) as a ``(B,)`` tensor of ``x``'s dtype and device."""
    if not isinstance(t, torch.Tensor):
        return x.new_full((x.shape[0],), float(t))
    t = t.to(dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t.reshape(x.shape[0])


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear``; the last layer starts at zero with ``zero_last`` (an identity flow).

    Example:
        >>> MLP(3, (16, 16), 2)(torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "silu",
                 zero_last: bool = False):
        layers: list[nn.Module] = []
        width = n_in
        for h in check_hidden("MLP", hidden):
            layers += [nn.Linear(width, h), ACTIVATIONS[check_activation("MLP", activation)]()]
            width = h
        last = nn.Linear(width, n_out)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)


class FourierTime(nn.Module):
    """A scalar time per row -> ``[t, sin(w_k t), cos(w_k t)]``, fixed frequencies ``w_k`` from 1 to ``max_freq``.

    ``size`` is the output width, ``1 + 2 n_frequencies``. Times on roughly ``[-2, 2]`` suit the default
    frequencies (the families map their clocks there).
    """

    def __init__(self, n_frequencies: int = 16, max_freq: float = 100.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), n_frequencies))
        self.register_buffer("freqs", freqs, persistent=False)
        self.size = 1 + 2 * n_frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1)
        angles = t * self.freqs.to(t.dtype)
        return torch.cat([t, angles.sin(), angles.cos()], 1)


class TimeEmbedding(nn.Module):
    """A time/noise level per row -> a learned ``(B, dim)`` embedding: Fourier features then a 2-layer MLP
    (the time input of :class:`~pyprobtf.nn.UNet`).

    Example:
        >>> TimeEmbedding(32)(torch.rand(4)).shape
        torch.Size([4, 32])
    """

    def __init__(self, dim: int, n_frequencies: int = 16, max_freq: float = 100.0):
        super().__init__()
        self.fourier = FourierTime(n_frequencies, max_freq)
        self.mlp = nn.Sequential(nn.Linear(self.fourier.size, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fourier(t))


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


class TimeMLP(nn.Module):
    """``net(x, t, context=None) -> (B, *event_shape)``: an MLP on ``[x, Fourier(x), Fourier(t), context]``.

    The default vector field of the ODE families for vectors (any event shape works: ``x`` is flattened).
    ``t`` is a float or a ``(B,)`` tensor; it is the net's own time input (each family maps its clock onto
    roughly [-2, 2] first). ``x`` enters through :class:`FourierFeatures` with ``x_frequencies``
    frequencies. Context: a ``(B, context_dim)`` vector (``context_dim``), or integer class labels
    through a learned embedding of ``class_embedding`` dims (``num_classes``; labels ``0 .. num_classes - 1``).

    Args:
        dim: the number of elements of ``x`` per row, or its event shape.
        hidden: hidden widths. activation: a key of :data:`ACTIVATIONS`.
        context_dim, num_classes: the context, if any (at most one).
        n_frequencies, max_freq: the Fourier features of ``t``.
        x_frequencies: Fourier features per coordinate of ``x``.

    Example:
        >>> net = TimeMLP(2, (32, 32), num_classes=3)
        >>> net(torch.randn(4, 2), 0.5, torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4, 2])
    """

    def __init__(self, dim, hidden: Sequence[int] = (128, 128, 128), *, context_dim: int = 0,
                 num_classes: int = 0, class_embedding: int = 16, activation: str = "silu",
                 n_frequencies: int = 16, max_freq: float = 100.0, x_frequencies: int = 0):
        super().__init__()
        self.event_shape = (int(dim),) if isinstance(dim, numbers.Integral) else tuple(int(d) for d in dim)
        n = math.prod(self.event_shape)
        self.time = FourierTime(n_frequencies, max_freq)
        self.x_features = FourierFeatures(n, x_frequencies)
        self.labels = nn.Embedding(num_classes, class_embedding) if num_classes else None
        n_context = class_embedding if num_classes else int(context_dim)
        self.net = MLP(self.x_features.size + self.time.size + n_context, hidden, n, activation)

    def forward(self, x: torch.Tensor, t, context: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.x_features(x.flatten(1)), self.time(time_tensor(t, x))]
        if context is not None:
            parts.append(self.labels(context) if self.labels is not None else context.flatten(1))
        return self.net(torch.cat(parts, 1)).reshape(x.shape)


#: The name the families used before :class:`TimeMLP` was public.
TimeField = TimeMLP
