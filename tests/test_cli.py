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
