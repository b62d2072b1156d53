"""Interaction logs on the one pipeline: leave-one-out without leakage, training, catalogue evaluation, serving."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest_shop import sequences, write_unisrec
from conftest_text import make_tiny_encoder, tiny_config
from features.collect import FeatureInputs, collect_features
from features.without_text import without_text
from recsys.api import Recommender
from recsys.candidates.retrieval import ITEM_INDEX, ROW, RetrievalConfig, Retriever
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.evaluation.catalogue import _candidate_ranks
from recsys.evaluation.metrics import held_out_ranks
from recsys.loaders.amazon import ingest_amazon
from recsys.text.fine_tune import kept_weights
from recsys.splits import resplit_by_time, splits_before

N_ITEMS = 40
FULL, NO_TEXT = "full model", "without text"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("shop")
    seqs = sequences(n_users=150, n_items=N_ITEMS, length=8, seed=2)
    ingest_amazon(write_unisrec(root / "src", seqs, N_ITEMS), root / "data")
    return Dataset.load(root / "data")


def small_cfg(shop: Dataset, **overrides: object) -> TrainConfig:
    base = {"retrieval.per_source": 8, "retrieval.ease_l2": 10.0, "retrieval.batch_size": 64, "ranker.num_leaves": 7, "ranker.min_data_in_leaf": 5,
            "ranker.n_estimators": 40, "ranker.early_stopping_rounds": 10, "ranker.num_threads": 1, "use_text": False, "fine_tune": False,
            "train_negatives": 20}
    return override(TrainConfig.for_dataset(shop.manifest), **{**base, **overrides})


def test_leave_one_out_features_never_see_the_target(shop: Dataset) -> None:
    assert splits_before(Split.DEV) == [Split.TRAIN] and splits_before(Split.TEST) == [Split.TRAIN, Split.DEV]
    for split in (Split.DEV, Split.TEST):
        r = Retriever.fit(shop, None, RetrievalConfig(per_source=8, ease_l2=10.0), splits=splits_before(split))
        req = Requests.from_rows(r, shop.split(split), shop.impressions)
        cands, _ = retrieved_candidates(r, req)
        table = collect_features(FeatureInputs(shop, small_cfg(shop).features, retriever=r), req.rows, cands)
        # Popularity as a feature equals the count in the allowed rows' sequences: the held-out target is not in it.
        latest = shop.split(*splits_before(split)).sort(Col.TIME).group_by(Col.USER).agg(pl.concat_list(Col.HISTORY, Col.CANDIDATES).last())
        counts = np.bincount(np.concatenate(r.encode_histories(latest[Col.HISTORY])), minlength=N_ITEMS)
        targets = table.filter(pl.col(Col.LABEL) == 1)
        assert targets.height > 0
        np.testing.assert_allclose(targets["log_pop"].to_numpy(), np.log1p(counts[targets[ITEM_INDEX].to_numpy()]), rtol=1e-6)
        # Histories end before the target, and the target is never in its own history.
        for row in targets.iter_rows(named=True):
            assert row[ITEM_INDEX] not in req.histories[row[ROW]]


def _dense_candidate_ranks(
    rows: np.ndarray, items: np.ndarray, score: np.ndarray, targets: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, n_items) formulation: -inf where an item is no candidate, a target that is none (or not finite) last."""
    dense = np.full((len(targets), n_items), -np.inf)
    dense[rows, items] = score
    ranks, ties = held_out_ranks(dense, targets)
    found = np.isfinite(dense[np.arange(len(targets)), targets])
    return np.where(found, ranks, n_items), np.where(found, ties, 1)


@pytest.mark.parametrize("seed", range(20))
def test_candidate_ranks_match_the_dense_formulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_rows, n_items = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    per_row = rng.integers(0, n_items + 1, n_rows)
    per_row[rng.random(n_rows) < 0.2] = 0  # rows with no candidates
    rows = np.repeat(np.arange(n_rows), per_row)
    items = np.concatenate([rng.permutation(n_items)[:k] for k in per_row]).astype(np.int64)
    # Few distinct scores (ties), and some -inf, +inf and NaN to pin down how they rank.
    score = rng.integers(-3, 4, len(rows)).astype(np.float64)
    score[rng.random(len(rows)) < 0.1] = -np.inf
    score[rng.random(len(rows)) < 0.03] = np.inf
    score[rng.random(len(rows)) < 0.03] = np.nan
    # Most targets among their row's candidates, the rest (and those of empty rows) likely missed.
    starts = np.r_[0, np.cumsum(per_row)[:-1]]
    pick = starts + (rng.random(n_rows) * np.maximum(per_row, 1)).astype(np.int64)
    hit = items[np.minimum(pick, len(items) - 1)] if len(items) else np.zeros(n_rows, dtype=np.int64)
    targets = np.where((per_row > 0) & (rng.random(n_rows) < 0.7), hit, rng.integers(0, n_items, n_rows))
    order = rng.permutation(len(rows))  # the table's row order does not matter
    table = pl.DataFrame({ROW: rows[order].astype(np.int32), ITEM_INDEX: items[order].astype(np.int32)})
    ranks, ties = _candidate_ranks(table, score[order], targets, n_items)
    want_ranks, want_ties = _dense_candidate_ranks(rows, items, score, targets, n_items)
    assert ranks.dtype == ties.dtype == np.int64
    np.testing.assert_array_equal(ranks, want_ranks)
    np.testing.assert_array_equal(ties, want_ties)


