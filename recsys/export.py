"""Export ranked lists (or any table) to files and databases, atomically, replacing earlier runs.

Targets (:func:`write`)::

    recs.parquet | recs.jsonl | recs.ndjson | recs.csv       by suffix; temp file then rename
    duckdb:///abs/path/recs.db?table=recs                     DuckDB file (duckdb://rel/path.db for a
                                                              relative path); table defaults to "recs"
    postgresql://user:pw@host:5432/db?table=schema.recs       PostgreSQL (also postgres://, and libpq
                                                              query options such as ?host=/socket/dir)

A database export loads a fresh staging table ``<table>__recsys_staging_<random hex>`` in one
transaction (COPY for PostgreSQL), created with a plain CREATE so it can never replace a table of
yours, then drops the old table and renames the staging table into place before committing: readers
see the old rows or the new ones, never a mix, and a failure rolls back, which discards the staging
table and leaves the old table untouched. Re-running replaces the table. Grants and indexes on the old
table are not carried over; a view that depends on it makes the swap fail. The DuckDB file is attached
as DuckDB storage whatever its suffix: an existing file that is not a DuckDB database is refused and
left as it is. Table names are letters, digits and _ (``schema.table`` allowed), always quoted;
``table=`` may be given once. See :mod:`recsys.export_target` for how URLs are read.

PostgreSQL connections are libpq's, so TLS is set in the URL as libpq reads it: ``sslmode=require``
(encrypt, do not verify the server), ``verify-ca`` (encrypt, and the server's certificate must chain to
``sslrootcert=CA.crt``), ``verify-full`` (as verify-ca, and the certificate must name the host), or
``disable``/``allow``/``prefer``; ``sslcert``, ``sslkey`` and ``sslpassword`` give a client certificate.
A server that cannot do what ``sslmode`` asks is refused with a one-line error. Without ``sslmode`` (and
without ``PGSSLMODE`` in the environment) libpq's default ``prefer`` applies: TLS when the server offers
it, otherwise plain text, and the server is never verified; an export to a host other than a unix socket
or loopback address then logs a one-line warning (:func:`recsys.export_target.tls_warning`). libpq
ignores ``sslmode`` on unix-socket connections, which never leave the machine.

``pseudonym=`` (``recsys export --pseudonymise-users``) replaces every ``user_id`` by its keyed hash on
the way out, for every target: ``hex(HMAC-SHA256(key, utf8(user_id)))`` with the key from an environment
variable (:mod:`recsys.pseudonym` says how downstream systems reproduce it). The key itself goes nowhere.

Passwords never leave this module: summaries, logs and errors show ``***`` for the password in every
form (``user:pw@``, ``?password=``, as written or percent-decoded), even inside driver messages. Driver
and file-system failures become one-line :class:`RecsysError` messages naming the target.

CSV has no list type: a list column is written as its elements joined by single spaces (``"a b c"``;
empty and null lists both become an empty field), which is how ``recsys recommend`` reads lists from
CSV. Lists whose elements are null, empty or hold whitespace, nested lists and structs are refused.

A file export writes a hidden temp file beside the target first (:func:`recsys.io.atomic_path`). One
killed midway (SIGKILL, power loss) leaves it behind, so each export to a target first removes that
target's temp files whose writer is gone: no process holds their lock, or, for temp files without
one, untouched for :data:`STALE_TEMP_SECONDS` (an hour). No other file is touched.

:func:`write_mind_prediction` writes MIND's leaderboard ``prediction.txt``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import Col, Split
from recsys.errors import DataError, RecsysError
from recsys.export_target import DEFAULT_TABLE, DbTarget, parse, redact, scheme_of, staging_name, tls_warning
from recsys.io import STALE_TEMP_SECONDS, atomic_path
from recsys.pseudonym import PseudonymKey

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TABLE", "STALE_TEMP_SECONDS", "ExportSummary", "write", "write_mind_prediction"]

BATCH_ROWS = 100_000
FILE_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_DUCKDB_ALIAS = "recsys_export_target"

_PG_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "text", pl.Categorical: "text", pl.Boolean: "boolean",
    pl.Int8: "smallint", pl.Int16: "smallint", pl.UInt8: "smallint", pl.Int32: "integer", pl.UInt16: "integer",
    pl.Int64: "bigint", pl.UInt32: "bigint", pl.Float32: "real", pl.Float64: "double precision", pl.Date: "date",
}


@dataclass(frozen=True)
class ExportSummary:
    """What was written: the target (password hidden), its kind, table, rows and seconds taken, and the
    environment variable whose key pseudonymised the user ids (None: ids as they were)."""

    target: str
    kind: str
    rows: int
    columns: list[str]
    table: str | None = None
    seconds: float = 0.0
    pseudonym_key_env: str | None = None

    def __str__(self) -> str:
        where = f"{self.target} (table {self.table})" if self.table else self.target
        users = f"; user ids pseudonymised with the key in {self.pseudonym_key_env}" if self.pseudonym_key_env else ""
        return f"{self.rows:,} rows to {where} as {self.kind} in {self.seconds:.2f} s{users}"


def _source(recs: pl.DataFrame | str | Path) -> tuple[pl.Schema, int, Iterator[pl.DataFrame]]:
    """Schema, row count and batches of the input: a frame, or a Parquet file read batch by batch."""
    if isinstance(recs, pl.DataFrame):
        return recs.schema, recs.height, recs.iter_slices(BATCH_ROWS)
    path = Path(recs)
    if path.suffix.lower() != ".parquet" or not path.is_file():
        raise DataError(path, None, None, "input to export must be an existing .parquet file (e.g. from `recsys recommend`)")
    try:
        pf = pq.ParquetFile(path)
        schema = pl.scan_parquet(path).collect_schema()
    except (pa.ArrowException, pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(path, None, None, f"cannot read it as Parquet: {' '.join(str(exc).split())}") from exc
    batches = (pl.DataFrame(pl.from_arrow(b)) for b in pf.iter_batches(batch_size=BATCH_ROWS))
    return schema, pf.metadata.num_rows, batches


def _pseudonymised(schema: pl.Schema, pseudonym: PseudonymKey, source: object) -> tuple[pl.Schema, pl.Expr]:
    """The output schema and the expression that replaces user ids by their pseudonyms.

    Raises:
        DataError: No user id column, or one whose values are not text or integers.
    """
    dtype = schema.get(Col.USER)
    if dtype is None:
        raise DataError(source, None, Col.USER, "column is missing; there are no user ids to pseudonymise")
    if not (dtype in (pl.String(), pl.Categorical(), pl.Null()) or dtype.is_integer()):
        raise DataError(source, None, Col.USER, f"has type {dtype}; only text or integer ids can be pseudonymised")
    return pl.Schema({**schema, Col.USER: pl.String()}), pseudonym.expr(Col.USER)


def write(recs: pl.DataFrame | str | Path, target: str | Path, *, pseudonym: PseudonymKey | None = None) -> ExportSummary:
    """Write `recs` to `target`, replacing what a previous run wrote there.

    Args:
        recs: The table, or the path of a Parquet file (streamed in batches to databases).
        target: A file path (.parquet, .jsonl/.ndjson, .csv) or a ``duckdb://`` / ``postgresql://`` URL
            (PostgreSQL: libpq options such as ``sslmode=verify-full&sslrootcert=CA.crt`` pass through).
        pseudonym: Replace ``user_id`` by ``hex(HMAC-SHA256(key, utf8(user_id)))`` with this key
            (:meth:`PseudonymKey.from_env`); None writes the ids as they are.

    Returns:
        An :class:`ExportSummary` (password hidden; it names the key's variable, never the key).

    Raises:
        RecsysError: Unknown or malformed target, or a database or file-system failure, including a
            server that refuses the TLS that ``sslmode`` asks for (one line, target named, password hidden).
        DataError: Input file missing or unreadable, a column the target cannot hold, or (with
            `pseudonym`) no user id column.
    """
    start = time.perf_counter()
    target = str(target)
    scheme = scheme_of(target)
    if scheme and scheme not in ("duckdb", "postgresql", "postgres"):
        raise RecsysError(f"unknown export target {redact(target)!r}; use a .parquet/.jsonl/.csv path, duckdb:///path.db?table=NAME or postgresql://...")
    db = parse(target) if scheme else None  # a bad URL fails before any reading or connecting
    schema, rows, batches = _source(recs)
    replace: list[pl.Expr] = []
    if pseudonym is not None:
        schema, hashed = _pseudonymised(schema, pseudonym, recs if isinstance(recs, (str, Path)) else "export input")
        replace.append(hashed)
        batches = (b.with_columns(hashed) for b in batches)
    if db is None:
        kind, table, shown = _write_file(recs, schema, Path(target), replace), None, target
    else:
        warning = tls_warning(db)
        if warning:
            logger.warning(warning)
        writer = _write_duckdb if db.kind == "duckdb" else _write_postgres
        writer(schema, batches, db)
        kind, table, shown = db.kind, db.table, db.shown
    env = pseudonym.env if pseudonym else None
    summary = ExportSummary(shown, kind, rows, list(schema.names()), table, round(time.perf_counter() - start, 3), env)
    logger.info("exported %d rows to %s%s", rows, summary.target, f" (user ids pseudonymised, key from {env})" if env else "")
    return summary


# --- files ---------------------------------------------------------------------------------------


def _csv_lists(lf: pl.LazyFrame, schema: pl.Schema, path: Path) -> pl.LazyFrame:
    """List columns as space-separated text (see the module docstring); refuse what would not read back."""
    lists = []
    for name, dtype in schema.items():
        if isinstance(dtype, (pl.List, pl.Array)) and not dtype.inner.is_nested():
            lists.append(name)
        elif dtype.is_nested():
            raise DataError(path, None, name, f"type {dtype} cannot go to CSV; export to .parquet or .jsonl")
    if not lists:
        return lf
    text = [pl.col(c).cast(pl.List(schema[c].inner)).cast(pl.List(pl.String)) for c in lists]  # type: ignore[attr-defined]
    elem = pl.element()
    bad = elem.is_null() | (elem == "") | elem.str.contains(r"\s")
    found = lf.select(t.list.eval(bad).list.any().any().alias(c) for t, c in zip(text, lists)).collect().row(0)
    for name, is_bad in zip(lists, found):
        if is_bad:
            raise DataError(path, None, name, "list elements that are null, empty or hold spaces cannot be written as space-separated CSV; export to .parquet or .jsonl")
    return lf.with_columns(t.list.join(" ").alias(c) for t, c in zip(text, lists))


def _write_file(recs: pl.DataFrame | str | Path, schema: pl.Schema, path: Path, replace: list[pl.Expr]) -> str:
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise RecsysError(f"{path}: unknown export format {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if path.is_dir():
        raise RecsysError(f"cannot export to {path}: it is a directory; give a file path")
    # A lazy frame streams a Parquet input to the output without loading it whole.
    lf = (recs.lazy() if isinstance(recs, pl.DataFrame) else pl.scan_parquet(recs)).with_columns(replace)
    if kind == "csv":
        lf = _csv_lists(lf, schema, path)
    try:
        with atomic_path(path) as tmp:
            if kind == "parquet":
                lf.sink_parquet(tmp, compression="zstd")
            elif kind == "jsonl":
                lf.sink_ndjson(tmp)
            else:
                lf.sink_csv(tmp)
    except OSError as exc:
        raise RecsysError(f"cannot export to {path}: {exc.strerror or ' '.join(str(exc).split())}") from exc
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"cannot export to {path}: {' '.join(str(exc).split())}") from exc
    return kind


# --- databases -----------------------------------------------------------------------------------


def _quote(name: str) -> str:
    """`name` as a double-quoted DuckDB identifier (inner quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _write_duckdb(schema: pl.Schema, batches: Iterator[pl.DataFrame], db: DbTarget) -> None:
    import duckdb

    path = Path(db.location)
    if path.is_dir():
        raise RecsysError(f"export to {db.shown} failed: {path} is a directory; give a database file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecsysError(f"export to {db.shown} failed: cannot create {path.parent}: {exc.strerror}") from exc
    prefix = f"{_quote(db.schema)}." if db.schema else ""
    qualified, staging = prefix + _quote(db.name), prefix + _quote(staging_name(db.name))
    con = duckdb.connect()  # in memory; the file is attached as DuckDB storage whatever its suffix
    try:
        literal = "'" + str(path).replace("'", "''") + "'"
        con.execute(f"ATTACH {literal} AS {_DUCKDB_ALIAS} (TYPE DUCKDB)")
        con.execute(f"USE {_DUCKDB_ALIAS}")
        con.begin()
        try:
            con.register("_export_batch", pl.DataFrame(schema=schema).to_arrow())
            con.execute(f"CREATE TABLE {staging} AS SELECT * FROM _export_batch")  # never OR REPLACE
            for batch in batches:
                con.register("_export_batch", batch.to_arrow())
                con.execute(f"INSERT INTO {staging} SELECT * FROM _export_batch")
            con.unregister("_export_batch")
            con.execute(f"DROP TABLE IF EXISTS {qualified}")
            con.execute(f"ALTER TABLE {staging} RENAME TO {_quote(db.name)}")
            con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.rollback()  # discards the staging table with everything else
            raise
    except duckdb.Error as exc:
        raise RecsysError(f"export to {db.shown} failed: {db.hide(str(exc))}") from None  # see _write_postgres
    finally:
        con.close()


def _pg_type(name: str, dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    pg = _PG_TYPES.get(type(dtype))
    if pg is None:
        raise DataError("export", None, name, f"type {dtype} has no PostgreSQL column type here; cast it (e.g. to String) first")
    return pg


def _write_postgres(schema: pl.Schema, batches: Iterator[pl.DataFrame], db: DbTarget) -> None:
    import psycopg
    from psycopg import sql

    ident = (lambda n: sql.Identifier(db.schema, n)) if db.schema else sql.Identifier
    staging = staging_name(db.name)
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(c, t))) for c, t in schema.items())
    names = sql.SQL(", ").join(sql.Identifier(c) for c in schema.names())
    try:
        with psycopg.connect(db.location) as conn:  # commits on success, rolls back on any exception
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident(staging), columns))  # fails, never replaces
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(ident(staging), names)
                with cur.copy(copy_sql) as copy:
                    for batch in batches:
                        # Polars' CSV: nulls unquoted empty, empty strings quoted, ISO timestamps,
                        # shortest round-trip floats; exactly what COPY's csv format reads back.
                        copy.write(batch.write_csv(include_header=False))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(db.name)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), sql.Identifier(db.name)))
    except psycopg.Error as exc:
        # `from None`: the driver's own message may quote the URL; --debug must not show it either.
        raise RecsysError(f"export to {db.shown} failed: {db.hide(str(exc))}") from None


