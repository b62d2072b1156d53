"""Retrieval: item-to-item, text and popularity sources over the whole catalogue (candidates and features).

Sources (each scores the whole catalogue for a user history; the items a caller says the user had are excluded):

* ``ease``         EASE (Steck 2019): a closed-form item-item linear model over the user x item matrix.
* ``als``          implicit ALS (:mod:`recsys.candidates.als`): user factors folded in per history . item factors.
* ``transitions``  what followed the user's recent items in other users' sequences, P(next | item),
                   summed over the last ``recent`` items with weights ``decay**k`` (k = 0 for the last item).
* ``cooccurrence`` item-item cosine of the user x item matrix (ItemKNN), summed over the recent items.
* ``text``         cosine of each item's text vector to the user's recency-weighted mean text vector: exact
                   batched dot products, or above ``text_ann_items`` items the top items of an IVF index
                   (:mod:`recsys.candidates.ann`, its recall against exact search in :attr:`Retriever.plan`).
* ``sequence``     cosine of each item's vector to the user vector of the trained sequence model
                   (:mod:`recsys.text.sequence`: a causal transformer over the history's text-based item vectors),
                   exact or through the same kind of index as the text source; the model is trained once per
                   model (a pipeline stage) and handed in, never refitted here.
* ``popularity``   interactions per item.
* ``recent``       the fresh catalogue of a news-like log: clicks per item in the last ``recent_hours``
                   of the fitted rows, plus a bonus for items published in that window (in the impression-log
                   defaults, where timestamps are real; read only when a model uses the retrieval family).

Scale is chosen automatically against ``memory_budget`` and logged in :attr:`Retriever.plan`: EASE only where
its dense n x n working set fits (checked before anything is allocated; above it ``als`` takes its place), the
co-occurrence matrix pruned to each item's top neighbours when its size bound is over budget
(:mod:`recsys.candidates.itemitem`), and histories scored in batches whose dense (rows x items) arrays fit a
quarter of the budget. Per batch, each source keeps its top ``per_source`` items and ranks candidates within
``rank_depth`` (:mod:`recsys.candidates.topn`: exact on catalogues up to ``rank_depth`` items, ``rank_depth + 1``
below that depth on larger ones). Only EASE, ALS and exact text score every item of a row; transitions and
co-occurrence are held as the non-zeros a history reaches, popularity as one sorted catalogue, so a large
catalogue costs one dense source, not five. Nothing grows with the number of histories but the candidate table.

Every statistic is fitted on the sequences given to :meth:`Retriever.fit` (the sequence model excepted: it learned
from train sequences without any target the ranker learns from or is judged on, see ``recsys.pipeline``); callers pass only the data
allowed at that point (train prefixes to score dev targets, train+dev to score test targets), so a held-out
target is never in the statistics that score it. Each source's score and rank (1-based, over the catalogue)
become ranker features (:meth:`Retriever.score_pairs` gives them to candidates retrieval did not produce);
:meth:`Retrieved.recall` shows the ceiling retrieval puts on the ranker.
"""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from tqdm.auto import tqdm

from features.registry import SOURCES, source_rank, source_score
from recsys.candidates.als import ALS as ALSModel
from recsys.candidates.ann import TextIndex
from recsys.candidates.inputs import aligned_vectors, user_sequences
from recsys.candidates.itemitem import cooccurrence, ease_bytes, fit_ease, transitions
from recsys.candidates.topn import DenseScores, IndexedText, OwnItems, Retrieved, SharedScores, SparseScores, reached
from recsys.data import Col, Dataset, Split, explode_candidates
from recsys.errors import RecsysError
from recsys.resources import parse_bytes, resource

if TYPE_CHECKING:
    from recsys.text.sequence import SequenceScorer

log = logging.getLogger(__name__)

EASE, TRANSITIONS, COOCCURRENCE, TEXT, POPULARITY, RECENT, ALS, SEQUENCE = SOURCES  # named in features/registry.py with their features
DEFAULT_SOURCES = (EASE, TRANSITIONS, COOCCURRENCE, TEXT, POPULARITY)
ROW, ITEM_INDEX, N_SOURCES = "row", "item_index", "n_sources"
View = DenseScores | SparseScores | SharedScores | IndexedText
CALIBRATION_QUERIES = 512  # training histories whose neighbours calibrate an index against exact search


