"""Quality stages: the synthetic data, the trained pipeline, and the evaluation table against baselines.

Each function here is one benchmark stage: the harness runs it in a fresh process
(:func:`benchmarks.harness.run_stage`) and reads its time and peak memory; the function returns
its own figures. Arguments are plain strings and numbers because they travel as JSON.

Per-stage memory of the training pipeline comes from :func:`train_stage` with ``until=STAGE``:
:func:`recsys.pipeline.train` skips the stages already done (they are up to date), runs ``STAGE``
and is stopped right after it, so each process holds one stage and nothing else. Called for each
stage of :data:`PIPELINE_STAGES` in order, every stage runs exactly once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from unittest import mock

# The stages of recsys.pipeline.train, in the order it runs them; the last one completes the run.
PIPELINE_STAGES = ("encode_frozen", "text_model", "encode", "features", "ranker")


class _StageDone(Exception):
    """Leaves train() right after the wanted stage."""


def synth_stage(size: str, out: str, seed: int = 0) -> dict[str, Any]:
    """Generate the synthetic dataset of a named size (:data:`recsys.synth.SIZES`) into ``out``.

    Returns:
        Items, users, impressions and (impression, candidate) rows of the dataset.
    """
    from recsys.synth import SynthConfig, synthesize

    ds = synthesize(SynthConfig.preset(size, seed=seed), Path(out))
    return {"items": ds.items.height, "impressions": ds.impressions.height, "users": int(ds.manifest["users"]),
            "candidate_rows": int(sum(s["candidates"] for s in ds.manifest["splits"].values()))}


def train_config(text_impressions: int | None, seed: int = 0) -> Any:
    """The pipeline's default configuration with the demo's fine-tune (:data:`recsys.demo.CPU_FINE_TUNE`) over
    ``text_impressions``, every seed of the run (fine-tune, ranker) moved by ``seed`` (0: the defaults).

    The cut is on data, not steps: a run stopped by a step cap mid-epoch would end without the
    epoch's validation, and the fine-tune keeps the weights of the best validation AUC.
    """
    from recsys.config import TrainConfig, override
    from recsys.demo import CPU_FINE_TUNE

    cfg = TrainConfig.default("impressions")
    seeds = {"seed": cfg.seed + seed, "text.seed": cfg.text.seed + seed, "ranker.seed": cfg.ranker.seed + seed}
    return override(cfg, **{**CPU_FINE_TUNE, "text.max_train_impressions": text_impressions, **seeds})


def train_stage(dataset: str, model_dir: str, text_impressions: int | None = None, until: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Run :func:`recsys.pipeline.train` up to and including stage ``until`` (None = all stages).

    Args:
        dataset: dataset directory.
        model_dir: model directory (reused stage by stage).
        text_impressions: train impressions the text fine-tune samples for its one epoch (None = all).
        until: a name of :data:`PIPELINE_STAGES`; stages after it are left for later calls.
        seed: added to every seed of the configuration (:func:`train_config`).

    Returns:
        ``seconds`` of ``until`` as the pipeline timed it, seconds of every stage that ran (0 = up
        to date), and, once the run is complete, the training rows and the text fine-tune figures.
    """
    from recsys.data import load_dataset
    from recsys.io import read_json
    from recsys.pipeline import train
    from recsys.stages import Stages

    if until is not None and until not in PIPELINE_STAGES:
        raise ValueError(f"unknown stage {until!r}; use one of {PIPELINE_STAGES}")
    model, cfg = Path(model_dir), train_config(text_impressions, seed)
    original = Stages.run

    def run_then_stop(self: Stages, name: str, *args: Any) -> str:
        fingerprint = original(self, name, *args)
        if name == until:
            raise _StageDone
        return fingerprint

    stopping = until is not None and until != PIPELINE_STAGES[-1]
    try:
        with mock.patch.object(Stages, "run", run_then_stop) if stopping else contextlib.nullcontext():
            summary = train(load_dataset(dataset), model, cfg, show_progress=False)
    except _StageDone:
        summary = None
    timings = read_json(model / "stages.json")
    figures: dict[str, Any] = {"stage_seconds": {k: v["seconds"] for k, v in timings.items()}}
    if until is not None:
        figures["seconds"] = timings[until]["seconds"]
    if summary is not None:
        figures.update(train_impressions=summary["summary"]["train_rows"], items=summary["summary"]["items"])
        features_meta = model / "features.json"
        if features_meta.exists():  # written by features.build beside the table
            figures["feature_rows"] = read_json(features_meta).get("summary", {}).get("rows")
        text_metrics = model / "text" / "train_metrics.json"
        if text_metrics.exists():
            metrics = read_json(text_metrics)
            figures.update(text_val_auc=metrics.get("best_val_auc"), text_steps=metrics.get("steps"), text_samples=metrics.get("train_samples"))
    return figures


def evaluate_stage(model_dir: str, dataset: str, report_dir: str, split: str = "dev") -> dict[str, Any]:
    """Replay the ``split`` impressions through the model and its baselines (:func:`recsys.evaluate.evaluate`).

    Returns:
        ``{"table": {ranking: {metric: value}}, "report": path}``.
    """
    from recsys.data import load_dataset
    from recsys.evaluate import evaluate

    table = evaluate(Path(model_dir), load_dataset(dataset), split, report_dir=Path(report_dir))
    return {"table": table, "report": str(Path(report_dir) / "report.md")}


def amazon_stage(data_dir: str, work_dir: str, fine_tune: bool = False) -> dict[str, Any]:
    """Train and evaluate on the real Amazon Scientific log: the catalogue protocol of :mod:`recsys.evaluation.catalogue`.

    Args:
        data_dir: the UniSRec-layout directory (``../shared/data/amazon-scientific``).
        work_dir: model and report directory.
        fine_tune: also fine-tune the encoder (slow on CPU); else the frozen encoder's vectors only.

    Returns:
        ``{"table": {ranking: {metric: value}}, "stage_seconds": ..., "report": path}``.
    """
    from recsys.api import Recommender
    from recsys.config import TrainConfig, override
    from recsys.data import Dataset, Split
    from recsys.loaders.amazon import ingest_amazon

    ingest_amazon(Path(data_dir), Path(work_dir) / "data")
    ds = Dataset.load(Path(work_dir) / "data")
    rec = Recommender.fit(ds, override(TrainConfig.for_dataset(ds.manifest), fine_tune=fine_tune), out=Path(work_dir) / "model", show_progress=False)
    table = rec.evaluate(split=Split.TEST, report_dir=Path(work_dir) / "report")
    return {"table": table, "stage_seconds": rec.meta["summary"]["stage_seconds"], "fine_tune": fine_tune,
            "report": str(Path(work_dir) / "report" / "report.md")}
