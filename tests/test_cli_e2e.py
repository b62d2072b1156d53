"""Both log kinds through the same CLI path: ingest -> train -> evaluate -> recommend -> export, plus the
stage cache, config files, and the refusals (tampered artifact, another dataset, missing candidates)."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest_shop import sequences, write_unisrec
from conftest_text import make_tiny_encoder, small_toml
from recsys.config import TrainConfig, load_config
from recsys.data import Col, Dataset
from recsys.model import fingerprint, read_model_json
from recsys.resources import result_settings

KINDS = ("impressions", "interactions")


def invoke(*args: object) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def refuse(*args: object) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    return res.output


@pytest.fixture(scope="module", params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(request.param)
    encoder = make_tiny_encoder(root / "encoder")
    (root / "small.toml").write_text(small_toml(encoder) + ("\n[retrieval]\nper_source = 8\n" if request.param == "interactions" else ""))
    if request.param == "impressions":
        invoke("synth", root / "mind", "--size", "tiny", "--seed", "3", "--format", "mind")
        invoke("ingest", "mind", "--train", root / "mind" / "train", "--dev", root / "mind" / "dev", "--out", root / "data")
    else:
        src = write_unisrec(root / "src", sequences(n_users=120, n_items=40, length=8, seed=2), 40)
        invoke("ingest", "amazon", src, "--out", root / "data")
    invoke("train", root / "data", "--out", root / "model", "--config", root / "small.toml")
    return {"root": root, "data": root / "data", "model": root / "model", "kind": request.param}  # type: ignore[dict-item]


def test_model_json_describes_the_model(world: dict[str, Path]) -> None:
    meta = json.loads((world["model"] / "model.json").read_text())
    assert meta["kind"] == world["kind"]
    assert meta["candidates"] == ("logged" if world["kind"] == "impressions" else "retrieved")
    assert len(meta["model_id"]) == 16 and meta["dataset"]["fingerprint"]
    assert {"ranker/ranker.txt", "ranker_no_text/ranker.txt", "frozen_vectors.parquet"} <= set(meta["artifacts"])
    assert all(len(h) == 64 for h in meta["artifacts"].values())
    assert meta["config"]["ranker"]["n_estimators"] == 40  # from the config file, not the defaults
    assert not list(world["model"].rglob("*.pkl")) and not list(world["model"].rglob("*.ckpt"))


def stage_lines(train_output: str) -> list[str]:
    """The stage timings `recsys train` printed (not its budget, nor the closing line)."""
    return [line for line in train_output.splitlines() if line and not line.startswith(("model ", "budget", "  "))]


def test_retrain_skips_every_stage_and_resources_never_retrain(world: dict[str, Path]) -> None:
    out = invoke("train", world["data"], "--out", world["model"], "--config", world["root"] / "small.toml", "--memory-limit", "1GB", "--threads", "1")
    lines = out.splitlines()
    # The budget comes first: every expensive stage with the setting that bounds it.
    assert lines[0].startswith("budget") and any(line.split()[0] == "ranker" and "[ranker_users" in line for line in lines[1:6]), out
    stages = stage_lines(out)
    assert stages and all(line.endswith("up to date") for line in stages), out


def test_evaluate_recommend_export(world: dict[str, Path], tmp_path: Path) -> None:
    split = "dev" if world["kind"] == "impressions" else "test"
    out = invoke("evaluate", world["model"], "--split", split, "--report", tmp_path / "report")
    for row in ("full model", "without text", "frozen text", "popularity", "random"):
        assert row in out, row
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    assert set(metrics) >= {"full model", "without text", "random"}
    ds = pl.read_parquet(world["data"] / "impressions.parquet").filter(pl.col(Col.SPLIT) == split).head(6)
    requests = ds.select(Col.USER, Col.CANDIDATES) if world["kind"] == "impressions" else ds.select(Col.USER)
    requests.write_parquet(tmp_path / "requests.parquet")
    invoke("recommend", world["model"], tmp_path / "requests.parquet", "--top-k", "3", "--out", tmp_path / "recs.parquet")
    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert recs["request_id"].n_unique() == 6 and recs.group_by("request_id").len()["len"].max() == 3
    assert recs["model_id"].unique().to_list() == [json.loads((world["model"] / "model.json").read_text())["model_id"]]
    invoke("export", tmp_path / "recs.parquet", "--to", tmp_path / "recs.jsonl")
    assert pl.read_ndjson(tmp_path / "recs.jsonl").height == recs.height


def test_config_round_trip_reproduces_the_run(world: dict[str, Path], tmp_path: Path) -> None:
    saved = tomllib.loads((world["model"] / "config.toml").read_text())
    shutil.copytree(world["model"], tmp_path / "model")
    # The written TOML and model.json both reproduce the run: every stage is up to date.
    for config in (world["model"] / "config.toml", world["model"] / "model.json"):
        out = invoke("train", world["data"], "--out", tmp_path / "model", "--config", config)
        assert all(line.endswith("up to date") for line in stage_lines(out)), (config, out)
    assert saved["ranker"]["n_estimators"] == 40 and saved["text"]["max_steps"] == "none"


def test_a_flag_changes_only_its_setting(world: dict[str, Path], tmp_path: Path) -> None:
    # --no-select too: with the search on, the saved config would hold the settings it chose instead of the given ones.
    invoke("train", world["data"], "--out", tmp_path / "m", "--config", world["root"] / "small.toml", "--epochs", "2", "--frozen", "--no-select")
    before = load_config(world["root"] / "small.toml", TrainConfig.for_dataset(Dataset.load(world["data"]).manifest)).to_dict()
    after = json.loads((tmp_path / "m" / "model.json").read_text())["config"]
    assert after["text"].pop("epochs") == 2 and before["text"].pop("epochs") == 1
    assert after.pop("fine_tune") is False
    before.pop("fine_tune")
    assert after["select"].pop("enabled") is False and before["select"].pop("enabled") is True
    assert after == before


def test_tampered_artifact_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(world["model"], tmp_path / "model")
    with (tmp_path / "model" / "ranker" / "ranker.txt").open("a") as f:
        f.write("\n")
    out = refuse("evaluate", tmp_path / "model")
    assert "ranker.txt: sha256 differs" in out


def test_another_dataset_is_refused_unless_allowed(world: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(world["data"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "source": "a newer log"}))
    assert "not the dataset this model was trained on" in refuse("evaluate", world["model"], other)
    split = "dev" if world["kind"] == "impressions" else "test"
    invoke("evaluate", world["model"], other, "--allow-other-dataset", "--split", split, "--report", tmp_path / "r")


def test_requests_without_candidates(world: dict[str, Path], tmp_path: Path) -> None:
    users = pl.read_parquet(world["data"] / "impressions.parquet")[Col.USER].unique().sort().head(3)
    (tmp_path / "requests.csv").write_text("user_id,timestamp\n" + "\n".join(f"{u},2030-01-01 10:00:00" for u in users) + "\n")
    args = ("recommend", world["model"], tmp_path / "requests.csv", "--out", tmp_path / "recs.parquet")
    if world["kind"] == "impressions":
        line = refuse(*args)
        assert "learned on logged impressions only" in line and "requests.csv, row 1, field 'candidates'" in line
        assert not (tmp_path / "recs.parquet").exists()
    else:
        invoke(*args)
        assert pl.read_parquet(tmp_path / "recs.parquet").height == 30


def test_a_model_from_before_a_feature_it_does_not_use_still_loads(world: dict[str, Path], tmp_path: Path) -> None:
    """A model trained before the sequence settings existed loads as trained (the feature is off unless asked for)."""
    shutil.copytree(world["model"], tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    # As a recsys before the sequence model and the validation cap wrote it, with its fingerprint.
    del meta["config"]["sequence"], meta["config"]["text"]["max_val_impressions"]
    settings = result_settings(TrainConfig.from_dict(meta["config"]))
    settings.pop("sequence"), settings["text"].pop("max_val_impressions")
    meta["config_fingerprint"] = fingerprint(settings)
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    loaded = read_model_json(tmp_path / "model")
    assert loaded["config_fingerprint"] == meta["config_fingerprint"]
    assert loaded["config"]["text"]["max_val_impressions"] is None  # the value such a model was trained with
    invoke("evaluate", str(tmp_path / "model"), "--report", str(tmp_path / "report"))
    assert (tmp_path / "report" / "metrics.json").exists()


def test_refusals_are_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    other = "catalogue" if world["kind"] == "impressions" else "replay"
    assert "evaluate it with the" in refuse("evaluate", world["model"], "--protocol", other)
    assert "unknown split" in refuse("evaluate", world["model"], "--split", "bogus")
    shutil.copytree(world["model"], tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    del meta["config"]["ranker_users"], meta["config"]["retrieval"]["per_source"]  # as an older recsys wrote it
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    assert "trained by an older recsys whose config has no retrieval.per_source, ranker_users; retrain" in refuse("evaluate", tmp_path / "model")
    (tmp_path / "model" / "model.json").write_text("{ not json")
    assert "model.json: not valid JSON" in refuse("evaluate", tmp_path / "model")
    # An output that cannot be written (a read-only disk; here a path under a plain file) is named, not a traceback.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot create the directory" in refuse("evaluate", world["model"], "--report", blocker / "report")
    assert "cannot create the directory" in refuse("train", world["data"], "--out", blocker / "model")
    pl.DataFrame({Col.USER: ["u"], Col.CANDIDATES: [["x"]]}).write_parquet(tmp_path / "req.parquet")
    assert "cannot create the directory" in refuse("recommend", world["model"], tmp_path / "req.parquet", "--out", blocker / "recs.parquet")


def test_a_frozen_retrain_drops_the_fine_tuned_artifacts(world: dict[str, Path], tmp_path: Path) -> None:
    if world["kind"] == "interactions":
        pytest.skip("the interaction defaults do not fine-tune")
    shutil.copytree(world["model"], tmp_path / "model")
    invoke("train", world["data"], "--out", tmp_path / "model", "--config", world["root"] / "small.toml", "--frozen")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert not (tmp_path / "model" / "text").exists() and not (tmp_path / "model" / "item_vectors.parquet").exists()
    assert not [a for a in meta["artifacts"] if a.startswith("text/") or a == "item_vectors.parquet"]
    invoke("evaluate", tmp_path / "model", "--report", tmp_path / "report")
