"""Loading the peers the integration tests compare against."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _append_dims(x, target_dims):
    """k-diffusion's utils.append_dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def k_diffusion_sampling():
    """k-diffusion's sampling.py without its package __init__ (which imports its training stack).

    Its only package-internal import is utils.append_dims, provided as k-diffusion defines it.
    Skips the test when k-diffusion (or what sampling.py imports: scipy, torchsde, torchdiffeq, tqdm) is missing.
    """
    if "_kd_peer.sampling" in sys.modules:
        return sys.modules["_kd_peer.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    for name in ("scipy", "torchsde", "torchdiffeq", "tqdm"):
        pytest.importorskip(name)
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    package = types.ModuleType("_kd_peer")
    package.__path__ = []
    utils = types.ModuleType("_kd_peer.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"_kd_peer": package, "_kd_peer.utils": utils})
    module_spec = importlib.util.spec_from_file_location("_kd_peer.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["_kd_peer.sampling"] = module
    module_spec.loader.exec_module(module)
    return module


def small_unet_model():
    """A small diffusers UNet2DModel (random weights, 2 channels, 8x8), as ``model(x, t)``."""
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()

    def model(x, t):
        return unet(x, t).sample

    return model
