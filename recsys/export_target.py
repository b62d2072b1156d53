"""Database export targets: parse ``duckdb://`` and ``postgresql://`` URLs, check table names, hide passwords.

The URL is parsed here, not by :func:`urllib.parse.urlsplit`: a raw ``#`` in a password would turn the
rest of the URL into a "fragment", and libpq reads URLs its own way. The rules follow libpq:

* the user info ends at the first ``@`` with no ``/`` before it; a password holding a raw ``@``, ``/``
  or ``?`` makes the URL ambiguous and is refused (percent-encode it: ``%40``, ``%2F``, ``%3F``);
* the query starts at the first ``?`` after the user info; options are ``&``-separated ``key=value``;
* ``table=`` is ours (given at most once) and is removed before the URL reaches libpq; every other
  option goes through as written, so libpq's TLS options (``sslmode``, ``sslrootcert``, ``sslcert``,
  ``sslkey``, ...) work as libpq documents them.

:func:`tls_warning` says when a PostgreSQL export would travel unverified to another machine: a host that
is not a unix socket or loopback address, with an effective ``sslmode`` (the URL's, else ``PGSSLMODE``,
else libpq's default ``prefer``) weaker than ``require``.

Every form of the password (user-info, ``?password=`` or ``?sslpassword=``, as written and percent-decoded) is collected
in :attr:`DbTarget.secrets`, and :meth:`DbTarget.hide` replaces each one wherever it appears in a
message, so even a driver error that echoes the URL or a fragment of it says ``***``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _random
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from recsys.errors import RecsysError

DEFAULT_TABLE = "recs"
PG_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1; PostgreSQL truncates longer names silently
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_IDENTIFIER = re.compile(r"\w+")  # letters (any script), digits, _; always quoted when used
_MASK = "***"
_SECRET_OPTIONS = ("password", "sslpassword")
ENCRYPTED_SSLMODES = ("require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class DbTarget:
    """A parsed database target.

    Attributes:
        kind: ``"duckdb"`` or ``"postgresql"``.
        shown: The URL with the password replaced by ``***``; safe to print.
        location: DuckDB: the database file path. PostgreSQL: the URL for libpq, ``table=`` removed.
        schema: The schema part of ``schema.table``, or None.
        name: The table name.
        secrets: Every form of the password, longest first.
        hosts: PostgreSQL: the hosts libpq connects to (``hostaddr=`` over ``host=`` over the URL's;
            empty = the default unix socket).
        sslmode: PostgreSQL: the URL's ``sslmode``, or None.
    """

    kind: str
    shown: str
    location: str
    schema: str | None
    name: str
    secrets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    sslmode: str | None = None

    @property
    def table(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def hide(self, text: str) -> str:
        """`text` on one line with every form of the password replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, _MASK)
        return " ".join(text.split())


def scheme_of(target: str) -> str:
    """The lower-cased URL scheme of `target`, or "" for a file path."""
    m = _SCHEME.match(target)
    return m.group(1).lower() if m else ""


def _split(target: str) -> tuple[int, int | None, int, list[tuple[int, int]], list[str]]:
    """Where the parts of a URL are: (start of rest, start of password or None, end of user info,
    spans of ``password=`` values, password forms). The user info end is -1 when there is none.

    Raises:
        RecsysError: A raw ``@``, ``/`` or ``?`` in the user info (libpq would split it elsewhere).
    """
    m = _SCHEME.match(target)
    start = m.end() if m else 0
    rest = target[start:]
    at = rest.find("@")
    libpq_end = at if at >= 0 and "/" not in rest[:at] else -1  # libpq's rule
    head = rest.split("?", 1)[0]
    widest_end = max(libpq_end, head.rfind("@"))  # a password with a raw '@' or '/' reaches further
    forms: list[str] = []
    pw_start = None
    if widest_end >= 0 and ":" in rest[:widest_end]:
        pw_start = start + rest.index(":") + 1
        forms.append(target[pw_start : start + widest_end])
        if libpq_end >= 0:
            forms.append(target[pw_start : start + libpq_end])
    q = rest.find("?", max(widest_end, 0))
    spans: list[tuple[int, int]] = []
    if q >= 0:
        pos = start + q + 1
        for piece in target[pos:].split("&"):
            key, eq, value = piece.partition("=")
            if eq and unquote(key).strip().lower() in _SECRET_OPTIONS:
                spans.append((pos + len(key) + 1, pos + len(piece)))
                forms.append(value)
            pos += len(piece) + 1
    if widest_end != libpq_end:
        shown = _mask(target, pw_start, start + widest_end, spans)
        every = _forms(forms)
        for secret in every:
            shown = shown.replace(secret, _MASK)
        raise RecsysError(
            f"ambiguous URL {shown!r}: the user name or password holds a raw '@', '/' or '?'; "
            "percent-encode them (%40, %2F, %3F) or pass password=... as a query option"
        )
    return start, pw_start, (start + widest_end if widest_end >= 0 else -1), spans, _forms(forms)


def _forms(raw: list[str]) -> list[str]:
    """Each password as written and percent-decoded (libpq decodes %XX; '+' kept or read as a space)."""
    out = {f for s in raw for f in (s, unquote(s), unquote_plus(s)) if f}
    return sorted(out, key=len, reverse=True)


