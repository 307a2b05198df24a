"""The decoder families with the user's own networks, on vectors and on (1, 8, 8) images.

Every network here is written in this file (not taken from pyprobtf.nn): the families must call them
through their documented protocols. Each family trains a few steps and samples; bad networks, data
and contexts give errors naming what is wrong. The training loop is a plain one (initialize, then
optimizer steps on ``model.loss``), so these tests depend on the families alone.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyprobtf.families import (GAN, VAE, VQVAE, Autoencoder, Autoregressive, DiscriminatorFlow, FlowMatching,
                               Latent, ScoreGAN)
from pyprobtf.families._latent import Standardizer

SHAPES = [(3,), (1, 8, 8)]
SHAPE_IDS = ["vector", "image"]


# ----------------------------------------------------------------------------- networks written here


class Encoder(nn.Module):
    """``x (B, *shape) -> heads`` tensors of ``(B, *out)`` (one tensor for ``heads=1``); a convolution for images."""

    def __init__(self, shape, out, heads=1):
        super().__init__()
        self.out, self.heads = tuple(out), heads
        n_out = heads * math.prod(out)
        if len(shape) == 3:
            self.body = nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(4 * shape[1] * shape[2], n_out))
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 16), nn.ReLU(), nn.Linear(16, n_out))

    def forward(self, x):
        out = self.body(x).reshape(x.shape[0], self.heads, *self.out)
        return out[:, 0] if self.heads == 1 else tuple(out.unbind(1))


class Decoder(nn.Module):
    """``z (B, *latent) -> (B, *shape)``; images end with a convolution."""

    def __init__(self, latent, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(latent), 16), nn.ReLU(),
                                  nn.Linear(16, math.prod(shape)))
        self.conv = nn.Conv2d(shape[0], shape[0], 3, padding=1) if len(shape) == 3 else nn.Identity()

    def forward(self, z):
        return self.conv(self.body(z).reshape(z.shape[0], *self.shape))


class StepCritic(nn.Module):
    """DiscriminatorFlow's protocol: ``(x, k) -> (B,)`` logits, the step ``k`` embedded."""

    def __init__(self, shape, steps):
        super().__init__()
        self.trunk = Encoder(shape, (8,))
        self.step = nn.Embedding(steps, 8)

    def forward(self, x, k):
        return (torch.tanh(self.trunk(x)) * self.step(k)).sum(1)


class CausalConv(nn.Module):
    """Autoregressive's protocol: tokens ``(B, L)`` in ``[0, V]`` -> logits ``(B, L, V)``; a left-padded conv
    sees only the current and earlier positions."""

    def __init__(self, vocab, width=16, out=None):
        super().__init__()
        self.embed = nn.Embedding(vocab + 1, width)
        self.conv = nn.Conv1d(width, width, 3)
        self.head = nn.Linear(width, vocab if out is None else out)

    def forward(self, tokens):
        h = F.pad(self.embed(tokens).transpose(1, 2), (2, 0))
        return self.head(torch.relu(self.conv(h)).transpose(1, 2))


def _data(shape, n=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen)


def _train(model, x, steps=3, lr=1e-3):
    """A plain training loop: data-dependent initialisation, then Adam steps on the family's loss."""
    torch.manual_seed(0)
    model.initialize(x[:64])
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for step in range(steps):
        batch = x[(torch.arange(32) + 32 * step) % x.shape[0]]
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    return before, params


def _moved(net, before, params):
    """Whether training changed some parameter of ``net`` (it was called and reached by gradients)."""
    ids = {id(p) for p in net.parameters()}
    return any(id(p) in ids and not torch.equal(p.detach(), b) for p, b in zip(params, before))


# ----------------------------------------------------------------------------- every family on the user's networks


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_vae_and_autoencoder_train_and_sample_with_user_networks(shape):
    latent = (4,)
    vae = VAE(event_shape=shape, encoder=Encoder(shape, latent, heads=2), decoder=Decoder(latent, shape))
    assert vae.latent_shape == latent  # read off the encoder
    before, params = _train(vae, _data(shape))
    assert _moved(vae.encoder, before, params) and _moved(vae.decoder, before, params)
    assert vae.sample(5, seed=0).shape == (5, *shape)
    x = _data(shape, 4, seed=1)
    bound = vae.log_prob(x, n_samples=8)
    assert bound.shape == (4,) and torch.isfinite(bound).all()
    assert vae.reconstruct(x).shape == x.shape

    ae = Autoencoder(event_shape=shape, encoder=Encoder(shape, latent), decoder=Decoder(latent, shape))
    before, params = _train(ae, _data(shape))
    assert _moved(ae.encoder, before, params) and _moved(ae.decoder, before, params)
    assert ae.sample(5, seed=0).shape == (5, *shape) and ae.encode(x).shape == (4, *latent)


