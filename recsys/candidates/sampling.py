"""Training impressions from interaction-only logs: each positive with K sampled negatives.

Interaction logs (``manifest["kind"] == "interactions"``) hold one row per interaction with
``candidates=[item]``, ``labels=[1]``. Models that learn from impressions (the text model, the ranker)
need negatives, so :func:`sample_negatives` turns every row into ``candidates = [positive, neg_1..neg_K]``,
``labels = [1, 0, ..., 0]`` and a boolean list column ``is_sampled`` (:data:`recsys.data.Col.SAMPLED`)
that is False for logged candidates and True for sampled ones (it explodes alongside the candidates).

Negatives are drawn uniformly or in proportion to ``popularity ** alpha`` (popularity = interactions
in the given rows), and never from the items the user interacted with anywhere in the given rows
(history or candidates), so a "negative" is never something the user actually took.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data import Col
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

UNIFORM, POPULARITY = "uniform", "popularity"


@dataclass(frozen=True)
class SamplingConfig:
    """How many negatives per positive and how they are drawn.

    Attributes:
        negatives: K, sampled negatives per positive.
        strategy: ``"uniform"`` over the catalogue or ``"popularity"`` (proportional to count ** alpha).
        alpha: popularity exponent (0.75 as word2vec; 1 = proportional; 0 = uniform).
        max_rows: keep a seeded sample of at most this many rows (None = all).
        seed: random seed.
    """

    negatives: int = 4
    strategy: str = POPULARITY
    alpha: float = 0.75
    max_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise RecsysError(f"SamplingConfig.negatives must be >= 1, got {self.negatives}")
        if self.strategy not in (UNIFORM, POPULARITY):
            raise RecsysError(f"SamplingConfig.strategy={self.strategy!r}; use {UNIFORM!r} or {POPULARITY!r}")
        if self.alpha < 0:
            raise RecsysError(f"SamplingConfig.alpha must be >= 0, got {self.alpha}")
        if self.max_rows is not None and self.max_rows < 1:
            raise RecsysError(f"SamplingConfig.max_rows must be >= 1 or None, got {self.max_rows}")


def item_weights(rows: pl.DataFrame, item_ids: list[str], cfg: SamplingConfig) -> np.ndarray:
    """Sampling probability of each item in `item_ids` (sums to 1)."""
    if cfg.strategy == UNIFORM or cfg.alpha == 0:
        return np.full(len(item_ids), 1.0 / len(item_ids))
    counts = (
        rows.select(pl.concat_list(Col.HISTORY, Col.CANDIDATES).alias(Col.ITEM)).explode(Col.ITEM)[Col.ITEM].value_counts()
    )
    lookup = dict(zip(counts[Col.ITEM].to_list(), counts["count"].to_list()))
    # One pseudo-count keeps never-seen items reachable (cold items still need negatives).
    w = (np.array([lookup.get(i, 0) for i in item_ids], dtype=np.float64) + 1.0) ** cfg.alpha
    return w / w.sum()


def sample_negatives(rows: pl.DataFrame, item_ids: list[str], cfg: SamplingConfig | None = None) -> pl.DataFrame:
    """Impressions-format rows: each positive with K sampled negatives the user never interacted with.

    Args:
        rows: impressions rows (any kind); every labelled positive becomes one output row.
        item_ids: the catalogue negatives are drawn from.
        cfg: sampling settings.

    Returns:
        The impressions schema (one row per positive, ``impression_id`` suffixed ``-<k>`` when a row had
        several positives) with ``candidates=[positive, negatives...]``, ``labels=[1, 0...]`` and
        ``is_sampled=[False, True...]``.

    Raises:
        RecsysError: a user has interacted with so much of the catalogue that K negatives cannot be drawn.
    """
    cfg = cfg or SamplingConfig()
    if rows.height == 0:
        return rows.with_columns(pl.lit([], dtype=pl.List(pl.Boolean())).alias(Col.SAMPLED))
    if cfg.max_rows is not None and rows.height > cfg.max_rows:
        rows = rows.sample(cfg.max_rows, seed=cfg.seed).sort([Col.TIME, Col.IMPRESSION])
    index = {item: i for i, item in enumerate(item_ids)}
    prob = item_weights(rows, item_ids, cfg)
    seen = (
        rows.select(Col.USER, pl.concat_list(Col.HISTORY, Col.CANDIDATES).alias(Col.ITEM))
        .explode(Col.ITEM)
        .group_by(Col.USER)
        .agg(pl.col(Col.ITEM).unique())
    )
    seen_by_user = {u: {index[i] for i in items if i in index} for u, items in seen.iter_rows()}
    positives = (
        rows.with_columns(pl.col(Col.LABELS).list.eval(pl.arg_where(pl.element() == 1)).alias("_pos"))
        .with_columns(pl.col(Col.CANDIDATES).list.gather(pl.col("_pos")).alias("_pos"))
        .explode("_pos", keep_nulls=False, empty_as_null=False)
        .with_columns(pl.int_range(pl.len()).over(Col.IMPRESSION).alias("_k"), pl.len().over(Col.IMPRESSION).alias("_n"))
    )
    rng = np.random.default_rng(cfg.seed)
    k = cfg.negatives
    # One vectorised draw for everyone; rows whose share runs out (heavy users) fall back to an exact draw.
    pool = rng.choice(len(prob), size=(positives.height, 2 * k), p=prob)
    negatives: list[list[str]] = []
    for r, user in enumerate(positives[Col.USER].to_list()):
        exclude = seen_by_user.get(user, set())
        picked = list(dict.fromkeys(int(j) for j in pool[r] if j not in exclude))[:k]
        if len(picked) < k:
            picked = _draw(rng, prob, exclude, picked, k)
        negatives.append([item_ids[j] for j in picked])
    out = positives.with_columns(
        pl.when(pl.col("_n") > 1).then(pl.format("{}-{}", pl.col(Col.IMPRESSION), pl.col("_k"))).otherwise(pl.col(Col.IMPRESSION)).alias(Col.IMPRESSION),
        pl.concat_list(pl.col("_pos"), pl.Series("_neg", negatives, dtype=pl.List(pl.String()))).alias(Col.CANDIDATES),
        pl.lit([1] + [0] * k, dtype=pl.List(pl.Int8())).alias(Col.LABELS),
        pl.lit([False] + [True] * k, dtype=pl.List(pl.Boolean())).alias(Col.SAMPLED),
    ).drop("_pos", "_k", "_n")
    log.info("sampled %d negatives for each of %d positives (%s)", k, out.height, cfg.strategy)
    return out


def _draw(rng: np.random.Generator, prob: np.ndarray, exclude: set[int], picked: list[int], k: int) -> list[int]:
    """Complete `picked` to K distinct item indices drawn by `prob`, none in `exclude`, from the allowed items only."""
    allowed = np.setdiff1d(np.arange(len(prob)), np.fromiter(exclude | set(picked), dtype=np.int64))
    if len(allowed) < k - len(picked):
        raise RecsysError(f"a user has interacted with all but {len(allowed)} of {len(prob)} items; cannot sample {k} negatives "
                          "(lower sampling.negatives, or drop such users)")
    p = prob[allowed] / prob[allowed].sum()
    return picked + [int(j) for j in rng.choice(allowed, size=k - len(picked), replace=False, p=p)]
