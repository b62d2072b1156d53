"""Synthetic generator: determinism, CTR, clicks that follow topic match, histories, the embedded sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys.data import Col, Split, load_dataset, validate_impressions, validate_items
from recsys.errors import RecsysError
from recsys.synth import SynthConfig, generate

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def world() -> pl.DataFrame:
    """A few thousand impressions, exploded to (impression, candidate) with the item's topic."""
    ds = generate(SynthConfig(n_items=600, n_users=400, n_impressions=4000, seed=11))
    long = ds.impressions.explode([Col.CANDIDATES, Col.LABELS, Col.CLICK_PROBS]).rename({Col.CANDIDATES: Col.ITEM})
    return long.join(ds.items.select(Col.ITEM, Col.CATEGORY), on=Col.ITEM)


def test_same_seed_same_frames_different_seed_different() -> None:
    a, b = generate(SynthConfig.preset("tiny", seed=1)), generate(SynthConfig.preset("tiny", seed=1))
    assert_frame_equal(a.items, b.items)
    assert_frame_equal(a.impressions, b.impressions)
    c = generate(SynthConfig.preset("tiny", seed=2))
    assert not a.impressions.equals(c.impressions)
    assert a.items[Col.TITLE].to_list() != c.items[Col.TITLE].to_list()


def test_contract_splits_and_sizes() -> None:
    cfg = SynthConfig.preset("tiny", seed=0, test_fraction=0.1)
    ds = generate(cfg)
    validate_items(ds.items)
    validate_impressions(ds.impressions)
    lengths = ds.impressions[Col.CANDIDATES].list.len()
    assert lengths.min() >= cfg.min_candidates and lengths.max() <= cfg.max_candidates
    assert (ds.impressions[Col.CANDIDATES].list.n_unique() == lengths).all()  # no repeated candidate
    counts = ds.impressions[Col.SPLIT].value_counts().sort(Col.SPLIT).rows()
    assert counts == [(Split.DEV, 80), (Split.TEST, 40), (Split.TRAIN, 280)]
    last_train = ds.split(Split.TRAIN)[Col.TIME].max()
    assert ds.split(Split.DEV)[Col.TIME].min() >= last_train  # dev is later in time
    assert ds.split(Split.TEST)[Col.LABELS].null_count() == 40
    assert ds.split(Split.TEST)[Col.CLICK_PROBS].null_count() == 0  # the oracle still knows


def test_ctr_near_four_percent(world: pl.DataFrame) -> None:
    assert 0.035 < world[Col.LABELS].mean() < 0.045  # type: ignore[operator]
    assert abs(world[Col.CLICK_PROBS].mean() - 0.04) < 0.002  # type: ignore[operator]


def test_clicks_follow_topic_match_seen_in_history(world: pl.DataFrame) -> None:
    """Observable signal: candidates in the user's most clicked history topic are clicked far more often."""
    ds_items = world.select(Col.ITEM, Col.CATEGORY).unique()
    fav = (
        world.select(Col.IMPRESSION, Col.HISTORY)
        .unique(Col.IMPRESSION)
        .explode(Col.HISTORY)
        .join(ds_items.rename({Col.ITEM: Col.HISTORY, Col.CATEGORY: "hist_topic"}), on=Col.HISTORY)
        .group_by(Col.IMPRESSION, "hist_topic")
        .len()
        .sort("len", "hist_topic", descending=True)
        .group_by(Col.IMPRESSION, maintain_order=True)
        .first()
    )
    ctr = world.join(fav, on=Col.IMPRESSION).group_by(pl.col(Col.CATEGORY) == pl.col("hist_topic")).agg(pl.col(Col.LABELS).mean())
    rates = dict(ctr.rows())
    assert rates[True] > 3 * rates[False]


def test_click_probs_rank_clicks(world: pl.DataFrame) -> None:
    """The oracle's AUC over all candidates is high: the recorded probabilities are the truth."""
    probs, labels = world[Col.CLICK_PROBS].to_numpy(), world[Col.LABELS].to_numpy()
    ranks = probs.argsort().argsort() + 1
    pos = labels == 1
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    assert auc > 0.8


def test_history_holds_earlier_clicks() -> None:
    ds = generate(SynthConfig.preset("tiny", seed=5, max_history=10_000))
    imps = ds.impressions.sort(Col.TIME)
    clicks = imps.explode([Col.CANDIDATES, Col.LABELS]).filter(pl.col(Col.LABELS) == 1)
    checked = 0
    for user, t, item in clicks.select(Col.USER, Col.TIME, Col.CANDIDATES).head(30).rows():
        later = imps.filter((pl.col(Col.USER) == user) & (pl.col(Col.TIME) > t))
        if later.height:
            assert later[Col.HISTORY].list.contains(item).all()
            checked += 1
    assert checked > 5
    assert imps[Col.HISTORY].list.len().mean() > 3  # warm start


def test_config_checks() -> None:
    with pytest.raises(RecsysError, match="min_candidates"):
        SynthConfig(min_candidates=5, max_candidates=3)
    with pytest.raises(RecsysError, match="unknown size"):
        SynthConfig.preset("huge")


def test_embedded_sample_is_the_documented_command() -> None:
    ds = load_dataset(SAMPLE)
    assert ds.manifest["source"] == "synth"
    fresh = generate(SynthConfig(**ds.manifest["config"]))
    assert_frame_equal(fresh.impressions, ds.impressions)
    assert_frame_equal(fresh.items, ds.items)
    assert 1000 <= ds.items.height <= 1500 and 10_000 <= ds.impressions.height <= 15_000
    dev_share = ds.split(Split.DEV).height / ds.impressions.height
    assert abs(dev_share - 0.2) < 0.01
    assert np.isclose(ds.manifest["config"]["seed"], 0)
