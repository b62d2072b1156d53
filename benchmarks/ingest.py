"""Ingest speed and peak memory: `recsys ingest mind` on a generated MIND-format dataset.

    python -m benchmarks.ingest --size large --work /tmp/recsys-bench-ingest

Generates the MIND files once (``recsys synth WORK/mind --size SIZE --format mind``), then runs the
ingest in a child process and reports its wall time and peak resident memory (ru_maxrss), plus the
rows it wrote. Timing is noisy on shared machines: compare runs made together.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


# Runs the CLI in a grandchild and prints that grandchild's peak RSS (ru_maxrss of RUSAGE_CHILDREN, KiB
# on Linux), so each command's peak is measured alone, not mixed with earlier commands of this process.
_PROBE = (
    "import resource, subprocess, sys;"
    "subprocess.run([sys.executable, '-c', 'from cli import main; main()', *sys.argv[1:]], check=True);"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _measure(args: list[str]) -> tuple[float, float]:
    """Run ``recsys ARGS`` in a fresh process; return (wall seconds, peak resident MiB)."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, int(res.stdout.strip().splitlines()[-1]) / 1024


def run(size: str = "large", seed: int = 0, work: str | Path = "/tmp/recsys-bench-ingest") -> dict[str, Any]:
    """Generate (once) and ingest a MIND-format synthetic dataset.

    Args:
        size: a ``recsys synth`` size (``large`` = 1M impressions).
        seed: generator seed.
        work: scratch directory (MIND files are reused between runs).

    Returns:
        ingest seconds and peak MiB (and the generator's, when it ran), rows, input size, rows/s.
    """
    work = Path(work)
    mind = work / "mind" / f"{size}-{seed}"
    figures: dict[str, Any] = {"size": size, "seed": seed}
    if not (mind / "train" / "behaviors.tsv").exists():
        figures["synth_s"], figures["synth_peak_mib"] = _measure(["synth", str(mind), "--size", size, "--seed", str(seed), "--format", "mind"])
    out = work / "dataset" / f"{size}-{seed}"
    figures["ingest_s"], figures["ingest_peak_mib"] = _measure(
        ["ingest", "mind", "--train", str(mind / "train"), "--dev", str(mind / "dev"), "--out", str(out)]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    figures["impressions"] = manifest["impressions"]
    figures["candidates"] = sum(s["candidates"] for s in manifest["splits"].values())
    figures["input_mib"] = sum(f.stat().st_size for f in mind.rglob("*.tsv")) / 2**20
    figures["output_mib"] = sum(f.stat().st_size for f in out.glob("*.parquet")) / 2**20
    figures["impressions_per_s"] = manifest["impressions"] / figures["ingest_s"]
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/recsys-bench-ingest")
    ns = parser.parse_args()
    print(json.dumps(run(ns.size, ns.seed, ns.work), indent=2))
