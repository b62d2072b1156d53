"""The LightGBM lambdarank ranker: one query group per impression, early stopping on later data.

Artifacts (no pickle; the model loads without running project code)::

    ranker.txt   LightGBM's text model, trees up to the best iteration only
                 (``<name>.txt`` / ``<name>.json`` for another model in the same directory)
    ranker.json  manifest: feature names in order, config, library versions, training data range,
                 best iteration and validation scores, gain importance, plus what the caller adds
                 (e.g. the text encoder's fingerprint)

The feature table is long format (one row per impression candidate) with the keys of
:class:`recsys.data.Col` and numeric feature columns; ``features`` names the columns the model reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from recsys.data import Col
from recsys.errors import DataError, ModelMismatchError, RecsysError
from recsys.io import atomic_path, make_dir, read_json, write_json
from recsys.resources import resource

logger = logging.getLogger(__name__)

DEFAULT_NAME = "ranker"
MODEL_FILE = f"{DEFAULT_NAME}.txt"
MANIFEST_FILE = f"{DEFAULT_NAME}.json"
MANIFEST_VERSION = 1
SMALL_TABLE_ROWS = 200_000
MAX_THREADS = 1024


@dataclass
class RankerConfig:
    """LightGBM lambdarank settings. Defaults suit a few million rows with tens of features."""

    num_leaves: int = 63
    learning_rate: float = 0.05
    n_estimators: int = 1000
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 50
    # Pairs are only formed with documents in the top `truncation_level` positions; MIND impressions
    # are long (tens of candidates) while metrics look at the top 10.
    lambdarank_truncation_level: int = 20
    label_gain: tuple[float, ...] = (0.0, 1.0, 3.0, 7.0, 15.0)  # 2^label - 1, as MIND's nDCG
    eval_at: tuple[int, ...] = (10,)  # LightGBM sorts the cut-offs; early stopping watches the smallest
    max_bin: int = 255
    seed: int = 42
    # 0 = auto: one thread below SMALL_TABLE_ROWS training rows (there OpenMP start-up and spinning
    # cost more than they save, and on a busy machine 2 threads ran 20x slower than 1), else all cores.
    num_threads: int = resource(0)
    log_every: int = resource(50)

    def __post_init__(self) -> None:
        self.label_gain = tuple(float(g) for g in self.label_gain)
        self.eval_at = tuple(int(k) for k in self.eval_at)
        positive_int = ("num_leaves", "n_estimators", "min_data_in_leaf", "early_stopping_rounds", "lambdarank_truncation_level", "max_bin", "log_every")
        for name in positive_int:
            if int(getattr(self, name)) < 1:
                raise RecsysError(f"RankerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.num_leaves <= 131072:  # LightGBM's limits
            raise RecsysError(f"RankerConfig.num_leaves must be in [2, 131072], got {self.num_leaves}")
        if self.max_bin < 2:
            raise RecsysError(f"RankerConfig.max_bin must be >= 2, got {self.max_bin}")
        if not 0 < self.learning_rate <= 1:
            raise RecsysError(f"RankerConfig.learning_rate must be in (0, 1], got {self.learning_rate}")
        for name in ("feature_fraction", "bagging_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise RecsysError(f"RankerConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.bagging_freq < 0 or self.lambda_l2 < 0 or self.num_threads < 0:
            raise RecsysError("RankerConfig.bagging_freq, lambda_l2 and num_threads must be >= 0")
        if self.num_threads > MAX_THREADS:  # OpenMP starts every thread it is told to: far more kill the process
            raise RecsysError(f"RankerConfig.num_threads must be at most {MAX_THREADS}, got {self.num_threads}")
        if len(self.label_gain) < 2 or any(b < a for a, b in zip(self.label_gain, self.label_gain[1:])):
            raise RecsysError(f"RankerConfig.label_gain must have >= 2 non-decreasing values, got {self.label_gain}")
        if not self.eval_at or min(self.eval_at) < 1:
            raise RecsysError(f"RankerConfig.eval_at must list cut-offs >= 1, got {self.eval_at}")

    def params(self, rows: int | None = None) -> dict[str, Any]:
        """The LightGBM parameter dict (without the number of rounds); `rows` resolves num_threads=0."""
        threads = self.num_threads
        if threads == 0 and rows is not None and rows < SMALL_TABLE_ROWS:
            threads = 1
        elif threads == 0:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": list(self.eval_at),
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            "lambdarank_truncation_level": self.lambdarank_truncation_level,
            "label_gain": list(self.label_gain),
            "max_bin": self.max_bin,
            "seed": self.seed,
            "num_threads": threads,
            # Same data + seed + threads -> same model.
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RecsysError(f"unknown RankerConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class Ranker:
    """A trained booster and the feature columns it reads, in order."""

    booster: lgb.Booster
    features: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)

    def score(self, df: pl.DataFrame) -> np.ndarray:
        """Scores of the rows of `df`, in its row order (higher = rank first).

        Raises:
            ModelMismatchError: `df` lacks some of the model's features.
        """
        check_features(self.features, list(df.columns), "the data to score")
        if df.height == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.booster.predict(_matrix(df, self.features, "the data to score")), dtype=np.float64)

    def importance(self, kind: str = "gain") -> dict[str, float]:
        """Feature importance (total gain by default, or "split"), largest first."""
        values = self.booster.feature_importance(importance_type=kind)
        pairs = sorted(zip(self.features, values.tolist()), key=lambda p: -p[1])
        return {name: float(v) for name, v in pairs}


def check_features(expected: list[str], available: list[str], what: str) -> None:
    """Raise :class:`ModelMismatchError` unless every model feature is in `available`."""
    missing = [f for f in expected if f not in available]
    if missing:
        raise ModelMismatchError(
            f"the ranker was trained on features {missing} that {what} does not have; "
            "rebuild the features with the same settings as training, or retrain the ranker"
        )


def _matrix(df: pl.DataFrame, features: list[str], what: str) -> np.ndarray:
    """Feature matrix as float32; nulls become NaN (LightGBM's missing value)."""
    for name in features:
        dtype = df.schema[name]
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            raise DataError(what, None, name, f"feature has type {dtype}; features must be numeric")
    return df.select(pl.col(features).cast(pl.Float32)).to_numpy()


def _prepare(df: pl.DataFrame, features: list[str], what: str) -> tuple[lgb.Dataset | None, dict[str, Any]]:
    """Sort by (time, impression), drop groups without both labels, build a LightGBM dataset."""
    df, sizes, stats = prepare_groups(df, features, what)
    if df.height == 0:
        return None, stats
    label = df[Col.LABEL].cast(pl.Int32).to_numpy()
    data = lgb.Dataset(_matrix(df, features, what), label=label, group=sizes, feature_name=features, free_raw_data=True)
    return data, stats


def prepare_groups(df: pl.DataFrame, features: list[str], what: str) -> tuple[pl.DataFrame, np.ndarray, dict[str, Any]]:
    """The rows LightGBM learns from, in its order, their group sizes, and counts of what was dropped.

    Groups without both a click and a non-click are dropped; the rest sorted by (time, impression) and,
    inside a group, by item, label and features (see :func:`_prepare`).
    """
    for name in (Col.IMPRESSION, Col.TIME, Col.LABEL, *features):
        if name not in df.columns:
            raise DataError(what, None, name, "column is missing")
    if df[Col.LABEL].null_count():
        raise DataError(what, None, Col.LABEL, "null labels cannot be trained on; drop unlabelled impressions first")
    per_group = df.group_by(Col.IMPRESSION).agg(pos=(pl.col(Col.LABEL) > 0).sum(), n=pl.len())
    useful = per_group.filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))[Col.IMPRESSION]
    stats = {
        "rows": df.height,
        "groups": per_group.height,
        # Groups with no click (or only clicks) have no pairs, so no lambdarank gradient.
        "dropped_groups_no_click": int((per_group["pos"] == 0).sum()),
        "dropped_groups_all_clicked": int((per_group["pos"] == per_group["n"]).sum()),
        "time_min": df[Col.TIME].min(),
        "time_max": df[Col.TIME].max(),
    }
    # LightGBM needs each group contiguous: sort by the impression's (first) time, then its id. Inside
    # an impression, order by item, label and features too: lambdarank breaks score ties by row order,
    # so otherwise the model would depend on how the input happened to be ordered.
    group_time = pl.col(Col.TIME).min().over(Col.IMPRESSION)
    within = [c for c in (Col.ITEM, Col.LABEL, *features) if c in df.columns]
    keys = [group_time, pl.col(Col.IMPRESSION), *[pl.col(c) for c in within]]
    df = df.filter(pl.col(Col.IMPRESSION).is_in(useful.implode())).sort(keys, maintain_order=True)
    stats["used_rows"], stats["used_groups"] = df.height, useful.len()
    sizes = df.group_by(Col.IMPRESSION, maintain_order=True).len()["len"].to_numpy()
    return df, sizes, stats


