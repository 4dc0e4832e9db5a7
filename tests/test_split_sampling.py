"""Invariants of the leave-one-out split, evaluation candidates and training negatives."""

import numpy as np
import pytest
import torch

from flixrec.data.sampling import UnratedItems, is_member, pair_keys, sample_candidates
from flixrec.data.split import leave_one_out
from flixrec.errors import ConfigError


def random_ratings(num_users=300, num_items=120, seed=0, max_per_user=60):
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(num_users):  # fixture construction only, not library code
        n = int(rng.integers(1, max_per_user))
        users.append(np.full(n, u))
        items.append(rng.choice(num_items, n, replace=False))
        times.append(rng.integers(0, 30, n))  # few distinct days -> many same-day ties
    return (np.concatenate(users).astype(np.int32), np.concatenate(items).astype(np.int16),
            np.concatenate(times).astype(np.int32))


def test_leave_one_out_invariants():
    users, items, times = random_ratings()
    sp = leave_one_out(users, items, times, 300, 120, seed=7)
    counts = np.bincount(users, minlength=300)
    evaluated = np.flatnonzero(counts >= 3)
    # one test and one validation rating per evaluated user, ordered by user
    assert np.array_equal(users[sp.test_rows], evaluated)
    assert np.array_equal(users[sp.val_rows], evaluated)
    # train, val, test partition the ratings
    all_rows = np.concatenate([sp.train_rows, sp.val_rows, sp.test_rows])
    assert np.array_equal(np.sort(all_rows), np.arange(len(users)))
    # users with fewer than 3 ratings are training-only
    assert sp.stats["users_train_only"] == int(((counts > 0) & (counts < 3)).sum())
    # the test rating is not earlier than any training or validation rating of its user
    latest_train = np.full(300, -1)
    np.maximum.at(latest_train, users[sp.train_rows], times[sp.train_rows])
    assert (times[sp.test_rows] >= times[sp.val_rows]).all()
    assert (times[sp.val_rows] >= latest_train[evaluated]).all()


def test_leave_one_out_tie_rule_is_seeded_and_ignores_file_order():
    users, items, times = random_ratings(seed=3)
    a = leave_one_out(users, items, times, 300, 120, seed=1)
    perm = np.random.default_rng(0).permutation(len(users))
    b = leave_one_out(users[perm], items[perm], times[perm], 300, 120, seed=1)
    # same (user, item) pairs held out whatever the row order
    pairs = lambda u, i, rows: set(zip(u[rows].tolist(), i[rows].tolist()))
    assert pairs(users, items, a.test_rows) == pairs(users[perm], items[perm], b.test_rows)
    assert pairs(users, items, a.val_rows) == pairs(users[perm], items[perm], b.val_rows)
    # a different seed breaks same-day ties differently somewhere
    c = leave_one_out(users, items, times, 300, 120, seed=2)
    assert pairs(users, items, a.test_rows) != pairs(users, items, c.test_rows)


def make_candidates(seed=0, num_negatives=100):
    users, items, times = random_ratings(num_items=400, seed=seed, max_per_user=200)
    U, I = 300, 400
    sp = leave_one_out(users, items, times, U, I, seed=0)
    u = torch.from_numpy(users.astype(np.int64))
    i = torch.from_numpy(items.astype(np.int64))
    seen = pair_keys(u, i, I)
    gen = torch.Generator().manual_seed(seed)
    eval_users = u[sp.test_rows]
    cands = sample_candidates(eval_users, i[sp.test_rows], seen, I, num_negatives, gen)
    return eval_users, cands, seen, i[sp.test_rows], I


def test_candidates_unseen_distinct_and_positive_first():
    eval_users, cands, seen, positives, I = make_candidates()
    assert cands.shape == (len(eval_users), 101)
    assert torch.equal(cands[:, 0], positives)
    negs = cands[:, 1:]
    assert not is_member(seen, eval_users[:, None], negs, I).any()
    sorted_rows = cands.sort(dim=1).values
    assert (sorted_rows[:, 1:] != sorted_rows[:, :-1]).all()  # 101 distinct items per row
    assert ((negs >= 0) & (negs < I)).all()


