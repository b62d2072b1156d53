"""Quality stages: the synthetic data, the trained pipeline, and the evaluation table against baselines.

Each function here is one benchmark stage: the harness runs it in a fresh process
(:func:`benchmarks.harness.run_stage`) and reads its time and peak memory; the function returns
its own figures. Arguments are plain strings and numbers because they travel as JSON.

Per-stage memory of the training pipeline comes from :func:`train_stage` with ``redo=STAGE``: the
stage's outputs are removed and :func:`recsys.pipeline.train` runs again, which redoes that stage
alone (every other stage is up to date), so the process holds one stage and nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# Outputs of each stage of recsys.pipeline.train (see its module docstring); removing them makes
# train() redo that stage only. "cache" holds the encoder's vector cache, which would skip the encode.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "text_model": ("text",),
    "encode": ("item_vectors.parquet", "cache"),
    "encode_frozen": ("frozen_vectors.parquet", "cache"),
    "text_features": ("text_features.parquet",),
    "features": ("features.parquet",),
    "ranker": ("ranker.txt", "ranker_features_only.txt"),
}


def synth_stage(size: str, out: str, seed: int = 0) -> dict[str, Any]:
    """Generate the synthetic dataset of a named size (:data:`recsys.synth.SIZES`) into ``out``.

    Returns:
        Items, users, impressions and (impression, candidate) rows of the dataset.
    """
    from recsys.synth import SynthConfig, synthesize

    ds = synthesize(SynthConfig.preset(size, seed=seed), Path(out))
    return {"items": ds.items.height, "impressions": ds.impressions.height, "users": int(ds.manifest["users"]),
            "candidate_rows": int(sum(s["candidates"] for s in ds.manifest["splits"].values()))}


def train_config(text_steps: int | None) -> Any:
    """The pipeline's default configuration with the text fine-tune capped at ``text_steps`` optimiser steps."""
    from recsys.pipeline import TrainConfig
    from recsys.text_model import TextConfig

    return TrainConfig(text=TextConfig(max_steps=text_steps))


def train_stage(dataset: str, model_dir: str, text_steps: int | None = None, redo: str | None = None) -> dict[str, Any]:
    """Run :func:`recsys.pipeline.train`; with ``redo`` first remove that stage's outputs so only it runs.

    Args:
        dataset: dataset directory.
        model_dir: model directory (reused stage by stage).
        text_steps: cap of the text fine-tune in optimiser steps (None = the pipeline default).
        redo: a key of :data:`STAGE_OUTPUTS`, or None for a full run.

    Returns:
        Seconds per pipeline stage (0 for stages that were up to date) and the training rows.
    """
    from recsys.io import read_json
    from recsys.pipeline import train

    model = Path(model_dir)
    if redo is not None:
        if redo not in STAGE_OUTPUTS:
            raise ValueError(f"unknown stage {redo!r}; use one of {sorted(STAGE_OUTPUTS)}")
        for name in STAGE_OUTPUTS[redo]:
            path = model / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    summary = train(Path(dataset), model, train_config(text_steps))
    figures: dict[str, Any] = {"stage_seconds": summary["stage_seconds"], "train_impressions": summary["train_impressions"],
                               "items": summary["items"]}
    features_meta = model / "features.json"
    if features_meta.exists():  # written by features.build beside the table
        figures["feature_rows"] = read_json(features_meta).get("summary", {}).get("rows")
    text_metrics = model / "text" / "train_metrics.json"
    if text_metrics.exists():
        figures["text_val_auc"] = read_json(text_metrics).get("best_val_auc")
    return figures


def evaluate_stage(model_dir: str, dataset: str, report_dir: str, split: str = "dev") -> dict[str, Any]:
    """Replay the ``split`` impressions through the model and its baselines (:func:`recsys.replay.evaluate`).

    Returns:
        ``{"table": {ranking: {metric: value}}, "report": path}``.
    """
    from recsys.replay import EvalConfig, evaluate

    table = evaluate(Path(model_dir), Path(dataset), Path(report_dir), EvalConfig(split=split))
    return {"table": table, "report": str(Path(report_dir) / "report.md")}


def amazon_stage(data_dir: str, work_dir: str) -> dict[str, Any]:
    """Train and evaluate on the real Amazon Scientific log (:mod:`recsys.catalogue`, full-catalogue protocol).

    Returns:
        ``{"table": {ranking: {metric: value}}}`` plus whatever else the evaluation reports.
    """
    from recsys.catalogue import evaluate_catalogue, train_catalogue

    trained = train_catalogue(Path(data_dir), Path(work_dir))
    result = evaluate_catalogue(trained if trained is not None else Path(work_dir))
    return result if isinstance(result, dict) and "table" in result else {"table": result}
