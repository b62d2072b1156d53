"""Text model: training learns, scores generalise to unseen items, artifacts round-trip, caches behave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open

from conftest_text import make_tiny_encoder, tiny_config, topic_impressions, topic_items
from recsys.text import encode as encode_mod
from recsys.data import Col, explode_candidates
from recsys.text.encode import ItemVectors, encode_items
from recsys.errors import RecsysError
from recsys.evaluation.metrics import AUC, impression_metrics
from recsys.text.features import TEXT_FEATURES, text_features, user_vectors
from recsys.text.model import TextConfig, build_text_model
from recsys.text.data import ItemTokens
from recsys.text.fine_tune import FINE_TUNED, PRETRAINED, kept_weights
from recsys.text.train import MIN_REFRESH_STEPS, TextModule, _prepare, load_text_model, refresh_interval, train_text_model


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny encoder, training items/impressions (with unknown ids and empty histories), held-out items."""
    root = tmp_path_factory.mktemp("text")
    items = topic_items()
    imps = topic_impressions(items)
    # Dirty rows a real log has: unknown ids in histories and candidates, users without history.
    imps = imps.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.col(Col.HISTORY).list.concat(pl.lit(["ghost-1"])))
        .when(pl.int_range(pl.len()) % 11 == 0).then(pl.lit([], dtype=pl.List(pl.String()))).otherwise(pl.col(Col.HISTORY)),
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.col(Col.CANDIDATES).list.concat(pl.lit(["ghost-2"])))
        .otherwise(pl.col(Col.CANDIDATES)),
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.col(Col.LABELS).list.concat(pl.lit([0], dtype=pl.List(pl.Int8()))))
        .otherwise(pl.col(Col.LABELS)),
    )
    held = topic_items(n_per_topic=10, seed=1, prefix="h")
    test = topic_impressions(held, seed=5, history_items=items, id_prefix="t")
    encoder = make_tiny_encoder(root / "encoder")
    cfg = tiny_config(encoder)
    out = train_text_model(imps, items, cfg, root / "model", show_progress=False)
    return {"root": root, "items": items, "held": held, "test": test, "cfg": cfg, "out": out, "encoder": encoder}


def _heldout_auc(model, world: dict) -> float:
    catalogue = pl.concat([world["items"], world["held"]])
    vecs = encode_items(model, catalogue, show_progress=False)
    feats = text_features(model, vecs, world["test"])
    feats = feats.with_columns(explode_candidates(world["test"])[Col.LABEL])
    return impression_metrics(feats, "text_score")[AUC]


def test_training_loss_falls_and_best_is_saved(world: dict) -> None:
    metrics = json.loads((world["out"] / "train_metrics.json").read_text())
    losses = [h["train_loss"] for h in metrics["history"] if h["epoch"] >= 0]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0]  # from ~log(K + batch) at chance
    aucs = [h["val_auc"] for h in metrics["history"]]
    assert metrics["best_val_auc"] == max(aucs) and metrics["best_val_auc"] > aucs[0]  # epoch -1 = untrained
    assert (world["out"] / "encoder" / "model.safetensors").exists() and (world["out"] / "user_encoder.safetensors").exists()


def test_a_fine_tune_that_does_not_help_keeps_the_pretrained_weights(world: dict, tmp_path: Path) -> None:
    assert kept_weights(world["out"]).startswith(FINE_TUNED)  # the topic log: the fine-tune helps and is kept
    imps = topic_impressions(world["items"]).sort(Col.TIME)
    early = pl.int_range(pl.len()) < int(0.75 * imps.height)  # the fine-tune's training part (validation = the latest 20%)
    # Early users click against their topic, later ones with it: what the fine-tune learns fails on validation.
    flipped = imps.with_columns(pl.when(early).then(pl.col(Col.LABELS).list.eval(1 - pl.element())).otherwise(pl.col(Col.LABELS)).alias(Col.LABELS))
    out = train_text_model(flipped, world["items"], TextConfig.from_dict({**world["cfg"].to_dict(), "epochs": 2}), tmp_path / "m", show_progress=False)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["kept"] == PRETRAINED and metrics["best_step"] == 0
    assert all(h["val_auc"] < metrics["history"][0]["val_auc"] for h in metrics["history"][1:])
    assert kept_weights(out).startswith(PRETRAINED)


