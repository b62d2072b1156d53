"""A synthetic shop log with the shape of a real one: an items table and an events log for `recsys ingest events`.

The world:

* Items belong to one of the 12 topics of :mod:`recsys.synth_vocab` (topic shares Dirichlet) and one of its
  3 sub-topics. ``category`` is the topic, ``subcategory`` the sub-topic; the title opens with a topic word and
  mixes topic, sub-topic and product-name words, the description likewise, so the text reveals the topic.
* Popularity is Zipf within each topic (weight ``1 / rank**zipf`` by a random rank), so the top 1% of the
  catalogue takes a large share of the events and most items are rarely seen.
* Complementary products: each item has ``successors`` next items (mostly of its own topic, drawn with the
  flatter ``successor_zipf``, never itself), the first the likeliest to follow it.
* Users have 1-3 topic interests (Dirichlet weights) and heavy-tailed activity (log-normal weights): most
  have a few events, a few have hundreds. Every user has at least one event.
* Sequences come in sessions (mean length ``session_length``). Within a session the next item is, with
  probability ``p_next``, a successor of the previous one; otherwise a fresh draw: a topic from the user's
  interests (any topic with probability ``explore``), then an item by popularity. A fresh item the user already
  had is redrawn up to ``repeat_redraws`` times, so repeats are rare.
* Time: a session starts on a random day of ``days`` at an hour drawn from a diurnal profile (evening peak),
  its events seconds to minutes apart (log-normal gaps); timestamps are whole seconds, strictly increasing per user.

Everything is drawn from ``numpy`` generators seeded by ``seed`` (one child generator per block of users):
same config, same bytes. The work is vectorised and done a block of users at a time, so memory is the final
arrays (16 bytes an event, plus the time sort) and one block's temporaries; events are written in row groups.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import Col
from recsys.errors import RecsysError
from recsys.io import atomic_path, write_json, write_parquet
from recsys.synth_vocab import PRODUCT_FILLER, TOPICS

log = logging.getLogger(__name__)

ITEMS_FILE, EVENTS_FILE, SUCCESSORS_FILE, CONFIG_FILE = "items.parquet", "events.parquet", "successors.parquet", "config.json"
NEXT_ITEMS = "next_item_ids"  # column of successors.parquet: the item's complementary products, likeliest first

N_SUB = 3
BLOCK_EVENTS = 1_000_000  # events per block of users (bounds the temporaries; part of what a seed means)
ROW_GROUP = 1_000_000  # events per Parquet row group written
_USER_KEY = 2**40  # > any second offset + block length: user * _USER_KEY + time orders by user, then time
# Share of sessions starting in each hour of the day: quiet at night, a peak in the evening.
_DIURNAL = np.array([2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 7, 8, 10, 12, 12, 10, 7, 4], dtype=np.float64)
_INTERESTS = (0.5, 0.3, 0.2)  # share of users with 1, 2, 3 topic interests


@dataclass(frozen=True)
class ShopConfig:
    """Sizes, shape and seed of the synthetic shop (see the module docstring)."""

    n_users: int = 10_000
    n_items: int = 5_000
    n_events: int = 100_000
    days: int = 60
    start: str = "2024-03-01T00:00:00"
    zipf: float = 1.1
    successors: int = 3
    successor_zipf: float = 0.5
    same_topic_successor: float = 0.8
    p_next: float = 0.5
    session_length: float = 4.0
    activity_sigma: float = 1.3
    explore: float = 0.05
    repeat_redraws: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise RecsysError(f"--users must be >= 1, got {self.n_users}")
        if self.n_items < len(TOPICS):
            raise RecsysError(f"--items must be >= {len(TOPICS)} (one per topic), got {self.n_items}")
        if self.n_events < self.n_users:
            raise RecsysError(f"--events must be >= --users (every user has an event), got {self.n_events} < {self.n_users}")
        if max(self.n_users, self.n_items, self.n_events) >= 2**31:
            raise RecsysError("users, items and events must each be below 2**31")
        if self.days < 1 or self.successors < 1 or self.session_length < 1 or self.repeat_redraws < 0:
            raise RecsysError("days, successors and session_length must be >= 1, repeat_redraws >= 0")
        for name in ("same_topic_successor", "p_next", "explore"):
            if not 0 <= getattr(self, name) <= 1:
                raise RecsysError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.zipf < 0 or self.successor_zipf < 0 or self.activity_sigma < 0:
            raise RecsysError("zipf, successor_zipf and activity_sigma must be >= 0")
        datetime.fromisoformat(self.start)


@dataclass(frozen=True)
class _World:
    """The catalogue in *slots*: items sorted by topic, then by popularity rank within the topic."""

    share: np.ndarray  # topic shares
    bounds: np.ndarray  # topic t holds slots bounds[t]:bounds[t + 1]
    topic: np.ndarray  # per slot
    sub: np.ndarray  # per slot
    popular: np.ndarray  # per slot: topic + the within-topic popularity CDF, in (t, t + 1]
    succ: np.ndarray  # (slots, successors): the complementary products' slots
    item_of_slot: np.ndarray  # the item index of each slot (ids are shuffled: an id says nothing)


@dataclass(frozen=True)
class Shop:
    """A generated shop in memory: the two tables `recsys ingest events` reads, and the true successors."""

    items: pl.DataFrame
    events: pl.DataFrame
    successors: pl.DataFrame


def _topic_cdf(topic: np.ndarray, bounds: np.ndarray, exponent: float) -> np.ndarray:
    """Per slot: its topic index plus the CDF of weights ``1 / (rank + 1)**exponent`` within the topic."""
    rank = np.arange(topic.size) - bounds[topic]
    cum = np.cumsum((rank + 1.0) ** -exponent)
    before = np.concatenate([[0.0], cum[bounds[1:-1] - 1]])
    total = cum[bounds[1:] - 1] - before
    return topic + (cum - before[topic]) / total[topic]


def _draw(cdf: np.ndarray, bounds: np.ndarray, topic: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A slot of each ``topic`` by inverse CDF at ``u`` in [0, 1) (clipped to the topic against rounding)."""
    slot = np.searchsorted(cdf, topic + u, side="right")
    return np.clip(slot, bounds[topic], bounds[topic + 1] - 1)


