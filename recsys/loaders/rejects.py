"""Bad input rows: raise a :class:`DataError` on the first one, or skip them and count them by reason.

Loaders find bad rows with vectorised masks over a whole batch; only the rows a mask flags are
turned into Python objects (for the message or the rejects table).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from recsys.data import shown
from recsys.errors import DataError, RecsysError
from recsys.io import write_parquet

RAISE, SKIP = "raise", "skip"
ON_BAD_ROWS = (RAISE, SKIP)

# Every batch handed to a loader carries the 1-based line (or row) of each record in this column.
LINE = "_line"

REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "field": pl.String(),
    "reason": pl.String(),
    "value": pl.String(),
}


def check_on_bad_rows(on_bad_rows: str) -> str:
    """Return ``on_bad_rows`` if it is ``"raise"`` or ``"skip"``; raise :class:`RecsysError` otherwise."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise RecsysError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    return on_bad_rows


class BadRows:
    """Collects (or raises on) bad rows of one ingest run.

    Args:
        on_bad_rows: ``"raise"`` stops at the first bad row with a :class:`DataError`;
            ``"skip"`` drops bad rows, keeps them for ``rejects.parquet`` and counts them by reason.
    """

    def __init__(self, on_bad_rows: str = RAISE) -> None:
        self.mode = check_on_bad_rows(on_bad_rows)
        self._frames: list[pl.DataFrame] = []
        self.counts: Counter[str] = Counter()

    def report(self, path: Path | str, line: int, field: str | None, reason: str, value: object = None, *, whole_line: bool = False) -> None:
        """One bad record found outside a batch (e.g. undecodable bytes).

        The value goes to the rejects and, quoted, into the message; a user id's value, or a `whole_line`
        (which holds the user id among its fields), goes to the rejects only.
        """
        if self.mode == RAISE:
            raise DataError(path, line, field, reason if value is None or whole_line else f"{reason}: {shown(field, value)}")
        self.counts[reason] += 1
        self._frames.append(pl.DataFrame([{"file": str(path), "line": line, "field": field, "reason": reason, "value": None if value is None else str(value)[:500]}], schema=REJECTS_SCHEMA))

    def drop(self, batch: pl.DataFrame, bad: pl.Series, path: Path | str, field: str | None, reason: str, value: pl.Expr | None = None) -> pl.DataFrame:
        """Remove the rows of ``batch`` flagged by the boolean mask ``bad``.

        Args:
            batch: rows with a :data:`LINE` column.
            bad: boolean mask over ``batch`` (nulls count as good).
            path: the file the rows came from, for the message.
            field: the offending field.
            reason: what is wrong, the same text for every row (it is the count key).
            value: expression giving the offending value, shown in the message and rejects.

        Returns:
            ``batch`` without the bad rows.

        Raises:
            DataError: in ``"raise"`` mode, naming the first bad row.
        """
        bad = bad.fill_null(False)
        n_bad = int(bad.sum())
        if not n_bad:
            return batch
        flagged = batch.filter(bad).select(LINE, (value if value is not None else pl.lit(None)).cast(pl.String()).alias("value"))
        if self.mode == RAISE:
            first = flagged.row(0, named=True)
            self.report(path, int(first[LINE]), field, reason, first["value"])
        self.counts[reason] += n_bad
        self._frames.append(
            flagged.select(
                pl.lit(str(path)).alias("file"),
                pl.col(LINE).cast(pl.Int64()).alias("line"),
                pl.lit(field, dtype=pl.String()).alias("field"),
                pl.lit(reason).alias("reason"),
                pl.col("value").str.slice(0, 500),
            )
        )
        return batch.filter(~bad)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def write(self, out_dir: Path) -> Path | None:
        """Write ``rejects.parquet`` in ``out_dir`` if anything was skipped (and remove a stale one otherwise)."""
        path = out_dir / "rejects.parquet"
        if not self._frames:
            path.unlink(missing_ok=True)
            return None
        return write_parquet(pl.concat(self._frames), path)

    def manifest(self) -> dict[str, object]:
        """The ``skipped`` entry of the manifest: total and counts by reason."""
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items()))}
