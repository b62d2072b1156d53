"""The evaluation report: ``report.md`` with tables, ``metrics.json`` with the numbers, PNG plots.

Files written into the output directory (each atomically)::

    report.md        title, notes, metric table (best per metric in bold), importance, by-group table
    report.html      the same page, self-contained: plots embedded, no network (recsys/evaluation/html.py)
    metrics.json     the same numbers, machine-readable (NaN as null); ``tables`` and ``plots`` name what the pages hold
    metrics.png      metric comparison, one bar per model and metric
    importance.png   top features by gain (when importance is given)
    by_group.png     metrics by group, e.g. user history length (when by_group is given)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recsys.evaluation.html import slug, write_html
from recsys.evaluation.metrics import AUC, IMPRESSIONS, ndcg_key
from recsys.io import atomic_path, make_dir, write_json

logger = logging.getLogger(__name__)

REPORT, METRICS_JSON = "report.md", "metrics.json"
METRICS_PNG, IMPORTANCE_PNG, BY_GROUP_PNG = "metrics.png", "importance.png", "by_group.png"
TOP_FEATURES = 20
# Counts and descriptive figures: shown, never ranked.
COUNTS = {IMPRESSIONS, "n", "rows"}
NOT_RANKED = COUNTS | {"pop_percentile", "mean_log_pop", "catalogue_mean_log_pop"}
LOWER_IS_BETTER: set[str] = set()
GROUP_KEY, MODEL_KEY = "bucket", "model"
HISTORY_BUCKETS = (0, 1, 5, 10, 20, 50)  # both protocols report metrics by these user history lengths
_IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)]+)\)$")  # a plot line of report.md


def history_buckets(lengths: np.ndarray) -> np.ndarray:
    """The label of each history length's bucket (``0``, ``1-4``, ..., ``50+``)."""
    edges = list(HISTORY_BUCKETS)
    labels = [f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo) for lo, hi in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    return np.asarray(labels)[np.searchsorted(edges, np.asarray(lengths), side="right") - 1]


def metric_table_text(table: dict[str, dict[str, float]]) -> str:
    """The metric table as aligned plain text, for a terminal."""
    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    name_w = max(len(name) for name in table) + 2
    widths = [max(len(m) + 2, 9) for m in metrics]
    lines = [" " * name_w + "".join(f"{m:>{w}}" for m, w in zip(metrics, widths))]
    lines += [f"{name:<{name_w}}" + "".join(_cell(row.get(m), w) for m, w in zip(metrics, widths)) for name, row in table.items()]
    return "\n".join(lines)


