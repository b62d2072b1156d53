"""Corruptions of valid inputs and the CLI error contract, for tests/test_fuzz_inputs.py (imported explicitly).

Each ``corrupted*`` strategy draws one corruption of the given valid input and returns ``(kind, corrupted)``;
the kind is recorded as a Hypothesis event, so ``--hypothesis-show-statistics`` shows which ran.
``RECSYS_FUZZ_EXAMPLES=N`` runs N examples per test instead of the small default;
``RECSYS_FUZZ_SEED=S`` draws other (still reproducible) examples than the fixed default seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, currently_in_test_context, event, given, seed, settings
from hypothesis import strategies as st

from cli import main

EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "0"))
SEED = os.environ.get("RECSYS_FUZZ_SEED")
# One case may run no longer than this (a corrupted config may legitimately ask for a long training).
CASE_SECONDS = float(os.environ.get("RECSYS_FUZZ_CASE_SECONDS", "30"))
CASE_MEMORY = int(float(os.environ.get("RECSYS_FUZZ_CASE_GB", "3")) * 2**30)

BOM = b"\xef\xbb\xbf"
ODD_VALUES = ["", " ", "NaN", "nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "1e-320", "99999999999999999999999",
              "-9223372036854775809", "1.5", "0x1F", "null", "None", "[]", "{}", '"', "\\N", "2019-02-30", "0000-00-00",
              "11/15/2019 8:55:22 XM", "13/45/2019 8:55:22 AM", "1970-01-01T00:00:00+25:00", "NaT"]
ODD_IDS = ["a,b", "a\tb", "a b", 'a"b', "a\nb", "a\r", "a-1", "a#1", "ä", "\u200b", "\x00", "a|b", " lead", "-", "--", "a-", "😀",
           "N1-0", "N1-1", "[1]", "e2", "train-1"]
BAD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\r", BOM, b"\xf4\x90\x80\x80"]
DELIMITERS = [b",", b"\t", b";", b"|", b" ", b""]


def fuzz(default_examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A property over ``data`` (``st.data()``): few derandomized examples by default, more with the env vars."""
    chosen = settings(max_examples=EXAMPLES or default_examples, derandomize=SEED is None, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=True)

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        test = chosen(given(data=st.data())(test))
        return seed(int(SEED))(test) if SEED is not None else test

    return wrap


# --- the error contract ------------------------------------------------------------------------


class TooSlow(BaseException):
    """A case ran past CASE_SECONDS (a BaseException, so neither the CLI nor CliRunner swallows it)."""


def _address_space() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


@contextlib.contextmanager
def case_limits(seconds: float = CASE_SECONDS, extra_bytes: int = CASE_MEMORY) -> Iterator[None]:
    """Stop a case after ``seconds`` (:class:`TooSlow`), and make it fail with MemoryError instead of calling the
    OOM killer on the machine when it allocates ``extra_bytes`` more address space (e.g. a setting of 10^9)."""

    def stop(signum: int, frame: object) -> None:
        raise TooSlow

    previous = signal.signal(signal.SIGALRM, stop)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(_address_space() + extra_bytes, hard if hard > 0 else 2**62), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def note(value: str) -> None:
    """A Hypothesis event (shown with ``--hypothesis-show-statistics``); outside a property, nothing."""
    if currently_in_test_context():
        event(value)


def run_cli(args: Sequence[object], names: Sequence[object]) -> Result | None:
    """Run `recsys ARGS` in-process and check the error contract; return the result (None: ran too long).

    The contract: exit 0, or exit 1 whose last output line is one ``error: `` line naming one of
    ``names`` (the files and options of the case); never a traceback or any other exit status.
    """
    try:
        with case_limits():
            result = CliRunner().invoke(main, [str(a) for a in args])
    except TooSlow:
        note("stopped: ran longer than the case limit")
        return None
    where = f"recsys {' '.join(map(str, args))}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{where}: uncaught {''.join(traceback.format_exception(*result.exc_info))}")  # type: ignore[misc]
    out = result.output
    assert "Traceback" not in out, f"{where}:\n{out[-3000:]}"
    assert result.exit_code in (0, 1), f"{where}: exit {result.exit_code}\n{out[-3000:]}"
    if result.exit_code == 1:
        last = out.rstrip("\n").rsplit("\n", 1)[-1]
        assert last.startswith("error: ") and out.endswith(last + "\n"), f"{where}: not one error line:\n{out[-3000:]}"
        assert any(str(n) in last for n in names), f"{where}: names none of {[str(n) for n in names]}: {last}"
        note(f"exit 1: {error_kind(last)}")
    else:
        note("exit 0")
    return result


