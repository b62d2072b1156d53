"""Training data of the text model: tokenised items, click samples, length buckets, collation.

Items are tokenised once into a padded id matrix (:class:`ItemTokens`). Impressions become one
sample per clicked candidate with K non-clicked candidates of the same impression drawn afresh each
time the sample is read. Histories are item *indices* into that matrix: their vectors come from a
cache the module refreshes each epoch, so a batch runs the encoder only over its unique candidates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
import functools

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from transformers import PreTrainedTokenizerBase

from recsys.data import Col, item_text


@dataclass
class ItemTokens:
    """Every item's token ids, truncated to the budget; row ``n`` (= len(ids)) is the padding item."""

    ids: list[str]
    input_ids: np.ndarray  # (n, max_tokens) int64, right-padded with the tokenizer's pad id
    lengths: np.ndarray  # (n,) int64, tokens per item including [CLS]/[SEP]
    pad_id: int

    @classmethod
    def from_items(cls, items: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, fields: Sequence[str], max_tokens: int) -> ItemTokens:
        """Tokenise :func:`recsys.data.item_text` of every item."""
        texts = item_text(items, tuple(fields)).to_list()
        enc = tokenizer(texts, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="np")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = enc["input_ids"].astype(np.int64).reshape(len(texts), max_tokens)
        lengths = enc["attention_mask"].sum(axis=1).astype(np.int64).reshape(len(texts))
        return cls(items[Col.ITEM].to_list(), input_ids, lengths, int(pad_id))

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids)}

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of ``rows``, cut to the longest of them (no wasted padding)."""
        width = int(self.lengths[rows].max()) if len(rows) else 1
        ids = torch.from_numpy(self.input_ids[rows, :width])
        mask = (torch.arange(width).unsqueeze(0) < torch.from_numpy(self.lengths[rows]).unsqueeze(1)).long()
        return ids, mask


def to_indices(lists: pl.Series, index: dict[str, int], keep_last: int | None = None) -> list[np.ndarray]:
    """Map each list of item ids to item indices; unknown ids dropped; only the last ``keep_last`` kept."""
    table = pl.DataFrame({"id": list(index), "idx": list(index.values())}, schema={"id": pl.String(), "idx": pl.Int64()})
    long = (
        pl.DataFrame({"ids": lists}).with_row_index("row").explode("ids").with_row_index("pos")
        .join(table, left_on="ids", right_on="id", how="inner")
    )
    grouped = long.group_by("row").agg(pl.col("idx").sort_by("pos"))
    if keep_last is not None:
        grouped = grouped.with_columns(pl.col("idx").list.tail(keep_last))
    # Rows with no known id (or an empty list, which explode may drop) come back as empty arrays.
    found = dict(zip(grouped["row"].to_list(), grouped["idx"].to_list(), strict=True))
    empty = np.zeros(0, dtype=np.int64)
    return [np.asarray(found[r], dtype=np.int64) if r in found else empty for r in range(len(lists))]


def candidate_indices(candidates: pl.Series, index: dict[str, int]) -> list[np.ndarray]:
    """Candidate indices of each impression, position by position, -1 for ids not in ``index``."""
    return [np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids)) for ids in candidates.to_list()]


def candidate_rows(impressions: pl.DataFrame, index: dict[str, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Candidate indices (-1 for unknown ids) and labels (-1 when unlabelled) of each impression."""
    cands = candidate_indices(impressions[Col.CANDIDATES], index)
    labels = [np.asarray(y, dtype=np.int64) if y is not None else np.full(len(c), -1, dtype=np.int64)
              for c, y in zip(cands, impressions[Col.LABELS].to_list(), strict=True)]
    return cands, labels


