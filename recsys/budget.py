"""What `recsys train` will spend, said before it starts: each expensive stage's budget and estimated time.

Every expensive stage is bounded by a setting, so a larger log costs a predictable amount more, never an
open-ended amount:

* ``encode``     every catalogue item once per encoder (no cap: each item needs a vector);
* ``fine-tune``  ``text.max_train_impressions`` impressions (interaction logs: next-item pairs) x ``text.epochs`` (or ``text.max_steps``);
* ``sequence``   the training sequences' next-item targets x epochs (at most ``sequence.epochs``, early stopping ends sooner);
* ``features``   the ranker's training groups (rows of ``ranker_users`` users) x candidates per group;
* ``ranker``     those rows x boosting rounds: at most ``ranker.n_estimators``, early stopping ends sooner;
* ``select``     settings chosen on dev (``select.enabled``): at most ``select.retrieval_seconds`` +
                 ``select.ranker_seconds``, less where the search is estimated to finish sooner.

The defaults come from learning curves (``benchmarks/budgets.py``): past them more data bought nothing
measurable. Estimated times are the work divided by rates measured on a 2-core AVX-512 BF16 CPU, from the
synthetic sizes of ``recsys bench`` up to the 10M-event shop log of ``recsys bench --scale``
(``benchmarks/results/budgets-calibrate-2026-12-02.md`` sets each estimate beside the time it took): a guide
to the order of magnitude (within 3x on the runs there), not a promise; a GPU encodes and fine-tunes far faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from recsys.config import TrainConfig
from recsys.data import Col, Dataset, Split
from recsys.pipeline import LOGGED, candidate_source
from recsys.text.train import refresh_interval

# Reference rates on the 2-core CPU (bf16), from the runs in benchmarks/results/budgets-calibrate-2026-12-02.md.
ENCODE_ITEMS_PER_S = 400.0  # encode_items at 48 tokens (model loading included); time grows about linearly with tokens
FINE_TUNE_SAMPLES_PER_S = 15.0  # one click + its negatives and history, 48 tokens, batch 32
NEXT_ITEM_PAIRS_PER_S = 44.0  # interaction logs: (last item, next item) pairs, 48 tokens, batch 64 (Amazon Scientific: 25,659 at 64 tokens in 770 s)
FEATURE_ROWS_PER_S = 80_000.0  # the ranker's candidate rows with every feature family
LOG_PAIRS_PER_S = 400_000.0  # impression logs: (impression, candidate) pairs of the whole log, read by the point-in-time features
FIT_EVENTS_PER_S = 80_000.0  # interaction logs: events the retrieval statistics are fitted on (ALS, transitions, co-occurrence)
RETRIEVAL_USER_ITEMS_PER_S = 40_000_000.0  # interaction logs: histories x catalogue items scored by every default source
RANKER_ROW_ROUNDS_PER_S = 8_000_000.0  # rows x boosting rounds of lambdarank (about 40 features, 31-63 leaves)
REFERENCE_TOKENS = 48
TYPICAL_ROUNDS = 150  # early stopping ended between 20 and 120 best rounds (+ patience) on every log measured
SEQUENCE_TARGETS_PER_S = 4_000.0  # next-item targets of the sequence model, with each epoch's dev validation (Amazon Scientific)
TYPICAL_SEQUENCE_EPOCHS = 15  # its best epoch came at 9-12 on Amazon Scientific, plus patience
SELECT_USER_ITEMS_PER_S = 7_000_000.0  # dev users x catalogue items scored per second, every default source (Amazon Scientific)
SELECT_POINTS = 12  # retrieval settings a search judges, typically (hill-climbs from the configured ones)
SELECT_EASE_FITS = 4  # EASE ridge values it fits, typically
EASE_FLOPS_PER_S = 4e9  # the Cholesky inverse of the item Gram matrix (n**3 / 3 flops)


@dataclass(frozen=True)
class StageBudget:
    """One stage's budget: the work it will do, the setting that bounds it and the estimated seconds."""

    stage: str
    work: str
    setting: str
    seconds: float


