"""Approximate text neighbours: an inverted-file index (faiss IVF-Flat, inner product on L2-normalised vectors).

Above ``RetrievalConfig.text_ann_items`` items the text source takes its top items from this index instead of
scoring the whole catalogue (benchmarks/results/retrieval_scale.md measures where that starts to pay).
IVF rather than HNSW: its k-means is seeded and its search is exhaustive within the probed lists, so the same
vectors give the same neighbours on any thread count. :meth:`TextIndex.calibrate` raises the number of probed
lists until the recall@k against exact search, on sample queries, reaches the target; the retrieval plan reports it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)

POINTS_PER_LIST = 64  # k-means training points per list: enough for stable centroids, cheap to train


def neighbour_recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean share of each row's exact top-k ids (-1 = none) that the approximate top-k also holds."""
    hits = [len(np.intersect1d(e[e >= 0], a[a >= 0])) / max(int((e >= 0).sum()), 1) for e, a in zip(exact, approx)]
    return float(np.mean(hits)) if hits else 1.0


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) ids of the highest inner products, best first."""
    scores = queries @ vectors.T
    k = min(k, vectors.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


class TextIndex:
    """IVF-Flat over the catalogue's text vectors (rows L2-normalised: inner product = cosine)."""

    def __init__(self, vectors: np.ndarray, seed: int = 0) -> None:
        import faiss

        start = time.perf_counter()
        n, d = vectors.shape
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.lists = max(1, int(np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        self.index = faiss.IndexIVFFlat(quantizer, d, self.lists, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, size=min(n, POINTS_PER_LIST * self.lists), replace=False)
        self.index.train(self.vectors[np.sort(sample)])
        self.index.add(self.vectors)
        self._quantizer = quantizer  # faiss does not own it: keep it alive as long as the index
        self.nprobe = 1
        self.build_seconds = time.perf_counter() - start

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = int(min(max(value, 1), self.lists))

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(rows, k) item ids of the best inner products found, best first; -1 where fewer were found."""
        _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return ids

    def calibrate(self, queries: np.ndarray, k: int, target: float, start: int = 16) -> float:
        """Double the probed lists from `start` until recall@k against exact search on `queries` reaches `target`
        (or every list is probed); returns the recall reached."""
        exact = exact_neighbours(queries, self.vectors, k)
        self.nprobe = start
        while True:
            recall = neighbour_recall(exact, self.search(queries, k))
            if recall >= target or self.nprobe >= self.lists:
                return recall
            self.nprobe *= 2