class ClickSamples(Dataset):
    """One sample per known clicked candidate: (history, [clicked, K sampled non-clicked])."""

    def __init__(self, histories: list[np.ndarray], cands: list[np.ndarray], labels: list[np.ndarray], negatives: int, seed: int) -> None:
        self.histories, self.negatives = histories, negatives
        self.neg_pool: list[np.ndarray] = []
        sample_imp, sample_pos = [], []
        for i, (c, y) in enumerate(zip(cands, labels, strict=True)):
            known = c >= 0
            pos, neg = c[known & (y == 1)], c[known & (y == 0)]
            self.neg_pool.append(neg)
            if len(pos) and len(neg):
                sample_imp.extend([i] * len(pos))
                sample_pos.extend(pos.tolist())
        self.sample_imp = np.asarray(sample_imp, dtype=np.int64)
        self.sample_pos = np.asarray(sample_pos, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.sample_imp)

    def history_lengths(self) -> np.ndarray:
        return np.asarray([len(self.histories[i]) for i in self.sample_imp], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        imp = self.sample_imp[i]
        pool = self.neg_pool[imp]
        negs = self.rng.choice(pool, self.negatives, replace=len(pool) < self.negatives)
        return self.histories[imp], np.concatenate([[self.sample_pos[i]], negs])


class ImpressionRows(Dataset):
    """Validation impressions with >=1 known click and >=1 known non-click: (history, candidates, labels)."""

    def __init__(self, histories: list[np.ndarray], cands: list[np.ndarray], labels: list[np.ndarray]) -> None:
        self.rows = []
        for h, c, y in zip(histories, cands, labels, strict=True):
            known = c >= 0
            c, y = c[known], y[known]
            if (y == 1).any() and (y == 0).any():
                self.rows.append((h, c, y))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rows[i]


def pad(arrays: Sequence[np.ndarray], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-d int arrays into (B, L) with a boolean presence mask (L >= 1)."""
    width = max(1, max((len(a) for a in arrays), default=0))
    out = np.full((len(arrays), width), fill, dtype=np.int64)
    for r, a in enumerate(arrays):
        out[r, : len(a)] = a
    lengths = torch.tensor([len(a) for a in arrays])
    return torch.from_numpy(out), torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)


class TrainCollate:
    """Batch click samples; tokenise each unique candidate once (histories come from the cache)."""

    def __init__(self, tokens: ItemTokens) -> None:
        self.tokens = tokens

    def __call__(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        hist, hist_mask = pad([h for h, _ in samples], len(self.tokens))
        cands = np.stack([c for _, c in samples])
        uniq, inverse = np.unique(cands, return_inverse=True)
        input_ids, attention_mask = self.tokens.batch(uniq)
        return {
            "hist": hist, "hist_mask": hist_mask, "input_ids": input_ids, "attention_mask": attention_mask,
            "cand_inverse": torch.from_numpy(inverse.reshape(cands.shape).astype(np.int64)),
            "click_rows": torch.from_numpy(cands[:, 0].astype(np.int64)),  # which items were clicked (in-batch negatives across ranks)
        }


def collate_impressions(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pad_row: int) -> dict[str, torch.Tensor]:
    """Batch validation impressions: padded histories, candidates and labels (-1 where padded)."""
    hist, hist_mask = pad([h for h, _, _ in rows], pad_row)
    cand, cand_mask = pad([c for _, c, _ in rows], pad_row)
    labels, _ = pad([y for _, _, y in rows], -1)
    return {"hist": hist, "hist_mask": hist_mask, "cand": cand, "cand_mask": cand_mask, "labels": labels}


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of samples of similar history length (less padding), sharded for DDP.

    Samples are shuffled, cut into pools of 50 batches, sorted by length inside each pool, batched,
    and the batches shuffled again. Every rank gets the same number of batches (DDP needs that).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
        usable = (len(batches) // self.world_size) * self.world_size or len(batches)
        return batches[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch += 1  # a fresh order each epoch even when nobody calls set_epoch
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class TextDataModule(L.LightningDataModule):
    """Click samples in length buckets for training; impressions for validation AUC."""

    def __init__(self, samples: ClickSamples, val_rows: ImpressionRows, tokens: ItemTokens, batch_size: int, seed: int, pin_memory: bool) -> None:
        super().__init__()
        self.samples, self.val_rows, self.tokens = samples, val_rows, tokens
        self.batch_size, self.seed, self.pin_memory = batch_size, seed, pin_memory

    def train_dataloader(self) -> DataLoader:
        # Sharding happens in the sampler (DDP-safe), so it is built once the Trainer knows rank and world size.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = BucketBatchSampler(self.samples.history_lengths(), self.batch_size, self.seed, rank, world)
        return DataLoader(self.samples, batch_sampler=sampler, collate_fn=TrainCollate(self.tokens), pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        rows = self.val_rows
        if self.trainer is not None and self.trainer.world_size > 1:
            rows = Subset(rows, range(self.trainer.global_rank, len(rows), self.trainer.world_size))
        return DataLoader(rows, batch_size=64, collate_fn=functools.partial(collate_impressions, pad_row=len(self.tokens)),
                          pin_memory=self.pin_memory)
