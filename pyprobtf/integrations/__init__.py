"""Integrations with other libraries: one thin module per peer, each behind its own optional extra.

Each module keeps its peer's names, argument order, defaults and return types (a one-line swap),
imports its peer lazily and computes the hot part with pyprobtf's fused ops; the core never imports
a peer.

- :mod:`~pyprobtf.integrations.hf`: Hugging Face ``transformers`` generation (``pyprobtf[hf]``).
- :mod:`~pyprobtf.integrations.diffusers`, :mod:`~pyprobtf.integrations.k_diffusion`,
  :mod:`~pyprobtf.integrations.torchdiffeq`, :mod:`~pyprobtf.integrations.torchcfm`: the diffusion
  stack (docs/integrations-diffusion.md).
- :mod:`~pyprobtf.integrations.zuko`, :mod:`~pyprobtf.integrations.nflows`,
  :mod:`~pyprobtf.integrations.normflows`: coupling flows; :mod:`~pyprobtf.integrations.vector_quantize_pytorch`
  and :mod:`~pyprobtf.integrations.faiss`: vector quantization and flat nearest-neighbour search;
  :mod:`~pyprobtf.integrations.flashinfer` and :mod:`~pyprobtf.integrations.vllm`: LLM token sampling
  (docs/integrations-flows-vq-sampling.md).
"""
