"""No host synchronisation in a hot call: the CPU-side stand-in for CUDA's sync debug mode.

Every way Python code reads a tensor's value back to the host (``.item()``,
``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``int()``, ``float()``,
``nonzero``) is counted while an op runs in the configuration a GPU sampling
or solver loop uses; on CUDA each would make the host wait for the device.
The host-side checks that exist on purpose run on CPU tensors only (bad
per-row values in lincomb's ``noise_std``, vq_nearest's overflow rule,
sample_logits' default ``check``); they are switched off or avoided here,
and the tests name how.
"""

import contextlib

import pytest
import torch

from pyprobtf.ops import _registry, affine_coupling, filter_logits, lincomb, sample_logits, vq_nearest

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


@contextlib.contextmanager
def counting_host_reads():
    """Count every host read of a tensor value inside the block."""
    calls = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    saved_nonzero = torch.nonzero

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    for name, fn in saved.items():
        setattr(torch.Tensor, name, counted(name, fn))
    torch.nonzero = counted("torch.nonzero", saved_nonzero)
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


BACKENDS = [b for b in ("cpp", "torch") if b in _registry.OPS["lincomb"].backends()]


def test_the_counter_counts():
    x = torch.ones(3)
    with counting_host_reads() as calls:
        x.sum().item()
        bool(x.all())
        torch.nonzero(x)
    assert calls == ["item", "__bool__", "torch.nonzero"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_solver_steps_do_not_sync(backend):
    gen = torch.Generator().manual_seed(0)
    x, d, d2 = torch.randn(3, 4, 8, 8, generator=gen).unbind(0)
    x, d, d2 = x[None].expand(4, -1, -1, -1).contiguous(), d.expand(4, -1, -1, -1), d2[None].repeat(4, 1, 1, 1)
    h = torch.rand(4, generator=gen)
    with counting_host_reads() as calls:
        lincomb([x, d], [1.0, -0.1], backend=backend)                                   # Euler
        lincomb([x, d, d2], [1.0, h, -0.5], backend=backend)                            # Heun, per-row step
        lincomb([x, d], [1.0, -0.1], noise_std=0.3, backend=backend)                    # seed drawn on device
        lincomb([x, d], [1.0, -0.1], noise_std=0.3, seed=7, offset=2**40, backend=backend)
        lincomb([x, d], [1.0, h], noise_std=0.3, seed=torch.arange(4), out=x, backend=backend)
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_steps_do_not_sync_unless_asked_to_check(backend):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1000, generator=gen)
    seeds, step = torch.arange(4), torch.full((4,), 3)
    with counting_host_reads() as calls:
        sample_logits(logits, temperature=0.7, top_k=50, top_p=0.9, seed=seeds, offset=step, check=False,
                      backend=backend)
        sample_logits(logits, temperature=torch.rand(4, generator=gen), top_p=torch.full((4,), 0.8), seed=5,
                      return_logprobs=True, check=False, backend=backend)
        filter_logits(logits, top_k=20, min_p=0.05, check=False, backend=backend)
    assert calls == []
    logits[2, 5] = float("nan")
    with counting_host_reads() as calls:
        tokens = sample_logits(logits, top_k=50, seed=seeds, check=False, backend=backend)
    assert calls == [] and tokens[2] == -1 and bool((tokens[[0, 1, 3]] >= 0).all())
    with counting_host_reads() as calls, pytest.raises(ValueError, match="row 2 contains NaN"):
        sample_logits(logits, top_k=50, seed=seeds, check=True, backend=backend)
    assert calls, "check=True reads the per-row status back"


@pytest.mark.parametrize("backend", BACKENDS)
def test_coupling_forward_and_backward_do_not_sync(backend):
    gen = torch.Generator().manual_seed(2)
    x, shift, scale = (t.requires_grad_() for t in torch.randn(3, 16, 32, generator=gen).unbind(0))
    with counting_host_reads() as calls:
        y, ladj = affine_coupling(x, shift, scale, scale_fn="softclamp", backend=backend)
        torch.autograd.grad((y.sum() + ladj.sum()), (x, shift, scale))
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_vq_nearest_does_not_sync_beyond_the_cpu_overflow_rule(backend, monkeypatch):
    # The overflow rule (NaN, inf, overflowing products) is decided from values on CPU tensors only.
    import importlib

    module = importlib.import_module("pyprobtf.ops.vq_nearest")
    monkeypatch.setattr(module, "_overflow_rule_applies", lambda x, codebook: False)
    gen = torch.Generator().manual_seed(3)
    z, codebook = torch.randn(256, 16, generator=gen), torch.randn(64, 16, generator=gen)
    with counting_host_reads() as calls:
        vq_nearest(z, codebook, backend=backend)
        vq_nearest(z, codebook, k=4, metric="cosine", backend=backend)
    assert calls == []


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_sampling_and_solver_steps_are_captured_in_a_cuda_graph(backend):
    """A decode step and a solver step with the default checks, in a CUDA graph (capture fails on any sync)."""
    logits = torch.randn(8, 32000, device="cuda")
    seeds, offset = torch.arange(8, device="cuda"), torch.zeros(8, dtype=torch.int64, device="cuda")
    x, d = torch.randn(2, 16, 4, 32, 32, device="cuda").unbind(0)

    def step():
        tokens = sample_logits(logits, temperature=0.8, top_k=50, top_p=0.9, seed=seeds, offset=offset,
                               backend=backend)
        y = lincomb([x, d], [1.0, -0.1], noise_std=0.2, backend=backend)
        return tokens, y

    want_tokens, _ = step()  # outside the graph: also runs any first-use self-check
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, y = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(tokens, want_tokens) and y.shape == x.shape and bool(y.isfinite().all())
