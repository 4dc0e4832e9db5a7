"""Negative sampling: fixed evaluation candidates and per-epoch training negatives.

"Has user u rated item i?" is answered for whole batches by encoding pairs as one int64 key
`u * num_items + i` and binary-searching a sorted key tensor. Sampling is rejection sampling that
redraws only the offending slots; rows that keep failing (users who rated nearly everything) are
finished by an exact draw over their unseen items, so no loop can run forever.
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
                  generator: torch.Generator, replacement: bool, chunk: int = 256) -> Tensor:
    """k uniformly random unseen items per user (distinct unless `replacement`), drawn from an
    explicit unseen mask. O(len(users) * num_items); used only for rows rejection cannot fill."""
    out = []
    all_items = torch.arange(num_items, device=users.device)
    for start in range(0, len(users), chunk):
        u = users[start:start + chunk, None]
        unseen = (~is_member(keys, u, all_items[None, :], num_items)).float()
        out.append(torch.multinomial(unseen, k, replacement=replacement, generator=generator))
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long, device=users.device)


def _row_duplicates(items: Tensor) -> Tensor:
    """Bool mask of entries that repeat an earlier-sorted entry of the same row."""
    sorted_items, order = items.sort(dim=1)
    dup_sorted = torch.zeros_like(items, dtype=torch.bool)
    dup_sorted[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    dup = torch.zeros_like(dup_sorted)
    return dup.scatter_(1, order, dup_sorted)


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
        bad = is_member(seen_keys, users[rows, None], sub, num_items) | _row_duplicates(sub)
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        sub[bad] = torch.randint(num_items, (n_bad,), generator=generator)
        negs[rows] = sub
        rows = rows[bad.any(1)]
    else:
        sub = negs[rows]
        rows = rows[(is_member(seen_keys, users[rows, None], sub, num_items)
                     | _row_duplicates(sub)).any(1)]
        negs[rows] = _exact_unseen(users[rows], num_negatives, seen_keys, num_items, generator,
                                   replacement=False)
    return torch.cat([positives[:, None].long(), negs], dim=1)


def sample_negatives(users: Tensor, num_negatives: int, train_keys: Tensor, num_items: int,
                     generator: torch.Generator) -> Tensor:
    """Training negatives: (B, num_negatives) int64 items not among each user's training
    positives, uniform with replacement (as in NCF). Runs on the device of `users`; random."""
    negs = torch.randint(num_items, (len(users), num_negatives), generator=generator,
                         device=users.device)
    flat_users = users[:, None].expand_as(negs).reshape(-1)
    flat = negs.view(-1)
    # each round re-checks only the slots redrawn in the previous one
    slots = torch.nonzero(is_member(train_keys, flat_users, flat, num_items)).squeeze(1)
    for _ in range(_MAX_ROUNDS):
        if slots.numel() == 0:
            return negs
        flat[slots] = torch.randint(num_items, (slots.numel(),), generator=generator,
                                    device=users.device)
        slots = slots[is_member(train_keys, flat_users[slots], flat[slots], num_items)]
    rows = torch.unique(torch.div(slots, num_negatives, rounding_mode="floor"))
    negs[rows] = _exact_unseen(users[rows], num_negatives, train_keys, num_items, generator,
                               replacement=True)
    return negs


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
