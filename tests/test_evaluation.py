"""Metrics against hand-computed values and a brute-force reference that averages over tie orders."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import polars as pl
import pytest

from recsys.evaluation import metrics as ev
from recsys.data import Col


def _mind_on_order(labels: np.ndarray, order: tuple[int, ...], k: int | None) -> float:
    """MIND's scorer on one fixed ranking: MRR when k is None, else nDCG@k."""
    y = labels[list(order)].astype(float)
    ranks = np.arange(1, len(y) + 1)
    if k is None:
        return float((y / ranks).sum() / y.sum())
    disc = np.where(ranks <= k, 1 / np.log2(ranks + 1), 0.0)
    ideal = np.sort(labels)[::-1].astype(float)
    return float(((2**y - 1) * disc).sum() / ((2**ideal - 1) * disc).sum())


def _brute(labels: np.ndarray, scores: np.ndarray, k: int | None) -> float:
    """Mean of the metric over every ranking consistent with the scores (ties in all orders)."""
    vals = [
        _mind_on_order(labels, p, k)
        for p in itertools.permutations(range(len(labels)))
        if all(scores[p[i]] >= scores[p[i + 1]] for i in range(len(p) - 1))
    ]
    return float(np.mean(vals))


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_doctests_pass() -> None:
    result = doctest.testmod(ev)
    assert result.attempted >= 10 and result.failed == 0


def test_hand_computed_single_list() -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.3])
    assert ev.auc(labels, scores) == pytest.approx(0.75)
    assert ev.mrr(labels, scores) == pytest.approx((1 + 1 / 3) / 2)
    assert ev.ndcg(labels, scores, 5) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # k=1: only the top item counts; it is a click, the ideal top is a click too.
    assert ev.ndcg(labels, scores, 1) == pytest.approx(1.0)
    # Reversed scores: worst order.
    assert ev.auc(labels, -scores) == pytest.approx(0.25)


def test_constant_scores_get_random_order_value_not_best() -> None:
    labels, scores = np.array([1, 0, 0, 0]), np.zeros(4)
    assert ev.auc(labels, scores) == 0.5
    assert ev.mrr(labels, scores) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert ev.ndcg(labels, scores, 10) == pytest.approx(np.mean(1 / np.log2(np.arange(2, 6))))
    assert ev.ndcg(labels, scores, 10) < 1.0