def error_kind(line: str) -> str:
    """The error line without paths, values and numbers, so that events group alike errors."""
    text = re.sub(r"/[^\s,:']*", "<path>", line.removeprefix("error: "))
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'?'", text)
    return re.sub(r"(?<![\w-])-?\d[\d.e+-]*", "N", text)[:90]


# --- corruptions of text files -----------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _pick(draw: Any, seq: Sequence[Any]) -> Any:
    return draw(st.sampled_from(list(seq)))


def _line_index(draw: Any, lines: list[bytes], first: int) -> int:
    real = [i for i, line in enumerate(lines) if line and i >= first] or [0]
    return _pick(draw, real)


def _set_field(draw: Any, data: bytes, sep: bytes, first: int, value: bytes) -> bytes:
    lines = _lines(data)
    i = _line_index(draw, lines, first)
    fields = lines[i].split(sep)
    fields[draw(st.integers(0, len(fields) - 1))] = value
    lines[i] = sep.join(fields)
    return b"\n".join(lines)


def _columns(draw: Any, data: bytes, sep: bytes, op: str) -> bytes:
    rows = [line.split(sep) if line else [] for line in _lines(data)]
    width = max(len(r) for r in rows)
    j, k = draw(st.integers(0, width - 1)), draw(st.integers(0, width - 1))
    for r in rows:
        if len(r) > max(j, k):
            if op == "delete":
                del r[j]
            elif op == "duplicate":
                r.insert(k, r[j])
            else:
                r[j], r[k] = r[k], r[j]
    return b"\n".join(sep.join(r) for r in rows)


