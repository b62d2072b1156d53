"""Retrieval settings chosen on the dev targets of the log being trained on (interaction logs).

The retriever is fitted once on the rows before dev (as the ranker's dev targets see it), and each dev target
is scored among the whole catalogue by every source. A setting is judged by what it moves:

* ``ease_l2``      NDCG@10 of the EASE source (one EASE fit per value: a Cholesky inverse of G + l2 I);
* ``recent``, ``decay``  the mean NDCG@10 of the sources they drive (transitions, co-occurrence, text), query-time
                   settings, so nothing is refitted;
* ``per_source``   the union's recall of the dev targets (the share the ranker will even see) at the deepest
                   ``per_source`` whose mean union stays within ``max_candidates`` per request;
* ``sources``      to make room in that budget, a source whose candidates hold fewer than ``min_recall_gain`` of the
                   dev targets that no other source retrieves is left out (its candidates add nothing the ranker could
                   use). Within the budget every source stays: a source the others duplicate costs nothing, and its
                   score is still a ranker feature.

Steps run in that order (``sources`` with ``per_source``) from the configured settings, each a hill-climb along its grid
(:func:`recsys.selection.search.climb`), until the time budget is spent. Each source's result at a setting (the
rank of every target, the items of its top) is computed once and reused, so a step scores only the sources it
changes. The ranker later learns from these same dev targets (:func:`recsys.pipeline.training_candidates`):
choosing retrieval settings on them is fine, since test stays held out, but dev figures of the finished model are
then in-sample.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.candidates.inputs import user_sequences
from recsys.candidates.itemitem import ease_bytes, fit_ease
from recsys.candidates.retrieval import ALS, COOCCURRENCE, EASE, TEXT, TRANSITIONS, Retriever, recency_matrix
from recsys.candidates.retrieved import Requests
from recsys.config import TrainConfig
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.evaluation.metrics import ndcg_at_k
from recsys.resources import parse_bytes
from recsys.selection.search import Search, climb
from recsys.splits import sample_users, splits_before

log = logging.getLogger(__name__)

RECENCY_SOURCES = (TRANSITIONS, COOCCURRENCE, TEXT)  # the sources `recent` and `decay` drive
AT = 10
UNION, CANDIDATES = "union recall", "candidates per request"
SETTINGS = ("ease_l2", "recent", "decay", "per_source", "sources")  # RetrievalConfig fields this search chooses


def ndcg_name(source: str) -> str:
    return f"ndcg@{AT} {source}"


def only_name(source: str) -> str:
    return f"targets only {source} retrieves"


def brings_name(source: str) -> str:
    return f"candidates only {source} brings"


@dataclass(frozen=True)
class SourceResult:
    """One source's answer for every dev target at one setting.

    Attributes:
        ranks: (rows, 3) the target's rank among the catalogue, its tie size, whether the source may retrieve it.
        keys: sorted keys ``row * n_items + item`` of the source's top ``per_source`` items of every row.
    """

    ranks: np.ndarray
    keys: np.ndarray


class DevTargets:
    """The dev targets and each source's result at the settings tried so far (each computed once).

    Args:
        retriever: fitted on the rows before dev, with the configured settings.
        histories: item-index histories of the dev rows.
        targets: their held-out items.
        users: the binary (users, items) matrix the retriever was fitted on (EASE refits read it).
    """

    def __init__(self, retriever: Retriever, histories: list[np.ndarray], targets: np.ndarray, users: Any) -> None:
        self.base, self.histories, self.targets, self.users = retriever, histories, targets, users
        # The retriever's source for each configured one it has (not text without vectors; ALS where the memory budget
        # put it in EASE's place): settings are chosen in the config's terms.
        self.fitted = {s: s for s in retriever.sources}
        if retriever.plan.get("collaborative") == ALS and EASE not in retriever.sources:
            self.fitted[EASE] = ALS
        n = len(retriever.item_ids)
        self.target_keys = np.arange(len(targets), dtype=np.int64) * n + targets
        self.cache: dict[tuple[Any, ...], SourceResult] = {}
        # The EASE matrices are held here (the retriever's own moves in), so keep_only bounds them to one.
        self.eases: dict[float, np.ndarray] = {retriever.cfg.ease_l2: retriever.ease} if retriever.ease is not None else {}
        retriever.ease = None

    @staticmethod
    def key(source: str, point: dict[str, Any]) -> tuple[Any, ...]:
        """What a source's result depends on."""
        if source == EASE:
            return source, point["ease_l2"], point["per_source"]
        if source in RECENCY_SOURCES:
            return source, point["recent"], point["decay"], point["per_source"]
        return source, point["per_source"]

    def results(self, point: dict[str, Any]) -> dict[str, SourceResult]:
        """Every source's result at `point`, scoring only the ones not known yet."""
        names = [s for s in point["sources"] if s in self.fitted]
        missing = [s for s in names if self.key(s, point) not in self.cache]
        if missing:
            self.cache.update({self.key(s, point): r for s, r in self._score(point, missing).items()})
        return {s: self.cache[self.key(s, point)] for s in names}

    def _score(self, point: dict[str, Any], sources: list[str]) -> dict[str, SourceResult]:
        settings = {k: v for k, v in point.items() if k != "sources"}
        cfg = dataclasses.replace(self.base.cfg, **settings, rank_depth=point["per_source"])  # target ranks are exact at any depth
        ease = self.ease(point["ease_l2"]) if self.fitted.get(EASE) == EASE and EASE in sources else None
        r = self.base.with_settings(cfg, [self.fitted[s] for s in sources], ease)
        n, rows = len(r.item_ids), len(self.histories)
        ranks: dict[str, list[np.ndarray]] = {s: [] for s in sources}
        keys: dict[str, list[np.ndarray]] = {s: [] for s in sources}
        for start, views in r.batches(self.histories):
            t = self.targets[start : start + min(r.batch_rows, rows - start)]
            for s in sources:
                view = views[self.fitted[s]]
                ranks[s].append(view.target_ranks(t))
                keys[s].append(view.hit_keys() + start * n)  # the batch's rows are offset by `start`
        return {s: SourceResult(np.concatenate(ranks[s]), np.sort(np.concatenate(keys[s]))) for s in sources}

    def ease(self, l2: float) -> np.ndarray:
        """The EASE weights at ridge `l2` (fitted when first asked for)."""
        if l2 not in self.eases:
            self.eases[l2] = fit_ease(self.users, l2)
        return self.eases[l2]

    def ndcg(self, point: dict[str, Any], sources: list[str]) -> dict[str, float]:
        """NDCG@10 of each of `sources` at `point`."""
        res = self.results({**point, "sources": tuple(sources)})
        return {ndcg_name(s): ndcg_at_k(r.ranks[:, 0], AT, r.ranks[:, 1]) for s, r in res.items()}

    def metrics(self, point: dict[str, Any]) -> dict[str, float]:
        """Each source's NDCG@10, the union's recall of the targets and its mean size per request, at `point`."""
        return {**self.ndcg(point, list(point["sources"])), **self.union(point)}

    def union(self, point: dict[str, Any]) -> dict[str, float]:
        """At `point`: the share of targets among the union of the sources' tops, its mean size per request, and for each
        source the share of targets only it retrieves (what the union loses without it) and the share of the union's
        candidates only it brings."""
        results = self.results(point)
        keys = np.concatenate([r.keys for r in results.values()])
        source = np.repeat(np.arange(len(results)), [len(r.keys) for r in results.values()])
        order = np.argsort(keys, kind="stable")  # a merge of the sources' sorted runs
        keys, source = keys[order], source[order]
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, dtype=np.int64)
        counts = np.diff(np.append(starts, len(keys)))
        unique = keys[starts]
        at = np.minimum(np.searchsorted(unique, self.target_keys), max(len(unique) - 1, 0))
        found = unique[at] == self.target_keys if len(unique) else np.zeros(len(self.target_keys), dtype=bool)
        only = found & (counts[at] == 1) if len(unique) else found
        owner = source[starts[at]] if len(unique) else np.zeros(len(found), dtype=np.int64)
        brings = np.bincount(source[starts[counts == 1]], minlength=len(results)) / max(len(unique), 1)
        out = {UNION: float(found.mean()), CANDIDATES: len(unique) / max(len(self.targets), 1)}
        out.update({only_name(s): float((only & (owner == i)).mean()) for i, s in enumerate(results)})
        return {**out, **{brings_name(s): float(brings[i]) for i, s in enumerate(results)}}

    def keep_only(self, point: dict[str, Any]) -> None:
        """Forget every result and EASE matrix but those of `point` (memory stays bounded by one setting)."""
        wanted = {self.key(s, point) for s in point["sources"]}
        self.cache = {k: v for k, v in self.cache.items() if k in wanted}
        self.eases = {l2: m for l2, m in self.eases.items() if l2 == point["ease_l2"]}


