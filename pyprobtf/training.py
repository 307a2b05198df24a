"""One training loop for every family: :func:`fit`, and the glue it is built from.

The pieces are public so that other training code (new families, the CLI)
uses the same conventions:

- :func:`resolve_device`: ``None``/``"auto"`` -> CUDA when available, else CPU
  (under ``torchrun``, the process's own GPU);
- :func:`step_seed`: the seed of one training step, a hash of
  ``(seed, rank, step)``; each step re-seeds the batch draw and torch's RNG
  from it, so a run resumed from a checkpoint is the run that was not
  interrupted, and every process of a distributed run draws its own batches;
- :func:`save_checkpoint` / :func:`load_checkpoint`: the checkpoint file, a
  header line (format version, SHA-256 and length of the payload) followed by
  a ``torch.save`` payload; written atomically (a temporary file, then a
  rename) and verified when read. docs/FIT.md describes the keys.

docs/FIT.md describes the data forms, the options and the resume rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import re
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data._utils.collate import default_collate

from pyprobtf import _checks
from pyprobtf._progress import ProgressBar
from pyprobtf.seeds import check_seed
from pyprobtf.transform import ProbabilityTransform

CHECKPOINT_FORMAT = "pyprobtf.fit/2"
_CHECKPOINT_MAGIC = b"pyprobtf checkpoint\n"
_CHECKPOINT_HEADER = re.compile(rb"format (\d+) sha256 ([0-9a-f]{64}) bytes (\d+)\n")
_CHECKPOINT_VERSION = 2
_CHECKPOINT_KEYS = ("format", "family", "model", "optimizer", "step", "elapsed", "history", "ema", "config",
                    "scaler", "data")
_MASK64 = (1 << 64) - 1
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Options fit takes from a family's `fit_defaults` when the caller does not give them.
FIT_OPTIONS = {
    "steps": 2000,          # optimizer steps
    "batch_size": 256,      # per process and per micro-batch
    "lr": 1e-3,             # peak learning rate (AdamW)
    "weight_decay": 0.0,
    "warmup": 100,          # steps of linear warm-up
    "lr_schedule": "cosine",  # "cosine" (to lr_final over the run) or "constant"
    "lr_final": 0.02,       # cosine: final lr as a share of lr
    "grad_clip": None,      # max gradient norm, or None
    "ema": None,            # decay of an exponential moving average of the weights (copied in at the end)
    "betas": (0.9, 0.999),  # AdamW's moment decays (adversarial families train better with (0.5, 0.9))
    "accumulate": 1,        # micro-batches per optimizer step (gradient accumulation)
    "precision": "fp32",    # "fp32", "bf16" (autocast) or "fp16" (autocast and a GradScaler; CUDA only)
}

# Settings that change a run's trajectory: a resume with other values is refused unless forced.
# "steps" and "max_seconds" shape the cosine learning-rate decay only; they are compared under it.
_TRAJECTORY_SETTINGS = ("seed", "batch_size", "world_size", "accumulate", "precision", "lr", "weight_decay", "warmup",
                        "lr_schedule", "lr_final", "grad_clip", "ema", "betas", "data")
_SCHEDULE_SETTINGS = ("steps", "max_seconds")


# ----------------------------------------------------------------------------- glue


def resolve_device(device=None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"fit: `device` is {device} but torch sees no CUDA device")
    return device


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for training step ``step`` of process ``rank`` of a run seeded ``seed``."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ rank) ^ step) >> 1


# Step numbers far beyond any run, for the draws that are not a training step's.
_INIT_STEP = 2**40      # the batch of the data-dependent initialisation
_EPOCH_STEP = 2**41     # the shuffle of a Dataset's epochs (rank 0's, shared by every rank)
_PASS_STEP = 2**42      # torch's RNG when a pass over a re-iterable starts (its own shuffle)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, truncated, foreign, incompatible or from another run."""


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (a dict of tensors, numbers, strings, lists and dicts) to ``path`` atomically.

    The file is a header line (format version, SHA-256 and length of the payload)
    and a ``torch.save`` payload; :func:`load_checkpoint` verifies both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"format %d sha256 %s bytes %d\n" % (_CHECKPOINT_VERSION, hashlib.sha256(payload).hexdigest().encode(),
                                                  len(payload))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_CHECKPOINT_MAGIC + header + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint` / :func:`fit` (safe to load: tensors only).

    Raises:
        CheckpointError (a ValueError) naming the file and the reason: empty,
            truncated, damaged (its content hash differs), not a pyprobtf
            checkpoint, or written in another format version.
    """
    def refuse(reason):
        return CheckpointError(f"checkpoint {path}: {reason}")

    raw = Path(path).read_bytes()
    if not raw:
        raise refuse("the file is empty")
    if not raw.startswith(_CHECKPOINT_MAGIC):
        if raw.startswith(b"PK\x03\x04"):
            raise refuse("a torch.save file without pyprobtf's checkpoint header: not written by pyprobtf.fit, or "
                         f"by a version before checkpoint format {_CHECKPOINT_VERSION}")
        raise refuse("not a pyprobtf checkpoint (no pyprobtf header)")
    end = raw.find(b"\n", len(_CHECKPOINT_MAGIC))
    header = _CHECKPOINT_HEADER.fullmatch(raw[len(_CHECKPOINT_MAGIC):end + 1]) if end >= 0 else None
    if header is None:
        raise refuse("damaged header line")
    version, digest, length = int(header[1]), header[2].decode(), int(header[3])
    if version != _CHECKPOINT_VERSION:
        raise refuse(f"written in checkpoint format {version}; this pyprobtf reads format {_CHECKPOINT_VERSION}")
    payload = raw[end + 1:]
    if len(payload) < length:
        raise refuse(f"truncated: {len(payload)} of its {length} payload bytes are there")
    if len(payload) > length:
        raise refuse(f"damaged: {len(payload) - length} bytes more than its header says")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise refuse("damaged: its content hash (SHA-256) differs from the one written with it")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # the hash matched: a payload torch cannot read is foreign
        raise refuse(f"its payload is not readable by torch.load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise refuse(f"its payload is {found!r}, not a {CHECKPOINT_FORMAT!r} training state")
    return state


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did."""

    steps: int                          # optimizer steps taken in total (resumed runs included)
    seconds: float                      # training seconds in total (resumed runs included)
    stopped: str                        # "steps" (all done), "time" (max_seconds reached) or "data" (iterator ran out)
    history: list[tuple[int, float]]    # (step, mean loss over the steps since the previous entry)
    checkpoint: str | None = None       # where the final state was saved

    @property
    def final_loss(self) -> float:
        return self.history[-1][1] if self.history else math.nan


class _Objective(nn.Module):
    """``forward(batch) = model.loss(batch)``: what DistributedDataParallel wraps (it hooks ``forward``)."""

    def __init__(self, model: ProbabilityTransform):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1


def _distributed(device: torch.device) -> _Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or use one already set up.

    A group fit creates stays up after it returns (the caller may gather results over it).
    """
    if not dist.is_available():
        return _Dist()
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return _Dist()
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


# ----------------------------------------------------------------------------- option checks


def _beta(where: str, name: str, value) -> float:
    return _checks.real(where, name, value, 0, 1, high_open=True)


def _check_options(opts: dict) -> dict:
    """Every option range-checked (fit calls this before anything runs)."""
    out = dict(opts)
    out["steps"] = _checks.integer("fit", "steps", opts["steps"], 0)
    out["batch_size"] = _checks.integer("fit", "batch_size", opts["batch_size"], 1)
    out["warmup"] = _checks.integer("fit", "warmup", opts["warmup"], 0)
    out["accumulate"] = _checks.integer("fit", "accumulate", opts["accumulate"], 1)
    out["lr"] = _checks.real("fit", "lr", opts["lr"], 0, low_open=True)
    out["weight_decay"] = _checks.real("fit", "weight_decay", opts["weight_decay"], 0)
    out["lr_final"] = _checks.real("fit", "lr_final", opts["lr_final"], 0, 1)  # a share of lr
    out["grad_clip"] = _checks.optional(_checks.real, "fit", "grad_clip", opts["grad_clip"], 0, low_open=True)
    out["ema"] = _checks.optional(_checks.real, "fit", "ema", opts["ema"], 0, 1, low_open=True, high_open=True)
    _checks.choice("fit", "lr_schedule", opts["lr_schedule"], ("cosine", "constant"))
    _checks.choice("fit", "precision", opts["precision"], sorted(_PRECISIONS))
    out["betas"] = _checks.sequence("fit", "betas", opts["betas"], _beta, length=2)
    return out


def _check_checkpoint_writable(path: Path) -> None:
    """Create (and remove) a file next to ``path``: an unwritable place fails now, not after training."""
    if path.is_dir():
        raise ValueError(f"fit: `checkpoint` {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ValueError(f"fit: `checkpoint` {path} cannot be written ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------- data


def _is_array(data) -> bool:
    return isinstance(data, torch.Tensor) or (hasattr(data, "__array__") and hasattr(data, "shape"))


def _as_tensor(part, label: str) -> torch.Tensor:
    if isinstance(part, torch.Tensor):
        return part
    try:
        return torch.as_tensor(part)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"fit: `{label}` must be a tensor of samples; got {type(part).__name__}") from exc


def _event_shape(model) -> tuple[int, ...]:
    return tuple(getattr(model, "event_shape", (model.dim,)))


def _check_parts(model, parts: list[torch.Tensor], where: str) -> None:
    """``x`` of shape ``(n, *event_shape)`` with n > 0, real; a context (any tensor) with as many rows."""
    name, shape = type(model).__name__, _event_shape(model)
    x = parts[0]
    if x.dim() == 0 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        raise ValueError(f"fit: {where} must have shape (n_samples, {', '.join(map(str, shape))}) for {name} "
                         f"(event_shape={shape}); got {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"fit: {where} must hold real numbers; got {x.dtype}")
    if len(parts) == 2:
        context = parts[1]
        if context.dim() == 0 or context.shape[0] != x.shape[0]:
            raise ValueError(f"fit: x and context in {where} must have as many rows; got {x.shape[0]} and "
                             f"{tuple(context.shape)[:1] or 'a scalar'}")
    elif len(parts) != 1:
        raise ValueError(f"fit: {where} must be x or (x, context); got a sequence of {len(parts)} items")


def _to_device(parts, device, dtype):
    """A batch for the model: x (floating x in the model's dtype) or (x, context), moved to ``device``."""
    x = parts[0]
    x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype, non_blocking=device.type == "cuda")
    if len(parts) == 1:
        return x
    return x, parts[1].to(device=device, non_blocking=device.type == "cuda")


def _nonfinite_rows(parts) -> list[int]:
    """Rows of a batch (x, and context when floating) holding NaN or inf."""
    bad = torch.zeros(parts[0].shape[0], dtype=torch.bool)
    for p in parts:
        if p.is_floating_point() or p.is_complex():
            bad |= ~torch.isfinite(p.reshape(p.shape[0], -1)).all(1).cpu()
    return bad.nonzero().flatten().tolist()


def _show_rows(rows: list[int]) -> str:
    rows = sorted(set(rows))
    return ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")


_END = object()


class _TensorSource:
    """In-memory samples: each micro-batch drawn with replacement from the step's seed, moved to the device."""

    def __init__(self, model, data):
        raw = list(data) if isinstance(data, (tuple, list)) else [data]
        self.parts = [_as_tensor(p, "data" if i == 0 else "context") for i, p in enumerate(raw)]
        if len(self.parts) not in (1, 2):
            raise ValueError(f"fit: `data` must be x or (x, context); got {len(self.parts)} tensors")
        _check_parts(model, self.parts, "`data`")
        self.n = self.parts[0].shape[0]
        self.gen = torch.Generator()

    def settings(self):
        return {"data": f"tensor of {self.n} samples"}

    def init_batch(self, seed, rank, batch_size):
        self.gen.manual_seed(step_seed(seed, rank, _INIT_STEP))
        idx = torch.randint(self.n, (min(self.n, max(batch_size, 4096)),), generator=self.gen)
        return [p[idx.to(p.device)] for p in self.parts], idx

    def start_step(self, seed, rank, step):
        self.gen.manual_seed(step_seed(seed, rank, step))

    def next(self, batch_size):
        idx = torch.randint(self.n, (batch_size,), generator=self.gen)
        return [p[idx.to(p.device)] for p in self.parts], idx

    def describe_rows(self, rows, idx):
        return f"in data rows [{_show_rows(idx[rows].tolist())}]"


class _DatasetSource:
    """A map-style Dataset read in epochs as a DistributedSampler does: one shuffle per epoch (the same on every
    process), each process its own shard, batches of ``batch_size`` (the last partial one dropped).

    Micro-batch ``m`` of the run is batch ``m % per_epoch`` of epoch ``m // per_epoch``, so a resumed run
    reads exactly the batches the uninterrupted one would have read, without reading the skipped ones.
    """

    def __init__(self, model, dataset, batch_size, accumulate, seed, ddp: _Dist):
        try:
            self.n = len(dataset)
        except TypeError as exc:
            raise TypeError(f"fit: a Dataset given as `data` must have a length; {type(dataset).__name__} has "
                            f"none (wrap an iterable dataset in a DataLoader)") from exc
        self.dataset, self.model = dataset, model
        self.batch_size, self.accumulate = batch_size, accumulate
        self.sampler = DistributedSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True,
                                          seed=step_seed(seed, 0, _EPOCH_STEP), drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"fit: `data` (a Dataset of {self.n} items) has fewer than batch_size x processes = "
                             f"{batch_size} x {ddp.world} items")
        self.gen = torch.Generator()
        self.indices = None
        self.micro = 0

    def settings(self):
        return {"data": f"dataset of {self.n} items"}

    def _fetch(self, indices):
        items = [self.dataset[i] for i in indices]
        batch = default_collate(items)
        parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        parts = [_as_tensor(p, "data") for p in parts]
        _check_parts(self.model, parts, f"a batch of the Dataset {type(self.dataset).__name__}")
        return parts

    def _batches(self, micro):
        epoch, offset = divmod(micro, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(offset, self.per_epoch):
                yield indices[b * self.batch_size:(b + 1) * self.batch_size]
            epoch, offset = epoch + 1, 0

    def init_batch(self, seed, rank, batch_size):
        self.gen.manual_seed(step_seed(seed, rank, _INIT_STEP))
        idx = torch.randint(self.n, (min(self.n, max(batch_size, 4096)),), generator=self.gen)
        return self._fetch(idx.tolist()), idx

    def start_step(self, seed, rank, step):
        micro = step * self.accumulate
        if self.indices is None or micro != self.micro:
            self.indices = self._batches(micro)
            self.micro = micro

    def next(self, batch_size):
        indices = next(self.indices)
        self.micro += 1
        return self._fetch(indices), torch.tensor(indices)

    def describe_rows(self, rows, idx):
        return f"in dataset items [{_show_rows(idx[rows].tolist())}]"


class _IterableSource:
    """Batches (``x`` or ``(x, context)``) from the caller's iterable, taken as they come.

    A re-iterable (a DataLoader, a list of batches) is read in passes; each pass starts from torch's RNG
    seeded from ``(seed, rank, pass)`` (the loader's own shuffle and worker seeds come from it) and calls
    ``sampler.set_epoch(pass)`` when the loader's sampler has it (a DistributedSampler). A resumed run starts
    the saved pass again and skips the batches already used, so it reads what the uninterrupted run read.
    A one-shot iterator (a generator) cannot be rewound: a resumed run takes its batches from wherever the
    iterator given to it stands, and training stops ("data") when it runs out.
    """

    def __init__(self, model, data):
        self.model, self.data = model, data
        self.one_shot = iter(data) is data
        self.iterator = data if self.one_shot else None
        self.pass_index, self.position = 0, 0
        self.pending = None
        self.peeked = None
        self.taken = 0  # batches taken in this call of fit

    def settings(self):
        return {"data": "one-shot iterator" if self.one_shot else f"re-iterable {type(self.data).__name__}"}

    def state(self):
        return {"pass": self.pass_index, "position": self.position}

    def restore(self, state, seed, rank):
        if self.one_shot or not state:
            return
        self.pass_index = int(state["pass"])
        self._start_pass(seed, rank)
        for _ in range(int(state["position"])):
            if self._raw_next() is None:
                break

    def _start_pass(self, seed, rank):
        sampler = getattr(self.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.pass_index)
        # A DataLoader draws its shuffle seed when its first batch is taken (and its workers' base seed at
        # iter()): both come from torch's RNG seeded here, so a restarted pass is the same pass.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(seed, rank, _PASS_STEP + self.pass_index))
            self.iterator = iter(self.data)
            self.pending = next(self.iterator, _END)
        self.position = 0

    def _raw_next(self):
        if self.pending is not None:
            batch, self.pending = self.pending, None
        else:
            batch = next(self.iterator, _END)
        if batch is _END:
            return None
        self.position += 1
        return batch

    def _next_batch(self, seed, rank):
        if self.iterator is None:
            self._start_pass(seed, rank)
        batch = self._raw_next()
        if batch is None and not self.one_shot:
            if self.position == 0:
                raise ValueError(f"fit: `data` ({type(self.data).__name__}) yields no batches")
            self.pass_index += 1
            self._start_pass(seed, rank)
            batch = self._raw_next()
            if batch is None:
                raise ValueError(f"fit: `data` ({type(self.data).__name__}) yields no batches")
        if batch is None:
            if not self.taken:
                raise ValueError(f"fit: `data` ({type(self.data).__name__}) yields no batches")
            return None
        self.taken += 1
        parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        parts = [_as_tensor(p, "data") for p in parts]
        _check_parts(self.model, parts, "a batch of `data`")
        return parts

    def init_batch(self, seed, rank, batch_size):
        self.peeked = self._next_batch(seed, rank)  # the first batch: step 0 trains on it too
        return self.peeked, None

    def start_step(self, seed, rank, step):
        self.seed, self.rank = seed, rank

    def next(self, batch_size):
        if self.peeked is not None:
            parts, self.peeked = self.peeked, None
            return parts, None
        return self._next_batch(self.seed, self.rank), None

    def describe_rows(self, rows, idx):
        return f"in rows [{_show_rows(rows)}] of that batch"


def _data_source(model, data, batch_size, accumulate, seed, ddp):
    if isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=batch_size)
    # A tuple of arrays is (x, context); so is a list of one or two (a longer list is a list of batches).
    arrays = isinstance(data, (tuple, list)) and len(data) > 0 and all(_is_array(p) for p in data)
    if _is_array(data) or (arrays and (isinstance(data, tuple) or len(data) <= 2)):
        return _TensorSource(model, data)
    if isinstance(data, Dataset):
        return _DatasetSource(model, data, batch_size, accumulate, seed, ddp)
    try:
        iter(data)
    except TypeError:
        raise TypeError(f"fit: `data` must be a tensor, (x, context), a Dataset, a DataLoader or an iterable of "
                        f"batches; got {type(data).__name__}") from None
    return _IterableSource(model, data)


# ----------------------------------------------------------------------------- optimisation


def _adamw(params, opts) -> torch.optim.AdamW:
    """AdamW, fused where torch has the fused kernel for these tensors (on a CPU, 5x faster than the
    per-tensor loop for the small networks here), else the default implementation."""
    kwargs = {"lr": opts["lr"], "weight_decay": opts["weight_decay"], "betas": tuple(float(b) for b in opts["betas"])}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def _lr_factor(step: int, elapsed: float, opts: dict, steps: int, max_seconds: float | None) -> float:
    """Warm-up, then cosine decay over the share of the run done: steps or time, whichever is further."""
    if step < opts["warmup"]:
        return (step + 1) / opts["warmup"]
    if opts["lr_schedule"] == "constant":
        return 1.0
    done = step / steps
    if max_seconds is not None:
        done = max(done, elapsed / max_seconds)
    done = min(done, 1.0)
    final = opts["lr_final"]
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * done))


# ----------------------------------------------------------------------------- fit


def fit(
    model: ProbabilityTransform,
    data,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device=None,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str = True,
    log_every: int | None = None,
    num_threads: int | None = None,
    **options,
) -> FitResult:
    """Train ``model`` on ``data`` by minimising ``model.loss`` with AdamW; one loop for every family.

    Args:
        model: a :class:`~pyprobtf.ProbabilityTransform`.
        data: the training samples, ``x`` of shape ``(n, *event_shape)``, or
            ``(x, context)`` for a conditional model (``context``: any tensor
            with ``n`` rows, checked by the model's loss), in one of these forms:

            - a tensor (or array), or a tuple ``(x, context)`` of them: each
              batch is drawn with replacement from the step's seed;
            - a map-style ``torch.utils.data.Dataset`` (items ``x`` or
              ``(x, context)``): read in shuffled epochs, sharded across
              processes as a ``DistributedSampler`` does;
            - a ``DataLoader`` or any iterable of batches (a generator, an
              ``IterableDataset``): taken as given, batch by batch. Under DDP
              give each process its own data (e.g. a ``DistributedSampler``;
              fit calls its ``set_epoch`` at each pass). A generator that runs
              out ends training (``stopped == "data"``).

            Data stays where it is; each batch is moved to ``device`` as it comes.
        steps, batch_size, lr: optimizer steps, batch size (per process and per
            micro-batch; a DataLoader's or iterable's batches are used as they
            come, an ``IterableDataset`` is batched by it) and peak learning
            rate; ``None`` takes the family's ``fit_defaults``.
        device: ``None`` (CUDA when available, else CPU), or a device.
        seed: an int in [-2**63, 2**64), taken modulo 2**64 (:mod:`pyprobtf.seeds`); seeds the batches
            and the training noise (torch's global RNG is left as it was).
        max_seconds: a training-time budget: training stops cleanly after the
            step during which it ran out (and saves its checkpoint); the
            cosine learning-rate decay follows the share of steps or of time
            used, whichever is further along, so a time-limited run still
            ends at a low learning rate. It counts resumed runs' time too.
        progress: show a progress bar (tqdm) with the running loss on stderr (rank 0 only).
        checkpoint: a file to save the training state to (every
            ``checkpoint_every`` steps, and at the end); checked to be writable
            before the first step.
        resume: with ``True`` an existing ``checkpoint`` is verified and
            loaded and training continues from it: the resumed run gives the
            weights (and EMA) of the uninterrupted run, bit for bit. A
            checkpoint written with other trajectory settings (seed,
            batch_size, lr, ...; docs/FIT.md lists them) is refused;
            ``resume="force"`` loads it anyway and continues with the new
            settings; ``False`` starts over (and overwrites the file).
        log_every: steps between entries of ``history`` (default: steps / 100).
        num_threads: CPU threads torch uses while training (restored afterwards);
            ``None`` keeps torch's setting.
        **options: ``weight_decay``, ``warmup`` (steps), ``lr_schedule``
            (``"cosine"`` or ``"constant"``), ``lr_final`` (final share of
            ``lr``, in [0, 1]), ``grad_clip`` (max gradient norm, > 0),
            ``ema`` (decay of a moving average of the weights, in (0, 1); the
            model is left holding the averaged weights, which sampling then
            uses), ``betas`` (AdamW's moment decays), ``accumulate`` (k
            micro-batches per optimizer step, their gradients averaged) and
            ``precision`` (``"fp32"``; ``"bf16"``: autocast to bfloat16, on
            CPU or CUDA; ``"fp16"``: autocast and a GradScaler, CUDA only);
            defaults from the family's ``fit_defaults``, then ``FIT_OPTIONS``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the model is trained with
    DistributedDataParallel (gloo on CPU, NCCL on GPUs): every process draws
    its own batches, gradients are averaged, and all processes end with the
    same weights; only rank 0 shows progress and writes checkpoints.

    Raises:
        TypeError / ValueError: before the first step, naming the argument: a
            wrong type or value of any option, data of the wrong shape for the
            model, an unwritable ``checkpoint`` path.
        CheckpointError (a ValueError): the checkpoint to resume is damaged,
            truncated, foreign, of another format, or from a run with other
            settings (the message names the file and the reason).
        FloatingPointError: the loss is NaN or infinite at some step; the
            message names the step and says whether the batch held
            non-finite data (and which rows) or training diverged.

    Returns:
        A :class:`FitResult`; the model is left trained, in eval mode, on ``device``.

    Example:
        >>> from pyprobtf.data import toy
        >>> from pyprobtf.families import RealNVP
        >>> model = RealNVP(dim=2)
        >>> result = fit(model, toy("moons", 5000), steps=200, progress=False)
        >>> result.steps
        200
        >>> loader = torch.utils.data.DataLoader(toy("moons", 5000), batch_size=128, shuffle=True)
        >>> fit(model, loader, steps=50, ema=0.99, progress=False).steps
        50
    """
    if not isinstance(model, ProbabilityTransform):
        raise TypeError(f"fit: `model` must be a pyprobtf ProbabilityTransform; got {type(model).__name__}")
    unknown = set(options) - set(FIT_OPTIONS)
    if unknown:
        raise TypeError(f"fit: unknown option(s) {sorted(unknown)}; the options are {sorted(FIT_OPTIONS)}")
    defaults = {**FIT_OPTIONS, **{k: v for k, v in model.fit_defaults.items() if k in FIT_OPTIONS}}
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, **options}
    opts = {k: (given[k] if given.get(k) is not None else defaults[k]) for k in FIT_OPTIONS}
    for k in ("grad_clip", "ema"):  # None is a meaningful value for these
        if k in options:
            opts[k] = options[k]
    opts = _check_options(opts)
    steps, batch_size = opts["steps"], opts["batch_size"]
    max_seconds = _checks.optional(_checks.real, "fit", "max_seconds", max_seconds, 0, low_open=True, finite=False)
    seed = check_seed(seed, "fit")
    _checks.boolean("fit", "progress", progress)
    if not (resume is True or resume is False or resume == "force"):
        raise ValueError(f"fit: `resume` must be True, False or 'force'; got {resume!r}")
    log_every = _checks.integer("fit", "log_every", log_every if log_every is not None else max(1, steps // 100), 1)
    checkpoint_every = _checks.optional(_checks.integer, "fit", "checkpoint_every", checkpoint_every, 1)
    num_threads = _checks.optional(_checks.integer, "fit", "num_threads", num_threads, 1)
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"fit: `checkpoint` must be a path; got {type(checkpoint).__name__} {checkpoint!r}")
        checkpoint = Path(checkpoint)
    device = resolve_device(device)
    if opts["precision"] == "fp16" and device.type != "cuda":
        raise ValueError(f"fit: `precision='fp16'` needs a CUDA device (float16 autocast with a GradScaler); on "
                         f"{device.type} use precision='bf16'")
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit(model, data, steps, batch_size, device, seed, max_seconds, progress, checkpoint,
                    checkpoint_every, resume, log_every, opts)
    finally:
        torch.set_num_threads(threads_before)


def _settings(seed, batch_size, ddp, opts, steps, max_seconds, source) -> dict:
    """The run's settings as saved in a checkpoint's ``config`` (plain numbers and strings)."""
    return {"seed": seed, "batch_size": batch_size, "world_size": ddp.world, "steps": steps,
            "max_seconds": max_seconds, **{k: v for k, v in opts.items() if k not in ("steps", "batch_size")},
            "betas": list(opts["betas"]), **source.settings()}


def _check_resume(saved: dict, path, name: str, config: dict, force: bool, params: dict) -> None:
    """Refuse (with the path and the reason) a checkpoint fit cannot continue from exactly."""
    def refuse(reason):
        return CheckpointError(f"fit: checkpoint {path}: {reason}")

    missing = [k for k in _CHECKPOINT_KEYS if k not in saved]
    if missing:
        raise refuse(f"missing key(s) {missing}")
    if saved["family"] != name:
        raise refuse(f"holds a {saved['family']}, not a {name}")
    step, elapsed = saved["step"], saved["elapsed"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise refuse(f"`step` must be an int >= 0; it is {step!r}")
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not 0 <= elapsed < math.inf:
        raise refuse(f"`elapsed` (training seconds) must be a finite number >= 0; it is {elapsed!r}")
    if not isinstance(saved["config"], dict) or not isinstance(saved["history"], list):
        raise refuse("`config` must be a dict and `history` a list")
    if saved["ema"] is not None and (not isinstance(saved["ema"], dict) or set(saved["ema"]) != set(params)):
        raise refuse("its `ema` entries do not match this model's trainable parameters")
    if force:
        return
    old = saved["config"]
    keys = _TRAJECTORY_SETTINGS + (_SCHEDULE_SETTINGS if config["lr_schedule"] == "cosine" else ())
    differ = [f"{k} {old.get(k)!r} (now {config[k]!r})" for k in keys if old.get(k) != config[k]]
    if differ:
        raise refuse(f"written by a run with other settings: {', '.join(differ)}; resuming would not continue that "
                     f"run exactly. Pass resume='force' to continue from it with the new settings, or resume=False "
                     f"to start over (the file is overwritten)")


def _fit(model, data, steps, batch_size, device, seed, max_seconds, progress, checkpoint, checkpoint_every, resume,
         log_every, opts) -> FitResult:
    model.to(device)
    ddp = _distributed(device)
    name = type(model).__name__
    accumulate = opts["accumulate"]
    source = _data_source(model, data, batch_size, accumulate, seed, ddp)
    named_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named_params.values())
    config = _settings(seed, batch_size, ddp, opts, steps, max_seconds, source)
    if checkpoint is not None and ddp.rank == 0:
        _check_checkpoint_writable(checkpoint)

    start_step, elapsed_before, history = 0, 0.0, []
    saved = None
    if checkpoint is not None and resume is not False and checkpoint.exists():
        saved = load_checkpoint(checkpoint)
        _check_resume(saved, checkpoint, name, config, resume == "force", named_params)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"fit: checkpoint {checkpoint}: its weights do not fit this {name}: {exc}") from exc
        start_step, elapsed_before = saved["step"], float(saved["elapsed"])
        history = [tuple(h) for h in saved["history"]]

    autocast_dtype = _PRECISIONS[opts["precision"]]

    def autocast():
        if autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    scaler = torch.amp.GradScaler("cuda") if opts["precision"] == "fp16" else None
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        if saved is None and type(model).initialize is not ProbabilityTransform.initialize:
            # Data-dependent initialisation (ActNorm & co.) on every process; DDP then copies rank 0's.
            init_parts, init_idx = source.init_batch(seed, ddp.rank, batch_size)
            torch.manual_seed(step_seed(seed, ddp.rank, _INIT_STEP))
            rows = _nonfinite_rows(init_parts)
            if rows:
                raise FloatingPointError(
                    f"fit: {name}: before step 0, the batch drawn for the data-dependent initialisation holds NaN "
                    f"or infinite values, {source.describe_rows(rows, init_idx)}; clean the data (e.g. keep "
                    f"x[torch.isfinite(x).flatten(1).all(1)])")
            model.train()
            with torch.no_grad():
                model.initialize(_to_device(init_parts, device, model.dtype))
        elif saved is not None and isinstance(source, _IterableSource):
            source.restore(saved["data"], seed, ddp.rank)
        objective: nn.Module = _Objective(model)
        if ddp.active:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        optimizer = _adamw(params, opts)
        ema = {n: p.detach().clone() for n, p in named_params.items()} if opts["ema"] is not None else None
        if saved is not None:
            try:
                optimizer.load_state_dict(saved["optimizer"])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"fit: checkpoint {checkpoint}: its optimizer state does not fit this {name}: "
                                      f"{exc}") from exc
            if ema is not None and saved["ema"] is not None:
                for n, e in ema.items():
                    e.copy_(saved["ema"][n])
            if scaler is not None and saved["scaler"]:
                scaler.load_state_dict(saved["scaler"])

        def state(step, elapsed):
            return {
                "format": CHECKPOINT_FORMAT, "family": name, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed, "history": history,
                "ema": ema, "scaler": scaler.state_dict() if scaler is not None else None,
                "data": source.state() if isinstance(source, _IterableSource) else None, "config": config,
            }

        bar = ProgressBar(steps, f"fit {name}", enabled=progress and ddp.rank == 0)
        model.train()
        step, stopped, t0 = start_step, "steps", time.perf_counter()
        elapsed = elapsed_before
        running, running_n = 0.0, 0
        sync = torch.zeros(2, dtype=torch.float64, device=device)
        ema_params = [ema[n] for n in named_params] if ema is not None else None
        try:
            while step < steps:
                s = step_seed(seed, ddp.rank, step)
                source.start_step(seed, ddp.rank, step)
                micro = [source.next(batch_size) for _ in range(accumulate)]
                if isinstance(source, _IterableSource) and source.one_shot:
                    ran_out = torch.tensor([float(any(m[0] is None for m in micro))], device=device)
                    if ddp.active:  # every process stops at the same step, or DDP's all-reduce would hang
                        dist.all_reduce(ran_out, op=dist.ReduceOp.MAX)
                    if float(ran_out):
                        stopped = "data"
                        break
                torch.manual_seed(s)
                optimizer.zero_grad(set_to_none=True)
                total, bad = 0.0, None
                for j, (parts, idx) in enumerate(micro):
                    batch = _to_device(parts, device, model.dtype)
                    last = j == accumulate - 1
                    with objective.no_sync() if ddp.active and not last else contextlib.nullcontext():
                        with autocast():
                            loss = objective(batch)
                        if loss.dim() != 0:
                            raise ValueError(f"fit: {name}.loss must return a scalar; got shape {tuple(loss.shape)}")
                        loss = loss.float()
                        scaled = loss / accumulate if accumulate > 1 else loss
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    value = loss.detach()
                    if bad is None and not bool(torch.isfinite(value)):
                        bad = (value, parts, idx)
                    total += float(value)
                elapsed = elapsed_before + time.perf_counter() - t0
                # One small exchange per step: any process's non-finite loss stops all of them, and all
                # use rank 0's clock (the lr schedule and the time budget must agree across processes).
                sync[0] = float(bad is not None)
                sync[1] = elapsed if ddp.rank == 0 else 0.0
                if ddp.active:
                    dist.all_reduce(sync, op=dist.ReduceOp.MAX)
                flag, elapsed = float(sync[0]), float(sync[1])
                if flag:
                    raise FloatingPointError(_nan_message(name, step, bad, source, ddp, opts["lr"]))
                if max_seconds is not None and elapsed >= max_seconds:
                    stopped = "time"
                    break
                factor = _lr_factor(step, elapsed, opts, steps, max_seconds)
                for group in optimizer.param_groups:
                    group["lr"] = opts["lr"] * factor
                if scaler is not None and opts["grad_clip"] is not None:
                    scaler.unscale_(optimizer)
                if opts["grad_clip"] is not None:
                    torch.nn.utils.clip_grad_norm_(params, opts["grad_clip"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - opts["ema"])
                step += 1
                running += total / accumulate
                running_n += 1
                if step % log_every == 0 or step == steps:
                    history.append((step, running / running_n))
                    running, running_n = 0.0, 0
                    done = step / steps if max_seconds is None else max(step / steps, elapsed / max_seconds)
                    bar.update(step, fraction=done, loss=history[-1][1])
                if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and ddp.rank == 0:
                    save_checkpoint(checkpoint, state(step, elapsed_before + time.perf_counter() - t0))
            if running_n:
                history.append((step, running / running_n))
            elapsed = elapsed_before + time.perf_counter() - t0
            if ddp.active:  # agree on the final clock too (saved in the checkpoint)
                sync[1] = elapsed if ddp.rank == 0 else 0.0
                dist.all_reduce(sync, op=dist.ReduceOp.MAX)
                elapsed = float(sync[1])
        finally:
            bar.close(step, fraction=1.0 if stopped != "steps" else None,
                      **({"loss": history[-1][1]} if history else {}), stopped=stopped)
        # The checkpoint keeps the training weights (and the average apart), so a longer run can continue it.
        if checkpoint is not None and ddp.rank == 0:
            save_checkpoint(checkpoint, state(step, elapsed))
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(params, ema_params):
                    p.copy_(e)
    model.eval()
    return FitResult(steps=step, seconds=elapsed, stopped=stopped, history=history,
                     checkpoint=None if checkpoint is None else str(checkpoint))


def _nan_message(name, step, bad, source, ddp: _Dist, lr: float) -> str:
    where = f" on rank {ddp.rank}" if ddp.active else ""
    if bad is None:
        return (f"fit: {name}: training stopped at step {step}: another process got a non-finite loss "
                f"(its message says why){where}")
    loss, parts, idx = bad
    rows = _nonfinite_rows(parts)
    if rows:
        return (f"fit: {name}: the loss is {float(loss)} at step {step}{where}: the batch holds NaN or infinite "
                f"values, {source.describe_rows(rows, idx)}; clean the data (e.g. keep "
                f"x[torch.isfinite(x).flatten(1).all(1)])")
    return (f"fit: {name}: the loss is {float(loss)} at step {step}{where} on finite data: training diverged; "
            f"try a lower `lr` (it was {lr:g}) or `grad_clip=1.0`")
