"""Load an interaction-only shop log in the UniSRec/RecBole layout (e.g. Amazon "Industrial and Scientific").

The source directory holds, for one dataset name ``NAME``::

    NAME.item2index             raw item id (ASIN) TAB integer index, no header
    NAME.user2index             raw user id TAB integer index, no header (optional: indices are used if absent)
    NAME.text                   header line, then raw item id TAB "title. category path. brand. "
    NAME.{train,valid,test}.inter  header line, then user index TAB history (space-separated indices,
                                oldest first) TAB next item index

``train.inter`` has one row per prefix, ``valid`` is items[:-2] -> items[-2], ``test`` items[:-1] -> items[-1].
Each row becomes one impression of kind ``"interactions"``: ``candidates=[item]``, ``labels=[1]``,
``history`` = the earlier items (split train / dev / test as the file says).

The log has no timestamps, only each user's order. The timestamp of a row is therefore
``EPOCH + position of the target in the user's sequence`` seconds, and the manifest says
``"time_source": "sequence_order"``: times order a user's events, never compare users.

Item text "title. category path. brand. " is parsed into ``title`` (the title), ``category`` (the category path),
``tags`` ([brand]) and ``abstract`` (everything after the title, verbatim), so that
``title + ". " + abstract`` is the full original text (see :data:`FULL_TEXT_FIELDS`).

The layout is machine-written, so any bad line stops the load with a :class:`DataError` naming it:
bytes that are not UTF-8, an index or raw id given twice in ``item2index``/``user2index``, an item
with two text lines, an unknown index, an ``.inter`` file without rows. Histories holding their own
target are kept and counted in the manifest (``history_contains_candidate``), as by the other loaders.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import polars as pl

from recsys.data import Col, Dataset, Split, build_manifest, save_dataset, shown, validate_impressions, validate_items
from recsys.errors import DataError
from recsys.loaders.tsv import bad_utf8_field
from recsys.loaders.writer import HistoryOverlap

log = logging.getLogger(__name__)

EPOCH = datetime(2000, 1, 1)
# Fields whose join (recsys.data.item_text) reproduces the original ".text" string exactly.
FULL_TEXT_FIELDS = (Col.TITLE, Col.ABSTRACT)
_SPLIT_FILES = {Split.TRAIN: "train", Split.DEV: "valid", Split.TEST: "test"}


def find_name(src: Path) -> str:
    """The dataset name NAME of the single ``NAME.item2index`` file in `src`.

    Raises:
        DataError: no such file, or more than one.
    """
    found = sorted(p.name[: -len(".item2index")] for p in src.glob("*.item2index"))
    if len(found) != 1:
        raise DataError(src, None, None, f"expected exactly one NAME.item2index file, found {found or 'none'}")
    return found[0]


def _lines(path: Path, names: list[str]) -> list[str]:
    """The lines of a UTF-8 file (a leading byte order mark dropped; "\r\n" ends a line too).

    Raises:
        DataError: a line that is not valid UTF-8, naming its field (``names``, tab-separated).
    """
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for lineno, line in enumerate(raw, start=1):
        try:
            lines.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(path, lineno, bad_utf8_field(line, names), "invalid UTF-8") from None
    return lines


def _read_index(path: Path, what: str) -> dict[str, str]:
    """Integer index (as string) -> raw id, from a two-column file without header.

    Raises:
        DataError: a malformed line, or an index or raw id given twice (naming the second line).
    """
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    seen_raw: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path, [what, "index"]), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise DataError(path, lineno, None, "expected 'raw id<TAB>integer index'" + ("" if what == Col.USER else f", got {line[:80]!r}"))
        raw_id, index = parts[0].strip(), str(int(parts[1]))
        if index in mapping:
            raise DataError(path, lineno, "index", f"index {index} is given twice (line {first_line[index]}: {shown(what, mapping[index])}, here: {shown(what, raw_id)})")
        if raw_id in seen_raw:
            raise DataError(path, lineno, what, f"{shown(what, raw_id)} is given twice (line {seen_raw[raw_id]} and here)")
        mapping[index], first_line[index], seen_raw[raw_id] = raw_id, lineno, lineno
    return mapping


def parse_text(text: str) -> tuple[str, str | None, str | None, str | None]:
    """Split "title. category path. brand. " into (title, rest-after-title, category, brand).

    Missing parts (e.g. "title. . brand. ") come back as None. Titles may contain ". "; the last two
    ". "-separated fields are the category path and the brand.

    >>> parse_text("Sanding Roll 80 Grit. Industrial & Scientific Abrasives. PORTER-CABLE. ")
    ('Sanding Roll 80 Grit', 'Industrial & Scientific Abrasives. PORTER-CABLE', 'Industrial & Scientific Abrasives', 'PORTER-CABLE')
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1]
    parts = body.split(". ")
    if len(parts) < 3:
        return body.strip(), None, None, None
    title = ". ".join(parts[:-2]).strip()
    category, brand = parts[-2].strip() or None, parts[-1].strip() or None
    rest = ". ".join(p for p in (category, brand) if p) or None
    return title, rest, category, brand


