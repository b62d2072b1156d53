"""The baseline of the feature benchmark: every behaviour feature of :mod:`features.build`, the obvious pandas way.

In memory, vectorised, point in time by running totals looked up with ``merge_asof(..., allow_exact_matches=False)``
(a trailing window is the total before t minus the total before t - w): what one writes first, without the
builder's streaming. It covers what the benchmark's synthetic logs hold (impressions logs, no sampled negatives, no
``click_probs``), and :func:`compare` checks its table against the builder's, feature by feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from features.build import FeatureConfig, output_features
from features.registry import feature_names
from recsys.data import Col

_KEYS = [Col.IMPRESSION, Col.USER, Col.ITEM, Col.POSITION, Col.TIME, Col.SPLIT, Col.LABEL]


def pandas_features(dataset: Path, out: Path, cfg: FeatureConfig | None = None) -> int:
    """Write the behaviour features of the dataset's impressions to `out`; return the row count."""
    cfg = cfg or FeatureConfig()
    imps = pd.read_parquet(dataset / "impressions.parquet")
    items = pd.read_parquet(dataset / "items.parquet", columns=[Col.ITEM, Col.CATEGORY, Col.SUBCATEGORY, Col.PUBLISHED])
    imps[Col.LABELS] = imps[Col.LABELS].where(imps[Col.LABELS].notna(), imps[Col.CANDIDATES].map(lambda c: [None] * len(c)))
    rows = imps[[Col.IMPRESSION, Col.USER, Col.TIME, Col.SPLIT, Col.CANDIDATES, Col.LABELS]].explode([Col.CANDIDATES, Col.LABELS])
    rows[Col.POSITION] = rows.groupby(level=0).cumcount()
    rows = rows.rename(columns={Col.CANDIDATES: Col.ITEM, Col.LABELS: Col.LABEL}).dropna(subset=[Col.ITEM])
    rows[Col.LABEL] = pd.to_numeric(rows[Col.LABEL])
    rows = rows.sort_values([Col.TIME, Col.IMPRESSION, Col.POSITION]).reset_index(drop=True)
    rows = rows.merge(items, on=Col.ITEM, how="left")
    events = rows.dropna(subset=[Col.LABEL]).astype({Col.LABEL: "int64"})

    def ctr(clicks: pd.Series, impressions: pd.Series) -> pd.Series:
        return (clicks + cfg.ctr_prior * cfg.ctr_prior_weight) / (impressions + cfg.ctr_prior_weight)

    def hours(since: pd.Series) -> pd.Series:
        return (rows[Col.TIME] - since).dt.total_seconds() / 3600

    # item: running totals per item; a window [t - w, t) is the total before t minus the total before t - w
    rows = rows.sort_values(Col.TIME, kind="stable")
    item = events.groupby([Col.ITEM, Col.TIME]).agg(n=(Col.LABEL, "size"), c=(Col.LABEL, "sum")).reset_index()
    item[["n", "c"]] = item.groupby(Col.ITEM)[["n", "c"]].cumsum()
    item = item.sort_values(Col.TIME)

    def item_before(shift: pd.Timedelta) -> pd.DataFrame:
        at = (rows[Col.TIME] - shift).astype(rows[Col.TIME].dtype).rename("_at")
        found = pd.merge_asof(pd.concat([at, rows[Col.ITEM]], axis=1).reset_index(), item.rename(columns={Col.TIME: "_at"}),
                              on="_at", by=Col.ITEM, allow_exact_matches=False).set_index("index")
        return found[["n", "c"]].fillna(0)

    before = item_before(pd.Timedelta(0))
    rows["item_impressions_all"], rows["item_clicks_all"] = before["n"], before["c"]
    for h in cfg.windows_hours:
        window = before - item_before(pd.Timedelta(hours=h))
        rows[f"item_impressions_{h}h"], rows[f"item_clicks_{h}h"] = window["n"], window["c"]
    for suffix in [f"{h}h" for h in cfg.windows_hours] + ["all"]:
        rows[f"item_ctr_{suffix}"] = ctr(rows[f"item_clicks_{suffix}"], rows[f"item_impressions_{suffix}"])
    first = rows[Col.ITEM].map(events.groupby(Col.ITEM)[Col.TIME].min())
    rows["_first_seen"] = first.where(first < rows[Col.TIME])
    rows["item_hours_since_first_seen"] = hours(rows["_first_seen"])
    rows["item_hours_since_published"] = hours(rows[Col.PUBLISHED])

    # category: running totals per group, looked up strictly before t
    for level in (Col.CATEGORY, Col.SUBCATEGORY):
        group = events.dropna(subset=[level]).groupby([level, Col.TIME]).agg(n=(Col.LABEL, "size"), c=(Col.LABEL, "sum")).reset_index()
        group[["n", "c"]] = group.groupby(level)[["n", "c"]].cumsum()
        found = pd.merge_asof(rows[[Col.TIME, level]].reset_index(), group.sort_values(Col.TIME), on=Col.TIME, by=level,
                              allow_exact_matches=False).set_index("index")
        rows[f"item_{level}_ctr"] = ctr(found["c"].fillna(0), found["n"].fillna(0)).where(rows[level].notna())

    # user: impressions, clicks and last click before t
    clicked = events[Col.TIME].where(events[Col.LABEL] == 1)
    user = events.assign(_click=clicked).groupby([Col.USER, Col.TIME]).agg(
        i=(Col.IMPRESSION, "nunique"), c=(Col.LABEL, "sum"), last=("_click", "max")).reset_index()
    user[["i", "c"]] = user.groupby(Col.USER)[["i", "c"]].cumsum()
    user["last"] = user.groupby(Col.USER)["last"].cummax()
    user["last"] = user.groupby(Col.USER)["last"].ffill()  # cummax leaves a moment without clicks empty
    found = pd.merge_asof(rows[[Col.TIME, Col.USER]].reset_index(), user.sort_values(Col.TIME), on=Col.TIME, by=Col.USER,
                          allow_exact_matches=False).set_index("index")
    rows["user_impressions_before"], rows["user_clicks_before"] = found["i"].fillna(0), found["c"].fillna(0)
    rows["user_hours_since_last_click"] = hours(found["last"])

    # user history: share of the impression's history list in the candidate's category and subcategory
    history = imps[[Col.IMPRESSION, Col.HISTORY]].explode(Col.HISTORY).merge(items, left_on=Col.HISTORY, right_on=Col.ITEM)
    lengths = imps.set_index(Col.IMPRESSION)[Col.HISTORY].map(len)
    rows["user_history_len"] = rows[Col.IMPRESSION].map(lengths)
    for level, name in ((Col.CATEGORY, "user_category_share"), (Col.SUBCATEGORY, "user_subcategory_share")):
        counts = history.groupby([Col.IMPRESSION, level]).size().rename("_n").reset_index()
        n = rows[[Col.IMPRESSION, level]].merge(counts, on=[Col.IMPRESSION, level], how="left")["_n"].fillna(0).to_numpy()
        rows[name] = (n / rows["user_history_len"]).where(rows[level].notna() & (rows["user_history_len"] > 0))

    # context: per impression
    rows = rows.sort_values([Col.TIME, Col.IMPRESSION, Col.POSITION]).reset_index(drop=True)
    by_impression = rows.groupby(Col.IMPRESSION)
    rows["ctx_n_candidates"] = by_impression[Col.ITEM].transform("size")
    rows["ctx_hour"] = rows[Col.TIME].dt.hour
    rows["ctx_popularity_rank"] = by_impression[f"item_clicks_{max(cfg.windows_hours)}h"].rank(method="min", ascending=False)
    age = (rows[Col.TIME] - rows[Col.PUBLISHED]).fillna(rows[Col.TIME] - rows["_first_seen"]).fillna(pd.Timedelta(0))
    rows["ctx_freshness_rank"] = age.astype("int64").groupby(rows[Col.IMPRESSION]).rank(method="min")

    features = output_features(cfg, "impressions", [])
    table = pl.from_pandas(rows[_KEYS + [f.name for f in features]]).with_columns(
        pl.col(Col.LABEL).cast(pl.Int8), pl.col(Col.POSITION).cast(pl.Int32), *(pl.col(f.name).cast(f.dtype) for f in features))
    table.write_parquet(out)
    return table.height


def compare(built: Path, baseline: Path) -> dict[str, Any]:
    """Feature by feature, whether two tables of the same rows agree (integers exactly, floats to 1e-6 relative)."""
    a, b = pl.read_parquet(built), pl.read_parquet(baseline)
    names = feature_names(a.columns)
    if a.height != b.height or not a.select(_KEYS[:5]).equals(b.select(_KEYS[:5])):
        return {"agrees": False, "problem": "rows differ", "rows": [a.height, b.height]}
    differ = []
    for name in names:
        x, y = a[name], b[name]
        same_nulls = (x.is_null() == y.is_null()).all()
        if x.dtype.is_float():
            close = np.allclose(x.drop_nulls().to_numpy(), y.drop_nulls().to_numpy(), rtol=1e-6, atol=0) if same_nulls else False
        else:
            close = same_nulls and x.equals(y)
        if not close:
            differ.append(name)
    return {"agrees": not differ, "features": len(names), "differ": differ}
