"""Seeds and noise counters shared by the diffusion-stack adapters (in-kernel Philox noise of lincomb)."""

from __future__ import annotations

import math
import numbers

import torch

SEED_MIN, SEED_END = -(1 << 63), 1 << 64


def check_seed(fn: str, seed, x: torch.Tensor):
    """``seed`` as lincomb takes it: an int in ``[-2^63, 2^64)`` or a ``(B,)`` integer tensor on ``x``'s device.

    ``None`` draws one int from torch's default generator (reproducible under ``torch.manual_seed``).
    """
    if seed is None:
        return int(torch.randint(SEED_MIN, (1 << 63) - 1, (), dtype=torch.int64).item())
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise TypeError(f"{fn}: `seed` must be an int or an integer tensor of shape (B,); got dtype {seed.dtype}")
        if seed.shape != (x.shape[0],):
            raise ValueError(f"{fn}: `seed` must be an int or a tensor of shape (B,) = ({x.shape[0]},); "
                             f"got shape {tuple(seed.shape)}")
        return seed.to(x.device)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{fn}: `seed` must be an int, a (B,) integer tensor or None; got {type(seed).__name__}")
    if not SEED_MIN <= int(seed) < SEED_END:
        raise ValueError(f"{fn}: `seed` must be an int in [-2^63, 2^64); got {seed}")
    return int(seed)


def seed_from_generator(generator: torch.Generator | None, rows: int | None = None):
    """Seeds drawn from ``generator`` (torch's default CPU generator on None).

    ``rows=None``: one Python int. ``rows=B``: a (B,) int64 tensor of per-row seeds on the
    generator's device, drawn without reading anything back (the form for CUDA generators,
    whose ``.item()`` would wait for the device).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    shape = () if rows is None else (rows,)
    seed = torch.randint(SEED_MIN, (1 << 63) - 1, shape, dtype=torch.int64, generator=generator, device=device)
    return int(seed.item()) if rows is None else seed


def on_cpu(generator: torch.Generator | None) -> bool:
    """Whether ``generator`` is None or a CPU generator (its seeds can be read back for free)."""
    return generator is None or generator.device.type == "cpu"


class Counter:
    """Offsets of successive state-sized draws from one seed's stream: draw ``k`` uses ``[k n, (k + 1) n)``.

    ``n`` is the state's size for an int seed and its row size for per-row seeds.
    """

    def __init__(self, seed, x: torch.Tensor):
        row = math.prod(x.shape[1:])
        self.per_draw = row if isinstance(seed, torch.Tensor) else x.shape[0] * row
        self.draws = 0

    def next(self) -> int:
        offset = self.draws * self.per_draw
        self.draws += 1
        return offset
