"""Loaders: raw logs in, a canonical dataset directory (:mod:`recsys.data`) out.

Entry points::

    load_mind({"train": DIR, "dev": DIR}, out, on_bad_rows="raise")   # MIND news.tsv + behaviors.tsv
    load_events(items, events, out, EventsConfig(...))                # items table + events log
    load(MindSource(...) | EventsSource(...), out)                    # the same, from a config
    ingest_amazon(src, out)                                           # UniSRec-style .inter/.text sequences

Each writes ``out/{items,impressions}.parquet``, ``manifest.json`` and, with skipped rows,
``rejects.parquet``, and returns an :class:`IngestResult` (path + manifest; impressions stay on
disk so MIND-large ingests in bounded memory; ``result.dataset()`` loads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recsys.errors import RecsysError
from recsys.loaders.amazon import ingest_amazon, load_amazon
from recsys.loaders.events import EventsConfig, load_events
from recsys.loaders.mind import check_splits, load_mind
from recsys.loaders.rejects import RAISE, check_on_bad_rows
from recsys.loaders.writer import IngestResult

__all__ = ["EventsConfig", "EventsSource", "IngestResult", "MindSource", "ingest_amazon", "load", "load_amazon", "load_events", "load_mind"]


@dataclass(frozen=True)
class MindSource:
    """MIND directories by split (``train``/``dev``/``test``) and the bad-row policy."""

    splits: dict[str, Path]
    on_bad_rows: str = RAISE

    def __post_init__(self) -> None:
        check_splits(self.splits)
        check_on_bad_rows(self.on_bad_rows)


@dataclass(frozen=True)
class EventsSource:
    """An items table and an events log, and how to group them (:class:`EventsConfig`)."""

    items: Path
    events: Path
    config: EventsConfig = field(default_factory=EventsConfig)


def load(source: MindSource | EventsSource, out: str | Path) -> IngestResult:
    """Ingest ``source`` into the dataset directory ``out``.

    Args:
        source: which raw format and files.
        out: dataset directory to write.

    Returns:
        The written dataset's path and manifest.

    Raises:
        DataError: bad input (raise mode), naming file, line and field.
        RecsysError: bad options.
    """
    out = Path(out)
    if isinstance(source, MindSource):
        return load_mind(source.splits, out, source.on_bad_rows)
    if isinstance(source, EventsSource):
        return load_events(source.items, source.events, out, source.config)
    raise RecsysError(f"unknown source {type(source).__name__}")
