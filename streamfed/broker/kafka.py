"""Apache Kafka (KRaft) brokers on loopback, from the jars ``deploy/kafka/fetch`` resolves from Maven Central.

:class:`KafkaCluster` starts ``n`` combined broker+controller nodes (``process.roles=broker,controller``)
on free loopback ports, each with its own data directory, formats their storage with one cluster id,
waits until the cluster serves metadata with every broker registered, and stops them. Nodes can be
killed (``kill -9``), restarted on the same ports and data, and frozen (``SIGSTOP``) to cut them off:
what the reliability tests need. With three nodes every internal topic is replicated three times
(``min.insync.replicas`` 2).

The jars come from ``STREAMFED_KAFKA_LIBS`` (a folder of jars) or ``deploy/kafka/fetch`` (which keeps
them in ``~/.cache/streamfed/kafka``); the JVM from ``JAVA_HOME`` or the ``java`` on the path (17+).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from streamfed.broker.embedded import free_port
from streamfed.errors import BrokerError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH = REPO_ROOT / "deploy" / "kafka" / "fetch"

LOG4J = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def kafka_libs() -> Path:
    """The folder of Apache Kafka's jars: ``STREAMFED_KAFKA_LIBS``, or what ``deploy/kafka/fetch`` keeps."""
    env = os.environ.get("STREAMFED_KAFKA_LIBS")
    if env:
        path = Path(env)
        if not any(path.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"STREAMFED_KAFKA_LIBS={env} holds no kafka_2.13 jar")
        return path
    if not FETCH.is_file():
        raise BrokerError(f"no {FETCH}: Apache Kafka is fetched by the repository's deploy/kafka/fetch")
    proc = subprocess.run([str(FETCH)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BrokerError(f"deploy/kafka/fetch failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "libs"


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError("Apache Kafka needs Java 17 or newer: set JAVA_HOME or put java on the PATH")
    return found


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class KafkaCluster:
    """``brokers`` Apache Kafka nodes in KRaft combined mode on loopback.

    >>> with KafkaCluster(brokers=1) as kafka:  # doctest: +SKIP
    ...     print(kafka.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        brokers: int = 1,
        folder: Path | None = None,
        heap_mb: int = 512,
        settings: dict[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.size = brokers
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="streamfed-kafka-"))
        self.heap_mb = heap_mb
        self.settings = dict(settings or {})
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes = [KafkaNode(i + 1, free_port(), free_port(), self.folder / f"node-{i + 1}") for i in range(brokers)]
        self._libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    # -- configuration ------------------------------------------------------------------------------
    def _properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, self.size)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.folder / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            "transaction.state.log.num.partitions": "3",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "auto.create.topics.enable": "false",
            "log.cleaner.backoff.ms": "1000",
            "log.retention.check.interval.ms": "5000",
            "message.max.bytes": str(64 << 20),
            "replica.fetch.max.bytes": str(64 << 20),
            "socket.request.max.bytes": str(128 << 20),
            # a broker that stops answering is out of the ISR (and loses its leaderships) quickly
            "replica.lag.time.max.ms": "5000",
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "controller.quorum.election.timeout.ms": "1000",
            "controller.quorum.fetch.timeout.ms": "2000",
        }
        props.update(self.settings)
        props.update(node.extra)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, main: str, *args: str, node: KafkaNode) -> list[str]:
        assert self._libs is not None
        return [
            java_binary(),
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.folder / 'log4j2.properties'}",
            "-cp",
            str(self._libs / "*"),
            main,
            *args,
        ]

    def _prepare(self, node: KafkaNode) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        (node.folder / "server.properties").write_text(self._properties(node))
        (node.folder / "log4j2.properties").write_text(LOG4J.format(log=node.folder / "broker.log"))
        if (node.folder / "data" / "meta.properties").exists():
            return
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={self.cluster_id}",  # one argument: an id may start with "-"
            "-c",
            str(node.folder / "server.properties"),
            node=node,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise BrokerError(f"formatting Kafka storage of node {node.node_id} failed: {proc.stderr[-2000:]}")

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> str:
        self._libs = self._libs or kafka_libs()
        for node in self.nodes:
            self._prepare(node)
        for node in self.nodes:
            self._launch(node)
        self.wait_ready(timeout_s)
        log.info("Apache Kafka (%d broker(s), cluster %s) on %s", self.size, self.cluster_id, self.bootstrap)
        return self.bootstrap

    def _launch(self, node: KafkaNode) -> None:
        out = open(node.folder / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        cmd = self._java("kafka.Kafka", str(node.folder / "server.properties"), node=node)
        node.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node.paused = False

    def wait_ready(self, timeout_s: float = 90.0, brokers: int | None = None, only: KafkaNode | None = None) -> None:
        """Until the cluster answers metadata with ``brokers`` (default: every live node) registered;
        with ``only``, until that node itself answers."""
        from confluent_kafka.admin import AdminClient

        want = brokers if brokers is not None else sum(1 for n in self.nodes if self._alive(n))
        live = only.address if only is not None else ",".join(n.address for n in self.nodes if self._alive(n))
        if only is not None:
            _wait_port(only.port, timeout_s)
        admin = AdminClient({"bootstrap.servers": live, "log_level": 0, "logger": _QUIET})
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise BrokerError(
                        f"Kafka node {node.node_id} exited with code {node.proc.returncode}; "
                        f"see {node.folder / 'broker.log'}"
                    )
            try:
                md = admin.list_topics(timeout=2)
                if len(md.brokers) >= want:
                    return
                last = f"{len(md.brokers)} of {want} brokers registered"
            except Exception as exc:  # the client is still connecting
                last = str(exc)
            time.sleep(0.25)
        raise BrokerError(f"Apache Kafka did not become ready in {timeout_s:.0f} s ({last})")

    @property
    def running(self) -> bool:
        """Every node's process is alive."""
        return all(self._alive(n) for n in self.nodes)

    @staticmethod
    def _alive(node: KafkaNode) -> bool:
        return node.proc is not None and node.proc.poll() is None

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def kill(self, node_id: int) -> None:
        """``kill -9`` one node: no shutdown, no flush; its data directory stays."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)

    def restart(self, node_id: int, timeout_s: float = 90.0) -> None:
        """Start a stopped or killed node again on its ports and data directory."""
        node = self.node(node_id)
        self.kill(node_id)
        self._launch(node)
        self.wait_ready(timeout_s, only=node)

    def pause(self, node_id: int) -> None:
        """Freeze a node (SIGSTOP): to its peers and clients it stops answering, as if cut off."""
        node = self.node(node_id)
        if node.proc is not None:
            os.killpg(node.proc.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: int) -> None:
        node = self.node(node_id)
        if node.proc is not None:
            os.killpg(node.proc.pid, signal.SIGCONT)
            node.paused = False

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 20 s) and remove a folder this cluster made."""
        procs = []
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen node cannot act on SIGTERM
                proc.terminate()
                procs.append(proc)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _wait_port(port: int, timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BrokerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


class _Quiet:
    """A logger for librdkafka that drops everything (the cluster is still starting)."""

    def log(self, *args: object, **kwargs: object) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return self.log


_QUIET = _Quiet()
