"""Retrieval views: the sparse (transitions, co-occurrence) and shared (popularity) forms give exactly the answers
dense rows of the same scores give: the same top items, pair scores, capped ranks and target ranks with ties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.candidates.topn import DenseScores, OwnItems, SharedScores, SparseScores, ranks_of, reached

B, N = 30, 300


def own_items(rng: np.random.Generator) -> tuple[OwnItems, np.ndarray]:
    """Own items per row: none for some rows, nearly the whole catalogue for one; and the binary matrix."""
    binary = (rng.random((B, N)) < rng.choice([0.0, 0.02, 0.1], size=(B, 1))).astype(np.float32)
    binary[1, 3:] = 1.0  # only three items left to rank
    return OwnItems.of(sp.csr_matrix(binary)), binary


def sparse_scores(rng: np.random.Generator) -> sp.csr_matrix:
    """Non-negative scores reaching a few items per row, with ties (rounded values), empty rows and rows
    reaching more items than a top holds."""
    density = rng.choice([0.0, 0.01, 0.05, 0.5], size=(B, 1))
    values = np.round(rng.random((B, N)) * 4, 1).astype(np.float32) * (rng.random((B, N)) < density)
    return sp.csr_matrix(values)


def dense_of(scores: np.ndarray, binary: np.ndarray) -> np.ndarray:
    out = np.array(scores, dtype=np.float32)
    out[binary > 0] = -np.inf
    return out


def assert_same_answers(view: object, reference: DenseScores, rng: np.random.Generator) -> None:
    np.testing.assert_array_equal(np.sort(view.hit_keys()), reference.hit_keys())  # type: ignore[attr-defined]
    rows, items = np.repeat(np.arange(B), N), np.tile(np.arange(N), B)  # every pair, grouped by row
    values = view.values(rows, items)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(values, reference.values(rows, items))
    np.testing.assert_array_equal(view.hits(rows, items, values), reference.hits(rows, items, values))  # type: ignore[attr-defined]
    bounds = np.arange(0, B * N + 1, N)
    np.testing.assert_array_equal(view.ranks(values, bounds), reference.ranks(values, bounds))  # type: ignore[attr-defined]
    targets = rng.integers(0, N, B)
    np.testing.assert_array_equal(view.target_ranks(targets), reference.target_ranks(targets))  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("top", "depth"), [(5, N + 10), (40, N + 10), (5, 50), (40, 40)])
def test_sparse_scores_answer_as_dense_rows_do(seed: int, top: int, depth: int) -> None:
    rng = np.random.default_rng(seed)
    own, binary = own_items(rng)
    scores = sparse_scores(rng)
    reference = DenseScores(dense_of(scores.toarray(), binary), top, depth, positive_only=True)
    assert_same_answers(SparseScores(scores, own, top, depth), reference, rng)
    # Whichever form `reached` picks for a batch, the answers are the same.
    assert_same_answers(reached(scores, own, top, depth), reference, rng)


def test_reached_keeps_sparse_batches_sparse_and_dense_ones_dense() -> None:
    rng = np.random.default_rng(0)
    own, _ = own_items(rng)
    few = sp.random(B, N, density=0.01, format="csr", random_state=1, dtype=np.float32)
    many = sp.random(B, N, density=0.5, format="csr", random_state=1, dtype=np.float32)
    assert isinstance(reached(few, own, 5, N), SparseScores)
    assert isinstance(reached(many, own, 5, N), DenseScores)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("top", "depth"), [(5, N + 10), (40, N + 10), (5, 50), (290, N)])
def test_shared_scores_answer_as_dense_rows_do(seed: int, top: int, depth: int) -> None:
    rng = np.random.default_rng(seed)
    own, binary = own_items(rng)
    popularity = rng.poisson(0.7, N).astype(np.float32) * rng.choice([1, 10], N)  # many zeros and ties
    reference = DenseScores(dense_of(np.broadcast_to(popularity, (B, N)), binary), top, depth)
    assert_same_answers(SharedScores(popularity, own, top, depth), reference, rng)


def test_vectorised_ranks_equal_a_search_per_row() -> None:
    rng = np.random.default_rng(5)
    ordered = np.sort(np.round(rng.normal(size=(20, 50)), 1).astype(np.float32), axis=1)
    ordered[3, :10] = -np.inf
    ordered[4] = -0.0  # negative zero ties with zero
    sizes = rng.integers(0, 30, 20)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    values = np.round(rng.normal(size=bounds[-1]), 1).astype(np.float32)
    values[:3] = [-np.inf, 0.0, -0.0]
    expected = np.concatenate([1 + 50 - np.searchsorted(ordered[r], values[bounds[r] : bounds[r + 1]], side="right") for r in range(20)])
    np.testing.assert_array_equal(ranks_of(ordered, values, bounds), expected)
