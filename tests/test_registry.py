"""The op registry: every op declared once, backends and `auto`, the self-check of GPU kernels.

The self-check machinery is exercised on CPU by treating the C++ backend as a
GPU kernel (``_registry.SELF_CHECKED``) and breaking it.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyprobtf
from pyprobtf.ops import BackendStatus, BackendUnavailableError, _backends, _registry, _selfcheck, available_backends
from pyprobtf.testing import ops as op_checks

ROOT = Path(__file__).resolve().parents[1]


def test_available_backends_lists_every_backend_with_reasons():
    statuses = available_backends()
    assert set(statuses) == set(_backends.BACKEND_NAMES)
    assert "cpu" in statuses["reference"].devices and "cpu" in statuses["torch"].devices
    assert statuses["cpp"].devices == ("cpu",), statuses["cpp"]
    for status in statuses.values():
        assert isinstance(status, BackendStatus) and status.detail


# ----------------------------------------------------------------------------- every registered op


@pytest.mark.parametrize("name", sorted(_registry.OPS))
def test_every_registered_op_is_complete(name):
    """A registered op has a reference kernel, self-check cases, a benchmark and custom ops."""
    op = _registry.OPS[name]
    assert "reference" in op.backends() and "cpp" in op.backends()
    assert op.checks in op_checks.REGISTRY, f"{name}: no cases in pyprobtf.testing.ops (pyprobtf check)"
    assert (ROOT / "benchmarks" / f"{op.benchmark}.py").exists(), f"{name}: no benchmarks/{op.benchmark}.py"
    for custom_op in op.custom_ops:
        namespace, _, op_name = custom_op.partition("::")
        assert hasattr(getattr(torch.ops, namespace), op_name), custom_op
    assert callable(getattr(pyprobtf.ops, name)), f"{name} is not exported from pyprobtf.ops"


def test_the_registry_holds_the_public_ops():
    assert set(_registry.OPS) == {"affine_coupling", "lincomb", "sample_logits", "filter_logits", "vq_nearest"}


def test_pyprobtf_check_covers_every_registered_op():
    from pyprobtf import cli

    checked = {_registry.OPS[name].checks for name in _registry.OPS}
    assert checked <= set(op_checks.REGISTRY)
    assert cli.build_parser().parse_args(["check"]).ops == []  # no op named: all of them


def _opcheck_inputs(name):
    """A custom op of ``name`` and arguments covering its tensor and number forms."""
    x = torch.randn(3, 5, dtype=torch.float64)
    logits = torch.randn(3, 11, dtype=torch.float64)
    if name == "affine_coupling":
        return torch.ops.pyprobtf.affine_coupling, (x.requires_grad_(), x.clone(), x.clone(), "softclamp", 2.0,
                                                    False, "cpp")
    if name == "lincomb":
        return torch.ops.pyprobtf.lincomb, ([x, x.clone()], [1.0, 0.0], [torch.rand(3, dtype=torch.float64)], [1],
                                            0.5, None, 3, None, 0, "cpp")
    if name == "sample_logits":
        return torch.ops.pyprobtf.sample_logits, (logits, None, 0.8, torch.tensor([0, 3, 40]), 0, None, 0.9, None,
                                                  0.0, torch.rand(3, dtype=torch.float64), None, 0, None, 0, "cpp",
                                                  None)
    if name == "filter_logits":
        return torch.ops.pyprobtf.filter_logits, (logits.requires_grad_(), None, 0.8, None, 4, None, 0.9, None, 0.0,
                                                  "cpp", None)
    if name == "vq_nearest":
        return torch.ops.pyprobtf.vq_nearest, (x, torch.randn(7, 5, dtype=torch.float64), "l2", 2, "exact", "cpp")
    raise AssertionError(f"{name}: add opcheck inputs for the new op here")


@pytest.mark.parametrize("name", sorted(_registry.OPS))
def test_opcheck_every_registered_op(name):
    """torch.library.opcheck (schema, fake tensors, autograd registration) for each op's custom op."""
    torch.manual_seed(0)
    op, args = _opcheck_inputs(name)
    torch.library.opcheck(op, args)


