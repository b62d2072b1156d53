"""Time-ordered helpers shared by the events loader and the synthetic generator.

* :func:`histories_before`: each impression's history = the user's clicks strictly before it.
* :func:`split_by_time`: the last fraction of impressions by time becomes the dev split.

Both are vectorised (sort + searchsorted), so they run on millions of rows without Python loops.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data import Col, Split
from recsys.errors import RecsysError


def _dense_codes(values: pl.Series) -> np.ndarray:
    return values.rank("dense").cast(pl.Int64()).to_numpy()


def histories_before(impressions: pl.DataFrame, clicks: pl.DataFrame, max_len: int | None = None) -> pl.Series:
    """The items each impression's user clicked strictly before the impression, oldest first.

    Args:
        impressions: columns ``Col.USER`` and ``Col.TIME``.
        clicks: columns ``Col.USER``, ``Col.TIME`` and ``Col.ITEM``; ties in time keep input order.
        max_len: keep only the most recent ``max_len`` clicks (None: all).

    Returns:
        A ``List(String)`` Series named ``Col.HISTORY``, aligned with ``impressions``.
    """
    n_imp = impressions.height
    users = _dense_codes(pl.concat([impressions[Col.USER], clicks[Col.USER]]))
    times = _dense_codes(pl.concat([impressions[Col.TIME], clicks[Col.TIME]]))
    # One sortable int64 key per (user, time); ranks keep it far from overflow.
    stride = int(times.max(initial=0)) + 2
    keys = users * stride + times
    imp_keys, click_keys = keys[:n_imp], keys[n_imp:]
    order = np.argsort(click_keys, kind="stable")
    click_keys = click_keys[order]
    hi = np.searchsorted(click_keys, imp_keys, side="left")
    lo = np.searchsorted(click_keys, users[:n_imp] * stride, side="left")
    if max_len is not None:
        lo = np.maximum(lo, hi - max_len)
    lengths = hi - lo
    offsets = np.zeros(n_imp + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - lo, lengths)
    values = clicks[Col.ITEM].gather(order[flat]).cast(pl.String())
    arrow = pa.LargeListArray.from_arrays(pa.array(offsets), values.to_arrow().cast(pa.large_string()))
    return pl.Series(Col.HISTORY, arrow, dtype=pl.List(pl.String()))


def split_by_time(times: pl.Series, dev_fraction: float, test_fraction: float = 0.0) -> pl.Series:
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
