"""Shared pieces of the latent-variable families (Autoencoder, VAE, VQVAE, GAN and the particle models).

- :class:`Standardizer`: an affine map ``y = (x - loc) / scale`` fitted to data by
  ``initialize`` (the networks see roughly unit-scale inputs whatever the data's
  units; its log-determinant enters the likelihoods): per feature for vectors,
  per channel for images (``(C, H, W)``: a per-pixel scale would blow up the
  constant border pixels of digits and the like);
- :class:`LatentFamily`: a :class:`~pyprobtf.ProbabilityTransform` whose ``z`` has
  its own shape ``latent_shape`` (the decoder or generator maps ``(B, *latent_shape)``
  to ``(B, *event_shape)``), with a base over ``z``: a standard normal, a given
  distribution, or another ProbabilityTransform of ``event_shape=latent_shape``
  (a learned prior);
- the network helpers: :func:`resolve_latent_shape` (the latent's shape from
  ``latent_dim``/``latent_shape`` or a default), :func:`probe_shape` (what a user's
  network returns), :class:`SplitMLP` (the vector default: an MLP with one or more heads).

Their argument checks are :mod:`pyprobtf._checks`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.distributions import Distribution

from pyprobtf import _checks
from pyprobtf.families._nets import MLP, check_activation, check_hidden
from pyprobtf.transform import (ProbabilityTransform, Trajectory, check_net_output, check_sample,
                                resolve_event_shape)


def event_shape_of(owner: str, dim, event_shape) -> tuple[int, ...]:
    """The event shape (``dim`` is shorthand for ``(dim,)``); a bad one is reported by the protocol's own check."""
    return resolve_event_shape(owner, dim, event_shape)


def is_image(event_shape: tuple[int, ...]) -> bool:
    """Whether the default networks for ``event_shape`` are the convolutional ones (``(C, H, W)``)."""
    return len(event_shape) == 3


def default_channels(event_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The image default networks' channels per level: one level of 32 channels for images up to 16x16 (on
    8x8 digits it learns as much per step as two levels at half the cost), two levels ``(32, 64)`` above."""
    return (32,) if max(event_shape[1:]) <= 16 else (32, 64)


#: what the image defaults change in a family's fit_defaults: smaller batches, more steps in a time budget
IMAGE_FIT_DEFAULTS = {"batch_size": 128}


def resolve_latent_shape(owner: str, event_shape, latent_dim, latent_shape, default) -> tuple[int, ...]:
    """``latent_shape`` (a tuple), or ``(latent_dim,)``, or ``default`` when neither is given."""
    if latent_dim is not None and latent_shape is not None:
        raise ValueError(f"{owner}: give `latent_dim` or `latent_shape`, not both")
    if latent_dim is not None:
        return (_checks.integer(owner, "latent_dim", latent_dim, 1),)
    if latent_shape is None:
        return tuple(default)
    return _checks.shape(owner, "latent_shape", latent_shape, example="(8,) or (4, 2, 2)")


def default_latent_dim(dim, latent_dim, cap: int):
    """``latent_dim``, or ``min(dim, cap)`` when it is None (a bad ``dim`` is left for the protocol to report)."""
    if latent_dim is None:
        return min(int(dim), cap) if _checks.is_integer(dim) and dim >= 1 else 1
    return latent_dim


def vector_options(owner: str, nets_given: bool, hidden, activation, hidden_default, activation_default="relu"):
    """``(hidden, activation)`` of a default MLP; an error if they are given alongside the user's networks."""
    if nets_given:
        for name, value in (("hidden", hidden), ("activation", activation)):
            if value is not None:
                raise ValueError(f"{owner}: `{name}` configures the default network; it cannot be given with "
                                 f"your own networks")
        return None, None
    hidden = check_hidden(owner, hidden_default if hidden is None else hidden)
    return hidden, check_activation(owner, activation_default if activation is None else activation)


