"""The catalogue protocol: rank each held-out item among **all** items; Recall@k, NDCG@k, MRR, coverage, diversity.

Every row of the evaluated split holds out one item (its clicked candidate). Candidates come from retrieval
with statistics refitted on the splits before the evaluated one (so no target is in what scores it), and features
from the same collector as training and serving. Two protocols differ only in what is left out of the ranking, for
the model and every baseline alike (one switch, the same code):

* ``masked`` (default; RecTools and production practice): every item the user had before the row, the whole
  history rather than the ingest's capped one (:mod:`recsys.candidates.earlier`), is excluded; a repeat target
  is a miss;
* ``recbole`` (RecBole's full-sort evaluation of sequential models, under which UniSRec, VQ-Rec and MISSRec
  published their figures): nothing is excluded (RecBole masks only its padding item), so history items are
  candidates and a repeat target can be a hit. The rankers get the user's earlier items as repeat candidates beside
  the retrieved ones, as in training (:mod:`recsys.candidates.repeats`), and have learned from the log how likely a
  repeat is; each source alone ranks the whole catalogue.

Rows of the table (names shared with the replay protocol where the ranking is the same idea):

* ``full model`` / ``without text``: the lambdarank model, and the same ranker as the job would be without item text:
  no text features, and none of the candidates only the text sources retrieved (:mod:`features.without_text`);
* ``text only`` / ``frozen text``: cosine of the items to the user's recent items' mean text vector, from the
  fine-tuned (when fine-tuned) / pretrained encoder;
* ``popularity``, ``transitions``, ``cooccurrence``, ``ease``, ``als``, ``sequence``: one retrieval source alone, over the
  catalogue (``sequence``: the text-aware sequence model of :mod:`recsys.text.sequence`);
* ``random``: a seeded random order of the items not excluded.

A target that retrieval missed ranks last for the ranker rows: the union's recall bounds what the ranker can do.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from features.collect import collect_features
from ranker.topk import top_k_matrix
from features.registry import source_score
from recsys.candidates.retrieval import ALS, COOCCURRENCE, EASE, ITEM_INDEX, POPULARITY, ROW, SEQUENCE, TEXT, TRANSITIONS, Retriever
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.candidates.topn import Retrieved
from recsys.cluster.connect import ClusterConfig
from recsys.cluster.partition import users_log, with_log, without_log
from recsys.cluster.session import ClusterSession
from recsys.data import Col, Split
from recsys.errors import RecsysError
from recsys.evaluation.beyond import catalogue_coverage, intra_list_diversity, popularity_bias
from recsys.evaluation.metrics import FULL_KS, ci95, ndcg_key, rank_metric_rows, rank_metrics, recall_key
from recsys.evaluation.report import GROUP_KEY, HISTORY_BUCKETS, MODEL_KEY, history_buckets
from recsys.pipeline import FROZEN, Assets
from recsys.splits import splits_before

log = logging.getLogger(__name__)

TOP = 10  # beyond-accuracy metrics look at the top 10
CHUNK_ROWS = 5_000  # rows ranked at once: ~2M candidate rows with their features at ~400 candidates a row
SOURCE_ROWS = {POPULARITY: "popularity", TRANSITIONS: "transitions", COOCCURRENCE: "cooccurrence", EASE: "ease", ALS: "als", SEQUENCE: "sequence"}
Ranks = tuple[np.ndarray, np.ndarray]  # rank of the target and the size of its tie
MASKED, RECBOLE = "masked", "recbole"
MASKINGS = {MASKED: "masked: every item the user had before the target (whole history) excluded from the ranking",
            RECBOLE: "recbole: nothing excluded from the ranking (RecBole's full sort; a repeat target can be a hit; the rankers rank "
                     "the user's earlier items beside the retrieved ones)"}

_RECALL_NOTE = "retrieval recall (union@N = the ranker's ceiling)"
_RECALL_NOTE_RECBOLE = ("retrieval recall (each source with nothing excluded; the rankers rank the union with the user's items "
                        "excluded, plus those items as repeat candidates)")


def _candidate_ranks(table: pl.DataFrame, score: np.ndarray, targets: np.ndarray, n_items: int) -> Ranks:
    """Rank and tie count of each row's target among its candidates scored by `score`: 1 + the candidates scored
    strictly higher, and the candidates scored equal (the target included). A target retrieval missed, or scored
    -inf or NaN, ranks last (every candidate comes first) with a tie of 1.

    The same as :func:`~recsys.evaluation.metrics.held_out_ranks` over a (rows, n_items) array of `score` with
    -inf where an item is no candidate, read off the candidate rows alone: O(candidates), no dense array.

    Args:
        table: Candidates, ``row`` (index into `targets`) and ``item_index``; a (row, item) pair at most once, as
            retrieval's union gives them.
        score: (candidates,) score of each row of `table`.
        targets: (rows,) each row's held-out item index, in [0, n_items).
        n_items: Catalogue size: the rank of a missed target.
    """
    rows, items = table[ROW].to_numpy().astype(np.int64), table[ITEM_INDEX].to_numpy()
    score = np.asarray(score, dtype=np.float64)
    own = np.full(len(targets), np.nan)
    is_target = items == targets[rows]
    own[rows[is_target]] = score[is_target]
    found = np.isfinite(own)
    mine = own[rows]  # the score of each candidate's target; NaN (no comparison holds) where the row has none
    higher = np.bincount(rows[score > mine], minlength=len(targets))
    equal = np.bincount(rows[score == mine], minlength=len(targets))
    return np.where(found, 1 + higher, n_items).astype(np.int64), np.where(found, equal, 1).astype(np.int64)


def _random_ranks(rng: np.random.Generator, req: Requests, n_items: int) -> Ranks:
    """The target's rank in a seeded random order of the items not excluded from its row: uniform over them; an
    excluded target is a miss (last), as it is for every other model."""
    n_seen = np.array([len(np.unique(s)) for s in req.seen], dtype=np.int64)
    excluded = np.array([bool(np.isin(t, s)) for t, s in zip(req.targets, req.seen)], dtype=bool)
    return np.where(excluded, n_items, rng.integers(1, n_items - n_seen + 1)), np.ones(len(n_seen), dtype=np.int64)


def _beyond(top: np.ndarray, n_items: int, vectors: np.ndarray | None, popularity: np.ndarray) -> dict[str, float]:
    out = {f"coverage@{TOP}": catalogue_coverage(top, n_items), **popularity_bias(top, popularity)}
    if vectors is not None:
        out[f"ild@{TOP}"] = intra_list_diversity(top, vectors)
    return out


def _by_history(ranks: dict[str, Ranks], hist_len: np.ndarray) -> pl.DataFrame:
    bucket = history_buckets(hist_len)
    rows = []
    for label in dict.fromkeys(history_buckets(np.array(HISTORY_BUCKETS))):
        mask = bucket == label
        if mask.any():
            for model, (r, t) in ranks.items():
                m = rank_metrics(r[mask], (10,), t[mask])
                rows.append({GROUP_KEY: label, MODEL_KEY: model, recall_key(10): m[recall_key(10)], ndcg_key(10): m[ndcg_key(10)], "n": m["n"]})
    return pl.DataFrame(rows)


def _frozen_text_only(assets: Assets, split: str) -> Retriever | None:
    """The pretrained encoder's text source alone (the ``frozen text`` row of a fine-tuned model), or None."""
    frozen = assets.vectors(FROZEN)
    if not (assets.config.fine_tune and frozen is not None):
        return None
    return Retriever.fit(assets.dataset, frozen, dataclasses.replace(assets.config.retrieval, sources=(TEXT,)), splits=splits_before(split))


