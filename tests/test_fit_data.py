"""pyprobtf.fit on every data form (tensor, Dataset, DataLoader, generator, IterableDataset), with any event shape
and any context tensor; mixed precision, gradient accumulation and EMA; exact resume with loaders."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from pyprobtf import ProbabilityTransform, fit
from pyprobtf.training import load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: the networks here are small, and on a shared 2-core machine a second OpenMP thread
    made these tests several times slower (oversubscription), not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Affine(ProbabilityTransform):
    """x = z * exp(s) + b elementwise on any event shape: a deterministic loss (exact NLL), no init, no noise."""

    capabilities = frozenset({"inverse", "ladj", "log_prob"})

    def __init__(self, event_shape=(2,), dtype=torch.float32):
        self._shape = tuple(event_shape)
        super().__init__(math.prod(event_shape))
        self.s = torch.nn.Parameter(torch.zeros(event_shape, dtype=dtype))
        self.b = torch.nn.Parameter(torch.zeros(event_shape, dtype=dtype))
        self.contexts = []

    # This class's own event shape, whatever ProbabilityTransform's __init__ records for `dim`.
    @property
    def event_shape(self):
        return self._shape

    @event_shape.setter
    def event_shape(self, value):
        pass

    def loss(self, batch):
        x, context = (batch, None) if isinstance(batch, torch.Tensor) else batch
        self.contexts.append(context)
        z = (x - self.b) * torch.exp(-self.s)
        log_prob = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - self.s).flatten(1).sum(1)
        return -log_prob.mean()


def gaussian(n, shape=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 + 0.5 * torch.randn((n, *shape), generator=g)


def equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_on_a_dataloader_learns_the_data():
    loader = DataLoader(TensorDataset(gaussian(512)), batch_size=64, shuffle=True)
    model = Affine()
    result = fit(model, loader, steps=150, lr=0.05, warmup=0, progress=False)
    assert result.steps == 150 and result.stopped == "steps"  # 150 steps over 8-batch passes: many passes
    assert torch.allclose(model.b, torch.full((2,), 2.0), atol=0.15), model.b
    assert torch.allclose(model.s.exp(), torch.full((2,), 0.5), atol=0.1), model.s


def test_fit_on_a_generator_of_batches_stops_when_it_runs_out():
    data = gaussian(640)
    seen = []

    def batches():
        for i in range(10):
            seen.append(i)
            yield data[64 * i:64 * (i + 1)]

    model = Affine()
    result = fit(model, batches(), steps=100, lr=0.05, warmup=0, progress=False)
    assert result.stopped == "data" and result.steps == 10 and seen == list(range(10))
    assert float(model.b.detach().mean()) > 0.3  # it trained toward the mean 2.0


def test_generator_with_context_and_accumulation_uses_every_batch_once():
    data, labels = gaussian(256), torch.arange(256) % 10
    model = Affine()
    batches = ((data[i:i + 32], labels[i:i + 32]) for i in range(0, 256, 32))
    result = fit(model, batches, steps=10, accumulate=2, progress=False)
    assert result.steps == 4 and result.stopped == "data"  # 8 batches, 2 per step
    # Integer labels reach the loss as they are: dtype kept, one per row.
    assert all(c.dtype == torch.int64 and c.shape == (32,) for c in model.contexts)
    assert torch.equal(torch.cat(model.contexts), labels)


class Recording(Dataset):
    def __init__(self, x):
        self.x, self.read = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i]


def test_fit_on_a_dataset_reads_shuffled_epochs():
    dataset = Recording(gaussian(100))
    fit(Affine(), dataset, steps=6, batch_size=16, progress=False)  # 6 batches per epoch (4 items dropped)
    first_epoch = dataset.read[:96]
    assert len(set(first_epoch)) == 96 and first_epoch != sorted(first_epoch)
    assert len(dataset.read) == 96  # nothing else was read (Affine has no data-dependent initialisation)


def test_fit_on_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(gaussian(200))

    result = fit(Affine(), Stream(), steps=30, batch_size=50, progress=False)  # 4 batches a pass
    assert result.steps == 30 and result.stopped == "steps"


def test_data_of_any_event_shape_and_context_of_any_tensor():
    model = Affine(event_shape=(1, 2, 2))
    labels = torch.randint(0, 10, (64,))
    fit(model, (gaussian(64, (1, 2, 2)), labels), steps=3, batch_size=8, progress=False)
    assert all(c.dtype == torch.int64 and c.shape == (8,) for c in model.contexts)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 1, 2, 2\) for Affine \(event_shape=\(1, 2, 2\)\); "
                                         r"got \(64, 4\)"):
        fit(model, gaussian(64, (4,)), steps=1, progress=False)
    with pytest.raises(ValueError, match="as many rows; got 64 and"):
        fit(model, (gaussian(64, (1, 2, 2)), labels[:10]), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"a batch of `data` must have shape \(n_samples, 1, 2, 2\)"):
        fit(model, [gaussian(8, (1, 2, 2)), gaussian(8, (2, 2)), gaussian(8, (1, 2, 2))], steps=3, progress=False)


def test_data_that_is_no_data_is_refused():
    with pytest.raises(TypeError, match="`data` must be a tensor, .*got int"):
        fit(Affine(), 3, steps=1, progress=False)
    with pytest.raises(ValueError, match="yields no batches"):
        fit(Affine(), iter([]), steps=1, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        fit(Affine(), Recording(gaussian(10)), steps=1, batch_size=16, progress=False)


class Mixed(ProbabilityTransform):
    """A linear flow whose loss records the dtype its matmul ran in."""

    def __init__(self):
        super().__init__(2)
        self.lin = torch.nn.Linear(2, 2)
        self.dtypes = set()

    def loss(self, batch):
        y = self.lin(batch)
        self.dtypes.add(y.dtype)
        return (y.float() ** 2).mean()


def test_bf16_autocast_on_cpu():
    model = Mixed()
    result = fit(model, gaussian(256), steps=30, batch_size=32, lr=0.01, precision="bf16", device="cpu",
                 progress=False)
    assert model.dtypes == {torch.bfloat16}
    assert model.lin.weight.dtype == torch.float32  # master weights stay float32
    assert result.history[-1][1] < result.history[0][1]
    fp32 = Mixed()
    fit(fp32, gaussian(256), steps=2, batch_size=32, progress=False)
    assert fp32.dtypes == {torch.float32}


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match=r"precision='fp16'.*CUDA.*bf16"):
        fit(Mixed(), gaussian(64), steps=1, precision="fp16", device="cpu", progress=False)


def test_accumulation_equals_one_big_batch():
    """accumulate=2 on batches of b gives the gradients of one batch of 2b (a mean loss), up to rounding."""
    data = gaussian(8 * 32, seed=3).double()
    grads = {}

    def run(batches, accumulate):
        model = Affine(dtype=torch.float64)
        record = grads.setdefault(accumulate, [])
        model.s.register_post_accumulate_grad_hook(lambda p: record.append(p.grad.clone()))
        fit(model, iter(batches), steps=4, accumulate=accumulate, lr=0.05, warmup=0, progress=False)
        return model

    small = run([data[i:i + 32] for i in range(0, 256, 32)], 2)
    big = run([data[i:i + 64] for i in range(0, 256, 64)], 1)
    # With accumulation the hook fires per micro-batch; the second of each pair holds the step's gradient.
    assert len(grads[2]) == 8 and len(grads[1]) == 4
    for g_small, g_big in zip(grads[2][1::2], grads[1]):
        torch.testing.assert_close(g_small, g_big, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(small.state_dict(), big.state_dict(), rtol=1e-12, atol=1e-14)


def test_ema_weights_are_what_the_model_holds_after_fit(tmp_path):
    ckpt = tmp_path / "ema.pt"
    model = Affine()
    fit(model, gaussian(256), steps=40, batch_size=32, lr=0.05, ema=0.9, progress=False, checkpoint=ckpt)
    saved = load_checkpoint(ckpt)
    assert torch.equal(model.s, saved["ema"]["s"]) and torch.equal(model.b, saved["ema"]["b"])
    # The checkpoint keeps the raw training weights apart (they differ from the average).
    assert not torch.equal(saved["model"]["b"], saved["ema"]["b"])


def _interrupted(model, data, path, stop_at, **kwargs):
    """fit(**kwargs) killed during step ``stop_at`` (its checkpoint holds step ``stop_at``)."""

    class Stop(Exception):
        pass

    original, calls = model.loss, {"n": 0}

    def loss(batch):
        if calls["n"] == stop_at * kwargs.get("accumulate", 1):
            raise Stop
        calls["n"] += 1
        return original(batch)

    model.loss = loss
    with pytest.raises(Stop):
        fit(model, data, progress=False, checkpoint=path, **kwargs)
    assert load_checkpoint(path)["step"] == stop_at


@pytest.mark.parametrize("form", ["dataloader", "dataset"])
def test_resume_with_a_loader_or_dataset_equals_the_uninterrupted_run(tmp_path, form):
    data = gaussian(200)

    def make():
        if form == "dataset":
            return TensorDataset(data)
        return DataLoader(TensorDataset(data), batch_size=32, shuffle=True)  # 7 batches a pass, the last of 8

    opts = {"steps": 30, "batch_size": 32, "lr": 0.05, "ema": 0.8, "accumulate": 2, "seed": 7}
    straight = Affine()
    fit(straight, make(), progress=False, **opts)
    ckpt = tmp_path / "run.pt"
    _interrupted(Affine(), make(), ckpt, 11, checkpoint_every=11, **opts)
    resumed = Affine()
    fit(resumed, make(), progress=False, checkpoint=ckpt, **opts)
    assert equal_states(resumed.state_dict(), straight.state_dict())


def test_resume_with_a_generator_continues_where_it_stands(tmp_path):
    data = gaussian(64 * 20)
    opts = {"lr": 0.05, "ema": 0.9, "lr_schedule": "constant", "warmup": 0}

    def batches():
        return (data[64 * i:64 * (i + 1)] for i in range(20))

    straight = Affine()
    fit(straight, batches(), steps=20, progress=False, **opts)
    ckpt = tmp_path / "gen.pt"
    stream = batches()
    first = Affine()
    fit(first, stream, steps=8, progress=False, checkpoint=ckpt, **opts)
    resumed = Affine()
    result = fit(resumed, stream, steps=20, progress=False, checkpoint=ckpt, **opts)  # batches 8.. of the stream
    assert result.steps == 20
    assert equal_states(resumed.state_dict(), straight.state_dict())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_trains_and_resumes_exactly(tmp_path, precision):
    """CPU data, CUDA training: batches move as they come; fp16 uses a GradScaler whose state is checkpointed."""
    data = gaussian(512)
    opts = {"steps": 12, "batch_size": 32, "lr": 0.01, "precision": precision, "device": "cuda", "seed": 1,
            "grad_clip": 1.0, "progress": False}
    torch.manual_seed(0)
    straight = Mixed()
    result = fit(straight, data, **opts)
    assert straight.dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert result.history[-1][1] < result.history[0][1]
    ckpt = tmp_path / "amp.pt"
    torch.manual_seed(0)
    _interrupted(Mixed(), data, ckpt, 6, checkpoint_every=3, **{k: v for k, v in opts.items() if k != "progress"})
    assert (load_checkpoint(ckpt)["scaler"] is not None) == (precision == "fp16")
    resumed = Mixed()
    fit(resumed, data, checkpoint=ckpt, **opts)
    assert equal_states(resumed.state_dict(), straight.state_dict())
