"""A throw-away ``redis-server`` on a loopback port, for tests, fault drills and benchmarks
(``from redis_server import RedisServer``; benchmarks put ``tests/`` on ``sys.path`` first). It lives with
the tests, not in the installed package.

The real binary, not a mock: the Redis backend's failure handling (refused connections, timeouts, reconnects
after a restart) is only worth something when exercised against a real server. Persistence is off and the
data directory is private, so nothing outlives :meth:`RedisServer.stop`::

    with RedisServer() as server:
        store = open_store(server.url)
        server.restart()   # same port: clients reconnect
        server.pause()     # SIGSTOP: connections hang -> timeouts; resume() with SIGCONT
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_HINT = "run `bash scripts/setup.sh` (it installs Debian's redis-server) or put `redis-server` on PATH"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server on ``127.0.0.1:port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the test process dies, so a crashed run leaves no stray server."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port`` (a free port when ``port`` is None)."""

    def __init__(self, port: int | None = None, dir: str | Path | None = None, start_timeout: float = 10.0) -> None:
        self.port = port or free_port()
        self._own_dir = dir is None
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="tt-redis-"))
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; RuntimeError (with the fix) when it cannot."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server is not installed; {INSTALL_HINT}")
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        logfile = self.dir / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(logfile)]  # fmt: skip
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=preexec)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ping(self.port):
                log.debug("redis-server pid %d on port %d", self.proc.pid, self.port)
                return self
            time.sleep(0.02)
        tail = logfile.read_text(errors="replace")[-2000:] if logfile.is_file() else ""
        self.stop()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer PING within {self.start_timeout} s "
            f"(is the port taken?); its log:\n{tail}"
        )

    def stop(self) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (data is lost: persistence is off)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered (a hung server)."""
        assert self.proc is not None, "start() the server first"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        assert self.proc is not None, "start() the server first"
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
