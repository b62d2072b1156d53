"""Catalogue encoding: every item's text vector, fast, cached on disk by encoder fingerprint.

:func:`encode_items` sorts items by token length so each batch carries little padding, runs under
``inference_mode`` in bf16 where the device has it (bf16 weights on a bf16 CPU, autocast on GPU),
restores the caller's order and keeps the result as :class:`ItemVectors` (Parquet, no pickle).
A cache directory keyed by the encoder fingerprint and the item texts makes re-runs free.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recsys.data import Col, item_text, validate_items
from recsys.text.device import inference_context, inference_weight_dtype, resolve_device
from recsys.errors import DataError
from recsys.io import atomic_path
from recsys.text.data import ItemTokens
from recsys.text.model import ItemEncoder, TextModel

log = logging.getLogger(__name__)

VECTOR = "vector"
_FINGERPRINT_KEY = b"recsys.encoder_fingerprint"


@dataclass
class ItemVectors:
    """Item ids and their L2-normalised text vectors (float32), tagged with the encoder fingerprint."""

    ids: list[str]
    vectors: np.ndarray
    fingerprint: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise ValueError(f"vectors of shape {self.vectors.shape} do not match {len(self.ids)} ids")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index(self) -> dict[str, int]:
        """Item id -> row of :attr:`vectors`."""
        return {item: i for i, item in enumerate(self.ids)}

    def save(self, path: str | Path) -> Path:
        """Write Parquet (``item_id``, ``vector`` as fixed-size float32 lists) with the fingerprint in its metadata."""
        flat = pa.array(np.ascontiguousarray(self.vectors, dtype=np.float32).reshape(-1))
        table = pa.table({Col.ITEM: pa.array(self.ids, pa.string()), VECTOR: pa.FixedSizeListArray.from_arrays(flat, self.dim)})
        table = table.replace_schema_metadata({_FINGERPRINT_KEY: self.fingerprint.encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ItemVectors:
        """Read a file written by :meth:`save`.

        Raises:
            DataError: the file is not an item vectors table.
        """
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if Col.ITEM not in table.column_names or VECTOR not in table.column_names or _FINGERPRINT_KEY not in meta:
            raise DataError(path, None, VECTOR, "not an item vectors file (needs item_id, vector and an encoder fingerprint); write it with `recsys encode`")
        vec = table.column(VECTOR).combine_chunks()
        dim = vec.type.list_size
        values = vec.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return cls(table.column(Col.ITEM).to_pylist(), values.reshape(len(table), dim), meta[_FINGERPRINT_KEY].decode())


@contextmanager
def _inference_copy(encoder: ItemEncoder, device: torch.device, precision: str, cast_weights: bool) -> Iterator[ItemEncoder]:
    """The encoder in eval mode on ``device``; a bf16-weight copy on a bf16 CPU when ``cast_weights``."""
    dtype = inference_weight_dtype(device, precision) if cast_weights else torch.float32
    if dtype != torch.float32:
        yield copy.deepcopy(encoder).to(device=device, dtype=dtype).eval()
        return
    was_training = encoder.training
    encoder.eval()
    try:
        yield encoder.to(device)
    finally:
        encoder.train(was_training)


def embed_rows(
    encoder: ItemEncoder,
    tokens: ItemTokens,
    rows: np.ndarray,
    *,
    device: torch.device,
    precision: str = "auto",
    batch_size: int = 256,
    cast_weights: bool = True,
    show_progress: bool = False,
) -> torch.Tensor:
    """Vectors of item ``rows`` of ``tokens`` in the order given, computed in length-sorted batches.

    Args:
        encoder: The item encoder (left in the train/eval mode it came in).
        tokens: Tokenised items.
        rows: Item rows to encode.
        device: Where to run.
        precision: ``"auto"`` | ``"bf16"`` | ``"fp32"`` (see :mod:`recsys.text.device`).
        batch_size: Items per forward pass.
        cast_weights: Allow a bf16-weight copy on a bf16 CPU (faster than autocast; for one-off encodes).
        show_progress: tqdm bar.

    Returns:
        (len(rows), dim) float32 tensor on ``device``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = torch.empty(len(rows), encoder.dim, dtype=torch.float32, device=device)
    # Longest first: the first batch shows the peak memory at once, and padding stays small.
    order = np.argsort(-tokens.lengths[rows], kind="stable")
    with _inference_copy(encoder, device, precision, cast_weights) as enc, inference_context(device, precision):
        for start in tqdm(range(0, len(rows), batch_size), desc="encode items", unit="batch", disable=not show_progress):
            pos = order[start : start + batch_size]
            input_ids, mask = tokens.batch(rows[pos])
            vecs = enc(input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
            out[torch.from_numpy(pos).to(device)] = vecs.float()
    return out


def _cache_file(cache_dir: Path, model: TextModel, items: pl.DataFrame) -> tuple[Path, str]:
    fingerprint = model.fingerprint
    h = hashlib.blake2b(fingerprint.encode(), digest_size=12)
    for column in (items[Col.ITEM], item_text(items, model.config.fields)):
        h.update("\x1f".join(column.to_list()).encode())
        h.update(b"\x1e")
    return cache_dir / f"item_vectors-{h.hexdigest()}.parquet", fingerprint


def encode_items(
    model: TextModel,
    items: pl.DataFrame,
    *,
    batch_size: int = 256,
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> ItemVectors:
    """Encode the whole catalogue (cold-start items included: a vector needs only text).

    Args:
        model: The text model (its config picks device, precision, fields and token budget).
        items: The items table (validated here).
        batch_size: Items per forward pass.
        cache_dir: Reuse/keep the result here, keyed by encoder fingerprint + ids + texts.
        show_progress: tqdm bar.

    Returns:
        Vectors in the order of ``items``.

    Raises:
        DataError: the items table breaks the data contract.
    """
    validate_items(items)
    cache, fingerprint = (None, model.fingerprint) if cache_dir is None else _cache_file(Path(cache_dir), model, items)
    if cache is not None and cache.exists():
        log.info("item vectors from cache %s", cache)
        return ItemVectors.load(cache)
    cfg = model.config
    device = resolve_device(cfg.device)
    tokens = ItemTokens.from_items(items, model.tokenizer, cfg.fields, cfg.max_tokens)
    start = time.perf_counter()
    vectors = embed_rows(model.item_encoder, tokens, np.arange(len(tokens)), device=device, precision=cfg.precision,
                         batch_size=batch_size, show_progress=show_progress)
    elapsed = time.perf_counter() - start
    log.info("encoded %d items in %.1fs (%.0f items/s) on %s", len(tokens), elapsed, len(tokens) / max(elapsed, 1e-9), device)
    result = ItemVectors(tokens.ids, vectors.cpu().numpy(), fingerprint)
    if cache is not None:
        result.save(cache)
    return result
