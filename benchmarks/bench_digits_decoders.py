"""Benchmark: the decoder families on 8x8 digit images, each from its image defaults (the acceptance of the
open-families issue for Autoencoder, VAE, VQVAE with its prior, GAN, Autoregressive and Latent(VAE, FlowMatching)).

Every family is built as ``Family(event_shape=(1, 8, 8))`` (``Latent(VAE(event_shape=(1, 8, 8)),
FlowMatching(dim=16))`` for the latent flow, 16 the VAE's default latent size), trained by
``pyprobtf.fit(model, train, max_seconds=S)``
on the 1438 dequantized training images (``digits("train", image=True, dequantize=True)``, pixels
``(level + u) / 17``) with one CPU thread, then sampled (2000 samples, seed 1) and measured by
:func:`pyprobtf.metrics.digits_score`: the classifier score (10 at best; real held-out digits about
6.7), class coverage (1: balanced) and MMD to the held-out digits. Families with a density report
the test NLL in nats per image on the 359 dequantized test images (VAE: the importance-weighted
bound with 256 draws; Autoregressive: exact, for its defaults' 16 bins over the box fitted to
the training images, so not per grey level). A grid of 64 samples per family goes to
``digits-decoders-<family>.png``.

Usage: python benchmarks/bench_digits_decoders.py [--seconds S] [--families NAME ...] [--out DIR] [--samples N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyprobtf import fit  # noqa: E402
from pyprobtf import families as fam  # noqa: E402
from pyprobtf.data import digits  # noqa: E402
from pyprobtf.images import image_grid, write_png  # noqa: E402
from pyprobtf.metrics import digits_score  # noqa: E402

NAME = "digits-decoders"
SHAPE = (1, 8, 8)

FAMILIES = {
    "Autoencoder": lambda: fam.Autoencoder(event_shape=SHAPE),
    "VAE": lambda: fam.VAE(event_shape=SHAPE),
    "VQVAE": lambda: fam.VQVAE(event_shape=SHAPE),
    "GAN": lambda: fam.GAN(event_shape=SHAPE),
    "Autoregressive": lambda: fam.Autoregressive(event_shape=SHAPE),
    "Latent(VAE, FlowMatching)": lambda: latent_flow(fam.VAE(event_shape=SHAPE)),
}
TARGET = {"score": 3.0, "coverage": 0.9}


def latent_flow(vae):
    """Latent flow matching: today's vector FlowMatching on the VAE's (vector) latent."""
    return fam.Latent(vae, fam.FlowMatching(dim=vae.latent_dim))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


@torch.no_grad()
def test_nll(model, test: torch.Tensor) -> float | None:
    """Mean negative log-likelihood (nats per image) of the test images, where the family has one."""
    inner = model
    if isinstance(inner, fam.VAE):
        return float(-inner.log_prob(test, n_samples=256, seed=0).mean())
    if isinstance(inner, fam.Autoregressive):
        return float(-inner.log_prob(test).mean())
    return None


def run(name: str, seconds: float, n_samples: int, train: torch.Tensor, test: torch.Tensor, out: Path) -> dict:
    torch.manual_seed(0)
    model = FAMILIES[name]()
    start = time.perf_counter()
    result = fit(model, train, max_seconds=seconds, seed=0, progress=False)
    train_seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    samples = model.sample(n_samples, seed=1).float()
    sample_seconds = time.perf_counter() - start
    score = digits_score(samples)
    nll = test_nll(model, test)
    write_png(out / f"{NAME}-{slug(name)}.png",
              image_grid(samples[:64, 0].clamp(0, 1), nrow=8, zoom=4, invert=True))
    ok = score["score"] >= TARGET["score"] and score["coverage"] >= TARGET["coverage"]
    row = {"family": name, "steps": result.steps, "train s": round(train_seconds, 1),
           "score": round(score["score"], 2), "coverage": round(score["coverage"], 3), "mmd": f"{score['mmd']:.4f}",
           "test NLL (nats/image)": None if nll is None else round(nll, 1),
           "sample s": round(sample_seconds, 1), "target met": "yes" if ok else "no"}
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 s of training and 100 samples for the first family")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the acceptance runs on the CPU")
    parser.add_argument("--seconds", type=float, default=120.0, help="fit's max_seconds per family")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES), metavar="NAME")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.samples, args.families = 2.0, 100, args.families[:1]
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train = digits("train", image=True, dequantize=True)
    test = digits("test", image=True, dequantize=True)
    real = digits_score(digits("test", image=True))
    load_before = os.getloadavg()[0]
    rows = [run(name, args.seconds, args.samples, train, test, args.out) for name in args.families]
    notes = [
        f"fit(model, digits('train', image=True, dequantize=True), max_seconds={args.seconds:g}, seed=0), "
        f"torch.set_num_threads(1); {args.samples} samples (seed 1) scored by pyprobtf.metrics.digits_score; "
        f"target: score >= {TARGET['score']}, coverage >= {TARGET['coverage']}.",
        f"Real held-out digits: score {real['score']:.2f}, coverage {real['coverage']:.3f}, mmd {real['mmd']:.4f}.",
        "Test NLL: nats per image on the 359 dequantized test images (VAE: importance-weighted bound, 256 draws).",
        _common.load_note(load_before),
    ]
    columns = ["family", "steps", "train s", "score", "coverage", "mmd", "test NLL (nats/image)", "sample s",
               "target met"]
    _common.publish(NAME, "cpu", rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
