"""Noise schedules and time grids, all host-side Python floats (no device sync in a loop).

- :func:`karras_sigmas`: the EDM noise levels of Karras et al. (2022), rho-spaced.
- :func:`uniform_times`: an evenly spaced grid, endpoints included.
- :func:`vp_linear`, :func:`vp_cosine`: variance-preserving schedules in continuous time
  ``t`` in ``[0, 1]`` (Song et al. 2021; Nichol & Dhariwal 2021), with
  ``x_t = alpha(t) x_0 + sigma(t) eps``, ``alpha^2 + sigma^2 = 1``.

The methods of a VP schedule take a Python float (and return one) or a tensor
(and return a tensor).
"""

from __future__ import annotations

import math

import torch

from pyprobtf import _checks
from pyprobtf.solvers.predictions import PREDICTIONS, convert_prediction


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  append_zero: bool = True) -> list[float]:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, rho-spaced (EDM, eq. 5), then 0.0.

    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    as k-diffusion's ``get_sigmas_karras`` (which appends 0 the same way). A grid for
    :func:`~pyprobtf.solvers.sample_ode` with the EDM field ``(x - D(x, sigma)) / sigma``.

    Example:
        >>> karras_sigmas(3, 0.002, 80.0)
        [80.0, 2.515218976147159, 0.002, 0.0]
    """
    fn = "karras_sigmas"
    n = _checks.integer(fn, "n", n, 1)
    sigma_min = _checks.real(fn, "sigma_min", sigma_min, 0, low_open=True)
    sigma_max = _checks.real(fn, "sigma_max", sigma_max, 0, low_open=True)
    rho = _checks.real(fn, "rho", rho, 0, low_open=True)
    if n > 1 and not sigma_max > sigma_min:
        raise ValueError(f"{fn}: `sigma_max` must be > `sigma_min` ({sigma_min}); got {sigma_max}")
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = [(hi + (i / (n - 1) if n > 1 else 0.0) * (lo - hi)) ** rho for i in range(n)]
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min  # exact endpoints, not their rounded powers
    return sigmas + [0.0] if append_zero else sigmas


def uniform_times(n_steps: int, t_start: float, t_end: float) -> list[float]:
    """``n_steps + 1`` evenly spaced floats from ``t_start`` to ``t_end`` (both included, exactly).

    Example:
        >>> uniform_times(4, 1.0, 0.0)
        [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    fn = "uniform_times"
    n_steps = _checks.integer(fn, "n_steps", n_steps, 1)
    t_start = _checks.real(fn, "t_start", t_start)
    t_end = _checks.real(fn, "t_end", t_end)
    if t_start == t_end:
        raise ValueError(f"{fn}: `t_start` and `t_end` must differ; both are {t_start}")
    times = [t_start + (t_end - t_start) * i / n_steps for i in range(n_steps + 1)]
    times[-1] = t_end
    return times


# ----------------------------------------------------------------------------- VP schedules


def _is_tensor(t) -> bool:
    return isinstance(t, torch.Tensor)


def _exp(t):
    return torch.exp(t) if _is_tensor(t) else math.exp(t)


def _expm1(t):
    return torch.expm1(t) if _is_tensor(t) else math.expm1(t)


def _sqrt(t):
    return torch.sqrt(t) if _is_tensor(t) else math.sqrt(t)


def _log1p(t):
    return torch.log1p(t) if _is_tensor(t) else math.log1p(t)


class VPSchedule:
    """A variance-preserving schedule: ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``alpha^2 + sigma^2 = 1``.

    Subclasses define ``log_alpha_bar(t)``, ``beta(t) = -d log alpha_bar / dt`` and
    ``t_from_log_alpha_bar``. The forward SDE is ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``.
    """

    t_min, t_max = 0.0, 1.0

    def log_alpha_bar(self, t):
        raise NotImplementedError

    def beta(self, t):
        raise NotImplementedError

    def t_from_log_alpha_bar(self, log_alpha_bar):
        raise NotImplementedError

    def alpha_bar(self, t):
        """``alpha(t)^2``, the signal's share of the variance."""
        return _exp(self.log_alpha_bar(t))

    def alpha(self, t):
        """The signal scale ``sqrt(alpha_bar(t))``."""
        return _exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t):
        """The noise scale ``sqrt(1 - alpha_bar(t))`` (accurate near t = 0)."""
        return _sqrt(-_expm1(self.log_alpha_bar(t)))

    def log_snr(self, t):
        """``log(alpha^2 / sigma^2)``."""
        lab = self.log_alpha_bar(t)
        log = torch.log if _is_tensor(lab) else math.log
        return lab - log(-_expm1(lab))

    def edm_sigma(self, t):
        """The EDM / VE noise level ``sigma(t) / alpha(t)`` of the scaled state ``x_t / alpha(t)``."""
        return _sqrt(_expm1(-self.log_alpha_bar(t)))

    def t_from_edm_sigma(self, sigma):
        """The time whose :meth:`edm_sigma` is ``sigma`` (maps EDM/Karras grids to VP times)."""
        return self.t_from_log_alpha_bar(-_log1p(sigma * sigma))

    # ------------------------------------------------------------------ model wrappers

    def _epsilon(self, model, prediction: str, backend: str):
        _checks.callable_(type(self).__name__, "model", model, "model(x, t)")
        _checks.choice(type(self).__name__, "prediction", prediction, PREDICTIONS)

        def epsilon(x, t):
            out = model(x, t)
            if prediction == "epsilon":
                return out
            return convert_prediction(out, x, source=prediction, target="epsilon", alpha=self.alpha(t),
                                      sigma=self.sigma(t), backend=backend)
        return epsilon

    def probability_flow(self, model, prediction: str = "epsilon", *, backend: str = "auto"):
        """The probability-flow ODE field ``dx/dt = -beta/2 (x - eps_hat / sigma)`` for :func:`sample_ode`.

        ``model(x, t)`` predicts ``prediction`` (``"epsilon"``, ``"denoised"``, ``"score"`` or
        ``"velocity"``); integrate from ``t`` near 1 down to near 0.
        """
        from pyprobtf.ops import lincomb

        epsilon = self._epsilon(model, prediction, backend)

        def field(x, t):
            beta, sigma = self.beta(t), self.sigma(t)
            return lincomb((x, epsilon(x, t)), (-0.5 * beta, 0.5 * beta / sigma), backend=backend)
        return field

    def reverse_sde(self, model, prediction: str = "epsilon", *, backend: str = "auto"):
        """``(drift, diffusion)`` of the reverse-time SDE for :func:`sample_sde` (integrate t downwards).

        ``drift = -beta/2 x - beta * score = -beta/2 x + beta eps_hat / sigma``, ``diffusion = sqrt(beta)``.
        """
        from pyprobtf.ops import lincomb

        epsilon = self._epsilon(model, prediction, backend)

        def drift(x, t):
            beta, sigma = self.beta(t), self.sigma(t)
            return lincomb((x, epsilon(x, t)), (-0.5 * beta, beta / sigma), backend=backend)

        def diffusion(x, t):
            return _sqrt(self.beta(t))
        return drift, diffusion


