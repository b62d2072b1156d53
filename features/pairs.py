"""The pairs feature family: item-item, metadata and text signals of (history, candidate item) pairs.

On top of every retrieval source's score and rank (:mod:`recsys.candidates.retrieval`), each pair gets:

* ``hist_len``, ``log_pop``                       the user's history length, the item's log(1 + interactions)
* ``trans_last``, ``trans_rev``, ``cooc_last``,   item-item signals of the user's *last* item alone
  ``ease_last``                                   (P(cand | last), P(last | cand), cosine, EASE weight)
* ``text_last_<enc>``, ``text_max_<enc>``,        per text encoder (``ft`` fine-tuned, ``frozen`` pretrained):
  ``text_user_<enc>``                             cosine to the last item, the best of the recent items, and
                                                  to the recency-weighted mean of the recent items
* ``same_category_last``, ``category_share``,     metadata agreement with the last item / share of the
  ``same_brand_last``, ``brand_share``            recent items with the candidate's category (brand = first tag)

All statistics come from the fitted :class:`~recsys.candidates.retrieval.Retriever`, i.e. only from the data allowed
when it was fitted. Work is done in batches of requests with dense (batch x catalogue) rows, so memory
stays bounded and lookups are plain array gathers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import Col
from recsys.candidates.retrieval import ITEM_INDEX, ROW, Retriever

def item_codes(items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of each item's category and brand (first tag), -1 where missing, in ``items`` order."""
    codes = items.select(
        pl.col(Col.CATEGORY).cast(pl.Categorical()).to_physical().cast(pl.Int64()).fill_null(-1).alias("c"),
        pl.col(Col.TAGS).list.first().cast(pl.Categorical()).to_physical().cast(pl.Int64()).fill_null(-1).alias("b"),
    )
    return codes["c"].to_numpy().copy(), codes["b"].to_numpy().copy()


def _rows(matrix: np.ndarray | sp.spmatrix | None, idx: np.ndarray, n_items: int) -> np.ndarray:
    """Dense rows `idx` of an item x item matrix (zeros for idx < 0 or a missing matrix)."""
    out = np.zeros((len(idx), n_items), dtype=np.float32)
    ok = idx >= 0
    if matrix is None or not ok.any():
        return out
    picked = matrix[idx[ok]]
    out[ok] = picked.toarray() if sp.issparse(picked) else picked
    return out


def _share(codes: np.ndarray, recent: np.ndarray, local: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Share of each row's recent items (-1 = none) whose code equals the candidate's (missing codes never match)."""
    rec = np.where(recent >= 0, codes[np.maximum(recent, 0)], -2)[local]  # (pairs, recent items)
    cand = codes[items][:, None]
    valid = (recent >= 0)[local].sum(axis=1)
    return ((rec == cand) & (cand >= 0)).sum(axis=1) / np.maximum(valid, 1)


def pair_features(
    retriever: Retriever,
    histories: Sequence[np.ndarray],
    candidates: pl.DataFrame,
    vectors: Mapping[str, np.ndarray],
    codes: tuple[np.ndarray, np.ndarray],
    batch_size: int = 1024,
) -> pl.DataFrame:
    """`candidates` (from :meth:`Retriever.retrieve`, sorted by row) with every feature column added.

    Args:
        retriever: the fitted retriever whose statistics the features read.
        histories: the item-index histories the candidates were retrieved for.
        candidates: long format with ``row`` and ``item_index``.
        vectors: encoder name -> (n_items, d) L2-normalised text vectors in catalogue order.
        codes: (category, brand) integer codes from :func:`item_codes`.
        batch_size: requests per dense batch.
    """
    n_items = len(retriever.item_ids)
    category, brand = codes
    transitions_t = retriever.transitions.T.tocsr()
    rows_all = candidates[ROW].to_numpy()
    bounds = np.searchsorted(rows_all, np.arange(0, len(histories) + batch_size, batch_size).clip(max=len(histories)))
    n_recent = retriever.cfg.recent  # the history items the retrieval sources read, most recent first
    weights = retriever.cfg.decay ** np.arange(n_recent, dtype=np.float32)
    parts: list[dict[str, np.ndarray]] = []
    for b, start in enumerate(range(0, len(histories), batch_size)):
        lo, hi = bounds[b], bounds[b + 1]
        local = rows_all[lo:hi] - start
        items = candidates[ITEM_INDEX].to_numpy()[lo:hi]
        hist = histories[start : start + batch_size]
        recent = np.full((len(hist), n_recent), -1, dtype=np.int64)  # recent[:, 0] is the last item
        for r, h in enumerate(hist):
            tail = h[::-1][:n_recent]
            recent[r, : len(tail)] = tail
        last = recent[:, 0]
        f: dict[str, np.ndarray] = {
            "hist_len": np.array([len(h) for h in hist], dtype=np.float32)[local],
            "log_pop": np.log1p(retriever.popularity[items]),
            "trans_last": _rows(retriever.transitions, last, n_items)[local, items],
            "trans_rev": _rows(transitions_t, last, n_items)[local, items],
            "cooc_last": _rows(retriever.cooccurrence, last, n_items)[local, items],
            "ease_last": _rows(retriever.ease, last, n_items)[local, items],
            "same_category_last": ((category[np.maximum(last, 0)][local] == category[items]) & (category[items] >= 0)).astype(np.float32),
            "category_share": _share(category, recent, local, items),
            "same_brand_last": ((brand[np.maximum(last, 0)][local] == brand[items]) & (brand[items] >= 0)).astype(np.float32),
            "brand_share": _share(brand, recent, local, items),
        }
        for enc, v in vectors.items():
            sims = np.full((n_recent, len(items)), -np.inf, dtype=np.float32)
            for k in range(n_recent):
                ok = recent[:, k] >= 0
                s = np.zeros((len(hist), n_items), dtype=np.float32)
                if ok.any():
                    s[ok] = v[recent[ok, k]] @ v.T
                sims[k] = np.where(ok[local], s[local, items], -np.inf)
            user = np.einsum("rk,rkd->rd", np.where(recent >= 0, weights, 0.0), v[np.maximum(recent, 0)])
            user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
            f[f"text_last_{enc}"] = np.where(np.isfinite(sims[0]), sims[0], 0.0)
            f[f"text_max_{enc}"] = np.where(np.isfinite(sims.max(axis=0)), sims.max(axis=0), 0.0)
            f[f"text_user_{enc}"] = (user @ v.T)[local, items]
        parts.append({k: np.asarray(x, dtype=np.float32) for k, x in f.items()})
    extra = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return candidates.with_columns(**{k: pl.Series(k, x) for k, x in extra.items()})
