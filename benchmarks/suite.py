"""`recsys bench`: quality, speed, memory and scaling of the whole project in one run.

For each synthetic size of the plan (smallest first) the run generates the data, trains the
pipeline one stage per process (each stage's time and peak memory), replays the dev split
(the quality table against the baselines) and times the recommend job. At one size it then
measures the speed figures against baselines of the same run (bf16 vs fp32 fine-tune, batched
vs naive encode, streamed features vs pandas, vectorised vs looped metrics), optionally the real
Amazon Scientific log, and finally how time and memory grew from size to size.

Every stage runs in its own process (:func:`benchmarks.harness.run_stage`); a failed stage is
recorded under ``errors`` and the run goes on.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmarks.harness import REPO, RESULTS_DIR, git_state, now_iso, run_stage
from benchmarks.quality import PIPELINE_STAGES
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

AMAZON_DIR = REPO.parent / "shared" / "data" / "amazon-scientific"
MODES = ("quick", "default", "large")
SPEED_STAGES = 3  # encode (with the fine-tune step), features and metrics benchmarks


@dataclass(frozen=True)
class Plan:
    """How much work each part of a run does."""

    sizes: tuple[str, ...]  # synthetic sizes, smallest first (recsys.synth.SIZES)
    speed_size: str  # the size the speed figures are measured at
    text_impressions: int  # train impressions of the text fine-tune's one epoch in the pipeline runs
    train_speed_steps: int  # timed fine-tune steps per precision (benchmarks.encode)
    recommend_requests: int
    feature_rows: int  # (impression, candidate) rows of the feature-builder benchmark
    eval_impressions: int  # impressions of the metrics benchmark
    amazon: bool  # real data on by default in this mode
    amazon_fine_tune: bool  # fine-tune the encoder on the real data too (slow on CPU)


PLANS: dict[str, Plan] = {
    "quick": Plan(("tiny",), "tiny", 400, 2, 40, 200_000, 20_000, False, False),
    # Three sizes 30x and 8x apart; ~7 min on 2 idle cores without "small", well inside the 20-minute budget
    # with it (the text fine-tune is capped by impressions, so it does not grow with the data).
    "default": Plan(("tiny", "sample", "small"), "sample", 4_000, 6, 400, 2_000_000, 200_000, True, False),
    "large": Plan(("sample", "small", "medium"), "small", 10_000, 10, 2_000, 10_000_000, 1_000_000, True, True),
}


@dataclass
class BenchConfig:
    """Options of `recsys bench`.

    Attributes:
        mode: ``quick`` (a smoke run of a few minutes), ``default`` (< 20 min on 2 cores) or ``large``.
        sizes: synthetic sizes instead of the mode's (smallest first); speed figures at the mode's
            speed size when listed, else at the largest.
        amazon: run the Amazon Scientific stage; None = the mode's default, when the data is there.
        amazon_dir: where the Amazon Scientific files are.
        results_dir: where ``<date>-<commit>.json/.md`` go.
        work_dir: scratch space (datasets, models, stage logs); None = a temporary directory, removed after.
        save_baseline: also write ``baseline.json/.md`` (the committed reference).
        compare: an older results JSON to divide by.
        stage_timeout_s: kill a stage after this long.
        seed: the synthetic data's seed, also added to every training seed (0: the defaults; other seeds show
            whether a quality difference holds beyond one draw).
    """

    mode: str = "default"
    sizes: tuple[str, ...] | None = None
    amazon: bool | None = None
    amazon_dir: Path = AMAZON_DIR
    results_dir: Path = RESULTS_DIR
    work_dir: Path | None = None
    save_baseline: bool = False
    compare: Path | None = None
    stage_timeout_s: float = 1800.0
    seed: int = 0
    plan: Plan = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RecsysError(f"unknown benchmark mode {self.mode!r}; use one of {MODES}")
        if self.save_baseline and self.seed:
            raise RecsysError(f"--save-baseline with --seed {self.seed}: the committed baseline is seed 0")
        if self.compare is not None and not Path(self.compare).exists():
            raise RecsysError(f"--compare {self.compare}: file not found")
        plan = PLANS[self.mode]
        if self.sizes:
            from recsys.synth import SIZES

            unknown = [s for s in self.sizes if s not in SIZES]
            if unknown:
                raise RecsysError(f"unknown size(s) {unknown}; use some of {list(SIZES)}")
            self.sizes = tuple(sorted(self.sizes, key=list(SIZES).index))
            plan = replace(plan, sizes=self.sizes, speed_size=plan.speed_size if plan.speed_size in self.sizes else self.sizes[-1])
        self.plan = plan
        if self.amazon and not self.amazon_present:
            raise RecsysError(f"--amazon: no Amazon Scientific files (*.item2index) in {self.amazon_dir}; pass --amazon-dir or --no-amazon")

    @property
    def amazon_present(self) -> bool:
        return Path(self.amazon_dir).is_dir() and any(Path(self.amazon_dir).glob("*.item2index"))

    @property
    def run_amazon(self) -> bool:
        return (self.plan.amazon if self.amazon is None else self.amazon) and self.amazon_present


class Recorder:
    """Runs stages and collects their figures, times, memory and failures."""

    def __init__(self, work: Path, timeout_s: float, total: int) -> None:
        self.work, self.timeout_s = work, timeout_s
        self.progress = tqdm(total=total, desc="bench", unit="stage")
        self.stages: list[dict[str, Any]] = []
        self.speed: list[dict[str, Any]] = []
        self.quality: dict[str, Any] = {}
        self.errors: list[dict[str, Any]] = []
        self.device = "cpu"  # where the stages ran, for the speed rows; set from the hardware stage

    def stage(self, name: str, target: str, kwargs: dict[str, Any], size: str | None = None) -> dict[str, Any] | None:
        """Run one stage; record it and return its figures, or None when it failed."""
        label = f"{name}@{size}" if size else name
        self.progress.set_postfix_str(label)
        result = run_stage(target, kwargs, self.work / "logs", label, self.timeout_s)
        self.progress.update()
        if "error" in result:
            self.errors.append({"stage": label, **result})
            return None
        self.stages.append({"stage": name, "size": size, **{k: v for k, v in result.items() if k != "figures"}, "figures": result["figures"]})
        return dict(result["figures"])

    def add_speed(self, figure: str, value: float, unit: str, *, size: str | None = None, baseline: str | None = None,
                  baseline_value: float | None = None, device: str | None = None) -> None:
        ratio = round(value / baseline_value, 3) if baseline_value else None
        self.speed.append({"figure": figure, "size": size, "value": value, "unit": unit, "baseline": baseline,
                           "baseline_value": baseline_value, "ratio": ratio, "device": device or self.device})


def _pipeline(rec: Recorder, size: str, plan: Plan, work: Path, seed: int) -> None:
    """Synthesize, train, redo each stage alone, evaluate and recommend at one size."""
    data, model = work / size / "data", work / size / "model"
    shutil.rmtree(work / size, ignore_errors=True)  # a kept --work-dir must not make stages look up to date
    if rec.stage("synth", "benchmarks.quality:synth_stage", {"size": size, "out": str(data), "seed": seed}, size) is None:
        return
    for name in PIPELINE_STAGES:
        if rec.stage(name, "benchmarks.quality:train_stage",
                     {"dataset": str(data), "model_dir": str(model), "text_impressions": plan.text_impressions, "until": name, "seed": seed}, size) is None:
            return
        # The stage's own seconds, as the pipeline timed it: without process start and imports.
        rec.stages[-1]["seconds"] = rec.stages[-1]["figures"]["seconds"]
    ranker = next((s for s in rec.stages if s["stage"] == "ranker" and s["size"] == size), None)
    if ranker is not None:
        rec.add_speed("ranker training, full + features-only", ranker["seconds"], "s", size=size)
    table = rec.stage("evaluate", "benchmarks.quality:evaluate_stage",
                      {"model_dir": str(model), "dataset": str(data), "report_dir": str(work / size / "report")}, size)
    if table is not None:
        rec.quality[f"synth-{size}"] = table["table"]
    recs = rec.stage("recommend", "benchmarks.speed:recommend_speed",
                     {"model_dir": str(model), "dataset": str(data), "requests": plan.recommend_requests}, size)
    if recs is not None:
        rec.add_speed("recommend, end to end", recs["requests_per_s"], "requests/s", size=size)
        if recs["marginal_requests_per_s"] is not None:
            rec.add_speed("recommend, marginal (model loaded)", recs["marginal_requests_per_s"], "requests/s", size=size)
    serving = rec.stage("serving vs predict", "benchmarks.speed:serving_vs_predict",
                        {"model_dir": str(model), "dataset": str(data), "requests": plan.recommend_requests}, size)
    if serving is not None:
        rec.add_speed("serving, model loaded (candidates, features, rank, top-k)", serving["serving_requests_per_s"], "requests/s", size=size,
                      baseline="LightGBM predict alone, same feature rows", baseline_value=serving["predict_requests_per_s"])


def _speed(rec: Recorder, plan: Plan, work: Path) -> None:
    """The speed figures against baselines measured in this run."""
    size, data = plan.speed_size, work / plan.speed_size / "data"
    encode = rec.stage("encode bench", "benchmarks.speed:external",
                       {"target": "benchmarks.encode:run",
                        "offer": {"dataset": str(data), "train_steps": plan.train_speed_steps}}, size)
    if encode is not None:
        _encode_rows(rec, encode, size)
    feats = rec.stage("features bench", "benchmarks.speed:external",
                      {"target": "benchmarks.features:run", "offer": {"rows": plan.feature_rows, "workdir": str(work), "memory_limit": "4GB"}}, f"{plan.feature_rows} rows")
    if feats is not None:
        rec.add_speed("feature rows (all features, streamed)", feats["features"]["rows_per_s"], "rows/s", size=f"{plan.feature_rows} rows",
                      baseline=f"pandas, same features, {feats['baseline_rows']} rows", baseline_value=feats["pandas"]["rows_per_s"])
        same_rows = feats["baseline_rows"] == feats["rows"]
        for part in ("generate", "features", "pandas") if same_rows else ("generate", "features", "features_baseline_rows", "pandas"):
            rec.stages.append({"stage": f"features bench: {part}", "size": f"{plan.feature_rows} rows", "seconds": feats[part].get("seconds"),
                               "peak_rss_mib": feats[part].get("peak_rss_mb"), "figures": feats[part]})
    metrics = rec.stage("metrics bench", "benchmarks.speed:external",
                        {"target": "benchmarks.evaluation:run", "offer": {"n_impressions": plan.eval_impressions}}, f"{plan.eval_impressions} impressions")
    if metrics is not None:
        loop_rate = metrics["rows"] / metrics["loop_s_extrapolated"] if metrics.get("loop_s_extrapolated") else None
        rec.add_speed("metric rows (vectorised AUC/MRR/nDCG)", metrics["vectorised_rows_per_s"], "rows/s",
                      size=f"{plan.eval_impressions} impressions", baseline="per-impression loop", baseline_value=loop_rate)


def _encode_rows(rec: Recorder, figures: dict[str, Any], size: str) -> None:
    """Speed rows from :func:`benchmarks.encode.run`: encode paths vs the naive loop, bf16 vs fp32 fine-tune."""
    device = f"{figures.get('device', 'cpu')} x{figures.get('threads', '?')}"
    naive = figures.get("naive_items_per_s")
    for key, label in (("batched_bf16", "bf16 weights (encode_items)"), ("batched_bf16_autocast", "bf16 autocast"), ("batched_fp32", "fp32")):
        if f"{key}_items_per_s" in figures:
            rec.add_speed(f"encode, batched {label}", figures[f"{key}_items_per_s"], "items/s", size=size,
                          baseline="naive, item by item, fp32", baseline_value=naive, device=device)
    if "train_bf16_samples_per_s" in figures:
        rec.add_speed("text fine-tune, bf16 autocast", figures["train_bf16_samples_per_s"], "samples/s", size=size,
                      baseline="fp32", baseline_value=figures.get("train_fp32_samples_per_s"), device=device)


def _scaling(rec: Recorder, sizes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Time and memory growth of each stage between consecutive sizes, next to the data growth."""
    impressions = {s["size"]: s["figures"].get("impressions") for s in rec.stages if s["stage"] == "synth"}
    by_key = {(s["stage"], s["size"]): s for s in rec.stages}
    rows = []
    for small, big in zip(sizes, sizes[1:]):
        if not impressions.get(small) or not impressions.get(big):
            continue
        for (stage, size), a in list(by_key.items()):
            b = by_key.get((stage, big))
            if size != small or b is None:
                continue
            rows.append({"stage": stage, "from": small, "to": big, "data_ratio": round(impressions[big] / impressions[small], 2),
                         "time_ratio": round(b["seconds"] / a["seconds"], 2) if a.get("seconds") else None,
                         "memory_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2) if a.get("peak_rss_mib") else None})
    return rows


def run_benchmarks(cfg: BenchConfig) -> tuple[dict[str, Any], list[Path]]:
    """Run the benchmark plan of ``cfg.mode`` and write the results.

    Args:
        cfg: what to run and where to write.

    Returns:
        The results (see :mod:`benchmarks.tables`) and the files written.

    Raises:
        RecsysError: a bad ``--compare`` file.
    """
    from benchmarks.tables import compare, load_results, write_results

    old = load_results(cfg.compare) if cfg.compare else None
    plan, started = cfg.plan, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        work = Path(cfg.work_dir) if cfg.work_dir else Path(tmp)
        # hardware + per size (synth, pipeline stages, evaluate, recommend) + speed stages + amazon
        total = 1 + len(plan.sizes) * (3 + len(PIPELINE_STAGES)) + SPEED_STAGES + int(cfg.run_amazon)
        rec = Recorder(work, cfg.stage_timeout_s, total)
        # Also the memory floor of every stage: the libraries alone, imported.
        hardware = rec.stage("imports only (hardware probe)", "benchmarks.harness:hardware_info", {}) or {}
        rec.device = f"GPU {hardware['gpu']}" if hardware.get("gpu") else f"cpu x{hardware.get('torch_threads', '?')}"
        for size in plan.sizes:
            _pipeline(rec, size, plan, work, cfg.seed)
        _speed(rec, plan, work)
        if cfg.run_amazon:
            amazon = rec.stage("amazon-scientific", "benchmarks.quality:amazon_stage",
                               {"data_dir": str(cfg.amazon_dir), "work_dir": str(work / "amazon"), "fine_tune": plan.amazon_fine_tune})
            if amazon is not None:
                rec.quality["amazon-scientific"] = amazon["table"]
        rec.progress.close()
    results: dict[str, Any] = {
        "meta": {**git_state(), "date": now_iso(), "mode": cfg.mode, "seed": cfg.seed, "sizes": list(plan.sizes), "text_impressions": plan.text_impressions,
                 "plan": asdict(plan), "argv": sys.argv[1:], "hardware": hardware,
                 "total_seconds": round(time.perf_counter() - started, 1),
                 # CPU seconds of all stage processes: over the usable cores, about what an idle machine would take.
                 "total_cpu_seconds": round(sum(s.get("cpu_seconds") or 0.0 for s in rec.stages), 1)},
        "quality": rec.quality, "speed": rec.speed, "stages": rec.stages, "scaling": _scaling(rec, plan.sizes), "errors": rec.errors,
    }
    if old is not None:
        results["compare"] = {"against": str(cfg.compare), "rows": compare(results, old)}
    return results, write_results(results, cfg.results_dir, baseline=cfg.save_baseline)
