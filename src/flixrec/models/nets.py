"""Recommender nets: each maps (users (B,), items (B,)) int64 to logits (B,) float32.

Conventions of the NCF paper (He et al., 2017): embeddings start from N(0, 0.01), hidden layers
are ReLU, dense layers are Xavier-initialised with zero bias. The output layer always runs in
float32, also under mixed precision: bf16 logits would tie many of the 101 candidates, and ties
count against the held-out item.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def _embedding(n: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=0.01)
    return emb


def _dense(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def fp32_output(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x).squeeze(-1)` computed in float32 whatever autocast is active."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.float()).squeeze(-1)


class GMF(nn.Module):
    """Generalized matrix factorisation: logit = h . (p_u * q_i) + b."""

    def __init__(self, num_users: int, num_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user_emb, self.item_emb = _embedding(num_users, dim), _embedding(num_items, dim)
        self.out_dim = dim
        self.output = _dense(dim, 1)

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        """(B, dim) element-wise product of the user and item factors."""
        return self.user_emb(users) * self.item_emb(items)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return fp32_output(self.output, self.features(users, items))


class MLP(nn.Module):
    """Multi-layer perceptron on [p_u; q_i]; `layers[0]` is the concatenated embedding width."""

    def __init__(self, num_users: int, num_items: int, layers: Sequence[int] = (64, 32, 16, 8),
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers = list(layers)
        if len(layers) < 1 or layers[0] % 2:
            raise ValueError(f"MLP layers {layers}: the first width must be even (user + item halves)")
        half = layers[0] // 2
        self.user_emb, self.item_emb = _embedding(num_users, half), _embedding(num_items, half)
        blocks: list[nn.Module] = []
        for n_in, n_out in zip(layers[:-1], layers[1:]):
            blocks += [_dense(n_in, n_out), nn.ReLU()]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
        self.tower = nn.Sequential(*blocks)
        self.out_dim = layers[-1]
        self.output = _dense(layers[-1], 1)

    def features(self, users: Tensor, items: Tensor) -> Tensor:
        """(B, layers[-1]) last hidden layer."""
        return self.tower(torch.cat([self.user_emb(users), self.item_emb(items)], dim=-1))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return fp32_output(self.output, self.features(users, items))


class NeuMF(nn.Module):
    """Neural matrix factorisation: a GMF and an MLP tower with separate embeddings, their last
    layers concatenated into one output layer."""

    def __init__(self, num_users: int, num_items: int, gmf_dim: int = 32,
                 mlp_layers: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0) -> None:
        super().__init__()
        self.gmf = GMF(num_users, num_items, gmf_dim)
        self.mlp = MLP(num_users, num_items, mlp_layers, dropout)
        # the towers' own output layers would get no gradient (and break DDP); pre-training
        # reads them from the GMF and MLP checkpoints instead
        self.gmf.output = None
        self.mlp.output = None
        self.output = _dense(self.gmf.out_dim + self.mlp.out_dim, 1)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        x = torch.cat([self.gmf.features(users, items), self.mlp.features(users, items)], dim=-1)
        return fp32_output(self.output, x)
