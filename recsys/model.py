"""The model directory and its ``model.json``: what the model is, what it was trained on, and what it holds.

Layout (both log kinds)::

    model.json               kind, candidate source, the full config, the dataset's fingerprint, versions,
                             sha256 of every artifact, model_id (a hash of those, clock fields left out:
                             training the same twice gives the same id), stage timings
    config.toml              the same config as TOML: `recsys train --config` reproduces the run
    stages.json              which stage ran with which inputs (the stage cache)
    text/                    the fine-tuned encoder (safetensors) + its config and training log (when fine-tuned)
    item_vectors.parquet     catalogue vectors of the fine-tuned encoder (when fine-tuned)
    frozen_vectors.parquet   catalogue vectors of the pretrained encoder
    sequence/                the sequence model (safetensors + config.json + its items), when a retrieval source
    features.parquet         the ranker's training candidates with their features
    ranker/, ranker_no_text/ LightGBM text models + manifests: the model and its "without text" baseline
    reference.json           the distributions `recsys monitor` compares a later run with (recsys/monitoring/)

Loading verifies every artifact's hash, so a file changed after training is refused, and checks that the
dataset it is asked to serve from is the one it was trained on (unless the caller allows a newer log).
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from recsys.data import Dataset
from recsys.errors import ModelMismatchError, RecsysError
from recsys.io import read_json, write_json

MODEL_JSON = "model.json"
FORMAT_VERSION = 1
RANKER_DIR, NO_TEXT_DIR = "ranker", "ranker_no_text"
TEXT_DIR, SEQUENCE_DIR = "text", "sequence"
ITEM_VECTORS, FROZEN_VECTORS = "item_vectors.parquet", "frozen_vectors.parquet"
REFERENCE = "reference.json"  # what `recsys monitor` compares a run with (recsys.monitoring.reference)
_SERVED = (TEXT_DIR, SEQUENCE_DIR, RANKER_DIR, NO_TEXT_DIR, ITEM_VECTORS, FROZEN_VECTORS, REFERENCE)
_NOT_ARTIFACTS = {"logs"}  # training curves: read by reports, never by scoring
_CLOCK_KEYS = {"trained_at", "seconds"}  # top-level JSON fields that say when or how long, not what


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs, upstream fingerprints, manifests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every file the model scores with (relative path -> hex digest), sorted by path."""
    files: list[Path] = []
    for name in _SERVED:
        path = model_dir / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and not _NOT_ARTIFACTS & set(p.relative_to(path).parts)]
    return {str(p.relative_to(model_dir)): sha256(p) for p in sorted(files)}


