"""Atomic writes: a reader sees the previous file or the complete new one, never half of one.

:func:`atomic_path` writes a hidden temp file ``.<name>.<8 random chars>.flock.tmp`` beside the target
and renames it onto the target. The writer holds an exclusive ``flock`` on its temp file until it is
done; the kernel drops the lock when the process dies, however it dies. A writer killed midway
(SIGKILL, OOM killer) leaves its temp file behind, so each write first removes the temp files of the
same target that no process holds locked: those writers are gone. Temp files named without
``.flock`` (written by older versions, or where the file system has no locks) are removed only once
untouched for :data:`STALE_TEMP_SECONDS`, a live writer keeping its file fresh. Nothing else is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 3600
_LOCKED = ".flock.tmp"
_TEMP_NAME = re.compile(r"[a-z0-9_]{8}(\.flock)?\.tmp")  # after ".<name>.": tempfile.mkstemp's 8 characters

_UMASK = os.umask(0)
os.umask(_UMASK)


def _locked_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, locked by the returned descriptor (unlocked, plain name, if no locks)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_LOCKED, dir=path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner that got in first removes it
        except OSError:  # no locks on this file system: the age rule protects a plain name
            os.close(fd)
            os.unlink(tmp)
            return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        os.close(fd)  # a cleaner removed it between creation and lock: take another


def _remove_if_unlocked(path: str) -> bool:
    """Remove the regular file `path` if no process holds a lock on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live writer (or no locks here)
            return False
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def remove_stale_temp_files(path: str | os.PathLike[str]) -> int:
    """Remove the temp files that interrupted writes of `path` left beside it (see the module docstring)."""
    path = Path(path)
    prefix, cutoff, removed = f".{path.name}.", time.time() - STALE_TEMP_SECONDS, 0
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            match = _TEMP_NAME.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
            if match is None:
                continue
            with contextlib.suppress(OSError):  # gone already, or not ours to remove
                if match.group(1):
                    removed += _remove_if_unlocked(entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
    if removed:
        log.info("removed %d stale temp file(s) of %s", removed, path)
    return removed


def make_dir(path: str | os.PathLike[str]) -> Path:
    """Create directory `path` (and its parents); a read-only or full disk is a one-line error naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecsysError(f"{path}: cannot create the directory ({exc.strerror or exc})") from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    make_dir(path.parent)
    remove_stale_temp_files(path)
    try:
        fd, tmp = _locked_temp(path)
    except OSError as exc:
        raise RecsysError(f"{path}: cannot write here ({exc.strerror or exc})") from exc
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the renamed file the usual mode
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise RecsysError(f"{path}: cannot replace it ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)  # releases the lock, after the temp name is gone


def write_parquet(df: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `df` as Parquet (zstd) atomically and return the path."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd")
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` as indented JSON atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a damaged one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecsysError(f"{path}: not valid JSON ({exc}); restore it or re-create it") from exc