def test_train_and_evaluate_beat_popularity(shop: Dataset, tmp_path: Path) -> None:
    rec = Recommender.fit(shop, small_cfg(shop), out=tmp_path / "model", show_progress=False)
    files = sorted(p.name for p in rec.model_dir.rglob("*") if p.is_file())
    assert {"model.json", "config.toml", "ranker.txt", "ranker.json"} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".joblib"))]
    table = rec.evaluate(split=Split.TEST, report_dir=tmp_path / "report")
    for name in (FULL, NO_TEXT, "popularity", "transitions", "ease"):
        assert {"recall@10", "ndcg@50", "mrr", "coverage@10", "pop_percentile"} <= set(table[name])
    assert table[FULL]["recall@10"] > table["popularity"]["recall@10"] + 0.1
    # The ranker only reorders candidates: the union's recall at per_source bounds the model's recall at any k.
    assert table[FULL]["recall@50"] <= table["retrieval: union"]["recall@8"] + 1e-9
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert FULL in report["metrics"] and (tmp_path / "report" / "report.md").exists()
    plans = rec.meta["summary"]["retrieval"]  # one per retriever the training candidates were fitted with
    assert plans and all(p["collaborative"] == "ease" and p["ranks"] == "exact" for p in plans)


def test_a_catalogue_over_the_memory_budget_trains_and_serves_with_als(shop: Dataset, tmp_path: Path) -> None:
    rec = Recommender.fit(shop, small_cfg(shop, **{"retrieval.memory_budget": "10KB"}), out=tmp_path / "model", show_progress=False)
    assert {p["collaborative"] for p in rec.meta["summary"]["retrieval"]} == {"als"}
    features = json.loads((rec.model_dir / "ranker" / "ranker.json").read_text())["features"]
    assert "src_als_score" in features and "src_ease_score" not in features
    table = rec.evaluate(split=Split.TEST)
    assert table["als"]["recall@10"] > table["popularity"]["recall@10"] and table[FULL]["recall@10"] > table["popularity"]["recall@10"]


def test_text_features_with_a_fine_tuned_tiny_encoder(shop: Dataset, tmp_path: Path) -> None:
    enc = make_tiny_encoder(tmp_path / "enc")
    cfg = small_cfg(shop, use_text=True, fine_tune=True, text=tiny_config(enc, epochs=1, max_train_impressions=200, fields=("title",)))
    rec = Recommender.fit(shop, cfg, out=tmp_path / "model", show_progress=False)
    model = rec.model_dir
    assert (model / "item_vectors.parquet").exists() and (model / "frozen_vectors.parquet").exists()
    # An interaction log's encoder learns next items (recsys/text/next_item.py), judged on dev before and after.
    metrics = json.loads((model / "text" / "train_metrics.json").read_text())
    assert metrics["objective"] == "next item" and metrics["train_pairs"] == 200 and [h["step"] for h in metrics["history"]][:1] == [0]
    assert metrics["validation_rows"] == shop.split(Split.DEV).height
    features = json.loads((model / "ranker" / "ranker.json").read_text())["features"]
    assert {"text_last_ft", "text_max_frozen", "src_text_score"} <= set(features)
    no_text = json.loads((model / "ranker_no_text" / "ranker.json").read_text())
    assert not [f for f in no_text["features"] if "text" in f]
    # Nor does it learn from the candidates only the text source retrieved (features/without_text.py).
    table = pl.read_parquet(model / "features.parquet")
    _, keep = without_text(table, cfg.retrieval.per_source, retrieved=True)
    assert 0 < (~keep).sum() and no_text["train"]["rows"] < json.loads((model / "ranker" / "ranker.json").read_text())["train"]["rows"]
    table = rec.evaluate(split=Split.DEV, report_dir=tmp_path / "report")
    assert {"text only", "frozen text", FULL} <= set(table)
    assert kept_weights(model / "text").startswith(metrics["kept"]) and "dev NDCG@10" in kept_weights(model / "text")  # the report's line
    # The report plots the fine-tune's loss and dev NDCG@10 (recsys/evaluation/curves.py).
    report = (tmp_path / "report" / "report.md").read_text()
    assert "text encoder kept" in report and "training_curves.png" in report and (tmp_path / "report" / "training_curves.png").stat().st_size > 0