def _clock_free(model_dir: Path, hashes: dict[str, str]) -> dict[str, str]:
    """`hashes` with each JSON artifact hashed without its clock fields (:data:`_CLOCK_KEYS`), for model_id."""
    out = dict(hashes)
    for rel in hashes:
        if rel.endswith(".json"):
            obj = read_json(model_dir / rel)
            if isinstance(obj, dict) and _CLOCK_KEYS & set(obj):
                kept = {k: v for k, v in obj.items() if k not in _CLOCK_KEYS}
                out[rel] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return out


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("recsys", "torch", "transformers", "lightning", "lightgbm", "polars", "duckdb", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def write_model_json(model_dir: Path, *, kind: str, candidates: str, config: dict[str, Any], config_fingerprint: str,
                     dataset: Dataset, stages: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Hash the artifacts and write ``model.json`` (last, atomically: its presence means a finished model)."""
    hashes = artifact_hashes(model_dir)
    content = sorted(_clock_free(model_dir, hashes).items())  # the same training twice gets the same id
    model_id = hashlib.sha256(f"{content}|{config_fingerprint}|{dataset.fingerprint}".encode()).hexdigest()[:16]
    meta = {
        "format_version": FORMAT_VERSION, "model_id": model_id, "kind": kind, "candidates": candidates,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": config, "config_fingerprint": config_fingerprint,
        "dataset": {"path": str(dataset.path.resolve()) if dataset.path else None, "fingerprint": dataset.fingerprint,
                    "source": dataset.manifest.get("source"), "items": dataset.items.height, "impressions": dataset.impressions.height},
        "versions": _versions(), "artifacts": hashes, "stages": stages, "summary": summary,
    }
    write_json(meta, model_dir / MODEL_JSON)
    return meta


# Result settings added after models were trained, of a feature that is off unless a model asks for it (the
# ``sequence`` model runs only when ``retrieval.sources`` names it; ``select`` is saved off once its choice is made):
# a model trained before one existed loads with its defaults, exactly as trained. Any other missing result setting
# means a retrain.
OFF_UNTIL_ASKED = ("sequence", "select")
# Result settings added since, with the value every model trained before them used: such a model loads as trained.
EARLIER_VALUES: dict[str, Any] = {"text.max_val_impressions": None}  # validation read every held-out impression


def read_model_json(model_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """``model.json`` of a trained model, every artifact's hash and the config checked.

    Raises:
        RecsysError: not a trained model, or a model of another format.
        ModelMismatchError: an artifact is missing or was changed after training, or the config was edited.
    """
    from recsys.config import RETIRED, TrainConfig
    from recsys.resources import result_settings

    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise RecsysError(f"{model_dir} is not a trained model (no {MODEL_JSON}); train one with `recsys train`")
    meta = dict(read_json(path))
    if meta.get("format_version") != FORMAT_VERSION:
        raise RecsysError(f"{path}: model format {meta.get('format_version')}, this recsys reads {FORMAT_VERSION}; retrain the model")
    earlier = _fill_earlier_values(meta.get("config", {}))  # verified or not, the config reads as the model was trained
    if verify:
        for rel, digest in meta["artifacts"].items():
            file = Path(model_dir) / rel
            if not file.is_file():
                raise ModelMismatchError(f"{file}: artifact listed in {MODEL_JSON} is missing; restore it or retrain")
            if sha256(file) != digest:
                raise ModelMismatchError(f"{file}: sha256 differs from {MODEL_JSON} (changed after training); restore it or retrain")
        try:
            cfg = TrainConfig.from_dict(meta["config"], source=f"{path} config")
        except RecsysError as exc:
            raise ModelMismatchError(f"{exc} (a model of another recsys version: retrain it)") from None
        settings = result_settings(cfg)
        settings.update({name: meta["config"][name] for name in RETIRED if name in meta["config"]})  # hashed as trained: with them
        for dotted in earlier:  # hashed as trained: without the settings that did not exist yet
            *parents, name = dotted.split(".")
            _section(settings, parents).pop(name)
        newer = _missing_keys(settings, meta["config"])  # a missing resource setting just takes its default
        for key in set(OFF_UNTIL_ASKED) & set(newer):  # the model predates a feature it does not use: as trained
            newer.remove(key)
            settings.pop(key)
        if newer:
            raise ModelMismatchError(f"{path}: trained by an older recsys whose config has no {', '.join(newer[:3])}; retrain the model")
        if fingerprint(settings) != meta["config_fingerprint"]:
            raise ModelMismatchError(f"{path}: its config was edited after training (the model was trained with another); retrain")
    return meta


def _section(config: dict[str, Any], parents: list[str]) -> dict[str, Any]:
    for part in parents:
        config = config[part]
    return config


def _fill_earlier_values(config: dict[str, Any]) -> list[str]:
    """Set each :data:`EARLIER_VALUES` setting that `config` lacks (in place); the dotted names it set."""
    filled = []
    for dotted, value in EARLIER_VALUES.items():
        *parents, name = dotted.split(".")
        try:
            section = _section(config, parents)
        except KeyError:
            continue
        if name not in section:
            section[name] = value
            filled.append(dotted)
    return filled


def _missing_keys(full: dict[str, Any], stored: dict[str, Any], prefix: str = "") -> list[str]:
    """Settings of `full` that `stored` lacks (dotted names): settings added since the model was trained."""
    out = []
    for key, value in full.items():
        if key not in stored:
            out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            out += _missing_keys(value, stored[key], f"{prefix}{key}.")
    return out


def check_dataset(meta: dict[str, Any], ds: Dataset, *, allow_other: bool = False) -> None:
    """Refuse to serve or evaluate from a dataset other than the training one, unless `allow_other`.

    Raises:
        ModelMismatchError: the dataset's manifest fingerprint differs from the one in ``model.json``.
    """
    trained = meta["dataset"]["fingerprint"]
    if ds.fingerprint != trained and not allow_other:
        raise ModelMismatchError(
            f"{ds.path or 'the dataset'} is not the dataset this model was trained on (fingerprint {ds.fingerprint}, "
            f"model {trained}); pass --allow-other-dataset (allow_other_dataset=True) to use a newer log on purpose")
