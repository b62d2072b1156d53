"""Benchmark results on disk and on screen: JSON + Markdown files, flat figures, and run-to-run ratios.

A results file (JSON) holds::

    meta      commit, dirty, date, mode, sizes, hardware (CPU, threads, GPU), total seconds
    quality   {dataset: {ranking: {metric: value}}}
    speed     [{figure, value, unit, baseline, baseline_value, ratio, size, device}]
    stages    [{stage, size, seconds, cpu_seconds, peak_rss_mib, figures}]
    scaling   [{stage, from, to, data_ratio, time_ratio, memory_ratio}]
    errors    [{stage, error, log_tail}]

:func:`flatten` turns one into ``{"dotted.name": number}``; :func:`compare` divides two of those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recsys.io import atomic_path, read_json, write_json
from recsys.evaluation.report import metric_table_md

from benchmarks.harness import BASELINE, result_stem


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "–" if value is None else str(value)
    if v == int(v):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; numbers right-aligned and rounded for reading."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def stage_key(stage: dict[str, Any]) -> str:
    return f"{stage['stage']}@{stage['size']}" if stage.get("size") else str(stage["stage"])


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """Every comparable number of a results dict under a stable dotted name."""
    flat: dict[str, float] = {}
    for dataset, table in results.get("quality", {}).items():
        for ranking, metrics in table.items():
            for metric, value in metrics.items():
                if _num(value) is not None and metric != "impressions":
                    flat[f"quality.{dataset}.{ranking}.{metric}"] = float(value)
    for row in results.get("speed", []):
        name = f"speed.{row['figure']}" + (f"@{row['size']}" if row.get("size") else "")
        for field in ("value", "ratio"):
            if _num(row.get(field)) is not None:
                flat[f"{name}.{field}"] = float(row[field])
    for stage in results.get("stages", []):
        for field in ("seconds", "cpu_seconds", "peak_rss_mib"):
            if _num(stage.get(field)) is not None:
                flat[f"stage.{stage_key(stage)}.{field}"] = float(stage[field])
    return flat


def compare(new: dict[str, Any], old: dict[str, Any]) -> list[tuple[str, float, float, float | None]]:
    """``(figure, old, new, new/old)`` for every figure both runs have, in the new run's order."""
    a, b = flatten(old), flatten(new)
    return [(k, a[k], v, v / a[k] if a[k] else None) for k, v in b.items() if k in a]


def compare_md(rows: list[tuple[str, float, float, float | None]], old_label: str, new_label: str) -> str:
    """The ratio table. For times and memory below 1 is better; for rates, quality and speed-ups above 1 is."""
    return md_table(["figure", old_label, new_label, "new/old"], rows)


def _meta_md(meta: dict[str, Any]) -> str:
    hw = meta.get("hardware", {})
    gpu = hw.get("gpu") or "none"
    seed = f", seed {meta['seed']}" if meta.get("seed") else ""
    return "\n".join([
        f"- commit `{meta.get('commit')}`{' (uncommitted changes)' if meta.get('dirty') else ''}, run {meta.get('date')}, mode **{meta.get('mode')}**{seed}, "
        f"sizes {', '.join(meta.get('sizes', []))}, text fine-tune: one epoch over {meta.get('text_impressions')} impressions",
        f"- CPU {hw.get('cpu')} ({hw.get('usable_cpus')} usable of {hw.get('cpu_count')} cores, torch threads {hw.get('torch_threads')}, "
        f"bf16 {'yes' if hw.get('cpu_bf16') else 'no'}), {hw.get('memory_gib')} GiB RAM, GPU {gpu}",
        f"- versions {', '.join(f'{k} {v}' for k, v in hw.get('versions', {}).items())}; total {_fmt(meta.get('total_seconds'))} s wall, "
        f"{_fmt(meta.get('total_cpu_seconds'))} s CPU in the stage processes",
    ])


def to_markdown(results: dict[str, Any]) -> str:
    """The whole results file as a Markdown page."""
    meta = results["meta"]
    parts = [f"# Benchmark {result_stem(meta)}", _meta_md(meta)]
    for dataset, table in results.get("quality", {}).items():
        # Ceilings (oracle) and candidate-source recalls are shown, not ranked against the models.
        reference = [name for name in table if name == "oracle" or name.startswith("retrieval")]
        parts += [f"## Quality: {dataset}", metric_table_md(table, reference) if table else "(no labelled rows)"]
    if results.get("speed"):
        parts += ["## Speed (ratio = value / baseline measured in the same run)",
                  md_table(["figure", "size", "value", "unit", "baseline", "baseline value", "ratio", "device"],
                           [(r["figure"], r.get("size"), r["value"], r["unit"], r.get("baseline"), r.get("baseline_value"), r.get("ratio"), r.get("device"))
                            for r in results["speed"]])]
    if results.get("stages"):
        parts += ["## Time and peak memory per stage (each stage in its own process)",
                  md_table(["stage", "size", "wall s", "CPU s", "peak MiB"],
                           [(s["stage"], s.get("size"), s.get("seconds"), s.get("cpu_seconds"), s.get("peak_rss_mib")) for s in results["stages"]])]
    if results.get("scaling"):
        parts += ["## Scaling (growth from one size to the next; data = impressions ratio)",
                  md_table(["stage", "from", "to", "data x", "time x", "memory x"],
                           [(s["stage"], s["from"], s["to"], s["data_ratio"], s.get("time_ratio"), s.get("memory_ratio")) for s in results["scaling"]])]
    if results.get("compare"):
        c = results["compare"]
        parts += [f"## Compared with {c['against']}", compare_md([tuple(r) for r in c["rows"]], "old", "new")]  # type: ignore[misc]
    if results.get("errors"):
        parts += ["## Stages that failed (last lines of each log in the JSON)",
                  md_table(["stage", "error", "log"], [(e["stage"], e["error"], e.get("log")) for e in results["errors"]])]
    return "\n\n".join(parts) + "\n"


def write_results(results: dict[str, Any], out_dir: Path, *, baseline: bool = False) -> list[Path]:
    """Write ``<date>-<commit>[-dirty]-<mode>.json/.md`` (and ``baseline.json/.md`` when asked), atomically."""
    stems = [result_stem(results["meta"])] + ([BASELINE] if baseline else [])
    written: list[Path] = []
    for stem in stems:
        write_json(results, Path(out_dir) / f"{stem}.json")
        with atomic_path(Path(out_dir) / f"{stem}.md") as tmp:
            tmp.write_text(to_markdown(results))
        written += [Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"]
    return written


def load_results(path: Path) -> dict[str, Any]:
    """A results JSON written by :func:`write_results`.

    Raises:
        RecsysError: not a benchmark results file.
    """
    from recsys.errors import RecsysError

    data = read_json(path)
    if not isinstance(data, dict) or "meta" not in data:
        raise RecsysError(f"{path} is not a benchmark results file (no 'meta'); pass a .json from benchmarks/results/")
    return data


def compare_files(new_path: Path, old_path: Path) -> str:
    """The ratio table of two saved results files, as Markdown."""
    new, old = load_results(new_path), load_results(old_path)
    rows = compare(new, old)
    if not rows:
        return f"{new_path} and {old_path} have no figure in common"
    return f"new {new_path} vs old {old_path}\n\n" + compare_md(rows, result_stem(old["meta"]), result_stem(new["meta"]))
