"""Candidate retrieval: sources, union recall, own items excluded, no target in the statistics that score it, and scale
(the memory budget's choices, the text index against exact search, bounded batches, capped ranks)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from conftest_shop import sequences, write_unisrec
from recsys.errors import RecsysError
from recsys.data import Col, Dataset, Split
from recsys.loaders.amazon import load_amazon
from features.registry import source_rank, source_score
from recsys.candidates.itemitem import ease_bytes, fit_ease
from recsys.candidates.retrieval import (ALS, DEFAULT_SOURCES, EASE, ITEM_INDEX, N_SOURCES, ROW, TEXT, TRANSITIONS, RetrievalConfig, Retriever,
                                         batch_rows, user_sequences)
from recsys.candidates.topn import best_scores
from recsys.resources import parse_bytes, result_settings

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


# --- scale: the memory budget, the text index, bounded batches, capped ranks ----------------------------------------


def test_ease_over_the_memory_budget_takes_als_instead(shop: tuple[Dataset, list[list[int]]], caplog: pytest.LogCaptureFixture) -> None:
    ds, _ = shop
    need = ease_bytes(N_ITEMS)
    roomy = Retriever.fit(ds, None, RetrievalConfig(memory_budget=f"{need}B"), splits=[Split.TRAIN])
    assert roomy.sources[0] == EASE and roomy.plan["collaborative"] == EASE
    with caplog.at_level("WARNING"):
        tight = Retriever.fit(ds, None, RetrievalConfig(per_source=5, memory_budget=f"{need - 1}B"), splits=[Split.TRAIN])
    assert tight.sources[0] == ALS and EASE not in tight.sources and tight.ease is None
    assert tight.plan["collaborative"] == ALS and "EASE needs" in caplog.text and "using ALS instead" in caplog.text
    dev = ds.split(Split.DEV)
    got = tight.retrieve(tight.encode_histories(dev[Col.HISTORY]), np.array([tight.index[c[0]] for c in dev[Col.CANDIDATES]]))
    assert {source_score(ALS), source_rank(ALS)} <= set(got.candidates.columns) and source_score(EASE) not in got.candidates.columns
    # ALS folds each history in: it learns the chain well beyond popularity.
    assert got.recall(ns=(5,))[ALS]["recall@5"] > got.recall(ns=(5,))["popularity"]["recall@5"]


def test_fit_ease_matches_the_textbook_formula(shop: tuple[Dataset, list[list[int]]]) -> None:
    _, seqs = shop
    users = sp.csr_matrix((np.ones(sum(map(len, seqs)), dtype=np.float32),
                           (np.repeat(np.arange(len(seqs)), [len(s) for s in seqs]), np.concatenate(seqs))), shape=(len(seqs), N_ITEMS))
    users.data[:] = 1.0
    p = np.linalg.inv(users.T.toarray().astype(np.float64) @ users.toarray() + 10.0 * np.eye(N_ITEMS))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(fit_ease(users, 10.0, block_rows=7), expected, rtol=1e-4, atol=1e-6)


def test_cooccurrence_over_the_budget_keeps_each_items_top_neighbours(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    full = Retriever.fit(ds, None, RetrievalConfig(), splits=[Split.TRAIN])
    pruned = Retriever.fit(ds, None, RetrievalConfig(memory_budget="1000B", cooccurrence_neighbours=3), splits=[Split.TRAIN])
    assert full.plan["cooccurrence"] == "full" and pruned.plan["cooccurrence"] == "top 3 neighbours per item"
    for item in range(N_ITEMS):
        row, kept = full.cooccurrence[item].toarray().ravel(), pruned.cooccurrence[item].toarray().ravel()
        assert (kept > 0).sum() == min(3, (row > 0).sum()) and kept[item] == 0
        np.testing.assert_allclose(kept[kept > 0], row[kept > 0], rtol=1e-6)
        if (row > 0).sum() > 3:  # nothing left out scores above what was kept
            assert row[kept == 0].max() <= kept[kept > 0].min() + 1e-6


def test_text_index_agrees_with_exact_search(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    cfg = RetrievalConfig(sources=(TEXT,), per_source=5, rank_depth=5, text_ann_items=N_ITEMS - 1)
    exact = Retriever.fit(ds, vectors(N_ITEMS), dataclasses.replace(cfg, text_ann_items=N_ITEMS), splits=[Split.TRAIN])
    indexed = Retriever.fit(ds, vectors(N_ITEMS), cfg, splits=[Split.TRAIN])
    assert exact.text_index is None and exact.plan["text"] == "exact"
    assert indexed.text_index is not None and indexed.plan["text"].startswith("IVF") and indexed.plan["text_recall@5"] >= 0.95
    histories = exact.encode_histories(ds.split(Split.TEST)[Col.HISTORY])
    a, b = exact.retrieve(histories).candidates, indexed.retrieve(histories).candidates
    pairs = lambda t: set(zip(t[ROW].to_list(), t[ITEM_INDEX].to_list()))  # noqa: E731
    assert len(pairs(a) & pairs(b)) >= 0.95 * len(pairs(a))
    both = a.join(b, on=[ROW, ITEM_INDEX], suffix="_ann")
    np.testing.assert_allclose(both[source_score(TEXT)], both[f"{source_score(TEXT)}_ann"], rtol=1e-5, atol=1e-6)
    # Pair scores are exact cosines, own items -inf, and ranks beyond the retrieved items are per_source + 1.
    scored = indexed.score_pairs(histories[:1], np.zeros(N_ITEMS, dtype=np.int64), np.arange(N_ITEMS))
    dense = exact.score(histories[:1])[TEXT][0]
    np.testing.assert_allclose(scored[source_score(TEXT)].to_numpy(), dense, rtol=1e-5, atol=1e-6)
    assert scored[source_rank(TEXT)].max() == 6 and scored[N_SOURCES].sum() == 5


@pytest.mark.parametrize("cfg", [RetrievalConfig(per_source=3, ease_l2=10.0, batch_size=2),
                                 RetrievalConfig(per_source=3, ease_l2=10.0, rank_depth=6, text_ann_items=10, memory_budget="1000B")],
                         ids=["exact", "capped ranks, text index, tiny budget"])
def test_score_pairs_agrees_with_retrieve_at_any_scale(shop: tuple[Dataset, list[list[int]]], cfg: RetrievalConfig) -> None:
    ds, _ = shop
    r = Retriever.fit(ds, vectors(N_ITEMS), cfg)
    histories = r.encode_histories(ds.split(Split.TEST).head(9)[Col.HISTORY])
    got = r.retrieve(histories).candidates.sort(ROW, ITEM_INDEX)
    scored = r.score_pairs(histories, got[ROW].to_numpy(), got[ITEM_INDEX].to_numpy())
    for column in scored.columns:
        np.testing.assert_allclose(scored[column].to_numpy(), got[column].to_numpy(), err_msg=column)


def test_ranks_are_exact_within_rank_depth(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, _ = shop
    exact = Retriever.fit(ds, None, RetrievalConfig(per_source=4, ease_l2=10.0))
    capped = Retriever.fit(ds, None, RetrievalConfig(per_source=4, ease_l2=10.0, rank_depth=6))
    histories = exact.encode_histories(ds.split(Split.TEST)[Col.HISTORY])
    a, b = exact.retrieve(histories).candidates, capped.retrieve(histories).candidates
    assert a.select(ROW, ITEM_INDEX).equals(b.select(ROW, ITEM_INDEX))
    for s in exact.sources:
        full, cut = a[source_rank(s)].to_numpy(), b[source_rank(s)].to_numpy()
        assert (cut == np.minimum(full, 7)).all(), s
        np.testing.assert_array_equal(a[source_score(s)].to_numpy(), b[source_score(s)].to_numpy())


def test_best_scores_equal_the_sorted_tail() -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((40, 3000)).astype(np.float32)
    scores[:10] = np.where(rng.random((10, 3000)) < 0.98, 0.0, scores[:10])  # sparse rows: ties at zero
    scores[10:15] = np.round(scores[10:15])  # heavy ties
    scores[15:20, :2000] = -np.inf  # own items
    scores[20:25] = np.sort(scores[20:25], axis=1)  # ordered columns fool the strided sample
    for depth in (1, 100, 2500):
        np.testing.assert_array_equal(best_scores(scores, depth, sample=64), np.sort(scores, axis=1)[:, -depth:])


def test_batches_are_bounded_whatever_the_number_of_histories(shop: tuple[Dataset, list[list[int]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense (rows x items) arrays come from one batch at a time, whose rows the budget sets."""
    ds, _ = shop
    # Dense: EASE and exact text; sparse: transitions and co-occurrence, whose rows reach
    # at most `recent` rows of their matrices.
    sparse = N_ITEMS * 2  # at most the catalogue each
    per_row = 4 * N_ITEMS * (2 + 2) + 12 * sparse
    r = Retriever.fit(ds, vectors(N_ITEMS), RetrievalConfig(memory_budget=f"{4 * 3 * per_row}B"))
    assert r.sources == [EASE, TRANSITIONS, "cooccurrence", TEXT, "popularity"]
    assert r.batch_rows >= 3 and r.plan["batch_rows"] == r.batch_rows
    assert r.batch_rows == batch_rows(N_ITEMS, 2, sum(min(N_ITEMS, 5 * int(np.diff(m.indptr).max())) for m in (r.transitions, r.cooccurrence)),
                                      4 * 3 * per_row, 1024)
    largest: list[int] = []
    dense = Retriever._dense

    def spy(self: Retriever, histories: list[np.ndarray], *matrices_and_sources: object) -> dict[str, np.ndarray]:
        out = dense(self, histories, *matrices_and_sources)  # type: ignore[arg-type]
        largest.append(max(v.size for v in out.values()))
        return out

    monkeypatch.setattr(Retriever, "_dense", spy)
    histories = r.encode_histories(ds.split(Split.TEST)[Col.HISTORY])
    for n in (5, 20, 4 * len(histories)):
        largest.clear()
        many = (histories * 4)[:n]
        r.retrieve(many)
        r.score_pairs(many, np.arange(n), np.zeros(n, dtype=np.int64))
        assert max(largest) == r.batch_rows * N_ITEMS < len(histories) * N_ITEMS


