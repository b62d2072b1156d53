"""The data-parallel stages on a 2-worker Dask LocalCluster give what the single-process path gives (issue 17).

Skipped as a whole, with the reason, only where Dask is not installed (``pip install 'recsys[cluster]'``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.collect import FeatureInputs, collect_features
from recsys.candidates.logged import logged_candidates
from recsys.candidates.retrieval import ROW, RetrievalConfig, Retriever
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.cluster.connect import ClusterConfig, connect, n_partitions, parse_cluster
from recsys.cluster.features import collect_on_cluster
from recsys.cluster.partition import user_partition
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.splits import split_latest, splits_before

distributed = pytest.importorskip("distributed", reason="Dask is not installed: pip install 'recsys[cluster]'")

FAMILIES = ("behaviour", "retrieval", "pairs")


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes: inputs and tables really cross the wire."""
    with connect(ClusterConfig("local:2", memory_limit="3GB")) as c:  # a worker holds a model's assets: 1GB paused them
        yield c


def test_cluster_option_parses_and_rejects_what_it_cannot_use() -> None:
    assert parse_cluster(None) is None  # no option: the single-process path
    assert parse_cluster("local:3").local_workers == 3
    assert parse_cluster("tcp://10.0.0.5:8786").local_workers is None
    assert parse_cluster(None, "/shared/scheduler.json").enabled
    for bad in ("local:0", "local", "10.0.0.5:8786"):
        with pytest.raises(RecsysError, match="cluster"):
            parse_cluster(bad)
    with pytest.raises(RecsysError, match="not both"):
        parse_cluster("local:2", "/shared/scheduler.json")


def test_a_local_cluster_starts_n_workers_and_closes_what_it_started() -> None:
    with connect(ClusterConfig("local:2", processes=False, memory_limit="256MB", partitions=3)) as c:
        assert len(c.scheduler_info()["workers"]) == 2
        assert n_partitions(c, ClusterConfig("local:2", partitions=3)) == 6
        cluster = c.cluster
    assert c.status == "closed" and cluster.status.name == "closed"


def test_user_partitions_are_stable_and_keep_a_user_whole() -> None:
    users = pl.Series(Col.USER, ["u1", "u2", "u1", "u3", "u2"])
    parts = user_partition(users, 4)
    assert parts.to_list() == user_partition(users, 4).to_list()
    assert parts[0] == parts[2] and parts[1] == parts[4]
    assert parts.to_list() == [2, 0, 2, 2, 0]  # CRC-32 mod 4: the same in every process and version


def _equal_on_cluster(client, inputs: FeatureInputs, rows: pl.DataFrame, cands: pl.DataFrame, tmp_path: Path) -> pl.DataFrame:
    single = collect_features(inputs, rows, cands)
    spread = collect_on_cluster(client, inputs, rows, cands, partitions=4, work_dir=tmp_path)
    assert_frame_equal(spread, single)  # row for row, in the same order, the same dtypes
    return single


def test_impression_features_on_the_cluster_equal_the_single_process_table(client, sample_dataset: Dataset, tmp_path: Path) -> None:
    cfg = override(TrainConfig.for_dataset(sample_dataset.manifest), **{"features.families": list(FAMILIES), "features.threads": 1})
    earlier, later = split_latest(sample_dataset.split(Split.TRAIN).head(1200), 0.25)
    retriever = Retriever.fit(sample_dataset, None, RetrievalConfig(per_source=20), splits=Split.ALL, rows=earlier)
    inputs = FeatureInputs(sample_dataset, cfg.features, retriever=retriever)
    table = _equal_on_cluster(client, inputs, later, logged_candidates(later), tmp_path)
    assert table[Col.USER].n_unique() > 50 and table[ROW].n_unique() == later.height
    assert table["item_impressions_24h"].drop_nulls().sum() > 0  # item-side counts read the whole log, not the partition's


def test_shop_features_on_the_cluster_equal_the_single_process_table(client, tmp_path: Path) -> None:
    shop = _shop(tmp_path / "shop")
    cfg = override(TrainConfig.for_dataset(shop.manifest), **{"features.families": ["retrieval", "pairs"]})
    retriever = Retriever.fit(shop, None, RetrievalConfig(per_source=8, ease_l2=10.0), splits=splits_before(Split.DEV))
    req = Requests.from_rows(retriever, shop.split(Split.DEV), shop.impressions).with_targets()
    cands, _ = retrieved_candidates(retriever, req)
    table = _equal_on_cluster(client, FeatureInputs(shop, cfg.features, retriever=retriever), req.rows, cands, tmp_path)
    assert table[Col.LABEL].sum() > 0 and table.height > req.rows.height * 8