def _mask(target: str, pw_start: int | None, info_end: int, spans: list[tuple[int, int]]) -> str:
    cuts = ([(pw_start, info_end)] if pw_start is not None else []) + spans
    for a, b in sorted(cuts, reverse=True):
        target = target[:a] + _MASK + target[b:]
    return target


def redact(target: str) -> str:
    """`target` with any password replaced by ``***`` (a file path comes back as it is)."""
    if not scheme_of(target):
        return target
    try:
        start, pw_start, info_end, spans, forms = _split(target)
    except RecsysError:
        return f"{scheme_of(target)}://{_MASK}"
    shown = _mask(target, pw_start, info_end, spans)
    for secret in forms:
        shown = shown.replace(secret, _MASK)
    return shown


def check_identifier(table: str, shown: str, max_bytes: int | None = None) -> tuple[str | None, str]:
    """Split ``[schema.]table`` and check each part.

    Raises:
        RecsysError: Empty, more than one dot, characters other than letters/digits/_, or (with
            `max_bytes`) a part longer than the database keeps.
    """
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise RecsysError(f"bad table name {table!r} in {shown!r}; use letters, digits and _ (optionally schema.table)")
    for part in parts:
        if max_bytes is not None and len(part.encode()) > max_bytes:
            raise RecsysError(f"table name part {part[:20]!r}... in {shown!r} is {len(part.encode())} bytes; PostgreSQL keeps at most {max_bytes}")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def staging_name(name: str, max_bytes: int = PG_MAX_IDENTIFIER_BYTES) -> str:
    """A fresh table name for loading `name`: ``<name>__recsys_staging_<16 hex>``, cut to fit `max_bytes`.

    Random, so it never names a user's table; and it is only ever created with a plain CREATE (which
    fails rather than replace), so even a collision could not destroy data.
    """
    suffix = f"__recsys_staging_{_random.token_hex(8)}"
    head = name.encode()[: max_bytes - len(suffix)].decode(errors="ignore")
    return head + suffix


def parse(target: str) -> DbTarget:
    """Parse a ``duckdb://`` or ``postgresql://`` (``postgres://``) target.

    Raises:
        RecsysError: Ambiguous user info, ``table=`` given twice, a bad or too long table name, or
            no database file for DuckDB.
    """
    scheme = scheme_of(target)
    kind = {"duckdb": "duckdb", "postgresql": "postgresql", "postgres": "postgresql"}[scheme]
    start, pw_start, info_end, spans, forms = _split(target)
    shown = redact(target)
    q = target.find("?", max(info_end, start))
    base, query = (target, "") if q < 0 else (target[:q], target[q + 1 :])
    tables, kept = [], []
    for piece in query.split("&") if query else []:
        key, _, value = piece.partition("=")
        if unquote(key).strip().lower() == "table":
            tables.append(unquote_plus(value))
        else:
            kept.append(piece)
    if len(tables) > 1:
        raise RecsysError(f"table= is given {len(tables)} times in {shown!r}; give it once")
    max_bytes = PG_MAX_IDENTIFIER_BYTES if kind == "postgresql" else None
    schema, name = check_identifier(tables[0] if tables else DEFAULT_TABLE, shown, max_bytes)
    if kind == "duckdb":
        location = base[start:]
        if not location:
            raise RecsysError(f"no database file in {shown!r}; use duckdb:///abs/path.db or duckdb://rel/path.db")
        return DbTarget(kind, shown, location, schema, name, tuple(forms))
    options = {unquote(k).strip().lower(): unquote(v) for k, _, v in (p.partition("=") for p in kept)}
    netloc = base[(info_end + 1 if info_end >= 0 else start) :].split("/", 1)[0]
    given = options.get("hostaddr") or options.get("host") or netloc
    hosts = tuple(_host_name(unquote(h)) for h in given.split(",") if h)
    location = base + ("?" + "&".join(kept) if kept else "")
    return DbTarget(kind, shown, location, schema, name, tuple(forms), hosts, options.get("sslmode"))


def _host_name(entry: str) -> str:
    """The host of a URL host entry: ``[::1]:5432`` -> ``::1``, ``db:5432`` -> ``db``; a socket path as it is."""
    if entry.startswith("["):
        return entry[1 : entry.find("]")]
    return entry if entry.startswith("/") or entry.count(":") != 1 else entry.split(":")[0]


def _is_local(host: str) -> bool:
    if not host or host.startswith(("/", "@")) or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_warning(db: DbTarget, env: Mapping[str, str] = os.environ) -> str | None:
    """A one-line warning when `db` is a PostgreSQL host on another machine reached without enforced TLS.

    Args:
        db: A parsed target.
        env: Where libpq's ``PGSSLMODE``, ``PGHOSTADDR`` and ``PGHOST`` are read (default: the environment).

    Returns:
        The warning, or None (DuckDB, a local host, or sslmode require/verify-ca/verify-full).
    """
    if db.kind != "postgresql":
        return None
    mode = db.sslmode or env.get("PGSSLMODE") or "prefer"
    hosts = db.hosts or tuple(_host_name(h) for h in (env.get("PGHOSTADDR") or env.get("PGHOST") or "").split(",") if h)
    remote = [h for h in hosts if not _is_local(h)]
    if not remote or mode in ENCRYPTED_SSLMODES:
        return None
    return (f"exporting to {remote[0]} with sslmode={mode}: the connection may be unencrypted and the server is not verified; "
            "add ?sslmode=verify-full&sslrootcert=CA.crt (or at least sslmode=require) to the URL")
