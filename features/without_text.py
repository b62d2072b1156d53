"""The "without text" baseline's view of a candidate table: the job as it would run if the items had no text.

Text reaches a ranker two ways. One is the features derived from item text, which
:func:`features.registry.ranker_features` leaves out with ``text=False``. The other is the candidates themselves:
the text and sequence sources retrieve items that no other source does, and ``n_sources`` counts their votes.
A baseline that ranks those candidates, or reads that count, still learns from text. So the baseline sees a table
without either:

* ``n_sources`` counts only the sources that read no text;
* on retrieved candidates (interaction logs), a candidate that only text sources retrieved is not a candidate:
  training drops its row and scoring ranks it last. A row no source retrieved stays, because it is a repeat
  candidate (the user's earlier item) or a logged one, and text does not choose those.

Logged candidates (impression logs) are the log's own, so none is dropped; only ``n_sources`` changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features.registry import TEXT_SOURCES, source_rank
from ranker.lambdarank import Ranker
from recsys.candidates.retrieval import N_SOURCES


def text_votes(columns: list[str], per_source: int) -> pl.Expr:
    """How many text sources have the candidate in their top `per_source` (a rank of at most `per_source`)."""
    ranks = [source_rank(s) for s in TEXT_SOURCES if source_rank(s) in columns]
    if not ranks:
        return pl.lit(0, dtype=pl.Int32())
    return pl.sum_horizontal((pl.col(r) <= per_source).fill_null(False).cast(pl.Int32()) for r in ranks)


def without_text(table: pl.DataFrame, per_source: int, retrieved: bool) -> tuple[pl.DataFrame, np.ndarray]:
    """`table` as the baseline sees it, and a boolean mask of the rows that are its candidates.

    Args:
        table: candidates with their features (any columns; ``n_sources`` and the sources' ranks where present).
        per_source: the retrieval depth of each source (``RetrievalConfig.per_source``).
        retrieved: the candidates come from retrieval (interaction logs), not from the log.
    """
    if N_SOURCES not in table.columns:
        return table, np.ones(table.height, dtype=bool)
    votes = text_votes(table.columns, per_source)
    other = (pl.col(N_SOURCES) - votes).clip(lower_bound=0)
    keep = (other > 0) | (pl.col(N_SOURCES) == 0) if retrieved else pl.lit(True)
    marked = table.select(other.cast(table.schema[N_SOURCES]).alias(N_SOURCES), keep.fill_null(True).alias("_keep"))
    return table.with_columns(marked[N_SOURCES]), marked["_keep"].to_numpy()


@dataclass(frozen=True)
class WithoutTextRanker:
    """The baseline ranker over a full candidate table: it scores its view of the table (:func:`without_text`),
    and a row that is not its candidate scores -inf (ranked last, as a target retrieval missed)."""

    ranker: Ranker
    per_source: int
    retrieved: bool

    def score(self, table: pl.DataFrame) -> np.ndarray:
        seen, keep = without_text(table, self.per_source, self.retrieved)
        return np.where(keep, self.ranker.score(seen), -np.inf)
