"""The aggregator's local cache of committed versions and lineage (Avro files, one per version).

A version is *staged* before its transaction commits and promoted after; an aggregator killed
between the two promotes it on restart when the checkpoint finds that the transaction committed
(:meth:`LocalRegistry.settle`), so the cache never misses a committed version nor holds an aborted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from streamfed.serde.avro import AvroCodec


class LocalRegistry:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.versions = AvroCodec("model_version")
        self.lineage = AvroCodec("lineage")

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put(self, version: dict[str, Any], lineage: dict[str, Any]) -> None:
        v = int(version["version"])
        self._write(self.folder / f"version-{v:09d}.avro", self.versions.encode(version))
        self._write(self.folder / f"lineage-{v:09d}.avro", self.lineage.encode(lineage))
        for name in ("staged-version.avro", "staged-lineage.avro"):
            (self.folder / name).unlink(missing_ok=True)

    def stage(self, version: dict[str, Any], lineage: dict[str, Any]) -> None:
        """Keep the records of a version whose transaction is about to commit."""
        self._write(self.folder / "staged-version.avro", self.versions.encode(version))
        self._write(self.folder / "staged-lineage.avro", self.lineage.encode(lineage))

    def settle(self, committed_version: int) -> bool:
        """After a restart: promote the staged version if it is the committed one, else drop it."""
        v_path, l_path = self.folder / "staged-version.avro", self.folder / "staged-lineage.avro"
        if not v_path.exists() or not l_path.exists():
            return False
        version, lineage = self.versions.decode(v_path.read_bytes()), self.lineage.decode(l_path.read_bytes())
        promoted = int(version["version"]) == committed_version and self.get_version(committed_version) is None
        if promoted:
            self.put(version, lineage)
        v_path.unlink(missing_ok=True)
        l_path.unlink(missing_ok=True)
        return promoted

    def get_version(self, version: int) -> dict[str, Any] | None:
        path = self.folder / f"version-{version:09d}.avro"
        return self.versions.decode(path.read_bytes()) if path.exists() else None

    def get_lineage(self, version: int) -> dict[str, Any] | None:
        path = self.folder / f"lineage-{version:09d}.avro"
        return self.lineage.decode(path.read_bytes()) if path.exists() else None

    def list_versions(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("version-*.avro"))
