"""SIGKILL at random moments of `ingest`, `train`, `recommend` and `export` (the CLI, in a subprocess).

For each command an uninterrupted reference run is timed: when it first and last changed its output
(before, the process only imports; after, it only exits). Each kill lands a seeded delay after the
killed run's own first write, the delays spread over the reference's writing window. After each kill
nothing a reader would find may be half-written: an output is absent or complete and valid. Kills
chain: a run after a kill resumes from what the kill left, so later kills land in re-runs. The
finishing re-run must succeed, leave no hidden ``.*.tmp`` file, and write exactly the reference's
bytes (fields that record a clock time are compared with those fields left out: :data:`CLOCK_FIELDS`).
Train's kills run in a background thread while the other commands' run (two cores).

Three fast tests pin the mechanisms that a random kill may miss: the temp file of a killed writer is
removed while a live writer's is kept; a stage stopped midway is redone, with every stage after it and
without a model.json meanwhile; a dataset rewrite stopped midway leaves no manifest over mixed files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from conftest_text import make_tiny_encoder, small_toml
from recsys.data import Col, load_dataset
from recsys.io import atomic_path, write_parquet
from recsys.model import read_model_json
from recsys.stages import Stages

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
KILLS, SEED = 3, 1729
EXPORT_ROWS = 1_500_000  # enough for export to write for a while


def _snapshot(watch: Path) -> dict[str, int]:
    try:
        return {str(p): p.stat().st_mtime_ns for p in watch.rglob("*")} if watch.exists() else {}
    except OSError:  # a file went away while we looked: something changed
        return {"": -1}


def _run(args: tuple[object, ...], watch: Path, kill_after: float | None = None) -> tuple[float, float, bool]:
    """Run the CLI; SIGKILL it `kill_after` s after its first change under `watch` (if still running then).

    Returns:
        (seconds from start to the first and to the last change seen under `watch`, whether it was killed).
    """
    before, start = _snapshot(watch), time.perf_counter()
    first = last = 0.0
    with tempfile.TemporaryFile() as err:
        # Own process group: the kill takes any helper process with it, as a machine-level kill would.
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], env=ENV, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        while proc.poll() is None:
            now, seen = time.perf_counter() - start, _snapshot(watch)
            if seen != before:
                first, last, before = first or now, now, seen
            if kill_after is not None and first and now - first >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return first, last, True
            time.sleep(0.01)
        err.seek(0)
        assert proc.returncode == 0, err.read().decode()[-3000:]
    return first, last, False


def run(*args: object, watch: Path) -> tuple[float, float]:
    """Run to completion; return its writing window: seconds from start to its first and last change under `watch`."""
    return _run(args, watch)[:2]


def killed(*args: object, watch: Path, after: float) -> bool:
    """Run and SIGKILL it `after` s after its first change under `watch`; True if it was still running then.

    Timing from the first write, not the start, keeps the kill in the writing window whatever the imports took.
    """
    return _run(args, watch, after)[2]


def kill_points(window: tuple[float, float], salt: str) -> list[float]:
    """KILLS seeded delays after the first write, one in each third of the reference run's writing window."""
    first, last = window
    rng = random.Random(f"{SEED}-{salt}")
    return [(last - first) * (k + rng.random()) / KILLS for k in range(KILLS)]


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


# Fields that record a clock time (when, or how long): they legitimately differ between two runs.
# Per file (path relative to the output): JSON key paths, "*" matching any key at that level.
CLOCK_FIELDS: dict[str, list[tuple[str, ...]]] = {
    "model.json": [("trained_at",), ("stages", "*", "seconds"), ("stages", "*", "finished"), ("summary", "stage_seconds"),
                   # sha256 of the files below, which hold a clock time themselves
                   ("artifacts", "ranker/ranker.json"), ("artifacts", "ranker_no_text/ranker.json"),
                   ("artifacts", "text/train_metrics.json")],
    "stages.json": [("*", "seconds"), ("*", "finished")],
    "ranker/ranker.json": [("trained_at",)],
    "ranker_no_text/ranker.json": [("trained_at",)],
    "text/train_metrics.json": [("seconds",)],
    "selection.json": [("*", "seconds"), ("*", "trials_run", "*", "seconds")],
}


