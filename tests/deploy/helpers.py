"""Run the docker-compose deployment's commands by hand: the compose file's streamfed services become
local processes against an embedded broker, with the container paths and ports mapped to this machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from streamfed.broker.embedded import free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "streamfed.yml"
COMPOSE_BOOTSTRAP = "kafka:9092"
STATE_MOUNT = "/state"
PORT_FLAGS = ("--metrics-port", "--port")

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` / ``${NAME-default}`` / ``$$`` with every variable unset.

    The test runs what a plain ``docker compose up`` runs, so defaults only; a ``${NAME}`` without a
    default would make the file depend on the caller's environment and fails here.
    """

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("op") is None:
            raise AssertionError(f"${{{m.group('name')}}} in docker-compose.yml has no default")
        return m.group("default")

    return _VAR.sub(sub, value)


def _interpolate_all(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolate_all(v) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_all(v) for k, v in node.items()}
    return node


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file with YAML anchors merged and variables set to their defaults."""
    return dict(_interpolate_all(yaml.safe_load(path.read_text())))


def streamfed_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def streamfed_commands(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run a ``streamfed`` command (the image's entrypoint, not overridden)."""
    return {
        name: svc
        for name, svc in streamfed_services(compose).items()
        if (svc.get("entrypoint") or ["streamfed"]) == ["streamfed"]
    }


def is_one_shot(svc: dict[str, Any]) -> bool:
    return str(svc.get("restart", "no")).split(":")[0] in ("no", "on-failure")


def command_of(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    assert isinstance(cmd, list), f"write commands as lists (exec form), got {cmd!r}"
    return [str(a) for a in cmd]


def option(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of each ``./host:/container[:ro]`` bind mount."""
    out = {}
    for vol in svc.get("volumes", []):
        parts = str(vol).split(":")
        if parts[0].startswith("."):
            out[parts[1]] = (REPO / parts[0]).resolve()
    return out


@dataclass
class LocalCommand:
    """A compose service's command rewritten for this machine."""

    service: str
    argv: list[str]
    ports: dict[int, int] = field(default_factory=dict)  # container port -> local port

    @property
    def port(self) -> int | None:
        return next(iter(self.ports.values()), None)


def localize(
    name: str,
    svc: dict[str, Any],
    bootstrap: str,
    state_dir: Path,
    topology: str | None = None,
) -> LocalCommand:
    """The service's entrypoint + command as a local argv: ``streamfed`` -> ``python -m streamfed``,
    ``python`` -> this interpreter, kafka:9092 -> ``bootstrap``, /state -> ``state_dir``, every port
    option -> a free port, bind-mounted container paths -> the repository's files, and the
    topology (``-t``) -> ``topology`` when given."""
    entry = svc.get("entrypoint") or ["streamfed"]
    if entry[0] == "streamfed":
        argv = [sys.executable, "-m", "streamfed", *entry[1:]]
    elif entry[0] == "python":
        argv = [sys.executable, *entry[1:]]
    else:
        raise AssertionError(f"{name}: unexpected entrypoint {entry}")
    args = command_of(svc)
    ports: dict[int, int] = {}
    mounts = bind_mounts(svc)
    out: list[str] = []
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else ""
        if prev in PORT_FLAGS:
            local = free_port()
            ports[int(arg)] = local
            arg = str(local)
        elif prev == "--bootstrap":
            assert arg == COMPOSE_BOOTSTRAP, f"{name}: bootstrap {arg}, expected {COMPOSE_BOOTSTRAP}"
            arg = bootstrap
        elif prev == "--state-dir":
            assert arg == STATE_MOUNT, f"{name}: state dir {arg}, expected the shared volume {STATE_MOUNT}"
            arg = str(state_dir)
        elif prev in ("-t", "--topology") and topology is not None:
            arg = topology
        out.append(arg)
    argv = [str(mounts.get(a, a)) for a in argv] + out
    return LocalCommand(name, argv, ports)


def healthcheck_argv(svc: dict[str, Any], ports: dict[int, int]) -> list[str]:
    """A ``["CMD", "python", "-c", ...]`` health check as a local argv with the ports mapped."""
    test = [str(a) for a in svc["healthcheck"]["test"]]
    assert test[:2] == ["CMD", "python"], f"expected a python health check, got {test}"
    argv = [sys.executable, *test[2:]]
    for container, local in ports.items():
        argv = [a.replace(f":{container}/", f":{local}/") for a in argv]
    return argv


def run_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def start(cmd: LocalCommand, logs: Path, cwd: Path) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{cmd.service}.log", "ab") as fh:
        return subprocess.Popen(cmd.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=run_env())


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM, then the exit code (SIGKILL, and -9, if it does not stop within ``timeout_s``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL whatever still runs (clean-up after a failed test)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 1.0) -> T:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def http_get(url: str, timeout_s: float = 3.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return str(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def scrape(port: int) -> dict[str, float]:
    """Sample name (with labels) -> value from a local /metrics endpoint; empty when unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http_get(f"http://127.0.0.1:{port}/metrics")
    if text is None:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def names(samples: dict[str, float]) -> set[str]:
    return {k.split("{", 1)[0] for k in samples}


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def logs_of(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(logs.glob("*.log")))