def _progress(bar: tqdm, period: int) -> Callable[[lgb.callback.CallbackEnv], None]:
    """Advance `bar` per tree; log validation scores every `period` trees."""

    def callback(env: lgb.callback.CallbackEnv) -> None:
        bar.update(1)
        if env.evaluation_result_list and (env.iteration + 1) % period == 0:
            scores = ", ".join(f"{name}={value:.4f}" for _, name, value, _ in env.evaluation_result_list)
            logger.info("iteration %d: %s", env.iteration + 1, scores)

    return callback


def fit(train: pl.DataFrame, valid: pl.DataFrame | None, features: list[str], cfg: RankerConfig) -> Ranker:
    """Train a lambdarank model, one query group per impression.

    Args:
        train: Long-format feature table with Col.IMPRESSION, Col.TIME, Col.LABEL and the features.
        valid: Later impressions for early stopping (see :func:`recsys.splits.split_latest`); None trains all
            ``cfg.n_estimators`` trees.
        features: Feature columns, in the order the model reads them.
        cfg: Settings.

    Returns:
        The trained :class:`Ranker`; its manifest records data ranges, dropped groups and scores.

    Raises:
        DataError: Missing columns, null labels, non-numeric features.
        RecsysError: No trainable impression (none with both a click and a non-click), a label
            larger than ``cfg.label_gain`` allows, or settings LightGBM rejects.
    """
    if not features or len(set(features)) != len(features):
        raise RecsysError(f"features must be a non-empty list of distinct columns, got {features}")
    max_label = int(train[Col.LABEL].max() or 0) if Col.LABEL in train.columns and train.height else 0
    if max_label >= len(cfg.label_gain):
        raise RecsysError(f"label {max_label} needs label_gain with more than {len(cfg.label_gain)} values")
    train_set, train_stats = _prepare(train, features, "training features")
    if train_set is None:
        raise RecsysError("no training impression has both a click and a non-click; nothing to learn from")
    logger.info("ranker: %d rows in %d impressions (%d without click dropped)", train_stats["used_rows"], train_stats["used_groups"], train_stats["dropped_groups_no_click"])
    valid_sets, valid_stats = [], None
    bar = tqdm(total=cfg.n_estimators, desc="ranker", unit="tree", disable=None, leave=False)
    callbacks: list[Callable[[lgb.callback.CallbackEnv], None]] = [_progress(bar, cfg.log_every)]
    if valid is not None:
        valid_set, valid_stats = _prepare(valid, features, "validation features")
        if valid_set is not None:
            valid_sets = [valid_set]
            callbacks.append(lgb.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False))
        else:
            logger.warning("validation data has no impression with both labels; training without early stopping")
    params = cfg.params(rows=train_stats["used_rows"])
    with bar:
        try:
            booster = lgb.train(
                params, train_set, num_boost_round=cfg.n_estimators, valid_sets=valid_sets, valid_names=["valid"] * len(valid_sets), callbacks=callbacks
            )
        except lgb.basic.LightGBMError as exc:  # LightGBM checks the rest of its parameters only here
            raise RecsysError(f"LightGBM rejects the ranker settings ([ranker] of the config): {str(exc).strip().splitlines()[0][:200]}") from exc
    best = booster.best_iteration if valid_sets and booster.best_iteration > 0 else booster.current_iteration()
    valid_scores = {name: float(val) for name, val in booster.best_score.get("valid", {}).items()}
    return finish(booster, best, valid_scores, features, cfg, params, train_stats, valid_stats)


