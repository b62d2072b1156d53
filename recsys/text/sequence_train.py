"""Train the sequence model (:mod:`recsys.text.sequence`) with Lightning: next-item prediction, early-stopped on dev.

Read top to bottom: :func:`train_sequence_model` turns the rows it may learn from into item-index sequences
(:func:`training_sequences`, cut into :func:`windows` of ``max_len + 1`` items) and the dev rows into held-out
targets (:func:`held_out_targets`), then trains :class:`SequenceModule`: at every position of every window the
output predicts the next item, against the batch's other targets (in-batch negatives, logQ-corrected, the
row's own history masked as it is at evaluation). Each epoch ends with the dev targets' NDCG@10 over the whole
catalogue (history items excluded); Lightning's ``EarlyStopping`` ends the run and :class:`BestState` keeps the
best weights in memory, which are saved (safetensors) with ``train_metrics.json``. Precision is a Trainer
argument (bf16 autocast where the CPU has native bf16, as the text fine-tune).

The caller chooses the rows (``recsys.pipeline``): never a target the ranker learns from or is judged on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from recsys.candidates.inputs import user_sequences
from recsys.data import Col
from recsys.errors import RecsysError
from recsys.evaluation.curves import VAL_NDCG
from recsys.evaluation.metrics import held_out_ranks, ndcg_at_k, recall_at_k
from recsys.io import write_json
from recsys.splits import sample_users
from recsys.text.device import lightning_accelerator, lightning_precision, quiet_lightning, resolve_device
from recsys.text.sequence import (METRICS_FILE, SequenceConfig, SequenceModel, in_batch_logits, log_q, pad_histories, save_sequence_model,
                                  torch_threads)

log = logging.getLogger(__name__)

MONITOR = VAL_NDCG  # what early stopping watches, and the training curve plots
VAL_CHUNK = 1024  # dev rows scored against the whole catalogue at once


def training_sequences(rows: pl.DataFrame, index: dict[str, int]) -> list[np.ndarray]:
    """Each user's item sequence as `rows` reveal it (:func:`~recsys.candidates.inputs.user_sequences`), as catalogue
    indices; ids outside the catalogue are dropped."""
    return [np.fromiter((index[i] for i in h if i in index), dtype=np.int64) for h in user_sequences(rows)[Col.HISTORY]]


def windows(sequences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Pieces of at most ``max_len + 1`` items cut from each sequence's end backwards, so that every item but a
    sequence's first is a target exactly once and the latest items keep the most context."""
    return [s[max(0, end - max_len - 1) : end] for s in sequences for end in range(len(s), 1, -max_len)]


@dataclass
class Targets:
    """Held-out rows: item-index histories (oldest first) and each row's target item."""

    histories: list[np.ndarray]
    targets: np.ndarray


def held_out_targets(rows: pl.DataFrame, index: dict[str, int], max_users: int | None, seed: int) -> Targets:
    """The first clicked candidate of each labelled row (of a seeded sample of `max_users` users) with its history;
    rows whose target is outside the catalogue are left out."""
    rows = sample_users(rows.filter(pl.col(Col.LABELS).list.sum() > 0), max_users, seed)[0].sort(Col.USER, Col.TIME, Col.IMPRESSION)
    first = rows.select(pl.col(Col.CANDIDATES).list.get(pl.col(Col.LABELS).list.arg_max()))
    targets = np.array([index.get(t, -1) for t in first.to_series()], dtype=np.int64)
    histories = [np.fromiter((index[i] for i in h if i in index), dtype=np.int64) for h in rows[Col.HISTORY]]
    keep = np.flatnonzero(targets >= 0)
    return Targets([histories[i] for i in keep], targets[keep])