def _world(cfg: ShopConfig, rng: np.random.Generator) -> _World:
    n_topics, n = len(TOPICS), cfg.n_items
    share = rng.dirichlet(np.full(n_topics, 5.0))
    counts = 1 + rng.multinomial(n - n_topics, share)  # every topic has an item
    bounds = np.concatenate([[0], np.cumsum(counts)])
    topic = np.repeat(np.arange(n_topics), counts)
    same = rng.random((n, cfg.successors)) < cfg.same_topic_successor
    succ_topic = np.where(same, topic[:, None], rng.choice(n_topics, size=same.shape, p=share))
    succ = _draw(_topic_cdf(topic, bounds, cfg.successor_zipf), bounds, succ_topic, rng.random(same.shape))
    own = succ == np.arange(n)[:, None]  # never itself: the next slot of the topic instead
    start = bounds[succ_topic]
    succ = np.where(own, start + (succ - start + 1) % counts[succ_topic], succ)
    return _World(share, bounds, topic, rng.integers(0, N_SUB, n), _topic_cdf(topic, bounds, cfg.zipf), succ, rng.permutation(n))


def _activity(cfg: ShopConfig, rng: np.random.Generator) -> np.ndarray:
    """Events per user: one each, the rest spread by heavy-tailed (log-normal) weights."""
    w = rng.lognormal(0.0, cfg.activity_sigma, cfg.n_users)
    return 1 + rng.multinomial(cfg.n_events - cfg.n_users, w / w.sum())


def _chain_levels(follow: np.ndarray) -> list[np.ndarray]:
    """Positions of the follow events by depth in their run (1 = follows a fresh event): resolved level by level."""
    idx = np.arange(follow.size)
    depth = idx - np.maximum.accumulate(np.where(follow, 0, idx))
    at = np.flatnonzero(follow)
    at = at[np.argsort(depth[at], kind="stable")]
    return np.split(at, np.cumsum(np.bincount(depth[at])[1:])[:-1]) if at.size else []


