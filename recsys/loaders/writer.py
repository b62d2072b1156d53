"""Write a dataset directory batch by batch, so ingesting MIND-large never holds all impressions.

Each batch is validated against the contract, stripped of impression ids already written (a
duplicate is a bad row), checked for item ids missing from the items table (counted, kept), and
appended to ``impressions.parquet`` as one row group. Only a light copy (split, user, time,
candidate/label lists without strings) stays in memory, for the manifest.

An impression whose history already holds one of its candidates is kept (a re-read article, a
re-bought product are real) and counted in the manifest as ``history_contains_candidate``, which
tells a leak apart from re-consumption. A batch without ``click_probs`` in a dataset that has them
gets one null per candidate, so the column always explodes with the candidates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import (
    IMPRESSIONS_SCHEMA,
    OPTIONAL_IMPRESSION_COLUMNS,
    Col,
    Dataset,
    build_manifest,
    empty_impressions,
    load_dataset,
    validate_impressions,
    validate_items,
)
from recsys.io import atomic_path, make_dir, write_json, write_parquet
from recsys.loaders.rejects import BadRows


@dataclass(frozen=True)
class IngestResult:
    """Where an ingest wrote its dataset and what its manifest says (impressions stay on disk)."""

    path: Path
    manifest: dict[str, Any]

    def dataset(self) -> Dataset:
        """Load the written dataset into memory."""
        return load_dataset(self.path)


class ImpressionWriter:
    """Appends validated impression batches to a Parquet file; see :func:`write_dataset`."""

    def __init__(self, tmp: Path, items: pl.DataFrame, with_click_probs: bool, bad: BadRows) -> None:
        self._tmp, self._bad = tmp, bad
        self._item_ids = items[Col.ITEM]
        self._columns = list(IMPRESSIONS_SCHEMA) + ([Col.CLICK_PROBS] if with_click_probs else [])
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._seen: list[pl.Series] = []
        self._light: list[pl.DataFrame] = []
        self._missing: list[pl.Series] = []
        self.missing_occurrences = {Col.CANDIDATES: 0, Col.HISTORY: 0}
        self.overlap = HistoryOverlap()
        self.manifest: dict[str, Any] = {}

    def write(self, batch: pl.DataFrame, path: Path | str) -> None:
        """Validate ``batch`` (contract columns plus ``_line``) and append it.

        Args:
            batch: impressions in the contract schema, with the source line in ``_line``.
            path: the source file of the batch, for error messages.

        Raises:
            DataError: an impression id already written (raise mode) or a contract violation.
        """
        if Col.CLICK_PROBS in self._columns and Col.CLICK_PROBS not in batch.columns:
            batch = batch.with_columns(null_click_probs(batch))
        ids = batch[Col.IMPRESSION]
        dup = ~ids.is_first_distinct()
        if self._seen:
            dup = dup | ids.is_in(pl.concat(self._seen).implode())
        batch = self._bad.drop(batch, dup, path, Col.IMPRESSION, "duplicate impression id", pl.col(Col.IMPRESSION))
        if not batch.height:
            return
        table = validate_impressions(batch.select(self._columns), str(path))
        self._seen.append(table[Col.IMPRESSION])
        self._count_missing(table)
        self.overlap.add(table)
        self._light.append(
            table.select(Col.SPLIT, Col.USER, Col.TIME, pl.col(Col.CANDIDATES).list.eval(pl.element().is_null()), Col.LABELS)
        )
        arrow = table.to_arrow()
        if self._writer is None:
            self._schema = arrow.schema
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        self._writer.write_table(arrow.cast(self._schema))

    def _count_missing(self, table: pl.DataFrame) -> None:
        for column in (Col.CANDIDATES, Col.HISTORY):
            ids = table[column].explode().drop_nulls()
            missing = ids.filter(~ids.is_in(self._item_ids.implode()))
            self.missing_occurrences[column] += missing.len()
            if missing.len():
                self._missing.append(missing.unique())

    def close(self) -> pl.DataFrame:
        """Finish the file; return the light impressions (no id strings) for :func:`build_manifest`."""
        if self._writer is None:
            empty_impressions().select(self._columns[: len(IMPRESSIONS_SCHEMA)]).write_parquet(self._tmp)
            return empty_impressions()
        self._writer.close()
        return pl.concat(self._light)

    def missing_report(self) -> dict[str, Any]:
        """Item ids referenced by impressions but absent from items: distinct count, occurrences, examples."""
        missing = pl.concat(self._missing).unique(maintain_order=True) if self._missing else pl.Series([], dtype=pl.String())
        return {
            "distinct": missing.len(),
            "in_candidates": self.missing_occurrences[Col.CANDIDATES],
            "in_history": self.missing_occurrences[Col.HISTORY],
            "examples": missing.head(5).to_list(),
        }


def null_click_probs(impressions: pl.DataFrame) -> pl.Series:
    """``click_probs`` of one null per candidate, for impressions without known probabilities."""
    dtype = OPTIONAL_IMPRESSION_COLUMNS[Col.CLICK_PROBS]
    nulls = impressions.select(pl.lit(None, dtype=dtype.inner).repeat_by(pl.col(Col.CANDIDATES).list.len()))  # type: ignore[attr-defined]
    return nulls.to_series().cast(dtype).alias(Col.CLICK_PROBS)


class HistoryOverlap:
    """Counts impressions whose history holds one of their own candidates (the manifest entry)."""

    def __init__(self) -> None:
        self.impressions = self.candidates = self.clicked = 0  # impressions; (distinct) candidates; clicked ones
        self.examples: list[str] = []

    def add(self, impressions: pl.DataFrame) -> None:
        """Count the impressions of one batch (contract columns)."""
        overlap = impressions.select(pl.col(Col.CANDIDATES).list.set_intersection(pl.col(Col.HISTORY)).list.len()).to_series()
        hit = impressions.filter(overlap > 0)
        if not hit.height:
            return
        self.impressions += hit.height
        self.candidates += int(overlap.sum())
        pairs = hit.filter(pl.col(Col.LABELS).is_not_null()).select(Col.HISTORY, Col.CANDIDATES, Col.LABELS).explode(Col.CANDIDATES, Col.LABELS)
        self.clicked += pairs.filter(pl.col(Col.HISTORY).list.contains(pl.col(Col.CANDIDATES)) & (pl.col(Col.LABELS) == 1)).height
        self.examples.extend(hit[Col.IMPRESSION].head(5 - len(self.examples)).to_list())

    def report(self) -> dict[str, Any]:
        return {"impressions": self.impressions, "candidates": self.candidates, "clicked": self.clicked, "examples": self.examples}


@contextlib.contextmanager
def write_dataset(
    out: Path, items: pl.DataFrame, bad: BadRows, source: str, kind: str, with_click_probs: bool = False, **extra: Any
) -> Iterator[ImpressionWriter]:
    """Open a dataset directory for streaming writes; on success write items, rejects and the manifest.

    Usage::

        with write_dataset(out, items, bad, "mind", "impressions") as writer:
            for batch, path in batches:
                writer.write(batch, path)
        # out/manifest.json now exists; nothing is left behind (and an old dataset stays) if the block raised.

    Args:
        out: the dataset directory (created).
        items: the items table (validated here).
        bad: the bad-row policy of this ingest; its counts go to the manifest.
        source: ``manifest["source"]``.
        kind: ``"impressions"`` or ``"interactions"``.
        with_click_probs: write the optional ``click_probs`` column.
        **extra: more manifest entries.

    Yields:
        The writer; the manifest is available as ``writer.manifest`` after the block.
    """
    validate_items(items, "items")
    make_dir(out)
    with atomic_path(out / "impressions.parquet") as tmp:
        writer = ImpressionWriter(tmp, items, with_click_probs, bad)
        try:
            yield writer
        finally:
            light = writer.close()
        # The manifest marks a finished dataset: an old one goes before the first of its files is replaced,
        # so a kill from here on leaves no manifest over a mix of old and new files (a raise above keeps it).
        (out / "manifest.json").unlink(missing_ok=True)
    write_parquet(items, out / "items.parquet")
    bad.write(out)
    writer.manifest = build_manifest(
        items, light, source, kind, skipped=bad.manifest(), missing_item_ids=writer.missing_report(),
        history_contains_candidate=writer.overlap.report(), **extra
    )
    write_json(writer.manifest, out / "manifest.json")

