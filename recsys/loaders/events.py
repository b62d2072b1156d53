"""A generic items table + events log (CSV or Parquet) into the data contract.

Events have ``user_id``, ``item_id``, ``timestamp`` and optionally ``event`` (``impression``,
``click`` or ``purchase``; absent = every row is a click), ``request_id`` and ``split``.

* With impression events, events are grouped into impressions by ``request_id``, or, without it,
  by user sessions (a new impression after ``session_gap_minutes`` of silence). Candidates are the
  group's items in order of first appearance; a candidate's label is 1 if it was clicked/purchased.
* A request id is one impression only for one user within ``request_gap_hours``: an id reused by
  another user, or by the same user after a longer silence, starts a separate impression (ids
  ``<request_id>#1``, ``#2``, ... in time order for every part of a reused id), counted in the
  manifest as ``reused_request_ids``. Splitting never merges two users' events into one impression.
* Without impression events (a click or purchase log), each positive event is one impression of
  manifest kind ``"interactions"``: ``candidates=[item]``, ``labels=[1]``.

History = the user's positive events strictly before the impression. Splits come from the ``split``
column when present (the impression takes its first event's), else the latest ``dev_fraction`` by time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.data import ITEMS_SCHEMA, Col, Split
from recsys.errors import DataError, RecsysError
from recsys.loaders.rejects import LINE, RAISE, BadRows, check_on_bad_rows
from recsys.loaders.tables import BAD_UTF8, parse_times, read_table
from recsys.loaders.timeline import histories_before
from recsys.splits import time_labels
from recsys.loaders.writer import IngestResult, write_dataset

log = logging.getLogger(__name__)


class EventCol:
    """Columns of an events log that are not contract columns."""

    EVENT = "event"
    REQUEST = "request_id"


class Event:
    """Values of the ``event`` column; ``POSITIVE`` ones are clicks (labels and history)."""

    IMPRESSION = "impression"
    CLICK = "click"
    PURCHASE = "purchase"
    ALL = (IMPRESSION, CLICK, PURCHASE)
    POSITIVE = (CLICK, PURCHASE)


_GROUP = "_group"


@dataclass(frozen=True)
class EventsConfig:
    """How an events log becomes impressions.

    Attributes:
        session_gap_minutes: without request ids, a user's silence longer than this starts a new impression.
        dev_fraction: without a split column, the latest fraction of impressions (by time) that becomes dev.
        test_fraction: without a split column, the latest fraction that becomes test (after dev), e.g.
            for a click-only log evaluated over the whole catalogue by time.
        max_history: keep the most recent N positive events as history (None: all).
        on_bad_rows: ``"raise"`` or ``"skip"``.
        request_gap_hours: with request ids, events of one id and user further apart than this are
            separate impressions (a reused id), as are events of one id from different users.
    """

    session_gap_minutes: float = 30.0
    dev_fraction: float = 0.1
    max_history: int | None = 50
    on_bad_rows: str = RAISE
    test_fraction: float = 0.0
    request_gap_hours: float = 24.0

    def __post_init__(self) -> None:
        # Messages name the `recsys ingest events` flag too: this is where its values are first checked.
        if not (math.isfinite(self.session_gap_minutes) and self.session_gap_minutes > 0):
            raise RecsysError(f"--session-gap (session_gap_minutes) must be a positive number of minutes, got {self.session_gap_minutes}")
        if not (math.isfinite(self.request_gap_hours) and self.request_gap_hours > 0):
            raise RecsysError(f"request_gap_hours must be a positive number of hours, got {self.request_gap_hours}")
        if not (0 <= self.dev_fraction and 0 <= self.test_fraction and self.dev_fraction + self.test_fraction < 1):
            raise RecsysError(f"--dev-fraction and --test-fraction (dev_fraction, test_fraction) must be >= 0 with a sum below 1, got {self.dev_fraction}, {self.test_fraction}")
        if self.max_history is not None and self.max_history < 0:
            raise RecsysError(f"--max-history (max_history) must be >= 0, got {self.max_history}")
        check_on_bad_rows(self.on_bad_rows)


def _utf8_or_none(raw: bytes | None) -> str | None:
    try:
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _as_text(df: pl.DataFrame, column: str, path: Path, bad: BadRows) -> pl.DataFrame:
    """``column`` as stripped strings: numbers are cast, binary is decoded (invalid UTF-8 is a bad row).

    Raises:
        DataError: the column holds lists, structs or other values that are not text.
    """
    dtype = df.schema[column]
    if dtype == pl.Binary():
        decoded = pl.Series(column, [_utf8_or_none(b) for b in df[column].to_list()], dtype=pl.String())
        invalid = decoded.is_null() & df[column].is_not_null()
        df = bad.drop(df.with_columns(decoded), invalid, path, column, BAD_UTF8)
    elif dtype.is_nested() or not (dtype in (pl.String(), pl.Categorical(), pl.Boolean(), pl.Null()) or dtype.is_numeric()):
        raise DataError(path, None, column, f"has type {dtype}; expected text")
    return df.with_columns(pl.col(column).cast(pl.String()).str.strip_chars())


def _times(df: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """Parsed timestamps of ``column`` (null where bad); a column of lists or structs is an error."""
    if df.schema[column].is_nested():
        raise DataError(path, None, column, f"has type {df.schema[column]}; expected timestamps")
    return parse_times(df[column])


def _required_text(df: pl.DataFrame, column: str, path: Path, bad: BadRows) -> pl.DataFrame:
    df = _as_text(df, column, path, bad)
    return bad.drop(df, df[column].is_null() | (df[column] == ""), path, column, f"empty {column}")


def _tags(df: pl.DataFrame, path: Path, bad: BadRows) -> pl.DataFrame:
    """``tags`` as lists of text: a list column as it is (values cast to text), text split on ``|``.

    Raises:
        DataError: a list of lists or structs, or a column that is not text.
    """
    dtype = df.schema[Col.TAGS]
    if isinstance(dtype, pl.List):
        if not (dtype.inner == pl.String() or dtype.inner.is_numeric() or dtype.inner == pl.Categorical()):
            raise DataError(path, None, Col.TAGS, f"has type {dtype}; expected text or a list of text")
        return df.with_columns(pl.col(Col.TAGS).cast(pl.List(pl.String())))
    df = _as_text(df, Col.TAGS, path, bad)
    return df.with_columns(pl.col(Col.TAGS).fill_null("").str.split("|").list.eval(pl.element().str.strip_chars().filter(pl.element() != "")))


def read_items(path: Path, bad: BadRows) -> pl.DataFrame:
    """The items table: ``item_id`` and ``title`` required; other contract columns optional.

    CSV ``tags`` are ``|``-separated; ``publish_time`` is parsed like event timestamps.
    """
    df = read_table(path, (Col.ITEM, Col.TITLE), bad)
    for column in (Col.ITEM, Col.TITLE):
        df = _required_text(df, column, path, bad)
    df = bad.drop(df, df[Col.ITEM].is_duplicated() & ~df[Col.ITEM].is_first_distinct(), path, Col.ITEM, "duplicate item id", pl.col(Col.ITEM))
    for column in (Col.ABSTRACT, Col.CATEGORY, Col.SUBCATEGORY):
        if column in df.columns:
            df = _as_text(df, column, path, bad)
    if Col.TAGS in df.columns:
        df = _tags(df, path, bad)
    if Col.PUBLISHED in df.columns:
        parsed = _times(df, Col.PUBLISHED, path)
        df = bad.drop(df.with_columns(parsed.alias("_t")), parsed.is_null() & df[Col.PUBLISHED].is_not_null(), path, Col.PUBLISHED, "bad timestamp", pl.col(Col.PUBLISHED))
        df = df.with_columns(pl.col("_t").alias(Col.PUBLISHED)).drop("_t")
    return df.select(
        pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype=dtype).alias(name) for name, dtype in ITEMS_SCHEMA.items()
    )


def read_events(path: Path, bad: BadRows) -> pl.DataFrame:
    """Events with parsed, checked columns (``event`` filled with ``click`` when absent), in time order."""
    df = read_table(path, (Col.USER, Col.ITEM, Col.TIME), bad)
    for column in (Col.USER, Col.ITEM):
        df = _required_text(df, column, path, bad)
    times = _times(df, Col.TIME, path)
    df = bad.drop(df.with_columns(times.alias("_t")), times.is_null(), path, Col.TIME, "bad timestamp", pl.col(Col.TIME))
    df = df.with_columns(pl.col("_t").alias(Col.TIME)).drop("_t")
    if EventCol.EVENT in df.columns:
        df = _as_text(df, EventCol.EVENT, path, bad).with_columns(pl.col(EventCol.EVENT).str.to_lowercase())
        unknown = ~df[EventCol.EVENT].is_in(list(Event.ALL)).fill_null(False)
        df = bad.drop(df, unknown, path, EventCol.EVENT, f"unknown event value (expected one of {', '.join(Event.ALL)})", pl.col(EventCol.EVENT))
    else:
        df = df.with_columns(pl.lit(Event.CLICK).alias(EventCol.EVENT))
    if Col.SPLIT in df.columns:
        df = _as_text(df, Col.SPLIT, path, bad)
        unknown = ~df[Col.SPLIT].is_in(list(Split.ALL)).fill_null(False)
        df = bad.drop(df, unknown, path, Col.SPLIT, f"unknown split (expected one of {', '.join(Split.ALL)})", pl.col(Col.SPLIT))
    if EventCol.REQUEST in df.columns:
        df = _required_text(df, EventCol.REQUEST, path, bad)
    return df.sort(Col.TIME, LINE)


def _request_groups(events: pl.DataFrame, cfg: EventsConfig) -> tuple[pl.DataFrame, dict[str, object]]:
    """Group key per event: the request id, split by user and by silences over ``request_gap_hours``.

    Returns:
        The events with :data:`_GROUP`, and the manifest entry ``reused_request_ids``.
    """
    gap = pl.duration(microseconds=int(cfg.request_gap_hours * 3600e6))
    req, user, time = pl.col(EventCol.REQUEST), pl.col(Col.USER), pl.col(Col.TIME)
    events = events.sort(EventCol.REQUEST, Col.USER, Col.TIME, LINE)
    new = (req != req.shift()) | (user != user.shift()) | ((time - time.shift()) > gap)
    events = events.with_columns(new.fill_null(True).cum_sum().alias("_part"))
    events = events.with_columns(pl.col(Col.TIME).min().over("_part").alias("_start"))
    parts = pl.col("_part").n_unique().over(EventCol.REQUEST)
    rank = pl.struct("_start", "_part").rank("dense").over(EventCol.REQUEST)
    events = events.with_columns(pl.when(parts > 1).then(pl.format("{}#{}", req, rank)).otherwise(req).alias(_GROUP))
    reused = events.filter(parts > 1)
    entry: dict[str, object] = {
        "request_ids": reused[EventCol.REQUEST].n_unique(),
        "impressions": reused["_part"].n_unique(),
        "examples": reused[EventCol.REQUEST].unique(maintain_order=True).head(5).to_list(),
    }
    if reused.height:
        log.warning("%d request id(s) reused by another user or after %s h: split into %d impressions", entry["request_ids"], cfg.request_gap_hours, entry["impressions"])
    return events.sort(Col.TIME, LINE).drop("_part", "_start"), entry


def _group_impressions(events: pl.DataFrame, cfg: EventsConfig) -> tuple[pl.DataFrame, dict[str, object]]:
    """One row per request (or user session): user, time, candidates, labels, first split; and the
    manifest entries of the grouping."""
    extra: dict[str, object] = {}
    if EventCol.REQUEST in events.columns:
        events, extra["reused_request_ids"] = _request_groups(events, cfg)
    else:
        gap = pl.duration(microseconds=int(cfg.session_gap_minutes * 60e6))
        events = events.sort(Col.USER, Col.TIME, LINE)
        new = (pl.col(Col.USER) != pl.col(Col.USER).shift()) | ((pl.col(Col.TIME) - pl.col(Col.TIME).shift()) > gap)
        events = events.with_columns(pl.format("s{}", new.fill_null(True).cum_sum()).alias(_GROUP))
    clicked = pl.col(EventCol.EVENT).is_in(list(Event.POSITIVE))
    per_item = events.group_by(_GROUP, Col.ITEM, maintain_order=True).agg(
        pl.col(Col.USER).first(),
        pl.col(Col.TIME).min(),
        clicked.any().cast(pl.Int8()).alias(Col.LABEL),
        *([pl.col(Col.SPLIT).first()] if Col.SPLIT in events.columns else []),
    )
    return (
        per_item.group_by(_GROUP, maintain_order=True)
        .agg(
            pl.col(Col.USER).first(),
            pl.col(Col.TIME).min(),
            pl.col(Col.ITEM).alias(Col.CANDIDATES),
            pl.col(Col.LABEL).alias(Col.LABELS),
            *([pl.col(Col.SPLIT).first()] if Col.SPLIT in events.columns else []),
        )
        .rename({_GROUP: Col.IMPRESSION})
        .sort(Col.TIME, Col.IMPRESSION)
    ), extra


def build_impressions(events: pl.DataFrame, cfg: EventsConfig) -> tuple[pl.DataFrame, str, dict[str, object]]:
    """Turn checked events into contract impressions; return them, the manifest kind and extra manifest entries."""
    extra: dict[str, object] = {}
    clicks = events.filter(pl.col(EventCol.EVENT).is_in(list(Event.POSITIVE)))
    if (events[EventCol.EVENT] == Event.IMPRESSION).any():
        kind = "impressions"
        imps, extra = _group_impressions(events, cfg)
    else:
        kind = "interactions"
        imps = clicks.select(
            pl.format("e{}", LINE).alias(Col.IMPRESSION),
            Col.USER,
            Col.TIME,
            pl.concat_list(Col.ITEM).alias(Col.CANDIDATES),
            pl.concat_list(pl.lit(1, dtype=pl.Int8())).alias(Col.LABELS),
            *([Col.SPLIT] if Col.SPLIT in events.columns else []),
        )
    if Col.SPLIT not in imps.columns:
        imps = imps.with_columns(time_labels(imps[Col.TIME], cfg.dev_fraction, cfg.test_fraction))
    imps = imps.with_columns(histories_before(imps, clicks, cfg.max_history))
    return imps.select(Col.IMPRESSION, Col.USER, Col.TIME, Col.HISTORY, Col.CANDIDATES, Col.LABELS, Col.SPLIT), kind, extra


def load_events(items: Path, events: Path, out: Path, cfg: EventsConfig | None = None) -> IngestResult:
    """Ingest an items table and an events log into the dataset directory ``out``.

    Args:
        items: items table (CSV/TSV with header, or Parquet).
        events: events log (CSV/TSV with header, or Parquet).
        out: the dataset directory to write.
        cfg: grouping, split and bad-row options (defaults if None).

    Returns:
        Where the dataset is and its manifest (kind ``"impressions"`` or ``"interactions"``).

    Raises:
        DataError: bad input in raise mode, naming file, line and field.
    """
    cfg = cfg or EventsConfig()
    bad = BadRows(cfg.on_bad_rows)
    item_table = read_items(Path(items), bad)
    event_table = read_events(Path(events), bad)
    imps, kind, extra = build_impressions(event_table, cfg)
    log.info("events: %d events -> %d %s", event_table.height, imps.height, kind)
    inputs = {"items": str(items), "events": str(events)}
    with write_dataset(out, item_table, bad, "events", kind, inputs=inputs, **extra) as writer:
        writer.write(imps, Path(events))
    return IngestResult(out, writer.manifest)
