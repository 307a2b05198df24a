"""`pyprobtf zoo` end to end on a tiny budget, and its handling of bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyprobtf import zoo
from pyprobtf.cli import main

pytest.importorskip("matplotlib", reason="zoo.png needs the viz extra (matplotlib)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Every default family, a few steps each, on small evaluation sets (the numbers mean little;
    the plumbing from training to figure is what is under test)."""
    out = tmp_path_factory.mktemp("zoo")
    report = zoo.run_zoo("8gaussians", steps=4, seconds=30, out=out, n_train=2000, n_test=200, n_nll=60,
                         n_plot=150, progress=False)
    return out, report


def test_tiny_zoo_writes_figure_results_and_table(tiny_zoo):
    out, report = tiny_zoo
    assert [r.name for r in report.results] == list(zoo.DEFAULT_FAMILIES)
    png = (out / "zoo.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000  # a drawn figure, not an empty canvas

    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "8gaussians" and saved["settings"]["steps"] == 4
    assert [f["name"] for f in saved["families"]] == list(zoo.DEFAULT_FAMILIES)
    for family in saved["families"]:
        assert family["steps"] == 4
        for key in ("energy_distance", "mmd", "sliced_w2", "samples_per_second", "train_seconds"):
            assert math.isfinite(family[key]), (family["name"], key)
        assert family["samples_per_second"] > 0
        # A density's NLL is reported exactly where the family has one, with how it was obtained.
        assert (family["nll"] is None) == (zoo.FAMILIES[family["name"]][1] is None)
        if family["nll"] is not None:
            assert math.isfinite(family["nll"]) and family["nll_kind"] in zoo.NLL_NOTES

    # The true NLL of 8gaussians on the same held-out points, for comparison.
    assert saved["true_nll"] == pytest.approx(report.true_nll)
    assert 1.0 < report.true_nll < 2.5
    lines = report.table.splitlines()
    assert len(lines) == 2 + len(zoo.DEFAULT_FAMILIES) + 1
    assert lines[-1].startswith("| *data (second draw)*") and f"{report.true_nll:.3f}" in lines[-1]


def test_trajectory_states_keep_the_points_in_order():
    from pyprobtf.families import RealNVP

    torch.manual_seed(0)
    model = RealNVP(dim=2, layers=4, hidden=(16,))
    states = zoo._trajectory(model, 50, seed=0)
    assert states[0][0] == "z" and len(states) >= 3
    z, x = states[0][1], states[-1][1]
    with torch.no_grad():
        torch.testing.assert_close(model.transform(z), x, rtol=1e-5, atol=1e-5)


def test_cli_zoo_on_checkerboard(tmp_path, capsys):
    code = main(["zoo", "--dataset", "checkerboard", "--families", "realnvp,gan", "--steps", "3", "--seconds", "20",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| RealNVP |" in out and "| GAN |" in out and "true density" in out
    assert (tmp_path / "zoo.png").read_bytes().startswith(PNG_SIGNATURE)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["true_nll"] == pytest.approx(math.log(8), abs=1e-6)  # uniform on 8 unit squares (float32)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zoo", "--dataset", "swissroll"], "unknown dataset 'swissroll'; choose from moons, circles"),
        (["zoo", "--families", "realnvp,glow"], "unknown family 'glow'; choose from vae, vqvae"),
        (["zoo", "--out", "/proc/forbidden"], "cannot create the output folder"),
        (["zoo", "--steps", "0"], "--steps must be at least 1"),
        (["zoo", "--seconds", "-1"], "--seconds must be a positive finite number"),
    ],
)
def test_zoo_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_zoo_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["zoo", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err


def test_zoo_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")  # running as root: permissions do not apply
            pytest.skip("permissions are not enforced for this user")
        except OSError:
            pass
        assert main(["zoo", "--out", str(folder), "--quiet"]) == 2
    finally:
        folder.chmod(0o700)


def test_image_zoo_on_digits_writes_figure_results_and_table(tmp_path):
    from pyprobtf import zoo_images

    report = zoo_images.run_image_zoo(["vae", "flow_matching"], steps=2, seconds=30, out=tmp_path,
                                      n_samples=100, n_nll=20, progress=False)
    assert (tmp_path / "zoo.png").read_bytes().startswith(PNG_SIGNATURE)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [f["name"] for f in saved["families"]] == ["vae", "flow_matching"]
    for r in report.results:
        assert r.steps == 2 and 1.0 <= r.score <= 10.0 and 0.0 <= r.coverage <= 1.0 and math.isfinite(r.mmd)
        assert r.nll is not None and math.isfinite(r.nll)
    assert 6.0 < saved["real_digits"]["score"] < 7.0
    assert report.table.count("\n") == 2 + 2
