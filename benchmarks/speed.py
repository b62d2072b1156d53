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


def serving_vs_predict(model_dir: str, dataset: str, requests: int = 2000, top_k: int = 10) -> dict[str, Any]:
    """Serving throughput once the model is loaded, against LightGBM's own ``predict`` on the same feature rows.

    The model is loaded and retrieval fitted first (what a job does once). Then, timed: the requests through
    :func:`recsys.recommend.rank_requests` (candidates -> features -> rank -> top-k), and, on exactly the feature
    rows that produced, the bare ``booster.predict`` of the float32 matrix: the cost of scoring alone. The ratio is
    the share of LightGBM's own throughput the whole serving path keeps (1.0 = features and retrieval are free).
    Interaction models serve users without candidates (retrieval), impression models dev impressions' candidates.
    """
    import datetime as dt

    import numpy as np
    import polars as pl

    from features.collect import collect_features
    from ranker.lambdarank import _matrix
    from recsys.api import Recommender
    from recsys.candidates.logged import logged_candidates
    from recsys.candidates.retrieved import Requests, retrieved_candidates
    from recsys.data import Col, Split
    from recsys.pipeline import RETRIEVED, Assets, needs_retriever
    from recsys.recommend import REQUEST, latest_histories, rank_requests, to_impressions

    rec = Recommender.load(model_dir)
    ds = rec.dataset
    assets = Assets(rec.model_dir, rec.config, ds)
    retrieves = rec.meta["candidates"] == RETRIEVED
    dev = ds.split(Split.DEV)
    picked = dev[[i % dev.height for i in range(requests)]].select(Col.USER, *([] if retrieves else [Col.CANDIDATES]))
    picked = picked.with_columns(pl.Series(REQUEST, [f"bench-{i}" for i in range(requests)]))
    retriever = assets.retriever(splits=Split.ALL) if retrieves or needs_retriever(assets.config) else None
    ranker = assets.rankers["full model"]
    now = ds.impressions[Col.TIME].max() + dt.timedelta(seconds=1)
    rows = to_impressions(picked, ds, now, latest_histories(ds))
    rank_requests(assets, rows.head(50), top_k, retriever, retrieves)  # warm-up: lazy loads (text model, vectors)
    start = time.perf_counter()
    lists = rank_requests(assets, rows, top_k, retriever, retrieves)
    serving = time.perf_counter() - start
    cands = retrieved_candidates(retriever, Requests.from_rows(retriever, rows, ds.impressions))[0] if retrieves else logged_candidates(rows)
    matrix = _matrix(collect_features(assets.inputs(retriever), rows, cands), ranker.features, "benchmark rows")
    start = time.perf_counter()
    scores = ranker.booster.predict(matrix)
    predict = time.perf_counter() - start
    return {"requests": requests, "feature_rows": int(matrix.shape[0]), "lists": lists[Col.IMPRESSION].n_unique(),
            "serving_requests_per_s": round(requests / serving, 1), "predict_requests_per_s": round(requests / predict, 1),
            "ratio": round(predict / serving, 3), "finite_scores": bool(np.isfinite(scores).all())}
