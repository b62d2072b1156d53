"""One path for every log: text -> candidates -> features -> rank.

The log's kind chooses only where candidates and labels come from (:func:`candidate_source`):

* impression logs: the **logged** candidates of each impression, labelled by its clicks;
* interaction logs: **retrieved** candidates over the whole catalogue, labelled by the held-out next item.

Everything after that is the same code for training, replay, catalogue evaluation and serving:
:func:`features.collect.collect_features`, then the LightGBM ranker. :func:`train` runs the stages below,
each cached in ``stages.json`` by a fingerprint of its inputs (result settings only: resource settings such
as threads or memory never retrain), so a re-run skips what is unchanged, redoes a stage that changed (or
was killed midway) and every one after it, and ``force=True`` redoes all (see :class:`recsys.stages.Stages`):

1. ``encode_frozen``  catalogue vectors of the pretrained encoder          -> frozen_vectors.parquet
2. ``text_model``     fine-tune the encoder on the earliest training rows   -> text/               (fine_tune)
3. ``encode``         catalogue vectors of the fine-tuned encoder           -> item_vectors.parquet (fine_tune)
   ``sequence``       the sequence model over the frozen vectors            -> sequence/  (retrieval source ``sequence``)
   ``select_retrieval`` retrieval settings chosen on dev (interaction logs) -> selection.json (``select.enabled``)
4. ``features``       the ranker's training candidates and their features   -> features.parquet (+ retrieval_plan.json)
   ``select_ranker``  LightGBM settings chosen on the validation groups     -> selection.json (``select.enabled``)
5. ``ranker``         lambdarank, and the same ranker without text            -> ranker/, ranker_no_text/
6. ``reference``      the dev split scored as `recsys monitor` scores a run  -> reference.json (recsys/monitoring/)

and last ``model.json`` (see :mod:`recsys.model`). Statistics a feature reads are fitted only on rows
before the ones it scores (:mod:`recsys.splits`), so no target is ever in what scores it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.collect import FeatureInputs, collect_features
from features.registry import BEHAVIOUR, ENCODERS, PAIRS, RETRIEVAL, TEXT, ranker_features
from features.without_text import WithoutTextRanker, without_text
from ranker.lambdarank import Ranker, fit, load_ranker, save_ranker
from recsys.candidates.logged import logged_candidates
from recsys.candidates.retrieval import Retriever, aligned_vectors
from recsys.candidates.retrieved import Requests, retrieved_candidates, subsample_negatives
from recsys.cluster.connect import ClusterConfig
from recsys.cluster.session import ClusterSession
from recsys.config import IMPRESSIONS, TrainConfig, to_toml
from recsys.data import Col, Dataset, Split
from recsys.errors import RecsysError
from recsys.io import atomic_path, make_dir, read_json, write_json, write_parquet
from recsys.model import FROZEN_VECTORS, ITEM_VECTORS, NO_TEXT_DIR, RANKER_DIR, REFERENCE, SEQUENCE_DIR, TEXT_DIR, fingerprint, write_model_json
from recsys.resources import result_settings
from recsys.selection import record as selection
from recsys.selection.ranker import select_ranker
from recsys.selection.retrieval import select_retrieval
from recsys.splits import last_per_user, sample_users, split_latest, splits_before, validation_split
from recsys.stages import Stages

log = logging.getLogger(__name__)

LOGGED, RETRIEVED = "logged", "retrieved"
RETRIEVAL_PLAN = "retrieval_plan.json"
# What the "without text" ranker learns from (in the ranker stage's fingerprint: a model trained under an earlier
# definition retrains its rankers): 2 = no text features, no candidates only the text sources retrieved.
BASELINE = "without text 2"
FROZEN, FT = ENCODERS


def candidate_source(kind: str) -> str:
    """Where a log's candidates and labels come from: the one place the log kind matters."""
    return LOGGED if kind == IMPRESSIONS else RETRIEVED


