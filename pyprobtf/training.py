"""One training loop for every family: :func:`fit`, and the glue it is built from.

The pieces are public so that other training code (new families, the CLI)
uses the same conventions:

- :func:`resolve_device`: ``None``/``"auto"`` -> CUDA when available, else CPU
  (under ``torchrun``, the process's own GPU);
- :func:`step_seed`: the seed of one training step, a hash of
  ``(seed, rank, step)``; each step re-seeds the batch draw and torch's RNG
  from it, so a run resumed from a checkpoint is the run that was not
  interrupted, and every process of a distributed run draws its own batches;
- :func:`save_checkpoint` / :func:`load_checkpoint`: the checkpoint format, a
  ``torch.save`` dict with ``"format": CHECKPOINT_FORMAT``, ``"family"`` (the
  class name), ``"model"`` (state dict), ``"optimizer"``, ``"step"``,
  ``"elapsed"`` (training seconds so far), ``"history"``, ``"ema"`` (or None)
  and ``"config"``; written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pyprobtf._progress import ProgressBar
from pyprobtf.transform import ProbabilityTransform

CHECKPOINT_FORMAT = "pyprobtf.fit/1"
_MASK64 = (1 << 64) - 1

# Options fit takes from a family's `fit_defaults` when the caller does not give them.
FIT_OPTIONS = {
    "steps": 2000,          # optimizer steps
    "batch_size": 256,      # per process
    "lr": 1e-3,             # peak learning rate (AdamW)
    "weight_decay": 0.0,
    "warmup": 100,          # steps of linear warm-up
    "lr_schedule": "cosine",  # "cosine" (to lr_final over the run) or "constant"
    "lr_final": 0.02,       # cosine: final lr as a share of lr
    "grad_clip": None,      # max gradient norm, or None
    "ema": None,            # decay of an exponential moving average of the weights (copied in at the end)
    "betas": (0.9, 0.999),  # AdamW's moment decays (adversarial families train better with (0.5, 0.9))
}


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


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (a dict of tensors, numbers, strings, lists and dicts) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` / :func:`fit` (tensors only: safe to load)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyprobtf checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did."""

    steps: int                          # optimizer steps taken in total (resumed runs included)
    seconds: float                      # training seconds in total (resumed runs included)
    stopped: str                        # "steps" (all done) or "time" (max_seconds reached)
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


def _check_int(name, value, low) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"fit: `{name}` must be an int >= {low}; got {value!r}")
    return int(value)


def _prepare_data(model: ProbabilityTransform, data, device, dtype) -> list[torch.Tensor]:
    """``data`` (x, or (x, context)) as a list of tensors on ``device``, checked against the model."""
    name = type(model).__name__
    parts = list(data) if isinstance(data, (tuple, list)) else [data]
    expected = 2 if model.conditional else 1
    if len(parts) != expected:
        what = "(x, context)" if model.conditional else "a tensor x"
        raise ValueError(f"fit: `data` must be {what} for {name}(context_dim={model.context_dim}); "
                         f"got {len(parts)} tensors")
    out = []
    shapes = (model.event_shape, () if model.num_classes else model.context_shape)
    for i, (part, shape, label) in enumerate(zip(parts, shapes, ("data", "context"))):
        if not isinstance(part, torch.Tensor):
            try:
                part = torch.as_tensor(part)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(f"fit: `{label}` must be a tensor of samples; got {type(part).__name__}") from exc
        if tuple(part.shape[1:]) != tuple(shape) or part.shape[0] == 0:
            raise ValueError(f"fit: `{label}` must have shape (n_samples, {', '.join(map(str, shape))}) for "
                             f"{name}({'event_shape' if i == 0 else 'context'}={shape}); got {tuple(part.shape)}")
        if part.is_complex() or part.dtype == torch.bool:
            raise TypeError(f"fit: `{label}` must hold real numbers; got {part.dtype}")
        labels = i == 1 and model.num_classes
        out.append(part.to(device=device) if labels else part.to(device=device, dtype=dtype))
    if len(out) == 2 and out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"fit: `data` and `context` must have as many rows; got {out[0].shape[0]} and "
                         f"{out[1].shape[0]}")
    return out


def _batch(parts, idx):
    rows = [p[idx] for p in parts]
    return rows[0] if len(rows) == 1 else tuple(rows)


def _show_rows(rows: list[int]) -> str:
    rows = sorted(set(rows))
    return ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")


