"""Sample-quality and likelihood metrics.

Between two sample sets ``x`` ``(n, d)`` and ``y`` ``(m, d)``:

- :func:`energy_distance`: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (0 iff the
  distributions are equal), the within-set means over distinct pairs;
- :func:`mmd`: maximum mean discrepancy with a Gaussian kernel (unbiased
  estimate of MMD^2, or its square root);
- :func:`sliced_wasserstein2`: the sliced 2-Wasserstein distance over random
  directions;

for a model: :func:`nll`, the mean negative log-likelihood in nats; for
Gaussian mixtures: :func:`mode_coverage` (the share of samples nearest each
mode) and :func:`mode_quality` (the share within ``k`` std of a mode); for
8x8 digit images: :func:`digits_score` (a classifier-based score, class
coverage and MMD to held-out digits).

Pairwise terms are computed in float64 in blocks, so memory stays bounded.

Example:
    >>> from pyprobtf.data import toy, toy_modes
    >>> x, y = toy("8gaussians", 2000, seed=0), toy("8gaussians", 2000, seed=1)
    >>> energy_distance(x, y) < 0.01
    True
    >>> centres, std = toy_modes("8gaussians")
    >>> mode_quality(x, centres, std) > 0.98
    True
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence

import torch

_BLOCK = 2048


def _pair(x, y, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] < 2:
            raise ValueError(f"{where}: `{name}` must have shape (n, d) with n >= 2; got {tuple(t.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{where}: `x` and `y` must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    return x.detach().to(torch.float64), y.detach().to(torch.float64).to(x.device)


def _pairwise_sum(a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """sum over all (i, j) of fn(|a_i - b_j|^2), in blocks."""
    total = 0.0
    for i in range(0, a.shape[0], _BLOCK):
        sq = torch.cdist(a[i:i + _BLOCK], b, compute_mode="donot_use_mm_for_euclid_dist").square()
        total += float(fn(sq).sum())
    return total


def _within_mean(a: torch.Tensor, fn) -> float:
    """mean over distinct pairs i != j of fn(|a_i - a_j|^2)."""
    n = a.shape[0]
    diag = float(fn(torch.zeros((), dtype=a.dtype, device=a.device))) * n
    return (_pairwise_sum(a, a, fn) - diag) / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Székely's energy distance, squared form; unbiased)."""
    x, y = _pair(x, y, "energy_distance")
    dist = torch.sqrt
    cross = _pairwise_sum(x, y, dist) / (x.shape[0] * y.shape[0])
    return 2 * cross - _within_mean(x, dist) - _within_mean(y, dist)


def _bandwidths(x, y, bandwidth) -> list[float]:
    if bandwidth is None:
        # Median heuristic on (up to) 1000 points of the pooled sample.
        pooled = torch.cat([x[:500], y[:500]])
        d = torch.cdist(pooled, pooled)
        med = float(d[d > 0].median()) if (d > 0).any() else 1.0
        return [med]
    values = [bandwidth] if isinstance(bandwidth, numbers.Real) else list(bandwidth)
    if not values or any(not (isinstance(b, numbers.Real) and b > 0 and math.isfinite(b)) for b in values):
        raise ValueError(f"mmd: `bandwidth` must be None, a positive number or a list of them; got {bandwidth!r}")
    return [float(b) for b in values]


def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | Sequence[float] | None = None,
        squared: bool = False) -> float:
    """Maximum mean discrepancy with the Gaussian kernel ``exp(-|a - b|^2 / (2 h^2))``.

    ``bandwidth`` ``h``: a number, a list (the kernels are summed), or ``None``
    for the median pairwise distance of the pooled samples. Returns the
    unbiased estimate of MMD^2 with ``squared=True`` (it can be slightly
    negative), else ``sqrt(max(MMD^2, 0))``.
    """
    x, y = _pair(x, y, "mmd")
    hs = _bandwidths(x, y, bandwidth)

    def kernel(sq):
        return sum(torch.exp(-sq / (2 * h * h)) for h in hs)

    cross = _pairwise_sum(x, y, kernel) / (x.shape[0] * y.shape[0])
    value = _within_mean(x, kernel) + _within_mean(y, kernel) - 2 * cross
    return value if squared else math.sqrt(max(value, 0.0))


