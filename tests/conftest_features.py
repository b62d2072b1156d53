"""A tiny hand-made log for the feature tests: every expected value in them is computed from this by hand.

Items: a (news/politics, published 10 h before the log), b (news/economy), c (sport/football);
candidate ``zz`` is not in items.parquet.

| impression | user | hour | history | candidates | labels  | split |
|------------|------|------|---------|------------|---------|-------|
| e1         | u1   | 0    | []      | a b        | 1 0     | train |
| e2         | u2   | 0    | [c]     | a c        | 0 1     | train |
| e3         | u1   | 5    | []      | a c        | 1 0     | train |
| e4         | u2   | 20   | [c]     | a b c      | 0 0 1   | train |
| q          | u1   | 26   | [b]     | a b c zz   | null    | test  |
| cold       | u3   | 26   | []      | a          | null    | test  |
| empty      | u4   | 26   | []      | (none)     | []      | test  |
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, Col, Dataset, Split, build_manifest, save_dataset

T0 = dt.datetime(2024, 1, 1)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            Col.ITEM: ["a", "b", "c"],
            Col.TITLE: ["Vote today", "Rates rise", "Cup final"],
            Col.ABSTRACT: [None, None, None],
            Col.CATEGORY: ["news", "news", "sport"],
            Col.SUBCATEGORY: ["politics", "economy", "football"],
            Col.TAGS: [None, None, None],
            Col.PUBLISHED: [at(-10), None, None],
        },
        schema=ITEMS_SCHEMA,
    )


def impression(iid: str, user: str, hours: float, history: list[str], candidates: list[str],
               labels: list[int] | None, split: str = Split.TRAIN) -> dict[str, Any]:
    return {Col.IMPRESSION: iid, Col.USER: user, Col.TIME: at(hours), Col.HISTORY: history,
            Col.CANDIDATES: candidates, Col.LABELS: labels, Col.SPLIT: split}


def base_log() -> list[dict[str, Any]]:
    return [
        impression("e1", "u1", 0, [], ["a", "b"], [1, 0]),
        impression("e2", "u2", 0, ["c"], ["a", "c"], [0, 1]),
        impression("e3", "u1", 5, [], ["a", "c"], [1, 0]),
        impression("e4", "u2", 20, ["c"], ["a", "b", "c"], [0, 0, 1]),
        impression("q", "u1", 26, ["b"], ["a", "b", "c", "zz"], None, Split.TEST),
        impression("cold", "u3", 26, [], ["a"], None, Split.TEST),
        impression("empty", "u4", 26, [], [], [], Split.TEST),
    ]


def write_log(path: Path, rows: list[dict[str, Any]], kind: str = "impressions", item_table: pl.DataFrame | None = None) -> Path:
    """Save `rows` (dicts from :func:`impression`) as a dataset directory."""
    item_table = items() if item_table is None else item_table
    imps = pl.DataFrame(rows, schema=IMPRESSIONS_SCHEMA) if rows else pl.DataFrame(schema=IMPRESSIONS_SCHEMA)
    return save_dataset(Dataset(item_table, imps, build_manifest(item_table, imps, "test", kind)), path)


def by_key(table: pl.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Feature rows keyed by (impression, item)."""
    return {(r[Col.IMPRESSION], r[Col.ITEM]): r for r in table.to_dicts()}
