"""The `pyprobtf` command line: check, bench, and its error handling."""

import subprocess
import sys

import pytest

from pyprobtf.cli import main


def test_check_passes_on_this_machine(capsys):
    assert main(["check", "affine_coupling", "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert "cpp" in out and "reference" in out


def test_bench_quick_writes_a_table(tmp_path, capsys):
    assert main(["bench", "affine_coupling", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "affine_coupling-cpu.md").read_text().startswith("# affine_coupling")
    assert "pyprobtf[cpp]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "nonsense"], "unknown op(s) nonsense; choose from"),
        (["bench", "nonsense"], "unknown benchmark(s) nonsense; choose from"),
        (["bench", "affine_coupling", "--out", "/proc/forbidden"], "cannot create the output folder"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "pyprobtf", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "check" in out.stdout and "bench" in out.stdout


# ----------------------------------------------------------------------------- zoo arguments


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seconds", "nan"], "--seconds must be a positive finite number; got nan"),
        (["--seconds", "inf"], "--seconds must be a positive finite number; got inf"),
        (["--seconds", "0"], "--seconds must be a positive finite number; got 0.0"),
        (["--seed", "99999999999999999999999"],
         "--seed must be an integer in [-2^63, 2^64); got 99999999999999999999999"),
        (["--seed", str(2**64)], "--seed must be an integer in [-2^63, 2^64)"),
        (["--seed", str(-(2**63) - 1)], "--seed must be an integer in [-2^63, 2^64)"),
        (["--families", ","], "--families must name at least one family; got ','"),
        (["--families", ""], "--families must name at least one family; got ''"),
        (["--steps", "0"], "--steps must be at least 1; got 0"),
        (["--families", "vae,nope"], "unknown family 'nope'"),
    ],
)
def test_zoo_bad_values_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["zoo", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.parametrize("argv", [["--steps", "inf"], ["--steps", "1e3"], ["--seed", "1.5"], ["--seconds", "x"]])
def test_zoo_unparsable_values_are_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: invalid" in err and len(err.strip().splitlines()) == 1


def test_zoo_seed_at_the_edges_of_the_domain_is_accepted(monkeypatch, tmp_path):
    from pyprobtf import cli, zoo

    seen = []

    def fake_run_zoo(dataset, **kwargs):
        seen.append(kwargs["seed"])
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(zoo, "run_zoo", fake_run_zoo)
    for seed in (str(2**64 - 1), str(-(2**63)), "0"):
        assert cli.main(["zoo", "--seed", seed, "--out", str(tmp_path), "--quiet"]) == 130
    assert seen == [-1, -(2**63), 0]  # taken modulo 2^64, as a signed 64-bit int
