"""Repeat candidates: the items a user already had, offered to the ranker beside the retrieved ones.

The retrieval sources never return an item the user had (:mod:`recsys.candidates.earlier`), and serving and the
masked protocol exclude those items. Whether users come back to an item is a property of the shop, not a constant:
a grocery's baskets repeat, while on Amazon Scientific 0.6% of next items are earlier ones. So the ranker learns it
from the log. Its training groups also hold each user's most recent distinct earlier items, with every source's
score and rank as if nothing were excluded, and the ``seen_count`` / ``seen_ago`` pair features
(:mod:`features.pairs`). The ``recbole`` protocol, which excludes nothing, ranks the same candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from recsys.candidates.retrieval import ITEM_INDEX, ROW, Retriever


def recent_distinct(earlier: Sequence[np.ndarray], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of each row's `depth` most recent distinct items (`earlier`: oldest first), rows ascending,
    the most recent item first within a row."""
    rows, items = [], []
    for r, seq in enumerate(earlier):
        newest_first = np.asarray(seq)[::-1]
        _, first = np.unique(newest_first, return_index=True)
        keep = newest_first[np.sort(first)][:depth]
        rows.append(np.full(len(keep), r, dtype=np.int64))
        items.append(keep.astype(np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(rows), np.concatenate(items)) if rows else (empty, empty)


def repeat_candidates(retriever: Retriever, histories: Sequence[np.ndarray], earlier: Sequence[np.ndarray], depth: int) -> pl.DataFrame:
    """Each row's `depth` most recent distinct `earlier` items as candidates: ``row``, ``item_index`` and every
    source's score, rank and ``n_sources`` as :meth:`Retriever.retrieve` gives them, scored with nothing excluded
    (an excluded item would score -inf)."""
    rows, items = recent_distinct(earlier, depth)
    nothing = [np.zeros(0, dtype=np.int64)] * len(histories)
    scored = retriever.score_pairs(histories, rows, items, seen=nothing)
    return pl.DataFrame({ROW: rows.astype(np.int32), ITEM_INDEX: items.astype(np.int32)}).hstack(scored)