@dataclass
class Assets:
    """What scoring reads from a model directory: its config, text model and vectors, and rankers (each loaded once)."""

    model_dir: Path
    config: TrainConfig
    dataset: Dataset
    retrieval_plans: list[dict[str, Any]] = field(default_factory=list)  # what each fitted retriever chose (Retriever.plan)
    collect: Callable[..., pl.DataFrame] = collect_features  # the feature collector: here, or per partition on a cluster

    @cached_property
    def text_model(self) -> Any:
        """The text family's model: the fine-tuned one, or the pretrained encoder with mean pooling."""
        from recsys.text.train import load_text_model, pretrained_text_model

        return load_text_model(self.model_dir / TEXT_DIR) if self.config.fine_tune else pretrained_text_model(self.config.text)

    def vectors(self, name: str) -> Any:
        """An encoder's catalogue vectors (``ft`` only when this model fine-tunes), or None."""
        from recsys.text.encode import ItemVectors

        path = self.model_dir / (ITEM_VECTORS if name == FT else FROZEN_VECTORS)
        wanted = self.config.use_text and (name == FROZEN or self.config.fine_tune)
        return ItemVectors.load(path) if wanted and path.exists() else None

    @cached_property
    def main_vectors(self) -> Any:
        """The vectors of the text model and the text retrieval source: fine-tuned when present, else frozen."""
        return self.vectors(FT if self.config.fine_tune else FROZEN)

    @cached_property
    def pair_vectors(self) -> dict[str, np.ndarray]:
        """Each encoder's L2-normalised vectors in catalogue order (the pairs family's text signals)."""
        item_ids = self.dataset.items[Col.ITEM].to_list()
        out = {}
        for name in ENCODERS:
            v = self.vectors(name)
            if v is not None:
                a = aligned_vectors(v, item_ids)
                out[name] = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        return out

    @cached_property
    def sequence(self) -> Any:
        """The sequence model with its item table for this dataset's catalogue (``SequenceScorer``), or None when unused."""
        from recsys.text.sequence import SequenceScorer, load_sequence_model

        frozen = self.vectors(FROZEN)
        if not self.config.uses_sequence or frozen is None:
            return None
        model, known = load_sequence_model(self.model_dir / SEQUENCE_DIR)
        item_ids = self.dataset.items[Col.ITEM].to_list()
        return SequenceScorer(model, known, item_ids, aligned_vectors(frozen, item_ids), self.config.sequence)

    def retriever(self, *, splits: list[str] | tuple[str, ...] | None = None, rows: pl.DataFrame | None = None) -> Retriever:
        """Retrieval statistics fitted on the given splits' (or rows') sequences only, with the main text vectors and
        the sequence model (trained once, never refitted here)."""
        retriever = Retriever.fit(self.dataset, self.main_vectors, self.config.retrieval, splits=Split.ALL if splits is None else splits, rows=rows,
                                  sequence=self.sequence)
        self.retrieval_plans.append(retriever.plan)
        return retriever

    def inputs(self, retriever: Retriever | None) -> FeatureInputs:
        needs = self.config.features.families
        text = TEXT in needs and self.config.use_text
        return FeatureInputs(self.dataset, self.config.features, self.text_model if text else None, self.main_vectors if text else None,
                             self.pair_vectors if PAIRS in needs else {}, retriever)

    @cached_property
    def rankers(self) -> dict[str, Ranker]:
        baseline = WithoutTextRanker(load_ranker(self.model_dir / NO_TEXT_DIR), self.config.retrieval.per_source,
                                     candidate_source(self.dataset.kind) == RETRIEVED)
        return {"full model": load_ranker(self.model_dir / RANKER_DIR), "without text": baseline}


def needs_retriever(cfg: TrainConfig) -> bool:
    return bool({RETRIEVAL, PAIRS} & set(cfg.features.families))


