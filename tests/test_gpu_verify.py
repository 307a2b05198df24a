"""scripts/gpu_verify.sh, the one command to run on a GPU machine, exercised here in its --dry-run mode.

The dry run prints every step's commands, runs the CPU parts (the environment report, `pyprobtf check`
on the CPU, the collection of the sanitizer's test subset, a benchmark in --quick mode) and skips what
needs a GPU, saying why. `--skip-build` keeps the test short (the build is what `make` already did), and
so does checking one op on the CPU (GPU_VERIFY_DRY_RUN_CHECK_OPS) and running one benchmark (--benches).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_verify.sh"
STEP_TITLES = [
    "[1/7] environment",
    "[2/7] build pyprobtf with CUDA",
    "[3/7] pytest -m gpu and the Triton tests on the GPU",
    "[4/7] pyprobtf check --device cuda",
    "[5/7] compute-sanitizer memcheck and racecheck",
    "[6/7] op benchmarks on cpu",
    "[7/7] results and summary",
]


def run_script(*args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, GPU_VERIFY_WHEELS=str(ROOT / "no-such-wheels-folder"),
               GPU_VERIFY_DRY_RUN_CHECK_OPS="lincomb")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_option_is_a_usage_error():
    result = run_script("--no-such-option")
    assert result.returncode == 2
    assert "unknown option '--no-such-option'" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs for real")
def test_without_a_gpu_a_real_run_refuses_and_names_dry_run():
    result = run_script()
    assert result.returncode == 2
    assert "--dry-run" in result.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_verify")
    results_before = sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir())
    result = run_script("--dry-run", "--skip-build", "--benches", "vq", "--out", str(tmp / "out"),
                        "--logs", str(tmp / "logs"))
    results_after = sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir())
    return result, tmp, results_before, results_after


def test_dry_run_prints_every_step_and_passes(dry_run):
    result, *_ = dry_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for title in STEP_TITLES:
        assert f"== {title}" in result.stdout, title
    # the GPU run's exact commands are printed, not run
    for command in ("-m pip install --no-index --no-build-isolation --no-deps -e .",
                    "-m pytest -q -m '(gpu or triton) and not acceptance'",
                    "-m pyprobtf check --device cuda", "compute-sanitizer --tool memcheck",
                    "compute-sanitizer --tool racecheck", "-m pyprobtf bench vq --device cuda"):
        assert any(line.startswith("[dry-run, not run]") and command in line
                   for line in result.stdout.splitlines()), command


def test_dry_run_skips_the_gpu_steps_with_a_reason(dry_run):
    result, *_ = dry_run
    summary = result.stdout[result.stdout.index("== summary"):]
    rows = {line.split("]")[0].strip(" ["): line for line in summary.splitlines() if line.startswith("  [")}
    assert "SKIP" in rows["3"] and "needs a CUDA device" in rows["3"]
    assert "SKIP" in rows["5"] and "needs a CUDA device" in rows["5"]
    assert "GPU tests, collected here" in rows["5"]  # the sanitizer's subset exists
    for step in ("1", "4", "6", "7"):
        assert "PASS" in rows[step], rows[step]


def test_dry_run_writes_the_summary_and_the_cpu_tables_outside_benchmarks_results(dry_run):
    result, tmp, before, after = dry_run
    out = tmp / "out"
    assert (out / "vq_nearest-cpu.json").exists()  # the quick benchmark, into --out
    assert before == after  # nothing written into benchmarks/results
    summary = json.loads((out / "gpu-verify-cpu.json").read_text())
    assert summary["dry_run"] is True
    assert [s["step"] for s in summary["steps"]] == [1, 2, 3, 4, 5, 6, 7]
    assert {s["step"]: s["status"] for s in summary["steps"]}[3] == "SKIP"
    assert summary["gpu_verified"] == {}  # a dry run verifies nothing
    assert "vq_nearest-cpu.json" in summary["benchmark_tables"]
    text = (out / "gpu-verify-cpu.md").read_text()
    assert "| 5. compute-sanitizer memcheck and racecheck over the kernels' GPU tests | SKIP |" in text
    # each step's log
    check_log = (tmp / "logs" / "step4-check.log").read_text()
    assert "check lincomb --device cpu --dtype float32" in check_log and check_log.count(" PASS ") >= 2


def test_a_failed_step_fails_the_run_and_the_others_still_run(tmp_path):
    result = run_script("--dry-run", "--steps", "6,7", "--benches", "no_such_benchmark",
                        "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 1, result.stdout[-3000:]
    summary = json.loads((tmp_path / "out" / "gpu-verify-cpu.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status[6] == "FAIL" and status[7] == "PASS"
    assert status[1] == "SKIP"  # not selected
    assert "unknown benchmark(s) no_such_benchmark" in (tmp_path / "logs" / "step6-bench.log").read_text()


STUB_GPU = '''
import types
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_capability = lambda device=0: (9, 0)
torch.cuda.get_device_name = lambda device=0: "NVIDIA H200"
torch.cuda.get_device_properties = lambda device=0: types.SimpleNamespace(
    name="NVIDIA H200", major=9, minor=0, multi_processor_count=132, total_memory=141 * 2**30)
'''
STUB_TOOL = '''#!/usr/bin/env bash
echo "stub $(basename "$0") $*" >>"$STUB_CALLS"
[ "$(basename "$0")" = nvidia-smi ] && echo "580.00"
exit 0
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs for real")
def test_gpu_mode_orchestration_with_a_stub_gpu(tmp_path):
    # Not a GPU check: torch is told it sees an H200 and compute-sanitizer and nvidia-smi are stubs, so that the
    # GPU run's own control flow (names, limits, the sanitizer's two passes, the summary) runs somewhere in CI.
    site, bin_ = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bin_.mkdir()
    (site / "sitecustomize.py").write_text(STUB_GPU)
    for tool in ("compute-sanitizer", "nvidia-smi"):
        (bin_ / tool).write_text(STUB_TOOL)
        (bin_ / tool).chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=sys.executable, STUB_CALLS=str(calls), PATH=f"{bin_}:{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(["bash", str(SCRIPT), "--steps", "1,5,7", "--out", str(tmp_path / "out"),
                             "--logs", str(tmp_path / "logs")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "GPU run on h200 (sm_90)" in result.stdout
    tools = calls.read_text()
    assert "stub compute-sanitizer --tool memcheck" in tools and "stub compute-sanitizer --tool racecheck" in tools
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in (tmp_path / "logs" / "step5-sanitizer.log").read_text()
    summary = json.loads((tmp_path / "out" / "gpu-verify-h200.json").read_text())
    assert summary["gpu"] == "NVIDIA H200" and summary["dry_run"] is False
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {1: "PASS", 2: "SKIP", 3: "SKIP", 4: "SKIP", 5: "PASS", 6: "SKIP", 7: "PASS"}
    assert summary["gpu_verified"] == {}  # the tests and the check did not run