def test_softmax_temperature_is_calibrated_and_learned(world: dict, tmp_path: Path) -> None:
    from recsys.text.fine_tune import MAX_SCALE, SCORE_SCALE

    metrics = json.loads((world["out"] / "train_metrics.json").read_text())
    calibrated, learned = metrics["calibrated_scale"], metrics["score_scale"]
    assert 1.0 <= calibrated <= MAX_SCALE and calibrated != pytest.approx(SCORE_SCALE, abs=0.5)  # the grid search moved it
    assert learned != pytest.approx(calibrated, rel=1e-3)  # and training moved it on
    # Validation every 2 steps, and once more after the last (odd) step: the kept weights come from
    # the best checked point, the end of training included.
    cfg = tiny_config(world["encoder"], val_check_steps=2, max_steps=5, epochs=5)
    out = train_text_model(topic_impressions(world["items"], n_users=40, per_user=2), world["items"], cfg, tmp_path / "m", show_progress=False)
    metrics = json.loads((out / "train_metrics.json").read_text())
    checked = [h for h in metrics["history"] if h["val_auc"] is not None]
    assert [h["step"] for h in checked] == [0, 2, 4, 5]
    best = max(checked, key=lambda h: h["val_auc"])
    assert metrics["best_step"] == best["step"] and metrics["best_val_auc"] == pytest.approx(best["val_auc"])
    # Validation once per epoch and max_steps ending the run inside the first one: early stopping has no epoch-end
    # check to read (it used to fail there), and the run still ends with one.
    cfg = tiny_config(world["encoder"], max_steps=2, epochs=1)
    out = train_text_model(topic_impressions(world["items"], n_users=40, per_user=2), world["items"], cfg, tmp_path / "short", show_progress=False)
    checked = [h["step"] for h in json.loads((out / "train_metrics.json").read_text())["history"] if h["val_auc"] is not None]
    assert checked == [0, 2]


def test_the_same_seed_trains_the_same_model(world: dict, tmp_path: Path) -> None:
    """Two fine-tunes with one seed validate to the same AUC at every check, bf16 where the CPU has it: without
    Lightning's deterministic mode, CPU bf16 steps drifted apart (the demo's AUC at step 40: .78414 and .78405)."""
    rows = topic_impressions(world["items"], n_users=40, per_user=2)
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(world["encoder"], precision="auto", val_check_steps=3, max_steps=9, epochs=3)
        out = train_text_model(rows, world["items"], cfg, tmp_path / name, show_progress=False)
        runs.append([(h["step"], h["val_auc"]) for h in json.loads((out / "train_metrics.json").read_text())["history"] if h["val_auc"] is not None])
    assert runs[0] == runs[1] and [s for s, _ in runs[0]] == [0, 3, 6, 9]


def test_square_projection_starts_as_the_identity(world: dict) -> None:
    plain = encode_items(build_text_model(world["cfg"]), world["held"], show_progress=False)
    projected = encode_items(build_text_model(tiny_config(world["encoder"], projection_dim=32)), world["held"], show_progress=False)
    np.testing.assert_allclose(projected.vectors, plain.vectors, atol=1e-6)


def test_trained_model_ranks_unseen_items_better_than_untrained(world: dict) -> None:
    trained = _heldout_auc(load_text_model(world["out"]), world)
    untrained = _heldout_auc(build_text_model(world["cfg"]), world)
    assert trained > untrained + 0.05
    assert trained > 0.9


def test_save_load_round_trip_gives_same_vectors(world: dict, tmp_path: Path) -> None:
    from recsys.text.model import save_text_model

    first = load_text_model(world["out"])
    save_text_model(first, tmp_path / "again")
    second = load_text_model(tmp_path / "again")
    a = encode_items(first, world["held"], show_progress=False)
    b = encode_items(second, world["held"], show_progress=False)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    hist = [["i0-1", "i0-2"], []]
    np.testing.assert_allclose(user_vectors(first, a, hist), user_vectors(second, b, hist), atol=1e-6)
    a.save(tmp_path / "v.parquet")
    c = ItemVectors.load(tmp_path / "v.parquet")
    assert c.ids == a.ids and c.fingerprint == a.fingerprint
    np.testing.assert_array_equal(c.vectors, a.vectors)
    assert np.allclose(np.linalg.norm(c.vectors, axis=1), 1.0, atol=1e-5)


