"""Feature-builder throughput and peak memory on a synthetic log, against a pandas baseline computing the same features.

Stages, each in its own subprocess so that its peak RSS is its own (``os.wait4`` rusage):

* ``generate``  a synthetic log in the canonical format, built with numpy (about 10 candidates per impression)
* ``features``  :func:`features.build.build_features`: every behaviour feature, streamed out of core
* ``pandas``    the same features the obvious in-memory pandas way (:mod:`benchmarks.features_pandas`), on
  ``--baseline-rows`` rows (default: at most 1M, as pandas holds everything in memory); the builder runs on
  those rows too, and the two tables are compared feature by feature (``pandas_agrees``)

Ratios are rows per second (and peak RSS) of the builder over the baseline: at the benchmark's size
(``speed_ratio_vs_pandas``) and on the baseline's own rows (``speed_ratio_same_rows``). Run::

    .venv/bin/python -m benchmarks.features --rows 10000000 --memory-limit 1GB
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import SCHEMA_VERSION, Col, Split
from recsys.io import write_json

log = logging.getLogger(__name__)

BASELINE_ROWS = 1_000_000


def generate(path: Path, n_rows: int, seed: int = 0, n_items: int = 50_000, n_users: int = 200_000, days: int = 14) -> int:
    """Write a synthetic dataset directory with `n_rows` (impression, candidate) pairs; return the impression count."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    item_ids = np.array([f"N{i}" for i in range(n_items)], dtype=object)
    t0 = np.datetime64("2024-01-01T00:00:00", "us")
    span_us = days * 86_400 * 1_000_000
    items = pa.table({
        Col.ITEM: pa.array(item_ids, pa.string()),
        Col.TITLE: pa.array([f"title {i}" for i in range(n_items)], pa.string()),
        Col.ABSTRACT: pa.nulls(n_items, pa.string()),
        Col.CATEGORY: pa.array([f"cat{i % 17}" for i in range(n_items)], pa.string()),
        Col.SUBCATEGORY: pa.array([f"sub{i % 170}" for i in range(n_items)], pa.string()),
        Col.TAGS: pa.nulls(n_items, pa.list_(pa.string())),
        Col.PUBLISHED: pa.array(t0 + rng.integers(-86_400_000_000, span_us, n_items).astype("timedelta64[us]")),
    })
    pq.write_table(items, path / "items.parquet", compression="zstd")

    lengths = rng.integers(5, 16, size=n_rows // 10 + 1)  # 5..15 candidates, mean 10
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_rows) + 1]
    lengths[-1] -= lengths.sum() - n_rows  # exactly n_rows pairs
    n_imp = len(lengths)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like: a few items draw most impressions
    popularity /= popularity.sum()
    times = np.sort(rng.integers(0, span_us, n_imp)).astype("timedelta64[us]") + t0
    users = rng.integers(0, n_users, n_imp)
    split = np.where(np.arange(n_imp) < 0.8 * n_imp, Split.TRAIN, np.where(np.arange(n_imp) < 0.9 * n_imp, Split.DEV, Split.TEST))
    writer = pq.ParquetWriter(path / "impressions.parquet", _impressions_schema(), compression="zstd")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for lo in range(0, n_imp, 100_000):
        hi = min(lo + 100_000, n_imp)
        cand_offsets = (offsets[lo: hi + 1] - offsets[lo]).astype(np.int32)
        cands = rng.choice(n_items, size=int(cand_offsets[-1]), p=popularity)
        labels = (rng.random(len(cands)) < 0.04).astype(np.int8)
        hist_len = rng.geometric(0.08, hi - lo) - 1
        hist_offsets = np.concatenate([[0], np.cumsum(hist_len)]).astype(np.int32)
        hist = rng.choice(n_items, size=int(hist_offsets[-1]), p=popularity)
        unlabelled = pa.array(split[lo:hi] == Split.TEST)
        label_lists = pa.ListArray.from_arrays(pa.array(cand_offsets), pa.array(labels), mask=unlabelled)
        writer.write_table(pa.table({
            Col.IMPRESSION: pa.array([f"I{i}" for i in range(lo, hi)], pa.string()),
            Col.USER: pa.array([f"U{u}" for u in users[lo:hi]], pa.string()),
            Col.TIME: pa.array(times[lo:hi]),
            Col.HISTORY: pa.ListArray.from_arrays(pa.array(hist_offsets), pa.array(item_ids[hist], pa.string())),
            Col.CANDIDATES: pa.ListArray.from_arrays(pa.array(cand_offsets), pa.array(item_ids[cands], pa.string())),
            Col.LABELS: label_lists,
            Col.SPLIT: pa.array(split[lo:hi], pa.string()),
        }, schema=_impressions_schema()))
    writer.close()
    write_json({"schema_version": SCHEMA_VERSION, "source": "benchmark", "kind": "impressions", "impressions": n_imp}, path / "manifest.json")
    return n_imp


