"""``MODEL/reference.json``: the distributions a later run is compared with, written by ``recsys train``.

The train pipeline's last stage (``reference``) scores a seeded sample of :data:`REFERENCE_USERS` dev users with the
trained model exactly as ``recsys monitor`` scores a new log (:func:`recsys.monitoring.run.score_run`): retrieval
statistics fitted on train only, the user's items excluded. What it keeps (aggregates only, no user id, JSON)::

    features    each ranker feature: quantiles, PSI bins and shares, null share, mean, std (recsys.monitoring.drift)
    score       the full model's scores of every candidate, summarised the same way
    sources     each candidate source: mean candidates per request, share of requests it gave none, total
    lists       of the top-k lists: catalogue coverage at fixed numbers of lists, intra-list diversity (frozen text
                vectors), novelty (Castells et al.), popularity bias (mean popularity percentile, mean log popularity)
    metrics     the dev metrics, each with its bootstrap standard error and 95% interval: AUC, MRR, nDCG@5/10 of the
                logged impressions, or Recall@10 / NDCG@10 of the held-out item in the top-10 list (retrieved
                candidates: only on the dev rows of the ranker's validation groups, since it learned from the other
                dev targets and would look better on them than on any later day)

A dataset without dev rows (an impression log with train only) takes its latest tenth of training impressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data import Col, Split
from recsys.errors import RecsysError
from recsys.evaluation.beyond import coverage_at, intra_list_diversity, novelty, popularity_bias
from recsys.evaluation.report import json_safe
from recsys.io import read_json, write_json
from recsys.model import REFERENCE
from recsys.monitoring.drift import bootstrap, summarise
from recsys.monitoring.run import TOP_K, Run, item_popularity, score_run
from recsys.pipeline import FROZEN, LOGGED, Assets, candidate_source
from recsys.splits import validation_split
from recsys.splits import sample_users, split_latest, splits_before

FORMAT = 1
REFERENCE_USERS = 2_000  # dev users scored: ~20k lists' worth of candidates on Amazon Scientific, seconds on 2 cores
COVERAGE_LISTS = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000)  # coverage is compared at equal list counts
NO_DEV_SHARE = 0.1  # without dev rows: this latest share of the training impressions
TRAINING_TABLE = "features.parquet"  # the ranker's training table (recsys.pipeline.write_training_candidates)


def list_figures(lists: np.ndarray, popularity: np.ndarray, n_users: int, vectors: np.ndarray | None, seed: int = 0,
                 counts: Sequence[int] | None = None) -> dict[str, Any]:
    """Coverage, diversity, novelty and popularity bias of top-k lists.

    Args:
        lists: (lists, k) catalogue indices, -1 padding.
        popularity: (items,) users per item in the rows the run's statistics were fitted on.
        n_users: users behind `popularity`.
        vectors: (items, d) item vectors for the intra-list diversity, or None (no diversity).
        seed: seed of the list samples coverage is measured on.
        counts: numbers of lists to measure coverage at (default :data:`COVERAGE_LISTS` and all of them).

    Returns:
        ``lists``, ``coverage`` (number of lists -> share of the catalogue), ``ild@k``, ``novelty@k``,
        ``pop_percentile``, ``mean_log_pop``.
    """
    k = lists.shape[1]
    counts = [c for c in COVERAGE_LISTS if c < len(lists)] + [len(lists)] if counts is None else list(counts)
    bias = popularity_bias(lists, popularity)
    return {"lists": len(lists), "coverage": {str(c): v for c, v in coverage_at(lists, len(popularity), counts, seed).items()},
            f"ild@{k}": intra_list_diversity(lists, vectors) if vectors is not None else None,
            f"novelty@{k}": novelty(lists, popularity, n_users), "pop_percentile": bias["pop_percentile"], "mean_log_pop": bias["mean_log_pop"]}


def summarise_run(run: Run, lists: dict[str, Any]) -> dict[str, Any]:
    """The aggregates of a :class:`Run` that a reference keeps and a monitor reports (see the module docstring)."""
    return {
        "requests": run.requests,
        "features": {name: summarise(values) for name, values in run.features.items()},
        "score": summarise(run.scores),
        "sources": {s: {"mean": float(h.mean()) if h.size else 0.0, "zero_share": float((h == 0).mean()) if h.size else 1.0, "total": int(h.sum())}
                    for s, h in run.sources.items()},
        "lists": lists,
        "metrics": {m: bootstrap(v) for m, v in run.metrics.items()},
    }


def unseen_users(assets: Assets, seed: int = 0) -> pl.Series | None:
    """A random sample of the dev users whose targets the ranker never learned from, or None when it learned from no
    dev target (logged candidates: it learns from training impressions).

    A ranker of retrieved candidates learns from the dev targets of the users in its training table (groups whose
    target retrieval found), all but its validation groups (:func:`recsys.splits.validation_split`). Its held-out users
    are a share ``valid_fraction`` of the users in that table, so the users retrieval missed entirely are drawn at
    the same rate: the union is a uniform sample of users, unbiased for the metrics.
    """
    if candidate_source(assets.dataset.kind) == LOGGED:
        return None
    table = pl.read_parquet(assets.model_dir / TRAINING_TABLE, columns=[Col.IMPRESSION, Col.USER, Col.TIME])
    fit, valid = validation_split(table, assets.config.valid_by, assets.config.valid_fraction, assets.config.seed)
    held = valid.filter(~pl.col(Col.USER).is_in(fit[Col.USER].unique().implode()))[Col.USER].unique()
    outside = assets.dataset.split(Split.DEV)[Col.USER].unique().sort()
    outside = outside.filter(~outside.is_in(table[Col.USER].unique().implode()))
    drawn = outside.filter(pl.Series(np.random.default_rng(seed).random(outside.len()) < assets.config.valid_fraction))
    return pl.concat([held, drawn])


def reference_rows(assets: Assets, max_users: int, seed: int) -> tuple[pl.DataFrame, str, pl.Series | None]:
    """(the dev rows a reference scores, where they come from, the impression ids its metrics count or None = all).

    A seeded sample of `max_users` dev users; where the ranker learned from dev targets, :func:`unseen_users` come
    first (the metrics count only their rows: out of sample), the rest filled at random.
    """
    ds = assets.dataset
    rows = ds.split(Split.DEV)
    if rows.is_empty():
        latest = split_latest(ds.split(Split.TRAIN), NO_DEV_SHARE)[1]
        return sample_users(latest, max_users, seed)[0], f"train (latest {NO_DEV_SHARE:.0%}: no dev rows)", None
    unseen = unseen_users(assets, seed)
    if unseen is None:
        return sample_users(rows, max_users, seed)[0], Split.DEV, None
    first = sample_users(rows.filter(pl.col(Col.USER).is_in(unseen.implode())), max_users, seed)[0]
    others = rows.filter(~pl.col(Col.USER).is_in(first[Col.USER].unique().implode()))
    rest = sample_users(others, max_users - first[Col.USER].n_unique(), seed)[0] if first[Col.USER].n_unique() < max_users else others.clear()
    return pl.concat([first, rest]), Split.DEV, first[Col.IMPRESSION]


def build_reference(assets: Assets, seed: int = 0, max_users: int = REFERENCE_USERS) -> dict[str, Any]:
    """Score a seeded sample of the dev users with the trained model in `assets` and summarise the run.

    Returns:
        The content of ``reference.json``.
    """
    ds = assets.dataset
    fit = splits_before(Split.DEV)
    rows, rows_from, unseen = reference_rows(assets, max_users, seed)
    run = score_run(assets, rows, fit, TOP_K, judged=unseen)
    popularity, pop_users = item_popularity(ds, fit)
    lists = list_figures(run.lists, popularity, pop_users, assets.pair_vectors.get(FROZEN), seed)
    judged = "every labelled row" if unseen is None else f"{unseen.len():,} rows of users whose dev targets the ranker never learned from"
    return {"format": FORMAT, "kind": ds.kind, "rows_from": rows_from, "fit_splits": fit, "users": rows[Col.USER].n_unique(),
            "users_in_split": ds.split(Split.DEV)[Col.USER].n_unique(), "metrics_count": judged, "top_k": TOP_K, "seed": seed,
            **summarise_run(run, lists)}


def reference_settings() -> list[Any]:
    """What a reference depends on besides the trained model (the reference stage's fingerprint reads it)."""
    return [FORMAT, REFERENCE_USERS, TOP_K, list(COVERAGE_LISTS)]


def write_reference(assets: Assets, out_dir: Path, seed: int = 0) -> Path:
    """Build the reference of the model in `assets` and write ``out_dir/reference.json`` (atomically)."""
    return write_json(json_safe(build_reference(assets, seed)), Path(out_dir) / REFERENCE)


def load_reference(model_dir: str | Path) -> dict[str, Any]:
    """A model's ``reference.json``.

    Raises:
        RecsysError: the model has none (trained before monitoring existed) or one of another format.
    """
    path = Path(model_dir) / REFERENCE
    if not path.is_file():
        raise RecsysError(f"{model_dir} has no {REFERENCE} (trained by a recsys without monitoring): run the same `recsys train` "
                          "again; only its reference stage runs")
    ref = read_json(path)
    if not isinstance(ref, dict) or ref.get("format") != FORMAT:
        raise RecsysError(f"{path}: reference format {ref.get('format') if isinstance(ref, dict) else None}, this recsys reads {FORMAT}; "
                          "run `recsys train` again")
    return ref
