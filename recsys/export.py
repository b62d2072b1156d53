"""Export ranked lists (or any table) to files and databases, atomically, replacing earlier runs.

Targets (:func:`write`)::

    recs.parquet | recs.jsonl | recs.ndjson | recs.csv       by suffix; temp file then rename
    duckdb:///abs/path/recs.db?table=recs                     DuckDB file (duckdb://rel/path.db for a
                                                              relative path); table defaults to "recs"
    postgresql://user:pw@host:5432/db?table=schema.recs       PostgreSQL (also postgres://, and libpq
                                                              query options such as ?host=/socket/dir)

A database export loads a staging table in one transaction (COPY for PostgreSQL), then drops the old
table and renames the staging table into place before committing: readers see the old rows or the new
ones, never a mix, and a failure leaves the old table untouched. Re-running replaces the table. Grants
and indexes on the old table are not carried over; a view that depends on it makes the swap fail.

:func:`write_mind_prediction` writes MIND's leaderboard ``prediction.txt``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import polars as pl
import pyarrow.parquet as pq

from recsys.data import Col, Split
from recsys.errors import DataError, RecsysError
from recsys.io import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "recs"
BATCH_ROWS = 100_000
FILE_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

_PG_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "text", pl.Categorical: "text", pl.Boolean: "boolean",
    pl.Int8: "smallint", pl.Int16: "smallint", pl.UInt8: "smallint", pl.Int32: "integer", pl.UInt16: "integer",
    pl.Int64: "bigint", pl.UInt32: "bigint", pl.Float32: "real", pl.Float64: "double precision", pl.Date: "date",
}


@dataclass(frozen=True)
class ExportSummary:
    """What was written: the target (password hidden), its kind, table, rows and seconds taken."""

    target: str
    kind: str
    rows: int
    columns: list[str]
    table: str | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        where = f"{self.target} (table {self.table})" if self.table else self.target
        return f"{self.rows:,} rows to {where} as {self.kind} in {self.seconds:.2f} s"


def _redact(target: str) -> str:
    parts = urlsplit(target)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return target


def _source(recs: pl.DataFrame | str | Path) -> tuple[pl.Schema, int, Iterator[pl.DataFrame]]:
    """Schema, row count and batches of the input: a frame, or a Parquet file read batch by batch."""
    if isinstance(recs, pl.DataFrame):
        return recs.schema, recs.height, recs.iter_slices(BATCH_ROWS)
    path = Path(recs)
    if path.suffix.lower() != ".parquet" or not path.exists():
        raise DataError(path, None, None, "input to export must be an existing .parquet file (e.g. from `recsys recommend`)")
    pf = pq.ParquetFile(path)
    batches = (pl.DataFrame(pl.from_arrow(b)) for b in pf.iter_batches(batch_size=BATCH_ROWS))
    return pl.scan_parquet(path).collect_schema(), pf.metadata.num_rows, batches


def write(recs: pl.DataFrame | str | Path, target: str | Path) -> ExportSummary:
    """Write `recs` to `target`, replacing what a previous run wrote there.

    Args:
        recs: The table, or the path of a Parquet file (streamed in batches to databases).
        target: A file path (.parquet, .jsonl/.ndjson, .csv) or a ``duckdb://`` / ``postgresql://`` URL.

    Returns:
        An :class:`ExportSummary`.

    Raises:
        RecsysError: Unknown target form, or a database error (with the target named).
        DataError: Input file missing, or a column type the database cannot hold.
    """
    start = time.perf_counter()
    target = str(target)
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    schema, rows, batches = _source(recs)
    if scheme == "duckdb":
        kind, table = "duckdb", _write_duckdb(schema, batches, target)
    elif scheme in ("postgresql", "postgres"):
        kind, table = "postgresql", _write_postgres(schema, batches, target)
    elif scheme:
        raise RecsysError(f"unknown export target {_redact(target)!r}; use a .parquet/.jsonl/.csv path, duckdb:///path.db?table=NAME or postgresql://...")
    else:
        kind, table = _write_file(recs, Path(target)), None
    summary = ExportSummary(_redact(target), kind, rows, list(schema.names()), table, round(time.perf_counter() - start, 3))
    logger.info("exported %d rows to %s", rows, summary.target)
    return summary


# --- files ---------------------------------------------------------------------------------------


def _write_file(recs: pl.DataFrame | str | Path, path: Path) -> str:
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise RecsysError(f"{path}: unknown export format {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    # A lazy frame streams a Parquet input to the output without loading it whole.
    lf = recs.lazy() if isinstance(recs, pl.DataFrame) else pl.scan_parquet(recs)
    with atomic_path(path) as tmp:
        if kind == "parquet":
            lf.sink_parquet(tmp, compression="zstd")
        elif kind == "jsonl":
            lf.sink_ndjson(tmp)
        else:
            lf.sink_csv(tmp)
    return kind


# --- databases -----------------------------------------------------------------------------------


def _table_name(target: str) -> tuple[str, dict[str, str]]:
    """The ``table`` query option (default :data:`DEFAULT_TABLE`) and the remaining options."""
    options = dict(parse_qsl(urlsplit(target).query))
    table = options.pop("table", DEFAULT_TABLE)
    if not table or any(not part.replace("_", "").isalnum() for part in table.split(".")) or table.count(".") > 1:
        raise RecsysError(f"bad table name {table!r} in {_redact(target)!r}; use letters, digits and _ (optionally schema.table)")
    return table, options


def _write_duckdb(schema: pl.Schema, batches: Iterator[pl.DataFrame], target: str) -> str:
    import duckdb

    table, _ = _table_name(target)
    parts = urlsplit(target)
    db_path = Path(parts.netloc + parts.path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    schema_name, _, name = table.rpartition(".")
    staging = f"{name}__staging"
    qualified = (f'"{schema_name}".' if schema_name else "") + f'"{name}"'
    qualified_staging = (f'"{schema_name}".' if schema_name else "") + f'"{staging}"'
    con = duckdb.connect(str(db_path))
    try:
        con.begin()
        con.register("_export_batch", pl.DataFrame(schema=schema).to_arrow())
        con.execute(f"CREATE OR REPLACE TABLE {qualified_staging} AS SELECT * FROM _export_batch")
        for batch in batches:
            con.register("_export_batch", batch.to_arrow())
            con.execute(f"INSERT INTO {qualified_staging} SELECT * FROM _export_batch")
        con.unregister("_export_batch")
        con.execute(f"DROP TABLE IF EXISTS {qualified}")
        con.execute(f'ALTER TABLE {qualified_staging} RENAME TO "{name}"')
        con.commit()
    except duckdb.Error as exc:
        con.rollback()
        raise RecsysError(f"export to {target} failed: {exc}") from exc
    except BaseException:
        con.rollback()
        raise
    finally:
        con.close()
    return table


def _pg_type(name: str, dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    pg = _PG_TYPES.get(type(dtype))
    if pg is None:
        raise DataError("export", None, name, f"type {dtype} has no PostgreSQL column type here; cast it (e.g. to String) first")
    return pg


def _write_postgres(schema: pl.Schema, batches: Iterator[pl.DataFrame], target: str) -> str:
    import psycopg
    from psycopg import sql

    table, options = _table_name(target)
    # Rebuilt by hand: urlunsplit would drop the empty host of postgresql:///db?host=/socket/dir.
    conninfo = target.split("?", 1)[0] + (f"?{urlencode(options)}" if options else "")
    schema_name, _, name = table.rpartition(".")
    ident = (lambda n: sql.Identifier(schema_name, n)) if schema_name else sql.Identifier
    staging = f"{name}__staging"
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(c, t))) for c, t in schema.items())
    names = sql.SQL(", ").join(sql.Identifier(c) for c in schema.names())
    try:
        with psycopg.connect(conninfo) as conn:  # commits on success, rolls back on any exception
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging)))
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident(staging), columns))
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(ident(staging), names)
                with cur.copy(copy_sql) as copy:
                    for batch in batches:
                        # Polars' CSV: nulls unquoted empty, empty strings quoted, ISO timestamps,
                        # shortest round-trip floats; exactly what COPY's csv format reads back.
                        copy.write(batch.write_csv(include_header=False))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(name)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), sql.Identifier(name)))
    except psycopg.Error as exc:
        raise RecsysError(f"export to {_redact(target)} failed: {str(exc).strip()}") from exc
    return table


# --- MIND leaderboard ----------------------------------------------------------------------------


def _raw_impression_id(ids: pl.Expr) -> pl.Expr:
    """MIND's own id: the loader prefixes ``<split>-``; strip it."""
    pattern = "^(" + "|".join(Split.ALL) + ")-"
    return ids.cast(pl.String).str.replace(pattern, "")