def _impressions_schema() -> pa.Schema:
    return pa.schema([
        (Col.IMPRESSION, pa.string()), (Col.USER, pa.string()), (Col.TIME, pa.timestamp("us")),
        (Col.HISTORY, pa.list_(pa.string())), (Col.CANDIDATES, pa.list_(pa.string())),
        (Col.LABELS, pa.list_(pa.int8())), (Col.SPLIT, pa.string()),
    ])


def _stage(name: str, workdir: Path, rows: int, memory_limit: str) -> dict[str, Any]:
    """Run one stage in a child process; return its own figures plus wall time and peak RSS (MB)."""
    cmd = [sys.executable, "-m", "benchmarks.features", "--stage", name, "--workdir", str(workdir),
           "--rows", str(rows), "--memory-limit", memory_limit]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"benchmark stage {name} failed ({status}): {' '.join(cmd)}")
    figures = json.loads(output.decode().strip().splitlines()[-1])
    figures.update(wall_s=round(time.perf_counter() - start, 1), peak_rss_mb=round(usage.ru_maxrss / 1024),
                   cpu_s=round(usage.ru_utime + usage.ru_stime, 1))
    return figures


def run(rows: int = 10_000_000, memory_limit: str = "4GB", workdir: Path | None = None, baseline_rows: int | None = None) -> dict[str, Any]:
    """Generate a log of `rows` (impression, candidate) pairs and build its features; run the pandas baseline
    on `baseline_rows` (default: ``min(rows, BASELINE_ROWS)``) and compare it with the builder on those rows.

    Returns:
        Per stage: seconds, rows per second, peak RSS; whether pandas agrees; speed and memory ratios.
    """
    small = min(rows, baseline_rows or BASELINE_ROWS)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-features-", dir=workdir) as tmp:
        big, base = Path(tmp) / "big", Path(tmp) / "baseline"
        result: dict[str, Any] = {"generate": _stage("generate", big, rows, memory_limit),
                                  "features": _stage("features", big, rows, memory_limit)}
        if small != rows:
            _stage("generate", base, small, memory_limit)
            result["features_baseline_rows"] = _stage("features", base, small, memory_limit)
        else:
            base = big
            result["features_baseline_rows"] = result["features"]
        result["pandas"] = _stage("pandas", base, small, memory_limit)
        from benchmarks.features_pandas import compare

        agreement = compare(base / "features.parquet", base / "pandas.parquet")
    same = result["features_baseline_rows"]
    result.update(
        rows=rows, baseline_rows=small, memory_limit=memory_limit,
        pandas_agrees=agreement["agrees"], pandas_differs=agreement.get("differ", agreement.get("problem")),
        speed_ratio_vs_pandas=round(result["features"]["rows_per_s"] / result["pandas"]["rows_per_s"], 2),
        speed_ratio_same_rows=round(same["rows_per_s"] / result["pandas"]["rows_per_s"], 2),
        memory_ratio_vs_pandas=round(result["features"]["peak_rss_mb"] / result["pandas"]["peak_rss_mb"], 2),
        memory_ratio_same_rows=round(same["peak_rss_mb"] / result["pandas"]["peak_rss_mb"], 2),
        load_average={"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    )
    if small != rows:
        result["note"] = f"the pandas baseline ran on {small} rows (it holds everything in memory); ratios are of rows/s"
    return result


def _child(args: argparse.Namespace) -> dict[str, Any]:
    from features.build import FeatureConfig, build_features

    dataset = args.workdir / "dataset"
    start = time.perf_counter()
    if args.stage == "generate":
        return {"impressions": generate(dataset, args.rows), "seconds": round(time.perf_counter() - start, 1)}
    if args.stage == "features":
        cfg = FeatureConfig(memory_limit=args.memory_limit, temp_dir=str(args.workdir))
        summary = build_features(dataset, args.workdir / "features.parquet", cfg, show_progress=False)
        n, n_features = summary.rows, len(summary.features)
    else:
        from benchmarks.features_pandas import pandas_features
        from features.registry import feature_names

        n = pandas_features(dataset, args.workdir / "pandas.parquet")
        n_features = len(feature_names(pq.read_schema(args.workdir / "pandas.parquet").names))
    seconds = time.perf_counter() - start
    return {"rows_out": n, "features": n_features, "seconds": round(seconds, 1), "rows_per_s": round(n / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--memory-limit", default="4GB", help="the builder's memory limit (FeatureConfig.memory_limit)")
    parser.add_argument("--baseline-rows", type=int, default=None, help=f"rows of the pandas baseline (default: at most {BASELINE_ROWS})")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: system temp)")
    parser.add_argument("--stage", choices=("generate", "features", "pandas"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(_child(args)))
        return
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(args.rows, args.memory_limit, args.workdir, args.baseline_rows), indent=2))


if __name__ == "__main__":
    main()
