"""The feature builder: one row per (impression, candidate) with point-in-time behavioural features.

One code path serves training (labelled logs), evaluation (replayed logs) and batch recommendation
(requests without labels), so training and serving features cannot drift apart. The *event log* (the
dataset's impressions, all splits) is the only source of behaviour; the *rows* to featurise default to
the same impressions but can be any impressions-format file (requests with null labels, sampled rows).

Stages:

1. Polars shapes rows and log into long format, batch by batch (:func:`recsys.data.explode_candidates`).
2. DuckDB runs one named query per feature family over those Parquet files (``features/*.sql``,
   in :data:`QUERIES` order), spilling to ``temp_dir`` beyond ``memory_limit``.
3. DuckDB writes the table, ordered by (timestamp, impression_id, position), with the columns of
   :mod:`features.registry`, to a temporary file renamed onto ``out``.

Point in time: every behavioural feature at time t counts only events with timestamp < t (see the
ASOF joins in ``item.sql``); an event at t, including the impression's own label, never counts.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.registry import BEHAVIOUR, CLICK_PROB, FAMILIES, TEXT, TEXT_FEATURES, Feature, registry
from recsys.data import IMPRESSIONS_SCHEMA, OPTIONAL_IMPRESSION_COLUMNS, Col, explode_candidates
from recsys.errors import DataError, RecsysError
from recsys.io import atomic_path, read_json, write_json
from recsys.resources import resource

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).parent
# Feature families in the order they run; each file creates the table or view it is named after.
QUERIES = ("events", "item", "category", "user", "user_category", "context")

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*[KMGT]i?B$", re.IGNORECASE)
_BATCH_IMPRESSIONS = 100_000  # impressions per Polars shaping batch: bounds the Python-side memory
_DUCKDB_TYPES = {pl.Int8(): "TINYINT", pl.Int32(): "INTEGER", pl.Float32(): "FLOAT"}

# The long format both rows and log are shaped into (stage 1).
_LONG_SCHEMA = pa.schema([
    (Col.IMPRESSION, pa.string()), (Col.USER, pa.string()), (Col.ITEM, pa.string()), (Col.POSITION, pa.int32()),
    (Col.TIME, pa.timestamp("us")), (Col.SPLIT, pa.string()), (Col.LABEL, pa.int8()),
    (CLICK_PROB, pa.float32()), (Col.SAMPLED, pa.bool_()),
])


MAX_THREADS = 1024  # DuckDB starts every thread it is given: beyond this a typo exhausts the machine


@dataclass
class FeatureConfig:
    """How features are computed and how much the builder may use.

    Attributes:
        windows_hours: trailing windows of the windowed item features, in hours.
        ctr_prior: prior CTR of the smoothed CTRs: (clicks + prior * weight) / (impressions + weight).
        ctr_prior_weight: weight of the prior, in pseudo-impressions.
        memory_limit: DuckDB memory limit ("4GB"); beyond it DuckDB spills to `temp_dir`.
        temp_dir: scratch directory for intermediate files and spills (default: system temp).
        threads: DuckDB threads (default: all cores).
        families: the feature families the ranker reads (``behaviour``, ``text``, ``retrieval``, ``pairs``;
            see :mod:`features.registry`); this builder writes the behaviour family.
    """

    windows_hours: tuple[int, ...] = (1, 6, 24)
    ctr_prior: float = 0.05
    ctr_prior_weight: float = 20.0
    memory_limit: str = resource("4GB")
    temp_dir: str | None = resource(None)
    threads: int | None = resource(None)
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
        if not _MEMORY.match(self.memory_limit):
            raise RecsysError(f"FeatureConfig.memory_limit must look like '4GB' or '512MB', got {self.memory_limit!r}")
        if self.temp_dir is not None:
            self.temp_dir = str(self.temp_dir)
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


def _shape(impressions: pl.DataFrame) -> pl.DataFrame:
    """Long format of one batch: a row per (impression, candidate) with label, position and pass-throughs."""
    long = explode_candidates(impressions).filter(pl.col(Col.ITEM).is_not_null())  # empty lists leave no row
    if Col.CLICK_PROBS in long.columns:
        long = long.rename({Col.CLICK_PROBS: CLICK_PROB})
    if Col.SAMPLED in impressions.columns:
        flags = impressions.select(
            Col.IMPRESSION, Col.SAMPLED, pl.int_ranges(pl.col(Col.SAMPLED).list.len()).cast(pl.List(pl.Int32())).alias(Col.POSITION)
        ).explode([Col.SAMPLED, Col.POSITION])
        long = long.join(flags, on=[Col.IMPRESSION, Col.POSITION], how="left", maintain_order="left")
    long = long.with_columns(
        (pl.col(Col.SAMPLED).fill_null(False) if Col.SAMPLED in long.columns else pl.lit(False)).alias(Col.SAMPLED),
        (pl.col(CLICK_PROB) if CLICK_PROB in long.columns else pl.lit(None, pl.Float32())).alias(CLICK_PROB),
    )
    return long.select(_LONG_SCHEMA.names)


def _write_long(src: Path, dst: Path) -> int:
    """Shape the impressions file `src` into long format at `dst`, batch by batch; return the row count."""
    rows = 0
    with pq.ParquetWriter(dst, _LONG_SCHEMA, compression="zstd") as writer:
        for batch in pq.ParquetFile(src).iter_batches(batch_size=_BATCH_IMPRESSIONS):
            long = _shape(pl.from_arrow(pa.Table.from_batches([batch])))  # type: ignore[arg-type]
            writer.write_table(long.to_arrow().cast(_LONG_SCHEMA))
            rows += long.height
    return rows


def _connect(cfg: FeatureConfig, scratch: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{cfg.memory_limit}'")
    con.execute(f"SET temp_directory = '{scratch / 'duckdb'}'")
    con.execute("SET preserve_insertion_order = false")  # less memory; the output is ORDER BY'd anyway
    if cfg.threads is not None:
        con.execute(f"SET threads = {int(cfg.threads)}")
    return con


def _parquet_view(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet('{_quote(path)}')")


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _text_view(con: duckdb.DuckDBPyConnection, path: Path | None) -> list[str]:
    """Register `text_features` (one row per (impression, item)); return the text features it provides."""
    present: list[str] = []
    if path is not None:
        schema = dict(pl.read_parquet_schema(path))
        for key in (Col.IMPRESSION, Col.ITEM):
            if key not in schema:
                raise DataError(path, None, key, "column is missing from the text features")
        present = [name for name in TEXT_FEATURES if name in schema]
    # Absent text features are typed nulls, so context.sql is the same query with or without them;
    # max() collapses duplicate keys (a candidate shown twice), which would otherwise multiply rows.
    cols = ", ".join(f"max({n})::FLOAT AS {n}" if n in present else f"NULL::FLOAT AS {n}" for n in TEXT_FEATURES)
    source = (f"read_parquet('{_quote(path)}')" if path is not None
              else f"(SELECT NULL::VARCHAR AS {Col.IMPRESSION}, NULL::VARCHAR AS {Col.ITEM} LIMIT 0)")
    con.execute(f"CREATE OR REPLACE TEMP VIEW text_features AS SELECT {Col.IMPRESSION}, {Col.ITEM}, {cols} FROM {source} GROUP BY ALL")
    return present


def render(name: str, cfg: FeatureConfig) -> str:
    """The SQL of feature family `name`: a line holding ``{hours}`` is repeated once per trailing window,
    ``{longest_hours}`` is the longest window."""
    lines = []
    for line in (SQL_DIR / f"{name}.sql").read_text().splitlines():
        lines += [line.replace("{hours}", str(h)) for h in cfg.windows_hours] if "{hours}" in line else [line]
    return "\n".join(lines).replace("{longest_hours}", str(max(cfg.windows_hours))) + "\n"


def output_features(cfg: FeatureConfig, kind: str, text: list[str]) -> list[Feature]:
    """The registry features the builder writes for this config, log kind and text columns."""
    return [
        f for f in registry(cfg.windows_hours)
        if not (f.needs_impressions and kind == "interactions") and (f.group == BEHAVIOUR or (f.family == TEXT and f.name in text))
    ]


def _projection(features: list[Feature], passthrough: list[str]) -> str:
    """SELECT list of the output: keys, pass-throughs, then features cast to their registry dtypes."""
    cols = [Col.IMPRESSION, Col.USER, Col.ITEM, Col.POSITION, Col.TIME, Col.SPLIT, Col.LABEL, *passthrough]
    cols += [f"CAST({f.name} AS {_DUCKDB_TYPES[f.dtype]}) AS {f.name}" for f in features]
    return ",\n    ".join(cols)


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
        out: output Parquet, one row per (impression, candidate): keys (impression_id, user_id, item_id,
            position, timestamp, split), label (Int8, null when unlabelled), pass-through ``click_prob``
            and ``is_sampled`` when the rows have them, then the features in registry order.
            ``<out stem>.json`` beside it records the config and the summary.
        cfg: feature configuration.
        rows: impressions-format Parquet to featurise (requests have null labels).
        text_features: Parquet with text features keyed by (impression_id, item_id), joined when given.
        show_progress: show a progress bar over the stages.

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

    with tempfile.TemporaryDirectory(prefix="recsys-features-", dir=cfg.temp_dir) as tmp:
        scratch = Path(tmp)
        stages = tqdm(total=len(QUERIES) + 2, desc="features", unit="stage", disable=not show_progress)
        stages.set_postfix_str("shape")
        n_rows = _write_long(rows_path, scratch / "rows.parquet")
        if rows_path != log_path:
            _write_long(log_path, scratch / "log.parquet")
        stages.update()

        con = _connect(cfg, scratch)
        try:
            _parquet_view(con, "candidate_rows", scratch / "rows.parquet")
            _parquet_view(con, "log_rows", scratch / ("rows.parquet" if rows_path == log_path else "log.parquet"))
            _parquet_view(con, "requests", rows_path)
            _parquet_view(con, "items", dataset / "items.parquet")
            con.execute("CREATE OR REPLACE TEMP TABLE feature_params AS SELECT ?::DOUBLE AS ctr_prior, ?::DOUBLE AS ctr_weight",
                        [cfg.ctr_prior, cfg.ctr_prior_weight])
            text = _text_view(con, text_features)
            for name in QUERIES:
                stages.set_postfix_str(name)
                t0 = time.perf_counter()
                con.execute(render(name, cfg))
                log.info("features: %s in %.1f s", name, time.perf_counter() - t0)
                stages.update()

            stages.set_postfix_str("write")
            features = output_features(cfg, kind, text)
            with atomic_path(out) as tmp_out:
                con.execute(
                    f"COPY (SELECT\n    {_projection(features, passthrough)}\nFROM feature_table\n"
                    f"ORDER BY {Col.TIME}, {Col.IMPRESSION}, {Col.POSITION})\n"
                    f"TO '{_quote(tmp_out)}' (FORMAT parquet, COMPRESSION zstd)"
                )
                summary = _summarise(con, tmp_out, out, [f.name for f in features])
                if summary.rows != n_rows:  # a join that drops or repeats rows is a bug; never publish its output
                    raise RecsysError(f"feature table has {summary.rows} rows for {n_rows} (impression, candidate) pairs")
        except duckdb.OutOfMemoryException as exc:
            raise RecsysError(
                f"feature building ran out of memory at memory_limit={cfg.memory_limit}: raise it (--memory-limit), "
                f"lower --threads, or give --temp-dir a disk with room to spill ({exc})"
            ) from exc
        finally:
            con.close()
        stages.update()
        stages.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    write_json({"config": asdict(cfg), "kind": kind, "summary": asdict(summary)}, out.with_suffix(".json"))
    log.info("features: %d rows, %d features in %.1f s (%.0f rows/s)", summary.rows, len(features), summary.seconds,
             summary.rows / max(summary.seconds, 1e-9))
    return summary


def _summarise(con: duckdb.DuckDBPyConnection, path: Path, out: Path, names: list[str]) -> FeatureSummary:
    counts = ", ".join([f"count(DISTINCT {Col.IMPRESSION})"] + [f"count({n})" for n in names])
    total, impressions, *filled = con.execute(f"SELECT count(*), {counts} FROM read_parquet('{_quote(path)}')").fetchone()  # type: ignore[misc]
    shares = {n: round(1 - f / total, 6) if total else 0.0 for n, f in zip(names, filled)}
    return FeatureSummary(out=str(out), rows=int(total), impressions=int(impressions), features=names, null_shares=shares)
