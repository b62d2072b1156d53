"""The scale benchmark's mechanics: stage processes, failures and timeouts, growth ratios, results files. No timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks import scale
from benchmarks.harness import child_env
from benchmarks.scale import FAILED, OK, SKIPPED, ScaleConfig, growth, run_command, run_size, to_markdown, write_scale_results
from cli import main
from recsys.errors import RecsysError


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_stage_measured_in_its_own_process(tmp_path: Path) -> None:
    # From a small orchestrator, as `recsys bench --scale` runs it: a child's ru_maxrss starts from its parent's
    # peak, and this test process's peak is whatever the tests before it left.
    probes = [_py("print('small')"), _py("block = b'x' * (300 * 2**20); print('done')")]
    code = (f"import json, pathlib; from benchmarks.scale import run_command; work = pathlib.Path({str(tmp_path)!r}); "
            f"print(json.dumps([run_command(c, work, str(i)) for i, c in enumerate({probes!r})]))")
    small, big = json.loads(subprocess.run(_py(code), capture_output=True, text=True, check=True, env=child_env()).stdout)
    assert small["status"] == big["status"] == OK and big["output"] == "done\n"
    assert big["peak_rss_mib"] - small["peak_rss_mib"] > 200 and big["peak_rss_mib"] > 300  # the child's own high-water mark
    assert big["seconds"] >= 0 and big["cpu_seconds"] >= 0


def test_failure_timeout_and_signal_are_recorded(tmp_path: Path) -> None:
    failed = run_command(_py("import sys; print('working'); sys.exit('ValueError: no dev rows')"), tmp_path, "fail")
    assert failed["status"] == FAILED and failed["error"] == "exit status 1"
    assert failed["stderr"] == "ValueError: no dev rows" and failed["output"] == "working\n"
    slow = run_command(_py("import time; time.sleep(60)"), tmp_path, "slow", timeout_s=1)
    assert slow["status"] == FAILED and slow["error"] == "timed out after 1 s" and slow["seconds"] < 30
    crash = run_command(_py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), tmp_path, "crash")
    assert crash["status"] == FAILED and crash["error"] == "killed by SIGSEGV"
    assert "Segmentation fault" in Path(crash["log"]).read_text()  # faulthandler on: a native crash leaves a trace


def test_a_failed_stage_skips_the_rest_of_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = {"synth": _py("print('made')"), "ingest": _py("import sys; sys.stderr.write('step 1\\nerror: bad timestamp\\n'); sys.exit(1)")}
    monkeypatch.setattr(scale, "stage_command", lambda stage, *_: commands[stage])
    rows = run_size("20k", ScaleConfig(sizes=("20k",), stages=("synth", "ingest", "train", "evaluate")), tmp_path)
    assert [(r["stage"], r["status"]) for r in rows] == [("synth", OK), ("ingest", FAILED), ("train", SKIPPED), ("evaluate", SKIPPED)]
    assert rows[1]["stderr"] == "error: bad timestamp" and rows[2]["error"] == "ingest failed"
    assert Path(rows[1]["log"]).name == "ingest@20k.err"


def _run(size: str, stage: str, seconds: float, mib: float, status: str = OK) -> dict[str, Any]:
    return {"size": size, "stage": stage, "status": status, "seconds": seconds, "cpu_seconds": seconds, "peak_rss_mib": mib, "output": ""}


def _results() -> dict[str, Any]:
    runs = [_run("20k", "ingest", 2.0, 200.0), _run("20k", "train", 100.0, 1000.0),
            _run("100k", "ingest", 6.0, 300.0), {**_run("100k", "train", 50.0, 900.0, FAILED), "error": "killed by SIGSEGV", "stderr": "File ease.py"},
            {"size": "100k", "stage": "evaluate", "status": SKIPPED, "error": "train failed"}]
    meta = {"commit": "abc123", "dirty": False, "date": "2026-12-01T10:00:00+00:00", "sizes": ["20k", "100k"], "total_seconds": 9.0,
            "orchestrator_peak_mib": 50.0, "machine": {"cpu": "Test CPU", "usable_cpus": 2, "cpu_count": 2, "memory_gib": 8.0},
            "size_table": {name: dict(zip(("events", "users", "items"), scale.SIZES[name])) for name in ("20k", "100k")}}
    return {"meta": meta, "runs": runs, "growth": growth(runs, ("20k", "100k"))}


def test_growth_ratios_only_where_both_sizes_succeeded() -> None:
    assert growth(_results()["runs"], ("20k", "100k")) == [
        {"stage": "ingest", "from": "20k", "to": "100k", "events_ratio": 5.0, "time_ratio": 3.0, "memory_ratio": 1.5}]


def test_results_written_as_json_and_markdown(tmp_path: Path) -> None:
    written = write_scale_results(_results(), tmp_path)
    assert [p.name for p in written] == ["scale-2026-12-01-20k-100k.json", "scale-2026-12-01-20k-100k.md"]
    assert json.loads(written[0].read_text()) == _results()
    md = written[1].read_text()
    assert md == to_markdown(_results())
    assert "| 20k | 20,000 | 2,000 | 1,000 | train | ok | 100 | 100 | 0.98 |" in md  # peak in GB
    assert "| ingest | 20k | 100k | 5 | 3 | 1.50 |" in md
    assert "| 100k | train | killed by SIGSEGV | File ease.py |" in md
    assert "| 100k | 100,000 | 10,000 | 5,000 | evaluate | skipped | – | – | – |" in md


def test_config_plans_and_checks() -> None:
    assert ScaleConfig().plan == ("1M", "10M") and ScaleConfig(mode="large").plan == ("1M", "10M", "50M")
    cfg = ScaleConfig(sizes=("10M", "20k"), stages=("train", "ingest"))
    assert cfg.plan == ("20k", "10M") and cfg.stages == ("ingest", "train")  # smallest first, pipeline order
    with pytest.raises(RecsysError, match="unknown size"):
        ScaleConfig(sizes=("2M",))
    with pytest.raises(RecsysError, match="--stage-timeout"):
        ScaleConfig(stage_timeout_s=0)


def test_cli_scale_options() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--scale", "--save-baseline"])
    assert res.exit_code == 1 and "--save-baseline: not with --scale" in res.output
    res = runner.invoke(main, ["bench", "--stages", "train"])
    assert res.exit_code == 1 and "--stages: only with --scale" in res.output
    res = runner.invoke(main, ["bench", "--scale", "--sizes", "20k", "--stages", "fit"])
    assert res.exit_code == 1 and "unknown size(s) or stage(s) ['fit']" in res.output
