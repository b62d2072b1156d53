"""`recsys train`: text encoder fine-tune -> catalogue vectors -> text features -> feature table -> ranker.

Each stage writes its outputs into the model directory together with a fingerprint of its inputs
(``stages.json``). Re-running skips a stage whose fingerprint and outputs are unchanged, so a failure
half way loses nothing already done; ``force=True`` redoes everything.

Model directory layout::

    text/                  fine-tuned encoder (safetensors) + user encoder + text_config.json
    item_vectors.parquet   catalogue vectors of the fine-tuned encoder
    frozen_vectors.parquet catalogue vectors of the pretrained encoder (the frozen baseline)
    text_features.parquet  per (impression, candidate) text-interest features, all splits
    features.parquet       the full feature table of the training dataset
    ranker.txt, ranker.json            the LightGBM model and its manifest
    ranker_features_only.txt/.json     the same ranker without text features (a baseline)
    config.json, stages.json, summary.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from features.build import FeatureConfig, build_features
from features.registry import feature_names
from ranker.lambdarank import RankerConfig, fit, save_ranker, time_split
from recsys.catalogue import CatalogueConfig, train_catalogue
from recsys.data import Col, Dataset, Split, load_dataset
from recsys.text.encode import ItemVectors, encode_items
from recsys.errors import RecsysError
from recsys.io import read_json, write_json, write_parquet
from recsys.text.data import time_split as split_impressions
from recsys.text.features import TEXT_FEATURES, text_features
from recsys.text.model import TextConfig
from recsys.text.train import load_text_model, pretrained_text_model, train_text_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything `recsys train` needs; each stage takes its own part."""

    text: TextConfig = field(default_factory=TextConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    valid_fraction: float = 0.15  # last share of the ranker's impressions (by time) for early stopping
    # Stacking by time: the text model learns from the earliest share of training impressions and the
    # ranker from the rest, so the text scores it learns to trust are out-of-sample, as at serving time.
    text_fraction: float = 0.5
    # Interaction-only logs (manifest kind "interactions") train a retrieval + ranker model instead.
    catalogue: CatalogueConfig = field(default_factory=CatalogueConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction < 0.5:
            raise RecsysError(f"TrainConfig.valid_fraction must be in (0, 0.5), got {self.valid_fraction}")
        if not 0.0 < self.text_fraction < 1.0:
            raise RecsysError(f"TrainConfig.text_fraction must be in (0, 1), got {self.text_fraction}")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs, upstream fingerprints, manifests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Stages:
    """Bookkeeping of which stage ran with which inputs, kept in ``stages.json``."""

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.path = out_dir / "stages.json"
        self.force = force
        self.done: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}
        self.timings: dict[str, float] = {}

    def run(self, name: str, inputs: Any, outputs: list[Path], work: Callable[[], Any]) -> str:
        """Run `work` unless the stage's fingerprint and outputs are unchanged; return the fingerprint."""
        fp = fingerprint(name, inputs)
        previous = self.done.get(name, {})
        if not self.force and previous.get("fingerprint") == fp and all(p.exists() for p in outputs):
            log.info("stage %s is up to date (%s)", name, fp)
            self.timings[name] = 0.0
            return fp
        log.info("stage %s: running", name)
        start = time.perf_counter()
        work()
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.done[name] = {"fingerprint": fp, "seconds": self.timings[name], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.done, self.path)
        return fp


def _vectors_stage(stages: Stages, name: str, model_fn: Callable[[], Any], items: pl.DataFrame, path: Path, upstream: str, cache: Path) -> str:
    def work() -> None:
        encode_items(model_fn(), items, cache_dir=cache).save(path)

    return stages.run(name, [upstream, items.height], [path], work)


def train(dataset_dir: Path, out_dir: Path, cfg: TrainConfig | None = None, *, force: bool = False) -> dict[str, Any]:
    """Train the whole model on the dataset's train split; return the run summary (also in summary.json).

    Args:
        dataset_dir: a dataset directory (``recsys ingest`` / ``recsys synth``).
        out_dir: the model directory; created if missing, reused stage by stage if present.
        cfg: the configuration; defaults suit the embedded sample.
        force: redo every stage even if its inputs are unchanged.
    """
    cfg = cfg or TrainConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset_dir)
    if ds.kind == "interactions":
        return _train_catalogue(ds, dataset_dir, out_dir, cfg.catalogue)
    write_json(asdict(cfg), out_dir / "config.json")
    stages = Stages(out_dir, force)
    data_fp = fingerprint(ds.manifest)
    train_rows = ds.split(Split.TRAIN)
    text_rows, _ = split_impressions(train_rows, 1.0 - cfg.text_fraction)

    text_fp = stages.run(
        "text_model", [data_fp, asdict(cfg.text), cfg.text_fraction], [out_dir / "text" / "text_config.json"],
        lambda: train_text_model(text_rows, ds.items, cfg.text, out_dir / "text"),
    )
    vec_fp = _vectors_stage(stages, "encode", lambda: load_text_model(out_dir / "text"), ds.items,
                            out_dir / "item_vectors.parquet", text_fp, out_dir / "cache")
    _vectors_stage(stages, "encode_frozen", lambda: pretrained_text_model(cfg.text), ds.items,
                   out_dir / "frozen_vectors.parquet", fingerprint(cfg.text.encoder, cfg.text.max_tokens), out_dir / "cache")
    tf_fp = stages.run(
        "text_features", [vec_fp, data_fp], [out_dir / "text_features.parquet"],
        lambda: write_parquet(
            text_features(load_text_model(out_dir / "text"), ItemVectors.load(out_dir / "item_vectors.parquet"), ds.impressions),
            out_dir / "text_features.parquet",
        ),
    )
    feat_fp = stages.run(
        "features", [tf_fp, data_fp, asdict(cfg.features)], [out_dir / "features.parquet"],
        lambda: build_features(dataset_dir, out_dir / "features.parquet", cfg.features, text_features=out_dir / "text_features.parquet"),
    )

    def fit_rankers() -> None:
        table = pl.read_parquet(out_dir / "features.parquet").filter(
            pl.col(Col.SPLIT) == Split.TRAIN, ~pl.col(Col.IMPRESSION).is_in(text_rows[Col.IMPRESSION].implode()))
        fit_part, valid_part = time_split(table, cfg.valid_fraction)
        names = feature_names(table.columns)
        extra = {"encoder_fingerprint": text_fp, "dataset": str(dataset_dir), "train_time_range": [str(table[Col.TIME].min()), str(table[Col.TIME].max())]}
        save_ranker(fit(fit_part, valid_part, names, cfg.ranker), out_dir, **extra)
        behaviour_only = [n for n in names if n not in TEXT_FEATURES]
        save_ranker(fit(fit_part, valid_part, behaviour_only, cfg.ranker), out_dir, name="ranker_features_only", **extra)

    stages.run("ranker", [feat_fp, asdict(cfg.ranker), cfg.valid_fraction, cfg.text_fraction], [out_dir / "ranker.txt", out_dir / "ranker_features_only.txt"], fit_rankers)

    summary = {"kind": "impressions", "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "dataset_dir": str(dataset_dir.resolve()), "model_dir": str(out_dir), "stage_seconds": stages.timings,
               "train_impressions": train_rows.height, "text_model_impressions": text_rows.height, "items": ds.items.height}
    write_json(summary, out_dir / "summary.json")
    return summary


