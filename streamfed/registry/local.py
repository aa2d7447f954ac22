"""The aggregator's local cache of committed versions and lineage (Avro files, one per version)."""

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

    def get_version(self, version: int) -> dict[str, Any] | None:
        path = self.folder / f"version-{version:09d}.avro"
        return self.versions.decode(path.read_bytes()) if path.exists() else None

    def get_lineage(self, version: int) -> dict[str, Any] | None:
        path = self.folder / f"lineage-{version:09d}.avro"
        return self.lineage.decode(path.read_bytes()) if path.exists() else None

    def list_versions(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("version-*.avro"))