@torch.no_grad()
def probe_shape(owner: str, name: str, net: nn.Module, in_shape: tuple[int, ...], *args) -> object:
    """The per-sample shape(s) ``net`` returns for a ``(2, *in_shape)`` input of zeros (in eval mode; the
    network's mode is restored): a tuple, or a tuple of tuples for networks returning several tensors."""
    was_training = net.training
    net.eval()
    try:
        param = next(iter(net.parameters()), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
        device = param.device if param is not None else None
        out = net(torch.zeros(2, *in_shape, dtype=dtype, device=device), *args)
    except Exception as exc:
        raise ValueError(f"{owner}: calling `{name}` on a (2, {', '.join(map(str, in_shape))}) input failed "
                         f"({type(exc).__name__}: {exc})") from exc
    finally:
        net.train(was_training)
    if isinstance(out, torch.Tensor):
        return tuple(out.shape[1:])
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(tuple(o.shape[1:]) for o in out)
    raise TypeError(f"{owner}: `{name}` must return a tensor or a tuple of tensors; it returned {type(out).__name__}")


class SplitMLP(MLP):
    """The vector default network: an MLP on flattened inputs, with ``heads`` outputs of shape ``out_shape``
    (one tensor for ``heads=1``, else a tuple)."""

    def __init__(self, in_shape, out_shape, hidden, activation: str, heads: int = 1):
        super().__init__(math.prod(in_shape), hidden, heads * math.prod(out_shape), activation)
        self.out_shape, self.heads = tuple(out_shape), heads

    def forward(self, x: torch.Tensor):
        out = super().forward(x.flatten(1))
        if self.heads == 1:
            return out.reshape(x.shape[0], *self.out_shape)
        return tuple(o.reshape(x.shape[0], *self.out_shape) for o in out.chunk(self.heads, 1))


def sum_event(t: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """Sum over the last ``event_dims`` dimensions (default: all but the first): a per-sample total."""
    if event_dims is None:
        event_dims = t.dim() - 1
    return t.sum(tuple(range(t.dim() - event_dims, t.dim()))) if event_dims else t


class Standardizer(nn.Module):
    """``y = (x - loc) / scale``; ``loc``/``scale`` are buffers set from data by :meth:`fit_to`.

    Per feature for vector events ``(d,)``; per channel for larger events (``(C, H, W)``: one mean and
    std per channel over all pixels, so constant pixels are not blown up). Until fitted (or with
    ``enabled=False``) it is the identity. ``log_scale_sum`` is the log-determinant of ``x -> y``
    negated: ``log p_x(x) = log p_y(y) - log_scale_sum``.
    """

    def __init__(self, event_shape, enabled: bool = True):
        super().__init__()
        if isinstance(event_shape, numbers.Integral):
            event_shape = (int(event_shape),)
        self.event_shape = tuple(event_shape)
        self.enabled = enabled
        shape = self.event_shape if len(self.event_shape) == 1 else (self.event_shape[0],) + (1,) * (
            len(self.event_shape) - 1)
        self.register_buffer("loc", torch.zeros(shape))
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_to(self, x: torch.Tensor) -> None:
        """Set ``loc``/``scale`` to the mean and std of ``x`` (per feature or per channel); a near-constant feature
        keeps a scale of at least 1e-3 times the largest std (so it is not blown up), and at least 1e-6."""
        if not self.enabled or x.shape[0] < 2:
            return
        if len(self.event_shape) == 1:
            flat = x
        else:
            flat = x.transpose(0, 1).reshape(x.shape[1], -1).T  # (B * pixels, C)
        std = flat.std(0)
        self.loc.copy_(flat.mean(0).reshape(self.loc.shape))
        self.scale.copy_(std.clamp_min(max(1e-3 * float(std.max()), 1e-6)).reshape(self.scale.shape))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc.to(x.dtype)) / self.scale.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype) + self.loc.to(y.dtype)

    def log_scale_sum(self) -> torch.Tensor:
        """``sum log scale`` over the event (a per-channel scale counts once per pixel)."""
        per_entry = math.prod(self.event_shape) // self.scale.numel()
        return torch.log(self.scale).sum() * per_entry


