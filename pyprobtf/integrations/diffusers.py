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
from its own generator, so a sample's noise does not depend on the batch it is in. A
CUDA generator gives one seed per sample, drawn on the device so that the step never
waits for the GPU (reproducible too, a different stream from a CPU generator's). The
numbers differ from diffusers' ``randn_tensor`` (same distribution). An explicit
``variance_noise`` tensor is used as given, as in diffusers.

Options the fused update does not cover (``clip_sample``, ``thresholding``, learned
variances, the DPM-Solver noise-prediction algorithms and third order, per-token
timesteps) run the parent's ``step()`` unchanged.

``FusedUniPCMultistepScheduler`` keeps the parent's ``step()`` and replaces the three
updates it calls (model-output conversion, UniC corrector, UniP predictor) with one
lincomb pass each (two for the order-3 corrector); ``thresholding``'s clamp stays the
parent's, between the fused conversion and the fused updates.
"""

from __future__ import annotations

import math

import numpy
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
    "FusedUniPCMultistepScheduler",
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
    """The seed of one step from ``generator``: an int for a CPU generator; (B,) per-row seeds for a list of
    per-sample generators, or drawn on the device from a CUDA generator (no host sync)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != sample.shape[0]:
            raise ValueError(f"step: `generator` must be one generator or a list of {sample.shape[0]} (one per "
                             f"sample); got a list of {len(generator)}")
        if all(_noise.on_cpu(g) for g in generator):
            seeds = [_noise.seed_from_generator(g) for g in generator]
            return torch.tensor(seeds, dtype=torch.int64, device=sample.device)
        return torch.cat([_noise.seed_from_generator(g, 1).to(sample.device) for g in generator])
    if _noise.on_cpu(generator):
        return _noise.seed_from_generator(generator)
    return _noise.seed_from_generator(generator, sample.shape[0]).to(sample.device)


def _update(tensors, coeffs, noise_std=0.0, generator=None, variance_noise=None):
    """lincomb of ``tensors`` (cast to the first one's dtype) plus ``noise_std`` times noise.

    The noise is ``variance_noise`` when given, else drawn in the kernel with a seed from ``generator``.
    """
    dtype = tensors[0].dtype
    tensors = [_as(t, dtype) for t in tensors]
    if noise_std and variance_noise is not None:
        return lincomb((*tensors, variance_noise.to(tensors[0])), (*coeffs, noise_std))
    if noise_std:
        return lincomb(tensors, coeffs, noise_std=noise_std, seed=_seed(generator, tensors[0]))
    return lincomb(tensors, coeffs)


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the dispatch cost of a no-op call (about 1 us, a few % of a small step)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


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


class _ScaledInputInOnePass:
    """``scale_model_input`` as one fused pass for floating-point tensors (anything else: the parent's)."""

    def scale_model_input(self, sample, timestep):
        if not isinstance(sample, torch.Tensor) or sample.dtype not in _FLOAT_DTYPES:
            return super().scale_model_input(sample, timestep)
        sample = _scaled_input(self, sample, timestep)
        if hasattr(self, "is_scale_input_called"):  # the Euler schedulers' flag (Heun has none)
            self.is_scale_input_called = True
        return sample


class FusedEulerDiscreteScheduler(_ScaledInputInOnePass, _diffusers.EulerDiscreteScheduler):
    """``EulerDiscreteScheduler`` with ``step()`` as one fused pass (``s_churn`` noise included).

    Example:
        >>> pipe.scheduler = FusedEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    """

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, return_dict: bool = True):
        _check_timestep("EulerDiscreteScheduler", timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigmas = _host(self, "sigmas")
        sigma, sigma_next = sigmas[self.step_index], sigmas[self.step_index + 1]
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        sample = _as(sample, torch.float32)
        if gamma > 0:  # noise into the sample before the update: the parent's pred_original_sample uses it
            sample = _update((sample,), (1.0,), s_noise * (sigma_hat**2 - sigma**2) ** 0.5, generator)
        # epsilon uses sigma_hat, v_prediction the un-churned sigma (as the parent)
        a, b = _to_denoised(self.config.prediction_type, sigma_hat if self.config.prediction_type == "epsilon"
                            else sigma, "EulerDiscreteScheduler")
        r = (sigma_next - sigma_hat) / sigma_hat  # x + r (x - D)
        prev_sample = _as(_update((sample, model_output), (1.0 + r - r * a, -r * b)), model_output.dtype)
        pred_original_sample = _denoised(sample, model_output, a, b)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class FusedEulerAncestralDiscreteScheduler(_ScaledInputInOnePass, _diffusers.EulerAncestralDiscreteScheduler):
    """``EulerAncestralDiscreteScheduler`` with ``step()`` as one fused pass, the noise drawn in the kernel."""

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
        sample = _as(sample, torch.float32)
        r = (sigma_down - sigma) / sigma
        prev_sample = _update((sample, model_output), (1.0 + r - r * a, -r * b), sigma_up, generator)
        prev_sample = _as(prev_sample, model_output.dtype)
        pred_original_sample = _denoised(sample, model_output, a, b)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample,
                                                     pred_original_sample=pred_original_sample)