def _rank_chunk(assets: Assets, retriever: Retriever, frozen_only: Retriever | None, req: Requests,
                log: pl.DataFrame | None = None) -> tuple[dict[str, tuple[Ranks, np.ndarray]], dict[str, np.ndarray], int]:
    """Every model's and source's (target rank, tie size) and top-k lists for one chunk of requests; each retrieval
    source's rank of the targets; its number of candidates. Only these small arrays leave a cluster worker, whose
    assets come without the dataset's log: `log` is the chunk's users' part of it (all the features read)."""
    cands, got = retrieved_candidates(retriever, req, repeats=not req.masked)
    if not req.masked:  # each source alone ranks the whole catalogue, the user's items included
        got = retriever.retrieve(req.histories, req.targets, seen=req.seen)
    inputs = assets.inputs(retriever)
    if log is not None:
        inputs = dataclasses.replace(inputs, dataset=with_log(inputs.dataset, log))
    table = collect_features(inputs, req.rows, cands)
    n_items, n_rows = len(retriever.item_ids), len(req.targets)
    found: dict[str, tuple[Ranks, np.ndarray]] = {}
    for name, ranker in assets.rankers.items():
        score = ranker.score(table)
        found[name] = (_candidate_ranks(table, score, req.targets, n_items), top_k_matrix(table, score, n_rows, TOP, ROW, ITEM_INDEX))
    sources = {**SOURCE_ROWS, TEXT: "text only" if assets.config.fine_tune else "frozen text"}
    for source, name in sources.items():
        if source in retriever.sources:
            r = got.target_ranks[source]
            found[name] = ((r[:, 0], r[:, 1]), top_k_matrix(table, table[source_score(source)].to_numpy(), n_rows, TOP, ROW, ITEM_INDEX))
    if frozen_only is not None:
        fgot = frozen_only.retrieve(req.histories, req.targets, seen=req.seen)
        r, c = fgot.target_ranks[TEXT], fgot.candidates
        found["frozen text"] = ((r[:, 0], r[:, 1]), top_k_matrix(c, c[source_score(TEXT)].to_numpy(), n_rows, TOP, ROW, ITEM_INDEX))
    return found, got.target_ranks, table.height


@dataclasses.dataclass(frozen=True)
class _WithLog:
    """A chunk of rows for a cluster task, with its users' part of the log (a plain tuple would read as a Dask task)."""

    req: Requests
    log: pl.DataFrame


