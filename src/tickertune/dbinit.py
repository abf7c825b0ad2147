"""Opening a database store that another process may be creating at the same moment."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

# Two processes opening one fresh database store at once both run its schema migrations;
# the loser fails on what the winner just created. Once the winner is done, it opens fine.
_INIT_RACE = ("already exists", "duplicate column", "alembic_version", "database is locked",
              "UniqueViolation", "duplicate key")


def retry_init_race(open_fn: Callable[[], Any], attempts: int = 6) -> Any:
    """`open_fn()`, retried with backoff when it lost a schema-creation race."""
    for attempt in range(attempts):
        try:
            return open_fn()
        except Exception as exc:  # noqa: BLE001
            if attempt == attempts - 1 or not any(m in str(exc) for m in _INIT_RACE):
                raise
            time.sleep(0.5 * 2 ** attempt)


@contextlib.contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    """Hold a per-file lock while a SQLite store is opened (and its schema created or migrated).

    SQLite migrations are not safe to run twice at once: two processes starting on one
    fresh file can leave it half-migrated for good. Other URLs pass straight through."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        yield
        return
    import fcntl
    import hashlib
    import os
    import tempfile

    # Beside the temp dir, not the database: closing any descriptor of the database file
    # would drop SQLite's own locks on it.
    key = hashlib.sha256(os.path.abspath(url[len("sqlite:///"):]).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"tickertune-init-{key}.lock")
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_store(url: str, open_fn: Callable[[], Any]) -> Any:
    """`open_fn()` under the SQLite init lock, retried when it lost a schema-creation race."""
    with sqlite_init_lock(url):
        return retry_init_race(open_fn)
