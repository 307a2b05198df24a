"""The zoo on images: every family trained on scikit-learn's 8x8 digits, measured and drawn.

:func:`run_image_zoo` is what ``pyprobtf zoo --dataset digits`` runs: each
family is built from its image defaults (``Family(event_shape=(1, 8, 8))``),
trained for the same time on the dequantized training digits, and measured on
the same footing: the classifier score, class coverage and MMD of
:func:`pyprobtf.metrics.digits_score` on ``n_samples`` samples, and the test
NLL in nats per image (on dequantized pixels) where the family has a density.
``zoo.png`` has one row per family: the base draws ``z``, up to three
intermediate states of ``F`` and the generated digits, the same eight samples
in every panel of a row, so the eye can follow each one through ``F``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pyprobtf import metrics
from pyprobtf.training import fit

IMAGE_SHAPE = (1, 8, 8)
IMAGE_DATASETS = ("digits",)
SHOWN = 8  # samples followed through F in each row of the figure
READING = ("Score (10 at best), coverage (1 at best) and samples/s: higher is better; MMD and NLL: lower. NLLs are in "
           "nats per image on dequantized pixels; on images the ODE likelihoods use a Hutchinson divergence "
           "estimate. The last row is held-out real digits: what a perfect model would score.")


@dataclasses.dataclass
class ImageFamilyResult:
    name: str
    title: str
    train_seconds: float
    steps: int
    final_loss: float
    score: float
    coverage: float
    mmd: float
    nll: float | None
    nll_kind: str | None
    samples_per_second: float
    eval_seconds: float


@dataclasses.dataclass
class ImageZooReport:
    dataset: str
    results: list[ImageFamilyResult]
    reference: dict  # the metrics of held-out real digits: what a perfect model would score
    table: str
    out: Path
    seconds: float


def run_image_zoo(
    families: Sequence[str],
    *,
    steps: int | None = None,
    seconds: float = 20.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | os.PathLike = ".",
    n_samples: int = 1000,
    n_nll: int = 200,
    progress: bool = True,
) -> ImageZooReport:
    """Train, measure and draw ``families`` (names of :data:`pyprobtf.zoo.FAMILIES`) on 8x8 digits."""
    from pyprobtf import zoo
    from pyprobtf.data import digits

    out, device = Path(out), torch.device(device)
    start = time.perf_counter()
    train = digits("train", image=True, dequantize=True)
    test = digits("test", image=True, dequantize=True)
    reference = {k: v for k, v in metrics.digits_score(test).items() if k != "classes"}
    constructors = zoo._constructors()
    results, rows = [], []
    for i, name in enumerate(families):
        title, nll_kind = zoo.FAMILIES[name]
        if progress:
            zoo._overall(i, len(families), start, f"training {title}")
        torch.manual_seed(seed)
        model = constructors[name](event_shape=IMAGE_SHAPE)
        fitted = fit(model, train, steps=steps, seed=seed, device=device, max_seconds=seconds, progress=progress,
                     num_threads=None)
        model.eval()
        t_eval = time.perf_counter()
        samples, per_second = zoo._timed_samples(model, n_samples, seed)
        score = metrics.digits_score(samples.float().cpu())
        nll = None
        if nll_kind is not None:
            with torch.no_grad():
                nll = metrics.nll(model, test[:n_nll].to(device), batch_size=100)
        results.append(ImageFamilyResult(name, title, fitted.seconds, fitted.steps, fitted.final_loss,
                                         score["score"], score["coverage"], score["mmd"], nll, nll_kind, per_second,
                                         time.perf_counter() - t_eval))
        rows.append((title, zoo._trajectory(model, SHOWN, seed)))
    if progress:
        zoo._overall(len(families), len(families), start, "done; drawing")
    draw(out / "zoo.png", test[:SHOWN], rows, results)
    table = markdown_table(results, reference)
    report = ImageZooReport("digits", results, reference, table, out, time.perf_counter() - start)
    settings = dict(steps=steps, seconds=seconds, seed=seed, device=str(device), n_train=train.shape[0],
                    n_samples=n_samples, n_nll=n_nll)
    from pyprobtf.benchmarks._common import machine

    (out / "results.json").write_text(json.dumps({
        "dataset": "digits", "settings": settings, "machine": machine(settings["device"].split(":")[0]),
        "seconds": report.seconds, "real_digits": reference,
        "families": [dataclasses.asdict(r) for r in results]}, indent=1))
    return report


def markdown_table(results: Sequence[ImageFamilyResult], reference: dict) -> str:
    """The image zoo's results: higher is better for score, coverage and samples/s, lower for MMD and NLL."""
    head = ("| family | score | coverage | MMD | NLL (nats/image) | NLL from | samples/s | train s | steps |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        nll = f"{r.nll:.1f}" if r.nll is not None else "—"
        rows.append(f"| {r.title} | {r.score:.2f} | {r.coverage:.3f} | {r.mmd:.3f} | {nll} | {r.nll_kind or '—'} "
                    f"| {r.samples_per_second:,.0f} | {r.train_seconds:.1f} | {r.steps} |")
    rows.append(f"| *held-out digits* | {reference['score']:.2f} | {reference['coverage']:.3f} | "
                f"{reference['mmd']:.3f} | | | | | |")
    return head + "\n" + "\n".join(rows)


def _as_tiles(state: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
    """A state ``(n, ...)`` as ``(n, h, w)`` pictures and the value range to show them in.

    Images and 64-element states are 8x8 pictures; other shapes are drawn as a strip per sample.
    The range is the state's own (robust) one, except for states in ``[0, 1]`` already.
    """
    n = state.shape[0]
    flat = state.reshape(n, -1).float()
    if flat.shape[1] == 64:
        tiles = flat.reshape(n, 8, 8)
    elif state.dim() == 4:
        tiles = state[:, 0].float()
    else:
        width = max(1, math.ceil(math.sqrt(flat.shape[1])))
        tiles = torch.nn.functional.pad(flat, (0, width * width - flat.shape[1])).reshape(n, width, width)
    finite = flat[torch.isfinite(flat)]
    if finite.numel() == 0:
        return tiles, (0.0, 1.0)
    lo, hi = float(finite.quantile(0.01)), float(finite.quantile(0.99))
    if lo >= -0.05 and hi <= 1.05:
        lo, hi = 0.0, 1.0
    return tiles, (lo, hi if hi > lo else lo + 1.0)


def draw(path: Path, data: torch.Tensor, rows: list, results: list) -> Path:
    """``rows``: ``[(title, [(label, state), ...]), ...]``; each panel shows the same samples as a 2x4 grid."""
    from pyprobtf.images import image_grid
    from pyprobtf.zoo_plot import MAX_INTERMEDIATE, _pyplot

    plt = _pyplot()
    n_cols = MAX_INTERMEDIATE + 2
    fig, axes = plt.subplots(len(rows) + 1, n_cols, figsize=(1.9 * n_cols + 1.8, 1.25 * (len(rows) + 1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()

    def show(ax, state, label):
        tiles, value_range = _as_tiles(state)
        ax.imshow(image_grid(tiles, nrow=4, value_range=value_range, zoom=1, pad=1, invert=True), cmap="gray",
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label if len(label) < 22 else label[:20] + "…", fontsize=7)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])

    show(axes[0, -1], data, "held-out digits")
    axes[0, 0].text(0.0, 0.5, "digits (8x8)\nbase z  →  F  →  x", fontsize=9, va="center", ha="left",
                    transform=axes[0, 0].transAxes)
    for r, ((title, states), result) in enumerate(zip(rows, results), start=1):
        chosen = _pick_images(states)
        cols = [0] + list(range(1, len(chosen) - 1)) + [n_cols - 1] if len(chosen) > 1 else [0]
        for (label, state), c in zip(chosen, cols):
            show(axes[r, c], state, label)
        nll = f"NLL {result.nll:.0f}" if result.nll is not None else "no density"
        axes[r, 0].set_ylabel(f"{title}\nscore {result.score:.2f}\n{nll}", fontsize=8, rotation=0, ha="right",
                              va="center", labelpad=6)
    fig.suptitle("pyprobtf zoo on digits: x = F(z) for every family", fontsize=11, y=0.998)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pick_images(states):
    """The first state, up to three intermediate ones and the last; intermediates where the samples have made
    1/4, 1/2 and 3/4 of their total movement (states of one shape), else the middle one."""
    from pyprobtf.zoo_plot import MAX_INTERMEDIATE

    if len(states) <= MAX_INTERMEDIATE + 2:
        return list(states)
    flat = [s.reshape(s.shape[0], -1).double() for _, s in states]
    if any(f.shape != flat[0].shape for f in flat):
        return [states[0], states[len(states) // 2], states[-1]]
    normed = [(f - f.mean()) / f.std().clamp_min(1e-12) for f in flat]
    moves = torch.tensor([0.0] + [float((b - a).norm(dim=1).mean()) for a, b in zip(normed, normed[1:])])
    travelled = moves.cumsum(0) / moves.sum().clamp_min(1e-12)
    picks = sorted({int(torch.searchsorted(travelled, torch.tensor(q)).clamp(1, len(states) - 2))
                    for q in [(i + 1) / (MAX_INTERMEDIATE + 1) for i in range(MAX_INTERMEDIATE)]})
    return [states[0]] + [states[i] for i in picks] + [states[-1]]
