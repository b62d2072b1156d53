"""Full-catalogue evaluation and serving of a :func:`recsys.catalogue.train_catalogue` model.

Every row of the evaluated split holds out one item; each model ranks **all** items, the user's earlier items
excluded, and :mod:`recsys.evaluation.metrics` turns the held-out item's rank into Recall@k, NDCG@k and MRR, plus
coverage, intra-list diversity (frozen text vectors) and popularity bias of the top 10. Rows in the table:

* ``popularity``, ``transitions``, ``cooccurrence``, ``ease``: one retrieval source alone, over the catalogue;
* ``text (frozen)`` / ``text (fine-tuned)``: cosine of the items to the user's recent items' mean text vector;
* ``ranker without text``: the lambdarank model without any text feature;
* ``full model``: the lambdarank model over all features.

The statistics are refitted on the splits before the evaluated one, so no target is in what scores it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import polars as pl

from ranker.lambdarank import Ranker, load_ranker
from recsys.catalogue import (FROZEN, FT, NO_TEXT_DIR, RANKER_DIR, TOP, CatalogueConfig, Requests, candidate_table, load_vectors,
                              main_vectors, peak_memory_mb, splits_before)
from features.pairs import item_codes
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.evaluation.metrics import FULL_KS, catalogue_coverage, held_out_ranks, intra_list_diversity, ndcg_key, popularity_bias, rank_metrics, recall_key
from recsys.io import read_json, write_json
from recsys.evaluation.report import GROUP_KEY, MODEL_KEY, write_report
from recsys.candidates.retrieval import COOCCURRENCE, EASE, ITEM_INDEX, POPULARITY, ROW, TEXT, TRANSITIONS, Retriever, score_col

log = logging.getLogger(__name__)

FULL, NO_TEXT = "full model", "ranker without text"
SOURCE_ROWS = {POPULARITY: "popularity", TRANSITIONS: "transitions", COOCCURRENCE: "cooccurrence", EASE: "ease"}
HISTORY_BUCKETS = (0, 5, 10, 20, 50)


def _top_k(table: pl.DataFrame, score: np.ndarray, n_rows: int, k: int = TOP) -> np.ndarray:
    """(n_rows, k) item indices of each row's k best candidates by `score`, -1 padded."""
    top = (
        table.select(ROW, ITEM_INDEX).with_columns(pl.Series("_s", score))
        .sort([ROW, "_s", ITEM_INDEX], descending=[False, True, False])
        .group_by(ROW, maintain_order=True).head(k)
        .with_columns(pl.int_range(pl.len()).over(ROW).alias("_k"))
    )
    out = np.full((n_rows, k), -1, dtype=np.int64)
    out[top[ROW].to_numpy(), top["_k"].to_numpy()] = top[ITEM_INDEX].to_numpy()
    return out


