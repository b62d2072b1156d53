"""`recsys recommend`: the batch job. Requests in, top-k ranked lists out, in bounded memory.

A request is a user, optionally with an inline history, explicit candidates and a time. Missing
histories come from the model's dataset (the user's latest known one). Candidates follow the model's
path: a request's own candidates are ranked as logged ones; a request without candidates gets retrieved
ones (union of the retrieval sources over the catalogue, the user's own items excluded) when the model's
ranker learned on retrieved candidates (interaction logs). A model trained on logged impressions refuses
such requests: its ranker never saw retrieved candidates, so its scores for them would mean nothing.

Requests are processed in chunks through the same candidates -> features -> rank path as training.
Output rows (Parquet): request_id, user_id, rank (1-based), item_id, score, model_id, generated_at.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.collect import collect_features
from ranker.topk import RANK, top_k
from recsys.candidates.logged import logged_candidates
from recsys.candidates.retrieval import Retriever
from recsys.candidates.retrieved import Requests, retrieved_candidates
from recsys.data import IMPRESSIONS_SCHEMA, Col, Dataset, Split
from recsys.errors import DataError, RecsysError
from recsys.io import atomic_path
from recsys.loaders.tables import parse_times, read_parquet
from recsys.pipeline import RETRIEVED, Assets, needs_retriever
from recsys.resources import resource

log = logging.getLogger(__name__)

REQUEST = "request_id"
SMALL_CHUNK = 1000  # below this a chunk's fixed cost (the feature builder's set-up) dominates
RECS_SCHEMA = {
    REQUEST: pl.String(), Col.USER: pl.String(), RANK: pl.Int32(), Col.ITEM: pl.String(),
    "score": pl.Float64(), "model_id": pl.String(), "generated_at": pl.Datetime("us"),
}


_MAX_COUNT = 2**31 - 1  # Polars slices and LightGBM arrays overflow beyond it


@dataclass
class RecommendConfig:
    top_k: int = 10
    chunk_size: int = resource(20_000)

    def __post_init__(self) -> None:
        for flag, value in (("--top-k", self.top_k), ("--chunk-size", self.chunk_size)):
            if not 1 <= value <= _MAX_COUNT:
                raise RecsysError(f"{flag} must be between 1 and {_MAX_COUNT}, got {value}")


def read_requests(path: Path) -> pl.DataFrame:
    """Read requests from Parquet, JSONL or CSV (lists in CSV as space-separated ids).

    Raises:
        DataError: the file is missing or unreadable, or a request is bad (see :func:`check_requests`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "requests file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(path)
        elif suffix == ".csv":
            df = pl.read_csv(path, infer_schema=False)
            for col in (Col.HISTORY, Col.CANDIDATES):
                if col in df.columns:
                    df = df.with_columns(pl.col(col).str.split(" ").list.eval(pl.element().filter(pl.element() != "")))
        else:
            raise DataError(path, None, None, f"unknown requests format {suffix!r}; use .parquet, .jsonl or .csv")
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(path, None, None, f"cannot be read as {suffix[1:]}: {first[:200]}") from None
    return check_requests(df, path, first_row=2 if suffix == ".csv" else 1)


_REQUEST_TYPES = {REQUEST: pl.String(), Col.USER: pl.String(), Col.HISTORY: pl.List(pl.String()), Col.CANDIDATES: pl.List(pl.String())}


def check_requests(df: pl.DataFrame, what: object = "requests", first_row: int = 1) -> pl.DataFrame:
    """Requests with string ids, lists of string ids and naive UTC datetimes.

    Times are parsed as the loaders parse them (:func:`recsys.loaders.tables.parse_times`): datetimes,
    numbers as Unix epoch seconds, ISO-8601 text.

    Args:
        df: the requests.
        what: the file (or name) that errors name.
        first_row: the row number errors give ``df``'s first row (2 in a CSV file, whose line 1 is the header).

    Raises:
        DataError: naming the first bad row and field.
    """
    if Col.USER not in df.columns:
        raise DataError(what, None, Col.USER, "column is missing; every request needs a user")
    if REQUEST not in df.columns:
        df = df.with_row_index(REQUEST)
    for col, dtype in _REQUEST_TYPES.items():
        if col in df.columns:
            try:
                df = df.with_columns(pl.col(col).cast(dtype))
            except pl.exceptions.PolarsError:
                raise DataError(what, None, col, f"has type {df.schema[col]}; expected {'text' if dtype == pl.String() else 'a list of ids'}") from None
    if Col.TIME in df.columns:
        if df.schema[Col.TIME].is_nested():
            raise DataError(what, None, Col.TIME, f"has type {df.schema[Col.TIME]}; expected date-times")
        times = parse_times(df[Col.TIME])
        bad = times.is_null() & df[Col.TIME].is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataError(what, first_row + row, Col.TIME, f"{df[Col.TIME][row]!r} is not a date-time (ISO-8601, or Unix seconds)")
        df = df.with_columns(times.alias(Col.TIME))
    for col in (REQUEST, Col.USER):
        nulls = df[col].is_null()
        if nulls.any():
            raise DataError(what, first_row + int(nulls.arg_true()[0]), col, "is empty")
    dup = df[REQUEST].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        raise DataError(what, first_row + row, REQUEST, f"duplicate request id {df[REQUEST][row]!r}")
    return df


def latest_histories(ds: Dataset) -> pl.DataFrame:
    """Each user's history as of the end of the log: the latest logged history plus that impression's clicks."""
    last = ds.impressions.sort(Col.TIME).group_by(Col.USER).last()
    clicked = pl.col(Col.CANDIDATES).list.gather(pl.col(Col.LABELS).fill_null([]).list.eval((pl.element() == 1).arg_true()))
    return last.select(Col.USER, pl.concat_list(Col.HISTORY, clicked).alias(Col.HISTORY))


def to_impressions(requests: pl.DataFrame, ds: Dataset, now: dt.datetime, histories: pl.DataFrame | None) -> pl.DataFrame:
    """Requests in the contract's impressions format (unlabelled, split 'test'); missing histories come from
    `histories` (:func:`latest_histories`, computed once per job), candidates outside the catalogue and repeats
    are dropped (a null candidate list stays null: retrieve)."""
    df = requests
    if Col.HISTORY not in df.columns:
        df = df.join(histories, on=Col.USER, how="left")
    if Col.TIME not in df.columns:
        df = df.with_columns(pl.lit(now).alias(Col.TIME))
    if Col.CANDIDATES not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.List(pl.String())).alias(Col.CANDIDATES))
    catalogue = ds.items[Col.ITEM].implode()
    return df.select(
        pl.col(REQUEST).alias(Col.IMPRESSION),
        Col.USER,
        pl.col(Col.TIME).fill_null(now).cast(pl.Datetime("us")),
        pl.col(Col.HISTORY).cast(pl.List(pl.String())).fill_null([]),
        pl.col(Col.CANDIDATES).cast(pl.List(pl.String())).list.eval(pl.element().filter(pl.element().is_in(catalogue)).unique(maintain_order=True)),
        pl.lit(None, dtype=pl.List(pl.Int8())).alias(Col.LABELS),
        pl.lit(Split.TEST).alias(Col.SPLIT),
    ).cast(IMPRESSIONS_SCHEMA)  # type: ignore[arg-type]


