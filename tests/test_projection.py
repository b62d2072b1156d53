"""The cluster projection's arithmetic (benchmarks/projection.py): its skew estimate against hashing, and the
projection's parts. The measurements themselves are timings, run by hand (see the module)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from benchmarks.projection import measured_skew, project, skew


def test_expected_skew_matches_hashing_users_into_partitions() -> None:
    rng = np.random.default_rng(0)
    counts = rng.geometric(0.1, size=200_000)  # events per user, mean 10, heavy tail
    users = pl.Series("user_id", np.repeat([f"U{i}" for i in range(len(counts))], counts))
    for partitions in (16, 64):
        simulated = measured_skew(users, partitions)
        assert skew(counts, len(counts) / partitions, partitions) == pytest.approx(simulated, abs=0.02)
    assert skew(counts, 1e6, 256) < 1.01 < skew(counts, 1e3, 256)  # more users per partition, less skew


def test_projection_splits_the_tasks_over_the_workers_and_keeps_the_driver_serial() -> None:
    m = {"events": 1_000_000, "users": 100_000, "items": 1000, "asset_bytes": 0,
         "driver": {"seconds": 10.0, "rss_gb": 1.0, "added_gb": 0.5},
         "tasks": [{"users": 1000, "seconds": 3.0}, {"users": 3000, "seconds": 7.0}],  # 2 ms per user, 1 s fixed
         "events_per_user": np.full(100_000, 10)}  # every user alike: no skew
    rows = {r["workers"]: r for r in project(m)}
    users = 100_000 * 1000  # the log scaled to a billion events
    for w, r in rows.items():
        tasks_h = 2 * (1.0 + 0.002 * users / (2 * w)) / 3600
        assert float(r["tasks h"]) == pytest.approx(tasks_h, abs=0.01)
        assert float(r["driver fit h (as today)"]) == pytest.approx(10.0 * 1000 / 3600, abs=0.01)
    assert float(rows[128]["wall h (fits on the workers)"]) < float(rows[8]["wall h (fits on the workers)"]) / 10
