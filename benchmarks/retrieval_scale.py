"""Retrieval at catalogue scale: where approximate text search starts to pay, and what a large shop log costs.

    python -m benchmarks.retrieval_scale crossover [--sizes 5000,20000,100000] [--queries 2048]
    python -m benchmarks.retrieval_scale scale [--users 100000 --items 20000 --events 1000000 --histories 10000]

``crossover``: for clustered 384-d vectors at each catalogue size, the seconds per 1,000 user queries of
exact text retrieval (matrix product over the catalogue + top-k selection, what the dense path does) against
the IVF index of :mod:`recsys.candidates.ann` (calibrated to recall@100 >= 0.95), its build time and the
recall reached. ``scale``: a synthetic Zipf-popular interaction log built with numpy, :class:`Retriever`
fitted on it and candidates retrieved for a sample of histories, with the retrieval plan. Run ``scale``
under ``/usr/bin/time -v`` for the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from recsys.candidates.ann import TextIndex, exact_neighbours, neighbour_recall

DIM = 384
TOP = 100


def clustered_vectors(n: int, dim: int = DIM, clusters: int = 200, seed: int = 0) -> np.ndarray:
    """L2-normalised vectors around random cluster centres (text embeddings cluster by topic; uniform noise does not)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    v = centres[rng.integers(clusters, size=n)] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def user_queries(vectors: np.ndarray, n: int, recent: int = 5, seed: int = 1) -> np.ndarray:
    """Normalised means of `recent` random items: queries shaped like the text source's user vectors."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(len(vectors), size=(n, recent))].mean(axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def crossover(sizes: list[int], queries: int) -> list[dict[str, float]]:
    """Seconds per 1,000 queries of exact and IVF text retrieval at each catalogue size."""
    rows = []
    for n in sizes:
        v = clustered_vectors(n)
        q = user_queries(v, queries)
        start = time.perf_counter()
        for lo in range(0, queries, 1024):
            exact_neighbours(q[lo : lo + 1024], v, TOP)
        exact_s = time.perf_counter() - start
        index = TextIndex(v)
        recall = index.calibrate(q[:256], TOP, 0.95)
        start = time.perf_counter()
        found = index.search(q, 2 * TOP)[:, :TOP]
        ann_s = time.perf_counter() - start
        row = {"items": n, "exact_s_per_1k": round(1000 * exact_s / queries, 3), "ivf_s_per_1k": round(1000 * ann_s / queries, 3),
               "ivf_build_s": round(index.build_seconds, 2), "lists": index.lists, "nprobe": index.nprobe,
               "recall@100": round(neighbour_recall(exact_neighbours(q[256:512], v, TOP), found[256:512]), 4),
               "recall@100_calibration": round(recall, 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def synthetic_log(users: int, items: int, events: int, seed: int = 0) -> list[np.ndarray]:
    """Per-user item sequences: Zipf(1.0) item popularity, log-normal user lengths (2 to 1,000, mean events / users)."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(0.0, 1.0, size=users)
    lengths = np.clip((lengths * events / lengths.sum()).round(), 2, 1000).astype(np.int64)
    p = 1.0 / np.arange(1, items + 1) ** 1.0
    flat = rng.choice(items, size=int(lengths.sum()), p=p / p.sum()).astype(np.int64)
    return np.split(flat, np.cumsum(lengths)[:-1])


def scale(users: int, items: int, events: int, histories: int, budget: str) -> dict[str, object]:
    """Fit a Retriever on a synthetic log (random text vectors) and retrieve for `histories` of its users."""
    from recsys.candidates.retrieval import RetrievalConfig, Retriever

    seqs = synthetic_log(users, items, events)
    ids = [f"i{k}" for k in range(items)]
    start = time.perf_counter()
    retriever = Retriever(ids, seqs, clustered_vectors(items), RetrievalConfig(memory_budget=budget))
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    got = retriever.retrieve([s[:-1] for s in seqs[:histories]], np.array([s[-1] for s in seqs[:histories]]))
    retrieve_s = time.perf_counter() - start
    out = {"users": users, "items": items, "events": int(sum(len(s) for s in seqs)), "histories": histories,
           "fit_s": round(fit_s, 1), "retrieve_s": round(retrieve_s, 1), "candidates": got.candidates.height,
           "recall@100": {s: round(v["recall@100"], 4) for s, v in got.recall().items()}, "plan": retriever.plan}
    print(json.dumps(out, default=str), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("crossover")
    c.add_argument("--sizes", default="2000,5000,10000,20000,50000,100000")
    c.add_argument("--queries", type=int, default=2048)
    s = sub.add_parser("scale")
    s.add_argument("--users", type=int, default=100_000)
    s.add_argument("--items", type=int, default=20_000)
    s.add_argument("--events", type=int, default=1_000_000)
    s.add_argument("--histories", type=int, default=10_000)
    s.add_argument("--budget", default="4GB")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.what == "crossover":
        crossover([int(x) for x in args.sizes.split(",")], args.queries)
    else:
        scale(args.users, args.items, args.events, args.histories, args.budget)


if __name__ == "__main__":
    main()
