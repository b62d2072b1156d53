"""The next-item fine-tune of an interaction log's encoder: it learns a planted rule that text alone cannot know, keeps
the pretrained weights when dev disagrees, and builds its pairs and in-batch masks as documented."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from conftest_text import TOPICS, make_tiny_encoder, tiny_config, topic_items
from recsys.data import IMPRESSIONS_SCHEMA, Col, Split
from recsys.errors import RecsysError
from recsys.evaluation.curves import STEP, TRAIN_LOSS, VAL_NDCG, plot_curves, read_curves
from recsys.text.data import ItemTokens
from recsys.text.encode import encode_items
from recsys.text.next_item import MONITOR, PairCollate, next_item_pairs, train_next_item_model
from recsys.text.fine_tune import FINE_TUNED, PRETRAINED, kept_weights
from recsys.text.train import load_text_model, pretrained_text_model

N_TOPICS = len(TOPICS)


def topic(item: str) -> int:
    return int(item.split("-")[0][-1])


def partner(t: int) -> int:
    """Topics pair up (0 with 1, 2 with 3): what a user takes next is from the partner of the last item's topic."""
    return t ^ 1


def same(t: int) -> int:
    return t


def chains(items: pl.DataFrame, users: int, length: int, rule: Callable[[int], int], seed: int, prefix: str) -> pl.DataFrame:
    """One row per position k >= 1 of each user's chain: the next item is a random new item of topic rule(t)."""
    rng = np.random.default_rng(seed)
    by_topic = [[i for i in items[Col.ITEM].to_list() if topic(i) == t] for t in range(N_TOPICS)]
    rows, start = [], datetime(2024, 1, 1)
    for u in range(users):
        seq = [str(rng.choice(by_topic[u % N_TOPICS]))]
        while len(seq) < length:
            seq.append(str(rng.choice([i for i in by_topic[rule(topic(seq[-1]))] if i not in seq])))
        for k in range(1, length):
            rows.append({Col.IMPRESSION: f"{prefix}{u}-{k}", Col.USER: f"{prefix}{u}", Col.TIME: start + timedelta(minutes=k),
                         Col.HISTORY: seq[:k], Col.CANDIDATES: [seq[k]], Col.LABELS: [1], Col.SPLIT: Split.TRAIN})
    return pl.DataFrame(rows, schema=IMPRESSIONS_SCHEMA)


def last_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Each user's last row: a dev target with its whole history."""
    return rows.sort(Col.TIME).group_by(Col.USER, maintain_order=True).last().select(rows.columns)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("next_item")
    items = topic_items()  # 4 topics x 24 items; a title's words name its topic
    cfg = tiny_config(make_tiny_encoder(root / "encoder"), batch_size=32, epochs=4, lr=3e-3, head_lr=3e-3)
    train = chains(items, users=120, length=6, rule=partner, seed=0, prefix="a")
    return {"root": root, "items": items, "cfg": cfg, "train": train}


def topic_cosines(model_dir: Path | None, world: dict) -> np.ndarray:
    """(4, 4) mean cosine of the items of topic a to those of topic b, with the saved (or the pretrained) encoder."""
    model = load_text_model(model_dir) if model_dir else pretrained_text_model(world["cfg"])
    vecs = encode_items(model, world["items"], show_progress=False)
    topics = np.array([topic(i) for i in vecs.ids])
    sims = vecs.vectors @ vecs.vectors.T
    return np.array([[sims[np.ix_(topics == a, topics == b)].mean() for b in range(N_TOPICS)] for a in range(N_TOPICS)])


@pytest.fixture(scope="module")
def follows(world: dict) -> Path:
    """A fine-tune whose dev users follow the planted rule too."""
    dev = last_rows(chains(world["items"], users=80, length=6, rule=partner, seed=1, prefix="d"))
    return train_next_item_model(world["train"], dev, world["items"], world["cfg"], world["root"] / "follows", recent=1, decay=0.6, show_progress=False)


