"""Text-interest features of each (impression, candidate) for the ranker.

* ``text_score``: user vector . candidate vector (the model's interest score);
* ``text_max_sim`` / ``text_mean_sim``: max / mean cosine between the candidate and the history items;
* ``text_recent_sim``: mean cosine to the user's last :data:`RECENT` clicks;
* ``text_category_sim``: mean cosine to the history items of the candidate's own category. Within one
  category the other similarities are dominated by what the category's items share; this one compares the
  candidate with the user's earlier picks *of its kind*, the finer taste (a sub-topic, a style) that the
  category affinity of the behaviour features cannot see.

Vectors come from text alone, so items no log has seen (cold start) score like any other. Candidate
ids missing from the item vectors get null features; unknown history ids are skipped; a user with
no known history gets the learned default vector (``text_score``) and null similarities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from recsys.data import Col
from recsys.text.encode import ItemVectors
from recsys.errors import ModelMismatchError
from recsys.text.data import candidate_indices, pad, to_indices
from recsys.text.model import TextModel

log = logging.getLogger(__name__)

TEXT_FEATURES = ("text_score", "text_max_sim", "text_mean_sim", "text_recent_sim", "text_category_sim")
RECENT = 3
_CHUNK = 256  # impressions per batched matmul: (chunk, candidates, history) floats stay small


def _vector_table(model: TextModel, vectors: ItemVectors) -> torch.Tensor:
    """Item vectors plus a zero padding row at the end; checks they fit the model."""
    if vectors.dim != model.dim:
        raise ModelMismatchError(f"item vectors have dimension {vectors.dim}, the text model {model.dim}; re-encode with `recsys encode`")
    if vectors.fingerprint != model.fingerprint:
        log.warning("item vectors come from another encoder (fingerprint %s, model %s); scores may be meaningless",
                    vectors.fingerprint[:12], model.fingerprint[:12])
    table = torch.from_numpy(np.array(vectors.vectors, dtype=np.float32))  # a writable copy
    return torch.cat([table, torch.zeros(1, table.shape[1])])


def _histories(model: TextModel, vectors: ItemVectors, histories: pl.Series) -> list[np.ndarray]:
    return to_indices(histories, vectors.index(), model.config.history_len)


@torch.inference_mode()
def _users(model: TextModel, table: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    encoder = model.user_encoder.to("cpu").eval()
    return encoder(table[hist], mask).float()


def user_vectors(model: TextModel, vectors: ItemVectors, histories: Sequence[Sequence[str]]) -> np.ndarray:
    """User vectors from history item ids (unknown ids skipped, the last ``history_len`` kept).

    Args:
        model: The text model (its user encoder pools the history vectors).
        vectors: Item vectors of that model's encoder.
        histories: One list of item ids per user, oldest first.

    Returns:
        (len(histories), dim) float32; an empty history gives the learned default vector.

    Raises:
        ModelMismatchError: vectors of another dimension than the model.
    """
    table = _vector_table(model, vectors)
    rows = _histories(model, vectors, pl.Series(list(histories), dtype=pl.List(pl.String())))
    out = np.zeros((len(rows), model.dim), dtype=np.float32)
    for start in range(0, len(rows), 4 * _CHUNK):
        hist, mask = pad(rows[start : start + 4 * _CHUNK], len(table) - 1)
        out[start : start + len(hist)] = _users(model, table, hist, mask).numpy()
    return out


def text_features(model: TextModel, vectors: ItemVectors, impressions: pl.DataFrame, categories: np.ndarray | None = None) -> pl.DataFrame:
    """One row per (impression, candidate): impression id, item id and :data:`TEXT_FEATURES` (Float32, null when unknown).

    Args:
        model: The text model.
        vectors: Item vectors of the model's encoder (the whole catalogue).
        impressions: Impressions (contract schema; labels are not read).
        categories: Integer category code of each vector row (``vectors.ids`` order, -1 = none); without
            it ``text_category_sim`` is null.

    Returns:
        Rows in the order of the impressions and their candidates.

    Raises:
        ModelMismatchError: vectors of another dimension than the model.
    """
    table = _vector_table(model, vectors)
    pad_row = len(table) - 1
    codes = torch.full((len(table),), -1, dtype=torch.long)
    if categories is not None:
        codes[:pad_row] = torch.from_numpy(np.asarray(categories, dtype=np.int64))
    hist_rows = _histories(model, vectors, impressions[Col.HISTORY])
    cand_rows = candidate_indices(impressions[Col.CANDIDATES], vectors.index())
    counts = np.asarray([len(c) for c in cand_rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    feats = np.full((int(offsets[-1]), len(TEXT_FEATURES)), np.nan, dtype=np.float32)
    # Impressions of similar candidate counts together: little padding in the batched matmul.
    order = np.argsort(counts, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), _CHUNK):
            chunk = order[start : start + _CHUNK]
            hist, hmask = pad([hist_rows[i] for i in chunk], pad_row)
            cand, cmask = pad([cand_rows[i] for i in chunk], pad_row)
            cand = torch.where(cand < 0, pad_row, cand)
            users = _users(model, table, hist, hmask)
            cvec, hvec = table[cand], table[hist]
            sims = torch.bmm(cvec, hvec.transpose(1, 2))  # (b, C, H) cosines: vectors are unit length
            hm = hmask.unsqueeze(1)
            n_hist = hmask.sum(1).view(-1, 1, 1)
            pos = torch.arange(hist.shape[1]).view(1, 1, -1)
            recent = hm & (pos >= n_hist - RECENT)  # histories are oldest first, right-padded
            cand_codes = codes[cand].unsqueeze(2)
            kin = hm & (cand_codes == codes[hist].unsqueeze(1)) & (cand_codes >= 0)  # history items of the candidate's category
            n_kin = kin.sum(-1)
            block = torch.stack([
                torch.einsum("bcd,bd->bc", cvec, users),
                sims.masked_fill(~hm, float("-inf")).amax(-1),
                (sims * hm).sum(-1) / n_hist.squeeze(-1).clamp(min=1),
                (sims * recent).sum(-1) / recent.sum(-1).clamp(min=1),
                ((sims * kin).sum(-1) / n_kin.clamp(min=1)).masked_fill(n_kin == 0, float("nan")),
            ], dim=-1).numpy()
            no_hist = (n_hist.view(-1) == 0).numpy()
            block[no_hist, :, 1:] = np.nan
            for j, i in enumerate(chunk):
                n = counts[i]
                rows = block[j, :n]
                rows[cand_rows[i] < 0] = np.nan  # unknown candidate: no vector, no features
                feats[offsets[i] : offsets[i] + n] = rows
    listed = impressions.filter(pl.col(Col.CANDIDATES).list.len() > 0)  # explode would turn [] into a null row
    long = listed.select(Col.IMPRESSION, pl.col(Col.CANDIDATES).alias(Col.ITEM)).explode(Col.ITEM)
    return long.with_columns(
        pl.Series(name, feats[:, k], dtype=pl.Float32()).fill_nan(None) for k, name in enumerate(TEXT_FEATURES)
    )
