"""The budgets `recsys train` prints: each expensive stage, the setting that bounds it, and a time that follows it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from recsys import budget
from recsys.budget import LOG_PAIRS_PER_S, describe, plan
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, load_dataset
from recsys.loaders import EventsConfig, load_events
from recsys.synth_shop import EVENTS_FILE, ITEMS_FILE, ShopConfig, write_shop


def _by_stage(ds: Dataset, cfg: TrainConfig) -> dict[str, object]:
    return {b.stage: b for b in plan(ds, cfg)}


def test_every_expensive_stage_has_a_budget_that_its_setting_moves(sample_dataset: Dataset) -> None:
    base = TrainConfig.for_dataset(sample_dataset.manifest)
    budgets = _by_stage(sample_dataset, override(base, **{"text.max_train_impressions": 1000, "text.epochs": 1}))
    assert list(budgets) == ["encode", "fine-tune", "select", "features", "ranker"]
    assert "1,000 of" in budgets["fine-tune"].work and "text.max_train_impressions" in budgets["fine-tune"].setting
    more = _by_stage(sample_dataset, override(base, **{"text.max_train_impressions": 3000, "text.epochs": 1}))
    assert 2.5 < more["fine-tune"].seconds / budgets["fine-tune"].seconds < 3.5  # three times the impressions
    fewer_users = _by_stage(sample_dataset, override(base, ranker_users=100))
    timeline = int(sample_dataset.impressions[Col.CANDIDATES].list.len().sum()) / LOG_PAIRS_PER_S  # read whatever the sample
    assert fewer_users["features"].seconds - timeline < (budgets["features"].seconds - timeline) / 5
    assert "100 of" in fewer_users["features"].work
    frozen = _by_stage(sample_dataset, override(base, fine_tune=False))
    assert "fine-tune" not in frozen and "1 encoder" in frozen["encode"].work
    text = describe(plan(sample_dataset, base))
    assert text.splitlines()[0].startswith("budget") and text.splitlines()[-1].split()[0] == "total"


def _shop(root: Path, items: int, events: int) -> Dataset:
    write_shop(ShopConfig(n_users=300, n_items=items, n_events=events, seed=4), root / "raw")
    result = load_events(root / "raw" / ITEMS_FILE, root / "raw" / EVENTS_FILE, root / "ds", EventsConfig(dev_fraction=0.1, test_fraction=0.1))
    return load_dataset(result.path)


def test_interaction_features_budget_counts_the_retrieval_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small, wide, long = _shop(tmp_path / "a", 200, 3000), _shop(tmp_path / "b", 2000, 3000), _shop(tmp_path / "c", 200, 9000)
    cfg = TrainConfig.for_dataset(small.manifest)
    assert "retrieved from 200 items after fitting on" in _by_stage(small, cfg)["features"].work  # type: ignore[attr-defined]
    # Each term alone (the other rates infinite): every group's history scored over the catalogue ...
    monkeypatch.setattr(budget, "FEATURE_ROWS_PER_S", math.inf)
    monkeypatch.setattr(budget, "FIT_EVENTS_PER_S", math.inf)
    for ds in (small, wide):
        groups = float(_by_stage(ds, cfg)["features"].work.split(" groups")[0].lstrip("~").replace(",", ""))  # type: ignore[attr-defined]
        assert _by_stage(ds, cfg)["features"].seconds == pytest.approx(groups * ds.items.height / budget.RETRIEVAL_USER_ITEMS_PER_S, rel=1e-3)  # type: ignore[attr-defined]
    # ... and the statistics fitted on the training events: three times the events, three times the fit.
    monkeypatch.setattr(budget, "RETRIEVAL_USER_ITEMS_PER_S", math.inf)
    monkeypatch.setattr(budget, "FIT_EVENTS_PER_S", 1.0)
    assert _by_stage(long, cfg)["features"].seconds / _by_stage(small, cfg)["features"].seconds == pytest.approx(3.0, rel=0.05)  # type: ignore[attr-defined]


def test_impression_features_budget_reads_the_whole_log(sample_dataset: Dataset) -> None:
    cfg = override(TrainConfig.for_dataset(sample_dataset.manifest), ranker_users=100)
    features = _by_stage(sample_dataset, cfg)["features"]
    pairs = int(sample_dataset.impressions[Col.CANDIDATES].list.len().sum())
    assert f"from {pairs:,} logged" in features.work  # type: ignore[attr-defined]
    assert features.seconds >= pairs / LOG_PAIRS_PER_S  # type: ignore[attr-defined]  # sampling users does not shrink the timeline
