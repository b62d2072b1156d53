"""The feature registry: every column the feature builder writes, with its family, dtype and meaning.

The ranker trains on ``feature_names(table.columns)`` and the evaluation report explains columns
with :func:`describe`, so this module is the one place a feature is named. Every behavioural feature of
an impression at time ``t`` is computed from log events strictly before ``t`` (point in time).

Windowed item features exist once per trailing window of :class:`features.build.FeatureConfig`
(``item_clicks_1h``, ``item_clicks_6h``, ...); :func:`registry` lists them for given windows and
:func:`feature_names` recognises any window present in a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

DEFAULT_WINDOWS: tuple[int, ...] = (1, 6, 24)

# Passed through from synthetic data: the true click probability of a candidate. Never a feature.
CLICK_PROB = "click_prob"

# Families the ranker can be told to read (FeatureConfig.families). Behaviour features come from the
# point-in-time builder (features/build.py, in three kinds: item, user, context), text features from the text
# model (recsys/text/features.py), retrieval and pair features from the fitted retriever (features/pairs.py).
BEHAVIOUR, TEXT, RETRIEVAL, PAIRS = "behaviour", "text", "retrieval", "pairs"
FAMILIES = (BEHAVIOUR, TEXT, RETRIEVAL, PAIRS)
ITEM, USER, CONTEXT = "item", "user", "context"  # the kinds of behaviour feature


@dataclass(frozen=True)
class Feature:
    """One feature column.

    Attributes:
        name: column name in the feature table.
        family: ``item``, ``user`` or ``context`` (behaviour), ``text``, ``retrieval`` or ``pairs``.
        dtype: Polars dtype of the column.
        description: what the value means, including what a null means.
        needs_impressions: computed from non-clicked impressions too, so absent for an
            interactions-only log (where every logged row is a click).
        reads_text: derived from item text (left out of the "without text" baseline ranker).
    """

    name: str
    family: str
    dtype: pl.DataType
    description: str
    needs_impressions: bool = False
    reads_text: bool = False

    @property
    def group(self) -> str:
        """The family as FeatureConfig.families names it (item, user and context are all behaviour)."""
        return BEHAVIOUR if self.family in (ITEM, USER, CONTEXT) else self.family


def _windowed(hours: Sequence[int]) -> list[Feature]:
    spans = [(f"{h}h", f"in the {h} h before t") for h in hours] + [("all", "before t (all time)")]
    out: list[Feature] = []
    for suffix, span in spans:
        out += [
            Feature(f"item_impressions_{suffix}", ITEM, pl.Int32(), f"times the item was shown {span}", True),
            Feature(f"item_clicks_{suffix}", ITEM, pl.Int32(), f"clicks on the item {span}"),
            Feature(f"item_ctr_{suffix}", ITEM, pl.Float32(), f"smoothed CTR of the item {span}: (clicks + prior * weight) / (impressions + weight)", True),
        ]
    return out


_ITEM_STATIC = (
    Feature("item_hours_since_first_seen", ITEM, pl.Float32(), "hours since the item's first logged event before t; null if none"),
    Feature("item_hours_since_published", ITEM, pl.Float32(), "hours since the item's publish time; null if unknown or the item is not in items.parquet"),
    Feature("item_category_ctr", ITEM, pl.Float32(), "smoothed CTR of the item's category before t; null if the category is unknown", True),
    Feature("item_subcategory_ctr", ITEM, pl.Float32(), "smoothed CTR of the item's subcategory before t; null if unknown", True),
)

_USER = (
    Feature("user_history_len", USER, pl.Int32(), "length of the click history given with the impression"),
    Feature("user_impressions_before", USER, pl.Int32(), "the user's logged impressions before t", True),
    Feature("user_clicks_before", USER, pl.Int32(), "the user's logged clicks before t"),
    Feature("user_hours_since_last_click", USER, pl.Float32(), "hours since the user's last logged click before t; null if none"),
    Feature("user_category_share", USER, pl.Float32(), "share of the user's history list in the candidate's category; null without history or category"),
    Feature("user_subcategory_share", USER, pl.Float32(), "share of the user's history list in the candidate's subcategory; null without history or subcategory"),
)

_CONTEXT = (
    Feature("ctx_n_candidates", CONTEXT, pl.Int32(), "number of candidates in the impression"),
    Feature("ctx_hour", CONTEXT, pl.Int8(), "hour of day of the impression (0-23, timestamps' own zone)"),
    Feature("ctx_popularity_rank", CONTEXT, pl.Int32(), "rank of the candidate's clicks in the longest window within its impression (1 = most clicked; ties share)"),
    Feature("ctx_freshness_rank", CONTEXT, pl.Int32(), "rank of the candidate's age (publish time, else first seen) within its impression (1 = newest; never-seen items count as newest)"),
)

# Written by recsys/text/features.py (H-text), joined by (impression, candidate) when given.
_TEXT = (
    Feature("text_score", TEXT, pl.Float32(), "text model's interest score of the user in the candidate", reads_text=True),
    Feature("text_max_sim", TEXT, pl.Float32(), "max cosine similarity of the candidate to the user's history items", reads_text=True),
    Feature("text_mean_sim", TEXT, pl.Float32(), "mean cosine similarity of the candidate to the user's history items", reads_text=True),
    Feature("text_recent_sim", TEXT, pl.Float32(), "similarity of the candidate to the user's most recent history items", reads_text=True),
    Feature("text_category_sim", TEXT, pl.Float32(), "mean cosine similarity of the candidate to the user's history items of its category", reads_text=True),
)
TEXT_FEATURES: tuple[str, ...] = tuple(f.name for f in _TEXT)

# Retrieval sources (recsys/candidates/retrieval.py) and the text encoders of the pair features.
SOURCES = ("ease", "transitions", "cooccurrence", "text", "popularity", "recent", "als", "sequence")
TEXT_SOURCES = ("text", "sequence")  # sources that read item text (the sequence model's items are text vectors)
ENCODERS = ("frozen", "ft")  # pretrained, fine-tuned


def source_score(source: str) -> str:
    return f"src_{source}_score"


def source_rank(source: str) -> str:
    return f"src_{source}_rank"


_RETRIEVAL = (
    Feature("n_sources", RETRIEVAL, pl.Float32(), "how many retrieval sources have the candidate in their top per_source"),
    *(f for s in SOURCES for f in (
        Feature(source_score(s), RETRIEVAL, pl.Float32(), f"the {s} source's score of the candidate for the user's history", reads_text=s in TEXT_SOURCES),
        Feature(source_rank(s), RETRIEVAL, pl.Float32(), f"the candidate's rank (1 = best) over the catalogue by the {s} source: "
                "1 + items scored strictly higher, exact to rank_depth (default 5,000; deeper = rank_depth + 1)"
                + ("; through the vector index, among its per_source retrieved items (below them per_source + 1)" if s in TEXT_SOURCES else ""),
                reads_text=s in TEXT_SOURCES),
    )),
)

_PAIRS = (
    Feature("hist_len", PAIRS, pl.Float32(), "length of the user's whole history before t (every item the log knows, not capped by --max-history)"),
    Feature("log_pop", PAIRS, pl.Float32(), "log(1 + interactions) of the candidate in the fitted rows"),
    Feature("trans_last", PAIRS, pl.Float32(), "P(candidate follows the user's last item) in other users' sequences"),
    Feature("trans_rev", PAIRS, pl.Float32(), "P(the user's last item follows the candidate)"),
    Feature("cooc_last", PAIRS, pl.Float32(), "co-occurrence cosine of the candidate and the user's last item"),
    Feature("ease_last", PAIRS, pl.Float32(), "EASE weight from the user's last item to the candidate"),
    Feature("same_category_last", PAIRS, pl.Float32(), "1 if the candidate's category equals the last item's"),
    Feature("category_share", PAIRS, pl.Float32(), "share of the user's recent items in the candidate's category"),
    Feature("same_brand_last", PAIRS, pl.Float32(), "1 if the candidate's brand (first tag) equals the last item's"),
    Feature("brand_share", PAIRS, pl.Float32(), "share of the user's recent items with the candidate's brand"),
    Feature("seen_count", PAIRS, pl.Float32(), "times the user had the candidate before t (whole history; 0 = new to the user)"),
    Feature("seen_ago", PAIRS, pl.Float32(), "how many items ago the user last had the candidate (1 = the last item); null if never"),
    *(f for enc in ENCODERS for f in (
        Feature(f"text_last_{enc}", PAIRS, pl.Float32(), f"cosine of the candidate to the user's last item ({enc} encoder)", reads_text=True),
        Feature(f"text_max_{enc}", PAIRS, pl.Float32(), f"best cosine of the candidate to the user's recent items ({enc} encoder)", reads_text=True),
        Feature(f"text_user_{enc}", PAIRS, pl.Float32(), f"cosine of the candidate to the recency-weighted mean of the recent items ({enc} encoder)", reads_text=True),
    )),
)


def registry(windows_hours: Sequence[int] = DEFAULT_WINDOWS) -> tuple[Feature, ...]:
    """All features recsys can compute for the given trailing windows, in table order."""
    return (*_windowed(sorted(windows_hours)), *_ITEM_STATIC, *_USER, *_CONTEXT, *_TEXT, *_RETRIEVAL, *_PAIRS)


FEATURES: tuple[Feature, ...] = registry()

_WINDOW_NAME = re.compile(r"^item_(?:impressions|clicks|ctr)_(\d+)h$")


def _windows_in(columns: Iterable[str]) -> list[int]:
    return sorted({int(m.group(1)) for c in columns if (m := _WINDOW_NAME.match(c))})


def feature_names(columns: Iterable[str]) -> list[str]:
    """The feature columns among `columns`, in registry order (keys, labels and pass-through columns excluded)."""
    columns = list(columns)
    present = set(columns)
    return [f.name for f in registry(_windows_in(columns)) if f.name in present]


def ranker_features(columns: Iterable[str], families: Sequence[str], *, text: bool = True) -> list[str]:
    """The feature columns among `columns` that a ranker of these families reads; ``text=False`` drops every
    feature derived from item text (the "without text" baseline)."""
    return [f.name for f in describe(columns) if f.group in families and (text or not f.reads_text)]


def describe(columns: Iterable[str]) -> list[Feature]:
    """The :class:`Feature` entries of the feature columns among `columns`, in registry order."""
    columns = list(columns)
    by_name = {f.name: f for f in registry(_windows_in(columns))}
    return [by_name[name] for name in feature_names(columns)]