def scrub(obj: Any, path: tuple[str, ...]) -> None:
    """Delete the key path `path` (with "*" wildcards, which also match every item of a list) from `obj` in place."""
    if isinstance(obj, list) and path[:1] == ("*",):
        for item in obj:
            scrub(item, path[1:])
        return
    if not isinstance(obj, dict) or not path:
        return
    keys = list(obj) if path[0] == "*" else [path[0]]
    for key in keys:
        if len(path) == 1:
            obj.pop(key, None)
        else:
            scrub(obj.get(key), path[1:])


def assert_same_tree(ref: Path, out: Path) -> None:
    """Same files with the same bytes, except clock fields of :data:`CLOCK_FIELDS`."""
    files = {str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file()}
    assert files == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for rel in sorted(files):
        a, b = (ref / rel).read_bytes(), (out / rel).read_bytes()
        if rel in CLOCK_FIELDS:
            ja, jb = json.loads(a), json.loads(b)
            for field in CLOCK_FIELDS[rel]:
                scrub(ja, field)
                scrub(jb, field)
            assert ja == jb, rel
        else:
            assert a == b, rel


def chain(args: tuple[object, ...], watch: Path, timing: tuple[float, float], salt: str, check: Callable[[], None],
          points: list[float] | None = None) -> int:
    """Kill `args` at each kill point, checking after each; return how many kills hit a running process."""
    hits = 0
    for after in kill_points(timing, salt) if points is None else points:
        hits += killed(*args, watch=watch, after=after)
        check()
    return hits


def check_model(out: Path) -> None:
    """model.json present only if every artifact it lists is the one it hashed."""
    if (out / "model.json").exists():
        read_model_json(out)


def train_chain(w: dict[str, Any]) -> int:
    """Kill train twice from scratch, finish; kill a forced retrain over the finished model, finish."""
    out = w["root"] / "train" / "model"
    args = ("train", w["data"], "--out", out, "--config", w["config"])
    points = kill_points(w["train"], "train")
    hits = chain(args, out.parent, w["train"], "train", lambda: check_model(out), points[:2])
    run(*args, watch=out.parent)
    assert_same_tree(w["model"], out)
    # Over a finished model: the old model.json must go, and the stage cache must not trust a half rewrite.
    hits += chain((*args, "--force"), out.parent, w["train"], "train", lambda: check_model(out), points[2:])
    run(*args, watch=out.parent)
    assert_same_tree(w["model"], out)
    assert not temp_files(out.parent)
    return hits


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Tiny MIND data, uninterrupted reference runs of every command (timed), and train's kills started."""
    root = tmp_path_factory.mktemp("kill")
    encoder = make_tiny_encoder(root / "encoder")
    (root / "small.toml").write_text(small_toml(encoder))
    run("synth", root / "mind", "--size", "tiny", "--seed", "3", "--format", "mind", watch=root)
    w: dict[str, Any] = {"root": root, "config": root / "small.toml", "data": root / "ref" / "data", "model": root / "ref" / "model"}
    w["ingest_args"] = ("ingest", "mind", "--train", root / "mind" / "train", "--dev", root / "mind" / "dev", "--out")
    w["ingest"] = run(*w["ingest_args"], w["data"], watch=root / "ref")
    w["train"] = run("train", w["data"], "--out", w["model"], "--config", w["config"], watch=root / "ref")
    pool = ThreadPoolExecutor(1)
    if any(item.name == "test_train" for item in request.session.items):
        w["train_chain"] = pool.submit(train_chain, w)  # in the background from here on
    dev = pl.read_parquet(w["data"] / "impressions.parquet").filter(pl.col(Col.SPLIT) == "dev").head(40)
    dev.select(Col.USER, Col.CANDIDATES).write_parquet(root / "requests.parquet")
    w["recommend_args"] = ("recommend", w["model"], root / "requests.parquet", "--top-k", "3", "--out")
    w["recs"] = root / "ref" / "recs" / "recs.parquet"
    w["recs"].parent.mkdir()
    w["recommend"] = run(*w["recommend_args"], w["recs"], watch=w["recs"].parent)
    recs = pl.read_parquet(w["recs"])
    w["big"] = root / "big.parquet"  # the ranked lists, repeated under new request ids
    recs.select(pl.all().gather(pl.int_range(EXPORT_ROWS) % recs.height)).with_columns(
        pl.int_range(EXPORT_ROWS).cast(pl.String).str.zfill(7).alias("request_id")).write_parquet(w["big"])
    w["export_ref"] = root / "ref" / "export" / "recs.parquet"
    w["export_ref"].parent.mkdir()
    w["export"] = run("export", w["big"], "--to", w["export_ref"], watch=w["export_ref"].parent)
    w["old"] = root / "old.parquet"  # what the DuckDB table holds before: as the kills will find it
    recs.with_columns(pl.lit("old").alias("model_id")).write_parquet(w["old"])
    w["duckdb_ref"] = root / "ref" / "duckdb"
    run("export", w["old"], "--to", f"duckdb://{w['duckdb_ref'] / 'recs.db'}?table=recs", watch=root)
    w["duckdb"] = run("export", w["big"], "--to", f"duckdb://{w['duckdb_ref'] / 'recs.db'}?table=recs", watch=w["duckdb_ref"])
    yield w
    pool.shutdown()


