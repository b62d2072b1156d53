"""The monitor's report: ``report.md``, its plots, and ``report.html`` (the same page, self-contained).

Sections, each a table (its id in the HTML is the section's slug, listed in ``monitor.json``'s ``tables``)::

    Alerts              every alert: check, subject, statistic, value, threshold, message (or "No alert")
    Feature drift       each ranker feature: PSI, normalised Wasserstein, null shares, means; drift.png (PSI by feature)
    Score distribution  the scores' PSI, Wasserstein, means; scores.png (the two quantile functions)
    Retrieval sources   candidates per request and requests given none, per source; sources.png
    Lists               coverage, diversity, novelty, popularity bias of the top-k lists
    Replayed metrics    each metric of the labelled requests with its 95% interval (when any request is labelled)
    Thresholds          the MonitorConfig in force

Aggregates only: no user id reaches the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from recsys.evaluation.html import slug, write_html
from recsys.evaluation.report import frame_md, save_figure
from recsys.io import atomic_path
from recsys.monitoring.checks import ALERT, FEATURE_DRIFT, LISTS, METRICS, RETRIEVAL, SCORE_SHIFT, Checks
from recsys.monitoring.drift import MIDPOINTS

REPORT_MD = "report.md"
DRIFT_PNG, SCORES_PNG, SOURCES_PNG = "drift.png", "scores.png", "sources.png"
TOP_FEATURES = 30  # features in the drift plot (the table has them all)
SECTIONS = {FEATURE_DRIFT: "Feature drift", SCORE_SHIFT: "Score distribution", RETRIEVAL: "Retrieval sources", LISTS: "Lists",
            METRICS: "Replayed metrics"}
_COLOURS = {ALERT: "tab:red", "ok": "tab:blue", "skipped": "tab:gray"}


def plot_drift(rows: list[dict[str, Any]], psi_max: float, path: Path) -> None:
    """Horizontal bars of each feature's PSI (largest on top), coloured by status, the threshold as a line."""
    top = sorted(rows, key=lambda r: -r["psi"])[:TOP_FEATURES][::-1]
    fig = Figure(figsize=(7, 0.3 * len(top) + 1.4))
    ax = fig.add_subplot()
    ax.barh([r["feature"] for r in top], [r["psi"] for r in top], color=[_COLOURS.get(r["status"], "tab:blue") for r in top])
    ax.axvline(psi_max, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {psi_max}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("PSI against the reference (red: alert)")
    ax.set_title(f"Feature drift (top {len(top)} by PSI)")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_scores(reference: dict[str, Any], scores: np.ndarray, path: Path) -> None:
    """The reference's and the new run's score quantile functions (percentile -> score)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    pct = 100 * MIDPOINTS
    if reference["quantiles"]:
        ax.plot(pct, reference["quantiles"], label="reference", color="tab:gray")
    finite = scores[np.isfinite(scores)]
    if finite.size:
        ax.plot(pct, np.quantile(finite, MIDPOINTS), label="this run", color="tab:blue")
    ax.set_xlabel("percentile of candidates")
    ax.set_ylabel("full model score")
    ax.set_title("Score distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_sources(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean candidates per request of each source, reference beside this run."""
    names = [r["source"] for r in rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [r["mean (reference)"] for r in rows], 0.4, label="reference", color="tab:gray")
    ax.bar(x + 0.2, [r["mean (new)"] for r in rows], 0.4, label="this run", color=[_COLOURS.get(r["status"], "tab:blue") for r in rows])
    ax.set_xticks(x, names)
    ax.set_ylabel("candidates per request")
    ax.set_title("Retrieval sources (red: alert)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


ALERT_COLUMNS = ("check", "subject", "statistic", "value", "threshold", "message")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...] = ()) -> str:
    """A Markdown table of `rows`; with none, the header of `columns` alone (the table is still there to find)."""
    if rows:
        return frame_md(pl.DataFrame(rows, infer_schema_length=None))
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def write_monitor_report(out_dir: Path, *, title: str, notes: dict[str, Any], checks: Checks, reference: dict[str, Any], scores: np.ndarray,
                         thresholds: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Write ``report.md``, its plots and ``report.html`` into `out_dir`.

    Returns:
        (the ids of the report's tables, the file names of its plots): what ``monitor.json`` lists.
    """
    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    tables, plots = [], []

    def section(heading: str, rows: list[dict[str, Any]], plot: str | None = None, note: str = "", columns: tuple[str, ...] = ()) -> None:
        md.extend([f"## {heading}", "", *([note, ""] if note else []), _table(rows, columns), ""])
        tables.append(slug(heading))
        if plot:
            md.extend([f"![{heading}]({plot})", ""])
            plots.append(plot)

    alerts = [{c: getattr(a, c) for c in ALERT_COLUMNS} for a in checks.alerts]
    section("Alerts", alerts, note=f"{len(alerts)} alert(s): the run should not be exported." if alerts else "No alert.", columns=ALERT_COLUMNS)
    rows = checks.rows
    if rows[FEATURE_DRIFT]:
        plot_drift(rows[FEATURE_DRIFT], thresholds["feature_psi"], out_dir / DRIFT_PNG)
    section(SECTIONS[FEATURE_DRIFT], rows[FEATURE_DRIFT], DRIFT_PNG if rows[FEATURE_DRIFT] else None,
            "PSI over the reference's ventile bins (nulls a bin); Wasserstein in reference standard deviations.")
    plot_scores(reference["score"], scores, out_dir / SCORES_PNG)
    section(SECTIONS[SCORE_SHIFT], rows[SCORE_SHIFT], SCORES_PNG)
    if rows[RETRIEVAL]:
        plot_sources(rows[RETRIEVAL], out_dir / SOURCES_PNG)
    section(SECTIONS[RETRIEVAL], rows[RETRIEVAL], SOURCES_PNG if rows[RETRIEVAL] else None, "Candidates each source gave a request.",
            columns=("source", "status"))
    section(SECTIONS[LISTS], rows[LISTS], note="Coverage is compared at the same number of lists (it grows with the number of lists).")
    if rows[METRICS]:
        section(SECTIONS[METRICS], rows[METRICS], note="Bootstrap 95% intervals over the labelled requests.")
    else:
        md.extend([f"## {SECTIONS[METRICS]}", "", "No labelled request in this run: nothing to replay.", ""])
    section("Thresholds", [{"setting": k, "value": str(v)} for k, v in thresholds.items()])
    with atomic_path(out_dir / REPORT_MD) as tmp:
        tmp.write_text("\n".join(md))
    write_html(out_dir / REPORT_MD)
    return tables, plots
