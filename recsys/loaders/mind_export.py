"""Write a dataset back out in MIND format (for ``recsys synth --format mind`` and round-trip tests).

Each split gets a directory with ``news.tsv`` (all items; the loader deduplicates), ``behaviors.tsv``
(labelled unless the split's labels are null) and, when click probabilities exist, ``truth.tsv``.
Rows are written in slices so a million-impression split never becomes one giant string.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data import Col, Dataset
from recsys.io import atomic_path
from recsys.loaders.mind import BEHAVIORS, NEWS, TRUTH

SLICE_ROWS = 100_000
# MIND's own time format, without zero padding ("11/15/2019 8:55:22 AM").
_MIND_WRITE_FORMAT = "%-m/%-d/%Y %-I:%M:%S %p"


def _write_tsv(frames: list[pl.DataFrame] | pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for frame in frames if isinstance(frames, list) else [frames]:
            frame.write_csv(fh, include_header=False, separator="\t", quote_style="never")


def _entity(label: pl.Expr) -> pl.Expr:
    """A MIND entity JSON object holding only its label (all the loader reads)."""
    escaped = label.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
    return pl.concat_str(pl.lit('{"Label": "'), escaped, pl.lit('"}'))


def _raw_id(split: str) -> pl.Expr:
    return pl.col(Col.IMPRESSION).str.strip_prefix(f"{split}-")


def _behaviors(chunk: pl.DataFrame, split: str) -> pl.DataFrame:
    if chunk[Col.LABELS].null_count() == chunk.height:
        log = pl.col(Col.CANDIDATES).list.join(" ")
    else:
        tokens = (
            chunk.select(pl.int_range(pl.len()).alias("row"), Col.CANDIDATES, Col.LABELS)
            .explode([Col.CANDIDATES, Col.LABELS])
            .group_by("row", maintain_order=True)
            .agg(pl.format("{}-{}", Col.CANDIDATES, Col.LABELS).str.join(" ").alias("log"))
        )
        chunk = chunk.with_columns(tokens["log"])
        log = pl.col("log")
    return chunk.select(
        _raw_id(split),
        Col.USER,
        pl.col(Col.TIME).dt.strftime(_MIND_WRITE_FORMAT),
        pl.col(Col.HISTORY).list.join(" "),
        log,
    )


def _truth(chunk: pl.DataFrame, split: str) -> pl.DataFrame:
    probs = pl.col(Col.CLICK_PROBS).list.eval(pl.element().cast(pl.String())).list.join(" ")  # shortest exact f32 text
    return chunk.select(_raw_id(split), probs)


def write_mind(ds: Dataset, out_dir: Path) -> Path:
    """Write ``ds`` as MIND directories ``out_dir/<split>/{news,behaviors,truth}.tsv``.

    Args:
        ds: a dataset whose candidates have no empty lists (MIND cannot express them).
        out_dir: created if needed.

    Returns:
        ``out_dir``.
    """
    news = ds.items.select(
        Col.ITEM,
        pl.col(Col.CATEGORY).fill_null(""),
        pl.col(Col.SUBCATEGORY).fill_null(""),
        Col.TITLE,
        pl.col(Col.ABSTRACT).fill_null(""),
        pl.lit("").alias("url"),
        # Tags go back out as entities with a label only, which is all the loader reads.
        pl.concat_str(pl.lit("["), pl.col(Col.TAGS).fill_null([]).list.eval(_entity(pl.element())).list.join(", "), pl.lit("]")).alias("title_entities"),
        pl.lit("[]").alias("abstract_entities"),
    )
    for split in ds.impressions[Col.SPLIT].unique(maintain_order=True).to_list():
        imps = ds.split(split)
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        _write_tsv(news, d / NEWS)
        _write_tsv([_behaviors(c, split) for c in imps.iter_slices(SLICE_ROWS)], d / BEHAVIORS)
        if Col.CLICK_PROBS in imps.columns:
            _write_tsv([_truth(c, split) for c in imps.iter_slices(SLICE_ROWS)], d / TRUTH)
    return out_dir
