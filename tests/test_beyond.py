"""Beyond-accuracy figures against hand-computed values, and diversity against the full Gram-matrix definition."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from recsys.evaluation import beyond


def test_doctests_pass() -> None:
    result = doctest.testmod(beyond)
    assert result.attempted >= 4 and result.failed == 0


def test_beyond_accuracy() -> None:
    top = np.array([[0, 1, 2], [0, 1, -1], [3, -1, -1]])
    assert beyond.catalogue_coverage(top, 10) == pytest.approx(0.4)
    vecs = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    # list 0: pairs (0,1)->1, (0,2)->1-1/sqrt2, (1,2)->1-1/sqrt2 ; list 1: (0,1)->1 ; list 2 skipped
    d0 = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert beyond.intra_list_diversity(top, vecs) == pytest.approx((d0 + 1) / 2)
    pop = np.array([10, 10, 0, 1000])
    pb = beyond.popularity_bias(np.array([[3], [3]]), pop)
    assert pb["pop_percentile"] == pytest.approx(1.0)
    assert pb["mean_log_pop"] > pb["catalogue_mean_log_pop"]
    # Ties in popularity share the average percentile: items 0 and 1 both (1.5 - 1) / 3.
    assert beyond.popularity_bias(np.array([[0]]), pop)["pop_percentile"] == pytest.approx((2.5 - 1) / 3)
    with pytest.raises(ValueError):
        beyond.catalogue_coverage(np.array([0.5, 1.0]), 3)


def _gram_ild(top: np.ndarray, vectors: np.ndarray) -> float:
    """Intra-list diversity from each list's full Gram matrix of unit vectors (the O(k^2 d) definition)."""
    vecs = np.asarray(vectors, dtype=np.float64)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    valid = top >= 0
    emb = unit[np.where(valid, top, 0)] * valid[..., None]
    sims = np.einsum("nkd,njd->nkj", emb, emb)
    m = valid.sum(axis=1).astype(np.float64)
    pairs = m * (m - 1)
    keep = pairs > 0
    return float((1.0 - (sims.sum(axis=(1, 2)) - np.einsum("nkk->n", sims))[keep] / pairs[keep]).mean()) if keep.any() else float("nan")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_intra_list_diversity_matches_the_gram_matrix(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    # Clustered vectors (cosines far from 0), a zero vector, padding, short lists and lists of one or no item.
    vectors = (rng.normal(size=(50, 16)) + 3 * rng.normal(size=(5, 16))[rng.integers(0, 5, 50)]).astype(dtype)
    vectors[7] = 0
    top = rng.integers(0, 50, (300, 10))
    top[rng.random(top.shape) < 0.2] = -1
    top[:5, 1:] = -1
    top[5:8] = -1
    top[8, :3] = 7
    monkeypatch.setattr(beyond, "ILD_CHUNK", 64)  # several chunks, the last one short
    assert beyond.intra_list_diversity(top, vectors) == pytest.approx(_gram_ild(top, vectors), abs=1e-9)
    assert math.isnan(beyond.intra_list_diversity(np.full((3, 4), -1), vectors))
    assert math.isnan(beyond.intra_list_diversity(np.zeros((0, 10), dtype=np.int64), vectors))
