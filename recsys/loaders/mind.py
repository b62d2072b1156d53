"""MIND (Microsoft News Dataset) directories into the data contract, streamed.

A MIND directory holds two headerless TSV files::

    news.tsv       news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
    behaviors.tsv  impression_id, user_id, time ("11/15/2019 8:55:22 AM"), history ("N1 N2", may be empty),
                   impressions ("N3-1 N4-0" labelled, or "N3 N4" unlabelled as in MIND test)

and, for data from ``recsys synth``, ``truth.tsv`` (impression_id, the candidates' click probabilities).
Entity JSON columns become ``tags`` (their entity labels). Impression ids become ``"<split>-<id>"``
because MIND numbers every split from 1. A UTF-8 byte order mark at the start of a file is dropped.

Labels: a behaviors file is labelled (every candidate ``<news id>-0`` or ``-1``) or unlabelled (no
candidate has a ``-``), never a mix. The majority of the first block (all of a small file) decides
which; an impression of the other kind is a bad row. A labelled candidate is split at its last
``-``: the label must be exactly ``0`` or ``1`` and the id non-empty and not ending in ``-``.

Truth: with ``truth.tsv``, every impression needs a row there with one probability per candidate
(else a bad row). When only some splits have ``truth.tsv``, the others get ``click_probs`` of nulls,
one per candidate, so the column explodes with the candidates everywhere; the manifest lists the
splits with truth under ``truth_splits``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl
from tqdm import tqdm

from recsys.data import Col, Split
from recsys.errors import RecsysError
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
_TRUTH_LINE = "_truth_line"
# The label after the last "-" is exactly 0 or 1 ...
_LABEL = r"-[01]$"
# ... and the id before it is non-empty and does not end in "-" (the common case, checked at once).
_GOOD_TOKEN = r"[^-]-[01]$"
UNKNOWN_LABEL = "unknown label value (expected <news id>-0 or -1)"
BAD_LABELLED_ID = "bad news id before the label (empty or ending in '-')"
UNLABELLED_IN_LABELLED = "unlabelled impression in a labelled file (all impressions must be labelled, or none)"
LABELLED_IN_UNLABELLED = "labelled candidates in an unlabelled file (all impressions must be labelled, or none)"
NO_TRUTH_ROW = f"impression has no row in {TRUTH}"
TRUTH_LENGTH = "different number of probabilities than candidates"


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
    """``truth.tsv`` of ``recsys synth``: raw impression id, the candidates' click probabilities and
    the truth line (``_truth_line``). A repeated impression id is a bad row."""
    frames = []
    for batch in read_tsv(path, TRUTH_COLUMNS, bad):
        batch = batch.with_columns(_tokens(Col.CLICK_PROBS).list.eval(pl.element().cast(pl.Float32(), strict=False)))
        bad_prob = batch.select(pl.col(Col.CLICK_PROBS).list.eval(pl.element().is_null() | (pl.element() < 0) | (pl.element() > 1)).list.any()).to_series()
        frames.append(bad.drop(batch, bad_prob, path, Col.CLICK_PROBS, "probabilities must be numbers in [0, 1]"))
    truth = pl.concat(frames)
    dup = ~truth[Col.IMPRESSION].is_first_distinct()
    truth = bad.drop(truth, dup, path, Col.IMPRESSION, "duplicate impression id", pl.col(Col.IMPRESSION))
    return truth.rename({LINE: _TRUTH_LINE})


def _has_dash() -> pl.Expr:
    """Per impression: does any candidate token contain a "-" (i.e. carry a label)?"""
    return pl.col(IMPRESSION_LOG).list.eval(pl.element().str.contains("-", literal=True)).list.any()


def _first_token(condition: pl.Expr) -> pl.Expr:
    return pl.col(IMPRESSION_LOG).list.eval(pl.element().filter(condition)).list.first()


def _parse_candidates(batch: pl.DataFrame, path: Path, bad: BadRows, labelled: bool) -> pl.DataFrame:
    """Check every candidate token against the file's kind; add ``candidates`` and ``labels``."""
    if not labelled:
        has_dash = batch.select(_has_dash()).to_series()
        batch = bad.drop(batch, has_dash, path, IMPRESSION_LOG, LABELLED_IN_UNLABELLED, _first_token(pl.element().str.contains("-", literal=True)))
        return batch.with_columns(pl.col(IMPRESSION_LOG).alias(Col.CANDIDATES), pl.lit(None, dtype=pl.List(pl.Int8())).alias(Col.LABELS))
    if not batch.select(pl.col(IMPRESSION_LOG).list.eval(pl.element().str.contains(_GOOD_TOKEN)).list.all().all()).item():
        # The rare bad batch: find each bad row's reason.
        batch = bad.drop(batch, ~batch.select(_has_dash()).to_series(), path, IMPRESSION_LOG, UNLABELLED_IN_LABELLED, pl.col(IMPRESSION_LOG).list.first())
        for condition, reason in (
            (pl.element().str.contains(_LABEL).not_(), UNKNOWN_LABEL),
            (pl.element().str.head(-2).str.contains(r"(^|-)$"), BAD_LABELLED_ID),
        ):
            flagged = batch.select(pl.col(IMPRESSION_LOG).list.eval(condition).list.any()).to_series()
            batch = bad.drop(batch, flagged, path, IMPRESSION_LOG, reason, _first_token(condition))
    return batch.with_columns(
        pl.col(IMPRESSION_LOG).list.eval(pl.element().str.head(-2)).alias(Col.CANDIDATES),
        pl.col(IMPRESSION_LOG).list.eval(pl.element().str.tail(1).cast(pl.Int8())).alias(Col.LABELS),
    )


