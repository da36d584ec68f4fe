"""Several processes on one store: a file lock, and retries when SQLite says "database is locked".

Sweep workers (joblib processes, SLURM jobs, several `python -m pipelines` sweepers) share
one Optuna study and one MLflow store, often SQLite files. SQLite serialises writers: a writer
that waits longer than the connection's busy timeout, or that would deadlock with another
(both holding a read lock and wanting to write), gets `OperationalError: database is locked`
at once. The transaction was rolled back, so doing it again is safe: `retry_locked` does, with
exponential back-off and jitter (so that two workers do not collide again in step). Creating a
fresh store (MLflow runs its Alembic migrations, Optuna creates its tables) is not safe to race
at all; `store_lock` serialises it with a lock file beside the database.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import random
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCKED_MARKERS = ("database is locked", "database table is locked", "SQLITE_BUSY")


@contextlib.contextmanager
def file_lock(path: pathlib.Path):
    """An exclusive lock across the processes of a machine (and of machines that share the
    folder over a file system with working `flock`); a no-op where fcntl is missing."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_path(url: str) -> pathlib.Path | None:
    """The database file of a `sqlite:///path` URL (SQLAlchemy's spelling), else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else pathlib.Path(path)


def store_lock(url: str, fallback: pathlib.Path | None = None):
    """A lock for creating or migrating the store at `url`: `<db file>.lock` for SQLite,
    `fallback` (a lock file in a folder the workers share) or nothing for a database server."""
    path = sqlite_path(url)
    if path is not None:
        return file_lock(path.with_name(path.name + ".lock"))
    return file_lock(fallback) if fallback is not None else contextlib.nullcontext()


def is_locked_error(error: BaseException) -> bool:
    """True for SQLite's "database is locked", however deep in the exception chain it is
    (Optuna wraps it in StorageInternalError, MLflow in MlflowException)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(marker in str(error) for marker in LOCKED_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_locked(fn: Callable[..., T], *args, attempts: int = 10, delay: float = 0.05,
                 max_delay: float = 5.0, **kwargs) -> T:
    """`fn(*args, **kwargs)`, called again after "database is locked" with back-off
    (0.05 s doubling to 5 s, randomised by up to 50%; about 25 s in all); other errors, and
    the last locked one, are raised."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - only the locked ones are retried
            if attempt == attempts or not is_locked_error(error):
                raise
            wait = min(max_delay, delay * 2 ** (attempt - 1)) * (1 + random.random() / 2)
            log.info("%s: the database is locked (attempt %d of %d); retrying in %.2f s",
                     getattr(fn, "__qualname__", fn), attempt, attempts, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
