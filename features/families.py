"""The behaviour feature families, computed segment by segment over the log in time order.

A segment holds every row of a span of timestamps (a timestamp is never split between segments), in
table order. Its rows are queries (the rows being featurised) and events (the log's labelled, shown
candidates: unlabelled rows, such as requests and MIND test, and sampled negatives were never shown to
anyone, so they are not behaviour). When the rows are the log, a row is both.

Families, each point in time through a :class:`features.timeline.Timeline` (sums strictly before t):

* item      the candidate's impressions, clicks and smoothed CTR in each trailing window [t - w, t) and
            all time; hours since its first event before t and since its publish time
* category  the smoothed CTR of the candidate's category and subcategory before t (events of items
            without metadata count nowhere)
* user      the user's impressions (with an event), clicks and hours since the last click before t;
            two impressions of one user at the same timestamp do not see each other
* context   per impression: candidates, hour of day, and the candidate's rank by clicks in the longest
            window (1 = most) and by age (publish time, else first seen; never seen = newest; 1 = newest),
            ties sharing the best rank

The history shares of the user family come with the rows (:mod:`features.shape`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from features.keys import NO_GROUP, NO_TIME, Keys, radix_order, run_starts
from features.shape import CATEGORY_CODE, ITEM_CODE, SUBCATEGORY_CODE, USER_CODE
from features.timeline import HOUR_US, NEVER, NONE, Timeline
from recsys.data import Col

if TYPE_CHECKING:
    from features.build import FeatureConfig

IS_QUERY, IS_EVENT = "_is_query", "_is_event"  # a row being featurised; an event of the log (a row can be both)


class Behaviour:
    """Every behaviour family, fed one segment at a time (:meth:`features`)."""

    def __init__(self, cfg: FeatureConfig, keys: Keys) -> None:
        self.windows = cfg.windows_hours
        self.prior, self.weight = cfg.ctr_prior, cfg.ctr_prior_weight
        self.keys = keys
        self.item = Timeline(2, window_us=max(self.windows) * HOUR_US, first=True)  # impressions, clicks
        self.category = Timeline(2)
        self.subcategory = Timeline(2)
        self.user = Timeline(3, last_of=2)  # impressions, clicks, clicks with label 1 (for the last click)

    def features(self, segment: pl.DataFrame) -> pl.DataFrame:
        """The query rows of `segment` (time-ordered, events flagged) with every behaviour feature."""
        item = segment[ITEM_CODE].to_numpy()
        ts = segment[Col.TIME].dt.epoch("us").to_numpy()
        event = segment[IS_EVENT].to_numpy()
        clicks = np.where(event, segment[Col.LABEL].fill_null(0).to_numpy().astype(np.int64), 0)
        shown_clicks = np.column_stack([event, clicks])
        cols = self._item(item, ts, shown_clicks)
        for name, timeline, code in (("item_category_ctr", self.category, CATEGORY_CODE),
                                     ("item_subcategory_ctr", self.subcategory, SUBCATEGORY_CODE)):
            cols[name] = self._group_ctr(timeline, segment[code].to_numpy(), ts, shown_clicks)
        cols.update(self._user(segment, ts, event, clicks))
        published = self.keys.items.published[item]
        cols["item_hours_since_published"] = _hours(ts, published, published != NO_TIME)
        cols["_age"] = np.where(published != NO_TIME, ts - published, np.where(cols["_first_seen"] != NEVER, ts - cols["_first_seen"], 0))
        query = segment[IS_QUERY].to_numpy()
        if not query.all():  # the log's own events: their features are not asked for
            segment, cols = segment.filter(query), {n: v[query] for n, v in cols.items()}
        rows = segment.with_columns(pl.Series(n, v, nan_to_null=True) for n, v in cols.items())
        return _context(rows, f"item_clicks_{max(self.windows)}h")

    def _item(self, item: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        seg = self.item.add(item, ts, weights)
        cols: dict[str, np.ndarray] = {}
        for suffix, sums in [(f"{h}h", seg.window(h)) for h in self.windows] + [("all", seg.before())]:
            cols[f"item_impressions_{suffix}"], cols[f"item_clicks_{suffix}"] = sums[:, 0], sums[:, 1]
            cols[f"item_ctr_{suffix}"] = self._ctr(sums)
        cols["_first_seen"] = first = seg.first_time()
        cols["item_hours_since_first_seen"] = _hours(ts, first, first != NEVER)
        return cols

    def _group_ctr(self, timeline: Timeline, group: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> np.ndarray:
        known = group != NO_GROUP
        ctr = np.full(len(group), np.nan)
        ctr[known] = self._ctr(timeline.add(group[known], ts[known], weights[known]).before())
        return ctr

    def _user(self, segment: pl.DataFrame, ts: np.ndarray, event: np.ndarray, clicks: np.ndarray) -> dict[str, np.ndarray]:
        # An impression counts once, at its first event row: its rows are adjacent, and a log's impression ids unique.
        events = np.flatnonzero(event)
        ids = segment[Col.IMPRESSION].gather(events)
        first = np.zeros(len(event), np.int64)
        first[events[(ids != ids.shift()).fill_null(True).to_numpy()]] = 1
        seg = self.user.add(segment[USER_CODE].to_numpy(), ts, np.column_stack([first, clicks, event & (clicks == 1)]))
        sums, last = seg.before(), seg.last_time()
        return {"user_impressions_before": sums[:, 0], "user_clicks_before": sums[:, 1],
                "user_hours_since_last_click": _hours(ts, last, last != NONE)}

    def _ctr(self, sums: np.ndarray) -> np.ndarray:
        """Smoothed CTR of (impressions, clicks) sums: (clicks + prior * weight) / (impressions + weight)."""
        return (sums[:, 1] + self.prior * self.weight) / (sums[:, 0] + self.weight)


def _hours(ts: np.ndarray, since: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Hours from `since` to `ts` (microseconds), NaN (a null in the table) where not `known`."""
    return np.where(known, (ts - np.where(known, since, ts)) / 3600e6, np.nan)


def _context(rows: pl.DataFrame, popularity: str) -> pl.DataFrame:
    """Per impression (its rows are adjacent in table order): candidates, hour, popularity and freshness ranks."""
    ids = rows[Col.IMPRESSION]
    impression = (ids != ids.shift()).fill_null(True).cum_sum().to_numpy().astype(np.int64)
    sizes = np.bincount(impression)
    return rows.with_columns(
        pl.Series("ctx_n_candidates", sizes[impression]),
        pl.col(Col.TIME).dt.hour().alias("ctx_hour"),
        pl.Series("ctx_popularity_rank", _rank_within(impression, -rows[popularity].to_numpy())),
        pl.Series("ctx_freshness_rank", _rank_within(impression, rows["_age"].to_numpy())),
    )


def _rank_within(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """1-based rank of `value` (ascending) within each `group`, ties sharing the lowest rank (SQL ``rank()``)."""
    n = len(group)
    if not n:
        return np.zeros(0, np.int64)
    order = radix_order(value - value.min(), group)
    group_start, tie_start = run_starts(group[order], value[order])
    ranks = np.empty(n, np.int64)
    ranks[order] = tie_start - group_start + 1
    return ranks
