"""ContinuousFlow: a neural-ODE normalizing flow trained by maximum likelihood (FFJORD-style).

``F`` is the solution map of ``dx/dt = v(x, t)`` from ``t = 0`` (the base) to
``t = 1`` (the data). The log-density follows the instantaneous change of
variables, ``d log p(x_t) / dt = -div v(x_t, t)``, integrated jointly with the
state by :func:`pyprobtf.solvers.log_prob_ode`. Training maximises it on data
with a fixed-step RK4 solve (``train_steps``) that autograd differentiates
through, with the divergence estimated by Hutchinson's trace estimator
``E[eps^T (dv/dx) eps]`` (one vector-Jacobian product per probe, so the cost
does not grow with the dimension; Grathwohl et al. 2019). Evaluation
(``log_prob``) uses more steps and the exact divergence in low dimension.
"""

from __future__ import annotations

from pyprobtf import _checks, solvers
from pyprobtf.families._ode import DIVERGENCES, ODEFamily
from pyprobtf.transform import draw_seed


class ContinuousFlow(ODEFamily):
    """A continuous normalizing flow (neural ODE) on any event shape, trained by maximum likelihood.

    Args:
        dim, event_shape: the shape of one sample (``dim=d`` is ``event_shape=(d,)``; ``(C, H, W)`` for
            images).
        net: the velocity network, ``net(x, t, context=None) -> (B, *event_shape)``, ``t`` a ``(B,)`` tensor
            in [0, 1]. ``None``: a :class:`~pyprobtf.nn.UNet` with ``unet_channels`` for image shapes, else
            a :class:`~pyprobtf.nn.TimeMLP` on ``[x, Fourier(x), Fourier(t), context]`` from ``hidden``,
            ``activation`` and ``x_frequencies`` (a smooth activation keeps the ODE easy to solve; the
            Fourier features of ``x`` are scaled to the data's std by :meth:`initialize`).
        train_steps: RK4 steps of the likelihood solve during training.
        train_divergence: ``"hutchinson"`` (default) or ``"exact"`` during training.
        ode_steps, ode_method: the solver for ``transform``/``inverse``/``sample``.
        log_prob_steps, divergence, n_probes: the likelihood solve of ``log_prob``
            (``divergence="auto"``: exact for ``dim <= 16``) and the number of
            Hutchinson probes (training and evaluation).
        base, context_dim, context_shape, num_classes: see :class:`~pyprobtf.ProbabilityTransform`.

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = ContinuousFlow(dim=2)
        >>> _ = fit(model, toy("circles", 10_000), steps=20, progress=False)
        >>> model.log_prob(toy("circles", 3, seed=1)).shape
        torch.Size([3])
    """

    fit_defaults = {"steps": 5000, "batch_size": 256, "lr": 2e-3, "warmup": 100, "lr_final": 0.02,
                    "grad_clip": 10.0}

    def __init__(self, dim: int | None = None, *, event_shape=None, net=None, hidden=(64, 64, 64),
                 activation: str = "tanh", x_frequencies: int = 4, unet_channels=(16, 32), train_steps: int = 8,
                 train_divergence: str = "hutchinson", ode_steps: int = 32, ode_method: str = "rk4",
                 log_prob_steps: int = 64, divergence: str = "auto", n_probes: int = 1, base=None,
                 context_dim: int = 0, context_shape=None, num_classes: int = 0):
        super().__init__(dim, event_shape=event_shape, ode_steps=ode_steps, ode_method=ode_method,
                         log_prob_steps=log_prob_steps, divergence=divergence, n_probes=n_probes, base=base,
                         context_dim=context_dim, context_shape=context_shape, num_classes=num_classes)
        name = type(self).__name__
        self.train_steps = _checks.integer(name, "train_steps", train_steps, 1)
        self.train_divergence = _checks.choice(name, "train_divergence", train_divergence, DIVERGENCES[1:])
        self.set_net(net, hidden, activation, x_frequencies, unet_channels)

    def velocity(self, x, t, context=None, guidance=None):
        """``v(x, t)``, ``t`` in [0, 1]."""
        return self.net_output(x, t, context, guidance)

    def loss(self, batch):
        """Negative log-likelihood (nats per sample) from a ``train_steps``-step RK4 solve, Hutchinson divergence."""
        x, context = self.split_batch(batch)
        log_prob, _ = solvers.log_prob_ode(
            self._field(context), x, self.times(self.train_steps, False), self.base,
            divergence=self.train_divergence, n_probes=self.n_probes, method="rk4", seed=draw_seed(),
        )
        return -log_prob.mean()

