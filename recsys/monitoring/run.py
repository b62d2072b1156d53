"""One run of the model over a set of requests, as the monitor sees it: what went in and what came out.

:func:`score_run` puts impression-format rows through the path serving takes (candidates -> features -> the full
model's ranker) and keeps, in memory, what the reference and the monitor summarise: every feature the ranker reads,
every candidate's score, how many candidates each retrieval source gave each request, the top-k lists, and for
labelled rows each row's metric. Training calls it on the dev split (the reference); ``recsys monitor`` on the new
log, so a run on the same rows reproduces the reference exactly. Only aggregates leave this module: no user id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from features.collect import collect_features
from ranker.topk import RANK, top_k
from recsys.candidates.inputs import user_sequences
from recsys.candidates.logged import logged_candidates
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.data import Col, Dataset
from recsys.errors import DataError, RecsysError
from recsys.evaluation.metrics import MRR, AUC, ndcg_key, per_impression, recall_key
from recsys.pipeline import LOGGED, Assets, candidate_source, needs_retriever

log = logging.getLogger(__name__)

TOP_K = 10  # list length of the list-level figures and the replayed metrics
LOGGED_SOURCE = "logged"  # the one candidate source of an impression log: what each impression showed
_SCORE = "_score"


@dataclass
class Run:
    """What one run of the model gave, in memory (arrays, never ids of users).

    Attributes:
        features: feature -> its value for every candidate (NaN = null), the ranker's features in its order.
        scores: the full model's score of every candidate.
        sources: candidate source -> candidates it gave each request (``logged``: the impression's own list).
        lists: (requests, k) catalogue indices of each request's top-k items, -1 padding.
        metrics: metric -> its value for each labelled request (empty when no request is labelled).
        requests: requests scored.
    """

    features: dict[str, np.ndarray]
    scores: np.ndarray
    sources: dict[str, np.ndarray]
    lists: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    requests: int = 0


def catalogue_lists(top: pl.DataFrame, group: str, catalogue: Sequence[str], k: int) -> np.ndarray:
    """(groups, k) catalogue indices of ranked lists given as rows (`group`, ``rank`` 1-based, ``item_id``), -1 padded;
    items outside `catalogue` and ranks beyond `k` are left out.

    >>> top = pl.DataFrame({"r": ["a", "a", "b"], "rank": [1, 2, 1], "item_id": ["y", "x", "zz"]})
    >>> catalogue_lists(top, "r", ["x", "y"], 2).tolist()
    [[1, 0], [-1, -1]]
    """
    index = pl.DataFrame({Col.ITEM: list(catalogue), "_i": np.arange(len(catalogue), dtype=np.int64)}, schema={Col.ITEM: pl.String(), "_i": pl.Int64()})
    groups = top.select(group).unique(maintain_order=True).with_row_index("_g")
    rows = top.join(index, on=Col.ITEM, how="inner").join(groups, on=group).filter(pl.col(RANK) <= k)
    out = np.full((groups.height, k), -1, dtype=np.int64)
    out[rows["_g"].to_numpy().astype(np.int64), rows[RANK].to_numpy().astype(np.int64) - 1] = rows["_i"].to_numpy()
    return out


def read_lists(path: str | Path, catalogue: Sequence[str], k: int) -> np.ndarray:
    """The ranked lists a run wrote (``recsys recommend``'s Parquet: request_id, rank, item_id) as catalogue indices.

    Raises:
        DataError: the file is missing, unreadable, or lacks a column or a rank (naming the file, row and field).
    """
    from recsys.loaders.tables import read_parquet
    from recsys.recommend import REQUEST

    recs = read_parquet(Path(path))
    for col, kind in ((REQUEST, pl.String()), (RANK, pl.Int64()), (Col.ITEM, pl.String())):
        if col not in recs.columns:
            raise DataError(path, None, col, "column is missing; ranked lists have request_id, rank and item_id (recsys recommend)")
        try:
            recs = recs.with_columns(pl.col(col).cast(kind))
        except pl.exceptions.PolarsError:
            raise DataError(path, None, col, f"has type {recs.schema[col]}; expected {kind}") from None
        nulls = recs[col].is_null()
        if nulls.any():
            raise DataError(path, int(nulls.arg_true()[0]) + 1, col, "is empty")
    bad = recs[RANK] < 1
    if bad.any():
        raise DataError(path, int(bad.arg_true()[0]) + 1, RANK, f"rank {recs[RANK][int(bad.arg_true()[0])]} is not 1 or more")
    if recs.is_empty():
        raise DataError(path, None, None, "holds no ranked list")
    return catalogue_lists(recs, REQUEST, catalogue, k)


def item_popularity(ds: Dataset, splits: Sequence[str]) -> tuple[np.ndarray, int]:
    """(users whose item sequence in `splits` holds each catalogue item, in ``ds.items`` order; those users)."""
    seqs = user_sequences(ds.split(*splits))
    counts = (seqs.select(pl.col(Col.HISTORY).list.unique()).explode(Col.HISTORY).group_by(Col.HISTORY).len()
              .rename({Col.HISTORY: Col.ITEM}))
    pop = ds.items.select(Col.ITEM).join(counts, on=Col.ITEM, how="left", maintain_order="left")["len"].fill_null(0)
    return pop.to_numpy().astype(np.float64), seqs.height


def _feature_arrays(table: pl.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: table[n].cast(pl.Float64).fill_null(float("nan")).to_numpy() for n in names}


def _logged_metrics(table: pl.DataFrame) -> dict[str, np.ndarray]:
    labelled = table.filter(pl.col(Col.LABEL).is_not_null())
    if labelled.is_empty():
        return {}
    per = per_impression(labelled, _SCORE)
    return {m: per[m].to_numpy() for m in (AUC, MRR, ndcg_key(5), ndcg_key(10))}


def _list_metrics(top: pl.DataFrame, labelled: pl.DataFrame, k: int) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of each labelled request's held-out item in its top-k list (0 when the list misses it)."""
    if labelled.is_empty():
        return {}
    hit = top.filter(pl.col(Col.LABEL) == 1).group_by(Col.IMPRESSION).agg(pl.col(RANK).min())
    ranks = labelled.select(Col.IMPRESSION).join(hit, on=Col.IMPRESSION, how="left", maintain_order="left")[RANK]
    r = ranks.fill_null(k + 1).to_numpy().astype(np.float64)
    return {recall_key(k): (r <= k).astype(np.float64), ndcg_key(k): np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)}


def score_run(assets: Assets, rows: pl.DataFrame, fit_splits: Sequence[str], k: int = TOP_K, judged: pl.Series | None = None) -> Run:
    """Score impression-format `rows` as serving would and keep what the monitor compares (see :class:`Run`).

    Args:
        assets: the model and the dataset it serves from (the behaviour features and retrieval read its log).
        rows: the requests: impression-format rows; their candidates are used by a model of logged candidates,
            retrieval over the catalogue gives them otherwise. Labelled rows also give the replayed metrics.
        fit_splits: the splits whose rows retrieval statistics are fitted on (those before `rows`).
        k: list length.
        judged: the impression ids whose outcomes the metrics count (default: every labelled row).

    Returns:
        The :class:`Run`.

    Raises:
        RecsysError: no rows, or no candidate for any of them.
    """
    if rows.is_empty():
        raise RecsysError("no requests to score: the split (or the requests file) is empty")
    ranker = assets.rankers["full model"]
    catalogue = assets.dataset.items[Col.ITEM].to_list()
    logged = candidate_source(assets.dataset.kind) == LOGGED
    retriever = assets.retriever(splits=fit_splits) if not logged or needs_retriever(assets.config) else None
    labelled_ids = rows.filter(pl.col(Col.LABELS).is_not_null())
    counted = pl.lit(True) if judged is None else pl.col(Col.IMPRESSION).is_in(judged.implode())
    if logged:
        candidates = logged_candidates(rows)
        sources = {LOGGED_SOURCE: rows[Col.CANDIDATES].list.len().fill_null(0).to_numpy().astype(np.int64)}
    else:
        req = Requests.from_rows(retriever, rows, assets.dataset.impressions)  # type: ignore[arg-type]
        rows = req.rows
        candidates, got = retrieved_candidates(retriever, req)  # type: ignore[arg-type]
        sources = {s: h.astype(np.int64) for s, h in got.hits.items()}
        labelled_ids = rows.filter(pl.Series(req.targets >= 0) & counted)
    if candidates.is_empty():
        raise RecsysError(f"none of the {rows.height} requests has a candidate: nothing was ranked")
    table = collect_features(assets.inputs(retriever), rows, candidates)
    scores = ranker.score(table)
    table = table.with_columns(pl.Series(_SCORE, scores))
    top = top_k(table.select(Col.IMPRESSION, Col.ITEM, Col.LABEL), scores, k, Col.IMPRESSION, Col.ITEM)
    metrics = _logged_metrics(table.filter(counted)) if logged else _list_metrics(top, labelled_ids.select(Col.IMPRESSION), k)
    log.info("scored %d requests: %d candidates, %d labelled", rows.height, table.height, labelled_ids.height)
    return Run(features=_feature_arrays(table, ranker.features), scores=scores, sources=sources,
               lists=catalogue_lists(top, Col.IMPRESSION, catalogue, k), metrics=metrics, requests=rows.height)
