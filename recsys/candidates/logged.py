"""Logged candidates: what an impression log says was shown, one row per (impression, candidate).

Impression logs (MIND, events with impressions) and requests that bring their own candidates take
their candidates from here; labels are the logged clicks (null for unlabelled rows and requests).
"""

from __future__ import annotations

import polars as pl

from recsys.data import Col, explode_candidates

# Columns every candidate table has, whatever its source; retrieved candidates add their sources' columns.
KEYS = [Col.IMPRESSION, Col.USER, Col.ITEM, Col.POSITION, Col.TIME, Col.SPLIT, Col.LABEL]


def logged_candidates(rows: pl.DataFrame) -> pl.DataFrame:
    """The candidates of impression-format `rows` in long format (:data:`KEYS`, plus ``click_prob`` when logged).

    A candidate listed twice in one impression stays twice (its positions differ); empty lists give no rows.
    """
    long = explode_candidates(rows.filter(pl.col(Col.CANDIDATES).list.len() > 0))
    extra = [pl.col(Col.CLICK_PROBS).alias("click_prob")] if Col.CLICK_PROBS in long.columns else []
    return long.select(*KEYS, *extra)


def as_impressions(candidates: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """Impression-format rows whose candidate lists are `candidates` (in position order), with the history,
    time and split of `rows`: how the point-in-time feature SQL and the text model read any candidate set."""
    lists = (
        candidates.sort(Col.IMPRESSION, Col.POSITION)
        .group_by(Col.IMPRESSION, maintain_order=True)
        .agg(pl.col(Col.ITEM).alias(Col.CANDIDATES), pl.col(Col.LABEL).alias(Col.LABELS))
    )
    base = rows.drop([c for c in (Col.CANDIDATES, Col.LABELS, Col.CLICK_PROBS) if c in rows.columns])
    out = base.join(lists, on=Col.IMPRESSION, how="inner")
    no_labels = pl.col(Col.LABELS).list.eval(pl.element().is_null()).list.all()
    return out.with_columns(pl.when(no_labels).then(None).otherwise(pl.col(Col.LABELS)).alias(Col.LABELS))
