"""The pairs feature family: item-item, metadata and text signals of (history, candidate item) pairs.

On top of every retrieval source's score and rank (:mod:`recsys.candidates.retrieval`), each pair gets:

* ``hist_len``, ``log_pop``                       the user's uncapped history length, the item's log(1 + interactions)
* ``trans_last``, ``trans_rev``, ``cooc_last``,   item-item signals of the user's *last* item alone
  ``ease_last``                                   (P(cand | last), P(last | cand), cosine, EASE weight)
* ``text_last_<enc>``, ``text_max_<enc>``,        per text encoder (``ft`` fine-tuned, ``frozen`` pretrained):
  ``text_user_<enc>``                             cosine to the last item, the best of the recent items, and
                                                  to the recency-weighted mean of the recent items
* ``same_category_last``, ``category_share``,     metadata agreement with the last item / share of the
  ``same_brand_last``, ``brand_share``            recent items with the candidate's category (brand = first tag)
* ``seen_count``, ``seen_ago``                    how often and how many items ago the user had the candidate
                                                  (the whole history: repeat candidates, :mod:`recsys.candidates.repeats`)

All statistics come from the fitted :class:`~recsys.candidates.retrieval.Retriever`, i.e. only from the data allowed
when it was fitted. Work follows the (request, candidate) pairs, never dense rows of the catalogue: item-item
values are binary-searched in the sparse matrices, text cosines multiply each request's few query vectors with
its own candidates (:func:`_text_similarities`), so time and memory grow with pairs, not with pairs x items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import Col
from recsys.candidates.retrieval import ITEM_INDEX, ROW, Retriever

def value_codes(values: pl.Series) -> np.ndarray:
    """Integer codes of a string column (equal strings, equal codes), -1 where missing."""
    return values.cast(pl.Categorical()).to_physical().cast(pl.Int64()).fill_null(-1).to_numpy().copy()


def item_codes(items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of each item's category and brand (first tag), -1 where missing, in ``items`` order."""
    return value_codes(items[Col.CATEGORY]), value_codes(items[Col.TAGS].list.first())


