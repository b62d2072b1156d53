"""Everything the log knows a user had before a row: the uncapped history that masking and user-level statistics read.

A row's ``history`` holds at most the ingest's ``--max-history`` latest items (UniSRec's files: 50): that is what a
model reads. What the user already had is longer, and excluding only the capped part from a ranking would let a
user with 300 earlier items be recommended one of them, and make every figure depend on the cap. So the items
excluded from a ranking, and the user's history length (a ranker feature, the report's buckets), come from here:

* the history of the user's first logged row (what came before the log), known from just before that row;
* the clicked candidates of each of the user's rows, known strictly after that row's time;

so a row at time t sees every item of its user strictly before t (an event at t itself, its own target included,
never counts), whatever split the earlier rows are in. For an interaction log (one row per click) that is the
user's whole sequence before the row. Impression logs are ranked over their logged candidates (replay), which
excludes nothing; there the history comes with the log, and this adds only the clicks of the log itself.

Memory follows the rows' users' events, never users x items: the log is cut to those users, and the per-row lists
come from one sort and binary search (:func:`recsys.loaders.timeline.histories_before`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from recsys.data import Col
from recsys.loaders.timeline import click_spans, histories_before

Encode = Callable[[pl.Series], list[np.ndarray]]  # item-id lists to catalogue index arrays (Retriever.encode_histories)


def known_events(log: pl.DataFrame, users: pl.Series) -> pl.DataFrame:
    """``(user_id, timestamp, item_id)`` of every item the log shows `users` had: each user's first row's history one
    microsecond before that row, then every clicked candidate at its row's time (in order within a time)."""
    mine = log.filter(pl.col(Col.USER).is_in(users.unique().implode())).sort(Col.USER, Col.TIME, Col.IMPRESSION)
    first = mine.group_by(Col.USER, maintain_order=True).first()
    before = first.select(Col.USER, (pl.col(Col.TIME) - pl.duration(microseconds=1)).alias(Col.TIME), pl.col(Col.HISTORY).alias(Col.ITEM))
    clicked = mine.select(Col.USER, Col.TIME, pl.col(Col.CANDIDATES).list.gather(
        pl.col(Col.LABELS).fill_null([]).list.eval((pl.element() == 1).arg_true())).alias(Col.ITEM))
    return pl.concat([before, clicked]).explode(Col.ITEM).drop_nulls(Col.ITEM)


def earlier_items(log: pl.DataFrame, rows: pl.DataFrame) -> pl.Series:
    """Per row of `rows` (``user_id``, ``timestamp``): the items its user had strictly before its time, oldest
    first, uncapped (``List(String)``, aligned with `rows`)."""
    return histories_before(rows.select(Col.USER, Col.TIME), known_events(log, rows[Col.USER]), None)


def history_lengths(log: pl.DataFrame | None, rows: pl.DataFrame, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Per row: the user's history length before it, uncapped: the longer of the log's earlier items (counted, never
    listed) and the row's own history (a request may bring a longer one inline). None for `log`: the histories'."""
    own = np.array([len(h) for h in histories], dtype=np.int64)
    if log is None or not rows.height:
        return own
    _, lo, hi = click_spans(rows.select(Col.USER, Col.TIME), known_events(log, rows[Col.USER]))
    return np.maximum(hi - lo, own)


def whole_histories(log: pl.DataFrame | None, rows: pl.DataFrame, histories: Sequence[np.ndarray], encode: Encode) -> tuple[list[np.ndarray], np.ndarray]:
    """Per row: the catalogue items its user is known to have had (the log's earlier items, then the row's own
    history), and the uncapped history length (:func:`history_lengths`).

    Args:
        log: the dataset's impressions, every split (None: the rows' own histories are all that is known).
        rows: the rows (``user_id``, ``timestamp``), aligned with `histories`.
        histories: each row's own (capped) history as catalogue indices.
        encode: item-id lists to catalogue index arrays.
    """
    if log is None or not rows.height:
        return list(histories), history_lengths(None, rows, histories)
    earlier = earlier_items(log, rows)
    lengths = np.maximum(earlier.list.len().to_numpy().astype(np.int64), history_lengths(None, rows, histories))  # as history_lengths
    return [np.concatenate([e, h]) for e, h in zip(encode(earlier), histories)], lengths
