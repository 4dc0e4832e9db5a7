"""Ranking metrics against hand-worked values and the tie rule of DESIGN.md."""

import math

import pytest
import torch

from flixrec.metrics import RankingMetrics, hit_rate, ndcg, positive_rank


def test_perfect_scorer_gets_one():
    scores = torch.tensor([[9.0] + [1.0] * 100, [5.0] + list(range(100))[::-1]]).float()
    scores[1, 0] = 1000.0
    assert hit_rate(scores, 10) == 1.0
    assert ndcg(scores, 10) == 1.0


def test_constant_scorer_gets_zero_ties_count_against_positive():
    scores = torch.zeros((7, 101))
    assert positive_rank(scores).tolist() == [100] * 7
    assert hit_rate(scores, 10) == 0.0
    assert ndcg(scores, 10) == 0.0


def test_hand_worked_example():
    # row 0: two negatives above the positive, one tie -> rank 3 (0-based)
    # row 1: positive above all -> rank 0; row 2: 11 negatives above -> rank 11 (a miss at 10)
    rows = [
        [0.5, 0.9, 0.8, 0.5, 0.1, 0.0],
        [2.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0] + [1.0] * 11 + [-1.0] * 3,
    ]
    width = max(len(r) for r in rows)
    scores = torch.full((3, width), -5.0)
    for i, r in enumerate(rows):
        scores[i, : len(r)] = torch.tensor(r)
    assert positive_rank(scores).tolist() == [3, 0, 11]
    expected_hr = 2 / 3
    expected_ndcg = (1 / math.log2(3 + 2) + 1.0 + 0.0) / 3
    assert hit_rate(scores, 10).item() == pytest.approx(expected_hr, abs=1e-6)
    assert ndcg(scores, 10).item() == pytest.approx(expected_ndcg, abs=1e-6)
    assert hit_rate(scores, 3).item() == pytest.approx(1 / 3, abs=1e-6)  # rank 3 is outside top 3


def test_nan_positive_ranks_last():
    scores = torch.tensor([[float("nan"), 0.1, 0.2]])
    assert positive_rank(scores).tolist() == [2]


def test_metric_accumulates_exactly_over_batches():
    torch.manual_seed(0)
    scores = torch.randn(50, 101)
    whole = RankingMetrics((5, 10, 20))
    whole.update(scores)
    parts = RankingMetrics((5, 10, 20))
    for chunk in scores.split(7):
        parts.update(chunk)
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys() == {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"}
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), abs=1e-7)
    ranks = positive_rank(scores).double()
    assert a["mrr"].item() == pytest.approx((1 / (ranks + 1)).mean().item(), abs=1e-6)
    assert a["hr@10"].item() == pytest.approx(hit_rate(scores, 10).item(), abs=1e-7)


def test_random_scorer_near_chance():
    torch.manual_seed(1)
    hr = hit_rate(torch.rand(20000, 101), 10).item()
    assert hr == pytest.approx(10 / 101, abs=0.01)
