"""The lambdarank ranker on the cluster: ``lightgbm.dask.DaskLGBMRanker`` over user partitions.

The driver splits the prepared rows (:func:`ranker.lambdarank.prepare_groups`: the same groups, in the same
order, as the single-process ranker) by user hash, so every query group stays whole inside one partition,
and writes them as partitioned Parquet; the workers read their partitions and LightGBM trains across them
(data-parallel, its own network between the workers). The model is the same LightGBM text file.

Early stopping: LightGBM's distributed metrics are each worker's own share of the validation groups, and a
worker stopping alone would hang the others, so all ``n_estimators`` trees are trained and the driver picks
the best iteration on *all* validation groups (nDCG at the smallest ``eval_at``, the metric the single-process
early stopping watches), then keeps the trees up to it, as :func:`ranker.lambdarank.fit` does.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ranker.lambdarank import Ranker, RankerConfig, _matrix, finish, prepare_groups
from recsys.cluster.partition import part_dir, write_partitions
from recsys.data import Col
from recsys.errors import RecsysError
from recsys.evaluation.metrics import impression_metrics, ndcg_key

log = logging.getLogger(__name__)

TRAIN = "train"
_SCORE = "_score"


def _load(path: str, features: list[str], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's partition: features, labels and group sizes, in the prepared order."""
    df = pl.read_parquet(path)
    sizes = df.group_by(Col.IMPRESSION, maintain_order=True).len()["len"].to_numpy()
    return _matrix(df, features, what), df[Col.LABEL].cast(pl.Int32).to_numpy(), sizes


def _dask_arrays(root: Path, parts: list[int], features: list[str]) -> tuple[Any, Any, Any]:
    """X, y and group as Dask arrays with one chunk per partition, loaded by the workers from Parquet."""
    import dask
    import dask.array as da

    xs, ys, gs = [], [], []
    for p in parts:
        path = str(part_dir(root, TRAIN, p) / "data.parquet")
        rows = pl.scan_parquet(path).select(pl.len(), pl.col(Col.IMPRESSION).n_unique()).collect().row(0)
        loaded = dask.delayed(_load, pure=True)(path, features, "training features")
        xs.append(da.from_delayed(loaded[0], shape=(rows[0], len(features)), dtype=np.float32))
        ys.append(da.from_delayed(loaded[1], shape=(rows[0],), dtype=np.int32))
        gs.append(da.from_delayed(loaded[2], shape=(rows[1],), dtype=np.int64))
    return da.concatenate(xs), da.concatenate(ys), da.concatenate(gs)


def best_iteration(booster: Any, valid: pl.DataFrame, features: list[str], k: int) -> tuple[int, float]:
    """The number of trees with the best nDCG@k on all of `valid` (prepared groups), and that nDCG."""
    x = _matrix(valid, features, "validation features")
    score = np.zeros(valid.height)
    best, best_ndcg = 1, -np.inf
    for i in range(booster.current_iteration()):
        score += booster.predict(x, start_iteration=i, num_iteration=1, raw_score=True)
        value = impression_metrics(valid.select(Col.IMPRESSION, Col.LABEL).with_columns(pl.Series(_SCORE, score)), _SCORE, ks=[k])[ndcg_key(k)]
        if value > best_ndcg:
            best, best_ndcg = i + 1, value
    return best, float(best_ndcg)


def fit_on_cluster(client: Any, train: pl.DataFrame, valid: pl.DataFrame | None, features: list[str], cfg: RankerConfig, *,
                   partitions: int, work_dir: str | Path | None = None) -> Ranker:
    """:func:`ranker.lambdarank.fit` with ``DaskLGBMRanker`` on the cluster's workers (the same arguments, the same artifacts).

    Args:
        client: a ``distributed.Client`` whose workers are processes (LightGBM's network is one per process).
        train, valid, features, cfg: as for :func:`ranker.lambdarank.fit`.
        partitions: user partitions of the training rows (each a chunk LightGBM reads on one worker).
        work_dir: where the partitioned Parquet goes (readable by every worker).

    Raises:
        RecsysError: no trainable impression, or LightGBM rejects the settings.
    """
    import lightgbm as lgb
    from lightgbm.dask import DaskLGBMRanker

    prepared, _, train_stats = prepare_groups(train, features, "training features")
    if prepared.height == 0:
        raise RecsysError("no training impression has both a click and a non-click; nothing to learn from")
    params = cfg.params(rows=train_stats["used_rows"])
    with tempfile.TemporaryDirectory(prefix="recsys-ranker-", dir=work_dir) as root:
        parts = write_partitions({TRAIN: prepared}, Path(root), partitions)
        x, y, group = _dask_arrays(Path(root), parts, features)
        model = DaskLGBMRanker(client=client, n_estimators=cfg.n_estimators, **params)
        try:
            model.fit(x, y, group=group, feature_name=features)
        except lgb.basic.LightGBMError as exc:
            raise RecsysError(f"LightGBM rejects the ranker settings ([ranker] of the config): {str(exc).strip().splitlines()[0][:200]}") from exc
    booster = model.booster_
    best, valid_stats, valid_scores = booster.current_iteration(), None, {}
    if valid is not None:
        held, _, valid_stats = prepare_groups(valid, features, "validation features")
        if held.height:
            k = min(cfg.eval_at)
            best, value = best_iteration(booster, held, features, k)
            valid_scores = {f"ndcg@{k}": value}
    log.info("ranker on the cluster: %d partitions, best iteration %d, valid %s", len(parts), best, valid_scores)
    return finish(booster, best, valid_scores, features, cfg, params, train_stats, valid_stats)
