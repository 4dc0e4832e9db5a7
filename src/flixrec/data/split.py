"""Train / validation / test splits of a ratings table, as row indices (`data.split`).

- `leave_one_out`: per user, the latest rating is test, the second latest validation.
- `temporal`: the notebook's global cut by date; per user, the first rating after the cut is
  test and the latest before it validation.
- `probe`: the Netflix probe set; per user, the latest probe rating is test, the latest
  non-probe rating validation.

All splits are whole-array: per-user "latest" / "first" rows are found with scatter-max passes
over one seeded int64 recency key, and per-user counts with bincount, never by looping over users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from flixrec.errors import FlixrecError

log = logging.getLogger(__name__)

_TIE_BITS = 12


@dataclass
class Split:
    """Row indices into a `Ratings` table (int64), and counts for the log.

    train_rows: every training rating. val_rows / test_rows: one held-out rating per evaluated
    user, aligned with each other and ordered by user (val_rows may be empty for splits without
    validation, e.g. none). stats: counts a user would want to see (evaluated, excluded and why).
    """

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    stats: dict = field(default_factory=dict)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A seeded, well-mixed 64-bit hash of uint64 values (wrapping arithmetic). Returns a new
    uint64 array shaped like `x`."""
    return _splitmix64_inplace(x.astype(np.uint64, copy=True))


def _splitmix64_inplace(x: np.ndarray) -> np.ndarray:
    """`splitmix64` overwriting the uint64 array `x`. In-place operations with one scratch
    buffer: at 100M ratings each fresh temporary costs more in page faults than the arithmetic."""
    tmp = np.empty_like(x)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(x, np.uint64(shift), out=tmp)
            x ^= tmp
            x *= np.uint64(mult)
        np.right_shift(x, np.uint64(31), out=tmp)
        x ^= tmp
    return x