def plan(ds: Dataset, c: TrainConfig) -> list[StageBudget]:
    """The budgets of the stages config `c` runs on `ds`."""
    out: list[StageBudget] = []
    n_items = ds.items.height
    token_scale = c.text.max_tokens / REFERENCE_TOKENS
    encoders = int(c.use_text) + int(c.fine_tune)
    if encoders:
        out.append(StageBudget("encode", f"{n_items:,} items x {encoders} encoder(s)", "the catalogue (no cap)",
                               n_items * encoders * token_scale / ENCODE_ITEMS_PER_S))
    logged = candidate_source(ds.kind) == LOGGED
    train = ds.split(Split.TRAIN)
    if c.fine_tune:
        out.append(_fine_tune(ds, c, train) if logged else _next_item_fine_tune(ds, c, train))
    if c.uses_sequence:
        users_train = train[Col.USER].n_unique()
        targets = train.height * c.text_fraction * _clicks_per_row(train) if logged else train.height - (users_train if c.earlier_targets else 0)
        epochs = min(c.sequence.epochs, TYPICAL_SEQUENCE_EPOCHS)
        out.append(StageBudget("sequence", f"~{targets:,.0f} next-item targets x ~{epochs} epochs (early stopping; at most {c.sequence.epochs})",
                               "sequence.epochs, sequence.patience", targets * epochs / SEQUENCE_TARGETS_PER_S))
    # Logged: the later part of the training impressions. Retrieved: dev targets and each user's last train item.
    users = (train if logged else ds.split(Split.TRAIN, Split.DEV))[Col.USER].n_unique()
    share = 1.0 if c.ranker_users is None else min(1.0, c.ranker_users / max(users, 1))  # the sampled users' share of the rows
    if logged:
        groups = train.height * share * ((1.0 - c.text_fraction) if c.fine_tune else 1.0)
        per_group = train[Col.CANDIDATES].list.len().mean()
    else:
        groups = (ds.split(Split.DEV).height + (train[Col.USER].n_unique() if c.earlier_targets else 0)) * share
        per_group = c.train_negatives + 1
    per_group = float(per_group or 0)
    rows = groups * per_group
    sampled = f"{min(users, c.ranker_users or users):,} of {users:,} users"
    if c.select.enabled:
        out.append(_select(ds, c, rows, logged))
    out.append(_features(ds, train, groups, per_group, sampled, logged))
    rounds = c.ranker.n_estimators
    typical = min(rounds, TYPICAL_ROUNDS)
    out.append(StageBudget("ranker", f"~{rows * (1 - c.valid_fraction):,.0f} rows x ~{typical:,} rounds (early stopping; at most {rounds:,}), 2 rankers",
                           "ranker_users, ranker.n_estimators", 2 * rows * typical / RANKER_ROW_ROUNDS_PER_S))
    return out


def _fine_tune(ds: Dataset, c: TrainConfig, train: pl.DataFrame) -> StageBudget:
    """The impression fine-tune (:mod:`recsys.text.train`): clicks with their negatives, a history cache refreshed as it goes."""
    text, n_items, token_scale = c.text, ds.items.height, c.text.max_tokens / REFERENCE_TOKENS
    available = round(train.height * c.text_fraction)
    impressions = min(available, text.max_train_impressions or available)
    samples = impressions * _clicks_per_row(train) * text.epochs
    if text.max_steps:
        samples = min(samples, text.max_steps * text.batch_size * text.accumulate)
    # The history cache holds the items the sampled histories read (at most the catalogue), re-encoded
    # every refresh_interval steps; each validation (one per epoch, one before) adds those of its impressions.
    steps = samples / (text.batch_size * text.accumulate)
    cached = min(n_items, impressions * text.history_len)
    every = refresh_interval(text, cached)
    refreshes = math.ceil(steps / every) if every else text.epochs
    validated = min(n_items, cached + (text.max_val_impressions or n_items) * (text.history_len + float(train[Col.CANDIDATES].list.len().mean() or 0)))
    refresh_s = (refreshes * cached + (text.epochs + 1) * validated) * token_scale / ENCODE_ITEMS_PER_S
    return StageBudget("fine-tune", f"{impressions:,} of {available:,} impressions x {text.epochs} epoch(s), ~{samples:,.0f} samples"
                       f" + {refreshes} history-cache refreshes", "text.max_train_impressions, text.epochs, text.max_steps, text.cache_refresh_steps",
                       samples * token_scale / FINE_TUNE_SAMPLES_PER_S + refresh_s)