def _rank_chunk_with_log(assets: Assets, retriever: Retriever, frozen_only: Retriever | None, chunk: _WithLog) -> Any:
    """A cluster task of :func:`catalogue`."""
    return _rank_chunk(assets, retriever, frozen_only, chunk.req, chunk.log)


def catalogue(assets: Assets, rows: pl.DataFrame, split: str, seed: int = 0, chunk_rows: int = CHUNK_ROWS,
              protocol: str = MASKED, cluster: ClusterConfig | None = None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of the model and every baseline over the whole catalogue for the held-out items of `rows` (of `split`).

    Rows are ranked `chunk_rows` at a time (retrieval, features, rankers), keeping only each row's target ranks
    and top-k lists, so memory is bounded by the chunk, not by the number of rows evaluated. `protocol` is
    ``masked`` or ``recbole`` (see the module's docstring). With `cluster`, each chunk is a task on its Dask
    workers (the assets and the fitted retrievers sent once); the metrics are the same.

    Returns:
        Model name -> metric -> value (plus ``retrieval: <source>`` rows with each source's and the union's
        recall), and what the report shows beside them (by history length, 95% intervals, notes).

    Raises:
        RecsysError: `split` is train or has no rows with a known target, or an unknown `protocol`.
    """
    if split not in (Split.DEV, Split.TEST):
        raise RecsysError(f"split {split!r} (--split): the catalogue protocol evaluates a held-out split, dev or test")
    if protocol not in MASKINGS:
        raise RecsysError(f"unknown catalogue protocol {protocol!r} (--protocol); use one of {tuple(MASKINGS)}")
    retriever = assets.retriever(splits=splits_before(split))
    req = Requests.from_rows(retriever, rows, assets.dataset.impressions, masked=protocol == MASKED)
    if not (req.targets >= 0).any():
        raise RecsysError(f"the dataset has no {split} rows with a clicked item in the catalogue")
    if not (req.targets >= 0).all():
        log.warning("%d %s rows have no known target item and are skipped", int((req.targets < 0).sum()), split)
        req = req.with_targets()
    frozen_only = _frozen_text_only(assets, split)
    n_items, n_rows = len(retriever.item_ids), len(req.targets)
    chunks, retrieved, n_candidates = [], [], 0
    parts = [req.take(np.arange(start, min(start + chunk_rows, n_rows))) for start in range(0, n_rows, chunk_rows)]
    with ClusterSession(cluster) as on:
        if cluster is None:
            results = on.map_chunks(_rank_chunk, (assets, retriever, frozen_only), parts)
        else:  # the workers get the assets without the log, each chunk its users' part of it
            light = dataclasses.replace(assets, dataset=without_log(assets.dataset))
            chunks_with_log = [_WithLog(p, users_log(assets.dataset, p.rows[Col.USER])) for p in parts]
            results = on.map_chunks(_rank_chunk_with_log, (light, retriever, frozen_only), chunks_with_log)
        for found_part, target_ranks, n in tqdm(results, total=len(parts), desc="evaluate", unit="chunk"):
            chunks.append(found_part)
            retrieved.append(target_ranks)
            n_candidates += n
    found = {name: ((np.concatenate([c[name][0][0] for c in chunks]), np.concatenate([c[name][0][1] for c in chunks])),
                    np.concatenate([c[name][1] for c in chunks])) for name in chunks[0]}
    got = Retrieved(pl.DataFrame(), {s: np.concatenate([t[s] for t in retrieved]) for s in retrieved[0]}, retriever.cfg.per_source)
    rng = np.random.default_rng(seed)
    found["random"] = (_random_ranks(rng, req, n_items), rng.integers(0, n_items, (n_rows, TOP)))
    frozen = assets.pair_vectors.get(FROZEN)
    metrics = {name: {**rank_metrics(r, FULL_KS, t), **_beyond(top, n_items, frozen, retriever.popularity)} for name, ((r, t), top) in found.items()}
    intervals = {name: {m: ci95(v) for m, v in rank_metric_rows(r, FULL_KS, t).items()} for name, ((r, t), _) in found.items()}
    recall = {f"retrieval: {s}": v for s, v in got.recall().items()}
    ranks = {name: rt for name, (rt, _) in found.items()}
    best = max((n for n in ranks if n not in ("full model", "without text", "random")), key=lambda n: metrics[n][ndcg_key(10)], default="random")
    notes = {"rows": n_rows, "items": n_items, "candidates per row": round(n_candidates / max(n_rows, 1), 1),
             "statistics fitted on": "+".join(splits_before(split)),
             _RECALL_NOTE if req.masked else _RECALL_NOTE_RECBOLE: "; ".join(
                 f"{name.removeprefix('retrieval: ')} " + " ".join(f"{k.replace('recall', 'R')}={v:.4f}" for k, v in row.items())
                 for name, row in recall.items())}
    if split == Split.DEV:
        notes["split"] = "dev (the ranker was trained on these targets: in-sample for the ranker rows)"
    by_group = _by_history({n: ranks[n] for n in ("full model", "without text", best)}, req.lengths)
    return {**metrics, **recall}, {"by_group": by_group, "notes": notes, "ci95": intervals}