class LatentFamily(ProbabilityTransform):
    """A ProbabilityTransform whose ``z`` has shape ``latent_shape`` (see the module docstring).

    ``base``: ``None`` (standard normal over ``latent_shape``), a ``torch.distributions``
    distribution with that event shape, or a ProbabilityTransform with
    ``event_shape=latent_shape`` (a learned prior, trained with the model where the
    family's loss uses it). Trajectories start with ``z`` of shape ``(B, *latent_shape)``.
    Subclasses hold a :class:`Standardizer` as ``self.scaler`` (fitted in ``initialize``)
    and implement :meth:`decode` (standardised units, checked by :meth:`decoded`).
    ``latent_dim`` is the number of elements of ``z``.
    """

    #: the name of the network decode() runs, for the wrong-shape error
    decoder_name = "decoder"

    def __init__(self, dim=None, latent_shape=None, *, event_shape=None, base=None, normalize: bool = True):
        super().__init__(dim, event_shape=event_shape)
        name = type(self).__name__
        if _checks.is_integer(latent_shape):
            latent_shape = (_checks.integer(name, "latent_dim", latent_shape, 1),)
        self.latent_shape = resolve_latent_shape(name, self.event_shape, None, latent_shape, ())
        self.latent_dim = math.prod(self.latent_shape)
        vector = len(self.latent_shape) == 1
        # The protocol's standard-normal base buffers, resized to the latent space.
        self._base_loc = torch.zeros(self.latent_shape)
        self._base_scale = torch.ones(self.latent_shape)
        if base is None:
            pass
        elif isinstance(base, ProbabilityTransform):
            if base.event_shape != self.latent_shape:
                want = (f"dim=latent_dim={self.latent_dim}" if vector else
                        f"event_shape=latent_shape={self.latent_shape}")
                got = f"dim={base.dim}" if vector and len(base.event_shape) == 1 else f"event_shape={base.event_shape}"
                raise ValueError(f"{name}: `base` must have {want}; got a {type(base).__name__} with {got}")
            self.prior = base
        elif isinstance(base, Distribution):
            if tuple(base.event_shape) != self.latent_shape or tuple(base.batch_shape) != ():
                want = f"(latent_dim,) = ({self.latent_dim},)" if vector else f"latent_shape = {self.latent_shape}"
                raise ValueError(f"{name}: `base` must have event shape {want} and batch shape (); got event shape "
                                 f"{tuple(base.event_shape)}, batch shape {tuple(base.batch_shape)}")
            self._fixed_base = base
        else:
            raise TypeError(f"{name}: `base` must be None, a torch Distribution or a ProbabilityTransform; "
                            f"got {type(base).__name__}")
        _checks.boolean(name, "normalize", normalize)
        self.scaler = Standardizer(self.event_shape, enabled=normalize)
        if is_image(self.event_shape):
            self.fit_defaults = {**type(self).fit_defaults, **IMAGE_FIT_DEFAULTS}

    @property
    def standard_normal_base(self) -> bool:
        """Whether the base is the default standard normal (closed-form KL terms apply)."""
        return self.prior is None and self._fixed_base is None

    def check_z(self, z, method: str) -> torch.Tensor:
        """``z`` as a ``(B, *latent_shape)`` floating tensor; a clear error otherwise."""
        return check_sample(self._name(method), "z", z, self.latent_shape, "latent_shape")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder or generator in the standardised data space (subclasses implement it)."""
        raise NotImplementedError

    def decoded(self, z: torch.Tensor) -> torch.Tensor:
        """``decode(z)`` with its shape checked: ``(B, *event_shape)``, else an error naming the network."""
        return check_net_output(type(self).__name__, self.decoder_name, self.decode(z),
                                (z.shape[0], *self.event_shape))

    def transform(self, z, context=None):
        """``x = F(z)``: the decoder (or generator), mapped back to data units."""
        z = self.check_z(z, "transform")
        self.check_context(context, z.shape[0], "transform")
        return self.scaler.inverse(self.decoded(z.to(self.dtype)))

    def trajectory(self, z, context=None):
        """``[z, x]``; ``z`` is ``(B, *latent_shape)``."""
        with torch.no_grad():
            return Trajectory([z, self.transform(z, context)], ["z", "x"])

    def initialize(self, batch) -> None:
        x, _ = self.split_batch(batch, "initialize")
        if not bool(self.scaler.fitted):
            self.scaler.fit_to(x)
