"""Time grids, seeds, noise counters and progress display shared by the solvers (their other argument checks are
:mod:`pyprobtf._checks`)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator

import torch

from pyprobtf import _checks
from pyprobtf.seeds import INTEGER_TENSOR_DTYPES, check_seed as check_seed_int


def time_grid(fn: str, times, *, name: str = "times", min_len: int = 2) -> list[float]:
    """``times`` as a list of Python floats: 1-D, finite, strictly monotone (either direction).

    A tensor on a GPU is copied to the host once here, before any loop starts.
    """
    if isinstance(times, torch.Tensor):
        if times.dim() != 1:
            raise ValueError(f"{fn}: `{name}` must be 1-D; got a tensor of shape {tuple(times.shape)}")
        values = times.detach().double().cpu().tolist()
    elif hasattr(times, "tolist") and not isinstance(times, (list, tuple)):  # numpy arrays
        values = times.tolist()
        if any(isinstance(v, list) for v in values):
            raise ValueError(f"{fn}: `{name}` must be 1-D")
    elif isinstance(times, (list, tuple)):
        values = list(times)
    else:
        raise TypeError(f"{fn}: `{name}` must be a list, tuple or 1-D tensor of times; got {type(times).__name__}")
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            v = v.item()
        values[i] = _checks.real(fn, f"{name}[{i}]", v)
    if len(values) < min_len:
        raise ValueError(f"{fn}: `{name}` must have at least {min_len} entries; got {len(values)}")
    if len(values) >= 2:
        increasing = values[1] > values[0]
        for i in range(1, len(values)):
            step = values[i] - values[i - 1]
            if (step <= 0 and increasing) or (step >= 0 and not increasing):
                order = "increasing" if increasing else "decreasing"
                raise ValueError(
                    f"{fn}: `{name}` must be strictly monotone (the order of integration); it starts "
                    f"{order} but {name}[{i - 1}] = {values[i - 1]!r} is followed by {name}[{i}] = {values[i]!r}"
                )
    return values


def check_seed(fn: str, seed, x: torch.Tensor):
    """A seed (:mod:`pyprobtf.seeds`) or a (B,) integer tensor of them on ``x``'s device (per-row,
    batch-invariant noise)."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype not in INTEGER_TENSOR_DTYPES:
            raise TypeError(f"{fn}: `seed` must be an integer or an integer tensor of shape (B,); got dtype "
                            f"{seed.dtype}")
        if seed.shape != (x.shape[0],):
            raise ValueError(f"{fn}: `seed` must be an integer or a tensor of shape (B,) = ({x.shape[0]},); "
                             f"got shape {tuple(seed.shape)}")
        if seed.device != x.device:
            raise ValueError(f"{fn}: `seed` must be on the device of the state, {x.device}; got {seed.device}")
        return seed
    if not _checks.is_integer(seed):
        raise TypeError(f"{fn}: `seed` must be an integer or an integer tensor of shape (B,); got "
                        f"{type(seed).__name__}")
    return check_seed_int(seed, fn)


class NoiseCounter:
    """Offsets into one seed's Philox stream for successive draws of a state-sized normal.

    Draw ``k`` uses counters ``[k * n, (k + 1) * n)`` where ``n`` is the state's size
    (one seed) or its row size (per-row seeds), so no two draws share a counter.
    """

    def __init__(self, seed, x: torch.Tensor):
        per_row = math.prod(x.shape[1:])
        self.per_draw = per_row if isinstance(seed, torch.Tensor) else x.shape[0] * per_row
        self.draws = 0

    def next(self) -> int:
        offset = self.draws * self.per_draw
        self.draws += 1
        return offset


def steps(n: int, desc: str, progress: bool) -> Iterable[int]:
    """range(n), shown as a progress bar on stderr when ``progress`` (tqdm when installed)."""
    if not progress:
        return range(n)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _text_progress(n, desc)
    return tqdm(range(n), desc=desc)


def _text_progress(n: int, desc: str) -> Iterator[int]:
    width = 30
    for i in range(n):
        yield i
        done = (i + 1) * width // max(n, 1)
        sys.stderr.write(f"\r{desc}: [{'#' * done}{'.' * (width - done)}] {i + 1}/{n}")
        sys.stderr.flush()
    sys.stderr.write("\n")


def integrate(fn: str, x0: torch.Tensor, ts: list[float], step, *, return_trajectory: bool, callback,
              progress: bool):
    """The loop every sampler shares: ``x = step(x, ts[i], ts[i + 1])`` for each interval.

    Returns the final state, or ``(x_final, [x0, x1, ...])`` with ``return_trajectory``.
    ``callback(i, t_next, x)`` runs after each step. Nothing here touches the device.
    """
    x, trajectory = x0, [x0]
    for i in steps(len(ts) - 1, fn, progress):
        x = step(x, ts[i], ts[i + 1])
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback(i, ts[i + 1], x)
    return (x, trajectory) if return_trajectory else x
