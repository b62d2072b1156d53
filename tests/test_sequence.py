"""The text-aware sequence model: it learns a planted next-item rule, its loss (logQ, collisions, history), cold-start
items, save/load, what it may learn from, and the ``sequence`` retrieval source against a dense reference."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from conftest_shop import sequences, write_unisrec
from conftest_text import make_tiny_encoder, tiny_config
from recsys.api import Recommender
from recsys.candidates.retrieval import EASE, ITEM_INDEX, POPULARITY, ROW, SEQUENCE, TEXT, TRANSITIONS, RetrievalConfig, Retriever, user_sequences
from features.registry import source_rank, source_score
from recsys.config import TrainConfig, override
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.evaluation.metrics import held_out_ranks, recall_at_k
from recsys.loaders.amazon import load_amazon
from recsys.pipeline import _learner_rows
from recsys.text.sequence import SequenceConfig, SequenceScorer, in_batch_logits, load_sequence_model, log_q
from recsys.text.sequence_train import collate, held_out_targets, history_mask, train_sequence_model, training_sequences, windows

N_ITEMS = 30
TINY = SequenceConfig(dim=16, layers=1, heads=2, max_len=8, dropout=0.0, temperature=0.1, batch_size=32, epochs=40, patience=6, lr=5e-3)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, list[list[int]]]:
    seqs = sequences(n_users=150, n_items=N_ITEMS, length=8, seed=2)  # chains i, i+1, ...: the next item is learnable
    return load_amazon(write_unisrec(tmp_path_factory.mktemp("shop"), seqs, N_ITEMS)), seqs


def text_vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(shop: tuple[Dataset, list[list[int]]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SequenceScorer]:
    ds, _ = shop
    out = tmp_path_factory.mktemp("sequence")
    cfg = TrainConfig.for_dataset(ds.manifest)
    ids = ds.items[Col.ITEM].to_list()
    train_sequence_model(_learner_rows(ds, cfg), ds.split(Split.DEV), ids, text_vectors(N_ITEMS), TINY, out, show_progress=False)
    model, known = load_sequence_model(out)
    return out, SequenceScorer(model, known, ids, text_vectors(N_ITEMS))


def test_it_learns_a_planted_next_item_rule_better_than_popularity(shop: tuple[Dataset, list[list[int]]],
                                                                   trained: tuple[Path, SequenceScorer]) -> None:
    ds, _ = shop
    _, scorer = trained
    index = {item: i for i, item in enumerate(ds.items[Col.ITEM].to_list())}
    test = held_out_targets(ds.split(Split.TEST), index, 10_000, 0)
    own = [(r, i) for r, h in enumerate(test.histories) for i in h]
    popularity = np.bincount(np.concatenate(training_sequences(ds.split(Split.TRAIN, Split.DEV), index)), minlength=N_ITEMS).astype(np.float32)
    recalls = {}
    for name, scores in (("sequence", scorer.scores(test.histories)), ("popularity", np.tile(popularity, (len(test.targets), 1)))):
        scores[tuple(np.array(own).T)] = -np.inf
        ranks, ties = held_out_ranks(scores, test.targets)
        recalls[name] = recall_at_k(ranks, 5, ties)
    assert recalls["sequence"] > 0.5 and recalls["sequence"] > 2 * recalls["popularity"], recalls


def test_logq_correction_subtracts_log_q_from_every_logit() -> None:
    rng = np.random.default_rng(0)
    users, targets = torch.tensor(rng.normal(size=(4, 6))), torch.tensor(rng.normal(size=(4, 6)))
    ids = torch.tensor([1, 2, 3, 4])
    lq = torch.from_numpy(log_q(np.array([0, 3, 1, 0, 4]))[ids.numpy()])
    plain, corrected = in_batch_logits(users, targets, ids, 0.1), in_batch_logits(users, targets, ids, 0.1, lq)
    finite = torch.isfinite(plain)
    shift = -torch.cat([lq.view(4, 1), lq.view(1, 4).expand(4, 4)], dim=1).float()  # the positive's, then each negative's
    torch.testing.assert_close((corrected - plain)[finite], shift[finite])
    np.testing.assert_allclose(log_q(np.array([3, 1, 0])), np.log([3 / 4, 1 / 4, 0.5 / 4]), rtol=1e-6)  # never a target: half a count


def test_same_item_collisions_and_history_items_are_masked_but_never_the_positive() -> None:
    rng = np.random.default_rng(1)
    users, targets = torch.tensor(rng.normal(size=(4, 6))), torch.tensor(rng.normal(size=(4, 6)))
    ids = torch.tensor([5, 7, 5, 9])
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[1, 3] = exclude[3, 3] = True  # item 9 is in the histories of positions 1 and 3 (3: a repeat purchase)
    logits = in_batch_logits(users, targets, ids, 0.1, exclude=exclude)
    assert torch.isfinite(logits[:, 0]).all()  # the positive column
    masked = {(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (3, 3)}  # a row's own target as a negative, and history items
    for i in range(4):
        for j in range(4):
            assert torch.isinf(logits[i, 1 + j]).item() == ((i, j) in masked), (i, j)
    # Sampled negatives: the targets of the positions given, masked alike.
    some = in_batch_logits(users, targets, ids, 0.1, exclude=exclude[:, [2, 1]], negatives=torch.tensor([2, 1]))
    torch.testing.assert_close(some, logits[:, [0, 3, 2]])
    # Each position's history up to it, padding left out: row 0 is items 3, 4 then padding.
    mask = history_mask(torch.tensor([[3, 4, 0]]), torch.tensor([2]), torch.tensor([3, 4, 5]))
    assert mask[0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_windows_make_every_item_but_the_first_a_target_once() -> None:
    s = np.arange(23)
    pieces = windows([s], max_len=8)
    assert max(len(p) for p in pieces) == 9 and sorted(np.concatenate([p[1:] for p in pieces]).tolist()) == list(range(1, 23))
    batch = collate(pieces, 8)
    assert batch["ids"].shape == (3, 8) and (batch["targets"] >= 0).sum() == 22


def test_cold_start_items_get_text_only_vectors(trained: tuple[Path, SequenceScorer], shop: tuple[Dataset, list[list[int]]]) -> None:
    out, scorer = trained
    model, known = load_sequence_model(out)
    assert model.ids is not None and model.ids.weight[1:].abs().sum() > 0  # trained ids moved away from zero
    catalogue = [*ds_ids(shop), "NEW-1", "NEW-2"]
    text = np.vstack([text_vectors(N_ITEMS), text_vectors(2, seed=7)])
    cold = SequenceScorer(model, known, catalogue, text)
    assert cold.cold == 2
    with torch.no_grad():
        alone = F.normalize(model.adaptor(torch.from_numpy(text[-2:])), dim=-1).numpy()
    np.testing.assert_allclose(cold.table[-2:], alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cold.table[:-2], scorer.table, rtol=1e-5, atol=1e-6)  # known items keep their id embedding
    scores = cold.scores([np.array([0, 1, 2]), np.array([N_ITEMS, N_ITEMS + 1])])
    assert np.isfinite(scores).all()


def ds_ids(shop: tuple[Dataset, list[list[int]]]) -> list[str]:
    return shop[0].items[Col.ITEM].to_list()


def test_save_load_round_trip_scores_identically(trained: tuple[Path, SequenceScorer], shop: tuple[Dataset, list[list[int]]]) -> None:
    out, scorer = trained
    model, known = load_sequence_model(out)
    again = SequenceScorer(model, known, ds_ids(shop), text_vectors(N_ITEMS))
    histories = [np.array([1, 2, 3]), np.array([5]), np.array([], dtype=np.int64), np.arange(20) % N_ITEMS]
    np.testing.assert_array_equal(again.scores(histories), scorer.scores(histories))
    assert not again.users(histories)[2].any()  # an empty history has no user vector
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "items.parquet", "model.safetensors", "train_metrics.json"]


def test_it_never_learns_a_ranker_target_or_a_held_out_item(shop: tuple[Dataset, list[list[int]]]) -> None:
    ds, seqs = shop
    index = {item: i for i, item in enumerate(ds_ids(shop))}
    rows = _learner_rows(ds, TrainConfig.for_dataset(ds.manifest))
    learned = dict(zip(user_sequences(rows)[Col.USER].to_list(), (s.tolist() for s in training_sequences(rows, index))))
    for u, seq in enumerate(seqs):
        # Train targets are seq[1:-2]; the last of them is a ranker target, the next two are dev and test.
        expected = seq[:-3] if len(seq) > 4 else []  # a user with one train row has nothing left to learn from
        assert learned.get(f"U{u:04d}", []) == [index[f"B{i:05d}"] for i in expected], u
    held = ds.split(Split.DEV, Split.TEST).select(Col.USER, pl.col(Col.CANDIDATES).list.first())
    for user, target in held.iter_rows():
        assert index[target] not in learned.get(user, [])


def test_sequence_source_retrieves_and_ranks_as_dense_scores_do(shop: tuple[Dataset, list[list[int]]], trained: tuple[Path, SequenceScorer]) -> None:
    ds, _ = shop
    _, scorer = trained
    cfg = RetrievalConfig(sources=(SEQUENCE,), per_source=5, rank_depth=N_ITEMS)
    r = Retriever.fit(ds, None, cfg, splits=[Split.TRAIN, Split.DEV], sequence=scorer)
    assert r.sources == [SEQUENCE] and r.plan[SEQUENCE] == "exact"
    assert Retriever.fit(ds, None, cfg, splits=[Split.TRAIN]).sources == []  # no model given: no source
    histories = r.encode_histories(ds.split(Split.TEST)[Col.HISTORY])
    got = r.retrieve(histories).candidates.sort(ROW, ITEM_INDEX)
    dense = scorer.scores(histories)
    for row, h in enumerate(histories):
        dense[row, h] = -np.inf
    for row in range(len(histories)):
        mine = got.filter(got[ROW] == row)
        top = set(np.flatnonzero(dense[row] >= np.sort(dense[row])[-5]))
        assert set(mine[ITEM_INDEX].to_list()) == top
        np.testing.assert_allclose(mine[source_score(SEQUENCE)].to_numpy(), dense[row, mine[ITEM_INDEX].to_numpy()], rtol=1e-6)
        expected = [1 + int((dense[row] > dense[row, i]).sum()) for i in mine[ITEM_INDEX].to_list()]
        assert mine[source_rank(SEQUENCE)].to_list() == expected
    # Above text_ann_items the same source searches an index: nearly the same candidates, exact scores.
    indexed = Retriever.fit(ds, None, dataclasses.replace(cfg, text_ann_items=N_ITEMS - 1), splits=[Split.TRAIN, Split.DEV], sequence=scorer)
    assert indexed.plan[SEQUENCE].startswith("IVF") and indexed.plan[f"{SEQUENCE}_recall@5"] >= 0.95
    approx = indexed.retrieve(histories).candidates
    both = got.join(approx, on=[ROW, ITEM_INDEX], suffix="_ann")
    assert both.height >= 0.95 * got.height
    np.testing.assert_allclose(both[source_score(SEQUENCE)], both[f"{source_score(SEQUENCE)}_ann"], rtol=1e-5, atol=1e-6)


def test_the_sequence_source_needs_text_and_its_config_is_checked() -> None:
    cfg = TrainConfig.default("interactions")
    with_sequence = override(cfg, **{"retrieval.sources": tuple(dict.fromkeys((*cfg.retrieval.sources, SEQUENCE)))})
    assert with_sequence.uses_sequence and not override(with_sequence, use_text=False).uses_sequence  # its items are text vectors
    assert override(with_sequence, **{"sequence.threads": 2}).sequence.threads == 2
    with pytest.raises(RecsysError, match="multiple of"):
        SequenceConfig(dim=10, heads=3)


def test_pipeline_trains_it_once_as_a_stage_and_serves_it(shop: tuple[Dataset, list[list[int]]], tmp_path: Path) -> None:
    ds, _ = shop
    cfg = override(TrainConfig.for_dataset(ds.manifest), fine_tune=False, sequence=TINY, text=tiny_config(make_tiny_encoder(tmp_path / "enc"), fields=("title",)),
                   **{"retrieval.sources": (EASE, TRANSITIONS, TEXT, POPULARITY, SEQUENCE), "retrieval.per_source": 8, "retrieval.ease_l2": 10.0,
                      "ranker.num_leaves": 7, "ranker.min_data_in_leaf": 5, "ranker.n_estimators": 40, "ranker.num_threads": 1, "train_negatives": 20})
    rec = Recommender.fit(ds, cfg, out=tmp_path / "model", show_progress=False)
    model = rec.model_dir
    assert rec.meta["stages"]["sequence"]["seconds"] > 0 and "sequence/model.safetensors" in rec.meta["artifacts"]
    full, no_text = (json.loads((model / d / "ranker.json").read_text())["features"] for d in ("ranker", "ranker_no_text"))
    assert source_rank(SEQUENCE) in full and not [f for f in no_text if SEQUENCE in f]  # its items are text vectors
    table = rec.evaluate(split=Split.TEST)
    assert table["sequence"]["recall@10"] > table["popularity"]["recall@10"] and "recall@10" in table["retrieval: sequence"]
    again = Recommender.fit(ds, cfg, out=model, show_progress=False)  # every stage up to date: trained once
    assert set(again.meta["summary"]["stage_seconds"].values()) == {0.0}
    recs = Recommender.load(model, ds).recommend(pl.DataFrame({"request_id": ["r"], Col.USER: ["new"], Col.TIME: [dt.datetime(2001, 1, 1)],
                                                           Col.HISTORY: [["B00010", "B00011"]]}), k=5)
    assert recs.height == 5 and not {"B00010", "B00011"} & set(recs[Col.ITEM])
    off = override(cfg, **{"retrieval.sources": (EASE, TRANSITIONS, TEXT, POPULARITY)})
    assert not (Recommender.fit(ds, off, out=model, show_progress=False).model_dir / "sequence").exists()
