"""Several worker processes, each on its own ``SO_REUSEPORT`` listening socket, under uvicorn's supervisor.

uvicorn's ``workers=N`` shares one listening socket: whichever worker wakes first accepts every pending
connection (asyncio accepts up to the backlog per wake-up). Keep-alive clients that connect at once then
land on one worker: measured with 32 connections on 2 workers, three starts split them 30/2, 32/0 and 18/14,
so a "2-worker" server often ran on one core (saturation 1.1k against 1.5k req/s between two runs of the
same code). With one ``SO_REUSEPORT`` socket per worker the kernel spreads connections by their address
hash. Supervision (health pings, restarts, signals) stays uvicorn's ``Multiprocess``; only the worker's
socket differs. Linux only (elsewhere ``SO_REUSEPORT`` does not balance): other systems use uvicorn's way.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

log = logging.getLogger(__name__)


def balanced() -> bool:
    """Whether this platform spreads connections over ``SO_REUSEPORT`` sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuseport_socket(host: str, port: int, backlog: int = 2048, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT``; listening unless ``listen`` is False."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class _Worker(multiprocess.Process):
    """uvicorn's worker process, listening on its own ``SO_REUSEPORT`` socket (made in the child)."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # runs in the child
        cfg = self.config
        try:
            sock = reuseport_socket(cfg.host, cfg.port, cfg.backlog)
        except OSError as exc:
            log.error("worker cannot listen on %s:%d (%s)", cfg.host, cfg.port, exc)
            sys.exit(STARTUP_FAILURE)  # the supervisor stops instead of restarting it forever
        super().target([sock])


def run_workers(app: str, workers: int, host: str, port: int, **config: Any) -> None:
    """Serve the app factory ``app`` ("module:function") from ``workers`` processes on host:port.

    Raises OSError (address in use, ...) before any worker starts when the port cannot be taken.
    """
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:  # another server (a second twotower serve with SO_REUSEPORT too) would silently share the port
        socket.create_connection((probe, port), timeout=0.5).close()
    except OSError:
        pass
    else:
        raise OSError(98, f"something already listens on {host}:{port}")
    reuseport_socket(host, port, listen=False).close()  # a port taken by another program fails here, once
    cfg = uvicorn.Config(app, factory=True, workers=workers, host=host, port=port, **config)
    # The supervisor makes its workers through this module-level name; the parent process only supervises.
    multiprocess.Process = _Worker  # type: ignore[misc]
    multiprocess.Multiprocess(cfg, sockets=[]).run()
