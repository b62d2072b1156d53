"""`recsys bench --scale`: the product end to end on shop logs of growing size, each stage in its own process.

For each size (smallest first) a shop log is generated and taken through the real commands, each one a
fresh ``recsys`` process:

=========  =====================================================================================
synth      ``recsys synth RAW --kind shop --users U --items I --events E``
ingest     ``recsys ingest events --items RAW/items.parquet --events RAW/events.parquet --out DATA``
           (by time: the last 10% of the events test, the 10% before them dev)
train      ``recsys train DATA --out MODEL``
evaluate   ``recsys evaluate MODEL --split test`` (catalogue protocol)
recommend  ``recsys recommend MODEL REQUESTS --out RECS``, one request per user of the log
=========  =====================================================================================

Wall time, CPU time and peak resident memory of a stage come from the ``os.wait4`` rusage of its process.
Linux starts a child's ``ru_maxrss`` from its parent's peak, so this orchestrating process imports nothing
heavy and records its own peak as the floor under every figure. A stage that fails or runs past the timeout
is recorded with the last line of its stderr, and the size's later stages are skipped (they need its output).
Results go to ``benchmarks/results/scale-<date>-<sizes>.json`` and ``.md``, with the growth of time and memory
from each size to the next beside the growth of the events.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, RESULTS_DIR, child_env, git_state, machine_info, now_iso, run_stage
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

# name -> (events, users, items): ten events a user; a catalogue a fifth to a tenth of the users.
SIZES: dict[str, tuple[int, int, int]] = {
    "20k": (20_000, 2_000, 1_000),
    "100k": (100_000, 10_000, 5_000),
    "1M": (1_000_000, 100_000, 20_000),
    "10M": (10_000_000, 1_000_000, 100_000),
    "50M": (50_000_000, 5_000_000, 500_000),
}
MODE_SIZES = {"quick": ("20k", "100k"), "default": ("1M", "10M"), "large": ("1M", "10M", "50M")}
STAGES = ("synth", "ingest", "train", "evaluate", "recommend")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
OUTPUT_TAIL = 4000  # characters of a stage's stdout kept (evaluate prints its metric table)


@dataclass
class ScaleConfig:
    """Options of `recsys bench --scale`.

    Attributes:
        mode: ``quick`` (20k and 100k events), ``default`` (1M and 10M) or ``large`` (also 50M).
        sizes: names of :data:`SIZES` instead of the mode's (run smallest first).
        stages: some of :data:`STAGES` (run in pipeline order); a later stage reads an earlier one's output,
            so a subset needs ``work_dir`` of a run that made it.
        stage_timeout_s: kill a stage after this many seconds (None: no limit).
        results_dir: where ``scale-<date>-<sizes>.json/.md`` go.
        work_dir: logs, datasets, models and lists; None = a temporary directory, removed after.
        seed, dev_fraction, test_fraction, top_k: the data and the commands' settings.
    """

    mode: str = "default"
    sizes: tuple[str, ...] | None = None
    stages: tuple[str, ...] = STAGES
    stage_timeout_s: float | None = 6 * 3600.0
    results_dir: Path = RESULTS_DIR
    work_dir: Path | None = None
    seed: int = 0
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    top_k: int = 10
    plan: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODE_SIZES:
            raise RecsysError(f"unknown benchmark mode {self.mode!r}; use one of {tuple(MODE_SIZES)}")
        unknown = [s for s in self.sizes or () if s not in SIZES] + [s for s in self.stages if s not in STAGES]
        if unknown:
            raise RecsysError(f"unknown size(s) or stage(s) {unknown}: sizes are {list(SIZES)}, stages {list(STAGES)} (--sizes, --stages)")
        if not self.stages:
            raise RecsysError(f"--stages: name at least one of {list(STAGES)}")
        if self.stage_timeout_s is not None and self.stage_timeout_s <= 0:
            raise RecsysError(f"--stage-timeout must be a positive number of seconds, got {self.stage_timeout_s}")
        self.plan = tuple(sorted(set(self.sizes or MODE_SIZES[self.mode]), key=list(SIZES).index))
        self.stages = tuple(s for s in STAGES if s in self.stages)


@dataclass(frozen=True)
class _Paths:
    """Where one size's stages read and write."""

    raw: Path
    data: Path
    model: Path
    report: Path
    requests: Path
    recs: Path
    logs: Path

    @classmethod
    def under(cls, root: Path) -> _Paths:
        return cls(*(root / name for name in ("raw", "data", "model", "report", "requests.parquet", "recs.parquet", "logs")))


