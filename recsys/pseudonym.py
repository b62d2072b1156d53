"""Pseudonymous user ids: a keyed hash that systems holding the key can reproduce and nobody else can.

The pseudonym of a user id is::

    hex(HMAC-SHA256(key, utf8(user_id)))      64 lower-case hex digits

where ``key`` is the UTF-8 bytes of an environment variable's value (``RECSYS_PSEUDONYM_KEY`` unless another
name is given) and ``user_id`` is the id as text (a number is written in decimal first). A downstream system
with the key reproduces it in one line, e.g. Python's
``hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()`` or PostgreSQL's
``encode(hmac(user_id, key, 'sha256'), 'hex')`` (pgcrypto), and joins on it. Null ids stay null.

The key lives only in memory: it is read from the environment when asked for, never logged, never part of
an error message, a summary, a report or a file, and :class:`PseudonymKey`'s ``repr`` hides it. Keys shorter
than :data:`MIN_KEY_BYTES` are refused: a short key can be found by trying keys against known ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

import polars as pl

from recsys.errors import RecsysError

DEFAULT_KEY_ENV = "RECSYS_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class PseudonymKey:
    """An HMAC-SHA256 key for user ids, and the name of the environment variable it came from.

    Attributes:
        env: The variable's name (safe to print; the key is not).
    """

    env: str
    _key: bytes = field(repr=False)

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEY_ENV) -> PseudonymKey:
        """Read the key from the environment variable `name`.

        Raises:
            RecsysError: The variable is unset, empty or shorter than :data:`MIN_KEY_BYTES` bytes (the
                message names the variable, never its value).
        """
        value = os.environ.get(name, "")
        if not value:
            raise RecsysError(f"--pseudonymise-users needs a key in the environment variable {name}, which is unset or empty; "
                              f"set it to a secret of at least {MIN_KEY_BYTES} characters (e.g. the output of `openssl rand -hex 32`)")
        key = value.encode()
        if len(key) < MIN_KEY_BYTES:
            raise RecsysError(f"the key in {name} is {len(key)} bytes; use at least {MIN_KEY_BYTES} (e.g. the output of `openssl rand -hex 32`)")
        return cls(name, key)

    def hash(self, ids: pl.Series) -> pl.Series:
        """The pseudonym of each id (see the module docstring); each distinct id is hashed once.

        >>> PseudonymKey("K", b"0123456789abcdef").hash(pl.Series(["U1", None]))[0][:16]
        'a8ff2ea82a4db1c1'
        """
        text = ids.cast(pl.String())
        distinct = text.drop_nulls().unique()
        digests = [hmac.new(self._key, u.encode(), hashlib.sha256).hexdigest() for u in distinct.to_list()]
        return text.replace_strict(distinct, pl.Series(digests, dtype=pl.String()), default=None, return_dtype=pl.String())

    def expr(self, column: str) -> pl.Expr:
        """`column` replaced by its pseudonyms, batch by batch (usable on lazy and streamed frames)."""
        return pl.col(column).map_batches(self.hash, return_dtype=pl.String(), is_elementwise=True)
