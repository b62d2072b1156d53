"""The public Python API: the functions the CLI calls, for notebooks and other programs.

    from recsys import Dataset, Recommender, TrainConfig

    ds = Dataset.load("data/sample")
    rec = Recommender.fit(ds, TrainConfig.for_dataset(ds.manifest), out="runs/model")
    lists = rec.recommend(requests, k=10)           # a Polars frame: request_id, user_id, rank, item_id, score, ...
    metrics = rec.evaluate(split="dev")             # model and baselines -> metric -> value
    result = rec.monitor(Dataset.load("newer/log"))  # tonight's run against the training reference: result.alerts
    rec.save("models/today"); Recommender.load("models/today")
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from recsys.config import TrainConfig
from recsys.data import Dataset
from recsys.errors import RecsysError
from recsys.evaluate import DEFAULT_MAX_USERS, evaluate
from recsys.model import check_dataset, read_model_json
from recsys.monitoring.config import MonitorConfig
from recsys.monitoring.monitor import MonitorResult, monitor
from recsys.pipeline import Assets, train
from recsys.recommend import RECS_SCHEMA, RecommendConfig, check_requests, read_requests, recommend_chunks, write_recommendations


class Recommender:
    """A trained model directory, verified, with the dataset it serves from."""

    def __init__(self, model_dir: Path, meta: dict[str, Any], dataset: Dataset, scratch: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self.model_dir, self.meta, self.dataset = Path(model_dir), meta, dataset
        self.config = TrainConfig.from_dict(meta["config"])
        self._scratch = scratch  # a model fitted without `out` lives here until saved

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @classmethod
    def fit(cls, dataset: Dataset, config: TrainConfig | None = None, *, out: str | Path | None = None, force: bool = False,
            show_progress: bool = True, cluster: Any = None) -> Recommender:
        """Train on `dataset` (config default: :meth:`TrainConfig.for_dataset`) into `out` (default: a temporary
        directory, kept until :meth:`save`); a re-run into the same `out` skips the stages that are up to date.
        `cluster` (:class:`recsys.cluster.connect.ClusterConfig`) runs the features and ranker stages on Dask."""
        scratch = None if out is not None else tempfile.TemporaryDirectory(prefix="recsys-model-")
        model_dir = Path(out) if out is not None else Path(scratch.name)  # type: ignore[union-attr]
        meta = train(dataset, model_dir, config, force=force, show_progress=show_progress, cluster=cluster)
        return cls(model_dir, meta, dataset, scratch)

    @classmethod
    def load(cls, model_dir: str | Path, dataset: Dataset | None = None, *, allow_other_dataset: bool = False) -> Recommender:
        """A saved model, every artifact's hash verified; `dataset` defaults to the one it was trained on.

        Raises:
            RecsysError: not a model, a tampered artifact, or another dataset without `allow_other_dataset`.
        """
        meta = read_model_json(Path(model_dir))
        if dataset is None:
            path = meta["dataset"]["path"]
            if path is None or not Path(path).is_dir():
                raise RecsysError(f"{model_dir}: the training dataset {path} is gone; pass the dataset to serve from")
            dataset = Dataset.load(path)
        check_dataset(meta, dataset, allow_other=allow_other_dataset)
        return cls(Path(model_dir), meta, dataset)

    def save(self, path: str | Path) -> Path:
        """Copy the model directory to `path` (which must not exist yet)."""
        path = Path(path)
        if path.exists():
            raise RecsysError(f"{path} exists; save a model into a new directory")
        shutil.copytree(self.model_dir, path, ignore=shutil.ignore_patterns("cache"))
        return path

    def _chunks(self, requests: pl.DataFrame, cfg: RecommendConfig, show_progress: bool, source: object = "requests") -> Any:
        assets = Assets(self.model_dir, self.config, self.dataset)
        return recommend_chunks(assets, self.model_id, self.meta["candidates"], requests, cfg, show_progress=show_progress, source=source)

    def recommend(self, requests: pl.DataFrame, k: int = 10, *, chunk_size: int = 20_000) -> pl.DataFrame:
        """Top-`k` lists for `requests` (``user_id``; optional ``request_id``, ``history``, ``candidates``, ``timestamp``)."""
        requests = check_requests(requests)
        chunks = list(self._chunks(requests, RecommendConfig(top_k=k, chunk_size=chunk_size), False))
        return pl.concat(chunks) if chunks else pl.DataFrame(schema=RECS_SCHEMA)

    def recommend_file(self, requests: str | Path, out: str | Path, cfg: RecommendConfig | None = None, *, show_progress: bool = True,
                       cluster: Any = None) -> dict[str, object]:
        """The batch job: requests from Parquet/JSONL/CSV, lists to Parquet (atomically); returns a summary. `cluster`
        (:class:`recsys.cluster.connect.ClusterConfig`) ranks each user partition on a Dask worker: the same lists."""
        cfg = cfg or RecommendConfig()
        if cluster is not None:
            from recsys.cluster.session import ClusterSession

            with ClusterSession(cluster) as on:
                return on.recommend_file(Assets(self.model_dir, self.config, self.dataset), self.model_id, self.meta["candidates"], Path(requests),
                                         Path(out), cfg)
        table = read_requests(Path(requests))
        return write_recommendations(self._chunks(table, cfg, show_progress, Path(requests)), table.height, cfg.top_k, Path(out))

    def evaluate(self, dataset: Dataset | None = None, split: str = "dev", *, protocol: str | None = None,
                 report_dir: str | Path | None = None, allow_other_dataset: bool = False,
                 max_users: int | None = DEFAULT_MAX_USERS, cluster: Any = None) -> dict[str, dict[str, float]]:
        """Metrics of the model and its baselines on `split`, on a sample of `max_users` users; `protocol` ``"masked"`` (default over the
        catalogue) or ``"recbole"`` (nothing excluded from the ranking), ``"replay"`` for logged candidates (see :func:`recsys.evaluate.evaluate`).
        `cluster` (:class:`recsys.cluster.connect.ClusterConfig`) ranks the catalogue protocol's chunks on Dask: the same metrics."""
        return evaluate(self.model_dir, dataset or self.dataset, split, protocol, report_dir, allow_other_dataset=allow_other_dataset,
                        config=self.config, max_users=max_users, cluster=cluster)

    def monitor(self, dataset: Dataset | None = None, *, split: str | None = None, requests: str | Path | None = None, recs: str | Path | None = None,
                out_dir: str | Path | None = None, cfg: MonitorConfig | None = None, max_users: int | None = None, seed: int = 0) -> MonitorResult:
        """Compare a run on `dataset` (default: the one loaded with the model) with the model's reference
        (see :func:`recsys.monitoring.monitor.monitor`); ``result.alerts`` is empty when nothing moved."""
        return monitor(self.model_dir, dataset or self.dataset, split=split, requests=requests, recs=recs, out_dir=out_dir, cfg=cfg,
                       config=self.config, max_users=max_users, seed=seed)
