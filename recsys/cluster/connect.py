"""Where the data-parallel stages run: ``ClusterConfig`` and the ``distributed.Client`` it opens.

``--cluster local:N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine;
``--cluster tcp://host:8786`` joins a running scheduler, as does ``--scheduler-file FILE`` (the file
``dask scheduler --scheduler-file FILE`` writes). No option: no cluster, the single-process path.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://\S+$")
INSTALL_HINT = "the cluster needs Dask: pip install 'recsys[cluster]' (on the workers too)"


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach the Dask cluster (a resource setting: where work runs never changes its result).

    Attributes:
        address: ``local:N`` (a LocalCluster of N workers), a scheduler address (``tcp://host:8786``), or None.
        scheduler_file: a Dask scheduler file to join (instead of `address`).
        memory_limit: per-worker memory limit of a local cluster ("2GB"; "auto" shares the machine's).
        processes: a local cluster's workers are processes (as on a real cluster: every input crosses the wire);
            False runs them as threads of this process (tests, debugging).
        partitions: user partitions per worker (more: smaller tasks, better balance).
        work_dir: where the partitioned Parquet goes; every worker must read and write it (a shared filesystem
            on a real cluster; default: the system temp directory, enough for ``local:N``).
    """

    address: str | None = None
    scheduler_file: str | None = None
    memory_limit: str = "auto"
    processes: bool = True
    partitions: int = 2
    work_dir: str | None = None

    def __post_init__(self) -> None:
        if self.address is not None and self.scheduler_file is not None:
            raise RecsysError("give --cluster or --scheduler-file, not both")
        if self.address is not None and not (_LOCAL.match(self.address) or _ADDRESS.match(self.address)):
            raise RecsysError(f"--cluster {self.address!r}: expected local:N (N workers here) or a scheduler address such as tcp://host:8786")
        if self.local_workers == 0:
            raise RecsysError("--cluster local:N needs at least one worker (N >= 1)")
        if self.partitions < 1:
            raise RecsysError(f"cluster partitions must be at least 1, got {self.partitions}")

    @property
    def enabled(self) -> bool:
        """Whether any cluster is asked for."""
        return self.address is not None or self.scheduler_file is not None

    @property
    def local_workers(self) -> int | None:
        """N of ``local:N``, else None."""
        m = _LOCAL.match(self.address or "")
        return int(m.group(1)) if m else None


def parse_cluster(address: str | None, scheduler_file: str | Path | None = None, **options: Any) -> ClusterConfig | None:
    """The CLI's ``--cluster``/``--scheduler-file`` as a config, or None when neither is given (the unchanged path)."""
    if address is None and scheduler_file is None:
        return None
    return ClusterConfig(address=address, scheduler_file=str(scheduler_file) if scheduler_file is not None else None, **options)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RecsysError(INSTALL_HINT) from exc
    return distributed


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for `cfg`; closes the client, and the local cluster when it started one.

    Raises:
        RecsysError: Dask is not installed, or the scheduler cannot be reached.
    """
    distributed = _distributed()
    with contextlib.ExitStack() as stack:
        n = cfg.local_workers
        try:
            if n is not None:
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=cfg.processes, memory_limit=cfg.memory_limit,
                    dashboard_address=None))
                client = stack.enter_context(distributed.Client(cluster))
            elif cfg.scheduler_file is not None:
                client = stack.enter_context(distributed.Client(scheduler_file=cfg.scheduler_file, timeout="30s"))
            else:
                client = stack.enter_context(distributed.Client(cfg.address, timeout="30s"))
        except OSError as exc:
            raise RecsysError(f"cannot reach the Dask scheduler ({cfg.address or cfg.scheduler_file}): {exc}") from exc
        yield client


def n_partitions(client: Any, cfg: ClusterConfig) -> int:
    """How many user partitions to make: ``cfg.partitions`` per worker now connected (at least one)."""
    return max(1, len(client.scheduler_info().get("workers", {}))) * cfg.partitions


def gather_all(client: Any, futures: list[Any]) -> list[Any]:
    """The results of `futures`, after every one has finished: a task's error is raised only once no other task
    still writes into a work directory that the caller is about to remove."""
    _distributed().wait(futures)
    return list(client.gather(futures))
