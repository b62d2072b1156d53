"""``selection.json``: what the dev search chose, how it was judged, and every trial; and how a model takes it.

Layout (one part per search, each written by its own stage)::

    {"retrieval": {"configured": {...}, "chosen": {"retrieval.ease_l2": 100.0, ...}, "judged_by": {...},
                   "configured_scores": {...}, "chosen_scores": {...}, "trials_run": [...], "budget_seconds": 120,
                   "seconds": 41.3, "stopped": "..."},
     "ranker":    {...the same for "ranker.*" settings...}}

The chosen settings replace the configured ones before the stages that read them (:func:`apply`), and the model's
saved config holds them with ``select.enabled = false`` (:func:`settled`): ``recsys recommend`` and ``evaluate``
use them, and giving ``config.toml`` back to ``recsys train --config`` reproduces the model without searching again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recsys.config import TrainConfig, override
from recsys.io import read_json, write_json

SELECTION = "selection.json"
RETRIEVAL, RANKER = "retrieval", "ranker"
STAGES = {RETRIEVAL: "select_retrieval", RANKER: "select_ranker"}  # the stage that writes each part
TITLE = "Settings chosen on dev"


def read_selection(model_dir: Path) -> dict[str, Any]:
    """The parts of ``selection.json`` (empty when the model chose nothing on dev)."""
    path = Path(model_dir) / SELECTION
    return dict(read_json(path)) if path.is_file() else {}


def write_part(model_dir: Path, part: str, record: dict[str, Any]) -> None:
    """Put one search's record into ``selection.json`` (atomically), keeping the other part."""
    write_json({**read_selection(model_dir), part: record}, Path(model_dir) / SELECTION)


def apply(cfg: TrainConfig, model_dir: Path, part: str) -> TrainConfig:
    """`cfg` with the settings the part chose."""
    return override(cfg, f"{SELECTION} {part}", **read_selection(model_dir)[part]["chosen"])


def settled(cfg: TrainConfig) -> TrainConfig:
    """The config a model saves: its chosen settings, with selection off (the choice is made; rerunning it is not needed)."""
    return dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, enabled=False)) if cfg.select.enabled else cfg


def _value(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, tuple) else cfg


def forget_stale(model_dir: Path, cfg: TrainConfig, done: dict[str, Any], runs: dict[str, bool]) -> None:
    """Remove the parts of ``selection.json`` (and their stages' entries) that no longer describe this run.

    A part whose search runs now is kept (its stage decides whether to redo it). A part whose search does not run is
    kept only while the config still holds exactly what it chose (a model reproduced from its saved config).

    Args:
        model_dir: the model directory.
        cfg: the run's config.
        done: ``stages.json``'s entries (changed in place).
        runs: part -> whether its search runs in this run.
    """
    record = read_selection(model_dir)
    stale = [p for p in record if not runs.get(p) and any(_value(cfg, k) != v for k, v in record[p]["chosen"].items())]
    stale += [p for p in record if p not in STAGES]
    for part in stale:
        record.pop(part)
        done.pop(STAGES.get(part, ""), None)
    for part, stage in STAGES.items():
        if part not in record and not runs.get(part):
            done.pop(stage, None)
    path = Path(model_dir) / SELECTION
    if not record:
        path.unlink(missing_ok=True)
    elif stale:
        write_json(record, path)


def summary(model_dir: Path) -> dict[str, Any]:
    """What ``model.json`` says of the selection: per part the chosen settings and why the search stopped (no clock
    time: training the same twice writes the same ``model.json``; the seconds are in ``selection.json``)."""
    return {part: {k: r[k] for k in ("chosen", "budget_seconds", "stopped")} for part, r in read_selection(model_dir).items()}


def table_md(record: dict[str, Any]) -> str:
    """The Markdown table of every chosen setting: configured and chosen value, what judged it, and both dev scores."""
    lines = ["| setting | configured | chosen | judged on dev by | configured's score | chosen's score |", "|---|---|---|---|---:|---:|"]
    notes = []
    for part, r in sorted(record.items(), key=lambda kv: list(STAGES).index(kv[0]) if kv[0] in STAGES else len(STAGES)):
        for name, chosen in r["chosen"].items():
            judged = r.get("judged_by", {}).get(name)
            if judged is None:
                continue
            metric = judged["metric"] + (f" ({judged['note']})" if judged.get("note") else "")
            lines.append(f"| {name} | {_show(r['configured'].get(name))} | {_show(chosen)} | {metric} | {_score(judged.get('configured'))} "
                         f"| {_score(judged.get('chosen'))} |")
        notes.append(f"{part}: {r['trials']} settings tried in {r['seconds']:.0f} s of a {r['budget_seconds']:g} s budget ({r['stopped']})")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def report_section(model_dir: Path) -> tuple[str, str, Any] | None:
    """``(key, Markdown, data)`` of the report's "Settings chosen on dev" section, or None when nothing was chosen."""
    record = read_selection(model_dir)
    if not record:
        return None
    data = {part: {k: r[k] for k in ("configured", "chosen", "judged_by", "trials", "seconds", "budget_seconds", "stopped")} for part, r in record.items()}
    intro = ("Chosen before training on the log trained on, never on test (retrieval settings on its dev targets, ranker settings on "
             f"the ranker's own validation groups); every setting tried, with its dev score and seconds, is in the model's {SELECTION}.")
    if RETRIEVAL in record:
        intro += " This model's ranker learns from the dev targets too, so its dev metrics are in-sample."
    return "selection", f"## {TITLE}\n\n{intro}\n\n{table_md(record)}\n", data


def _show(value: Any) -> str:
    """A setting's value as written in a config (lists comma-separated)."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _score(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"
