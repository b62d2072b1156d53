"""Pair features read (request, candidate) pairs only: both ways of computing text cosines and the sparse lookups
agree with the dense catalogue-wide computation they replace."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from features import pairs


def _case(seed: int = 0, rows: int = 70, n_items: int = 300, d: int = 16, q: int = 3) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n_items, d)).astype(np.float32)
    counts = rng.integers(0, 40, rows)  # some rows have no candidates
    local = np.repeat(np.arange(rows), counts)
    items = rng.integers(0, n_items, len(local))
    queries = rng.standard_normal((rows, q, d)).astype(np.float32)
    return v, queries, local, items


@pytest.mark.parametrize("gather_over_gemm", [10**9, 0])  # the dense product over distinct items / the padded blocks
def test_text_similarities_equal_the_dense_product(monkeypatch: pytest.MonkeyPatch, gather_over_gemm: int) -> None:
    monkeypatch.setattr(pairs, "_GATHER_OVER_GEMM", gather_over_gemm)
    v, queries, local, items = _case()
    dense = np.einsum("rqd,nd->rqn", queries, v)  # every query against the whole catalogue
    got = pairs._text_similarities(v, queries, local, items)
    np.testing.assert_allclose(got, dense[local, :, items], rtol=1e-5, atol=1e-5)


def test_pair_lookup_reads_sparse_and_dense_matrices() -> None:
    rng = np.random.default_rng(1)
    m = sp.random(50, 60, density=0.1, format="csr", random_state=2, dtype=np.float32)
    rows, cols = rng.integers(-1, 50, 500), rng.integers(0, 60, 500)
    expected = np.where(rows >= 0, m.toarray()[np.maximum(rows, 0), cols], 0.0)
    np.testing.assert_array_equal(pairs.pair_lookup(m, rows, cols), expected)
    np.testing.assert_array_equal(pairs.pair_lookup(m.toarray(), rows, cols), expected)
    np.testing.assert_array_equal(pairs.pair_lookup(sp.csr_matrix((50, 60), dtype=np.float32), rows, cols), np.zeros(500))
    assert not pairs.pair_lookup(None, rows, cols).any()
