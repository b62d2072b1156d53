"""Negative sampling for interaction-only logs: never the user's own items, K distinct, marked as sampled."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from recsys.data import Col, Split, validate_impressions
from recsys.errors import RecsysError
from recsys.candidates.sampling import POPULARITY, UNIFORM, SamplingConfig, sample_negatives

ITEMS = [f"i{k}" for k in range(20)]


def rows(histories: dict[str, list[str]]) -> pl.DataFrame:
    """One interaction row per item after each user's first (the interactions contract)."""
    out = []
    for user, seq in histories.items():
        for k in range(1, len(seq)):
            out.append({Col.IMPRESSION: f"{user}-{k}", Col.USER: user, Col.TIME: dt.datetime(2000, 1, 1, 0, 0, k),
                        Col.HISTORY: seq[:k], Col.CANDIDATES: [seq[k]], Col.LABELS: [1], Col.SPLIT: Split.TRAIN})
    return pl.DataFrame(out, schema_overrides={Col.LABELS: pl.List(pl.Int8()), Col.TIME: pl.Datetime("us")})


LOG = rows({"a": ["i0", "i1", "i2", "i3", "i4"], "b": ["i0", "i5", "i6"], "c": ["i7", "i0", "i1", "i8", "i9", "i10"]})


@pytest.mark.parametrize("strategy", [UNIFORM, POPULARITY])
def test_negatives_are_never_the_users_items(strategy: str) -> None:
    out = sample_negatives(LOG, ITEMS, SamplingConfig(negatives=6, strategy=strategy, seed=3))
    validate_impressions(out.drop(Col.SAMPLED))
    assert out.height == LOG.height
    own = LOG.group_by(Col.USER).agg(pl.concat_list(Col.HISTORY, Col.CANDIDATES).explode().unique().alias("own"))
    for row in out.join(own, on=Col.USER).iter_rows(named=True):
        negatives = row[Col.CANDIDATES][1:]
        assert len(set(negatives)) == 6 and not set(negatives) & set(row["own"])
        assert row[Col.LABELS] == [1] + [0] * 6 and row[Col.SAMPLED] == [False] + [True] * 6
    # The positive stays the logged candidate, first.
    assert out[Col.CANDIDATES].list.first().to_list() == LOG[Col.CANDIDATES].list.first().to_list()


def test_popularity_weighting_prefers_popular_items() -> None:
    # i0 and i1 are in every user's sequence; a user who never saw them draws them far more often than rare items.
    log = rows({**{f"u{k}": ["i0", "i1", f"i{2 + k}"] for k in range(6)}, "z": ["i10", "i11"]})
    z_rows = log.filter(pl.col(Col.USER) == "z")
    counts = {UNIFORM: 0, POPULARITY: 0}
    for strategy in counts:
        for seed in range(200):
            out = sample_negatives(log, ITEMS, SamplingConfig(negatives=1, strategy=strategy, alpha=1.0, seed=seed))
            counts[strategy] += int(out.filter(pl.col(Col.USER) == "z")[Col.CANDIDATES][0][1] in ("i0", "i1"))
    assert z_rows.height == 1 and counts[POPULARITY] > 2 * counts[UNIFORM]


def test_heavy_user_gets_exactly_the_remaining_items_or_an_error() -> None:
    heavy = rows({"h": ITEMS[:17]})
    out = sample_negatives(heavy, ITEMS, SamplingConfig(negatives=3, seed=1))
    assert all(sorted(c[1:]) == ITEMS[17:] for c in out[Col.CANDIDATES].to_list())
    with pytest.raises(RecsysError, match="cannot sample 4"):
        sample_negatives(heavy, ITEMS, SamplingConfig(negatives=4))


def test_config_is_checked_and_sampling_is_seeded() -> None:
    with pytest.raises(RecsysError):
        SamplingConfig(strategy="hard")
    a = sample_negatives(LOG, ITEMS, SamplingConfig(seed=5))
    b = sample_negatives(LOG, ITEMS, SamplingConfig(seed=5))
    assert a.equals(b) and not np.array_equal(a[Col.CANDIDATES].to_list(), sample_negatives(LOG, ITEMS, SamplingConfig(seed=6))[Col.CANDIDATES].to_list())
