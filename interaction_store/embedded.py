"""The embedded PostgreSQL server: the default when no database URL is configured.

It runs from the ``pgserver`` wheel (PostgreSQL 16) in ``<data_dir>/pgdata``, listens on a
Unix socket in that folder only, and is shared by every process that opens it: the last
process to let go stops it, unless ``start(keep_running=True)`` (``db start``) left a
``keep-running`` marker in the data folder, which ``stop()`` removes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interaction_store.exceptions import EmbeddedServerError

__all__ = ["EmbeddedPostgres", "embedded_database"]

log = logging.getLogger(__name__)


def _pgserver() -> Any:
    # pgserver asks platformdirs for a runtime folder at import and warns when
    # XDG_RUNTIME_DIR is unset; it then falls back to /tmp, which is what we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver


class EmbeddedPostgres:
    """A handle on the embedded server of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.keep_running_marker = self.data_dir / "keep-running"
        self._server: Any = None

    def start(self, *, keep_running: bool = False) -> str:
        """Start the server (or join the running one) and return its connection URL."""
        pgserver = _pgserver()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if keep_running:
            self.keep_running_marker.touch()
        keep = self.keep_running_marker.exists()
        self._forget_dead_users(pgserver)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server = pgserver.get_server(
                    self.pgdata, cleanup_mode=None if keep else "stop"
                )
        except Exception as exc:
            log_file = self.pgdata / "log"
            raise EmbeddedServerError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}"
                + (f" (see {log_file})" if log_file.exists() else "")
            ) from exc
        return str(self._server.get_uri())

    def _forget_dead_users(self, pgserver: Any) -> None:
        """Drop the pids of processes that died without letting go (kill -9, a crash):
        pgserver counts them as users forever, and the server would never stop."""
        handles = self.pgdata / ".handle_pids.json"
        if not handles.exists():
            return
        with pgserver.PostgresServer._lock:
            pids = pgserver.utils.DiskList(handles)
            alive = [pid for pid in pids.get() if _alive(pid)]
            pids.put(alive)

    def release(self) -> None:
        """Let go of the server; it stops if this was the last process using it, unless
        ``db start`` asked for it to keep running (even after this process started it)."""
        if self._server is not None:
            if self.keep_running_marker.exists():
                self._server.cleanup_mode = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server.cleanup()
            # pgserver keeps one handle per folder and process, and forgets it only when
            # this process was the last user: a later start would get it back without
            # counting this process again (or with the URL of a server stopped since).
            pgserver = _pgserver()
            atexit.unregister(self._server._cleanup)
            with pgserver.PostgresServer._lock:
                pgserver.PostgresServer._instances.pop(self.pgdata, None)
            self._server = None

    def running_url(self) -> str | None:
        """The URL of the server if it is running now, without starting it."""
        pgserver = _pgserver()
        info = pgserver.utils.PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or not info.is_running() or info.status != "ready":
            return None
        return str(info.get_uri())

    def users(self) -> list[int]:
        """Process ids currently holding the server open."""
        pgserver = _pgserver()
        pids = pgserver.utils.DiskList(self.pgdata / ".handle_pids.json").get()
        return [pid for pid in pids if pid != os.getpid() and _alive(pid)]

    def stop(self, *, force: bool = False) -> bool:
        """Stop a running server. Without ``force``, only when no other process uses it."""
        if self.running_url() is None:
            self.keep_running_marker.unlink(missing_ok=True)
            return False
        if self.users() and not force:
            raise EmbeddedServerError(
                f"the embedded server is in use by process(es) {self.users()}; "
                "stop them first or use --force"
            )
        self.keep_running_marker.unlink(missing_ok=True)
        pgserver = _pgserver()
        user = "pgserver" if os.geteuid() == 0 else None
        try:
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
        except Exception as exc:
            raise EmbeddedServerError(f"could not stop the embedded server: {exc}") from exc
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """Run the embedded server for the duration of the block and yield its URL."""
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    log.info("embedded PostgreSQL in %s", server.pgdata)
    try:
        yield url
    finally:
        server.release()