def _read_items(path: Path) -> pl.DataFrame:
    rows: dict[str, list] = {Col.ITEM: [], Col.TITLE: [], Col.ABSTRACT: [], Col.CATEGORY: [], Col.TAGS: []}
    lines = _lines(path, [Col.ITEM, "text"])
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        item, sep, text = line.partition("\t")
        if not sep or not item.strip():
            raise DataError(path, lineno, "text", "expected 'item id<TAB>text'")
        if item.strip() in seen:
            raise DataError(path, lineno, Col.ITEM, f"item {item.strip()!r} already has a text line (line {seen[item.strip()]})")
        seen[item.strip()] = lineno
        title, rest, category, brand = parse_text(text)
        if not title:
            raise DataError(path, lineno, Col.TITLE, f"item {item!r} has no title")
        rows[Col.ITEM].append(item.strip())
        rows[Col.TITLE].append(title)
        rows[Col.ABSTRACT].append(rest)
        rows[Col.CATEGORY].append(category)
        rows[Col.TAGS].append([brand] if brand else None)
    df = pl.DataFrame(rows, schema={Col.ITEM: pl.String(), Col.TITLE: pl.String(), Col.ABSTRACT: pl.String(),
                                    Col.CATEGORY: pl.String(), Col.TAGS: pl.List(pl.String())})
    return df.with_columns(pl.lit(None, dtype=pl.String()).alias(Col.SUBCATEGORY),
                           pl.lit(None, dtype=pl.Datetime("us")).alias(Col.PUBLISHED))


def _read_inter(path: Path, items: dict[str, str], users: dict[str, str] | None, split: str) -> pl.DataFrame:
    """One impressions row per line; `position` (target index in the user's sequence) is filled later."""
    out: dict[str, list] = {Col.USER: [], Col.HISTORY: [], Col.CANDIDATES: [], "line": []}
    lines = _lines(path, [Col.USER, Col.HISTORY, Col.ITEM])
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(path, lineno, None, f"expected 3 tab-separated fields, got {len(parts)}")
        user, hist, target = (p.strip() for p in parts)
        if users is not None and user not in users:
            raise DataError(path, lineno, Col.USER, "the user index is not in user2index")
        try:
            history = [items[i] for i in hist.split()]
            candidate = items[target]
        except KeyError as exc:
            raise DataError(path, lineno, "item_id", f"item index {exc.args[0]} is not in item2index") from None
        out[Col.USER].append(users[user] if users is not None else user)
        out[Col.HISTORY].append(history)
        out[Col.CANDIDATES].append([candidate])
        out["line"].append(lineno)
    if not out["line"]:
        raise DataError(path, None, None, "no rows (expected a header line and one line per interaction)")
    return pl.DataFrame(out, schema={Col.USER: pl.String(), Col.HISTORY: pl.List(pl.String()),
                                     Col.CANDIDATES: pl.List(pl.String()), "line": pl.Int64()}).with_columns(
        pl.lit(split).alias(Col.SPLIT))


