"""A small decoder-only transformer: the default network of :class:`pyprobtf.families.Autoregressive`.

It follows the family's network protocol: ``net(tokens) -> logits``, tokens
``(B, L)`` int64 with values in ``[0, vocab]`` (``vocab`` itself is the start
token the family puts at position 0), logits ``(B, L, vocab)``; position ``i``
sees tokens ``0..i`` only (a causal mask) and gives the distribution of the
next token. ``L`` may be anything from 1 to ``length``.

Example:
    >>> import torch
    >>> net = CausalTransformer(length=64, vocab=17, d_model=32, layers=1, heads=2)
    >>> start = torch.full((3, 1), 17)
    >>> net(torch.cat([start, torch.randint(0, 17, (3, 9))], 1)).shape
    torch.Size([3, 10, 17])
"""

from __future__ import annotations

import numbers

import torch
from torch import nn


class CausalTransformer(nn.Module):
    """Tokens ``(B, L)`` in ``[0, vocab]`` -> next-token logits ``(B, L, vocab)`` (see the module docstring).

    Args:
        length: the longest input (the number of positions embedded).
        vocab: output classes; the input has one more id, ``vocab``, the start token.
        d_model, layers, heads: width, depth and attention heads (pre-norm blocks, GELU MLPs of ``ff_mult``
            times the width).
        dropout: dropout inside the blocks while training.
    """

    def __init__(self, length: int, vocab: int, *, d_model: int = 64, layers: int = 2, heads: int = 4,
                 ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        for name, value in (("length", length), ("vocab", vocab), ("d_model", d_model), ("layers", layers),
                            ("heads", heads), ("ff_mult", ff_mult)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"CausalTransformer: `{name}` must be a positive int; got {value!r}")
        if d_model % heads:
            raise ValueError(f"CausalTransformer: `d_model` must be a multiple of `heads`; got {d_model} and {heads}")
        if not (isinstance(dropout, numbers.Real) and 0 <= dropout < 1):
            raise ValueError(f"CausalTransformer: `dropout` must be in [0, 1); got {dropout!r}")
        self.length, self.vocab = int(length), int(vocab)
        self.embed = nn.Embedding(vocab + 1, d_model)  # the last id is the start token
        # Token and position embeddings start at the same small scale (GPT-2's 0.02), so the position is
        # as visible to the first layer as the token is.
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(length, d_model) * 0.02)
        block = nn.TransformerEncoderLayer(d_model, heads, ff_mult * d_model, dropout=float(dropout),
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        masks = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", masks, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.length:
            raise ValueError(f"CausalTransformer: the input has {n} positions; this network embeds at most "
                             f"length={self.length}")
        h = self.embed(tokens) + self.position[:n]
        h = self.blocks(h, mask=self.causal_mask[:n, :n].to(h.dtype), is_causal=True)
        return self.head(self.norm(h))
