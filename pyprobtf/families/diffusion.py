"""Score-based diffusion: VP (DDPM) and EDM parameterisations, one object.

Forward noising in closed form: ``x_t = alpha(t) x_0 + sigma(t) eps``,
``eps ~ N(0, I)``, i.e. the SDE ``dx = f(t) x dt + g(t) dW`` with
``f = d log alpha / dt`` and ``g^2 = d sigma^2/dt - 2 f sigma^2``:

- ``"edm"`` (Karras et al. 2022): ``t = sigma``, ``alpha = 1`` (``f = 0``,
  ``g^2 = 2 sigma``); the network is the preconditioned denoiser
  ``D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4)`` trained with the
  lognormal noise distribution and EDM's weighting (``sigma_data`` is read off
  the data by :meth:`Diffusion.initialize`, which :func:`pyprobtf.fit` calls);
- ``"vp"`` (DDPM, Ho et al. 2020; Song et al. 2021): ``t`` in ``[t_min, 1]``,
  ``alpha^2 = alpha_bar(t)`` from the linear (``beta`` from 0.1 to 20) or
  cosine schedule, ``sigma^2 = 1 - alpha_bar``; the network predicts ``eps``,
  trained with DDPM's simple loss ``|eps_hat - eps|^2``, ``t`` uniform.

Both losses are denoising score matching, ``score(x, t) = (alpha D(x, t) - x) / sigma^2``.
Sampling, all through :mod:`pyprobtf.solvers`, starts from ``x_T = sigma(T) z``:

- ``"ode"`` (the default, and ``transform``): the probability-flow ODE
  ``dx/dt = f x - g^2 score / 2`` on a time grid spaced like EDM's
  (``sigma`` ``rho``-spaced from ``sigma_max`` to ``sigma_min``);
- ``"sde"``: the reverse SDE ``dx = (f x - g^2 score) dt + g dW`` (Euler-Maruyama);
- ``"langevin"``: annealed Langevin dynamics over the same noise levels.

``log_prob`` integrates the probability-flow ODE from the data to ``T``
with the instantaneous change of variables; ``F`` is that ODE's solution map
from ``sigma(T) z`` to the data end ``t_min`` (no final denoising jump, so F
stays invertible).
"""

from __future__ import annotations

import math

import torch

from pyprobtf import _checks, solvers
from pyprobtf.families._ode import ODEFamily, is_image
from pyprobtf.transform import Trajectory, draw_seed, seeded

PARAMETERIZATIONS = ("edm", "vp")
VP_SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ode", "sde", "langevin")


