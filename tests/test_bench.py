"""The benchmark harness mechanics: stage processes, results files, comparisons. No timings asserted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.harness import result_stem, run_stage
from benchmarks.quality import train_config
from benchmarks.suite import BenchConfig, Recorder, _scaling
from benchmarks.tables import compare, flatten, load_results, to_markdown, write_results
from cli import main
from recsys.errors import RecsysError

PROBE = '''
def alloc(mib):
    block = b"\\x01" * (mib * 2**20)  # filled, so every page is resident
    return {"bytes": len(block)}

def fail():
    raise ValueError("probe failed on purpose")
'''


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "bench_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def test_stage_runs_in_its_own_process_and_reports_its_peak_memory(probe: Path) -> None:
    small = run_stage("bench_probe:alloc", {"mib": 1}, probe / "work", "small")
    big = run_stage("bench_probe:alloc", {"mib": 300}, probe / "work", "big")
    assert big["figures"] == {"bytes": 300 * 2**20}
    # The child's own high-water mark: ~300 MiB above the small one, not the parent's.
    assert big["peak_rss_mib"] - small["peak_rss_mib"] > 250
    assert small["peak_rss_mib"] < 200
    assert big["seconds"] >= 0 and big["cpu_seconds"] >= 0


def test_failed_stage_is_reported_not_raised(probe: Path) -> None:
    result = run_stage("bench_probe:fail", {}, probe / "work", "bad")
    assert result["error"].startswith("exit status")
    assert "probe failed on purpose" in result["log_tail"]


def _results(commit: str, auc: float, rate: float, peak: float, seconds: float) -> dict[str, Any]:
    return {
        "meta": {"commit": commit, "dirty": False, "date": "2026-11-23T17:00:00+00:00", "mode": "quick", "sizes": ["tiny"],
                 "text_impressions": 400, "hardware": {"cpu": "Test CPU", "usable_cpus": 2, "cpu_count": 2, "torch_threads": 2, "gpu": None}},
        "quality": {"synth-tiny": {"full model": {"auc": auc, "impressions": 24.0}, "random": {"auc": 0.5, "impressions": 24.0}}},
        "speed": [{"figure": "encode", "size": "tiny", "value": rate, "unit": "items/s", "baseline": "naive",
                   "baseline_value": rate / 4, "ratio": 4.0, "device": "cpu"}],
        "stages": [{"stage": "features", "size": "tiny", "seconds": seconds, "cpu_seconds": seconds, "peak_rss_mib": peak, "figures": {}}],
        "scaling": [], "errors": [{"stage": "amazon", "error": "exit status 1"}],
    }


def test_results_written_as_json_and_markdown(tmp_path: Path) -> None:
    results = _results("abc123", 0.7, 100.0, 400.0, 2.0)
    written = write_results(results, tmp_path, baseline=True)
    assert sorted(p.name for p in written) == ["2026-11-23-abc123-quick.json", "2026-11-23-abc123-quick.md", "baseline.json", "baseline.md"]
    assert load_results(tmp_path / "baseline.json") == json.loads((tmp_path / "2026-11-23-abc123-quick.json").read_text())
    md = (tmp_path / "baseline.md").read_text()
    assert "commit `abc123`" in md and "Test CPU" in md
    assert "| **0.7000** |" in md  # the best AUC of the quality table in bold
    assert "| encode | tiny | 100 | items/s | naive | 25 | 4 | cpu |" in md
    assert "| amazon | exit status 1 | – |" in md


def test_compare_divides_new_by_old_per_figure() -> None:
    old = _results("old", 0.60, 100.0, 400.0, 2.0)
    new = _results("new", 0.66, 250.0, 200.0, 2.0)
    new["stages"].append({"stage": "ranker", "size": "tiny", "seconds": 1.0, "peak_rss_mib": 10.0})  # only in new: not compared
    ratios = {name: ratio for name, _, _, ratio in compare(new, old)}
    assert ratios["quality.synth-tiny.full model.auc"] == pytest.approx(1.1)
    assert ratios["speed.encode@tiny.value"] == pytest.approx(2.5)
    assert ratios["stage.features@tiny.peak_rss_mib"] == pytest.approx(0.5)
    assert ratios["stage.features@tiny.seconds"] == pytest.approx(1.0)
    assert not any(name.startswith("stage.ranker") for name in ratios)
    assert "quality.synth-tiny.full model.impressions" not in flatten(new)  # counts are not figures


def test_compare_two_saved_runs_from_the_cli(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps(_results("old", 0.60, 100.0, 400.0, 2.0)))
    (tmp_path / "new.json").write_text(json.dumps(_results("new", 0.60, 200.0, 400.0, 3.0)))
    out = CliRunner().invoke(main, ["bench", "--compare", str(tmp_path / "old.json"), "--new", str(tmp_path / "new.json")])
    assert out.exit_code == 0, out.output
    assert "| speed.encode@tiny.value | 100 | 200 | 2 |" in out.output
    assert "| stage.features@tiny.seconds | 2 | 3 | 1.50 |" in out.output
    bad = CliRunner().invoke(main, ["bench", "--compare", str(tmp_path / "old.json"), "--new", str(tmp_path / "bench_probe_missing.json")])
    assert bad.exit_code != 0


def test_not_a_results_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(RecsysError, match="not a benchmark results file"):
        load_results(tmp_path / "x.json")
    with pytest.raises(RecsysError, match="unknown benchmark mode"):
        BenchConfig(mode="huge")
    with pytest.raises(RecsysError, match="the committed baseline is seed 0"):
        BenchConfig(save_baseline=True, seed=1)


def test_a_seed_moves_the_data_and_every_training_seed_and_names_its_results() -> None:
    base, moved = train_config(100), train_config(100, seed=2)
    assert (moved.seed, moved.text.seed, moved.ranker.seed) == (base.seed + 2, base.text.seed + 2, base.ranker.seed + 2)
    assert dataclasses.replace(moved, seed=base.seed, text=base.text, ranker=base.ranker) == base
    meta = {"date": "2026-12-02T08:00:00+00:00", "commit": "abc", "mode": "default"}
    assert result_stem(meta) == result_stem({**meta, "seed": 0}) == "2026-12-02-abc-default"
    assert result_stem({**meta, "seed": 2}) == "2026-12-02-abc-default-seed2"


def test_scaling_ratios_follow_consecutive_sizes(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, 1.0, total=0)
    for size, imps, secs, mib in (("tiny", 400, 1.0, 100.0), ("sample", 12_000, 6.0, 150.0)):
        rec.stages.append({"stage": "synth", "size": size, "seconds": 0.1, "peak_rss_mib": 90.0, "figures": {"impressions": imps}})
        rec.stages.append({"stage": "features", "size": size, "seconds": secs, "peak_rss_mib": mib, "figures": {}})
    rows = {r["stage"]: r for r in _scaling(rec, ("tiny", "sample"))}
    assert rows["features"] == {"stage": "features", "from": "tiny", "to": "sample", "data_ratio": 30.0, "time_ratio": 6.0, "memory_ratio": 1.5}
    md = to_markdown({"meta": _results("x", 0.6, 1.0, 1.0, 1.0)["meta"], "scaling": list(rows.values())})
    assert "| features | tiny | sample | 30 | 6 | 1.50 |" in md