# --- MIND leaderboard ----------------------------------------------------------------------------


def _raw_impression_id(ids: pl.Expr) -> pl.Expr:
    """MIND's own id: the loader prefixes ``<split>-``; strip it."""
    pattern = "^(" + "|".join(Split.ALL) + ")-"
    return ids.cast(pl.String).str.replace(pattern, "")


def write_mind_prediction(df: pl.DataFrame, source_score: str, path: str | Path) -> Path:
    """Write MIND's submission file: ``ImpressionID [r1,r2,...]`` per impression.

    ``r_i`` is the rank (1 = top) of the i-th candidate in the impression's original candidate order
    (Col.POSITION when present, else row order); equal scores rank by position. Impressions are in
    original order: ascending MIND id when all ids are numbers, else first appearance.

    Args:
        df: Long format with Col.IMPRESSION, `source_score` and optionally Col.POSITION.
        source_score: The model's score.
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
    for name in (Col.IMPRESSION, source_score):
        if name not in df.columns:
            raise DataError("prediction input", None, name, "column is missing")
    if df[source_score].null_count():
        raise DataError("prediction input", None, source_score, "null scores; every candidate needs a score")
    raw = df.select(_raw_impression_id(pl.col(Col.IMPRESSION)).n_unique().alias("raw"), pl.col(Col.IMPRESSION).n_unique()).row(0)
    if raw[0] != raw[1]:
        raise DataError("prediction input", None, Col.IMPRESSION, "impressions of several splits share MIND ids; write one split per file")
    position = pl.col(Col.POSITION) if Col.POSITION in df.columns else pl.int_range(pl.len()).over(Col.IMPRESSION)
    d = df.select(
        _raw_impression_id(pl.col(Col.IMPRESSION)).alias("id"),
        position.alias("pos"),
        pl.col(source_score).alias("s"),
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
