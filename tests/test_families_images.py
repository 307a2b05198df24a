"""The ODE families (FlowMatching, Diffusion, ContinuousFlow) and RealNVP with networks written here, on
vectors and on (1, 8, 8) images: the network protocols are what the families call; bad input; classifier-free
guidance; the UNet on a few sizes."""

import math

import pytest
import torch
from torch import nn

from pyprobtf import families as fam
from pyprobtf.nn import UNet

VECTOR, IMAGE = (3,), (1, 8, 8)


class VectorNet(nn.Module):
    """net(x, t, context=None) for vectors: an MLP on [x, t, label embedding]; records what it was called with."""

    def __init__(self, dim, num_classes=0):
        super().__init__()
        self.labels = nn.Embedding(num_classes + 1, 4) if num_classes else None
        self.body = nn.Sequential(nn.Linear(dim + 1 + (4 if num_classes else 0), 32), nn.SiLU(), nn.Linear(32, dim))
        self.calls = []

    def forward(self, x, t, context=None):
        self.calls.append((tuple(x.shape), tuple(t.shape), None if context is None else context.dtype))
        parts = [x, t[:, None]] + ([self.labels(context)] if context is not None else [])
        return self.body(torch.cat(parts, 1))


class ConvNet(nn.Module):
    """net(x, t, context=None) for (C, H, W) images: two convs, the time (and label) added as a channel bias."""

    def __init__(self, channels, num_classes=0):
        super().__init__()
        self.labels = nn.Embedding(num_classes + 1, 8) if num_classes else None
        self.time = nn.Linear(1, 8)
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, channels, 3, padding=1)
        self.calls = []

    def forward(self, x, t, context=None):
        self.calls.append((tuple(x.shape), tuple(t.shape), None if context is None else context.dtype))
        emb = self.time(t[:, None])
        if context is not None:
            emb = emb + self.labels(context)
        return self.conv2(torch.nn.functional.silu(self.conv1(x) + emb[:, :, None, None]))


def make_net(shape, num_classes=0):
    return VectorNet(shape[0], num_classes) if len(shape) == 1 else ConvNet(shape[0], num_classes)


ODE_FAMILIES = {
    "FlowMatching": lambda shape, net, **kw: fam.FlowMatching(event_shape=shape, net=net, ode_steps=4, **kw),
    "Diffusion-edm": lambda shape, net, **kw: fam.Diffusion(event_shape=shape, net=net, ode_steps=4, **kw),
    "Diffusion-vp": lambda shape, net, **kw: fam.Diffusion(event_shape=shape, net=net, parameterization="vp",
                                                           ode_steps=4, **kw),
    "ContinuousFlow": lambda shape, net, **kw: fam.ContinuousFlow(event_shape=shape, net=net, ode_steps=4,
                                                                  train_steps=2, **kw),
}


def data(shape, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.2 * torch.randn(n, *shape, generator=g)


def train(model, batch, steps=15, lr=3e-3):
    model.initialize(batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("shape", [VECTOR, IMAGE], ids=["vector", "image"])
@pytest.mark.parametrize("name", list(ODE_FAMILIES))
def test_ode_family_trains_and_samples_with_a_user_network(name, shape):
    torch.manual_seed(0)
    net = make_net(shape)
    model = ODE_FAMILIES[name](shape, net)
    x = data(shape)
    losses = train(model, x)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-5:]) < losses[0]  # the user's network is what is trained
    # The protocol: x of shape (B, *event_shape), t a (B,) tensor, no context.
    assert net.calls and all(c[0] == (64, *shape) and c[1] == (64,) and c[2] is None for c in net.calls)
    samples = model.sample(5, seed=1)
    assert samples.shape == (5, *shape) and torch.isfinite(samples).all()
    assert torch.equal(samples, model.sample(5, seed=1))
    lp = model.log_prob(x[:4], steps=4)
    assert lp.shape == (4,) and torch.isfinite(lp).all()