def test_opcheck_affine_coupling_per_element_ladj():
    """The per-element log-determinant form (``ladj="element"``, the schema's last argument)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.pyprobtf.affine_coupling,
                          (x.requires_grad_(), x.clone(), x.clone(), "softclip", 2.0, True, "cpp", "element"))


# ----------------------------------------------------------------------------- resolution


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend every backend runs on CUDA, so that `auto`'s gating can be tested without a GPU."""
    statuses = {name: BackendStatus(("cpu", "cuda"), "fake") for name in _backends.BACKEND_NAMES}
    monkeypatch.setattr(_backends, "available_backends", lambda: statuses)
    monkeypatch.setenv("PYPROBTF_SELF_CHECK", "off")
    _registry.clear_cache()
    yield
    _registry.clear_cache()


def test_auto_uses_gpu_kernels_only_when_verified(fake_gpu, monkeypatch):
    assert _registry.resolve("affine_coupling", "auto", "cuda") in _registry.FUNCTIONAL
    _registry.clear_cache()
    monkeypatch.setitem(_backends.GPU_VERIFIED, ("affine_coupling", "triton"), ("Test GPU, 2026-01-01",))
    assert _registry.resolve("affine_coupling", "auto", "cuda") == "triton"


def test_naming_an_unverified_gpu_backend_runs_it_with_a_warning(fake_gpu):
    with pytest.warns(RuntimeWarning, match="not been verified on a GPU"):
        assert _registry.resolve("affine_coupling", "cuda", "cuda") == "cuda"


def test_unknown_and_unavailable_backends_raise():
    with pytest.raises(ValueError, match="`backend` must be one of"):
        _registry.resolve("affine_coupling", "fortran", "cpu")
    with pytest.raises(BackendUnavailableError, match="'cpp' cannot run on meta tensors"):
        _registry.resolve("affine_coupling", "cpp", "meta")
    with pytest.raises(ValueError, match="affine_coupling: `backend` must be"):
        pyprobtf.ops.affine_coupling(*torch.randn(3, 2, 2).unbind(0), backend="gpu")


def test_functional_backends_run_on_any_device():
    assert _registry.resolve("affine_coupling", "reference", "meta") == "reference"
    assert _registry.resolve("affine_coupling", "auto", "meta") == "reference"


# ----------------------------------------------------------------------------- self-check


@pytest.fixture
def self_checked_cpp(monkeypatch, tmp_path):
    """`auto` treats the C++ backend like a GPU kernel: used only after its self-check, cached in tmp_path."""
    cache = tmp_path / "verified.json"
    monkeypatch.setenv("PYPROBTF_VERIFIED_CACHE", str(cache))
    monkeypatch.delenv("PYPROBTF_SELF_CHECK", raising=False)
    monkeypatch.setattr(_registry, "SELF_CHECKED", {("cpp", "cpu")})
    _selfcheck.forget()
    _registry.clear_cache()
    yield cache
    _selfcheck.forget()
    _registry.clear_cache()


def _break_cpp_affine_coupling(monkeypatch):
    good = _registry.kernel("affine_coupling", "cpp")

    def broken(x, shift, scale, y, ladj, *rest):
        good(x, shift, scale, y, ladj, *rest)
        y.add_(1e-2)

    monkeypatch.setitem(_registry._KERNELS, ("affine_coupling", "cpp"), broken)


def test_a_kernel_that_passes_its_self_check_is_used_and_cached(self_checked_cpp):
    assert _registry.resolve("affine_coupling", "auto", "cpu") == "cpp"
    verdicts = json.loads(self_checked_cpp.read_text())["verdicts"]
    (key, verdict), = verdicts.items()
    assert json.loads(key)["op"] == "affine_coupling" and json.loads(key)["backend"] == "cpp"
    assert verdict["passed"] and verdict["cases"] > 100


