"""Benchmark: the continuous families (FlowMatching, Diffusion, RealNVP, class-conditional FlowMatching with
classifier-free guidance) on 8x8 digits as (1, 8, 8) images, from their image defaults.

Each family is built with ``event_shape=(1, 8, 8)`` and nothing else (the default UNet for the ODE
families, the multi-scale coupling flow for RealNVP), trained by ``pyprobtf.fit(model, data,
max_seconds=S)`` on scikit-learn's digits (1438 train images, dequantized: ``(level + u) / 17``), then
sampled (2000 samples) and scored by :func:`pyprobtf.metrics.digits_score` (a fixed logistic-regression
classifier: score ``exp(E KL(p(y|x) || p(y)))``, class coverage, MMD to the 359 test images). RealNVP also
reports its test NLL in nats per image. The class-conditional model (``num_classes=10,
context_dropout=0.1``) samples 200 images of each class with ``guidance=2`` and reports the share the
classifier assigns to the requested class. One sample grid PNG per family (``digits-continuous-<family>.png``).

Usage: python benchmarks/bench_digits_continuous.py [--seconds S] [--threads N] [--samples N]
       [--families NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common  # noqa: E402
from pyprobtf import families as fam  # noqa: E402
from pyprobtf import fit  # noqa: E402
from pyprobtf.data import digits  # noqa: E402
from pyprobtf.images import image_grid, write_png  # noqa: E402
from pyprobtf.metrics import digits_classes, digits_score  # noqa: E402

NAME = "digits-continuous"
SHAPE = (1, 8, 8)
FAMILIES = {
    "FlowMatching": lambda: fam.FlowMatching(event_shape=SHAPE),
    "Diffusion": lambda: fam.Diffusion(event_shape=SHAPE),
    "RealNVP": lambda: fam.RealNVP(event_shape=SHAPE),
    "FlowMatching-cfg": lambda: fam.FlowMatching(event_shape=SHAPE, num_classes=10, context_dropout=0.1),
}


def images(split: str, labels: bool = False):
    return digits(split, dequantize=True, image=True, labels=labels)


def run(name: str, seconds: float, threads: int, n_samples: int, out: Path) -> dict:
    torch.manual_seed(0)
    model = FAMILIES[name]()
    data = images("train", labels=model.conditional)
    result = fit(model, data, max_seconds=seconds, num_threads=threads, progress=False)
    row = {"family": name, "steps": result.steps, "train s": round(result.seconds, 1)}
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with torch.no_grad():
        if model.conditional:
            per_class = n_samples // 10
            wanted = torch.arange(10).repeat_interleave(per_class)
            samples = torch.cat([model.sample(per_class, seed=c, context=c, guidance=2.0) for c in range(10)])
            row["requested class %"] = round(100 * float((digits_classes(samples) == wanted).float().mean()), 1)
        else:
            chunk = min(500, n_samples)
            samples = torch.cat([model.sample(chunk, seed=i) for i in range(n_samples // chunk)])
    row["sample s"] = round(time.perf_counter() - start, 1)
    score = digits_score(samples.clamp(0, 1))
    row.update(score=round(score["score"], 2), coverage=round(score["coverage"], 3), mmd=round(score["mmd"], 4))
    if "log_prob" in model.capabilities and name == "RealNVP":
        with torch.no_grad():
            row["test NLL"] = round(-float(model.log_prob(images("test")).mean()), 1)
    show = samples[:: max(1, samples.shape[0] // 100)][:100]
    write_png(out / f"digits-continuous-{name}.png", image_grid(show.reshape(-1, 8, 8), nrow=10, zoom=4, invert=True))
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 s of training and 100 samples for the first family")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the acceptance runs on the CPU")
    parser.add_argument("--seconds", type=float, default=120.0, help="training budget per family")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.samples, args.families = 2.0, 100, args.families[:1]
    out = args.out if args.out is not None else _common.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = [run(name, args.seconds, args.threads, args.samples, out) for name in args.families]
    columns = ["family", "steps", "train s", "sample s", "score", "coverage", "mmd", "test NLL", "requested class %"]
    notes = [f"fit(model, digits, max_seconds={args.seconds:g}, num_threads={args.threads}) from each family's "
             f"image defaults; {args.samples} samples (clamped to [0, 1]) scored by pyprobtf.metrics.digits_score; "
             f"targets: FlowMatching, Diffusion score >= 4.0, coverage >= 0.95; RealNVP >= 3.0 / 0.9; "
             f"class-conditional FlowMatching (guidance=2) >= 90% of samples in the requested class. "
             "test NLL: nats per image on the dequantized test pixels. " + _common.load_note(load_before)]
    _common.publish(NAME, "cpu", rows, columns, notes, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
