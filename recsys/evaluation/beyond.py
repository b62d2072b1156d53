"""Beyond-accuracy figures of top-k lists: catalogue coverage, intra-list diversity, popularity bias.

Each takes the lists as an (n_lists, k) integer array of item indices, -1 padding lists shorter than k.
The accuracy metrics are in :mod:`recsys.evaluation.metrics`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

ILD_CHUNK = 128  # lists whose vectors are gathered at once: (chunk, k, d) float64, ~4 MB at k=10, d=384 (cache-sized)


def _lists(top_k: np.ndarray) -> np.ndarray:
    """(n_lists, k) int item indices; -1 pads lists shorter than k."""
    arr = np.asarray(top_k)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"top-k lists must be a 2-d integer array of item indices (-1 = padding), got {arr.dtype} {arr.shape}")
    return arr


def catalogue_coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list.

    >>> catalogue_coverage(np.array([[0, 1], [1, 2]]), 8)
    0.375
    """
    arr = _lists(top_k)
    return float(np.unique(arr[arr >= 0]).size / n_items) if n_items else float("nan")


def intra_list_diversity(top_k: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cosine) of the items' vectors.

    Lists with fewer than two items are skipped; NaN when no list has two. Only the listed items' vectors
    are normalised, `ILD_CHUNK` lists at a time.

    >>> v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> intra_list_diversity(np.array([[0, 1], [0, 2]]), v)  # (1 + 0) / 2
    0.5
    """
    arr = _lists(top_k)
    vecs = np.asarray(vectors)
    valid = arr >= 0
    m = valid.sum(axis=1).astype(np.float64)
    pairs = m * (m - 1)
    keep = pairs > 0
    if not keep.any():
        return float("nan")
    off_diag = np.empty(len(arr), dtype=np.float64)  # sum of the cosines of each list's ordered pairs
    for start in range(0, len(arr), ILD_CHUNK):
        part = slice(start, start + ILD_CHUNK)
        emb = np.asarray(vecs[np.where(valid[part], arr[part], 0)], dtype=np.float64)  # (chunk, k, d)
        norm = np.sqrt(np.einsum("nkd,nkd->nk", emb, emb))
        weight = valid[part] / np.maximum(norm, 1e-12)  # to unit vectors; padding and zero vectors weigh 0
        # sum over k != j of u_k . u_j = |sum_k u_k|^2 - sum_k |u_k|^2: O(k d) a list, not the O(k^2 d) Gram matrix.
        total = np.einsum("nk,nkd->nd", weight, emb)
        off_diag[part] = np.einsum("nd,nd->n", total, total) - ((norm * weight) ** 2).sum(axis=1)
    return float((1.0 - off_diag[keep] / pairs[keep]).mean())


def popularity_bias(top_k: np.ndarray, popularity: np.ndarray) -> dict[str, float]:
    """How popular the recommended items are, compared with the catalogue.

    Args:
        top_k: (n_lists, k) item indices, -1 = padding.
        popularity: (n_items,) interaction counts in training.

    Returns:
        ``pop_percentile``: mean popularity percentile (0 = least, 1 = most popular; ties averaged)
        of recommended items; 0.5 means no bias. ``mean_log_pop`` and ``catalogue_mean_log_pop``:
        mean log(1 + count) of recommended items and of the whole catalogue.

    >>> round(popularity_bias(np.array([[2, 3]]), np.array([0, 1, 2, 3]))["pop_percentile"], 4)  # (2/3 + 1) / 2
    0.8333
    """
    arr = _lists(top_k)
    pop = np.asarray(popularity, dtype=np.float64)
    pct = pl.Series(pop).rank("average").to_numpy()
    pct = (pct - 1) / max(len(pop) - 1, 1)
    recs = arr[arr >= 0]
    log_pop = np.log1p(pop)
    return {
        "pop_percentile": float(pct[recs].mean()) if recs.size else float("nan"),
        "mean_log_pop": float(log_pop[recs].mean()) if recs.size else float("nan"),
        "catalogue_mean_log_pop": float(log_pop.mean()),
    }


def novelty(top_k: np.ndarray, popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information of the recommended items, -log2 p(i), p(i) = (users with i + 1) / (users + 1).

    The novelty of Castells et al. as the recommenders project implements it (the share of users who know an item,
    over every recommended slot), with one pseudo-count so an item nobody had is finite. Higher = less popular.

    Args:
        top_k: (n_lists, k) item indices, -1 = padding.
        popularity: (n_items,) users (or interactions) per item in training.
        n_users: users behind `popularity`.

    >>> round(novelty(np.array([[0, 1]]), np.array([3, 0]), 3), 4)  # (-log2(4/4) - log2(1/4)) / 2
    1.0
    """
    arr = _lists(top_k)
    recs = arr[arr >= 0]
    if not recs.size:
        return float("nan")
    p = (np.asarray(popularity, dtype=np.float64)[recs] + 1.0) / (n_users + 1.0)
    return float(-np.log2(np.minimum(p, 1.0)).mean())


def coverage_at(top_k: np.ndarray, n_items: int, counts: list[int], seed: int = 0) -> dict[int, float]:
    """Catalogue coverage of a seeded sample of `count` lists, for each count up to the number of lists.

    Coverage grows with the number of lists, so two runs are compared at the same number of lists.

    >>> coverage_at(np.array([[0], [1], [2], [3]]), 8, [2, 4, 8])
    {2: 0.25, 4: 0.5}
    """
    arr = _lists(top_k)
    order = np.random.default_rng(seed).permutation(len(arr))
    return {c: catalogue_coverage(arr[order[:c]], n_items) for c in counts if c <= len(arr)}
