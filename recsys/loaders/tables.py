"""Read a user's CSV or Parquet table with each row's line number, and parse its timestamps.

CSV is read as strings (no type guessing) so every value is checked the same way. A file Polars
cannot read (rows with too many fields, bytes that are not UTF-8, broken quoting) is re-read line
by line with the ``csv`` module (the rare bad path), so each bad line is named or skipped and
counted. On that path a record must fit on one line: a quoted field spanning lines reads as broken
quoting.
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from recsys.errors import DataError
from recsys.loaders.rejects import LINE, BadRows
from recsys.loaders.tsv import bad_utf8_field

# Plain numbers are Unix epoch seconds.
_EPOCH_SECONDS = r"^\s*-?\d+(\.\d+)?\s*$"
# Epoch seconds of 0001-01-01 and 9999-12-31 23:59:59: times outside are bad values, not overflows.
_MIN_EPOCH, _MAX_EPOCH = -62_135_596_800, 253_402_300_799
_INFER_TRIES = 100
BAD_UTF8 = "invalid UTF-8"
BAD_QUOTES = 'malformed quoting (a field with " must be quoted whole, quotes doubled)'


def _bad_quotes(line: str, sep: str) -> int | None:
    """The 0-based field of ``line`` that breaks RFC-4180 quoting (a bare ``"`` inside a field, text
    after a closing quote, a quote left open at the end of the line), or None if the line is fine."""
    in_quotes, field_start, field, i = False, True, 0, 0
    while i < len(line):
        c = line[i]
        if in_quotes:
            if c == '"':
                if line[i + 1 : i + 2] == '"':
                    i += 2
                    continue
                in_quotes = False
                if i + 1 < len(line) and line[i + 1] != sep:
                    return field
        elif c == '"':
            if not field_start:
                return field
            in_quotes = True
        field_start = not in_quotes and c == sep
        field += field_start
        i += 1
    return field if in_quotes else None


def _field_name(header: list[str], index: int | None) -> str | None:
    return header[index] if index is not None and index < len(header) else None


def _read_header(path: Path, sep: str) -> list[str]:
    """The column names of a CSV file's first line.

    Raises:
        DataError: the header is not UTF-8, breaks quoting, or names a column twice (which one would be read?).
    """
    with path.open("rb") as fh:
        first = (fh.readline().splitlines() or [b""])[0]
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, 1, None, f"{BAD_UTF8} in the header") from None
    if _bad_quotes(text, sep) is not None:
        raise DataError(path, 1, None, f"{BAD_QUOTES} in the header")
    header = next(csv.reader([text], delimiter=sep), [])
    twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if twice is not None:
        raise DataError(path, 1, twice, "column name appears twice in the header")
    return header


def _read_csv_by_line(path: Path, sep: str, bad: BadRows) -> pl.DataFrame:
    """The bad path: decode and parse each line on its own; bad lines are reported (raise) or skipped."""
    raw_lines = path.read_bytes().splitlines()
    header = _read_header(path, sep)
    rows: list[list[str | None]] = []
    for line, raw in enumerate(raw_lines[1:], start=2):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.report(path, line, bad_utf8_field(raw, header, sep.encode()), BAD_UTF8, raw.decode("utf-8", errors="replace"), whole_line=True)
            continue
        quote_field = _bad_quotes(text, sep)
        if quote_field is not None:
            bad.report(path, line, _field_name(header, quote_field), BAD_QUOTES, text, whole_line=True)
            continue
        fields: list[str | None] = list(next(csv.reader([text], delimiter=sep), []))
        if not fields:  # an empty line: a row of nulls, as Polars reads it
            fields = [None] * len(header)
        if len(fields) != len(header):
            bad.report(path, line, None, f"wrong number of fields (expected {len(header)})", f"{len(fields)} fields")
            continue
        rows.append([None if f == "" else f for f in fields] + [line])  # type: ignore[list-item]
    schema = {name: pl.String() for name in header} | {LINE: pl.Int64()}
    return pl.DataFrame(rows, schema=schema, orient="row")


def read_parquet(path: Path) -> pl.DataFrame:
    """A user's Parquet file, read by PyArrow and checked in full before Polars sees it.

    Polars' own reader aborts the whole process on some damaged files (it tries to allocate a length read
    from a flipped byte), and panics on strings that are not UTF-8; PyArrow raises, and ``validate(full=True)``
    finds bad UTF-8 and offsets.

    Raises:
        DataError: the file is not a readable Parquet file.
    """
    try:
        table = pq.read_table(path)
        table.validate(full=True)
        return pl.from_arrow(table)  # type: ignore[return-value]
    except (Exception, pl.exceptions.PanicException) as exc:  # Arrow, Polars (a panic too) or OS errors all mean this
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(path, None, None, f"not a readable Parquet file ({first[:200]})") from None


def read_table(path: Path, required: tuple[str, ...], bad: BadRows) -> pl.DataFrame:
    """A CSV (header row) or Parquet table with :data:`LINE` = 1-based line (CSV) or row (Parquet).

    Args:
        path: ``.csv``/``.tsv`` or ``.parquet`` file.
        required: columns that must exist.
        bad: the bad-row policy (lines with too many fields, invalid UTF-8 or broken quoting).

    Returns:
        The table; CSV columns are strings.

    Raises:
        DataError: missing, empty or unreadable file, unknown extension, missing column, bad lines (raise mode).
    """
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = read_parquet(path).with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64()))
    elif suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        _read_header(path, sep)
        try:
            df = pl.read_csv(path, separator=sep, infer_schema=False)
            df = df.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64()))
        except pl.exceptions.PolarsError:
            df = _read_csv_by_line(path, sep, bad)
    else:
        raise DataError(path, None, None, f"unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    if df.height == 0:
        raise DataError(path, None, None, "file has no rows")
    for name in required:
        if name not in df.columns:
            raise DataError(path, None, name, f"column is missing (columns: {', '.join(repr(c) for c in df.columns if c != LINE)})")
    return df


def _in_range(micros: pl.Series) -> pl.Series:
    """Microseconds since the epoch (integer or float) as ``Datetime("us")``; NaN, infinities and
    years outside 1-9999 become null (they would overflow, or break every later date conversion)."""
    ok = (micros >= _MIN_EPOCH * 10**6) & (micros <= _MAX_EPOCH * 10**6)
    if micros.dtype.is_float():
        ok = ok & micros.is_finite()
    return pl.select(pl.when(ok).then(micros)).to_series().cast(pl.Int64()).cast(pl.Datetime("us")).alias(micros.name)


def _to_datetime(text: pl.Series, time_zone: str | None = None) -> pl.Series:
    """``str.to_datetime`` with the format inferred from the first value it can infer one from
    (Polars infers from the first value only, and raises if it cannot); other formats become null."""
    try:
        return text.str.to_datetime(strict=False, time_unit="us", time_zone=time_zone)
    except pl.exceptions.PolarsError:
        pass
    for value in text.drop_nulls().unique(maintain_order=True).head(_INFER_TRIES):
        try:
            pl.Series([value]).str.to_datetime(time_unit="us", time_zone=time_zone)
        except pl.exceptions.PolarsError:
            continue
        return pl.concat([pl.Series([value]), text]).str.to_datetime(strict=False, time_unit="us", time_zone=time_zone)[1:]
    return pl.Series(text.name, [None] * text.len(), dtype=pl.Datetime("us", time_zone))


def parse_times(column: pl.Series) -> pl.Series:
    """Timestamps as naive UTC ``Datetime("us")``; unparseable or out-of-range values become null.

    Accepts datetimes (time-zone aware ones are converted to UTC), numbers and numeric strings
    (Unix epoch seconds) and ISO-8601 strings (with or without offset), each string by its own form.
    Years must lie in 1-9999.
    """
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return _in_range(column.cast(pl.Datetime("us")).cast(pl.Int64()))
    if isinstance(dtype, pl.Date):
        return parse_times(column.cast(pl.Datetime("us")))
    if dtype.is_numeric():
        return _in_range(column.cast(pl.Float64()) * 1e6)
    if dtype != pl.String():
        return pl.Series(column.name, [None] * column.len(), dtype=pl.Datetime("us"))
    text = column.str.strip_chars()
    if text.drop_nulls().str.contains(_EPOCH_SECONDS).all():
        return parse_times(text.cast(pl.Float64(), strict=False))
    # Each value is parsed by its form: epoch seconds, aware or naive text (one format inferred per form).
    epoch = text.str.contains(_EPOCH_SECONDS).fill_null(False)
    aware = text.str.contains(r"(Z|[+-]\d\d:?\d\d)$").fill_null(False) & ~epoch
    naive = text.is_not_null() & ~epoch & ~aware
    out = pl.Series(column.name, [None] * column.len(), dtype=pl.Datetime("us"))
    if epoch.any():
        out = out.scatter(epoch.arg_true(), parse_times(text.filter(epoch).cast(pl.Float64())))
    if aware.any():
        out = out.scatter(aware.arg_true(), _to_datetime(text.filter(aware), "UTC").dt.replace_time_zone(None))
    if naive.any():
        out = out.scatter(naive.arg_true(), _to_datetime(text.filter(naive)))
    return out