def test_a_map_latent_is_kept_channel_first():
    shape, latent = (1, 8, 8), (2, 2, 2)
    enc = Encoder(shape, latent, heads=2)
    vae = VAE(event_shape=shape, encoder=enc, decoder=Decoder(latent, shape))
    assert vae.latent_shape == latent and vae.base.sample((3,)).shape == (3, *latent)
    _train(vae, _data(shape), steps=2)
    assert vae.sample(3, seed=0).shape == (3, *shape)
    ae = Autoencoder(event_shape=shape, encoder=Encoder(shape, latent), decoder=Decoder(latent, shape))
    _train(ae, _data(shape), steps=2)
    assert ae.base.sample((3,)).shape == (3, *latent) and ae.sample(3, seed=0).shape == (3, *shape)
    # the image defaults reach a map latent's resolution with as many levels as it takes
    default = VAE(event_shape=shape, latent_shape=latent)
    assert default.base.sample((2,)).shape == (2, *latent) and default.sample(2, seed=0).shape == (2, *shape)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gan_trains_and_samples_with_user_networks(shape):
    latent = (5,)
    gen, disc = Decoder(latent, shape), Encoder(shape, (1,))  # (B, 1) logits are accepted
    model = GAN(event_shape=shape, generator=gen, discriminator=disc, latent_shape=latent)
    before, params = _train(model, _data(shape))
    assert _moved(gen, before, params) and _moved(disc, before, params)
    assert model.sample(6, seed=0).shape == (6, *shape)
    assert model.logit(_data(shape, 3)).shape == (3,)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_vqvae_quantizes_a_user_code_map_per_position(shape):
    code = (3, 2) if len(shape) == 1 else (3, 2, 2)  # (code_dim, *spatial), channel-first
    model = VQVAE(event_shape=shape, encoder=Encoder(shape, code), decoder=Decoder(code, shape), num_codes=8,
                  prior_d_model=16, prior_heads=2, prior_layers=1)
    assert model.code_shape == code and model.slots == math.prod(code[1:])
    before, params = _train(model, _data(shape))
    assert _moved(model.encoder, before, params) and _moved(model.decoder, before, params)
    x = _data(shape, 5, seed=2)
    idx = model.encode(x)
    assert idx.shape == (5, model.slots) and int(idx.max()) < 8
    # the decoder sees the chosen codebook entries, channel-first, at their positions
    codes = model.vq.embed(idx.reshape(5, *code[1:])).movedim(-1, 1)
    assert torch.allclose(model.decode_indices(idx), model.scaler.inverse(model.decoder(codes)))
    assert model.sample(4, seed=0).shape == (4, *shape)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_autoregressive_runs_a_user_causal_net_over_the_flattened_event(shape):
    net = CausalConv(vocab=5)
    model = Autoregressive(event_shape=shape, net=net, bins=5, bounds=(0.0, 1.0))
    before, params = _train(model, _data(shape), lr=1e-2)
    assert _moved(net, before, params)
    x = model.sample(6, seed=0)
    assert x.shape == (6, *shape) and ((x >= 0) & (x < 1)).all()
    lp = model.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    # exact: a token model over 3 values sums to 1 over all 5^3 sequences
    if len(shape) == 1:
        tokens = Autoregressive(3, vocab_size=5, net=CausalConv(vocab=5))
        grid = torch.cartesian_prod(*[torch.arange(5.0)] * 3)
        with torch.no_grad():
            assert abs(float(tokens.log_prob(grid).exp().sum()) - 1) < 1e-5


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_particle_families_take_user_networks(shape):
    critic = StepCritic(shape, steps=3)
    flow = DiscriminatorFlow(event_shape=shape, discriminator=critic, steps=3, particles=8)
    before, params = _train(flow, _data(shape), steps=2)
    assert _moved(critic, before, params)
    assert flow.sample(4, seed=0).shape == (4, *shape) and len(flow.trajectory(flow.base.sample((2,)))) == 4
    if len(shape) == 1:  # ScoreGAN's image score models come from Diffusion's image defaults
        gen = Decoder((4,), shape)
        model = ScoreGAN(event_shape=shape, generator=gen, latent_shape=(4,), score_hidden=(16, 16),
                         generator_every=1)
        before, params = _train(model, _data(shape), steps=2)
        assert _moved(gen, before, params) and model.sample(3, seed=0).shape == (3, *shape)