def training_candidates(assets: Assets, show_progress: bool = False) -> pl.DataFrame:
    """The ranker's training table: candidates of the rows the ranker may learn from, with their features.

    Logged: the later part of the training impressions (the text model learned from the earlier part, and
    retrieval statistics are fitted on it). Retrieved: each dev row's next item among retrieved candidates and the
    user's earlier items (repeats), statistics from train; plus each user's last train item, statistics from the rows
    before it.
    """
    ds, cfg = assets.dataset, assets.config
    train_rows = ds.split(Split.TRAIN)
    if candidate_source(ds.kind) == LOGGED:
        if not (cfg.fine_tune or needs_retriever(cfg)):  # nothing learned from an earlier part: the ranker takes all
            rows = ranker_sample(train_rows, cfg)
            return assets.collect(assets.inputs(None), rows, logged_candidates(rows), show_progress=show_progress)
        earlier, later = split_latest(train_rows, 1.0 - cfg.text_fraction)
        retriever = assets.retriever(rows=earlier) if needs_retriever(cfg) else None
        later = ranker_sample(later, cfg)
        return assets.collect(assets.inputs(retriever), later, logged_candidates(later), show_progress=show_progress)
    dev = ds.split(Split.DEV)
    if dev.height == 0:
        raise RecsysError("the dataset has no dev rows: the ranker learns from dev targets (re-split a timestamped log by time)")
    users = ranker_sample(ds.split(Split.TRAIN, Split.DEV).select(Col.USER), cfg)[Col.USER].unique().implode()
    parts = [(assets.retriever(splits=splits_before(Split.DEV)), dev.filter(pl.col(Col.USER).is_in(users)))]
    if cfg.earlier_targets:
        earlier, last = last_per_user(ds.split(*splits_before(Split.DEV)))
        parts.append((assets.retriever(rows=earlier), last.filter(pl.col(Col.USER).is_in(users))))
    tables = []
    for retriever, rows in parts:
        req = Requests.from_rows(retriever, rows, ds.impressions).with_targets()
        cands, _ = retrieved_candidates(retriever, req, show_progress, repeats=True)  # the ranker learns how likely a repeat is
        cands = subsample_negatives(cands, cfg.train_negatives, cfg.seed)
        tables.append(assets.collect(assets.inputs(retriever), req.rows, cands, show_progress=show_progress))
    return pl.concat(tables, how="diagonal_relaxed")


def ranker_sample(rows: pl.DataFrame, cfg: TrainConfig) -> pl.DataFrame:
    """The rows of the users the ranker learns from: a seeded sample of ``cfg.ranker_users`` when there are more."""
    sampled, n_users = sample_users(rows, cfg.ranker_users, cfg.seed)
    if sampled.height < rows.height:
        log.info("ranker: a seeded sample of %d of %d users (%d of %d rows); raise ranker_users for more", cfg.ranker_users, n_users,
                 sampled.height, rows.height)
    return sampled


def write_training_candidates(assets: Assets, out_dir: Path, show_progress: bool = False) -> None:
    """``features.parquet``, and beside it ``retrieval_plan.json``: what each retriever chose (EASE or ALS, exact or indexed
    text, batch rows) under the memory budget."""
    (out_dir / RETRIEVAL_PLAN).unlink(missing_ok=True)
    write_parquet(training_candidates(assets, show_progress), out_dir / "features.parquet")
    if assets.retrieval_plans:
        write_json(assets.retrieval_plans, out_dir / RETRIEVAL_PLAN)


def fit_rankers(table: pl.DataFrame, cfg: TrainConfig, out_dir: Path, retrieved: bool, fit: Callable[..., Ranker] = fit) -> None:
    """Train the ranker and its "without text" baseline on `table`; early-stop on a held-out share of groups.

    The baseline learns from the table as the job would make it without item text (:mod:`features.without_text`):
    no text features, and on `retrieved` candidates none that only the text sources retrieved. `fit` is
    :func:`ranker.lambdarank.fit` or its cluster twin (:class:`recsys.cluster.session.ClusterSession`)."""
    fit_part, valid_part = validation_split(table, cfg.valid_by, cfg.valid_fraction, cfg.seed)
    extra = {"train_time_range": [str(table[Col.TIME].min()), str(table[Col.TIME].max())]}
    names = ranker_features(table.columns, cfg.features.families)
    save_ranker(fit(fit_part, valid_part, names, cfg.ranker), out_dir / RANKER_DIR, **extra)
    fit_part, valid_part = (_text_free(part, cfg.retrieval.per_source, retrieved) for part in (fit_part, valid_part))
    save_ranker(fit(fit_part, valid_part, ranker_features(table.columns, cfg.features.families, text=False), cfg.ranker), out_dir / NO_TEXT_DIR, **extra)


