"""pyprobtf.integrations.torchdiffeq against torchdiffeq itself, on the same inputs and field."""

import math

import pytest
import torch

torchdiffeq = pytest.importorskip("torchdiffeq")
from pyprobtf.integrations import torchdiffeq as ours  # noqa: E402

# Float32 rounding of differently ordered stage sums; worst seen about 3e-7 relative.
ATOL, RTOL = 1e-5, 1e-5


class Recorder:
    """A field that records the times it is called at (the step sequence) and counts its evaluations."""

    def __init__(self, field):
        self.field, self.times = field, []

    def __call__(self, t, y):
        self.times.append(float(t))
        return self.field(t, y)


def stiffish(t, y):
    """A linear system with rates 1 and 40 and a forcing: the step size is limited by stability."""
    a = torch.tensor([[-1.0, 0.5], [0.0, -40.0]], dtype=y.dtype)
    return y @ a.T + torch.sin(3.0 * t)


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 1.0 * (1 - x * x) * v - x], -1)


FIXED_CASES = [
    ("euler", {"step_size": 0.05}),
    ("midpoint", {"step_size": 0.07}),
    ("rk4", {"step_size": 0.1}),
    ("rk4", {"step_size": 0.1, "interp": "cubic"}),
    ("rk4", {}),
    ("midpoint", {"grid_constructor": lambda f, y0, t: torch.linspace(float(t[0]), float(t[-1]), 23)}),
]


@pytest.mark.parametrize("method,options", FIXED_CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_fixed_grid_methods_match_torchdiffeq(method, options, reverse):
    y0 = torch.randn(6, 2).clamp(-2, 2)
    t = torch.linspace(0.0, 2.0, 9)
    if reverse:
        t = t.flip(0)
    a, b = Recorder(van_der_pol), Recorder(van_der_pol)
    want = torchdiffeq.odeint(a, y0, t, method=method, options=dict(options))
    got = ours.odeint(b, y0, t, method=method, options=dict(options))
    assert got.shape == want.shape == (9, 6, 2)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert len(b.times) == len(a.times)


@pytest.mark.parametrize("rtol,atol", [(1e-7, 1e-9), (1e-4, 1e-6), (1e-3, 1e-3)])
@pytest.mark.parametrize("field,shape", [(stiffish, (2,)), (van_der_pol, (16, 2))])
def test_dopri5_takes_torchdiffeq_steps(field, shape, rtol, atol):
    """In float64 (rounding far below the tolerances): the same evaluations at the same times."""
    y0 = (torch.ones(shape) * torch.tensor([1.5, -0.5])).double()
    t = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=torch.float64)
    a, b = Recorder(field), Recorder(field)
    want = torchdiffeq.odeint(a, y0, t, rtol=rtol, atol=atol)
    got = ours.odeint(b, y0, t, rtol=rtol, atol=atol)
    # the same number of function evaluations at the same times: the same accepted and rejected steps
    assert len(b.times) == len(a.times)
    assert max(abs(x - y) for x, y in zip(a.times, b.times)) < 1e-7  # worst seen 4e-9 (t up to 2.5)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("field,shape", [(stiffish, (2,)), (van_der_pol, (16, 2))])
def test_dopri5_float32_stays_close_to_torchdiffeq(field, shape):
    """In float32 the error estimate carries rounding noise (differently ordered sums): a borderline step
    may flip between accepted and rejected, so the evaluation counts agree within a few percent."""
    y0 = torch.ones(shape) * torch.tensor([1.5, -0.5])
    t = torch.tensor([0.0, 0.3, 1.0, 2.5])
    a, b = Recorder(field), Recorder(field)
    want = torchdiffeq.odeint(a, y0, t, rtol=1e-4, atol=1e-6)
    got = ours.odeint(b, y0, t, rtol=1e-4, atol=1e-6)
    assert abs(len(b.times) - len(a.times)) <= 0.05 * len(a.times)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)  # both within the requested tolerance


def test_dopri5_rejects_steps_like_torchdiffeq():
    """A too-large first step on the stiff problem is rejected; both solvers reject the same ones."""
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a, b = Recorder(stiffish), Recorder(stiffish)
    options = {"first_step": 0.5}
    want = torchdiffeq.odeint(a, y0, t, rtol=1e-5, atol=1e-7, options=dict(options))
    got = ours.odeint(b, y0, t, rtol=1e-5, atol=1e-7, options=dict(options))
    assert len(a.times) == len(b.times)
    assert max(abs(x - y) for x, y in zip(a.times, b.times)) < 1e-9
    retries = sum(1 for x, y in zip(b.times[:-1], b.times[1:]) if y < x - 1e-12)  # a retry goes back in time
    assert retries >= 2  # rejections happened
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_tuple_state_and_decreasing_times():
    def field(t, state):
        x, v = state
        return v, -x - 0.1 * v

    y0 = (torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [1.0]]).reshape(2))
    t = torch.linspace(3.0, 0.0, 4)
    want = torchdiffeq.odeint(field, y0, t, rtol=1e-6, atol=1e-8)
    got = ours.odeint(field, y0, t, rtol=1e-6, atol=1e-8)
    for g, w in zip(got, want):
        assert g.shape == w.shape == (4, 2)
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL)


def test_exact_solution_of_a_linear_ode():
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    y0 = torch.ones(3, dtype=torch.float64)
    ys = ours.odeint(lambda t, y: -2.0 * y, y0, t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ys, torch.exp(-2.0 * t)[:, None].expand(5, 3), atol=1e-9, rtol=1e-9)


def test_odeint_is_differentiable_and_adjoint_gradients_match_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y) * (1.0 + 0.5 * torch.sin(t))

    field = Field()
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)

    def grads(solve):
        field.zero_grad()
        y0.grad = None
        ys = solve(field, y0, t, rtol=1e-9, atol=1e-11)
        (ys[1].sin().sum() + ys[-1].pow(2).sum()).backward()
        return [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    direct = grads(ours.odeint)  # autograd through the fused steps
    adjoint = grads(ours.odeint_adjoint)
    peer = grads(torchdiffeq.odeint_adjoint)
    for a, b, c in zip(adjoint, direct, peer):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)


def test_other_methods_are_handed_to_torchdiffeq():
    y0, t = torch.ones(2), torch.linspace(0, 1, 3)
    torch.testing.assert_close(ours.odeint(lambda t, y: -y, y0, t, method="bosh3"),
                               torchdiffeq.odeint(lambda t, y: -y, y0, t, method="bosh3"))
    with pytest.raises(ValueError, match="Invalid method"):
        ours.odeint(lambda t, y: -y, y0, t, method="nope")


def test_bad_times_are_rejected():
    with pytest.raises(ValueError, match="`t`"):
        ours.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0, 0.5]))
    assert math.isfinite(float(ours.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))[-1, 0]))