def _rows(draw: Any, data: bytes, first: int, op: str) -> bytes:
    lines = _lines(data)
    i, j = _line_index(draw, lines, first), _line_index(draw, lines, first)
    if op == "duplicate":
        lines[i:i] = [lines[i]] * draw(st.integers(1, 3))
    elif op == "delete":
        del lines[i]
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _insert(draw: Any, data: bytes, piece: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + piece + data[at:]


def _flip(draw: Any, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


TEXT_CORRUPTIONS: dict[str, Callable[[Any, bytes, bytes, int], bytes]] = {
    "byte flips": lambda draw, d, sep, first: _flip(draw, d),
    "truncated": lambda draw, d, sep, first: d[: draw(st.integers(0, max(len(d) - 1, 0)))],
    "empty file": lambda draw, d, sep, first: b"",
    "BOM": lambda draw, d, sep, first: BOM + d,
    "invalid UTF-8": lambda draw, d, sep, first: _insert(draw, d, _pick(draw, BAD_BYTES)),
    "random unicode": lambda draw, d, sep, first: _insert(draw, d, draw(st.text(min_size=1, max_size=6)).encode("utf-8", "surrogatepass")),
    "deleted column": lambda draw, d, sep, first: _columns(draw, d, sep, "delete"),
    "duplicated column": lambda draw, d, sep, first: _columns(draw, d, sep, "duplicate"),
    "swapped columns": lambda draw, d, sep, first: _columns(draw, d, sep, "swap"),
    "wrong delimiter": lambda draw, d, sep, first: d.replace(sep, _pick(draw, [x for x in DELIMITERS if x != sep])),
    "odd value": lambda draw, d, sep, first: _set_field(draw, d, sep, first, _pick(draw, ODD_VALUES).encode()),
    "odd id": lambda draw, d, sep, first: _set_field(draw, d, sep, first, _pick(draw, ODD_IDS).encode()),
    "odd header": lambda draw, d, sep, first: _set_field(draw, d, sep, 0, _pick(draw, ODD_IDS + ["", "user_id", "item_id"]).encode()) if first else d,
    "duplicated rows": lambda draw, d, sep, first: _rows(draw, d, first, "duplicate"),
    "deleted row": lambda draw, d, sep, first: _rows(draw, d, first, "delete"),
    "swapped rows": lambda draw, d, sep, first: _rows(draw, d, first, "swap"),
    "CRLF": lambda draw, d, sep, first: d.replace(b"\n", b"\r\n"),
    "blank lines": lambda draw, d, sep, first: _insert(draw, d, b"\n" * draw(st.integers(1, 3))) if d else d,
    "header only": lambda draw, d, sep, first: _lines(d)[0] + b"\n",
}


@st.composite
def corrupted(draw: Any, data: bytes, sep: bytes = b",", header: bool = True) -> tuple[str, bytes]:
    """One corruption of the text table ``data`` (fields split on ``sep``; line 1 a header if ``header``)."""
    kind = draw(st.sampled_from(sorted(TEXT_CORRUPTIONS)))
    return kind, TEXT_CORRUPTIONS[kind](draw, data, sep, int(header))


# --- corruptions of tables (Parquet) -----------------------------------------------------------

_ODD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 0.0, 1e20]
_ODD_INTS = [-(2**63), 2**63 - 1, -1, 0, 10**15]


def _column_as(draw: Any, col: pa.ChunkedArray | pa.Array, n: int) -> pa.Array:
    """The column replaced by values of another type."""
    choice = draw(st.sampled_from(["int", "float", "bool", "list", "struct", "binary", "date", "tz datetime", "null", "dictionary", "odd text", "nulls"]))
    event(f"parquet column as {choice}")
    ints = draw(st.lists(st.sampled_from(_ODD_INTS + [1, 2, 1_600_000_000]), min_size=n, max_size=n))
    if choice == "int":
        return pa.array(ints, pa.int64())
    if choice == "float":
        return pa.array(draw(st.lists(st.sampled_from(_ODD_FLOATS + [1.6e9]), min_size=n, max_size=n)), pa.float64())
    if choice == "bool":
        return pa.array([i % 2 == 0 for i in range(n)])
    if choice == "list":
        return pa.array([[str(v)] for v in col.to_pylist()], pa.list_(pa.string()))
    if choice == "struct":
        return pa.array([{"a": str(v)} for v in col.to_pylist()])
    if choice == "binary":
        return pa.array([str(v).encode() + _pick(draw, BAD_BYTES + [b""]) for v in col.to_pylist()], pa.binary())
    if choice == "date":
        return pa.array([19000 + i for i in range(n)], pa.int32()).cast(pa.date32())
    if choice == "tz datetime":
        return pa.array([1_600_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="Asia/Kolkata"))
    if choice == "null":
        return pa.nulls(n)
    if choice == "dictionary":
        return pa.array([str(v) for v in col.to_pylist()]).dictionary_encode()
    values = col.to_pylist()
    i = draw(st.integers(0, n - 1))
    if choice == "nulls":
        values[i] = None
        return pa.array(values, col.type)
    values = [str(v) for v in values]
    values[i] = _pick(draw, ODD_VALUES + ODD_IDS)
    return pa.array(values, pa.string())


TABLE_KINDS = ["deleted column", "duplicated column name", "renamed column", "column of another type", "no rows", "duplicated rows",
               "byte flips", "truncated file"]


@st.composite
def corrupted_table(draw: Any, table: pa.Table) -> tuple[str, bytes]:
    """One corruption of ``table``, returned as Parquet bytes."""
    kind = draw(st.sampled_from(TABLE_KINDS))
    names = table.column_names
    j = draw(st.integers(0, len(names) - 1))
    if kind == "deleted column":
        table = table.remove_column(j)
    elif kind == "duplicated column name":
        table = table.append_column(names[j], table.column(draw(st.integers(0, len(names) - 1))))
    elif kind == "renamed column":
        table = table.rename_columns([_pick(draw, ODD_IDS + ["", "x"]) if i == j else n for i, n in enumerate(names)])
    elif kind == "column of another type":
        table = table.set_column(j, names[j], _column_as(draw, table.column(j), table.num_rows))
    elif kind == "no rows":
        table = table.slice(0, 0)
    elif kind == "duplicated rows":
        i = draw(st.integers(0, table.num_rows - 1))
        table = pa.concat_tables([table, table.slice(i, 1)])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    if kind == "byte flips":
        data = _flip(draw, data)
    elif kind == "truncated file":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return kind, data


# --- corruptions of JSON lines and TOML --------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) | st.sampled_from(ODD_IDS + ODD_VALUES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=5,
)