def rank_requests(assets: Assets, rows: pl.DataFrame, k: int, retriever: Retriever | None, can_retrieve: bool) -> pl.DataFrame:
    """Top-k lists of impression-format request rows: candidates -> features -> the model's ranker."""
    given = rows.filter(pl.col(Col.CANDIDATES).is_not_null())
    missing = rows.filter(pl.col(Col.CANDIDATES).is_null())
    parts = [logged_candidates(given)] if given.height else []
    if missing.height:
        if retriever is None or not can_retrieve:
            raise RecsysError("requests without candidates need a model whose ranker learned on retrieved candidates")
        parts.append(retrieved_candidates(retriever, Requests.from_rows(retriever, missing, assets.dataset.impressions))[0])
    candidates = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    if candidates.is_empty():  # no request brought a candidate in the catalogue: short (empty) lists, not an error
        return pl.DataFrame(schema={Col.IMPRESSION: pl.String(), Col.USER: pl.String(), RANK: pl.Int32(), Col.ITEM: pl.String(), "score": pl.Float64()})
    table = collect_features(assets.inputs(retriever), rows, candidates)
    top = top_k(table.select(Col.IMPRESSION, Col.USER, Col.ITEM), assets.rankers["full model"].score(table), k, Col.IMPRESSION, Col.ITEM)
    return top.select(Col.IMPRESSION, Col.USER, RANK, Col.ITEM, "score")


