"""`recsys demo`: the main job on the embedded sample, end to end, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import Col, Split, load_dataset
from recsys.io import write_parquet
from recsys.pipeline import TrainConfig, train
from recsys.recommend import REQUEST, RecommendConfig, recommend
from recsys.evaluation.replay import EvalConfig, evaluate
from recsys.text.model import TextConfig

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def demo_config() -> TrainConfig:
    """Defaults sized for 2 CPU cores: a one-epoch fine-tune on 4,000 sampled impressions with short texts, validated every 40 steps."""
    return TrainConfig(text=TextConfig(max_tokens=32, epochs=1, max_train_impressions=4000, val_check_steps=40))


def demo(out_dir: Path, dataset_dir: Path = SAMPLE, cfg: TrainConfig | None = None, *, force: bool = False, requests: int = 200) -> dict[str, Any]:
    """Train on `dataset_dir`, replay its dev split, and write top-10 lists for some dev users.

    Returns:
        The metric table, paths of the report and the ranked lists, and wall time per step.
    """
    out_dir = Path(out_dir)
    times: dict[str, float] = {}
    start = time.perf_counter()
    train(dataset_dir, out_dir / "model", cfg or demo_config(), force=force)
    times["train"] = time.perf_counter() - start

    start = time.perf_counter()
    table = evaluate(out_dir / "model", dataset_dir, out_dir / "report", EvalConfig(split=Split.DEV))
    times["evaluate"] = time.perf_counter() - start

    start = time.perf_counter()
    users = load_dataset(dataset_dir).split(Split.DEV).select(Col.USER).unique(maintain_order=True).head(requests)
    write_parquet(users.with_columns(pl.format("req-{}", Col.USER).alias(REQUEST)), out_dir / "requests.parquet")
    recs = recommend(out_dir / "model", out_dir / "requests.parquet", out_dir / "recs.parquet", RecommendConfig(top_k=10), show_progress=False)
    times["recommend"] = time.perf_counter() - start
    return {"table": table, "report": str(out_dir / "report" / "report.md"), "recs": recs, "seconds": times}
