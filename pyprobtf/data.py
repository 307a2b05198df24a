"""Toy 2-D data sets, and their true densities where known.

``toy(name, n, seed)`` draws ``n`` i.i.d. points as a ``(n, 2)`` float32 tensor:

- ``"moons"``: scikit-learn's ``make_moons`` shapes (two interleaved half
  circles of radius 1: ``(cos t, sin t)`` and ``(1 - cos t, 0.5 - sin t)``,
  ``t`` in ``[0, pi]``) with Gaussian noise of std 0.1; the angles are drawn
  uniformly at random (scikit-learn spaces them evenly) so that the points
  are i.i.d. draws of one density;
- ``"circles"``: two concentric circles of radius 3 and 1.5 (scikit-learn's
  ``make_circles(factor=0.5)`` scaled by 3, as in FFJORD), Gaussian noise of std 0.24;
- ``"8gaussians"``: eight equal Gaussians of std 0.2 centred on the circle of
  radius 2, at angles ``k * pi / 4``;
- ``"checkerboard"``: uniform on the 8 black squares of a 4x4 board over
  ``[-2, 2]^2`` (the square ``[-2, -1) x [-2, -1)`` is black);
- ``"spirals"``: two interleaved spirals (FFJORD's ``2spirals``), noise std 0.1;
- ``"pinwheel"``: five curved arms (FFJORD's ``pinwheel``: radial std 0.3,
  tangential std 0.1, rate 0.25, scaled by 2).

``toy_log_prob(name, x)`` is the exact log-density for ``"8gaussians"`` and
``"checkerboard"``; ``toy_modes(name)`` gives the mixture's centres and std.

Example:
    >>> x = toy("moons", 1000, seed=0)
    >>> x.shape
    torch.Size([1000, 2])
    >>> float(toy_log_prob("checkerboard", torch.tensor([[-1.5, -1.5]])))  # log(1/8)
    -2.0794415416798357
"""

from __future__ import annotations

import math
import numbers

import torch

TOY_DATASETS = ("moons", "circles", "8gaussians", "checkerboard", "spirals", "pinwheel")
TOY_DENSITIES = ("8gaussians", "checkerboard")

EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.2


def _check_name(name, choices, where: str) -> str:
    if name not in choices:
        raise ValueError(f"{where}: unknown data set {name!r}; choose one of {', '.join(choices)}")
    return name


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    """``(centres, std)`` of a Gaussian-mixture toy set: ``(8, 2)`` float64 centres for ``"8gaussians"``."""
    _check_name(name, ("8gaussians",), "toy_modes")
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return EIGHT_GAUSSIANS_RADIUS * torch.stack([angles.cos(), angles.sin()], 1), EIGHT_GAUSSIANS_STD


def toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` i.i.d. points of the toy data set ``name`` (see the module docstring), float32 ``(n, 2)``.

    The same ``(name, n, seed)`` always gives the same points (a private
    generator; torch's global RNG is untouched).
    """
    _check_name(name, TOY_DATASETS, "toy")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"toy: `n` must be a non-negative int; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"toy: `seed` must be an int; got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=f64)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=f64)

    if name == "moons":
        t = rand(n) * math.pi
        outer = torch.rand(n, generator=gen) < 0.5
        x = torch.where(outer, t.cos(), 1 - t.cos())
        y = torch.where(outer, t.sin(), 0.5 - t.sin())
        out = torch.stack([x, y], 1) + 0.1 * randn(n, 2)
    elif name == "circles":
        t = rand(n) * (2 * math.pi)
        radius = torch.where(torch.rand(n, generator=gen) < 0.5, 3.0, 1.5).to(f64)
        out = radius[:, None] * torch.stack([t.cos(), t.sin()], 1) + 0.24 * randn(n, 2)
    elif name == "8gaussians":
        centres, std = toy_modes(name)
        k = torch.randint(0, 8, (n,), generator=gen)
        out = centres[k] + std * randn(n, 2)
    elif name == "checkerboard":
        x1 = rand(n) * 4 - 2
        row = torch.randint(0, 2, (n,), generator=gen).to(f64)
        x2 = rand(n) - 2 * row + torch.floor(x1).remainder(2)
        out = torch.stack([x1, x2], 1)
    elif name == "spirals":
        t = rand(n).sqrt() * (3 * math.pi)
        arm = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0).to(f64)
        x = -t.cos() * t + rand(n) * 0.5
        y = t.sin() * t + rand(n) * 0.5
        out = arm[:, None] * torch.stack([x, y], 1) / 3 + 0.1 * randn(n, 2)
    else:  # pinwheel
        arm = torch.randint(0, 5, (n,), generator=gen).to(f64)
        radial = 1 + 0.3 * randn(n)
        tangential = 0.1 * randn(n)
        angle = arm * (2 * math.pi / 5) + 0.25 * radial.exp()
        c, s = angle.cos(), angle.sin()
        out = 2 * torch.stack([radial * c + tangential * s, -radial * s + tangential * c], 1)
    return out.to(torch.float32)


def toy_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    """The true ``log p(x)`` (nats, shape ``(B,)``) of ``"8gaussians"`` or ``"checkerboard"``.

    Computed in float64 and returned in ``x``'s dtype; ``-inf`` where the
    density is 0 (off the checkerboard's black squares).
    """
    _check_name(name, TOY_DENSITIES, "toy_log_prob")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"toy_log_prob: `x` must be a tensor of shape (batch, 2); got {shape}")
    x64 = x.detach().to(torch.float64)
    if name == "8gaussians":
        centres, std = toy_modes(name)
        sq = ((x64[:, None, :] - centres.to(x64.device)) ** 2).sum(-1)
        log_comp = -sq / (2 * std**2) - math.log(2 * math.pi * std**2)
        out = torch.logsumexp(log_comp, 1) - math.log(8)
    else:
        inside = ((x64 >= -2) & (x64 < 2)).all(1)
        black = (torch.floor(x64[:, 0]) + torch.floor(x64[:, 1])).remainder(2) == 0
        out = torch.where(inside & black, -math.log(8), -math.inf)
    return out.to(x.dtype if x.is_floating_point() else torch.float64)


# ----------------------------------------------------------------------------- 8x8 digits (issue 7)

DIGITS_SHAPE = (8, 8)
DIGITS_SPLITS = ("train", "test", "all")


def digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0, dequantize: bool = False,
           image: bool = False, labels: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images) as ``(n, 64)`` float32 in ``[0, 1]``.

    Pixels are the data set's 17 grey levels divided by 16, row-major (``x.reshape(-1, 8, 8)``
    gives the images). ``split``: ``"train"``, ``"test"`` (a fixed ``test_fraction`` of the
    images, chosen by ``seed``) or ``"all"``. Needs scikit-learn (``pip install 'pyprobtf[digits]'``).

    ``image=True`` gives the images as ``(n, 1, 8, 8)`` (one channel), the same values.
    ``labels=True`` returns ``(x, y)`` with ``y`` the int64 ``(n,)`` digit classes (0-9) of the same rows,
    for conditioning (``num_classes=10``).

    ``dequantize=True`` gives ``(level + u) / 17`` with ``u ~ U[0, 1)`` (a fixed draw, seeded by
    ``seed`` and the split): data with a continuous density on ``[0, 1]^64``, so that densities are
    comparable across families (``log P(levels) >= log p(x) - 64 log 17`` for any model density
    ``p``, with equality for one constant on each level's cell). Without it, a pixel that is 0 in
    every training image makes a Gaussian likelihood unbounded: train on dequantized pixels to
    report likelihoods.
    """
    _check_name(split, DIGITS_SPLITS, "digits")
    if not (isinstance(test_fraction, numbers.Real) and 0 < test_fraction < 1):
        raise ValueError(f"digits: `test_fraction` must be in (0, 1); got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"digits: `seed` must be an int; got {type(seed).__name__}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("pyprobtf.data.digits needs scikit-learn: pip install 'pyprobtf[digits]' "
                          "(after torch)") from exc
    for name, value in (("dequantize", dequantize), ("image", image), ("labels", labels)):
        if not isinstance(value, bool):
            raise TypeError(f"digits: `{name}` must be a bool; got {type(value).__name__}")
    bunch = load_digits()
    levels = torch.as_tensor(bunch.data, dtype=torch.float32)
    classes = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split != "all":
        order = torch.randperm(levels.shape[0], generator=torch.Generator().manual_seed(int(seed)))
        n_test = int(round(test_fraction * levels.shape[0]))
        rows = order[:n_test] if split == "test" else order[n_test:]
        levels, classes = levels[rows], classes[rows]
    if not dequantize:
        x = levels / 16.0
    else:
        draw = torch.Generator().manual_seed(int(seed) * len(DIGITS_SPLITS) + DIGITS_SPLITS.index(split))
        noise = torch.rand(levels.shape, generator=draw)
        x = (levels + noise) / 17.0
    if image:
        x = x.reshape(-1, 1, *DIGITS_SHAPE)
    return (x, classes) if labels else x
