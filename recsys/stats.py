"""Dataset statistics for ``recsys stats``: counts, time range, CTR, list-length distributions, id coverage.

Works on a dataset directory through lazy Parquet scans (so MIND-large stays cheap) or on an
in-memory :class:`~recsys.data.Dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.io import read_json

_QUANTILES = (0.5, 0.9, 0.99)


def _frames(dataset: Dataset | str | Path) -> tuple[pl.LazyFrame, pl.LazyFrame, dict[str, Any]]:
    if isinstance(dataset, Dataset):
        return dataset.items.lazy(), dataset.impressions.lazy(), dataset.manifest
    path = Path(dataset)
    if not (path / "manifest.json").is_file():
        raise RecsysError(f"{path} is not a recsys dataset (no manifest.json); create one with `recsys ingest` or `recsys synth`")
    return pl.scan_parquet(path / "items.parquet"), pl.scan_parquet(path / "impressions.parquet"), read_json(path / "manifest.json")


def _distribution(column: pl.Expr) -> list[pl.Expr]:
    """min, mean, quantiles and max of a list column's lengths."""
    n = column.list.len()
    return [
        n.min().alias("min"),
        n.mean().alias("mean"),
        *[n.quantile(q, "nearest").alias(f"p{round(q * 100)}") for q in _QUANTILES],
        n.max().alias("max"),
        (n == 0).mean().alias("share_empty"),
    ]


def _coverage(ids: pl.LazyFrame, item_ids: pl.LazyFrame) -> dict[str, Any]:
    """Share of id occurrences (and distinct ids) that exist in the items table."""
    known = ids.join(item_ids.with_columns(pl.lit(True).alias("_known")), on=Col.ITEM, how="left").select(pl.col("_known").fill_null(False))
    row = known.select(pl.len().alias("occurrences"), pl.col("_known").mean().alias("known_share")).collect().row(0, named=True)
    distinct = ids.unique().join(item_ids, on=Col.ITEM, how="anti").select(pl.len()).collect().item()
    return {**row, "distinct_missing": distinct}


def compute_stats(dataset: Dataset | str | Path) -> dict[str, Any]:
    """Statistics of a dataset (directory path or in-memory :class:`Dataset`).

    Returns:
        ``{"kind", "items", "impressions", "users", "splits": {split: {impressions, users, time_min,
        time_max, candidates, clicks, ctr, unlabelled}}, "history_length", "candidates_per_impression",
        "coverage": {"candidates", "history"}, "items_never_shown", "dev_users_seen_in_train"}``.

    Raises:
        RecsysError: ``dataset`` is not a dataset directory.
    """
    items, imps, manifest = _frames(dataset)
    item_ids = items.select(Col.ITEM).unique()
    per_split = (
        imps.group_by(Col.SPLIT)
        .agg(
            pl.len().alias("impressions"),
            pl.col(Col.USER).n_unique().alias("users"),
            pl.col(Col.TIME).min().alias("time_min"),
            pl.col(Col.TIME).max().alias("time_max"),
            pl.col(Col.CANDIDATES).list.len().sum().alias("candidates"),
            pl.col(Col.LABELS).list.sum().sum().alias("clicks"),
            pl.col(Col.CANDIDATES).list.len().filter(pl.col(Col.LABELS).is_not_null()).sum().alias("labelled_candidates"),
            pl.col(Col.LABELS).is_null().sum().alias("unlabelled"),
        )
        .with_columns(pl.when(pl.col("labelled_candidates") > 0).then(pl.col("clicks") / pl.col("labelled_candidates")).alias("ctr"))
        .sort(Col.SPLIT)
        .collect()
    )
    totals = imps.select(pl.len().alias("impressions"), pl.col(Col.USER).n_unique().alias("users")).collect().row(0, named=True)
    shown = imps.select(pl.col(Col.CANDIDATES).explode().alias(Col.ITEM))
    history = imps.select(pl.col(Col.HISTORY).explode().alias(Col.ITEM)).drop_nulls()
    train_users = imps.filter(pl.col(Col.SPLIT) == Split.TRAIN).select(Col.USER).unique()
    dev = imps.filter(pl.col(Col.SPLIT) == Split.DEV).select(Col.USER)
    dev_seen = dev.join(train_users.with_columns(pl.lit(True).alias("_seen")), on=Col.USER, how="left").select(pl.col("_seen").fill_null(False).mean()).collect().item()
    return {
        "kind": manifest.get("kind", "impressions"),
        "source": manifest.get("source"),
        "items": items.select(pl.len()).collect().item(),
        **totals,
        "splits": {row.pop(Col.SPLIT): row for row in per_split.to_dicts()},
        "history_length": imps.select(_distribution(pl.col(Col.HISTORY))).collect().row(0, named=True),
        "candidates_per_impression": imps.select(_distribution(pl.col(Col.CANDIDATES))).collect().row(0, named=True),
        "coverage": {"candidates": _coverage(shown, item_ids), "history": _coverage(history, item_ids)},
        "items_never_shown": item_ids.join(shown.unique(), on=Col.ITEM, how="anti").select(pl.len()).collect().item(),
        "dev_users_seen_in_train": dev_seen,
        "skipped": manifest.get("skipped"),
    }


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_stats(stats: dict[str, Any]) -> str:
    """A short plain-text rendering of :func:`compute_stats` output."""
    lines = [f"{stats['kind']} dataset ({stats.get('source')}): {stats['items']} items, {stats['impressions']} impressions, {stats['users']} users"]
    for split, row in stats["splits"].items():
        ctr = "n/a" if row["ctr"] is None else f"{row['ctr']:.2%}"
        lines.append(f"  {split:<5} {row['impressions']:>9} impressions  {row['users']:>8} users  {row['time_min']} .. {row['time_max']}  CTR {ctr}")
    for name in ("history_length", "candidates_per_impression"):
        lines.append(f"  {name}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in stats[name].items()))
    for name, cov in stats["coverage"].items():
        share = "n/a" if cov["known_share"] is None else f"{cov['known_share']:.2%}"
        lines.append(f"  {name} ids in items: {share} of {cov['occurrences']} ({cov['distinct_missing']} distinct missing)")
    lines.append(f"  items never shown: {stats['items_never_shown']}; dev users seen in train: {_fmt(stats['dev_users_seen_in_train'])}")
    if stats.get("skipped") and stats["skipped"].get("total"):
        lines.append(f"  skipped rows at ingest: {stats['skipped']}")
    return "\n".join(lines)
