"""Settings chosen on dev: a different dev optimum leads to a different choice, the time budget is honoured, and the
choice round-trips into the saved config, ``selection.json`` and the evaluation report."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from conftest_shop import write_unisrec
from features.registry import source_score
from recsys.config import TrainConfig, load_config, override
from recsys.data import Col, Dataset
from recsys.evaluate import evaluate
from recsys.loaders.amazon import ingest_amazon
from recsys.pipeline import train
from recsys.selection import ranker as ranker_search
from recsys.selection.record import SELECTION, TITLE
from recsys.selection.retrieval import RetrievalSearch, SourceResult, dev_targets, select_retrieval
from recsys.selection.search import Search, climb

SOURCES = ("transitions", "cooccurrence")


def markov(n_users: int = 200, n_items: int = 50, length: int = 8, follow: float = 0.5, seed: int = 0) -> list[list[int]]:
    """Only the last item predicts the next: each step follows a fixed permutation of the items half of the time, else
    jumps anywhere, so the items before the last one point at noise."""
    rng = np.random.default_rng(seed)
    nxt = rng.permutation(n_items)
    out = []
    for _ in range(n_users):
        seq = [int(rng.integers(n_items))]
        while len(seq) < length:
            item = int(nxt[seq[-1]]) if rng.random() < follow else int(rng.integers(n_items))
            if item not in seq:
                seq.append(item)
        out.append(seq)
    return out


def clusters(n_users: int = 200, n_clustered: int = 60, n_noise: int = 40, length: int = 8, k: int = 3, seed: int = 0) -> list[list[int]]:
    """Long-range co-occurrence predicts: each user takes items of one cluster, each followed by a random item of a
    shared noise pool, so the last item says nothing of the next one and the earlier items say it all."""
    rng = np.random.default_rng(seed)
    size = n_clustered // k
    out = []
    for c in rng.integers(k, size=n_users):
        mine = [int(c * size + i) for i in rng.permutation(size)[: length // 2]]
        noise = [int(n_clustered + i) for i in rng.permutation(n_noise)[: length // 2]]
        out.append([item for pair in zip(mine, noise) for item in pair])
    return out


def memory(chosen: dict[str, Any]) -> float:
    """How much the chosen recency settings weigh the history items before the last: sum of decay**k, k = 1..recent-1."""
    return sum(chosen["retrieval.decay"] ** k for k in range(1, chosen["retrieval.recent"]))


def config(ds: Dataset, **overrides: Any) -> TrainConfig:
    base = {"use_text": False, "fine_tune": False, "retrieval.sources": SOURCES, "retrieval.per_source": 10, "retrieval.batch_size": 64,
            "select.drop_sources": False, "select.ranker_trials": 3, "select.finalists": 2, "select.first_rung": 0.5, "ranker.num_leaves": 7,
            "ranker.min_data_in_leaf": 5, "ranker.n_estimators": 30, "ranker.early_stopping_rounds": 5, "ranker.num_threads": 1,
            "train_negatives": 10, "select.num_leaves": (3, 7, 15), "select.min_data_in_leaf": (2, 5, 20)}
    return override(TrainConfig.for_dataset(ds.manifest), **{**base, **overrides})


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("select")
    out = {}
    for name, seqs, n in (("markov", markov(), 50), ("clusters", clusters(), 100)):
        ingest_amazon(write_unisrec(root / f"{name}-src", seqs, n), root / name)
        out[name] = root / name
    return out


def test_climb_finds_each_optimum_from_the_same_start() -> None:
    grid = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
    for peak in (10.0, 3000.0):
        judged: list[float] = []

        def judge(v: float, peak: float = peak) -> float:
            judged.append(v)
            return -abs(math.log(v / peak))

        best, score = climb(grid, 250.0, judge(250.0), judge)
        assert best == peak and score == 0.0
        assert len(judged) < len(grid)  # a climb, not the whole grid
    # A plateau (settings longer than every history) is crossed; an unknown start joins the grid.
    assert climb((1, 2, 3, 5, 10, 20, 50), 20, 0.5, lambda v: 0.5 if v >= 5 else 0.6 - v / 100)[0] == 1
    # A search that must stop keeps the best so far: here the start.
    assert climb(grid, 250.0, 1.0, lambda v: None) == (250.0, 1.0)


def test_a_different_dev_optimum_leads_to_a_different_choice(logs: dict[str, Path]) -> None:
    """Where only the last item predicts the next, short memory wins on dev; where the whole history predicts, long
    memory wins; the search finds each log's own optimum from the same configured settings."""
    chosen, dev = {}, {}
    for name, path in logs.items():
        ds = Dataset.load(path)
        cfg = config(ds)
        record = select_retrieval(ds, None, cfg)
        chosen[name], dev[name] = record["chosen"], dev_targets(ds, None, cfg)
        assert record["configured"]["retrieval.recent"] == 5 and record["trials_run"][0]["step"] == "configured"
        assert record["judged_by"]["retrieval.recent"]["chosen"] >= record["judged_by"]["retrieval.recent"]["configured"]
    assert memory(chosen["markov"]) < 1.0 < memory(chosen["clusters"]), chosen
    # Each log's choice beats the other log's choice on its own dev targets.
    for name, other in (("markov", "clusters"), ("clusters", "markov")):
        def score(c: dict[str, Any], name: str = name) -> float:
            point = {"ease_l2": 250.0, "recent": c["retrieval.recent"], "decay": c["retrieval.decay"], "per_source": 10, "sources": SOURCES}
            return float(np.mean(list(dev[name].ndcg(point, list(SOURCES)).values())))
        assert score(chosen[name]) > score(chosen[other]), (name, chosen)


