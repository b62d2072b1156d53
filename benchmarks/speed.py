"""Speed stages the harness runs in fresh processes: recommend throughput, and other areas' benchmarks.

:func:`recommend_speed` times the real batch job twice, at two numbers of requests: the difference
in time over the difference in requests is the steady rate, free of model loading and retrieval fitting.

The stage benchmarks of other areas (:mod:`benchmarks.encode`, :mod:`benchmarks.features`,
:mod:`benchmarks.evaluation`) are called through :func:`external`, which hands over only the
arguments their ``run`` accepts.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
import time
from pathlib import Path
from typing import Any


def _requests(dataset: str, n: int, path: Path) -> None:
    """``n`` requests from dev impressions (cycled when there are fewer) with their shown candidates; the
    history comes from the log."""
    import polars as pl

    from recsys.data import Col, Split, load_dataset
    from recsys.io import write_parquet
    from recsys.recommend import REQUEST

    dev = load_dataset(dataset).split(Split.DEV)
    picked = dev.select(Col.USER, Col.CANDIDATES)[[i % dev.height for i in range(n)]]
    write_parquet(picked.with_columns(pl.Series(REQUEST, [f"bench-{i}" for i in range(n)])), path)


def recommend_speed(model_dir: str, dataset: str, requests: int = 200, top_k: int = 10) -> dict[str, Any]:
    """Requests per second of the batch job (:meth:`recsys.api.Recommender.recommend_file`), end to end and at the margin.

    Runs the job for ``requests // 5`` and for ``requests`` requests. End to end = ``requests`` over
    its whole wall time (loading the model, fitting retrieval, ranking, writing); marginal = the
    extra requests over the extra time, what one more request costs once the job is running.
    """
    from recsys.api import Recommender
    from recsys.recommend import RecommendConfig

    small = max(1, requests // 5)
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, requests):
            _requests(dataset, n, Path(tmp) / f"req{n}.parquet")
            start = time.perf_counter()
            summary = Recommender.load(model_dir).recommend_file(Path(tmp) / f"req{n}.parquet", Path(tmp) / f"recs{n}.parquet",
                                                                 RecommendConfig(top_k=top_k), show_progress=False)
            seconds[n] = time.perf_counter() - start
    extra = seconds[requests] - seconds[small]
    # Too few extra requests to time above the noise (tiny sizes): no marginal figure rather than a wild one.
    marginal = (requests - small) / extra if extra > 0.25 else None
    return {"requests": requests, "seconds": round(seconds[requests], 2), "requests_per_s": round(requests / seconds[requests], 2),
            "marginal_requests_per_s": None if marginal is None else round(marginal, 2),
            "setup_seconds": None if marginal is None else round(seconds[small] - small / marginal, 2),
            "short_lists": summary["short_lists"]}


def external(target: str, offer: dict[str, Any]) -> dict[str, Any]:
    """Call another area's ``run`` (``"module:function"``) with the offered arguments it accepts.

    Raises:
        TypeError: ``run`` requires an argument that was not offered.
    """
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offer.items() if takes_all or k in params}
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k not in kwargs]
    if missing:
        raise TypeError(f"{target} needs {missing}; the benchmark offers {sorted(offer)}")
    return dict(fn(**kwargs))
