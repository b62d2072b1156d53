"""One retrieval source's view of a batch of histories (its top-N items, the rank of any item, pair scores), and
:class:`Retrieved`, what retrieval returns: the candidates and each source's rank of the held-out targets.

Ranks are 1 + the number of items the source scores strictly higher. On a catalogue of at most ``depth``
items that count is exact (each row fully sorted, as it always was); on a larger one each row keeps only its
``depth`` best scores (one ``np.partition`` instead of a full sort), and an item below them ranks
``depth + 1``. The text source searched through the index (:class:`IndexedText`) knows only the items it
retrieved: an item scored below all of them ranks ``per_source + 1`` (or 1 + the number retrieved).
A held-out target's rank in a dense source is always exact (a count over the row, no sort).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.evaluation.metrics import held_out_ranks, recall_at_k

PAIR_CHUNK = 16_384  # (row, item) pairs whose vectors are gathered at once for their dot products


def ranks_of(ordered: np.ndarray, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """1 + the number of `ordered` entries above each value, rows of `values` given by `bounds`
    (row r is values[bounds[r]:bounds[r+1]]); an item below a row's `ordered` scores ranks ``ordered.shape[1] + 1``.

    Args:
        ordered: (rows, depth) each row's best scores, ascending.
        values: the scores to rank, grouped by row.
        bounds: (rows + 1,) group boundaries into `values`.
    """
    depth = ordered.shape[1]
    out = np.empty(len(values), dtype=np.int32)
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        if hi > lo:
            out[lo:hi] = 1 + depth - np.searchsorted(ordered[r], values[lo:hi], side="right")
    return out


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of `keys` is in `sorted_keys` (ascending)."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
    return (sorted_keys[at] == keys) if len(sorted_keys) else np.zeros(len(keys), dtype=bool)


def best_scores(scores: np.ndarray, depth: int, sample: int = 1024) -> np.ndarray:
    """(rows, depth) each row's `depth` largest scores, ascending, ties included (what sorting a row and keeping
    its tail gives), for rows much wider than `depth`.

    A full partition of every row costs more than the scores themselves. Instead a threshold is guessed per row from a
    strided sample of columns, a little below the depth-th score; only the scores above it are sorted, and the
    threshold itself fills the rest (it is the next score down). A row whose guess keeps fewer than `depth`
    scores falls back to a partition, so the result is exact either way.
    """
    b, n = scores.shape
    sub = scores[:, :: max(1, n // sample)]
    m = sub.shape[1]
    expected = depth * m / n  # sampled scores above the depth-th score, on average
    k = int(min(m, np.ceil(expected + 4 * np.sqrt(expected) + 1)))
    guess = np.partition(sub, m - k, axis=1)[:, m - k]
    short = np.flatnonzero((scores >= guess[:, None]).sum(axis=1) < depth)
    if len(short):
        guess[short] = np.partition(scores[short], n - depth, axis=1)[:, n - depth]
    out = np.empty((b, depth), dtype=scores.dtype)
    for r in range(b):
        above = np.sort(scores[r][scores[r] > guess[r]])[-depth:]
        out[r, : depth - len(above)] = guess[r]
        out[r, depth - len(above) :] = above
    return out


class DenseScores:
    """A source's (rows, n_items) scores, own items -inf, with each row's best `depth` scores sorted.

    `informed` marks the rows the source knows something about (for the sources read from the history: a
    non-empty one); the others retrieve nothing. Without that, an empty history scores every item alike (all
    zero) and, ties all counting, the whole catalogue would enter the row's candidates.
    """

    def __init__(self, scores: np.ndarray, top: int, depth: int, positive_only: bool, informed: np.ndarray | None = None) -> None:
        n = scores.shape[1]
        self.scores, self.positive_only = scores, positive_only
        self.ordered = np.sort(scores, axis=1) if depth >= n else best_scores(scores, depth)
        self.threshold = self.ordered[:, max(self.ordered.shape[1] - top, 0)]  # the top-th best score (ties all count)
        if informed is not None:
            self.threshold[~informed] = np.inf

    def retrievable(self, values: np.ndarray) -> np.ndarray:
        """Finite scores, and for the sparse count sources a positive one."""
        ok = np.isfinite(values)
        return ok & (values > 0) if self.positive_only else ok

    def add_hits(self, hits: np.ndarray) -> None:
        """Count, in (rows, n_items) `hits`, every item in this source's top."""
        hits += (self.scores >= self.threshold[:, None]) & self.retrievable(self.scores)

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.scores[rows, items]

    def hits(self, rows: np.ndarray, items: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Whether each (row, item) pair with these scores is in this source's top."""
        return (values >= self.threshold[rows]) & self.retrievable(values)

    def ranks(self, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        return ranks_of(self.ordered, values, bounds)

    def target_ranks(self, targets: np.ndarray) -> np.ndarray:
        """(rows, 3): each target's exact rank, its tie size, and whether the source may retrieve it."""
        ranks, ties = held_out_ranks(self.scores, targets)
        return np.stack([ranks, ties, self.retrievable(self.scores[np.arange(len(targets)), targets])], axis=1)


class IndexedText:
    """The text source through the approximate index: each row's retrieved items, exact cosines for any pair.

    Args:
        users: (rows, d) normalised user vectors.
        vectors: (n_items, d) normalised item vectors.
        found: (rows, k) item ids the index returned, best first (-1 = none), k > `top` to spare own items.
        seen: sorted keys ``row * n_items + item`` of each row's own items (never retrieved, scored -inf).
        top: items kept per row.
    """

    def __init__(self, users: np.ndarray, vectors: np.ndarray, found: np.ndarray, seen: np.ndarray, top: int) -> None:
        self.users, self.vectors, self.seen, self.n = users, vectors, seen, len(vectors)
        b, k = found.shape
        rows, ids = np.repeat(np.arange(b), k), found.ravel()
        ok = ids >= 0
        ok[ok] = ~contains(seen, rows[ok] * self.n + ids[ok])
        rows, ids = rows[ok], ids[ok]
        position = np.arange(len(rows)) - np.searchsorted(rows, np.arange(b))[rows]
        keep = position < top
        self.rows, self.items = rows[keep], ids[keep]
        self.keys = np.sort(self.rows * self.n + self.items)
        self.ordered = np.full((b, top), -np.inf, dtype=np.float32)
        self.ordered[self.rows, position[keep]] = self.values(self.rows, self.items)
        self.ordered.sort(axis=1)

    def add_hits(self, hits: np.ndarray) -> None:
        hits[self.rows, self.items] += 1

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Exact cosines of the (row, item) pairs; -inf for a row's own items."""
        out = np.empty(len(rows), dtype=np.float32)
        for lo in range(0, len(rows), PAIR_CHUNK):
            r, i = rows[lo : lo + PAIR_CHUNK], items[lo : lo + PAIR_CHUNK]
            out[lo : lo + PAIR_CHUNK] = np.einsum("pd,pd->p", self.users[r], self.vectors[i])
        out[contains(self.seen, rows * self.n + items)] = -np.inf
        return out

    def hits(self, rows: np.ndarray, items: np.ndarray, values: np.ndarray) -> np.ndarray:
        return contains(self.keys, rows * self.n + items)

    def ranks(self, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        return ranks_of(self.ordered, values, bounds)

    def target_ranks(self, targets: np.ndarray) -> np.ndarray:
        """(rows, 3): each target's rank among the retrieved items, tie size 1, and whether it is not an own item."""
        b = len(targets)
        values = self.values(np.arange(b), targets)
        return np.stack([ranks_of(self.ordered, values, np.arange(b + 1)), np.ones(b, dtype=np.int64), np.isfinite(values)], axis=1)


@dataclass
class Retrieved:
    """Candidates of a batch of histories and, when targets were given, each source's rank of the target."""

    candidates: pl.DataFrame
    target_ranks: dict[str, np.ndarray]  # source -> (rows, 3): rank, ties, retrievable
    per_source: int

    def recall(self, ns: Sequence[int] = (10, 50, 100)) -> dict[str, dict[str, float]]:
        """Recall@N of each source (tie-averaged) and of the union (a target any source retrieves within N).

        The union at N = ``per_source`` is exactly the candidate set: the ceiling retrieval puts on the ranker.
        """
        if not self.target_ranks:
            raise ValueError("recall needs the targets passed to Retriever.retrieve")
        out = {s: {f"recall@{n}": recall_at_k(r[:, 0], n, r[:, 1]) for n in ns} for s, r in self.target_ranks.items()}
        union = {}
        for n in sorted(set(ns) | {self.per_source}):
            hit = np.zeros(len(next(iter(self.target_ranks.values()))), dtype=bool)
            for r in self.target_ranks.values():
                hit |= (r[:, 0] <= n) & (r[:, 2] > 0)
            # A hit "ranks" 1 and a miss n + 1, so recall_at_k gives the share of targets in the union.
            union[f"recall@{n}"] = recall_at_k(np.where(hit, 1, n + 1), n)
        out["union"] = union
        return out
