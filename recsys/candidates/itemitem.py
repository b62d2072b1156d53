"""Item-item statistics of the retrieval sources, each sized before it is allocated.

* :func:`transitions`   P(next | item) over consecutive pairs: at most one non-zero per event.
* :func:`cooccurrence`  item-item cosine of the binary user x item matrix. Its non-zeros are bounded by
                        ``sum_u |items of u|**2``; when that bound (at :data:`COOC_BYTES_PER_NNZ` each) is over
                        the memory budget, each item keeps only its ``neighbours`` most similar items, computed
                        block by block so no block's product exceeds a quarter of the budget.
* :func:`fit_ease`      EASE (Steck 2019): a closed-form item-item model through a dense n x n inverse,
                        :func:`ease_bytes` of working memory; the caller checks the budget first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

# A non-zero of the sparse Gram product costs a float32 value and an int32 index, in about three copies
# (the product, the scaled cosine, the pruned or final matrix).
COOC_BYTES_PER_NNZ = 24


def ease_bytes(n_items: int) -> int:
    """Peak memory of :func:`fit_ease`: the float64 matrix LAPACK inverts in place plus the float32 weights it becomes."""
    return 12 * n_items * n_items


def transitions(sequences: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """P(next | item) with one pseudo-count, so a single observed transition is not a certainty."""
    pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in sequences if len(s) > 1]
    pairs_arr = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    counts = sp.csr_matrix((np.ones(len(pairs_arr), dtype=np.float32), (pairs_arr[:, 0], pairs_arr[:, 1])), shape=(n_items, n_items))
    return sp.diags(1.0 / (np.asarray(counts.sum(axis=1)).ravel() + 1.0)).astype(np.float32) @ counts


def cooccurrence_bound(users: sp.csr_matrix) -> int:
    """An upper bound on the non-zeros of ``users.T @ users``: each user adds at most |items|**2."""
    lengths = np.diff(users.indptr).astype(np.int64)
    return int(min((lengths * lengths).sum(), users.shape[1] ** 2))


def cooccurrence(users: sp.csr_matrix, budget: int, neighbours: int) -> tuple[sp.csr_matrix, dict[str, object]]:
    """Item-item cosine of the binary (users, items) matrix, diagonal zero; all of it when it fits `budget`, else
    each item's top `neighbours`.

    Returns:
        The (items, items) float32 CSR matrix and what was done (for the retrieval plan).
    """
    bound = cooccurrence_bound(users)
    need = bound * COOC_BYTES_PER_NNZ
    if need <= budget:
        gram = (users.T @ users).tocsr().astype(np.float32)
        norms = np.sqrt(np.maximum(gram.diagonal(), 1.0))
        cos = (sp.diags(1.0 / norms) @ gram @ sp.diags(1.0 / norms)).tocsr().astype(np.float32)
        cos.setdiag(0.0)
        cos.eliminate_zeros()
        return cos, {"cooccurrence": "full", "cooccurrence_nnz": int(cos.nnz)}
    log.warning("co-occurrence may need %.1f GB (%d non-zeros) > memory_budget %.1f GB: keeping each item's top %d neighbours",
                need / 1e9, bound, budget / 1e9, neighbours)
    cos = _pruned_cosine(users, max(budget // 4 // COOC_BYTES_PER_NNZ, 1), neighbours)
    return cos, {"cooccurrence": f"top {neighbours} neighbours per item", "cooccurrence_nnz": int(cos.nnz), "cooccurrence_bound": bound}


def _pruned_cosine(users: sp.csr_matrix, block_nnz: int, k: int) -> sp.csr_matrix:
    """Each item's `k` highest cosines, from blocks of items whose products hold at most about `block_nnz`
    non-zeros (an item with more is a block of its own)."""
    n = users.shape[1]
    by_item = users.T.tocsr()
    counts = np.diff(by_item.indptr).astype(np.float32)  # users per item: the Gram diagonal of a binary matrix
    scale = (1.0 / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32)
    # Row i of the product has at most sum over i's users of their lengths non-zeros.
    per_item = by_item @ np.diff(users.indptr).astype(np.float64)
    cuts = np.searchsorted(np.cumsum(per_item), np.arange(block_nnz, per_item.sum() + block_nnz, block_nnz), side="right")
    starts = np.unique(np.concatenate([[0], np.minimum(cuts, n)]))
    parts = [_top_per_row(by_item[lo:hi] @ users, lo, scale, k) for lo, hi in zip(starts[:-1], starts[1:])]
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((n, n), dtype=np.float32)


def _top_per_row(block: sp.csr_matrix, offset: int, scale: np.ndarray, k: int) -> sp.csr_matrix:
    """Rows `offset`.. of the Gram matrix as cosines, diagonal dropped, each row's `k` largest kept."""
    block = block.tocsr().astype(np.float32)
    lengths = np.diff(block.indptr)
    row = np.repeat(np.arange(block.shape[0]), lengths)
    block.data *= scale[row + offset] * scale[block.indices]
    keep = block.indices != row + offset
    for r in np.flatnonzero(lengths > k):  # only rows with more than k neighbours need a selection
        lo, hi = block.indptr[r], block.indptr[r + 1]
        values = np.where(keep[lo:hi], block.data[lo:hi], -np.inf)
        chosen = np.zeros(hi - lo, dtype=bool)
        chosen[np.argpartition(-values, k - 1)[:k]] = True
        keep[lo:hi] &= chosen
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=block.shape[0]))])
    out = sp.csr_matrix((block.data[keep], block.indices[keep], indptr), shape=block.shape)
    out.sort_indices()
    return out


def fit_ease(users: sp.csr_matrix, l2: float, block_rows: int = 2048) -> np.ndarray:
    """EASE item-item weights B = -P / diag(P) with P = (G + l2 I)^-1 and G the item Gram matrix; diagonal zero.

    The float64 G is filled block by block (no sparse copy of the whole Gram matrix), inverted in place and
    turned into B in place, so the peak is :func:`ease_bytes`.
    """
    n = users.shape[1]
    by_item = users.T.tocsr()
    g = np.empty((n, n), dtype=np.float64, order="F")  # symmetric: Fortran order lets LAPACK work in place
    for lo in range(0, n, block_rows):
        g[lo : lo + block_rows] = (by_item[lo : lo + block_rows] @ users).toarray()
    g[np.diag_indices_from(g)] += l2
    # G + l2*I is symmetric positive definite: a Cholesky inverse is ~3x cheaper than a general one.
    chol, info = lapack.dpotrf(g, lower=False, overwrite_a=True)
    if info == 0:
        p, info = lapack.dpotri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise RecsysError(f"EASE: the item Gram matrix is not positive definite (LAPACK info {info}); raise ease_l2")
    del g, chol
    _mirror_upper(p, block_rows)
    d = p.diagonal().copy()
    p /= -d[None, :]
    p[np.diag_indices_from(p)] = 0.0
    return np.ascontiguousarray(p, dtype=np.float32)


def _mirror_upper(p: np.ndarray, block: int) -> None:
    """Copy the upper triangle of square `p` onto its lower one in place, a block of columns at a time."""
    n = p.shape[0]
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        sub = p[lo:hi, lo:hi]
        sub[...] = np.triu(sub) + np.triu(sub, 1).T
        p[hi:, lo:hi] = p[lo:hi, hi:].T
