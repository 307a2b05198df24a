"""GPU kernels compiled ahead of time, without a GPU: no compile error, no spill, shared memory in bounds.

scripts/kernel_resources.py does the work in a fresh process (Triton must not be
in interpreter mode there). In the CI run: the specialisations that cover each
launcher input value at least once ("each" coverage) of every Triton kernel
(affine_coupling, lincomb, sampling, vq_nearest), for sm_80 (Ampere code, also
what sm_86/sm_89 get) and sm_90 (Hopper); every kernel the launchers produce,
listed without compiling; the --update merge of a results folder (whole parts,
and one op's Triton rows with --ops); and the built CUDA module, read with
cuobjdump. The opt-in acceptance test compiles the same
specialisations for every target the installed Triton supports (sm_100 and
newer too); the committed table benchmarks/results/kernel-resources.md says
which coverage and targets produced it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kernel_resources.py"


def _nvidia_backend_reason() -> str:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError as exc:
        return f"triton's NVIDIA backend is not installed ({exc})"
    if not (Path(importlib.import_module("triton").__file__).parent / "backends" / "nvidia" / "bin"
            / "ptxas").exists():
        return "triton's NVIDIA backend ships no ptxas"
    return ""


needs_nvidia = pytest.mark.skipif(bool(_nvidia_backend_reason()), reason=_nvidia_backend_reason() or "ok")


def _run(*args, timeout):
    env = dict(os.environ, TRITON_INTERPRET="0")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _script_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module("kernel_resources")
    finally:
        sys.path.pop(0)


@needs_nvidia
def test_every_triton_kernel_is_produced_by_a_launcher(tmp_path):
    """Each triton.jit kernel of each module of pyprobtf.kernels gets specialisations from its launcher."""
    import pyprobtf.kernels as kernels_package

    kr = _script_module()
    assert sorted(kernels_package.__all__) == sorted(kr.OPS), "a kernel module is missing from OPS"
    done = _run("--list", "--coverage", "each", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    listing = json.loads(done.stdout)
    produced = {(op, kernel) for op, kernel, _ in listing["specialisations"]}
    for op, names in listing["kernels"].items():
        assert names, f"no triton.jit kernel found in pyprobtf.kernels.{op}"
        for name in names:
            assert (op, name) in produced, f"{op}.{name}: no launcher input produced a specialisation"


@needs_nvidia
def test_triton_kernels_compile_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "table.json"
    done = _run("--coverage", "each", "--targets", "80,90", "--skip", "cuda",
                "--workers", str(min(4, os.cpu_count() or 1)),
                "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["problems"] == [], "\n".join(table["problems"][:20])
    rows = table["triton"]["rows"]
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    compiled = {(r["op"], r["kernel"]) for r in rows}
    for op, names in table["triton"]["kernels"].items():
        for name in names:
            assert (op, name) in compiled, f"{op}.{name} was not compiled"
    assert all(r["regs"] > 0 for r in rows)


def test_problems_flags_spills_stack_and_shared_memory():
    """The check itself: a spill, an unexplained stack frame or too much shared memory is reported."""
    kr = _script_module()
    ok = dict(op="x", kernel="_k", specialisation="s", target="sm_80", num_warps=4, regs=40, spill_stores=0,
              spill_loads=0, stack=0, local=0, shared=1024)
    base = dict(triton=dict(rows=[ok], kernels={"x": ["_k"]}, targets=[f"sm_{c}" for c in kr.REQUIRED_TARGETS],
                            all_targets=True))
    assert kr.problems(base) == []
    for change in (dict(spill_stores=4), dict(spill_loads=4), dict(stack=8), dict(local=16),
                   dict(shared=kr.TRITON_SHARED_LIMIT + 1)):
        bad = dict(base, triton=dict(base["triton"], rows=[dict(ok, **change)]))
        assert len(kr.problems(bad)) == 1, change
    missing = dict(base, triton=dict(base["triton"], kernels={"x": ["_k", "_other_kernel"]}))
    assert "no launcher produced" in kr.problems(missing)[0]
    no_sm86 = dict(base, triton=dict(base["triton"], targets=["sm_80", "sm_89", "sm_90"]))
    assert "sm_86 was not compiled" in kr.problems(no_sm86)[0]


def test_ptxas_report_is_parsed():
    kr = _script_module()
    log = """ptxas info    : Compiling entry function '_scan_kernel' for 'sm_80'