def _text_free(table: pl.DataFrame, per_source: int, retrieved: bool) -> pl.DataFrame:
    seen, keep = without_text(table, per_source, retrieved)
    return seen.filter(pl.Series(keep))


def _learner_rows(ds: Dataset, cfg: TrainConfig) -> pl.DataFrame:
    """The rows the text and sequence models may learn from, none the ranker learns from: the earliest training
    impressions, or the training rows without each user's last train item when that is a ranker target."""
    train_rows = ds.split(Split.TRAIN)
    if candidate_source(ds.kind) == LOGGED:
        return split_latest(train_rows, 1.0 - cfg.text_fraction)[0]
    return last_per_user(train_rows)[0] if cfg.earlier_targets else train_rows


def fine_tune(ds: Dataset, cfg: TrainConfig, rows: pl.DataFrame, text_dir: Path, show_progress: bool = False) -> None:
    """Fine-tune the encoder on `rows` of `ds` into `text_dir`: an impression log's clicks against the shown non-clicks
    (:mod:`recsys.text.train`), an interaction log's next items, judged by the text source's dev NDCG@10
    (:mod:`recsys.text.next_item`). Either keeps the pretrained weights when no step beats them."""
    from recsys.text.next_item import train_next_item_model
    from recsys.text.train import train_text_model

    if candidate_source(ds.kind) == LOGGED:
        train_text_model(rows, ds.items, cfg.text, text_dir, show_progress=show_progress)
    else:
        train_next_item_model(rows, ds.split(Split.DEV), ds.items, cfg.text, text_dir,
                              recent=cfg.retrieval.recent, decay=cfg.retrieval.decay, show_progress=show_progress)


def train_sequence(ds: Dataset, cfg: TrainConfig, out_dir: Path, show_progress: bool = False) -> None:
    """Train the sequence model on the sequences of :func:`_learner_rows` over the frozen catalogue vectors, early-stopped
    on the dev targets: it never sees a target the ranker learns from (dev, each user's last train item) or is judged
    on (test) as a target, only as history (dev's NDCG@10 chooses its epoch)."""
    from recsys.text.encode import ItemVectors
    from recsys.text.sequence_train import train_sequence_model

    item_ids = ds.items[Col.ITEM].to_list()
    text = aligned_vectors(ItemVectors.load(out_dir / FROZEN_VECTORS), item_ids)
    train_sequence_model(_learner_rows(ds, cfg), ds.split(Split.DEV), item_ids, text, cfg.sequence, out_dir / SEQUENCE_DIR, show_progress=show_progress)


def _learner_settings(ds: Dataset, cfg: TrainConfig) -> list[Any]:
    """The settings :func:`_learner_rows` reads."""
    return [cfg.text_fraction] if candidate_source(ds.kind) == LOGGED else [cfg.earlier_targets]


def _fine_tune_settings(ds: Dataset, cfg: TrainConfig) -> list[Any]:
    """The settings :func:`fine_tune` reads besides ``[text]``."""
    if candidate_source(ds.kind) == LOGGED:
        return _learner_settings(ds, cfg)
    return [*_learner_settings(ds, cfg), cfg.retrieval.recent, cfg.retrieval.decay]


def _source_settings(ds: Dataset, cfg: TrainConfig) -> list[Any]:
    """The settings of how this log's candidates are made (so a setting the other source reads never reruns a stage)."""
    if candidate_source(ds.kind) == LOGGED:
        return [cfg.text_fraction]
    return [cfg.earlier_targets, cfg.train_negatives]


