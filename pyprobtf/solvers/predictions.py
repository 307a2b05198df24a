"""Converters between what a diffusion model predicts: denoised data, noise, score or velocity.

For a noisy state ``x = alpha x0 + sigma eps`` (VP: ``alpha^2 + sigma^2 = 1``; EDM/VE:
``alpha = 1``), the four common predictions are linear in ``(x, prediction)``:

- ``"denoised"``: ``D = E[x0 | x]``;
- ``"epsilon"``:  ``eps_hat = (x - alpha D) / sigma``;
- ``"score"``:    ``grad log p(x) = -eps_hat / sigma``;
- ``"velocity"``: ``v = alpha eps_hat - sigma D`` (Salimans & Ho 2022).

So every conversion is one :func:`~pyprobtf.ops.lincomb` pass.
"""

from __future__ import annotations


import torch

from pyprobtf.ops import lincomb
from pyprobtf import _checks

PREDICTIONS = ("denoised", "epsilon", "score", "velocity")


def _to_denoised(source: str, alpha, sigma):
    """(a, b) with D = a x + b prediction."""
    if source == "denoised":
        return 0.0, 1.0
    if source == "epsilon":  # D = (x - sigma eps) / alpha
        return 1.0 / alpha, -sigma / alpha
    if source == "score":  # eps = -sigma s
        return 1.0 / alpha, sigma * sigma / alpha
    norm = alpha * alpha + sigma * sigma  # velocity: alpha x - sigma v = (alpha^2 + sigma^2) D
    return alpha / norm, -sigma / norm


def _from_denoised(target: str, alpha, sigma):
    """(c, d) with target = c x + d D."""
    if target == "denoised":
        return 0.0, 1.0
    if target == "epsilon":
        return 1.0 / sigma, -alpha / sigma
    if target == "score":
        return -1.0 / (sigma * sigma), alpha / (sigma * sigma)
    return alpha / sigma, -(alpha * alpha + sigma * sigma) / sigma  # velocity


def _scale(fn: str, name: str, value, x: torch.Tensor):
    if isinstance(value, torch.Tensor):
        if value.shape != (x.shape[0],):
            raise ValueError(f"{fn}: `{name}` must be a number or a tensor of shape (B,) = ({x.shape[0]},); "
                             f"got shape {tuple(value.shape)}")
        return value
    if not _checks.is_real(value):
        raise TypeError(f"{fn}: `{name}` must be a real number or a (B,) tensor; got {type(value).__name__}")
    return _checks.real(fn, name, value, 0)


def convert_prediction(prediction: torch.Tensor, x: torch.Tensor, *, source: str, target: str, alpha=1.0,
                       sigma, backend: str = "auto") -> torch.Tensor:
    """Convert a model's ``source`` prediction at the noisy state ``x`` into a ``target`` prediction.

    Args:
        prediction: the model's output, shaped like ``x``.
        x: the noisy state ``alpha x0 + sigma eps``.
        source, target: ``"denoised"``, ``"epsilon"``, ``"score"`` or ``"velocity"``.
        alpha, sigma: the signal and noise scales at ``x``'s time (numbers or ``(B,)``
            tensors); EDM/VE states have ``alpha = 1``.
        backend: lincomb's backend.

    Example:
        >>> schedule = vp_linear()
        >>> a, s = schedule.alpha(0.5), schedule.sigma(0.5)
        >>> d = convert_prediction(eps, x, source="epsilon", target="denoised", alpha=a, sigma=s)
    """
    fn = "convert_prediction"
    _checks.choice(fn, "source", source, PREDICTIONS)
    _checks.choice(fn, "target", target, PREDICTIONS)
    _checks.tensor(fn, "x", x, min_dim=1)
    alpha = _scale(fn, "alpha", alpha, x)
    sigma = _scale(fn, "sigma", sigma, x)
    if source == target:
        return prediction
    for name, value, needed in (("alpha", alpha, source in ("epsilon", "score")),
                                ("sigma", sigma, target in ("epsilon", "score", "velocity"))):
        if needed and not isinstance(value, torch.Tensor) and value == 0:
            raise ValueError(f"{fn}: converting {source!r} to {target!r} divides by `{name}`, which is 0")
    a, b = _to_denoised(source, alpha, sigma)
    c, d = _from_denoised(target, alpha, sigma)
    return lincomb((x, prediction), (c + d * a, d * b), backend=backend)


class EDMField:
    """The EDM probability-flow field ``(x - D(x, sigma)) / sigma`` of a denoiser (see :func:`edm_field`).

    Calling it gives the field. The solvers' steps recognise it and fold the conversion
    into their own update (Euler, Heun, midpoint, DPM-Solver++(2M) and Euler-ancestral then
    read the denoiser's outputs directly: two fewer passes over the state per evaluation).
    """

    def __init__(self, denoiser, backend: str = "auto"):
        _checks.callable_("edm_field", "denoiser", denoiser, "D(x, sigma)")
        self.denoiser = denoiser
        self.backend = backend

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma == 0:
            raise ValueError("edm_field: the EDM field (x - D(x, sigma)) / sigma is undefined at sigma = 0 "
                             "(sample_ode with euler_at_zero=True never evaluates it there)")
        return lincomb((x, self.denoiser(x, sigma)), (1.0 / sigma, -1.0 / sigma), backend=self.backend)

    def __repr__(self) -> str:
        return f"edm_field({self.denoiser!r})"


def edm_field(denoiser, *, backend: str = "auto") -> EDMField:
    """The EDM probability-flow field ``dx/dsigma = (x - D(x, sigma)) / sigma`` of a denoiser ``D(x, sigma)``.

    For :func:`~pyprobtf.solvers.sample_ode` (every method, including ``"dpmpp_2m"``)
    and :func:`~pyprobtf.solvers.sample_euler_ancestral` on a decreasing sigma grid such
    as :func:`~pyprobtf.solvers.karras_sigmas`. Undefined at sigma = 0 (see
    ``sample_ode``'s ``euler_at_zero``). The steps use the denoiser's outputs directly
    (see :class:`EDMField`), as k-diffusion's samplers do.

    Example:
        >>> x = sample_ode(edm_field(denoiser), sigma_max * z, karras_sigmas(18, 0.002, 80.0))
    """
    return EDMField(denoiser, backend)
