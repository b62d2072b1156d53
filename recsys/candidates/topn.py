"""One retrieval source's view of a batch of histories (its top-N items, the rank of any item, pair scores), and
:class:`Retrieved`, what retrieval returns: the candidates and each source's rank of the held-out targets.

Ranks are 1 + the number of items the source scores strictly higher, capped at ``depth + 1``: exact on a
catalogue of at most ``depth`` items, and an item below a row's ``depth`` best scores ranks ``depth + 1``.
A held-out target's rank is always exact. Each kind of source is held in the form its scores take, and all
give the answers a dense (rows x items) row of scores would give:

* :class:`DenseScores`   every item scored per row (EASE, ALS, exact text): each row's ``depth`` best scores sorted.
* :class:`SparseScores`  non-negative scores on the few items a history reaches (transitions, co-occurrence),
                         every other item 0: only the non-zeros, sorted per row.
* :class:`SharedScores`  one score per item, the same for every row (popularity, recent clicks): the catalogue
                         sorted once, each row's own items subtracted.
* :class:`IndexedText`   the text source searched through the index: it knows only the items it retrieved, and
                         an item scored below all of them ranks ``per_source + 1`` (or 1 + the number retrieved).

Own items (the history's) score -inf everywhere: never retrieved, ranked after every other item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.evaluation.metrics import held_out_ranks, recall_at_k

DENSE_SHARE = 16  # a sparse source's batch is held dense when over 1/16 of its (rows x items) scores are non-zero
SMALLEST_POSITIVE = np.nextafter(np.float32(0), np.float32(1))
PAIR_CHUNK = 16_384  # (row, item) pairs whose vectors are gathered at once for their dot products


def row_keys(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as (row, value) pairs are, for float32 values without NaN (-0.0 counts as 0.0): one
    ``np.searchsorted`` then answers a question about every row at once."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    flipped = bits ^ np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (np.asarray(rows).astype(np.uint64) << np.uint64(32)) | flipped.astype(np.uint64)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of :func:`row_keys` keys."""
    low = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return (low ^ np.where(low >> np.uint32(31), np.uint32(0x80000000), np.uint32(0xFFFFFFFF))).view(np.float32)


def group_rows(bounds: np.ndarray) -> np.ndarray:
    """The row of each value grouped by `bounds` (row r holds values[bounds[r]:bounds[r+1]])."""
    return np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))


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
    for r in np.flatnonzero(np.diff(bounds)):  # one search per row: cheaper than keys over every ordered score
        lo, hi = bounds[r], bounds[r + 1]
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


@dataclass(frozen=True)
class OwnItems:
    """A batch's own items (its histories'), which every source scores -inf: never retrieved, ranked last.

    Attributes:
        n_items: the catalogue size (keys are ``row * n_items + item``).
        keys: sorted keys of every (row, own item) pair, each once.
        counts: (rows,) own items per row.
    """

    n_items: int
    keys: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, binary: sp.csr_matrix) -> OwnItems:
        """From the batch's binary (rows, n_items) history matrix."""
        binary = binary.tocsr()
        binary.sum_duplicates()
        rows = np.repeat(np.arange(binary.shape[0], dtype=np.int64), np.diff(binary.indptr))
        return cls(binary.shape[1], rows * binary.shape[1] + binary.indices, np.diff(binary.indptr).astype(np.int64))

    @property
    def rows(self) -> np.ndarray:
        return self.keys // self.n_items

    @property
    def items(self) -> np.ndarray:
        return self.keys % self.n_items

    def mask(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (row, item) pair is an own item."""
        return contains(self.keys, rows.astype(np.int64) * self.n_items + items)


class DenseScores:
    """A source's (rows, n_items) scores, own items -inf, with each row's best `depth` scores sorted.

    `informed` marks the rows the source knows something about (for the sources read from the history: a
    non-empty one); the others retrieve nothing. Without that, an empty history scores every item alike and,
    ties all counting, the whole catalogue would enter the row's candidates. A `positive_only` source (the
    sparse ones, when a batch reaches so many items that dense rows are cheaper) retrieves only positive scores.
    """

    def __init__(self, scores: np.ndarray, top: int, depth: int, informed: np.ndarray | None = None, positive_only: bool = False) -> None:
        n = scores.shape[1]
        self.scores, self.positive_only = scores, positive_only
        self.ordered = np.sort(scores, axis=1) if depth >= n else best_scores(scores, depth)
        self.threshold = self.ordered[:, max(self.ordered.shape[1] - top, 0)].copy()  # the top-th best score (ties all count)
        if informed is not None:
            self.threshold[~informed] = np.inf

    def retrievable(self, values: np.ndarray) -> np.ndarray:
        ok = np.isfinite(values)
        return ok & (values > 0) if self.positive_only else ok

    def hit_keys(self) -> np.ndarray:
        """Keys ``row * n_items + item`` of every item in this source's top, ascending."""
        rows, items = np.nonzero((self.scores >= self.threshold[:, None]) & self.retrievable(self.scores))
        return rows.astype(np.int64) * self.scores.shape[1] + items

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