def write_mind_prediction(df: pl.DataFrame, score_col: str, path: str | Path) -> Path:
    """Write MIND's submission file: ``ImpressionID [r1,r2,...]`` per impression.

    ``r_i`` is the rank (1 = top) of the i-th candidate in the impression's original candidate order
    (Col.POSITION when present, else row order); equal scores rank by position. Impressions are in
    original order: ascending MIND id when all ids are numbers, else first appearance.

    Args:
        df: Long format with Col.IMPRESSION, `score_col` and optionally Col.POSITION.
        score_col: The model's score.
        path: Output file (written atomically).

    Returns:
        `path`.

    Raises:
        DataError: Missing columns, null scores, or ids of several splits mixed.

    >>> import tempfile, os
    >>> df = pl.DataFrame({"impression_id": ["test-2", "test-2", "test-10", "test-10", "test-10"],
    ...                    "position": [0, 1, 0, 1, 2], "s": [0.1, 0.9, 0.5, 0.7, 0.2]})
    >>> out = write_mind_prediction(df, "s", os.path.join(tempfile.mkdtemp(), "prediction.txt"))
    >>> print(out.read_text(), end="")
    2 [2,1]
    10 [2,1,3]
    """
    for name in (Col.IMPRESSION, score_col):
        if name not in df.columns:
            raise DataError("prediction input", None, name, "column is missing")
    if df[score_col].null_count():
        raise DataError("prediction input", None, score_col, "null scores; every candidate needs a score")
    raw = df.select(_raw_impression_id(pl.col(Col.IMPRESSION)).n_unique().alias("raw"), pl.col(Col.IMPRESSION).n_unique()).row(0)
    if raw[0] != raw[1]:
        raise DataError("prediction input", None, Col.IMPRESSION, "impressions of several splits share MIND ids; write one split per file")
    position = pl.col(Col.POSITION) if Col.POSITION in df.columns else pl.int_range(pl.len()).over(Col.IMPRESSION)
    d = df.select(
        _raw_impression_id(pl.col(Col.IMPRESSION)).alias("id"),
        position.alias("pos"),
        pl.col(score_col).alias("s"),
        pl.int_range(pl.len()).alias("row"),
    )
    d = d.sort("id", "pos", maintain_order=True).with_columns(
        rank=pl.col("s").rank("ordinal", descending=True).over("id")  # ties: the earlier position first
    )
    per = d.group_by("id", maintain_order=True).agg(pl.col("row").min(), pl.col("rank").cast(pl.String).str.join(","))
    numeric = per["id"].str.contains(r"^\d+$").all()
    per = per.sort(pl.col("id").cast(pl.Int64) if numeric else pl.col("row"))
    lines = per.select(pl.format("{} [{}]", "id", "rank").alias("line"))["line"]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return Path(path)
