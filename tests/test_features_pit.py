"""Point-in-time correctness: a feature at t sees events strictly before t, and nothing else."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest_features import at, base_log, by_key, impression, items, write_log

from features.build import FeatureConfig, build_features
from features.registry import feature_names
from recsys.data import Col, Split


def build(tmp: Path, name: str, log: list[dict[str, Any]], cfg: FeatureConfig | None = None) -> pl.DataFrame:
    build_features(write_log(tmp / name, log), tmp / f"{name}.parquet", cfg, show_progress=False)
    return pl.read_parquet(tmp / f"{name}.parquet")


def features_of(table: pl.DataFrame, impression_ids: list[str]) -> pl.DataFrame:
    return table.filter(pl.col(Col.IMPRESSION).is_in(impression_ids)).select(
        Col.IMPRESSION, Col.ITEM, *feature_names(table.columns)
    )


ORIGINAL = ["e1", "e2", "e3", "e4", "q", "cold"]


def test_click_after_t_changes_nothing_at_t(tmp_path: Path) -> None:
    base = build(tmp_path, "base", base_log())
    later = base_log() + [impression("late", "u1", 27, ["b"], ["a", "b", "c"], [1, 1, 1])]
    assert features_of(build(tmp_path, "later", later), ORIGINAL).equals(features_of(base, ORIGINAL))


def test_click_at_exactly_t_is_not_before_t(tmp_path: Path) -> None:
    base = build(tmp_path, "base", base_log())
    tie = base_log() + [impression("tie", "u1", 26, [], ["a", "zz"], [1, 1])]
    assert features_of(build(tmp_path, "tie", tie), ORIGINAL).equals(features_of(base, ORIGINAL))


def test_click_before_t_changes_features_at_t(tmp_path: Path) -> None:
    base = by_key(build(tmp_path, "base", base_log()))
    earlier = by_key(build(tmp_path, "earlier", base_log() + [impression("early", "u1", 25.5, [], ["zz"], [1])]))
    q_before, q_after = base[("q", "zz")], earlier[("q", "zz")]
    assert (q_before["item_clicks_1h"], q_after["item_clicks_1h"]) == (0, 1)
    assert (q_before["item_impressions_all"], q_after["item_impressions_all"]) == (0, 1)
    assert q_after["item_hours_since_first_seen"] == pytest.approx(0.5)
    assert (base[("q", "a")]["user_clicks_before"], earlier[("q", "a")]["user_clicks_before"]) == (2, 3)
    assert earlier[("q", "a")]["user_hours_since_last_click"] == pytest.approx(0.5)
    assert earlier[("cold", "a")] == base[("cold", "a")]  # another user's user features do not move


def test_own_labels_never_leak_into_own_features(tmp_path: Path) -> None:
    flipped = [dict(row, **{Col.LABELS: [1 - x for x in row[Col.LABELS]]}) if row[Col.IMPRESSION] == "e3" else row for row in base_log()]
    base, other = build(tmp_path, "base", base_log()), build(tmp_path, "flipped", flipped)
    assert features_of(other, ["e1", "e2", "e3"]).equals(features_of(base, ["e1", "e2", "e3"]))
    assert not features_of(other, ["e4"]).equals(features_of(base, ["e4"]))  # the flip is visible later
    assert other.filter(pl.col(Col.IMPRESSION) == "e3")[Col.LABEL].to_list() == [0, 1]


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    ds = write_log(tmp_path / "ds", random_log(random.Random(7), 120))
    for name in ("one", "two"):
        build_features(ds, tmp_path / f"{name}.parquet", FeatureConfig(threads=2), show_progress=False)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


# --- a brute-force reference on a random log full of timestamp ties -------------------------------

ITEM_IDS = ["a", "b", "c", "zz", "yy"]  # zz and yy are not in items.parquet
CATEGORY = {"a": "news", "b": "news", "c": "sport"}


def random_log(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        cands = rng.sample(ITEM_IDS, rng.randint(0, 4))
        labelled = rng.random() < 0.8
        rows.append(impression(
            f"i{i:03d}", f"u{rng.randint(0, 5)}", rng.randint(0, 40) / 4,  # 15-minute steps: many ties
            rng.sample(["a", "b", "c", "zz"], rng.randint(0, 2)), cands,
            [int(rng.random() < 0.3) for _ in cands] if labelled else None, Split.TRAIN if labelled else Split.TEST,
        ))
    return rows


def reference(log: list[dict[str, Any]], imp: dict[str, Any], item: str) -> dict[str, Any]:
    """Features recomputed from scratch by scanning every event of the log."""
    t = imp[Col.TIME]
    events = [(r[Col.TIME], r[Col.USER], r[Col.IMPRESSION], c, y) for r in log if r[Col.LABELS] is not None
              for c, y in zip(r[Col.CANDIDATES], r[Col.LABELS]) if r[Col.TIME] < t]
    mine = [e for e in events if e[1] == imp[Col.USER]]
    history = imp[Col.HISTORY]
    same_cat = [e for e in events if item in CATEGORY and CATEGORY.get(e[3]) == CATEGORY[item]]
    last = max((e[0] for e in mine if e[4]), default=None)
    return {
        "item_clicks_1h": sum(e[4] for e in events if e[3] == item and e[0] >= t - (at(1) - at(0))),
        "item_impressions_6h": sum(1 for e in events if e[3] == item and e[0] >= t - (at(6) - at(0))),
        "item_impressions_all": sum(1 for e in events if e[3] == item),
        "item_clicks_all": sum(e[4] for e in events if e[3] == item),
        "item_category_ctr": (sum(e[4] for e in same_cat) + 1.0) / (len(same_cat) + 20) if item in CATEGORY else None,
        "user_impressions_before": len({e[2] for e in mine}),
        "user_clicks_before": sum(e[4] for e in mine),
        "user_hours_since_last_click": (t - last).total_seconds() / 3600 if last else None,
        "user_category_share": (sum(CATEGORY.get(c) == CATEGORY[item] for c in history) / len(history)
                                if history and item in CATEGORY else None),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_brute_force_reference(tmp_path: Path, seed: int) -> None:
    log = random_log(random.Random(seed), 150)
    table = build(tmp_path, "random", log)
    by_id = {r[Col.IMPRESSION]: r for r in log}
    assert table.height == sum(len(r[Col.CANDIDATES]) for r in log)
    assert set(items()[Col.ITEM]) == set(CATEGORY)
    for row in table.to_dicts():
        expected = reference(log, by_id[row[Col.IMPRESSION]], row[Col.ITEM])
        for name, value in expected.items():
            if value is None or row[name] is None:
                assert row[name] is value is None, (row[Col.IMPRESSION], row[Col.ITEM], name)
            else:
                assert row[name] == pytest.approx(value, rel=1e-5), (row[Col.IMPRESSION], row[Col.ITEM], name)