def stage_command(stage: str, size: str, cfg: ScaleConfig, paths: _Paths) -> list[str]:
    """The `recsys` command line of one stage."""
    events, users, items = SIZES[size]
    recsys = [sys.executable, str(REPO / "cli.py")]
    return {
        "synth": [*recsys, "synth", str(paths.raw), "--kind", "shop", "--users", str(users), "--items", str(items), "--events", str(events),
                  "--seed", str(cfg.seed)],
        "ingest": [*recsys, "ingest", "events", "--items", str(paths.raw / "items.parquet"), "--events", str(paths.raw / "events.parquet"),
                   "--out", str(paths.data), "--dev-fraction", str(cfg.dev_fraction), "--test-fraction", str(cfg.test_fraction)],
        "train": [*recsys, "train", str(paths.data), "--out", str(paths.model)],
        "evaluate": [*recsys, "evaluate", str(paths.model), "--split", "test", "--report", str(paths.report)],
        "recommend": [*recsys, "recommend", str(paths.model), str(paths.requests), "--out", str(paths.recs), "--top-k", str(cfg.top_k)],
    }[stage]


def _output(stage: str, paths: _Paths) -> Path:
    """What a stage writes: removed before it runs, so nothing of an older run looks up to date."""
    return {"synth": paths.raw, "ingest": paths.data, "train": paths.model, "evaluate": paths.report, "recommend": paths.recs}[stage]


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1][:500] if lines else ""