def finish(booster: lgb.Booster, best: int, valid_scores: dict[str, float], features: list[str], cfg: RankerConfig, params: dict[str, Any],
           train_stats: dict[str, Any], valid_stats: dict[str, Any] | None) -> Ranker:
    """The :class:`Ranker` of a trained booster: its trees up to `best` only, and its manifest."""
    # Keep only the trees up to the best iteration, so in-memory and saved models score identically.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "features": list(features),
        "config": dataclasses.asdict(cfg),
        "params": params,
        "best_iteration": best,
        "valid_scores": valid_scores,
        "train": train_stats,
        "valid": valid_stats,
        "versions": _versions(),
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    ranker = Ranker(booster=booster, features=list(features), manifest=manifest)
    manifest["importance_gain"] = ranker.importance("gain")
    logger.info("ranker: best iteration %d, valid %s", best, valid_scores)
    return ranker


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("recsys", "lightgbm", "polars", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def save_ranker(ranker: Ranker, model_dir: str | Path, *, name: str = DEFAULT_NAME, **manifest_extra: Any) -> Path:
    """Write ``<name>.txt`` and ``<name>.json`` into `model_dir` (each atomically, manifest last).

    Args:
        ranker: The trained ranker.
        model_dir: Directory (created if needed).
        name: File stem, to keep several rankers in one directory.
        **manifest_extra: More manifest entries, e.g. ``encoder_fingerprint=...``; also added to
            ``ranker.manifest``.

    Returns:
        The path of the model file.
    """
    model_dir = Path(model_dir)
    make_dir(model_dir)
    ranker.manifest.update(manifest_extra)
    with atomic_path(model_dir / f"{name}.txt") as tmp:
        ranker.booster.save_model(str(tmp))
    write_json(ranker.manifest, model_dir / f"{name}.json")
    return model_dir / f"{name}.txt"


def load_ranker(
    model_dir: str | Path, features: list[str] | None = None, *, name: str = DEFAULT_NAME, encoder_fingerprint: str | None = None
) -> Ranker:
    """Load a ranker saved by :func:`save_ranker`, refusing one that does not fit the data.

    Args:
        model_dir: Directory with ``<name>.txt`` and ``<name>.json``.
        features: The feature columns of the data it will score; must equal the model's (any order).
        name: File stem given to :func:`save_ranker`.
        encoder_fingerprint: The text encoder the features came from; must equal the one recorded
            at training, when both are known.

    Raises:
        RecsysError: Files missing.
        ModelMismatchError: Feature lists or encoder fingerprints differ, or model and manifest disagree.
    """
    model_dir = Path(model_dir)
    model_path, manifest_path = model_dir / f"{name}.txt", model_dir / f"{name}.json"
    for path in (model_path, manifest_path):
        if not path.exists():
            raise RecsysError(f"{path} not found; train a ranker first (`recsys train`)")
    manifest = read_json(manifest_path)
    booster = lgb.Booster(model_file=str(model_path))
    trained = list(manifest["features"])
    if booster.feature_name() != trained:
        raise ModelMismatchError(f"{model_path} has features {booster.feature_name()} but {manifest_path} lists {trained}; the files come from different runs")
    if features is not None and set(features) != set(trained):
        missing = [f for f in trained if f not in features]
        extra = [f for f in features if f not in trained]
        raise ModelMismatchError(
            f"{model_path} was trained on other features: the data lacks {missing} and has {extra} the model never saw; "
            "build the features with the training settings, or retrain the ranker"
        )
    saved_fp = manifest.get("encoder_fingerprint")
    if encoder_fingerprint is not None and saved_fp is not None and saved_fp != encoder_fingerprint:
        raise ModelMismatchError(
            f"{model_path} was trained with text encoder {saved_fp}, the features come from {encoder_fingerprint}; "
            "re-encode items with the training encoder, or retrain the ranker"
        )
    saved_lgb = manifest.get("versions", {}).get("lightgbm", "unknown")
    if saved_lgb.split(".")[0] != lgb.__version__.split(".")[0]:
        logger.warning("%s was saved by LightGBM %s, this is %s", model_path, saved_lgb, lgb.__version__)
    return Ranker(booster=booster, features=trained, manifest=manifest)
