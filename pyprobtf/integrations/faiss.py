"""FAISS's exact flat indexes on :func:`pyprobtf.ops.vq_nearest` (no FAISS needed).

:class:`IndexFlatL2` and :class:`IndexFlatIP` have FAISS's interface: ``add(x)``,
``search(xq, k) -> (D, I)`` with ``D`` float32 and ``I`` int64 of shape
``(n, k)``, ``reset()``, ``ntotal``, ``d``, ``is_trained``. NumPy arrays in
give NumPy arrays out, as FAISS; torch tensors in give tensors out, on their
device (the index moves its vectors there). Vectors are stored in float32, as
FAISS stores them.

Differences from FAISS:

- the neighbours are the float64 nearest (``vq_nearest``'s exact re-scoring);
  FAISS ranks by its float32 distances, so near-ties may come in another order;
- exact ties go to the lower index in both indexes (FAISS: the lower index in
  ``IndexFlatL2``, the higher in ``IndexFlatIP``);
- ``D`` is the float64 distance rounded to float32 (FAISS: computed in float32).

Rows with fewer than ``k`` stored vectors are padded as FAISS pads them:
``I = -1`` and ``D = +FLT_MAX`` (L2) or ``-FLT_MAX`` (IP).

Example:
    >>> import numpy as np
    >>> from pyprobtf.integrations.faiss import IndexFlatL2
    >>> index = IndexFlatL2(64)
    >>> index.add(np.random.rand(10000, 64).astype("float32"))
    >>> D, I = index.search(np.random.rand(5, 64).astype("float32"), 10)   # (5, 10) each
"""

from __future__ import annotations

import numpy as np
import torch

from pyprobtf.ops import vq_nearest

__all__ = ["IndexFlat", "IndexFlatIP", "IndexFlatL2"]

_FLT_MAX = float(np.finfo(np.float32).max)


def _as_tensor(fn: str, name: str, x, d: int) -> tuple[torch.Tensor, bool]:
    """(float32 tensor (n, d), whether the caller gave numpy)."""
    if isinstance(x, np.ndarray):
        t, is_numpy = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), True
    elif isinstance(x, torch.Tensor):
        t, is_numpy = x.detach(), False
    else:
        raise TypeError(f"{fn}: `{name}` must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.dim() != 2 or t.shape[1] != d:
        raise ValueError(f"{fn}: `{name}` must have shape (n, {d}); got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{fn}: `{name}` must hold real numbers, got {t.dtype}")
    return t.to(torch.float32), is_numpy


class IndexFlat:
    """Exact search over stored vectors; use :class:`IndexFlatL2` or :class:`IndexFlatIP`."""

    _metric = "l2"

    def __init__(self, d: int):
        if not isinstance(d, int) or isinstance(d, bool):
            raise TypeError(f"{type(self).__name__}: `d` must be an int, got {type(d).__name__}")
        if d < 1:
            raise ValueError(f"{type(self).__name__}: `d` must be >= 1, got {d}")
        self.d = d
        self.is_trained = True
        self._vectors = torch.empty(0, d, dtype=torch.float32)

    @property
    def ntotal(self) -> int:
        """How many vectors are stored."""
        return self._vectors.shape[0]

    def add(self, x) -> None:
        """Append the rows of ``x`` (n, d); their ids are ``ntotal .. ntotal + n - 1``."""
        t, _ = _as_tensor(f"{type(self).__name__}.add", "x", x, self.d)
        self._vectors = torch.cat([self._vectors.to(t.device), t])

    def reset(self) -> None:
        """Remove every stored vector."""
        self._vectors = self._vectors.new_empty(0, self.d)

    def reconstruct_n(self, i0: int = 0, ni: int | None = None) -> np.ndarray:
        """Stored vectors ``i0 .. i0 + ni - 1`` as a float32 array."""
        ni = self.ntotal - i0 if ni is None else ni
        return self._vectors[i0 : i0 + ni].cpu().numpy().copy()

    def search(self, xq, k: int):
        """``(D, I)``: for each row of ``xq`` (n, d), its ``k`` nearest stored vectors, best first.

        ``D`` holds squared L2 distances (:class:`IndexFlatL2`) or inner
        products (:class:`IndexFlatIP`), float32; ``I`` their int64 ids.
        """
        fn = f"{type(self).__name__}.search"
        q, is_numpy = _as_tensor(fn, "xq", xq, self.d)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"{fn}: `k` must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"{fn}: `k` must be >= 1, got {k}")
        k = int(k)
        n = q.shape[0]
        found = min(k, self.ntotal)
        if found == k and n > 0:  # the common case: vq_nearest's own outputs, no padding
            distances, ids = self._nearest(q, k)
        else:
            pad = _FLT_MAX if self._metric == "l2" else -_FLT_MAX
            distances = torch.full((n, k), pad, dtype=torch.float32, device=q.device)
            ids = torch.full((n, k), -1, dtype=torch.int64, device=q.device)
            if found > 0 and n > 0:
                distances[:, :found], ids[:, :found] = self._nearest(q, found)
        if is_numpy:
            return distances.numpy(), ids.numpy()
        return distances, ids

    def _nearest(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, I) of the ``k <= ntotal`` nearest stored vectors of each row of ``q``, each (n, k)."""
        self._vectors = self._vectors.to(q.device)
        idx, dist = vq_nearest(q, self._vectors, metric="l2" if self._metric == "l2" else "dot", k=k)
        n = q.shape[0]
        idx, dist = idx.reshape(n, k), dist.reshape(n, k)
        return (dist if self._metric == "l2" else dist.neg_()), idx


class IndexFlatL2(IndexFlat):
    """FAISS's ``IndexFlatL2(d)``: exact search by squared Euclidean distance (see the module)."""

    _metric = "l2"


class IndexFlatIP(IndexFlat):
    """FAISS's ``IndexFlatIP(d)``: exact search by largest inner product (see the module)."""

    _metric = "ip"
