"""Subsets (conf/data/subset) and the temporal and probe splits: invariants, hand examples,
the composed Hydra config and the real MovieLens 100K counts."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from flixrec.data.datamodule import RatingsDataModule
from flixrec.data.movielens import ML100KReader
from flixrec.data.netflix import NetflixReader
from flixrec.data.ratings import Ratings, read_cached
from flixrec.data.split import probe, temporal
from flixrec.data.subset import DateWindow, Full, KCore, SampleUsers, TopUsers
from flixrec.errors import ConfigError
from tests.conftest import shared_data

DAY0 = 12784  # 2005-01-01 in days since 1970-01-01


def make_table(num_users: int = 200, num_items: int = 80, num_ratings: int = 3000, seed: int = 0,
               num_days: int = 60, time_unit: str = "day") -> Ratings:
    """Random ratings with distinct (user, item) pairs, skewed activity, many same-day ties.
    Original ids are sparse (dense * 7 + 3) so tests see the dense/original distinction."""
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.5, num_ratings) * 10).astype(np.int64) % num_users
    keys = np.unique(users * num_items + rng.integers(0, num_items, num_ratings))
    users, items = keys // num_items, keys % num_items
    order = rng.permutation(len(keys))  # file order carries no meaning
    users, items = users[order], items[order]
    days = DAY0 + rng.integers(0, num_days, len(users))
    present_u, present_i = np.unique(users), np.unique(items)
    table = Ratings(users=users.astype(np.int32), items=items.astype(np.int16),
                    ratings=rng.integers(1, 6, len(users)).astype(np.int8),
                    times=days.astype(np.int32), user_ids=np.arange(num_users) * 7 + 3,
                    item_ids=np.arange(num_items) * 7 + 3)
    table = table.take(np.ones(len(users), bool))  # drop ids nobody rated
    assert table.num_users == len(present_u) and table.num_items == len(present_i)
    if time_unit == "second":
        table.times = table.times.astype(np.int64) * 86400 + rng.integers(0, 86400, len(table))
        table.time_unit = "second"
    return table


def pairs(table: Ratings) -> set[tuple[int, int]]:
    """(original user id, original item id) of every row."""
    return set(zip(table.user_ids[table.users].tolist(), table.item_ids[table.items].tolist()))


# ----------------------------------------------------------------------------------------------
# subsets


def test_sample_users_picks_exactly_n_users_with_all_their_ratings_and_is_seeded():
    table = make_table()
    a = SampleUsers(n_users=50, seed=1)(table)
    assert a.num_users == 50
    counts = dict(zip(table.user_ids.tolist(), np.bincount(table.users).tolist()))
    assert len(a) == sum(counts[u] for u in a.user_ids.tolist())  # every rating of each user
    assert pairs(a) <= pairs(table)
    assert np.array_equal(SampleUsers(n_users=50, seed=1)(table).user_ids, a.user_ids)
    assert not np.array_equal(SampleUsers(n_users=50, seed=2)(table).user_ids, a.user_ids)
    assert len(SampleUsers(n_users=10**6, seed=1)(table)) == len(table)  # more than present: all


def test_top_users_picks_the_most_active():
    table = make_table()
    top = TopUsers(n_users=30)(table)
    counts = np.bincount(table.users, minlength=table.num_users)
    chosen = np.isin(table.user_ids, top.user_ids)
    assert chosen.sum() == 30
    assert counts[chosen].min() >= counts[~chosen].max()
    assert len(top) == counts[chosen].sum()
    # ties at the boundary go to the lower customer id
    boundary = counts[chosen].min()
    tied = table.user_ids[counts == boundary]
    kept = np.isin(tied, top.user_ids)
    assert np.all(np.diff(kept.astype(int)) <= 0)  # a prefix of the increasing ids


def kcore_brute_force(users, items, ku: int, ki: int) -> set[int]:
    """The largest row set meeting both minimums, by enumerating every subset (tiny inputs)."""
    best: set[int] = set()
    rows = range(len(users))
    for n in range(len(users), 0, -1):
        for combo in itertools.combinations(rows, n):
            u = np.bincount(users[list(combo)])
            i = np.bincount(items[list(combo)])
            if all(u[users[r]] >= ku and i[items[r]] >= ki for r in combo):
                return set(combo)
    return best


def test_kcore_hand_example_cascades_to_the_maximal_core():
    # users 0..2 and movies 0..2 form a 2-core (a 3x3 block minus the diagonal); user 3 rated
    # movies 0 and 3, and movie 3 has only that rating, so dropping movie 3 leaves user 3 with
    # one rating, which is dropped in a second round; user 4's single rating goes in round one.
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4], np.int32)
    items = np.array([1, 2, 0, 2, 0, 1, 0, 3, 1], np.int16)
    table = Ratings(users=users, items=items, ratings=np.full(9, 4, np.int8),
                    times=np.arange(9, dtype=np.int32), user_ids=np.arange(5), item_ids=np.arange(4))
    core = KCore(min_user_ratings=2, min_item_ratings=2)(table)
    assert pairs(core) == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}
    expected = kcore_brute_force(users, items, 2, 2)
    assert pairs(core) == {(int(users[r]), int(items[r])) for r in expected}


def test_kcore_meets_both_minimums_and_matches_brute_force_on_small_random_tables():
    table = make_table()
    core = KCore(min_user_ratings=8, min_item_ratings=15)(table)
    assert 0 < len(core) < len(table)
    assert np.bincount(core.users).min() >= 8 and np.bincount(core.items).min() >= 15
    for seed in range(4):
        rng = np.random.default_rng(seed)
        keys = np.unique(rng.integers(0, 5, 12) * 5 + rng.integers(0, 5, 12))
        users, items = (keys // 5).astype(np.int32), (keys % 5).astype(np.int16)
        small = Ratings(users=users, items=items, ratings=np.ones(len(keys), np.int8),
                        times=np.zeros(len(keys), np.int32), user_ids=np.arange(5),
                        item_ids=np.arange(5)).take(np.ones(len(keys), bool))
        expected = kcore_brute_force(small.users, small.items, 2, 2)
        if not expected:
            with pytest.raises(ConfigError, match="kcore"):
                KCore(min_user_ratings=2, min_item_ratings=2)(small)
            continue
        got = KCore(min_user_ratings=2, min_item_ratings=2)(small)
        assert pairs(got) == {(int(small.user_ids[small.users[r]]), int(small.item_ids[small.items[r]]))
                              for r in expected}


@pytest.mark.parametrize("time_unit", ["day", "second"])
def test_date_window_keeps_exactly_the_ratings_inside_inclusive_bounds(time_unit):
    table = make_table(time_unit=time_unit)
    window = DateWindow(start="2005-01-10", end="2005-01-20")(table)
    days = window.days()
    assert days.min() == DAY0 + 9 and days.max() == DAY0 + 19  # both ends inclusive
    inside = (table.days() >= DAY0 + 9) & (table.days() <= DAY0 + 19)
    assert len(window) == inside.sum()
    assert len(DateWindow(start="2005-01-10")(table)) == (table.days() >= DAY0 + 9).sum()
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        DateWindow(start="10/01/2005")(table)
    with pytest.raises(ConfigError, match="date_window.*no rating falls in the window"):
        DateWindow(start="2010-01-01")(table)


def test_min_rating_drops_lower_ratings_and_composes_with_other_options():
    table = make_table()
    pos = Full(min_rating=4)(table)
    assert pos.ratings.min() >= 4 and len(pos) == (table.ratings >= 4).sum()
    assert Full()(table) is table  # the default is a no-op
    # "most active" counts positives once a threshold is set
    top = TopUsers(n_users=10, min_rating=4)(table)
    assert top.ratings.min() >= 4
    positives = np.bincount(table.users[table.ratings >= 4], minlength=table.num_users)
    chosen = np.isin(table.user_ids, top.user_ids)
    assert positives[chosen].min() >= positives[~chosen].max()
    with pytest.raises(ConfigError, match="min_rating=6"):
        Full(min_rating=6)(table)


# ----------------------------------------------------------------------------------------------
# temporal split


def test_temporal_split_invariants():
    table = make_table(num_ratings=4000, num_days=40)
    u, i, t = table.users, table.items, table.times
    U, I = table.num_users, table.num_items
    sp = temporal(u, i, t, U, I, seed=3, fraction=0.7, min_ratings=3)
    cut = np.sort(t)[int(0.7 * len(t))]
    before = t < cut
    # every training rating is from before the cut, and so is every validation rating
    assert (t[sp.train_rows] < cut).all() and (t[sp.val_rows] < cut).all()
    # one test and one validation rating per evaluated user, aligned and ordered by user
    evaluated = u[sp.test_rows]
    assert np.array_equal(u[sp.val_rows], evaluated) and (np.diff(evaluated) > 0).all()
    # the test positive is the user's first rating at or after the cut
    first_after = np.full(U, np.iinfo(np.int64).max)
    np.minimum.at(first_after, u[~before], t[~before].astype(np.int64))
    assert (t[sp.test_rows] >= cut).all()
    assert np.array_equal(t[sp.test_rows], first_after[evaluated])
    # the validation positive is the user's latest rating before the cut, held out of training
    last_before = np.full(U, -1)
    np.maximum.at(last_before, u[before], t[before])
    assert np.array_equal(t[sp.val_rows], last_before[evaluated])
    assert not np.isin(sp.val_rows, sp.train_rows).any()
    assert len(sp.train_rows) == before.sum() - len(sp.val_rows)
    # users with no history (or a single rating before the cut) are excluded and counted
    history = np.bincount(u[before], minlength=U)
    future = np.bincount(u[~before], minlength=U)
    assert sp.stats["users_excluded_no_history"] == ((future > 0) & (history == 0)).sum() > 0
    assert sp.stats["users_excluded_short_history"] == ((future > 0) & (history == 1)).sum()
    assert sp.stats["users_evaluated"] == len(evaluated) == ((future > 0) & (history >= 2)).sum()
    assert sp.stats["users_train_only_no_future"] == ((history > 0) & (future == 0)).sum()
    assert not np.isin(evaluated, np.flatnonzero(history < 2)).any()
    assert all(isinstance(v, int) for k, v in sp.stats.items() if not k.startswith("reason"))


def test_temporal_tie_rule_is_seeded_and_ignores_file_order():
    table = make_table(num_days=8)  # many same-day ties at and after the cut
    u, i, t, U, I = table.users, table.items, table.times, table.num_users, table.num_items
    a = temporal(u, i, t, U, I, seed=1)
    perm = np.random.default_rng(0).permutation(len(u))
    b = temporal(u[perm], i[perm], t[perm], U, I, seed=1)
    held = lambda uu, ii, rows: set(zip(uu[rows].tolist(), ii[rows].tolist()))
    assert held(u, i, a.test_rows) == held(u[perm], i[perm], b.test_rows)
    assert held(u, i, a.val_rows) == held(u[perm], i[perm], b.val_rows)
    c = temporal(u, i, t, U, I, seed=2)
    assert held(u, i, a.test_rows) != held(u, i, c.test_rows)


# ----------------------------------------------------------------------------------------------
# probe split


COMBINED = """\
1:
10,3,2005-01-01
20,4,2005-01-02
30,5,2005-01-03
2:
10,5,2005-02-01
20,1,2005-02-02
3:
10,2,2005-03-01
20,3,2005-01-05
30,4,2005-01-06
4:
10,4,2005-03-01
30,2,2005-01-01
"""
# movies 5..12 rated by customers 50 and 60 only, so everyone has unrated movies
COMBINED += "".join(f"{m}:\n50,3,2005-04-0{m % 9 + 1}\n60,4,2005-04-01\n" for m in range(5, 13))
PROBE = """\
1:
30
40
3:
10
4:
10
30
2:
20
5:
10
99:
10
"""


def test_probe_split_on_a_kaggle_layout_fixture(tmp_path):
    root = tmp_path / "netflix"
    root.mkdir()
    (root / "combined_data_1.txt").write_text(COMBINED)
    dm = RatingsDataModule("netflix", str(root), NetflixReader, cache_dir=str(tmp_path / "cache"),
                           split="probe", num_test_negatives=3, seed=0)
    with pytest.raises(Exception, match="probe.txt"):  # no probe file yet: a DataError naming it
        dm.setup()
    (root / "probe.txt").write_text(PROBE)
    dm = RatingsDataModule("netflix", str(root), NetflixReader, cache_dir=str(tmp_path / "cache"),
                           split="probe", num_test_negatives=3, seed=0)
    dm.setup()
    t = dm.table
    customer = lambda users: t.user_ids[users.numpy()].tolist()
    movie = lambda items: t.item_ids[items.numpy()].tolist()
    assert customer(dm.eval_users) == [10, 20]  # 30 has one non-probe rating: training only
    test, val = movie(dm.test_items[:, 0]), movie(dm.val_items[:, 0])
    assert test[0] in (3, 4) and test[1] == 2  # customer 10: a same-day tie, broken by the seed
    assert val == [2, 3]  # the latest rating outside the probe set
    train = set(zip(customer(dm.train_users), movie(dm.train_items)))
    # every probe rating of an evaluated user leaves training; customer 30 keeps all of theirs
    assert not {(10, 3), (10, 4), (20, 2)} & train
    assert {(10, 1), (20, 1), (30, 1), (30, 3), (30, 4)} <= train
    assert not {(10, 2), (20, 3)} & train  # validation ratings are held out too
    stats = dm.split_stats
    assert stats["users_evaluated"] == 2 and stats["users_excluded_short_history"] == 1
    assert stats["users_train_only_no_probe"] == 2  # customers 50 and 60
    assert stats["probe_pairs"] == 8 and stats["probe_pairs_not_in_data"] == 3  # 40/1, 10/5, 10/99
    assert stats["probe_ratings_held_out"] == 3
    # candidates are never rated by their user, probe ratings included
    seen = pairs(t)
    for row, u in zip(dm.test_items[:, 1:].tolist(), customer(dm.eval_users)):
        assert not any((u, m) in seen for m in t.item_ids[row].tolist())


def test_probe_split_function_counts_pairs_missing_from_the_table():
    table = make_table()
    sp = probe(table.users, table.items, table.times, table.num_users, table.num_items, 0,
               np.array([-1, 0]), np.array([0, -1]))
    assert sp.stats["users_evaluated"] == 0 and sp.stats["probe_pairs_not_in_data"] == 2
    assert len(sp.train_rows) == len(table)


# ----------------------------------------------------------------------------------------------
# configuration


def test_composed_config_with_subset_and_temporal_split(make_cfg):
    cfg = make_cfg(["data/subset=top_users", "data.subset.n_users=50", "data.split=temporal",
                    "data.temporal_fraction=0.75"])
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    full = read_cached(dm.reader, dm.root, dm.cache_dir)
    counts = np.sort(np.bincount(full.users))[::-1]
    stats = dm.data_stats()
    assert stats["users"] == 50 and stats["ratings"] == counts[:50].sum()
    assert stats["items"] == len(np.unique(dm.table.items))
    # every user with a rating after the cut is evaluated, excluded or short of candidates
    assert stats["eval_users"] == stats["users_evaluated"] - stats["users_excluded_too_few_unseen"]
    assert stats["users_evaluated"] + stats["users_excluded_no_history"] \
        + stats["users_excluded_short_history"] + stats["users_train_only_no_future"] == 50
    assert stats["train_positives"] == stats["ratings_before_cut"] - stats["users_evaluated"]
    assert stats["ratings_before_cut"] == pytest.approx(0.75 * stats["ratings"], abs=stats["ratings"] * 0.1)


def test_default_subset_is_full_and_unknown_split_is_a_config_error(make_cfg, tmp_path):
    cfg = make_cfg([])
    assert cfg.data.subset._target_.endswith("subset.Full") and cfg.data.subset.min_rating is None
    with pytest.raises(ConfigError, match="leave_one_out, temporal, probe"):
        RatingsDataModule("x", str(tmp_path), NetflixReader, split="random")
    with pytest.raises(ConfigError, match="temporal_fraction"):
        RatingsDataModule("x", str(tmp_path), NetflixReader, split="temporal", temporal_fraction=1.0)


# ----------------------------------------------------------------------------------------------
# real data


def test_real_ml100k_splits(make_cfg):
    root = shared_data() / "ml-100k"
    dm = instantiate(make_cfg(["data=ml-100k", f"data.root={root}"]).data, _convert_="partial")
    dm.setup("fit")
    stats = dm.data_stats()
    assert (stats["ratings"], stats["users"], stats["items"]) == (100_000, 943, 1_682)
    assert stats["eval_users"] == stats["users_evaluated"] == 943
    assert stats["train_positives"] == 100_000 - 2 * 943
    # the notebook's 80/20 split by date: the cut falls on 1998-03-07
    sp = temporal(dm.table.users, dm.table.items, dm.table.times, 943, 1682, seed=0,
                  time_unit="second")
    assert sp.stats["cut_day"] == 10292  # 1998-03-07
    assert (sp.stats["ratings_before_cut"], sp.stats["ratings_after_cut"]) == (79_999, 20_001)
    assert (sp.stats["users_evaluated"], sp.stats["users_excluded_no_history"],
            sp.stats["users_excluded_short_history"], sp.stats["users_train_only_no_future"]) \
        == (108, 192, 1, 642)
    top = TopUsers(n_users=100)(dm.table)
    assert top.num_users == 100 and np.bincount(top.users).min() >= 200  # ml-100k's heavy raters


def test_hashed_membership_matches_isin():
    from flixrec.data.split import _in_sorted, _sorted_unique

    rng = np.random.default_rng(0)
    members = _sorted_unique(rng.integers(0, 10**10, 5000))
    queries = np.concatenate([rng.choice(members, 3000), rng.integers(-1, 10**10, 50_000), [-1]])
    assert np.array_equal(_in_sorted(queries, members), np.isin(queries, members))
    assert not _in_sorted(queries, members[:0]).any()
    assert np.array_equal(_sorted_unique(np.array([3, 1, 3, 2, 1])), [1, 2, 3])
