"""Stream a headerless tab-separated file as batches of string columns, each row with its line number.

Reads fixed-size byte blocks cut at line ends, so memory stays bounded by the block size whatever
the file size; splitting lines and fields is done by Polars on the whole block. No quoting: MIND
titles contain quotes but never tabs or newlines. A UTF-8 byte order mark at the start is dropped.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from recsys.errors import DataError
from recsys.loaders.rejects import LINE, BadRows

BLOCK_BYTES = 32 << 20
_FIELDS = "_fields"


def bad_utf8_field(raw: bytes, names: list[str], sep: bytes = b"\t") -> str | None:
    """The name of the field of the line ``raw`` (fields split on ``sep`` only) holding undecodable bytes."""
    for index, part in enumerate(raw.split(sep)):
        try:
            part.decode("utf-8")
        except UnicodeDecodeError:
            return names[index] if index < len(names) else None
    return None


def _decode(block: bytes, path: Path, first_line: int, bad: BadRows, names: list[str]) -> str:
    """Decode UTF-8; undecodable lines are reported (raise) or blanked out so the line count holds."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # A rare bad block: decode line by line, report the bad lines and blank them (dropped below).
    good = []
    for i, raw in enumerate(block.split(b"\n")):
        try:
            good.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.report(path, first_line + i, bad_utf8_field(raw, names), "invalid UTF-8")
            good.append("\x00")
    return "\n".join(good)


def read_tsv(path: Path, names: list[str], bad: BadRows, block_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """Yield batches of ``path`` as string columns ``names`` plus :data:`LINE` (1-based line number).

    Args:
        path: a headerless TSV file.
        names: the expected columns, in file order.
        bad: where rows with the wrong number of fields go.
        block_bytes: bytes read per batch (a batch always ends at a line end); default BLOCK_BYTES.

    Yields:
        One DataFrame per block with the columns ``names`` (String) and ``_line`` (Int64).

    Raises:
        DataError: if the file is missing or empty, or (raise mode) a row has the wrong field count.
    """
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    first_line = 1
    seen_rows = False
    with path.open("rb") as fh:
        while True:
            block = fh.read(block_bytes or BLOCK_BYTES)
            if not block:
                break
            block += fh.readline()  # finish the last line of the block
            if first_line == 1 and block.startswith(codecs.BOM_UTF8):
                block = block[len(codecs.BOM_UTF8) :]
            text = _decode(block, path, first_line, bad, names)
            if text.endswith("\n"):
                text = text[:-1]
            lines = pl.DataFrame({_FIELDS: pl.Series([text]).str.split("\n").explode()})
            n_lines = lines.height
            lines = lines.with_columns(
                pl.int_range(first_line, first_line + n_lines, dtype=pl.Int64()).alias(LINE),
                pl.col(_FIELDS).str.strip_suffix("\r").str.split("\t"),
            )
            first_line += n_lines
            # A blanked undecodable line was already reported; an empty line is a bad row of its own.
            lines = lines.filter(pl.col(_FIELDS).list.first() != "\x00")
            n_fields = pl.col(_FIELDS).list.len()
            lines = bad.drop(
                lines,
                lines.select(n_fields != len(names)).to_series(),
                path,
                None,
                f"wrong number of fields (expected {len(names)})",
                pl.format("{} fields", n_fields),
            )
            if lines.height:
                seen_rows = True
                yield lines.select(pl.col(_FIELDS).list.get(i).alias(name) for i, name in enumerate(names)).with_columns(lines[LINE])
    if first_line == 1:
        raise DataError(path, None, None, "file is empty")
    if not seen_rows:
        raise DataError(path, None, None, "no valid rows (all were skipped)")