@pytest.mark.slow
def test_ingest(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "data"

    def check() -> None:  # manifest.json present only over complete files that it describes
        if (out / "manifest.json").exists():
            ds = load_dataset(out)
            assert (ds.items.height, ds.impressions.height) == (ds.manifest["items"], ds.manifest["impressions"])

    hits = chain((*world["ingest_args"], out), tmp_path, world["ingest"], "ingest", check)
    run(*world["ingest_args"], out, watch=tmp_path)
    assert_same_tree(world["data"], out)
    # Kills while re-ingesting other data (train only) over the finished dataset: no old manifest over new files.
    hits += chain((*world["ingest_args"][:4], "--out", out), tmp_path, world["ingest"], "reingest", check)
    run(*world["ingest_args"], out, watch=tmp_path)
    assert_same_tree(world["data"], out)
    assert not temp_files(tmp_path) and hits >= 1


@pytest.mark.slow
def test_recommend(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"
    ref = pl.read_parquet(world["recs"])

    def check() -> None:
        if out.exists():
            assert pl.read_parquet(out).height == ref.height

    hits = chain((*world["recommend_args"], out), tmp_path, world["recommend"], "recommend", check)
    run(*world["recommend_args"], out, watch=tmp_path)
    # generated_at is the wall-clock time of the run; every other value must match the reference.
    assert pl.read_parquet(out).drop("generated_at").equals(ref.drop("generated_at"))
    assert not temp_files(tmp_path) and hits >= 1


@pytest.mark.slow
def test_export_parquet(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"

    def check() -> None:
        if out.exists():
            assert pl.scan_parquet(out).select(pl.len()).collect().item() == EXPORT_ROWS

    hits = chain(("export", world["big"], "--to", out), tmp_path, world["export"], "export", check)
    run("export", world["big"], "--to", out, watch=tmp_path)
    assert out.read_bytes() == world["export_ref"].read_bytes()
    assert not temp_files(tmp_path) and hits >= 1


@pytest.mark.slow
def test_export_duckdb(world: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "out" / "recs.db"
    run("export", world["old"], "--to", f"duckdb://{db}?table=recs", watch=tmp_path)

    def table(path: Path) -> tuple[int, int]:
        """Row count and an order-free checksum of the rows: old and new differ in both."""
        with duckdb.connect(str(path)) as con:
            assert [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == ["recs"]
            return con.execute("SELECT count(*), bit_xor(hash(request_id, user_id, rank, item_id, score, model_id)) FROM recs").fetchone()

    new = table(world["duckdb_ref"] / "recs.db")
    assert new[0] == EXPORT_ROWS
    before = table(db)

    def check() -> None:  # the old rows or the new ones, never a mix
        assert table(db) in (before, new)

    hits = chain(("export", world["big"], "--to", f"duckdb://{db}?table=recs"), db.parent, world["duckdb"], "duckdb", check)
    run("export", world["big"], "--to", f"duckdb://{db}?table=recs", watch=db.parent)
    assert table(db) == new
    assert not temp_files(tmp_path) and hits >= 1


@pytest.mark.slow
def test_train(world: dict[str, Any]) -> None:
    assert world["train_chain"].result() >= 1


# --- the mechanisms, without timing luck ---------------------------------------------------------


def test_killed_writers_temp_file_is_removed_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    code = ("import os, signal, sys; from recsys.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=ENV).returncode == -signal.SIGKILL
    (dead,) = temp_files(tmp_path)
    legacy = tmp_path / ".t.parquet.abcdefgh.tmp"  # no lock, fresh: maybe a live writer of an older version
    legacy.write_text("x")
    df = pl.DataFrame({"a": [1]})
    with atomic_path(target) as live:
        live.write_text("writing")
        write_parquet(df, target)  # another writer of the same target meanwhile
        assert not dead.exists() and live.exists() and legacy.exists()
    assert temp_files(tmp_path) == [legacy] and target.read_text() == "writing"


def test_a_stage_stopped_midway_is_redone_with_every_later_one(tmp_path: Path) -> None:
    ran: list[str] = []

    def work(name: str, stop: bool = False) -> Callable[[], None]:
        def go() -> None:
            ran.append(name)
            (tmp_path / name).write_text("half" if stop else "whole")
            if stop:
                raise KeyboardInterrupt  # stands in for a kill: the process ends inside the stage
        return go

    first = Stages(tmp_path, force=False)
    first.run("a", 1, [tmp_path / "a"], work("a"))
    first.run("b", 1, [tmp_path / "b"], work("b"))
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path, force=True).run("a", 1, [tmp_path / "a"], work("a", stop=True))
    assert not (tmp_path / "model.json").exists()
    again = Stages(tmp_path, force=False)
    assert again.done == {}
    again.run("a", 1, [tmp_path / "a"], work("a"))
    again.run("b", 1, [tmp_path / "b"], work("b"))
    assert ran == ["a", "b", "a", "a", "b"] and (tmp_path / "a").read_text() == "whole"


def test_a_dataset_rewrite_stopped_midway_leaves_no_manifest(sample_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.loaders import writer
    from recsys.loaders.rejects import BadRows

    def ingest(impressions: pl.DataFrame) -> None:
        with writer.write_dataset(tmp_path, sample_dataset.items, BadRows("raise"), "test", "impressions") as w:
            w.write(impressions, "sample")

    ingest(sample_dataset.impressions)
    assert load_dataset(tmp_path).impressions.height == sample_dataset.impressions.height

    def stop(*args: object) -> None:
        raise KeyboardInterrupt  # stands in for a kill: new impressions in place, items and manifest not yet

    monkeypatch.setattr(writer, "write_parquet", stop)
    with pytest.raises(KeyboardInterrupt):
        ingest(sample_dataset.impressions.head(10))
    assert pl.read_parquet(tmp_path / "impressions.parquet").height == 10 and not (tmp_path / "manifest.json").exists()