def masked_ranks(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """(2, rows): :func:`~recsys.evaluation.metrics.held_out_ranks` (ranks, ties) of each row's target over the
    catalogue `scores` (changed in place), the row's history items excluded as evaluation excludes them."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    scores[rows, np.concatenate(histories) if len(rows) else rows] = -np.inf
    return np.stack(held_out_ranks(scores, targets))


def collate(pieces: list[np.ndarray], max_len: int) -> dict[str, torch.Tensor]:
    """A batch of windows: right-padded inputs (every item but the last), their lengths, and the next item at each
    input position (-1 at padding)."""
    ids, lengths = pad_histories([p[:-1] for p in pieces], max_len)
    targets = torch.full(ids.shape, -1, dtype=torch.long)
    for r, p in enumerate(pieces):
        targets[r, : len(p) - 1] = torch.from_numpy(p[1:])
    return {"ids": ids, "lengths": lengths, "targets": targets}


def history_mask(ids: torch.Tensor, lengths: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(batch, length, len(items)) whether each of `items` (sorted, distinct) is among the row's inputs up to each
    position: the items the user already has there, which evaluation never ranks."""
    b, length = ids.shape
    col = torch.searchsorted(items, ids).clamp(max=len(items) - 1)
    position = torch.arange(length, device=ids.device).expand(b, length)
    hit = (position < lengths.unsqueeze(1)) & (items[col] == ids)
    first = torch.full((b, len(items)), length, dtype=torch.long, device=ids.device)
    first.scatter_reduce_(1, col, torch.where(hit, position, length), reduce="amin")  # each item's first position
    return first.unsqueeze(1) <= torch.arange(length, device=ids.device).view(1, length, 1)


class SequenceModule(L.LightningModule):
    """The model, the catalogue's text vectors and id slots, and the dev targets it validates on."""

    def __init__(self, model: SequenceModel, text: np.ndarray, slots: np.ndarray, target_counts: np.ndarray, val: Targets) -> None:
        super().__init__()
        self.model, self.cfg, self.val = model, model.cfg, val
        self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32), persistent=False)
        self.register_buffer("slots", torch.as_tensor(slots, dtype=torch.long), persistent=False)
        self.register_buffer("log_q", torch.from_numpy(log_q(target_counts)), persistent=False)
        self.history: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._ranks: list[np.ndarray] = []

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Softmax cross-entropy of each position's next item against the batch's other targets (:func:`in_batch_logits`)."""
        ids, lengths, targets = batch["ids"], batch["lengths"], batch["targets"]
        used, where = torch.unique(torch.cat([ids.ravel(), targets.ravel().clamp(min=0)]), return_inverse=True)
        vectors = self.model.items(self.text[used], self.slots[used])  # each item of the batch once
        out = self.model.sequence(vectors[where[: ids.numel()].view_as(ids)])
        valid = targets >= 0
        target_ids = targets[valid]
        negatives = torch.randperm(len(target_ids), device=ids.device)[: self.cfg.negatives]  # a uniform share of the positions
        items, column = torch.unique(target_ids[negatives], return_inverse=True)
        exclude = history_mask(ids, lengths, items)[valid][:, column]  # (n, k): negative j is in position i's history
        logits = in_batch_logits(out[valid], vectors[where[ids.numel() :][valid.ravel()]], target_ids, self.cfg.temperature,
                                 self.log_q[target_ids] if self.cfg.logq else None, exclude, negatives)
        return F.cross_entropy(logits, torch.zeros(len(target_ids), dtype=torch.long, device=logits.device))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch)
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["ids"]))
        return loss

    # --- validation: NDCG@10 of the dev targets over the whole catalogue, history items excluded ---------------------
    def on_validation_epoch_start(self) -> None:
        self._raw = self.model.items(self.text, self.slots)
        self._table = F.normalize(self._raw.float(), dim=-1)
        self._ranks = []

    def validation_step(self, start: int, batch_idx: int) -> None:
        histories = self.val.histories[start : start + VAL_CHUNK]
        targets = self.val.targets[start : start + VAL_CHUNK]
        ids, lengths = pad_histories(histories, self.cfg.max_len)
        users = self.model.users(self._raw[ids.to(self.device)], lengths.to(self.device))
        with torch.autocast(self.device.type, enabled=False):
            scores = (F.normalize(users.float(), dim=-1) @ self._table.T).cpu().numpy()
        self._ranks.append(masked_ranks(scores, histories, targets))

    def on_validation_epoch_end(self) -> None:
        ranks, ties = np.concatenate(self._ranks, axis=1)
        ndcg, recall = ndcg_at_k(ranks, 10, ties), recall_at_k(ranks, 10, ties)
        self.log(MONITOR, ndcg, prog_bar=True)
        loss = float(np.mean(self._losses)) if self._losses else None
        self.history.append({"epoch": self.current_epoch if self._losses else -1, "train_loss": loss, MONITOR: ndcg, "val_recall@10": recall})
        self._losses = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


class BestState(L.Callback):
    """A CPU copy of the module's weights at its best dev NDCG@10 (no checkpoint file), with the epoch (its
    ``history``'s, -1 before training) and the optimiser step it was reached at (0: the untrained weights)."""

    def __init__(self) -> None:
        self.best, self.epoch, self.step = float("-inf"), -1, -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = float(trainer.callback_metrics.get(MONITOR, float("nan")))
        if value > self.best:
            self.best, self.epoch, self.step = value, module.history[-1]["epoch"], trainer.global_step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def train_sequence_model(train_rows: pl.DataFrame, val_rows: pl.DataFrame, item_ids: list[str], text: np.ndarray, cfg: SequenceConfig,
                         out_dir: Path, *, show_progress: bool = True) -> Path:
    """Train on the sequences of `train_rows`, early-stop on the targets of `val_rows`, save the best weights.

    Args:
        train_rows: the rows whose sequences the model learns from (impression format).
        val_rows: labelled rows whose first clicked item is held out (dev); none = train ``cfg.epochs`` epochs.
        item_ids: the catalogue.
        text: (len(item_ids), d) the catalogue's frozen text vectors.
        cfg: the model and its training.
        out_dir: written: ``config.json``, ``model.safetensors``, ``items.parquet``, ``train_metrics.json``.
        show_progress: Lightning's progress bar.

    Raises:
        RecsysError: no training sequence has two items.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    index = {item: i for i, item in enumerate(item_ids)}
    sequences = training_sequences(train_rows, index)
    pieces = windows(sequences, cfg.max_len)
    if not pieces:
        raise RecsysError("the sequence model has no training sequence of two or more items; drop 'sequence' from retrieval.sources")
    seen = np.unique(np.concatenate(sequences))
    known = [item_ids[i] for i in seen] if cfg.id_embedding else []
    slots = np.zeros(len(item_ids), dtype=np.int64)
    slots[seen] = np.arange(1, len(seen) + 1) if cfg.id_embedding else 0
    counts = np.bincount(np.concatenate([p[1:] for p in pieces]), minlength=len(item_ids))
    val = held_out_targets(val_rows, index, cfg.val_users, cfg.seed)
    has_val = len(val.targets) > 0
    model = SequenceModel(cfg, text.shape[1], len(known))
    module = SequenceModule(model, text, slots, counts, val)
    log.info("sequence model: %d sequences, %d windows, %d targets, %d items with an id, %d validation rows",
             len(sequences), len(pieces), int(counts.sum()), len(known), len(val.targets))

    device = resolve_device("auto")
    best = BestState()
    callbacks: list[L.Callback] = [best]
    if has_val:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience))
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(pieces, batch_size=cfg.batch_size, shuffle=True, generator=generator, collate_fn=lambda b: collate(b, cfg.max_len))
    val_loader = DataLoader(range(0, len(val.targets), VAL_CHUNK), batch_size=None)
    with quiet_lightning(), torch_threads(cfg.threads):
        trainer = L.Trainer(accelerator=lightning_accelerator(device), devices=1, precision=lightning_precision(device, cfg.precision),
                            max_epochs=cfg.epochs, callbacks=callbacks, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            enable_progress_bar=show_progress, enable_model_summary=False, limit_val_batches=1.0 if has_val else 0,
                            deterministic="warn", default_root_dir=str(out_dir))  # the same seed, the same model (see recsys.text.train)
        start = time.perf_counter()
        if has_val:
            trainer.validate(module, val_loader, verbose=False)  # the untrained model, for the record
        trainer.fit(module, train_loader, val_loader if has_val else None)
        elapsed = time.perf_counter() - start
    if best.state is not None:
        module.load_state_dict(best.state)
    model.cpu()
    save_sequence_model(model, known, Path(out_dir))
    write_json({"best_epoch": best.epoch if best.state is not None else None, f"best_{MONITOR}": best.best if best.state is not None else None,
                "history": module.history, "sequences": len(sequences), "windows": len(pieces), "targets": int(counts.sum()),
                "items_with_id": len(known), "validation_rows": len(val.targets), "epochs": trainer.current_epoch,
                "steps": trainer.global_step, "precision": trainer.precision, "seconds": round(elapsed, 2)}, Path(out_dir) / METRICS_FILE)
    log.info("sequence model: best dev NDCG@10 %.4f at epoch %s, %d steps in %.0f s (%s)", best.best, best.epoch, trainer.global_step, elapsed, trainer.precision)
    return Path(out_dir)