class VPLinear(VPSchedule):
    """``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021's VP SDE; DDPM's in the limit)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        fn = "vp_linear"
        self.beta_min = _checks.real(fn, "beta_min", beta_min, 0)
        self.beta_max = _checks.real(fn, "beta_max", beta_max, 0)
        if not self.beta_max > self.beta_min:
            raise ValueError(f"{fn}: `beta_max` must be > `beta_min` ({self.beta_min}); got {self.beta_max}")

    def __repr__(self) -> str:
        return f"vp_linear(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def log_alpha_bar(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def t_from_log_alpha_bar(self, log_alpha_bar):
        # (beta_max - beta_min)/2 t^2 + beta_min t + log_alpha_bar = 0, the positive root
        d = self.beta_max - self.beta_min
        return 2.0 * (-log_alpha_bar) / (self.beta_min + _sqrt(self.beta_min**2 - 2.0 * d * log_alpha_bar))


class VPCosine(VPSchedule):
    """``alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2)`` (Nichol & Dhariwal 2021).

    ``alpha_bar(1)`` is 0 up to rounding: start sampling a little below ``t = 1``
    (e.g. at ``t_from_edm_sigma(80.0)``).
    """

    def __init__(self, s: float = 0.008):
        self.s = _checks.real("vp_cosine", "s", s, 0)
        self._log_f0 = 2.0 * math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2))

    def __repr__(self) -> str:
        return f"vp_cosine(s={self.s})"

    def _angle(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha_bar(self, t):
        angle = self._angle(t)
        if _is_tensor(angle):
            return 2.0 * torch.log(torch.cos(angle)) - self._log_f0
        return 2.0 * math.log(math.cos(angle)) - self._log_f0

    def beta(self, t):
        angle = self._angle(t)
        tan = torch.tan(angle) if _is_tensor(angle) else math.tan(angle)
        return math.pi / (1.0 + self.s) * tan

    def t_from_log_alpha_bar(self, log_alpha_bar):
        cos = _exp(0.5 * (log_alpha_bar + self._log_f0))
        angle = torch.arccos(cos) if _is_tensor(cos) else math.acos(cos)
        return angle * (2.0 / math.pi) * (1.0 + self.s) - self.s


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0) -> VPLinear:
    """The linear-beta VP schedule (see :class:`VPLinear`).

    Example:
        >>> schedule = vp_linear()
        >>> schedule.alpha_bar(1.0)  # exp(-(beta_min + (beta_max - beta_min) / 2))
        4.318574906034135e-05
    """
    return VPLinear(beta_min, beta_max)


def vp_cosine(s: float = 0.008) -> VPCosine:
    """The cosine VP schedule (see :class:`VPCosine`)."""
    return VPCosine(s)
