"""Fine-tune the text model on impressions: softmax over one click and K non-clicks of its impression.

Read top to bottom: :func:`train_text_model` splits impressions by time, builds the samples
(:mod:`recsys.text.data`), trains :class:`TextModule` with Lightning (precision, accumulation, DDP are
Trainer arguments), keeps the weights of the best validation AUC in memory (no pickled checkpoint)
and saves them with :func:`recsys.text.model.save_text_model`. The loss per step and each validation
AUC go to ``logs/metrics.csv`` (and TensorBoard, when installed); :mod:`recsys.evaluation.curves`
reads and plots them.
"""

from __future__ import annotations

import itertools
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

from recsys.data import Col, validate_impressions, validate_items
from recsys.text.device import inference_context, lightning_accelerator, lightning_precision, pin_memory, quiet_lightning, resolve_device
from recsys.text.encode import embed_rows
from recsys.errors import RecsysError
from recsys.evaluation.metrics import auc
from recsys.io import write_json
from recsys.splits import split_latest
from recsys.text.ddp import ddp_settings, gather_clicks
from recsys.text.data import ClickSamples, ImpressionRows, ItemTokens, TextDataModule, candidate_rows, to_indices
from recsys.text.fine_tune import (FINE_TUNED, MAX_SCALE, METRICS_FILE, PRETRAINED, SCORE_SCALE, capped_scale, clear_log, fine_tune_loggers, fine_tune_optimizer,
                                   log_every, trainable_text_model)
from recsys.text.model import TextConfig, TextModel, build_text_model, load_text_model, save_text_model

log = logging.getLogger(__name__)

# Refresh the history cache at least this often when its cost allows: a short run drifts fast.
MIN_REFRESH_STEPS = 10

__all__ = ["train_text_model", "load_text_model", "pretrained_text_model", "TextModule", "refresh_interval"]


def refresh_interval(cfg: TextConfig, cached: int) -> int:
    """Optimiser steps between two refreshes of a history cache of ``cached`` items (0 = once per epoch).

    ``cfg.cache_refresh_steps`` when set. Otherwise as often as the cost allows: a refresh encodes
    ``cached`` items without gradients; a step encodes about ``batch_size x accumulate x (negatives + 1)``
    texts with them, about three times the work per text. Refreshing every ``cached / texts_per_step``
    steps (and at least every :data:`MIN_REFRESH_STEPS`) keeps the refreshes near a quarter of the time,
    on a 12k-item log as on a 1k-item one, where refreshing every 10 steps took three quarters of it.
    """
    if cfg.cache_refresh_steps is not None:
        return cfg.cache_refresh_steps
    texts_per_step = cfg.batch_size * cfg.accumulate * (cfg.negatives + 1)
    return max(MIN_REFRESH_STEPS, math.ceil(cached / texts_per_step))


