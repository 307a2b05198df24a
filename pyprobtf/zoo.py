"""The zoo: every generative family as a probability transformation ``x = F(z)``, side by side.

:func:`run_zoo` trains every family on one 2-D toy dataset on the same budget,
evaluates them on the same held-out data with the same metrics, and draws
``zoo.png``: one row per family, from the base samples ``z`` through the
intermediate states of ``F`` (flow layers, ODE/SDE times, autoregressive
steps) to the generated ``x``, every point coloured by where its ``z`` came
from, so the eye can follow each point through ``F``. It also writes
``results.json`` and returns a Markdown table. ``pyprobtf zoo`` is its command line. ``dataset="digits"`` runs the same on
8x8 images (:mod:`pyprobtf.zoo_images`).

Example:
    >>> from pyprobtf.zoo import run_zoo
    >>> report = run_zoo("moons", families=["realnvp", "flow_matching"], seconds=5, out="zoo-out")  # doctest: +SKIP
    >>> print(report.table)                                                                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pyprobtf import metrics
from pyprobtf.data import TOY_DATASETS, TOY_DENSITIES, toy, toy_log_prob
from pyprobtf.training import fit

# name -> (row title, how its NLL is obtained or None). The order is the figure's row order:
# decoders and generators first, then the explicit-density families.
FAMILIES: dict[str, tuple[str, str | None]] = {
    "vae": ("VAE", "bound"),
    "vqvae": ("VQ-VAE", None),
    "autoregressive": ("Autoregressive", "exact"),
    "gan": ("GAN", None),
    "realnvp": ("RealNVP", "exact"),
    "diffusion": ("Diffusion", "ODE"),
    "flow_matching": ("Flow matching", "ODE"),
    "continuous_flow": ("Continuous flow", "ODE"),
    # Not in the default set (``--families`` picks them):
    "autoencoder": ("Autoencoder", None),
    "discriminator_flow": ("Discriminator flow", None),
    "score_gan": ("Score-distilled generator", None),
}
DEFAULT_FAMILIES = ("vae", "vqvae", "autoregressive", "gan", "realnvp", "diffusion", "flow_matching",
                    "continuous_flow")
NLL_NOTES = {
    "exact": "exact (change of variables; the AR model's piecewise-constant density over its bins)",
    "ODE": "probability-flow / neural ODE, exact divergence",
    "bound": "importance-weighted lower bound on log p (so the NLL shown is an upper bound)",
}


def _constructors() -> dict[str, Callable]:
    from pyprobtf import families as F

    return {
        "vae": F.VAE, "vqvae": F.VQVAE, "autoregressive": F.Autoregressive, "gan": F.GAN, "realnvp": F.RealNVP,
        "diffusion": F.Diffusion, "flow_matching": F.FlowMatching, "continuous_flow": F.ContinuousFlow,
        "autoencoder": F.Autoencoder, "discriminator_flow": F.DiscriminatorFlow, "score_gan": F.ScoreGAN,
    }


@dataclasses.dataclass
class FamilyResult:
    name: str
    title: str
    train_seconds: float
    steps: int
    final_loss: float
    energy_distance: float
    mmd: float
    sliced_w2: float
    nll: float | None
    nll_kind: str | None
    samples_per_second: float
    eval_seconds: float


@dataclasses.dataclass
class ZooReport:
    dataset: str
    results: list[FamilyResult]
    reference: dict  # the same metrics for a second draw of the data: the floor set by sampling noise
    true_nll: float | None
    table: str
    out: Path
    seconds: float


def check_arguments(dataset: str, families: Sequence[str] | None) -> list[str]:
    """Validate the dataset and family names; the error lists the choices."""
    from pyprobtf.zoo_images import IMAGE_DATASETS

    if dataset not in TOY_DATASETS + IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(TOY_DATASETS + IMAGE_DATASETS)}")
    families = list(DEFAULT_FAMILIES if not families else families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(FAMILIES)}")
    if len(set(families)) != len(families):
        raise ValueError(f"families listed twice: {families}")
    return families


def _overall(done: int, total: int, start: float, what: str) -> None:
    width = 24
    filled = int(width * done / total)
    elapsed = time.perf_counter() - start
    print(f"zoo {100 * done // total:3d}% [{'#' * filled}{'-' * (width - filled)}] {done}/{total} families "
          f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {what}", file=sys.stderr, flush=True)


def run_zoo(
    dataset: str = "moons",
    *,
    families: Sequence[str] | None = None,
    steps: int | None = None,
    seconds: float = 12.0,
    seed: int = 0,
    device: str = "cpu",
    out: str | os.PathLike = ".",
    n_train: int = 20_000,
    n_test: int = 2_000,
    n_nll: int = 1_000,
    n_plot: int = 1_500,
    progress: bool = True,
) -> ZooReport:
    """Train, evaluate and draw every family; write ``zoo.png`` and ``results.json`` to ``out``.

    Every family gets the same budget: at most ``steps`` optimizer steps (its
    own default when None) and at most ``seconds`` of training. All are
    evaluated on the same ``n_test`` held-out points: energy distance, MMD and
    sliced Wasserstein-2 between ``n_test`` generated samples and the held-out
    set, the NLL on the first ``n_nll`` held-out points where the family has a
    density (saying how it is obtained; an ODE likelihood costs hundreds of
    network passes per point), sampling throughput, and training time.
    """
    families = check_arguments(dataset, families)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pyprobtf-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to the output folder {str(out)!r}: {exc.strerror}") from None
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    from pyprobtf.zoo_images import IMAGE_DATASETS, run_image_zoo

    if dataset in IMAGE_DATASETS:
        return run_image_zoo(families, steps=steps, seconds=seconds, seed=seed, device=device, out=out,
                             progress=progress)

    start = time.perf_counter()
    train = toy(dataset, n_train, seed=seed)
    test = toy(dataset, n_test, seed=seed + 1)
    floor = toy(dataset, n_test, seed=seed + 2)  # a second draw of the data: the metrics' noise floor
    reference = _sample_metrics(floor, test)
    n_nll = min(n_nll, n_test)
    true_nll = float(-toy_log_prob(dataset, test[:n_nll]).mean()) if dataset in TOY_DENSITIES else None

    constructors = _constructors()
    results, figure_rows = [], []
    for i, name in enumerate(families):
        title, nll_kind = FAMILIES[name]
        if progress:
            _overall(i, len(families), start, f"training {title}")
        torch.manual_seed(seed)
        model = constructors[name](dim=2)
        # One CPU thread: these networks are too small for a second OpenMP thread to pay, and on a busy
        # machine two threads waiting for each other can make every step several times slower.
        fitted = fit(model, train, steps=steps, seed=seed, device=device, max_seconds=seconds, progress=progress,
                     num_threads=1 if device.type == "cpu" else None)
        model.eval()
        t_eval = time.perf_counter()
        samples, per_second = _timed_samples(model, n_test, seed)
        scores = _sample_metrics(samples.cpu(), test)
        nll = None
        if nll_kind is not None:
            with torch.no_grad():
                nll = metrics.nll(model, test[:n_nll].to(device))
        eval_seconds = time.perf_counter() - t_eval
        results.append(FamilyResult(name, title, fitted.seconds, fitted.steps, fitted.final_loss, **scores,
                                    nll=nll, nll_kind=nll_kind, samples_per_second=per_second,
                                    eval_seconds=eval_seconds))
        figure_rows.append((title, _trajectory(model, n_plot, seed)))
    if progress:
        _overall(len(families), len(families), start, "done; drawing")

    from pyprobtf import zoo_plot

    zoo_plot.draw(out / "zoo.png", dataset, test[:n_plot], figure_rows, results)
    table = markdown_table(results, reference, true_nll)
    report = ZooReport(dataset, results, reference, true_nll, table, out, time.perf_counter() - start)
    settings = dict(steps=steps, seconds=seconds, seed=seed, device=str(device), n_train=n_train, n_test=n_test,
                    n_nll=n_nll)
    (out / "results.json").write_text(json.dumps(_as_json(report, settings), indent=1))
    return report


def _sample_metrics(samples: torch.Tensor, test: torch.Tensor) -> dict:
    samples, test = samples.double(), test.double()
    return {
        "energy_distance": metrics.energy_distance(samples, test),
        "mmd": metrics.mmd(samples, test),
        "sliced_w2": metrics.sliced_wasserstein2(samples, test),
    }


def _timed_samples(model, n: int, seed: int) -> tuple[torch.Tensor, float]:
    """``n`` samples from a fixed seed, and the sampling throughput (samples per second, best of 2 runs)."""
    best = math.inf
    for _ in range(2):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        samples = model.sample(n, seed=seed)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return samples, n / best


def _trajectory(model, n: int, seed: int):
    """The states of F for ``n`` base draws (on the CPU), with their labels."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        z = model.base.sample((n,))
    traj = model.trajectory(z)
    return [(label, state.detach().to("cpu", torch.float32)) for label, state in traj]


