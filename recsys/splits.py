"""Every split recsys makes, in one place: by time (dev/test splits, validation, stacking) and leave-one-out.

A stage may only learn from what came before what it is judged on, so every split here is by time
(or, for leave-one-out logs, by position in each user's sequence); the one exception is
:func:`held_out_users`, a seeded share of users for early stopping when all targets share one time.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError


def split_latest(rows: pl.DataFrame, fraction: float, group: str = Col.IMPRESSION) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(earlier, latest)``: the latest `fraction` of groups by time go to `latest`, whole groups on one side.

    Groups (impressions) are ordered by their first time, then id; ``ceil(n * fraction)`` of them are
    held out, but never all of them. Used for validation splits and for stacking (the text model learns
    from the earlier part, the ranker from the later one).

    Raises:
        RecsysError: `fraction` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise RecsysError(f"a held-out fraction must be in [0, 1), got {fraction}")
    order = rows.group_by(group).agg(pl.col(Col.TIME).min()).sort([Col.TIME, group])
    n_late = min(math.ceil(order.height * fraction), max(order.height - 1, 0)) if fraction > 0 else 0
    late = pl.col(group).is_in(order.tail(n_late)[group].implode())
    return rows.filter(~late), rows.filter(late)


def time_labels(times: pl.Series, dev_fraction: float, test_fraction: float = 0.0) -> pl.Series:
    """``"test"`` for the latest ``test_fraction`` of ``times``, ``"dev"`` for the ``dev_fraction`` before it,
    else ``"train"`` (ties at a cut go to the later split).

    Raises:
        RecsysError: if the fractions are negative or leave no room for train.
    """
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise RecsysError(f"dev and test fractions must be >= 0 with a sum below 1, got {dev_fraction}, {test_fraction}")
    ordered = times.sort()

    def cutoff(fraction: float) -> object:
        n = round(times.len() * fraction)
        return ordered[times.len() - n] if n else None

    dev_cut, test_cut = cutoff(dev_fraction + test_fraction), cutoff(test_fraction)
    if dev_cut is None:
        return pl.Series(Col.SPLIT, [Split.TRAIN] * times.len(), dtype=pl.String())
    split = pl.lit(Split.TRAIN)
    split = pl.when(times >= dev_cut).then(pl.lit(Split.DEV)).otherwise(split)
    if test_cut is not None:
        split = pl.when(times >= test_cut).then(pl.lit(Split.TEST)).otherwise(split)
    return pl.select(split.alias(Col.SPLIT)).to_series()


def resplit_by_time(ds: Dataset, dev_fraction: float = 0.1, test_fraction: float = 0.1) -> Dataset:
    """The dataset re-split by time: the latest `test_fraction` of rows test, the `dev_fraction` before them dev.

    Raises:
        RecsysError: the log's times are only sequence positions (its leave-one-out splits are the protocol then),
            or the fractions leave no train rows.
    """
    if ds.manifest.get("time_source") == "sequence_order":
        raise RecsysError("this log has no real timestamps (time_source=sequence_order); use its leave-one-out splits")
    if not (0 < dev_fraction and 0 < test_fraction):
        raise RecsysError(f"dev_fraction and test_fraction must be > 0, got {dev_fraction}, {test_fraction}")
    imps = ds.impressions.with_columns(time_labels(ds.impressions[Col.TIME], dev_fraction, test_fraction))
    return Dataset(ds.items, imps, {**ds.manifest, "split_protocol": f"time: latest {test_fraction} test, {dev_fraction} before it dev"})


def splits_before(split: str) -> list[str]:
    """The splits whose rows may feed statistics that score `split` (train for dev, train + dev for test)."""
    return list(Split.ALL[: Split.ALL.index(split)])


def last_per_user(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(earlier, last)``: each user's latest row (by time, then id) apart from the rest: leave-one-out."""
    rows = rows.sort([Col.USER, Col.TIME, Col.IMPRESSION])
    is_last = pl.col(Col.IMPRESSION) == pl.col(Col.IMPRESSION).last().over(Col.USER)
    return rows.filter(~is_last), rows.filter(is_last)


def held_out_users(table: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(rest, held)``: a seeded `fraction` of users held out whole (early stopping when all targets share a time)."""
    users = np.array(sorted(set(table[Col.USER].to_list())))
    held_users = users[np.random.default_rng(seed).random(len(users)) < fraction]
    held = pl.col(Col.USER).is_in(pl.Series(held_users, dtype=pl.String()).implode())
    return table.filter(~held), table.filter(held)


def validation_split(table: pl.DataFrame, by: str, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(fit, valid)`` of the ranker's table: the latest `fraction` of groups (`by` ``"time"``) or a seeded `fraction`
    of users (``"users"``: leave-one-out logs, whose targets all share one time), held out to early-stop it."""
    return split_latest(table, fraction) if by == "time" else held_out_users(table, fraction, seed)


def sample_users(rows: pl.DataFrame, max_users: int | None, seed: int) -> tuple[pl.DataFrame, int]:
    """``(rows of a seeded sample of at most `max_users` users, number of users in `rows`)``; all rows when
    there are not more users than that (or `max_users` is None). Users keep all their rows, so per-user
    statistics are unbiased; the sample depends only on the set of users and the seed, not on row order."""
    users = rows[Col.USER].unique().sort()
    if max_users is None or users.len() <= max_users:
        return rows, users.len()
    if max_users < 1:
        raise RecsysError(f"a user sample needs at least 1 user, got max_users={max_users}")
    keep = users.gather(np.sort(np.random.default_rng(seed).permutation(users.len())[:max_users]))
    return rows.filter(pl.col(Col.USER).is_in(keep.implode())), users.len()
