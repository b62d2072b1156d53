"""MIND (Microsoft News Dataset) directories into the data contract, streamed.

A MIND directory holds two headerless TSV files::

    news.tsv       news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
    behaviors.tsv  impression_id, user_id, time ("11/15/2019 8:55:22 AM"), history ("N1 N2", may be empty),
                   impressions ("N3-1 N4-0" labelled, or "N3 N4" unlabelled as in MIND test)

and, for data from ``recsys synth``, ``truth.tsv`` (impression_id, the candidates' click probabilities).
Entity JSON columns become ``tags`` (their entity labels). Impression ids become ``"<split>-<id>"``
because MIND numbers every split from 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl
from tqdm import tqdm

from recsys.data import Col, Split
from recsys.errors import DataError, RecsysError
from recsys.loaders.rejects import LINE, RAISE, BadRows
from recsys.loaders.tsv import read_tsv
from recsys.loaders.writer import IngestResult, write_dataset

log = logging.getLogger(__name__)

NEWS, BEHAVIORS, TRUTH = "news.tsv", "behaviors.tsv", "truth.tsv"
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
# Raw MIND columns that are not contract columns.
URL, TITLE_ENTITIES, ABSTRACT_ENTITIES, IMPRESSION_LOG = "url", "title_entities", "abstract_entities", "impressions"
NEWS_COLUMNS = [Col.ITEM, Col.CATEGORY, Col.SUBCATEGORY, Col.TITLE, Col.ABSTRACT, URL, TITLE_ENTITIES, ABSTRACT_ENTITIES]
BEHAVIOR_COLUMNS = [Col.IMPRESSION, Col.USER, Col.TIME, Col.HISTORY, IMPRESSION_LOG]
TRUTH_COLUMNS = [Col.IMPRESSION, Col.CLICK_PROBS]
_ENTITY_DTYPE = pl.List(pl.Struct({"Label": pl.String()}))
_LABELLED_TOKEN = r".-[01]$"


def _tokens(column: str) -> pl.Expr:
    """Space-separated ids as a list, empty tokens dropped (empty history -> [])."""
    return pl.col(column).str.split(" ").list.eval(pl.element().filter(pl.element() != ""))


def _not_a_json_list(text: str) -> bool:
    try:
        return not isinstance(json.loads(text), list)
    except ValueError:
        return True


def _entity_labels(batch: pl.DataFrame, column: str, path: Path, bad: BadRows) -> tuple[pl.DataFrame, pl.Expr]:
    """Drop rows whose entity column is not a JSON list; return the rows and an expression of its labels."""
    batch = batch.with_columns(pl.when(pl.col(column) == "").then(pl.lit("[]")).otherwise(pl.col(column)).alias(column))
    try:
        batch.select(pl.col(column).str.json_decode(_ENTITY_DTYPE))
    except pl.exceptions.PolarsError:
        # Only a bad batch pays for row-level parsing, to name the line.
        bad_mask = batch[column].map_elements(_not_a_json_list, return_dtype=pl.Boolean())
        batch = bad.drop(batch, bad_mask, path, column, "invalid entity JSON (expected a list)", pl.col(column))
    labels = pl.col(column).str.json_decode(_ENTITY_DTYPE).list.eval(pl.element().struct.field("Label").drop_nulls())
    return batch, labels


def read_news(path: Path, bad: BadRows) -> pl.DataFrame:
    """Items of one ``news.tsv``.

    Raises:
        DataError: missing/empty file, wrong field count, empty news id or bad entity JSON (raise mode).
    """
    frames = []
    for batch in read_tsv(path, NEWS_COLUMNS, bad):
        batch = bad.drop(batch, batch[Col.ITEM].str.strip_chars() == "", path, Col.ITEM, "empty news id")
        batch, title_tags = _entity_labels(batch, TITLE_ENTITIES, path, bad)
        batch, abstract_tags = _entity_labels(batch, ABSTRACT_ENTITIES, path, bad)
        frames.append(
            batch.select(
                Col.ITEM,
                Col.TITLE,
                pl.when(pl.col(Col.ABSTRACT) == "").then(None).otherwise(pl.col(Col.ABSTRACT)).alias(Col.ABSTRACT),
                Col.CATEGORY,
                Col.SUBCATEGORY,
                pl.concat_list(title_tags, abstract_tags).list.unique(maintain_order=True).alias(Col.TAGS),
                pl.lit(None, dtype=pl.Datetime("us")).alias(Col.PUBLISHED),
            )
        )
    return pl.concat(frames)


def read_truth(path: Path, bad: BadRows) -> pl.DataFrame:
    """``truth.tsv`` of ``recsys synth``: raw impression id and the candidates' click probabilities."""
    frames = []
    for batch in read_tsv(path, TRUTH_COLUMNS, bad):
        batch = batch.with_columns(_tokens(Col.CLICK_PROBS).list.eval(pl.element().cast(pl.Float32(), strict=False)))
        bad_prob = batch.select(pl.col(Col.CLICK_PROBS).list.eval(pl.element().is_null() | (pl.element() < 0) | (pl.element() > 1)).list.any()).to_series()
        frames.append(bad.drop(batch, bad_prob, path, Col.CLICK_PROBS, "probabilities must be numbers in [0, 1]").drop(LINE))
    return pl.concat(frames)


