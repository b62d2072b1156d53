"""Overlap the builder's stages on a few cores: read ahead in one thread, write behind in another.

Polars, numpy's sorts and pyarrow's Parquet writer release the GIL, so shaping the next batch and
compressing the previous segment run while the current segment is computed. Each hand-over holds at
most one item, so overlapping adds at most a batch and a segment to the builder's memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate `source` in a background thread, one item ahead of the consumer."""

    def __init__(self, source: Iterator[T]) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="features-read-ahead")
        self._thread.start()

    def _run(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_Failure(exc))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # later calls end too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading ahead (the source is abandoned where it is)."""
        self._stop.set()
        self._thread.join()


class ParquetAppender:
    """Append tables to one Parquet file from a background thread; :meth:`close` waits and re-raises its errors."""

    def __init__(self, path: Path, schema: pa.Schema, dictionary: list[str]) -> None:
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary)
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="features-writer")
        self._thread.start()

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # re-raised by write() or close()
                    self._error = exc

    def write(self, table: pa.Table) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def close(self) -> None:
        """Write what is queued, close the file, raise any error of the writer thread."""
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop and close after a failure elsewhere: the file is incomplete and the caller discards it."""
        self._error = self._error or RuntimeError("aborted")
        try:
            self.close()
        except BaseException:  # noqa: S110 - the failure being handled is the one to report
            pass
