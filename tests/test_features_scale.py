"""Out of core: the builder streams the log in segments (and sorts an unordered file on disk), and must
write the same table whatever the memory limit. Speed is measured by benchmarks/features.py, not here."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest_features import base_log, impression, write_log
from test_features_pit import random_log

from features.build import MIN_MEMORY_LIMIT, FeatureConfig, build_features
from features.timeline import HOUR_US, NEVER, NONE, Timeline
from recsys.data import IMPRESSIONS_SCHEMA, Col, Split
from recsys.errors import RecsysError

SMALLEST = f"{MIN_MEMORY_LIMIT // 2**20}MB"


def build(ds: Path, out: Path, cfg: FeatureConfig | None = None, rows: Path | None = None) -> pl.DataFrame:
    build_features(ds, out, cfg, rows=rows, show_progress=False)
    return pl.read_parquet(out)


def test_smallest_memory_limit_and_tiny_segments_give_the_default_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = random_log(random.Random(3), 200)  # 15-minute steps: timestamps shared by many rows, and unlabelled rows
    random.Random(4).shuffle(log)  # not in table order: sorted by DuckDB under the limit before streaming
    ds = write_log(tmp_path / "ds", log)
    default = build(ds, tmp_path / "default.parquet")
    with caplog.at_level(logging.INFO, logger="features.build"):
        for segment_rows in (1, 3, 50):  # 1: every timestamp is a segment of its own, and bigger than one
            small = build(ds, tmp_path / f"small{segment_rows}.parquet", FeatureConfig(memory_limit=SMALLEST, segment_rows=segment_rows, threads=1))
            assert small.equals(default), segment_rows
    assert "sorting it" in caplog.text
    assert default.height == sum(len(r[Col.CANDIDATES]) for r in log) and default.select(Col.TIME).to_series().is_sorted()


def test_requests_streamed_beside_the_log_give_the_default_table(tmp_path: Path) -> None:
    ds = write_log(tmp_path / "ds", random_log(random.Random(5), 150))
    rng = random.Random(6)
    requests = [impression(f"r{i}", f"u{rng.randint(0, 7)}", rng.randint(0, 44) / 4, ["a"], rng.sample(["a", "b", "c", "zz"], 2), None, Split.TEST)
                for i in range(40)]
    pl.DataFrame(requests, schema=IMPRESSIONS_SCHEMA).write_parquet(tmp_path / "requests.parquet")
    default = build(ds, tmp_path / "default.parquet", rows=tmp_path / "requests.parquet")
    small = build(ds, tmp_path / "small.parquet", FeatureConfig(memory_limit=SMALLEST, segment_rows=2), rows=tmp_path / "requests.parquet")
    assert small.equals(default)
    assert default.height == 80 and default["item_impressions_all"].sum() > 0  # the log's events reached the requests


def test_memory_limit_below_the_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="at least 64MB"):
        FeatureConfig(memory_limit="32MB")
    with pytest.raises(RecsysError, match="segment_rows"):
        FeatureConfig(segment_rows=0)
    build(write_log(tmp_path / "ds", base_log()), tmp_path / "f.parquet", FeatureConfig(memory_limit=SMALLEST))


def test_timeline_sums_strictly_before_t_across_segments() -> None:
    timeline = Timeline(2, window_us=2 * HOUR_US, first=True, last_of=1)
    hours = np.array([0, 0, 1, 2]) * HOUR_US
    # key 7: an event at 0 h (weights 1, 1), a query and an event at 1 h (1, 0); key 9: an event at 0 h (1, 0)
    first = timeline.add(np.array([7, 9, 7, 7]), hours[[0, 1, 2, 2]], np.array([[1, 1], [1, 0], [0, 0], [1, 0]]))
    assert first.before().tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]  # the rows at 1 h see 0 h, not each other
    assert first.last_time().tolist() == [NONE, NONE, 0, 0]
    assert first.first_time().tolist() == [NEVER, NEVER, 0, 0]
    # a later segment: at 2 h the window [0 h, 2 h) still holds the event at 0 h; at 3 h it has left it
    later = timeline.add(np.array([7, 7, 9]), np.array([2, 3, 3]) * HOUR_US, np.zeros((3, 2), np.int64))
    assert later.window(2).tolist() == [[2, 1], [1, 0], [0, 0]]
    assert later.window(1).tolist() == [[1, 0], [0, 0], [0, 0]]
    assert later.before().tolist() == [[2, 1], [2, 1], [1, 0]]
    assert later.last_time().tolist() == [0, 0, NONE]
    with pytest.raises(ValueError, match="longer"):
        later.window(3)