def _assign_positions(rows: pl.DataFrame) -> pl.DataFrame:
    """Position of each target in its user's sequence, robust to histories cut at a maximum length.

    Train prefixes are numbered 1..k in history-length order (file order breaks ties: the files list
    a user's prefixes longest first); the dev target follows at k+1 and the test target at k+2.
    """
    order = {Split.TRAIN: 0, Split.DEV: 1, Split.TEST: 2}
    return (
        rows.with_columns(pl.col(Col.SPLIT).replace_strict(order, return_dtype=pl.Int8()).alias("_s"),
                          pl.col(Col.HISTORY).list.len().alias("_h"))
        .sort([Col.USER, "_s", "_h", "line"], descending=[False, False, False, True])
        .with_columns((pl.int_range(pl.len()).over(Col.USER) + 1).alias("position"))
        .drop("_s", "_h")
    )


def load_amazon(src: str | Path, name: str | None = None) -> Dataset:
    """Read a UniSRec-layout directory into a validated :class:`Dataset` of kind ``"interactions"``.

    Args:
        src: the directory holding ``NAME.item2index``, ``NAME.text`` and ``NAME.{train,valid,test}.inter``.
        name: the dataset name NAME; found from the single ``*.item2index`` file if None.

    Returns:
        The dataset (items, impressions with splits train/dev/test, manifest with ``time_source``).

    Raises:
        DataError: a missing or row-less file, a malformed or non-UTF-8 line, an index or id given twice,
            or an index that is not in ``item2index``/``user2index``.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, None, None, "not a directory")
    name = name or find_name(src)
    for suffix in ("item2index", "text", "train.inter", "valid.inter", "test.inter"):
        if not (src / f"{name}.{suffix}").exists():
            raise DataError(src / f"{name}.{suffix}", None, None, "file is missing")
    item_index = _read_index(src / f"{name}.item2index", Col.ITEM)
    user_path = src / f"{name}.user2index"
    user_index = _read_index(user_path, Col.USER) if user_path.exists() else None
    items = _read_items(src / f"{name}.text")
    missing_text = set(item_index.values()) - set(items[Col.ITEM].to_list())
    if missing_text:
        raise DataError(src / f"{name}.text", None, Col.ITEM, f"{len(missing_text)} indexed item(s) have no text, e.g. {sorted(missing_text)[:3]}")

    rows = pl.concat([_read_inter(src / f"{name}.{_SPLIT_FILES[s]}.inter", item_index, user_index, s) for s in Split.ALL])
    rows = _assign_positions(rows)
    impressions = rows.select(
        pl.concat_str([pl.col(Col.USER), pl.col(Col.SPLIT), pl.col("position").cast(pl.String())], separator="-").alias(Col.IMPRESSION),
        Col.USER,
        (pl.lit(EPOCH, dtype=pl.Datetime("us")) + pl.duration(seconds=pl.col("position"))).alias(Col.TIME),
        Col.HISTORY,
        Col.CANDIDATES,
        pl.col(Col.CANDIDATES).list.eval(pl.lit(1, dtype=pl.Int8())).alias(Col.LABELS),
        Col.SPLIT,
    )
    items = validate_items(items.select(list(items.columns)), str(src / f"{name}.text"))
    impressions = validate_impressions(impressions, str(src))
    overlap = HistoryOverlap()
    overlap.add(impressions)
    manifest = build_manifest(
        items, impressions, source=f"amazon:{src.resolve()}", kind="interactions",
        time_source="sequence_order", time_note="timestamp = 2000-01-01 + position in the user's sequence (seconds); no real times",
        text_fields=list(FULL_TEXT_FIELDS), split_protocol="leave-one-out: dev = second-last item, test = last item",
        # Bad lines stop the load (the layout is machine-written); the keys match the other loaders' manifests.
        skipped={"total": 0, "by_reason": {}},
        missing_item_ids={"distinct": 0, "in_candidates": 0, "in_history": 0, "examples": []},
        history_contains_candidate=overlap.report(),
    )
    log.info("loaded %s: %d items, %d impressions, %d users", name, items.height, impressions.height, manifest["users"])
    return Dataset(items=items, impressions=impressions, manifest=manifest)


def ingest_amazon(src: str | Path, out: str | Path, name: str | None = None) -> Dataset:
    """Load a UniSRec-layout directory (:func:`load_amazon`) and write it as the dataset directory `out`.

    Raises:
        DataError: as :func:`load_amazon`; nothing is written then.
    """
    ds = load_amazon(src, name)
    save_dataset(ds, out)
    return ds
