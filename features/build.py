"""The feature builder: one row per (impression, candidate) with point-in-time behavioural features.

One code path serves training (labelled logs), evaluation (replayed logs) and batch recommendation
(requests without labels), so training and serving features cannot drift apart. The *event log* (the
dataset's impressions, all splits) is the only source of behaviour; the *rows* to featurise default to
the same impressions but can be any impressions-format file (requests with null labels, sampled rows).

Stages, each bounded in memory whatever the length of the log:

1. Polars shapes rows and log into long format in table order, (timestamp, impression_id, position),
   batch by batch (:mod:`features.shape`); a file in another order is sorted by DuckDB, out of core
   (spilling to ``temp_dir`` beyond ``memory_limit``).
2. The rows and the log's events stream through the families in time order, one segment of
   timestamps at a time (:mod:`features.families`); what carries from one segment to the next is per
   key totals and the events of the longest window (:mod:`features.timeline`). Segments are sized from
   ``memory_limit``.
3. Each segment's rows, already in table order, are appended to the output with the columns of
   :mod:`features.registry`: nothing is sorted or joined at the end. The file is renamed onto ``out``.

Point in time: every behavioural feature at time t counts only events with timestamp < t; an event at t,
including the impression's own label, never counts.
"""

from __future__ import annotations

import logging
import os
import re
import resource as rusage
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import polars as pl
from tqdm.auto import tqdm

from features import shape
from features.families import IS_EVENT, IS_QUERY, Behaviour
from features.keys import Keys
from features.overlap import ParquetAppender, ReadAhead
from features.registry import BEHAVIOUR, CLICK_PROB, FAMILIES, TEXT, TEXT_FEATURES, Feature, registry
from recsys.data import IMPRESSIONS_SCHEMA, OPTIONAL_IMPRESSION_COLUMNS, Col
from recsys.errors import DataError, RecsysError
from recsys.io import atomic_path, read_json, write_json
from recsys.resources import resource

log = logging.getLogger(__name__)

_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?)B$", re.IGNORECASE)
_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# Memory model of the builder's process (measured: benchmarks/results/features_scale.md). What the process
# holds already (libraries) and a reserve (the longest window's events, key dictionaries, allocator slack)
# come off `memory_limit`; the rest sizes the segments, at BYTES_PER_ROW each, and DuckDB's sort (DUCKDB_SHARE of it),
# which runs before them.
MIN_MEMORY_LIMIT = 64 * 2**20
RESERVE = 384 * 2**20
BYTES_PER_ROW = 1600
MIN_SEGMENT_ROWS, MAX_SEGMENT_ROWS = 10_000, 500_000  # below: per-segment overhead; above: slower (pipeline fill and drain, cache misses)
MIN_DUCKDB_MEMORY = 16 * 2**20
DUCKDB_SHARE = 0.5  # of the working memory, for DuckDB's sort: it allocates beyond its limit, Polars keeps what shaping freed
_KEYS = [Col.IMPRESSION, Col.USER, Col.ITEM, Col.POSITION, Col.TIME, Col.SPLIT, Col.LABEL]
_DICTIONARY = [Col.IMPRESSION, Col.USER, Col.ITEM, Col.SPLIT]  # dictionary-encoded in the output; numbers compress without


MAX_THREADS = 1024  # DuckDB starts every thread it is given: beyond this a typo exhausts the machine