class LinearField(nn.Module):
    """v(x, t) = a x: F(z) = z e^a, so log p(x) = log N(x e^-a; 0, I) - a * dim exactly (and a Rademacher
    Hutchinson estimate of div v = a * dim is exact too)."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))

    def forward(self, x, t, context=None):
        return self.a * x


def test_image_log_prob_by_the_ode_with_hutchinson_divergence():
    model = fam.FlowMatching(event_shape=IMAGE, net=LinearField(0.3), log_prob_steps=8)
    assert model.divergence == "hutchinson"
    x = data(IMAGE, 5)
    z = x * math.exp(-0.3)
    expected = -0.5 * z.flatten(1).square().sum(1) - 32 * math.log(2 * math.pi) - 0.3 * 64
    assert torch.allclose(model.log_prob(x), expected, rtol=1e-4, atol=1e-3)
    z0 = torch.randn(3, *IMAGE)
    assert torch.allclose(model.transform(z0), z0 * math.exp(0.3), rtol=1e-4)


@pytest.mark.parametrize("shape", [VECTOR, IMAGE], ids=["vector", "image"])
@pytest.mark.parametrize("name", ["FlowMatching", "Diffusion-edm", "Diffusion-vp"])
def test_class_conditional_training_and_guidance(name, shape):
    torch.manual_seed(0)
    net = make_net(shape, num_classes=3)
    model = ODE_FAMILIES[name](shape, net, num_classes=3, context_dropout=0.3)
    x, labels = data(shape, 48), torch.arange(48) % 3
    train(model, (x, labels), steps=5)
    # Dropped rows carry the null label num_classes (= 3), which the network embeds.
    assert any(c[2] == torch.int64 for c in net.calls)
    for w in (0.0, 1.0, 2.5):
        s = model.sample(4, seed=2, context=1, guidance=w)
        assert s.shape == (4, *shape) and torch.isfinite(s).all()
    # guidance=1 is the conditional model itself (one pass per step, the same samples).
    assert torch.allclose(model.sample(4, seed=2, context=1, guidance=1.0), model.sample(4, seed=2, context=1))
    # The mix, on the network's output: w=0 is the unconditional (null-label) output, w the extrapolation.
    xs, t, c = data(shape, 4, seed=3), torch.full((4,), 0.5), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = net(xs, t, c), net(xs, t, torch.full_like(c, 3))
        assert torch.allclose(model.net_output(xs, t, c, 0.0), uncond, atol=1e-6)
        assert torch.allclose(model.net_output(xs, t, c, 1.0), cond, atol=1e-6)
        assert torch.allclose(model.net_output(xs, t, c, 2.5), uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_guidance_with_a_context_vector_uses_zeros_as_null():
    seen = []

    def net(x, t, context=None):
        seen.append(context.clone())
        return x * 0 + context.sum(1, keepdim=True)

    model = fam.FlowMatching(dim=2, net=net, context_dim=3, context_dropout=0.5)
    out = model.net_output(torch.zeros(2, 2), 0.5, torch.ones(2, 3), 3.0)
    assert torch.equal(seen[-1][2:], torch.zeros(2, 3))
    assert torch.allclose(out, torch.full((2, 2), 9.0))  # 0 + 3 (3 - 0)


def test_guidance_errors():
    model = fam.FlowMatching(event_shape=VECTOR, net=make_net(VECTOR, 2), num_classes=2)
    with pytest.raises(ValueError, match="context_dropout"):
        model.sample(2, context=0, guidance=2.0)
    with pytest.raises(TypeError, match="`guidance`"):
        model.sample(2, context=0, guidance="strong")
    with pytest.raises(ValueError, match="context_dropout"):
        fam.FlowMatching(dim=2, context_dropout=0.1)
    with pytest.raises(ValueError, match="context_dropout"):
        fam.Diffusion(dim=2, num_classes=3, context_dropout=1.5)


class WrongShapeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, context=None):
        return x.flatten(1)[:, :5] * self.w


@pytest.mark.parametrize("name", list(ODE_FAMILIES))
def test_network_of_the_wrong_shape_is_named_at_the_first_call(name):
    model = ODE_FAMILIES[name](IMAGE, WrongShapeNet())
    msg = r"`net` returned shape \(4, 5\); expected \(4, 1, 8, 8\)"
    with pytest.raises(ValueError, match=msg):
        model.loss(data(IMAGE, 4))
    with pytest.raises(ValueError, match=msg):
        model.sample(4)


@pytest.mark.parametrize("name", list(ODE_FAMILIES))
def test_bad_data_and_context(name):
    model = ODE_FAMILIES[name](IMAGE, make_net(IMAGE, 3), num_classes=3)
    with pytest.raises(ValueError, match=r"must have shape \(batch, 1, 8, 8\).*got \(4, 64\)"):
        model.loss((torch.rand(4, 64), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(TypeError, match="integer class labels"):
        model.loss((data(IMAGE, 4), torch.zeros(4)))
    with pytest.raises(TypeError, match="`net` must be a callable"):
        ODE_FAMILIES[name](IMAGE, "unet")


def test_default_networks_follow_the_event_shape():
    from pyprobtf.nn import TimeMLP
    assert isinstance(fam.FlowMatching(dim=2).net, TimeMLP)
    assert isinstance(fam.FlowMatching(event_shape=(1, 8, 8)).net, UNet)
    model = fam.Diffusion(event_shape=(1, 8, 8), num_classes=10, context_dropout=0.1)
    assert isinstance(model.net, UNet) and model.net.labels.num_embeddings == 11
    assert fam.Diffusion(event_shape=(1, 8, 8)).fit_defaults["batch_size"] == 128


@pytest.mark.parametrize("shape,channels", [((1, 8, 8), (8, 16)), ((3, 12, 20), (8, 16, 16)), ((2, 16, 16), (8,))])
def test_unet_sizes_and_context(shape, channels):
    x = torch.randn(2, *shape)
    for kw, context in (({}, None), ({"num_classes": 4}, torch.tensor([0, 3])),
                        ({"context_dim": 5}, torch.randn(2, 5))):
        net = UNet(shape[0], channels=channels, **kw)
        out = net(x, torch.rand(2), context)
        assert out.shape == x.shape and (out == 0).all()  # the output conv starts at zero
        nn.init.normal_(net.out.weight)
        t = torch.tensor([0.2, 0.7])
        out = net(x, t, context)
        out.square().sum().backward()
        assert out.abs().sum() > 0 and net.stem.weight.grad.abs().sum() > 0
        if context is not None:  # the context reaches the output
            other = net(x, t, context.flip(0))
            assert not torch.allclose(out, other)


def test_unet_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, channels=(8, 8, 8))(torch.randn(1, 1, 6, 6), 0.5)
    with pytest.raises(ValueError, match="`channels`"):
        UNet(1, channels=())
    with pytest.raises(ValueError, match="not both"):
        UNet(1, num_classes=2, context_dim=3)


# ---------------------------------------------------------------------- RealNVP on images


class Conditioner(nn.Module):
    """A scale/shift network written here: conv -> tanh -> conv, (B, c_in, h, w) -> (B, c_out, h, w)."""

    built = []

    def __init__(self, c_in, c_out):
        super().__init__()
        Conditioner.built.append((c_in, c_out))
        self.body = nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, c_out, 3, padding=1))

    def forward(self, h):
        return 0.1 * self.body(h)


@pytest.mark.parametrize("factor_out", [True, False])
def test_realnvp_multiscale_with_a_user_conditioner(factor_out):
    torch.manual_seed(0)
    Conditioner.built.clear()
    model = fam.RealNVP(event_shape=IMAGE, conditioner=Conditioner, factor_out=factor_out)
    # 3 checkerboard couplings on (1, 8, 8), 3 channel-wise on the squeezed (4, 4, 4), 4 checkerboard at the end.
    final_channels = 2 if factor_out else 4
    assert Conditioner.built == [(1, 2)] * 3 + [(2, 4)] * 3 + [(final_channels, 2 * final_channels)] * 4
    x = data(IMAGE)
    losses = train(model, x, steps=10)
    assert all(math.isfinite(v) for v in losses) and min(losses[-3:]) < losses[0]
    with torch.no_grad():
        z, ladj = model.inverse_and_ladj(x)
        back, fwd = model.transform_and_ladj(z)
    assert z.shape == x.shape and torch.allclose(back, x, atol=1e-5) and torch.allclose(ladj, -fwd, atol=1e-3)
    s = model.sample(4, seed=0)
    assert s.shape == (4, *IMAGE) and torch.isfinite(s).all()


def test_realnvp_image_log_determinant_is_the_jacobians():
    torch.manual_seed(1)
    model = fam.RealNVP(event_shape=(2, 4, 4), checkerboard=2, channel=2, final=2).double()
    model.initialize(torch.rand(16, 2, 4, 4, dtype=torch.float64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.inverse(v.reshape(1, 2, 4, 4)).reshape(32),
                                             x.reshape(32))
    assert torch.allclose(model.inverse_and_ladj(x)[1], torch.logdet(jac), atol=1e-8)


def test_realnvp_image_errors():
    def wrong(c_in, c_out):
        return nn.Conv2d(c_in, c_out + 1, 3, padding=1)

    model = fam.RealNVP(event_shape=IMAGE, conditioner=wrong)
    with pytest.raises(ValueError, match=r"`conditioner` returned shape \(4, 3, 8, 8\); expected \(4, 2, 8, 8\)"):
        model.loss(data(IMAGE, 4))
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* \\(levels - 1\\) = 4"):
        fam.RealNVP(event_shape=(1, 6, 6), levels=3)
    with pytest.raises(TypeError, match="`conditioner` must be a callable factory"):
        fam.RealNVP(event_shape=IMAGE, conditioner=3)
    with pytest.raises(ValueError, match=r"must have shape \(batch, 1, 8, 8\)"):
        fam.RealNVP(event_shape=IMAGE).log_prob(torch.rand(3, 8, 8))
