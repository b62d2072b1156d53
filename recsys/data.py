"""The canonical data contract: column names, schemas, validation, and the dataset directory.

Every other module imports column names from here; nobody else types ``"user_id"``.

A dataset directory holds::

    items.parquet        one row per item: text and metadata
    impressions.parquet  one row per impression (or request): who, when, history, candidates, labels
    manifest.json        schema version, source, row counts, time range, skipped rows, missing ids
    rejects.parquet      (optional) rows skipped with --skip-bad-rows, with the reason

Impressions come from two kinds of logs (``manifest["kind"]``):

* ``"impressions"``: what was shown and what was clicked (MIND, or events with impression rows).
  ``candidates`` are the shown items, ``labels`` 1 for clicked, 0 for not.
* ``"interactions"``: only clicks/purchases were logged. Each interaction is one row whose
  ``candidates`` holds the one positive item with label 1; candidates come from retrieval
  (:mod:`recsys.candidates.retrieval`), and the ones the user did not take are the ranker's negatives.

``labels`` is null for unlabelled logs (MIND test). ``click_probs`` is only filled by the synthetic
generator: the true click probability of each candidate, for the oracle ranking.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.errors import DataError, RecsysError
from recsys.io import make_dir, read_json, write_json, write_parquet

SCHEMA_VERSION = 1


class Col:
    """Column names of the contract."""

    # items
    ITEM = "item_id"
    TITLE = "title"
    ABSTRACT = "abstract"
    CATEGORY = "category"
    SUBCATEGORY = "subcategory"
    TAGS = "tags"
    PUBLISHED = "publish_time"
    # impressions
    IMPRESSION = "impression_id"
    USER = "user_id"
    TIME = "timestamp"
    HISTORY = "history"
    CANDIDATES = "candidates"
    LABELS = "labels"
    SPLIT = "split"
    CLICK_PROBS = "click_probs"
    # long format: one row per (impression, candidate); the candidate is Col.ITEM
    LABEL = "label"
    POSITION = "position"
    SAMPLED = "is_sampled"


class Split:
    TRAIN = "train"
    DEV = "dev"
    TEST = "test"
    ALL = (TRAIN, DEV, TEST)


ITEMS_SCHEMA: dict[str, pl.DataType] = {
    Col.ITEM: pl.String(),
    Col.TITLE: pl.String(),
    Col.ABSTRACT: pl.String(),
    Col.CATEGORY: pl.String(),
    Col.SUBCATEGORY: pl.String(),
    Col.TAGS: pl.List(pl.String()),
    Col.PUBLISHED: pl.Datetime("us"),
}

IMPRESSIONS_SCHEMA: dict[str, pl.DataType] = {
    Col.IMPRESSION: pl.String(),
    Col.USER: pl.String(),
    Col.TIME: pl.Datetime("us"),
    Col.HISTORY: pl.List(pl.String()),
    Col.CANDIDATES: pl.List(pl.String()),
    Col.LABELS: pl.List(pl.Int8()),
    Col.SPLIT: pl.String(),
}

# Optional impression columns and their types.
OPTIONAL_IMPRESSION_COLUMNS: dict[str, pl.DataType] = {Col.CLICK_PROBS: pl.List(pl.Float32())}

# Columns that may hold nulls (everything else must be filled).
NULLABLE = {Col.ABSTRACT, Col.CATEGORY, Col.SUBCATEGORY, Col.TAGS, Col.PUBLISHED, Col.LABELS}

USER_ID_SHOWN_AS = "a user id (not shown)"


def shown(field: str | None, value: object, limit: int = 200) -> str:
    """`value` of `field` quoted for a message, cut to `limit` characters; a user id is never shown.

    Errors, logs and reports name the file, row and field of a bad user id, never its value.

    >>> shown(Col.ITEM, "N12"), shown(Col.USER, "U7")
    ("'N12'", 'a user id (not shown)')
    """
    return USER_ID_SHOWN_AS if field == Col.USER else repr(str(value)[:limit])


def empty_items() -> pl.DataFrame:
    return pl.DataFrame(schema=ITEMS_SCHEMA)


def empty_impressions() -> pl.DataFrame:
    return pl.DataFrame(schema=IMPRESSIONS_SCHEMA)


def _check_columns(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str, extra: dict[str, pl.DataType]) -> None:
    for name, dtype in schema.items():
        if name not in df.columns:
            raise DataError(what, None, name, "column is missing")
        if df.schema[name] != dtype:
            raise DataError(what, None, name, f"has type {df.schema[name]}, expected {dtype}")
        if name not in NULLABLE:
            nulls = df[name].null_count()
            if nulls:
                row = int(df.with_row_index().filter(pl.col(name).is_null())["index"][0])
                raise DataError(what, row + 1, name, f"{nulls} null value(s); this field is required")
    for name, dtype in extra.items():
        if name in df.columns and df.schema[name] != dtype:
            raise DataError(what, None, name, f"has type {df.schema[name]}, expected {dtype}")


def validate_items(items: pl.DataFrame, what: str = "items") -> pl.DataFrame:
    """Check the items table against the contract; raise :class:`DataError` naming the first problem."""
    _check_columns(items, ITEMS_SCHEMA, what, {})
    dup = items[Col.ITEM].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        raise DataError(what, row + 1, Col.ITEM, f"duplicate item id {items[Col.ITEM][row]!r}")
    return items


def validate_impressions(impressions: pl.DataFrame, what: str = "impressions") -> pl.DataFrame:
    """Check the impressions table; labels, when present, must be 0/1 and as long as candidates."""
    _check_columns(impressions, IMPRESSIONS_SCHEMA, what, OPTIONAL_IMPRESSION_COLUMNS)
    bad_split = ~impressions[Col.SPLIT].is_in(list(Split.ALL))
    if bad_split.any():
        row = int(bad_split.arg_true()[0])
        raise DataError(what, row + 1, Col.SPLIT, f"unknown split {impressions[Col.SPLIT][row]!r}; use one of {Split.ALL}")
    checks = impressions.select(
        len_mismatch=pl.col(Col.LABELS).is_not_null() & (pl.col(Col.LABELS).list.len() != pl.col(Col.CANDIDATES).list.len()),
        bad_label=pl.col(Col.LABELS).list.eval((pl.element() != 0) & (pl.element() != 1)).list.any().fill_null(False),
    )
    if checks["len_mismatch"].any():
        row = int(checks["len_mismatch"].arg_true()[0])
        raise DataError(what, row + 1, Col.LABELS, "has a different length than candidates")
    if checks["bad_label"].any():
        row = int(checks["bad_label"].arg_true()[0])
        raise DataError(what, row + 1, Col.LABELS, "labels must be 0 or 1")
    dup = impressions[Col.IMPRESSION].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        raise DataError(what, row + 1, Col.IMPRESSION, f"duplicate impression id {impressions[Col.IMPRESSION][row]!r}")
    return impressions


def explode_candidates(impressions: pl.DataFrame, carry: Sequence[str] = ()) -> pl.DataFrame:
    """Long format: one row per (impression, candidate) with its position and label (null if unlabelled).

    `carry` names further impression columns repeated on each of the impression's rows (say a row index).
    """
    cols = [Col.IMPRESSION, Col.USER, Col.TIME, Col.SPLIT, *carry, Col.CANDIDATES, Col.LABELS]
    if Col.CLICK_PROBS in impressions.columns:
        cols.append(Col.CLICK_PROBS)
    df = impressions.select(cols).with_columns(
        pl.int_ranges(pl.col(Col.CANDIDATES).list.len()).alias(Col.POSITION),
        pl.when(pl.col(Col.LABELS).is_null())
        .then(pl.lit(None, dtype=pl.List(pl.Int8())).repeat_by(pl.col(Col.CANDIDATES).list.len()).list.eval(pl.element().cast(pl.Int8())))
        .otherwise(pl.col(Col.LABELS))
        .alias(Col.LABELS),
    )
    explode_cols = [Col.CANDIDATES, Col.LABELS, Col.POSITION] + ([Col.CLICK_PROBS] if Col.CLICK_PROBS in cols else [])
    return (
        df.explode(explode_cols)
        .rename({Col.CANDIDATES: Col.ITEM, Col.LABELS: Col.LABEL})
        .with_columns(pl.col(Col.POSITION).cast(pl.Int32()))
    )


@dataclass
class Dataset:
    """A validated dataset directory in memory (``path`` is None for one built in memory and not saved yet)."""

    items: pl.DataFrame
    impressions: pl.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read and validate a dataset directory (see :func:`load_dataset`)."""
        return load_dataset(path)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "impressions"))

    @property
    def fingerprint(self) -> str:
        """A stable hash of the manifest (counts, time ranges, source): which log this is."""
        blob = json.dumps(self.manifest, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def split(self, *names: str) -> pl.DataFrame:
        """Impressions of the given split(s)."""
        return self.impressions.filter(pl.col(Col.SPLIT).is_in(list(names)))


def build_manifest(items: pl.DataFrame, impressions: pl.DataFrame, source: str, kind: str, **extra: Any) -> dict[str, Any]:
    """Counts, time range and label statistics for ``manifest.json``."""
    per_split = impressions.group_by(Col.SPLIT).agg(
        pl.len().alias("impressions"),
        pl.col(Col.TIME).min().alias("time_min"),
        pl.col(Col.TIME).max().alias("time_max"),
        pl.col(Col.CANDIDATES).list.len().sum().alias("candidates"),
        pl.col(Col.LABELS).list.sum().sum().alias("clicks"),
        pl.col(Col.LABELS).is_null().sum().alias("unlabelled"),
    ).sort(Col.SPLIT)
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "kind": kind,
        "items": items.height,
        "impressions": impressions.height,
        "users": impressions[Col.USER].n_unique(),
        "time_min": impressions[Col.TIME].min(),
        "time_max": impressions[Col.TIME].max(),
        "splits": {row[Col.SPLIT]: {k: v for k, v in row.items() if k != Col.SPLIT} for row in per_split.to_dicts()},
        **extra,
    }


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    """Validate and write a dataset directory (each file atomically; an old manifest removed first, the new one last)."""
    path = Path(path)
    validate_items(ds.items)
    validate_impressions(ds.impressions)
    make_dir(path)
    (path / "manifest.json").unlink(missing_ok=True)  # no manifest over a mix of old and new files, if killed
    write_parquet(ds.items, path / "items.parquet")
    write_parquet(ds.impressions, path / "impressions.parquet")
    write_json(ds.manifest, path / "manifest.json")
    ds.path = path
    return path


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate a dataset directory written by :func:`save_dataset`."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise RecsysError(f"{path} is not a recsys dataset (no manifest.json); create one with `recsys ingest` or `recsys synth`")
    manifest = read_json(manifest_path)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise RecsysError(f"{manifest_path}: schema version {manifest.get('schema_version')}, this recsys reads {SCHEMA_VERSION}; re-ingest the data")
    items = validate_items(pl.read_parquet(path / "items.parquet"), str(path / "items.parquet"))
    impressions = validate_impressions(pl.read_parquet(path / "impressions.parquet"), str(path / "impressions.parquet"))
    return Dataset(items=items, impressions=impressions, manifest=manifest, path=path)


def item_text(items: pl.DataFrame, fields: tuple[str, ...] = (Col.TITLE, Col.ABSTRACT, Col.CATEGORY)) -> pl.Series:
    """The text an encoder reads for each item: the chosen fields joined with '. ', nulls skipped."""
    return items.select(
        pl.concat_str([pl.col(f).cast(pl.String()) for f in fields], separator=". ", ignore_nulls=True).fill_null("").alias("text")
    )["text"]
