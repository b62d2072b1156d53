"""What a training run calls for its data-parallel stages: on the cluster when one is configured, else in process.

:class:`ClusterSession` offers the feature collector and the ranker fit with the single-process signatures
(:func:`features.collect.collect_features`, :func:`ranker.lambdarank.fit`), so the pipeline reads the same with
or without a cluster. The client starts on first use (a run whose stages are up to date starts none) and is
closed, with the local cluster it started, when the session ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from pathlib import Path
from typing import Any

import polars as pl

from features.collect import FeatureInputs, collect_features
from ranker.lambdarank import Ranker, RankerConfig, fit
from recsys.cluster.connect import ClusterConfig, connect, n_partitions


class ClusterSession:
    """The collector and ranker fit of one run (`cfg` None: the single-process functions, unchanged)."""

    def __init__(self, cfg: ClusterConfig | None) -> None:
        self.cfg = cfg
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    def __enter__(self) -> ClusterSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()

    def _connected(self) -> tuple[Any, int]:
        assert self.cfg is not None
        if self._client is None:
            self._client = self._stack.enter_context(connect(self.cfg))
        return self._client, n_partitions(self._client, self.cfg)

    def collect(self, inputs: FeatureInputs, rows: pl.DataFrame, candidates: pl.DataFrame, *, show_progress: bool = False) -> pl.DataFrame:
        """:func:`features.collect.collect_features`, per user partition on the cluster when there is one."""
        if self.cfg is None:
            return collect_features(inputs, rows, candidates, show_progress=show_progress)
        from recsys.cluster.features import collect_on_cluster

        client, parts = self._connected()
        return collect_on_cluster(client, inputs, rows, candidates, partitions=parts, work_dir=self.cfg.work_dir)

    def fit_ranker(self, train: pl.DataFrame, valid: pl.DataFrame | None, features: list[str], cfg: RankerConfig) -> Ranker:
        """:func:`ranker.lambdarank.fit`, with ``DaskLGBMRanker`` on the cluster when there is one."""
        if self.cfg is None:
            return fit(train, valid, features, cfg)
        from recsys.cluster.ranker import fit_on_cluster

        client, parts = self._connected()
        return fit_on_cluster(client, train, valid, features, cfg, partitions=parts, work_dir=self.cfg.work_dir)

    def map_chunks(self, fn: Callable[..., Any], shared: tuple[Any, ...], chunks: list[Any]) -> Iterator[Any]:
        """``fn(*shared, chunk)`` for each chunk, in order: in process, or one task per chunk on the cluster with
        `shared` sent to the workers once (catalogue evaluation runs its chunks of rows this way)."""
        if self.cfg is None:
            yield from (fn(*shared, chunk) for chunk in chunks)
            return
        from recsys.cluster.connect import gather_all

        client, _ = self._connected()
        [sent] = client.scatter([shared], hash=False)  # one object: the tuple is not split into futures
        futures = [client.submit(_apply, fn, sent, chunk, pure=False) for chunk in chunks]
        yield from gather_all(client, futures)

    def recommend_file(self, assets: Any, model_id: str, candidates: str, requests: Path, out: Path, cfg: Any) -> dict[str, object]:
        """The batch recommend job per user partition on the cluster (:func:`recsys.cluster.recommend.recommend_file_on_cluster`)."""
        from recsys.cluster.recommend import recommend_file_on_cluster

        client, parts = self._connected()
        return recommend_file_on_cluster(client, assets, model_id, candidates, requests, out, cfg, partitions=parts,
                                         work_dir=self.cfg.work_dir if self.cfg else None)


def _apply(fn: Callable[..., Any], shared: tuple[Any, ...], chunk: Any) -> Any:
    """A worker's task of :meth:`ClusterSession.map_chunks`."""
    return fn(*shared, chunk)
