"""What both encoder fine-tunes share: the trainable model, the optimiser, the temperature's bounds, which
weights a run kept, and the log the report's training curve is drawn from.

The impression fine-tune (:mod:`recsys.text.train`) scores clicks against the shown non-clicks; the interaction
fine-tune (:mod:`recsys.text.next_item`) scores next items against the batch's other items. Both learn a softmax
temperature (CLIP-style) next to the encoder, both keep the weights of their best validation, the pretrained ones
when no step beats them, and both write ``train_metrics.json``, which :func:`kept_weights` puts in words, and
``logs/metrics.csv`` (:func:`fine_tune_loggers`), which :mod:`recsys.evaluation.curves` plots.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from transformers import get_linear_schedule_with_warmup

from recsys.evaluation.curves import LOG_DIR
from recsys.io import read_json
from recsys.text.model import TextConfig, TextModel, build_text_model, freeze_lower_layers

# Scores are cosines in [-1, 1]; a softmax over them needs a temperature (sentence-transformers uses 20).
SCORE_SCALE = 20.0
# The temperature must settle within a short run (tens of steps), so it learns much faster than the weights.
SCALE_LR = 0.05
# A cap on the learned temperature, as CLIP has: beyond it one pair's score decides the whole softmax.
MAX_SCALE = 100.0
METRICS_FILE = "train_metrics.json"
# Which weights a fine-tune saves: its best validation point, which is the pretrained one if no step beat it.
FINE_TUNED, PRETRAINED = "fine-tuned", "pretrained"
LOG_EVERY_STEPS = 10  # the training loss is logged at least this often (more often on short runs: about 20 points)


def capped_scale(log_scale: torch.Tensor) -> torch.Tensor:
    """The softmax temperature a learned ``log_scale`` stands for: its exp, capped at :data:`MAX_SCALE`."""
    return log_scale.float().clamp(max=math.log(MAX_SCALE)).exp()


def trainable_text_model(cfg: TextConfig) -> TextModel:
    """The text model of `cfg` ready to fine-tune: its lowest ``freeze_layers`` frozen, LoRA adapters when ``lora_rank``."""
    model = build_text_model(cfg)
    freeze_lower_layers(model.item_encoder.bert, cfg.freeze_layers)
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.1, target_modules=["query", "value"])
        model.item_encoder.bert = get_peft_model(model.item_encoder.bert, lora)
    return model


def fine_tune_optimizer(module: L.LightningModule, head: list[torch.nn.Parameter]) -> dict[str, Any]:
    """AdamW with a linear warm-up and decay over the run for a fine-tune `module` (``item_encoder``, ``log_scale``,
    ``cfg``): the encoder's trainable weights at ``cfg.lr``, `head` and the projection at ``cfg.head_lr``, the
    temperature at :data:`SCALE_LR`."""
    encoder, cfg = module.item_encoder, module.cfg
    enc = [p for p in encoder.bert.parameters() if p.requires_grad]
    head = head + (list(encoder.projection.parameters()) if encoder.projection is not None else [])
    groups = [{"params": enc, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}]
    groups.append({"params": [module.log_scale], "lr": SCALE_LR, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
    total = int(module.trainer.estimated_stepping_batches)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, total // 10), num_training_steps=max(total, 1))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def kept_weights(out_dir: Path) -> str | None:
    """In words, for a report: which weights the fine-tune in ``out_dir`` kept and the validation figures that chose
    them (AUC for the impression fine-tune, dev NDCG@10 for the next-item one, :mod:`recsys.text.next_item`)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return None
    m = read_json(path)
    metric = m.get("metric", "val_auc")
    name = "validation AUC" if metric == "val_auc" else "dev " + metric.removeprefix("val_").upper()
    start = next((h[metric] for h in m.get("history", []) if h["step"] == 0 and h[metric] is not None), None)
    if m.get(f"best_{metric}") is None or start is None:
        return f"{m.get('kept', FINE_TUNED)} (no validation)"
    if m.get("kept") == PRETRAINED:
        return f"{PRETRAINED}: no fine-tuning step beat {name} {start:.4f} of the pretrained weights"
    return f"{FINE_TUNED}: {name} {m[f'best_{metric}']:.4f} at step {m['best_step']} against {start:.4f} pretrained"


def log_every(samples: int, cfg: TextConfig) -> int:
    """Lightning's ``log_every_n_steps`` for a fine-tune over `samples` examples: about 20 points on a short run."""
    planned = math.ceil(samples / (cfg.batch_size * cfg.accumulate)) * cfg.epochs
    return max(1, min(LOG_EVERY_STEPS, min(planned, cfg.max_steps or planned) // 20))


def fine_tune_loggers(out_dir: Path) -> list[Logger]:
    """CSV (always) and TensorBoard (when installed) loggers, both in ``out_dir/logs/`` (the report's training curve).

    A fixed, empty version name: a re-run replaces the log instead of adding ``version_N/``. Lightning's
    loggers write on the global rank zero only, so DDP needs nothing more.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=out_dir, name=LOG_DIR, version="")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(save_dir=out_dir, name=LOG_DIR, version="", default_hp_metric=False))
    return loggers


def clear_log(trainer: L.Trainer, out_dir: Path) -> None:
    """Remove the previous run's log before this run writes its own (TensorBoard would show both runs at once);
    on the global rank zero only, the one the loggers write on."""
    if trainer.is_global_zero:
        shutil.rmtree(Path(out_dir) / LOG_DIR, ignore_errors=True)
