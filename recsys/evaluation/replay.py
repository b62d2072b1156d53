"""The replay protocol: rank each logged impression's shown candidates; per-impression AUC, MRR, nDCG@5/10.

Candidates and labels are the logged ones; features come from the same collector as training and serving.
Every ranking scores the same rows, so the numbers compare (the baseline names are shared with the
catalogue protocol):

* ``full model``      the LightGBM ranker over every feature family of the model
* ``without text``    the same ranker trained without text-derived features (:mod:`features.without_text`)
* ``text only``       the fine-tuned text model's interest score alone
* ``frozen text``     the same score from the pretrained encoder, not fine-tuned
* ``popularity``      the item's clicks before the impression
* ``random``          a seeded random order
* ``oracle``          the true click probability, only for synthetic data (the attainable ceiling)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.collect import collect_features, text_scores
from features.registry import TEXT_FEATURES
from recsys.candidates.logged import logged_candidates
from recsys.data import Col
from recsys.evaluation.metrics import impression_ci95, impression_metrics
from recsys.evaluation.report import GROUP_KEY, HISTORY_BUCKETS, MODEL_KEY, history_buckets
from recsys.export import write_mind_prediction
from recsys.pipeline import FROZEN, Assets, needs_retriever
from recsys.text.train import pretrained_text_model
from recsys.splits import splits_before

log = logging.getLogger(__name__)

POPULARITY_FEATURE = "item_clicks_all"
ORDER = ("full model", "without text", "text only", "frozen text", "popularity", "random", "oracle")


def score_replay(assets: Assets, rows: pl.DataFrame, seed: int = 0, *, show_progress: bool = False) -> pl.DataFrame:
    """The logged candidates of `rows` with their features and one score column per ranking of :data:`ORDER`."""
    split = rows[Col.SPLIT][0]
    retriever = assets.retriever(splits=splits_before(split)) if needs_retriever(assets.config) else None
    table = collect_features(assets.inputs(retriever), rows, logged_candidates(rows), show_progress=show_progress)
    if assets.config.fine_tune and assets.vectors(FROZEN) is not None:
        # The same interest score from the pretrained encoder, not fine-tuned (the "frozen text" baseline).
        frozen = text_scores(pretrained_text_model(assets.config.text), assets.vectors(FROZEN), rows, table, assets.dataset.items)
        table = table.join(frozen.select(Col.IMPRESSION, Col.POSITION, pl.col(TEXT_FEATURES[0]).alias("frozen text")),
                           on=[Col.IMPRESSION, Col.POSITION], how="left", maintain_order="left")
    scores: dict[str, np.ndarray] = {name: ranker.score(table) for name, ranker in assets.rankers.items()}
    if TEXT_FEATURES[0] in table.columns:
        scores["text only" if assets.config.fine_tune else "frozen text"] = table[TEXT_FEATURES[0]].fill_null(-1e9).to_numpy()
    if "frozen text" in table.columns:
        scores["frozen text"] = table["frozen text"].fill_null(-1e9).to_numpy()
    if POPULARITY_FEATURE in table.columns:
        scores["popularity"] = table[POPULARITY_FEATURE].fill_null(0).to_numpy()
    scores["random"] = np.random.default_rng(seed).random(table.height)
    if "click_prob" in table.columns and table["click_prob"].null_count() < table.height:
        scores["oracle"] = table["click_prob"].fill_null(0).to_numpy()
    return table.with_columns(pl.Series(name, scores[name]) for name in ORDER if name in scores)


def replay(assets: Assets, rows: pl.DataFrame, report_dir: Path | None, seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of every ranking over the labelled impressions of `rows`, and what the report shows beside them.

    For an unlabelled split the table is empty and MIND's ``prediction.txt`` is written into `report_dir`.
    """
    table = score_replay(assets, rows, seed, show_progress=True)
    if table[Col.LABEL].null_count() == table.height:
        if report_dir is not None:
            write_mind_prediction(table, "full model", Path(report_dir) / "prediction.txt")
        return {}, {}
    rankings = [c for c in ORDER if c in table.columns]
    metrics = {name: impression_metrics(table, name) for name in rankings}
    intervals = {name: impression_ci95(table, name) for name in rankings if name != "oracle"}
    return metrics, {"by_group": metrics_by_history(table, rows, rankings), "rows": table.height, "ci95": intervals}


def metrics_by_history(table: pl.DataFrame, rows: pl.DataFrame, rankings: list[str]) -> pl.DataFrame:
    """AUC of each ranking per bucket of user history length (cold users first)."""
    lengths = rows.select(Col.IMPRESSION, pl.col(Col.HISTORY).list.len().alias("history_len"))
    table = table.join(lengths, on=Col.IMPRESSION, how="left")
    table = table.with_columns(pl.Series(GROUP_KEY, history_buckets(table["history_len"].fill_null(0).to_numpy())))
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(history_buckets(np.array(HISTORY_BUCKETS))):
        part = table.filter(pl.col(GROUP_KEY) == name)
        if not part.is_empty():
            out += [{GROUP_KEY: name, MODEL_KEY: r, **impression_metrics(part, r)} for r in rankings]
    return pl.DataFrame(out)
