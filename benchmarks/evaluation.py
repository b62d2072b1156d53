"""Speed of :func:`recsys.evaluation.metrics.impression_metrics` against a per-impression Python loop.

The baseline is the obvious implementation: group rows by impression and call the single-list
functions (:func:`auc`, :func:`mrr`, :func:`ndcg`) on each. Both run in the same process on the same
synthetic table (random scores with ties, about 4% clicks); the loop is timed on a sample of
impressions and extrapolated. Results agree to 1e-9 on the sample.

Run::

    .venv/bin/python -m benchmarks.evaluation --impressions 200000 --size 30
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import polars as pl

from recsys.data import Col
from recsys.evaluation.metrics import auc, impression_metrics, mrr, ndcg, per_impression


def _table(n_impressions: int, size: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_impressions * size
    labels = (rng.random(n) < 0.04).astype(np.int8)
    labels[::size] = 1  # every impression has a click
    return pl.DataFrame(
        {
            Col.IMPRESSION: np.repeat(np.arange(n_impressions), size).astype(str),
            Col.LABEL: labels,
            "score": np.round(rng.random(n), 2),  # two decimals: plenty of ties
        }
    )


def run(n_impressions: int = 200_000, size: int = 30, loop_sample: int = 5_000, seed: int = 0) -> dict[str, Any]:
    """Time both implementations; return rows, seconds, rows/s and the speed-up of the vectorised one."""
    df = _table(n_impressions, size, seed)
    start = time.perf_counter()
    metrics = impression_metrics(df, "score")
    vec_s = time.perf_counter() - start

    sample_ids = df[Col.IMPRESSION].unique(maintain_order=True).head(loop_sample)
    sample = df.filter(pl.col(Col.IMPRESSION).is_in(sample_ids.implode()))
    start = time.perf_counter()
    loop = []
    for _, g in sample.group_by(Col.IMPRESSION, maintain_order=True):
        y, s = g[Col.LABEL].to_numpy(), g["score"].to_numpy()
        if 0 < y.sum() < len(y):
            loop.append((auc(y, s), mrr(y, s), ndcg(y, s, 5), ndcg(y, s, 10)))
    loop_s = (time.perf_counter() - start) * n_impressions / sample_ids.len()
    check = per_impression(sample, "score")
    max_diff = float(np.abs(np.array(loop) - check.select("auc", "mrr", "ndcg@5", "ndcg@10").to_numpy()).max())
    return {
        "rows": df.height,
        "impressions": n_impressions,
        "vectorised_s": round(vec_s, 3),
        "loop_s_extrapolated": round(loop_s, 3),
        "vectorised_rows_per_s": round(df.height / vec_s),
        "speedup_vs_loop": round(loop_s / vec_s, 1),
        "max_abs_diff_on_sample": max_diff,
        "auc": metrics["auc"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=30)
    parser.add_argument("--loop-sample", type=int, default=5_000)
    args = parser.parse_args()
    print(json.dumps(run(args.impressions, args.size, args.loop_sample), indent=2))
