"""Implicit ALS (Hu, Koren & Volinsky 2008) via the `implicit` package: the collaborative source that scales.

Fitting keeps (users + items) x factors floats; scoring folds each history in afresh (one small
least-squares solve per row, as implicit's ``recalculate_user``), so histories that were not in the training
matrix (requests, held-out prefixes) are scored the same way as those that were. Only the item factors
are kept after fitting.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


class ALS:
    """Item factors of an implicit-feedback matrix factorisation; scores = folded-in user factors . item factors."""

    def __init__(self, model: object) -> None:
        self.model = model

    @classmethod
    def fit(cls, users: sp.csr_matrix, factors: int, iterations: int, l2: float, alpha: float, seed: int = 0) -> ALS:
        """Factorise the binary (users, items) matrix (confidence 1 + `alpha` on an interaction).

        Args:
            users: binary user x item CSR matrix.
            factors: latent dimensions.
            iterations: ALS sweeps.
            l2: ridge strength of every least-squares solve.
            alpha: confidence weight of an observed interaction.
            seed: seed of the initial factors.
        """
        from implicit.cpu.als import AlternatingLeastSquares

        start = time.perf_counter()
        # implicit parallelises over users itself: a multi-threaded BLAS inside each solve only oversubscribes.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=factors, regularization=l2, alpha=alpha, iterations=iterations,
                                            random_state=seed, dtype=np.float32)
            model.fit(users.astype(np.float32), show_progress=False)
        model.user_factors = np.zeros((0, factors), dtype=np.float32)  # folded in again per history when scoring
        log.info("ALS fitted: %d users, %d items, %d factors, %d iterations in %.1f s",
                 users.shape[0], users.shape[1], factors, iterations, time.perf_counter() - start)
        return cls(model)

    @property
    def item_factors(self) -> np.ndarray:
        return self.model.item_factors  # type: ignore[attr-defined]

    def user_factors(self, users: sp.csr_matrix) -> np.ndarray:
        """(rows, factors) user factors solved for the given binary history rows."""
        with threadpool_limits(1, "blas"):
            return self.model.recalculate_user(np.arange(users.shape[0]), users.astype(np.float32).tocsr())  # type: ignore[attr-defined]

    def scores(self, users: sp.csr_matrix) -> np.ndarray:
        """(rows, items) float32 scores of the given binary history rows."""
        return self.user_factors(users) @ self.item_factors.T