def test_it_learns_what_follows_and_keeps_the_fine_tuned_weights(world: dict, follows: Path) -> None:
    out = follows
    metrics = json.loads((out / "train_metrics.json").read_text())
    start = metrics["history"][0]
    assert start["step"] == 0 and metrics["kept"] == FINE_TUNED and metrics["best_step"] > 0
    # Dev NDCG@10 of the text source over the catalogue: a partner item competes with ~45 others of two topics at best.
    assert metrics[f"best_{MONITOR}"] > max(2 * start[MONITOR], start[MONITOR] + 0.03)
    assert kept_weights(out).startswith(f"{FINE_TUNED}: dev NDCG@10")
    before, after = topic_cosines(None, world), topic_cosines(out, world)
    def lead(cos: np.ndarray) -> np.ndarray:  # each topic's mean cosine to its partner's items over that to the other pair's
        return np.array([cos[t, partner(t)] - cos[t, [u for u in range(N_TOPICS) if u not in (t, partner(t))]].mean() for t in range(N_TOPICS)])

    # A topic's items now sit near its partner's, which the words of the titles do not tell the pretrained encoder.
    assert (lead(after) > 0).all() and (lead(after) > lead(before) + 0.05).all(), (lead(before), lead(after))


def test_its_training_curve_has_the_loss_and_each_dev_ndcg_at_its_step(follows: Path, tmp_path: Path) -> None:
    metrics = json.loads((follows / "train_metrics.json").read_text())
    curves = read_curves(follows)
    assert curves is not None and curves.columns == [STEP, TRAIN_LOSS, VAL_NDCG]
    loss = curves.filter(pl.col(TRAIN_LOSS).is_not_null())
    assert loss.height >= 10 and loss[STEP].max() < metrics["steps"] and (loss[TRAIN_LOSS] > 0).all()
    # Every validation at the step train_metrics.json records for it, the pretrained encoder's at step 0.
    val = curves.filter(pl.col(VAL_NDCG).is_not_null())
    assert val[STEP].to_list() == [h["step"] for h in metrics["history"]] and val[STEP][0] == 0
    np.testing.assert_allclose(val[VAL_NDCG].to_numpy(), [h[MONITOR] for h in metrics["history"]], rtol=1e-6)
    image = imread(plot_curves(curves, tmp_path / "curves.png"))
    orange = np.array([0xFF, 0x7F, 0x0E]) / 255
    assert (np.abs(image[..., :3] - orange).max(axis=-1) < 0.06).any()  # the dev NDCG@10 line is drawn


def test_it_keeps_the_pretrained_encoder_when_dev_disagrees(world: dict) -> None:
    # Dev users stay within one topic: every step towards "the next topic" makes the text source worse on dev.
    dev = last_rows(chains(world["items"], users=80, length=6, rule=same, seed=2, prefix="d"))
    out = train_next_item_model(world["train"], dev, world["items"], world["cfg"], world["root"] / "stays", recent=1, decay=0.6, show_progress=False)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["kept"] == PRETRAINED and metrics["best_step"] == 0 and metrics["steps"] > 0
    assert all(h[MONITOR] <= metrics["history"][0][MONITOR] for h in metrics["history"])
    assert kept_weights(out).startswith(f"{PRETRAINED}: no fine-tuning step beat dev NDCG@10")
    np.testing.assert_allclose(topic_cosines(out, world), topic_cosines(None, world), atol=1e-5)  # the saved weights are the pretrained ones


