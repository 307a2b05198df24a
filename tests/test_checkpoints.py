"""fit under bad input: every option range-checked before the first step, checkpoints verified (damaged,
truncated, empty, foreign, incomplete, incompatible, other settings) and written atomically, an unwritable
checkpoint path caught before training, one seed domain, EMA resumed bit for bit."""

from __future__ import annotations

import math
import re

import pytest
import torch

from pyprobtf import ProbabilityTransform, fit
from pyprobtf.training import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: the networks here are small, and on a shared 2-core machine a second OpenMP thread
    made these tests several times slower (oversubscription), not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Noisy(ProbabilityTransform):
    """x = z + b on 2-D vectors; its loss adds training noise from torch's RNG (as diffusion losses do),
    and counts its calls (a refused run must not reach the first step)."""

    def __init__(self):
        super().__init__(2)
        self.b = torch.nn.Parameter(torch.zeros(2))
        self.w = torch.nn.Parameter(torch.ones(2))
        self.calls = 0

    def loss(self, batch):
        self.calls += 1
        noise = 0.1 * torch.randn_like(batch)
        return (((batch + noise) * self.w - self.b) ** 2).mean()


def data(n=256):
    return 1.0 + torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


RUN = {"steps": 12, "batch_size": 16, "lr": 0.05, "seed": 3, "progress": False}


def equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("option, value, error", [
    ("grad_clip", -1.0, ValueError), ("grad_clip", 0, ValueError), ("grad_clip", math.nan, ValueError),
    ("grad_clip", math.inf, ValueError), ("grad_clip", "1", TypeError),
    ("lr_final", math.nan, ValueError), ("lr_final", -0.1, ValueError), ("lr_final", 1.5, ValueError),
    ("lr", math.nan, ValueError), ("lr", math.inf, ValueError), ("lr", 0.0, ValueError), ("lr", "big", TypeError),
    ("weight_decay", -1e-4, ValueError), ("weight_decay", math.nan, ValueError),
    ("warmup", -1, ValueError), ("warmup", 1.5, TypeError),
    ("ema", 0.0, ValueError), ("ema", 1.0, ValueError), ("ema", math.nan, ValueError), ("ema", True, TypeError),
    ("betas", (1.0, 0.9), ValueError), ("betas", (math.nan, 0.9), ValueError), ("betas", 0.9, TypeError),
    ("accumulate", 0, ValueError), ("accumulate", 2.0, TypeError), ("precision", "fp8", ValueError),
    ("lr_schedule", "linear", ValueError), ("steps", True, TypeError), ("batch_size", 0, ValueError),
    ("max_seconds", math.nan, ValueError), ("max_seconds", -1.0, ValueError), ("log_every", 0, ValueError),
    ("checkpoint_every", 0, ValueError), ("num_threads", 0, ValueError), ("resume", "yes", ValueError),
    ("progress", "no", TypeError), ("seed", 2**64, ValueError), ("seed", -2**63 - 1, ValueError),
    ("seed", 1.0, TypeError), ("checkpoint", 3, TypeError),
])
def test_every_option_is_checked_before_the_first_step(option, value, error):
    model = Noisy()
    with pytest.raises(error, match=rf"fit: `{option}(\[\d\])?` must be .*; got ") as raised:
        fit(model, data(), **{**RUN, option: value})
    assert model.calls == 0
    got = str(raised.value).split("; got ")[-1]
    shown = value[0] if isinstance(value, tuple) else value  # a pair's error names its bad entry, betas[0]
    assert (type(shown).__name__ if error is TypeError else str(shown)[:8]) in got


def test_grad_clip_keeps_training_downhill():
    model = Noisy()
    result = fit(model, data(), **{**RUN, "steps": 60}, grad_clip=0.5, log_every=10)
    assert result.history[-1][1] < result.history[0][1]


# ----------------------------------------------------------------------------- seeds


def test_one_seed_domain():
    def weights(seed):
        torch.manual_seed(0)
        model = Noisy()
        fit(model, data(), **{**RUN, "seed": seed})
        return model.state_dict()

    assert equal_states(weights(-1), weights(2**64 - 1))  # taken modulo 2**64
    assert not equal_states(weights(0), weights(2**63))
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[-2\^63, 2\^64\); got 18446744073709551616"):
        fit(Noisy(), data(), **{**RUN, "seed": 2**64})  # not silently seed 0


# ----------------------------------------------------------------------------- checkpoint files


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "run.pt"
    fit(Noisy(), data(), **RUN, checkpoint=path)
    return path


def resume(path, **changes):
    return fit(Noisy(), data(), **{**RUN, "steps": 20, **changes}, checkpoint=path, lr_schedule="constant")


@pytest.mark.parametrize("where", [0, 25, 60, "middle", -1])
def test_a_flipped_byte_is_refused_with_the_path(written, where):
    raw = bytearray(written.read_bytes())
    i = len(raw) // 2 if where == "middle" else where
    raw[i] ^= 0x01
    written.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(written))}: (damaged|not a pyprobtf)"):
        resume(written)


