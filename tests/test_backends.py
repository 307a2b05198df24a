"""The backend registry: availability, `auto` selection, GPU verification gating, errors."""

import pytest
import torch

from pyprobtf.ops import BackendStatus, BackendUnavailableError, _backends, available_backends


def test_available_backends_lists_all_four_with_reasons():
    statuses = available_backends()
    assert set(statuses) == {"reference", "cpp", "triton", "cuda"}
    assert "cpu" in statuses["reference"].devices
    assert statuses["cpp"].devices == ("cpu",), statuses["cpp"]
    for status in statuses.values():
        assert isinstance(status, BackendStatus) and status.detail


def test_triton_runs_on_cpu_in_the_interpreter_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Triton compiles for it")
    # pyprobtf chooses the interpreter at import on GPU-less machines.
    assert _backends.triton_interpreting()
    assert available_backends()["triton"].devices == ("cpu",)


@pytest.mark.parametrize(
    "archs, capability, runs",
    [("90", 90, True), ("90", 100, True), ("90", 80, False), ("90-real", 100, False), ("90-real", 90, True),
     ("80-real,90-real", 86, True), ("80-virtual", 90, True), ("junk", 90, False)],
)
def test_cuda_architectures_cover(archs, capability, runs):
    assert _backends._archs_cover(archs, capability) is runs


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend every backend runs on CUDA, so that `auto`'s gating can be tested without a GPU."""
    statuses = {name: BackendStatus(("cpu", "cuda"), "fake") for name in _backends.BACKEND_NAMES}
    monkeypatch.setattr(_backends, "available_backends", lambda: statuses)
    _backends.resolve.cache_clear()
    _backends._warn_unverified.cache_clear()
    yield
    _backends.resolve.cache_clear()


def test_auto_uses_only_gpu_verified_backends(fake_gpu, monkeypatch):
    monkeypatch.setitem(_backends.GPU_VERIFIED, ("affine_coupling", "cuda"), ())
    monkeypatch.setitem(_backends.GPU_VERIFIED, ("affine_coupling", "triton"), ())
    assert _backends.resolve("affine_coupling", "auto", "cuda") == "reference"
    _backends.resolve.cache_clear()
    monkeypatch.setitem(_backends.GPU_VERIFIED, ("affine_coupling", "triton"), ("Test GPU, 2026-01-01",))
    assert _backends.resolve("affine_coupling", "auto", "cuda") == "triton"


def test_naming_an_unverified_gpu_backend_runs_it_with_a_warning(fake_gpu, monkeypatch):
    monkeypatch.setitem(_backends.GPU_VERIFIED, ("affine_coupling", "cuda"), ())
    with pytest.warns(RuntimeWarning, match="not been verified on a GPU"):
        assert _backends.resolve("affine_coupling", "cuda", "cuda") == "cuda"


def test_unknown_and_unavailable_backends_raise():
    with pytest.raises(ValueError, match="`backend` must be 'auto' or one of"):
        _backends.resolve("affine_coupling", "fortran", "cpu")
    with pytest.raises(BackendUnavailableError, match="'cpp' cannot run on meta tensors"):
        _backends.resolve("affine_coupling", "cpp", "meta")


def test_reference_runs_on_any_device():
    assert _backends.resolve("affine_coupling", "reference", "meta") == "reference"
    assert _backends.resolve("affine_coupling", "auto", "meta") == "reference"
