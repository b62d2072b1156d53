"""Interaction-only logs end to end: retrieval + LightGBM lambdarank over the whole catalogue, and its evaluation.

The standard recipe (leave-one-out: the last item tests, the second-last validates, the rest trains):

1. text: encode the catalogue with the pretrained encoder (frozen) and, optionally, fine-tune it on the train
   rows with sampled negatives (:mod:`recsys.candidates.sampling`) and encode again;
2. fit retrieval statistics (:class:`~recsys.candidates.retrieval.Retriever`) on the **train** rows only, retrieve candidates
   for the **dev** rows' histories, label the dev target, add features (:mod:`features.pairs`);
3. train the ranker on those dev groups (a seeded share of users early-stops it), plus the same ranker without
   text features (a baseline);
4. evaluation refits the statistics on **train + dev** and ranks the test targets among all items, the user's
   earlier items excluded. A target is therefore never in the statistics that score it.

Logs with real timestamps can be re-split by time first (:func:`time_split`); the recipe is the same.

Model directory::

    config.json              the CatalogueConfig
    frozen_vectors.parquet   catalogue vectors of the pretrained encoder
    text/, item_vectors.parquet   the fine-tuned encoder and its vectors (when fine_tune)
    ranker/, ranker_no_text/      LightGBM text models + manifests (ranker.txt, ranker.json)
    summary.json             dataset, timings, peak memory, dev retrieval recall

Retrieval statistics are not stored: they are refitted from the dataset (deterministic, seconds), so they always
match the rows that are allowed at that point.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ranker.lambdarank import RankerConfig, fit, save_ranker
from features.pairs import feature_names, item_codes, pair_features
from recsys.data import Col, Dataset, Split
from recsys.text.encode import ItemVectors, encode_items
from recsys.errors import RecsysError
from recsys.io import write_json
from recsys.candidates.retrieval import ITEM_INDEX, ROW, RetrievalConfig, Retrieved, Retriever, aligned_vectors
from recsys.candidates.sampling import SamplingConfig, sample_negatives
from recsys.text.model import TextConfig

log = logging.getLogger(__name__)

FT, FROZEN = "ft", "frozen"
RANKER_DIR, NO_TEXT_DIR = "ranker", "ranker_no_text"
TOP = 10  # beyond-accuracy metrics look at the top 10


def _default_ranker() -> RankerConfig:
    return RankerConfig(num_leaves=31, learning_rate=0.05, min_data_in_leaf=50, n_estimators=1000, early_stopping_rounds=50,
                        lambdarank_truncation_level=30, eval_at=(10,))


def _default_text() -> TextConfig:
    # CPU-friendly fine-tuning: a few thousand sampled impressions, short texts, one epoch.
    return TextConfig(max_tokens=64, history_len=20, negatives=4, batch_size=32, epochs=1, max_train_impressions=3000)


@dataclass
class CatalogueConfig:
    """Settings of :func:`train_catalogue`; each stage takes its own part."""

    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=_default_ranker)
    text: TextConfig = field(default_factory=_default_text)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(negatives=4, max_rows=6000))
    use_text: bool = True  # encode items with the pretrained encoder (frozen text features and source)
    fine_tune: bool = False  # also fine-tune the encoder on sampled negatives (slow on CPU: minutes per 1k impressions)
    early_stop_fraction: float = 0.15  # share of dev users that early-stop the ranker
    earlier_targets: bool = True  # also learn from each user's last train item (statistics without it)
    train_negatives: int = 100  # negatives kept per training group (the best-ranked by any source first)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.early_stop_fraction < 0.5:
            raise RecsysError(f"CatalogueConfig.early_stop_fraction must be in (0, 0.5), got {self.early_stop_fraction}")
        if self.train_negatives < 1:
            raise RecsysError(f"CatalogueConfig.train_negatives must be >= 1, got {self.train_negatives}")
        if self.fine_tune and not self.use_text:
            raise RecsysError("CatalogueConfig.fine_tune needs use_text")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text"] = self.text.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CatalogueConfig:
        retrieval = dict(d["retrieval"], sources=tuple(d["retrieval"]["sources"]))
        return cls(retrieval=RetrievalConfig(**retrieval), ranker=RankerConfig.from_dict(d["ranker"]), text=TextConfig.from_dict(d["text"]),
                   sampling=SamplingConfig(**d["sampling"]), **{k: d[k] for k in ("use_text", "fine_tune", "early_stop_fraction", "earlier_targets", "train_negatives", "seed")})


def time_split(ds: Dataset, dev_fraction: float = 0.1, test_fraction: float = 0.1) -> Dataset:
    """Re-split a log with real timestamps by time: the latest `test_fraction` of rows test, the ones before dev.

    Raises:
        RecsysError: the log's times are only sequence positions (leave-one-out splits are the protocol then).
    """
    if ds.manifest.get("time_source") == "sequence_order":
        raise RecsysError("this log has no real timestamps (time_source=sequence_order); use its leave-one-out splits")
    if not (0 < dev_fraction < 1 and 0 < test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise RecsysError(f"dev_fraction and test_fraction must be in (0, 1) with sum < 1, got {dev_fraction}, {test_fraction}")
    times = ds.impressions[Col.TIME]
    t_dev, t_test = times.quantile(1 - dev_fraction - test_fraction, "lower"), times.quantile(1 - test_fraction, "lower")
    imps = ds.impressions.with_columns(
        pl.when(pl.col(Col.TIME) > t_test).then(pl.lit(Split.TEST)).when(pl.col(Col.TIME) > t_dev).then(pl.lit(Split.DEV))
        .otherwise(pl.lit(Split.TRAIN)).alias(Col.SPLIT)
    )
    return Dataset(ds.items, imps, {**ds.manifest, "split_protocol": f"time: dev after {t_dev}, test after {t_test}"})


def splits_before(split: str) -> list[str]:
    """The splits whose rows may feed statistics that score `split` (train for dev, train + dev for test)."""
    return list(Split.ALL[: Split.ALL.index(split)])


@dataclass
class Requests:
    """Rows to rank over the catalogue: item-index histories and (for labelled rows) the held-out target."""

    rows: pl.DataFrame
    histories: list[np.ndarray]
    targets: np.ndarray  # -1 where unknown

    @classmethod
    def from_rows(cls, retriever: Retriever, rows: pl.DataFrame) -> Requests:
        rows = rows.sort([Col.USER, Col.TIME, Col.IMPRESSION])
        first_pos = rows.select(pl.col(Col.CANDIDATES).list.get(pl.col(Col.LABELS).list.arg_max().fill_null(0), null_on_oob=True).alias("t"))
        targets = np.array([retriever.index.get(t, -1) if t is not None else -1 for t in first_pos["t"]], dtype=np.int64)
        return cls(rows, retriever.encode_histories(rows[Col.HISTORY]), targets)


def candidate_table(retriever: Retriever, req: Requests, vectors: dict[str, np.ndarray], codes: tuple[np.ndarray, np.ndarray],
                    show_progress: bool = False) -> tuple[pl.DataFrame, Retrieved]:
    """Retrieved candidates with features and labels (1 = the row's target), and the retrieval (with each source's
    target ranks when every row has a known target)."""
    known = req.targets >= 0
    got = retriever.retrieve(req.histories, np.where(known, req.targets, 0) if known.all() else None, show_progress)
    table = pair_features(retriever, req.histories, got.candidates, vectors, codes)
    rows = table[ROW].to_numpy()
    table = table.with_columns(
        pl.Series(Col.LABEL, (table[ITEM_INDEX].to_numpy() == req.targets[rows]).astype(np.int8)),
        pl.Series(Col.IMPRESSION, req.rows[Col.IMPRESSION].to_numpy()[rows]),
        pl.Series(Col.USER, req.rows[Col.USER].to_numpy()[rows]),
        pl.Series(Col.TIME, req.rows[Col.TIME].to_numpy()[rows]),
    )
    return table, got


def _load_vectors(path: Path, ds: Dataset) -> np.ndarray:
    v = aligned_vectors(ItemVectors.load(path), ds.items[Col.ITEM].to_list())
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _encode(model_dir: Path, ds: Dataset, cfg: CatalogueConfig, timings: dict[str, float]) -> dict[str, np.ndarray]:
    """Frozen (and fine-tuned) catalogue vectors, written into the model directory."""
    from recsys.text.train import load_text_model, pretrained_text_model, train_text_model

    if not cfg.use_text:
        return {}
    text_cfg = TextConfig.from_dict({**cfg.text.to_dict(), "fields": list(ds.manifest.get("text_fields", cfg.text.fields))})
    start = time.perf_counter()
    encode_items(pretrained_text_model(text_cfg), ds.items, cache_dir=model_dir / "cache", show_progress=False).save(model_dir / "frozen_vectors.parquet")
    timings["encode_frozen"] = time.perf_counter() - start
    out = {FROZEN: _load_vectors(model_dir / "frozen_vectors.parquet", ds)}
    if cfg.fine_tune:
        start = time.perf_counter()
        sampled = sample_negatives(ds.split(Split.TRAIN), ds.items[Col.ITEM].to_list(), cfg.sampling).drop(Col.SAMPLED)
        train_text_model(sampled, ds.items, text_cfg, model_dir / "text", show_progress=False)
        timings["fine_tune"] = time.perf_counter() - start
        start = time.perf_counter()
        encode_items(load_text_model(model_dir / "text"), ds.items, show_progress=False).save(model_dir / "item_vectors.parquet")
        timings["encode_fine_tuned"] = time.perf_counter() - start
        out[FT] = _load_vectors(model_dir / "item_vectors.parquet", ds)
    return out


def load_vectors(model_dir: Path, ds: Dataset) -> dict[str, np.ndarray]:
    """The model's text vectors by encoder name, aligned with ``ds.items``."""
    files = {FROZEN: "frozen_vectors.parquet", FT: "item_vectors.parquet"}
    return {name: _load_vectors(model_dir / f, ds) for name, f in files.items() if (model_dir / f).exists()}


