"""Candidate retrieval: sources, union recall, own items excluded, and no target in the statistics that score it."""

from __future__ import annotations


import numpy as np
import polars as pl
import pytest

from conftest_shop import sequences, write_unisrec
from recsys.errors import RecsysError
from recsys.data import Col, Dataset, Split
from recsys.loaders.amazon import load_amazon
from recsys.candidates.retrieval import DEFAULT_SOURCES, ITEM_INDEX, ROW, TEXT, TRANSITIONS, RetrievalConfig, Retriever, user_sequences

N_ITEMS = 40
HOLDOUT_DEV, HOLDOUT_TEST = N_ITEMS - 2, N_ITEMS - 1  # items that only ever appear as one dev / test target


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, list[list[int]]]:
    seqs = [[i for i in s if i < HOLDOUT_DEV] for s in sequences(n_users=80, n_items=N_ITEMS, length=8, seed=1)]
    seqs = [s for s in seqs if len(s) >= 5]
    seqs[0][-1] = HOLDOUT_TEST
    seqs[1][-2] = HOLDOUT_DEV
    return load_amazon(write_unisrec(tmp_path_factory.mktemp("shop"), seqs, N_ITEMS)), seqs


def vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype(np.float32)


def test_user_sequences_rebuild_each_users_items(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, seqs = shop
    got = user_sequences(ds.split(Split.TRAIN, Split.DEV)).sort(Col.USER)
    assert got[Col.HISTORY].to_list() == [[f"B{i:05d}" for i in s[:-1]] for s in seqs]


def test_held_out_targets_are_not_in_the_statistics(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    for splits, unseen in (([Split.TRAIN], [HOLDOUT_DEV, HOLDOUT_TEST]), ([Split.TRAIN, Split.DEV], [HOLDOUT_TEST])):
        r = Retriever.fit(ds, vectors(N_ITEMS), RetrievalConfig(ease_l2=10.0), splits=splits)
        for item in unseen:
            assert r.popularity[item] == 0
            assert r.transitions[:, item].nnz == 0 and r.cooccurrence[:, item].nnz == 0
            assert np.allclose(r.ease[:, item], 0) and np.allclose(r.ease[item, :], 0)
    # Once dev is allowed, the dev-only item is counted.
    assert Retriever.fit(ds, None, splits=[Split.TRAIN, Split.DEV]).popularity[HOLDOUT_DEV] == 1


def test_union_recall_is_at_least_each_sources(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    cfg = RetrievalConfig(per_source=5, ease_l2=10.0, batch_size=16)
    r = Retriever.fit(ds, vectors(N_ITEMS), cfg, splits=[Split.TRAIN])
    dev = ds.split(Split.DEV)
    histories = r.encode_histories(dev[Col.HISTORY])
    targets = np.array([r.index[c[0]] for c in dev[Col.CANDIDATES]])
    got = r.retrieve(histories, targets)
    recall = got.recall(ns=(1, 5, 10))
    assert set(recall) == set(DEFAULT_SOURCES) | {"union"}
    for n in (1, 5, 10):
        assert all(recall["union"][f"recall@{n}"] >= recall[s][f"recall@{n}"] - 1e-12 for s in DEFAULT_SOURCES)
    # The chain makes transitions informative: far better than popularity, and the union beats both.
    assert recall[TRANSITIONS]["recall@5"] > 2 * recall["popularity"]["recall@5"]
    assert recall["union"]["recall@5"] > recall[TRANSITIONS]["recall@5"]
    # Union recall at per_source is exactly the share of rows whose target is among the candidates.
    cands = got.candidates
    hit = cands.with_columns(pl.Series("t", targets[cands[ROW].to_numpy()])).filter(pl.col(ITEM_INDEX) == pl.col("t"))[ROW].n_unique()
    assert recall["union"]["recall@5"] == pytest.approx(hit / len(targets))
    # A user's own items are never candidates.
    for row, items in cands.group_by(ROW).agg(ITEM_INDEX).iter_rows():
        assert not set(items) & set(histories[row].tolist())


def test_transitions_follow_the_last_item(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    r = Retriever.fit(ds, None, RetrievalConfig(sources=(TRANSITIONS,)), splits=[Split.TRAIN])
    assert r.sources == [TRANSITIONS]
    scores = r.score([np.array([4, 5])])[TRANSITIONS][0]
    assert int(np.argmax(scores)) == 6 and np.isneginf(scores[[4, 5]]).all()


def test_score_pairs_agrees_with_retrieve(shop: tuple[Dataset, list[list[int]]]) -> None:
    """Logged candidates get the same retrieval features as the same items would get from retrieval."""
    ds, _ = shop
    r = Retriever.fit(ds, vectors(N_ITEMS), RetrievalConfig(per_source=3, ease_l2=10.0, batch_size=2))
    histories = r.encode_histories(ds.split(Split.TEST).head(5)[Col.HISTORY])
    got = r.retrieve(histories).candidates.sort(ROW, ITEM_INDEX)
    scored = r.score_pairs(histories, got[ROW].to_numpy(), got[ITEM_INDEX].to_numpy())
    for column in scored.columns:
        np.testing.assert_allclose(scored[column].to_numpy(), got[column].to_numpy(), err_msg=column)

def test_config_is_checked() -> None:
    with pytest.raises(RecsysError, match="sources"):
        RetrievalConfig(sources=("magic",))
    with pytest.raises(RecsysError, match="decay"):
        RetrievalConfig(decay=0.0)
    assert TEXT in RetrievalConfig().sources


def test_recent_source_ranks_the_fresh_catalogue_not_all_time_popularity() -> None:
    from datetime import datetime, timedelta

    from recsys.data import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, Col, Dataset
    from recsys.candidates.retrieval import DEFAULT_SOURCES, POPULARITY, RECENT, RetrievalConfig, Retriever

    now = datetime(2024, 3, 1, 12)
    old, fresh = now - timedelta(days=10), now - timedelta(hours=1)
    items = pl.DataFrame({Col.ITEM: ["A", "B", "C", "D"], Col.TITLE: ["a", "b", "c", "d"],
                          Col.PUBLISHED: [old, old, fresh, old]}, schema_overrides={Col.PUBLISHED: pl.Datetime("us")})
    items = items.with_columns(pl.lit(None, dtype=dt).alias(c) for c, dt in ITEMS_SCHEMA.items() if c not in items.columns).select(list(ITEMS_SCHEMA))
    clicks = [("A", old)] * 5 + [("B", now - timedelta(minutes=m)) for m in (5, 30)] + [("D", now)]
    rows = pl.DataFrame({
        Col.IMPRESSION: [f"i{k}" for k in range(len(clicks))], Col.USER: [f"u{k}" for k in range(len(clicks))],
        Col.TIME: [t for _, t in clicks], Col.HISTORY: [[] for _ in clicks], Col.CANDIDATES: [[item, "D"] if item != "D" else ["D"] for item, _ in clicks],
        Col.LABELS: [[1, 0] if item != "D" else [0] for item, _ in clicks], Col.SPLIT: ["train"] * len(clicks),
    }, schema=IMPRESSIONS_SCHEMA)
    ds = Dataset(items=items, impressions=rows, manifest={})
    retriever = Retriever.fit(ds, None, RetrievalConfig(sources=(*DEFAULT_SOURCES, RECENT), per_source=4))
    scores = retriever.score([np.zeros(0, dtype=np.int64)])
    recent, popular = scores[RECENT][0], scores[POPULARITY][0]
    assert list(np.argsort(-recent, kind="stable")[:2]) == [1, 2]  # B clicked in the window, then C published in it
    assert recent[0] == 0.0 and recent[3] == 0.0  # A only clicked long ago; D shown but never clicked
    assert popular.argmax() == 0  # all-time popularity still prefers A
    assert RECENT not in Retriever.fit(ds, None, RetrievalConfig()).sources  # off by default (sequence-order logs)
