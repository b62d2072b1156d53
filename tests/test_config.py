"""The run configuration: per-kind defaults, TOML round trip, typed overrides, resources outside fingerprints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from recsys.config import KINDS, TrainConfig, load_config, override, to_toml, with_resources
from recsys.errors import RecsysError
from recsys.model import fingerprint
from recsys.resources import result_settings


@pytest.mark.parametrize("kind", KINDS)
def test_toml_round_trip_is_exact(kind: str, tmp_path: Path) -> None:
    cfg = override(TrainConfig.default(kind), **{"text.max_steps": 7, "text.lr": 1e-05, "ranker.label_gain": (0.0, 1.0, 3.0)})
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    # Read onto the *other* kind's defaults: the file alone must reproduce the config.
    other = TrainConfig.default(next(k for k in KINDS if k != kind))
    assert load_config(tmp_path / "c.toml", other) == cfg


def test_kinds_have_their_own_defaults() -> None:
    impressions, interactions = TrainConfig.default("impressions"), TrainConfig.default("interactions")
    assert impressions.fine_tune and not interactions.fine_tune
    assert impressions.features.families != interactions.features.families
    assert TrainConfig.for_dataset({"kind": "interactions", "text_fields": ["title"]}).text.fields == ("title",)
    with pytest.raises(RecsysError, match="unknown log kind"):
        TrainConfig.default("clicks")


def test_a_retired_table_is_dropped_with_a_warning_and_a_typo_still_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = TrainConfig.default("interactions")
    (tmp_path / "old.toml").write_text('fine_tune = true\n[sampling]\nnegatives = 4\nmax_rows = 6000\n')  # a model saved before next-item fine-tuning
    assert load_config(tmp_path / "old.toml", base) == dataclasses.replace(base, fine_tune=True)
    assert "[sampling] is no longer read" in caplog.text and "old.toml" in caplog.text
    (tmp_path / "typo.toml").write_text("[samplng]\nnegatives = 4\n")
    with pytest.raises(RecsysError, match="unknown setting"):
        load_config(tmp_path / "typo.toml", base)


def test_override_changes_only_the_named_setting() -> None:
    cfg = TrainConfig.default("impressions")
    changed = override(cfg, **{"text.epochs": 3, "ranker.num_leaves": None})
    assert changed.text.epochs == 3 and changed.ranker == cfg.ranker
    assert dataclasses.replace(changed, text=cfg.text) == cfg


@pytest.mark.parametrize(("key", "value", "message"), [
    ("use_text", "no", "use_text must be bool"),
    ("retrieval.per_source", 10.5, "per_source must be int"),
    ("text.fields", "title", "fields must be tuple"),
    ("text.nonsense", 1, "unknown setting"),
    ("features.families", ["text"], "a family besides 'text'"),
])
def test_bad_settings_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(RecsysError, match=message):
        override(TrainConfig.default("impressions"), **{key: value})


def test_resources_never_change_a_fingerprint(tmp_path: Path) -> None:
    cfg = TrainConfig.default("impressions")
    busy = override(cfg, **{"features.memory_limit": "1GB", "features.threads": 1, "ranker.num_threads": 2, "text.encode_batch_size": 8})
    assert fingerprint(result_settings(busy)) == fingerprint(result_settings(cfg))
    assert fingerprint(result_settings(override(cfg, **{"text.epochs": 3}))) != fingerprint(result_settings(cfg))
    (tmp_path / "r.toml").write_text('[features]\nmemory_limit = "2GB"\n')
    assert with_resources(cfg, tmp_path / "r.toml").features.memory_limit == "2GB"
    (tmp_path / "bad.toml").write_text("[text]\nepochs = 3\n")
    with pytest.raises(RecsysError, match=r"\['text.epochs'\] are not resource settings"):
        with_resources(cfg, tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("[text\n")
    with pytest.raises(RecsysError, match="not a valid config file"):
        load_config(tmp_path / "broken.toml", cfg)