class TextModule(L.LightningModule):
    """Item + user encoder trained with a (K+1)-way softmax; history vectors from a per-epoch cache."""

    def __init__(self, model: TextModel, tokens: ItemTokens, train_rows: np.ndarray, val_rows: np.ndarray | None = None) -> None:
        """``train_rows``: the items training histories read; ``val_rows``: those validation reads (histories and candidates)."""
        super().__init__()
        self.item_encoder, self.user_encoder = model.item_encoder, model.user_encoder
        self.cfg, self.tokens = model.config, tokens
        self.train_rows = train_rows
        self.all_rows = train_rows if val_rows is None else np.union1d(train_rows, val_rows)
        self.refresh_every = refresh_interval(self.cfg, len(train_rows))
        self._cache: torch.Tensor | None = None  # (n_items + 1, d); last row = padding; not a buffer, never saved
        self._cache_step = -1
        self._cache_full = False  # whether the cache holds the validation rows too
        self._auc_sum, self._auc_n = 0.0, 0
        self.calibrated_scale = SCORE_SCALE
        # A learned softmax temperature (CLIP-style). With a fixed one the encoder meets a wrong
        # temperature by squeezing all vectors together, which blurs the topics apart from each other.
        # It starts where the untrained model fits best (:meth:`calibrate_scale`).
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(SCORE_SCALE)))

    @property
    def score_scale(self) -> torch.Tensor:
        """The softmax temperature in use: ``exp(log_scale)``, capped at :data:`MAX_SCALE`."""
        return capped_scale(self.log_scale)

    # --- the history cache ------------------------------------------------------------------
    def _refresh_cache(self, validation: bool = False) -> None:
        """Re-encode the items training histories read (``validation``: also those validation reads), once per weights version."""
        if self._cache is not None and self._cache_step == self.global_step and (self._cache_full or not validation):
            return
        rows = self.all_rows if validation else self.train_rows
        vecs = embed_rows(self.item_encoder, self.tokens, rows, device=self.device, precision=self.cfg.precision,
                          batch_size=self.cfg.encode_batch_size, show_progress=False)
        cache = torch.zeros(len(self.tokens) + 1, self.item_encoder.dim, device=self.device)
        cache[torch.from_numpy(rows).to(self.device)] = vecs
        self._cache, self._cache_step, self._cache_full = cache, self.global_step, validation

    def _users(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert self._cache is not None
        return self.user_encoder(self._cache[hist], mask)

    # --- training ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.calibrated_scale = self.calibrate_scale()
        # transformers 5 hands models over in eval mode; dropout must be on while training.
        self.item_encoder.train()
        self.user_encoder.train()

    @torch.no_grad()
    def calibrate_scale(self, batches: int = 8) -> float:
        """Set the temperature to the one that minimises the untrained model's training loss on a few batches.

        A grid search over 1..:data:`MAX_SCALE` on the first ``batches`` training batches, with the
        same negatives as :meth:`click_loss`. Starting from a temperature that fits, the first steps
        improve the vectors instead of reshaping them.
        """
        self.item_encoder.eval()
        self.user_encoder.eval()
        self._refresh_cache()
        grid = torch.logspace(0, math.log10(MAX_SCALE), 41, device=self.device)
        losses = torch.zeros_like(grid)
        for batch in itertools.islice(self.trainer.datamodule.train_dataloader(), batches):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with inference_context(self.device, self.cfg.precision):
                unique = self.item_encoder(batch["input_ids"], batch["attention_mask"])
            logits, target, exclude = self._cosine_logits(batch, unique)
            losses += torch.stack([softmax_loss(logits, target, exclude, scale) for scale in grid])
        log_best = torch.log(grid[losses.argmin()]) if losses.any() else self.log_scale.detach().clone()
        # Every DDP rank saw other batches (or none): all agree on one value, or the replicas would drift apart.
        log_best = self.trainer.strategy.reduce(log_best.to(torch.float64), reduce_op="mean")
        self.log_scale.fill_(float(log_best))
        log.info("text model: softmax temperature calibrated to %.1f", float(self.score_scale))
        return float(self.score_scale)

    def on_train_epoch_start(self) -> None:
        self._refresh_cache()  # may flip the encoder to eval and back
        self.item_encoder.train()
        self.user_encoder.train()

    def _cosine_logits(self, batch: dict[str, torch.Tensor], unique: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Unscaled logits of each click against its negatives, the column of the click, and the
        entries to leave out (None = none); :func:`softmax_loss` turns them into the loss.

        ``unique`` holds the vectors of the batch's distinct candidate texts. The negatives are the
        K non-clicks of the impression and, with ``in_batch_negatives``, the batch's other clicks.
        """
        cands = unique[batch["cand_inverse"]]  # (B, K+1, d); column 0 is the click
        users = self._users(batch["hist"], batch["hist_mask"])
        # Scores in fp32 even under bf16 autocast: bf16 would round cosines to ~0.004 steps.
        with torch.autocast(self.device.type, enabled=False):
            users, cands = users.float(), cands.float()
            logits = torch.einsum("bd,bkd->bk", users, cands)
            if not self.cfg.in_batch_negatives:
                return logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), None
            # Other users' clicks as extra negatives: they are as popular as this click, so only
            # matching this user's interests (not item popularity) separates them. Same item = no negative.
            # Under DDP the clicks of every rank's shard of the batch, as one process would see them.
            clicks, rows, valid, offset = gather_clicks(self, cands[:, 0], batch["click_rows"])
            others = users @ clicks.T
            target = torch.arange(len(logits), device=logits.device) + offset
            mine = batch["click_rows"]
            same = (mine.unsqueeze(1) == rows.unsqueeze(0)) & (torch.arange(len(rows), device=rows.device).unsqueeze(0) != target.unsqueeze(1))
            exclude = torch.cat([same | ~valid.unsqueeze(0), torch.zeros_like(logits[:, 1:], dtype=torch.bool)], dim=1)
            return torch.cat([others, logits[:, 1:]], dim=1), target, exclude

    def click_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the click among its negatives (the standard news-rec objective)."""
        unique = self.item_encoder(batch["input_ids"], batch["attention_mask"])  # each candidate text once
        logits, target, exclude = self._cosine_logits(batch, unique)
        return softmax_loss(logits, target, exclude, self.score_scale)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        every = self.refresh_every
        if every and self.global_step - self._cache_step >= every:
            self.on_train_epoch_start()  # refresh the history cache, back in train mode
        loss = self.click_loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["hist"]))
        return loss

    # --- validation: mean per-impression AUC ----------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._refresh_cache(validation=True)
        self._auc_sum, self._auc_n = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        assert self._cache is not None
        users = self._users(batch["hist"], batch["hist_mask"])
        with torch.autocast(self.device.type, enabled=False):
            scores = torch.einsum("bd,bcd->bc", users.float(), self._cache[batch["cand"]])
        scores, labels, mask = scores.float().cpu().numpy(), batch["labels"].cpu().numpy(), batch["cand_mask"].cpu().numpy()
        if not np.isfinite(scores[mask]).all():  # the weights blew up: no AUC to keep the best of
            raise RecsysError(f"the text fine-tune diverged (scores not finite at step {self.trainer.global_step}); "
                              f"lower text.lr ({self.cfg.lr}) or text.head_lr ({self.cfg.head_lr})")
        for s, y, m in zip(scores, labels, mask, strict=True):
            self._auc_sum += auc(y[m], s[m])
            self._auc_n += 1

    def on_validation_epoch_end(self) -> None:
        # Each DDP rank saw a shard of the impressions: sum, then divide, for the exact global mean.
        totals = torch.tensor([self._auc_sum, float(self._auc_n)], device=self.device, dtype=torch.float64)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        self.log("val_auc", float(totals[0] / totals[1].clamp(min=1)), prog_bar=True)
        # The loggers' x for this validation: the optimiser steps taken, as train_metrics.json counts them
        # (Lightning would put a validation inside fit one step early, on the last training step's row).
        self.log("step", float(self.global_step), sync_dist=True)  # the same on every rank: the mean is exact

    # --- optimiser ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return fine_tune_optimizer(self, list(self.user_encoder.parameters()))


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``scale * logits`` with the ``exclude`` entries left out of the softmax.

    The entries are masked after scaling: masked first, their -inf would reach the temperature's
    gradient as 0 * -inf = NaN.
    """
    scaled = scale * logits
    if exclude is not None:
        scaled = scaled.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(scaled, target)


class BestWeights(L.Callback):
    """Keep a CPU copy of the weights with the best validation AUC, plus the history of validations."""

    def __init__(self) -> None:
        self.best_auc = float("-inf")
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._epoch = -1  # the epoch of the latest training step; -1 = before any training

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch = trainer.current_epoch

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics.get("val_auc", float("nan")))
        last = self.history[-1] if self.history else None
        if last is not None and last["step"] == trainer.global_step and last["val_auc"] is None:
            last["val_auc"] = value  # the check after fit, at the step whose epoch loss is recorded
        else:
            self.history.append({"epoch": self._epoch, "step": trainer.global_step, "val_auc": value, "train_loss": None})
        if value > self.best_auc:
            self.best_auc, self.best_epoch, self.best_step = value, self._epoch, trainer.global_step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning validates before the epoch's mean loss exists: attach it to the epoch's last entry now.
        loss = trainer.callback_metrics.get("train_loss_epoch")
        entries = [h for h in self.history if h["epoch"] == trainer.current_epoch]
        if entries and entries[-1]["step"] == trainer.global_step:
            entry = entries[-1]
        else:  # no validation at this epoch's end (none at all, or only mid-epoch ones)
            entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, "val_auc": None}
            self.history.append(entry)
        entry["train_loss"] = None if loss is None else float(loss)

    @property
    def last_validated_step(self) -> int | None:
        return max((h["step"] for h in self.history if h["val_auc"] is not None), default=None)


def _prepare(impressions: pl.DataFrame, cfg: TextConfig, tokens: ItemTokens) -> tuple[ClickSamples, ImpressionRows, np.ndarray, np.ndarray]:
    """Time split, optional subsamples, the samples/rows the module needs and the items their histories
    (training) and histories plus candidates (validation) read."""
    train, val = split_latest(impressions, cfg.val_fraction)
    train, val = (part if cap is None or part.height <= cap else part.sample(cap, seed=cfg.seed)
                  for part, cap in ((train, cfg.max_train_impressions), (val, cfg.max_val_impressions)))
    train, val = (part.sort(Col.TIME, Col.IMPRESSION) for part in (train, val))
    index = tokens.index()
    parts = []
    for frame in (train, val):
        hist = to_indices(frame[Col.HISTORY], index, cfg.history_len)
        cands, labels = candidate_rows(frame, index)
        parts.append((hist, cands, labels))
    samples = ClickSamples(*parts[0], negatives=cfg.negatives, seed=cfg.seed)
    val_rows = ImpressionRows(*parts[1])
    if len(samples) == 0:
        raise RecsysError(
            "no training impression has both a known clicked and a known non-clicked candidate; "
            "an interaction-only log fine-tunes on next items instead (recsys.text.next_item); or check that item ids match items.parquet")
    def unique(arrays: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, dtype=np.int64)

    val_used = unique([h for h, _, _ in val_rows.rows] + [c for _, c, _ in val_rows.rows])
    return samples, val_rows, unique(parts[0][0]), val_used


def train_text_model(impressions: pl.DataFrame, items: pl.DataFrame, cfg: TextConfig, out_dir: Path, *, show_progress: bool = True) -> Path:
    """Fine-tune the text model and save the weights of the best validation AUC.

    Args:
        impressions: Training impressions (contract schema); those without a known click and a
            known non-click are skipped. The latest ``cfg.val_fraction`` by time validates.
        items: The items table.
        cfg: Text settings.
        out_dir: Written: ``encoder/``, ``user_encoder.safetensors``, ``text_config.json``, ``train_metrics.json``,
            ``logs/metrics.csv`` (loss per step, validation AUC; see :mod:`recsys.evaluation.curves`).
        show_progress: Lightning's progress bar.

    Returns:
        ``out_dir``.

    Raises:
        RecsysError: nothing to train on, or a bad config/encoder.
        DataError: tables that break the data contract.
    """
    validate_impressions(impressions)
    validate_items(items)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device = resolve_device(cfg.device)
    model = trainable_text_model(cfg)
    tokens = ItemTokens.from_items(items, model.tokenizer, cfg.fields, cfg.max_tokens)
    samples, val_rows, train_rows, val_used = _prepare(impressions, cfg, tokens)
    module = TextModule(model, tokens, train_rows, val_used)
    log.info("text model: %d click samples, %d validation impressions; history cache of %d items (%d with validation), "
             "refreshed every %s steps", len(samples), len(val_rows), len(module.train_rows), len(module.all_rows), module.refresh_every or "epoch's")
    best = BestWeights()
    has_val = len(val_rows) > 0
    callbacks: list[L.Callback] = [best]
    if has_val:
        # Checked after each validation only: a run that max_steps ends mid-epoch has no val_auc at that epoch's end.
        callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience, check_on_train_epoch_end=False))
    devices, strategy = ddp_settings(cfg, device)
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator=lightning_accelerator(device), devices=devices, num_nodes=cfg.num_nodes, strategy=strategy,
            precision=lightning_precision(device, cfg.precision), max_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            accumulate_grad_batches=cfg.accumulate, gradient_clip_val=1.0, callbacks=callbacks, logger=fine_tune_loggers(Path(out_dir)),
            log_every_n_steps=log_every(len(samples), cfg),
            enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=show_progress, enable_model_summary=False,
            deterministic="warn",  # the same seed, the same model: CPU bf16 steps drift apart otherwise (warn only where CUDA has no such kernel)
            limit_val_batches=1.0 if has_val else 0, val_check_interval=cfg.val_check_steps and cfg.val_check_steps * cfg.accumulate,
            check_val_every_n_epoch=None if cfg.val_check_steps else 1, use_distributed_sampler=False, default_root_dir=str(out_dir),
        )
        clear_log(trainer, out_dir)
        data = TextDataModule(samples, val_rows, tokens, cfg.batch_size, cfg.seed, pin_memory(device))

        start = time.perf_counter()
        if has_val:
            trainer.validate(module, datamodule=data, verbose=False)  # the untrained model's AUC, for the record
        trainer.fit(module, datamodule=data)
        calibrated_scale = module.calibrated_scale
        if has_val and best.last_validated_step != trainer.global_step:
            # Validating every N steps leaves the steps after the last multiple of N unchecked.
            trainer.validate(module, datamodule=data, verbose=False)
        elapsed = time.perf_counter() - start
    if trainer.world_size > 1 and not trainer.is_global_zero:
        # The other ranks are copies of this command that Lightning started: rank 0 alone saves and goes on.
        torch.distributed.destroy_process_group()
        raise SystemExit(0)
    if best.state is not None:
        module.load_state_dict(best.state)
    kept = PRETRAINED if best.state is not None and best.best_step == 0 else FINE_TUNED
    if kept == PRETRAINED:
        log.warning("text model: no fine-tuning step beat the pretrained weights on validation (AUC %.4f): keeping them", best.best_auc)
    if trainer.is_global_zero:
        module.cpu()
        save_text_model(model, Path(out_dir))
        write_json({
            "best_epoch": best.best_epoch, "best_step": best.best_step, "best_val_auc": best.best_auc if best.state is not None else None,
            "history": best.history, "kept": kept, "train_samples": len(samples), "val_impressions": len(val_rows),
            "time_range": [str(impressions[Col.TIME].min()), str(impressions[Col.TIME].max())],
            "steps": trainer.global_step, "calibrated_scale": round(calibrated_scale, 3),
            "score_scale": round(float(module.score_scale.detach()), 3), "seconds": round(elapsed, 2), "precision": trainer.precision, "device": str(device),
            "processes": trainer.world_size,
        }, Path(out_dir) / METRICS_FILE)
    return Path(out_dir)


def pretrained_text_model(cfg: TextConfig | None = None) -> TextModel:
    """The frozen pretrained encoder with mean user pooling: the "frozen-encoder" baseline."""
    cfg = cfg or TextConfig()
    base = TextConfig.from_dict({**cfg.to_dict(), "user_pooling": "mean", "projection_dim": None})
    return build_text_model(base)