def _train_catalogue(ds: Dataset, dataset_dir: Path, out_dir: Path, cfg: CatalogueConfig) -> dict[str, Any]:
    """Interaction-only logs: retrieval over the whole catalogue + a ranker (recsys/catalogue.py)."""
    train_catalogue(ds, cfg, out_dir, show_progress=True)
    summary = read_json(out_dir / "summary.json")
    summary.update(kind="interactions", trained_at=time.strftime("%Y-%m-%dT%H:%M:%S"), dataset_dir=str(dataset_dir.resolve()), model_dir=str(out_dir))
    write_json(summary, out_dir / "summary.json")
    return summary


def model_summary(model_dir: Path) -> dict[str, Any]:
    """summary.json of a trained model: its kind and the dataset it was trained on."""
    path = Path(model_dir) / "summary.json"
    if not path.exists():
        raise RecsysError(f"{model_dir} is not a trained model (no summary.json); train one with `recsys train`")
    return dict(read_json(path))


def load_model_dataset(model_dir: Path) -> Dataset:
    """The dataset a model was trained on."""
    return load_dataset(model_summary(model_dir)["dataset_dir"])


def evaluate_model(model_dir: Path, log_dir: Path, report_dir: Path, split: str) -> dict[str, dict[str, float]]:
    """`recsys evaluate`: impression replay for impression logs, full-catalogue ranking for interaction logs."""
    if model_summary(model_dir)["kind"] == "interactions":
        from recsys.evaluation.catalogue import evaluate_catalogue

        return evaluate_catalogue(Path(model_dir), load_dataset(log_dir), split, Path(report_dir), show_progress=True)
    from recsys.evaluation.replay import EvalConfig, evaluate

    return evaluate(Path(model_dir), Path(log_dir), Path(report_dir), EvalConfig(split=split))
