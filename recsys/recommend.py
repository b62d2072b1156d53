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
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.build import build_features
from ranker.lambdarank import load_ranker
from recsys.data import IMPRESSIONS_SCHEMA, Col, Dataset, Split
from recsys.encode import ItemVectors
from recsys.errors import DataError
from recsys.io import atomic_path, read_json, write_parquet
from recsys.pipeline import load_model_dataset
from recsys.retrieval import RetrievalConfig, Retriever
from recsys.text_features import text_features
from recsys.text_train import load_text_model

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
    retrieval: RetrievalConfig = RetrievalConfig()

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
    clicked = pl.col(Col.CANDIDATES).list.gather(pl.col(Col.LABELS).fill_null([]).list.eval(pl.element().arg_true()))
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


def recommend(model_dir: Path, requests_path: Path, out: Path, cfg: RecommendConfig | None = None, *, show_progress: bool = True) -> dict[str, object]:
    """Rank candidates for every request and write the top-k lists to `out` (Parquet, atomically).

    Returns:
        A summary: requests, rows written, requests that got fewer than k items, seconds.
    """
    cfg = cfg or RecommendConfig()
    model_dir = Path(model_dir)
    ds = load_model_dataset(model_dir)
    dataset_dir = Path(read_json(model_dir / "summary.json")["dataset"])
    ranker = load_ranker(model_dir)
    text_model = load_text_model(model_dir / "text")
    vectors = ItemVectors.load(model_dir / "item_vectors.parquet")
    retriever = Retriever.fit(ds, vectors, cfg.retrieval)
    model_id = ranker.manifest.get("model_id", model_dir.name)
    generated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    requests = read_requests(requests_path)
    now = ds.impressions[Col.TIME].max() + dt.timedelta(seconds=1)

    rows = short = 0
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work, pq.ParquetWriter(tmp, pl.DataFrame(schema=RECS_SCHEMA).to_arrow().schema) as writer:
        chunks = range(0, requests.height, cfg.chunk_size)
        for start in tqdm(chunks, desc="recommend", unit="chunk", disable=not show_progress):
            imps = to_impressions(requests.slice(start, cfg.chunk_size), ds, now)
            imps = retriever.fill_candidates(imps)
            write_parquet(imps, Path(work) / "rows.parquet")
            write_parquet(text_features(text_model, vectors, imps), Path(work) / "text.parquet")
            build_features(dataset_dir, Path(work) / "features.parquet", rows=Path(work) / "rows.parquet",
                           text_features=Path(work) / "text.parquet", show_progress=False)
            table = pl.read_parquet(Path(work) / "features.parquet")
            top = (
                table.select(pl.col(Col.IMPRESSION).alias(REQUEST), Col.USER, Col.ITEM)
                .with_columns(score=pl.Series(ranker.score(table)))
                .sort([REQUEST, "score", Col.ITEM], descending=[False, True, False])
                .with_columns(rank=pl.int_range(1, pl.len() + 1).over(REQUEST).cast(pl.Int32()))
                .filter(pl.col("rank") <= cfg.top_k)
                .with_columns(model_id=pl.lit(model_id), generated_at=pl.lit(generated_at))
                .select(list(RECS_SCHEMA))
                .cast(RECS_SCHEMA)  # type: ignore[arg-type]
            )
            writer.write_table(top.to_arrow())
            rows += top.height
            counts = top.group_by(REQUEST).len()
            short += imps.height - counts.filter(pl.col("len") >= cfg.top_k).height
    return {"requests": requests.height, "rows": rows, "short_lists": short, "out": str(out)}