def _repeats(user: np.ndarray, slot: np.ndarray, n_slots: int) -> np.ndarray:
    """Positions whose (user, item) pair occurred earlier in the sequence."""
    key = user.astype(np.int64) * n_slots + slot
    order = np.argsort(key, kind="stable")
    return np.sort(order[1:][key[order[1:]] == key[order[:-1]]])


def _times(cfg: ShopConfig, rng: np.random.Generator, user: np.ndarray, new_session: np.ndarray) -> np.ndarray:
    """Seconds from the start: sessions at diurnal hours, events seconds to minutes apart, strictly increasing per user."""
    n, n_sessions = user.size, int(new_session.sum())
    session = np.cumsum(new_session) - 1
    session_user = user[new_session].astype(np.int64)
    hour = rng.choice(24, size=n_sessions, p=_DIURNAL / _DIURNAL.sum())
    start = (rng.integers(0, cfg.days, n_sessions) * 24 + hour) * 3600 + rng.integers(0, 3600, n_sessions)
    start = np.sort(session_user * _USER_KEY + start) - session_user * _USER_KEY  # a user's sessions in time order
    gap = np.where(new_session, 0, 1 + np.minimum(rng.lognormal(np.log(45.0), 1.0, n), 1200.0).astype(np.int64))
    elapsed = np.cumsum(gap)
    t = start[session] + elapsed - elapsed[new_session][session]
    # A session may start before the user's previous one ended: push it on (t_i >= t_{i-1} + 1 within a user).
    shift = user.astype(np.int64) * _USER_KEY - np.arange(n)
    return np.maximum.accumulate(t + shift) - shift