def _attach_truth(batch: pl.DataFrame, truth: pl.DataFrame, path: Path, bad: BadRows) -> pl.DataFrame:
    """Join ``click_probs``; an impression without a truth row, or with the wrong count, is a bad row."""
    batch = batch.join(truth, on=Col.IMPRESSION, how="left", maintain_order="left")
    batch = bad.drop(batch, batch[Col.CLICK_PROBS].is_null(), path, Col.IMPRESSION, NO_TRUTH_ROW, pl.col(Col.IMPRESSION))
    wrong = batch[Col.CLICK_PROBS].list.len() != batch[Col.CANDIDATES].list.len()
    # Reported at the truth line: that is where the probabilities are.
    detail = pl.format("impression {}: {} probabilities, {} candidates", Col.IMPRESSION, pl.col(Col.CLICK_PROBS).list.len(), pl.col(Col.CANDIDATES).list.len())
    at_truth = batch.rename({LINE: "_behaviors_line", _TRUTH_LINE: LINE})
    at_truth = bad.drop(at_truth, wrong, path.with_name(TRUTH), Col.CLICK_PROBS, TRUTH_LENGTH, detail)
    return at_truth.drop(LINE).rename({"_behaviors_line": LINE})


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
        DataError: bad rows in raise mode (a truth row missing, or with a length other than its candidates', too).
    """
    labelled: bool | None = None
    for batch in tqdm(read_tsv(path, BEHAVIOR_COLUMNS, bad), desc=f"{split} {BEHAVIORS}", unit="block", disable=None):
        for column in (Col.IMPRESSION, Col.USER):
            batch = bad.drop(batch, batch[column].str.strip_chars() == "", path, column, f"empty {column}")
        raw_time = pl.col(Col.TIME).alias("raw")
        batch = batch.with_columns(raw_time, pl.col(Col.TIME).str.strptime(pl.Datetime("us"), MIND_TIME_FORMAT, strict=False))
        batch = bad.drop(batch, batch[Col.TIME].is_null(), path, Col.TIME, "bad timestamp (expected like '11/15/2019 8:55:22 AM')", pl.col("raw"))
        batch = batch.with_columns(_tokens(Col.HISTORY), _tokens(IMPRESSION_LOG))
        batch = bad.drop(batch, batch[IMPRESSION_LOG].list.len() == 0, path, IMPRESSION_LOG, "no candidates")
        if not batch.height:
            continue
        if labelled is None:  # the majority of the first block decides; the minority are bad rows
            labelled = 2 * int(batch.select(_has_dash().sum()).item()) >= batch.height
        batch = _parse_candidates(batch, path, bad, labelled).with_columns(pl.lit(split).alias(Col.SPLIT))
        if truth is not None:
            batch = _attach_truth(batch, truth, path, bad)
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
    truth_splits = [split for split, d in dirs.items() if (d / TRUTH).is_file()]
    log.info("MIND: %d items from %d split(s)", items.height, len(dirs))
    if truth_splits and len(truth_splits) < len(dirs):
        log.warning("%s only in split(s) %s: the others get null click_probs", TRUTH, ", ".join(truth_splits))
    sources = {split: str(d) for split, d in dirs.items()}
    extra = {"truth_splits": truth_splits} if truth_splits else {}
    with write_dataset(out, items, bad, "mind", "impressions", with_click_probs=bool(truth_splits), inputs=sources, **extra) as writer:
        for split, d in dirs.items():
            truth = read_truth(d / TRUTH, bad) if (d / TRUTH).is_file() else None
            for batch in read_behaviors(d / BEHAVIORS, split, bad, truth):
                writer.write(batch, d / BEHAVIORS)
    return IngestResult(out, writer.manifest)