def recency_key(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_items: int,
                seed: int) -> np.ndarray:
    """int64 key ordering one user's ratings by time; same-time ties by a seeded hash of the
    (user, item) pair, then by item id, so the order never depends on file order and two
    distinct items of one user never share a key. Built in place in two (R,) 64-bit buffers."""
    item_bits = max(int(num_items - 1).bit_length(), 1)
    t0 = int(times.min(initial=0))
    time_bits = max((int(times.max(initial=t0)) - t0).bit_length(), 1)
    if time_bits + _TIE_BITS + item_bits > 62:
        raise FlixrecError(f"the ratings' dates span {time_bits} bits of time units and the movies "
                           f"{item_bits} bits of ids, more than the 62 - {_TIE_BITS} bits of a recency key "
                           f"(e.g. a timestamp far from the others); check the dates")
    pair = users.astype(np.uint64)
    pair *= np.uint64(num_items)
    np.add(pair, items, out=pair, dtype=np.uint64, casting="unsafe")  # items are >= 0
    pair ^= np.uint64((int(seed) * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF)
    tie = _splitmix64_inplace(pair)
    tie >>= np.uint64(64 - _TIE_BITS)
    tie <<= np.uint64(item_bits)
    key = times.astype(np.int64)
    key -= t0
    key <<= _TIE_BITS + item_bits
    key |= tie.view(np.int64)
    del tie, pair
    np.bitwise_or(key, items, out=key, dtype=np.int64, casting="unsafe")
    return key


def _argmax_per_user(users: torch.Tensor, key: torch.Tensor, num_users: int) -> torch.Tensor:
    """Row index of each user's largest key (-1 for users with no row with key >= 0)."""
    best = torch.full((num_users,), -1, dtype=torch.int64)
    best.scatter_reduce_(0, users, key, reduce="amax")
    is_best = (key == best[users]) & (key >= 0)
    rows = torch.full((num_users,), -1, dtype=torch.int64)
    # duplicate (user, item, time) rows share a key: keep the first, deterministically
    rows.scatter_reduce_(0, users[is_best], torch.nonzero(is_best).squeeze(1), reduce="amin",
                         include_self=False)
    return rows


def leave_one_out(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_users: int,
                  num_items: int, seed: int, min_ratings: int = 3) -> Split:
    """Per user, the latest rating is test and the second latest validation (NCF protocol).

    Users with fewer than `min_ratings` ratings keep all of them in training and are not
    evaluated. Deterministic for a seed; same-day ties use the seeded rule of `recency_key`.
    """
    if min_ratings < 2:
        raise ValueError(f"min_ratings={min_ratings}: an evaluated user needs a test and a validation rating")
    u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
    key = torch.from_numpy(recency_key(users, items, times, num_items, seed))
    counts = torch.bincount(u, minlength=num_users)
    evaluated = counts >= min_ratings
    test = _argmax_per_user(u, key, num_users)
    key[test[test >= 0]] = -1
    val = _argmax_per_user(u, key, num_users)
    test, val = test[evaluated], val[evaluated]
    held_out = torch.zeros(len(u), dtype=torch.bool)
    held_out[test] = True
    held_out[val] = True
    stats = {
        "users_evaluated": int(evaluated.sum()),
        "users_train_only": int((~evaluated & (counts > 0)).sum()),
        "reason_train_only": f"fewer than {min_ratings} ratings",
    }
    log.info("leave_one_out: %d users evaluated; %d users with fewer than %d ratings kept for "
             "training only", stats["users_evaluated"], stats["users_train_only"], min_ratings)
    return Split(np.flatnonzero(~held_out.numpy()), val.numpy(), test.numpy(), stats)


def _key_where(key: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`key` where `mask`, -1 (absent for `_argmax_per_user`) elsewhere."""
    return torch.where(mask, key, torch.full_like(key, -1))


def _flip(key: torch.Tensor) -> torch.Tensor:
    """Order-reversing map of recency keys onto non-negative int64, so `_argmax_per_user` of the
    result finds the earliest row (keys are below 2**62 by `recency_key`'s bit budget)."""
    return (1 << 62) - 1 - key


def _held_out_split(u: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
                    dropped: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train rows, val rows, test rows) as int64 numpy: train is every row that is neither
    dropped (bool (R,)) nor a validation row."""
    keep = ~dropped
    keep[val] = False
    return np.flatnonzero(keep.numpy()), val.numpy(), test.numpy()


def temporal(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_users: int,
             num_items: int, seed: int, fraction: float = 0.8, min_ratings: int = 3,
             time_unit: str = "day") -> Split:
    """The notebook's global split by date, with a validation rating added.

    The cut is the time of the rating at position `floor(fraction * R)` of all R ratings ordered
    by time: ratings strictly before it are history, the rest (at or after it) are the future.
    A user is evaluated if they have a future rating and at least `min_ratings - 1` history
    ratings. Their test positive is their FIRST future rating and their validation positive their
    LATEST history rating (held out of training), so model selection never sees the future;
    same-time ties follow the seeded rule of `recency_key`. Training is every history rating
    except those validation ratings; future ratings other than test positives are used for
    nothing (they still count as rated when evaluation negatives are drawn). Users with future
    ratings but no history, or too short a history, are counted and not evaluated.
    `times` are in the table's unit (`time_unit` "day" or "second", used only for the log).
    Returns a `Split` with val/test rows aligned and ordered by user.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must be between 0 and 1")
    R = len(users)
    t = np.asarray(times)
    k = min(int(fraction * R), R - 1)
    cut = int(np.partition(t, k)[k]) if R else 0  # O(R) selection, not a full sort
    u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
    key = torch.from_numpy(recency_key(users, items, times, num_items, seed))
    before = torch.from_numpy(t < cut)
    history = torch.bincount(u[before], minlength=num_users)
    future = torch.bincount(u[~before], minlength=num_users)
    has_future = future > 0
    evaluated = has_future & (history >= max(min_ratings - 1, 1))
    test = _argmax_per_user(u, _key_where(_flip(key), ~before), num_users)[evaluated]
    val = _argmax_per_user(u, _key_where(key, before), num_users)[evaluated]
    train, val, test = _held_out_split(u, val, test, dropped=~before)
    day = cut if time_unit == "day" else cut // 86400
    stats = {
        "users_evaluated": int(evaluated.sum()),
        "users_excluded_no_history": int((has_future & (history == 0)).sum()),
        "users_excluded_short_history": int((has_future & (history > 0) & ~evaluated).sum()),
        "users_train_only_no_future": int(((history > 0) & ~has_future).sum()),
        "ratings_before_cut": int(before.sum()),
        "ratings_after_cut": int(R - before.sum()),
        "cut_day": int(day),
        "reason_excluded": f"no rating before the cut, or fewer than {max(min_ratings - 1, 1)}",
    }
    log.info("temporal: cut at %s (fraction %.3g): %d ratings before it, %d at or after; "
             "%d users evaluated; excluded: %d users with no rating before the cut, %d with fewer "
             "than %d; %d users with no rating after the cut are kept for training only",
             np.datetime64(int(day), "D"), fraction, stats["ratings_before_cut"],
             stats["ratings_after_cut"], stats["users_evaluated"],
             stats["users_excluded_no_history"], stats["users_excluded_short_history"],
             max(min_ratings - 1, 1), stats["users_train_only_no_future"])
    return Split(train, val, test, stats)


def dense_index(ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """Dense index of each original id (any shape) in the increasing `table_ids`, int64; -1
    where the id is not in the table (e.g. removed by a subset)."""
    ids = np.asarray(ids)
    pos = np.searchsorted(table_ids, ids).clip(max=max(len(table_ids) - 1, 0))
    found = (table_ids[pos] == ids) if len(table_ids) else np.zeros(ids.shape, bool)
    return np.where(found, pos, -1).astype(np.int64)


def map_probe(customer_ids: np.ndarray, movie_ids: np.ndarray, user_ids: np.ndarray,
              item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Original (customer, movie) ids of probe pairs -> dense (users, items), int64 (P,),
    -1 where the customer or movie is not in the table (e.g. removed by a subset).
    `user_ids` / `item_ids` are the table's increasing original ids."""
    return dense_index(customer_ids, user_ids), dense_index(movie_ids, item_ids)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array (sort + compare: numpy's hash-based `unique`
    is many times slower on these keys)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) else x


def _in_sorted(queries: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Bool (N,): is each int64 query in `sorted_set` (sorted, distinct int64)?

    A byte table indexed by a multiplicative hash, ~16 slots per member, first rules out all
    but a few percent of the non-members, so only those and the members pay for a binary search
    (random binary searches into a set larger than the CPU cache cost ~0.4 us each: 40 s for
    100M ratings against the 1.4M probe pairs, against ~5 s with the table)."""
    out = np.zeros(len(queries), bool)
    if len(sorted_set) == 0 or len(queries) == 0:
        return out
    bits = min(max((16 * len(sorted_set)).bit_length(), 10), 28)

    def slot(x: np.ndarray) -> np.ndarray:
        h = x.astype(np.uint64)
        with np.errstate(over="ignore"):
            h *= np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits are well mixed
        h >>= np.uint64(64 - bits)
        return h

    table = np.zeros(1 << bits, bool)
    table[slot(sorted_set)] = True
    maybe = np.flatnonzero(table[slot(queries)])
    q = queries[maybe]
    pos = np.searchsorted(sorted_set, q).clip(max=len(sorted_set) - 1)
    out[maybe] = sorted_set[pos] == q
    return out


def probe(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_users: int,
          num_items: int, seed: int, probe_users: np.ndarray, probe_items: np.ndarray,
          min_ratings: int = 3) -> Split:
    """The Netflix probe set as test positives.

    `probe_users` / `probe_items` (int (P,), dense ids, -1 for pairs not in the table) are the
    probe pairs. As in the Netflix Prize, probe ratings are part of the training file, so they
    are found among the table's rows. A user is evaluated if they have a probe rating and at
    least `min_ratings - 1` other ratings. For them, the test positive is their latest probe
    rating; ALL their probe ratings leave training (the Prize's training-minus-probe convention,
    so no probe rating of an evaluated user is trained on), and the validation positive is their
    latest remaining rating (also held out). Users with too few non-probe ratings keep every
    rating, probe included, for training only: nothing of theirs is tested. Same-time ties
    follow `recency_key`'s seeded rule. val/test rows are aligned and ordered by user.
    """
    pu, pi = np.asarray(probe_users, np.int64), np.asarray(probe_items, np.int64)
    entry_keys = np.where((pu >= 0) & (pi >= 0), pu * num_items + pi, -1)
    probe_keys = _sorted_unique(entry_keys[entry_keys >= 0])
    row_keys = users.astype(np.int64)
    row_keys *= num_items
    row_keys += items
    in_probe_np = _in_sorted(row_keys, probe_keys)
    found = _in_sorted(entry_keys, _sorted_unique(row_keys[in_probe_np]))
    del row_keys
    u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
    in_probe = torch.from_numpy(in_probe_np)
    key = torch.from_numpy(recency_key(users, items, times, num_items, seed))
    probe_count = torch.bincount(u[in_probe], minlength=num_users)
    other_count = torch.bincount(u[~in_probe], minlength=num_users)
    has_probe = probe_count > 0
    evaluated = has_probe & (other_count >= max(min_ratings - 1, 1))
    test = _argmax_per_user(u, _key_where(key, in_probe), num_users)[evaluated]
    val = _argmax_per_user(u, _key_where(key, ~in_probe), num_users)[evaluated]
    held_out = in_probe & evaluated[u]
    train, val, test = _held_out_split(u, val, test, dropped=held_out)
    stats = {
        "users_evaluated": int(evaluated.sum()),
        "users_excluded_short_history": int((has_probe & ~evaluated).sum()),
        "users_train_only_no_probe": int(((other_count > 0) & ~has_probe).sum()),
        "probe_pairs": int(len(pu)),
        "probe_pairs_not_in_data": int((~found).sum()),
        "probe_ratings_held_out": int(held_out.sum()),
        "reason_excluded": f"fewer than {max(min_ratings - 1, 1)} ratings outside the probe set",
    }
    log.info("probe: %d of %d probe pairs found in the data; %d users evaluated (latest probe "
             "rating tested, %d probe ratings held out of training); %d users with fewer than %d "
             "non-probe ratings and %d users without probe ratings are kept for training only",
             len(pu) - stats["probe_pairs_not_in_data"], len(pu), stats["users_evaluated"],
             stats["probe_ratings_held_out"], stats["users_excluded_short_history"],
             max(min_ratings - 1, 1), stats["users_train_only_no_probe"])
    return Split(train, val, test, stats)