def _block(cfg: ShopConfig, world: _World, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events of one block of users, in sequence order: (user within the block, slot, seconds)."""
    n_users, n, n_topics = counts.size, int(counts.sum()), len(TOPICS)
    user = np.repeat(np.arange(n_users), counts)
    new_session = np.zeros(n, dtype=bool)
    new_session[np.cumsum(counts) - counts] = True
    new_session |= rng.random(n) < 1.0 / cfg.session_length
    follow = ~new_session & (rng.random(n) < cfg.p_next)
    rank_weight = 1.0 / np.arange(1, cfg.successors + 1)
    pick = rng.choice(cfg.successors, size=n, p=rank_weight / rank_weight.sum())

    # Interests: k distinct topics by topic share (Gumbel top-k), Dirichlet(1) weights over them.
    k = 1 + rng.choice(len(_INTERESTS), size=n_users, p=_INTERESTS)
    top = np.argsort(-(np.log(world.share) + rng.gumbel(size=(n_users, n_topics))), axis=1)[:, : len(_INTERESTS)]
    weight = rng.standard_gamma(1.0, size=top.shape) * (np.arange(len(_INTERESTS)) < k[:, None])
    cum = np.cumsum(weight, axis=1) / weight.sum(axis=1, keepdims=True)

    # Fresh draws, then the successor chains from them; an event repeating the user's earlier item is drawn
    # afresh (a repeated successor too: the user took the other complement), a few rounds.
    slot = np.empty(n, dtype=np.int64)
    todo = np.flatnonzero(~follow)
    for round_ in range(cfg.repeat_redraws + 1):
        u = user[todo]
        choice = np.minimum((rng.random(todo.size)[:, None] > cum[u]).sum(axis=1), k[u] - 1)
        topic = np.where(rng.random(todo.size) < cfg.explore, rng.choice(n_topics, size=todo.size, p=world.share), top[u, choice])
        slot[todo] = _draw(world.popular, world.bounds, topic, rng.random(todo.size))
        for at in _chain_levels(follow):
            slot[at] = world.succ[slot[at - 1], pick[at]]
        if round_ < cfg.repeat_redraws:
            todo = _repeats(user, slot, world.topic.size)
            follow[todo] = False
            if todo.size == 0:
                break
    return user, slot, _times(cfg, rng, user, new_session)


def _seeds(cfg: ShopConfig) -> list[np.random.SeedSequence]:
    """Independent seeds of the world, the events (one child per block of users) and the item texts."""
    return np.random.SeedSequence(cfg.seed).spawn(3)


def _simulate(cfg: ShopConfig) -> tuple[_World, np.ndarray, np.ndarray, np.ndarray]:
    """The world and every event in time order: (world, user index, item index, seconds from the start)."""
    world_seed, events_seed, _ = _seeds(cfg)
    rng = np.random.default_rng(world_seed)
    world = _world(cfg, rng)
    counts = _activity(cfg, rng)
    ends = np.cumsum(counts)
    cuts = np.flatnonzero(np.diff(ends // BLOCK_EVENTS)) + 1  # users split where a block's events run out
    user = np.empty(cfg.n_events, dtype=np.int32)
    item = np.empty(cfg.n_events, dtype=np.int32)
    seconds = np.empty(cfg.n_events, dtype=np.int64)
    first_user, first_event = 0, 0
    for block, part in zip(events_seed.spawn(cuts.size + 1), np.split(counts, cuts)):
        u, slot, t = _block(cfg, world, part, np.random.default_rng(block))
        rows = slice(first_event, first_event + u.size)
        user[rows], item[rows], seconds[rows] = u + first_user, world.item_of_slot[slot], t
        first_user, first_event = first_user + part.size, first_event + u.size
    order = np.argsort(seconds, kind="stable")  # ties keep user, then sequence order
    # One array at a time, so each unsorted one is freed before the next copy is made.
    seconds = seconds[order]
    user = user[order]
    item = item[order]
    return world, user, item, seconds


def _vocabulary() -> tuple[pl.Series, np.ndarray, np.ndarray, int]:
    """All words in one series, and where each pool starts: per topic (n_topics, 2: offset, length),
    per (topic, sub-topic) (n_topics, N_SUB, 2), and the product-name pool's offset (its length follows it)."""
    words: list[str] = []
    topic_pool, sub_pool = [], []
    for topic_words, subs in TOPICS.values():
        topic_pool.append((len(words), len(topic_words.split())))
        words += topic_words.split()
        row = []
        for sub_words in list(subs.values())[:N_SUB]:
            row.append((len(words), len(sub_words.split())))
            words += sub_words.split()
        sub_pool.append(row)
    filler = len(words)
    return pl.Series(words + PRODUCT_FILLER), np.array(topic_pool), np.array(sub_pool), filler


def _texts(rng: np.random.Generator, topic: np.ndarray, sub: np.ndarray, lo: int, hi: int, mix: tuple[float, float, float]) -> pl.Series:
    """One text per item: ``lo..hi`` words, the first a topic word, the rest from topic, sub-topic and
    product-name words with shares ``mix``; built column-wise, no per-item Python."""
    words, topic_pool, sub_pool, filler = _vocabulary()
    n = topic.size
    kind = rng.choice(3, size=(n, hi), p=mix)
    kind[:, 0] = 0
    def pool(j: int) -> np.ndarray:  # per word: its pool's offset (j = 0) or length (j = 1)
        return np.where(kind == 0, topic_pool[topic, j][:, None], np.where(kind == 1, sub_pool[topic, sub, j][:, None], (filler, len(PRODUCT_FILLER))[j]))

    index = pool(0) + (rng.random((n, hi)) * pool(1)).astype(np.int64)
    used = np.arange(hi)[None, :] < rng.integers(lo, hi + 1, size=n)[:, None]
    columns = [pl.when(pl.Series(used[:, j])).then(words.gather(index[:, j])) for j in range(hi)]
    return pl.select(pl.concat_str(columns, separator=" ", ignore_nulls=True)).to_series()


def _ids(prefix: str, n: int) -> pa.Array:
    return pl.select(pl.format(prefix + "{}", pl.int_range(1, n + 1))).to_series().to_arrow()


def _items(cfg: ShopConfig, world: _World) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The items table (in item id order) and the true successors (``item_id``, ``next_item_ids``)."""
    rng = np.random.default_rng(_seeds(cfg)[2])
    names = list(TOPICS)
    sub_names = [list(TOPICS[t][1])[:N_SUB] for t in names]
    slot_of_item = np.argsort(world.item_of_slot)
    topic, sub = world.topic[slot_of_item], world.sub[slot_of_item]
    ids = pl.Series(Col.ITEM, _ids("P", cfg.n_items))
    items = pl.DataFrame({
        Col.ITEM: ids,
        Col.TITLE: _texts(rng, topic, sub, 3, 6, (0.45, 0.3, 0.25)).str.to_titlecase(),
        Col.ABSTRACT: _texts(rng, topic, sub, 10, 20, (0.4, 0.3, 0.3)),
        Col.CATEGORY: pl.Series(names).gather(topic),
        Col.SUBCATEGORY: pl.Series([s for row in sub_names for s in row]).gather(topic * N_SUB + sub),
    })
    nxt = world.item_of_slot[world.succ[slot_of_item]]
    successors = pl.DataFrame({Col.ITEM: ids, NEXT_ITEMS: ids.gather(nxt.ravel()).reshape((cfg.n_items, cfg.successors)).arr.to_list()})
    return items, successors


def _event_table(user_ids: pa.Array, item_ids: pa.Array, start_us: int, user: np.ndarray, item: np.ndarray, seconds: np.ndarray) -> pa.Table:
    return pa.table({
        Col.USER: user_ids.take(pa.array(user)),
        Col.ITEM: item_ids.take(pa.array(item)),
        Col.TIME: pa.array(start_us + seconds * 1_000_000, type=pa.timestamp("us")),
    })


def _start_us(cfg: ShopConfig) -> int:
    """``cfg.start`` in microseconds since the epoch (a naive time is UTC)."""
    start = datetime.fromisoformat(cfg.start)
    return int((start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp()) * 1_000_000


def generate_shop(cfg: ShopConfig) -> Shop:
    """Generate a shop in memory (for tests and small sizes; :func:`write_shop` streams large ones).

    Args:
        cfg: sizes, shape and seed.

    Returns:
        The items table, the events (``user_id``, ``item_id``, ``timestamp``, in time order) and the true successors.
    """
    world, user, item, seconds = _simulate(cfg)
    items, successors = _items(cfg, world)
    events = _event_table(_ids("U", cfg.n_users), items[Col.ITEM].to_arrow(), _start_us(cfg), user, item, seconds)
    return Shop(items, pl.from_arrow(events), successors)  # type: ignore[arg-type]


def write_shop(cfg: ShopConfig, out: Path) -> dict[str, object]:
    """Generate a shop and write ``items.parquet``, ``events.parquet`` (row groups of :data:`ROW_GROUP`),
    ``successors.parquet`` (the truth) and ``config.json`` into ``out``, each atomically.

    Args:
        cfg: sizes, shape and seed.
        out: the directory to write.

    Returns:
        A summary: the files and counts of items, users and events.
    """
    out = Path(out)
    world, user, item, seconds = _simulate(cfg)
    items, successors = _items(cfg, world)
    write_parquet(items, out / ITEMS_FILE)
    write_parquet(successors, out / SUCCESSORS_FILE)
    user_ids, item_ids, start_us = _ids("U", cfg.n_users), items[Col.ITEM].to_arrow(), _start_us(cfg)
    with atomic_path(out / EVENTS_FILE) as tmp:
        writer = None
        try:
            for lo in range(0, cfg.n_events, ROW_GROUP):
                part = slice(lo, lo + ROW_GROUP)
                table = _event_table(user_ids, item_ids, start_us, user[part], item[part], seconds[part])
                writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=ROW_GROUP)
        finally:
            if writer is not None:
                writer.close()
    summary = {"items": cfg.n_items, "users": cfg.n_users, "events": cfg.n_events, "items_seen": int(np.count_nonzero(np.bincount(item, minlength=cfg.n_items))),
               "files": [str(out / name) for name in (ITEMS_FILE, EVENTS_FILE, SUCCESSORS_FILE, CONFIG_FILE)]}
    write_json({"config": asdict(cfg), **summary}, out / CONFIG_FILE)
    log.info("shop: %d items (%d seen), %d users, %d events", cfg.n_items, summary["items_seen"], cfg.n_users, cfg.n_events)
    return summary