@dataclass(frozen=True)
class RetrievalConfig:
    """How many candidates each source contributes, how the item statistics are fitted, and the memory they may use.

    ``memory_budget`` picks methods where it binds (EASE or ALS, full or pruned co-occurrence), so it is a
    result setting, not a resource: it is part of the model's fingerprint, changing it retrains, and serving
    always retrieves with the budget the model was trained with (``retrieval_plan.json`` shows what it chose).
    """

    per_source: int = 100  # top-N of each source joins the union
    sources: tuple[str, ...] = DEFAULT_SOURCES
    recent_hours: float = 48.0  # window of the `recent` source, ending at the last fitted event
    ease_l2: float = 250.0  # EASE ridge strength (RecTools uses 500 on this data; tune on dev)
    als_factors: int = 64
    als_iterations: int = 15
    als_l2: float = 10.0  # ALS ridge strength and confidence weight: measured on Amazon Scientific dev
    als_alpha: float = 40.0
    cooccurrence_neighbours: int = 200  # kept per item when the full co-occurrence matrix is over the budget
    text_ann_items: int = 10_000  # above this many items text and sequence neighbours come from an index (measured crossover)
    ann_recall: float = 0.95  # the index probes lists until its recall@per_source against exact search reaches this
    rank_depth: int = 5_000  # ranks are exact this deep; deeper items rank rank_depth + 1
    recent: int = 5  # history items that drive transitions, co-occurrence and the text vector
    decay: float = 0.6  # weight of the k-th most recent item is decay**k
    memory_budget: str = "4GB"  # picks EASE or ALS, full or pruned co-occurrence, and the batch rows
    batch_size: int = resource(1024)  # most histories per scoring batch (fewer when the budget says so)

    def __post_init__(self) -> None:
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            raise RecsysError(f"sources must be a non-empty subset of {SOURCES}, got {self.sources}")
        if self.per_source < 1 or self.recent < 1 or self.batch_size < 1 or self.recent_hours <= 0:
            raise RecsysError("per_source, recent and batch_size must be at least 1, recent_hours > 0")
        if not 0.0 < self.decay <= 1.0 or self.ease_l2 <= 0:
            raise RecsysError(f"decay must be in (0, 1] and ease_l2 > 0, got {self.decay}, {self.ease_l2}")
        if min(self.als_factors, self.als_iterations, self.cooccurrence_neighbours, self.text_ann_items) < 1 or self.als_l2 < 0 or self.als_alpha <= 0:
            raise RecsysError("als_factors, als_iterations, cooccurrence_neighbours and text_ann_items must be at least 1, "
                              "als_l2 >= 0 and als_alpha > 0")
        if not 0.0 < self.ann_recall <= 1.0 or self.rank_depth < self.per_source:
            raise RecsysError(f"ann_recall must be in (0, 1] and rank_depth >= per_source, got {self.ann_recall}, {self.rank_depth}")
        try:
            parse_bytes(self.memory_budget)
        except ValueError as exc:
            raise RecsysError(f"memory_budget: {exc}") from exc