def _is_labelled(path: Path) -> bool:
    """A behaviors file is labelled if its first candidate token ends in -0 or -1 (MIND test has none)."""
    with path.open("rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    token = first[-1].split(" ")[0] if len(first) == len(BEHAVIOR_COLUMNS) else ""
    return bool(pl.Series([token]).str.contains(_LABELLED_TOKEN)[0])


def read_behaviors(path: Path, split: str, bad: BadRows, truth: pl.DataFrame | None = None) -> Iterator[pl.DataFrame]:
    """Stream one ``behaviors.tsv`` as contract impressions (plus ``_line``).

    Args:
        path: the behaviors file.
        split: the split its impressions belong to.
        bad: the bad-row policy.
        truth: click probabilities by raw impression id (``truth.tsv``), or None.

    Yields:
        Batches in the impressions schema (with ``click_probs`` when ``truth`` is given).

    Raises:
        DataError: bad rows in raise mode; a truth row whose length differs from its candidates.
    """
    labelled = _is_labelled(path)
    for batch in tqdm(read_tsv(path, BEHAVIOR_COLUMNS, bad), desc=f"{split} {BEHAVIORS}", unit="block", disable=None):
        for column in (Col.IMPRESSION, Col.USER):
            batch = bad.drop(batch, batch[column].str.strip_chars() == "", path, column, f"empty {column}")
        raw_time = pl.col(Col.TIME).alias("raw")
        batch = batch.with_columns(raw_time, pl.col(Col.TIME).str.strptime(pl.Datetime("us"), MIND_TIME_FORMAT, strict=False))
        batch = bad.drop(batch, batch[Col.TIME].is_null(), path, Col.TIME, "bad timestamp (expected like '11/15/2019 8:55:22 AM')", pl.col("raw"))
        batch = batch.with_columns(_tokens(Col.HISTORY), _tokens(IMPRESSION_LOG))
        batch = bad.drop(batch, batch[IMPRESSION_LOG].list.len() == 0, path, IMPRESSION_LOG, "no candidates")
        if labelled:
            unlabelled = pl.element().str.contains(_LABELLED_TOKEN).not_()
            bad_token = batch.select(pl.col(IMPRESSION_LOG).list.eval(unlabelled).list.any()).to_series()
            first_bad = pl.col(IMPRESSION_LOG).list.eval(pl.element().filter(unlabelled)).list.first()
            batch = bad.drop(batch, bad_token, path, IMPRESSION_LOG, "unknown label value (expected <news id>-0 or -1)", first_bad)
            candidates = pl.col(IMPRESSION_LOG).list.eval(pl.element().str.head(-2))
            labels = pl.col(IMPRESSION_LOG).list.eval(pl.element().str.tail(1).cast(pl.Int8()))
        else:
            candidates, labels = pl.col(IMPRESSION_LOG), pl.lit(None, dtype=pl.List(pl.Int8()))
        batch = batch.with_columns(candidates.alias(Col.CANDIDATES), labels.alias(Col.LABELS), pl.lit(split).alias(Col.SPLIT))
        if truth is not None:
            batch = batch.join(truth, on=Col.IMPRESSION, how="left", maintain_order="left")
            wrong = batch.filter(pl.col(Col.CLICK_PROBS).list.len() != pl.col(Col.CANDIDATES).list.len())
            if wrong.height:
                raise DataError(path.with_name(TRUTH), None, Col.CLICK_PROBS, f"impression {wrong[Col.IMPRESSION][0]!r} has a different number of probabilities than candidates")
        yield batch.with_columns(pl.format("{}-{}", pl.lit(split), pl.col(Col.IMPRESSION)).alias(Col.IMPRESSION)).drop("raw", IMPRESSION_LOG)


def check_splits(splits: Mapping[str, Path]) -> None:
    """Raise :class:`RecsysError` unless ``splits`` names at least one known split."""
    if not splits:
        raise RecsysError("give at least one MIND directory (e.g. --train DIR)")
    unknown = set(splits) - set(Split.ALL)
    if unknown:
        raise RecsysError(f"unknown split(s) {sorted(unknown)}; use {Split.ALL}")


def load_mind(splits: Mapping[str, Path], out: Path, on_bad_rows: str = RAISE) -> IngestResult:
    """Ingest MIND directories (one per split) into the dataset directory ``out``.

    Args:
        splits: split name (``train``/``dev``/``test``) -> MIND directory with news.tsv and behaviors.tsv.
        out: the dataset directory to write.
        on_bad_rows: ``"raise"`` (stop at the first bad row) or ``"skip"`` (count them, write rejects.parquet).

    Returns:
        Where the dataset is and its manifest. Items are deduplicated across splits (first wins).

    Raises:
        RecsysError: unknown split names or no splits.
        DataError: bad input in raise mode, naming file, line and field.
    """
    check_splits(splits)
    bad = BadRows(on_bad_rows)
    dirs = {split: Path(d) for split, d in splits.items()}
    items = pl.concat([read_news(d / NEWS, bad) for d in dirs.values()]).unique(Col.ITEM, keep="first", maintain_order=True)
    with_truth = any((d / TRUTH).is_file() for d in dirs.values())
    log.info("MIND: %d items from %d split(s)", items.height, len(dirs))
    sources = {split: str(d) for split, d in dirs.items()}
    with write_dataset(out, items, bad, "mind", "impressions", with_click_probs=with_truth, inputs=sources) as writer:
        for split, d in dirs.items():
            truth = read_truth(d / TRUTH, bad) if (d / TRUTH).is_file() else None
            for batch in read_behaviors(d / BEHAVIORS, split, bad, truth):
                writer.write(batch, d / BEHAVIORS)
    return IngestResult(out, writer.manifest)