def markdown_table(results: Sequence[FamilyResult], reference: dict, true_nll: float | None) -> str:
    """The zoo's results as a Markdown table (lower is better for every metric but throughput)."""
    head = ("| family | energy dist. | MMD | sliced W2 | NLL (nats) | NLL from | samples/s | train s | steps |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        nll = f"{r.nll:.3f}" if r.nll is not None else "—"
        rows.append(f"| {r.title} | {r.energy_distance:.2g} | {r.mmd:.2g} | {r.sliced_w2:.3f} | {nll} | "
                    f"{r.nll_kind or '—'} | {r.samples_per_second:,.0f} | {r.train_seconds:.1f} | {r.steps} |")
    rows.append(f"| *data (second draw)* | {reference['energy_distance']:.2g} | {reference['mmd']:.2g} | "
                f"{reference['sliced_w2']:.3f} | {f'{true_nll:.3f}' if true_nll is not None else '—'} | "
                f"{'true density' if true_nll is not None else '—'} | | | |")
    return head + "\n" + "\n".join(rows)


def _as_json(report: ZooReport, settings: dict) -> dict:
    from pyprobtf.benchmarks._common import machine

    return {
        "dataset": report.dataset,
        "settings": settings,
        "machine": machine(settings["device"].split(":")[0]),
        "seconds": report.seconds,
        "true_nll": report.true_nll,
        "data_second_draw": report.reference,
        "nll_notes": NLL_NOTES,
        "families": [dataclasses.asdict(r) for r in report.results],
    }