class Diffusion(ODEFamily):
    """A score-based diffusion model on any event shape (see the module docstring).

    Args:
        dim, event_shape: the shape of one sample (``dim=d`` is ``event_shape=(d,)``; ``(C, H, W)`` for
            images).
        parameterization: ``"edm"`` (default) or ``"vp"`` (DDPM).
        net: the network, ``net(x, t, context=None) -> (B, *event_shape)`` with ``t`` a ``(B,)`` tensor;
            the family wraps it in its parameterisation, as k-diffusion's ``Denoiser`` does: EDM's
            ``D(x, sigma) = c_skip x + c_out net(c_in x, ln(sigma) / 4)``, VP's ``eps = net(x, 2t - 1)``.
            ``None``: a :class:`~pyprobtf.nn.UNet` with ``unet_channels`` for image shapes, else a
            :class:`~pyprobtf.nn.TimeMLP` on ``[x, Fourier(x), Fourier(t), context]`` from ``hidden``,
            ``activation`` and ``x_frequencies``. ReLU by default: with EDM's preconditioning
            the network must learn only the non-linear part of the denoiser, and a SiLU MLP sat on a
            plateau for thousands of steps on the 2-D sets where a ReLU one did not.
        context_dropout: share of training rows whose context is replaced by the null context, for
            classifier-free guidance (``sample(..., guidance=w)``); see :mod:`pyprobtf.families._ode`.
        sigma_min, sigma_max: EDM's noise range (the data end and the base end).
        P_mean, P_std: EDM's training noise distribution, ``ln(sigma / sigma_data) ~ N(P_mean, P_std^2)``.
        sigma_data: the data's std for EDM's preconditioning; ``None``: 1 until
            :meth:`initialize` measures it.
        schedule, beta_min, beta_max, t_min: the VP schedule (``"linear"`` or
            ``"cosine"``) and its data end ``t_min``.
        rho: spacing of the solver's noise levels (EDM's 7).
        ode_steps, ode_method: the probability-flow ODE solver for ``transform``/``sample`` (``ode_steps``
            default: 32, 16 for image shapes).
        sde_steps, langevin_steps, langevin_step: the other samplers (``langevin_steps`` Langevin steps per
            noise level, over the ``ode_steps + 1`` levels of the ODE grid, each of size ``langevin_step * sigma^2``).
        log_prob_steps, divergence, n_probes: the likelihood ODE (RK4).
        base, context_dim, context_shape, num_classes: see :class:`~pyprobtf.ProbabilityTransform`.

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = Diffusion(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0, method="sde").shape
        torch.Size([4, 2])
    """

    fit_defaults = {"steps": 20_000, "batch_size": 512, "lr": 5e-3, "warmup": 200, "lr_final": 0.01}
    #: fit's defaults for image shapes (the UNet)
    image_fit_defaults = {"steps": 20_000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "lr_final": 0.02,
                          "ema": 0.99}

    def __init__(self, dim: int | None = None, *, event_shape=None, parameterization: str = "edm", net=None,
                 hidden=(128, 128, 128), activation: str = "relu", x_frequencies: int = 4,
                 unet_channels=(16, 32), sigma_min: float = 0.002, sigma_max: float = 80.0,
                 P_mean: float = -0.5, P_std: float = 1.5, sigma_data: float | None = None,
                 schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 rho: float = 7.0, ode_steps: int | None = None, ode_method: str = "heun", sde_steps: int = 256,
                 langevin_steps: int = 20, langevin_step: float = 0.1, log_prob_steps: int = 64,
                 divergence: str = "auto", n_probes: int = 1, base=None, context_dim: int = 0,
                 context_shape=None, num_classes: int = 0, context_dropout: float = 0.0):
        super().__init__(dim, event_shape=event_shape, ode_steps=1 if ode_steps is None else ode_steps,
                         ode_method=ode_method,
                         log_prob_steps=log_prob_steps, divergence=divergence, n_probes=n_probes, base=base,
                         context_dim=context_dim, context_shape=context_shape, num_classes=num_classes,
                         context_dropout=context_dropout)
        name = type(self).__name__
        if ode_steps is None:
            self.ode_steps = 16 if is_image(self.event_shape) else 32
        if is_image(self.event_shape):
            self.fit_defaults = dict(self.image_fit_defaults)
        self.parameterization = _checks.choice(name, "parameterization", parameterization, PARAMETERIZATIONS)
        _checks.choice(name, "schedule", schedule, VP_SCHEDULES)
        for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("P_std", P_std), ("rho", rho),
                           ("beta_min", beta_min), ("beta_max", beta_max), ("t_min", t_min),
                           ("langevin_step", langevin_step)):
            _checks.real(name, key, value, 0, low_open=True)
        if not sigma_min < sigma_max:
            raise ValueError(f"{name}: `sigma_min` must be below `sigma_max`; got {sigma_min} and {sigma_max}")
        if not t_min < 1:
            raise ValueError(f"{name}: `t_min` must be below 1; got {t_min}")
        _checks.optional(_checks.real, name, "sigma_data", sigma_data, 0, low_open=True)
        self.sigma_min, self.sigma_max, self.P_std = float(sigma_min), float(sigma_max), float(P_std)
        self.P_mean = _checks.real(name, "P_mean", P_mean)
        self.rho = float(rho)
        self.sde_steps = _checks.integer(name, "sde_steps", sde_steps, 1)
        self.langevin_steps = _checks.integer(name, "langevin_steps", langevin_steps, 1)
        self.langevin_step = float(langevin_step)
        self.register_buffer("sigma_data", torch.tensor(1.0 if sigma_data is None else float(sigma_data)))
        self._measure_sigma_data = sigma_data is None
        self.schedule = solvers.vp_linear(beta_min, beta_max) if schedule == "linear" else solvers.vp_cosine()
        if parameterization == "edm":
            self.t_data, self.t_base, self.clock = self.sigma_min, self.sigma_max, "sigma"
        else:
            self.t_data, self.t_base, self.clock = float(t_min), 1.0, "t"
        self.set_net(net, hidden, activation, x_frequencies, unet_channels)

    # -------------------------------------------------------------- the noising process
    def alpha(self, t):
        """Signal scale at time ``t`` (a float or a tensor)."""
        if self.parameterization == "vp":
            return self.schedule.alpha(t)
        return torch.ones_like(t) if isinstance(t, torch.Tensor) else 1.0

    def sigma(self, t):
        """Noise scale at time ``t``."""
        return self.schedule.sigma(t) if self.parameterization == "vp" else t

    def drift_coef(self, t: float) -> float:
        """f(t) in dx = f x dt + g dW."""
        return -0.5 * self.schedule.beta(t) if self.parameterization == "vp" else 0.0

    def diffusion_sq(self, t: float) -> float:
        """g(t)^2."""
        return self.schedule.beta(t) if self.parameterization == "vp" else 2.0 * t

    @property
    def base_scale(self) -> float:
        """``x_T = base_scale * z``: sigma at the base end."""
        return float(self.sigma(self.t_base))

    # -------------------------------------------------------------- the network
    def denoise(self, x: torch.Tensor, t, context=None, guidance=None) -> torch.Tensor:
        """``D(x, t)``: the network's estimate of ``E[x_0 | x_t = x]`` (guided by ``guidance=w``: the
        classifier-free mix of the network's outputs, so of ``D`` too, both being affine in it)."""
        if self.parameterization == "edm":
            sigma = t if isinstance(t, torch.Tensor) else x.new_full((x.shape[0],), float(t))
            sigma = self.broadcast(sigma)
            sd = self.sigma_data.to(x.dtype)
            total = sigma.square() + sd.square()
            c_skip, c_out, c_in = sd.square() / total, sigma * sd / total.sqrt(), 1 / total.sqrt()
            out = self.net_output(c_in * x, torch.log(sigma).reshape(-1) / 4, context, guidance)
            return c_skip * x + c_out * out
        eps = self._guided(self.predict_eps, x, t, context, guidance)
        alpha, sigma = self.alpha(t), self.sigma(t)
        if isinstance(t, torch.Tensor):
            alpha, sigma = self.broadcast(alpha), self.broadcast(sigma)
        return (x - sigma * eps) / alpha

    @staticmethod
    def _guided(fn, x, t, context, guidance):
        # guidance only when given, so that a replaced denoise(x, t, context) keeps working unguided.
        return fn(x, t, context) if guidance is None else fn(x, t, context, guidance)

    def predict_eps(self, x, t, context=None, guidance=None):
        """VP: the network's noise prediction (its time input is ``2t - 1``)."""
        tt = t if isinstance(t, torch.Tensor) else x.new_full((x.shape[0],), float(t))
        return self.net_output(x, 2 * tt - 1, context, guidance)

    def score(self, x: torch.Tensor, t, context=None, guidance=None) -> torch.Tensor:
        """``grad_x log p_t(x) = (alpha(t) D(x, t) - x) / sigma(t)^2``."""
        if self.parameterization == "vp":
            return -self._guided(self.predict_eps, x, t, context, guidance) / self.sigma(t)
        return (self._guided(self.denoise, x, t, context, guidance) - x) / (t * t)

    def _field(self, context, guidance=None):
        if self.parameterization == "edm":
            # The solvers step EDM fields on the denoiser's outputs directly (fewer passes).
            return solvers.edm_field(lambda x, sigma: self._guided(self.denoise, x, sigma, context, guidance))
        return super()._field(context, guidance)

    def velocity(self, x, t, context=None, guidance=None):
        """The probability-flow ODE's field ``dx/dt = f x - g^2 score / 2``."""
        if self.parameterization == "edm":
            return (x - self._guided(self.denoise, x, t, context, guidance)) / t
        return self.drift_coef(t) * x - 0.5 * self.diffusion_sq(t) * self.score(x, t, context, guidance)

    # -------------------------------------------------------------- training
    @torch.no_grad()
    def initialize(self, batch) -> None:
        """EDM: measure ``sigma_data`` from a batch of data (unless it was given); the network sees
        ``c_in x``, of unit variance. VP: set the network's input scale to the data's std."""
        x, _ = self.split_batch(batch, "initialize")
        if self.parameterization == "vp":
            super().initialize(batch)
        elif self._measure_sigma_data and x.shape[0] > 1:
            # Vectors: the mean of the coordinates' stds; images: the std of all pixels (a per-pixel mean
            # would count the always-dark borders as noise-free).
            std = x.std(0).mean() if len(self.event_shape) == 1 else x.std()
            self.sigma_data.fill_(float(std.clamp_min(1e-3)))

    def loss(self, batch):
        """Denoising score matching: EDM's weighted ``|D(x_0 + sigma n) - x_0|^2`` or DDPM's ``|eps_hat - eps|^2``."""
        x, context = self.split_batch(batch)
        context = self.drop_context(context)
        n = x.shape[0]
        eps = torch.randn_like(x)
        if self.parameterization == "edm":
            sd = self.sigma_data.to(x.dtype)
            sigma = (torch.randn(n, dtype=x.dtype, device=x.device) * self.P_std + self.P_mean).exp() * sd
            s = self.broadcast(sigma)
            weight = (s.square() + sd.square()) / (s * sd).square()
            d = self.denoise(x + s * eps, sigma, context)
            return (weight * (d - x).square()).flatten(1).sum(1).mean()
        t = self.t_data + (1 - self.t_data) * torch.rand(n, dtype=x.dtype, device=x.device)
        xt = self.broadcast(self.alpha(t)) * x + self.broadcast(self.sigma(t)) * eps
        return (self.predict_eps(xt, t, context) - eps).square().flatten(1).sum(1).mean()

    # -------------------------------------------------------------- the time grid and F
    def times(self, n_steps: int, towards_data: bool) -> list[float]:
        """Noise levels ``rho``-spaced from the base end to the data end (EDM's discretisation), as times."""
        if self.parameterization == "edm":
            grid = solvers.karras_sigmas(n_steps + 1, self.sigma_min, self.sigma_max, rho=self.rho,
                                         append_zero=False)
        else:
            # The same spacing of the noise-to-signal ratio sigma/alpha (EDM's sigma of the scaled
            # state x / alpha), mapped back to VP times.
            ratios = solvers.karras_sigmas(n_steps + 1, self.schedule.edm_sigma(self.t_data),
                                           self.schedule.edm_sigma(self.t_base), rho=self.rho, append_zero=False)
            grid = [self.t_base] + [self.schedule.t_from_edm_sigma(r) for r in ratios[1:-1]] + [self.t_data]
        grid = [float(v) for v in grid]
        return grid if towards_data else grid[::-1]

    def _to_ode(self, z):
        return z * self.base_scale

    def transform(self, z, context=None, *, steps=None, method=None, guidance=None):
        z, context = self._prep(z, "transform", "z", context)
        return super().transform(self._to_ode(z), context, steps=steps, method=method, guidance=guidance)

    def inverse(self, x, context=None, *, steps=None, method=None, guidance=None):
        return super().inverse(x, context, steps=steps, method=method, guidance=guidance) / self.base_scale

    def transform_and_ladj(self, z, context=None, *, steps=None, seed=0):
        z, context = self._prep(z, "transform_and_ladj", "z", context)
        x, ladj = super().transform_and_ladj(self._to_ode(z), context, steps=steps, seed=seed)
        return x, ladj + self.dim * math.log(self.base_scale)

    def inverse_and_ladj(self, x, context=None, *, steps=None, seed=0):
        z, ladj = super().inverse_and_ladj(x, context, steps=steps, seed=seed)
        return z / self.base_scale, ladj - self.dim * math.log(self.base_scale)

    def log_prob(self, x, context=None, *, steps=None, seed=0):
        """``log p(x)`` through the probability-flow ODE (see :meth:`ODEFamily.log_prob`)."""
        x, context = self._prep(x, "log_prob", "x", context)
        z, ladj = self.inverse_and_ladj(x, context, steps=steps, seed=seed)
        return self.base.log_prob(z) + ladj

    def trajectory(self, z, context=None, *, steps=None, method="ode", seed=0, guidance=None):
        """The states from ``z`` through every solver time of ``method`` (``"ode"``, ``"sde"``, ``"langevin"``)."""
        z, context = self._prep(z, "trajectory", "z", context)
        guidance = self._check_guidance(guidance, context)
        with torch.no_grad():
            _, states, times = self._sample_from(z, context, method, steps, seed, guidance)
        labels = [f"{self.clock}={t:.4g}" for t in times]
        return Trajectory([z] + list(states), ["z"] + labels)

    # -------------------------------------------------------------- samplers
    def _sample_from(self, z, context, method, steps, seed, guidance=None):
        """(x, states, the time of each state) of sampler ``method`` started at ``z``."""
        _checks.choice(type(self).__name__, "method", method, SAMPLERS)
        x_t = self._to_ode(z)
        if method == "ode":
            times = self.times(self._steps(steps, self.ode_steps), True)
            x, states = solvers.sample_ode(self._field(context, guidance), x_t, times, method=self.ode_method,
                                           return_trajectory=True)
            return x, states, times
        if method == "sde":
            times = self.times(self._steps(steps, self.sde_steps), True)

            def drift(x, t):
                return self.drift_coef(t) * x - self.diffusion_sq(t) * self.score(x, t, context, guidance)

            def diffusion(x, t):
                return math.sqrt(self.diffusion_sq(t))

            x, states = solvers.sample_sde(drift, diffusion, x_t, times, seed=seed, return_trajectory=True)
            return x, states, times
        # Annealed Langevin over the ODE's noise levels; the solver sees each level's sigma.
        times = self.times(self._steps(steps, self.ode_steps), True)
        sigmas = [float(self.sigma(t)) for t in times]
        time_of = dict(zip(sigmas, times))

        def score(x, s):
            return self.score(x, time_of[float(s)], context, guidance)

        # annealed_langevin's Langevin steps are eps * sigma^2 / (2 sigma_min^2): this eps makes them
        # langevin_step * sigma^2 at every level.
        x, states = solvers.annealed_langevin(score, x_t, sigmas, n_steps_each=self.langevin_steps,
                                              eps=2 * self.langevin_step * sigmas[-1] ** 2, seed=seed,
                                              return_trajectory=True)
        # The start, then one state per level (the last of its steps).
        return x, states[::self.langevin_steps], [times[0]] + times

    def sample(self, n: int, *, seed: int | None = None, method: str = "ode", steps: int | None = None,
               context=None, guidance: float | None = None):
        """``n`` samples by ``method``: ``"ode"`` (the probability-flow ODE, = ``transform`` of base draws),
        ``"sde"`` (the reverse SDE) or ``"langevin"`` (annealed Langevin). The same seed gives the same samples.
        ``guidance=w``: classifier-free guidance (a model trained with ``context_dropout``)."""
        n = _checks.integer(self._name("sample"), "n", n, 0)
        with torch.no_grad(), seeded(seed, self.device):
            z = self.base.sample((n,))
            context = self.check_context(context, n, "sample", like=z)
            guidance = self._check_guidance(guidance, context)
            noise_seed = seed if seed is not None else draw_seed()
            return self._sample_from(z, context, method, steps, noise_seed, guidance)[0]