def test_memory_budget_is_a_checked_result_setting() -> None:
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes(123) == 123
    with pytest.raises(RecsysError, match="memory_budget"):
        RetrievalConfig(memory_budget="lots")
    with pytest.raises(RecsysError, match="rank_depth"):
        RetrievalConfig(per_source=100, rank_depth=10)
    # The budget picks methods (EASE or ALS...), so it is part of the model; the batch size only paces the work.
    assert "memory_budget" in result_settings(RetrievalConfig()) and "batch_size" not in result_settings(RetrievalConfig())


@pytest.mark.parametrize("cfg", [RetrievalConfig(per_source=3, ease_l2=10.0),
                                 RetrievalConfig(per_source=3, ease_l2=10.0, rank_depth=6, text_ann_items=10, memory_budget="1000B")],
                         ids=["ease, exact text", "als, text index"])
def test_an_empty_history_retrieves_only_what_needs_no_history(shop: tuple[Dataset, list[list[int]]], cfg: RetrievalConfig) -> None:
    # With no history every item scores alike in the history sources; ties all counting, they would each
    # retrieve the whole catalogue. Only popularity knows something about a new user.
    ds, _ = shop
    r = Retriever.fit(ds, vectors(N_ITEMS), cfg)
    histories = [np.zeros(0, dtype=np.int64), *r.encode_histories(ds.split(Split.TEST).head(3)[Col.HISTORY])]
    got = r.retrieve(histories).candidates
    cold = got.filter(pl.col(ROW) == 0)
    assert 3 <= cold.height < N_ITEMS / 2 and cold[N_SOURCES].max() == 1
    assert cold[source_rank("popularity")].max() <= 3 + cold[source_rank("popularity")].is_duplicated().sum()
    assert got.filter(pl.col(ROW) > 0).group_by(ROW).len()["len"].min() > cold.height  # warm rows get every source
    scored = r.score_pairs(histories, got[ROW].to_numpy(), got[ITEM_INDEX].to_numpy())
    np.testing.assert_array_equal(scored[N_SOURCES].to_numpy(), got[N_SOURCES].to_numpy())