@pytest.mark.parametrize("seed", range(8))
def test_ties_match_brute_force_over_orders(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 1, 0
    scores = rng.integers(0, 3, n).astype(float)  # many ties
    assert ev.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert ev.mrr(labels, scores) == pytest.approx(_brute(labels, scores, None))
    for k in (2, 5):
        assert ev.ndcg(labels, scores, k) == pytest.approx(_brute(labels, scores, k))


def test_graded_labels_use_exponential_gain() -> None:
    labels, scores = np.array([2, 1, 0]), np.array([0.1, 0.5, 0.9])
    dcg = 0 / 1 + 1 / math.log2(3) + 3 / 2
    idcg = 3 / 1 + 1 / math.log2(3)
    assert ev.ndcg(labels, scores, 3) == pytest.approx(dcg / idcg)


def test_all_equal_labels() -> None:
    assert math.isnan(ev.auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(ev.auc(np.array([0, 0]), np.array([0.1, 0.2])))
    assert math.isnan(ev.ndcg(np.array([0, 0]), np.array([0.1, 0.2]), 5))


def test_impression_metrics_skip_degenerate_and_average() -> None:
    df = pl.DataFrame(
        {
            Col.IMPRESSION: ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2,
            Col.LABEL: [0, 1, 0, 1] + [1, 0, 0] + [1, 1] + [0, 0],
            "s": [0.1, 0.9, 0.4, 0.3] + [0.2, 0.5, 0.1] + [0.3, 0.1] + [0.5, 0.5],
        }
    )
    m = ev.impression_metrics(df, "s")
    assert m["impressions"] == 2  # c (all clicked) and d (no click) skipped
    auc_b, mrr_b = 0.5, 0.5  # click ranked 2nd of 3
    ndcg_b = (1 / math.log2(3)) / 1.0
    assert m["auc"] == pytest.approx((0.75 + auc_b) / 2)
    assert m["mrr"] == pytest.approx(((1 + 1 / 3) / 2 + mrr_b) / 2)
    assert m["ndcg@5"] == pytest.approx((1.5 / (1 + 1 / math.log2(3)) + ndcg_b) / 2)
    assert m["ndcg@10"] == pytest.approx(m["ndcg@5"])
    per = ev.per_impression(df, "s")
    assert per[Col.IMPRESSION].to_list() == ["a", "b"]


def test_impression_metrics_row_order_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    n_imp, size = 200, 7
    df = pl.DataFrame(
        {
            Col.IMPRESSION: np.repeat(np.arange(n_imp), size),
            Col.LABEL: rng.integers(0, 2, n_imp * size),
            "s": rng.integers(0, 4, n_imp * size).astype(float),
        }
    )
    a = ev.impression_metrics(df, "s")
    b = ev.impression_metrics(df.sample(fraction=1.0, shuffle=True, seed=1), "s")
    assert a == pytest.approx(b)
    # Same as the single-list functions averaged by hand.
    per = [
        (ev.auc(g[Col.LABEL].to_numpy(), g["s"].to_numpy()), ev.ndcg(g[Col.LABEL].to_numpy(), g["s"].to_numpy(), 5))
        for _, g in df.group_by(Col.IMPRESSION)
        if 0 < g[Col.LABEL].sum() < g.height
    ]
    assert a["impressions"] == len(per)
    assert a["auc"] == pytest.approx(np.mean([p[0] for p in per]))
    assert a["ndcg@5"] == pytest.approx(np.mean([p[1] for p in per]))


def test_impression_metrics_reject_nan_scores_and_handle_empty() -> None:
    df = pl.DataFrame({Col.IMPRESSION: ["a", "a"], Col.LABEL: [1, 0], "s": [0.1, float("nan")]})
    with pytest.raises(ValueError, match="'s'"):
        ev.impression_metrics(df, "s")
    m = ev.impression_metrics(df.head(0), "s")
    assert m["impressions"] == 0 and math.isnan(m["auc"])


def test_full_catalogue_rank_metrics() -> None:
    ranks = np.array([1, 3, 12, 60])
    m = ev.rank_metrics(ranks)
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["recall@20"] == pytest.approx(0.75)
    assert m["recall@50"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 0.5) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(13)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12 + 1 / 60) / 4)
    assert m["n"] == 4


def test_held_out_ranks_and_ties() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0], [0.2, -np.inf, 0.3, 0.1]])
    ranks, ties = ev.held_out_ranks(scores, np.array([1, 3, 0]))
    assert ranks.tolist() == [2, 1, 2] and ties.tolist() == [2, 4, 1]
    # Held-out item tied with 3 others at the top: rank uniform on 1..4.
    assert ev.recall_at_k(ranks[1:2], 2, ties[1:2]) == pytest.approx(0.5)
    assert ev.mrr_full(ranks[1:2], ties[1:2]) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert ev.ndcg_at_k(ranks[:1], 2, ties[:1]) == pytest.approx((1 / math.log2(3) + 0) / 2)
    with pytest.raises(ValueError):
        ev.recall_at_k(np.array([0]), 10)


def test_per_impression_graded_labels_match_single_list() -> None:
    rng = np.random.default_rng(7)
    df = pl.DataFrame({"g": np.repeat([3, 1, 2], 6), "y": rng.integers(0, 3, 18), "s": rng.integers(0, 3, 18).astype(float)})
    per = ev.per_impression(df, "s", group_col="g", label_col="y", ks=(3,), skip_degenerate=False)
    assert per["g"].to_list() == [3, 1, 2]  # first-appearance order
    for gid, value in zip(per["g"], per["ndcg@3"]):
        part = df.filter(pl.col("g") == gid)
        expected = _brute(part["y"].to_numpy(), part["s"].to_numpy(), 3)
        assert value == pytest.approx(expected)
        assert value == pytest.approx(ev.ndcg(part["y"].to_numpy(), part["s"].to_numpy(), 3))
