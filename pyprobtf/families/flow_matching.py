"""Flow matching on the linear path, with optional minibatch optimal-transport pairing.

The path from a base draw ``z`` (``t = 0``) to a data point ``x`` (``t = 1``)
is ``x_t = (1 - (1 - sigma_min) t) z + t x`` (a straight line; ``sigma_min = 0``
by default); its velocity is ``u = x - (1 - sigma_min) z``. The conditional
flow-matching loss regresses a field ``v(x_t, t)`` on ``u``:
``E_{t, z, x} |v(x_t, t) - u|^2``, whose minimiser is the marginal velocity
that carries the base to the data. ``F`` is the solution map of
``dx/dt = v(x, t)`` from 0 to 1; ``log_prob`` integrates ``-div v`` along it.

Minibatch OT (``ot="exact"`` or ``"sinkhorn"``) re-pairs each batch's ``z``
with its ``x`` to (nearly) minimise ``sum |x - z|^2`` before building the
paths: straighter, lower-variance targets (Tong et al. 2023; Pooladian et al. 2023).
"""

from __future__ import annotations


import torch

from pyprobtf import _checks
from pyprobtf import ot as _ot
from pyprobtf.families._ode import ODEFamily, is_image

OT_CHOICES = (None, "exact", "sinkhorn")


class FlowMatching(ODEFamily):
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023) on any event shape.

    Args:
        dim, event_shape: the shape of one sample (``dim=d`` is ``event_shape=(d,)``; ``(C, H, W)`` for
            images).
        net: the velocity network, ``net(x, t, context=None) -> (B, *event_shape)`` with ``t`` a ``(B,)``
            tensor in [0, 1] (``context`` as the model was built to take it: a ``(B, *context_shape)``
            tensor or ``(B,)`` int64 labels). ``None``: a :class:`~pyprobtf.nn.UNet` with
            ``unet_channels`` for image shapes, else a :class:`~pyprobtf.nn.TimeMLP` from
            ``hidden``, ``activation`` and ``x_frequencies`` (Fourier frequencies per coordinate, scaled
            to the data's std by :meth:`initialize`).
        context_dropout: share of training rows whose context is replaced by the null context, for
            classifier-free guidance (``sample(..., guidance=w)``); see :mod:`pyprobtf.families._ode`.
        ot: minibatch optimal-transport pairing of noise and data: ``None``
            (independent pairs), ``"exact"`` (optimal assignment; needs SciPy)
            or ``"sinkhorn"`` (entropic plan by POT; for large batches).
        sinkhorn_reg: Sinkhorn's regularisation as a share of the mean cost.
        sigma_min: width of the conditional path at the data end.
        ode_steps, ode_method: the solver for ``transform``/``inverse``/``sample`` (``ode_steps`` default:
            32, 8 for image shapes).
        log_prob_steps: RK4 steps for ``log_prob`` and the log-determinants.
        divergence: ``"auto"`` (exact for ``dim <= 16``), ``"exact"`` or ``"hutchinson"``.
        base, context_dim, context_shape, num_classes: see :class:`~pyprobtf.ProbabilityTransform`.

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = FlowMatching(dim=2)
        >>> _ = fit(model, toy("checkerboard", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])

        On images, with a network of one's own and class labels::

            model = FlowMatching(event_shape=(1, 8, 8), net=my_unet, num_classes=10, context_dropout=0.1)
            x = model.sample(16, context=3, guidance=2.0)
    """

    fit_defaults = {"steps": 20_000, "batch_size": 512, "lr": 5e-3, "warmup": 200, "lr_final": 0.01}
    #: fit's defaults for image shapes (the UNet)
    image_fit_defaults = {"steps": 20_000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "lr_final": 0.02,
                          "ema": 0.99}

    def __init__(self, dim: int | None = None, *, event_shape=None, net=None, hidden=(128, 128, 128),
                 activation: str = "relu", x_frequencies: int = 4, unet_channels=(16, 32),
                 ot: str | None = None, sinkhorn_reg: float = 0.05, sigma_min: float = 0.0,
                 ode_steps: int | None = None, ode_method: str = "rk4", log_prob_steps: int = 64,
                 divergence: str = "auto", n_probes: int = 1,
                 base=None, context_dim: int = 0, context_shape=None, num_classes: int = 0,
                 context_dropout: float = 0.0):
        super().__init__(dim, event_shape=event_shape, ode_steps=1 if ode_steps is None else ode_steps,
                         ode_method=ode_method, log_prob_steps=log_prob_steps, divergence=divergence,
                         n_probes=n_probes, base=base, context_dim=context_dim, context_shape=context_shape,
                         num_classes=num_classes, context_dropout=context_dropout)
        name = type(self).__name__
        if ode_steps is None:
            self.ode_steps = 8 if is_image(self.event_shape) else 32
        if is_image(self.event_shape):
            self.fit_defaults = dict(self.image_fit_defaults)
        _checks.choice(name, "ot", ot, OT_CHOICES)
        if ot is not None and self.conditional:
            raise ValueError(f"{name}: minibatch OT re-pairs noise across the whole batch, which breaks the "
                             f"conditional distributions of a model with context; use ot=None")
        self.ot = ot
        self.sigma_min = _checks.real(name, "sigma_min", sigma_min, 0, 1, high_open=True)
        self.sinkhorn_reg = _checks.real(name, "sinkhorn_reg", sinkhorn_reg, 0, low_open=True)
        self.set_net(net, hidden, activation, x_frequencies, unet_channels)

    def velocity(self, x, t, context=None, guidance=None):
        """``v(x, t)``, ``t`` in [0, 1] (a float or a ``(B,)`` tensor)."""
        return self.net_output(x, t, context, guidance)

    def pair(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``z`` reordered to pair with ``x`` by the model's ``ot`` choice."""
        if self.ot is None:
            return z
        if self.ot == "exact":
            return z[_ot.exact_pairing(z.flatten(1), x.flatten(1))]
        return z[_ot.sinkhorn_pairing(z.flatten(1), x.flatten(1), reg=self.sinkhorn_reg)]

    def loss(self, batch):
        """Conditional flow-matching loss: mean over the batch of ``|v(x_t, t) - u|^2`` (summed over the event)."""
        x, context = self.split_batch(batch)
        with torch.no_grad():
            z = self.pair(self.base.sample((x.shape[0],)).to(x), x)
        t = torch.rand(x.shape[0], dtype=x.dtype, device=x.device)
        tb = self.broadcast(t)
        xt = (1 - (1 - self.sigma_min) * tb) * z + tb * x
        target = x - (1 - self.sigma_min) * z
        return (self.velocity(xt, t, self.drop_context(context)) - target).square().flatten(1).sum(1).mean()