def test_cache_is_reused_and_invalidated_by_encoder_change(world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_text_model(world["out"])
    first = encode_items(model, world["held"], cache_dir=tmp_path, show_progress=False)
    calls = []
    real = encode_mod.embed_rows
    monkeypatch.setattr(encode_mod, "embed_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = encode_items(model, world["held"], cache_dir=tmp_path, show_progress=False)
    assert calls == [] and np.array_equal(again.vectors, first.vectors)
    with torch.no_grad():
        model.item_encoder.bert.embeddings.word_embeddings.weight.mul_(1.5)
    changed = encode_items(model, world["held"], cache_dir=tmp_path, show_progress=False)
    assert calls == [1] and changed.fingerprint != first.fingerprint
    assert not np.allclose(changed.vectors, first.vectors)
    assert len(list(tmp_path.glob("item_vectors-*.parquet"))) == 2


def test_history_cache_covers_training_histories_and_refreshes_as_its_cost_allows(world: dict) -> None:
    cfg = TextConfig.from_dict({**world["cfg"].to_dict(), "max_val_impressions": 4})
    per_step = cfg.batch_size * cfg.accumulate * (cfg.negatives + 1)
    assert refresh_interval(cfg, cached=per_step) == MIN_REFRESH_STEPS  # a small cache: as often as before
    assert refresh_interval(cfg, cached=40 * per_step + 1) == 41  # a large one: about its own cost in steps
    assert refresh_interval(TextConfig.from_dict({**cfg.to_dict(), "cache_refresh_steps": 3}), cached=40 * per_step) == 3
    model = load_text_model(world["out"])
    tokens = ItemTokens.from_items(pl.concat([world["items"], world["held"]]), model.tokenizer, cfg.fields, cfg.max_tokens)
    samples, val_rows, train_rows, val_used = _prepare(world["test"].with_columns(pl.col(Col.HISTORY).list.head(1)), cfg, tokens)
    assert len(val_rows) == 4  # the seeded validation sample, not every held-out impression
    assert set(train_rows) == {int(h[0]) for h in samples.histories if len(h)}  # only what training histories read
    module = TextModule(model, tokens, train_rows, val_used)
    module._refresh_cache()
    filled = set(np.flatnonzero(module._cache.abs().sum(1).numpy()))
    assert filled == set(train_rows.tolist())  # validation's candidates are not encoded at every training refresh
    module._refresh_cache(validation=True)
    filled = set(np.flatnonzero(module._cache.abs().sum(1).numpy()))
    assert filled == set(train_rows.tolist()) | set(val_used.tolist()) and set(val_used) - set(train_rows)


def test_features_handle_empty_histories_and_unknown_items(world: dict) -> None:
    model = load_text_model(world["out"])
    vecs = encode_items(model, world["items"], show_progress=False)
    v = vecs.vectors[vecs.index()["i1-3"]]
    imps = world["test"].head(3).with_columns(
        pl.Series(Col.HISTORY, [[], ["nobody", "i1-0", "i1-1", "i1-2", "i1-4"], ["nobody"]]),
        pl.Series(Col.CANDIDATES, [["i1-3", "nope"], ["i1-3", "nope"], ["i1-3", "nope"]]),
        pl.Series(Col.LABELS, [[1, 0]] * 3, dtype=pl.List(pl.Int8())),
    )
    feats = text_features(model, vecs, imps)
    assert feats.columns == [Col.IMPRESSION, Col.ITEM, *TEXT_FEATURES]
    assert all(feats.schema[f] == pl.Float32() for f in TEXT_FEATURES)
    assert feats.height == 6
    unknown = feats.filter(pl.col(Col.ITEM) == "nope")
    assert all(unknown[f].null_count() == 3 for f in TEXT_FEATURES)
    known = feats.filter(pl.col(Col.ITEM) == "i1-3")
    # Empty or all-unknown history: the learned default user vector scores; similarities are null.
    default = model.user_encoder.default.detach().numpy()
    for row in (0, 2):
        assert known["text_max_sim"][row] is None and known["text_recent_sim"][row] is None
        assert known["text_score"][row] == pytest.approx(float(default @ v), abs=1e-5)
    hist = np.stack([vecs.vectors[vecs.index()[i]] for i in ["i1-0", "i1-1", "i1-2", "i1-4"]])
    sims = hist @ v
    assert known["text_max_sim"][1] == pytest.approx(sims.max(), abs=1e-5)
    assert known["text_mean_sim"][1] == pytest.approx(sims.mean(), abs=1e-5)
    assert known["text_recent_sim"][1] == pytest.approx(sims[-3:].mean(), abs=1e-5)
    user = user_vectors(model, vecs, [["nobody", "i1-0", "i1-1", "i1-2", "i1-4"]])[0]
    assert known["text_score"][1] == pytest.approx(float(user @ v), abs=1e-5)


def test_training_options_bf16_lora_freeze_projection(world: dict, tmp_path: Path) -> None:
    cfg = tiny_config(world["encoder"], precision="bf16", lora_rank=2, freeze_layers=1, accumulate=2, projection_dim=8, in_batch_negatives=False,
                      pooling="cls", user_pooling="mean", max_steps=3, val_fraction=0.0, epochs=2)
    imps = topic_impressions(world["items"], n_users=24, per_user=2)
    out = train_text_model(imps, world["items"], cfg, tmp_path / "m", show_progress=False)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["steps"] == 3 and np.isfinite(metrics["history"][0]["train_loss"])
    with safe_open(out / "encoder" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]  # adapters merged: a plain BERT on disk
    model = load_text_model(out)
    vecs = encode_items(model, world["held"], show_progress=False)
    assert vecs.vectors.shape == (world["held"].height, 8)


def test_interaction_only_log_without_negatives_is_refused(world: dict, tmp_path: Path) -> None:
    positives = topic_impressions(world["items"], n_users=4, per_user=2).with_columns(
        pl.col(Col.CANDIDATES).list.head(1), pl.lit([1], dtype=pl.List(pl.Int8())).alias(Col.LABELS))
    with pytest.raises(RecsysError, match="fine-tunes on next items instead"):
        train_text_model(positives, world["items"], world["cfg"], tmp_path / "m", show_progress=False)


def test_config_is_checked_and_round_trips() -> None:
    cfg = TextConfig(max_tokens=32, fields=[Col.TITLE])  # type: ignore[arg-type]
    assert TextConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"pooling": "max"}, {"negatives": 0}, {"fields": ("colour",)}, {"precision": "fp16"}, {"val_fraction": 1.0}):
        with pytest.raises(RecsysError):
            TextConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(RecsysError, match="unknown"):
        TextConfig.from_dict({"max_token": 3})


def test_cli_train_encoder_then_encode(world: dict, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main
    from recsys.data import Dataset, build_manifest, save_dataset

    imps = topic_impressions(world["items"], n_users=12, per_user=3)
    save_dataset(Dataset(world["items"], imps, build_manifest(world["items"], imps, "test", "impressions")), tmp_path / "ds")
    runner = CliRunner()
    result = runner.invoke(main, ["train-encoder", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--encoder", str(world["encoder"]),
                                  "--fields", "title", "--max-tokens", "16", "--epochs", "1", "--precision", "fp32", "--device", "cpu",
                                  "--val-fraction", "0.25", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "validation AUC" in result.output
    result = runner.invoke(main, ["encode", str(tmp_path / "ds"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "v.parquet")])
    assert result.exit_code == 0, result.output
    vecs = ItemVectors.load(tmp_path / "v.parquet")
    assert vecs.ids == world["items"][Col.ITEM].to_list() and vecs.fingerprint == load_text_model(tmp_path / "m").fingerprint
    bad = runner.invoke(main, ["encode", str(tmp_path / "ds"), "--model", str(tmp_path), "--out", str(tmp_path / "w.parquet")])
    assert bad.exit_code == 1 and "not a text model" in bad.output
