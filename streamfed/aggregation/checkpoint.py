"""The aggregator's local checkpoint, written around each Kafka transaction.

Before a commit the new state is written as *pending* next to the last *committed* one; after the
commit it is promoted. On restart, the group's committed offsets on the broker say which of the
two the broker saw: if they equal the pending state's offsets, that transaction committed.
A crash anywhere thus resumes at the right version and never counts an update twice.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, TopicPartition

from streamfed.errors import AggregationError
from streamfed.serde.tensors import params_to_bytes, sha256_hex

log = logging.getLogger(__name__)


@dataclass
class AggregatorState:
    version: int
    params: npt.NDArray[np.float32]
    last_sequence: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    cluster_id: str = ""
    opt: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)  # server optimizer state
    version_times: dict[int, int] = field(default_factory=dict)  # recent version -> commit time (ms)

    @property
    def params_sha256(self) -> str:
        return sha256_hex(params_to_bytes(self.params))

    def copy(self) -> AggregatorState:
        return AggregatorState(
            self.version,
            self.params.copy(),
            dict(self.last_sequence),
            dict(self.offsets),
            self.cluster_id,
            {k: v.copy() for k, v in self.opt.items()},
            dict(self.version_times),
        )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class Checkpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / "checkpoint.json"

    def _save_params(self, state: AggregatorState) -> str:
        """Parameters and server-optimizer state in one file, named by version and content."""
        digest = state.params_sha256[:12]
        if state.opt:
            digest += "-" + sha256_hex(b"".join(state.opt[k].tobytes() for k in sorted(state.opt)))[:8]
        name = f"params-{state.version}-{digest}.npz"
        path = self.folder / name
        if not path.exists():
            tmp = self.folder / (name + ".tmp")
            with open(tmp, "wb") as fh:
                np.savez(fh, params=state.params, **{f"opt_{k}": v for k, v in state.opt.items()})
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        return name

    def _meta(self, state: AggregatorState) -> dict[str, object]:
        d = asdict(state)
        d.pop("params")
        d.pop("opt")
        d["params_file"] = self._save_params(state)
        return d

    def _load_state(self, meta: dict[str, object]) -> AggregatorState:
        path = self.folder / str(meta["params_file"])
        opt: dict[str, npt.NDArray[np.float32]] = {}
        if path.suffix == ".npy":  # written before the server optimizer had state
            params = np.load(path).astype(np.float32)
        else:
            with np.load(path) as z:
                params = z["params"].astype(np.float32)
                opt = {k[4:]: z[k].astype(np.float32) for k in z.files if k.startswith("opt_")}
        return AggregatorState(
            version=int(meta["version"]),  # type: ignore[call-overload]
            params=params,
            last_sequence={k: int(v) for k, v in dict(meta["last_sequence"]).items()},  # type: ignore[call-overload]
            offsets={k: int(v) for k, v in dict(meta["offsets"]).items()},  # type: ignore[call-overload]
            cluster_id=str(meta.get("cluster_id", "")),
            opt=opt,
            version_times={int(k): int(v) for k, v in dict(meta.get("version_times", {})).items()},  # type: ignore[call-overload]
        )

    def load(self) -> tuple[AggregatorState, AggregatorState | None] | None:
        """(committed, pending) or None when there is no checkpoint yet."""
        if not self.file.exists():
            return None
        doc = json.loads(self.file.read_text())
        committed = self._load_state(doc["committed"])
        pending = self._load_state(doc["pending"]) if doc.get("pending") else None
        return committed, pending

    def write(self, committed: AggregatorState, pending: AggregatorState | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        committed_meta = self._meta(committed)
        pending_meta = self._meta(pending) if pending else None
        doc = {"committed": committed_meta, "pending": pending_meta}
        _atomic_write(self.file, json.dumps(doc, indent=1).encode())
        keep = {committed_meta["params_file"]} | ({pending_meta["params_file"]} if pending_meta else set())
        for old in [*self.folder.glob("params-*.npy"), *self.folder.glob("params-*.npz")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def resume(self, consumer: Consumer, cluster_id: str, initial: npt.NDArray[np.float32]) -> AggregatorState:
        """The state to resume from: the committed one, or the pending one if the broker has its offsets
        (its transaction committed); version 0 without a checkpoint. Written back before returning."""
        loaded = self.load()
        if loaded is None:
            state = AggregatorState(0, initial.astype(np.float32), cluster_id=cluster_id)
        else:
            committed, pending = loaded
            state = committed
            if pending is not None and pending.offsets:
                tps = [_topic_partition(k) for k in pending.offsets]
                on_broker = {f"{tp.topic}:{tp.partition}": tp.offset for tp in consumer.committed(tps, 30)}
                if all(on_broker.get(k) == v for k, v in pending.offsets.items()):
                    state = pending
                    log.info("checkpoint: the pending transaction for version %d had committed", pending.version)
                else:
                    log.info(
                        "checkpoint: the pending transaction for version %d had not committed; resuming at %d",
                        pending.version,
                        committed.version,
                    )
            if state.cluster_id and state.cluster_id != cluster_id:
                log.warning(
                    "checkpoint is from cluster %s, broker is %s: keeping version %d and sequences, "
                    "reading updates from the group's offsets",
                    state.cluster_id,
                    cluster_id,
                    state.version,
                )
                state.offsets = {}
            state.cluster_id = cluster_id
        if state.params.shape != initial.shape:
            raise AggregationError(
                f"checkpoint in {self.folder} holds {state.params.size} parameters but the model has "
                f"{initial.size}: a changed topology needs a new state_dir"
            )
        self.write(state)
        return state


def _topic_partition(key: str) -> TopicPartition:
    """``"topic:partition"`` (the checkpoint's offset keys) -> TopicPartition."""
    topic, part = key.rsplit(":", 1)
    return TopicPartition(topic, int(part))