ptxas info    : Function properties for _scan_kernel
    24 bytes stack frame, 116 bytes spill stores, 120 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes smem, 8 bytes lmem, 512 bytes cmem[0]
"""
    (entry,) = kr.parse_ptxas(log)
    assert entry == dict(function="_scan_kernel", arch="sm_80", regs=255, stack=24, spill_stores=116,
                         spill_loads=120, local=8, static_shared=16)


def _cuda_module_reason() -> str:
    kr = _script_module()
    if kr.cuda_module_path() is None:
        return "pyprobtf._C_cuda is not built in this tree (no CUDA compiler at install time)"
    if kr.cuobjdump_path() is None:
        return "no cuobjdump (neither the CUDA toolkit's nor Triton's NVIDIA backend's)"
    return ""


@pytest.mark.skipif(bool(_cuda_module_reason()), reason=_cuda_module_reason() or "ok")
def test_cuda_kernels_have_code_for_every_architecture_and_no_spills(tmp_path):
    out = tmp_path / "table.json"
    done = _run("--skip", "triton", "--json", str(out), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["problems"] == [], "\n".join(table["problems"][:20])
    cuda = table["cuda"]
    assert cuda["elf_archs"] == cuda["expected_elf"] and set(cuda["expected_ptx"]) <= set(cuda["ptx_archs"])
    assert len({r["kernel"] for r in cuda["rows"]}) > 10


def test_update_keeps_the_parts_not_computed(tmp_path):
    """--update rewrites the parts this run computed and keeps the others, each with its own run record."""
    kr = _script_module()
    old = dict(command="--skip triton", date="then", machine="m", seconds=1.0, problems=["old"],
               triton=dict(rows=["old triton"], run=dict(command="old")),
               cuda=dict(rows=["old cuda"], expected_elf=[], elf_archs=[], expected_ptx=[], ptx_archs=[]))
    path = tmp_path / "kernel-resources.json"
    path.write_text(json.dumps(old))
    new = dict(command="--skip cuda --update", date="now", machine="m", seconds=2.0,
               triton=dict(rows=["new triton"], run=dict(command="--skip cuda --update")))
    merged = kr.updated_table(path, new)
    assert merged["triton"] == new["triton"]
    assert merged["cuda"]["rows"] == ["old cuda"]
    assert merged["cuda"]["run"] == dict(command="--skip triton", date="then", machine="m", seconds=1.0)
    assert kr.updated_table(tmp_path / "absent.json", new) == new


def _op_record(run, targets, cases=3, specialisations=2):
    return dict(run=run, triton_version="3.9.0", coverage="pairwise", cases=cases, specialisations=specialisations,
                not_compiled=0, targets=targets, unsupported_targets=[], all_targets=len(targets) > 4)


def _row(op, kernel, target, **change):
    return dict(dict(op=op, kernel=kernel, specialisation="s", target=target, num_warps=4, regs=40, spill_stores=0,
                     spill_loads=0, stack=0, local=0, shared=0), **change)


def test_update_with_ops_replaces_only_those_ops_rows(tmp_path):
    """--update --ops lincomb: lincomb's rows, problems and run record are the new ones, the other ops' stay."""
    kr = _script_module()
    required = [f"sm_{c}" for c in kr.REQUIRED_TARGETS]
    every = required + [f"sm_{c}" for c in kr.NEWER_TARGETS]
    old_run = dict(command="--ops sampling,lincomb", date="then", machine="m")
    new_run = dict(command="--ops lincomb", date="now", machine="m")
    old = dict(triton=dict(
        kernels={"sampling": ["_draw_kernel"], "lincomb": ["_lincomb_kernel"]},
        ops={"sampling": _op_record(old_run, required), "lincomb": _op_record(old_run, required)},
        rows=[_row("sampling", "_draw_kernel", "sm_80"), _row("lincomb", "_lincomb_kernel", "sm_80", stack=32)]))
    path = tmp_path / "kernel-resources.json"
    path.write_text(json.dumps(old))
    assert len(kr.problems(old)) == 1  # lincomb's stack frame
    new = dict(triton=dict(kernels={"lincomb": ["_lincomb_kernel"]}, ops={"lincomb": _op_record(new_run, every)},
                           rows=[_row("lincomb", "_lincomb_kernel", t) for t in every]))
    merged = kr.updated_table(path, new)["triton"]
    assert list(merged["ops"]) == ["lincomb", "sampling"]  # in OPS order
    assert merged["ops"]["lincomb"]["run"] == new_run and merged["ops"]["lincomb"]["targets"] == every
    assert merged["ops"]["sampling"] == old["triton"]["ops"]["sampling"]
    assert merged["kernels"] == old["triton"]["kernels"]
    assert sorted((r["op"], r["target"]) for r in merged["rows"]) == sorted(
        [("sampling", "sm_80")] + [("lincomb", t) for t in every])
    assert kr.problems(dict(triton=merged)) == []
    # The markdown says which run produced which op's rows.
    out = tmp_path / "table.md"
    kr.write_markdown(dict(triton=merged, problems=[]), out)
    text = out.read_text()
    assert "Triton rows of lincomb produced by `python scripts/kernel_resources.py --ops lincomb` on now (m)." in text
    assert "Triton rows of sampling produced by `python scripts/kernel_resources.py --ops sampling,lincomb`" in text
    assert "- lincomb: 2 specialisations from 3 cases (pairwise coverage), Triton 3.9.0, " + ", ".join(every) in text


def test_update_with_ops_reads_a_table_without_op_records(tmp_path):
    """A Triton part written before ops had their own records: each kept op gets the part's record."""
    kr = _script_module()
    required = [f"sm_{c}" for c in kr.REQUIRED_TARGETS]
    old = dict(command="--skip cuda", date="then", machine="m", seconds=1.0, triton=dict(
        triton_version="3.9.0", coverage="pairwise", cases_per_op={"sampling": 5, "lincomb": 7}, specialisations=2,
        kernels={"sampling": ["_draw_kernel"], "lincomb": ["_lincomb_kernel"]}, targets=required,
        unsupported_targets=[], all_targets=False, not_compiled=0,
        rows=[_row("sampling", "_draw_kernel", "sm_80"), _row("lincomb", "_lincomb_kernel", "sm_80")]))
    path = tmp_path / "kernel-resources.json"
    path.write_text(json.dumps(old))
    new = dict(triton=dict(kernels={"lincomb": ["_lincomb_kernel"]},
                           ops={"lincomb": _op_record(dict(command="--ops lincomb"), required)},
                           rows=[_row("lincomb", "_lincomb_kernel", "sm_90")]))
    merged = kr.updated_table(path, new)["triton"]
    kept = merged["ops"]["sampling"]
    assert kept["run"] == dict(command="--skip cuda", date="then", machine="m", seconds=1.0)
    assert (kept["cases"], kept["specialisations"], kept["targets"]) == (5, 1, required)
    assert [(r["op"], r["target"]) for r in merged["rows"]] == [("sampling", "sm_80"), ("lincomb", "sm_90")]


def test_cuda_architecture_defaults_agree():
    """pip (pyproject.toml) and a plain CMake build default to the same four architectures."""
    import re
    import tomllib

    cmake = re.search(r'set\(PYPROBTF_CUDA_ARCHITECTURES\s+"([^"]+)"', (ROOT / "CMakeLists.txt").read_text()).group(1)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    default = pyproject["tool"]["scikit-build"]["cmake"]["define"]["PYPROBTF_CUDA_ARCHITECTURES"]["default"]
    assert cmake == default == "80-real;86-real;89-real;90"


@pytest.mark.acceptance
@needs_nvidia
def test_every_triton_kernel_compiles_for_every_target_without_spills(tmp_path):
    """Every target the installed Triton supports, sm_100 and newer included (minutes)."""
    out = tmp_path / "table.json"
    done = _run("--coverage", "each", "--skip", "cuda", "--json", str(out), timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["problems"] == [], "\n".join(table["problems"][:20])
