"""`recsys evaluate` for impression logs: replay logged impressions through the model and its baselines.

Every ranking in the table scores the same rows of the same feature table, so the numbers compare:

* ``full model``      the LightGBM ranker over behaviour and text features
* ``features only``   the same ranker trained without text features
* ``text only``       the fine-tuned text-interest score alone
* ``frozen text``     the same score from the pretrained encoder, not fine-tuned
* ``popularity``      the item's clicks before the impression
* ``random``          a seeded random order
* ``oracle``          the true click probability, only for synthetic data (the attainable ceiling)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.build import build_features
from ranker.lambdarank import load_ranker
from recsys.data import Col, Dataset, Split, load_dataset
from recsys.text.encode import ItemVectors
from recsys.evaluation.metrics import impression_metrics
from recsys.export import write_mind_prediction
from recsys.io import read_json, write_parquet
from recsys.evaluation.report import write_report
from recsys.text.features import text_features
from recsys.text.train import load_text_model, pretrained_text_model

log = logging.getLogger(__name__)

POPULARITY_FEATURE = "item_clicks_all"
HISTORY_BUCKETS = [0, 1, 5, 10, 20, 50]


@dataclass
class EvalConfig:
    split: str = Split.DEV
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in Split.ALL:
            raise ValueError(f"split must be one of {Split.ALL}, got {self.split!r}")


def _feature_table(model_dir: Path, log_dir: Path, work_dir: Path) -> pl.DataFrame:
    """The model's feature table for `log_dir`: reused from training when the log is the training dataset."""
    summary = read_json(model_dir / "summary.json")
    if Path(summary["dataset_dir"]).resolve() == log_dir.resolve() and (model_dir / "features.parquet").exists():
        return pl.read_parquet(model_dir / "features.parquet")
    ds = load_dataset(log_dir)
    text = text_features(load_text_model(model_dir / "text"), ItemVectors.load(model_dir / "item_vectors.parquet"), ds.impressions)
    write_parquet(text, work_dir / "text_features.parquet")
    build_features(log_dir, work_dir / "features.parquet", text_features=work_dir / "text_features.parquet")
    return pl.read_parquet(work_dir / "features.parquet")


def score_baselines(model_dir: Path, table: pl.DataFrame, ds: Dataset, seed: int) -> pl.DataFrame:
    """Add one score column per ranking of the comparison to `table`."""
    rng = np.random.default_rng(seed)
    full = load_ranker(model_dir)
    features_only = load_ranker(model_dir, name="ranker_features_only")
    rows = ds.impressions.filter(pl.col(Col.IMPRESSION).is_in(table[Col.IMPRESSION].unique().implode()))
    text_cfg = load_text_model(model_dir / "text").config  # the same encoder and text fields, not fine-tuned
    frozen = text_features(pretrained_text_model(text_cfg), ItemVectors.load(model_dir / "frozen_vectors.parquet"), rows)
    table = table.join(
        frozen.select(Col.IMPRESSION, Col.ITEM, pl.col("text_score").alias("frozen_text")), on=[Col.IMPRESSION, Col.ITEM], how="left"
    )
    scores = {
        "full model": full.score(table),
        "features only": features_only.score(table),
        "text only": table["text_score"].fill_null(-1e9).to_numpy(),
        "frozen text": table["frozen_text"].fill_null(-1e9).to_numpy(),
        "popularity": table[POPULARITY_FEATURE].fill_null(0).to_numpy(),
        "random": rng.random(table.height),
    }
    if "click_prob" in table.columns and table["click_prob"].null_count() < table.height:
        scores["oracle"] = table["click_prob"].fill_null(0).to_numpy()
    return table.with_columns(pl.Series(name, values) for name, values in scores.items())


def evaluate(model_dir: Path, log_dir: Path, report_dir: Path, cfg: EvalConfig | None = None) -> dict[str, dict[str, float]]:
    """Replay the `cfg.split` impressions of `log_dir`; write the report; return the metric table.

    For an unlabelled split the table is empty and MIND's ``prediction.txt`` is written instead.
    """
    cfg = cfg or EvalConfig()
    model_dir, log_dir, report_dir = Path(model_dir), Path(log_dir), Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(log_dir)
    table = _feature_table(model_dir, log_dir, report_dir).filter(pl.col(Col.SPLIT) == cfg.split)
    if table.is_empty():
        raise ValueError(f"{log_dir} has no impressions in split {cfg.split!r}")
    table = score_baselines(model_dir, table, ds, cfg.seed)
    if table[Col.LABEL].null_count() == table.height:
        write_mind_prediction(table, "full model", report_dir / "prediction.txt")
        return {}
    rankings = [c for c in ("full model", "features only", "text only", "frozen text", "popularity", "random", "oracle") if c in table.columns]
    metrics = {name: impression_metrics(table, name) for name in rankings}
    by_history = metrics_by_history(table, ds, rankings)
    write_report(
        report_dir, title=f"Replay of {log_dir.name} ({cfg.split})", table=metrics,
        importance=load_ranker(model_dir).importance(), by_group=by_history,
        notes={"model_dir": str(model_dir), "log": str(log_dir), "split": cfg.split, "rows": table.height},
    )
    return metrics


def metrics_by_history(table: pl.DataFrame, ds: Dataset, rankings: list[str]) -> pl.DataFrame:
    """AUC of each ranking per bucket of user history length (cold users first)."""
    lengths = ds.impressions.select(Col.IMPRESSION, pl.col(Col.HISTORY).list.len().alias("history_len"))
    table = table.join(lengths, on=Col.IMPRESSION, how="left")
    labels = [f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo) for lo, hi in zip(HISTORY_BUCKETS, HISTORY_BUCKETS[1:])] + [f"{HISTORY_BUCKETS[-1]}+"]
    bucket = np.searchsorted(HISTORY_BUCKETS, table["history_len"].fill_null(0).to_numpy(), side="right") - 1
    table = table.with_columns(pl.Series("bucket", np.asarray(labels)[bucket]))
    out: list[dict[str, Any]] = []
    for bucket in labels:
        part = table.filter(pl.col("bucket") == bucket)
        if part.is_empty():
            continue
        for name in rankings:
            m = impression_metrics(part, name)
            out.append({"bucket": bucket, "model": name, **m})
    return pl.DataFrame(out)
