"""Retrieved candidates: the union of the retrieval sources' top items over the whole catalogue.

Interaction-only logs (and requests without candidates) take their candidates from here. For labelled rows
the held-out item (the row's clicked candidate) is the target: a retrieved candidate is labelled 1 when it
is the target, so the ranker learns, and is judged, on exactly what serving will give it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.candidates.earlier import user_histories
from recsys.candidates.logged import KEYS
from recsys.candidates.repeats import repeat_candidates
from recsys.candidates.retrieval import ITEM_INDEX, ROW, Retrieved, Retriever
from recsys.data import Col


@dataclass
class Requests:
    """Rows to rank over the catalogue: item-index histories (what models read), the items each row's user had
    (:class:`~recsys.candidates.earlier.UserHistories`), whether those are excluded from the ranking, each row's
    uncapped history length and (for labelled rows) the held-out target."""

    rows: pl.DataFrame
    histories: list[np.ndarray]
    targets: np.ndarray  # -1 where unknown
    earlier: list[np.ndarray]  # everything the row's user had before it: never retrieved; repeat candidates when not masked
    lengths: np.ndarray  # the user's history length before the row, not capped by the ingest (recsys.candidates.earlier)
    masked: bool = True  # exclude the earlier items from the ranking (False: RecBole's protocol, a repeat target can be a hit)

    @classmethod
    def from_rows(cls, retriever: Retriever, rows: pl.DataFrame, log: pl.DataFrame | None, *, masked: bool = True) -> Requests:
        """`rows` sorted by (user, time, id); the target is the first clicked candidate (none for requests).

        Args:
            retriever: encodes item ids into its catalogue.
            rows: the rows to rank.
            log: the dataset's impressions (every split): what each row's user had before it, point in time
                (None: only the row's own history is known).
            masked: exclude what the user had from the ranking (False: exclude nothing, so a repeat target can
                be a hit, as RecBole's full-sort evaluation does).
        """
        rows = rows.sort([Col.USER, Col.TIME, Col.IMPRESSION])
        first = rows.select(pl.col(Col.CANDIDATES).list.get(pl.col(Col.LABELS).list.arg_max().fill_null(0), null_on_oob=True).alias("t"))
        known = rows[Col.LABELS].is_not_null().to_numpy()
        targets = np.array([retriever.index.get(t, -1) if t is not None and k else -1 for t, k in zip(first["t"], known)], dtype=np.int64)
        histories = retriever.encode_histories(rows[Col.HISTORY])
        users = user_histories(log, rows, histories, retriever.encode_histories)
        return cls(rows, histories, targets, users.seen, users.lengths, masked)

    @property
    def seen(self) -> list[np.ndarray]:
        """Per row, the items excluded from its ranking: its earlier items, or none when not masked."""
        return self.earlier if self.masked else [np.zeros(0, dtype=np.int64)] * len(self.earlier)

    def take(self, keep: np.ndarray) -> Requests:
        """The rows at positions `keep` (a boolean mask or ascending indices)."""
        at = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Requests(self.rows[at], [self.histories[i] for i in at], self.targets[at], [self.earlier[i] for i in at], self.lengths[at], self.masked)

    def with_targets(self) -> Requests:
        """Only the rows whose target is in the catalogue."""
        return self.take(self.targets >= 0)


def retrieved_candidates(retriever: Retriever, req: Requests, show_progress: bool = False, repeats: bool = False) -> tuple[pl.DataFrame, Retrieved]:
    """Retrieved candidates of `req` in long format: :data:`~recsys.candidates.logged.KEYS`, ``row`` (index into
    ``req.rows``), ``item_index``, every source's score and rank and ``n_sources``; and the retrieval itself
    (each source's rank of the target when every row has one, for recall).

    The sources never retrieve a row's earlier items; with `repeats`, the most recent ``per_source`` of them join
    its candidates after the retrieved ones (:mod:`recsys.candidates.repeats`).
    """
    known = req.targets >= 0
    got = retriever.retrieve(req.histories, req.targets if len(known) and known.all() else None, show_progress, seen=req.earlier)
    table = got.candidates
    if repeats:
        again = repeat_candidates(retriever, req.histories, req.earlier, retriever.cfg.per_source)
        table = pl.concat([table, again], how="diagonal_relaxed").sort(ROW, maintain_order=True)
    if table.is_empty():
        return pl.DataFrame(schema={**dict.fromkeys(KEYS, pl.String()), ROW: pl.Int32(), ITEM_INDEX: pl.Int32()}), got
    rows, items = table[ROW].to_numpy(), table[ITEM_INDEX].to_numpy()
    labelled = req.rows[Col.LABELS].is_not_null().to_numpy()[rows]
    label = np.where(labelled, (items == req.targets[rows]).astype(np.float64), np.nan)
    table = table.with_columns(
        pl.Series(Col.IMPRESSION, req.rows[Col.IMPRESSION].to_numpy()[rows], dtype=pl.String()),
        pl.Series(Col.USER, req.rows[Col.USER].to_numpy()[rows], dtype=pl.String()),
        pl.Series(Col.ITEM, np.asarray(retriever.item_ids, dtype=object)[items], dtype=pl.String()),
        pl.int_range(pl.len()).over(ROW).cast(pl.Int32()).alias(Col.POSITION),
        pl.Series(Col.TIME, req.rows[Col.TIME].to_numpy()[rows]).cast(pl.Datetime("us")),
        pl.Series(Col.SPLIT, req.rows[Col.SPLIT].to_numpy()[rows], dtype=pl.String()),
        pl.Series(Col.LABEL, label).fill_nan(None).cast(pl.Int8()),
    )
    return table.select(*KEYS, pl.exclude(KEYS)), got


def subsample_negatives(table: pl.DataFrame, negatives: int, seed: int) -> pl.DataFrame:
    """Groups that contain their target, with the target and a uniform sample of at most `negatives` negatives.

    Groups whose target retrieval missed teach lambdarank nothing. The sample must be uniform: keeping only the
    best-ranked negatives (and every positive) would teach the ranker that a poorly ranked candidate is a positive.
    """
    has_target = pl.col(Col.LABEL).max().over(Col.IMPRESSION) > 0
    noise = pl.Series("_u", np.random.default_rng(seed).random(table.height))
    order = pl.col("_u").rank("ordinal").over(Col.IMPRESSION, Col.LABEL)
    return table.with_columns(noise).filter(has_target & ((pl.col(Col.LABEL) > 0) | (order <= negatives))).drop("_u")
