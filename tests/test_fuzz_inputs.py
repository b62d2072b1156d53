"""Property-based hostile input: random corruptions of small valid inputs, through the whole CLI in-process.

For every generated case: exit 0, or exit 1 with one ``error:`` line naming the file or the option; never a
traceback. Under ``--skip-bad-rows``, corruptions that make rows invalid are counted rejects and every other
row of the dataset is the clean input's. Defaults are a few derandomized examples per test (the suite stays
fast); ``RECSYS_FUZZ_EXAMPLES=500 RECSYS_FUZZ_SEED=1 pytest tests/test_fuzz_inputs.py --hypothesis-show-statistics``
runs a long, different campaign (see tests/conftest_fuzz.py).
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import event
from hypothesis import strategies as st

from conftest_fuzz import ODD_IDS, ODD_VALUES, corrupted, corrupted_jsonl, corrupted_table, corrupted_toml, fuzz, run_cli
from conftest_shop import sequences, write_unisrec
from conftest_text import make_tiny_encoder, small_toml
from recsys.config import TrainConfig
from recsys.data import Col, Dataset

ITEMS = (b"item_id,title,abstract,category,tags,publish_time\nA,Apple pie,\"A sweet, warm pie\",food,sweet|warm,2020-01-01T00:00:00\n"
         b"B,Ball,,toys,,2020-01-02\nC,Cat,Small cat,pets,animal,1577836800\nD,Dog,Big dog,pets,,\nE,Egg,,food,,\n")
CLICKS = b"user_id,item_id,timestamp\n" + b"".join(
    f"u{i % 3},{'ABCDE'[i % 5]},{1_600_000_000 + 60 * i}\n".encode() for i in range(12))
IMPRESSIONS = b"user_id,item_id,timestamp,event,request_id\n" + b"".join(
    f"u{i % 2},{item},2020-09-13T12:{i:02d}:00{'+02:00' if i == 3 else ''},{ev},r{i}\n".encode()
    for i in range(6) for item, ev in (("ABCDE"[i % 5], "impression"), ("ABCDE"[(i + 1) % 5], "impression"), ("ABCDE"[i % 5], "click")))
NEWS = b"".join(f'N{i}\tnews\tworld\tTitle {i}\tAbstract {i}\thttp://x/{i}\t[{{"Label": "Thing {i}", "Type": "O"}}]\t[]\n'.encode() for i in range(1, 7))
BEHAVIORS = b"".join(f"{i}\tU{i % 3}\t11/15/2019 {i}:55:22 AM\tN{i} N{i % 6 + 1}\tN{i % 6 + 1}-1 N{(i + 2) % 6 + 1}-0\n".encode() for i in range(1, 9))
TEST_BEHAVIORS = b"".join(f"{i}\tU{i}\t11/16/2019 1:0{i}:00 PM\t\tN{i} N{i + 1}\n".encode() for i in range(1, 5))
# recommend_chunks names no file for a request without candidates (api.recommend_file would have to pass the path).
OPTION_VALUES = st.sampled_from(ODD_VALUES + ["1", "2", "3", "100000000", "1GB", "0GB", "5 GB", "-1MB"]) | st.integers().map(str) | st.floats().map(str) | st.text(max_size=4)


_ROOT = Path(tempfile.mkdtemp(prefix="recsys-fuzz-"))


def cases() -> Path:
    """A fresh directory for one case (removed by the case, or with the others at the end of the module)."""
    return Path(tempfile.mkdtemp(dir=_ROOT))


@pytest.fixture(scope="module", autouse=True)
def _remove_cases() -> Any:
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """A tiny trained model of each log kind (impressions: MIND from synth; interactions: a UniSRec shop log)."""
    root = tmp_path_factory.mktemp("worlds")
    encoder = make_tiny_encoder(root / "encoder")
    out = {}
    for kind in ("impressions", "interactions"):
        d = root / kind
        d.mkdir()
        (d / "small.toml").write_text(small_toml(encoder) + ("\n[retrieval]\nper_source = 8\n" if kind == "interactions" else ""))
        if kind == "impressions":
            assert run_cli(["synth", d / "mind", "--size", "tiny", "--seed", "3", "--format", "mind"], []).exit_code == 0  # type: ignore[union-attr]
            assert run_cli(["ingest", "mind", "--train", d / "mind" / "train", "--dev", d / "mind" / "dev", "--out", d / "data"], []).exit_code == 0  # type: ignore[union-attr]
        else:
            src = write_unisrec(d / "src", sequences(n_users=60, n_items=30, length=7, seed=2), 30)
            assert run_cli(["ingest", "amazon", src, "--out", d / "data"], []).exit_code == 0  # type: ignore[union-attr]
        res = run_cli(["train", d / "data", "--out", d / "model", "--config", d / "small.toml"], [])
        assert res is not None and res.exit_code == 0, res and res.output
        imps = pl.read_parquet(d / "data" / "impressions.parquet").sort(Col.TIME).tail(6)
        requests = imps.select(pl.format("q{}", pl.int_range(pl.len())).alias("request_id"), Col.USER, Col.HISTORY,
                               *([Col.CANDIDATES] if kind == "impressions" else []), pl.col(Col.TIME).dt.strftime("%Y-%m-%d %H:%M:%S"))
        out[kind] = {"dir": d, "data": d / "data", "model": d / "model", "requests": requests, "config": tomllib.loads((d / "small.toml").read_text())}
    return out


# --- ingest --------------------------------------------------------------------------------------


@fuzz(12)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ingest_events(fmt: str, data: st.DataObject) -> None:
    d = cases()
    log = data.draw(st.sampled_from([CLICKS, IMPRESSIONS]))
    target = data.draw(st.sampled_from(["items", "events"]))
    files = {"items": ITEMS, "events": log}
    if fmt == "csv":
        kind, files[target] = data.draw(corrupted(files[target]))
    else:
        table = pl.read_csv(files[target], infer_schema=False).to_arrow()
        kind, files[target] = data.draw(corrupted_table(table))
    event(f"{fmt} {target}: {kind}")
    paths = {}
    for name, content in files.items():
        paths[name] = d / f"{name}.{fmt if name == target else 'csv'}"
        paths[name].write_bytes(content)
    skip = ["--skip-bad-rows"] if data.draw(st.booleans()) else []
    run_cli(["ingest", "events", "--items", paths["items"], "--events", paths["events"], "--out", d / "out", *skip], [paths[target].name])
    shutil.rmtree(d)


@fuzz(15)
def test_ingest_mind(data: st.DataObject) -> None:
    d = cases()
    files = {"train/news.tsv": NEWS, "train/behaviors.tsv": BEHAVIORS, "test/news.tsv": NEWS, "test/behaviors.tsv": TEST_BEHAVIORS}
    target = data.draw(st.sampled_from(sorted(files)))
    kind, files[target] = data.draw(corrupted(files[target], b"\t", header=False))
    event(f"{target}: {kind}")
    for name, content in files.items():
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_bytes(content)
    skip = ["--skip-bad-rows"] if data.draw(st.booleans()) else []
    run_cli(["ingest", "mind", "--train", d / "train", "--test", d / "test", "--out", d / "out", *skip], [d / target])
    shutil.rmtree(d)


@fuzz(15)
def test_ingest_amazon(data: st.DataObject) -> None:
    d = cases()
    src = write_unisrec(d / "src", sequences(n_users=8, n_items=10, length=6, seed=1), 10)
    target = src / data.draw(st.sampled_from(sorted(p.name for p in src.iterdir())))
    kind, content = data.draw(corrupted(target.read_bytes(), b"\t", header=not target.name.endswith("index")))
    event(f"{target.suffix}: {kind}")
    target.write_bytes(content)
    run_cli(["ingest", "amazon", src, "--out", d / "out"], [target.name, src])
    shutil.rmtree(d)


# --- rows that the loader flags are the only rows that change ------------------------------------------

# Corruptions that make one row invalid: (field index or None for the whole line, new text).
INVALID_EVENT = [(0, ""), (1, " "), (0, "u\udcff"), (2, "NaN"), (2, "1e300"), (2, "oops"), (2, ""), (2, "inf"), (2, "99999999999999999999"),
                 (None, "{line},x"), (None, "{short}"), (1, 'B"x')]
INVALID_BEHAVIOR = [(1, ""), (2, "13/45/2019 8:55:22 AM"), (2, "NaN"), (4, "N1-2 N2-0"), (4, ""), (4, "N1 N2-0"), (None, "{line}\tx"),
                    (None, "{short}"), (4, "N1--1")]


def _invalidate(lines: list[bytes], which: set[int], choices: list[tuple[int | None, str]], data: st.DataObject, sep: str) -> list[bytes]:
    """``lines`` with each line index in ``which`` made invalid by one of ``choices``."""
    out = list(lines)
    for i in which:
        field, text = data.draw(st.sampled_from(choices))
        line = lines[i].decode()
        fields = line.split(sep)
        if field is None:
            new = text.format(line=line, short=sep.join(fields[:-1]))
        else:
            fields[field] = text
            new = sep.join(fields)
        out[i] = new.encode("utf-8", "surrogateescape")
    return out


def _rows_by(path: Path, key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in pl.read_parquet(path).to_dicts()}


def _rejected(out: Path) -> set[tuple[str, int]]:
    rejects = out / "rejects.parquet"
    return set(pl.read_parquet(rejects).select(pl.col("file").str.split("/").list.last(), "line").rows()) if rejects.exists() else set()


def _is_subsequence(short: list[Any], long: list[Any]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


@fuzz(10)
def test_skipped_event_rows_leave_the_others_unchanged(data: st.DataObject) -> None:
    d = cases()
    (d / "items.csv").write_bytes(ITEMS)
    lines = CLICKS.rstrip(b"\n").split(b"\n")
    which = set(data.draw(st.lists(st.integers(1, len(lines) - 1), min_size=1, max_size=4)))
    corrupt = _invalidate(lines, which, INVALID_EVENT, data, ",")
    args = ["--skip-bad-rows", "--dev-fraction", "0", "--max-history", "1000"]
    (d / "clean.csv").write_bytes(CLICKS)
    (d / "events.csv").write_bytes(b"\n".join(corrupt) + b"\n")
    assert run_cli(["ingest", "events", "--items", d / "items.csv", "--events", d / "clean.csv", "--out", d / "clean", *args], []).exit_code == 0  # type: ignore[union-attr]
    res = run_cli(["ingest", "events", "--items", d / "items.csv", "--events", d / "events.csv", "--out", d / "out", *args], ["events.csv"])
    if res is None or res.exit_code == 1:
        assert res is None or "no rows" in res.output or "no valid rows" in res.output, res.output
        return
    assert _rejected(d / "out") == {("events.csv", i + 1) for i in which}
    clean, got = _rows_by(d / "clean" / "impressions.parquet", Col.IMPRESSION), _rows_by(d / "out" / "impressions.parquet", Col.IMPRESSION)
    assert set(got) == set(clean) - {f"e{i + 1}" for i in which}
    for key, row in got.items():
        assert _is_subsequence(row.pop(Col.HISTORY), clean[key].pop(Col.HISTORY)), key
        assert row == clean[key], key
    assert pl.read_parquet(d / "out" / "items.parquet").equals(pl.read_parquet(d / "clean" / "items.parquet"))
    shutil.rmtree(d)


@fuzz(10)
def test_skipped_mind_rows_leave_the_others_unchanged(data: st.DataObject) -> None:
    d = cases()
    lines = BEHAVIORS.rstrip(b"\n").split(b"\n")
    which = set(data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=1, max_size=2)))
    corrupt = _invalidate(lines, which, INVALID_BEHAVIOR, data, "\t")
    kept = [i for i in range(len(lines)) if i not in which]
    if kept and data.draw(st.booleans()):  # a kept impression's id repeated at the end is a reject too
        which.add(len(corrupt))
        corrupt.append(lines[data.draw(st.sampled_from(kept))])
    for name, behaviors in (("clean", BEHAVIORS), ("bad", b"\n".join(corrupt) + b"\n")):
        (d / name).mkdir()
        (d / name / "news.tsv").write_bytes(NEWS)
        (d / name / "behaviors.tsv").write_bytes(behaviors)
    assert run_cli(["ingest", "mind", "--train", d / "clean", "--out", d / "clean-out"], []).exit_code == 0  # type: ignore[union-attr]
    res = run_cli(["ingest", "mind", "--train", d / "bad", "--out", d / "out", "--skip-bad-rows"], ["behaviors.tsv"])
    assert res is not None and res.exit_code == 0, res and res.output
    assert _rejected(d / "out") == {("behaviors.tsv", i + 1) for i in which}
    clean, got = _rows_by(d / "clean-out" / "impressions.parquet", Col.IMPRESSION), _rows_by(d / "out" / "impressions.parquet", Col.IMPRESSION)
    assert got == {k: v for k, v in clean.items() if int(k.split("-")[1]) - 1 not in which}
    shutil.rmtree(d)


# --- recommend, train, evaluate against tiny trained models ---------------------------------------------


def _write_requests(requests: pl.DataFrame, fmt: str, data: st.DataObject) -> tuple[str, bytes]:
    if fmt == "jsonl":
        return data.draw(corrupted_jsonl(requests.to_dicts()))
    if fmt == "parquet":
        return data.draw(corrupted_table(requests.to_arrow()))
    return data.draw(corrupted(_flat(requests).write_csv().encode()))


@fuzz(6)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("kind", ["impressions", "interactions"])
def test_recommend_requests(worlds: dict[str, dict[str, Any]], kind: str, fmt: str, data: st.DataObject) -> None:
    d = cases()
    corruption, content = _write_requests(worlds[kind]["requests"], fmt, data)
    event(f"{fmt}: {corruption}")
    (d / f"requests.{fmt}").write_bytes(content)
    res = run_cli(["recommend", worlds[kind]["model"], d / f"requests.{fmt}", "--top-k", "3", "--out", d / "recs.parquet"], [f"requests.{fmt}"])
    if res is not None and res.exit_code == 0:
        assert (pl.read_parquet(d / "recs.parquet").group_by("request_id").len()["len"] <= 3).all()
    shutil.rmtree(d)


def _flat(requests: pl.DataFrame) -> pl.DataFrame:
    return requests.with_columns(pl.col(c).list.join(" ") for c in (Col.HISTORY, Col.CANDIDATES) if c in requests.columns)


@fuzz(6)
@pytest.mark.parametrize("kind", ["impressions", "interactions"])
def test_a_bad_request_leaves_the_others_alone(worlds: dict[str, dict[str, Any]], kind: str, data: st.DataObject) -> None:
    """One request with an odd value is refused (the file is) or ranked on its own: every other list is the clean one."""
    d = cases()
    clean = _flat(worlds[kind]["requests"])
    row = data.draw(st.integers(0, clean.height - 1))
    column = data.draw(st.sampled_from([c for c in clean.columns if c != "request_id"]))
    value = data.draw(st.sampled_from(ODD_IDS + ODD_VALUES) | st.text(max_size=6))
    if column in (Col.HISTORY, Col.CANDIDATES) and data.draw(st.booleans()):
        value = f"{clean[column][row]} {value}"  # an odd id among good ones
    event(f"odd {column}")
    bad = clean.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))
    bad.write_csv(d / "bad.csv")
    if "clean recs" not in worlds[kind]:
        clean.write_csv(d / "clean.csv")
        res = run_cli(["recommend", worlds[kind]["model"], d / "clean.csv", "--top-k", "3", "--out", d / "clean.parquet"], [])
        assert res is not None and res.exit_code == 0, res and res.output
        worlds[kind]["clean recs"] = pl.read_parquet(d / "clean.parquet").drop("generated_at")
    res = run_cli(["recommend", worlds[kind]["model"], d / "bad.csv", "--top-k", "3", "--out", d / "bad.parquet"], ["bad.csv"])
    if res is not None and res.exit_code == 0:
        others = pl.col("request_id") != clean["request_id"][row]
        want, got = worlds[kind]["clean recs"].filter(others), pl.read_parquet(d / "bad.parquet").filter(others).drop("generated_at")
        assert got.equals(want), f"row {row + 2}, {column} = {value!r} changed other requests' lists"
    shutil.rmtree(d)


@fuzz(8)
@pytest.mark.parametrize("kind", ["impressions", "interactions"])
def test_recommend_options(worlds: dict[str, dict[str, Any]], kind: str, data: st.DataObject) -> None:
    d = cases()
    worlds[kind]["requests"].write_parquet(d / "requests.parquet")
    options = data.draw(st.lists(st.sampled_from(["--top-k", "--chunk-size"]), min_size=1, max_size=2, unique=True))
    values = [f"{o}={data.draw(OPTION_VALUES)}" for o in options]
    run_cli(["recommend", worlds[kind]["model"], d / "requests.parquet", *values, "--out", d / "recs.parquet"], options)
    shutil.rmtree(d)


@fuzz(6)
@pytest.mark.parametrize("kind", ["impressions", "interactions"])
def test_train_config(worlds: dict[str, dict[str, Any]], kind: str, data: st.DataObject) -> None:
    """A corrupted --config retrains into a copy of the model (only the stages it changes rerun)."""
    d = cases()
    shutil.copytree(worlds[kind]["model"], d / "model")
    known = TrainConfig.for_dataset(Dataset.load(worlds[kind]["data"]).manifest).to_dict()
    corruption, content = data.draw(corrupted_toml(worlds[kind]["config"], known))
    event(corruption)
    (d / "config.toml").write_bytes(content)
    # A value checked only when it meets the encoder or the data names the setting (e.g. text.encoder), not the file.
    settings = [f"{t}.{k}" for t, table in known.items() if isinstance(table, dict) for k in table]
    if corruption.startswith("toml setting "):
        settings.append(corruption.rpartition(".")[2])
    run_cli(["train", worlds[kind]["data"], "--out", d / "model", "--config", d / "config.toml"], ["config.toml", *settings])
    shutil.rmtree(d)


TRAIN_OPTIONS = ["--memory-limit", "--threads", "--epochs", "--max-tokens", "--text-fraction", "--max-train-impressions"]


@fuzz(6)
@pytest.mark.parametrize("kind", ["impressions", "interactions"])
def test_train_and_evaluate_options(worlds: dict[str, dict[str, Any]], kind: str, data: st.DataObject) -> None:
    d = cases()
    world = worlds[kind]
    if data.draw(st.booleans()):
        shutil.copytree(world["model"], d / "model")
        options = data.draw(st.lists(st.sampled_from(TRAIN_OPTIONS), min_size=1, max_size=2, unique=True))
        values = [f"{o}={data.draw(OPTION_VALUES)}" for o in options]
        run_cli(["train", world["data"], "--out", d / "model", "--config", world["dir"] / "small.toml", *values], options)
    else:
        split = data.draw(st.sampled_from(["dev", "test", "train", "Dev", "", "x"]))
        # A split may be empty in the data: the error names the dataset then.
        run_cli(["evaluate", world["model"], "--report", d / "report", f"--split={split}"], ["--split", world["data"]])
    shutil.rmtree(d)


INGEST_OPTIONS = ["--session-gap", "--dev-fraction", "--test-fraction", "--max-history"]


@fuzz(10)
def test_ingest_options(data: st.DataObject) -> None:
    d = cases()
    (d / "items.csv").write_bytes(ITEMS)
    (d / "events.csv").write_bytes(data.draw(st.sampled_from([CLICKS, IMPRESSIONS])))
    options = data.draw(st.lists(st.sampled_from(INGEST_OPTIONS), min_size=1, max_size=3, unique=True))
    values = [f"{o}={data.draw(OPTION_VALUES)}" for o in options]
    run_cli(["ingest", "events", "--items", d / "items.csv", "--events", d / "events.csv", "--out", d / "out", *values], options)
    shutil.rmtree(d)


def test_clean_requests_agree_across_formats(worlds: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The clean request files of every format give the same lists (the baseline the corruptions start from)."""
    for kind, world in worlds.items():
        outs = []
        for fmt in ("csv", "jsonl", "parquet"):
            path = tmp_path / f"{kind}.{fmt}"
            req = world["requests"]
            if fmt == "csv":
                _flat(req).write_csv(path)
            else:
                getattr(req, "write_ndjson" if fmt == "jsonl" else "write_parquet")(path)
            res = run_cli(["recommend", world["model"], path, "--top-k", "3", "--out", tmp_path / f"{kind}-{fmt}.parquet"], [])
            assert res is not None and res.exit_code == 0, res and res.output
            outs.append(pl.read_parquet(tmp_path / f"{kind}-{fmt}.parquet").drop("generated_at"))
        assert outs[0].equals(outs[1]) and outs[0].equals(outs[2]), kind
