"""The monitor's thresholds: one typed dataclass, read from the ``[monitor]`` table of a config file.

Every default was measured: on two synthetic logs of the same generator (different seeds) and on the same log
twice, no check reaches its threshold; on a log with one feature moved, a retrieval source emptied or lists
collapsed onto popular items, the matching check passes it by a wide margin (tests/test_monitor.py; the README
gives the figures). A run's requests are a sample, so every check also needs :attr:`MonitorConfig.min_rows` values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from recsys.config import MONITOR_TABLE, apply_settings, read_config_file
from recsys.errors import RecsysError


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of ``recsys monitor``: a check alerts when its statistic passes its threshold.

    Attributes:
        feature_psi: a feature drifted when its PSI over the reference's ventile bins (nulls a bin) is at least this
            (the usual reading: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one) ...
        feature_wasserstein: ... and its values moved at least this many reference standard deviations
            (Wasserstein-1 of the quantile functions over the reference std). Both must pass: PSI alone flags
            harmless moves across a bin edge of a discrete feature, Wasserstein alone a change of shape in the tails.
        score_psi: the same two thresholds for the full model's scores of every candidate.
        score_wasserstein: see `score_psi`.
        source_starved: a candidate source is starved when it gives fewer than this share of the reference's mean
            candidates per request (empty: none at all).
        source_zero_rise: ... or when the share of requests it gives nothing rises by more than this (absolute).
        coverage_drop: catalogue coverage (at the same number of lists) fell by more than this share of the reference's.
        popularity_rise: the mean popularity percentile of listed items rose by more than this (absolute; 0.5 = no bias).
        novelty_drop: novelty (mean self-information) fell by more than this share of the reference's.
        diversity_change: intra-list diversity moved (either way) by more than this share of the reference's.
        metric_drop: a replayed metric fell by more than this share of its reference value, at 95% confidence (the
            lower end of the drop's interval, reference and new sampling error combined, is above it).
        min_rows: fewer values than this on either side (non-null feature values, scores, lists, labelled requests)
            and the check is skipped, not judged: a few rows say nothing about a distribution.
    """

    feature_psi: float = 0.2
    feature_wasserstein: float = 0.2
    score_psi: float = 0.2
    score_wasserstein: float = 0.2
    source_starved: float = 0.5
    source_zero_rise: float = 0.25
    coverage_drop: float = 0.3
    popularity_rise: float = 0.15
    novelty_drop: float = 0.2
    diversity_change: float = 0.3
    metric_drop: float = 0.1
    min_rows: int = 50

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise RecsysError(f"monitor.{f.name} must be above 0, got {value}")
        for name in ("source_starved", "coverage_drop", "novelty_drop", "metric_drop"):
            if getattr(self, name) >= 1:
                raise RecsysError(f"monitor.{name} is a share and must be below 1, got {getattr(self, name)}")


def load_monitor_config(path: str | Path | None) -> MonitorConfig:
    """The defaults with every setting of the ``[monitor]`` table of the file at `path` (TOML or JSON) replaced.

    Raises:
        RecsysError: the file is unreadable, or names an unknown setting or a bad value (naming the file and setting).
    """
    if path is None:
        return MonitorConfig()
    table = read_config_file(path).get(MONITOR_TABLE, {})
    return apply_settings(MonitorConfig(), table, f"{path} [{MONITOR_TABLE}]")
