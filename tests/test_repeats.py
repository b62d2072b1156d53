"""Repeat candidates: the ranker learns from the log how likely a user is to come back to an item.

Two click logs over the same catalogue: on ``explorers`` nobody buys an item twice, on ``repeaters`` each user's
dev and test items are items they had four steps earlier. Under the recbole protocol (nothing excluded) the same
code has to recommend the user's own items on one log and keep them out of the way on the other.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from conftest_shop import sequences
from features.pairs import seen_before
from recsys.api import Recommender
from recsys.candidates.repeats import recent_distinct
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.evaluation.catalogue import MASKED, RECBOLE, catalogue
from recsys.loaders import EventsConfig, load_events
from recsys.pipeline import Assets

N_ITEMS = 40
T0 = dt.datetime(2024, 1, 1)


def _log(root, repeat: bool) -> Dataset:
    events = []
    for u, chain in enumerate(sequences(n_users=160, n_items=N_ITEMS, length=7, seed=5)):
        items = chain[:5] + [chain[1], chain[2]] if repeat else chain
        n = len(items)
        events += [(f"u{u:03d}", f"I{i:02d}", T0 + dt.timedelta(hours=u, minutes=k),
                    Split.TEST if k == n - 1 else Split.DEV if k == n - 2 else Split.TRAIN) for k, i in enumerate(items)]
    root.mkdir()
    pl.DataFrame({Col.ITEM: [f"I{i:02d}" for i in range(N_ITEMS)], Col.TITLE: [f"item {i}" for i in range(N_ITEMS)]}).write_csv(root / "items.csv")
    pl.DataFrame(events, schema=[Col.USER, Col.ITEM, Col.TIME, Col.SPLIT], orient="row").write_csv(root / "events.csv")
    load_events(root / "items.csv", root / "events.csv", root / "data", EventsConfig())
    return Dataset.load(root / "data")


@pytest.fixture(scope="module", params=["explorers", "repeaters"])
def evaluated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    root = tmp_path_factory.mktemp(request.param)
    shop = _log(root / "log", repeat=request.param == "repeaters")
    cfg = override(TrainConfig.for_dataset(shop.manifest), **{
        "retrieval.per_source": 10, "ranker.num_leaves": 7, "ranker.min_data_in_leaf": 5, "ranker.n_estimators": 60,
        "ranker.early_stopping_rounds": 20, "ranker.num_threads": 1, "use_text": False, "fine_tune": False, "train_negatives": 20,
        "select.enabled": False})
    model = Recommender.fit(shop, cfg, out=root / "model", show_progress=False)
    assets = Assets(model.model_dir, model.config, shop)
    rows = shop.split(Split.TEST)
    return request.param, catalogue(assets, rows, Split.TEST, protocol=MASKED)[0], catalogue(assets, rows, Split.TEST, protocol=RECBOLE)[0]


def test_the_ranker_learns_whether_users_come_back(evaluated: tuple[str, dict, dict]) -> None:
    log, masked, recbole = evaluated
    full = "full model"
    if log == "repeaters":
        assert masked[full]["recall@10"] == 0.0  # every target is one of the user's items: masked, nothing can find it
        assert recbole[full]["recall@10"] >= 0.9 and recbole[full]["mrr"] > 0.5  # it learned that users come back
    else:
        # The user's own items look like the best candidates to a source that reads the whole history (they co-occur
        # with it), so EASE alone ranks the target lower when they are not excluded; the ranker learned that nobody
        # comes back and keeps its ranking.
        assert recbole["ease"]["mrr"] < masked["ease"]["mrr"] - 0.2
        assert recbole[full]["mrr"] >= masked[full]["mrr"] - 0.02 and recbole[full]["recall@10"] == masked[full]["recall@10"]


def test_seen_before_counts_the_whole_sequence() -> None:
    sequences_ = [np.array([3, 1, 3, 2]), np.array([], dtype=np.int64), np.array([0])]
    rows, items = np.array([0, 0, 0, 0, 1, 2, 2]), np.array([3, 1, 2, 0, 3, 0, 1])
    count, ago = seen_before(sequences_, rows, items, n_items=4)
    assert count.tolist() == [2, 1, 1, 0, 0, 1, 0]
    assert np.array_equal(ago, [2, 3, 1, np.nan, np.nan, 1, np.nan], equal_nan=True)  # 1 = the last item


def test_repeat_candidates_are_the_most_recent_distinct_items() -> None:
    rows, items = recent_distinct([np.array([5, 1, 5, 2, 7]), np.array([], dtype=np.int64), np.array([4, 4])], depth=3)
    assert rows.tolist() == [0, 0, 0, 2] and items.tolist() == [7, 2, 5, 4]