def _sorted_keys(matrix: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """(row * n_cols + col, value) of every stored entry, keys ascending: pair lookups by binary search."""
    m = sp.csr_matrix(matrix)
    m.sum_duplicates()  # canonical: indices sorted within rows, so the keys come out ascending
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return rows * m.shape[1] + m.indices.astype(np.int64), m.data.astype(np.float32)


def pair_lookup(matrix: np.ndarray | sp.spmatrix | None, rows: np.ndarray, cols: np.ndarray,
                keys: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for every pair (0 where rows < 0, the entry is not stored or there is no matrix).

    Works on the pairs only, never on dense rows of the catalogue: memory and time follow the number of
    pairs, not pairs x items. `keys` (from :func:`_sorted_keys`) saves re-sorting a sparse matrix per call.
    """
    out = np.zeros(len(rows), dtype=np.float32)
    ok = rows >= 0
    if matrix is None or not ok.any():
        return out
    if not sp.issparse(matrix):
        out[ok] = np.asarray(matrix)[rows[ok], cols[ok]]
        return out
    stored, values = keys if keys is not None else _sorted_keys(matrix)
    wanted = rows[ok].astype(np.int64) * matrix.shape[1] + cols[ok]
    at = np.minimum(np.searchsorted(stored, wanted), max(len(stored) - 1, 0))
    found = stored[at] == wanted if len(stored) else np.zeros(len(wanted), dtype=bool)
    out[ok] = np.where(found, values[at] if len(stored) else 0.0, 0.0)
    return out


def _share(codes: np.ndarray, recent: np.ndarray, local: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Share of each row's recent items (-1 = none) whose code equals the candidate's (missing codes never match)."""
    rec = np.where(recent >= 0, codes[np.maximum(recent, 0)], -2)[local]  # (pairs, recent items)
    cand = codes[items][:, None]
    valid = (recent >= 0)[local].sum(axis=1)
    return ((rec == cand) & (cand >= 0)).sum(axis=1) / np.maximum(valid, 1)


# Measured on the 2-core CPU: a dense product costs ~0.03 us per (query, item) entry, a padded gather ~3 us per pair.
_GATHER_OVER_GEMM = 100
_PADDED_ROWS = 64  # rows per padded block: ~35 MB at 350 candidates x 384 dimensions


def _text_similarities(v: np.ndarray, queries: np.ndarray, local: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(pairs, q) cosine of each pair's candidate to its row's q query vectors (`queries`: rows x q x d).

    Two exact ways, the cheaper one chosen per batch:

    * one dense product of all queries against the batch's distinct candidate items (BLAS; best when the
      catalogue is small, so that the candidate lists overlap);
    * each row's own candidates gathered into a padded block and multiplied row by row (best for large
      catalogues, whose candidate lists hardly overlap): memory rows x longest list x d, never rows x catalogue.
    """
    unique, inverse = np.unique(items, return_inverse=True)
    rows, q = queries.shape[:2]
    if q * len(unique) * rows <= _GATHER_OVER_GEMM * len(items):
        dense = (queries.reshape(rows * q, -1) @ v[unique].T).reshape(rows, q, len(unique))
        return dense[local, :, inverse]
    out = np.empty((len(items), q), dtype=np.float32)
    bounds = np.searchsorted(local, np.arange(0, rows + _PADDED_ROWS, _PADDED_ROWS).clip(max=rows))
    for b, start in enumerate(range(0, rows, _PADDED_ROWS)):
        lo, hi = bounds[b], bounds[b + 1]
        sub = local[lo:hi] - start
        counts = np.bincount(sub, minlength=min(_PADDED_ROWS, rows - start))
        slot = np.arange(hi - lo) - np.concatenate([[0], np.cumsum(counts)[:-1]])[sub]  # position within its row
        padded = np.zeros((len(counts), int(counts.max(initial=1)), v.shape[1]), dtype=np.float32)
        padded[sub, slot] = v[items[lo:hi]]
        out[lo:hi] = np.einsum("rqd,rcd->rqc", queries[start : start + len(counts)], padded)[sub, :, slot]
    return out


def seen_before(sequences: Sequence[np.ndarray], rows: np.ndarray, items: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, item) pair: how many times the row's sequence (oldest first) holds the item, and how many items ago
    it last did (1 = the last item; NaN if never). One sort of the sequences' entries, one binary search per pair."""
    sizes = np.array([len(s) for s in sequences], dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sizes.sum() else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), sizes)
    ago = np.cumsum(sizes)[owner] - np.arange(len(flat))  # the last entry of a sequence is 1 ago
    keys = owner * n_items + flat
    order = np.lexsort((ago, keys))  # by key, the most recent first
    keys, ago = keys[order], ago[order]
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[first, len(keys)])
    unique = keys[first]
    wanted = rows.astype(np.int64) * n_items + items
    at = np.minimum(np.searchsorted(unique, wanted), max(len(unique) - 1, 0))
    found = (unique[at] == wanted) if len(unique) else np.zeros(len(wanted), dtype=bool)
    return (np.where(found, counts[at] if len(unique) else 0, 0).astype(np.float32),
            np.where(found, ago[first][at] if len(unique) else 0, np.nan).astype(np.float32))


