"""diffusers schedulers whose ``step()`` is one or two fused passes (``pip install "pyprobtf[diffusers]"``).

A one-line swap in any pipeline::

    from pyprobtf.integrations.diffusers import FusedEulerDiscreteScheduler
    pipe.scheduler = FusedEulerDiscreteScheduler.from_config(pipe.scheduler.config)

Each ``Fused*`` class subclasses the diffusers scheduler it replaces: ``set_timesteps``,
``add_noise``, the config (prediction types, timestep spacings, Karras/exponential/beta
sigmas, ``final_sigmas_type``, ...) and the step bookkeeping are the parent's own code.
``scale_model_input`` of the Euler and Heun schedulers (``sample / sqrt(sigma^2 + 1)``)
is one pass with a host coefficient. ``step()`` changes: the coefficients of the update are
computed on the host in float64 from the parent's (float32) sigmas or ``alphas_cumprod``,
and the update itself, with the conversion of the model's prediction folded in, is one
:func:`~pyprobtf.ops.lincomb` pass (diffusers makes 5 to 12 passes over the state per
step). The predicted original sample, where the parent returns one, is a second pass.

Noise of the stochastic steps (Euler with ``s_churn``, Euler-ancestral, DDIM with
``eta > 0``, SDE-DPM-Solver++, stochastic flow matching) is drawn inside that pass from
the Philox stream: each such step draws ONE 64-bit seed from ``generator`` (or from
torch's default generator when it is None), so a seeded generator reproduces a run; a
list of generators (diffusers' per-sample form) gives each sample its own seed, drawn
from its own generator, so a sample's noise does not depend on the batch it is in. The
numbers differ from diffusers' ``randn_tensor`` (same distribution). An explicit
``variance_noise`` tensor is used as given, as in diffusers.

Options the fused update does not cover (``clip_sample``, ``thresholding``, learned
variances, the DPM-Solver noise-prediction algorithms and third order, per-token
timesteps) run the parent's ``step()`` unchanged.
"""

from __future__ import annotations

import math

import torch

try:
    import diffusers as _diffusers
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerOutput
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("pyprobtf.integrations.diffusers needs diffusers: pip install 'pyprobtf[diffusers]' "
                      "(install it after torch, so that it does not pull another torch)") from exc

from pyprobtf._checks import FLOAT_DTYPES as _FLOAT_DTYPES
from pyprobtf.integrations import _noise
from pyprobtf.ops import lincomb

__all__ = [
    "FusedDDIMScheduler",
    "FusedDPMSolverMultistepScheduler",
    "FusedEulerAncestralDiscreteScheduler",
    "FusedEulerDiscreteScheduler",
    "FusedFlowMatchEulerDiscreteScheduler",
    "FusedHeunDiscreteScheduler",
]


# ----------------------------------------------------------------------------- shared glue


def _host(scheduler, name: str) -> list[float]:
    """``scheduler.<name>`` (a tensor) as Python floats, re-read only when the tensor object changes."""
    tensor = getattr(scheduler, name)
    cache = scheduler.__dict__.setdefault("_pyprobtf_host", {})
    entry = cache.get(name)
    if entry is None or entry[0] is not tensor:
        entry = (tensor, tensor.detach().double().cpu().tolist())
        cache[name] = entry
    return entry[1]


