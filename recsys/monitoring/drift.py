"""Distribution summaries and the drift statistics that compare a new sample with one: PSI and normalised Wasserstein.

A reference keeps no rows, only a summary (:func:`summarise`) of each distribution:

* ``quantiles``: the values at the 100 percentile mid-points (0.5%, 1.5%, ..., 99.5%) of the non-null values;
* ``edges`` and ``shares``: PSI bins cut at the reference's ventiles (duplicates dropped, so a discrete feature
  gets fewer, wider bins) and the share of all rows in each, plus a last bin for nulls;
* ``n``, ``null_share``, ``mean``, ``std``, ``min``, ``max``.

:func:`compare` bins the new values at the reference's edges for the PSI (Siddiqi's population stability index,
shares floored at :data:`EPSILON` so an empty bin counts as a rare one, not an infinite one) and measures the
Wasserstein-1 distance between the two quantile functions (``scipy.stats.wasserstein_distance`` over the
percentile mid-points), divided by the reference's standard deviation: how far the mass moved, in reference
standard deviations (Evidently's "normed" Wasserstein).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

MIDPOINTS = (np.arange(100) + 0.5) / 100  # the percentile mid-points the quantiles are taken at
VENTILES = np.arange(1, 20) / 20  # PSI bins cut at these reference quantiles
EPSILON = 1e-4  # floor of a bin's share in the PSI: an empty bin is rare, not impossible
DIGITS = 6  # significant digits kept in summaries (they are compared, not re-derived)


def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{DIGITS}g}")


def _values(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(the finite values as float64, the number of rows): NaN, None and infinities count as nulls."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)], arr.size


def _shares(finite: np.ndarray, n: int, edges: np.ndarray) -> np.ndarray:
    """Share of the `n` rows in each bin cut at `edges` (a value equal to an edge falls in the lower bin), nulls last."""
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1).astype(np.float64)
    return np.append(counts, n - finite.size) / max(n, 1)


def summarise(values: np.ndarray) -> dict[str, Any]:
    """The summary of one distribution that a later sample is compared with (see the module docstring).

    Args:
        values: the sample; NaN (or infinite) values are nulls.

    Returns:
        ``n``, ``null_share``, ``mean``, ``std``, ``min``, ``max``, ``quantiles`` (100), ``edges``, ``shares``
        (``len(edges) + 2``: the bins, then nulls), JSON-able. A sample without a value has no quantiles or edges.

    >>> s = summarise(np.array([1.0, 2.0, 3.0, np.nan]))
    >>> s["n"], s["null_share"], s["mean"], s["shares"][-1]
    (4, 0.25, 2.0, 0.25)
    """
    finite, n = _values(values)
    if finite.size == 0:
        return {"n": n, "null_share": 1.0 if n else 0.0, "mean": None, "std": None, "min": None, "max": None,
                "quantiles": [], "edges": [], "shares": list(_shares(finite, n, np.zeros(0)))}  # one bin of values, then nulls
    edges = np.unique(np.quantile(finite, VENTILES))
    return {
        "n": n, "null_share": _round(1.0 - finite.size / n), "mean": _round(finite.mean()), "std": _round(finite.std()),
        "min": _round(finite.min()), "max": _round(finite.max()),
        "quantiles": [_round(q) for q in np.quantile(finite, MIDPOINTS)],
        "edges": [float(e) for e in edges],  # exact: a rounded edge would move values equal to it into the next bin
        "shares": [_round(s) for s in _shares(finite, n, edges)],
    }


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins: sum (a - e) ln(a / e), shares floored.

    >>> psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 4)  # 0.4 ln 1.8 + 0.4 ln 5
    0.8789
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Drift:
    """How far a sample moved from a reference summary.

    Attributes:
        psi: population stability index over the reference's bins (nulls a bin of their own).
        wasserstein: Wasserstein-1 distance of the non-null values' quantile functions over the reference's standard
            deviation; infinite when one side has values and the other none, 0 when neither has.
        null_share: the new sample's share of nulls (the reference's is in its summary).
        n: the new sample's rows.
    """

    psi: float
    wasserstein: float
    null_share: float
    n: int


def compare(reference: dict[str, Any], values: np.ndarray) -> Drift:
    """The :class:`Drift` of `values` (NaN = null) from the `reference` summary of :func:`summarise`.

    >>> ref = summarise(np.arange(1000.0))
    >>> d = compare(ref, np.arange(1000.0))
    >>> d.psi, d.wasserstein
    (0.0, 0.0)
    >>> round(compare(ref, np.arange(1000.0) + 289.0).wasserstein, 2)  # moved by one standard deviation (288.7)
    1.0
    """
    finite, n = _values(values)
    shares = _shares(finite, n, np.asarray(reference["edges"], dtype=np.float64))
    stability = psi(np.asarray(reference["shares"], dtype=np.float64), shares)
    ref_q = np.asarray(reference["quantiles"], dtype=np.float64)
    if ref_q.size and finite.size:
        std = float(reference["std"] or 0.0)
        scale = max(std, 1e-6 * max(1.0, abs(float(reference["mean"] or 0.0))))  # a constant reference: any move is large
        moved = wasserstein_distance(ref_q, np.quantile(finite, MIDPOINTS)) / scale
    else:
        moved = 0.0 if ref_q.size == finite.size == 0 else math.inf
    return Drift(psi=stability, wasserstein=float(moved), null_share=1.0 - finite.size / n if n else 0.0, n=n)


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = 500, chunk: int = 50) -> dict[str, float]:
    """Mean of `values` with its bootstrap standard error and 95% percentile interval (rows resampled with replacement).

    Args:
        values: one value per row (NaN rows are dropped).
        seed: seed of the resampling.
        resamples: bootstrap resamples.
        chunk: resamples drawn at once (bounds memory at chunk x rows indices).

    Returns:
        ``value``, ``se``, ``lo``, ``hi``, ``n``; NaN statistics for fewer than two rows.

    >>> b = bootstrap(np.array([0.0, 1.0] * 200))
    >>> b["value"], b["lo"] < 0.5 < b["hi"], 0.02 < b["se"] < 0.03
    (0.5, True, True)
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return {"value": float(v.mean()) if v.size else math.nan, "se": math.nan, "lo": math.nan, "hi": math.nan, "n": int(v.size)}
    rng = np.random.default_rng(seed)
    means = np.concatenate([v[rng.integers(0, v.size, (min(chunk, resamples - start), v.size))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"value": float(v.mean()), "se": float(means.std(ddof=1)), "lo": float(lo), "hi": float(hi), "n": int(v.size)}
