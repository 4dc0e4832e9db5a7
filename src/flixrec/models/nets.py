"""Recommender nets: each maps users (B,) and the items to score for them to float32 logits.

`items` is (B,) (one item per user: logits (B,)), (B, m) (m items per user, e.g. a positive and
its negatives in training, or the 1 + 100 candidates in evaluation: logits (B, m)), or (1, m)
(the same m items for every user, e.g. the whole catalogue in full ranking: logits (B, m)).
Per-user work (the user embeddings, the user half of a first dense layer) is therefore done
once per user, not once per pair, and a dot product over a shared item list is one matmul.

Conventions of the NCF paper (He et al., 2017): embeddings start from N(0, 0.01), hidden layers
are ReLU, dense layers are Xavier-initialised with zero bias. The output layer always runs in
float32, also under mixed precision: bf16 logits would tie many of the 101 candidates, and ties
count against the held-out item.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _embedding(n: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=0.01)
    return emb


def _dense(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _rows(table: nn.Embedding | Tensor, idx: Tensor) -> Tensor:
    """`table(idx)`: rows of an embedding table (or of a weight tensor), (*idx.shape, dim).

    `index_select` rather than `nn.Embedding`'s lookup: same values and gradients, but its
    backward (an index_add) ran 1.3-1.5x faster on CPU for the B x m gathers of a training
    batch, where the embedding backward was the largest operator (bench/profile_train.py). On
    CUDA that index_add accumulates with atomics, so gradient sums of rows drawn several times
    are not bit-reproducible run to run unless `trainer.deterministic=true`.

    An embedding with `sparse` set (`model.sparse_embeddings`) is looked up with a sparse
    gradient instead: only the drawn rows, with no zero-filled table-sized gradient."""
    if isinstance(table, nn.Embedding) and table.sparse:
        return F.embedding(idx.reshape(-1), table.weight, sparse=True).view(*idx.shape, table.embedding_dim)
    weight = table.weight if isinstance(table, nn.Embedding) else table
    return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[-1])


def row_l2(*lookups: tuple[nn.Embedding, Tensor]) -> Tensor:
    """Sum over (table, idx) lookups of 0.5 * the mean squared norm of the rows `table(idx)`:
    float32 scalar.

    `idx` is (B,) per user or (B, m) per pair; a user row shared by the m pairs of its user
    weighs the same as m copies, so this is the per-sample L2 of SGD matrix factorisation: a
    row is shrunk each time it is drawn. When a batch asks for more rows than a table has, the
    penalty is taken over the table weighted by how often each row was drawn (the same value,
    without gathering the rows a second time), unless the table has sparse gradients."""
    total = torch.zeros((), device=lookups[0][1].device)
    for table, idx in lookups:
        if idx.numel() > table.num_embeddings and not table.sparse:
            counts = torch.bincount(idx.reshape(-1), minlength=table.num_embeddings)
            norms = table.weight.float().pow(2).sum(-1)
            total = total + 0.5 * (counts.float() @ norms) / idx.numel()
        else:
            total = total + 0.5 * _rows(table, idx).float().pow(2).sum(-1).mean()
    return total


def fp32_output(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x).squeeze(-1)` computed in float32 whatever autocast is active."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.float()).squeeze(-1)


def _dot(p: Tensor, q: Tensor, w: Tensor | None = None) -> Tensor:
    """(B, m) float32 sum_d w_d p_bd q_bjd, in float32 whatever autocast is active.

    p: (B, D) user rows; q: (B, m, D) or (1, m, D) item rows; w: None, (D,) or (B, D)."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = p.float() if w is None else p.float() * w.float()
        if q.shape[0] == 1:
            return p @ q[0].float().T
        return (q.float() * p[:, None, :]).sum(-1)  # faster than bmm of B (m x D) @ (D x 1)


