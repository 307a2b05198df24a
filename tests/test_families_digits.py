"""Digits (scikit-learn's bundled 8x8 images) for every decoder family on a tiny budget, and the PNG writer."""

import numpy as np
import pytest
import torch

import pyprobtf
from pyprobtf import fit
from pyprobtf import families as fam
from pyprobtf.images import image_grid, points_image, write_png


def _read_png(path):
    """(width, height, color type (0 grey, 2 RGB), pixel rows (H, W * channels)) of a PNG, read by Pillow."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode in ("L", "RGB")
        pixels = np.asarray(image)
        color = 0 if image.mode == "L" else 2
    return pixels.shape[1], pixels.shape[0], color, pixels.reshape(pixels.shape[0], -1)


def test_write_png_round_trips(tmp_path):
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    w, h, color, pixels = _read_png(write_png(tmp_path / "g.png", grey))
    assert (w, h, color) == (7, 12, 0) and np.array_equal(pixels, grey)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    w, h, color, pixels = _read_png(write_png(tmp_path / "c.png", rgb))
    assert (w, h, color) == (4, 5, 2) and np.array_equal(pixels.reshape(5, 4, 3), rgb)
    with pytest.raises(ValueError, match="`image` must be a non-empty uint8 array"):
        write_png(tmp_path / "bad.png", grey.astype(np.float32))


def test_image_grid_and_points_image():
    images = torch.zeros(5, 2, 3)
    images[1] = 1.0
    grid = image_grid(images, nrow=3, zoom=2, pad=1)
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (6 + 1) + 1)
    assert grid[1, 1] == 0 and grid[1, 1 + 7] == 255 and grid[0, 0] == 128
    assert image_grid(images, invert=True)[1, 1] == 255
    with pytest.raises(ValueError, match="`images` must have shape"):
        image_grid(torch.zeros(3, 4))
    pic = points_image(torch.tensor([[0.9, 0.9]] * 10 + [[-0.9, -0.9]]), bounds=(-1, 1), size=4)
    assert pic[0, 3] == 0 and pic[3, 0] < 255 and pic[0, 0] == 255  # y points up; dense is dark


DIGIT_FAMILIES = {
    "Autoencoder": lambda: fam.Autoencoder(dim=64),
    "VAE": lambda: fam.VAE(dim=64),
    "VAE+RealNVP": lambda: fam.VAE(dim=64, prior="realnvp"),
    "GAN": lambda: fam.GAN(dim=64),
    "DiscriminatorFlow": lambda: fam.DiscriminatorFlow(dim=64, steps=4),
    "ScoreGAN": lambda: fam.ScoreGAN(dim=64),
    "Autoregressive": lambda: fam.Autoregressive(dim=64, bins=17, bounds=(-1 / 32, 33 / 32)),
    "VQVAE": lambda: fam.VQVAE(dim=64),
}


@pytest.mark.parametrize("name", list(DIGIT_FAMILIES))
def test_digits_train_sample_and_picture_on_a_tiny_budget(name, tmp_path):
    pytest.importorskip("sklearn", reason="pyprobtf.data.digits needs scikit-learn (the `digits` extra)")
    if name in ("Autoregressive", "VQVAE") and not hasattr(pyprobtf.ops, "sample_logits"):
        pytest.skip("needs pyprobtf.ops.sample_logits (issue 5)")
    if name == "VQVAE":
        pytest.importorskip("pyprobtf.nn", reason="needs pyprobtf.nn.VectorQuantizer (issue 4)")
    from pyprobtf.data import digits

    train = digits("train")
    assert train.shape == (1438, 64) and float(train.min()) == 0 and float(train.max()) == 1
    torch.manual_seed(0)
    model = DIGIT_FAMILIES[name]()
    result = fit(model, train, steps=3, batch_size=64, progress=False)
    assert result.steps == 3
    samples = model.sample(16, seed=0)
    assert samples.shape == (16, 64) and torch.isfinite(samples).all()
    path = write_png(tmp_path / "grid.png", image_grid(samples.reshape(-1, 8, 8).clamp(0, 1), zoom=2))
    w, h, _, _ = _read_png(path)
    assert (w, h) == (4 * 17 + 1, 4 * 17 + 1)


def test_digits_splits():
    pytest.importorskip("sklearn", reason="pyprobtf.data.digits needs scikit-learn (the `digits` extra)")
    from pyprobtf.data import digits

    train, test, every = digits("train"), digits("test"), digits("all")
    assert train.shape[0] + test.shape[0] == every.shape[0] == 1797
    assert torch.equal(torch.cat([train, test]).sort(0).values, every.sort(0).values)
    assert torch.equal(digits("test"), test) and not torch.equal(digits("test", seed=1), test)
    with pytest.raises(ValueError, match="unknown data set 'valid'; choose one of train, test, all"):
        digits("valid")
    with pytest.raises(ValueError, match="`test_fraction` must be in"):
        digits(test_fraction=1.5)


def test_dequantized_digits_keep_their_grey_levels():
    pytest.importorskip("sklearn", reason="pyprobtf.data.digits needs scikit-learn (the `digits` extra)")
    from pyprobtf.data import digits

    for split in ("train", "test", "all"):
        plain, dequantized = digits(split), digits(split, dequantize=True)
        assert dequantized.shape == plain.shape and dequantized.min() >= 0 and dequantized.max() < 1
        # Each pixel stays inside its grey level's cell [level / 17, (level + 1) / 17).
        assert torch.equal((dequantized * 17).floor(), (plain * 16).round())
        assert torch.equal(digits(split, dequantize=True), dequantized)  # a fixed draw
    # Every pixel now varies, so no feature is constant in training (the cause of unbounded likelihoods).
    assert digits("train", dequantize=True).std(0).min() > 0.01
    with pytest.raises(TypeError, match="`dequantize` must be a bool"):
        digits(dequantize=1)