def test_time_split_needs_real_timestamps(shop: Dataset) -> None:
    with pytest.raises(RecsysError, match="no real timestamps"):
        resplit_by_time(shop)
    stamped = Dataset(shop.items, shop.impressions.with_columns(
        (pl.lit(dt.datetime(2024, 1, 1)) + pl.duration(hours=pl.int_range(pl.len()))).alias(Col.TIME)), {**shop.manifest, "time_source": "log"})
    out = resplit_by_time(stamped, 0.1, 0.2)
    times = {s: out.split(s)[Col.TIME] for s in Split.ALL}
    assert times[Split.TRAIN].max() < times[Split.DEV].min() and times[Split.DEV].max() < times[Split.TEST].min()
    assert abs(out.split(Split.TEST).height / out.impressions.height - 0.2) < 0.01


def test_recommend_excludes_own_items_and_follows_the_chain(shop: Dataset, tmp_path: Path) -> None:
    rec = Recommender.fit(shop, small_cfg(shop), out=tmp_path / "model", show_progress=False)
    requests = pl.DataFrame({"request_id": ["r1", "r2"], Col.USER: ["new", "U0001"], Col.TIME: [dt.datetime(2001, 1, 1)] * 2,
                             Col.HISTORY: [["B00010", "B00011", "B00012"], ["B00030"]]})
    recs = rec.recommend(requests, k=5)
    assert recs.group_by("request_id").len().sort("request_id")["len"].to_list() == [5, 5]
    r1 = recs.filter(pl.col("request_id") == "r1").sort("rank")
    assert not set(r1[Col.ITEM]) & {"B00010", "B00011", "B00012"}
    assert "B00013" in r1[Col.ITEM].head(3).to_list()  # the chain's next item


def test_the_ranker_and_the_evaluation_read_seeded_samples_of_users(shop: Dataset, tmp_path: Path) -> None:
    rec = Recommender.fit(shop, small_cfg(shop, ranker_users=40), out=tmp_path / "model", show_progress=False)
    assert pl.read_parquet(rec.model_dir / "features.parquet")[Col.USER].n_unique() <= 40
    test_users = shop.split(Split.TEST)[Col.USER].n_unique()
    assert test_users > 60
    whole = rec.evaluate(split=Split.TEST, report_dir=tmp_path / "all", max_users=None)
    part = rec.evaluate(split=Split.TEST, report_dir=tmp_path / "part", max_users=60)
    assert whole[FULL]["n"] == shop.split(Split.TEST).height and part[FULL]["n"] < whole[FULL]["n"]
    reports = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("all", "part")}
    assert reports["part"]["notes"]["users evaluated"].startswith(f"60 of {test_users}")
    assert reports["all"]["notes"]["users evaluated"] == f"{test_users} of {test_users} (all)"
    # Fewer rows, wider intervals (the random order's MRR varies row to row); every row has one; the Markdown shows them.
    assert set(reports["part"]["ci95"]) >= {FULL, NO_TEXT, "popularity", "random"}
    ci_all, ci_part = (reports[n]["ci95"]["random"]["mrr"] for n in ("all", "part"))
    assert 0 < ci_all < ci_part
    assert "## 95% confidence intervals" in (tmp_path / "part" / "report.md").read_text()


def test_chunked_evaluation_gives_the_same_metrics(shop: Dataset, tmp_path: Path) -> None:
    from recsys.evaluation.catalogue import catalogue
    from recsys.pipeline import Assets

    rec = Recommender.fit(shop, small_cfg(shop), out=tmp_path / "model", show_progress=False)
    assets = Assets(rec.model_dir, rec.config, shop)
    rows = shop.split(Split.TEST)
    whole, _ = catalogue(assets, rows, Split.TEST)
    chunked, _ = catalogue(assets, rows, Split.TEST, chunk_rows=7)
    assert rows.height > 7 * 3
    assert whole.keys() == chunked.keys()
    for name in whole:
        for metric, value in whole[name].items():
            assert chunked[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
