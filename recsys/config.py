"""The run configuration: one typed dataclass per stage, one default per log kind, TOML or JSON on disk.

``TrainConfig.default(kind)`` seeds a run; a ``--config FILE`` (TOML, or the JSON a run writes into
``model.json``) replaces any part of it; CLI flags are applied last with :func:`override`
(``dataclasses.replace``, so nothing else changes). The resolved config is saved in ``model.json`` and
``config.toml`` and loaded back by ``recommend`` and ``evaluate``: nothing is rebuilt from defaults.

TOML has no null: an unset optional value (``max_steps``, ``encoder``...) is written as the string
``"none"`` and read back as None.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from features.build import FeatureConfig
from features.registry import BEHAVIOUR, PAIRS, RETRIEVAL, TEXT
from ranker.lambdarank import RankerConfig
from recsys.candidates.retrieval import RECENT, SEQUENCE, RetrievalConfig
from recsys.errors import RecsysError
from recsys.resources import RESOURCE_KEY
from recsys.selection.config import SelectionConfig
from recsys.text.model import TextConfig
from recsys.text.sequence import SequenceConfig

IMPRESSION_FINE_TUNE = 4_000  # impressions the text model fine-tunes on by default (TrainConfig.default)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMPRESSIONS, INTERACTIONS = "impressions", "interactions"
KINDS = (IMPRESSIONS, INTERACTIONS)
NONE = "none"
MONITOR_TABLE = "monitor"  # thresholds of `recsys monitor` (recsys/monitoring/config.py): one config file serves every job
# Settings are 32-bit where libraries read them (LightGBM, DuckDB); larger whole numbers are mistakes.
_MAX_INT = 2**31 - 1
# Tables of earlier versions that nothing reads any more, and why: a model saved with one still loads.
RETIRED = {"sampling": "an interaction log's encoder fine-tunes on next items against the batch's other items"}

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    """Everything `recsys train` needs; each stage takes its own part.

    Attributes:
        text: the text encoder and its fine-tune.
        features: point-in-time feature settings and the families the ranker reads.
        retrieval: candidate sources (interaction logs: the candidates; every log: retrieval features).
        sequence: the sequence model, trained when ``retrieval.sources`` has ``sequence`` (and ``use_text``).
        ranker: LightGBM lambdarank.
        select: which retrieval and ranker settings are chosen on the dev split before training (the ones above seed it).
        use_text: encode the catalogue and use text features at all.
        fine_tune: fine-tune the encoder (else the pretrained encoder is used as it is).
        text_fraction: impression logs: the earliest share of training impressions the encoder learns from;
            the ranker learns from the rest, so the text scores it learns to trust are out-of-sample.
        valid_fraction: the share of the ranker's groups held out to early-stop it.
        valid_by: ``"time"`` (the latest groups) or ``"users"`` (a seeded share of users: for leave-one-out
            logs, whose targets all sit at the end of each user's sequence).
        train_negatives: interaction logs: retrieved negatives kept per training group.
        earlier_targets: interaction logs: each user's last train item is one more training target.
        ranker_users: the ranker learns from the rows of a seeded sample of this many users when the log has
            more (None = every user). On the 1M-event shop log the ranker's held-out nDCG@10 was .5895, .5916,
            .5930 and .5925 at 2,500, 5,000, 10,000 and all 17,000 users (95% interval +-.012; fit time grows
            linearly): past 10,000 users more rows bought nothing (``benchmarks/budgets.py ranker-table``,
            ``benchmarks/results/budgets-ranker-table-2026-12-01.md``).
        seed: seed of every sampled choice.
    """

    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)
    ranker: RankerConfig = dataclasses.field(default_factory=RankerConfig)
    select: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    use_text: bool = True
    fine_tune: bool = True
    text_fraction: float = 0.5
    valid_fraction: float = 0.15
    valid_by: str = "time"
    train_negatives: int = 100
    earlier_targets: bool = True
    ranker_users: int | None = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction < 0.5:
            raise RecsysError(f"TrainConfig.valid_fraction must be in (0, 0.5), got {self.valid_fraction}")
        if not (0.0 < self.text_fraction < 1.0 and 1.0 - self.text_fraction < 1.0):  # 1e-300 is nothing next to 1
            raise RecsysError(f"TrainConfig.text_fraction must be in (0, 1), got {self.text_fraction}")
        if self.valid_by not in ("time", "users"):
            raise RecsysError(f"TrainConfig.valid_by must be 'time' or 'users', got {self.valid_by!r}")
        if self.ranker_users is not None and self.ranker_users < 1:
            raise RecsysError(f"TrainConfig.ranker_users must be >= 1 or none, got {self.ranker_users}")
        if self.train_negatives < 1:
            raise RecsysError(f"TrainConfig.train_negatives must be >= 1, got {self.train_negatives}")
        if self.fine_tune and not self.use_text:
            raise RecsysError("TrainConfig.fine_tune needs use_text")
        families = set(self.features.families)
        if TEXT in families and not self.use_text:
            raise RecsysError("features.families has 'text' but use_text is false; drop 'text' from features.families or turn use_text on")
        if not families - {TEXT}:
            raise RecsysError("features.families needs a family besides 'text' (behaviour, retrieval or pairs): the without-text baseline reads it")

    @property
    def uses_sequence(self) -> bool:
        """Whether the sequence model is trained and retrieves: ``sequence`` among the retrieval sources and ``use_text``
        (its items are text vectors; without text the source is left out, as the text source is)."""
        return SEQUENCE in self.retrieval.sources and self.use_text

    @classmethod
    def default(cls, kind: str) -> TrainConfig:
        """The defaults of a log kind: where they differ, each is what that kind's pipeline was measured with."""
        if kind == IMPRESSIONS:
            # The fine-tune learns from one epoch over a seeded sample of 4,000 training impressions: on `recsys synth
            # --size small` the dev AUC of the fine-tuned text score was flat from 1,000 to 4,000 (.7892 / .7863 / .7901,
            # +-.004, one epoch; benchmarks/results/budgets-text-2026-12-01.md), and on `--size large` a second epoch
            # moved the validation AUC by -.0004 for 7 more minutes, while every impression of a large log costs hours.
            return cls(features=FeatureConfig(families=(BEHAVIOUR, TEXT)), text=TextConfig(max_train_impressions=IMPRESSION_FINE_TUNE, epochs=1),
                       retrieval=RetrievalConfig(sources=(*RetrievalConfig().sources, RECENT)))
        if kind == INTERACTIONS:
            # CPU-friendly fine-tune when asked for: a few thousand sampled clicks, short texts, one epoch.
            text = TextConfig(max_tokens=64, history_len=20, negatives=4, batch_size=32, epochs=1, max_train_impressions=3000)
            ranker = RankerConfig(num_leaves=31, learning_rate=0.05, min_data_in_leaf=50, n_estimators=1000, early_stopping_rounds=50,
                                  lambdarank_truncation_level=30, eval_at=(10,))
            return cls(text=text, features=FeatureConfig(families=(RETRIEVAL, PAIRS)), ranker=ranker, fine_tune=False,
                       valid_by="users")
        raise RecsysError(f"unknown log kind {kind!r}; use one of {KINDS}")

    @classmethod
    def for_dataset(cls, manifest: dict[str, Any]) -> TrainConfig:
        """The defaults of the log's kind; the encoder reads the text fields the loader names, if it names them."""
        cfg = cls.default(str(manifest.get("kind", IMPRESSIONS)))
        fields = manifest.get("text_fields")
        return override(cfg, **{"text.fields": tuple(fields)}) if fields else cfg

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
        """`base` (default: the impression defaults) with every value given in `data` replaced; unknown keys are errors,
        but for the :data:`RETIRED` tables of earlier versions, which are dropped (a saved model keeps loading)."""
        return _merge(base or cls.default(IMPRESSIONS), {k: v for k, v in data.items() if k not in RETIRED}, source)


def _plain(obj: Any) -> Any:
    """A config as JSON-able data (tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else False


def _merge(base: Any, data: dict[str, Any], where: str) -> Any:
    """`base` (a config dataclass) with the values of `data` (nested dicts) replaced, checked by its __post_init__.

    Every error names `where` (the config file or the flag, then the table) and the setting.
    """
    if not isinstance(data, dict):
        raise RecsysError(f"{where}: expected a table of settings, got {data!r}")
    types_ = _field_types(type(base))
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise RecsysError(f"{where}: unknown setting(s) {unknown}; known: {sorted(types_)}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(base, name)
        if isinstance(value, type(current)) and dataclasses.is_dataclass(value):
            changes[name] = value  # a whole stage config
        elif dataclasses.is_dataclass(current):
            changes[name] = _merge(current, value, f"{where}.{name}")
        else:
            changes[name] = _coerce(value, types_[name], f"{where}.{name}")
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError, RecsysError) as exc:  # __post_init__ checks the values
        raise RecsysError(f"{where}: {exc}") from exc


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as the field type `tp` wants (lists become tuples, ints become floats, "none" None), or an error naming it."""
    options = [t for t in typing.get_args(tp) if t is not type(None)] if _allows_none(tp) else [tp]
    if value is None or (value == NONE and _allows_none(tp)):
        if _allows_none(tp):
            return None
        raise RecsysError(f"{where} must be set (got {value!r})")
    for t in options:
        origin = typing.get_origin(t) or t
        if origin is tuple and isinstance(value, (list, tuple)):
            inner = typing.get_args(t)[0] if typing.get_args(t) else Any
            return tuple(_coerce(v, inner, where) for v in value)
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)  # NaN and infinities are no setting's value
        if t is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _MAX_INT:
            return value
        if t in (bool, str) and isinstance(value, t):
            return value
        if t is Any:
            return value
    raise RecsysError(f"{where} must be {' or '.join(getattr(t, '__name__', str(t)) for t in options)}, got {value!r}")