def _projected_rows(table: nn.Embedding, idx: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(table(idx), weight, bias)`, shaped (*idx.shape, out), computed the cheaper way:
    when the batch asks for more rows than the table has, the whole table is projected once and
    the projected rows are gathered (the same numbers, up to float rounding), unless the table
    has sparse gradients (a whole-table projection would give it a dense one)."""
    if idx.numel() > table.num_embeddings and not table.sparse:
        return _rows(F.linear(table.weight, weight, bias), idx)
    return F.linear(_rows(table, idx), weight, bias)


def _split_linear(layer: nn.Linear, users: Tensor, items: Tensor, user_emb: nn.Embedding,
                  item_emb: nn.Embedding) -> Tensor:
    """`layer([p_u; q_j])` for every pair, (B, m, out), where p = user_emb(users) (B,) and
    q = item_emb(items) (B or 1, m): the user half is applied once per user and broadcast
    over the pair's items."""
    d = user_emb.embedding_dim
    # the bias goes inside F.linear: added outside, a float32 bias would promote the (B, m, out)
    # pre-activations of a bf16 autocast run to float32
    return _projected_rows(user_emb, users, layer.weight[:, :d], layer.bias)[:, None, :] \
        + _projected_rows(item_emb, items, layer.weight[:, d:])


class PairNet(nn.Module):
    """Base of the nets: `forward` accepts items (B,), (B, m) or (1, m) (module docstring) and
    calls `scores(users (B,), items (B or 1, m)) -> (B, m)`, which each net defines."""

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        if items.dim() == 1:
            return self.scores(users, items[:, None]).squeeze(-1)
        return self.scores(users, items)

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        raise NotImplementedError


class GMF(PairNet):
    """Generalized matrix factorisation: logit = h . (p_u * q_i) + b."""

    def __init__(self, num_users: int, num_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user_emb, self.item_emb = _embedding(num_users, dim), _embedding(num_items, dim)
        self.out_dim = dim
        self.output = _dense(dim, 1)

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        # h . (p * q) computed as (h * p) . q: for a shared item list, one matmul
        return _dot(_rows(self.user_emb, users), _rows(self.item_emb, items), self.output.weight[0]) \
            + self.output.bias.float()

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 of the embedding rows the batch touches (`row_l2`); scaled by `model.l2`."""
        return row_l2((self.user_emb, users), (self.item_emb, items))


class MLP(PairNet):
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
        """(B, m, layers[-1]) last hidden layer of every pair; the first dense layer is applied
        to the user and item halves separately (`_split_linear`)."""
        if len(self.tower) == 0:
            p, q = _rows(self.user_emb, users), _rows(self.item_emb, items)
            return torch.cat([p[:, None, :].expand(-1, q.shape[1], -1), q.expand(len(p), -1, -1)], -1)
        x = _split_linear(self.tower[0], users, items, self.user_emb, self.item_emb)
        pairs = x.shape[:-1]
        # the later layers run on (pairs, width) matrices, so each dense output is a tensor of
        # its own rather than a view of one: an in-place ReLU on a view makes autograd copy the
        # activations back and forth in the backward (three copies per layer)
        x = x.relu_() if isinstance(self.tower[1], nn.ReLU) else self.tower[1](x)
        x = x.flatten(0, -2)
        for layer in self.tower[2:]:
            # ReLU in place: the (pairs, width) activations are the bulk of the memory traffic
            x = x.relu_() if isinstance(layer, nn.ReLU) else layer(x)
        return x.view(*pairs, x.shape[-1])

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return fp32_output(self.output, self.features(users, items))

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 of the embedding rows the batch touches (`row_l2`); scaled by `model.l2`."""
        return row_l2((self.user_emb, users), (self.item_emb, items))


class NeuMF(PairNet):
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

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        # output([gmf; mlp]) split at the concatenation: the GMF half is a weighted dot product
        w, g = self.output.weight[0], self.gmf.out_dim
        gmf = _dot(_rows(self.gmf.user_emb, users), _rows(self.gmf.item_emb, items), w[:g])
        mlp = self.mlp.features(users, items)
        with torch.autocast(device_type=users.device.type, enabled=False):
            return gmf + mlp.float() @ w[g:].float() + self.output.bias.float()

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 of both towers' embedding rows the batch touches; scaled by `model.l2`."""
        return self.gmf.regularization(users, items) + self.mlp.regularization(users, items)


class MF(PairNet):
    """Dot-product matrix factorisation with biases (the baseline of Rendle et al., 2020):
    logit = b + b_u + b_i + p_u . q_i, the global bias b only with `global_bias`.

    `regularization` gives the L2 penalty of the rows a batch touches; RecModule scales it by
    `model.l2` (per-sample L2 as in SGD matrix factorisation, so a row is shrunk in proportion
    to how often it is drawn, not once per epoch).
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64, global_bias: bool = True,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.user_emb, self.item_emb = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        self.user_bias, self.item_bias = nn.Embedding(num_users, 1), nn.Embedding(num_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.bias = nn.Parameter(torch.zeros(())) if global_bias else None

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        # float32 throughout: the dot product is the output layer here
        logits = _dot(_rows(self.user_emb, users), _rows(self.item_emb, items)) \
            + _rows(self.user_bias, users).float() + _rows(self.item_bias, items).float().squeeze(-1)
        return logits + self.bias if self.bias is not None else logits

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Mean over the pairs of 0.5 * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2), float32 scalar.

        With weight lambda, its gradient on a row drawn once is lambda * row / B: the notebook's
        per-sample update `p += gamma * (e * q - lambda * p)` averaged over a batch of B. The
        global bias is not penalised (it has no row to attach the penalty to).
        """
        return row_l2((self.user_emb, users), (self.item_emb, items), (self.user_bias, users), (self.item_bias, items))


class SVD(MF):
    """The notebook's B1 "SVD": logit = b_u + b_i + p_u . q_i (no global bias, K = 30), trained
    with L2 0.03 on every parameter and the learning rate decayed by 0.93 per epoch (both in
    conf/model/svd.yaml). The notebook fitted sigmoid(logit) to the same 0/1 labels by per-sample
    SGD on the squared error; here it is BCE-with-logits on the shared sampled negatives."""

    def __init__(self, num_users: int, num_items: int, dim: int = 30, global_bias: bool = False,
                 init_std: float = 0.01) -> None:
        super().__init__(num_users, num_items, dim, global_bias, init_std)


class Fusion(PairNet):
    """The notebook's N3 "Fusion" of an MLP and a GMF term:

        h = sigmoid(W1 [p_u; q_i] + b1)              (hidden units, 4 in the notebook)
        logit = w2 . [h; p_u * q_i * w_u] + b2        (w_u: a per-user K-vector)

    With `per_user_weights` every user has their own W1, b1, w2, b2, as in the notebook; they
    live in embedding tables (a user's W1 is one row of `num_users x 2K*hidden`), so a batch
    gathers its users' weights and applies them with batched matmuls. Otherwise the hidden
    and output layers are shared. w_u starts at 1, so the GMF term starts as p_u * q_i.
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 16, hidden: int = 4,
                 per_user_weights: bool = False) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.user_emb, self.item_emb = _embedding(num_users, dim), _embedding(num_items, dim)
        self.user_gmf_weight = nn.Embedding(num_users, dim)
        nn.init.ones_(self.user_gmf_weight.weight)
        self.per_user_weights = per_user_weights
        if per_user_weights:
            # each row initialised like one Xavier-uniform dense layer
            self.hidden_weight = nn.Embedding(num_users, 2 * dim * hidden)
            self.hidden_bias = nn.Embedding(num_users, hidden)
            self.output_weight = nn.Embedding(num_users, hidden + dim)
            self.output_bias = nn.Embedding(num_users, 1)
            for table, fan in ((self.hidden_weight, 2 * dim + hidden), (self.output_weight, hidden + dim + 1)):
                bound = (6.0 / fan) ** 0.5
                nn.init.uniform_(table.weight, -bound, bound)
            nn.init.zeros_(self.hidden_bias.weight)
            nn.init.zeros_(self.output_bias.weight)
        else:
            self.hidden_layer = _dense(2 * dim, hidden)
            self.output = _dense(hidden + dim, 1)

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        K, H = self.dim, self.hidden
        p, q = _rows(self.user_emb, users), _rows(self.item_emb, items)
        w = _rows(self.user_gmf_weight, users)
        if self.per_user_weights:
            w1 = _rows(self.hidden_weight, users).view(-1, 2 * K, H)
            # (B, 1, H) + (B, m, H); a shared item list (1, m, K) is not copied per user
            item_part = torch.einsum("md,bdh->bmh", q[0], w1[:, K:]) if q.shape[0] == 1 \
                else torch.bmm(q, w1[:, K:])
            pre = (torch.bmm(p[:, None, :], w1[:, :K]) + _rows(self.hidden_bias, users)[:, None, :]) \
                + item_part
            w2, b2 = _rows(self.output_weight, users).float(), _rows(self.output_bias, users).float()
        else:
            pre = _split_linear(self.hidden_layer, users, items, self.user_emb, self.item_emb)
            w2 = self.output.weight.float().expand(len(users), -1)
            b2 = self.output.bias.float().expand(len(users), 1)
        h = torch.sigmoid(pre)
        with torch.autocast(device_type=users.device.type, enabled=False):
            hidden = torch.bmm(h.float(), w2[:, :H, None]).squeeze(-1)  # (B, m)
            return hidden + _dot(p * w, q, w2[:, H:]) + b2


class Pop(PairNet):
    """Most-popular-first: the logit of an item is its training count, whoever the user.

    Nothing is trained; the counts are a buffer (saved in checkpoints) handed over at build
    time from the data module. Scores equal `RatingsDataModule.popularity_scores`, so this
    model reproduces the `baseline_pop` figures exactly.
    """

    def __init__(self, num_users: int, num_items: int, item_counts: Tensor | None = None) -> None:
        super().__init__()
        counts = torch.zeros(num_items) if item_counts is None else torch.as_tensor(item_counts)
        if counts.shape != (num_items,):
            raise ValueError(f"item_counts has shape {tuple(counts.shape)}, expected ({num_items},)")
        self.register_buffer("item_counts", counts.float())  # exact for counts below 2**24

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return self.item_counts[items].expand(len(users), -1)