def _seed(generator, sample: torch.Tensor):
    """One seed per step from ``generator``: an int, or a (B,) tensor for a list of per-sample generators."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != sample.shape[0]:
            raise ValueError(f"step: `generator` must be one generator or a list of {sample.shape[0]} (one per "
                             f"sample); got a list of {len(generator)}")
        seeds = [_noise.seed_from_generator(g) for g in generator]
        return torch.tensor(seeds, dtype=torch.int64, device=sample.device)
    return _noise.seed_from_generator(generator)


def _update(tensors, coeffs, noise_std=0.0, generator=None, variance_noise=None):
    """lincomb of ``tensors`` (cast to the first one's dtype) plus ``noise_std`` times noise.

    The noise is ``variance_noise`` when given, else drawn in the kernel with a seed from ``generator``.
    """
    dtype = tensors[0].dtype
    tensors = [t if t.dtype == dtype else t.to(dtype) for t in tensors]
    if noise_std and variance_noise is not None:
        return lincomb((*tensors, variance_noise.to(tensors[0])), (*coeffs, noise_std))
    if noise_std:
        return lincomb(tensors, coeffs, noise_std=noise_std, seed=_seed(generator, tensors[0]))
    return lincomb(tensors, coeffs)


def _check_timestep(name: str, timestep) -> None:
    if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
        raise ValueError(
            "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to"
            f" `{name}.step()` is not supported. Make sure to pass"
            " one of the `scheduler.timesteps` as a timestep."
        )


def _to_denoised(prediction_type: str, sigma: float, name: str) -> tuple[float, float]:
    """``(a, b)`` with ``D = a x + b model_output`` for the sigma-parameterised (Karras) schedulers."""
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5
    if prediction_type in ("sample", "original_sample"):
        return 0.0, 1.0
    raise ValueError(f"{name}: prediction_type given as {prediction_type} must be one of `epsilon`, `sample`, "
                     "or `v_prediction`")


def _scaled_input(scheduler, sample, timestep):
    """The Karras schedulers' ``scale_model_input``, ``sample / sqrt(sigma^2 + 1)``, as one pass."""
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)
    sigma = _host(scheduler, "sigmas")[scheduler.step_index]
    return lincomb((sample,), (1.0 / (sigma * sigma + 1.0) ** 0.5,))


def _denoised(sample, model_output, a: float, b: float):
    if a == 0.0 and b == 1.0:
        return model_output
    return _update((sample, model_output), (a, b))


# ----------------------------------------------------------------------------- Euler family


