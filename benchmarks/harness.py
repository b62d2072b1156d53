"""Benchmark mechanics: run one stage in a fresh process and measure it, describe the machine, keep results.

Every stage runs as ``python -m benchmarks.harness SPEC.json``: a new interpreter that imports the
stage's module, calls ``module:function(**kwargs)`` (which returns a dict of figures) and writes the
figures with its wall time, CPU time and peak resident memory. A fresh process per stage is the only
way to read one stage's peak memory: Python rarely hands freed memory back, so in one long process
every stage would inherit the previous stage's peak.

Peak memory is the kernel's ``VmHWM`` of the child (high-water mark of this process's own address
space), not ``ru_maxrss``, which a child started by ``posix_spawn``/``vfork`` inherits from its parent.

This module imports nothing heavy: the orchestrating process stays small and fast.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASELINE = "baseline"
STDERR_TAIL = 2000  # characters of a failed stage's log kept in the results


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM on Linux, ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def child_main(spec_path: Path) -> int:
    """Body of the stage process: import, call, measure, write the result JSON (atomically)."""
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_before = _load()
    fn = _resolve(spec["target"])
    import_rss = peak_rss_mib()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    figures = fn(**spec["kwargs"])
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    result = {
        "figures": figures,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "import_rss_mib": round(import_rss, 1),
        "load_before": load_before,
        "load_after": _load(),
    }
    out = Path(spec["out"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, out)
    return 0


def child_env() -> dict[str, str]:
    """The environment of a stage process: this checkout first on the import path, quiet tokenizers."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}


def run_stage(target: str, kwargs: dict[str, Any], work_dir: Path, name: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``target`` (``"module:function"``) with ``kwargs`` in a fresh Python process and measure it.

    Args:
        target: the stage function; it must return a JSON-able dict of figures.
        kwargs: JSON-able keyword arguments.
        work_dir: where the spec, the result and the stage's log (stdout + stderr) go.
        name: the stage's name, used for file names and messages.
        timeout_s: kill the stage after this many seconds (None = no limit).

    Returns:
        ``{"figures", "seconds", "cpu_seconds", "peak_rss_mib", "import_rss_mib", "load_before",
        "load_after"}``, or ``{"error": ..., "log": path}`` when the stage failed or timed out:
        one failed stage must not lose the others' figures.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    spec_path, out, log_path = work_dir / f"{slug}.spec.json", work_dir / f"{slug}.result.json", work_dir / f"{slug}.log"
    out.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({"target": target, "kwargs": kwargs, "out": str(out)}, default=str))
    env = child_env()
    log.info("stage %s: %s", name, target)
    try:
        with log_path.open("w") as log_file:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.harness", str(spec_path)], stdout=log_file,
                                  stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout_s, check=False)
        failure = None if proc.returncode == 0 and out.exists() else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"timed out after {timeout_s:.0f} s"
    if failure:
        tail = log_path.read_text(errors="replace")[-STDERR_TAIL:] if log_path.exists() else ""
        log.warning("stage %s failed (%s); log: %s", name, failure, log_path)
        return {"error": failure, "log": str(log_path), "log_tail": tail}
    return json.loads(out.read_text())


def machine_info() -> dict[str, Any]:
    """CPU model, cores (all and usable by this process) and memory, from the OS alone (no heavy import)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": usable, "memory_gib": mem_gib}


def hardware_info() -> dict[str, Any]:
    """The machine a run measured: CPU model and threads, memory, GPU, library versions.

    Imports torch and friends, so the harness calls it through :func:`run_stage`.
    """
    import duckdb
    import lightgbm
    import polars
    import torch

    from recsys.text.device import cpu_supports_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        **machine_info(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "polars": polars.__version__, "duckdb": duckdb.__version__, "lightgbm": lightgbm.__version__},
    }


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """Commit id (short), whether the tree has uncommitted changes, and the commit's date."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short=10", "HEAD") or "nogit"
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "commit_date": git("log", "-1", "--format=%cI")}


def result_stem(meta: dict[str, Any]) -> str:
    """``<date>-<commit>[-dirty]-<mode>[-seed<N>]``: two runs of one commit, mode and seed on one day share a name (the
    later wins)."""
    date = str(meta["date"])[:10]
    seed = f"-seed{meta['seed']}" if meta.get("seed") else ""
    return f"{date}-{meta['commit']}{'-dirty' if meta.get('dirty') else ''}-{meta['mode']}{seed}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


if __name__ == "__main__":
    sys.exit(child_main(Path(sys.argv[1])))
