"""Rows and log in long format and in time order: the stream the feature builder reads.

An impressions file becomes one row per (impression, candidate), batch by batch
(:func:`recsys.data.explode_candidates`), in the table's order: (timestamp, impression_id, position).
A file already in that order streams straight through; any other is shaped to a scratch file first
and sorted there by DuckDB, out of core under the memory limit.

The shares of the user's history in the candidate's category and subcategory (user family) are
computed here: they read only the impression's own history list, which holds the user's clicks before
t by contract (MIND: the clicks before the log; event logs and synthetic data: the latest clicks
strictly before t), so they need no other row and no log. Adding the log's clicks would count them twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.keys import ItemCodes, Keys
from features.registry import CLICK_PROB
from recsys.data import Col, explode_candidates

ROWS_PER_IMPRESSION = 10  # to size shaping batches, read in impressions, in rows
HISTORY_LEN, CATEGORY_SHARE, SUBCATEGORY_SHARE = "user_history_len", "user_category_share", "user_subcategory_share"
# Codes (features.keys) of the row's item, its category and subcategory (-1: none) and its user.
ITEM_CODE, CATEGORY_CODE, SUBCATEGORY_CODE, USER_CODE = "_item", "_category", "_subcategory", "_user"
_IMP = "_impression_row"

# The long format of the rows (stage 1); the log's events use the same columns, history shares left null.
LONG_SCHEMA = pa.schema([
    (Col.IMPRESSION, pa.string()), (Col.USER, pa.string()), (Col.ITEM, pa.string()), (Col.POSITION, pa.int32()),
    (Col.TIME, pa.timestamp("us")), (Col.SPLIT, pa.string()), (Col.LABEL, pa.int8()),
    (CLICK_PROB, pa.float32()), (Col.SAMPLED, pa.bool_()),
    (HISTORY_LEN, pa.int32()), (CATEGORY_SHARE, pa.float64()), (SUBCATEGORY_SHARE, pa.float64()),
    (ITEM_CODE, pa.int64()), (CATEGORY_CODE, pa.int64()), (SUBCATEGORY_CODE, pa.int64()), (USER_CODE, pa.int64()),
])
LONG_POLARS = dict(pl.from_arrow(LONG_SCHEMA.empty_table()).schema)  # type: ignore[union-attr]


def shape(impressions: pl.DataFrame, keys: Keys, history: bool) -> pl.DataFrame:
    """Long format of one batch of impressions: a row per (impression, candidate) with label, position,
    pass-throughs, codes and, if `history`, the history shares."""
    imps = impressions.with_row_index(_IMP).with_columns(pl.Series(USER_CODE, keys.users.encode(impressions[Col.USER])))
    long = explode_candidates(imps, carry=[_IMP, USER_CODE]).filter(pl.col(Col.ITEM).is_not_null())  # empty lists leave no row
    if Col.CLICK_PROBS in long.columns:
        long = long.rename({Col.CLICK_PROBS: CLICK_PROB})
    if Col.SAMPLED in imps.columns:
        flags = imps.select(
            _IMP, Col.SAMPLED, pl.int_ranges(pl.col(Col.SAMPLED).list.len()).cast(pl.List(pl.Int32())).alias(Col.POSITION)
        ).explode([Col.SAMPLED, Col.POSITION])
        long = long.join(flags, on=[_IMP, Col.POSITION], how="left", maintain_order="left")
    item = keys.items.encode(long[Col.ITEM])
    long = long.with_columns(
        (pl.col(Col.SAMPLED).fill_null(False) if Col.SAMPLED in long.columns else pl.lit(False)).alias(Col.SAMPLED),
        (pl.col(CLICK_PROB) if CLICK_PROB in long.columns else pl.lit(None, pl.Float32())).alias(CLICK_PROB),
        pl.Series(ITEM_CODE, item),
        pl.Series(CATEGORY_CODE, keys.items.category[item]),
        pl.Series(SUBCATEGORY_CODE, keys.items.subcategory[item]),
    )
    if history:
        long = _history_shares(imps, long, keys.items)
    else:
        long = long.with_columns(pl.lit(None).alias(c) for c in (HISTORY_LEN, CATEGORY_SHARE, SUBCATEGORY_SHARE))
    return long.select(pl.col(c).cast(t) for c, t in LONG_POLARS.items())


def _history_shares(imps: pl.DataFrame, long: pl.DataFrame, items: ItemCodes) -> pl.DataFrame:
    """Per row: the length of the impression's history, and the share of it in the candidate's category and
    subcategory (null without history or without the candidate's group; 0 when no history item is in it)."""
    row_len = imps[Col.HISTORY].list.len().gather(long[_IMP])
    n = row_len.cast(pl.Float64).to_numpy()  # NaN for a null history
    history = imps.select(_IMP, Col.HISTORY).explode(Col.HISTORY).drop_nulls()
    item = items.lookup(history[Col.HISTORY])
    history_imp, item = history[_IMP].to_numpy()[item >= 0].astype(np.int64), item[item >= 0]
    row_imp = long[_IMP].to_numpy().astype(np.int64)
    cols = [row_len.alias(HISTORY_LEN)]
    for groups, code, name in ((items.category, CATEGORY_CODE, CATEGORY_SHARE), (items.subcategory, SUBCATEGORY_CODE, SUBCATEGORY_SHARE)):
        row_group = long[code].to_numpy()
        counts = _pair_counts(history_imp, groups[item], row_imp, row_group, items.n_groups + 1)
        share = np.full(len(n), np.nan)
        np.divide(counts, n, out=share, where=(n > 0) & (row_group >= 0))
        cols.append(pl.Series(name, share, nan_to_null=True))
    return long.with_columns(cols)


def _pair_counts(left: np.ndarray, left_group: np.ndarray, right: np.ndarray, right_group: np.ndarray, stride: int) -> np.ndarray:
    """For each right pair (row, group): how many left pairs equal it (groups < 0 match nothing)."""
    valid = left_group >= 0
    pairs, counts = np.unique(left[valid] * stride + left_group[valid], return_counts=True)
    if not len(pairs):
        return np.zeros(len(right), np.int64)
    wanted = right * stride + right_group
    at = np.minimum(np.searchsorted(pairs, wanted), len(pairs) - 1)
    return np.where((pairs[at] == wanted) & (right_group >= 0), counts[at], 0)


def shaped_batches(path: Path, keys: Keys, history: bool, rows: int) -> Iterator[pl.DataFrame]:
    """The impressions file `path` in long format, in the file's order, in batches of about `rows` rows."""
    columns = None if history else _columns_without(path, Col.HISTORY)
    impressions = max(1, rows // ROWS_PER_IMPRESSION)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=impressions, columns=columns):
        yield shape(pl.from_arrow(pa.Table.from_batches([batch])), keys, history)  # type: ignore[arg-type]


def _columns_without(path: Path, drop: str) -> list[str]:
    return [name for name in pq.ParquetFile(path).schema_arrow.names if name != drop]


def in_table_order(path: Path) -> bool:
    """Whether the impressions of `path` are strictly ordered by (timestamp, impression_id), read two columns at a time."""
    previous: tuple[object, object] | None = None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1_000_000, columns=[Col.TIME, Col.IMPRESSION]):
        keys = pl.from_arrow(pa.Table.from_batches([batch]))
        assert isinstance(keys, pl.DataFrame)
        if previous is not None:
            keys = pl.concat([pl.DataFrame([previous], schema=keys.schema, orient="row"), keys])
        t, i = pl.col(Col.TIME), pl.col(Col.IMPRESSION)
        ordered = (t.shift(-1) > t) | ((t.shift(-1) == t) & (i.shift(-1) > i))
        if keys.height > 1 and not keys.select(ordered.head(keys.height - 1).all()).item():
            return False
        if keys.height:
            previous = keys.row(-1)
    return True


def sorted_batches(batches: Iterator[pl.DataFrame], scratch: Path, con: duckdb.DuckDBPyConnection, name: str, rows: int) -> Iterator[pl.DataFrame]:
    """`batches` in table order: written to `scratch`, sorted by DuckDB (spilling beyond its memory limit), read back."""
    unsorted, ordered = scratch / f"{name}-unsorted.parquet", scratch / f"{name}.parquet"
    with pq.ParquetWriter(unsorted, LONG_SCHEMA, compression="zstd") as writer:
        for long in batches:
            writer.write_table(long.to_arrow().cast(LONG_SCHEMA))
    con.execute(f"COPY (SELECT * FROM read_parquet('{quote(unsorted)}') ORDER BY {Col.TIME}, {Col.IMPRESSION}, {Col.POSITION}) "
                f"TO '{quote(ordered)}' (FORMAT parquet, COMPRESSION zstd)")
    unsorted.unlink()
    for batch in pq.ParquetFile(ordered).iter_batches(batch_size=rows):
        yield pl.from_arrow(pa.Table.from_batches([batch]).cast(LONG_SCHEMA))  # type: ignore[misc]


def quote(path: Path) -> str:
    return str(path).replace("'", "''")
