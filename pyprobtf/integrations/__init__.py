"""Integrations with other libraries, each behind its own optional extra.

- :mod:`pyprobtf.integrations.hf`: Hugging Face ``transformers`` generation
  (``pip install pyprobtf[hf]``).
- ``diffusers``, ``k_diffusion``, ``torchdiffeq``, ``torchcfm``: the diffusion stack (docs/integrations-diffusion.md).
"""
