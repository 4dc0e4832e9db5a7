"""Negative sampling: fixed evaluation candidates and per-epoch training negatives.

"Has user u rated item i?" is answered for whole batches by encoding pairs as one int64 key
`u * num_items + i` and binary-searching a sorted key tensor. Evaluation candidates (distinct,
drawn once) use rejection sampling that redraws only the offending slots; rows that keep failing
(users who rated nearly everything) are finished by an exact draw over their unseen items, so no
loop can run forever. Training negatives (every step, possibly on a GPU) are drawn exactly by
`UnratedItems`: a fixed handful of whole-batch ops, no retries and no host round trip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flixrec.errors import ConfigError

_MAX_ROUNDS = 20


def pair_keys(users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Sorted int64 keys of (user, item) pairs, for `is_member`."""
    return torch.sort(users.long() * num_items + items.long()).values


def is_member(keys: Tensor, users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Bool tensor shaped like `items`: is (users, items) in the sorted `keys`? `users`
    broadcasts against `items` (e.g. (B, 1) with (B, n))."""
    if keys.numel() == 0:
        return torch.zeros_like(items, dtype=torch.bool)
    q = users.long() * num_items + items.long()
    pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
    return keys[pos] == q


def _exact_unseen(users: Tensor, k: int, keys: Tensor, num_items: int,
                  generator: torch.Generator, chunk: int = 256) -> Tensor:
    """k distinct uniformly random unseen items per user, drawn from an explicit unseen mask.
    O(len(users) * num_items); used only for candidate rows rejection cannot fill."""
    out = []
    all_items = torch.arange(num_items, device=users.device)
    for start in range(0, len(users), chunk):
        u = users[start:start + chunk, None]
        unseen = (~is_member(keys, u, all_items[None, :], num_items)).float()
        out.append(torch.multinomial(unseen, k, replacement=False, generator=generator))
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long, device=users.device)


def _bad_slots(keys: Tensor, users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Bool mask shaped like `items` (B, n): the entries the row's user rated (`keys`) and those
    that repeat an earlier-sorted entry of their row. Checked on each row sorted ascending, where
    repeats sit side by side and a row's membership searches ascend through its user's keys
    (at Netflix size the two candidate sets took 13 s instead of 15 s), then mapped back."""
    sorted_items, order = items.sort(dim=1)
    bad = is_member(keys, users, sorted_items, num_items)
    bad[:, 1:] |= sorted_items[:, 1:] == sorted_items[:, :-1]
    return torch.zeros_like(bad).scatter_(1, order, bad)


def sample_candidates(users: Tensor, positives: Tensor, seen_keys: Tensor, num_items: int,
                      num_negatives: int, generator: torch.Generator) -> Tensor:
    """Evaluation candidates: (U, 1 + num_negatives) int64, column 0 the held-out positive.

    Negatives are uniform without replacement over items the user never rated (`seen_keys`
    holds every rating of the data, train and held-out). Random (seeded by `generator`).
    Raises ConfigError if a user has fewer unseen items than `num_negatives`.
    """
    if len(users) == 0:
        return torch.zeros((0, 1 + num_negatives), dtype=torch.long)
    seen_count = torch.bincount(torch.div(seen_keys, num_items, rounding_mode="floor"),
                                minlength=int(users.max()) + 1)[users]
    short = (num_items - seen_count) < num_negatives
    if short.any():
        u = int(users[short][0])
        raise ConfigError(
            f"data.num_test_negatives={num_negatives} is more than the {num_items - int(seen_count[short][0])} "
            f"movies that user index {u} has not rated ({int(short.sum())} users are short); lower "
            f"data.num_test_negatives or filter heavy raters out with a subset")
    negs = torch.randint(num_items, (len(users), num_negatives), generator=generator)
    # Only rows that had a slot redrawn can turn bad, so each round re-checks just those rows
    # (a whole-matrix check costs seconds at Netflix scale; later rounds touch ~1% of rows).
    # The bad slots, and the order they are redrawn in, are the same as re-checking everything.
    rows = torch.arange(len(users))
    for _ in range(_MAX_ROUNDS):
        sub = negs[rows]
        bad = _bad_slots(seen_keys, users[rows, None], sub, num_items)
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        sub[bad] = torch.randint(num_items, (n_bad,), generator=generator)
        negs[rows] = sub
        rows = rows[bad.any(1)]
    else:
        rows = rows[_bad_slots(seen_keys, users[rows, None], negs[rows], num_items).any(1)]
        negs[rows] = _exact_unseen(users[rows], num_negatives, seen_keys, num_items, generator)
    return torch.cat([positives[:, None].long(), negs], dim=1)


class UnratedItems:
    """Draws, per user, items uniformly from those NOT among sorted pair `keys` (e.g. the
    training positives): exact, with no rejection loop and no host synchronisation, so the same
    few kernels run on the CPU and on a GPU whatever the density of a user's row.

    The r-th unrated item of user u is r + j, where j counts u's rated items s_0 < s_1 < ...
    with s_j - j <= r. Stored as one non-decreasing tensor `shifted = keys - position`, that
    count is a single `searchsorted` for a whole batch (see `sample`). Built once, O(R);
    duplicate keys are dropped. Raises ConfigError if some user rated every item.
    """

    def __init__(self, keys: Tensor, num_items: int) -> None:
        keys = torch.unique_consecutive(keys)
        self.num_items = num_items
        self.shifted = keys - torch.arange(len(keys), device=keys.device)
        # starts[u]: position of user u's first key, for u up to the last user with keys (users
        # past it are clamped to the end, where they correctly find no rated items)
        last = int(keys[-1]) // num_items + 1 if len(keys) else 0
        self.starts = torch.searchsorted(keys, torch.arange(last + 1, device=keys.device) * num_items)
        if len(keys) and int(self.starts.diff().max()) >= num_items:
            raise ConfigError(f"a user rated all {num_items} movies: no negatives can be sampled")

    def sample(self, users: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """(B, k) int64: for each of `users` (B,), k independent uniform draws (with replacement,
        as in NCF) from the items that user has not rated. Runs on the device of the index;
        random (`generator` must live on that device)."""
        I, dev, last = self.num_items, self.starts.device, len(self.starts) - 1
        users = users.long().to(dev)
        lo = self.starts[users.clamp(max=last)]                 # where u's rated items start
        free = I - (self.starts[(users + 1).clamp(max=last)] - lo)  # u's unrated items, >= 1
        base = users * I
        # r uniform in [0, free): a 62-bit draw modulo free (bias < free / 2^62)
        r = torch.randint(1 << 62, (len(users), k), generator=generator, device=dev) % free[:, None]
        # keys before u's segment always pass the test and keys after it never do (r < free),
        # so one search over the whole tensor counts u's rated items below the r-th unrated one
        j = torch.searchsorted(self.shifted, (base - lo)[:, None] + r, right=True) - lo[:, None]
        return r + j


def rated_items(keys: Tensor, users: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """Every (row, item) pair of sorted pair `keys` that belongs to `users` (B,): the items
    each user rated, as two aligned int64 tensors, `rows` (ascending positions into `users`)
    and `items`. Whole-tensor: two binary searches and one gather, no loop over users."""
    users = users.long().to(keys.device)
    lo = torch.searchsorted(keys, users * num_items)
    counts = torch.searchsorted(keys, (users + 1) * num_items) - lo
    rows = torch.repeat_interleave(torch.arange(len(users), device=keys.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    idx = torch.repeat_interleave(lo - starts, counts) + torch.arange(len(rows), device=keys.device)
    return rows, keys[idx] % num_items