def _candidate_ranks(table: pl.DataFrame, score: np.ndarray, targets: np.ndarray, n_items: int, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Rank and tie count of each row's target among its candidates scored by `score`; a target retrieval missed
    ranks last (every candidate comes first)."""
    rows, items = table[ROW].to_numpy(), table[ITEM_INDEX].to_numpy()
    ranks, ties = np.full(len(targets), n_items, dtype=np.int64), np.ones(len(targets), dtype=np.int64)
    for start in range(0, len(targets), batch):
        sel = (rows >= start) & (rows < start + batch)
        dense = np.full((min(batch, len(targets) - start), n_items), -np.inf, dtype=np.float64)
        dense[rows[sel] - start, items[sel]] = score[sel]
        t = targets[start : start + batch]
        r, k = held_out_ranks(dense, t)
        found = np.isfinite(dense[np.arange(len(t)), t])
        ranks[start : start + batch] = np.where(found, r, n_items)
        ties[start : start + batch] = np.where(found, k, 1)
    return ranks, ties


def _beyond(top: np.ndarray, n_items: int, vectors: np.ndarray | None, popularity: np.ndarray) -> dict[str, float]:
    out = {f"coverage@{TOP}": catalogue_coverage(top, n_items), **popularity_bias(top, popularity)}
    if vectors is not None:
        out[f"ild@{TOP}"] = intra_list_diversity(top, vectors)
    return out


def _by_history(ranks: dict[str, tuple[np.ndarray, np.ndarray]], hist_len: np.ndarray) -> pl.DataFrame:
    rows = []
    edges = list(HISTORY_BUCKETS) + [10**9]
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (hist_len >= lo) & (hist_len < hi)
        if not mask.any():
            continue
        label = f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
        for model, (r, t) in ranks.items():
            m = rank_metrics(r[mask], (10,), t[mask])
            rows.append({GROUP_KEY: label, MODEL_KEY: model, recall_key(10): m[recall_key(10)], ndcg_key(10): m[ndcg_key(10)], "n": m["n"]})
    return pl.DataFrame(rows)


def evaluate_catalogue(model_dir: Path, ds: Dataset, split: str = Split.TEST, report_dir: Path | None = None,
                       *, show_progress: bool = False) -> dict[str, dict[str, float]]:
    """Rank every row's held-out item over the whole catalogue with the model and every baseline.

    Args:
        model_dir: written by :func:`recsys.catalogue.train_catalogue`.
        ds: the dataset (the same items; statistics are refitted on the splits before `split`).
        split: ``"test"`` (statistics from train + dev) or ``"dev"`` (from train; the ranker saw these targets).
        report_dir: where to write ``report.md``/``metrics.json``/plots (None = no report).
        show_progress: progress bars.

    Returns:
        Model name -> metric -> value (``retrieval`` rows hold each source's and the union's recall).

    Raises:
        RecsysError: `split` is train or has no rows.
    """
    if split not in (Split.DEV, Split.TEST):
        raise RecsysError(f"evaluate a held-out split (dev or test), not {split!r}")
    model_dir = Path(model_dir)
    cfg = CatalogueConfig.from_dict(read_json(model_dir / "config.json"))
    rows = ds.split(split)
    if rows.height == 0:
        raise RecsysError(f"the dataset has no {split} rows")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    vectors = load_vectors(model_dir, ds)
    retriever = Retriever.fit(ds, main_vectors(vectors), cfg.retrieval, splits=splits_before(split))
    req = Requests.from_rows(retriever, rows)
    keep = req.targets >= 0
    if not keep.all():
        log.warning("%d %s rows have no known target item and are skipped", int((~keep).sum()), split)
        req = Requests(req.rows.filter(pl.Series(keep)), [h for h, k in zip(req.histories, keep) if k], req.targets[keep])
    table, src = candidate_table(retriever, req, vectors, item_codes(ds.items), show_progress)
    recall = src.recall()
    timings["retrieve_features"] = time.perf_counter() - start
    n_items, n_rows = len(retriever.item_ids), len(req.targets)
    frozen = vectors.get(FROZEN)
    ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tops: dict[str, np.ndarray] = {}
    for source, name in SOURCE_ROWS.items():
        if source in retriever.sources:
            r = src.target_ranks[source]
            ranks[name] = (r[:, 0], r[:, 1])
            tops[name] = _top_k(table, table[score_col(source)].to_numpy(), n_rows)
    if TEXT in retriever.sources:
        name = "text (fine-tuned)" if FT in vectors else "text (frozen)"
        r = src.target_ranks[TEXT]
        ranks[name], tops[name] = (r[:, 0], r[:, 1]), _top_k(table, table[score_col(TEXT)].to_numpy(), n_rows)
    if FT in vectors and frozen is not None:
        frozen_only = Retriever.fit(ds, frozen, dataclasses.replace(cfg.retrieval, sources=(TEXT,)), splits=splits_before(split))
        fgot = frozen_only.retrieve(req.histories, req.targets)
        r = fgot.target_ranks[TEXT]
        ranks["text (frozen)"] = (r[:, 0], r[:, 1])
        tops["text (frozen)"] = _top_k(fgot.candidates, fgot.candidates[score_col(TEXT)].to_numpy(), n_rows)
    start = time.perf_counter()
    importance = None
    for name, sub in ((NO_TEXT, NO_TEXT_DIR), (FULL, RANKER_DIR)):
        if not (model_dir / sub / "ranker.txt").exists():
            continue
        ranker: Ranker = load_ranker(model_dir / sub)
        score = ranker.score(table)
        ranks[name] = _candidate_ranks(table, score, req.targets, n_items)
        tops[name] = _top_k(table, score, n_rows)
        if name == FULL:
            importance = ranker.importance("gain")
    timings["rank"] = time.perf_counter() - start
    result = {name: {**rank_metrics(r, FULL_KS, t), **_beyond(tops[name], n_items, frozen, retriever.popularity)} for name, (r, t) in ranks.items()}
    retrieval_rows = {f"retrieval: {s}": v for s, v in (recall or {}).items()}
    summary = read_json(model_dir / "summary.json") if (model_dir / "summary.json").exists() else {}
    notes = {"split": split + (" (the ranker was trained on these targets: in-sample for the ranker rows)" if split == Split.DEV else ""), "rows": n_rows, "items": n_items, "candidates per row": round(table.height / max(n_rows, 1), 1),
             "statistics fitted on": "+".join(splits_before(split)), "model_dir": str(model_dir),
             "retrieval recall (union@N = the ranker's ceiling)": "; ".join(
                 f"{name.removeprefix('retrieval: ')} " + " ".join(f"{k.replace('recall', 'R')}={v:.4f}" for k, v in row.items())
                 for name, row in retrieval_rows.items()),
             "train stage seconds": summary.get("stage_seconds"), "evaluate stage seconds": {k: round(v, 2) for k, v in timings.items()},
             "peak memory MB (evaluate process)": round(peak_memory_mb(), 1)}
    if report_dir is not None:
        hist_len = np.array([len(h) for h in req.histories])
        best_baseline = max((n for n in ranks if n not in (FULL, NO_TEXT)), key=lambda n: result[n][ndcg_key(10)])
        by_group = _by_history({n: ranks[n] for n in (FULL, NO_TEXT, best_baseline) if n in ranks}, hist_len)
        write_report(report_dir, title=f"Full-catalogue evaluation ({split})", table=result, importance=importance,
                     by_group=by_group, notes=notes)
        write_json({"metrics": result, "retrieval": retrieval_rows}, Path(report_dir) / "catalogue_metrics.json")
    return {**result, **retrieval_rows}


def recommend_catalogue(model_dir: Path, ds: Dataset, requests: pl.DataFrame, top_k: int = 10, *, retriever: Retriever | None = None) -> pl.DataFrame:
    """Top-k lists over the whole catalogue for requests with a history and no candidates (the serving path).

    Args:
        model_dir: written by :func:`recsys.catalogue.train_catalogue`.
        ds: the dataset; serving statistics are fitted on all of its rows.
        requests: rows with ``impression_id``, ``user_id``, ``timestamp`` and ``history`` (item ids, oldest first).
        top_k: list length.
        retriever: a retriever already fitted for serving (reuse it across chunks); fitted here if None.

    Returns:
        ``impression_id``, ``user_id``, ``rank`` (1-based), ``item_id``, ``score``; the user's own items never appear.
    """
    model_dir = Path(model_dir)
    cfg = CatalogueConfig.from_dict(read_json(model_dir / "config.json"))
    vectors = load_vectors(model_dir, ds)
    retriever = retriever or Retriever.fit(ds, main_vectors(vectors), cfg.retrieval, splits=Split.ALL)
    rows = requests.with_columns(pl.lit([], dtype=pl.List(pl.String())).alias(Col.CANDIDATES), pl.lit(None, dtype=pl.List(pl.Int8())).alias(Col.LABELS))
    req = Requests.from_rows(retriever, rows)
    table, _ = candidate_table(retriever, req, vectors, item_codes(ds.items))
    ranker = load_ranker(model_dir / RANKER_DIR)
    top = (
        table.select(Col.IMPRESSION, Col.USER, ITEM_INDEX).with_columns(pl.Series("score", ranker.score(table)))
        .sort([Col.IMPRESSION, "score", ITEM_INDEX], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(Col.IMPRESSION).cast(pl.Int32()).alias("rank"))
        .filter(pl.col("rank") <= top_k)
    )
    items = np.asarray(retriever.item_ids, dtype=object)[top[ITEM_INDEX].to_numpy()]
    return top.with_columns(pl.Series(Col.ITEM, items, dtype=pl.String())).select(Col.IMPRESSION, Col.USER, "rank", Col.ITEM, "score")