def test_a_kernel_that_fails_its_self_check_falls_back_with_one_warning(self_checked_cpp, monkeypatch):
    _break_cpp_affine_coupling(monkeypatch)
    fallback = "torch" if "torch" in _registry.OPS["affine_coupling"].backends() else "reference"
    with pytest.warns(RuntimeWarning, match=r"affine_coupling: the cpp kernel failed its self-check on cpu .*"
                                            r"Error: AssertionError"):
        assert _registry.resolve("affine_coupling", "auto", "cpu") == fallback
    x = torch.randn(4, 6)
    y, _ = pyprobtf.ops.affine_coupling(x, x, x)  # the fallback runs: right answer, no second warning
    torch.testing.assert_close(y, x * torch.exp(x) + x)
    assert not json.loads(self_checked_cpp.read_text())["verdicts"].popitem()[1]["passed"]


def test_the_cache_is_read_and_invalidated_by_a_version_change(self_checked_cpp, monkeypatch):
    _registry.resolve("lincomb", "auto", "cpu")  # checks and writes the verdict
    calls = []
    monkeypatch.setattr(_selfcheck, "run", lambda *args: calls.append(args) or {"passed": True, "error": ""})
    _selfcheck.forget()
    _registry.clear_cache()
    assert _registry.resolve("lincomb", "auto", "cpu") == "cpp"
    assert calls == []  # read from the file
    monkeypatch.setattr(pyprobtf, "__version__", "99.0")
    _selfcheck.forget()
    _registry.clear_cache()
    _registry.resolve("lincomb", "auto", "cpu")
    assert len(calls) == 1  # a new version checks again
    assert len(json.loads(self_checked_cpp.read_text())["verdicts"]) == 2


def test_self_checks_off_trusts_only_gpu_verified(self_checked_cpp, monkeypatch):
    monkeypatch.setenv("PYPROBTF_SELF_CHECK", "off")
    assert _registry.resolve("vq_nearest", "auto", "cpu") != "cpp"
    assert not self_checked_cpp.exists()


def test_cache_off_keeps_verdicts_in_memory(self_checked_cpp, monkeypatch):
    monkeypatch.setenv("PYPROBTF_VERIFIED_CACHE", "off")
    assert _selfcheck.cache_path() is None
    assert _registry.resolve("vq_nearest", "auto", "cpu") == "cpp"
    assert not self_checked_cpp.exists()


# ----------------------------------------------------------------------------- process-wide state


def test_import_pyprobtf_leaves_triton_alone():
    """`import pyprobtf` sets no TRITON_INTERPRET and imports no triton; a Triton launch on CPU does neither."""
    code = (
        "import os, sys, torch, pyprobtf\n"
        "assert 'TRITON_INTERPRET' not in os.environ and 'triton' not in sys.modules\n"
        "x = torch.randn(3, 4)\n"
        "y, _ = pyprobtf.ops.affine_coupling(x, x, x, backend='triton')\n"
        "torch.testing.assert_close(y, x * torch.exp(x) + x)\n"
        "assert 'TRITON_INTERPRET' not in os.environ\n"
        "import triton\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Triton compiles for it")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_enums_match_the_native_module():
    """Status codes, scale functions, metrics and dtype codes are the native module's own."""
    from pyprobtf.ops import _native

    affine_coupling, sampling, vq_nearest = (importlib.import_module(f"pyprobtf.ops.{m}")
                                             for m in ("affine_coupling", "sampling", "vq_nearest"))
    native = _backends.cpp_module().enums()
    assert native["scale_fn"] == affine_coupling.SCALE_FNS
    assert native["metric"] == vq_nearest.METRICS
    assert native["dtype"] == {str(k).removeprefix("torch."): v for k, v in _native.DTYPE_CODES.items()}
    assert native["status"] == sampling.STATUS


@pytest.mark.parametrize("module, backend", [("_native", "cpp"), ("_native", "cuda"), ("_triton", "triton"),
                                             ("_fast_torch", "torch")])
def test_backend_modules_register_every_entry(module, backend):
    importlib.import_module(f"pyprobtf.ops.{module}")
    for op in _registry.OPS.values():
        assert backend in op.backends(), (op.name, backend)