def test_a_failed_partition_publishes_nothing(shop_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recommend on the cluster publishes all partitions or none: a task that fails leaves the previous export whole."""
    import recsys.cluster.recommend as on_cluster
    from recsys.pipeline import Assets
    from recsys.recommend import RecommendConfig

    shop, model = shop_model
    users = shop.impressions[Col.USER].unique(maintain_order=True).head(30)
    pl.DataFrame({Col.USER: users}).write_parquet(tmp_path / "requests.parquet")
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"the previous export")
    real = on_cluster.recommend_chunk

    def broken(assets, job, requests):  # the partition of the first user fails on its worker
        if users[0] in requests[Col.USER].to_list():
            raise RuntimeError("a worker died")
        return real(assets, job, requests)

    monkeypatch.setattr(on_cluster, "recommend_chunk", broken)  # workers are threads here, so they see the patch
    with connect(ClusterConfig("local:2", processes=False, memory_limit="0")) as threads:  # "0": threads share this process's memory
        with pytest.raises(RuntimeError, match="a worker died"):
            on_cluster.recommend_file_on_cluster(threads, Assets(model.model_dir, model.config, shop), model.model_id, model.meta["candidates"],
                                                 tmp_path / "requests.parquet", out, RecommendConfig(), partitions=4, work_dir=tmp_path)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet", "requests.parquet"]  # no partial file, no partitions left


def test_recsys_train_and_evaluate_take_the_cluster_option(tmp_path: Path) -> None:
    """``recsys train --cluster local:2`` starts its own cluster and writes a model, ``evaluate`` too; a bad address is one line, exit 1."""
    from click.testing import CliRunner

    from cli import main
    from recsys.config import to_toml

    shop = _shop(tmp_path / "shop")
    (tmp_path / "small.toml").write_text(to_toml(_small(shop)))
    args = ["train", str(shop.path), "--config", str(tmp_path / "small.toml")]
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad"), "--cluster", "local:0"])
    assert bad.exit_code == 1 and "local:N needs at least one worker" in bad.output
    ok = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "model"), "--cluster", "local:2"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "model" / "ranker" / "ranker.txt").read_text().startswith("tree")  # the LightGBM text model
    evaluated = CliRunner().invoke(main, ["evaluate", str(tmp_path / "model"), "--split", "test", "--cluster", "local:2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "full model" in evaluated.output and (tmp_path / "model" / "report-test" / "report.md").exists()


def _small(shop: Dataset) -> TrainConfig:
    """Small retrieval and ranker settings, no text: seconds on the small shop log."""
    return override(TrainConfig.for_dataset(shop.manifest), **{
        "retrieval.per_source": 8, "retrieval.ease_l2": 10.0, "ranker.num_leaves": 7, "ranker.min_data_in_leaf": 5, "ranker.n_estimators": 30,
        "ranker.early_stopping_rounds": 10, "ranker.num_threads": 1, "use_text": False, "fine_tune": False, "train_negatives": 20})


def _shop(root: Path) -> Dataset:
    """The small shop log of the H-shop tests, ingested."""
    import datetime as dt

    from conftest_shop import sequences
    from recsys.loaders import EventsConfig, load_events

    t0, rows = dt.datetime(2024, 1, 1), []
    for u, seq in enumerate(sequences(n_users=80, n_items=30, length=7, seed=1)):
        rows += [(f"u{u:03d}", f"I{i:02d}", t0 + dt.timedelta(hours=u, minutes=k), Split.TEST if k == len(seq) - 1 else Split.DEV if k == len(seq) - 2
                  else Split.TRAIN) for k, i in enumerate(seq)]
    root.mkdir(parents=True)
    pl.DataFrame({Col.ITEM: [f"I{i:02d}" for i in range(30)], Col.TITLE: [f"item {i}" for i in range(30)]}).write_csv(root / "items.csv")
    pl.DataFrame(rows, schema=[Col.USER, Col.ITEM, Col.TIME, Col.SPLIT], orient="row").write_csv(root / "events.csv")
    load_events(root / "items.csv", root / "events.csv", root / "data", EventsConfig())
    return Dataset.load(root / "data")


def test_the_dask_ranker_is_within_noise_of_the_single_process_ranker(client, sample_dataset: Dataset, tmp_path: Path) -> None:
    """Same table, same settings: validation nDCG@10 of the two rankers differ by less than the noise of the comparison.

    They cannot be equal: LightGBM's data-parallel training draws its bagging and feature-fraction samples per
    worker, and the bins come from each worker's share. "Noise" is three standard errors of the paired
    per-impression difference (at least 0.01): a gap beyond it would be a real loss of quality.
    """
    from features.registry import ranker_features
    from ranker.lambdarank import fit, load_ranker, save_ranker
    from recsys.cluster.ranker import fit_on_cluster

    pytest.importorskip("sklearn", reason="lightgbm.dask needs scikit-learn: pip install 'recsys[cluster]'")
    from recsys.evaluation.metrics import per_impression
    from recsys.splits import held_out_users

    cfg = override(TrainConfig.for_dataset(sample_dataset.manifest), **{
        "features.families": ["behaviour"], "features.threads": 1, "ranker.num_leaves": 15, "ranker.min_data_in_leaf": 20,
        "ranker.n_estimators": 60, "ranker.early_stopping_rounds": 15, "ranker.num_threads": 1})
    rows = sample_dataset.split(Split.TRAIN).head(3000)
    table = collect_features(FeatureInputs(sample_dataset, cfg.features), rows, logged_candidates(rows))
    fit_part, valid_part = held_out_users(table, 0.3, 0)
    names = ranker_features(table.columns, cfg.features.families)
    assert len(names) >= 5
    single = fit(fit_part, valid_part, names, cfg.ranker)
    spread = fit_on_cluster(client, fit_part, valid_part, names, cfg.ranker, partitions=4, work_dir=tmp_path)
    save_ranker(spread, tmp_path / "ranker")  # the same LightGBM text model, loaded back as any ranker
    spread = load_ranker(tmp_path / "ranker", names)
    assert 1 <= spread.manifest["best_iteration"] <= 60 and spread.booster.current_iteration() == spread.manifest["best_iteration"]

    scored = valid_part.with_columns(single=single.score(valid_part), spread=spread.score(valid_part), none=pl.lit(0.0))
    per = {name: per_impression(scored, name)["ndcg@10"].to_numpy() for name in ("single", "spread", "none")}
    diff = per["spread"] - per["single"]
    noise = max(0.01, 3 * diff.std(ddof=1) / len(diff) ** 0.5)
    assert abs(diff.mean()) < noise, (per["single"].mean(), per["spread"].mean(), noise)
    assert per["spread"].mean() > per["none"].mean() + 0.05  # it learned something: far above a constant score


@pytest.fixture(scope="module")
def shop_model(tmp_path_factory: pytest.TempPathFactory):
    """The small shop log and a model trained on it in one process."""
    from recsys.api import Recommender

    root = tmp_path_factory.mktemp("shop-model")
    shop = _shop(root / "shop")
    return shop, Recommender.fit(shop, _small(shop), out=root / "here", show_progress=False)


def test_train_and_recommend_on_a_cluster_give_the_single_process_features_ranker_quality_and_lists(client, shop_model, tmp_path: Path) -> None:
    """``train(cluster=...)`` joining a running scheduler by its tcp:// address (as ``--cluster tcp://host:8786``)."""
    from recsys.api import Recommender

    pytest.importorskip("sklearn", reason="lightgbm.dask needs scikit-learn: pip install 'recsys[cluster]'")
    shop, here = shop_model
    cfg = here.config
    there = Recommender.fit(shop, cfg, out=tmp_path / "there", show_progress=False,
                            cluster=ClusterConfig(client.scheduler.address, work_dir=str(tmp_path)))
    assert_frame_equal(pl.read_parquet(there.model_dir / "features.parquet"), pl.read_parquet(here.model_dir / "features.parquet"))
    assert there.meta["summary"]["features"] == here.meta["summary"]["features"]
    got = {name: rec.evaluate(split=Split.TEST, report_dir=tmp_path / f"report-{name}") for name, rec in (("here", here), ("there", there))}
    here_ndcg, there_ndcg = (got[n]["full model"]["ndcg@10"] for n in ("here", "there"))
    assert abs(there_ndcg - here_ndcg) < 0.05 and there_ndcg > got["there"]["popularity"]["ndcg@10"] + 0.3  # the chain log is learnable


    # Batch recommend per user partition, published as one file: the same lists as one process, in the same order.
    pl.DataFrame({Col.USER: shop.impressions[Col.USER].unique(maintain_order=True).head(50)}).write_parquet(tmp_path / "requests.parquet")
    alone = here.recommend_file(tmp_path / "requests.parquet", tmp_path / "alone.parquet", show_progress=False)
    spread = here.recommend_file(tmp_path / "requests.parquet", tmp_path / "spread.parquet", show_progress=False,
                                 cluster=ClusterConfig(client.scheduler.address, work_dir=str(tmp_path)))
    assert spread == {**alone, "out": str(tmp_path / "spread.parquet")} and alone["rows"] == 50 * 10
    assert_frame_equal(pl.read_parquet(tmp_path / "spread.parquet").drop("generated_at"), pl.read_parquet(tmp_path / "alone.parquet").drop("generated_at"))


def test_catalogue_evaluation_on_the_cluster_gives_the_single_process_metrics(client, shop_model) -> None:
    """Each chunk of rows ranked on a worker (retrieval, features, rankers, baselines): every metric equal."""
    from recsys.evaluation.catalogue import catalogue
    from recsys.pipeline import Assets

    shop, model = shop_model
    assets = Assets(model.model_dir, model.config, shop)
    rows = shop.split(Split.TEST)
    alone, _ = catalogue(assets, rows, Split.TEST, chunk_rows=25)
    spread, extra = catalogue(assets, rows, Split.TEST, chunk_rows=25, cluster=ClusterConfig(client.scheduler.address))
    assert rows.height > 2 * 25  # several chunks, so several tasks
    assert spread.keys() == alone.keys() and {"full model", "popularity", "retrieval: union"} <= spread.keys()
    for name, metrics in alone.items():
        assert spread[name] == pytest.approx(metrics, nan_ok=True), name
    assert extra["notes"]["rows"] == rows.height
