"""The stage cache of :func:`recsys.pipeline.train`: which stage ran with which inputs (``stages.json``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.io import read_json, write_json
from recsys.model import MODEL_JSON, fingerprint

log = logging.getLogger(__name__)


class Stages:
    """Bookkeeping of which stage ran with which inputs, kept in ``stages.json``.

    A stage's entry is written after its outputs. Before a stage runs, its entry and every later
    stage's are removed, and ``model.json`` with them: a run killed midway leaves no claim on what it
    half wrote and no ``model.json`` over it, and every stage after one that runs runs too, since
    what they read may have changed in ways their input fingerprints cannot see (a stage redone
    after a kill, on a device that is not bit-exact).
    """

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.path = out_dir / "stages.json"
        self.rerun = force
        self.done: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}
        self.timings: dict[str, float] = {}
        self.seen: set[str] = set()  # stages reached in this run; the others come later

    def run(self, name: str, inputs: Any, outputs: list[Path], work: Callable[[], Any]) -> str:
        """Run `work` unless the stage's fingerprint and outputs are unchanged; return the fingerprint."""
        fp = fingerprint(name, inputs)
        previous = self.done.get(name, {})
        self.seen.add(name)
        if not self.rerun and previous.get("fingerprint") == fp and all(p.exists() for p in outputs):
            log.info("stage %s is up to date (%s)", name, fp)
            self.timings[name] = 0.0
            return fp
        log.info("stage %s: running", name)
        self.rerun = True
        (self.path.parent / MODEL_JSON).unlink(missing_ok=True)
        untrusted = [n for n in self.done if n == name or n not in self.seen]
        for n in untrusted:
            del self.done[n]
        if untrusted:
            write_json(self.done, self.path)
        start = time.perf_counter()
        work()
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.done[name] = {"fingerprint": fp, "seconds": self.timings[name], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.done, self.path)
        return fp
