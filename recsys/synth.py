"""A synthetic news log where clicks truly depend on text, with the true click probabilities.

The world:

* 12 topics, each with its own real English words and 3 sub-topics with their own words, plus
  shared filler words. An item's category is its topic; its title and abstract mix topic,
  sub-topic and filler words. The sub-topic is NOT in the metadata (the subcategory is an
  editorial format that does not move clicks), as real categories are coarser than what readers
  care about: only the text tells a user's favourite sub-topic apart, so a text model can beat
  category statistics.
* Items have a latent quality (popularity) and a publish time; they are shown for ``pool_days``
  after publication, more often when popular and fresh.
* Users have a few latent topic interests (Dirichlet) and a favourite sub-topic per topic.
* Impressions are position-free: each candidate is clicked with probability
  ``sigmoid(b0 + w_topic*log(interest) + w_sub*[favourite sub-topic] + w_q*quality - w_age*age)``,
  ``b0`` solved so the mean CTR is ``target_ctr``. Topic match dominates, so text can be learned;
  popularity and freshness move it too, so behaviour features help.
* Histories are a warm start plus the user's clicks before each impression. Warm-start clicks follow the
  click model too: a topic drawn from the user's interests, then an item of it weighted by quality and by
  the match with the user's favourite sub-topic (so a history shows the sub-topic taste, as real ones do).

Everything is drawn from one ``numpy`` generator seeded by ``seed``: same config, same data.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data import Col, Dataset, Split, build_manifest, save_dataset
from recsys.errors import RecsysError
from recsys.loaders.timeline import histories_before
from recsys.splits import time_labels
from recsys.synth_vocab import FILLER, TOPICS

log = logging.getLogger(__name__)

FORMATS = ("dataset", "mind")

# Editorial formats shown as the subcategory; independent of topic, sub-topic and clicks.
EDITORIAL_FORMATS = ("news", "opinion", "analysis", "guide", "interview")

# name -> (items, users, impressions, min candidates, max candidates, days, pool days)
SIZES: dict[str, tuple[int, int, int, int, int, float, float]] = {
    "tiny": (150, 80, 400, 5, 15, 4.0, 2.0),
    "sample": (1200, 1500, 12_000, 10, 30, 7.0, 2.0),
    "small": (4000, 10_000, 100_000, 10, 30, 7.0, 1.5),
    "medium": (8000, 50_000, 400_000, 10, 30, 10.0, 1.0),
    "large": (12_000, 150_000, 1_000_000, 10, 30, 14.0, 1.0),
}


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and effect strengths of the synthetic world (see the module docstring)."""

    n_items: int = 1200
    n_users: int = 1500
    n_impressions: int = 12_000
    min_candidates: int = 10
    max_candidates: int = 30
    days: float = 7.0
    pool_days: float = 2.0
    dev_fraction: float = 0.2
    test_fraction: float = 0.0
    target_ctr: float = 0.04
    warm_history: float = 8.0
    max_history: int = 50
    topic_weight: float = 1.2
    subtopic_weight: float = 1.2
    quality_weight: float = 0.5
    freshness_weight: float = 1.0
    interest_concentration: float = 0.3
    start: str = "2019-11-09T00:00:00"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_items, self.n_users, self.n_impressions) < 1:
            raise RecsysError("n_items, n_users and n_impressions must be >= 1")
        if not 1 <= self.min_candidates <= self.max_candidates:
            raise RecsysError(f"need 1 <= min_candidates <= max_candidates, got {self.min_candidates}, {self.max_candidates}")
        if self.days <= 0 or self.pool_days <= 0:
            raise RecsysError("days and pool_days must be positive")
        if not (0 <= self.dev_fraction and 0 <= self.test_fraction and self.dev_fraction + self.test_fraction < 1):
            raise RecsysError("dev_fraction and test_fraction must be >= 0 and sum to less than 1")
        if not 0 < self.target_ctr < 1:
            raise RecsysError(f"target_ctr must be in (0, 1), got {self.target_ctr}")
        datetime.fromisoformat(self.start)

    @classmethod
    def preset(cls, size: str, seed: int = 0, **overrides: object) -> SynthConfig:
        """A named size (:data:`SIZES`) with optional overrides.

        Raises:
            RecsysError: unknown size.
        """
        if size not in SIZES:
            raise RecsysError(f"unknown size {size!r}; use one of {sorted(SIZES)}")
        items, users, imps, kmin, kmax, days, pool = SIZES[size]
        base = dict(n_items=items, n_users=users, n_impressions=imps, min_candidates=kmin, max_candidates=kmax, days=days, pool_days=pool, seed=seed)
        return cls(**{**base, **overrides})  # type: ignore[arg-type]


