"""Benchmark: the decoder and adversarial families on the 2-D toy sets and on 8x8 digits (numbers and pictures).

Every family (Autoencoder, VAE with the Gaussian and with a learned RealNVP prior,
VQVAE, GAN, Autoregressive, DiscriminatorFlow, ScoreGAN) is trained from its
defaults by ``pyprobtf.fit`` with a time budget on the CPU, then sampled:

- toy sets (``--toy-seconds`` each): samples' energy distance to held-out data;
  on 8gaussians also the share of samples within 3 std of a mode and the
  smallest/largest share of samples per mode; one picture ``families-toy.png``
  (a row per family, a column per data set; white is empty, dark is dense);
- digits (``--digits-seconds`` each, scikit-learn's bundled 8x8 digits,
  1438 train / 359 test images): a grid of 64 samples per family
  (``families-digits-<family>.png``), and what each family measures, on
  dequantized pixels ``(level + u) / 17`` (``digits(dequantize=True)``): test ELBO
  (VAE, nats per image), test NLL (Autoregressive: the piecewise-constant
  density over one bin per grey level, nats per image; comparable with the
  negative ELBO, lower is better),
  reconstruction error (Autoencoder, VAE, VQVAE: mean squared error per pixel),
  codebook usage (VQVAE: codes used, perplexity), and for all the energy
  distance of 359 samples to the test images.

Tempered sampling (``Tempered(model, temperature=0.7, top_p=0.9)``) is shown on
the 8gaussians row for every family (the "... tempered" rows).

Usage: python benchmarks/bench_decoder_families.py [--quick] [--out DIR] [--toy-seconds S] [--digits-seconds S]
       [--families NAME ...] [--parts toy digits] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf import families as fam  # noqa: E402
from pyprobtf.data import TOY_DATASETS, digits, toy, toy_modes  # noqa: E402
from pyprobtf.images import image_grid, points_image, write_png  # noqa: E402
from pyprobtf.metrics import energy_distance, mode_coverage, mode_quality  # noqa: E402

NAME = "decoder_families"

# name -> builder(dim, digits: bool)
FAMILIES = {
    "Autoencoder": lambda d, img: fam.Autoencoder(dim=d),
    "VAE": lambda d, img: fam.VAE(dim=d),
    "VAE+RealNVP prior": lambda d, img: fam.VAE(dim=d, prior="realnvp"),
    "VQVAE": lambda d, img: fam.VQVAE(dim=d),
    "GAN": lambda d, img: fam.GAN(dim=d),
    # Digits (dequantized, (level + u) / 17): one bin per grey level.
    "Autoregressive": lambda d, img: (fam.Autoregressive(dim=d, bins=17, bounds=(0.0, 1.0)) if img
                                      else fam.Autoregressive(dim=d)),
    "DiscriminatorFlow": lambda d, img: fam.DiscriminatorFlow(dim=d),
    "ScoreGAN": lambda d, img: fam.ScoreGAN(dim=d),
}


def _available(name: str) -> str | None:
    """Why a family cannot run on this build (None: it can)."""
    if name in ("VQVAE", "Autoregressive") and not hasattr(pyprobtf.ops, "sample_logits"):
        return "needs pyprobtf.ops.sample_logits (issue 5)"
    if name == "VQVAE":
        try:
            importlib.import_module("pyprobtf.nn")
        except ImportError:
            return "needs pyprobtf.nn.VectorQuantizer (issue 4)"
    return None


def _train(name, data, dim, is_digits, budget, quick, seed=0):
    torch.manual_seed(seed)
    model = FAMILIES[name](dim, is_digits)
    limits = {"steps": 3} if quick else {"max_seconds": budget}
    result = pyprobtf.fit(model, data, progress=False, seed=seed, **limits)
    return model, result


def _panel(samples, size):
    return points_image(samples, bounds=(-4.5, 4.5), size=size)


def run_toy(names, sets, seconds, quick, out: Path):
    rows, panels = [], {}
    size = 96 if quick else 160
    for name in names:
        for data_name in sets:
            data = toy(data_name, 2000 if quick else 100_000, seed=0)
            model, result = _train(name, data, 2, False, seconds, quick)
            n = 200 if quick else 5000
            samples = model.sample(n, seed=1)
            held_out = toy(data_name, n, seed=123)
            row = {"family": name, "data": data_name, "steps": result.steps, "seconds": round(result.seconds, 1),
                   "energy distance": energy_distance(samples, held_out)}
            variants = [(name, samples)]
            if data_name == "8gaussians":
                centres, std = toy_modes(data_name)
                cov = mode_coverage(samples, centres)
                row.update({"in 3 std": mode_quality(samples, centres, std), "min mode": float(cov.min()),
                            "max mode": float(cov.max())})
                cold = fam.Tempered(model, temperature=0.7, top_p=0.9).sample(n, seed=1)
                variants.append((f"{name} tempered", cold))
                rows.append(row)
                rows.append({"family": f"{name} tempered (T=0.7, top_p=0.9)", "data": data_name,
                             "energy distance": energy_distance(cold, held_out),
                             "in 3 std": mode_quality(cold, centres, std),
                             "min mode": float(mode_coverage(cold, centres).min()),
                             "max mode": float(mode_coverage(cold, centres).max())})
            else:
                rows.append(row)
            for label, s in variants:
                panels.setdefault(label, {})[data_name] = _panel(s, size)
    # One picture: a row per family (and tempered variant), a column per data set.
    blank = np.full((size, size), 255, dtype=np.uint8)
    grid_rows = [np.concatenate([np.pad(panels[label].get(s, blank), 2, constant_values=128) for s in sets], 1)
                 for label in panels]
    picture = write_png(out / "families-toy.png", np.concatenate(grid_rows, 0))
    return rows, [f"families-toy.png rows (top to bottom): {', '.join(panels)}; columns: {', '.join(sets)}; "
                  f"each panel shows [-4.5, 4.5]^2"], picture


def run_digits(names, seconds, quick, out: Path):
    rows, notes = [], []
    # Dequantized pixels: a continuous density exists, so the VAE's bound and the AR model's NLL are finite
    # and comparable (a pixel that is 0 in every training image would make a Gaussian decoder's test
    # likelihood unbounded).
    train, test = digits("train", dequantize=True), digits("test", dequantize=True)
    if quick:
        train, test = train[:200], test[:20]
    for name in names:
        model, result = _train(name, train, 64, True, seconds, quick)
        with torch.no_grad():
            samples = model.sample(16 if quick else 64, seed=1).clamp(0, 1)
            many = model.sample(test.shape[0], seed=2)
        write_png(out / f"families-digits-{name.replace(' ', '_').replace('+', '_')}.png",
                  image_grid(samples.reshape(-1, 8, 8), nrow=8, zoom=4, invert=True))
        row = {"family": name, "data": "digits", "steps": result.steps, "seconds": round(result.seconds, 1),
               "energy distance": energy_distance(many, test)}
        with torch.no_grad():
            if isinstance(model, fam.VAE):
                row["test ELBO"] = float(model.elbo(test, n_samples=16, seed=0).mean())
                row["test IW bound (K=256)"] = float(model.log_prob(test, n_samples=256, seed=0).mean())
            if isinstance(model, fam.Autoregressive):
                row["test NLL"] = -float(model.log_prob(test).mean())
            if hasattr(model, "reconstruct"):
                row["recon MSE"] = float((model.reconstruct(test) - test).square().mean())
            if isinstance(model, fam.VQVAE):
                usage = model.codebook_usage(test)
                row["codes used"] = int(usage["codes_used"])
                row["perplexity"] = usage["perplexity"]
        rows.append(row)
    notes.append("digits: 64 samples per family in families-digits-<family>.png (dark = ink), clamped to [0, 1]")
    notes.append("digits likelihoods: on dequantized pixels (level + u) / 17 in [0, 1]^64, nats per image; adding "
                 f"64 ln 17 = {64 * math.log(17):.1f} turns -log p into a bound on the discrete levels' NLL")
    return rows, notes


def run(quick: bool, names, toy_seconds: float, digits_seconds: float, out: Path, parts=("toy", "digits")):
    rows, notes = [], []
    runnable = []
    for name in names:
        why = _available(name)
        if why:
            notes.append(f"{name} skipped: {why}")
        else:
            runnable.append(name)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    if "toy" in parts:
        sets = ["8gaussians"] if quick else list(TOY_DATASETS)
        toy_rows, toy_notes, _ = run_toy(runnable, sets, toy_seconds, quick, out)
        rows += toy_rows
        notes += toy_notes
    if "digits" in parts:
        try:
            digit_rows, digit_notes = run_digits(runnable, digits_seconds, quick, out)
            rows += digit_rows
            notes += digit_notes
        except ImportError as exc:
            notes.append(f"digits skipped: {exc}")
    budget = "3 steps each (quick mode)" if quick else (f"fit(max_seconds={toy_seconds:g}) per toy set, "
                                                        f"fit(max_seconds={digits_seconds:g}) on digits")
    notes.append(f"training: {budget}, seed 0, from each family's defaults; {torch.get_num_threads()} CPU thread(s); "
                 f"total {time.perf_counter() - t0:.0f} s. A time budget buys a number of steps that depends on the "
                 f"machine and its load. " + _common.load_note(load_before))
    columns = ["family", "data", "steps", "seconds", "energy distance", "in 3 std", "min mode", "max mode",
               "test ELBO", "test IW bound (K=256)", "test NLL", "recon MSE", "codes used", "perplexity"]
    return rows, columns, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only (the budgets are CPU budgets)")
    parser.add_argument("--quick", action="store_true", help="3 training steps per run, small data")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--toy-seconds", type=float, default=60.0)
    parser.add_argument("--digits-seconds", type=float, default=120.0)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--parts", nargs="*", default=["toy", "digits"], choices=["toy", "digits"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else _common.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    rows, columns, notes = run(args.quick, args.families, args.toy_seconds, args.digits_seconds, out, args.parts)
    _common.publish(NAME, args.device, rows, columns, notes, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
