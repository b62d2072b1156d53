"""The one splitter: by time (dev/test labels, validation, stacking), leave-one-out, held-out users."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from recsys.data import Col, Split
from recsys.errors import RecsysError
from recsys.splits import held_out_users, last_per_user, sample_users, split_latest, splits_before, time_labels

T0 = datetime(2024, 1, 1)


def long_table(n_imp: int = 10, per: int = 3) -> pl.DataFrame:
    """`per` candidate rows per impression; impression i happens at hour (7 i) mod n_imp (shuffled times)."""
    return pl.DataFrame([{Col.IMPRESSION: f"m{i}", Col.USER: f"u{i % 4}", Col.TIME: T0 + timedelta(hours=(7 * i) % n_imp), Col.ITEM: f"x{k}"}
                         for i in range(n_imp) for k in range(per)])


def test_split_latest_keeps_groups_whole_and_later_on_the_right() -> None:
    df = long_table(n_imp=10)
    early, late = split_latest(df, 0.25)
    assert early.height + late.height == df.height
    assert late[Col.IMPRESSION].n_unique() == 3  # ceil(10 * 0.25)
    assert set(early[Col.IMPRESSION]).isdisjoint(late[Col.IMPRESSION])
    assert early[Col.TIME].max() < late[Col.TIME].min()
    assert split_latest(df, 0.0)[1].is_empty()
    assert split_latest(long_table(n_imp=1), 0.5)[1].is_empty()  # never holds out everything
    with pytest.raises(RecsysError, match=r"\[0, 1\)"):
        split_latest(df, 1.0)


def test_time_labels_order_train_dev_test() -> None:
    times = pl.Series([T0 + timedelta(hours=h) for h in (5, 0, 9, 1, 8, 2, 7, 3, 6, 4)])
    by_hour = dict(zip([t.hour for t in times], time_labels(times, 0.2, 0.3).to_list()))
    assert [by_hour[h] for h in range(10)] == [Split.TRAIN] * 5 + [Split.DEV] * 2 + [Split.TEST] * 3
    assert time_labels(times, 0.0).to_list() == [Split.TRAIN] * 10
    assert time_labels(times, 0.0, 0.1).to_list().count(Split.TEST) == 1
    with pytest.raises(RecsysError):
        time_labels(times, 0.6, 0.5)


def test_leave_one_out_and_held_out_users() -> None:
    rows = long_table(n_imp=12, per=1)
    earlier, last = last_per_user(rows)
    assert sorted(last[Col.USER]) == ["u0", "u1", "u2", "u3"]
    for user, t in zip(last[Col.USER], last[Col.TIME]):
        assert earlier.filter(pl.col(Col.USER) == user)[Col.TIME].max() <= t
    rest, held = held_out_users(rows, 0.5, seed=0)
    assert set(rest[Col.USER]).isdisjoint(held[Col.USER]) and rest.height + held.height == rows.height
    assert held_out_users(rows, 0.5, seed=0)[1].equals(held)  # seeded
    assert splits_before(Split.DEV) == [Split.TRAIN] and splits_before(Split.TEST) == [Split.TRAIN, Split.DEV]


def test_sample_users_keeps_whole_users_and_ignores_row_order() -> None:
    rows = pl.DataFrame({Col.USER: [f"u{i % 50}" for i in range(400)], "x": range(400)})
    sampled, n_users = sample_users(rows, 10, seed=3)
    assert n_users == 50 and sampled[Col.USER].n_unique() == 10
    counts = rows.group_by(Col.USER).len()
    assert sampled.group_by(Col.USER).len().join(counts, on=Col.USER).filter(pl.col("len") != pl.col("len_right")).is_empty()
    again, _ = sample_users(rows.reverse(), 10, seed=3)
    assert set(again[Col.USER]) == set(sampled[Col.USER])
    assert set(sample_users(rows, 10, seed=4)[0][Col.USER]) != set(sampled[Col.USER])
    assert sample_users(rows, 50, seed=3)[0].height == 400 and sample_users(rows, None, seed=3)[0].height == 400
