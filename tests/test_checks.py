"""pyprobtf._checks: every check accepts what it should, and refuses the rest with a TypeError (wrong type) or a
ValueError (wrong value) whose message names the function, the argument and what came."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyprobtf import _checks

WHERE, NAME = "f", "arg"
PREFIX = re.escape(f"{WHERE}: `{NAME}") + r"(\[\d+\])?` must "

reals = st.floats(allow_nan=False, allow_infinity=False, width=64)
not_numbers = st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.just(torch.tensor(1.0)), st.just(1 + 2j))


def refuses(error, check, *args, got=None, **kwargs):
    """``check(WHERE, NAME, *args)`` raises ``error`` naming the function and argument, and ``got`` after "got"."""
    with pytest.raises(error, match=PREFIX) as raised:
        check(WHERE, NAME, *args, **kwargs)
    message = str(raised.value)
    assert "; got " in message
    if got is not None:
        assert got in message.split("; got ", 1)[1], message
    return message


# ----------------------------------------------------------------------------- integer


@given(st.integers(-10**30, 10**30), st.integers(-50, 50), st.integers(0, 100))
def test_integer_accepts_ints_in_range_and_refuses_the_others(value, low, span):
    high = low + span
    for high_ in (None, high):
        inside = value >= low and (high_ is None or value <= high_)
        if inside:
            out = _checks.integer(WHERE, NAME, value, low, high_)
            assert out == value and type(out) is int
        else:
            expected = f">= {low}" if high_ is None else f"in [{low}, {high_}]"
            message = refuses(ValueError, _checks.integer, value, low, high_, got=str(value))
            assert expected in message


@pytest.mark.parametrize("value", [np.int64(3), np.int8(3), np.uint16(3)])
def test_integer_takes_numpy_integers(value):
    assert _checks.integer(WHERE, NAME, value, 0) == 3 and type(_checks.integer(WHERE, NAME, value, 0)) is int


@given(st.one_of(not_numbers, reals, st.just(np.float64(2.0))))
def test_integer_refuses_non_integers_and_bools_with_a_type_error(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return
    refuses(TypeError, _checks.integer, value, 0, got=type(value).__name__)


# ----------------------------------------------------------------------------- real


intervals = st.tuples(st.sampled_from([-math.inf, -1.0, 0.0, 0.5]), st.sampled_from([math.inf, 1.0, 2.0]),
                      st.booleans(), st.booleans())


@given(st.one_of(reals, st.integers(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf])), intervals,
       st.booleans())
def test_real_accepts_numbers_in_the_interval_and_refuses_the_others(value, interval, finite):
    low, high, low_open, high_open = interval
    v = float(value)
    inside = ((math.isfinite(v) or not finite and not math.isnan(v))
              and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
    kwargs = {"low_open": low_open, "high_open": high_open, "finite": finite}
    if inside:
        out = _checks.real(WHERE, NAME, value, low, high, **kwargs)
        assert out == v and type(out) is float
    else:
        message = refuses(ValueError, _checks.real, value, low, high, got=repr(v), **kwargs)
        assert ("a finite number" if finite else "a number") in message
        if low > -math.inf:
            assert f"{low:g}" in message


def test_real_states_the_interval():
    assert "must be a finite number; got nan" in refuses(ValueError, _checks.real, math.nan)
    assert "a finite number >= 0; got -1.0" in refuses(ValueError, _checks.real, -1, 0)
    assert "a finite number > 0; got 0.0" in refuses(ValueError, _checks.real, 0, 0, low_open=True)
    assert "a finite number in [0, 1); got 1.0" in refuses(ValueError, _checks.real, 1.0, 0, 1, high_open=True)
    assert "a finite number in (0, 1]; got 0.0" in refuses(ValueError, _checks.real, 0.0, 0, 1, low_open=True)
    assert "a finite number <= 1; got 2.0" in refuses(ValueError, _checks.real, 2.0, high=1)
    assert "must fit in a float64" in refuses(ValueError, _checks.real, 10**400)
    assert _checks.real(WHERE, NAME, math.inf, 0, finite=False) == math.inf
    assert "a number > 0; got nan" in refuses(ValueError, _checks.real, math.nan, 0, low_open=True, finite=False)
    assert "a number <= 1; got inf" in refuses(ValueError, _checks.real, math.inf, high=1, finite=False)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int32(1)])
def test_real_takes_numpy_numbers(value):
    assert _checks.real(WHERE, NAME, value, 0, 1) == float(value)


@given(not_numbers)
def test_real_refuses_non_numbers_and_bools_with_a_type_error(value):
    refuses(TypeError, _checks.real, value, got=type(value).__name__)
    refuses(TypeError, _checks.positive_finite, value, got=type(value).__name__)


@given(st.one_of(reals, st.sampled_from([math.nan, math.inf, -math.inf, 0, 3])))
def test_positive_finite(value):
    if math.isfinite(value) and value > 0:
        assert _checks.positive_finite(WHERE, NAME, value) == float(value)
    else:
        refuses(ValueError, _checks.positive_finite, value, got=str(float(value)))


def test_as_float():
    assert _checks.as_float(WHERE, NAME, 3) == 3.0 and type(_checks.as_float(WHERE, NAME, 3)) is float
    with pytest.raises(ValueError, match=r"f: `arg` must fit in a float64 .*got an integer of 1329 bits"):
        _checks.as_float(WHERE, NAME, 10**400)


# ----------------------------------------------------------------------------- boolean, choice, callable, module


@given(st.one_of(st.booleans(), not_numbers, st.integers(0, 1), st.just(np.bool_(True))))
def test_boolean_takes_only_true_and_false(value):
    if value is True or value is False:
        assert _checks.boolean(WHERE, NAME, value) is value
    else:
        refuses(TypeError, _checks.boolean, value, got=type(value).__name__)


@given(st.one_of(st.sampled_from(["a", "b", None]), st.text(max_size=2), st.integers(), not_numbers))
def test_choice(value):
    choices = ("a", "b", None)
    if isinstance(value, str) and value in choices or value is None:
        assert _checks.choice(WHERE, NAME, value, choices) == value
    else:
        message = refuses(ValueError, _checks.choice, value, choices)
        assert "one of ('a', 'b', None)" in message


def test_choice_of_a_tensor_is_a_value_error():
    refuses(ValueError, _checks.choice, torch.zeros(3), ("a",), got="tensor")


@given(st.one_of(not_numbers, st.integers()))
def test_callable_and_module_refuse_other_objects(value):
    if callable(value):
        return
    message = refuses(TypeError, _checks.callable_, value, "f(x, t)", got=type(value).__name__)
    assert "a callable f(x, t)" in message
    refuses(TypeError, _checks.module, value, got=type(value).__name__)


def test_callable_and_module_accept_theirs():
    net = torch.nn.Linear(2, 2)
    assert _checks.callable_(WHERE, NAME, len) is len and _checks.callable_(WHERE, NAME, net) is net
    assert _checks.module(WHERE, NAME, net) is net
    refuses(TypeError, _checks.module, len, got="builtin_function_or_method")


# ----------------------------------------------------------------------------- optional, sequence, shape


def test_optional_passes_none_and_adds_or_none_to_the_errors():
    assert _checks.optional(_checks.real, WHERE, NAME, None, 0) is None
    assert _checks.optional(_checks.real, WHERE, NAME, 2, 0) == 2.0
    optional_real = lambda w, n, v: _checks.optional(_checks.real, w, n, v, 0)  # noqa: E731
    assert "a finite number >= 0 or None; got -1.0" in refuses(ValueError, optional_real, -1)
    refuses(TypeError, optional_real, "1", got="str")
    message = refuses(TypeError, lambda w, n, v: _checks.optional(_checks.module, w, n, v), "x", got="str")
    assert "torch.nn.Module or None; got str" in message


@given(st.one_of(st.lists(st.integers(-3, 3), max_size=4), st.tuples(st.integers(0, 3), st.floats(0, 1)),
                 not_numbers, st.integers()))
def test_sequence(value):
    item = lambda w, n, v: _checks.integer(w, n, v, 0)  # noqa: E731
    if not isinstance(value, (list, tuple)):
        refuses(TypeError, _checks.sequence, value, item, got=type(value).__name__)
        return
    bad = [i for i, v in enumerate(value) if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
    if len(value) != 2:
        refuses(ValueError, _checks.sequence, value, item, length=2, got=str(len(value)))
    if bad:
        with pytest.raises((TypeError, ValueError), match=re.escape(f"f: `arg[{bad[0]}]` must be ")):
            _checks.sequence(WHERE, NAME, value, item)
    else:
        assert _checks.sequence(WHERE, NAME, value, item) == tuple(value)
    if len(value) < 3:
        refuses(ValueError, _checks.sequence, value, min_len=3, got=str(len(value)))


@given(st.one_of(st.integers(-2, 5), st.lists(st.integers(-1, 4), max_size=4), st.just(torch.Size([1, 2])),
                 st.lists(st.sampled_from([1, 2.0, True, "3"]), min_size=1, max_size=3), not_numbers))
def test_shape(value):
    ints = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(ints, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                      for d in ints):
        refuses(TypeError, _checks.shape, value)
    elif not ints or min(ints) < 1:
        message = refuses(ValueError, _checks.shape, value, got=repr(tuple(ints)))
        assert "a non-empty tuple of positive ints" in message
    else:
        assert _checks.shape(WHERE, NAME, value) == tuple(ints)


# ----------------------------------------------------------------------------- tensors


def test_tensor_and_same_as():
    x = torch.zeros(2, 3)
    assert _checks.tensor(WHERE, NAME, x, min_dim=2) is x
    refuses(TypeError, _checks.tensor, [1.0], got="list")
    refuses(TypeError, _checks.tensor, x.long(), got="torch.int64")
    refuses(ValueError, _checks.tensor, torch.zeros(()), min_dim=1, got="shape ()")
    assert _checks.same_as(WHERE, NAME, x.clone(), "x", x).shape == (2, 3)
    refuses(TypeError, _checks.same_as, 1.0, "x", x, got="float")
    refuses(ValueError, _checks.same_as, torch.zeros(3, 2), "x", x, got="(3, 2)")
    refuses(TypeError, _checks.same_as, x.double(), "x", x, got="torch.float64")


# ----------------------------------------------------------------------------- one vocabulary

ROOT = Path(__file__).resolve().parents[1] / "pyprobtf"
#: the private check helpers the solvers, families, transform and fit used to carry; pyprobtf._checks replaced them
REMOVED = ["def check_int(", "def check_real(", "def check_choice(", "def check_module(", "def check_steps(",
           "def check_net(", "def check_callable(", "def check_state(", "def _check_count(", "def _check_int(",
           "def _check_real(", "def is_real(", "def real(", "def integer(", "_common.real(", "_common.integer(",
           "_common.is_real(", "ops import _validate", "ops._validate"]


def test_no_private_copies_of_the_checks_come_back():
    files = sorted((ROOT / "solvers").glob("*.py")) + sorted((ROOT / "families").glob("*.py")) + [
        ROOT / "transform.py", ROOT / "training.py"]
    found = [f"{path.relative_to(ROOT.parent)}: {needle}" for path in files for needle in REMOVED
             if needle in path.read_text()]
    assert not found, "use pyprobtf._checks instead: " + "; ".join(found)
    # and the hand-written "not a bool, an Integral / a Real" test has one home
    pattern = re.compile(r"isinstance\([^)]*numbers\.(Integral|Real)\)[^\n]*bool|bool\)[^\n]*numbers\.(Integral|Real)")
    found = [str(path.relative_to(ROOT.parent)) for path in files if pattern.search(path.read_text())]
    assert not found, "use pyprobtf._checks.is_integer / is_real / integer / real instead: " + ", ".join(found)
