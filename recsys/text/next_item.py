"""Fine-tune the text encoder on an interaction log: an item's vector learns to point at the items taken after it.

On an interaction log the encoder's vectors serve the ``text`` retrieval source and the ``text_*`` pair features,
which score a candidate by its cosine to the user's recent items. The impression fine-tune (:mod:`recsys.text.train`)
scores clicks against sampled non-clicks through a learned user encoder; on Amazon Scientific its vectors retrieved
worse than the pretrained ones (R@10 .1018 against .1067). This fine-tune trains the cosine those uses read:

* **pairs**: each row given (the learner rows of :func:`recsys.pipeline._learner_rows`) is one pair, its history's
  last item and its clicked item;
* **loss**: an in-batch softmax, each last item against the batch's clicked items, with the sequence model's logits
  (:func:`recsys.text.sequence.in_batch_logits`: cosine times a learned temperature, as :mod:`recsys.text.train`
  has, minus log Q of the item's share of the targets; a negative that is the row's own item or in its history is
  left out). Both sides run through the live encoder: an item has one vector, as history and as candidate;
* **validation**: the held-out rows' (dev) NDCG@10 over the whole catalogue, with the user vector of the text source
  (the recency-weighted mean of the last ``recent`` items, :func:`recsys.candidates.retrieval.recency_matrix`) and
  the history items excluded. Once before any step (the pretrained encoder), then after each epoch (or every
  ``val_check_steps``). The best weights are kept, the pretrained ones when no step beats them, and
  ``train_metrics.json`` says which (:func:`recsys.text.fine_tune.kept_weights`).

Settings are the ``[text]`` table's (:class:`~recsys.text.model.TextConfig`): ``max_train_impressions`` caps the
pairs, ``max_val_impressions`` the validation users; ``negatives`` and ``history_len`` are the impression
fine-tune's only. It runs in one process (one GPU where there is one): the validation ranks the whole catalogue for
every dev row, which Lightning DDP would split between ranks. Saved as :func:`recsys.text.model.save_text_model`
saves any text model (mean user pooling).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from recsys.candidates.retrieval import recency_matrix
from recsys.errors import RecsysError
from recsys.evaluation.metrics import ndcg_at_k, recall_at_k
from recsys.io import write_json
from recsys.text.data import ItemTokens
from recsys.text.device import lightning_accelerator, lightning_precision, pin_memory, quiet_lightning, resolve_device
from recsys.text.encode import embed_rows
from recsys.text.fine_tune import (FINE_TUNED, METRICS_FILE, PRETRAINED, SCORE_SCALE, capped_scale, clear_log, fine_tune_loggers, fine_tune_optimizer,
                                   log_every, trainable_text_model)
from recsys.text.model import TextConfig, TextModel, save_text_model
from recsys.text.sequence import in_batch_logits, log_q
from recsys.text.sequence_train import MONITOR, VAL_CHUNK, BestState, Targets, held_out_targets, masked_ranks

log = logging.getLogger(__name__)


def next_item_pairs(rows: pl.DataFrame, index: dict[str, int], cap: int | None, seed: int) -> Targets:
    """Each labelled row's history (catalogue indices, oldest first) and first clicked item; rows without a known
    history item are left out, and a seeded sample of `cap` rows is kept when there are more."""
    pairs = held_out_targets(rows, index, None, seed)
    keep = np.flatnonzero([len(h) > 0 for h in pairs.histories])
    if cap is not None and len(keep) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(keep, cap, replace=False))
    return Targets([pairs.histories[i] for i in keep], pairs.targets[keep])


class PairCollate:
    """A batch of pairs: the token ids of its distinct items, where each pair's last and next item sit among them,
    and which next items are in each row's history (never its negatives)."""

    def __init__(self, pairs: Targets, tokens: ItemTokens) -> None:
        self.pairs, self.tokens = pairs, tokens

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        histories = [self.pairs.histories[r] for r in rows]
        last = np.array([h[-1] for h in histories], dtype=np.int64)
        nxt = self.pairs.targets[rows]
        items, where = np.unique(np.concatenate([last, nxt]), return_inverse=True)
        input_ids, attention_mask = self.tokens.batch(items)
        in_history = np.stack([np.isin(nxt, h) for h in histories])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "last": torch.from_numpy(where[: len(rows)]),
                "next": torch.from_numpy(where[len(rows) :]), "next_ids": torch.from_numpy(nxt), "in_history": torch.from_numpy(in_history)}


