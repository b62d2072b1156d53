"""LightGBM settings chosen on the ranker's own validation groups (both log kinds), by successive halving.

The ranker's training table is split as :func:`recsys.pipeline.fit_rankers` splits it (the latest groups, or a
seeded share of users: :func:`recsys.splits.validation_split`). Each trial fits the full-model ranker with early
stopping on the validation groups and is judged by the validation NDCG@10 LightGBM reports there. The configured
settings and ``select.ranker_trials`` seeded points of the grid (``num_leaves`` x ``learning_rate`` x
``min_data_in_leaf`` x ``feature_fraction``) first learn from ``select.first_rung`` of the fit groups (with
``min_data_in_leaf`` scaled alike, so a leaf holds the same share of the data); the best ``select.finalists``
learn again from all of them, with the configured settings (so the chosen ones are measured against them on equal
terms), and the best of those is chosen. The "without text" ranker takes the same settings.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from features.registry import ranker_features
from ranker.lambdarank import RankerConfig, fit
from recsys.config import TrainConfig
from recsys.data import Col
from recsys.errors import RecsysError
from recsys.selection.search import Search
from recsys.splits import validation_split

SETTINGS = ("num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction")  # RankerConfig fields this search chooses


def grid_points(seed: RankerConfig, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The configured settings first, then ``select.ranker_trials`` distinct grid points in a seeded order."""
    sel = cfg.select
    first = {name: getattr(seed, name) for name in SETTINGS}
    grid = [dict(zip(SETTINGS, values)) for values in itertools.product(sel.num_leaves, sel.learning_rate, sel.min_data_in_leaf, sel.feature_fraction)]
    grid = [p for p in grid if p != first]
    order = np.random.default_rng(cfg.seed).permutation(len(grid))[: sel.ranker_trials]
    return [first, *[grid[i] for i in order]]


def share_of_groups(table: pl.DataFrame, share: float, seed: int) -> pl.DataFrame:
    """The rows of a seeded `share` of the table's groups (impressions), at least one."""
    groups = table[Col.IMPRESSION].unique().sort()
    keep = groups.gather(np.sort(np.random.default_rng(seed).permutation(groups.len())[: max(1, math.ceil(groups.len() * share))]))
    return table.filter(pl.col(Col.IMPRESSION).is_in(keep.implode()))


def select_ranker(table: pl.DataFrame, cfg: TrainConfig, clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Choose the LightGBM settings on the ranker's validation groups within ``select.ranker_seconds``.

    Args:
        table: the ranker's training table (``features.parquet``).
        cfg: the configuration; ``cfg.ranker`` seeds the search, ``cfg.select`` holds the grid, rungs and budget.
        clock: seconds from an arbitrary origin (default: ``time.perf_counter``).

    Returns:
        The record ``selection.json`` keeps: configured and chosen settings (``ranker.*`` names), their validation
        scores, every trial with its rung, rows, best iteration and seconds, and the budget spent.
    """
    sel, seed = cfg.select, cfg.ranker
    fit_part, valid = validation_split(table, cfg.valid_by, cfg.valid_fraction, cfg.seed)
    names = ranker_features(table.columns, cfg.features.families)
    metric = f"ndcg@{min(seed.eval_at)}"
    search = Search(sel.ranker_seconds, *([clock] if clock else []))
    points = grid_points(seed, cfg)
    rungs = [(sel.first_rung, share_of_groups(fit_part, sel.first_rung, cfg.seed))] if sel.first_rung < 1 else []
    rungs.append((1.0, fit_part))
    scores: dict[int, float] = {}  # point -> its score at the last rung it reached
    reached: dict[int, float] = {}  # point -> the share of fit groups of that rung
    alive = list(range(len(points)))
    for share, part in rungs:
        for i in alive:
            score = search.trial(f"{share:.0%} of the fit groups", points[i], lambda: _judge(part, valid, names, seed, points[i], share, metric))
            if score is None:
                break
            scores[i], reached[i] = score, share
        best = sorted((i for i in alive if reached.get(i) == share), key=lambda i: -_finite(scores[i]))[: sel.finalists]
        alive = sorted({0, *best})  # the configured settings always go on: what the choice is measured against
        if search.stopped:
            break
    top = max(reached.values())
    finals = [i for i in scores if reached[i] == top and not math.isnan(scores[i])]
    best = max(finals, key=lambda i: (scores[i], -i)) if finals else 0  # ties go to the earlier point: the configured one first
    return {"configured": _dotted(points[0]), "chosen": _dotted(points[best]), "judged_by": {
                f"ranker.{name}": {"metric": f"valid {metric}", "configured": scores[0], "chosen": scores[best],
                                   "note": f"on {top:.0%} of the fit groups" + ("" if reached[0] == top else f"; configured on {reached[0]:.0%}")}
                for name in SETTINGS},
            "dev": {"fit_rows": fit_part.height, "valid_rows": valid.height, "valid_by": cfg.valid_by, "features": len(names)},
            **search.summary(), "trials_run": search.trials}


def _judge(part: pl.DataFrame, valid: pl.DataFrame, names: list[str], seed: RankerConfig, point: dict[str, Any], share: float,
           metric: str) -> tuple[float, dict[str, Any]]:
    """The validation score of a ranker with `point`'s settings fitted on `part` (NaN when nothing could be learned)."""
    rc = dataclasses.replace(seed, **{**point, "min_data_in_leaf": max(1, round(point["min_data_in_leaf"] * share))})
    try:
        ranker = fit(part, valid, names, rc)
    except RecsysError as exc:  # e.g. a small share with no group that has both labels
        return math.nan, {"error": str(exc)}
    m = ranker.manifest
    return float(m["valid_scores"].get(metric, math.nan)), {"best_iteration": m["best_iteration"], "rows": m["train"]["used_rows"],
                                                            "min_data_in_leaf_used": rc.min_data_in_leaf}


def _finite(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def _dotted(point: dict[str, Any]) -> dict[str, Any]:
    return {f"ranker.{k}": v for k, v in point.items()}