def sliced_wasserstein2(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: ``sqrt(mean over directions u of W2^2(u.X, u.Y))``.

    The directions are uniform on the sphere, drawn from ``seed``. For sample
    sets of different sizes the 1-D distances compare quantile functions on a
    common grid.
    """
    x, y = _pair(x, y, "sliced_wasserstein2")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape[1], n_projections, generator=gen, dtype=torch.float64).to(x.device)
    u = u / u.norm(dim=0, keepdim=True)
    px, py = (x @ u).sort(0).values, (y @ u).sort(0).values
    if px.shape[0] != py.shape[0]:
        m = max(px.shape[0], py.shape[0])
        q = (torch.arange(m, dtype=torch.float64, device=x.device) + 0.5) / m
        px, py = _quantiles(px, q), _quantiles(py, q)
    return math.sqrt(float((px - py).square().mean()))


def _quantiles(sorted_values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function (the step function of the sorted sample) at levels q, per column."""
    n = sorted_values.shape[0]
    idx = torch.clamp((q * n).long(), max=n - 1)
    return sorted_values[idx]


def nll(model, x: torch.Tensor, *, batch_size: int = 4096, **cond) -> float:
    """Mean negative log-likelihood of ``x`` in nats per sample, ``-mean log p(x)``.

    ``model``: anything with ``log_prob(x)`` (a ProbabilityTransform, a torch
    Distribution) or a callable returning log-densities. Evaluated in batches,
    without gradients.
    """
    log_prob = model.log_prob if hasattr(model, "log_prob") else model
    if not callable(log_prob):
        raise TypeError(f"nll: `model` must have a log_prob method or be callable; got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.shape[0] == 0:
        raise ValueError("nll: `x` must be a non-empty tensor of samples")
    total = 0.0
    ctx = cond.pop("context", None)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            kw = dict(cond)
            if ctx is not None:
                kw["context"] = ctx[i:i + batch_size] if ctx.dim() == 2 else ctx
            lp = log_prob(x[i:i + batch_size], **kw)
            total += float(lp.detach().to(torch.float64).sum())
    return -total / x.shape[0]


def _nearest(samples: torch.Tensor, centres: torch.Tensor, where: str):
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2:
        raise ValueError(f"{where}: `samples` must be a tensor of shape (n, d)")
    centres = torch.as_tensor(centres, dtype=torch.float64)
    if centres.dim() != 2 or centres.shape[1] != samples.shape[1]:
        raise ValueError(f"{where}: `centres` must have shape (k, {samples.shape[1]}); got {tuple(centres.shape)}")
    d = torch.cdist(samples.detach().to(torch.float64).cpu(), centres)
    return d.min(1)


def mode_coverage(samples: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Share of ``samples`` whose nearest centre is each of the ``k`` ``centres``: a ``(k,)`` float64 tensor."""
    _, idx = _nearest(samples, centres, "mode_coverage")
    k = torch.as_tensor(centres).shape[0]
    return torch.bincount(idx, minlength=k).to(torch.float64) / max(samples.shape[0], 1)


def mode_quality(samples: torch.Tensor, centres: torch.Tensor, std: float, *, k: float = 3.0) -> float:
    """Share of ``samples`` within ``k * std`` (Euclidean) of their nearest centre.

    For exact samples of an isotropic 2-D Gaussian mixture with well-separated
    modes this is ``1 - exp(-k^2 / 2)`` (98.9% for ``k = 3``).
    """
    dist, _ = _nearest(samples, centres, "mode_quality")
    return float((dist <= k * std).to(torch.float64).mean()) if samples.shape[0] else 0.0


# ----------------------------------------------------------------------------- digits images


@functools.lru_cache(maxsize=1)
def _digits_classifier():
    try:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise ImportError("pyprobtf.metrics.digits_score needs scikit-learn: pip install 'pyprobtf[digits]'") from exc
    data = load_digits()
    return LogisticRegression(C=0.5, max_iter=5000).fit(data.data / 16.0, data.target)


def digits_score(samples: torch.Tensor, *, reference: torch.Tensor | None = None) -> dict[str, float]:
    """How much generated 8x8 digits look like digits, by a fixed classifier (an Inception score for digits).

    A logistic-regression classifier (``C=0.5``) trained on all 1797 scikit-learn
    digits (pixels / 16) gives ``p(y|x)`` for each sample (pixels clipped to
    ``[0, 1]``, as an image shows them). Returns

    - ``score``: ``exp(E_x KL(p(y|x) || p(y)))``, ``p(y)`` the mean of ``p(y|x)``:
      10 at best (confident and balanced); held-out real digits score about 6.7,
      uniform noise about 1.8, blurred digits about 2;
    - ``coverage``: the entropy of ``p(y)`` over ``ln 10`` (1: every class equally often);
    - ``mmd``: :func:`mmd` between the samples and ``reference`` (default: the
      held-out split of :func:`pyprobtf.data.digits`), flattened;
    - ``classes``: the share of samples the classifier assigns to each class (a list of 10).

    ``samples``: ``(n, 64)``, ``(n, 8, 8)`` or ``(n, 1, 8, 8)`` in ``[0, 1]``.

    Example:
        >>> from pyprobtf.data import digits
        >>> round(digits_score(digits("test"))["score"], 1) > 6
        True
    """
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise TypeError("digits_score: `samples` must be a floating-point tensor")
    if samples.dim() < 2 or samples[0].numel() != 64 or samples.shape[0] < 2:
        raise ValueError(f"digits_score: `samples` must be at least 2 images of 64 pixels ((n, 64), (n, 8, 8) or "
                         f"(n, 1, 8, 8)); got shape {tuple(samples.shape)}")
    x = samples.detach().reshape(samples.shape[0], 64).to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ValueError("digits_score: `samples` contain NaN or inf")
    probs = torch.as_tensor(_digits_classifier().predict_proba(x.clamp(0, 1).numpy()), dtype=torch.float64)
    marginal = probs.mean(0)
    tiny = torch.finfo(torch.float64).tiny
    kl = (probs * (probs.clamp_min(tiny).log() - marginal.clamp_min(tiny).log())).sum(1)
    entropy = -(marginal * marginal.clamp_min(tiny).log()).sum()
    if reference is None:
        from pyprobtf.data import digits

        reference = digits("test")
    ref = reference.reshape(reference.shape[0], -1).to(torch.float64).cpu()
    counts = torch.bincount(probs.argmax(1), minlength=10).to(torch.float64) / probs.shape[0]
    return {"score": float(torch.exp(kl.mean())), "coverage": float(entropy / math.log(10)),
            "mmd": mmd(x.to(torch.float32), ref.to(torch.float32)), "classes": counts.tolist()}


def digits_classes(samples: torch.Tensor) -> torch.Tensor:
    """The class (0-9) the fixed digits classifier of :func:`digits_score` assigns to each 8x8 sample."""
    x = samples.detach().reshape(samples.shape[0], 64).to(torch.float64).cpu().clamp(0, 1)
    return torch.as_tensor(_digits_classifier().predict(x.numpy()), dtype=torch.int64)