@dataclass
class RecommendJob:
    """What every chunk of a job shares, fixed once: the retriever, the histories, the clock and the stamp."""

    model_id: str
    top_k: int
    can_retrieve: bool
    retriever: Retriever | None
    now: dt.datetime
    histories: pl.DataFrame | None
    generated_at: dt.datetime


def recommend_job(assets: Assets, model_id: str, candidates: str, requests: pl.DataFrame, cfg: RecommendConfig,
                  source: object = "requests") -> RecommendJob:
    """Check the requests against the model and fit what the chunks share (errors name `source`)."""
    ds = assets.dataset
    can_retrieve = candidates == RETRIEVED
    n_chunks = -(-requests.height // cfg.chunk_size)
    if cfg.chunk_size < SMALL_CHUNK and n_chunks > 1:
        log.warning("--chunk-size %d splits %d requests into %d chunks; each chunk pays the feature builder's fixed cost, "
                    "so this is slow: %d or more keeps memory bounded at a fraction of the time", cfg.chunk_size, requests.height, n_chunks, SMALL_CHUNK)
    if not can_retrieve:
        lacking = requests.with_row_index("_r").filter(pl.col(Col.CANDIDATES).is_null()) if Col.CANDIDATES in requests.columns else requests.with_row_index("_r")
        if lacking.height:
            raise DataError(source, int(lacking["_r"][0]) + 1, Col.CANDIDATES,
                            "no candidates: this model's ranker learned on logged impressions only, so it ranks the candidates "
                            "a request brings (give every request a candidates list)")
    retriever = assets.retriever(splits=Split.ALL) if can_retrieve or needs_retriever(assets.config) else None
    now = ds.impressions[Col.TIME].max() + dt.timedelta(seconds=1)
    histories = latest_histories(ds) if Col.HISTORY not in requests.columns else None  # once, not per chunk
    generated_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return RecommendJob(model_id, cfg.top_k, can_retrieve, retriever, now, histories, generated_at)


def recommend_chunk(assets: Assets, job: RecommendJob, requests: pl.DataFrame) -> pl.DataFrame:
    """The ranked lists (:data:`RECS_SCHEMA`) of one chunk of checked requests."""
    rows = to_impressions(requests, assets.dataset, job.now, job.histories)
    return (
        rank_requests(assets, rows, job.top_k, job.retriever, job.can_retrieve)
        .rename({Col.IMPRESSION: REQUEST})
        .with_columns(model_id=pl.lit(job.model_id), generated_at=pl.lit(job.generated_at))
        .select(list(RECS_SCHEMA))
        .cast(RECS_SCHEMA)  # type: ignore[arg-type]
    )


def recommend_chunks(assets: Assets, model_id: str, candidates: str, requests: pl.DataFrame, cfg: RecommendConfig,
                     *, show_progress: bool = False, source: object = "requests") -> Iterator[pl.DataFrame]:
    """Ranked lists (:data:`RECS_SCHEMA`) chunk by chunk: memory stays bounded by the chunk size; errors name `source`."""
    job = recommend_job(assets, model_id, candidates, requests, cfg, source)
    for start in tqdm(range(0, requests.height, cfg.chunk_size), desc="recommend", unit="chunk", disable=not show_progress):
        yield recommend_chunk(assets, job, requests.slice(start, cfg.chunk_size))


def write_recommendations(chunks: Iterator[pl.DataFrame], n_requests: int, top: int, out: Path) -> dict[str, object]:
    """Write the chunks to `out` (Parquet, atomically: a reader never sees half a file); return a summary."""
    rows = full = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, pl.DataFrame(schema=RECS_SCHEMA).to_arrow().schema) as writer:
        for chunk in chunks:
            writer.write_table(chunk.to_arrow())
            rows += chunk.height
            full += chunk.group_by(REQUEST).len().filter(pl.col("len") >= top).height
    return {"requests": n_requests, "rows": rows, "short_lists": n_requests - full, "out": str(out)}
