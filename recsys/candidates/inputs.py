"""What retrieval reads, in the form it reads it: each user's item sequence, and item vectors in catalogue order."""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.data import Col


def user_sequences(impressions: pl.DataFrame) -> pl.DataFrame:
    """Each user's item sequence (oldest first) as the given rows know it.

    The sequence is the history of the user's earliest row followed by the clicked candidates of every row in
    time order. For interaction logs (one row per interaction, history = earlier items) that is the whole
    sequence up to the latest row; for impression logs it is the pre-log history plus the clicks.

    Returns:
        Columns ``user_id`` and ``history`` (list of item ids).
    """
    if impressions.height == 0:
        return pl.DataFrame(schema={Col.USER: pl.String(), Col.HISTORY: pl.List(pl.String())})
    rows = impressions.sort([Col.USER, Col.TIME, Col.IMPRESSION])
    clicks = rows.select(
        Col.USER,
        pl.col(Col.CANDIDATES).list.gather(pl.col(Col.LABELS).list.eval(pl.arg_where(pl.element() == 1))).fill_null([]).alias("clicked"),
    )
    first = rows.group_by(Col.USER, maintain_order=True).agg(pl.col(Col.HISTORY).first())
    later = clicks.group_by(Col.USER, maintain_order=True).agg(pl.col("clicked").explode(keep_nulls=False, empty_as_null=False))
    return first.join(later, on=Col.USER).select(Col.USER, pl.concat_list(Col.HISTORY, "clicked").alias(Col.HISTORY))


def aligned_vectors(vectors: object, item_ids: list[str]) -> np.ndarray | None:
    """Text vectors as an (n_items, d) array in `item_ids` order; zero rows for items without a vector."""
    if vectors is None:
        return None
    if isinstance(vectors, np.ndarray):
        if len(vectors) != len(item_ids):
            raise ValueError(f"{len(vectors)} vectors for {len(item_ids)} items")
        return vectors
    ids, matrix = list(vectors.ids), np.asarray(vectors.vectors, dtype=np.float32)  # type: ignore[attr-defined]
    pos = {item: i for i, item in enumerate(ids)}
    out = np.zeros((len(item_ids), matrix.shape[1]), dtype=np.float32)
    have = [(j, pos[item]) for j, item in enumerate(item_ids) if item in pos]
    if have:
        dst, src = map(np.asarray, zip(*have))
        out[dst] = matrix[src]
    return out
