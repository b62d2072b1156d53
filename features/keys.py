"""Integer keys: dense codes for the ids the features group by (items, with their metadata, and users),
and the sorting the families do by them.

The families sort, count and index by these codes instead of strings (:mod:`features.timeline`). A code
means nothing beyond its run: codes are given in order of first appearance, so features never depend on them.
"""

from __future__ import annotations

import threading

import numpy as np
import polars as pl

from recsys.data import Col

NO_GROUP = -1  # an item without category / subcategory
NO_TIME = np.iinfo(np.int64).min  # an item without publish time


def radix_order(*keys: np.ndarray) -> np.ndarray:
    """Stable order of rows by non-negative integer `keys`, the last one most significant (as :func:`numpy.lexsort`).

    LSD radix sort in 16-bit digits (numpy sorts 16-bit integers by counting): a few linear passes,
    several times faster than a comparison sort on millions of rows.
    """
    n = len(keys[0]) if keys else 0
    order = np.arange(n)
    for key in keys:
        key = key.astype(np.uint64, copy=False)
        top = int(key.max()) if n else 0
        shift = 0
        while True:
            digit = ((key[order] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16)
            order = order[np.argsort(digit, kind="stable")]
            shift += 16
            if top >> shift == 0:
                break
    return order


def run_starts(outer: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by (`outer`, `inner`): per row, the index of the first row with its `outer` value, and of
    the first row with its (`outer`, `inner`) pair."""
    n = len(outer)
    idx = np.arange(n)
    new_outer = np.ones(n, bool)
    new_outer[1:] = outer[1:] != outer[:-1]
    new_pair = new_outer.copy()
    new_pair[1:] |= inner[1:] != inner[:-1]
    return np.maximum.accumulate(np.where(new_outer, idx, 0)), np.maximum.accumulate(np.where(new_pair, idx, 0))


class Codes:
    """Codes for string ids, given in order of first appearance (the ``known`` ids first); thread-safe,
    as the rows and the log are shaped in threads of their own."""

    def __init__(self, known: pl.Series | None = None) -> None:
        ids = known if known is not None else pl.Series([], dtype=pl.String())
        self._table = pl.DataFrame({"id": ids, "code": np.arange(len(ids), dtype=np.int64)})
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return self._table.height

    def lookup(self, ids: pl.Series) -> pl.Series:
        """The codes of `ids`, null for ids never seen."""
        return ids.alias("id").to_frame().join(self._table, on="id", how="left", maintain_order="left", nulls_equal=True)["code"]

    def encode(self, ids: pl.Series) -> np.ndarray:
        """The codes of `ids`; ids never seen get the next free codes."""
        with self.lock:
            codes = self.lookup(ids)
            if codes.null_count():
                new = ids.filter(codes.is_null()).unique(maintain_order=True).alias("id").to_frame()
                self._table = pl.concat([self._table, new.with_columns(code=pl.int_range(len(self), len(self) + new.height, dtype=pl.Int64))])
                codes = self.lookup(ids)
            return codes.to_numpy()


class ItemCodes:
    """Item codes, with each item's category and subcategory codes (:data:`NO_GROUP` when unknown)
    and publish time in microseconds (:data:`NO_TIME` when unknown). Items outside items.parquet have no metadata."""

    def __init__(self, items: pl.DataFrame) -> None:
        self.codes = Codes(items[Col.ITEM])
        self.category = self._groups(items[Col.CATEGORY])
        self.subcategory = self._groups(items[Col.SUBCATEGORY])
        self.published = items[Col.PUBLISHED].dt.epoch("us").fill_null(NO_TIME).to_numpy().astype(np.int64)
        self.n_groups = int(max(self.category.max(initial=-1), self.subcategory.max(initial=-1))) + 1

    @staticmethod
    def _groups(names: pl.Series) -> np.ndarray:
        return (names.rank("dense").cast(pl.Int64) - 1).fill_null(NO_GROUP).to_numpy()

    def lookup(self, ids: pl.Series) -> np.ndarray:
        """Codes of `ids`, -1 for items never seen (history items need no code of their own)."""
        return self.codes.lookup(ids).fill_null(-1).to_numpy()

    def encode(self, ids: pl.Series) -> np.ndarray:
        with self.codes.lock:
            codes = self.codes.encode(ids)
            extra = len(self.codes) - len(self.category)
            if extra > 0:
                self.category = np.concatenate([self.category, np.full(extra, NO_GROUP)])
                self.subcategory = np.concatenate([self.subcategory, np.full(extra, NO_GROUP)])
                self.published = np.concatenate([self.published, np.full(extra, NO_TIME)])
            return codes


class Keys:
    """The codes of one build: items and users, shared by the rows and the log."""

    def __init__(self, items: pl.DataFrame) -> None:
        self.items = ItemCodes(items)
        self.users = Codes()
