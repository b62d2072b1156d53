"""Read a user's CSV or Parquet table with each row's line number, and parse its timestamps.

CSV is read as strings (no type guessing) so every value is checked the same way; rows with too
many fields are found with the ``csv`` module only when Polars reports them (the rare bad path).
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from recsys.errors import DataError
from recsys.loaders.rejects import LINE, BadRows

# Plain numbers are Unix epoch seconds.
_EPOCH_SECONDS = r"^\s*-?\d+(\.\d+)?\s*$"


def _ragged_lines(path: Path, n_fields: int) -> list[int]:
    """1-based line numbers of CSV records with a field count other than ``n_fields`` (bad path only)."""
    bad = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        line = reader.line_num
        for record in reader:
            if record and len(record) != n_fields:
                bad.append(line + 1)
            line = reader.line_num
    return bad


def read_table(path: Path, required: tuple[str, ...], bad: BadRows) -> pl.DataFrame:
    """A CSV (header row) or Parquet table with :data:`LINE` = 1-based line (CSV) or row (Parquet).

    Args:
        path: ``.csv``/``.tsv`` or ``.parquet`` file.
        required: columns that must exist.
        bad: the bad-row policy (rows with too many fields).

    Returns:
        The table; CSV columns are strings.

    Raises:
        DataError: missing or empty file, unknown extension, missing column, ragged rows (raise mode).
    """
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path).with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64()))
    elif suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            df = pl.read_csv(path, separator=sep, infer_schema=False)
            ragged: list[int] = []
        except pl.exceptions.ComputeError:
            df = pl.read_csv(path, separator=sep, infer_schema=False, truncate_ragged_lines=True)
            ragged = _ragged_lines(path, df.width)
        df = df.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64()))
        if ragged:
            df = bad.drop(df, df[LINE].is_in(ragged), path, None, f"wrong number of fields (expected {df.width - 1})")
    else:
        raise DataError(path, None, None, f"unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    if df.height == 0:
        raise DataError(path, None, None, "file has no rows")
    for name in required:
        if name not in df.columns:
            raise DataError(path, None, name, f"column is missing (columns: {', '.join(c for c in df.columns if c != LINE)})")
    return df


def parse_times(column: pl.Series) -> pl.Series:
    """Timestamps as naive UTC ``Datetime("us")``; unparseable values become null.

    Accepts datetimes (time-zone aware ones are converted to UTC), numbers and numeric strings
    (Unix epoch seconds) and ISO-8601 strings (with or without offset).
    """
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return column.cast(pl.Datetime("us"))
    if dtype.is_numeric():
        return (column.cast(pl.Float64()) * 1e6).cast(pl.Int64()).cast(pl.Datetime("us"))
    text = column.cast(pl.String()).str.strip_chars()
    if text.drop_nulls().str.contains(_EPOCH_SECONDS).all():
        return parse_times(text.cast(pl.Float64(), strict=False))
    # Parse aware and naive forms separately: one format is inferred per call.
    aware = text.str.contains(r"(Z|[+-]\d\d:?\d\d)$").fill_null(False)
    out = pl.Series(column.name, [None] * column.len(), dtype=pl.Datetime("us"))
    if aware.any():
        parsed = text.filter(aware).str.to_datetime(strict=False, time_unit="us", time_zone="UTC")
        out = out.scatter(aware.arg_true(), parsed.dt.replace_time_zone(None))
    if (~aware).any():
        naive = text.filter(~aware)
        if naive.drop_nulls().len():
            out = out.scatter((~aware).arg_true(), naive.str.to_datetime(strict=False, time_unit="us"))
    return out
