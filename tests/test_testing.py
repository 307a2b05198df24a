"""pyprobtf.testing: the helpers other tests rely on must themselves be right."""

import pytest
import torch
from hypothesis import given

from pyprobtf.testing import LAYOUTS, assert_close, batch_shapes, make_tensor


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_make_tensor_layouts_hold_the_same_values(layout, dtype):
    ref = make_tensor((4, 3, 5), dtype, "contiguous", seed=3)
    t = make_tensor((4, 3, 5), dtype, layout, seed=3)
    assert torch.equal(t, ref)
    assert t.is_contiguous() == (layout in ("contiguous", "offset"))
    assert (t.storage_offset() > 0) == (layout in ("offset", "sliced"))


@given(shape=batch_shapes())
def test_batch_shapes_are_valid(shape):
    assert len(shape) >= 1 and all(s >= 0 for s in shape)


def test_assert_close_reports_the_worst_element():
    expected = torch.tensor([1.0, 2.0, 3.0])
    assert_close(expected + 1e-7, expected, rtol=1e-6, atol=0)
    with pytest.raises(AssertionError, match=r"1 of 3 elements.*worst at \(1,\): got 2.09"):
        assert_close(torch.tensor([1.0, 2.1, 3.0]), expected, rtol=1e-3, atol=0)
    with pytest.raises(AssertionError, match="NaN pattern differs"):
        assert_close(torch.tensor([1.0, float("nan"), 3.0]), expected, rtol=1, atol=1)
    # A scale larger than |expected| widens the bound (for sums that cancel).
    assert_close(torch.tensor([1e-3]), torch.tensor([0.0]), rtol=1e-3, atol=0, scale=torch.tensor([2.0]))