class NextItemModule(L.LightningModule):
    """The item encoder, a learned temperature, the pairs' target counts (log Q) and the held-out rows."""

    def __init__(self, model: TextModel, tokens: ItemTokens, target_counts: np.ndarray, val: Targets, recent: int, decay: float) -> None:
        super().__init__()
        self.item_encoder, self.cfg, self.tokens = model.item_encoder, model.config, tokens
        self.val, self.recent, self.decay = val, recent, decay
        self.register_buffer("log_q", torch.from_numpy(log_q(target_counts)), persistent=False)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(SCORE_SCALE)))
        self.history: list[dict[str, Any]] = []
        self._ranks: list[np.ndarray] = []

    def on_fit_start(self) -> None:
        self.item_encoder.train()  # transformers 5 hands models over in eval mode; dropout must be on while training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        vectors = self.item_encoder(batch["input_ids"], batch["attention_mask"])  # each item of the batch once
        logits = in_batch_logits(vectors[batch["last"]], vectors[batch["next"]], batch["next_ids"], 1.0 / capped_scale(self.log_scale),
                                 self.log_q[batch["next_ids"]], batch["in_history"])
        loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    # --- validation: the text source's NDCG@10 of the held-out targets over the catalogue -------------------------
    def on_validation_epoch_start(self) -> None:
        self._table = embed_rows(self.item_encoder, self.tokens, np.arange(len(self.tokens)), device=self.device,
                                 precision=self.cfg.precision, batch_size=self.cfg.encode_batch_size, cast_weights=False).cpu().numpy()
        self._ranks = []

    def validation_step(self, start: int, batch_idx: int) -> None:
        histories = self.val.histories[start : start + VAL_CHUNK]
        users = np.asarray(recency_matrix(histories, len(self._table), self.recent, self.decay) @ self._table)
        self._ranks.append(masked_ranks(users @ self._table.T, histories, self.val.targets[start : start + VAL_CHUNK]))

    def on_validation_epoch_end(self) -> None:
        ranks, ties = np.concatenate(self._ranks, axis=1)
        ndcg = ndcg_at_k(ranks, 10, ties)
        self.log(MONITOR, ndcg, prog_bar=True)
        self.log("step", float(self.global_step))  # the loggers' x: the optimiser steps taken (see recsys.text.train)
        self.history.append({"epoch": self.current_epoch if self.global_step else -1, "step": self.global_step,
                             MONITOR: ndcg, "val_recall@10": recall_at_k(ranks, 10, ties)})

    def configure_optimizers(self) -> Any:
        return fine_tune_optimizer(self, [])


