"""Histories in time order, shared by the events loader and the synthetic generator.

:func:`histories_before`: each impression's history = the user's clicks strictly before it, vectorised
(sort + searchsorted, :func:`click_spans`), so it runs on millions of rows without Python loops. Splits by time live in
:mod:`recsys.splits`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data import Col


def _dense_codes(values: pl.Series) -> np.ndarray:
    return values.rank("dense").cast(pl.Int64()).to_numpy()


def click_spans(impressions: pl.DataFrame, clicks: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each impression's user's clicks strictly before it lie: ``(order, lo, hi)``, the clicks
    ``order[lo[i]:hi[i]]`` for impression i, oldest first (ties in time keep input order).

    Args:
        impressions: columns ``Col.USER`` and ``Col.TIME``.
        clicks: columns ``Col.USER`` and ``Col.TIME``.
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
    return order, lo, hi


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
    order, lo, hi = click_spans(impressions, clicks)
    if max_len is not None:
        lo = np.maximum(lo, hi - max_len)
    lengths = hi - lo
    offsets = np.zeros(n_imp + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - lo, lengths)
    values = clicks[Col.ITEM].gather(order[flat]).cast(pl.String())
    arrow = pa.LargeListArray.from_arrays(pa.array(offsets), values.to_arrow().cast(pa.large_string()))
    return pl.Series(Col.HISTORY, arrow, dtype=pl.List(pl.String()))
