"""LightGBM lambdarank ranker on a tiny synthetic feature table where one feature truly drives clicks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ranker.lambdarank import MANIFEST_FILE, MODEL_FILE, RankerConfig, fit, load_ranker, save_ranker
from recsys.splits import split_latest
from recsys.data import Col, Split
from recsys.errors import DataError, ModelMismatchError, RecsysError
from recsys.evaluation.metrics import impression_metrics
from recsys.io import read_json, write_json

FEATURES = ["item_pop", "affinity", "noise"]
SMALL = RankerConfig(num_leaves=7, learning_rate=0.1, n_estimators=150, min_data_in_leaf=20, early_stopping_rounds=15, num_threads=1, bagging_fraction=1.0)


def feature_frame(n_imp: int = 900, size: int = 10, seed: int = 0) -> pl.DataFrame:
    """Clicks depend mostly on a user-item affinity; popularity helps a little."""
    rng = np.random.default_rng(seed)
    n_items = 60
    log_pop = rng.normal(0, 1, n_items)
    items = rng.integers(0, n_items, (n_imp, size))
    affinity = rng.normal(0, 1, (n_imp, size))
    logit = 2.5 * affinity + 0.5 * log_pop[items] - 2.5
    label = (rng.random((n_imp, size)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    start = dt.datetime(2024, 1, 1)
    times = [start + dt.timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 60 * 24 * 7, n_imp))]
    return pl.DataFrame(
        {
            Col.IMPRESSION: np.repeat([f"i{j}" for j in range(n_imp)], size),
            Col.USER: np.repeat([f"u{j % 97}" for j in range(n_imp)], size),
            Col.ITEM: [f"n{i}" for i in items.ravel()],
            Col.TIME: np.repeat(np.array(times, dtype="datetime64[us]"), size),
            Col.SPLIT: Split.TRAIN,
            Col.LABEL: label.ravel(),
            "item_pop": np.exp(log_pop[items]).ravel(),
            "affinity": (affinity + rng.normal(0, 0.3, affinity.shape)).ravel(),
            "noise": rng.normal(0, 1, n_imp * size),
        }
    )


@pytest.fixture(scope="module")
def trained() -> tuple[pl.DataFrame, pl.DataFrame, object]:
    df = feature_frame()
    rest, test = split_latest(df, 0.25)
    train, valid = split_latest(rest, 0.2)
    return train, test, fit(train, valid, FEATURES, SMALL)


def test_ranker_beats_popularity(trained: tuple) -> None:
    train, test, ranker = trained
    scored = test.with_columns(model=pl.Series(ranker.score(test)))
    model = impression_metrics(scored, "model")
    pop = impression_metrics(scored, "item_pop")
    assert model["auc"] > pop["auc"] + 0.1
    assert model["ndcg@10"] > pop["ndcg@10"]
    imp = ranker.importance()
    assert list(imp)[0] == "affinity" and imp["affinity"] > imp["noise"]
    assert 1 <= ranker.manifest["best_iteration"] <= SMALL.n_estimators
    assert ranker.manifest["valid_scores"]  # early stopping ran on the validation set


def test_save_load_round_trip_identical_scores(trained: tuple, tmp_path: Path) -> None:
    _, test, ranker = trained
    save_ranker(ranker, tmp_path, encoder_fingerprint="abc123")
    assert (tmp_path / MODEL_FILE).read_text().startswith("tree")
    manifest = read_json(tmp_path / MANIFEST_FILE)
    assert manifest["features"] == FEATURES and manifest["encoder_fingerprint"] == "abc123"
    assert manifest["versions"]["lightgbm"] and manifest["train"]["time_max"]
    loaded = load_ranker(tmp_path, features=list(reversed(FEATURES)), encoder_fingerprint="abc123")
    # Column order of the data does not matter: features are read by name.
    shuffled = test.select([Col.IMPRESSION, "noise", "affinity", "item_pop"])
    np.testing.assert_array_equal(loaded.score(shuffled), ranker.score(test))
    assert loaded.importance() == pytest.approx(ranker.importance())
    # A second model beside the first, under another name.
    small = fit(test, None, ["affinity"], RankerConfig(num_leaves=4, n_estimators=3, min_data_in_leaf=5, num_threads=1))
    save_ranker(small, tmp_path, name="ranker_small")
    assert load_ranker(tmp_path, name="ranker_small").features == ["affinity"]
    assert load_ranker(tmp_path).features == FEATURES


def test_load_refuses_mismatched_features(trained: tuple, tmp_path: Path) -> None:
    _, test, ranker = trained
    save_ranker(ranker, tmp_path, encoder_fingerprint="abc123")
    with pytest.raises(ModelMismatchError, match=r"lacks \['noise'\].*has \['text_sim'\]"):
        load_ranker(tmp_path, features=["item_pop", "affinity", "text_sim"])
    with pytest.raises(ModelMismatchError, match="text encoder"):
        load_ranker(tmp_path, encoder_fingerprint="other")
    with pytest.raises(ModelMismatchError, match="noise"):
        ranker.score(test.drop("noise"))
    manifest = read_json(tmp_path / MANIFEST_FILE)
    manifest["features"] = ["a", "b", "c"]
    write_json(manifest, tmp_path / MANIFEST_FILE)
    with pytest.raises(ModelMismatchError, match="different runs"):
        load_ranker(tmp_path)
    with pytest.raises(RecsysError, match="not found"):
        load_ranker(tmp_path / "nothing")


def test_groups_without_click_are_dropped_and_counted() -> None:
    df = feature_frame(n_imp=200, seed=3)
    no_click = df[Col.IMPRESSION].unique().sort().head(20)
    df = df.with_columns(pl.when(pl.col(Col.IMPRESSION).is_in(no_click.implode())).then(0).otherwise(pl.col(Col.LABEL)).cast(pl.Int8).alias(Col.LABEL))
    cfg = RankerConfig(num_leaves=4, n_estimators=5, min_data_in_leaf=5, num_threads=1)
    ranker = fit(df, None, FEATURES, cfg)
    stats = ranker.manifest["train"]
    assert stats["dropped_groups_no_click"] >= 20
    assert stats["used_groups"] == stats["groups"] - stats["dropped_groups_no_click"] - stats["dropped_groups_all_clicked"]
    assert ranker.manifest["best_iteration"] == 5


def test_bad_inputs_are_refused() -> None:
    df = feature_frame(n_imp=50)
    cfg = RankerConfig(n_estimators=3, num_threads=1)
    with pytest.raises(DataError, match="affinity"):
        fit(df.drop("affinity"), None, FEATURES, cfg)
    with pytest.raises(DataError, match="numeric"):
        fit(df.with_columns(pl.col("noise").cast(pl.String)), None, FEATURES, cfg)
    with pytest.raises(RecsysError, match="nothing to learn"):
        fit(df.with_columns(pl.lit(0, dtype=pl.Int8).alias(Col.LABEL)), None, FEATURES, cfg)
    with pytest.raises(RecsysError, match="learning_rate"):
        RankerConfig(learning_rate=0)
    with pytest.raises(RecsysError, match="unknown"):
        RankerConfig.from_dict({"leaves": 3})


def test_same_seed_same_model() -> None:
    df = feature_frame(n_imp=150, seed=5)
    cfg = RankerConfig(num_leaves=7, n_estimators=20, min_data_in_leaf=10, num_threads=1)
    a, b = fit(df, None, FEATURES, cfg), fit(df, None, FEATURES, cfg)
    np.testing.assert_array_equal(a.score(df), b.score(df))
    # Rows in any order: fit sorts them into groups itself, so the model does not change.
    c = fit(df.sample(fraction=1.0, shuffle=True, seed=2), None, FEATURES, cfg)
    np.testing.assert_allclose(c.score(df), a.score(df), rtol=1e-6, atol=1e-9)
