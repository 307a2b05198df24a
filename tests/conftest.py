"""Shared test settings: deterministic hypothesis runs with bounded examples."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU, Triton's kernels run only in its interpreter, chosen before triton is first imported
# (torch.compile imports it too): the whole test process uses it, as the triton-marked run does.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pyprobtf  # noqa: E402,F401

settings.register_profile(
    "pyprobtf",
    deadline=None,
    derandomize=True,  # the same examples on every run: failures reproduce, CI never flakes
    max_examples=int(os.environ.get("PYPROBTF_MAX_EXAMPLES", "40")),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("pyprobtf")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