def recency_matrix(histories: Sequence[np.ndarray], n_items: int, recent: int | None, decay: float) -> sp.csr_matrix:
    """Sparse (len(histories), n_items) weights: decay**k on the k-th most recent item (all items if recent is None)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if not lengths.sum():
        return sp.csr_matrix((len(histories), n_items), dtype=np.float32)
    ends = np.repeat(np.cumsum(lengths), lengths)
    k = np.arange(len(ends)) - (ends - np.repeat(lengths, lengths))  # 0 = the row's most recent item
    items = np.concatenate(histories).astype(np.int64, copy=False)[ends - 1 - k]  # newest first, as duplicates are summed
    rows = np.repeat(np.arange(len(histories)), lengths)
    keep = k < recent if recent is not None else slice(None)
    vals = decay ** k[keep] if recent is not None else np.ones(len(items))
    m = sp.csr_matrix((vals, (rows[keep], items[keep])), shape=(len(histories), n_items), dtype=np.float32)
    if recent is None:
        m.data[:] = 1.0  # repeated items count once in the binary user vector
    return m


def batch_rows(n_items: int, dense_sources: int, sparse_nonzeros: int, budget: int, most: int) -> int:
    """Histories per scoring batch: a quarter of the budget (the fitted statistics hold the rest) over what one row
    needs: float32 scores of every dense source plus two temporaries (a partition, a mask), and at most
    `sparse_nonzeros` scores of the sparse sources at 12 bytes each (value and key)."""
    per_row = 4 * max(n_items, 1) * (dense_sources + 2) + 12 * sparse_nonzeros
    return int(min(most, max(1, budget // 4 // per_row)))


class Retriever:
    """Fitted item statistics plus the catalogue's text vectors; scores and retrieves candidates."""

    def __init__(self, item_ids: list[str], sequences: list[np.ndarray], text_vectors: np.ndarray | None, cfg: RetrievalConfig,
                 recent_scores: np.ndarray | None = None, sequence: SequenceScorer | None = None) -> None:
        """Fit every configured source on `sequences` (item indices into `item_ids`, oldest first); `sequence` is the
        trained sequence model with its item table in `item_ids` order (None: no sequence source)."""
        self.cfg, self.item_ids = cfg, item_ids
        self.recent_scores, self.sequence = recent_scores, sequence
        self.index = {item: i for i, item in enumerate(item_ids)}
        n, budget = len(item_ids), parse_bytes(cfg.memory_budget)
        given = {TEXT: text_vectors, RECENT: recent_scores, SEQUENCE: sequence}
        self.sources = [s for s in cfg.sources if given.get(s, True) is not None]
        self.plan: dict[str, Any] = {"items": n, "memory_budget": cfg.memory_budget}
        self._choose_collaborative(n, budget)
        users = recency_matrix(sequences, n, None, 1.0)
        self.popularity = np.bincount(np.concatenate([np.zeros(0, dtype=np.int64), *sequences]), minlength=n).astype(np.float32)
        self.transitions = transitions(sequences, n)
        self.cooccurrence, facts = cooccurrence(users, budget, cfg.cooccurrence_neighbours)
        self.plan.update(facts)
        self.ease = fit_ease(users, cfg.ease_l2) if EASE in self.sources else None
        self.als = ALSModel.fit(users, cfg.als_factors, cfg.als_iterations, cfg.als_l2, cfg.als_alpha) if ALS in self.sources else None
        self.text: np.ndarray | None = None
        self.indexes: dict[str, TextIndex] = {}  # the vector sources searched through an index
        if text_vectors is not None:
            v = np.asarray(text_vectors, dtype=np.float32)
            self.text = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        for source, vectors in ((TEXT, self.text), (SEQUENCE, sequence.table if sequence is not None else None)):
            if source in self.sources and vectors is not None:
                self._choose_index(source, vectors, sequences)
        self.batch_rows = self._size_batches()
        self.plan.update(sources=list(self.sources), batch_rows=self.batch_rows,
                         ranks="exact" if n <= cfg.rank_depth else f"exact to {cfg.rank_depth}, deeper = {cfg.rank_depth + 1}")
        log.info("retriever fitted on %d sequences, %d items, %d transitions; plan %s", len(sequences), n, self.transitions.nnz, self.plan)

    def _size_batches(self) -> int:
        """Histories per scoring batch under the memory budget (see :func:`batch_rows`)."""
        n, cfg = len(self.item_ids), self.cfg
        # A sparse source's row holds at most `recent` rows of its matrix, so its widest rows bound it.
        sparse = sum(min(n, cfg.recent * int(np.diff(m.indptr).max(initial=0))) for m in self._sparse().values())
        return batch_rows(n, len(self._dense_sources()), sparse, parse_bytes(cfg.memory_budget), cfg.batch_size)

    def with_settings(self, cfg: RetrievalConfig, sources: Sequence[str] | None = None, ease: np.ndarray | None = None) -> Retriever:
        """This retriever with other query-time settings (``per_source``, ``rank_depth``, ``recent``, ``decay``), only
        `sources` of its own, and optionally another EASE matrix: the fitted statistics are shared, nothing is refitted."""
        other = copy.copy(self)
        other.cfg, other.ease = cfg, self.ease if ease is None else ease
        other.sources = [s for s in self.sources if sources is None or s in sources]
        other.indexes = {s: index for s, index in self.indexes.items() if s in other.sources}
        other.batch_rows = other._size_batches()
        return other

    def _choose_collaborative(self, n: int, budget: int) -> None:
        """EASE where its dense working set fits the budget, else ALS in its place."""
        if EASE not in self.sources:
            self.plan["collaborative"] = ALS if ALS in self.sources else None
            return
        need = ease_bytes(n)
        self.plan.update(collaborative=EASE, ease_bytes=need)
        if need > budget:
            log.warning("EASE needs %.2f GB for %d items > memory_budget %.2f GB (%s): using ALS instead", need / 1e9, n, budget / 1e9, self.cfg.memory_budget)
            self.sources = list(dict.fromkeys(ALS if s == EASE else s for s in self.sources))
            self.plan["collaborative"] = ALS

    @property
    def text_index(self) -> TextIndex | None:
        return self.indexes.get(TEXT)

    def _choose_index(self, source: str, vectors: np.ndarray, sequences: list[np.ndarray]) -> None:
        """Exact scores of a vector source (text, sequence) on a small catalogue; above ``text_ann_items`` an index
        over its unit item vectors, calibrated on training histories."""
        cfg, n = self.cfg, len(self.item_ids)
        if n <= cfg.text_ann_items:
            self.plan[source] = "exact"
            return
        index = self.indexes[source] = TextIndex(vectors)
        pick = np.random.default_rng(0).permutation(len(sequences))
        sample = [sequences[i] for i in pick if len(sequences[i])][:CALIBRATION_QUERIES]
        recall = index.calibrate(self._users(source, sample), cfg.per_source, cfg.ann_recall) if sample else 1.0
        self.plan.update({source: f"IVF index, {index.lists} lists, {index.nprobe} probed",
                          f"{source}_recall@{cfg.per_source}": round(recall, 4), f"{source}_index_seconds": round(index.build_seconds, 1)})
        log.info("%s index over %d items: recall@%d %.3f against exact search on %d training histories", source, n, cfg.per_source, recall, len(sample))

    @classmethod
    def fit(cls, ds: Dataset, vectors: object, cfg: RetrievalConfig | None = None, splits: Sequence[str] = Split.ALL,
            rows: pl.DataFrame | None = None, sequence: SequenceScorer | None = None) -> Retriever:
        """Fit on the sequences the rows of `splits` (or the given `rows`) reveal (all splits = serving; train = to score dev).

        Args:
            ds: the dataset; its items define the catalogue (in ``ds.items`` order).
            vectors: (n_items, d) text vectors in ``ds.items`` order, or an object with ``ids``/``vectors``
                (recsys.text.encode.ItemVectors), or None to skip the text source.
            cfg: the configuration.
            splits: which splits' rows the statistics may use.
            rows: use exactly these impression rows instead of `splits`.
            sequence: the trained sequence model over ``ds.items`` (:class:`recsys.text.sequence.SequenceScorer`), or None.
        """
        item_ids = ds.items[Col.ITEM].to_list()
        r = cls.__new__(cls)
        r.index = {item: i for i, item in enumerate(item_ids)}
        cfg = cfg or RetrievalConfig()
        rows = ds.split(*splits) if rows is None else rows
        seqs = r.encode_histories(user_sequences(rows)[Col.HISTORY])
        recent = _recent_scores(ds.items, rows, cfg.recent_hours) if RECENT in cfg.sources else None
        return cls(item_ids, seqs, aligned_vectors(vectors, item_ids), cfg, recent, sequence)

    def encode_histories(self, histories: pl.Series | Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Item-id lists to index arrays; ids outside the catalogue are dropped."""
        lists = histories if isinstance(histories, pl.Series) else pl.Series(list(histories), dtype=pl.List(pl.String))
        if lists.len() == 0:
            return []
        lists = lists.cast(pl.List(pl.String)).fill_null([])
        catalogue = pl.Series(list(self.index), dtype=pl.String)
        flat = lists.explode(empty_as_null=False)
        codes = flat.replace_strict(catalogue, pl.int_range(len(catalogue), dtype=pl.Int64, eager=True), default=None)
        keep = codes.is_not_null().to_numpy()
        lengths = np.bincount(np.repeat(np.arange(len(lists)), lists.list.len().to_numpy())[keep],
                              minlength=len(lists))
        return np.split(codes.to_numpy()[keep].astype(np.int64), np.cumsum(lengths)[:-1])

    # --- scoring -------------------------------------------------------------------------------------

    def _users(self, source: str, histories: Sequence[np.ndarray], recent: sp.csr_matrix | None = None) -> np.ndarray:
        """Unit user vectors of a vector source (text: the recency-weighted mean text vector; sequence: the model's)."""
        if source == SEQUENCE:
            return self.sequence.users(histories)  # type: ignore[union-attr]
        return self._user_text(recency_matrix(histories, len(self.item_ids), self.cfg.recent, self.cfg.decay) if recent is None else recent)

    def _user_text(self, recent: sp.csr_matrix) -> np.ndarray:
        """Normalised recency-weighted mean text vectors of the rows of `recent`."""
        user = recent @ self.text
        user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
        return user

    def score(self, histories: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Dense (len(histories), n_items) float32 scores of `sources` (default: all, text exact even where retrieval
        uses the index); the user's own items are -inf. Callers bound len(histories) (see ``batch_rows``)."""
        n, cfg = len(self.item_ids), self.cfg
        recent, binary = recency_matrix(histories, n, cfg.recent, cfg.decay), recency_matrix(histories, n, None, 1.0)
        return self._dense(histories, recent, binary, self.sources if sources is None else sources, OwnItems.of(binary))

    def _dense(self, histories: Sequence[np.ndarray], recent: sp.csr_matrix, binary: sp.csr_matrix, sources: Sequence[str],
               own: OwnItems) -> dict[str, np.ndarray]:
        """:meth:`score` given the batch's recency-weighted and binary history matrices; `own` items score -inf."""
        n = len(self.item_ids)
        out: dict[str, np.ndarray] = {}
        for source in sources:
            if source == EASE:
                s = binary @ self.ease
            elif source == ALS:
                s = self.als.scores(binary)  # type: ignore[union-attr]
            elif source == TRANSITIONS:
                s = (recent @ self.transitions).toarray()
            elif source == COOCCURRENCE:
                s = (recent @ self.cooccurrence).toarray()
            elif source == TEXT:
                s = self._user_text(recent) @ self.text.T  # type: ignore[union-attr]
            elif source == SEQUENCE:
                s = self.sequence.scores(histories)  # type: ignore[union-attr]
            elif source == RECENT:
                s = np.broadcast_to(self.recent_scores, (len(histories), n)).copy()
            else:
                s = np.broadcast_to(self.popularity, (len(histories), n)).copy()
            out[source] = np.asarray(s, dtype=np.float32)
        for s in out.values():
            s[own.rows, own.items] = -np.inf
        return out

    def _dense_sources(self) -> list[str]:
        """The sources that score every item per row (the others are held sparse or shared)."""
        return [s for s in self.sources if s in (EASE, ALS) or (s in (TEXT, SEQUENCE) and s not in self.indexes)]

    def _sparse(self) -> dict[str, sp.csr_matrix]:
        """The item-item matrices of the sparse sources in use."""
        return {s: m for s, m in ((TRANSITIONS, self.transitions), (COOCCURRENCE, self.cooccurrence)) if s in self.sources}

    def _views(self, histories: Sequence[np.ndarray], seen: Sequence[np.ndarray] | None = None) -> dict[str, View]:
        """Each source's view of one batch, in the form its scores take (see :mod:`recsys.candidates.topn`): the
        sources read `histories`, and the items of `seen` (default: the histories) are excluded from the ranking."""
        top, depth, n = self.cfg.per_source, self.cfg.rank_depth, len(self.item_ids)
        recent = recency_matrix(histories, n, self.cfg.recent, self.cfg.decay)
        binary = recency_matrix(histories, n, None, 1.0)
        own = OwnItems.of(binary if seen is None else recency_matrix(seen, n, None, 1.0))
        informed = np.array([len(h) > 0 for h in histories], dtype=bool)
        dense = self._dense(histories, recent, binary, self._dense_sources(), own)
        views: dict[str, View] = {s: DenseScores(v, top, depth, informed) for s, v in dense.items()}
        views.update({s: reached((recent @ m).tocsr(), own, top, depth) for s, m in self._sparse().items()})
        shared = {POPULARITY: self.popularity, RECENT: self.recent_scores}
        views.update({s: SharedScores(v, own, top, depth) for s, v in shared.items() if s in self.sources})
        spare = min(int(own.counts.max(initial=0)), top)  # own items an index may return first
        for source, index in self.indexes.items():
            users = self._users(source, histories, recent)
            found = index.search(users, top + spare)
            found[~informed] = -1  # an empty history has no user vector to search with
            views[source] = IndexedText(users, index.vectors, found, own, top)
        return {s: views[s] for s in self.sources}

    def batches(self, histories: Sequence[np.ndarray], show_progress: bool = False, seen: Sequence[np.ndarray] | None = None) -> Iterator[tuple[int, dict[str, View]]]:
        """(offset, each source's view) for consecutive batches of at most ``batch_rows`` histories (`seen`: see :meth:`retrieve`)."""
        step = self.batch_rows
        for start in tqdm(range(0, len(histories), step), desc="retrieve", unit="batch", disable=not show_progress):
            yield start, self._views(histories[start : start + step], None if seen is None else seen[start : start + step])

    def retrieve(self, histories: Sequence[np.ndarray], targets: np.ndarray | None = None, show_progress: bool = False,
                 seen: Sequence[np.ndarray] | None = None) -> Retrieved:
        """The union of every source's top ``per_source`` items for each history, with all sources' scores and ranks.

        Args:
            histories: item-index histories (oldest first): what the sources read.
            targets: optional (len(histories),) item index of each held-out item, to measure recall.
            show_progress: show a progress bar.
            seen: per history, the items excluded from its ranking (never retrieved, ranked last): default the history;
                the whole one when it is capped (:func:`recsys.candidates.earlier.whole_histories`); empty: none.

        Returns:
            :class:`Retrieved`: ``candidates`` in long format (``row`` = index into `histories`, ``item_index``,
            ``<source>_score``, ``<source>_rank`` (1 + items scored strictly higher, within ``rank_depth``, for every
            source even if another one retrieved the item), ``n_sources`` (sources with the item in their top
            ``per_source``)), with targets each source's rank of the target for :meth:`Retrieved.recall`, and ``hits``:
            how many items each source retrieved for each history (a source that returns nothing shows here).
        """
        parts, target_ranks, hits = [], {s: [] for s in self.sources}, {s: [] for s in self.sources}
        n_items = len(self.item_ids)
        for start, views in self.batches(histories, show_progress, seen):
            b = min(self.batch_rows, len(histories) - start)
            found = {s: v.hit_keys() for s, v in views.items()}
            for s, k in found.items():
                hits[s].append(np.bincount((k // n_items).astype(np.int64), minlength=b))
            keys, counts = np.unique(np.concatenate(list(found.values())), return_counts=True)
            rows, cols = keys // n_items, keys % n_items
            frame = {ROW: (rows + start).astype(np.int32), ITEM_INDEX: cols.astype(np.int32), N_SOURCES: counts.astype(np.int8)}
            bounds = np.searchsorted(rows, np.arange(b + 1))
            for s, v in views.items():
                values = v.values(rows, cols)
                frame[source_score(s)] = values
                frame[source_rank(s)] = v.ranks(values, bounds)
            parts.append(pl.DataFrame(frame))
            if targets is not None:
                t = np.asarray(targets[start : start + b])
                for s, v in views.items():
                    target_ranks[s].append(v.target_ranks(t))
        cands = pl.concat(parts) if parts else pl.DataFrame()
        per = {s: np.concatenate(r) for s, r in target_ranks.items()} if targets is not None else {}
        per_row = {s: np.concatenate(h) if h else np.zeros(0, dtype=np.int64) for s, h in hits.items()}
        return Retrieved(cands, per, self.cfg.per_source, per_row)

    def score_pairs(self, histories: Sequence[np.ndarray], rows: np.ndarray, items: np.ndarray,
                    seen: Sequence[np.ndarray] | None = None) -> pl.DataFrame:
        """Every source's score and rank, and ``n_sources``, of given (row, item index) pairs, `rows` sorted:
        the retrieval features of candidates that retrieval did not produce (logged ones, repeats). Rows follow the
        input; `seen` as in :meth:`retrieve` (an excluded item scores -inf)."""
        bounds_all = np.searchsorted(rows, np.arange(len(histories) + 1))
        cols: dict[str, list[np.ndarray]] = {N_SOURCES: [], **{c: [] for s in self.sources for c in (source_score(s), source_rank(s))}}
        for start, views in self.batches(histories, seen=seen):
            b = min(self.batch_rows, len(histories) - start)
            lo, hi = bounds_all[start], bounds_all[start + b]
            r, i = rows[lo:hi] - start, items[lo:hi]
            hits = np.zeros(hi - lo, dtype=np.int8)
            for s, v in views.items():
                values = v.values(r, i)
                hits += v.hits(r, i, values)
                cols[source_score(s)].append(values)
                cols[source_rank(s)].append(v.ranks(values, bounds_all[start : start + b + 1] - lo))
            cols[N_SOURCES].append(hits)
        return pl.DataFrame({k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()})


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
