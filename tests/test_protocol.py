"""The whole history counts (not the ingest's capped one) and the two catalogue protocols, masked and recbole.

A hand-made click log ingested with ``--max-history 2``: user ``long`` had nine items before the test row (its
history keeps two), user ``repeat`` buys again, at test, the catalogue's most popular item, already in its history.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest_shop import sequences
from features.collect import FeatureInputs, collect_features
from recsys.api import Recommender
from recsys.candidates.earlier import earlier_items
from features.registry import source_score
from recsys.candidates.retrieval import EASE, ITEM_INDEX, RetrievalConfig, Retriever
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.evaluation.catalogue import MASKED, RECBOLE, catalogue
from recsys.loaders import EventsConfig, load_events
from recsys.pipeline import Assets
from recsys.splits import splits_before

N_ITEMS, POPULAR = 30, "I29"
LONG_TRAIN = [f"I{i:02d}" for i in range(10, 18)]  # eight train clicks, then dev I18, then test I12 (a repeat)
T0 = dt.datetime(2024, 1, 1)


def _events() -> list[tuple[str, str, dt.datetime, str]]:
    """(user, item, time, split): chain users (most start with the popular item), `long` and `repeat`."""
    out = []
    for u, seq in enumerate(sequences(n_users=120, n_items=N_ITEMS - 1, length=7, seed=3)):
        items = ([POPULAR] if u % 3 else []) + [f"I{i:02d}" for i in seq]
        out += [(f"u{u:03d}", item, T0 + dt.timedelta(hours=u, minutes=k), Split.TEST if k == len(items) - 1 else Split.DEV if k == len(items) - 2
                 else Split.TRAIN) for k, item in enumerate(items)]
    for user, items in (("long", [*LONG_TRAIN, "I18", "I12"]), ("repeat", [POPULAR, "I05", "I06", "I07", POPULAR])):
        out += [(user, item, T0 + dt.timedelta(days=10, minutes=k), Split.TEST if k == len(items) - 1 else Split.DEV if k == len(items) - 2
                 else Split.TRAIN) for k, item in enumerate(items)]
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("protocol")
    pl.DataFrame({Col.ITEM: [f"I{i:02d}" for i in range(N_ITEMS)], Col.TITLE: [f"item {i}" for i in range(N_ITEMS)]}).write_csv(root / "items.csv")
    pl.DataFrame(_events(), schema=[Col.USER, Col.ITEM, Col.TIME, Col.SPLIT], orient="row").write_csv(root / "events.csv")
    load_events(root / "items.csv", root / "events.csv", root / "data", EventsConfig(max_history=2))
    return Dataset.load(root / "data")


@pytest.fixture(scope="module")
def model(shop: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    cfg = override(TrainConfig.for_dataset(shop.manifest), **{
        "retrieval.per_source": 8, "retrieval.ease_l2": 10.0, "ranker.num_leaves": 7, "ranker.min_data_in_leaf": 5, "ranker.n_estimators": 30,
        "ranker.early_stopping_rounds": 10, "ranker.num_threads": 1, "use_text": False, "fine_tune": False, "train_negatives": 20})
    return Recommender.fit(shop, cfg, out=tmp_path_factory.mktemp("model") / "m", show_progress=False)


def _row(shop: Dataset, user: str, split: str = Split.TEST) -> pl.DataFrame:
    return shop.split(split).filter(pl.col(Col.USER) == user)


def test_earlier_items_are_the_whole_history_point_in_time(shop: Dataset) -> None:
    rows = shop.impressions.filter(pl.col(Col.USER) == "long").sort(Col.TIME)
    assert rows[Col.HISTORY].to_list()[-1] == ["I17", "I18"]  # the ingest's cap
    got = earlier_items(shop.impressions, rows).to_list()
    order = [*LONG_TRAIN, "I18", "I12"]
    assert got == [order[:k] for k in range(len(order))]  # strictly before each row: never its own item, never a later one
    # The first row's history (what came before the log) counts from that row on; a time before the log knows nothing.
    log = pl.DataFrame({Col.IMPRESSION: ["a", "b"], Col.USER: ["x", "x"], Col.TIME: [T0, T0 + dt.timedelta(hours=1)],
                        Col.HISTORY: [["p", "q"], ["q", "r"]], Col.CANDIDATES: [["r"], ["s"]], Col.LABELS: [[1], [1]]},
                       schema_overrides={Col.LABELS: pl.List(pl.Int8())})
    asks = pl.DataFrame({Col.USER: ["x", "x", "x", "y"], Col.TIME: [T0 - dt.timedelta(hours=1), T0, T0 + dt.timedelta(hours=2), T0]})
    assert earlier_items(log, asks).to_list() == [[], ["p", "q"], ["p", "q", "r", "s"], []]


@pytest.mark.parametrize("masked", [True, False])
def test_masked_excludes_the_whole_history_and_recbole_nothing(shop: Dataset, masked: bool) -> None:
    r = Retriever.fit(shop, None, RetrievalConfig(per_source=N_ITEMS, ease_l2=10.0), splits=splits_before(Split.TEST))
    req = Requests.from_rows(r, _row(shop, "long"), shop.impressions, masked=masked)
    whole = {r.index[i] for i in [*LONG_TRAIN, "I18"]}
    assert len(req.histories[0]) == 2 and req.lengths.tolist() == [9]  # a model reads two items; the user had nine
    cands, got = retrieved_candidates(r, req, repeats=not masked)
    retrieved = set(cands[ITEM_INDEX].to_list())
    assert all(ranks[0, 2] == 0 for ranks in got.target_ranks.values())  # no source retrieves the repeat target I12 ...
    if masked:
        assert not retrieved & whole  # per_source = the catalogue: everything else is retrieved, nothing the user had
        assert len(retrieved) == N_ITEMS - len(whole)
    else:  # ... but the user's items join as repeat candidates, I12 among them, scored as if nothing were excluded
        assert whole <= retrieved and len(retrieved) == N_ITEMS and cands.height == N_ITEMS
        again = cands.filter(pl.col(ITEM_INDEX).is_in(list(whole)))
        assert again[source_score(EASE)].is_finite().all() and again["n_sources"].min() >= 1
    # The user-level statistic counts the whole history, whichever the protocol.
    table = collect_features(FeatureInputs(shop, TrainConfig.for_dataset(shop.manifest).features, retriever=r), req.rows, cands)
    assert set(table["hist_len"].to_list()) == {9.0}


def test_a_repeat_target_is_a_hit_only_under_recbole(shop: Dataset, model: Recommender) -> None:
    assets = Assets(model.model_dir, model.config, shop)
    rows = _row(shop, "repeat")
    masked, _ = catalogue(assets, rows, Split.TEST, protocol=MASKED)
    recbole, _ = catalogue(assets, rows, Split.TEST, protocol=RECBOLE)
    # Popularity ranks the most popular item first over the whole catalogue: under recbole the repeat is a hit at 1.
    assert recbole["popularity"]["mrr"] == 1.0 and recbole["popularity"]["ndcg@10"] == 1.0
    # Masked: the target is one of the user's items, so no model or baseline can rank it, the random order included.
    assert {name: row["recall@10"] for name, row in masked.items() if "recall@10" in row} == dict.fromkeys(masked, 0.0)
    long_masked, extra = catalogue(assets, _row(shop, "long"), Split.TEST, protocol=MASKED)
    assert long_masked["ease"]["recall@10"] == long_masked["full model"]["recall@10"] == 0.0  # I12 is outside the capped history
    assert extra["by_group"]["bucket"].to_list()[0] == "5-9"  # the whole history's length, not the cap's


def test_evaluate_records_the_protocol_next_to_every_table(shop: Dataset, model: Recommender, tmp_path: Path) -> None:
    popularity = {}
    for protocol in (None, RECBOLE):
        args = ["evaluate", str(model.model_dir), str(shop.path), "--split", "test", "--max-users", "0"] + (["--protocol", protocol] if protocol else [])
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        report = model.model_dir / ("report-test" + ("-recbole" if protocol else ""))  # a recbole run keeps the masked report
        md, metrics = (report / "report.md").read_text(), json.loads((report / "metrics.json").read_text())
        name = protocol or MASKED
        assert metrics["protocol"].startswith(f"{name}:") and metrics["title"].startswith(f"Catalogue ({name})")
        for heading in ("## Metrics", "## 95% confidence intervals", "## By user history length"):
            assert f"{heading}\n\nProtocol: {name}:" in md, heading
        popularity[name] = metrics["metrics"]["popularity"]["recall@10"]
    # Without masking the popular item, in two users of three's histories, takes their first slot: popularity falls.
    assert popularity[RECBOLE] < popularity[MASKED]
    # The Python API takes the same switch; "catalogue" names the masked protocol.
    assert model.evaluate(split=Split.TEST, protocol="catalogue", max_users=None)["popularity"]["recall@10"] == popularity[MASKED]
