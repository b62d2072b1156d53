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
PIPELINE_STAGES = ("text_model", "encode", "encode_frozen", "text_features", "features", "ranker")


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


def train_config(text_impressions: int | None) -> Any:
    """The pipeline's default configuration, the text fine-tune cut to one epoch over ``text_impressions``.

    The cut is on data, not steps: a run stopped by a step cap mid-epoch would end without the
    epoch's validation, and the fine-tune keeps the weights of the best validation AUC.
    """
    from recsys.pipeline import TrainConfig
    from recsys.text.model import TextConfig

    return TrainConfig(text=TextConfig(max_train_impressions=text_impressions, epochs=1))


def train_stage(dataset: str, model_dir: str, text_impressions: int | None = None, until: str | None = None) -> dict[str, Any]:
    """Run :func:`recsys.pipeline.train` up to and including stage ``until`` (None = all stages).

    Args:
        dataset: dataset directory.
        model_dir: model directory (reused stage by stage).
        text_impressions: train impressions the text fine-tune samples for its one epoch (None = all).
        until: a name of :data:`PIPELINE_STAGES`; stages after it are left for later calls.

    Returns:
        ``seconds`` of ``until`` as the pipeline timed it, seconds of every stage that ran (0 = up
        to date), and, once the run is complete, the training rows and the text fine-tune figures.
    """
    from recsys.io import read_json
    from recsys.pipeline import Stages, train

    if until is not None and until not in PIPELINE_STAGES:
        raise ValueError(f"unknown stage {until!r}; use one of {PIPELINE_STAGES}")
    model, cfg = Path(model_dir), train_config(text_impressions)
    original = Stages.run

    def run_then_stop(self: Stages, name: str, *args: Any) -> str:
        fingerprint = original(self, name, *args)
        if name == until:
            raise _StageDone
        return fingerprint

    stopping = until is not None and until != PIPELINE_STAGES[-1]
    try:
        with mock.patch.object(Stages, "run", run_then_stop) if stopping else contextlib.nullcontext():
            summary = train(Path(dataset), model, cfg)
    except _StageDone:
        summary = None
    timings = read_json(model / "stages.json")
    figures: dict[str, Any] = {"stage_seconds": {k: v["seconds"] for k, v in timings.items()}}
    if until is not None:
        figures["seconds"] = timings[until]["seconds"]
    if summary is not None:
        figures.update(train_impressions=summary["train_impressions"], items=summary["items"])
        features_meta = model / "features.json"
        if features_meta.exists():  # written by features.build beside the table
            figures["feature_rows"] = read_json(features_meta).get("summary", {}).get("rows")
        text_metrics = model / "text" / "train_metrics.json"
        if text_metrics.exists():
            metrics = read_json(text_metrics)
            figures.update(text_val_auc=metrics.get("best_val_auc"), text_steps=metrics.get("steps"), text_samples=metrics.get("train_samples"))
    return figures


def evaluate_stage(model_dir: str, dataset: str, report_dir: str, split: str = "dev") -> dict[str, Any]:
    """Replay the ``split`` impressions through the model and its baselines (:func:`recsys.evaluation.replay.evaluate`).

    Returns:
        ``{"table": {ranking: {metric: value}}, "report": path}``.
    """
    from recsys.evaluation.replay import EvalConfig, evaluate

    table = evaluate(Path(model_dir), Path(dataset), Path(report_dir), EvalConfig(split=split))
    return {"table": table, "report": str(Path(report_dir) / "report.md")}


def amazon_stage(data_dir: str, work_dir: str, fine_tune: bool = False) -> dict[str, Any]:
    """Train and evaluate on the real Amazon Scientific log: the full-catalogue protocol of :mod:`recsys.catalogue`.

    Args:
        data_dir: the UniSRec-layout directory (``../shared/data/amazon-scientific``).
        work_dir: model and report directory.
        fine_tune: also fine-tune the encoder (slow on CPU); else the frozen encoder's vectors only.

    Returns:
        ``{"table": {ranking: {metric: value}}, "stage_seconds": ..., "report": path}``.
    """
    from recsys.catalogue import CatalogueConfig, train_catalogue
    from recsys.evaluation.catalogue import evaluate_catalogue
    from recsys.data import Split
    from recsys.io import read_json
    from recsys.loaders.amazon import load_amazon

    ds = load_amazon(Path(data_dir))
    model = train_catalogue(ds, CatalogueConfig(fine_tune=fine_tune), Path(work_dir) / "model")
    table = evaluate_catalogue(model, ds, Split.TEST, Path(work_dir) / "report")
    summary = read_json(model / "summary.json")
    return {"table": table, "stage_seconds": summary.get("stage_seconds"), "fine_tune": fine_tune,
            "report": str(Path(work_dir) / "report" / "report.md")}