def _cell(value: object, width: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return f"{'-':>{width}}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and value > 1):
        return f"{int(value):>{width}d}"
    return f"{float(value):>{width}.4f}"  # type: ignore[arg-type]
BY_GROUP_METRICS = (AUC, ndcg_key(10))


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in COUNTS and isinstance(value, (int, float)):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _metric_columns(table: dict[str, dict[str, float]]) -> list[str]:
    cols: list[str] = []
    for row in table.values():
        cols += [c for c in row if c not in cols]
    return cols


def _best(table: dict[str, dict[str, float]], metric: str, exclude: Sequence[str]) -> float | None:
    values = [v for name, row in table.items() if name not in exclude for v in [row.get(metric)] if v is not None and not math.isnan(v)]
    if metric in NOT_RANKED or not values:
        return None
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def metric_table_md(table: dict[str, dict[str, float]], reference_rows: Sequence[str] = ("oracle",)) -> str:
    """Markdown table, one row per model, the best value of each metric in bold.

    Rows in `reference_rows` (ceilings such as the oracle) are shown in italics and not ranked.

    >>> print(metric_table_md({"a": {"auc": 0.6, "impressions": 10.0}, "b": {"auc": 0.7, "impressions": 10.0}}))
    | model | auc | impressions |
    |---|---:|---:|
    | a | 0.6000 | 10 |
    | b | **0.7000** | 10 |
    """
    cols = _metric_columns(table)
    best = {c: _best(table, c, reference_rows) for c in cols}
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in table.items():
        cells = []
        for c in cols:
            v = row.get(c)
            text = _fmt(v, c)
            if name not in reference_rows and v is not None and best[c] is not None and v == best[c]:
                text = f"**{text}**"
            cells.append(text)
        label = f"*{name}*" if name in reference_rows else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_table_md(table: dict[str, dict[str, float]], ci95: dict[str, dict[str, float]]) -> str:
    """Markdown table of ``mean ± half-width`` for every metric that has an interval.

    >>> print(ci_table_md({"a": {"auc": 0.6, "n": 9.0}}, {"a": {"auc": 0.01}}))
    | model | auc |
    |---|---:|
    | a | 0.6000 ± 0.0100 |
    """
    cols = [c for c in _metric_columns(table) if any(c in row for row in ci95.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in ci95.items():
        cells = [f"{_fmt(table[name].get(c))} ± {_fmt(row.get(c))}" if c in row else "–" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _frame_md(df: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v, c) for v, c in zip(row, df.columns)) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


json_safe, frame_md, save_figure = _clean, _frame_md, _save  # public names for other reports' writers (recsys.monitoring)


def plot_metrics(table: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars: metrics on the x axis, one bar per model."""
    metrics = [m for m in _metric_columns(table) if m not in NOT_RANKED]
    models = list(table)
    fig = Figure(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(models)) / 3 + 3), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(models):
        vals = [table[name].get(m, float("nan")) for m in metrics]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("value (higher is better)")
    ax.set_title("Metric comparison")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(models), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    _save(fig, path)


def plot_importance(importance: dict[str, float], path: Path, top: int = TOP_FEATURES) -> None:
    """Horizontal bars of the top features by gain, largest on top."""
    items = sorted(importance.items(), key=lambda kv: -kv[1])[:top]
    fig = Figure(figsize=(7, 0.32 * len(items) + 1.2))
    ax = fig.add_subplot()
    names, values = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    ax.barh(names, values, color="tab:blue")
    ax.set_xlabel("total gain")
    ax.set_title(f"Feature importance (top {len(items)} by gain)")
    ax.tick_params(axis="y", labelsize=8)
    _save(fig, path)


def plot_by_group(by_group: pl.DataFrame, path: Path, group_title: str = "user history length") -> None:
    """One panel per metric: a line per model across the groups (in the frame's order)."""
    metrics = [m for m in BY_GROUP_METRICS if m in by_group.columns] or [
        c for c in by_group.columns if c not in (GROUP_KEY, MODEL_KEY, *NOT_RANKED) and by_group.schema[c].is_numeric()
    ][:1]
    groups = by_group[GROUP_KEY].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(5.5 * len(metrics), 4.2))
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for model in by_group[MODEL_KEY].unique(maintain_order=True).to_list():
            part = by_group.filter(pl.col(MODEL_KEY) == model)
            lookup = dict(zip(part[GROUP_KEY].to_list(), part[metric].to_list()))
            ax.plot(range(len(groups)), [lookup.get(g, float("nan")) for g in groups], marker="o", label=model)
        ax.set_xticks(range(len(groups)), [str(g) for g in groups])
        ax.set_xlabel(group_title)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric} by {group_title}")
    fig.axes[0].legend(fontsize=8)
    _save(fig, path)


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    table: dict[str, dict[str, float]],
    importance: dict[str, float] | None = None,
    by_group: pl.DataFrame | None = None,
    notes: dict[str, Any] | None = None,
    reference_rows: Sequence[str] = ("oracle",),
    group_title: str = "user history length",
    figures: Sequence[tuple[str, str]] = (),
    ci95: dict[str, dict[str, float]] | None = None,
    protocol: str | None = None,
    sections: Sequence[tuple[str, str, Any]] = (),
) -> Path:
    """Write ``report.md``, ``metrics.json`` and the PNG plots into `out_dir`.

    Args:
        out_dir: Directory (created if needed).
        title: Report heading.
        table: Model or baseline name -> metric name -> value.
        importance: Feature -> total gain of the ranker.
        by_group: Long frame with columns ``bucket``, ``model`` and metric columns (e.g. per user
            history-length bucket).
        notes: Anything worth recording (data, split, model dir); shown as a list and saved in JSON.
        reference_rows: Rows that are ceilings rather than contenders (not bolded).
        group_title: What the ``bucket`` column of `by_group` is, for headings and axes.
        figures: More plots already written into `out_dir`: (heading, file name) pairs.
        ci95: Model -> metric -> half-width of its 95% confidence interval (the rows are a sample of what
            the model will see: the interval says how far the mean could move on another sample).
        protocol: How the rows were ranked (what was excluded); stated under every metric table and in the JSON.
        sections: More parts of the report, each ``(key, Markdown with its heading, data)``: the Markdown follows the
            metrics, the data goes into ``metrics.json`` under key (e.g. the settings chosen on dev).

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: Empty table, or `by_group` without ``bucket``/``model`` columns.
    """
    if not table:
        raise ValueError("the metric table is empty; nothing to report")
    if by_group is not None and not {GROUP_KEY, MODEL_KEY} <= set(by_group.columns):
        raise ValueError(f"by_group needs columns {GROUP_KEY!r} and {MODEL_KEY!r}, has {by_group.columns}")
    out_dir = Path(out_dir)
    make_dir(out_dir)
    md = [f"# {title}", ""]
    under = [f"Protocol: {protocol}.", ""] if protocol else []  # under every table of metrics: figures compare only within one
    if notes:
        md += [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    md += ["## Metrics", "", *under, metric_table_md(table, reference_rows), "",
           "Best value per metric in bold" + (f"; {', '.join(reference_rows)} rows are ceilings, not ranked." if any(r in table for r in reference_rows) else "."),
           "", f"![metric comparison]({METRICS_PNG})", ""]  # fmt: skip
    plot_metrics(table, out_dir / METRICS_PNG)
    if ci95:
        md += ["## 95% confidence intervals", "", *under, ci_table_md(table, ci95), "",
               "Mean ± 1.96 standard errors over the evaluated rows: differences inside the intervals may be noise.", ""]
    if importance:
        ranked = sorted(importance.items(), key=lambda kv: -kv[1])
        total = sum(v for _, v in ranked) or 1.0
        imp = pl.DataFrame({"feature": [k for k, _ in ranked[:TOP_FEATURES]], "gain": [f"{v:,.1f}" for _, v in ranked[:TOP_FEATURES]],
                            "share": [f"{100 * v / total:.1f}%" for _, v in ranked[:TOP_FEATURES]]})  # fmt: skip
        md += [f"## Feature importance (top {imp.height} by gain)", "", _frame_md(imp), "", f"![feature importance]({IMPORTANCE_PNG})", ""]
        plot_importance(importance, out_dir / IMPORTANCE_PNG)
    if by_group is not None and by_group.height:
        md += [f"## By {group_title}", "", *under, _frame_md(by_group), "", f"![by group]({BY_GROUP_PNG})", ""]
        plot_by_group(by_group, out_dir / BY_GROUP_PNG, group_title)
    for heading, name in figures:
        md += [f"## {heading}", "", f"![{heading}]({name})", ""]
    md += [markdown for _, markdown, _ in sections]
    headings = [line[3:] for line in md if line.startswith("## ")]
    payload = {"title": title, "protocol": protocol, "metrics": table, "importance": importance, "notes": notes,
               "by_group": by_group.to_dicts() if by_group is not None else None, "figures": dict(figures), "ci95": ci95,
               **{key: data for key, _, data in sections},
               "tables": [slug(h) for h in headings if h not in dict(figures)],
               "plots": [m.group(1) for line in md for m in [_IMAGE.search(line)] if m]}  # fmt: skip
    write_json(_clean(payload), out_dir / METRICS_JSON)
    with atomic_path(out_dir / REPORT) as tmp:
        tmp.write_text("\n".join(md))
    write_html(out_dir / REPORT)
    logger.info("report written to %s", out_dir / REPORT)
    return out_dir / REPORT
