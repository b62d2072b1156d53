"""The product's jobs end to end on a tiny synthetic world with a tiny BERT: train, evaluate, recommend, export, demo."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from ranker.lambdarank import RankerConfig
from recsys.data import Col, Split, save_dataset
from recsys.demo import demo
from recsys.pipeline import TrainConfig, train
from recsys.recommend import RECS_SCHEMA, REQUEST, RecommendConfig, recommend
from recsys.evaluation.replay import EvalConfig, evaluate
from recsys.synth import SynthConfig, generate
from conftest_text import make_tiny_encoder, tiny_config


def _config(encoder: Path) -> TrainConfig:
    return TrainConfig(
        text=tiny_config(encoder, epochs=1, max_tokens=24),
        ranker=RankerConfig(n_estimators=60, min_data_in_leaf=5, early_stopping_rounds=20, num_leaves=15, log_every=1000),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jobs")
    cfg = SynthConfig.preset("tiny", seed=3, n_impressions=900, n_users=120, test_fraction=0.1, dev_fraction=0.2)
    save_dataset(generate(cfg), root / "data")
    encoder = make_tiny_encoder(root / "encoder")
    train(root / "data", root / "model", _config(encoder))
    return {"root": root, "data": root / "data", "model": root / "model", "encoder": encoder}


def test_train_writes_safe_artifacts_and_skips_finished_stages(world: dict[str, Path]) -> None:
    model = world["model"]
    for name in ("text/text_config.json", "item_vectors.parquet", "frozen_vectors.parquet", "features.parquet",
                 "ranker.txt", "ranker.json", "ranker_features_only.txt", "stages.json", "summary.json"):
        assert (model / name).exists(), name
    assert not list(model.rglob("*.pkl")) and not list(model.rglob("*.ckpt"))
    again = train(world["data"], model, _config(world["encoder"]))
    assert set(again["stage_seconds"].values()) == {0.0}, "an unchanged re-run must skip every stage"


def test_ranker_learns_from_impressions_the_text_model_never_saw(world: dict[str, Path]) -> None:
    from recsys.data import load_dataset

    train_rows = load_dataset(world["data"]).split(Split.TRAIN).sort(Col.TIME, Col.IMPRESSION)
    summary = json.loads((world["model"] / "summary.json").read_text())
    n_text = summary["text_model_impressions"]
    assert n_text == train_rows.height // 2  # TrainConfig.text_fraction = 0.5
    ranker_start = json.loads((world["model"] / "ranker.json").read_text())["train_time_range"][0]
    assert ranker_start >= str(train_rows[Col.TIME][n_text - 1])
    text_range = json.loads((world["model"] / "text" / "train_metrics.json").read_text())["time_range"]
    assert text_range[1] == str(train_rows[Col.TIME][n_text - 1]) <= ranker_start  # the text model saw only the earlier part


def test_changed_ranker_config_reruns_only_the_ranker(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    cfg = _config(world["encoder"])
    cfg.ranker = RankerConfig(n_estimators=30, min_data_in_leaf=5, early_stopping_rounds=10, num_leaves=7, log_every=1000)
    seconds = train(world["data"], model, cfg)["stage_seconds"]
    assert seconds["ranker"] > 0
    assert all(v == 0.0 for k, v in seconds.items() if k != "ranker")


def test_evaluate_compares_model_with_every_baseline(world: dict[str, Path]) -> None:
    report = world["root"] / "report"
    table = evaluate(world["model"], world["data"], report, EvalConfig(split=Split.DEV))
    assert set(table) == {"full model", "features only", "text only", "frozen text", "popularity", "random", "oracle"}
    for row in table.values():
        assert set(row) >= {"auc", "mrr", "ndcg@5", "ndcg@10"}
        assert 0.0 <= row["auc"] <= 1.0
    assert table["oracle"]["auc"] > table["random"]["auc"]
    assert table["full model"]["auc"] > table["random"]["auc"]
    for name in ("report.md", "metrics.json", "metrics.png", "importance.png"):
        assert (report / name).stat().st_size > 0, name
    saved = json.loads((report / "metrics.json").read_text())
    assert json.dumps(saved).count("full model") >= 1


def test_unlabelled_split_writes_mind_predictions(world: dict[str, Path]) -> None:
    report = world["root"] / "report-test"
    assert evaluate(world["model"], world["data"], report, EvalConfig(split=Split.TEST)) == {}
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


def test_recommend_ranks_explicit_candidates_and_retrieves_the_rest(world: dict[str, Path]) -> None:
    items = pl.read_parquet(world["data"] / "items.parquet")[Col.ITEM].to_list()
    users = pl.read_parquet(world["data"] / "impressions.parquet")[Col.USER].unique().sort().to_list()
    requests = pl.DataFrame({
        REQUEST: ["explicit", "retrieved", "inline", "stranger"],
        Col.USER: [users[0], users[1], users[2], "never-seen-user"],
        Col.CANDIDATES: [items[:8], None, None, None],
        Col.HISTORY: [None, None, items[10:14], None],
    })
    path = world["root"] / "requests.parquet"
    requests.write_parquet(path)
    out = world["root"] / "recs.parquet"
    summary = recommend(world["model"], path, out, RecommendConfig(top_k=5, chunk_size=2), show_progress=False)
    recs = pl.read_parquet(out)
    _check_lists(recs, 5)
    assert summary["requests"] == 4 and summary["rows"] == recs.height
    assert set(recs.filter(pl.col(REQUEST) == "explicit")[Col.ITEM]) <= set(items[:8])
    assert recs.filter(pl.col(REQUEST) == "retrieved").height == 5
    assert recs.filter(pl.col(REQUEST) == "stranger").height == 5  # popular/recent items for an unknown user


def test_cli_jobs_and_one_line_errors(world: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    users = pl.read_parquet(world["data"] / "impressions.parquet")[Col.USER].unique().sort().head(3)
    (tmp_path / "requests.csv").write_text("user_id\n" + "\n".join(users) + "\n")
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