def main_vectors(vectors: dict[str, np.ndarray]) -> np.ndarray | None:
    """The vectors of the text retrieval source: fine-tuned when present, else frozen, else none."""
    return vectors.get(FT, vectors.get(FROZEN))


def _subsample(table: pl.DataFrame, negatives: int, seed: int) -> pl.DataFrame:
    """Groups that contain their target, with the target and a uniform sample of at most `negatives` negatives.

    Groups whose target retrieval missed teach lambdarank nothing. The sample must be uniform: keeping only the
    best-ranked negatives (and every positive) would teach the ranker that a poorly ranked candidate is a positive.
    """
    has_target = pl.col(Col.LABEL).max().over(ROW) > 0
    noise = pl.Series("_u", np.random.default_rng(seed).random(table.height))
    order = pl.col("_u").rank("ordinal").over(ROW, Col.LABEL)
    return table.with_columns(noise).filter(has_target & ((pl.col(Col.LABEL) > 0) | (order <= negatives))).drop("_u")


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_catalogue(ds: Dataset, cfg: CatalogueConfig, out_dir: Path, *, show_progress: bool = False) -> Path:
    """Train text vectors and the lambdarank ranker over retrieved candidates; see the module docstring.

    Args:
        ds: a dataset with train and dev rows (kind "interactions", or any log with clicked candidates).
        cfg: the configuration.
        out_dir: the model directory (created).
        show_progress: progress bars.

    Returns:
        `out_dir`.

    Raises:
        RecsysError: no dev rows to train the ranker on, or none whose target retrieval finds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.to_dict(), out_dir / "config.json")
    timings: dict[str, float] = {}
    vectors = _encode(out_dir, ds, cfg, timings)
    dev = ds.split(Split.DEV)
    if dev.height == 0:
        raise RecsysError("the dataset has no dev rows: the ranker learns from dev targets (use time_split for timestamped logs)")
    start = time.perf_counter()
    codes = item_codes(ds.items)
    retriever = Retriever.fit(ds, main_vectors(vectors), cfg.retrieval, splits=splits_before(Split.DEV))
    table, got = candidate_table(retriever, Requests.from_rows(retriever, dev), vectors, codes, show_progress)
    recall = got.recall() if got.target_ranks else None
    tables = [table]
    if cfg.earlier_targets:
        # Each user's latest train row becomes one more held-out target, scored by statistics without it.
        train = ds.split(*splits_before(Split.DEV)).sort([Col.USER, Col.TIME, Col.IMPRESSION])
        is_last = pl.col(Col.IMPRESSION) == pl.col(Col.IMPRESSION).last().over(Col.USER)
        earlier = Retriever.fit(ds, main_vectors(vectors), cfg.retrieval, rows=train.filter(~is_last))
        tables.append(candidate_table(earlier, Requests.from_rows(earlier, train.filter(is_last)), vectors, codes, show_progress)[0])
    table = pl.concat([_subsample(t, cfg.train_negatives, cfg.seed) for t in tables], how="vertical_relaxed")
    timings["retrieve_features_dev"] = time.perf_counter() - start
    users = np.array(sorted(set(table[Col.USER].to_list())))
    rng = np.random.default_rng(cfg.seed)
    stop_users = users[rng.random(len(users)) < cfg.early_stop_fraction]
    stop = pl.col(Col.USER).is_in(pl.Series(stop_users, dtype=pl.String()).implode())
    fit_part, stop_part = table.filter(~stop), table.filter(stop)
    start = time.perf_counter()
    encoders = list(vectors)
    full = fit(fit_part, stop_part, feature_names(retriever, encoders, text=True), cfg.ranker)
    save_ranker(full, out_dir / RANKER_DIR, encoders=encoders)
    timings["ranker"] = time.perf_counter() - start
    start = time.perf_counter()
    save_ranker(fit(fit_part, stop_part, feature_names(retriever, encoders, text=False), cfg.ranker), out_dir / NO_TEXT_DIR, encoders=[])
    timings["ranker_no_text"] = time.perf_counter() - start
    summary = {"dataset": ds.manifest.get("source"), "kind": ds.kind, "items": ds.items.height, "dev_rows": dev.height,
               "candidate_rows": table.height, "candidates_per_row": table.height / max(dev.height, 1),
               "dev_retrieval_recall": recall, "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
               "peak_memory_mb": round(peak_memory_mb(), 1), "ranker_best_iteration": full.manifest["best_iteration"]}
    write_json(summary, out_dir / "summary.json")
    log.info("catalogue model trained in %s: %s", out_dir, summary["stage_seconds"])
    return out_dir