@pytest.mark.parametrize("kind", ["wrong", "wrong within budget", "targets"])
def test_a_source_is_left_out_only_to_make_room_and_only_if_it_holds_no_targets(kind: str, logs: dict[str, Path]) -> None:
    ds = Dataset.load(logs["markov"])
    dev = dev_targets(ds, None, config(ds, **{"retrieval.sources": (*SOURCES, "popularity")}))
    n, rows = len(dev.base.item_ids), np.arange(len(dev.targets))
    point = {"ease_l2": 250.0, "recent": 5, "decay": 0.6, "per_source": 10, "sources": (*SOURCES, "popularity")}
    others = np.unique(np.concatenate([r.keys for r in dev.results({**point, "sources": SOURCES}).values()]))
    # popularity's place taken by a source that brings ten items of its own per request, never a target (or, for
    # "targets", also every target the others miss)
    keys = np.setdiff1d((rows[:, None] * n + (dev.targets[:, None] + np.arange(1, 11)) % n).ravel(), others)
    keys = np.union1d(keys, np.setdiff1d(dev.target_keys, others)) if kind == "targets" else np.setdiff1d(keys, dev.target_keys)
    dev.cache[dev.key("popularity", point)] = SourceResult(np.ones((len(rows), 3), dtype=np.int64), keys)
    budget = len(others) / len(rows) + (100 if kind == "wrong within budget" else 1)  # room for the others' candidates alone
    search = RetrievalSearch(dev, config(ds, **{"select.drop_sources": True, "select.max_candidates": int(budget)}), Search(60.0))
    kept, union = search.without_idle(point)
    assert ("popularity" in kept["sources"]) == (kind != "wrong"), (kind, kept["sources"])
    assert set(kept["sources"]) >= set(SOURCES) and union["union recall"] == dev.union(point)["union recall"]


def _ranker_table(n_groups: int = 40) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{Col.IMPRESSION: f"g{g}", Col.USER: f"u{g}", Col.TIME: g, Col.LABEL: int(c == 0), Col.ITEM: f"i{c}", source_score("ease"): float(rng.random())}
            for g in range(n_groups) for c in range(5)]
    return pl.DataFrame(rows).with_columns(pl.from_epoch(Col.TIME, "s"))


@pytest.mark.parametrize("peak", [3, 16])
def test_the_ranker_search_takes_the_best_validation_score(peak: int, monkeypatch: pytest.MonkeyPatch, logs: dict[str, Path]) -> None:
    """Successive halving: every trial on a share of the fit groups, the best two and the configured settings again on
    all; the best of those is chosen, so a different validation optimum is a different choice."""
    calls: list[tuple[int, float]] = []

    def fake_judge(part: pl.DataFrame, valid: pl.DataFrame, names: list[str], seed: Any, point: dict[str, Any], share: float,
                   metric: str) -> tuple[float, dict[str, Any]]:
        calls.append((point["num_leaves"], share))
        return 1.0 - abs(point["num_leaves"] - peak) / 100, {}

    monkeypatch.setattr(ranker_search, "_judge", fake_judge)
    grid = {"select.num_leaves": (3, 4, 15, 16), "select.learning_rate": (0.05,), "select.min_data_in_leaf": (5,), "select.feature_fraction": (0.8,),
            "select.ranker_trials": 8}
    record = ranker_search.select_ranker(_ranker_table(), config(Dataset.load(logs["markov"]), **grid))
    assert record["chosen"]["ranker.num_leaves"] == peak and record["configured"]["ranker.num_leaves"] == 7
    first = [leaves for leaves, share in calls if share == 0.5]
    assert first[0] == 7 and sorted(first) == [3, 4, 7, 15, 16]  # the configured settings first
    best_two = [3, 4] if peak == 3 else [15, 16]
    assert sorted(leaves for leaves, share in calls if share == 1.0) == sorted([*best_two, 7])  # the configured ones always go on
    assert record["judged_by"]["ranker.num_leaves"]["chosen"] == 1.0 and record["judged_by"]["ranker.num_leaves"]["configured"] < 1.0


