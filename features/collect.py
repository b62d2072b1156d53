"""The feature collector: every feature family the ranker reads, for any candidate table, whatever its source.

Training, replay, catalogue evaluation and serving all call :func:`collect_features` with the rows being
ranked (impression format: who, when, history) and their candidates (long format, logged or retrieved).
Each family in ``FeatureConfig.families`` adds its columns, keyed by (impression, position):

* ``behaviour``  point-in-time counts over the dataset's log (:func:`features.build.build_features`)
* ``text``       the text model's interest scores (:func:`recsys.text.features.text_features`)
* ``retrieval``  every retrieval source's score and rank (already there for retrieved candidates)
* ``pairs``      item-item, metadata and text-vector signals of the history (:func:`features.pairs.pair_features`)

What the features may read comes in :class:`FeatureInputs`, fitted by the caller on the rows allowed at that
point (the retriever never saw the targets it scores; the behaviour features read only events before each impression).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from features.build import FeatureConfig, build_features
from features.pairs import item_codes, pair_features, value_codes
from features.registry import BEHAVIOUR, PAIRS, RETRIEVAL, TEXT, TEXT_FEATURES, registry
from recsys.candidates.earlier import user_histories
from recsys.candidates.logged import as_impressions
from recsys.candidates.retrieval import ITEM_INDEX, N_SOURCES, ROW, Retriever
from recsys.data import Col, Dataset
from recsys.errors import RecsysError
from recsys.io import write_parquet

if TYPE_CHECKING:  # torch and transformers load only where the text family runs (not on a cluster worker without it)
    from recsys.text.encode import ItemVectors
    from recsys.text.model import TextModel

_JOIN = [Col.IMPRESSION, Col.POSITION]


@dataclass
class FeatureInputs:
    """What features may read: the log, the text model and its vectors, pair vectors by encoder, the retriever."""

    dataset: Dataset
    config: FeatureConfig
    text_model: TextModel | None = None
    vectors: ItemVectors | None = None
    pair_vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    retriever: Retriever | None = None

    def needs(self, family: str) -> bool:
        return family in self.config.families


def collect_features(inputs: FeatureInputs, rows: pl.DataFrame, candidates: pl.DataFrame, *, show_progress: bool = False) -> pl.DataFrame:
    """`candidates` with the columns of every configured feature family, sorted by (row of `rows`, position).

    Args:
        inputs: what the features may read.
        rows: the impression-format rows the candidates belong to (their history and time).
        candidates: long format with at least (impression, user, item, position, time, split, label).
        show_progress: progress bars.

    Raises:
        RecsysError: a family needs what `inputs` lacks (a retriever, a text model, a dataset on disk).
    """
    index = rows.select(Col.IMPRESSION).with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int32()))
    table = (
        candidates.drop(ROW, strict=False).join(index, on=Col.IMPRESSION, how="inner").sort(ROW, Col.POSITION)
        # Positions 0..n-1 within each impression, as every family numbers a candidate list (sampling leaves gaps).
        .with_columns(pl.int_range(pl.len()).over(ROW).cast(pl.Int32()).alias(Col.POSITION))
    )
    if inputs.needs(RETRIEVAL) or inputs.needs(PAIRS):
        table = _retrieval_and_pairs(inputs, rows, table)
    if inputs.needs(TEXT):
        if inputs.text_model is None or inputs.vectors is None:
            raise RecsysError("the text feature family needs a text model and its item vectors")
        scores = text_scores(inputs.text_model, inputs.vectors, rows, table, inputs.dataset.items)
        table = table.join(scores, on=_JOIN, how="left", maintain_order="left")
    if inputs.needs(BEHAVIOUR):
        table = table.join(_behaviour(inputs, rows, table, show_progress), on=_JOIN, how="left", maintain_order="left")
    return table


def _retrieval_and_pairs(inputs: FeatureInputs, rows: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    retriever = inputs.retriever
    if retriever is None:
        raise RecsysError("the retrieval and pairs feature families need a fitted retriever")
    histories = retriever.encode_histories(rows[Col.HISTORY])
    users = user_histories(inputs.dataset.impressions, rows, histories, retriever.encode_histories)  # uncapped, point in time
    index = pl.DataFrame({Col.ITEM: retriever.item_ids, ITEM_INDEX: np.arange(len(retriever.item_ids), dtype=np.int32)})
    table = table.drop(ITEM_INDEX, strict=False).join(index, on=Col.ITEM, how="left", maintain_order="left").with_row_index("_i")
    known = table.filter(pl.col(ITEM_INDEX).is_not_null())  # items outside the catalogue get nulls
    if inputs.needs(RETRIEVAL):
        # Retrieved candidates carry their sources' scores already; logged ones (or a mix) get them here.
        todo = known.filter(pl.col(N_SOURCES).is_null()) if N_SOURCES in table.columns else known
        if todo.height:
            scored = pl.concat([todo.select("_i"), retriever.score_pairs(histories, todo[ROW].to_numpy(), todo[ITEM_INDEX].to_numpy())], how="horizontal")
            missing = [c for c in scored.columns if c not in table.columns]
            table = table.with_columns(pl.lit(None, dtype=scored.schema[c]).alias(c) for c in missing)
            table = table.update(scored, on="_i", how="left")
    if inputs.needs(PAIRS):
        pairs = pair_features(retriever, histories, known.select(ROW, ITEM_INDEX), inputs.pair_vectors, item_codes(inputs.dataset.items),
                              lengths=users.lengths, sequences=users.sequences)
        table = table.join(pl.concat([known.select("_i"), pairs.drop(ROW, ITEM_INDEX)], how="horizontal"), on="_i", how="left", maintain_order="left")
    return table.sort("_i").drop("_i")


def text_scores(model: TextModel, vectors: ItemVectors, rows: pl.DataFrame, table: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """The text family of every candidate of `table`, keyed by (impression, position): the model's interest
    score and the history similarities (:func:`recsys.text.features.text_features`); `items` gives the categories."""
    from recsys.text.features import text_features

    by_vector = pl.DataFrame({Col.ITEM: vectors.ids}).join(items.select(Col.ITEM, Col.CATEGORY), on=Col.ITEM, how="left", maintain_order="left")
    scored = text_features(model, vectors, as_impressions(table, rows), value_codes(by_vector[Col.CATEGORY]))
    return scored.with_columns(pl.int_range(pl.len()).over(Col.IMPRESSION).cast(pl.Int32()).alias(Col.POSITION)).select(*_JOIN, *TEXT_FEATURES)


def _behaviour(inputs: FeatureInputs, rows: pl.DataFrame, table: pl.DataFrame, show_progress: bool) -> pl.DataFrame:
    if inputs.dataset.path is None:
        raise RecsysError("the behaviour feature family reads the dataset's log from disk; save the dataset first")
    names = [f.name for f in registry(inputs.config.windows_hours) if f.group == BEHAVIOUR]
    with tempfile.TemporaryDirectory(prefix="recsys-collect-", dir=inputs.config.temp_dir) as work:
        shown = as_impressions(table, rows)
        write_parquet(shown, Path(work) / "rows.parquet")
        build_features(inputs.dataset.path, Path(work) / "features.parquet", inputs.config, rows=Path(work) / "rows.parquet", show_progress=show_progress)
        built = pl.read_parquet(Path(work) / "features.parquet")
    return built.select(*_JOIN, *[n for n in names if n in built.columns])
