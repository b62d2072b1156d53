"""`recsys recommend`: the batch job. Requests in, top-k ranked lists out, in bounded memory.

A request is a user, optionally with an inline history, optional explicit candidates and an optional
time. Missing pieces come from the model's dataset: the user's latest known history, and candidates
from retrieval (recent and popular items, nearest items by text vector to the user's vector, and
item-to-item signals). Requests are processed in chunks; each chunk goes through the same feature
builder and ranker as training, so serving features cannot drift from training features.

Output rows (Parquet): request_id, user_id, rank (1-based), item_id, score, model_id, generated_at.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.build import build_features
from ranker.lambdarank import load_ranker
from recsys.data import IMPRESSIONS_SCHEMA, Col, Dataset, Split
from recsys.text.encode import ItemVectors
from recsys.errors import DataError
from recsys.io import atomic_path, read_json, write_parquet
from recsys.pipeline import load_model_dataset, model_summary
from recsys.candidates.retrieval import DEFAULT_SOURCES, RECENT, RetrievalConfig, Retriever
from recsys.text.features import text_features
from recsys.text.train import load_text_model

log = logging.getLogger(__name__)

REQUEST = "request_id"
RECS_SCHEMA = {
    REQUEST: pl.String(), Col.USER: pl.String(), "rank": pl.Int32(), Col.ITEM: pl.String(),
    "score": pl.Float64(), "model_id": pl.String(), "generated_at": pl.Datetime("us"),
}


@dataclass
class RecommendConfig:
    top_k: int = 10
    chunk_size: int = 20_000
    # News-like logs: the fresh catalogue joins the item-to-item, text and popularity sources.
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(sources=(*DEFAULT_SOURCES, RECENT)))

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.chunk_size < 1:
            raise ValueError("top_k and chunk_size must be at least 1")


def read_requests(path: Path) -> pl.DataFrame:
    """Read requests from Parquet, JSONL or CSV (lists in CSV as space-separated ids)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "requests file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path)
    elif suffix in (".jsonl", ".ndjson"):
        df = pl.read_ndjson(path)
    elif suffix == ".csv":
        df = pl.read_csv(path, infer_schema=False)
        for col in (Col.HISTORY, Col.CANDIDATES):
            if col in df.columns:
                df = df.with_columns(pl.col(col).fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != "")))
    else:
        raise DataError(path, None, None, f"unknown requests format {suffix!r}; use .parquet, .jsonl or .csv")
    if Col.USER not in df.columns:
        raise DataError(path, None, Col.USER, "column is missing; every request needs a user")
    if REQUEST not in df.columns:
        df = df.with_row_index(REQUEST).with_columns(pl.col(REQUEST).cast(pl.String()))
    return df.with_columns(pl.col(REQUEST).cast(pl.String()), pl.col(Col.USER).cast(pl.String()))


def latest_histories(ds: Dataset) -> pl.DataFrame:
    """Each user's history as of the end of the log: the latest logged history plus that impression's clicks."""
    last = ds.impressions.sort(Col.TIME).group_by(Col.USER).last()
    clicked = pl.col(Col.CANDIDATES).list.gather(pl.col(Col.LABELS).fill_null([]).list.eval((pl.element() == 1).arg_true()))
    return last.select(Col.USER, pl.concat_list(Col.HISTORY, clicked).alias(Col.HISTORY))


def to_impressions(requests: pl.DataFrame, ds: Dataset, now: dt.datetime) -> pl.DataFrame:
    """Requests in the contract's impressions format (unlabelled, split 'test'); histories filled from the log."""
    df = requests
    if Col.HISTORY not in df.columns:
        df = df.join(latest_histories(ds), on=Col.USER, how="left")
    if Col.TIME not in df.columns:
        df = df.with_columns(pl.lit(now).alias(Col.TIME))
    if Col.CANDIDATES not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.List(pl.String())).alias(Col.CANDIDATES))
    return df.select(
        pl.col(REQUEST).alias(Col.IMPRESSION),
        Col.USER,
        pl.col(Col.TIME).cast(pl.Datetime("us")),
        pl.col(Col.HISTORY).cast(pl.List(pl.String())).fill_null([]),
        pl.col(Col.CANDIDATES).cast(pl.List(pl.String())),
        pl.lit(None, dtype=pl.List(pl.Int8())).alias(Col.LABELS),
        pl.lit(Split.TEST).alias(Col.SPLIT),
    ).cast(IMPRESSIONS_SCHEMA)  # type: ignore[arg-type]