def dev_targets(ds: Dataset, vectors: Any, cfg: TrainConfig, sequence: Any = None) -> DevTargets:
    """The retriever fitted on the rows before dev with the configured settings, and a seeded sample of
    ``select.users`` users' dev targets.

    Raises:
        RecsysError: no dev row has a target in the catalogue.
    """
    fitted_on = ds.split(*splits_before(Split.DEV))
    retriever = Retriever.fit(ds, vectors, cfg.retrieval, rows=fitted_on, sequence=sequence)
    dev, _ = sample_users(ds.split(Split.DEV), cfg.select.users, cfg.seed)
    req = Requests.from_rows(retriever, dev, ds.impressions).with_targets()
    if not len(req.targets):
        raise RecsysError("settings selection needs dev rows with a target in the catalogue (the ranker learns from them too); "
                          "re-split the log, or turn select.enabled off")
    sequences = retriever.encode_histories(user_sequences(fitted_on)[Col.HISTORY])
    return DevTargets(retriever, req.histories, req.targets, recency_matrix(sequences, len(retriever.item_ids), None, 1.0))


def select_retrieval(ds: Dataset, vectors: Any, cfg: TrainConfig, sequence: Any = None, clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Choose ``ease_l2``, ``recent``, ``decay``, ``sources`` and ``per_source`` on dev within ``select.retrieval_seconds``.

    Args:
        ds: an interaction log with dev rows.
        vectors: the text source's catalogue vectors (None: no text source).
        cfg: the configuration; its retrieval settings seed the search, ``cfg.select`` holds the grids and budget.
        sequence: the trained sequence model (a source, never refitted here), or None.
        clock: seconds from an arbitrary origin (default: ``time.perf_counter``).

    Returns:
        The record ``selection.json`` keeps: the configured and chosen settings (``retrieval.*`` names), the dev scores
        of both, what judged each setting, every trial and the budget spent.

    Raises:
        RecsysError: no dev row has a target in the catalogue.
    """
    dev = dev_targets(ds, vectors, cfg, sequence)
    return RetrievalSearch(dev, cfg, Search(cfg.select.retrieval_seconds, *([clock] if clock else []))).run()


class RetrievalSearch:
    """The steps of :func:`select_retrieval` over one :class:`DevTargets`."""

    def __init__(self, dev: DevTargets, cfg: TrainConfig, search: Search) -> None:
        self.dev, self.sel, self.search = dev, cfg.select, search
        rc = dev.base.cfg
        self.point: dict[str, Any] = {"ease_l2": rc.ease_l2, "recent": rc.recent, "decay": rc.decay, "per_source": rc.per_source, "sources": rc.sources}
        self.first: dict[str, float] = {}
        self.judged: dict[str, dict[str, Any]] = {}

    def run(self) -> dict[str, Any]:
        seed = dict(self.point)

        def configured() -> tuple[float, dict[str, Any]]:
            self.first = self.dev.metrics(seed)
            return self.first[UNION], {"metrics": _rounded(self.first)}

        self.search.trial("configured", seed, configured)
        n = len(self.dev.base.item_ids)
        if self.dev.fitted.get(EASE) == EASE and ease_bytes(n) + 4 * n * n <= parse_bytes(self.dev.base.cfg.memory_budget):  # room for two
            self.step("ease_l2", self.sel.ease_l2, [EASE])
        recency = [s for s in RECENCY_SOURCES if s in self.dev.fitted]
        if recency:
            self.step("recent", self.sel.recent, recency)
            if self.point["recent"] > 1:  # one item weighs decay**0 = 1 whatever the decay
                decay = self.point["decay"]
                self.step("decay", self.sel.decay, recency)
                if self.point["decay"] != decay:
                    self.step("recent", self.sel.recent, recency)
        self.choose_depth()
        chosen = self.dev.metrics(self.point)
        return {"configured": _dotted(seed), "chosen": _dotted(self.point), "configured_scores": _rounded(self.first), "chosen_scores": _rounded(chosen),
                "judged_by": self.judged, "dev": {"rows": len(self.dev.targets), "items": n, "fitted_on": "+".join(splits_before(Split.DEV))},
                **self.search.summary(), "trials_run": self.search.trials}

    def mean_ndcg(self, point: dict[str, Any], sources: list[str]) -> float:
        return float(np.mean(list(self.dev.ndcg(point, sources).values())))

    def step(self, name: str, grid: tuple[Any, ...], sources: list[str]) -> None:
        """Hill-climb one setting, judged by the mean NDCG@10 of the sources it moves."""
        def judge(value: Any) -> float | None:
            point = {**self.point, name: value}
            return self.search.trial(name, point, lambda: (self.mean_ndcg(point, sources), {"metrics": _rounded(self.dev.ndcg(point, sources))}))

        self.point[name], chosen = climb(grid, self.point[name], self.mean_ndcg(self.point, sources), judge)
        self.judged[f"retrieval.{name}"] = {"metric": f"{'mean ' if len(sources) > 1 else ''}ndcg@{AT} of {', '.join(sources)}",
                                            "configured": float(np.mean([self.first[ndcg_name(s)] for s in sources])), "chosen": chosen}
        self.dev.keep_only(self.point)

    def without_idle(self, point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """`point` with sources left out, one at a time, while its union is over ``max_candidates`` per request: each time
        the one that alone retrieves the fewest dev targets, as long as the union loses fewer than ``min_recall_gain`` of
        them in all (never the last source); and the union it keeps."""
        u = full = self.dev.union(point)
        while self.sel.drop_sources and u[CANDIDATES] > self.sel.max_candidates and len(used := [s for s in point["sources"] if s in self.dev.fitted]) > 1:
            weakest = min(used, key=lambda s: (u[only_name(s)], -u[brings_name(s)]))
            fewer = {**point, "sources": tuple(s for s in point["sources"] if s != weakest)}
            kept = self.dev.union(fewer)
            if full[UNION] - kept[UNION] >= self.sel.min_recall_gain:
                break
            point, u = fewer, kept
        return point, u

    def choose_depth(self) -> None:
        """The ``per_source`` with the best union recall whose mean union fits ``max_candidates`` per request, making room
        by leaving out sources that bring candidates but almost no target only they retrieve."""
        budget, fitted = self.sel.max_candidates, {}

        def measure(depth: int) -> tuple[float, dict[str, Any]]:
            point, u = self.without_idle({**self.point, "per_source": depth})
            fitted[depth] = point
            score = u[UNION] if u[CANDIDATES] <= budget else -u[CANDIDATES] / budget  # over the budget: the smaller the better
            return score, {"sources": list(point["sources"]), "metrics": _rounded(u)}

        def judge(depth: int) -> float | None:
            return self.search.trial("per_source", {**self.point, "per_source": depth}, lambda: measure(depth))

        if self.search.open():  # (a spent budget keeps the configured depth and sources, even over max_candidates)
            depth, _ = climb(self.sel.per_source, self.point["per_source"], measure(self.point["per_source"])[0], judge)
            self.point = fitted[depth]
        metric = f"union recall within {budget} candidates per request"
        chosen = self.dev.union(self.point)[UNION]
        self.judged["retrieval.per_source"] = {"metric": metric, "configured": self.first[UNION], "chosen": chosen}
        self.judged["retrieval.sources"] = {"metric": f"{metric} (a source is left out to make room if < {self.sel.min_recall_gain:g} "
                                                      "of the targets are only its)", "configured": self.first[UNION], "chosen": chosen}
        self.dev.keep_only(self.point)


def _dotted(point: dict[str, Any]) -> dict[str, Any]:
    """A point as config settings (``retrieval.ease_l2``...), tuples as lists."""
    return {f"retrieval.{k}": list(v) if isinstance(v, tuple) else v for k, v in point.items()}


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}
