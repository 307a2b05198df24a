"""Drawing the zoo figure (matplotlib, from the optional ``viz`` extra).

One row per family: the base samples ``z``, up to three intermediate states of
``F`` and the generated ``x`` (over the held-out data in grey). Every point
keeps the colour of its ``z`` in every panel of its row: hue from the angle of
``z``'s first two coordinates (standardised), brightness from its radius, so
the eye can follow where each part of the base goes.
"""

from __future__ import annotations

from pathlib import Path

import torch

MAX_INTERMEDIATE = 3


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing zoo.png needs matplotlib: pip install 'pyprobtf[viz]' "
                          "(or matplotlib itself)") from None
    return plt


def base_colours(z: torch.Tensor):
    """RGB colours (n, 3) from base samples: hue = angle, value = radius (both after robust standardising)."""
    from matplotlib.colors import hsv_to_rgb

    z = z.double()
    if z.shape[1] == 1:
        z = torch.cat([z, torch.zeros_like(z)], dim=1)
    z = z[:, :2]
    centre = z.median(dim=0).values
    spread = (z.quantile(0.75, dim=0) - z.quantile(0.25, dim=0)).clamp_min(1e-12)
    u = (z - centre) / spread
    angle = torch.atan2(u[:, 1], u[:, 0])
    radius = u.norm(dim=1)
    rank = radius.argsort().argsort().double() / max(len(radius) - 1, 1)
    hsv = torch.stack([(angle / (2 * torch.pi)) % 1.0, 0.35 + 0.65 * rank, 0.95 - 0.35 * rank], dim=1)
    return hsv_to_rgb(hsv.numpy())


def _pick(states: list, k: int = MAX_INTERMEDIATE) -> list:
    """The first state, ``k`` intermediate ones, and the last.

    Intermediates are where the points have made 1/4, 1/2 and 3/4 of their
    total (standardised) movement, not evenly spaced solver steps: a diffusion
    sampler spends most of its steps at noise levels where the picture barely
    changes.
    """
    if len(states) <= k + 2:
        return list(states)
    normed = []
    for _, s in states:
        s = s[:, :2].double() if s.shape[1] >= 2 else s.double()
        normed.append((s - s.mean(0)) / s.std(0).clamp_min(1e-12))
    moves = torch.tensor([0.0] + [float((b - a).norm(dim=1).mean()) for a, b in zip(normed, normed[1:])])
    travelled = moves.cumsum(0) / moves.sum().clamp_min(1e-12)
    picks = []
    for q in [(i + 1) / (k + 1) for i in range(k)]:
        idx = int(torch.searchsorted(travelled, torch.tensor(q)).clamp(1, len(states) - 2))
        if idx not in picks:
            picks.append(idx)
    return [states[0]] + [states[i] for i in sorted(picks)] + [states[-1]]


def _limits(points: torch.Tensor, margin: float = 0.08):
    lo = points.quantile(0.005, dim=0)
    hi = points.quantile(0.995, dim=0)
    pad = (hi - lo).clamp_min(1e-6) * margin
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def _as_2d(state: torch.Tensor) -> torch.Tensor:
    if state.shape[1] >= 2:
        return state[:, :2]
    # One-dimensional state: spread the points vertically by their order, for visibility.
    order = state[:, 0].argsort().argsort().float() / max(len(state) - 1, 1)
    return torch.stack([state[:, 0], order], dim=1)


def draw(path: Path, dataset: str, data: torch.Tensor, rows: list, results: list) -> Path:
    """Write the figure: ``rows`` is ``[(title, [(label, state), ...]), ...]`` in family order."""
    plt = _pyplot()
    n_cols = MAX_INTERMEDIATE + 2
    n_rows = len(rows) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols + 1.6, 2.05 * n_rows), squeeze=False)
    x_lim = _limits(data)
    dot = dict(s=2.0, linewidths=0, rasterized=True)

    # Top row: the data itself.
    for ax in axes[0]:
        ax.set_axis_off()
    axes[0, -1].set_axis_on()
    axes[0, -1].scatter(data[:, 0], data[:, 1], color="0.25", **dot)
    axes[0, -1].set_title("held-out data", fontsize=9)
    axes[0, 0].text(0.0, 0.5, f"{dataset}\n\nbase z  →  F  →  x\n(colour: where\neach z started)",
                    fontsize=10, va="center", ha="left", transform=axes[0, 0].transAxes)

    for r, ((title, states), result) in enumerate(zip(rows, results), start=1):
        chosen = _pick(states)
        colours = base_colours(chosen[0][1])
        cols = [0] + list(range(1, len(chosen) - 1)) + [n_cols - 1] if len(chosen) > 1 else [0]
        used = set(cols)
        for c in range(n_cols):
            if c not in used:
                axes[r, c].set_axis_off()
        for (label, state), c in zip(chosen, cols):
            ax = axes[r, c]
            pts = _as_2d(state)
            if c == n_cols - 1:  # generated x, over the held-out data
                ax.scatter(data[:, 0], data[:, 1], color="0.85", **dot)
                ax.set_xlim(*x_lim[0])
                ax.set_ylim(*x_lim[1])
            else:
                lim = _limits(pts)
                ax.set_xlim(*lim[0])
                ax.set_ylim(*lim[1])
            ax.scatter(pts[:, 0], pts[:, 1], c=colours, **dot)
            ax.set_title(label if len(label) < 22 else label[:20] + "…", fontsize=8)
            ax.tick_params(labelsize=6, length=2, pad=1)
        nll = f"NLL {result.nll:.2f} ({result.nll_kind})" if result.nll is not None else "no density"
        axes[r, 0].set_ylabel(f"{title}\nSW2 {result.sliced_w2:.3f}\n{nll}", fontsize=9, rotation=0,
                              ha="right", va="center", labelpad=8)

    fig.suptitle("pyprobtf zoo: every family as a probability transformation x = F(z)", fontsize=12, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
