"""Top-k selection: the one way recsys turns scores into ranked lists (serving, catalogue evaluation, reports)."""

from __future__ import annotations

import numpy as np
import polars as pl

RANK = "rank"


def top_k(table: pl.DataFrame, score: np.ndarray, k: int, group: str, item: str) -> pl.DataFrame:
    """The `k` best rows of each `group` by `score` (ties by `item`, so lists never depend on input order).

    Args:
        table: candidates, one row per (group, item).
        score: one score per row of `table`, higher first.
        k: list length (>= 1).
        group: the column that makes one list (request, impression or row index).
        item: the candidate column, the tie-breaker.

    Returns:
        `table` with ``score`` and ``rank`` (1-based, Int32) columns, at most `k` rows per group,
        sorted by group then rank.
    """
    return (
        table.with_columns(pl.Series("score", np.asarray(score, dtype=np.float64)))
        .sort([group, "score", item], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(group).cast(pl.Int32()).alias(RANK))
        .filter(pl.col(RANK) <= k)
    )


def top_k_matrix(table: pl.DataFrame, score: np.ndarray, n_rows: int, k: int, row: str, item: str) -> np.ndarray:
    """(n_rows, k) integer `item` values of each `row`'s k best candidates, -1 padded (for list-level metrics)."""
    top = top_k(table.select(row, item), score, k, row, item)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    out[top[row].to_numpy(), top[RANK].to_numpy() - 1] = top[item].to_numpy()
    return out