def test_latent_trains_the_autoencoder_then_the_prior_and_decodes_prior_samples():
    shape, latent = (1, 8, 8), (4,)
    vae = VAE(event_shape=shape, encoder=Encoder(shape, latent, heads=2), decoder=Decoder(latent, shape))
    prior = FlowMatching(dim=4, hidden=(16, 16))
    model = Latent(vae, prior, prior_start=2, autoencoder_steps=3)
    stages = []
    torch.manual_seed(0)
    x = _data(shape)
    model.initialize(x[:64])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(4):
        stages.append(model.stage())
        opt.zero_grad()
        model.loss(x[:32]).backward()
        vae_grad = any(p.grad is not None and bool(p.grad.abs().sum()) for p in vae.parameters())
        prior_grad = any(p.grad is not None and bool(p.grad.abs().sum()) for p in prior.parameters())
        assert (vae_grad, prior_grad) == {"autoencoder": (True, False), "both": (True, True),
                                          "prior": (False, True)}[stages[-1]]
        opt.step()
    assert stages == ["autoencoder", "autoencoder", "both", "prior"] and bool(model.prior_ready)
    assert model.sample(5, seed=0).shape == (5, *shape)
    z = model.base.sample((3,))
    with torch.no_grad():
        assert torch.allclose(model.transform(z), vae.transform(prior.transform(z)))
    # VQ-VAE + autoregressive prior over its code indices
    code = (3, 2, 2)
    vq = VQVAE(event_shape=shape, encoder=Encoder(shape, code), decoder=Decoder(code, shape), num_codes=8,
               prior="uniform")
    tokens = Autoregressive(4, vocab_size=8, net=CausalConv(vocab=8))
    both = Latent(vq, tokens, prior_start=1)
    _train(both, x, steps=3)
    assert both.sample(4, seed=0).shape == (4, *shape)
    with pytest.raises(ValueError, match="token family with vocab_size=num_codes=8"):
        Latent(vq, FlowMatching(dim=4))
    with pytest.raises(ValueError, match=r"`prior` must have event_shape=\(4,\)"):
        Latent(vae, FlowMatching(dim=3))
    with pytest.raises(TypeError, match="must be an Autoencoder, VAE or VQVAE"):
        Latent(prior, prior)


# ----------------------------------------------------------------------------- image defaults


@pytest.mark.parametrize("family", [VAE, Autoencoder, GAN, VQVAE, DiscriminatorFlow], ids=lambda f: f.__name__)
def test_image_defaults_build_train_and_sample(family):
    kwargs = {"steps": 2, "particles": 8} if family is DiscriminatorFlow else {}
    model = family(event_shape=(1, 8, 8), channels=(8, 16), **kwargs)
    _train(model, _data((1, 8, 8)), steps=2)
    assert model.sample(3, seed=0).shape == (3, 1, 8, 8)


def test_images_are_standardised_per_channel():
    x = torch.zeros(50, 2, 4, 4)
    x[:, 0, 1:3, 1:3] = torch.rand(50, 2, 2)  # border pixels constant, as in digits
    x[:, 1] = 5 + 2 * torch.randn(50, 4, 4)
    scaler = Standardizer((2, 4, 4))
    scaler.fit_to(x)
    assert scaler.scale.shape == (2, 1, 1)
    y = scaler(x)
    assert float(y.abs().max()) < 20  # a per-pixel scale would blow the constant pixels' noise up
    assert torch.allclose(y[:, 1].std(), torch.tensor(1.0), atol=0.05)
    assert torch.allclose(scaler.log_scale_sum(), 16 * torch.log(scaler.scale).sum())


# ----------------------------------------------------------------------------- bad input


