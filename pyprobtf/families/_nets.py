"""The families' networks: re-exported from :mod:`pyprobtf.nn.mlp`, where they are public."""

from pyprobtf.nn.mlp import (ACTIVATIONS, MLP, FourierFeatures, FourierTime, TimeEmbedding, TimeField, TimeMLP,
                             check_activation, check_hidden, time_tensor)

__all__ = ["ACTIVATIONS", "MLP", "FourierFeatures", "FourierTime", "TimeEmbedding", "TimeField", "TimeMLP",
           "check_activation", "check_hidden", "time_tensor"]
