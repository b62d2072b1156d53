"""The encoder fine-tune across processes (Lightning DDP): the Trainer's settings, which process is a rank copy,
and in-batch negatives gathered from every rank.

Under DDP each rank holds a shard of the batch. The in-batch negatives of a click are the *global* batch's
other clicks, as in one process with the whole batch: each rank's click vectors are gathered (padded to the
largest rank's batch, as ``all_gather`` needs equal shapes) with gradients flowing back to the rank that
computed them, so the loss and its gradient do not depend on how the batch is split.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from recsys.text.model import TextConfig


def gather_clicks(module: object, clicks: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every rank's click vectors and item rows, and where this rank's start.

    Args:
        module: the LightningModule (its ``all_gather``; one process: nothing is gathered).
        clicks: (B, d) this rank's click vectors.
        rows: (B,) their item rows.

    Returns:
        ``(vectors, rows, valid, offset)``: (N, d) and (N,) over all ranks (padding included), (N,) which are
        real clicks, and the index of this rank's first click in them.
    """
    trainer = getattr(module, "_trainer", None)
    world = trainer.world_size if trainer is not None else 1
    if world == 1:
        return clicks, rows, torch.ones_like(rows, dtype=torch.bool), 0
    sizes = module.all_gather(torch.tensor(len(clicks), device=clicks.device)).reshape(world)  # type: ignore[attr-defined]
    most = int(sizes.max())
    pad = most - len(clicks)
    vectors = module.all_gather(F.pad(clicks, (0, 0, 0, pad)), sync_grads=True).reshape(world * most, -1)  # type: ignore[attr-defined]
    all_rows = module.all_gather(F.pad(rows, (0, pad), value=-1)).reshape(world * most)  # type: ignore[attr-defined]
    valid = (torch.arange(most, device=clicks.device).unsqueeze(0) < sizes.unsqueeze(1)).reshape(world * most)
    return vectors, all_rows, valid, trainer.global_rank * most


def ddp_rank_copy() -> bool:
    """Whether this process is a copy of the command that Lightning's DDP launcher started for another rank
    (``LOCAL_RANK`` > 0), or the first process of another node (``NODE_RANK`` > 0): it only trains the encoder."""
    return int(os.environ.get("LOCAL_RANK") or 0) > 0 or int(os.environ.get("NODE_RANK") or 0) > 0


def ddp_settings(cfg: TextConfig, device: torch.device) -> tuple[int | str, str]:
    """The Trainer's ``devices`` and ``strategy``: Lightning's ``ddp`` (gloo on CPU, NCCL on GPUs) when the run has
    more than one process in all, else one process (every GPU on CUDA when ``devices`` is unset, as before)."""
    devices: int | str = cfg.devices if cfg.devices is not None else ("auto" if device.type == "cuda" else 1)
    many = cfg.num_nodes > 1 or (isinstance(devices, int) and devices > 1)
    # Unused parameters: the encoder's pooler (mean pooling never reads it) and, with LoRA, the frozen weights.
    return devices, "ddp_find_unused_parameters_true" if many else "auto"
