"""What `recsys train` chooses on the dev split of the log it trains on, from which values, in how much time.

The configured retrieval and ranker settings only seed the search: they are the first point tried, and the
grids below are generic (orders of magnitude, a few values), never values that suit one dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.errors import RecsysError


@dataclass(frozen=True)
class SelectionConfig:
    """Settings selection on dev (:mod:`recsys.selection`).

    Attributes:
        enabled: choose the settings below on dev before the features are built (off: train with the settings as given).
        retrieval_seconds: time the retrieval search may spend; it stops when spent and keeps the best so far.
        ranker_seconds: time the ranker search may spend, likewise.
        users: retrieval settings are judged on the dev targets of a seeded sample of this many users (None = all).
        ease_l2: EASE ridge strengths, a half-decade grid (hill-climbed from the configured value).
        recent: history items that drive transitions, co-occurrence and the text vector.
        decay: weight of the k-th most recent item is decay**k (1 = no decay).
        per_source: each source's top-N that joins the candidates.
        max_candidates: the candidate budget: the deepest ``per_source`` whose mean union of candidates per dev request
            stays within it is chosen (more candidates raise the ranker's ceiling, and cost scoring time per request).
        drop_sources: to fit a deeper ``per_source`` into ``max_candidates``, leave out the sources whose candidates hold
            fewer than ``min_recall_gain`` of the dev targets that no other source retrieves.
        min_recall_gain: see ``drop_sources`` (a share of dev targets; 0.001 = one in a thousand).
        num_leaves, learning_rate, min_data_in_leaf, feature_fraction: the LightGBM grid.
        ranker_trials: grid points sampled (seeded) besides the configured ranker settings.
        first_rung: successive halving: every trial first learns from this share of the ranker's fit groups
            (``min_data_in_leaf`` scaled alike) ...
        finalists: ... and the best this many learn again from all of them, with the configured settings; the best of those
            is chosen.
    """

    enabled: bool = True
    retrieval_seconds: float = 120.0
    ranker_seconds: float = 300.0
    users: int | None = 10_000
    ease_l2: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
    recent: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50)
    decay: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    per_source: tuple[int, ...] = (25, 50, 100, 200, 400)
    max_candidates: int = 500
    drop_sources: bool = True
    min_recall_gain: float = 0.001
    num_leaves: tuple[int, ...] = (15, 31, 63, 127)
    learning_rate: tuple[float, ...] = (0.02, 0.05, 0.1)
    min_data_in_leaf: tuple[int, ...] = (20, 50, 100, 200)
    feature_fraction: tuple[float, ...] = (0.5, 0.8, 1.0)
    ranker_trials: int = 8
    first_rung: float = 0.25
    finalists: int = 3

    def __post_init__(self) -> None:
        if self.retrieval_seconds < 0 or self.ranker_seconds < 0:
            raise RecsysError(f"select.retrieval_seconds and select.ranker_seconds must be >= 0, got {self.retrieval_seconds}, {self.ranker_seconds}")
        if self.users is not None and self.users < 1:
            raise RecsysError(f"select.users must be >= 1 or none, got {self.users}")
        grids = {"ease_l2": self.ease_l2, "recent": self.recent, "decay": self.decay, "per_source": self.per_source, "num_leaves": self.num_leaves,
                 "learning_rate": self.learning_rate, "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction}
        empty = [name for name, grid in grids.items() if not grid]
        if empty:
            raise RecsysError(f"select.{empty[0]} must list at least one value")
        checks = [("ease_l2", min(self.ease_l2) > 0, "> 0"), ("recent", min(self.recent) >= 1, ">= 1"),
                  ("decay", 0 < min(self.decay) and max(self.decay) <= 1, "in (0, 1]"), ("per_source", min(self.per_source) >= 1, ">= 1"),
                  ("num_leaves", min(self.num_leaves) >= 2, ">= 2"), ("learning_rate", 0 < min(self.learning_rate) and max(self.learning_rate) <= 1, "in (0, 1]"),
                  ("min_data_in_leaf", min(self.min_data_in_leaf) >= 1, ">= 1"),
                  ("feature_fraction", 0 < min(self.feature_fraction) and max(self.feature_fraction) <= 1, "in (0, 1]")]
        for name, ok, what in checks:
            if not ok:
                raise RecsysError(f"select.{name} values must be {what}, got {grids[name]}")
        if self.max_candidates < 1 or self.ranker_trials < 0 or self.finalists < 1 or not 0 < self.first_rung <= 1:
            raise RecsysError("select.max_candidates and select.finalists must be >= 1, select.ranker_trials >= 0 and select.first_rung in (0, 1]")
        if not 0 <= self.min_recall_gain < 1:
            raise RecsysError(f"select.min_recall_gain must be in [0, 1), got {self.min_recall_gain}")
