"""Everything the log knows a user had before a row: the uncapped history that masking and user-level statistics read.

A row's ``history`` holds at most the ingest's ``--max-history`` latest items (UniSRec's files: 50): that is what a
model reads. What the user already had is longer, and excluding only the capped part from a ranking would let a
user with 300 earlier items be recommended one of them, and make every figure depend on the cap. So the items
excluded from a ranking (and offered again as repeat candidates, :mod:`recsys.candidates.repeats`), the user's history
length (a ranker feature, the report's buckets) and how often and how long ago the user had an item come from here:

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
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data import Col
from recsys.loaders.timeline import histories_before

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


@dataclass(frozen=True)
class UserHistories:
    """What each row's user had before it, uncapped (aligned with the rows).

    Attributes:
        seen: the catalogue items excluded from the row's ranking and offered again as repeat candidates: the log's
            earlier items, then the row's own history (a request may bring newer items inline), oldest first.
        sequences: the ordered sequence that user-level statistics count (how often, how long ago): the log's earlier
            items, or the row's own history when that is longer; catalogue items only.
        lengths: the history length: the longer of the log's earlier items and the row's own history, items outside
            the catalogue included.
    """

    seen: list[np.ndarray]
    sequences: list[np.ndarray]
    lengths: np.ndarray


def user_histories(log: pl.DataFrame | None, rows: pl.DataFrame, histories: Sequence[np.ndarray], encode: Encode) -> UserHistories:
    """:class:`UserHistories` of `rows` (``user_id``, ``timestamp``), aligned with `histories` (each row's own, capped,
    history as catalogue indices); `log` is the dataset's impressions, every split (None: the rows' own histories
    are all that is known). `encode` turns item-id lists into catalogue index arrays."""
    own = np.array([len(h) for h in histories], dtype=np.int64)
    if log is None or not rows.height:
        return UserHistories(list(histories), list(histories), own)
    earlier = earlier_items(log, rows)
    counts = earlier.list.len().to_numpy().astype(np.int64)
    encoded = encode(earlier)
    return UserHistories([np.concatenate([e, h]) for e, h in zip(encoded, histories)],
                         [e if n >= len(h) else h for e, n, h in zip(encoded, counts, histories)], np.maximum(counts, own))
