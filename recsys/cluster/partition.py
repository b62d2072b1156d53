"""Rows split by a stable hash of their user, written as partitioned Parquet for the workers to read.

A user's rows (and so all of an impression's candidates, every query group) land in one partition. The hash
is CRC-32 of the user id, the same in every process, Python and library version (Python's ``hash`` and
Polars' ``hash`` are not), so a partition written by one run is the same partition in the next.

The dataset's log is not sent to every worker: the driver sends the dataset :func:`without_log`, writes each
partition's :func:`users_log` beside its rows, and a task works on :func:`with_log` of what it read.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import polars as pl

from recsys.data import Col, Dataset
from recsys.io import write_parquet

PART = "part"


def user_partition(users: pl.Series, n: int) -> pl.Series:
    """Each user's partition in ``0..n-1``: CRC-32 of the id, modulo `n` (hashed once per distinct user)."""
    distinct = users.unique()
    codes = pl.Series(PART, [zlib.crc32(str(u).encode()) % n for u in distinct.to_list()], dtype=pl.Int32())
    lookup = pl.DataFrame({Col.USER: distinct, PART: codes})
    return users.to_frame(Col.USER).join(lookup, on=Col.USER, how="left", maintain_order="left")[PART]


def part_dir(root: Path, table: str, part: int) -> Path:
    """The Hive-style directory of one partition of one table: ``root/table/part=00003``."""
    return Path(root) / table / f"{PART}={part:05d}"


def write_partitions(tables: dict[str, pl.DataFrame], root: Path, n: int) -> list[int]:
    """Write each table (all with a user column) split by :func:`user_partition` under `root`; return the partitions with rows.

    Every table is split by the same users' hash, so partition k of one table joins partition k of another.
    """
    used: set[int] = set()
    for name, table in tables.items():
        keyed = table.with_columns(user_partition(table[Col.USER], n))
        for (part,), frame in keyed.group_by(PART, maintain_order=True):
            write_parquet(frame.drop(PART), part_dir(root, name, int(part)) / "data.parquet")  # type: ignore[arg-type]
            used.add(int(part))  # type: ignore[arg-type]
    return sorted(used)


def read_partition(root: Path, table: str, part: int) -> pl.DataFrame:
    """One partition of a table written by :func:`write_partitions` (or by a worker), empty when it has none."""
    path = part_dir(root, table, part) / "data.parquet"
    return pl.read_parquet(path) if path.exists() else pl.DataFrame()


def without_log(ds: Dataset) -> Dataset:
    """`ds` with an empty log (its schema kept): items, manifest and path are what every worker is sent."""
    return dataclasses.replace(ds, impressions=ds.impressions.clear())


def users_log(ds: Dataset, users: pl.Series) -> pl.DataFrame:
    """The rows of `ds`'s log whose user is one of `users`: all a task needs of the log in memory."""
    return ds.impressions.filter(pl.col(Col.USER).is_in(users.unique().implode()))


def with_log(ds: Dataset, log: pl.DataFrame) -> Dataset:
    """`ds` holding `log` (a task's users' part of its log) as its impressions; `ds` itself for a partition
    without any (read back as a table without columns)."""
    return dataclasses.replace(ds, impressions=log) if log.height else ds
