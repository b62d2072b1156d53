"""A text-aware sequence model (SASRec over frozen text vectors, UniSRec-style): a retrieval source and a ranker feature.

* **item tower**: the pretrained encoder's cached catalogue vector (``frozen_vectors.parquet``) through a small learned
  adaptor (Linear + LayerNorm to ``dim``), plus a learned item-id embedding for the items seen in training. The id
  embedding starts at zero and every other item (slot 0) has none: a cold-start item's vector is its text alone.
  The encoder itself stays frozen: fine-tuning BERT layers inside this model costs far more than 2 CPU cores give.
* **user tower**: a causal transformer encoder over the last ``max_len`` history items' vectors plus learned positions
  (oldest kept item = position 0, histories right-padded so the causal mask keeps padding out of real positions).
  Every position predicts the next item; the user vector is the output at the last position.
* **scores**: cosine of the user vector to the item vectors. Training divides them by ``temperature`` and subtracts
  ``log Q(item)`` (its share of the training targets): the batch's targets are its negatives, sampled by popularity,
  and the correction keeps popular items from being pushed down just for being sampled often (Yi et al. 2019).

Saved as ``config.json`` (this module's :class:`SequenceConfig` and the shapes), ``model.safetensors`` and
``items.parquet`` (the ids with an embedding): no pickle. :class:`SequenceScorer` is what retrieval holds: the model
with its item table for one catalogue. Training is :mod:`recsys.text.sequence_train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from recsys.data import Col
from recsys.errors import RecsysError
from recsys.io import atomic_path, make_dir, read_json, write_json, write_parquet
from recsys.resources import resource
from recsys.text.device import PRECISIONS, inference_context

CONFIG_FILE, WEIGHTS_FILE, ITEMS_FILE = "config.json", "model.safetensors", "items.parquet"
METRICS_FILE = "train_metrics.json"


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """The sequence model and its training (``[sequence]`` in a config file).

    Attributes:
        dim: width of the item and user vectors.
        layers, heads: the causal transformer.
        max_len: most recent history items the user tower reads.
        dropout: on the input sequence and inside the transformer.
        id_embedding: add a learned embedding to the text vector of items seen in training.
        temperature: softmax temperature of the cosines while training.
        logq: subtract log Q(item) from the in-batch logits (popularity correction).
        lr, weight_decay: AdamW.
        batch_size: training sequences per step (their targets are each other's negatives).
        negatives: in-batch negatives per step: the targets of at most this many of the batch's positions, drawn at
            random (all when fewer); bounds the (positions x negatives) logits of batches of long sequences.
        epochs: at most this many passes; early stopping on the dev targets' NDCG@10 usually ends sooner.
        patience: epochs without a better dev NDCG@10 before stopping.
        val_users: dev rows of a seeded sample of this many users validate (all when fewer).
        precision: ``auto`` (bf16 autocast where the CPU or GPU has it), ``bf16`` or ``fp32``.
        seed: seed of the weights, the batch order and the validation sample.
        score_batch_size: histories per forward pass when scoring (resource: never changes a result).
        threads: torch threads while training and scoring (resource). Its matrices are small (``dim`` wide), so more
            threads mostly wait on each other: one step took 0.07 s on 1 thread and 0.46 s on 2 of a busy 2-core CPU.
    """

    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    id_embedding: bool = True
    temperature: float = 0.07
    logq: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512  # dev NDCG@10 on Amazon Scientific: 128 -> .083, 256 -> .087, 512 -> .088 (more negatives)
    negatives: int = 2048
    epochs: int = 50
    patience: int = 3
    val_users: int = 10_000
    precision: str = "auto"
    seed: int = 0
    score_batch_size: int = resource(1024)
    threads: int = resource(1)

    def __post_init__(self) -> None:
        sizes = (self.dim, self.layers, self.heads, self.max_len, self.batch_size, self.negatives, self.epochs, self.val_users, self.score_batch_size, self.threads)
        if min(sizes) < 1:
            raise RecsysError("sequence.dim, layers, heads, max_len, batch_size, negatives, epochs, val_users, score_batch_size and threads "
                              "must be at least 1")
        if self.dim % self.heads:
            raise RecsysError(f"sequence.dim ({self.dim}) must be a multiple of sequence.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0 or self.temperature <= 0 or self.lr <= 0 or self.weight_decay < 0 or self.patience < 0:
            raise RecsysError("sequence.dropout must be in [0, 1), temperature and lr > 0, weight_decay and patience >= 0")
        if self.precision not in PRECISIONS:
            raise RecsysError(f"sequence.precision must be one of {PRECISIONS}, got {self.precision!r}")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SequenceModel(nn.Module):
    """Item tower (text adaptor + optional id embedding) and causal user tower."""

    def __init__(self, cfg: SequenceConfig, text_dim: int, n_ids: int) -> None:
        super().__init__()
        self.cfg, self.text_dim, self.n_ids = cfg, text_dim, n_ids
        self.adaptor = nn.Sequential(nn.Linear(text_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        # Slot 0 is "no id": its row stays zero (padding_idx), so such an item is its text alone.
        self.ids = nn.Embedding(n_ids + 1, cfg.dim, padding_idx=0) if cfg.id_embedding else None
        if self.ids is not None:
            nn.init.zeros_(self.ids.weight)  # training starts from the text alone; ids learn only what text lacks
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def items(self, text: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(n, dim) item vectors from (n, text_dim) text vectors and (n,) id slots (0 = text alone)."""
        vectors = self.adaptor(text)
        return vectors + self.ids(slots) if self.ids is not None else vectors

    def sequence(self, items: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) outputs at every position of right-padded (batch, length, dim) item vectors:
        position t reads items 0..t only."""
        length = items.shape[1]
        x = self.dropout(items + self.positions.weight[:length])
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=x.dtype)
        return self.norm(self.encoder(x, mask=mask, is_causal=True))

    def users(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, dim) output at each row's last real position (rows of length 0 give a zero vector)."""
        out = self.sequence(items)
        last = out[torch.arange(len(lengths), device=out.device), (lengths - 1).clamp(min=0)]
        return last * (lengths > 0).unsqueeze(1).to(last.dtype)


def in_batch_logits(users: torch.Tensor, targets: torch.Tensor, target_ids: torch.Tensor, temperature: float | torch.Tensor, log_q: torch.Tensor | None = None,
                    exclude: torch.Tensor | None = None, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 1 + k) training logits of n positions: column 0 each row's own target, then the targets of the positions
    `negatives` (default: every position) as negatives.

    ``cos / temperature - log Q(item)``: the negatives are sampled in proportion to their frequency Q among the
    targets, which the correction takes out (so is the positive's). A negative that is the row's own target item
    (a same-item collision, the row itself included) or an `exclude` entry (an item of the row's history, never
    ranked at evaluation) is -inf; the positive column never is.

    Args:
        users: (n, dim) user vectors.
        targets: (n, dim) the item vector of each position's target.
        target_ids: (n,) the target items.
        temperature: the softmax temperature of the cosines.
        log_q: (n,) log Q of each position's target, or None for no correction.
        exclude: (n, k) negatives to leave out, or None.
        negatives: (k,) the positions whose targets are the negatives, or None for all (k = n).
    """
    columns = torch.arange(len(target_ids), device=target_ids.device) if negatives is None else negatives
    with torch.autocast(users.device.type, enabled=False):  # fp32 logits: bf16 would round cosines to ~0.004 steps
        u, t = F.normalize(users.float(), dim=-1), F.normalize(targets.float(), dim=-1)
        positive, negative = (u * t).sum(dim=1, keepdim=True) / temperature, u @ t[columns].T / temperature
    if log_q is not None:
        positive, negative = positive - log_q.float().unsqueeze(1), negative - log_q[columns].float().unsqueeze(0)
    masked = target_ids[columns].unsqueeze(0) == target_ids.unsqueeze(1)
    if exclude is not None:
        masked |= exclude
    return torch.cat([positive, negative.masked_fill(masked, float("-inf"))], dim=1)


def pad_histories(histories: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `max_len` items of each history, right-padded with item 0: ((rows, width) ids, (rows,) lengths)."""
    tails = [np.asarray(h, dtype=np.int64)[-max_len:] for h in histories]
    lengths = np.array([len(t) for t in tails], dtype=np.int64)
    out = np.zeros((len(tails), max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
    for r, t in enumerate(tails):
        out[r, : len(t)] = t
    return torch.from_numpy(out), torch.from_numpy(lengths)


def id_slots(item_ids: Sequence[str], known: Sequence[str]) -> np.ndarray:
    """(len(item_ids),) each item's id-embedding slot: 1 + its position in `known`, 0 when it has none (cold start)."""
    slot = {item: i + 1 for i, item in enumerate(known)}
    return np.fromiter((slot.get(item, 0) for item in item_ids), dtype=np.int64, count=len(item_ids))


class SequenceScorer:
    """The trained model with its item table for one catalogue: what the ``sequence`` retrieval source reads.

    Args:
        model: the trained model.
        known: the item ids that have an embedding (slot i + 1 = known[i]).
        item_ids: the catalogue, in the order scores use.
        text: (len(item_ids), text_dim) frozen text vectors of the catalogue (zeros for an item without text).
        settings: the run's config, whose precision and resource settings (threads, batch size) scoring uses
            (default: the model's own).
    """

    def __init__(self, model: SequenceModel, known: Sequence[str], item_ids: Sequence[str], text: np.ndarray,
                 settings: SequenceConfig | None = None) -> None:
        self.model, self.settings, self.device = model.eval(), settings or model.cfg, torch.device("cpu")
        slots = id_slots(item_ids, known)
        self.cold = int((slots == 0).sum())
        with torch.inference_mode():  # the table in fp32: it is computed once
            self.raw = model.items(torch.as_tensor(np.asarray(text, dtype=np.float32)), torch.from_numpy(slots))
        self.table = F.normalize(self.raw, dim=-1).numpy()  # (n_items, dim) float32, unit rows

    def users(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(rows, dim) float32 unit user vectors (zero rows for empty histories)."""
        out = np.zeros((len(histories), self.table.shape[1]), dtype=np.float32)
        step = self.settings.score_batch_size
        for lo in range(0, len(histories), step):
            ids, lengths = pad_histories(histories[lo : lo + step], self.model.cfg.max_len)
            with torch_threads(self.settings.threads), inference_context(self.device, self.settings.precision):
                users = self.model.users(self.raw[ids], lengths)
            out[lo : lo + step] = F.normalize(users.float(), dim=-1).numpy()
        return out

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(rows, n_items) float32 cosines of each history's user vector to every item (own items not masked)."""
        return self.users(histories) @ self.table.T


def save_sequence_model(model: SequenceModel, known: Sequence[str], out_dir: Path) -> Path:
    """Write ``items.parquet``, ``model.safetensors`` and ``config.json`` (last: its presence means a whole model)."""
    out_dir = make_dir(out_dir)
    write_parquet(pl.DataFrame({Col.ITEM: list(known)}, schema={Col.ITEM: pl.String()}), out_dir / ITEMS_FILE)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json({"config": dataclasses.asdict(model.cfg), "text_dim": model.text_dim, "n_ids": model.n_ids}, out_dir / CONFIG_FILE)
    return out_dir


def load_sequence_model(path: Path) -> tuple[SequenceModel, list[str]]:
    """The model and its known item ids from a directory written by :func:`save_sequence_model`.

    Raises:
        RecsysError: the directory holds no complete sequence model.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise RecsysError(f"{path}: no sequence model ({CONFIG_FILE} missing); retrain the model")
    meta: dict[str, Any] = read_json(path / CONFIG_FILE)
    model = SequenceModel(SequenceConfig(**meta["config"]), int(meta["text_dim"]), int(meta["n_ids"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    known = pl.read_parquet(path / ITEMS_FILE)[Col.ITEM].to_list()
    return model.eval(), known


def log_q(target_counts: np.ndarray) -> np.ndarray:
    """log of each item's share of the training targets (items never a target: log of half a count, never -inf)."""
    counts = np.maximum(np.asarray(target_counts, dtype=np.float64), 0.5)
    return (np.log(counts) - math.log(max(float(np.sum(target_counts)), 1.0))).astype(np.float32)