class FusedHeunDiscreteScheduler(_ScaledInputInOnePass, _diffusers.HeunDiscreteScheduler):
    """``HeunDiscreteScheduler`` with each of its two stages one fused pass.

    The first stage keeps the sample and the model output (not a derivative tensor); the
    second combines both stages' samples and outputs in one pass of four tensors.
    """

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
        sample = _as(sample, torch.float32)
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
        prev_sample = _as(prev_sample, model_output.dtype)
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
        sample = _as(sample, torch.float32)
        if self.config.stochastic_sampling:  # (1 - s') (x - s m) + s' noise
            prev_sample = _update((sample, model_output), (1.0 - sigma_next, -(1.0 - sigma_next) * sigma),
                                  sigma_next, generator)
        else:
            prev_sample = _update((sample, model_output), (1.0, sigma_next - sigma))
        self._step_index += 1
        prev_sample = _as(prev_sample, model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


# ----------------------------------------------------------------------------- UniPC


def _promoted(*tensors):
    """``tensors`` cast to their promoted dtype, as diffusers' tensor arithmetic would compute."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors]


class FusedUniPCMultistepScheduler(_diffusers.UniPCMultistepScheduler):
    """``UniPCMultistepScheduler`` (UniP predictor, UniC corrector) with each update one fused pass.

    ``step()`` is the parent's (its bookkeeping: ``step_index``, ``this_order``,
    ``last_sample``, ``lower_order_nums``, ``disable_corrector``); the three updates it
    calls are replaced. The predictor ``multistep_uni_p_bh_update`` and the corrector
    ``multistep_uni_c_bh_update`` are linear in the sample and the stored (converted)
    model outputs: their coefficients (``h``, ``rks``, ``B(h)`` and the ``rhos`` of the
    small linear solve) are computed on the host in float64 from the parent's sigmas, in
    diffusers' order, and the update is ONE :func:`~pyprobtf.ops.lincomb` pass (two for
    the order-3 corrector, which combines five tensors). ``convert_model_output`` is one
    pass too (none when it returns the model output itself).

    Fused: ``solver_order`` 1/2/3, ``solver_type`` ``"bh1"``/``"bh2"``, ``predict_x0``
    True/False, every prediction type the parent accepts, ``lower_order_final``,
    ``disable_corrector``, every sigma schedule (Karras, exponential, beta, flow, custom)
    and ``final_sigmas_type``. Run by the parent's code: the clamp of ``thresholding``
    (a non-linear step between the conversion and the updates, which stay fused), a
    ``solver_p`` predictor, the deprecated positional-timestep call forms, and an
    update whose coefficients are not finite or whose small linear solve is singular,
    i.e. into a zero final sigma with ``solver_type="bh1"`` or ``predict_x0=False``
    (where the parent's own arithmetic gives NaN: ``B(h) = -inf`` times its zero
    residual) or of order >= 2 (no ``lower_order_final``): there the parent's update
    runs, so its result (NaN) or its error (a singular solve at order 3) is its own.

    Example:
        >>> pipe.scheduler = FusedUniPCMultistepScheduler.from_config(pipe.scheduler.config)
    """

    def _alpha_sigma_lambda(self, index: int):
        """``(alpha, sigma, lambda)`` at ``self.sigmas[index]`` in float64 (lambda = +inf at sigma 0)."""
        alpha, sigma = self._sigma_to_alpha_sigma_t(numpy.float64(_host(self, "sigmas")[index]))
        return alpha, sigma, numpy.log(alpha) - numpy.log(sigma)

    def _bh_coefficients(self, index_t: int, index_s0: int, order: int):
        """The scalars of a UniP/UniC update from ``sigmas[index_s0]`` to ``sigmas[index_t]``, as diffusers.

        Returns ``(c_x, scale, h_phi_1, B_h, rks, R, b)``: the update is
        ``c_x x - scale h_phi_1 m0 - scale B_h sum_k rho_k D_k``.
        """
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index_t)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index_s0)
        h = lambda_t - lambda_s0
        rks = [(self._alpha_sigma_lambda(index_s0 - i)[2] - lambda_s0) / h for i in range(1, order)]
        rks.append(numpy.float64(1.0))
        hh = -h if self.predict_x0 else h
        h_phi_1 = numpy.expm1(hh)  # h phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if self.config.solver_type == "bh1" else numpy.expm1(hh)
        R, b = [], []
        for i in range(1, order + 1):
            R.append([rk ** (i - 1) for rk in rks])
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        if self.predict_x0:
            c_x, scale = sigma_t / sigma_s0, alpha_t
        else:
            c_x, scale = alpha_t / alpha_s0, sigma_t
        return c_x, scale, h_phi_1, B_h, rks, numpy.array(R), numpy.array(b)

    @staticmethod
    def _solve(R, b):
        """The rhos: ``R rho = b``; NaNs when ``R`` is singular or not finite (the caller then runs the parent)."""
        try:
            return list(numpy.linalg.solve(R, b))
        except (numpy.linalg.LinAlgError, ValueError):
            return [numpy.nan] * len(b)

    @staticmethod
    def _combine(c_x, scale, h_phi_1, B_h, rks, rhos, rho_t=None):
        """Coefficients of ``(x, m0, m_1.., [m_t])`` for ``c_x x - scale h_phi_1 m0 - scale B_h (sum rho_k D_k)``.

        ``D_k = (m_k - m0) / r_k`` for the stored outputs, ``D_t = m_t - m0`` for the corrector's new one.
        """
        c_k = [-scale * B_h * rho / rk for rho, rk in zip(rhos, rks)]
        c_0 = -scale * h_phi_1 - sum(c_k)
        if rho_t is None:
            return [c_x, c_0, *c_k]
        c_t = -scale * B_h * rho_t
        return [c_x, c_0 - c_t, *c_k, c_t]

    @staticmethod
    def _lincomb(tensors, coeffs, dtype):
        """``sum coeffs[i] tensors[i]`` in ``dtype``: one lincomb pass, or two when there are more than four."""
        tensors = [t if t.dtype == dtype else t.to(dtype) for t in tensors]
        coeffs = [float(c) for c in coeffs]
        if len(tensors) <= 4:
            return lincomb(tensors, coeffs)
        head = lincomb(tensors[:3], coeffs[:3])
        return lincomb([head, *tensors[3:]], [1.0, *coeffs[3:]])

    def convert_model_output(self, model_output, *args, sample=None, **kwargs):
        if args or kwargs or sample is None:  # deprecated call forms: the parent's checks and warnings
            return super().convert_model_output(model_output, *args, sample=sample, **kwargs)
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(numpy.float64(_host(self, "sigmas")[self.step_index]))
        prediction_type = self.config.prediction_type
        if self.predict_x0:
            if prediction_type == "epsilon":
                a, b = 1.0 / alpha_t, -sigma_t / alpha_t
            elif prediction_type == "v_prediction":
                a, b = alpha_t, -sigma_t
            elif prediction_type == "flow_prediction":
                a, b = 1.0, -_host(self, "sigmas")[self.step_index]
            elif prediction_type == "sample":
                a, b = None, None
            else:
                return super().convert_model_output(model_output, sample=sample)  # raises its ValueError
            if a is None:
                x0_pred = model_output
            else:
                x0_pred = lincomb(_promoted(sample, model_output), (float(a), float(b)))
            if self.config.thresholding:  # a per-sample clamp: the parent's code
                x0_pred = self._threshold_sample(x0_pred)
            return x0_pred
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "sample":
            a, b = 1.0 / sigma_t, -alpha_t / sigma_t
        elif prediction_type == "v_prediction":
            a, b = sigma_t, alpha_t
        else:
            return super().convert_model_output(model_output, sample=sample)  # raises its ValueError
        return lincomb(_promoted(sample, model_output), (float(a), float(b)))

    def multistep_uni_p_bh_update(self, model_output, *args, sample=None, order=None, **kwargs):
        if args or kwargs or sample is None or order is None or self.solver_p:
            return super().multistep_uni_p_bh_update(model_output, *args, sample=sample, order=order, **kwargs)
        i = self.step_index
        with numpy.errstate(all="ignore"):
            c_x, scale, h_phi_1, B_h, rks, R, b = self._bh_coefficients(i + 1, i, order)
            if order == 1:
                rhos = []
            elif order == 2:
                rhos = [0.5]
            else:
                rhos = self._solve(R[:-1, :-1], b[:-1])
            coeffs = self._combine(c_x, scale, h_phi_1, B_h, rks[:-1], rhos)
            # the parent multiplies scale * B_h by its (zero) order-1 residual too: NaN when B_h is infinite
            finite = numpy.all(numpy.isfinite([*coeffs, scale * B_h]))
        if not finite:
            return super().multistep_uni_p_bh_update(model_output, sample=sample, order=order)
        outputs = self.model_outputs
        tensors = [sample, outputs[-1], *(outputs[-(k + 1)] for k in range(1, order))]
        return self._lincomb(tensors, coeffs, sample.dtype)

    def multistep_uni_c_bh_update(self, this_model_output, *args, last_sample=None, this_sample=None, order=None,
                                  **kwargs):
        if args or kwargs or last_sample is None or this_sample is None or order is None:
            return super().multistep_uni_c_bh_update(this_model_output, *args, last_sample=last_sample,
                                                     this_sample=this_sample, order=order, **kwargs)
        i = self.step_index
        with numpy.errstate(all="ignore"):
            c_x, scale, h_phi_1, B_h, rks, R, b = self._bh_coefficients(i, i - 1, order)
            rhos = [0.5] if order == 1 else self._solve(R, b)
            coeffs = self._combine(c_x, scale, h_phi_1, B_h, rks[:-1], rhos[:-1], rho_t=rhos[-1])
            finite = numpy.all(numpy.isfinite(coeffs))
        if not finite:
            return super().multistep_uni_c_bh_update(this_model_output, last_sample=last_sample,
                                                     this_sample=this_sample, order=order)
        outputs = self.model_outputs
        tensors = [last_sample, outputs[-1], *(outputs[-(k + 1)] for k in range(1, order)), this_model_output]
        return self._lincomb(tensors, coeffs, last_sample.dtype)