def test_a_tiny_budget_keeps_the_configured_settings_and_says_so(logs: dict[str, Path], tmp_path: Path) -> None:
    ds = Dataset.load(logs["markov"])
    cfg = config(ds, **{"select.retrieval_seconds": 0.0, "select.ranker_seconds": 0.0})
    meta = train(ds, tmp_path / "model", cfg, show_progress=False)
    record = json.loads((tmp_path / "model" / SELECTION).read_text())
    for part in ("retrieval", "ranker"):
        assert record[part]["trials"] == 1 and len(record[part]["trials_run"]) == 1, record[part]
        assert record[part]["chosen"] == record[part]["configured"] and "time budget" in record[part]["stopped"]
    assert meta["config"]["retrieval"]["recent"] == 5 and meta["config"]["ranker"]["num_leaves"] == 7


def test_the_choice_round_trips_into_the_model_and_the_report(logs: dict[str, Path], tmp_path: Path) -> None:
    ds = Dataset.load(logs["markov"])
    model = tmp_path / "model"
    meta = train(ds, model, config(ds, **{"retrieval.recent": 20}), show_progress=False)
    record = json.loads((model / SELECTION).read_text())
    chosen = {**record["retrieval"]["chosen"], **record["ranker"]["chosen"]}
    assert chosen["retrieval.recent"] < 20  # the configured 20 only seeded the search
    saved = tomllib.loads((model / "config.toml").read_text())
    for dotted, value in chosen.items():
        table, name = dotted.split(".")
        assert saved[table][name] == value and meta["config"][table][name] == value, dotted
    assert saved["select"]["enabled"] is False and meta["summary"]["selection"]["retrieval"]["chosen"] == record["retrieval"]["chosen"]
    # A rerun skips the search; the saved config reproduces the model without searching.
    again = train(ds, model, config(ds, **{"retrieval.recent": 20}), show_progress=False)
    assert set(again["summary"]["stage_seconds"]) >= {"select_retrieval", "select_ranker"}
    assert all(v == 0.0 for v in again["summary"]["stage_seconds"].values()) and again["model_id"] == meta["model_id"]
    reproduced = train(ds, model, load_config(model / "config.toml", TrainConfig.for_dataset(ds.manifest)), show_progress=False)
    assert reproduced["model_id"] == meta["model_id"] and all(v == 0.0 for v in reproduced["summary"]["stage_seconds"].values())
    assert (model / SELECTION).exists()
    # The report shows the chosen settings with their dev scores.
    evaluate(model, ds, "test", report_dir=tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"## {TITLE}" in report and f"| retrieval.recent | 20 | {chosen['retrieval.recent']} |" in report
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["selection"]["ranker"]["chosen"] == record["ranker"]["chosen"]
    # Settings given by hand and no search: the record of another choice goes.
    train(ds, model, override(config(ds), **{"select.enabled": False, "retrieval.recent": 3, "ranker.num_leaves": 9}), show_progress=False)
    assert not (model / SELECTION).exists()
    evaluate(model, ds, "test", report_dir=tmp_path / "report2")
    assert TITLE not in (tmp_path / "report2" / "report.md").read_text()


def test_train_prints_the_search_budget_and_no_select_skips_it(logs: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main
    from recsys.budget import plan

    ds = Dataset.load(logs["markov"])
    budget = {b.stage: b for b in plan(ds, config(ds))}["select"]
    assert "retrieval" in budget.work and "ranker" in budget.work and "select.ranker_seconds" in budget.setting
    assert 0 < budget.seconds <= 120 + 300
    (tmp_path / "small.toml").write_text("use_text = false\n\n[ranker]\nn_estimators = 20\nnum_leaves = 7\nmin_data_in_leaf = 5\n")
    args = ["train", str(logs["markov"]), "--config", str(tmp_path / "small.toml")]
    on = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "on")])
    assert on.exit_code == 0, on.output
    assert any(line.split()[:1] == ["select"] for line in on.output.splitlines()[1:6]) and (tmp_path / "on" / SELECTION).exists()
    off = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "off"), "--no-select"])
    assert off.exit_code == 0, off.output
    assert "select" not in off.output and not (tmp_path / "off" / SELECTION).exists()
