"""The monitor's checks: a new run against the reference, each check a table of rows and the alerts it raises.

Five checks, each row with its statistics and a status (``ok``, ``alert`` or ``skipped``: too few values to judge):

* ``feature_drift``  each ranker feature: PSI and normalised Wasserstein (:mod:`recsys.monitoring.drift`);
* ``score_shift``    the full model's scores of every candidate, the same two statistics;
* ``retrieval``      each candidate source: mean candidates per request and share of requests it gave none;
* ``lists``          coverage (at the same number of lists), diversity, novelty, popularity bias of the top-k lists;
* ``metrics``        each replayed metric on the labelled requests, with the drop's 95% interval.

Every alert names its check, what it concerns (feature, source, figure or metric), the statistic, its value and
the threshold (:class:`MonitorConfig`). A failing retrieval source moves the features it feeds (``n_sources``, its own
score and rank): their drift is reported as ``explained`` by the source's alert, not as alerts of their own. Nothing
here sees a user id.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from features.registry import source_rank, source_score
from recsys.candidates.retrieval import N_SOURCES
from recsys.monitoring.config import MonitorConfig
from recsys.monitoring.drift import compare

OK, ALERT, SKIPPED, EXPLAINED = "ok", "alert", "skipped", "explained"
FEATURE_DRIFT, SCORE_SHIFT, RETRIEVAL, LISTS, METRICS = "feature_drift", "score_shift", "retrieval", "lists", "metrics"
CHECKS = (FEATURE_DRIFT, SCORE_SHIFT, RETRIEVAL, LISTS, METRICS)


@dataclass(frozen=True)
class Alert:
    """One threshold passed: `check` (one of :data:`CHECKS`), `subject` (the feature, source, list figure or metric),
    the `statistic` and its `value`, the `threshold` it passed, and a one-line `message`."""

    check: str
    subject: str
    statistic: str
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Checks:
    """Each check's rows (dicts, for the report's tables and ``monitor.json``) and every alert raised."""

    rows: dict[str, list[dict[str, Any]]]
    alerts: list[Alert]


def _distribution(check: str, subject: str, ref: dict[str, Any], values: np.ndarray, psi_max: float, w_max: float, min_rows: int,
                  alerts: list[Alert]) -> dict[str, Any]:
    d = compare(ref, values)
    n_ref, n_new = round(ref["n"] * (1 - ref["null_share"])), round(d.n * (1 - d.null_share))
    row = {"psi": d.psi, "wasserstein": d.wasserstein, "null share (reference)": ref["null_share"], "null share (new)": d.null_share,
           "mean (reference)": ref["mean"], "mean (new)": float(np.nanmean(values)) if n_new else None}
    thin = min(ref["n"], d.n) < min_rows or (0 < min(n_ref, n_new) < min_rows)
    if thin:
        return {**row, "status": SKIPPED}
    if d.psi >= psi_max and d.wasserstein >= w_max:
        alerts.append(Alert(check, subject, "psi", d.psi, psi_max,
                            f"{subject}: PSI {d.psi:.3f} >= {psi_max} and moved {d.wasserstein:.2f} reference std >= {w_max} "
                            f"(null share {ref['null_share']:.3f} -> {d.null_share:.3f})"))
        return {**row, "status": ALERT}
    return {**row, "status": OK}


def _sources(ref: dict[str, dict[str, float]], new: dict[str, np.ndarray], cfg: MonitorConfig, alerts: list[Alert]) -> list[dict[str, Any]]:
    rows = []
    for source, r in ref.items():
        got = new.get(source, np.zeros(0, dtype=np.int64))
        mean = float(got.mean()) if got.size else 0.0
        zero = float((got == 0).mean()) if got.size else 1.0
        row = {"source": source, "mean (reference)": r["mean"], "mean (new)": mean, "none given (reference)": r["zero_share"], "none given (new)": zero}
        alert = None
        if r["total"] > 0 and (not got.size or got.sum() == 0):
            alert = Alert(RETRIEVAL, source, "candidates per request", 0.0, 0.0, f"{source}: gave no candidate to any of {got.size} requests "
                          f"(reference {r['mean']:.1f} per request)")
        elif r["mean"] > 0 and mean < cfg.source_starved * r["mean"]:
            alert = Alert(RETRIEVAL, source, "candidates per request / reference", mean / r["mean"], cfg.source_starved,
                          f"{source}: {mean:.2f} candidates per request, {mean / r['mean']:.0%} of the reference's {r['mean']:.2f} (< {cfg.source_starved:.0%})")
        elif zero - r["zero_share"] > cfg.source_zero_rise:
            alert = Alert(RETRIEVAL, source, "share of requests given none (rise)", zero - r["zero_share"], cfg.source_zero_rise,
                          f"{source}: gave nothing to {zero:.1%} of requests (reference {r['zero_share']:.1%}; rise > {cfg.source_zero_rise:.0%})")
        if alert:
            alerts.append(alert)
        rows.append({**row, "status": ALERT if alert else OK})
    return rows


def _change(ref: float | None, new: float | None) -> float:
    if ref is None or new is None or not (math.isfinite(ref) and math.isfinite(new)):
        return math.nan
    return (new - ref) / abs(ref) if ref else (0.0 if new == ref else math.inf)


def _lists(ref: dict[str, Any], new: dict[str, Any], cfg: MonitorConfig, alerts: list[Alert]) -> list[dict[str, Any]]:
    """Coverage (at the largest number of lists both runs have), diversity, novelty and popularity bias."""
    if min(ref["lists"], new["lists"]) < cfg.min_rows:
        return [{"figure": "lists", "reference": ref["lists"], "new": new["lists"], "change": None, "status": SKIPPED}]
    common = [c for c in ref["coverage"] if c in new["coverage"]]
    at = max(common, key=int) if common else None
    k = next((name.split("@")[1] for name in ref if name.startswith("novelty@")), "10")
    # (figure, reference, new, statistic judged, its threshold, alert when, what it means)
    judged = [(f"coverage ({at} lists)", ref["coverage"].get(at), new["coverage"].get(at), "relative drop", cfg.coverage_drop, lambda c: -c > cfg.coverage_drop),
              (f"novelty@{k}", ref.get(f"novelty@{k}"), new.get(f"novelty@{k}"), "relative drop", cfg.novelty_drop, lambda c: -c > cfg.novelty_drop),
              (f"ild@{k}", ref.get(f"ild@{k}"), new.get(f"ild@{k}"), "relative change", cfg.diversity_change, lambda c: abs(c) > cfg.diversity_change)]
    rows = []
    for figure, r, n, statistic, threshold, fires in judged:
        change = _change(r, n)
        alert = math.isfinite(change) and fires(change)
        if alert:
            alerts.append(Alert(LISTS, figure, statistic, abs(change), threshold, f"{figure}: {r:.4f} -> {n:.4f} ({change:+.1%}; {statistic} > {threshold:.0%})"))
        rows.append({"figure": figure, "reference": r, "new": n, "change": change, "status": ALERT if alert else (OK if math.isfinite(change) else SKIPPED)})
    r, n = ref["pop_percentile"], new["pop_percentile"]
    rise = n - r if r is not None and n is not None else math.nan
    alert = math.isfinite(rise) and rise > cfg.popularity_rise
    if alert:
        alerts.append(Alert(LISTS, "popularity bias", "mean popularity percentile (rise)", rise, cfg.popularity_rise,
                            f"popularity bias: listed items' mean popularity percentile {r:.3f} -> {n:.3f} (rise > {cfg.popularity_rise})"))
    rows.append({"figure": "popularity bias (mean percentile)", "reference": r, "new": n, "change": rise, "status": ALERT if alert else OK})
    rows.append({"figure": "mean log popularity", "reference": ref["mean_log_pop"], "new": new["mean_log_pop"], "change": _change(ref["mean_log_pop"], new["mean_log_pop"]), "status": "-"})
    return rows


def _metrics(ref: dict[str, dict[str, float]], new: dict[str, dict[str, float]], cfg: MonitorConfig, alerts: list[Alert]) -> list[dict[str, Any]]:
    """Each reference metric against the run's; no rows when no request of the run is labelled."""
    if not new:
        return []
    rows = []
    for metric, r in ref.items():
        n = new.get(metric)
        if n is None or min(r["n"], n["n"]) < cfg.min_rows or not math.isfinite(r["value"]):
            rows.append({"metric": metric, "reference": r["value"], "new": n["value"] if n else None, "95% interval": None, "drop (lower 95%)": None,
                         "status": SKIPPED})
            continue
        se = math.sqrt(r["se"] ** 2 + n["se"] ** 2)
        lower = (r["value"] - n["value"]) - 1.96 * se
        limit = cfg.metric_drop * abs(r["value"])
        alert = lower > limit
        if alert:
            alerts.append(Alert(METRICS, metric, "drop, lower end of its 95% interval", lower, limit,
                                f"{metric}: {r['value']:.4f} -> {n['value']:.4f} (95% {n['lo']:.4f}-{n['hi']:.4f}); fell by at least {lower:.4f} "
                                f"> {cfg.metric_drop:.0%} of the reference"))
        rows.append({"metric": metric, "reference": r["value"], "new": n["value"], "95% interval": f"{n['lo']:.4f} - {n['hi']:.4f}",
                     "drop (lower 95%)": lower, "status": ALERT if alert else OK})
    return rows