def _sentences(rng: np.random.Generator, topic: np.ndarray, sub: np.ndarray, lo: int, hi: int, mix: tuple[float, float, float]) -> list[str]:
    """One text per item: ``lo..hi`` words drawn from its topic, sub-topic and filler words (mix = their shares)."""
    names = list(TOPICS)
    topic_words = [TOPICS[t][0].split() for t in names]
    sub_words = [[w.split() for w in TOPICS[t][1].values()] for t in names]
    lengths = rng.integers(lo, hi + 1, size=topic.size)
    kinds = rng.choice(3, size=(topic.size, hi), p=mix)
    picks = rng.random((topic.size, hi))
    texts = []
    for i in range(topic.size):  # items are few (<= tens of thousands); this builds strings only
        pools = (topic_words[topic[i]], sub_words[topic[i]][sub[i]], FILLER)
        words = [pools[k][int(p * len(pools[k]))] for k, p in zip(kinds[i, : lengths[i]], picks[i, : lengths[i]])]
        texts.append(" ".join(words).capitalize())
    return texts


def _at(start: datetime, seconds: np.ndarray) -> pl.Series:
    """Datetimes ``start + seconds``."""
    return pl.select(pl.lit(start, dtype=pl.Datetime("us")) + pl.Series((seconds * 1e6).astype(np.int64)).cast(pl.Duration("us"))).to_series()


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values)


