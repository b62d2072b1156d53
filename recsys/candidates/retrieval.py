"""Retrieval: item-to-item, text and popularity sources over the whole catalogue (candidates and features).

Sources (each scores the whole catalogue for a user history; items already in the history are excluded):

* ``ease``         EASE (Steck 2019): a closed-form item-item linear model over the user x item matrix.
* ``transitions``  what followed the user's recent items in other users' sequences, P(next | item),
                   summed over the last ``recent`` items with weights ``decay**k`` (k = 0 for the last item).
* ``cooccurrence`` item-item cosine of the user x item matrix (ItemKNN), summed over the recent items.
* ``text``         cosine of each item's text vector to the user's recency-weighted mean text vector;
                   exact batched dot products (the catalogues recsys targets fit; no approximate index).
* ``popularity``   interactions per item.
* ``recent``       the fresh catalogue of a news-like log: clicks per item in the last ``recent_hours``
                   of the fitted rows, plus a bonus for items published in that window (in the impression-log
                   defaults, where timestamps are real; read only when a model uses the retrieval family).

Every statistic is fitted on the sequences given to :meth:`Retriever.fit`; callers pass only the data
allowed at that point (train prefixes to score dev targets, train+dev to score test targets), so a held-out
target is never in the statistics that score it. Each source's score and rank (1-based, over the catalogue)
become ranker features (:meth:`Retriever.score_pairs` gives them to candidates retrieval did not produce);
:meth:`Retrieved.recall` shows the ceiling retrieval puts on the ranker.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.linalg import lapack
from tqdm.auto import tqdm

from features.registry import SOURCES, source_rank, source_score
from recsys.data import Col, Dataset, Split, explode_candidates
from recsys.errors import RecsysError
from recsys.evaluation.metrics import held_out_ranks, recall_at_k
from recsys.resources import resource

log = logging.getLogger(__name__)

EASE, TRANSITIONS, COOCCURRENCE, TEXT, POPULARITY, RECENT = SOURCES  # named in features/registry.py with their features
DEFAULT_SOURCES = (EASE, TRANSITIONS, COOCCURRENCE, TEXT, POPULARITY)
ROW, ITEM_INDEX, N_SOURCES = "row", "item_index", "n_sources"


@dataclass(frozen=True)
class RetrievalConfig:
    """How many candidates each source contributes and how the item-item statistics are fitted."""

    per_source: int = 100  # top-N of each source joins the union
    sources: tuple[str, ...] = DEFAULT_SOURCES
    recent_hours: float = 48.0  # window of the `recent` source, ending at the last fitted event
    ease_l2: float = 250.0  # EASE ridge strength (RecTools uses 500 on this data; tune on dev)
    max_ease_items: int = 25_000  # EASE inverts an items x items matrix: skipped above this size
    recent: int = 5  # history items that drive transitions, co-occurrence and the text vector
    decay: float = 0.6  # weight of the k-th most recent item is decay**k
    batch_size: int = resource(1024)

    def __post_init__(self) -> None:
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            raise RecsysError(f"sources must be a non-empty subset of {SOURCES}, got {self.sources}")
        if self.per_source < 1 or self.recent < 1 or self.batch_size < 1 or self.recent_hours <= 0:
            raise RecsysError("per_source, recent and batch_size must be at least 1, recent_hours > 0")
        if not 0.0 < self.decay <= 1.0 or self.ease_l2 <= 0:
            raise RecsysError(f"decay must be in (0, 1] and ease_l2 > 0, got {self.decay}, {self.ease_l2}")


def user_sequences(impressions: pl.DataFrame) -> pl.DataFrame:
    """Each user's item sequence (oldest first) as the given rows know it.

    The sequence is the history of the user's earliest row followed by the clicked candidates of every row in
    time order. For interaction logs (one row per interaction, history = earlier items) that is the whole
    sequence up to the latest row; for impression logs it is the pre-log history plus the clicks.

    Returns:
        Columns ``user_id`` and ``history`` (list of item ids).
    """
    if impressions.height == 0:
        return pl.DataFrame(schema={Col.USER: pl.String(), Col.HISTORY: pl.List(pl.String())})
    rows = impressions.sort([Col.USER, Col.TIME, Col.IMPRESSION])
    clicks = rows.select(
        Col.USER,
        pl.col(Col.CANDIDATES).list.gather(pl.col(Col.LABELS).list.eval(pl.arg_where(pl.element() == 1))).fill_null([]).alias("clicked"),
    )
    first = rows.group_by(Col.USER, maintain_order=True).agg(pl.col(Col.HISTORY).first())
    later = clicks.group_by(Col.USER, maintain_order=True).agg(pl.col("clicked").explode(keep_nulls=False, empty_as_null=False))
    return first.join(later, on=Col.USER).select(Col.USER, pl.concat_list(Col.HISTORY, "clicked").alias(Col.HISTORY))


def _recency_matrix(histories: Sequence[np.ndarray], n_items: int, recent: int | None, decay: float) -> sp.csr_matrix:
    """Sparse (len(histories), n_items) weights: decay**k on the k-th most recent item (all items if recent is None)."""
    rows, cols, vals = [], [], []
    for r, h in enumerate(histories):
        tail = h[::-1] if recent is None else h[::-1][:recent]
        rows.append(np.full(len(tail), r))
        cols.append(tail)
        vals.append(decay ** np.arange(len(tail)) if recent is not None else np.ones(len(tail)))
    if not rows:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(histories), n_items), dtype=np.float32)
    if recent is None:
        m.data[:] = 1.0  # repeated items count once in the binary user vector
    return m


class Retriever:
    """Fitted item statistics plus the catalogue's text vectors; scores and retrieves candidates."""

    def __init__(self, item_ids: list[str], sequences: list[np.ndarray], text_vectors: np.ndarray | None, cfg: RetrievalConfig,
                 recent_scores: np.ndarray | None = None) -> None:
        """Fit every configured source on `sequences` (item indices into `item_ids`, oldest first)."""
        self.cfg, self.item_ids = cfg, item_ids
        self.recent_scores = recent_scores
        self.index = {item: i for i, item in enumerate(item_ids)}
        n = len(item_ids)
        self.sources = [s for s in cfg.sources if (s != TEXT or text_vectors is not None) and (s != RECENT or recent_scores is not None)]
        if EASE in self.sources and n > cfg.max_ease_items:
            log.warning("EASE skipped: %d items > max_ease_items=%d", n, cfg.max_ease_items)
            self.sources.remove(EASE)
        users = _recency_matrix(sequences, n, None, 1.0)
        self.popularity = np.zeros(n, dtype=np.float32)
        for s in sequences:
            np.add.at(self.popularity, s, 1.0)
        pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in sequences if len(s) > 1]
        pairs_arr = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
        counts = sp.csr_matrix((np.ones(len(pairs_arr), dtype=np.float32), (pairs_arr[:, 0], pairs_arr[:, 1])), shape=(n, n))
        # P(next | item) with one pseudo-count so a single observed transition is not a certainty.
        self.transitions = sp.diags(1.0 / (np.asarray(counts.sum(axis=1)).ravel() + 1.0)).astype(np.float32) @ counts
        gram = (users.T @ users).tocsr().astype(np.float32)
        norms = np.sqrt(np.maximum(gram.diagonal(), 1.0))
        cos = sp.diags(1.0 / norms) @ gram @ sp.diags(1.0 / norms)
        cos = cos.tocsr().astype(np.float32)
        cos.setdiag(0.0)
        cos.eliminate_zeros()
        self.cooccurrence = cos
        self.ease = self._fit_ease(gram, cfg.ease_l2) if EASE in self.sources else None
        self.text = None
        if text_vectors is not None:
            v = np.asarray(text_vectors, dtype=np.float32)
            self.text = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        log.info("retriever fitted on %d sequences, %d items, %d transitions; sources %s", len(sequences), n, len(pairs_arr), self.sources)

    @staticmethod
    def _fit_ease(gram: sp.csr_matrix, l2: float) -> np.ndarray:
        g = gram.toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += l2
        # G + l2*I is symmetric positive definite: a Cholesky inverse is ~3x cheaper than a general one.
        chol, info = lapack.dpotrf(g, lower=False, overwrite_a=True)
        if info == 0:
            p, info = lapack.dpotri(chol, lower=False, overwrite_c=True)
        if info != 0:
            raise RecsysError(f"EASE: the item Gram matrix is not positive definite (LAPACK info {info}); raise ease_l2")
        p = np.triu(p) + np.triu(p, 1).T
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        return b.astype(np.float32)

    @classmethod
    def fit(cls, ds: Dataset, vectors: object, cfg: RetrievalConfig | None = None, splits: Sequence[str] = Split.ALL,
            rows: pl.DataFrame | None = None) -> Retriever:
        """Fit on the sequences the rows of `splits` (or the given `rows`) reveal (all splits = serving; train = to score dev).

        Args:
            ds: the dataset; its items define the catalogue (in ``ds.items`` order).
            vectors: (n_items, d) text vectors in ``ds.items`` order, or an object with ``ids``/``vectors``
                (recsys.text.encode.ItemVectors), or None to skip the text source.
            cfg: the configuration.
            splits: which splits' rows the statistics may use.
            rows: use exactly these impression rows instead of `splits`.
        """
        item_ids = ds.items[Col.ITEM].to_list()
        r = cls.__new__(cls)
        r.index = {item: i for i, item in enumerate(item_ids)}
        cfg = cfg or RetrievalConfig()
        rows = ds.split(*splits) if rows is None else rows
        seqs = r.encode_histories(user_sequences(rows)[Col.HISTORY])
        recent = _recent_scores(ds.items, rows, cfg.recent_hours) if RECENT in cfg.sources else None
        return cls(item_ids, seqs, aligned_vectors(vectors, item_ids), cfg, recent)

    def encode_histories(self, histories: pl.Series | Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Item-id lists to index arrays; ids outside the catalogue are dropped."""
        idx = self.index
        return [np.fromiter((idx[i] for i in (h if h is not None else []) if i in idx), dtype=np.int64) for h in histories]

    # --- scoring -------------------------------------------------------------------------------------

    def score(self, histories: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Dense (len(histories), n_items) float32 scores of every source; the user's own items are -inf."""
        n, cfg = len(self.item_ids), self.cfg
        recent = _recency_matrix(histories, n, cfg.recent, cfg.decay)
        out: dict[str, np.ndarray] = {}
        for source in self.sources:
            if source == EASE:
                s = _recency_matrix(histories, n, None, 1.0) @ self.ease
            elif source == TRANSITIONS:
                s = (recent @ self.transitions).toarray()
            elif source == COOCCURRENCE:
                s = (recent @ self.cooccurrence).toarray()
            elif source == TEXT:
                user = recent @ self.text
                user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
                s = user @ self.text.T
            elif source == RECENT:
                s = np.broadcast_to(self.recent_scores, (len(histories), n)).copy()
            else:
                s = np.broadcast_to(self.popularity, (len(histories), n)).copy()
            out[source] = np.asarray(s, dtype=np.float32)
        seen = _recency_matrix(histories, n, None, 1.0).tocoo()
        for s in out.values():
            s[seen.row, seen.col] = -np.inf
        return out

    def batches(self, histories: Sequence[np.ndarray], show_progress: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(offset, scores) for consecutive batches of `histories`."""
        step = self.cfg.batch_size
        for start in tqdm(range(0, len(histories), step), desc="retrieve", unit="batch", disable=not show_progress):
            yield start, self.score(histories[start : start + step])

    def retrieve(self, histories: Sequence[np.ndarray], targets: np.ndarray | None = None, show_progress: bool = False) -> Retrieved:
        """The union of every source's top ``per_source`` items for each history, with all sources' scores and ranks.

        Args:
            histories: item-index histories (oldest first).
            targets: optional (len(histories),) item index of each held-out item, to measure recall.
            show_progress: show a progress bar.

        Returns:
            :class:`Retrieved`: ``candidates`` in long format (``row`` = index into `histories`, ``item_index``,
            ``<source>_score``, ``<source>_rank`` (1 + items scored strictly higher, for every source even if
            another one retrieved the item), ``n_sources`` (sources with the item in their top ``per_source``))
            and, with targets, each source's rank of the target for :meth:`Retrieved.recall`.
        """
        parts, target_ranks = [], {s: [] for s in self.sources}
        n_items, top = len(self.item_ids), self.cfg.per_source
        for start, scores in self.batches(histories, show_progress):
            b = len(next(iter(scores.values())))
            hits = np.zeros((b, n_items), dtype=np.int8)
            ordered = {}
            for s in self.sources:
                v = scores[s]
                ordered[s] = np.sort(v, axis=1)
                threshold = ordered[s][:, max(n_items - top, 0)]
                hits += (v >= threshold[:, None]) & self._retrievable(s, v)
            rows, cols = np.nonzero(hits)
            frame = {ROW: (rows + start).astype(np.int32), ITEM_INDEX: cols.astype(np.int32), N_SOURCES: hits[rows, cols]}
            bounds = np.searchsorted(rows, np.arange(b + 1))
            for s in self.sources:
                values = scores[s][rows, cols]
                frame[source_score(s)] = values
                frame[source_rank(s)] = _ranks_of(ordered[s], values, bounds)
            parts.append(pl.DataFrame(frame))
            if targets is not None:
                t = np.asarray(targets[start : start + b])
                for s in self.sources:
                    ranks, ties = held_out_ranks(scores[s], t)
                    ok = self._retrievable(s, scores[s][np.arange(b), t])
                    target_ranks[s].append(np.stack([ranks, ties, ok], axis=1))
        cands = pl.concat(parts) if parts else pl.DataFrame()
        per = {s: np.concatenate(r) for s, r in target_ranks.items()} if targets is not None else {}
        return Retrieved(cands, per, top)

    def score_pairs(self, histories: Sequence[np.ndarray], rows: np.ndarray, items: np.ndarray) -> pl.DataFrame:
        """Every source's score and rank, and ``n_sources``, of given (row, item index) pairs, `rows` sorted:
        the retrieval features of candidates that retrieval did not produce (logged ones). Rows follow the input."""
        top, n_items = self.cfg.per_source, len(self.item_ids)
        bounds_all = np.searchsorted(rows, np.arange(len(histories) + 1))
        cols: dict[str, list[np.ndarray]] = {N_SOURCES: [], **{c: [] for s in self.sources for c in (source_score(s), source_rank(s))}}
        for start, scores in self.batches(histories):
            b = len(next(iter(scores.values())))
            lo, hi = bounds_all[start], bounds_all[start + b]
            r, i = rows[lo:hi] - start, items[lo:hi]
            hits = np.zeros(hi - lo, dtype=np.int8)
            for s in self.sources:
                ordered = np.sort(scores[s], axis=1)
                values = scores[s][r, i]
                hits += (values >= ordered[r, max(n_items - top, 0)]) & self._retrievable(s, values)
                cols[source_score(s)].append(values)
                cols[source_rank(s)].append(_ranks_of(ordered, values, bounds_all[start : start + b + 1] - lo))
            cols[N_SOURCES].append(hits)
        return pl.DataFrame({k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()})

    @staticmethod
    def _retrievable(source: str, scores: np.ndarray) -> np.ndarray:
        """Items a source may retrieve: finite scores, and for the sparse count sources a positive one."""
        ok = np.isfinite(scores)
        return ok & (scores > 0) if source in (TRANSITIONS, COOCCURRENCE) else ok


def _ranks_of(ordered: np.ndarray, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """1 + the number of items scored strictly higher, for `values` grouped by row (row r is values[bounds[r]:bounds[r+1]]).

    Args:
        ordered: (rows, n_items) each row's scores sorted ascending.
        values: the scores to rank, grouped by row.
        bounds: (rows + 1,) group boundaries into `values`.
    """
    n_items = ordered.shape[1]
    out = np.empty(len(values), dtype=np.int32)
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        if hi > lo:
            out[lo:hi] = 1 + n_items - np.searchsorted(ordered[r], values[lo:hi], side="right")
    return out


@dataclass
class Retrieved:
    """Candidates of a batch of histories and, when targets were given, each source's rank of the target."""

    candidates: pl.DataFrame
    target_ranks: dict[str, np.ndarray]  # source -> (rows, 3): rank, ties, retrievable
    per_source: int

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


def _recent_scores(items: pl.DataFrame, rows: pl.DataFrame, hours: float) -> np.ndarray:
    """Clicks per item (in `items` order) in the last `hours` before the rows' latest time, plus 0.5 for
    an item published in that window (so fresh items with no clicks yet can still be retrieved)."""
    if rows.is_empty():
        return np.zeros(items.height, dtype=np.float32)
    cutoff = rows[Col.TIME].max() - timedelta(hours=hours)
    clicks = (
        explode_candidates(rows.filter(pl.col(Col.TIME) >= cutoff))
        .filter(pl.col(Col.LABEL) == 1)
        .group_by(Col.ITEM)
        .len("clicks")
    )
    scored = items.select(Col.ITEM, Col.PUBLISHED).join(clicks, on=Col.ITEM, how="left").select(
        pl.col("clicks").fill_null(0) + 0.5 * (pl.col(Col.PUBLISHED) >= cutoff).fill_null(False).cast(pl.Float32())
    )
    return scored.to_series().to_numpy().astype(np.float32)


def aligned_vectors(vectors: object, item_ids: list[str]) -> np.ndarray | None:
    """Text vectors as an (n_items, d) array in `item_ids` order; zero rows for items without a vector."""
    if vectors is None:
        return None
    if isinstance(vectors, np.ndarray):
        if len(vectors) != len(item_ids):
            raise ValueError(f"{len(vectors)} vectors for {len(item_ids)} items")
        return vectors
    ids, matrix = list(vectors.ids), np.asarray(vectors.vectors, dtype=np.float32)  # type: ignore[attr-defined]
    pos = {item: i for i, item in enumerate(ids)}
    out = np.zeros((len(item_ids), matrix.shape[1]), dtype=np.float32)
    have = [(j, pos[item]) for j, item in enumerate(item_ids) if item in pos]
    if have:
        dst, src = map(np.asarray, zip(*have))
        out[dst] = matrix[src]
    return out
