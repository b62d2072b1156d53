"""Batch recommendation on the cluster: each user partition of the requests ranked on a worker, one atomic publish.

The driver checks the requests and fits what every chunk shares (:func:`recsys.recommend.recommend_job`: the
retriever, the histories, the clock), splits the requests by user hash into partitioned Parquet and sends the
model's assets and the job to every worker once. Each task ranks its partition chunk by chunk with the same
code as one process (:func:`recsys.recommend.recommend_chunk`) and writes its lists as Parquet. The driver then
publishes them as one file, in the requests' order, renamed into place only when every partition is there: a
reader sees the old export or the whole new one, never part of it.

The model directory, the dataset and the work directory must be readable by every worker.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from ranker.topk import RANK
from recsys.cluster.connect import gather_all
from recsys.cluster.partition import part_dir, read_partition, users_log, with_log, without_log, write_partitions
from recsys.data import Col
from recsys.pipeline import Assets
from recsys.recommend import REQUEST, RecommendConfig, RecommendJob, read_requests, recommend_chunk, recommend_job, write_recommendations

ORDER = "_request_order"
REQUESTS, LISTS, LOG = "requests", "lists", "log"


def recommend_partition(assets: Assets, job: RecommendJob, root: str, part: int, chunk_size: int) -> str:
    """Rank partition `part` of the requests under `root` (a worker's task), chunk by chunk; return its lists' path."""
    requests = read_partition(Path(root), REQUESTS, part)
    assets = dataclasses.replace(assets, dataset=with_log(assets.dataset, read_partition(Path(root), LOG, part)))  # sent without the log
    order = requests.select(REQUEST, ORDER)
    chunks = [recommend_chunk(assets, job, requests.slice(start, chunk_size).drop(ORDER)) for start in range(0, requests.height, chunk_size)]
    lists = pl.concat(chunks).join(order, on=REQUEST, how="left", maintain_order="left")
    path = part_dir(Path(root), LISTS, part) / "data.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    lists.write_parquet(path)
    return str(path)


def ranked_partitions(client: Any, assets: Assets, model_id: str, candidates: str, requests: pl.DataFrame, cfg: RecommendConfig, *,
                      partitions: int, work_dir: str | Path | None = None, source: object = "requests") -> Iterator[pl.DataFrame]:
    """The lists of every request, computed per user partition on the cluster, in the order one process writes them."""
    job = recommend_job(assets, model_id, candidates, requests, cfg, source)
    ds = assets.dataset
    if job.histories is not None:  # each request carries its latest history, as one process would join it per chunk
        requests = requests.join(job.histories, on=Col.USER, how="left", maintain_order="left")
    with tempfile.TemporaryDirectory(prefix="recsys-recommend-", dir=work_dir) as root:
        parts = write_partitions({REQUESTS: requests.with_row_index(ORDER), LOG: users_log(ds, requests[Col.USER])}, Path(root), partitions)
        # Scattered once, without the log and the histories (each partition has its users' part of them), so what every
        # worker holds is the item side; each worker fetches them when its first task needs them. (broadcast=True
        # replicates to the running workers only, and fails outright while a worker is paused for memory.)
        shared_assets = client.scatter(dataclasses.replace(assets, dataset=without_log(ds)), hash=False)
        shared_job = client.scatter(dataclasses.replace(job, histories=None), hash=False)
        futures = [client.submit(recommend_partition, shared_assets, shared_job, root, p, cfg.chunk_size, pure=False) for p in parts]
        lists = pl.concat([pl.read_parquet(p) for p in gather_all(client, futures)]) if parts else pl.DataFrame()
    if lists.height:
        # One process writes chunk after chunk of the requests, each sorted by request id then rank (top_k): the same order here.
        yield lists.sort(pl.col(ORDER) // cfg.chunk_size, REQUEST, RANK).drop(ORDER)


def recommend_file_on_cluster(client: Any, assets: Assets, model_id: str, candidates: str, requests_path: Path, out: Path, cfg: RecommendConfig, *,
                              partitions: int, work_dir: str | Path | None = None) -> dict[str, object]:
    """The batch job on the cluster: requests from a file, lists published to `out` (Parquet) atomically; a summary."""
    table = read_requests(Path(requests_path))
    chunks = ranked_partitions(client, assets, model_id, candidates, table, cfg, partitions=partitions, work_dir=work_dir, source=requests_path)
    return write_recommendations(chunks, table.height, cfg.top_k, Path(out))