def test_pairs_skip_unknown_ids_and_cap_with_a_seed(world: dict) -> None:
    rows = world["train"].head(6)
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(["ghost"])).otherwise(pl.col(Col.HISTORY)).alias(Col.HISTORY),
                             pl.when(pl.int_range(pl.len()) == 1).then(pl.lit(["ghost"])).otherwise(pl.col(Col.CANDIDATES)).alias(Col.CANDIDATES))
    index = {item: i for i, item in enumerate(world["items"][Col.ITEM].to_list())}
    pairs = next_item_pairs(rows, index, None, 0)
    assert len(pairs.targets) == 4  # row 0 has no known history item, row 1 no known clicked item
    capped = [next_item_pairs(world["train"], index, 50, seed).targets for seed in (0, 0, 1)]
    assert len(capped[0]) == 50 and np.array_equal(capped[0], capped[1]) and not np.array_equal(capped[0], capped[2])
    with pytest.raises(RecsysError, match="no row with a known history item"):
        train_next_item_model(rows.head(1), rows.head(0), world["items"], world["cfg"], world["root"] / "none", recent=1, decay=0.6, show_progress=False)


def test_a_batch_masks_the_next_items_a_row_already_has(world: dict) -> None:
    ids = world["items"][Col.ITEM].to_list()
    index = {item: i for i, item in enumerate(ids)}
    rows = pl.DataFrame([
        {Col.IMPRESSION: "r0", Col.USER: "u0", Col.TIME: datetime(2024, 1, 1), Col.HISTORY: [ids[0], ids[5]], Col.CANDIDATES: [ids[7]], Col.LABELS: [1], Col.SPLIT: "train"},
        {Col.IMPRESSION: "r1", Col.USER: "u1", Col.TIME: datetime(2024, 1, 1), Col.HISTORY: [ids[7], ids[1]], Col.CANDIDATES: [ids[5]], Col.LABELS: [1], Col.SPLIT: "train"},
        {Col.IMPRESSION: "r2", Col.USER: "u2", Col.TIME: datetime(2024, 1, 1), Col.HISTORY: [ids[2]], Col.CANDIDATES: [ids[5]], Col.LABELS: [1], Col.SPLIT: "train"},
    ], schema=IMPRESSIONS_SCHEMA)
    pairs = next_item_pairs(rows, index, None, 0)
    tokens = ItemTokens.from_items(world["items"], pretrained_text_model(world["cfg"]).tokenizer, world["cfg"].fields, world["cfg"].max_tokens)
    batch = PairCollate(pairs, tokens)([0, 1, 2])
    distinct = [1, 2, 5, 7]  # each item of the batch once: the last items 5, 1, 2 and the next items 7, 5, 5
    assert batch["input_ids"].shape[0] == len(distinct)
    assert [distinct[i] for i in batch["last"].tolist()] == [5, 1, 2] and [distinct[i] for i in batch["next"].tolist()] == [7, 5, 5]
    # u0 has item 5 (the next item of u1 and u2), u1 has item 7 (u0's next): neither is that row's negative.
    assert batch["in_history"].tolist() == [[False, True, True], [True, False, False], [False, False, False]]


def test_cli_train_encoder_fine_tunes_an_interaction_log_on_next_items(world: dict, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main
    from recsys.data import Dataset, build_manifest, save_dataset

    dev = last_rows(chains(world["items"], users=40, length=6, rule=partner, seed=3, prefix="d")).with_columns(pl.lit(Split.DEV).alias(Col.SPLIT))
    log = pl.concat([world["train"], dev])
    save_dataset(Dataset(world["items"], log, build_manifest(world["items"], log, "test", "interactions")), tmp_path / "ds")
    result = CliRunner().invoke(main, ["train-encoder", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--encoder", str(world["cfg"].encoder),
                                       "--fields", "title", "--max-tokens", "16", "--epochs", "2", "--precision", "fp32", "--device", "cpu",
                                       "--batch-size", "32", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m" / "train_metrics.json").read_text())
    assert metrics["objective"] == "next item" and metrics["train_pairs"] == world["train"].height and metrics["validation_rows"] == 40
    assert f"{kept_weights(tmp_path / 'm')}; {world['train'].height} next-item pairs" in result.output
