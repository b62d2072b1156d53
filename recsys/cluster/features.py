"""The feature collector on the cluster: the same :func:`features.collect.collect_features`, one user partition per task.

Every feature of a row depends only on that row, its candidates and what :class:`FeatureInputs` holds (the
behaviour builder reads the whole log, point in time, from the dataset's directory; the retriever and text
model are fitted before). So the driver splits the rows, their candidates and their users' log by user hash into
partitioned Parquet, sends the inputs (without the log) to every worker once, each task featurises one partition
and writes it back as Parquet, and the driver puts the partitions in the single-process order: the table equals
the single-process one row for row.

The dataset's directory and the work directory must be readable by every worker (one machine, or a shared
filesystem at the same path).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from features.collect import FeatureInputs, collect_features
from recsys.candidates.retrieval import ROW
from recsys.cluster.connect import gather_all
from recsys.cluster.partition import part_dir, read_partition, users_log, with_log, without_log, write_partitions
from recsys.data import Col
from recsys.io import write_parquet

log = logging.getLogger(__name__)

ORDER = "_row_order"  # a row's index among all the rows: the single-process ROW
ROWS, CANDIDATES, FEATURES, LOG = "rows", "candidates", "features", "log"


def collect_partition(inputs: FeatureInputs, root: str, part: int) -> str:
    """Featurise partition `part` under `root` (a worker's task); return the path of its feature table.

    The inputs come without the dataset's log: the partition's users' part of it is read here (all a row's
    features need of the log in memory: the user's uncapped history length; the behaviour family reads the whole
    log from the dataset's directory). ROW, the index of a candidate's row, is renumbered from the partition's
    rows to all the rows.
    """
    rows = read_partition(Path(root), ROWS, part)
    candidates = read_partition(Path(root), CANDIDATES, part)
    inputs = dataclasses.replace(inputs, dataset=with_log(inputs.dataset, read_partition(Path(root), LOG, part)))
    table = collect_features(inputs, rows.drop(ORDER), candidates)
    order = rows[ORDER].to_numpy()
    table = table.with_columns(pl.Series(ROW, order[table[ROW].to_numpy()], dtype=pl.Int32()))
    return str(write_parquet(table, part_dir(Path(root), FEATURES, part) / "data.parquet"))


def collect_on_cluster(client: Any, inputs: FeatureInputs, rows: pl.DataFrame, candidates: pl.DataFrame, *, partitions: int,
                       work_dir: str | Path | None = None, show_progress: bool = False) -> pl.DataFrame:
    """:func:`features.collect.collect_features` computed on the cluster's workers, one user partition per task.

    Args:
        client: a ``distributed.Client`` (:func:`recsys.cluster.connect.connect`).
        inputs: what the features may read; sent once to every worker.
        rows: the impression-format rows (with a user column), as for ``collect_features``.
        candidates: their candidates, long format (with a user column).
        partitions: how many user partitions to split into.
        work_dir: where the partitioned Parquet goes (every worker must read and write it; default: a temporary
            directory under ``inputs.config.temp_dir``).
        show_progress: accepted for the collector's signature; the tasks run without bars.

    Returns:
        The same table as ``collect_features(inputs, rows, candidates)``, row for row and in its order.
    """
    del show_progress
    with tempfile.TemporaryDirectory(prefix="recsys-cluster-", dir=work_dir or inputs.config.temp_dir) as root:
        numbered = rows.with_row_index(ORDER).with_columns(pl.col(ORDER).cast(pl.Int64()))
        kept = candidates.filter(pl.col(Col.IMPRESSION).is_in(rows[Col.IMPRESSION].implode()))
        parts = write_partitions({ROWS: numbered, CANDIDATES: kept, LOG: users_log(inputs.dataset, rows[Col.USER])}, Path(root), partitions)
        # Sent once, without the log (a worker reads its users' part of it): what every worker holds is the item side.
        shared = client.scatter(dataclasses.replace(inputs, dataset=without_log(inputs.dataset)), hash=False)  # fetched by each worker when needed (see cluster.recommend)
        futures = [client.submit(collect_partition, shared, root, p, pure=False)
                   for p in parts]
        paths = gather_all(client, futures)
        log.info("features: %d partitions computed on the cluster", len(paths))
        tables = [pl.read_parquet(p) for p in paths]
    if not tables:
        return collect_features(inputs, rows, candidates)
    return pl.concat(tables, how="vertical_relaxed").sort(ROW, Col.POSITION)