def test_a_network_with_the_wrong_output_shape_is_named_at_the_first_call():
    shape = (1, 8, 8)
    vae = VAE(event_shape=shape, encoder=Encoder(shape, (4,), heads=2), decoder=Decoder((4,), (1, 7, 8)))
    with pytest.raises(ValueError, match=r"VAE: `decoder` returned shape \(32, 1, 7, 8\); expected \(32, 1, 8, 8\)"):
        vae.loss(_data(shape)[:32])
    vae = VAE(event_shape=shape, encoder=Encoder(shape, (5,), heads=2), decoder=Decoder((4,), shape),
              latent_shape=(4,))
    with pytest.raises(ValueError, match=r"`encoder \(mean\)` returned shape \(32, 5\); expected \(32, 4\)"):
        vae.loss(_data(shape)[:32])
    with pytest.raises(TypeError, match=r"`encoder` must return a pair \(mean, log_std\)"):
        VAE(event_shape=shape, encoder=Encoder(shape, (4,)), decoder=Decoder((4,), shape),
            latent_shape=(4,)).loss(_data(shape)[:8])
    gan = GAN(event_shape=shape, generator=Decoder((4,), shape), discriminator=Encoder(shape, (2,)), latent_shape=4)
    with pytest.raises(ValueError, match=r"GAN: `discriminator` returned shape \(16, 2\); expected \(16,\)"):
        gan.loss(_data(shape)[:16])
    gan = GAN(dim=3, generator=Decoder((4,), (2,)), latent_shape=(4,))
    with pytest.raises(ValueError, match=r"GAN: `generator` returned shape \(3, 2\); expected \(3, 3\)"):
        gan.sample(3)
    ar = Autoregressive(event_shape=shape, net=CausalConv(vocab=5, out=4), bins=5, bounds=(0, 1))
    with pytest.raises(ValueError, match=r"Autoregressive: `net` returned shape \(8, 64, 4\); expected \(8, 64, 5\)"):
        ar.loss(_data(shape)[:8])
    vq = VQVAE(event_shape=shape, encoder=Encoder(shape, (3, 2, 2)), decoder=Decoder((3, 2, 2), (1, 4, 4)))
    with pytest.raises(ValueError, match=r"VQVAE: `decoder` returned shape \(8, 1, 4, 4\); expected \(8, 1, 8, 8\)"):
        vq.loss(_data(shape)[:8])
    ae = Autoencoder(event_shape=shape, encoder=Encoder(shape, (3,)), decoder=Decoder((4,), shape), latent_dim=4)
    with pytest.raises(ValueError, match=r"Autoencoder: `encoder` returned shape \(8, 3\); expected \(8, 4\)"):
        ae.loss(_data(shape)[:8])
    critic = StepCritic(shape, steps=2)
    critic.forward = lambda x, k: critic.trunk(x)[:, :3]  # (B, 3) logits instead of (B,)
    flow = DiscriminatorFlow(event_shape=shape, discriminator=critic, steps=2, particles=4)
    flow.initialize(_data(shape))
    with pytest.raises(ValueError, match=r"DiscriminatorFlow: `discriminator` returned shape \(4, 3\); expected "
                                         r"\(4,\)"):  # at the first call: filling the pool of 4 particles
        flow.loss(_data(shape)[:8])


def test_networks_and_options_are_checked_when_the_model_is_built():
    shape = (1, 8, 8)
    with pytest.raises(TypeError, match="`encoder` must be a torch.nn.Module"):
        VAE(event_shape=shape, encoder=lambda x: x, decoder=Decoder((4,), shape))
    with pytest.raises(ValueError, match="give both `encoder` and `decoder`"):
        Autoencoder(event_shape=shape, encoder=Encoder(shape, (4,)))
    with pytest.raises(ValueError, match="`hidden` configures the default network"):
        VAE(dim=3, encoder=Encoder((3,), (2,), heads=2), decoder=Decoder((2,), (3,)), hidden=(8,))
    with pytest.raises(ValueError, match="image defaults take `channels`"):
        GAN(event_shape=shape, hidden=(8,))
    with pytest.raises(ValueError, match="give `latent_shape`"):
        GAN(event_shape=shape, generator=Decoder((4,), shape))
    with pytest.raises(ValueError, match="calling `encoder` on a \\(2, 1, 8, 8\\) input failed"):
        VQVAE(event_shape=shape, encoder=Encoder((3,), (3, 2)), decoder=Decoder((3, 2), shape))
    with pytest.raises(ValueError, match="`d_model` configures the default transformer"):
        Autoregressive(3, net=CausalConv(4), d_model=32)
    with pytest.raises(ValueError, match="divisible by 2"):
        VAE(event_shape=(1, 7, 7), channels=(16, 32))