def apply_settings(base: Any, data: dict[str, Any], where: str) -> Any:
    """`base` (any config dataclass) with the values of `data` replaced and checked; errors name `where` and the setting."""
    return _merge(base, data, where)


def override(cfg: TrainConfig, source: str = "option", **dotted: Any) -> TrainConfig:
    """`cfg` with the given settings replaced (``override(cfg, **{"text.epochs": 1})``); None values are skipped.

    Only the named settings change: this is how CLI flags apply, so a flag never resets anything else.
    Errors name `source` (e.g. the flag).
    """
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _merge(cfg, nested, source) if nested else cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a config file: TOML, a JSON config, or a model's ``model.json`` (its ``config``)."""
    path = Path(path)
    if not path.is_file():
        raise RecsysError(f"{path}: config file not found")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            data = data.get("config", data) if isinstance(data, dict) else data
        else:
            raise RecsysError(f"{path}: unknown config format {path.suffix!r}; use .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecsysError(f"{path}: not a valid config file ({exc})") from exc
    if not isinstance(data, dict):
        raise RecsysError(f"{path}: a config file holds a table of settings")
    return data


def load_config(path: str | Path, base: TrainConfig) -> TrainConfig:
    """`base` (the log kind's defaults) with every setting of the file at `path` replaced (its ``[monitor]`` table is the monitor's);
    a :data:`RETIRED` table in it gets one warning, since the file's author may expect it to act."""
    data = read_config_file(path)
    for name in sorted(RETIRED.keys() & data.keys()):
        log.warning("%s: [%s] is no longer read (%s)", path, name, RETIRED[name])
    return TrainConfig.from_dict(_without_monitor(data), base, source=str(path))


def _without_monitor(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != MONITOR_TABLE}


def with_resources(cfg: TrainConfig, path: str | Path) -> TrainConfig:
    """A trained model's config with the resource settings (threads, memory, batch sizes) of the file at `path`.

    Raises:
        RecsysError: the file sets anything else: a model's results follow the config it was trained with.
    """
    data = _without_monitor(read_config_file(path))
    others = [key for key in _dotted(data) if not is_resource(cfg, key)]
    if others:
        raise RecsysError(f"{path}: {others} are not resource settings; a trained model keeps the config it was trained with "
                          "(only threads, memory, temp dir and batch sizes may change)")
    return TrainConfig.from_dict(data, cfg, source=str(path))


def _dotted(data: dict[str, Any], prefix: str = "") -> list[str]:
    return [k for key, v in data.items() for k in (_dotted(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def is_resource(cfg: Any, dotted: str) -> bool:
    """Whether the setting ``a.b.c`` of `cfg` is a resource field (see :mod:`recsys.resources`)."""
    *path, leaf = dotted.split(".")
    for part in path:
        cfg = getattr(cfg, part, None)
    fields = {f.name: f for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}
    return leaf in fields and bool(fields[leaf].metadata.get(RESOURCE_KEY))


def to_toml(cfg: TrainConfig) -> str:
    """The config as TOML: top-level settings first, then one table per stage."""
    data = cfg.to_dict()
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return json.dumps(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