@dataclass
class FeatureConfig:
    """How features are computed and how much the builder may use.

    Attributes:
        windows_hours: trailing windows of the windowed item features, in hours.
        ctr_prior: prior CTR of the smoothed CTRs: (clicks + prior * weight) / (impressions + weight).
        ctr_prior_weight: weight of the prior, in pseudo-impressions.
        memory_limit: the peak memory of the builder's process ("4GB", at least 64MB): what it holds already and
            :data:`RESERVE` come off, the rest sizes the segments streamed through the families and DuckDB's
            sort of an unordered input (spilling to `temp_dir` beyond). Below about 1GB the process can
            exceed it (libraries alone take some 200MB).
        temp_dir: scratch directory for intermediate files and spills (default: system temp).
        threads: DuckDB threads (default: all cores); Polars uses its own pool (``POLARS_MAX_THREADS``).
        segment_rows: rows streamed through the families at a time (default: from `memory_limit`).
        families: the feature families the ranker reads (``behaviour``, ``text``, ``retrieval``, ``pairs``;
            see :mod:`features.registry`); this builder writes the behaviour family.
    """

    windows_hours: tuple[int, ...] = (1, 6, 24)
    ctr_prior: float = 0.05
    ctr_prior_weight: float = 20.0
    memory_limit: str = resource("4GB")
    temp_dir: str | None = resource(None)
    threads: int | None = resource(None)
    segment_rows: int | None = resource(None)
    families: tuple[str, ...] = (BEHAVIOUR, TEXT)

    def __post_init__(self) -> None:
        windows = tuple(int(h) for h in self.windows_hours)
        if not windows or min(windows) <= 0 or len(set(windows)) != len(windows):
            raise RecsysError(f"FeatureConfig.windows_hours must be distinct positive hours, got {self.windows_hours}")
        self.windows_hours = tuple(sorted(windows))
        if not 0.0 <= self.ctr_prior <= 1.0:
            raise RecsysError(f"FeatureConfig.ctr_prior must be in [0, 1], got {self.ctr_prior}")
        if self.ctr_prior_weight <= 0:
            raise RecsysError(f"FeatureConfig.ctr_prior_weight must be > 0, got {self.ctr_prior_weight}")
        if memory_bytes(self.memory_limit) < MIN_MEMORY_LIMIT:
            raise RecsysError(f"FeatureConfig.memory_limit (--memory-limit) must be at least {MIN_MEMORY_LIMIT // 2**20}MB, got {self.memory_limit!r}")
        if self.temp_dir is not None:
            self.temp_dir = str(self.temp_dir)
        if self.segment_rows is not None and self.segment_rows < 1:
            raise RecsysError(f"FeatureConfig.segment_rows must be >= 1, got {self.segment_rows}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise RecsysError(f"FeatureConfig.threads (--threads) must be in [1, {MAX_THREADS}], got {self.threads}")
        self.families = tuple(self.families)
        if not self.families or set(self.families) - set(FAMILIES):
            raise RecsysError(f"FeatureConfig.families must be a non-empty subset of {FAMILIES}, got {self.families}")


@dataclass
class FeatureSummary:
    """What :func:`build_features` wrote."""

    out: str
    rows: int
    impressions: int
    features: list[str]
    null_shares: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _check_impressions_file(path: Path) -> dict[str, pl.DataType]:
    """Compare a Parquet file's schema with the impressions contract; raise DataError naming the field."""
    if not path.exists():
        raise RecsysError(f"{path} does not exist")
    schema = dict(pl.read_parquet_schema(path))
    for name, dtype in IMPRESSIONS_SCHEMA.items():
        if name not in schema:
            raise DataError(path, None, name, "column is missing")
        if schema[name] != dtype:
            raise DataError(path, None, name, f"has type {schema[name]}, expected {dtype}")
    for name, dtype in {**OPTIONAL_IMPRESSION_COLUMNS, Col.SAMPLED: pl.List(pl.Boolean())}.items():
        if name in schema and schema[name] != dtype:
            raise DataError(path, None, name, f"has type {schema[name]}, expected {dtype}")
    return schema


def memory_bytes(limit: str) -> int:
    """Bytes of a memory limit such as '4GB', '512MB' or '1.5GiB' (powers of 1024, as DuckDB reads them)."""
    match = _MEMORY.match(limit)
    if not match:
        raise RecsysError(f"FeatureConfig.memory_limit must look like '4GB' or '512MB', got {limit!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)[0].lower()])


def _working_memory(cfg: FeatureConfig) -> int:
    """Bytes the builder may still take: the limit less what the process holds now and the reserve."""
    return memory_bytes(cfg.memory_limit) - _resident_bytes() - RESERVE


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak so far, in KiB (bytes on macOS)
        peak = rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _connect(cfg: FeatureConfig, scratch: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{max(int(_working_memory(cfg) * DUCKDB_SHARE), MIN_DUCKDB_MEMORY) // 2**20}MiB'")
    con.execute(f"SET temp_directory = '{shape.quote(scratch / 'duckdb')}'")
    con.execute("SET preserve_insertion_order = false")  # less memory; what must be ordered is ORDER BY'd
    con.execute("SET allocator_flush_threshold = '16MB'")  # give a finished sort's memory back to the stream
    if cfg.threads is not None:
        con.execute(f"SET threads = {int(cfg.threads)}")
    return con


class _Text:
    """Text features by (impression, candidate), looked up segment by segment from a DuckDB table."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path | None) -> None:
        self.con, self.names = con, []
        if path is None:
            return
        schema = dict(pl.read_parquet_schema(path))
        for key in (Col.IMPRESSION, Col.ITEM):
            if key not in schema:
                raise DataError(path, None, key, "column is missing from the text features")
        self.names = [name for name in TEXT_FEATURES if name in schema]
        # max() collapses duplicate keys (a candidate shown twice), which would otherwise multiply rows.
        cols = ", ".join(f"max({n})::FLOAT AS {n}" for n in self.names)
        con.execute(f"CREATE TEMP TABLE text_features AS SELECT {Col.IMPRESSION}, {Col.ITEM}, {cols} "
                    f"FROM read_parquet('{shape.quote(path)}') GROUP BY ALL")

    def join(self, rows: pl.DataFrame) -> pl.DataFrame:
        if not self.names:
            return rows
        self.con.register("wanted", rows.select(Col.IMPRESSION).unique().to_arrow())
        found = pl.from_arrow(self.con.sql(f"SELECT t.* FROM text_features AS t SEMI JOIN wanted USING ({Col.IMPRESSION})").to_arrow_table())
        self.con.unregister("wanted")
        assert isinstance(found, pl.DataFrame)
        return rows.join(found, on=[Col.IMPRESSION, Col.ITEM], how="left", maintain_order="left")


class _Stream:
    """A time-ordered stream of long-format frames, read ahead into ``pending`` and taken by timestamp."""

    def __init__(self, frames: Iterator[pl.DataFrame]) -> None:
        self._frames, self.pending, self.done = frames, pl.DataFrame(schema=shape.LONG_POLARS), False

    def fill(self, rows: int) -> pl.DataFrame:
        """Read on until at least `rows` rows are pending or the stream ends; return the pending rows."""
        parts = [self.pending]
        n = self.pending.height
        while n < rows and not self.done:
            frame = next(self._frames, None)
            self.done = frame is None
            if frame is not None:
                parts.append(frame)
                n += frame.height
        if len(parts) > 1:
            self.pending = pl.concat(parts)
        return self.pending

    def take(self, end: object | None, inclusive: bool = False) -> pl.DataFrame:
        """Remove and return the pending rows before `end` (at it too if `inclusive`; all if `end` is None)."""
        if end is None:
            cut = self.pending.height
        else:
            if inclusive:  # every row at `end`, some of which may not be read yet
                while not self.done and self.pending[Col.TIME][-1] == end:
                    self.fill(2 * self.pending.height)
            cut = self.pending[Col.TIME].search_sorted(end, side="right" if inclusive else "left")
        taken, self.pending = self.pending[:cut], self.pending[cut:]
        return taken


def segments(rows: Iterator[pl.DataFrame], events: Iterator[pl.DataFrame] | None, size: int) -> Iterator[pl.DataFrame]:
    """Rows and events merged into time-ordered segments of at most about 2 x `size` rows, never splitting a timestamp.

    Each segment flags its query rows (``_is_query``) and its events (``_is_event``). Without `events`
    the rows are the log: a labelled row not sampled is an event too. Events after the last row are never read.
    """
    streams = [_Stream(rows)] + ([_Stream(events)] if events is not None else [])
    while not streams[0].fill(size).is_empty():
        # Cut at the earliest of the streams' size-th timestamps: everything before it is read.
        ends = [s.fill(size)[Col.TIME][size - 1] for s in streams if s.fill(size).height >= size]
        end = min(ends) if ends else None  # None: every stream ended, take what is left
        taken = [s.take(end) for s in streams]
        if not any(t.height for t in taken):  # a timestamp with more rows than a segment
            taken = [s.take(end, inclusive=True) for s in streams]
        yield _flag(taken[0], taken[1] if len(taken) > 1 else None)


def _flag(rows: pl.DataFrame, events: pl.DataFrame | None) -> pl.DataFrame:
    shown = pl.col(Col.LABEL).is_not_null() & ~pl.col(Col.SAMPLED)
    if events is None:
        return rows.with_columns(pl.lit(True).alias(IS_QUERY), shown.alias(IS_EVENT))
    merged = pl.concat([rows.with_columns(pl.lit(True).alias(IS_QUERY), pl.lit(False).alias(IS_EVENT)),
                        events.filter(shown).with_columns(pl.lit(False).alias(IS_QUERY), pl.lit(True).alias(IS_EVENT))])
    return merged.sort(Col.TIME, maintain_order=True)


def segment_rows(cfg: FeatureConfig) -> int:
    """Rows per segment: ``cfg.segment_rows``, else the working memory at :data:`BYTES_PER_ROW` each, within bounds."""
    if cfg.segment_rows is not None:
        return cfg.segment_rows
    return min(max(_working_memory(cfg) // BYTES_PER_ROW, MIN_SEGMENT_ROWS), MAX_SEGMENT_ROWS)


def _ordered(path: Path, keys: Keys, history: bool, rows: int, con: duckdb.DuckDBPyConnection, scratch: Path, name: str) -> Iterator[pl.DataFrame]:
    """The impressions file in long format and table order, in batches of about `rows` rows: streamed as is
    when already ordered, else sorted out of core."""
    batches = shape.shaped_batches(path, keys, history, rows)
    if shape.in_table_order(path):
        return batches
    log.info("features: %s is not ordered by (timestamp, impression_id); sorting it", path.name)
    return shape.sorted_batches(batches, scratch, con, name, rows)


def output_features(cfg: FeatureConfig, kind: str, text: list[str]) -> list[Feature]:
    """The registry features the builder writes for this config, log kind and text columns."""
    return [
        f for f in registry(cfg.windows_hours)
        if not (f.needs_impressions and kind == "interactions") and (f.group == BEHAVIOUR or (f.family == TEXT and f.name in text))
    ]


def _projection(features: list[Feature], passthrough: list[str]) -> list[pl.Expr]:
    """The output columns: keys, pass-throughs, then features cast to their registry dtypes."""
    return [pl.col(c) for c in _KEYS + passthrough] + [pl.col(f.name).cast(f.dtype) for f in features]


def build_features(
    dataset: Path,
    out: Path,
    cfg: FeatureConfig | None = None,
    *,
    rows: Path | None = None,
    text_features: Path | None = None,
    show_progress: bool = True,
) -> FeatureSummary:
    """Build the feature table of `rows` (default: the dataset's impressions) from the dataset's event log.

    Args:
        dataset: dataset directory (items.parquet, impressions.parquet = the event log, manifest.json).
        out: output Parquet, one row per (impression, candidate), ordered by (timestamp, impression_id,
            position): keys (impression_id, user_id, item_id, position, timestamp, split), label (Int8,
            null when unlabelled), pass-through ``click_prob`` and ``is_sampled`` when the rows have them,
            then the features in registry order. ``<out stem>.json`` beside it records the config and the summary.
        cfg: feature configuration.
        rows: impressions-format Parquet to featurise (requests have null labels).
        text_features: Parquet with text features keyed by (impression_id, item_id), joined when given.
        show_progress: show a progress bar over the rows.

    Returns:
        A :class:`FeatureSummary` (rows, impressions, feature names, null share per feature).

    Raises:
        RecsysError: the dataset directory is not a dataset, or DuckDB ran out of memory (with advice).
        DataError: an input file does not match the impressions contract.
    """
    cfg = cfg or FeatureConfig()
    dataset, out = Path(dataset), Path(out)
    started = time.perf_counter()
    if not (dataset / "manifest.json").exists():
        raise RecsysError(f"{dataset} is not a recsys dataset (no manifest.json); create one with `recsys ingest` or `recsys synth`")
    kind = str(read_json(dataset / "manifest.json").get("kind", "impressions"))
    if not (dataset / "items.parquet").exists():
        raise RecsysError(f"{dataset} has no items.parquet; re-create the dataset with `recsys ingest`")
    log_path = dataset / "impressions.parquet"
    rows_path = Path(rows) if rows is not None else log_path
    _check_impressions_file(log_path)
    row_schema = _check_impressions_file(rows_path)
    passthrough = [c for c, src in ((CLICK_PROB, Col.CLICK_PROBS), (Col.SAMPLED, Col.SAMPLED)) if src in row_schema]
    items = pl.read_parquet(dataset / "items.parquet", columns=[Col.ITEM, Col.CATEGORY, Col.SUBCATEGORY, Col.PUBLISHED])

    with tempfile.TemporaryDirectory(prefix="recsys-features-", dir=cfg.temp_dir) as tmp:
        scratch = Path(tmp)
        con = _connect(cfg, scratch)
        progress = tqdm(desc="features", unit="rows", unit_scale=True, disable=not show_progress)
        queries: ReadAhead[pl.DataFrame] | None = None
        events: ReadAhead[pl.DataFrame] | None = None
        try:
            text = _Text(con, text_features)
            features = output_features(cfg, kind, text.names)
            names = [f.name for f in features]
            keys, size = Keys(items), segment_rows(cfg)
            queries = ReadAhead(_ordered(rows_path, keys, True, size, con.cursor(), scratch, "rows"))
            events = ReadAhead(_ordered(log_path, keys, False, size, con.cursor(), scratch, "log")) if rows_path != log_path else None
            with atomic_path(out) as tmp_out:
                written = _write(segments(queries, events, size), Behaviour(cfg, keys), text, tmp_out, features, passthrough, progress)
        except duckdb.OutOfMemoryException as exc:
            raise RecsysError(
                f"feature building ran out of memory at memory_limit={cfg.memory_limit}: raise it (--memory-limit), "
                f"lower --threads, or give --temp-dir a disk with room to spill ({exc})"
            ) from exc
        finally:
            for stream in (queries, events):
                if stream is not None:
                    stream.close()
            progress.close()
            con.close()
    shares = {n: round(1 - written.filled[n] / written.rows, 6) if written.rows else 0.0 for n in names}
    summary = FeatureSummary(out=str(out), rows=written.rows, impressions=written.impressions, features=names, null_shares=shares)
    summary.seconds = round(time.perf_counter() - started, 3)
    write_json({"config": asdict(cfg), "kind": kind, "summary": asdict(summary)}, out.with_suffix(".json"))
    log.info("features: %d rows, %d features in %.1f s (%.0f rows/s)", summary.rows, len(features), summary.seconds,
             summary.rows / max(summary.seconds, 1e-9))
    return summary


@dataclass
class _Written:
    rows: int = 0
    impressions: int = 0
    filled: dict[str, int] = field(default_factory=dict)  # non-null values per column


def _write(segments: Iterator[pl.DataFrame], behaviour: Behaviour, text: _Text, path: Path, features: list[Feature],
           passthrough: list[str], progress: tqdm) -> _Written:  # type: ignore[type-arg]
    """Featurise each segment and append its rows to the Parquet file `path`, counting what was written."""
    projection = _projection(features, passthrough)
    empty = pl.DataFrame(schema=shape.LONG_POLARS).with_columns(pl.lit(None, f.dtype).alias(f.name) for f in features)
    writer, written = ParquetAppender(path, empty.select(projection).to_arrow().schema, dictionary=_DICTIONARY), _Written()
    try:
        for segment in segments:
            table = text.join(behaviour.features(segment)).select(projection)
            if table.height != segment[IS_QUERY].sum():  # a join that drops or repeats rows is a bug: never publish it
                raise RecsysError(f"feature segment has {table.height} rows for {segment[IS_QUERY].sum()} (impression, candidate) pairs")
            writer.write(table.to_arrow())
            written.rows += table.height
            written.impressions += table[Col.IMPRESSION].n_unique()
            for name, count in table.select(pl.all().count()).row(0, named=True).items():
                written.filled[name] = written.filled.get(name, 0) + count
            progress.update(table.height)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return written
