"""`recsys demo`: the main job on the embedded sample, end to end, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from recsys.api import Recommender
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.io import write_parquet
from recsys.recommend import REQUEST

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


# The fine-tune of the demo and of the bench's quality runs, sized for 2 CPU cores: one epoch over a sample of
# impressions with short texts, validated every 40 steps so that it keeps its best point (or the pretrained weights).
CPU_FINE_TUNE = {"text.max_tokens": 32, "text.epochs": 1, "text.max_train_impressions": 4000, "text.val_check_steps": 40}


def demo_config(ds: Dataset) -> TrainConfig:
    """Defaults sized for 2 CPU cores (:data:`CPU_FINE_TUNE`): a one-epoch fine-tune on 4,000 sampled impressions."""
    return override(TrainConfig.for_dataset(ds.manifest), **CPU_FINE_TUNE)


def demo(out_dir: Path, dataset_dir: Path = SAMPLE, cfg: TrainConfig | None = None, *, force: bool = False, requests: int = 200) -> dict[str, Any]:
    """Train on `dataset_dir`, evaluate its dev split, and write top-10 lists for some dev impressions' users.

    The requests bring the candidates their dev impressions showed (an impression-log model ranks the
    candidates a request brings); on an interaction log they are user ids alone and retrieval fills them.

    Returns:
        The metric table, paths of the report and the ranked lists, and wall time per step.
    """
    out_dir = Path(out_dir)
    ds = Dataset.load(dataset_dir)
    times: dict[str, float] = {}
    start = time.perf_counter()
    rec = Recommender.fit(ds, cfg or demo_config(ds), out=out_dir / "model", force=force)
    times["train"] = time.perf_counter() - start

    start = time.perf_counter()
    table = rec.evaluate(split=Split.DEV, report_dir=out_dir / "report")
    times["evaluate"] = time.perf_counter() - start

    start = time.perf_counter()
    dev = ds.split(Split.DEV).unique(Col.USER, keep="first", maintain_order=True).head(requests)
    cols = [Col.USER] + ([Col.CANDIDATES] if rec.meta["candidates"] == "logged" else [])
    write_parquet(dev.select(pl.format("req-{}", Col.IMPRESSION).alias(REQUEST), *cols), out_dir / "requests.parquet")
    recs = rec.recommend_file(out_dir / "requests.parquet", out_dir / "recs.parquet", show_progress=False)
    times["recommend"] = time.perf_counter() - start
    return {"table": table, "report": str(out_dir / "report" / "report.md"), "recs": recs, "seconds": times, "model_id": rec.model_id}