def run_checks(reference: dict[str, Any], features: dict[str, np.ndarray], scores: np.ndarray, sources: dict[str, np.ndarray],
               lists: dict[str, Any], metrics: dict[str, dict[str, float]], cfg: MonitorConfig) -> Checks:
    """Compare a new run with `reference` (``reference.json``).

    Args:
        reference: the model's reference.
        features: feature -> the new run's values for every candidate (NaN = null).
        scores: the new run's scores of every candidate.
        sources: candidate source -> candidates it gave each new request.
        lists: the new lists' figures (:func:`recsys.monitoring.reference.list_figures`, coverage at the reference's counts).
        metrics: metric -> the new run's bootstrap summary (:func:`recsys.monitoring.drift.bootstrap`); empty when unlabelled.
        cfg: the thresholds.

    Returns:
        :class:`Checks`.
    """
    alerts: list[Alert] = []
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in CHECKS}
    for name, ref in reference["features"].items():
        if name in features:
            rows[FEATURE_DRIFT].append({"feature": name, **_distribution(FEATURE_DRIFT, name, ref, features[name], cfg.feature_psi,
                                                                         cfg.feature_wasserstein, cfg.min_rows, alerts)})
    rows[FEATURE_DRIFT].sort(key=lambda r: -r["psi"])
    rows[SCORE_SHIFT].append({"scores": "full model, every candidate", **_distribution(SCORE_SHIFT, "score", reference["score"], scores, cfg.score_psi,
                                                                                       cfg.score_wasserstein, cfg.min_rows, alerts)})
    rows[RETRIEVAL] = _sources(reference["sources"], sources, cfg, alerts)
    rows[LISTS] = _lists(reference["lists"], lists, cfg, alerts)
    rows[METRICS] = _metrics(reference["metrics"], metrics, cfg, alerts)
    return Checks(rows, _explain(alerts, rows[FEATURE_DRIFT]))


def _explain(alerts: list[Alert], feature_rows: list[dict[str, Any]]) -> list[Alert]:
    """`alerts` without the drift of features a failing source feeds (``n_sources``, the source's own score and rank):
    they move because the source failed, which its own alert says; their rows say ``explained``."""
    failed = {a.subject for a in alerts if a.check == RETRIEVAL}
    if not failed:
        return alerts
    fed = {N_SOURCES} | {name for s in failed for name in (source_score(s), source_rank(s))}
    for row in feature_rows:
        if row["feature"] in fed and row["status"] == ALERT:
            row["status"] = EXPLAINED
    return [a for a in alerts if not (a.check == FEATURE_DRIFT and a.subject in fed)]