@pytest.mark.parametrize("family", [VAE, Autoencoder, GAN, VQVAE, Autoregressive], ids=lambda f: f.__name__)
def test_data_of_another_shape_and_a_context_are_refused(family):
    model = family(event_shape=(1, 8, 8), **({"bins": 4, "bounds": (0, 1)} if family is Autoregressive else
                                             {"channels": (8, 16)}))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 1, 8, 8\) for event_shape=\(1, 8, 8\); got "
                                         r"\(4, 64\)"):
        model.loss(torch.rand(4, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model.loss(torch.zeros(4, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, context=torch.zeros(2, 3))


def test_a_conditional_prior_makes_latent_conditional_and_checks_its_context():
    vae = VAE(dim=3, encoder=Encoder((3,), (2,), heads=2), decoder=Decoder((2,), (3,)))
    model = Latent(vae, FlowMatching(dim=2, hidden=(8,), context_dim=2), prior_start=0)
    assert model.conditional and model.context_dim == 2
    assert model.sample(3, seed=0, context=torch.zeros(3, 2)).shape == (3, 3)
    with pytest.raises(TypeError, match="`context` must be a torch.Tensor; got str"):
        model.loss((torch.rand(4, 3), "labels"))
    with pytest.raises(ValueError, match="`context` .* is required"):
        model.loss(torch.rand(4, 3))


# ----------------------------------------------------------------------------- empty batches, NaN rows, counts


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_log_prob_of_an_empty_batch_is_empty(shape):
    vae = VAE(event_shape=shape, **({"channels": (8, 16)} if len(shape) == 3 else {}))
    assert vae.log_prob(torch.zeros(0, *shape)).shape == (0,)
    assert vae.elbo(torch.zeros(0, *shape)).shape == (0,)
    ar = Autoregressive(event_shape=shape, net=CausalConv(4), bins=4, bounds=(0, 1))
    assert ar.log_prob(torch.zeros(0, *shape)).shape == (0,)
    assert Autoregressive(3, vocab_size=4, net=CausalConv(4)).log_prob(torch.zeros(0, 3)).shape == (0,)


def test_vqvae_sample_counts():
    model = VQVAE(dim=3, hidden=(8,), num_codes=4, prior_d_model=8, prior_heads=2, prior_layers=1)
    assert model.sample(0).shape == (0, 3)
    assert VQVAE(dim=3, hidden=(8,), num_codes=4, prior="uniform").sample(0).shape == (0, 3)
    with pytest.raises(ValueError, match=r"VQVAE\.sample: `n` must be >= 0; got -1"):
        model.sample(-1)


@torch.no_grad()
def test_autoregressive_log_prob_of_a_nan_row_is_nan():
    model = Autoregressive(2, net=CausalConv(4), bins=4, bounds=(0, 1))
    lp = model.log_prob(torch.tensor([[math.nan, 0.5], [0.2, 0.5], [0.2, 7.0]]))
    assert math.isnan(lp[0]) and math.isfinite(lp[1]) and lp[2] == -math.inf
    tokens = Autoregressive(2, vocab_size=4, net=CausalConv(4))
    lp = tokens.log_prob(torch.tensor([[1.0, math.nan], [1.0, 2.0]]))
    assert math.isnan(lp[0]) and math.isfinite(lp[1])


def test_digits_as_images_with_labels():
    pytest.importorskip("sklearn")
    from pyprobtf.data import digits

    for split in ("train", "test"):
        flat = digits(split, dequantize=True)
        images, labels = digits(split, image=True, dequantize=True, labels=True)
        assert images.shape == (flat.shape[0], 1, 8, 8) and torch.equal(images.reshape(-1, 64), flat)
        assert labels.dtype == torch.int64 and labels.shape == (flat.shape[0],)
        assert set(labels.tolist()) == set(range(10))
    assert torch.equal(digits("all", image=True).reshape(-1, 64), digits("all"))
    with pytest.raises(TypeError, match="`image` must be a bool"):
        digits(image=1)