def _next_item_fine_tune(ds: Dataset, c: TrainConfig, train: pl.DataFrame) -> StageBudget:
    """The next-item fine-tune of an interaction log (:mod:`recsys.text.next_item`): its pairs (the training rows,
    less each user's last train item when that is a ranker target) and one catalogue encode per validation."""
    text, n_items = c.text, ds.items.height
    available = train.height - (train[Col.USER].n_unique() if c.earlier_targets else 0)
    used = min(available, text.max_train_impressions or available)
    pairs = used * text.epochs if not text.max_steps else min(used * text.epochs, text.max_steps * text.batch_size * text.accumulate)
    seconds = (pairs / NEXT_ITEM_PAIRS_PER_S + (text.epochs + 1) * n_items / ENCODE_ITEMS_PER_S) * text.max_tokens / REFERENCE_TOKENS
    return StageBudget("fine-tune", f"{used:,} of {available:,} next-item pairs x {text.epochs} epoch(s) + {text.epochs + 1} catalogue validations",
                       "text.max_train_impressions, text.epochs, text.max_steps", seconds)


def _features(ds: Dataset, train: pl.DataFrame, groups: float, per_group: float, sampled: str, logged: bool) -> StageBudget:
    """The ranker's feature table: its rows, plus what they are read from. Impression logs: the point-in-time
    features read the whole log's (impression, candidate) pairs. Interaction logs: retrieval statistics fitted on
    the training events, then every group's history scored over the catalogue."""
    rows = groups * per_group
    work = f"~{groups:,.0f} groups ({sampled}) x ~{per_group:.0f} candidates = ~{rows:,.0f} rows"
    seconds = rows / FEATURE_ROWS_PER_S
    if logged:
        pairs = int(ds.impressions[Col.CANDIDATES].list.len().sum() or 0)
        work += f", from {pairs:,} logged (impression, candidate) pairs"
        seconds += pairs / LOG_PAIRS_PER_S
    else:
        work += f", retrieved from {ds.items.height:,} items after fitting on {train.height:,} events"
        seconds += train.height / FIT_EVENTS_PER_S + groups * ds.items.height / RETRIEVAL_USER_ITEMS_PER_S
    return StageBudget("features", work, "ranker_users", seconds)


def _select(ds: Dataset, c: TrainConfig, rows: float, logged: bool) -> StageBudget:
    """The settings search on dev: retrieval (retrieved candidates) and ranker settings, each within its time budget."""
    sel = c.select
    grid = len(sel.num_leaves) * len(sel.learning_rate) * len(sel.min_data_in_leaf) * len(sel.feature_fraction)
    trials = 1 + min(sel.ranker_trials, grid)
    finalists = min(sel.finalists + 1, trials) if sel.first_rung < 1 else 0  # the best ones and the configured ones
    fits = trials * sel.first_rung + finalists
    seconds = min(sel.ranker_seconds, fits * rows * (1 - c.valid_fraction) * TYPICAL_ROUNDS / RANKER_ROW_ROUNDS_PER_S)
    work = f"ranker: {trials} settings on {sel.first_rung:.0%} of the rows" + (f", up to {finalists} on all" if finalists else "")
    work += f" (at most {sel.ranker_seconds:g} s)"
    if not logged:
        users, n = min(ds.split(Split.DEV)[Col.USER].n_unique(), sel.users or math.inf), ds.items.height
        ease = SELECT_EASE_FITS * n**3 / 3 / EASE_FLOPS_PER_S if "ease" in c.retrieval.sources else 0.0
        seconds += min(sel.retrieval_seconds, ease + SELECT_POINTS * users * n / SELECT_USER_ITEMS_PER_S)
        work = f"retrieval: ~{SELECT_POINTS} settings on {users:,.0f} dev users (at most {sel.retrieval_seconds:g} s); " + work
    return StageBudget("select", work, "select.retrieval_seconds, select.ranker_seconds; --no-select skips it", seconds)


def _clicks_per_row(rows: pl.DataFrame) -> float:
    """Mean clicks per impression (each is one fine-tune sample)."""
    if rows.is_empty() or rows[Col.LABELS].null_count() == rows.height:
        return 0.0
    return float(rows.select(pl.col(Col.LABELS).list.sum().mean()).item() or 0.0)


def describe(budgets: list[StageBudget]) -> str:
    """The plan as lines for a terminal, with the total."""
    width = max(len(b.stage) for b in budgets)
    lines = [f"  {b.stage:<{width}}  ~{_duration(b.seconds):>7}  {b.work}  [{b.setting}]" for b in budgets]
    total = sum(b.seconds for b in budgets)
    return "\n".join(["budget (time estimated for a 2-core CPU; raise a setting in [brackets] to spend more):", *lines,
                      f"  {'total':<{width}}  ~{_duration(total):>7}"])


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
