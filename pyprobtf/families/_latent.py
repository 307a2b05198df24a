"""Shared pieces of the latent-variable families (Autoencoder, VAE, VQVAE, GAN and the particle models).

- :class:`Standardizer`: a per-feature affine map ``y = (x - loc) / scale`` fitted
  to data by ``initialize`` (the networks see roughly unit-scale inputs whatever
  the data's units; its log-determinant enters the likelihoods);
- :class:`LatentFamily`: a :class:`~pyprobtf.ProbabilityTransform` whose ``z`` has
  its own size ``latent_dim`` (the decoder or generator maps ``R^latent_dim`` to
  ``R^dim``), with a base over ``z``: a standard normal, a given distribution,
  or another ProbabilityTransform of dimension ``latent_dim`` (a learned prior);
- :func:`check_int`, :func:`check_real`, :func:`check_choice`: argument checks
  whose errors name the argument, the rule and the value received.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.distributions import Distribution

from pyprobtf.transform import ProbabilityTransform, Trajectory


def check_int(owner: str, name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: `{name}` must be an int >= {low}; got {value!r}")
    return int(value)


def check_real(owner: str, name: str, value, low: float = 0.0, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float in the interval (``low_open``/``high_open``: excluding that end)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{owner}: `{name}` must be a finite number in {lo}{low:g}, {high:g}{hi}; got {value!r}")
    return float(value)


def check_choice(owner: str, name: str, value, choices) -> object:
    if value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {tuple(choices)}; got {value!r}")
    return value


def default_latent_dim(dim, latent_dim, cap: int):
    """``latent_dim``, or ``min(dim, cap)`` when it is None (a bad ``dim`` is left for the protocol to report)."""
    if latent_dim is None:
        valid = isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and dim >= 1
        return min(int(dim), cap) if valid else 1
    return latent_dim


class Standardizer(nn.Module):
    """``y = (x - loc) / scale`` per feature; ``loc``/``scale`` are buffers set from data by :meth:`fit_to`.

    Until fitted (or with ``enabled=False``) it is the identity. ``log_scale_sum``
    is ``sum log scale``: ``log p_x(x) = log p_y(y) - log_scale_sum``.
    """

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_to(self, x: torch.Tensor) -> None:
        """Set ``loc``/``scale`` to the mean and std of ``x``; a near-constant feature keeps a scale of at least
        1e-3 times the largest feature's std (so it is not blown up), and at least 1e-6."""
        if not self.enabled or x.shape[0] < 2:
            return
        std = x.std(0)
        self.loc.copy_(x.mean(0))
        self.scale.copy_(std.clamp_min(max(1e-3 * float(std.max()), 1e-6)))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc.to(x.dtype)) / self.scale.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype) + self.loc.to(y.dtype)

    def log_scale_sum(self) -> torch.Tensor:
        return torch.log(self.scale).sum()


class LatentFamily(ProbabilityTransform):
    """A ProbabilityTransform whose ``z`` lives in ``R^latent_dim`` (see the module docstring).

    ``base``: ``None`` (standard normal on ``R^latent_dim``), a ``torch.distributions``
    distribution with event shape ``(latent_dim,)``, or a ProbabilityTransform with
    ``dim=latent_dim`` (a learned prior, trained with the model where the family's
    loss uses it). Trajectories start with ``z`` of shape ``(B, latent_dim)``.
    Subclasses hold a :class:`Standardizer` as ``self.scaler`` and call
    ``self.scaler.fit_to`` in ``initialize``.
    """

    def __init__(self, dim: int, latent_dim: int, *, base=None, normalize: bool = True):
        super().__init__(dim)
        name = type(self).__name__
        self.latent_dim = check_int(name, "latent_dim", latent_dim)
        # The protocol's standard-normal base buffers, resized to the latent space.
        self._base_loc = torch.zeros(self.latent_dim)
        self._base_scale = torch.ones(self.latent_dim)
        if base is None:
            pass
        elif isinstance(base, ProbabilityTransform):
            if base.dim != self.latent_dim:
                raise ValueError(f"{name}: `base` must have dim=latent_dim={self.latent_dim}; got a "
                                 f"{type(base).__name__} with dim={base.dim}")
            self.prior = base
        elif isinstance(base, Distribution):
            if tuple(base.event_shape) != (self.latent_dim,) or tuple(base.batch_shape) != ():
                raise ValueError(f"{name}: `base` must have event shape (latent_dim,) = ({self.latent_dim},) and "
                                 f"batch shape (); got event shape {tuple(base.event_shape)}, batch shape "
                                 f"{tuple(base.batch_shape)}")
            self._fixed_base = base
        else:
            raise TypeError(f"{name}: `base` must be None, a torch Distribution or a ProbabilityTransform; "
                            f"got {type(base).__name__}")
        if not isinstance(normalize, bool):
            raise TypeError(f"{name}: `normalize` must be True or False; got {normalize!r}")
        self.scaler = Standardizer(dim, enabled=normalize)

    @property
    def standard_normal_base(self) -> bool:
        """Whether the base is the default standard normal (closed-form KL terms apply)."""
        return self.prior is None and self._fixed_base is None

    def check_z(self, z, method: str) -> torch.Tensor:
        """``z`` as a ``(B, latent_dim)`` floating tensor; a clear error otherwise."""
        where = self._name(method)
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{where}: `z` must be a torch.Tensor; got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{where}: `z` must be a floating-point tensor; got {z.dtype}")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{where}: `z` must have shape (batch, {self.latent_dim}) for latent_dim="
                             f"{self.latent_dim}; got {tuple(z.shape)}")
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder or generator in the standardised data space (subclasses implement it)."""
        raise NotImplementedError

    def transform(self, z, context=None):
        """``x = F(z)``: the decoder (or generator), mapped back to data units."""
        z = self.check_z(z, "transform")
        self.check_context(context, z.shape[0], "transform")
        return self.scaler.inverse(self.decode(z.to(self.dtype)))

    def trajectory(self, z, context=None):
        """``[z, x]``; ``z`` is ``(B, latent_dim)``."""
        with torch.no_grad():
            return Trajectory([z, self.transform(z, context)], ["z", "x"])

    def initialize(self, batch) -> None:
        x, _ = self.split_batch(batch, "initialize")
        if not bool(self.scaler.fitted):
            self.scaler.fit_to(x)