Ranking = Callable[[pl.DataFrame], pl.DataFrame]


def _impression_ranking(model_dir: Path, ds: Dataset, cfg: RecommendConfig) -> Ranking:
    """Ranks a chunk of requests with the impression-log model: retrieval when candidates are missing,
    then the same feature builder and ranker as training."""
    dataset_dir = Path(model_summary(model_dir)["dataset_dir"])
    ranker = load_ranker(model_dir)
    text_model = load_text_model(model_dir / "text")
    vectors = ItemVectors.load(model_dir / "item_vectors.parquet")
    retriever = Retriever.fit(ds, vectors, cfg.retrieval)

    def rank(imps: pl.DataFrame) -> pl.DataFrame:
        imps = retriever.fill_candidates(imps)
        with tempfile.TemporaryDirectory() as work:
            write_parquet(imps, Path(work) / "rows.parquet")
            write_parquet(text_features(text_model, vectors, imps), Path(work) / "text.parquet")
            build_features(dataset_dir, Path(work) / "features.parquet", rows=Path(work) / "rows.parquet",
                           text_features=Path(work) / "text.parquet", show_progress=False)
            table = pl.read_parquet(Path(work) / "features.parquet")
        return (
            table.select(Col.IMPRESSION, Col.USER, Col.ITEM)
            .with_columns(score=pl.Series(ranker.score(table)))
            .sort([Col.IMPRESSION, "score", Col.ITEM], descending=[False, True, False])
            .with_columns(rank=pl.int_range(1, pl.len() + 1).over(Col.IMPRESSION).cast(pl.Int32()))
            .filter(pl.col("rank") <= cfg.top_k)
        )

    return rank


def _catalogue_ranking(model_dir: Path, ds: Dataset, cfg: RecommendConfig) -> Ranking:
    """Ranks a chunk of requests over the whole catalogue with an interaction-log model."""
    from recsys.catalogue import CatalogueConfig, load_vectors, main_vectors
    from recsys.evaluation.catalogue import recommend_catalogue

    catalogue_cfg = CatalogueConfig.from_dict(read_json(model_dir / "config.json"))
    retriever = Retriever.fit(ds, main_vectors(load_vectors(model_dir, ds)), catalogue_cfg.retrieval, splits=Split.ALL)
    return lambda imps: recommend_catalogue(model_dir, ds, imps, cfg.top_k, retriever=retriever)


def recommend(model_dir: Path, requests_path: Path, out: Path, cfg: RecommendConfig | None = None, *, show_progress: bool = True) -> dict[str, object]:
    """Rank candidates for every request and write the top-k lists to `out` (Parquet, atomically).

    Returns:
        A summary: requests, rows written, requests that got fewer than k items, seconds.
    """
    cfg = cfg or RecommendConfig()
    model_dir = Path(model_dir)
    summary = model_summary(model_dir)
    ds = load_model_dataset(model_dir)
    rank_chunk = _catalogue_ranking(model_dir, ds, cfg) if summary["kind"] == "interactions" else _impression_ranking(model_dir, ds, cfg)
    model_id = f"{model_dir.name}@{summary.get('trained_at', 'unknown')}"
    generated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    requests = read_requests(requests_path)
    now = ds.impressions[Col.TIME].max() + dt.timedelta(seconds=1)

    rows = short = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, pl.DataFrame(schema=RECS_SCHEMA).to_arrow().schema) as writer:
        chunks = range(0, requests.height, cfg.chunk_size)
        for start in tqdm(chunks, desc="recommend", unit="chunk", disable=not show_progress):
            imps = to_impressions(requests.slice(start, cfg.chunk_size), ds, now)
            top = (
                rank_chunk(imps)
                .rename({Col.IMPRESSION: REQUEST})
                .with_columns(model_id=pl.lit(model_id), generated_at=pl.lit(generated_at))
                .select(list(RECS_SCHEMA))
                .cast(RECS_SCHEMA)  # type: ignore[arg-type]
            )
            writer.write_table(top.to_arrow())
            rows += top.height
            counts = top.group_by(REQUEST).len()
            short += imps.height - counts.filter(pl.col("len") >= cfg.top_k).height
    return {"requests": requests.height, "rows": rows, "short_lists": short, "out": str(out)}