def _nonfinite_rows(parts, idx) -> list[int]:
    bad = torch.zeros(idx.shape[0], dtype=torch.bool, device=parts[0].device)
    for p in parts:
        bad |= ~torch.isfinite(p[idx].reshape(idx.shape[0], -1)).all(1)
    return idx[bad.cpu()].tolist()


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
    resume: bool = True,
    log_every: int | None = None,
    num_threads: int | None = None,
    **options,
) -> FitResult:
    """Train ``model`` on ``data`` by minimising ``model.loss`` with AdamW; one loop for every family.

    Args:
        model: a :class:`~pyprobtf.ProbabilityTransform`.
        data: a ``(n_samples, dim)`` tensor (or array) of training samples, or
            ``(x, context)`` for a conditional model. Batches are drawn with
            replacement.
        steps, batch_size, lr: optimizer steps, batch size (per process) and
            peak learning rate; ``None`` takes the family's ``fit_defaults``.
        device: ``None`` (CUDA when available, else CPU), or a device.
        seed: seeds the batches and the training noise (torch's global RNG is
            left as it was).
        max_seconds: a training-time budget: training stops cleanly after the
            step during which it ran out (and saves its checkpoint); the
            cosine learning-rate decay follows the share of steps or of time
            used, whichever is further along, so a time-limited run still
            ends at a low learning rate. It counts resumed runs' time too.
        progress: show a progress bar with the running loss on stderr (rank 0 only).
        checkpoint: a file to save the training state to (every
            ``checkpoint_every`` steps, and at the end); with ``resume=True``
            an existing file is loaded first and training continues from it:
            a resumed run gives the weights of the uninterrupted run.
        log_every: steps between entries of ``history`` (default: steps / 100).
        num_threads: CPU threads torch uses while training (restored afterwards);
            ``None`` keeps torch's setting.
        **options: ``weight_decay``, ``warmup`` (steps), ``lr_schedule``
            (``"cosine"`` or ``"constant"``), ``lr_final`` (final share of
            ``lr``), ``grad_clip`` (max gradient norm), ``ema`` (decay of a
            moving average of the weights that replaces them at the end) and
            ``betas`` (AdamW's moment decays);
            defaults from the family's ``fit_defaults``, then ``FIT_OPTIONS``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the model is trained with
    DistributedDataParallel (gloo on CPU, NCCL on GPUs): every process draws
    its own batches, gradients are averaged, and all processes end with the
    same weights; only rank 0 shows progress and writes checkpoints.

    Raises:
        ValueError: data of the wrong shape for the model; bad options.
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
    steps = _check_int("steps", opts["steps"], 0)
    batch_size = _check_int("batch_size", opts["batch_size"], 1)
    opts["warmup"] = _check_int("warmup", opts["warmup"], 0)
    if not (isinstance(opts["lr"], numbers.Real) and opts["lr"] > 0):
        raise ValueError(f"fit: `lr` must be a positive number; got {opts['lr']!r}")
    if opts["lr_schedule"] not in ("cosine", "constant"):
        raise ValueError(f"fit: `lr_schedule` must be 'cosine' or 'constant'; got {opts['lr_schedule']!r}")
    if max_seconds is not None and not (isinstance(max_seconds, numbers.Real) and max_seconds > 0):
        raise ValueError(f"fit: `max_seconds` must be a positive number or None; got {max_seconds!r}")
    betas = opts["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"fit: `betas` must be a pair of numbers in [0, 1); got {betas!r}")
    if opts["ema"] is not None and not 0 < opts["ema"] < 1:
        raise ValueError(f"fit: `ema` must be None or a decay in (0, 1); got {opts['ema']!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"fit: `seed` must be an int; got {type(seed).__name__}")
    log_every = _check_int("log_every", log_every if log_every is not None else max(1, steps // 100), 1)
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    if num_threads is not None:
        num_threads = _check_int("num_threads", num_threads, 1)
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit(model, data, steps, batch_size, device, seed, max_seconds, progress, checkpoint,
                    checkpoint_every, resume, log_every, opts)
    finally:
        torch.set_num_threads(threads_before)


def _fit(model, data, steps, batch_size, device, seed, max_seconds, progress, checkpoint, checkpoint_every, resume,
         log_every, opts) -> FitResult:
    device = resolve_device(device)
    model.to(device)
    parts = _prepare_data(model, data, device, model.dtype)
    n_rows = parts[0].shape[0]
    ddp = _distributed(device)
    name = type(model).__name__
    gen = torch.Generator()

    start_step, elapsed_before, history = 0, 0.0, []
    saved = None
    if checkpoint is not None and resume and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint)
        if saved.get("family") != name:
            raise ValueError(f"fit: checkpoint {checkpoint} holds a {saved.get('family')}, not a {name}")
        model.load_state_dict(saved["model"])
        start_step, elapsed_before = int(saved["step"]), float(saved["elapsed"])
        history = [tuple(h) for h in saved["history"]]

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        if saved is None:
            # Data-dependent initialisation (ActNorm & co.) on every process; DDP then copies rank 0's.
            torch.manual_seed(step_seed(seed, ddp.rank, 2**40))
            gen.manual_seed(step_seed(seed, ddp.rank, 2**40))
            idx = torch.randint(n_rows, (min(n_rows, max(batch_size, 4096)),), generator=gen)
            data_dependent = type(model).initialize is not ProbabilityTransform.initialize
            rows = _nonfinite_rows(parts, idx) if data_dependent else []
            if rows:
                raise FloatingPointError(
                    f"fit: {name}: before step 0, the batch drawn for the data-dependent initialisation holds NaN "
                    f"or infinite values, in data rows [{_show_rows(rows)}]; clean the data (e.g. "
                    f"data[torch.isfinite(data).all(1)])")
            model.train()
            with torch.no_grad():
                model.initialize(_batch(parts, idx.to(device)))
        objective: nn.Module = _Objective(model)
        if ddp.active:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _adamw(params, opts)
        ema = [p.detach().clone() for p in params] if opts["ema"] is not None else None
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            if ema is not None and saved.get("ema") is not None:
                for e, s in zip(ema, saved["ema"]):
                    e.copy_(s)

        def state(step, elapsed):
            return {
                "format": CHECKPOINT_FORMAT, "family": name, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed, "history": history,
                "ema": ema, "config": {"batch_size": batch_size, "seed": int(seed), "world_size": ddp.world,
                                       **{k: v for k, v in opts.items() if k != "batch_size"}},
            }

        bar = ProgressBar(steps, f"fit {name}", enabled=progress and ddp.rank == 0)
        model.train()
        step, stopped, t0 = start_step, "steps", time.perf_counter()
        elapsed = elapsed_before
        running, running_n = 0.0, 0
        sync = torch.zeros(2, dtype=torch.float64, device=device)
        try:
            while step < steps:
                s = step_seed(seed, ddp.rank, step)
                torch.manual_seed(s)
                gen.manual_seed(s)
                idx = torch.randint(n_rows, (batch_size,), generator=gen)
                batch = _batch(parts, idx.to(device))
                loss = objective(batch)
                if loss.dim() != 0:
                    raise ValueError(f"fit: {name}.loss must return a scalar; got shape {tuple(loss.shape)}")
                elapsed = elapsed_before + time.perf_counter() - t0
                # One small exchange per step: any process's non-finite loss stops all of them, and all
                # use rank 0's clock (the lr schedule and the time budget must agree across processes).
                sync[0] = (~torch.isfinite(loss.detach())).to(torch.float64)
                sync[1] = elapsed if ddp.rank == 0 else 0.0
                if ddp.active:
                    dist.all_reduce(sync, op=dist.ReduceOp.MAX)
                flag, elapsed = float(sync[0]), float(sync[1])
                if flag:
                    raise FloatingPointError(_nan_message(name, step, loss, parts, idx, ddp, opts["lr"]))
                if max_seconds is not None and elapsed >= max_seconds:
                    stopped = "time"
                    break
                factor = _lr_factor(step, elapsed, opts, steps, max_seconds)
                for group in optimizer.param_groups:
                    group["lr"] = opts["lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if opts["grad_clip"] is not None:
                    torch.nn.utils.clip_grad_norm_(params, opts["grad_clip"])
                optimizer.step()
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - opts["ema"])
                step += 1
                running += float(loss.detach())
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
            bar.close(step, fraction=1.0 if stopped == "time" else None,
                      **({"loss": history[-1][1]} if history else {}), stopped=stopped)
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(params, ema):
                    p.copy_(e)
        if checkpoint is not None and ddp.rank == 0:
            save_checkpoint(checkpoint, state(step, elapsed))
    model.eval()
    return FitResult(steps=step, seconds=elapsed, stopped=stopped, history=history,
                     checkpoint=None if checkpoint is None else str(checkpoint))


def _nan_message(name, step, loss, parts, idx, ddp: _Dist, lr: float) -> str:
    where = f" on rank {ddp.rank}" if ddp.active else ""
    loss = loss.detach()
    if bool(torch.isfinite(loss.detach())):
        return (f"fit: {name}: training stopped at step {step}: another process got a non-finite loss "
                f"(its message says why){where}")
    rows = _nonfinite_rows(parts, idx)
    if rows:
        return (f"fit: {name}: the loss is {float(loss)} at step {step}{where}: the batch holds NaN or infinite "
                f"values, in data rows [{_show_rows(rows)}]; clean the data (e.g. data[torch.isfinite(data).all(1)])")
    return (f"fit: {name}: the loss is {float(loss)} at step {step}{where} on finite data: training diverged; "
            f"try a lower `lr` (it was {lr:g}) or `grad_clip=1.0`")