def run_command(cmd: list[str], log_dir: Path, name: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a new process (and session) and measure it with ``os.wait4``.

    Args:
        cmd: the command line.
        log_dir: where ``NAME.out`` and ``NAME.err`` (its stdout and stderr) go.
        name: the stage's name, for file names.
        timeout_s: kill the process and its children after this many seconds (None: no limit).

    Returns:
        ``status`` (ok or failed), ``seconds``, ``cpu_seconds``, ``peak_rss_mib``, ``output`` (the tail of
        stdout) and, when it failed, ``error`` (exit status, signal or timeout) and ``stderr`` (its last line).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    env = {**child_env(), "PYTHONFAULTHANDLER": "1"}  # a crash in native code still leaves a last stderr line
    start = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stage and whatever it started
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    result: dict[str, Any] = {
        "status": OK if code == 0 and not timed_out else FAILED,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "output": out_path.read_text(errors="replace")[-OUTPUT_TAIL:],
    }
    if result["status"] == FAILED:
        reason = (f"timed out after {timeout_s:.0f} s" if timed_out
                  else f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
        result.update(error=reason, stderr=_last_line(err_path), log=str(err_path))
        log.warning("%s failed (%s): %s", name, reason, result["stderr"])
    return result


def write_requests(dataset: str, out: str) -> dict[str, Any]:
    """A requests file with one request per user of the dataset (the recommend stage's input)."""
    import polars as pl

    from recsys.data import Col

    users = pl.scan_parquet(Path(dataset) / "impressions.parquet").select(Col.USER).unique().sort(Col.USER).collect()
    users.write_parquet(out)
    return {"requests": users.height}


def run_size(size: str, cfg: ScaleConfig, root: Path, progress: Any = None) -> list[dict[str, Any]]:
    """Every stage of ``cfg`` at one size, in order; after a failure the rest are recorded as skipped."""
    paths, rows, failed = _Paths.under(root), [], None
    for stage in cfg.stages:
        if progress is not None:
            progress.set_postfix_str(f"{stage}@{size}")
        row: dict[str, Any] = {"size": size, "stage": stage}
        if failed is not None:
            rows.append({**row, "status": SKIPPED, "error": f"{failed} failed"})
            continue
        target = _output(stage, paths)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        prepared = {}
        if stage == "recommend":  # the requests file is made first, unmeasured
            prepared = run_stage("benchmarks.scale:write_requests", {"dataset": str(paths.data), "out": str(paths.requests)},
                                 paths.logs, f"requests@{size}", cfg.stage_timeout_s)
        if "error" in prepared:
            result = {"status": FAILED, "error": f"writing the requests: {prepared['error']}", "stderr": _last_line(Path(prepared["log"])),
                      "log": prepared["log"]}
        else:
            result = run_command(stage_command(stage, size, cfg, paths), paths.logs, f"{stage}@{size}", cfg.stage_timeout_s)
            if prepared:
                result["requests"] = prepared["figures"]["requests"]
        rows.append({**row, **result})
        failed = stage if result["status"] == FAILED else None
        if progress is not None:
            progress.update()
    return rows


def growth(runs: list[dict[str, Any]], sizes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Time and memory ratios of each stage from one size to the next, beside the events ratio."""
    done = {(r["size"], r["stage"]): r for r in runs if r["status"] == OK}
    rows = []
    for small, big in zip(sizes, sizes[1:]):
        for stage in STAGES:
            a, b = done.get((small, stage)), done.get((big, stage))
            if a is None or b is None:
                continue
            rows.append({"stage": stage, "from": small, "to": big, "events_ratio": round(SIZES[big][0] / SIZES[small][0], 2),
                         "time_ratio": round(b["seconds"] / a["seconds"], 2) if a["seconds"] else None,
                         "memory_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2) if a["peak_rss_mib"] else None})
    return rows


def run_scale(cfg: ScaleConfig) -> tuple[dict[str, Any], list[Path]]:
    """Run the scale benchmark and write its results.

    Returns:
        The results (``meta``, ``runs``: one row per size and stage, ``growth``) and the files written.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    progress = tqdm(total=len(cfg.plan) * len(cfg.stages), desc="bench --scale", unit="stage")
    with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
        work = Path(cfg.work_dir) if cfg.work_dir else Path(tmp)
        runs = [row for size in cfg.plan for row in run_size(size, cfg, work / size, progress)]
    progress.close()
    results = {
        "meta": {**git_state(), "date": now_iso(), "sizes": list(cfg.plan), "stages": list(cfg.stages), "argv": sys.argv[1:],
                 "machine": machine_info(), "total_seconds": round(time.perf_counter() - started, 1),
                 # Every stage's peak is at least this (a child's ru_maxrss starts from its parent's peak).
                 "orchestrator_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                 "size_table": {name: dict(zip(("events", "users", "items"), SIZES[name])) for name in cfg.plan}},
        "runs": runs,
        "growth": growth(runs, cfg.plan),
    }
    return results, write_scale_results(results, cfg.results_dir)


def to_markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page: stages per size, growth between sizes, failures, evaluate's output."""
    from benchmarks.tables import md_table

    meta, machine = results["meta"], results["meta"]["machine"]
    sizes = meta["size_table"]
    parts = [
        f"# Scale benchmark {meta['date'][:10]}: shop logs {', '.join(meta['sizes'])}",
        f"- commit `{meta['commit']}`{' (uncommitted changes)' if meta.get('dirty') else ''}; {machine['cpu']} "
        f"({machine['usable_cpus']} usable of {machine['cpu_count']} cores), {machine['memory_gib']} GiB RAM; total {meta['total_seconds']} s\n"
        f"- each stage is the real `recsys` command in its own process; peak = its maximum resident set (rusage), "
        f"never below this orchestrator's {meta['orchestrator_peak_mib']} MiB",
        "## Stages",
        md_table(["size", "events", "users", "items", "stage", "status", "wall s", "CPU s", "peak GB"],
                 [(r["size"], *sizes[r["size"]].values(), r["stage"], r["status"], r.get("seconds"), r.get("cpu_seconds"),
                   round(r["peak_rss_mib"] / 1024, 2) if r.get("peak_rss_mib") else None) for r in results["runs"]]),
    ]
    if results["growth"]:
        parts += ["## Growth from one size to the next (time x near events x: linear)",
                  md_table(["stage", "from", "to", "events x", "time x", "memory x"],
                           [(g["stage"], g["from"], g["to"], g["events_ratio"], g["time_ratio"], g["memory_ratio"]) for g in results["growth"]])]
    failed = [r for r in results["runs"] if r["status"] == FAILED]
    if failed:
        parts += ["## Failed stages (later stages of the size skipped)",
                  md_table(["size", "stage", "error", "last stderr line"], [(r["size"], r["stage"], r["error"], r.get("stderr") or "–") for r in failed])]
    for r in results["runs"]:
        if r["stage"] == "evaluate" and r["status"] == OK:
            parts += [f"## Evaluate output at {r['size']}", "```\n" + r["output"].strip("\n") + "\n```"]
    return "\n\n".join(parts) + "\n"


def write_scale_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``scale-<date>-<sizes>.json`` and ``.md`` into ``out_dir``, atomically."""
    from recsys.io import atomic_path, write_json

    stem = f"scale-{results['meta']['date'][:10]}-{'-'.join(results['meta']['sizes'])}"
    paths = [Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.md"]
    write_json(results, paths[0])
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(to_markdown(results))
    return paths


if __name__ == "__main__":  # python -m benchmarks.scale [OPTIONS] is recsys bench --scale [OPTIONS]
    from cli import main

    main(["bench", "--scale", *sys.argv[1:]], prog_name="recsys")