def _calibrate(logits: np.ndarray, target: float) -> float:
    """The intercept b0 with mean(sigmoid(b0 + logits)) == target (bisection; the mean is monotone in b0)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(mid + logits)))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _candidates(cfg: SynthConfig, rng: np.random.Generator, imp_time: np.ndarray, pub: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate items of each impression, from the pool of items published in the last ``pool_days``.

    Sampled without replacement proportionally to popularity x freshness (exponential-race trick),
    then shuffled so the order carries no signal. Returns (offsets, flat item indices).
    """
    pool_s = cfg.pool_days * 86400
    k = rng.integers(cfg.min_candidates, cfg.max_candidates + 1, size=imp_time.size)
    hour = (imp_time // 3600).astype(np.int64)
    chosen, lengths = [], []
    # Impressions are sorted by time, so each hour's rows are contiguous and results concatenate in order.
    for h in np.unique(hour):  # hourly pools: a few hundred iterations, each vectorised
        rows = np.flatnonzero(hour == h)
        t = h * 3600.0
        pool = np.flatnonzero((pub <= t) & (pub > t - pool_s))
        if pool.size == 0:
            pool = np.argsort(np.abs(pub - t))[: cfg.max_candidates]
        logw = quality[pool] - 2.0 * (t - pub[pool]) / pool_s
        n = np.minimum(k[rows], pool.size)
        kmax = int(n.max())
        keys = logw[None, :] - np.log(rng.standard_exponential((rows.size, pool.size), dtype=np.float32))
        top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax] if kmax < pool.size else np.tile(np.arange(pool.size), (rows.size, 1))
        top = np.take_along_axis(top, np.argsort(rng.random(top.shape), axis=1), axis=1)
        chosen.append(pool[top[np.arange(kmax)[None, :] < n[:, None]]])
        lengths.append(n)
    offsets = np.zeros(imp_time.size + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return offsets, np.concatenate(chosen)


def generate(cfg: SynthConfig) -> Dataset:
    """Generate a synthetic dataset in memory (splits by time; ``click_probs`` filled).

    Args:
        cfg: sizes, effects and seed.

    Returns:
        A validated :class:`~recsys.data.Dataset`; impression ids are ``"<split>-<n>"`` as the
        MIND loader makes them, so ``write_mind`` + ``load_mind`` gives the same impressions back.
    """
    rng = np.random.default_rng(cfg.seed)
    n_topics, n_sub = len(TOPICS), 3
    start = datetime.fromisoformat(cfg.start)
    span, pool_s = cfg.days * 86400, cfg.pool_days * 86400

    # Items: topic, sub-topic, quality, publish time (seconds from start; some before, for warm starts).
    topic_share = rng.dirichlet(np.full(n_topics, 5.0))
    topic = rng.choice(n_topics, size=cfg.n_items, p=topic_share)
    sub = rng.integers(0, n_sub, size=cfg.n_items)
    quality = rng.normal(0, 1, size=cfg.n_items)
    pub = np.floor(rng.uniform(-pool_s, span, size=cfg.n_items))
    titles = _sentences(rng, topic, sub, 5, 10, (0.5, 0.25, 0.25))
    abstracts = _sentences(rng, topic, sub, 12, 24, (0.4, 0.2, 0.4))

    # Users: concentrated topic interests, a favourite sub-topic per topic, activity level.
    interest = rng.dirichlet(np.full(n_topics, cfg.interest_concentration), size=cfg.n_users)
    favourite = rng.integers(0, n_sub, size=(cfg.n_users, n_topics))
    activity = rng.lognormal(0, 1, size=cfg.n_users)

    # Whole seconds, as MIND logs them, so a MIND round trip is exact.
    imp_time = np.sort(np.floor(rng.uniform(0, span, size=cfg.n_impressions)))
    imp_user = rng.choice(cfg.n_users, size=cfg.n_impressions, p=activity / activity.sum())
    offsets, cand = _candidates(cfg, rng, imp_time, pub, quality)
    row = np.repeat(np.arange(cfg.n_impressions), np.diff(offsets))
    u, t = imp_user[row], topic[cand]
    age = np.clip(imp_time[row] - pub[cand], 0, None) / pool_s
    logits = (
        cfg.topic_weight * np.log(interest[u, t] * n_topics + 0.05)
        + cfg.subtopic_weight * (favourite[u, t] == sub[cand])
        + cfg.quality_weight * quality[cand]
        - cfg.freshness_weight * age
    )
    probs = 1 / (1 + np.exp(-(_calibrate(logits, cfg.target_ctr) + logits)))
    labels = (rng.random(probs.size) < probs).astype(np.int8)

    # Clicks for histories: warm-start clicks before the log (interests, then sub-topic and quality), then logged clicks.
    n_warm = rng.poisson(cfg.warm_history, size=cfg.n_users)
    warm_user = np.repeat(np.arange(cfg.n_users), n_warm)
    warm_topic = (rng.random(warm_user.size)[:, None] > np.cumsum(interest, axis=1)[warm_user]).sum(axis=1).clip(0, n_topics - 1)
    old = pub < 0
    warm_item = np.empty(warm_user.size, dtype=np.int64)
    warm_favourite = favourite[warm_user, warm_topic]
    for k in range(n_topics):
        pool = np.flatnonzero(old & (topic == k))
        pool = pool if pool.size else np.flatnonzero(old) if old.any() else np.arange(cfg.n_items)
        for f in range(n_sub):  # within the topic, the click model's sub-topic and quality terms choose the item
            sel = np.flatnonzero((warm_topic == k) & (warm_favourite == f))
            w = np.exp(quality[pool] + cfg.subtopic_weight * (sub[pool] == f))
            warm_item[sel] = pool[rng.choice(pool.size, size=sel.size, p=w / w.sum())]
    warm_time = -pool_s - rng.uniform(0, pool_s, size=warm_user.size)
    clicked = labels == 1

    item_ids = pl.Series([f"N{i + 1}" for i in range(cfg.n_items)])
    user_ids = pl.Series([f"U{j + 1}" for j in range(cfg.n_users)])
    times = _at(start, imp_time)
    clicks = pl.DataFrame(
        {
            Col.USER: user_ids.gather(np.concatenate([warm_user, u[clicked]])),
            Col.TIME: _at(start, np.concatenate([warm_time, imp_time[row][clicked]])),
            Col.ITEM: item_ids.gather(np.concatenate([warm_item, cand[clicked]])),
        }
    )
    impressions = pl.DataFrame({Col.USER: user_ids.gather(imp_user), Col.TIME: times})
    split = time_labels(times, cfg.dev_fraction, cfg.test_fraction)
    impressions = impressions.with_columns(
        pl.format("{}-{}", split, pl.int_range(1, pl.len() + 1).over(split)).alias(Col.IMPRESSION),
        histories_before(impressions, clicks, cfg.max_history),
        pl.Series(Col.CANDIDATES, _lists(offsets, item_ids.gather(cand).to_arrow().cast(pa.large_string()))),
        pl.Series(Col.LABELS, _lists(offsets, pa.array(labels))),
        split.alias(Col.SPLIT),
        pl.Series(Col.CLICK_PROBS, _lists(offsets, pa.array(probs.astype(np.float32)))),
    )
    impressions = impressions.with_columns(
        pl.when(pl.col(Col.SPLIT) == Split.TEST).then(None).otherwise(pl.col(Col.LABELS)).alias(Col.LABELS)
    ).select(Col.IMPRESSION, Col.USER, Col.TIME, Col.HISTORY, Col.CANDIDATES, Col.LABELS, Col.SPLIT, Col.CLICK_PROBS)
    names = list(TOPICS)
    items = pl.DataFrame(
        {
            Col.ITEM: item_ids,
            Col.TITLE: titles,
            Col.ABSTRACT: abstracts,
            Col.CATEGORY: [names[k] for k in topic],
            Col.SUBCATEGORY: [EDITORIAL_FORMATS[f] for f in rng.integers(0, len(EDITORIAL_FORMATS), size=cfg.n_items)],
            Col.TAGS: pl.Series([[]] * cfg.n_items, dtype=pl.List(pl.String())),
            Col.PUBLISHED: _at(start, pub),
        }
    )
    manifest = build_manifest(items, impressions, "synth", "impressions", config=asdict(cfg))
    log.info("synth: %d items, %d impressions, CTR %.4f", items.height, impressions.height, labels.mean())
    return Dataset(items=items, impressions=impressions, manifest=manifest)


def synthesize(cfg: SynthConfig, out: Path, fmt: str = "dataset") -> Dataset:
    """Generate and write: a canonical dataset directory, or MIND directories ``out/<split>/``.

    Args:
        cfg: the world to generate.
        out: output directory.
        fmt: ``"dataset"`` (items/impressions Parquet + manifest) or ``"mind"`` (news/behaviors/truth TSV).

    Returns:
        The generated dataset (in memory).

    Raises:
        RecsysError: unknown format.
    """
    if fmt not in FORMATS:
        raise RecsysError(f"unknown format {fmt!r}; use one of {FORMATS}")
    ds = generate(cfg)
    if fmt == "mind":
        from recsys.loaders.mind_export import write_mind

        write_mind(ds, out)
    else:
        save_dataset(ds, out)
    return ds
