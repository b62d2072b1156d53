"""The product's jobs end to end on a tiny synthetic world with a tiny BERT: train, evaluate, recommend, export, demo."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from ranker.lambdarank import RankerConfig
from recsys.api import Recommender
from recsys.config import TrainConfig
from recsys.data import Col, Dataset, Split, save_dataset
from recsys.demo import demo
from recsys.evaluate import evaluate
from recsys.pipeline import train
from recsys.recommend import RECS_SCHEMA, REQUEST, RecommendConfig
from recsys.synth import SynthConfig, generate
from conftest_text import make_tiny_encoder, tiny_config


def _config(encoder: Path) -> TrainConfig:
    base = TrainConfig.default("impressions")
    return dataclasses.replace(base, text=tiny_config(encoder, epochs=1, max_tokens=24),
                               ranker=RankerConfig(n_estimators=60, min_data_in_leaf=5, early_stopping_rounds=20, num_leaves=15, log_every=1000))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jobs")
    cfg = SynthConfig.preset("tiny", seed=3, n_impressions=900, n_users=120, test_fraction=0.1, dev_fraction=0.2)
    save_dataset(generate(cfg), root / "data")
    encoder = make_tiny_encoder(root / "encoder")
    train(Dataset.load(root / "data"), root / "model", _config(encoder), show_progress=False)
    return {"root": root, "data": root / "data", "model": root / "model", "encoder": encoder}


def test_train_writes_safe_artifacts_and_skips_finished_stages(world: dict[str, Path]) -> None:
    model = world["model"]
    for name in ("text/text_config.json", "item_vectors.parquet", "frozen_vectors.parquet", "features.parquet",
                 "ranker/ranker.txt", "ranker/ranker.json", "ranker_no_text/ranker.txt", "stages.json", "model.json", "config.toml"):
        assert (model / name).exists(), name
    assert not list(model.rglob("*.pkl")) and not list(model.rglob("*.ckpt"))
    again = train(Dataset.load(world["data"]), model, _config(world["encoder"]), show_progress=False)
    assert set(again["summary"]["stage_seconds"].values()) == {0.0}, "an unchanged re-run must skip every stage"


def test_ranker_learns_from_impressions_the_text_model_never_saw(world: dict[str, Path]) -> None:
    from recsys.data import load_dataset

    train_rows = load_dataset(world["data"]).split(Split.TRAIN).sort(Col.TIME, Col.IMPRESSION)
    n_text = train_rows.height // 2  # TrainConfig.text_fraction = 0.5: the later half (rounded up) trains the ranker
    ranker_start = json.loads((world["model"] / "ranker" / "ranker.json").read_text())["train_time_range"][0]
    assert ranker_start >= str(train_rows[Col.TIME][n_text - 1])
    text_range = json.loads((world["model"] / "text" / "train_metrics.json").read_text())["time_range"]
    assert text_range[1] == str(train_rows[Col.TIME][n_text - 1]) <= ranker_start  # the text model saw only the earlier part


def test_changed_ranker_config_reruns_only_the_ranker(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    cfg = dataclasses.replace(_config(world["encoder"]), ranker=RankerConfig(n_estimators=30, min_data_in_leaf=5, early_stopping_rounds=10, num_leaves=7))
    seconds = train(Dataset.load(world["data"]), model, cfg, show_progress=False)["summary"]["stage_seconds"]
    assert seconds["ranker"] > 0 and seconds["select_ranker"] > 0 and seconds["reference"] > 0  # settings seed the search; the reference is the new ranker's
    assert all(v == 0.0 for k, v in seconds.items() if k not in ("ranker", "select_ranker", "reference"))


def test_evaluate_compares_model_with_every_baseline(world: dict[str, Path]) -> None:
    report = world["root"] / "report"
    table = evaluate(world["model"], Dataset.load(world["data"]), Split.DEV, report_dir=report)
    assert set(table) == {"full model", "without text", "text only", "frozen text", "popularity", "random", "oracle"}
    for row in table.values():
        assert set(row) >= {"auc", "mrr", "ndcg@5", "ndcg@10"}
        assert 0.0 <= row["auc"] <= 1.0
    assert table["oracle"]["auc"] > table["random"]["auc"]
    assert table["full model"]["auc"] > table["random"]["auc"]
    for name in ("report.md", "metrics.json", "metrics.png", "importance.png"):
        assert (report / name).stat().st_size > 0, name
    saved = json.loads((report / "metrics.json").read_text())
    assert json.dumps(saved).count("full model") >= 1
    # Every ranking but the oracle has a 95% interval per metric, over impressions.
    assert set(saved["ci95"]) == set(table) - {"oracle"}
    assert all(0 < saved["ci95"][name]["auc"] < 0.5 for name in saved["ci95"])
    assert saved["notes"]["users evaluated"].endswith("(all)")


def test_unlabelled_split_writes_mind_predictions(world: dict[str, Path]) -> None:
    report = world["root"] / "report-test"
    assert evaluate(world["model"], Dataset.load(world["data"]), Split.TEST, report_dir=report) == {}
    lines = (report / "prediction.txt").read_text().splitlines()
    test = pl.read_parquet(world["data"] / "impressions.parquet").filter(pl.col(Col.SPLIT) == Split.TEST)
    assert len(lines) == test.height
    first_ranks = json.loads(lines[0].split(" ", 1)[1])
    assert sorted(first_ranks) == list(range(1, test[Col.CANDIDATES][0].len() + 1))


def _check_lists(recs: pl.DataFrame, k: int) -> None:
    assert dict(recs.schema) == RECS_SCHEMA
    for _, group in recs.group_by(REQUEST):
        group = group.sort("rank")
        assert group["rank"].to_list() == list(range(1, group.height + 1))
        assert group.height <= k
        assert group["score"].is_sorted(descending=True)
        assert group[Col.ITEM].n_unique() == group.height


def test_recommend_ranks_the_candidates_a_request_brings(world: dict[str, Path]) -> None:
    items = pl.read_parquet(world["data"] / "items.parquet")[Col.ITEM].to_list()
    users = pl.read_parquet(world["data"] / "impressions.parquet")[Col.USER].unique().sort().to_list()
    requests = pl.DataFrame({
        REQUEST: ["explicit", "inline", "stranger", "unknown-items"],
        Col.USER: [users[0], users[2], "never-seen-user", users[1]],
        Col.CANDIDATES: [items[:8], items[20:30], items[30:36], ["nope-1", items[40], items[40], "nope-2"]],
        Col.HISTORY: [None, items[10:14], None, None],
    })
    path = world["root"] / "requests.parquet"
    requests.write_parquet(path)
    out = world["root"] / "recs.parquet"
    summary = Recommender.load(world["model"]).recommend_file(path, out, RecommendConfig(top_k=5, chunk_size=2), show_progress=False)
    recs = pl.read_parquet(out)
    _check_lists(recs, 5)
    assert summary["requests"] == 4 and summary["rows"] == recs.height
    assert set(recs.filter(pl.col(REQUEST) == "explicit")[Col.ITEM]) <= set(items[:8])
    assert recs.filter(pl.col(REQUEST) == "stranger").height == 5
    # Ids outside the catalogue are never ranked, and a repeated candidate appears once.
    assert recs.filter(pl.col(REQUEST) == "unknown-items")[Col.ITEM].to_list() == [items[40]]
    rec = Recommender.load(world["model"])
    nothing = rec.recommend(pl.DataFrame({Col.USER: ["u"], Col.CANDIDATES: [["nope"]]}), k=3)
    assert nothing.is_empty() and dict(nothing.schema) == RECS_SCHEMA  # a short list, not an error
    assert rec.recommend(pl.DataFrame({Col.USER: [], Col.CANDIDATES: []}, schema={Col.USER: pl.String(), Col.CANDIDATES: pl.List(pl.String())})).is_empty()


def test_cli_jobs_and_one_line_errors(world: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    dev = pl.read_parquet(world["data"] / "impressions.parquet").filter(pl.col(Col.SPLIT) == Split.DEV).head(3)
    (tmp_path / "requests.csv").write_text("user_id,candidates,timestamp\n" + "\n".join(
        f"{u},{' '.join(c[:4])},2030-01-01T08:00:00" for u, c in zip(dev[Col.USER], dev[Col.CANDIDATES])) + "\n")
    res = runner.invoke(main, ["recommend", str(world["model"]), str(tmp_path / "requests.csv"), "--top-k", "3", "--out", str(tmp_path / "recs.parquet")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["export", str(tmp_path / "recs.parquet"), "--to", str(tmp_path / "recs.jsonl")])
    assert res.exit_code == 0, res.output
    exported = pl.read_ndjson(tmp_path / "recs.jsonl")
    assert exported.height == pl.read_parquet(tmp_path / "recs.parquet").height == 9
    res = runner.invoke(main, ["evaluate", str(tmp_path), str(world["data"])])
    assert res.exit_code == 1
    assert "not a trained model" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", str(world["data"]), "--out", str(tmp_path / "m"), "--text-fraction", "1"])
    assert res.exit_code == 1 and "text_fraction must be in (0, 1)" in res.output and not (tmp_path / "m").exists()


def test_demo_runs_the_whole_path(world: dict[str, Path], tmp_path: Path) -> None:
    result = demo(tmp_path / "demo", dataset_dir=world["data"], cfg=_config(world["encoder"]), requests=5)
    assert "full model" in result["table"]
    assert Path(result["report"]).exists()
    recs = pl.read_parquet(result["recs"]["out"])
    assert recs[REQUEST].n_unique() == 5
    _check_lists(recs, 10)


def test_a_tiny_chunk_size_warns(world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev = pl.read_parquet(world["data"] / "impressions.parquet").filter(pl.col(Col.SPLIT) == Split.DEV).head(3)
    dev.select(Col.USER, Col.CANDIDATES).write_parquet(tmp_path / "req.parquet")
    rec = Recommender.load(world["model"])
    with caplog.at_level("WARNING"):
        one = rec.recommend_file(tmp_path / "req.parquet", tmp_path / "a.parquet", RecommendConfig(top_k=3, chunk_size=1), show_progress=False)
    assert "--chunk-size 1 splits 3 requests into 3 chunks" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        rec.recommend_file(tmp_path / "req.parquet", tmp_path / "b.parquet", RecommendConfig(top_k=3), show_progress=False)
    assert "chunk-size" not in caplog.text
    # The chunking changes the time, never the lists.
    assert pl.read_parquet(tmp_path / "a.parquet").drop("generated_at").equals(pl.read_parquet(tmp_path / "b.parquet").drop("generated_at"))
    assert one["rows"] == 9
