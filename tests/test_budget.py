"""The budgets `recsys train` prints: each expensive stage, the setting that bounds it, and a time that follows it."""

from __future__ import annotations

from recsys.budget import describe, plan
from recsys.config import TrainConfig, override
from recsys.data import Dataset


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
    assert fewer_users["features"].seconds < budgets["features"].seconds / 5
    assert "100 of" in fewer_users["features"].work
    frozen = _by_stage(sample_dataset, override(base, fine_tune=False))
    assert "fine-tune" not in frozen and "1 encoder" in frozen["encode"].work
    text = describe(plan(sample_dataset, base))
    assert text.splitlines()[0].startswith("budget") and text.splitlines()[-1].split()[0] == "total"
