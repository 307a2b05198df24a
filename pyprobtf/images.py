"""Sample pictures: image grids and 2-D histograms as ``uint8`` arrays, written as PNG by Pillow.

- :func:`image_grid`: ``(n, h, w)`` images (values in ``[lo, hi]``) tiled into one
  ``uint8`` array, with a border between tiles;
- :func:`points_image`: a 2-D point cloud as a ``uint8`` histogram picture
  (dark where the points are dense);
- :func:`write_png`: a ``uint8`` grey (``(H, W)``) or RGB (``(H, W, 3)``) array to
  a PNG file (Pillow).

Example:
    >>> import torch
    >>> grid = image_grid(torch.rand(16, 8, 8), nrow=4, zoom=4)
    >>> grid.shape
    (133, 133)
    >>> write_png("/tmp/grid.png", grid)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def image_grid(images, *, nrow: int | None = None, value_range: tuple[float, float] = (0.0, 1.0), zoom: int = 1,
               pad: int = 1, invert: bool = False) -> np.ndarray:
    """Tile ``images`` ``(n, h, w)`` (or ``(n, 1, h, w)``) into a ``uint8`` grid, ``nrow`` tiles per row
    (default: about square).

    Values are clipped to ``value_range`` and mapped to 0..255 (``invert``: high values dark); each
    pixel becomes a ``zoom x zoom`` block; tiles are separated by ``pad`` mid-grey pixels.
    """
    arr = _as_numpy(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"image_grid: `images` must have shape (n, h, w) with n >= 1; got {arr.shape}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"image_grid: `value_range` must be (low, high) with low < high; got {value_range}")
    n, h, w = arr.shape
    nrow = int(np.ceil(np.sqrt(n))) if nrow is None else int(nrow)
    if nrow < 1 or zoom < 1 or pad < 0:
        raise ValueError(f"image_grid: need nrow >= 1, zoom >= 1, pad >= 0; got {nrow}, {zoom}, {pad}")
    ncol_tiles = min(nrow, n)
    nrow_tiles = int(np.ceil(n / nrow))
    scaled = np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    pixels = np.round(scaled * 255).astype(np.uint8)
    pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=2)
    th, tw = h * zoom, w * zoom
    out = np.full((nrow_tiles * (th + pad) + pad, ncol_tiles * (tw + pad) + pad), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (th + pad), pad + c * (tw + pad)
        out[top:top + th, left:left + tw] = pixels[i]
    return out


def points_image(points, *, bounds: tuple[float, float] | None = None, size: int = 256, gamma: float = 0.5) -> np.ndarray:
    """A ``(size, size)`` ``uint8`` picture of 2-D ``points``: a histogram, white where empty, dark where dense.

    ``bounds`` ``(low, high)`` for both axes (default: the points' range); the y axis points up;
    ``gamma`` < 1 brightens sparse regions so that stray samples stay visible.
    """
    arr = _as_numpy(points)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points_image: `points` must have shape (n, 2); got {arr.shape}")
    finite = arr[np.isfinite(arr).all(1)]
    if bounds is None:
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 1.0)
    else:
        lo, hi = (float(v) for v in bounds)
    if not hi > lo:
        hi = lo + 1.0
    counts, _, _ = np.histogram2d(finite[:, 1], finite[:, 0], bins=size, range=[[lo, hi], [lo, hi]])
    counts = counts[::-1]  # row 0 is the top of the picture: the largest y
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    return np.round(255 * (1.0 - (counts / peak) ** gamma)).astype(np.uint8)


def write_png(path, image) -> Path:
    """Write a ``uint8`` array ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) as an 8-bit PNG with Pillow; returns the path.

    Needs Pillow (``pip install 'pyprobtf[viz]'``, which brings it with matplotlib).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or 0 in arr.shape:
        raise ValueError(f"write_png: `image` must be a non-empty uint8 array of shape (H, W) or (H, W, 3); got "
                         f"{arr.dtype} {arr.shape}")
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("write_png needs Pillow: pip install 'pyprobtf[viz]' (or pip install pillow)") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr), mode="L" if arr.ndim == 2 else "RGB").save(path, format="PNG")
    return path