class FusedEulerDiscreteScheduler(_diffusers.EulerDiscreteScheduler):
    """``EulerDiscreteScheduler`` with ``step()`` as one fused pass (``s_churn`` noise included).

    Example:
        >>> pipe.scheduler = FusedEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    """

    def scale_model_input(self, sample, timestep):
        if not isinstance(sample, torch.Tensor) or sample.dtype not in _FLOAT_DTYPES:
            return super().scale_model_input(sample, timestep)
        sample = _scaled_input(self, sample, timestep)
        self.is_scale_input_called = True
        return sample

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, return_dict: bool = True):
        _check_timestep("EulerDiscreteScheduler", timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = _host(self, "sigmas")
        sigma, sigma_next = sigmas[self.step_index], sigmas[self.step_index + 1]
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        sample = sample.to(torch.float32)
        if gamma > 0:  # noise into the sample before the update: the parent's pred_original_sample uses it
            sample = _update((sample,), (1.0,), s_noise * (sigma_hat**2 - sigma**2) ** 0.5, generator)
        # epsilon uses sigma_hat, v_prediction the un-churned sigma (as the parent)
        a, b = _to_denoised(self.config.prediction_type, sigma_hat if self.config.prediction_type == "epsilon"
                            else sigma, "EulerDiscreteScheduler")
        r = (sigma_next - sigma_hat) / sigma_hat  # x + r (x - D)
        prev_sample = _update((sample, model_output), (1.0 + r - r * a, -r * b)).to(model_output.dtype)
        pred_original_sample = _denoised(sample, model_output, a, b)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class FusedEulerAncestralDiscreteScheduler(_diffusers.EulerAncestralDiscreteScheduler):
    """``EulerAncestralDiscreteScheduler`` with ``step()`` as one fused pass, the noise drawn in the kernel."""

    def scale_model_input(self, sample, timestep):
        if not isinstance(sample, torch.Tensor) or sample.dtype not in _FLOAT_DTYPES:
            return super().scale_model_input(sample, timestep)
        sample = _scaled_input(self, sample, timestep)
        self.is_scale_input_called = True
        return sample

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        _check_timestep("EulerDiscreteScheduler", timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = _host(self, "sigmas")
        sigma, sigma_to = sigmas[self.step_index], sigmas[self.step_index + 1]
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        a, b = _to_denoised(self.config.prediction_type, sigma, "EulerAncestralDiscreteScheduler")
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        sample = sample.to(torch.float32)
        r = (sigma_down - sigma) / sigma
        prev_sample = _update((sample, model_output), (1.0 + r - r * a, -r * b), sigma_up, generator)
        prev_sample = prev_sample.to(model_output.dtype)
        pred_original_sample = _denoised(sample, model_output, a, b)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample,
                                                     pred_original_sample=pred_original_sample)


class FusedHeunDiscreteScheduler(_diffusers.HeunDiscreteScheduler):
    """``HeunDiscreteScheduler`` with each of its two stages one fused pass.

    The first stage keeps the sample and the model output (not a derivative tensor); the
    second combines both stages' samples and outputs in one pass of four tensors.
    """

    def scale_model_input(self, sample, timestep):
        if not isinstance(sample, torch.Tensor) or sample.dtype not in _FLOAT_DTYPES:
            return super().scale_model_input(sample, timestep)
        return _scaled_input(self, sample, timestep)

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        if self.config.clip_sample:
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = _host(self, "sigmas")
        if self.state_in_first_order:
            sigma, sigma_next = sigmas[self.step_index], sigmas[self.step_index + 1]
            a, b = _to_denoised(self.config.prediction_type, sigma, "HeunDiscreteScheduler")
            dt = sigma_next - sigma
            r = dt / sigma
            prev_sample = _update((sample, model_output), (1.0 + r - r * a, -r * b))
            self._pyprobtf_first = (model_output, (1.0 - a) / sigma, -b / sigma)  # derivative = c x + c' m
            self.prev_derivative = None
            self.dt = dt  # a float: the parent only tests it for None (state_in_first_order)
            self.sample = sample
        else:
            sigma_next = sigmas[self.step_index]
            a, b = _to_denoised(self.config.prediction_type, sigma_next, "HeunDiscreteScheduler")
            m_first, c_x, c_m = self._pyprobtf_first
            dt = self.dt
            h = 0.5 * dt  # x1 + dt/2 (d1 + d2), d1 = c_x x1 + c_m m1, d2 = ((1 - a) x2 - b m2) / sigma_next
            first = self.sample
            prev_sample = _update((first, m_first, sample, model_output),
                                  (1.0 + h * c_x, h * c_m, h * (1.0 - a) / sigma_next, -h * b / sigma_next))
            self.prev_derivative, self.dt, self.sample, self._pyprobtf_first = None, None, None, None
        pred_original_sample = _denoised(sample, model_output, a, b)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


# ----------------------------------------------------------------------------- DPM-Solver++


class FusedDPMSolverMultistepScheduler(_diffusers.DPMSolverMultistepScheduler):
    """``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M and its SDE variant) with fused passes.

    Per step: the data prediction (``model_outputs``, as the parent keeps them) is one
    pass, the update of order 1 or 2 (with SDE noise in the kernel) another.
    ``algorithm_type`` ``"dpmsolver++"`` or ``"sde-dpmsolver++"`` with ``solver_order <= 2``
    is fused; other settings run the parent's step.
    """

    def _fused(self) -> bool:
        c = self.config
        return (c.algorithm_type in ("dpmsolver++", "sde-dpmsolver++") and c.solver_order <= 2
                and not c.thresholding and c.variance_type not in ("learned", "learned_range")
                and c.prediction_type in ("epsilon", "sample", "v_prediction", "flow_prediction"))

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        if not self._fused():
            return super().step(model_output, timestep, sample, generator=generator, variance_noise=variance_noise,
                                return_dict=return_dict)
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        n = len(self.timesteps)
        lower_order_final = (self.step_index == n - 1) and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        sigmas = _host(self, "sigmas")
        i = self.step_index
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(sigmas[i])
        if c.prediction_type == "epsilon":
            a, b = 1.0 / alpha_s0, -sigma_s0 / alpha_s0
        elif c.prediction_type == "sample":
            a, b = 0.0, 1.0
        elif c.prediction_type == "v_prediction":
            a, b = alpha_s0, -sigma_s0
        else:  # flow_prediction
            a, b = 1.0, -sigmas[i]
        x0_pred = _denoised(sample, model_output, a, b)
        for k in range(c.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0_pred
        sample = sample.to(torch.float32)
        sde = c.algorithm_type == "sde-dpmsolver++"
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigmas[i + 1])
        second = not (c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final)
        if sigma_t == 0.0:  # lambda_t = inf: exp(-h) = 0, the update is alpha_t x0_pred
            tensors, coeffs, noise_std = (x0_pred,), (alpha_t,), 0.0
        else:
            lam = lambda alpha, sig: math.log(alpha) - math.log(sig)  # noqa: E731
            h = lam(alpha_t, sigma_t) - lam(alpha_s0, sigma_s0)
            if sde:
                c_x, c_0 = sigma_t / sigma_s0 * math.exp(-h), -alpha_t * math.expm1(-2.0 * h)
                noise_std = sigma_t * math.sqrt(-math.expm1(-2.0 * h))
            else:
                c_x, c_0 = sigma_t / sigma_s0, -alpha_t * math.expm1(-h)
                noise_std = 0.0
            if not second:
                tensors, coeffs = (sample, x0_pred), (c_x, c_0)
            else:
                alpha_s1, sigma_s1 = self._sigma_to_alpha_sigma_t(sigmas[i - 1])
                r0 = (lam(alpha_s0, sigma_s0) - lam(alpha_s1, sigma_s1)) / h
                if c.solver_type == "midpoint":
                    c_1 = 0.5 * c_0
                elif sde:  # heun
                    c_1 = alpha_t * (-math.expm1(-2.0 * h) / (-2.0 * h) + 1.0)
                else:
                    c_1 = alpha_t * (math.expm1(-h) / h + 1.0)
                c_1 /= r0  # D1 = (m0 - m1) / r0
                tensors, coeffs = (sample, x0_pred, self.model_outputs[-2]), (c_x, c_0 + c_1, -c_1)
        prev_sample = _update(tensors, coeffs, noise_std if sde else 0.0, generator, variance_noise)
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


# ----------------------------------------------------------------------------- DDIM


class FusedDDIMScheduler(_diffusers.DDIMScheduler):
    """``DDIMScheduler`` (any ``eta``) with ``step()`` as one fused pass, the eta-noise drawn in the kernel."""

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        c = self.config
        if c.thresholding or c.clip_sample:
            return super().step(model_output, timestep, sample, eta=eta,
                                use_clipped_model_output=use_clipped_model_output, generator=generator,
                                variance_noise=variance_noise, return_dict=return_dict)
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError(
                "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                " `variance_noise` stays `None`."
            )
        t = int(timestep)
        prev_t = t - c.num_train_timesteps // self.num_inference_steps
        alphas = _host(self, "alphas_cumprod")
        ab = alphas[t]
        ab_prev = alphas[prev_t] if prev_t >= 0 else float(self.final_alpha_cumprod)
        sa, sb = ab**0.5, (1.0 - ab) ** 0.5
        if c.prediction_type == "epsilon":  # x0 = x0_x x + x0_m m, eps = e_x x + e_m m
            x0_x, x0_m, e_x, e_m = 1.0 / sa, -sb / sa, 0.0, 1.0
        elif c.prediction_type == "sample":
            x0_x, x0_m, e_x, e_m = 0.0, 1.0, 1.0 / sb, -sa / sb
        elif c.prediction_type == "v_prediction":
            x0_x, x0_m, e_x, e_m = sa, -sb, sb, sa
        else:
            raise ValueError(f"prediction_type given as {c.prediction_type} must be one of `epsilon`, `sample`, or"
                             " `v_prediction`")
        variance = ((1.0 - ab_prev) / (1.0 - ab)) * (1.0 - ab / ab_prev)
        std_dev_t = eta * variance**0.5
        direction = (1.0 - ab_prev - std_dev_t**2) ** 0.5
        prev_sample = _update((sample, model_output),
                              (ab_prev**0.5 * x0_x + direction * e_x, ab_prev**0.5 * x0_m + direction * e_m),
                              std_dev_t if eta > 0 else 0.0, generator, variance_noise)
        pred_original_sample = _denoised(sample, model_output, x0_x, x0_m)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


# ----------------------------------------------------------------------------- flow matching


class FusedFlowMatchEulerDiscreteScheduler(_diffusers.FlowMatchEulerDiscreteScheduler):
    """``FlowMatchEulerDiscreteScheduler`` (rectified-flow pipelines) with ``step()`` as one fused pass."""

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, per_token_timesteps=None,
             return_dict: bool = True):
        if per_token_timesteps is not None:
            return super().step(model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                s_noise=s_noise, generator=generator, per_token_timesteps=per_token_timesteps,
                                return_dict=return_dict)
        _check_timestep("FlowMatchEulerDiscreteScheduler", timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = _host(self, "sigmas")
        sigma, sigma_next = sigmas[self.step_index], sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        if self.config.stochastic_sampling:  # (1 - s') (x - s m) + s' noise
            prev_sample = _update((sample, model_output), (1.0 - sigma_next, -(1.0 - sigma_next) * sigma),
                                  sigma_next, generator)
        else:
            prev_sample = _update((sample, model_output), (1.0, sigma_next - sigma))
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)
