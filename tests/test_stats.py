"""Dataset statistics on a hand-made dataset with known answers, in memory and from disk."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.data import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, Col, Dataset, build_manifest, save_dataset
from recsys.errors import RecsysError
from recsys.stats import compute_stats, render_stats


@pytest.fixture()
def dataset() -> Dataset:
    items = pl.DataFrame(
        {Col.ITEM: ["A", "B", "C", "D"], Col.TITLE: ["a", "b", "c", "d"], Col.TAGS: [[], [], [], []]},
        schema_overrides={Col.TAGS: pl.List(pl.String())},
    ).with_columns(pl.lit(None, dtype=d).alias(c) for c, d in ITEMS_SCHEMA.items() if c not in (Col.ITEM, Col.TITLE, Col.TAGS))
    imps = pl.DataFrame(
        {
            Col.IMPRESSION: ["1", "2", "3", "4"],
            Col.USER: ["u1", "u2", "u1", "u3"],
            Col.TIME: [datetime(2020, 1, d) for d in (1, 2, 3, 4)],
            Col.HISTORY: [[], ["A"], ["A", "X"], ["B"]],
            Col.CANDIDATES: [["A", "B"], ["B", "C", "X"], ["A", "C"], ["B", "C"]],
            Col.LABELS: [[1, 0], [0, 0, 1], [0, 1], None],
            Col.SPLIT: ["train", "train", "dev", "test"],
        },
        schema=IMPRESSIONS_SCHEMA,
    )
    return Dataset(items.select(list(ITEMS_SCHEMA)), imps, build_manifest(items, imps, "hand", "impressions"))


def test_counts_ctr_distributions_coverage(dataset: Dataset) -> None:
    s = compute_stats(dataset)
    assert (s["items"], s["impressions"], s["users"]) == (4, 4, 3)
    assert s["splits"]["train"]["ctr"] == pytest.approx(2 / 5)
    assert s["splits"]["dev"]["ctr"] == pytest.approx(1 / 2)
    assert s["splits"]["test"]["ctr"] is None and s["splits"]["test"]["unlabelled"] == 1
    assert s["splits"]["train"]["time_min"] == datetime(2020, 1, 1)
    assert s["history_length"]["max"] == 2 and s["history_length"]["share_empty"] == pytest.approx(0.25)
    assert s["candidates_per_impression"]["mean"] == pytest.approx(9 / 4)
    assert s["coverage"]["candidates"] == {"occurrences": 9, "known_share": pytest.approx(8 / 9), "distinct_missing": 1}
    assert s["coverage"]["history"]["distinct_missing"] == 1
    assert s["items_never_shown"] == 1  # D
    assert s["dev_users_seen_in_train"] == 1.0


def test_from_disk_matches_memory_and_renders(dataset: Dataset, tmp_path: Path) -> None:
    save_dataset(dataset, tmp_path / "ds")
    assert compute_stats(tmp_path / "ds") == compute_stats(dataset)
    text = render_stats(compute_stats(tmp_path / "ds"))
    assert "train" in text and "CTR 40.00%" in text and "CTR n/a" in text
    with pytest.raises(RecsysError, match="not a recsys dataset"):
        compute_stats(tmp_path)