@st.composite
def corrupted_jsonl(draw: Any, records: list[dict[str, Any]]) -> tuple[str, bytes]:
    """A text corruption of the JSON lines of ``records``, or one record with a key dropped, renamed or retyped."""
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    if draw(st.booleans()):
        kind, data = draw(corrupted(text, b",", header=False))
        return f"jsonl text: {kind}", data
    records = [dict(r) for r in records]
    r = records[draw(st.integers(0, len(records) - 1))]
    key = _pick(draw, sorted(r))
    kind = draw(st.sampled_from(["dropped key", "renamed key", "value of another type"]))
    if kind == "dropped key":
        del r[key]
    elif kind == "renamed key":
        r[_pick(draw, ODD_IDS + ["user", "candidate"])] = r.pop(key)
    else:
        r[key] = draw(JSON_VALUES)
    return f"json {kind}", "".join(json.dumps(x, allow_nan=True) + "\n" for x in records).encode()


def toml_value(value: Any) -> str:
    """``value`` written as TOML (NaN and infinities included; strings as JSON strings, which TOML reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.sampled_from(_ODD_INTS + [0, 1, 2, 3])
    | st.floats() | st.sampled_from(_ODD_FLOATS + [0.5, 1e-9]) | st.text(max_size=6) | st.sampled_from(["none", "auto", "", "4GB", "-1GB", "title"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "epochs", "title"]), inner, max_size=2),
    max_leaves=4,
)


def _like(current: Any) -> st.SearchStrategy[Any]:
    """Odd values of the type of the setting ``current`` (they pass the type check and reach the code)."""
    if isinstance(current, bool):
        return st.booleans()
    if isinstance(current, int):
        return st.integers(-3, 3) | st.sampled_from([10, 1000, 10**6, 2**31 - 1, 2**31, -(2**31)])
    if isinstance(current, float):
        return st.floats() | st.sampled_from([0.0, 1.0, 0.5, -0.5, 1e-9, 1e9])
    if isinstance(current, str):
        return st.sampled_from(["auto", "mean", "cls", "none", "", "4GB", "1KB", "0GB", "cpu", "cuda", "bf16", "title", "x"]) | st.text(max_size=5)
    if isinstance(current, list):
        inner = _like(current[0]) if current else st.text(max_size=3)
        return st.lists(inner, max_size=4) | st.lists(st.sampled_from(current or ["x"]), max_size=4)
    return TOML_VALUES


def to_toml(data: dict[str, Any]) -> str:
    """Settings as TOML: top-level values first, then one table per nested dict."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += [f"[{json.dumps(table)}]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@st.composite
def corrupted_toml(draw: Any, base: dict[str, Any], known: dict[str, Any]) -> tuple[str, bytes]:
    """The settings ``base`` as TOML with one setting (a dotted key of ``known``, or an unknown one) set to a
    random value, or a text corruption of that TOML."""
    if draw(st.integers(0, 3)) == 0:
        kind, data = draw(corrupted(to_toml(base).encode(), b" = ", header=False))
        return f"toml text: {kind}", data
    keys = [f"{t}.{k}" for t, table in known.items() if isinstance(table, dict) for k in table] + [k for k, v in known.items() if not isinstance(v, dict)]
    key = draw(st.sampled_from(sorted(keys) + ["ranker.bogus", "bogus", "ranker"]))
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    table, _, leaf = key.rpartition(".")
    current = (known.get(table, {}) if table else known).get(leaf)
    value = draw(_like(current)) if current is not None and draw(st.integers(0, 2)) else draw(TOML_VALUES)
    (data.setdefault(table, {}) if table else data)[leaf] = value
    return f"toml setting {key}", to_toml(data).encode()