def test_candidates_are_fixed_by_the_seed():
    _, a, *_ = make_candidates(seed=5)
    _, b, *_ = make_candidates(seed=5)
    _, c, *_ = make_candidates(seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_candidates_are_what_an_unsorted_check_gives():
    """Rows are checked sorted (for speed); the candidates, their order included, must be those
    of checking each row as drawn (so figures stay comparable across versions, and the NCF
    split's replacements, which take a row's first fresh draw, stay uniform)."""
    from flixrec.data import sampling

    def unsorted_reference(users, seen, num_items, n, gen):
        def bad_slots(negs):
            order = negs.sort(dim=1)
            repeat = torch.zeros_like(negs, dtype=torch.bool)
            repeat.scatter_(1, order.indices[:, 1:], order.values[:, 1:] == order.values[:, :-1])
            return is_member(seen, users[:, None], negs, num_items) | repeat

        negs = torch.randint(num_items, (len(users), n), generator=gen)
        for _ in range(sampling._MAX_ROUNDS):
            bad = bad_slots(negs)
            if not bad.any():
                return negs
            negs[bad] = torch.randint(num_items, (int(bad.sum()),), generator=gen)
        rows = bad_slots(negs).any(1)  # heavy raters: the exact draw
        negs[rows] = sampling._exact_unseen(users[rows], n, seen, num_items, gen)
        return negs

    eval_users, _, seen, positives, I = make_candidates()
    ours = sample_candidates(eval_users, positives, seen, I, 100, torch.Generator().manual_seed(3))
    theirs = unsorted_reference(eval_users, seen, I, 100, torch.Generator().manual_seed(3))
    assert torch.equal(ours[:, 1:], theirs)


def test_heavy_rater_gets_exact_candidates_or_clear_error():
    I = 120
    # user 0 rated all but 101 movies: rejection sampling struggles, the exact fallback finishes
    rated = torch.arange(I - 101)
    u = torch.zeros(len(rated), dtype=torch.long)
    seen = pair_keys(u, rated, I)
    gen = torch.Generator().manual_seed(0)
    cands = sample_candidates(torch.tensor([0]), torch.tensor([0]), seen, I, 101, gen)
    assert set(cands[0, 1:].tolist()) == set(range(I - 101, I))
    with pytest.raises(ConfigError, match="num_test_negatives=102"):
        sample_candidates(torch.tensor([0]), torch.tensor([0]), seen, I, 102, gen)


def test_training_negatives_avoid_training_positives():
    I = 50
    users = torch.arange(200) % 20
    items = (torch.arange(200) * 7) % I
    keys = pair_keys(users, items, I)
    gen = torch.Generator().manual_seed(0)
    negs = UnratedItems(keys, I).sample(users, 4, gen)
    assert negs.shape == (200, 4)
    assert not is_member(keys, users[:, None], negs, I).any()
    # nearly-full user: 49 of 50 movies rated -> the only negative is movie 49
    full_u = torch.zeros(49, dtype=torch.long)
    full_keys = pair_keys(full_u, torch.arange(49), I)
    negs = UnratedItems(full_keys, I).sample(torch.zeros(3, dtype=torch.long), 4, gen)
    assert (negs == 49).all()


def test_training_negatives_are_exactly_uniform_over_unrated_items():
    # rows from empty to one unrated item, with duplicate pairs; a chi-square test per user
    gen = torch.Generator().manual_seed(0)
    U, I = 30, 40
    rated = torch.rand(U, I, generator=gen) < torch.rand(U, 1, generator=gen) * 0.95
    rated[torch.arange(U), torch.randint(I, (U,), generator=gen)] = False
    rated[3], rated[3, 17], rated[5] = True, False, False
    u, i = rated.nonzero(as_tuple=True)
    index = UnratedItems(pair_keys(torch.cat([u, u[:20]]), torch.cat([i, i[:20]]), I), I)
    users = torch.arange(U).repeat(2000)
    negs = index.sample(users, 5, gen)
    assert negs.shape == (len(users), 5)
    assert not rated[users[:, None], negs].any()
    assert (negs[users == 3] == 17).all()
    counts = torch.zeros(U, I).index_put_((users[:, None].expand_as(negs), negs),
                                          torch.ones(negs.shape), accumulate=True)
    free = (~rated).sum(1, keepdim=True)
    expected = 10_000 / free
    chi2 = (((counts - expected) ** 2 / expected) * ~rated).sum()
    dof = int((free - 1).sum())
    assert chi2 < dof + 5 * (2 * dof) ** 0.5
    with pytest.raises(ConfigError, match="rated all"):
        UnratedItems(pair_keys(torch.zeros(I, dtype=torch.long), torch.arange(I), I), I)