def _encoder_settings(cfg: TrainConfig) -> list[Any]:
    """What the pretrained encoder's catalogue vectors depend on."""
    t = cfg.text
    return [t.encoder, list(t.fields), t.max_tokens, t.pooling, t.precision]


def _drop_unused(out_dir: Path, cfg: TrainConfig, stages: Stages) -> None:
    """Remove text artifacts an earlier run left that this config does not use, so model.json never lists them."""
    unused = ([TEXT_DIR, ITEM_VECTORS] if not cfg.fine_tune else []) + ([FROZEN_VECTORS] if not cfg.use_text else [])
    unused += [SEQUENCE_DIR] if not cfg.uses_sequence else []
    for name in unused:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for stage in (("text_model", "encode") if not cfg.fine_tune else ()) + (("sequence",) if not cfg.uses_sequence else ()):
        stages.done.pop(stage, None)


def train(ds: Dataset, out_dir: Path, cfg: TrainConfig | None = None, *, force: bool = False, show_progress: bool = True,
          cluster: ClusterConfig | None = None) -> dict[str, Any]:
    """Train the whole model on the dataset's train (and, for retrieved candidates, dev) rows.

    Args:
        ds: a dataset loaded from its directory (the behaviour features read its log from disk).
        out_dir: the model directory; created if missing, reused stage by stage if present.
        cfg: the configuration (default: :meth:`TrainConfig.for_dataset`).
        force: redo every stage even if its inputs are unchanged.
        show_progress: progress bars.
        cluster: run the features and ranker stages on this Dask cluster (None: in this process): the same feature table,
            a ranker of the same quality (README: Running on a cluster).

    Returns:
        ``model.json`` as a dict (model_id, kind, config, stage timings, ...).
    """
    from recsys.monitoring.reference import reference_settings, write_reference
    from recsys.text.encode import encode_items
    from recsys.text.ddp import ddp_rank_copy
    from recsys.text.train import load_text_model, pretrained_text_model

    cfg = cfg or TrainConfig.for_dataset(ds.manifest)
    if BEHAVIOUR in cfg.features.families and ds.manifest.get("time_source") == "sequence_order":
        raise RecsysError("features.families has 'behaviour', but this log's times are only sequence positions: point-in-time "
                          "features would compare users' positions as times; use the retrieval and pairs families")
    out_dir = Path(out_dir)
    if cfg.fine_tune and ddp_rank_copy():  # another DDP rank of the fine-tune: only that, then the process ends
        fine_tune(ds, cfg, _learner_rows(ds, cfg), out_dir / TEXT_DIR)
    make_dir(out_dir)
    stages = Stages(out_dir, force)
    _drop_unused(out_dir, cfg, stages)
    data_fp, text_cfg = ds.fingerprint, result_settings(cfg.text)
    cache = out_dir / "cache"
    upstream: list[str] = []
    if cfg.use_text:
        upstream.append(stages.run(
            "encode_frozen", [data_fp, _encoder_settings(cfg)], [out_dir / FROZEN_VECTORS],
            lambda: encode_items(pretrained_text_model(cfg.text), ds.items, cache_dir=cache, show_progress=show_progress).save(out_dir / FROZEN_VECTORS)))
    if cfg.fine_tune:
        text_fp = stages.run(
            "text_model", [data_fp, ds.kind, text_cfg, _fine_tune_settings(ds, cfg)], [out_dir / TEXT_DIR / "text_config.json"],
            lambda: fine_tune(ds, cfg, _learner_rows(ds, cfg), out_dir / TEXT_DIR, show_progress))
        upstream.append(stages.run(
            "encode", [text_fp], [out_dir / ITEM_VECTORS],
            lambda: encode_items(load_text_model(out_dir / TEXT_DIR), ds.items, cache_dir=cache, show_progress=show_progress).save(out_dir / ITEM_VECTORS)))
    if cfg.uses_sequence:
        upstream.append(stages.run(
            "sequence", [data_fp, ds.kind, upstream[0], result_settings(cfg.sequence), _learner_settings(ds, cfg)], [out_dir / SEQUENCE_DIR / "config.json"],
            lambda: train_sequence(ds, cfg, out_dir, show_progress)))
    assets = Assets(out_dir, cfg, ds)
    searches = {selection.RETRIEVAL: cfg.select.enabled and candidate_source(ds.kind) == RETRIEVED, selection.RANKER: cfg.select.enabled}
    selection.forget_stale(out_dir, cfg, stages.done, searches)
    if searches[selection.RETRIEVAL]:  # the configured retrieval settings seed a search on dev; the chosen ones build the features
        stages.run(
            selection.STAGES[selection.RETRIEVAL], [data_fp, ds.kind, upstream, result_settings(cfg.retrieval), result_settings(cfg.select), cfg.seed],
            [out_dir / selection.SELECTION],
            lambda: selection.write_part(out_dir, selection.RETRIEVAL, select_retrieval(ds, assets.main_vectors, cfg, assets.sequence)))
        cfg = selection.apply(cfg, out_dir, selection.RETRIEVAL)
    feature_settings = [result_settings(cfg.features), result_settings(cfg.retrieval), cfg.use_text, cfg.fine_tune,
                        text_cfg if cfg.use_text else None, _source_settings(ds, cfg), cfg.ranker_users, cfg.seed]
    with ClusterSession(cluster) as on:  # where the cluster is, the same collector and ranker fit run on it
        assets = Assets(out_dir, cfg, ds, collect=on.collect)
        feat_fp = stages.run(
            "features", [data_fp, ds.kind, upstream, feature_settings], [out_dir / "features.parquet"],
            lambda: write_training_candidates(assets, out_dir, show_progress))
        if searches[selection.RANKER]:  # likewise the LightGBM settings, on the ranker's own validation groups
            stages.run(
                selection.STAGES[selection.RANKER], [feat_fp, result_settings(cfg.ranker), result_settings(cfg.select), cfg.valid_fraction, cfg.valid_by, cfg.seed],
                [out_dir / selection.SELECTION],
                lambda: selection.write_part(out_dir, selection.RANKER, select_ranker(pl.read_parquet(out_dir / "features.parquet"), cfg)))
            cfg = selection.apply(cfg, out_dir, selection.RANKER)
        retrieved = candidate_source(ds.kind) == RETRIEVED
        rank_fp = stages.run("ranker", [feat_fp, result_settings(cfg.ranker), cfg.valid_fraction, cfg.valid_by, cfg.seed, BASELINE],
                             [out_dir / RANKER_DIR / "ranker.txt", out_dir / NO_TEXT_DIR / "ranker.txt"],
                             lambda: fit_rankers(pl.read_parquet(out_dir / "features.parquet"), cfg, out_dir, retrieved, on.fit_ranker))
        stages.run("reference", [rank_fp, reference_settings(), cfg.seed], [out_dir / REFERENCE], lambda: write_reference(assets, out_dir, cfg.seed))
    cfg = selection.settled(cfg)  # what is saved: the chosen settings, selection done
    with atomic_path(out_dir / "config.toml") as tmp:
        tmp.write_text(to_toml(cfg))
    ranker = read_json(out_dir / RANKER_DIR / "ranker.json")  # from the file: the same whether the stage ran or not
    summary = {"stage_seconds": stages.timings, "train_rows": ds.split(Split.TRAIN).height, "items": ds.items.height,
               "ranker_rows": ranker["train"]["rows"], "best_iteration": ranker["best_iteration"], "features": len(ranker["features"])}
    if (out_dir / RETRIEVAL_PLAN).exists():
        summary["retrieval"] = read_json(out_dir / RETRIEVAL_PLAN)
    if chosen := selection.summary(out_dir):
        summary["selection"] = chosen
    return write_model_json(out_dir, kind=ds.kind, candidates=candidate_source(ds.kind), config=cfg.to_dict(),
                            config_fingerprint=fingerprint(result_settings(cfg)), dataset=ds, stages=stages.done, summary=summary)