def pair_features(
    retriever: Retriever,
    histories: Sequence[np.ndarray],
    candidates: pl.DataFrame,
    vectors: Mapping[str, np.ndarray],
    codes: tuple[np.ndarray, np.ndarray],
    batch_size: int = 256,
    lengths: np.ndarray | None = None,
    sequences: Sequence[np.ndarray] | None = None,
) -> pl.DataFrame:
    """`candidates` (from :meth:`Retriever.retrieve`, sorted by row) with every feature column added.

    Args:
        retriever: the fitted retriever whose statistics the features read.
        histories: the item-index histories the candidates were retrieved for.
        candidates: long format with ``row`` and ``item_index``.
        vectors: encoder name -> (n_items, d) L2-normalised text vectors in catalogue order.
        codes: (category, brand) integer codes from :func:`item_codes`.
        batch_size: requests per batch (bounds the padded text matrices).
        lengths: each request's history length, not capped by the ingest (:mod:`recsys.candidates.earlier`);
            default the length of `histories`.
        sequences: each request's whole item sequence, oldest first, that ``seen_count`` and ``seen_ago`` read
            (:class:`~recsys.candidates.earlier.UserHistories`); default `histories`.
    """
    category, brand = codes
    transitions_t = retriever.transitions.T.tocsr()
    sparse = {name: _sorted_keys(m) for name, m in (("trans", retriever.transitions), ("rev", transitions_t), ("cooc", retriever.cooccurrence))}
    rows_all = candidates[ROW].to_numpy()
    items_all = candidates[ITEM_INDEX].to_numpy()
    bounds = np.searchsorted(rows_all, np.arange(0, len(histories) + batch_size, batch_size).clip(max=len(histories)))
    lengths = np.array([len(h) for h in histories]) if lengths is None else np.asarray(lengths)
    n_recent = retriever.cfg.recent  # the history items the retrieval sources read, most recent first
    weights = retriever.cfg.decay ** np.arange(n_recent, dtype=np.float32)
    parts: list[dict[str, np.ndarray]] = []
    for b, start in enumerate(range(0, len(histories), batch_size)):
        lo, hi = bounds[b], bounds[b + 1]
        local = rows_all[lo:hi] - start
        items = items_all[lo:hi]
        hist = histories[start : start + batch_size]
        recent = np.full((len(hist), n_recent), -1, dtype=np.int64)  # recent[:, 0] is the last item
        for r, h in enumerate(hist):
            tail = h[::-1][:n_recent]
            recent[r, : len(tail)] = tail
        last = recent[:, 0][local]
        f: dict[str, np.ndarray] = {
            "hist_len": lengths[start : start + batch_size].astype(np.float32)[local],
            "log_pop": np.log1p(retriever.popularity[items]),
            "trans_last": pair_lookup(retriever.transitions, last, items, sparse["trans"]),
            "trans_rev": pair_lookup(transitions_t, last, items, sparse["rev"]),
            "cooc_last": pair_lookup(retriever.cooccurrence, last, items, sparse["cooc"]),
            "ease_last": pair_lookup(retriever.ease, last, items),
            "same_category_last": ((category[np.maximum(last, 0)] == category[items]) & (category[items] >= 0)).astype(np.float32),
            "category_share": _share(category, recent, local, items),
            "same_brand_last": ((brand[np.maximum(last, 0)] == brand[items]) & (brand[items] >= 0)).astype(np.float32),
            "brand_share": _share(brand, recent, local, items),
        }
        for enc, v in vectors.items():
            present = recent >= 0
            user = np.einsum("rk,rkd->rd", np.where(present, weights, 0.0).astype(np.float32), v[np.maximum(recent, 0)])
            user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
            queries = np.concatenate([v[np.maximum(recent, 0)], user[:, None, :]], axis=1)  # recent items, then the user vector
            sims = _text_similarities(v, queries, local, items)
            recent_sims = np.where(present[local], sims[:, :n_recent], -np.inf)
            best = recent_sims.max(axis=1)
            f[f"text_last_{enc}"] = np.where(np.isfinite(recent_sims[:, 0]), recent_sims[:, 0], 0.0)
            f[f"text_max_{enc}"] = np.where(np.isfinite(best), best, 0.0)
            f[f"text_user_{enc}"] = sims[:, n_recent]
        parts.append({k: np.asarray(x, dtype=np.float32) for k, x in f.items()})
    extra = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    extra["seen_count"], extra["seen_ago"] = seen_before(histories if sequences is None else sequences, rows_all, items_all, len(retriever.item_ids))
    return candidates.with_columns(**{k: pl.Series(k, x) for k, x in extra.items()})