class CountedScores:
    """Ranks from counts: a view that can say, for any (row, score), how many of the row's items score strictly
    higher and how many equal (:meth:`_above_and_equal`), and which scores it may retrieve (:meth:`retrievable`)."""

    depth: int
    threshold: np.ndarray  # each row's top-th best retrievable score (ties all count)

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def retrievable(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _above_and_equal(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def hits(self, rows: np.ndarray, items: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Whether each (row, item) pair with these scores is in this source's top."""
        return (values >= self.threshold[rows]) & self.retrievable(values)

    def ranks(self, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        above, _ = self._above_and_equal(group_rows(bounds), values)
        return np.minimum(1 + above, self.depth + 1).astype(np.int32)

    def target_ranks(self, targets: np.ndarray) -> np.ndarray:
        """(rows, 3): each target's exact rank, its tie size, and whether the source may retrieve it."""
        rows = np.arange(len(targets))
        values = self.values(rows, targets)
        above, equal = self._above_and_equal(rows, values)
        return np.stack([1 + above, equal, self.retrievable(values)], axis=1).astype(np.int64)


class SparseScores(CountedScores):
    """A source whose non-negative scores are 0 for every item a history does not reach (transitions,
    co-occurrence): the rows' positive scores, sorted per row. Only positive scores are retrieved.

    Args:
        scores: (rows, n_items) CSR scores, own items included (they are dropped: -inf).
        own: the batch's own items.
        top: a row's top is its `top` best positive scores, ties all included.
        depth: ranks are capped at ``depth + 1``.
    """

    def __init__(self, scores: sp.csr_matrix, own: OwnItems, top: int, depth: int) -> None:
        scores = scores.tocsr()
        scores.sum_duplicates()  # items ascending within each row
        b, n = scores.shape
        rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(scores.indptr))
        keys = rows * n + scores.indices
        keep = (scores.data > 0) & ~contains(own.keys, keys)
        self.keys, self.data, rows = keys[keep], scores.data[keep].astype(np.float32), rows[keep]
        self.own, self.depth = own, depth
        self.value_keys = np.sort(row_keys(rows, self.data))
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=b))])
        self.positive = np.diff(self.bounds)
        # The top-th best positive score; a row with fewer positive scores retrieves all of them (its top-th is a 0).
        top_value = key_values(self.value_keys[np.maximum(self.bounds[1:] - top, 0)]) if len(keys) else np.zeros(b, dtype=np.float32)
        self.threshold = np.where(self.positive >= top, top_value, SMALLEST_POSITIVE).astype(np.float32)

    def hit_keys(self) -> np.ndarray:
        return self.keys[self.data >= self.threshold[self.keys // self.own.n_items]]

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of the (row, item) pairs: the stored ones, 0 elsewhere, -inf for own items."""
        keys = rows.astype(np.int64) * self.own.n_items + items
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        out = np.where(self.keys[at] == keys, self.data[at], np.float32(0)) if len(self.keys) else np.zeros(len(keys), dtype=np.float32)
        out[self.own.mask(rows, items)] = -np.inf
        return out.astype(np.float32)

    def _above_and_equal(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items of each value's row scored strictly higher, and scored equal (the item itself included)."""
        keys = row_keys(rows, np.where(np.isfinite(values), values, 0))
        below = np.searchsorted(self.value_keys, keys, side="left")
        at_most = np.searchsorted(self.value_keys, keys, side="right")
        above, equal = self.bounds[rows + 1] - at_most, at_most - below
        finite = self.own.n_items - self.own.counts[rows]  # items not own: the row's finite scores
        equal = np.where(values > 0, equal, finite - self.positive[rows])  # a zero ties with every unreached item
        return np.where(np.isfinite(values), above, finite), np.where(np.isfinite(values), equal, self.own.counts[rows])

    def retrievable(self, values: np.ndarray) -> np.ndarray:
        return values > 0


def reached(scores: sp.csr_matrix, own: OwnItems, top: int, depth: int) -> SparseScores | DenseScores:
    """The view of a sparse source's batch: sparse while few items are reached, dense rows once sorting the
    non-zeros costs more than a pass over every item (the answers are the same)."""
    if scores.nnz * DENSE_SHARE < scores.shape[0] * scores.shape[1]:
        return SparseScores(scores, own, top, depth)
    dense = scores.toarray().astype(np.float32, copy=False)
    dense[own.rows, own.items] = -np.inf
    return DenseScores(dense, top, depth, positive_only=True)


class SharedScores(CountedScores):
    """A source that scores every row alike (popularity, recent clicks), own items -inf: the catalogue sorted
    once, and per row only its own items taken out.

    Args:
        scores: (n_items,) float32 scores.
        own: the batch's own items.
        top: a row's top is its `top` best scores among items not its own, ties all included.
        depth: ranks are capped at ``depth + 1``.
    """

    def __init__(self, scores: np.ndarray, own: OwnItems, top: int, depth: int) -> None:
        n, b = len(scores), len(own.counts)
        self.scores, self.own, self.depth = np.asarray(scores, dtype=np.float32), own, depth
        self.best_first = np.argsort(-self.scores, kind="stable")
        self.ascending = self.scores[self.best_first[::-1]]
        own_rows, own_items = own.rows, own.items
        by_value = np.lexsort((self.scores[own_items], own_rows))
        self.own_keys = row_keys(own_rows[by_value], self.scores[own_items][by_value])
        self.own_bounds = np.searchsorted(own_rows[by_value], np.arange(b + 1))
        # The top-th best item not the row's own sits at position top - 1 + (own items ahead of it) of the
        # catalogue's order: own item i (0-based, by position s_i) is ahead when s_i - i, the items not own
        # before it, is at most top - 1.
        position = np.empty(n, dtype=np.int64)
        position[self.best_first] = np.arange(n)
        s = np.sort(own_rows * n + position[own_items])
        s_rows, s_pos = s // n, s % n
        index_in_row = np.arange(len(s)) - np.searchsorted(s_rows, s_rows)
        ahead = np.bincount(s_rows[s_pos - index_in_row <= top - 1], minlength=b)
        at = top - 1 + ahead
        self.threshold = np.where(at < n, self.scores[self.best_first[np.minimum(at, n - 1)]], -np.inf).astype(np.float32)

    def hit_keys(self) -> np.ndarray:
        n = len(self.scores)
        reach = n - np.searchsorted(self.ascending, self.threshold, side="left")  # items scored >= the row's threshold
        rows = group_rows(np.concatenate([[0], np.cumsum(reach)]))
        items = self.best_first[np.arange(len(rows)) - np.repeat(np.cumsum(reach) - reach, reach)]
        keep = ~self.own.mask(rows, items)
        return np.sort(rows[keep].astype(np.int64) * n + items[keep])

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.where(self.own.mask(rows, items), -np.inf, self.scores[items]).astype(np.float32)

    def _above_and_equal(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        finite = np.isfinite(values)
        v = np.where(finite, values, 0).astype(np.float32)
        keys = row_keys(rows, v)
        own_above = self.own_bounds[rows + 1] - np.searchsorted(self.own_keys, keys, side="right")
        own_equal = np.searchsorted(self.own_keys, keys, side="right") - np.searchsorted(self.own_keys, keys, side="left")
        at_most = np.searchsorted(self.ascending, v, side="right")
        above = len(self.scores) - at_most - own_above
        equal = at_most - np.searchsorted(self.ascending, v, side="left") - own_equal
        not_own = len(self.scores) - self.own.counts[rows]
        return np.where(finite, above, not_own), np.where(finite, equal, self.own.counts[rows])

    def retrievable(self, values: np.ndarray) -> np.ndarray:
        return np.isfinite(values)


class IndexedText:
    """The text source through the approximate index: each row's retrieved items, exact cosines for any pair.

    Args:
        users: (rows, d) normalised user vectors.
        vectors: (n_items, d) normalised item vectors.
        found: (rows, k) item ids the index returned, best first (-1 = none), k > `top` to spare own items.
        own: the batch's own items (never retrieved, scored -inf).
        top: items kept per row.
    """

    def __init__(self, users: np.ndarray, vectors: np.ndarray, found: np.ndarray, own: OwnItems, top: int) -> None:
        self.users, self.vectors, self.own, self.n = users, vectors, own, len(vectors)
        b, k = found.shape
        rows, ids = np.repeat(np.arange(b), k), found.ravel()
        ok = ids >= 0
        ok[ok] = ~own.mask(rows[ok], ids[ok])
        rows, ids = rows[ok], ids[ok]
        position = np.arange(len(rows)) - np.searchsorted(rows, np.arange(b))[rows]
        keep = position < top
        self.rows, self.items = rows[keep], ids[keep]
        self.keys = np.sort(self.rows * self.n + self.items)
        self.ordered = np.full((b, top), -np.inf, dtype=np.float32)
        self.ordered[self.rows, position[keep]] = self.values(self.rows, self.items)
        self.ordered.sort(axis=1)

    def hit_keys(self) -> np.ndarray:
        return self.keys

    def values(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Exact cosines of the (row, item) pairs; -inf for a row's own items."""
        out = np.empty(len(rows), dtype=np.float32)
        for lo in range(0, len(rows), PAIR_CHUNK):
            r, i = rows[lo : lo + PAIR_CHUNK], items[lo : lo + PAIR_CHUNK]
            out[lo : lo + PAIR_CHUNK] = np.einsum("pd,pd->p", self.users[r], self.vectors[i])
        out[self.own.mask(rows, items)] = -np.inf
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
    hits: dict[str, np.ndarray] = field(default_factory=dict)  # source -> (rows,) items it retrieved for each history

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