def train_next_item_model(rows: pl.DataFrame, val_rows: pl.DataFrame, items: pl.DataFrame, cfg: TextConfig, out_dir: Path, *,
                          recent: int, decay: float, show_progress: bool = True) -> Path:
    """Fine-tune on the pairs of `rows`, keep the weights of the best NDCG@10 on the targets of `val_rows`, save them.

    Args:
        rows: labelled rows in impression format (one clicked candidate each) whose pairs the encoder learns from.
        val_rows: labelled rows whose first clicked item is held out (dev); none = train ``cfg.epochs`` and keep the end.
        items: the catalogue.
        cfg: the ``[text]`` settings.
        out_dir: written as :func:`recsys.text.model.save_text_model` writes, with ``train_metrics.json``.
        recent, decay: the text source's user vector (``[retrieval]``), which validation scores with.
        show_progress: Lightning's progress bar.

    Raises:
        RecsysError: no row has a known history item and a known clicked item.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device = resolve_device(cfg.device)
    model = trainable_text_model(dataclasses.replace(cfg, user_pooling="mean"))  # no user encoder: the text source's mean
    tokens = ItemTokens.from_items(items, model.tokenizer, cfg.fields, cfg.max_tokens)
    index = tokens.index()
    pairs = next_item_pairs(rows, index, cfg.max_train_impressions, cfg.seed)
    if not len(pairs.targets):
        raise RecsysError("the text fine-tune has no row with a known history item and a known clicked item; check that item ids match items.parquet")
    val = held_out_targets(val_rows, index, cfg.max_val_impressions, cfg.seed)
    has_val = len(val.targets) > 0
    module = NextItemModule(model, tokens, np.bincount(pairs.targets, minlength=len(tokens)), val, recent, decay)
    log.info("text model: %d next-item pairs, %d validation rows", len(pairs.targets), len(val.targets))
    best = BestState()
    callbacks: list[L.Callback] = [best]
    if has_val:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience, check_on_train_epoch_end=False))
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(range(len(pairs.targets)), batch_size=cfg.batch_size, shuffle=True, drop_last=len(pairs.targets) > cfg.batch_size,
                              generator=generator, collate_fn=PairCollate(pairs, tokens), pin_memory=pin_memory(device))
    val_loader = DataLoader(range(0, len(val.targets), VAL_CHUNK), batch_size=None)
    if (cfg.devices or 1) > 1 or cfg.num_nodes > 1:
        log.warning("text model: the next-item fine-tune runs in one process; text.devices and text.num_nodes apply to the impression fine-tune")
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator=lightning_accelerator(device), devices=1,
            precision=lightning_precision(device, cfg.precision), max_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            accumulate_grad_batches=cfg.accumulate, gradient_clip_val=1.0, callbacks=callbacks, logger=fine_tune_loggers(Path(out_dir)),
            log_every_n_steps=log_every(len(pairs.targets), cfg),
            enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=show_progress, enable_model_summary=False,
            deterministic="warn", limit_val_batches=1.0 if has_val else 0, default_root_dir=str(out_dir),
            val_check_interval=cfg.val_check_steps and cfg.val_check_steps * cfg.accumulate,
            check_val_every_n_epoch=None if cfg.val_check_steps else 1,
        )
        clear_log(trainer, out_dir)
        start = time.perf_counter()
        if has_val:
            trainer.validate(module, val_loader, verbose=False)  # the pretrained encoder: the score to beat
        trainer.fit(module, train_loader, val_loader if has_val else None)
        if has_val and module.history[-1]["step"] != trainer.global_step:
            trainer.validate(module, val_loader, verbose=False)  # validating every N steps leaves the last ones unchecked
        elapsed = time.perf_counter() - start
    if best.state is not None:
        module.load_state_dict(best.state)
    kept = PRETRAINED if best.step == 0 else FINE_TUNED
    if kept == PRETRAINED:
        log.warning("text model: no fine-tuning step beat the pretrained encoder on dev (NDCG@10 %.4f): keeping it", best.best)
    module.cpu()
    save_text_model(model, Path(out_dir))
    write_json({"objective": "next item", "metric": MONITOR, "best_step": best.step if has_val else None,
                f"best_{MONITOR}": best.best if has_val else None, "history": module.history, "kept": kept,
                "train_pairs": len(pairs.targets), "validation_rows": len(val.targets), "steps": trainer.global_step,
                "score_scale": round(float(capped_scale(module.log_scale.detach())), 3), "seconds": round(elapsed, 2),
                "precision": trainer.precision, "device": str(device)}, Path(out_dir) / METRICS_FILE)
    log.info("text model: dev NDCG@10 %.4f at step %d (%s kept), %d steps in %.0f s", best.best, best.step, kept, trainer.global_step, elapsed)
    return Path(out_dir)