@pytest.mark.parametrize("keep, reason", [(0, "the file is empty"), (0.5, "truncated"), (0.999, "truncated")])
def test_a_truncated_or_empty_file_is_refused(written, keep, reason):
    raw = written.read_bytes()
    written.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(written))}: {reason}"):
        resume(written)


def test_foreign_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(text))}: not a pyprobtf checkpoint"):
        resume(text)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(plain))}: a torch.save file without pyprobtf"):
        resume(plain)
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"format": "something/1"})
    with pytest.raises(CheckpointError, match=r"'something/1', not a 'pyprobtf.fit/2'"):
        resume(other)


def test_another_format_version_is_refused(written):
    raw = written.read_bytes()
    written.write_bytes(raw.replace(b"format 2 sha256", b"format 3 sha256", 1))
    with pytest.raises(CheckpointError, match=r"written in checkpoint format 3; this pyprobtf reads format 2"):
        resume(written)


@pytest.mark.parametrize("key", ["optimizer", "model", "step", "ema", "config"])
def test_a_missing_key_is_named(written, key):
    state = load_checkpoint(written)
    del state[key]
    save_checkpoint(written, state)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(written))}: missing key\(s\) \['{key}'\]"):
        resume(written)


@pytest.mark.parametrize("elapsed", [math.nan, math.inf, -1.0])
def test_a_bad_elapsed_cannot_disable_the_time_budget(written, elapsed):
    state = load_checkpoint(written)
    state["elapsed"] = elapsed
    save_checkpoint(written, state)
    with pytest.raises(CheckpointError, match=r"`elapsed` \(training seconds\) must be a finite number >= 0"):
        resume(written, max_seconds=1.0)


def test_a_resume_with_other_settings_is_refused_unless_forced(written):
    with pytest.raises(CheckpointError, match=r"other settings: seed 3 \(now 4\), batch_size 16 \(now 32\).*"
                                              r"resume='force'"):
        fit(Noisy(), data(), **{**RUN, "seed": 4, "batch_size": 32}, checkpoint=written)
    with pytest.raises(CheckpointError, match=r"grad_clip None \(now 1.0\)"):
        fit(Noisy(), data(), **RUN, grad_clip=1.0, checkpoint=written)
    with pytest.raises(CheckpointError, match=r"steps 12 \(now 20\)"):  # the cosine decay depends on it
        fit(Noisy(), data(), **{**RUN, "steps": 20}, checkpoint=written)
    model = Noisy()
    result = fit(model, data(), **{**RUN, "seed": 4, "steps": 20}, checkpoint=written, resume="force")
    assert result.steps == 20 and model.calls == 8
    # resume=False starts over.
    model = Noisy()
    assert fit(model, data(), **{**RUN, "seed": 4}, checkpoint=written, resume=False).steps == 12
    assert model.calls == 12


def test_an_unwritable_checkpoint_path_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    model = Noisy()
    with pytest.raises(ValueError, match=rf"`checkpoint` {re.escape(str(blocker))}/run.pt cannot be written"):
        fit(model, data(), **RUN, checkpoint=blocker / "run.pt")
    with pytest.raises(ValueError, match="is a directory"):
        fit(model, data(), **RUN, checkpoint=tmp_path)
    assert model.calls == 0


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"format": "pyprobtf.fit/2", "step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"format": "pyprobtf.fit/2", "step": 2, "bad": lambda: 0})  # cannot be pickled
    assert load_checkpoint(path)["step"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


# ----------------------------------------------------------------------------- exact resume with EMA


def test_ema_resumes_bit_for_bit_from_a_finished_run(tmp_path):
    """A finished run (the model holds the average) extended to more steps equals the longer run."""
    opts = {**RUN, "ema": 0.9, "lr_schedule": "constant", "warmup": 0}
    straight = Noisy()
    fit(straight, data(), **{**opts, "steps": 24})
    path = tmp_path / "ema.pt"
    first = Noisy()
    fit(first, data(), **opts, checkpoint=path)
    resumed = Noisy()
    fit(resumed, data(), **{**opts, "steps": 24}, checkpoint=path)
    assert equal_states(resumed.state_dict(), straight.state_dict())
    assert resumed.calls == 12


def test_ema_resumes_bit_for_bit_from_an_interrupted_run(tmp_path):
    opts = {**RUN, "ema": 0.95, "steps": 20}
    straight = Noisy()
    fit(straight, data(), **opts)
    path = tmp_path / "ema.pt"
    killed = Noisy()
    original = killed.loss
    killed.loss = lambda batch: original(batch) if killed.calls < 9 else (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, data(), **opts, checkpoint=path, checkpoint_every=3)
    assert load_checkpoint(path)["step"] == 9
    resumed = Noisy()
    fit(resumed, data(), **opts, checkpoint=path)
    assert equal_states(resumed.state_dict(), straight.state_dict())
