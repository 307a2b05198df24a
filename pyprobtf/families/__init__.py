"""The generative families, each a :class:`pyprobtf.ProbabilityTransform` built as ``Family(dim=d)``.

- :class:`RealNVP`: affine-coupling normalizing flow; exact ``log_prob``, ``inverse``.
- :class:`Diffusion`: score-based diffusion (VP/DDPM or EDM); sampling by the
  probability-flow ODE, the reverse SDE or annealed Langevin; ``log_prob`` by the ODE.
- :class:`FlowMatching`: conditional flow matching on the linear path, with
  optional minibatch optimal-transport pairing; sampling and ``log_prob`` by ODE.
- :class:`ContinuousFlow`: a neural-ODE flow trained by maximum likelihood
  (Hutchinson trace estimator).
"""

from pyprobtf.families.continuous_flow import ContinuousFlow
from pyprobtf.families.diffusion import Diffusion
from pyprobtf.families.flow_matching import FlowMatching
from pyprobtf.families.realnvp import RealNVP

__all__ = ["ContinuousFlow", "Diffusion", "FlowMatching", "RealNVP"]

# The decoder and adversarial families (issue 7).
from pyprobtf.families.autoencoder import Autoencoder  # noqa: E402
from pyprobtf.families.gan import GAN  # noqa: E402
from pyprobtf.families.vae import VAE  # noqa: E402

__all__ += ["GAN", "VAE", "Autoencoder"]
from pyprobtf.families.autoregressive import Autoregressive  # noqa: E402

__all__ += ["Autoregressive"]
from pyprobtf.families.particles import DiscriminatorFlow, ScoreGAN  # noqa: E402
from pyprobtf.families.vqvae import VQVAE  # noqa: E402

__all__ += ["DiscriminatorFlow", "ScoreGAN", "VQVAE"]
from pyprobtf.families.tempered import Tempered  # noqa: E402

__all__ += ["Tempered"]
from pyprobtf.families.latent import Latent  # noqa: E402

__all__ += ["Latent"]
