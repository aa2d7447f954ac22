"""The only code that reads topology YAML. Errors name the field path and the valid choices."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamfed.errors import ConfigError
from streamfed.topology.spec import Topology

REPO_ROOT = Path(__file__).resolve().parents[2]


def _resource_root() -> Path:
    """Where the shipped topologies and schemas are: ``streamfed/_data`` in an installed wheel (the
    build copies them there), else the repository root (a checkout or an editable install)."""
    packaged = Path(__file__).resolve().parents[1] / "_data"
    return packaged if (packaged / "schemas").is_dir() else REPO_ROOT


RESOURCES = _resource_root()
TOPOLOGY_DIRS = (Path("topologies"), RESOURCES / "topologies")
SCHEMA_DIR = RESOURCES / "schemas" / "avro"


def is_schema_path(record_schema: str) -> bool:
    """``model.record_schema`` names a file (``my_record.avsc``, ``schemas/x.avsc``), not a shipped schema."""
    return record_schema.endswith(".avsc") or "/" in record_schema or "\\" in record_schema


def resolve_topology_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bare name such as ``fraud`` looked up in ``topologies/``."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.suffix == "" and len(path.parts) == 1:
        for folder in TOPOLOGY_DIRS:
            candidate = folder / f"{path.name}.yaml"
            if candidate.exists():
                return candidate
        known = sorted({p.stem for d in TOPOLOGY_DIRS if d.is_dir() for p in d.glob("*.yaml")})
        raise ConfigError(f'unknown topology "{name_or_path}"; valid: {", ".join(known)} or a path to a YAML file')
    raise ConfigError(f"topology file {path} does not exist")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A new tree: ``base`` with ``overrides`` laid over it; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid topology"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            msg = f"unknown field; valid: {', '.join(_fields_at(parent))}"
        elif "input" in err and err["type"] in ("literal_error", "enum"):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The valid field names of the spec at ``loc`` (for 'unknown field' errors)."""
    from pydantic import BaseModel

    model: Any = Topology
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = None
        for c in candidates:
            inner = [c, *getattr(c, "__args__", ())]
            for i in inner:
                if isinstance(i, type) and issubclass(i, BaseModel):
                    nxt = i
        if nxt is None:
            return []
        model = nxt
    return sorted(model.model_fields)


def schema_file(name: str, schema_dir: Path = SCHEMA_DIR) -> Path:
    """Where a schema's .avsc is: the path as given, or ``schema_dir/<name>.avsc`` for a shipped name."""
    return Path(name) if is_schema_path(name) else schema_dir / f"{name}.avsc"


def schema_path(schema_name: str, schema_dir: Path = SCHEMA_DIR) -> Path:
    """The .avsc file of a record schema (:func:`schema_file`), checked to exist."""
    path = schema_file(schema_name, schema_dir)
    if is_schema_path(schema_name):
        if not path.is_file():
            raise ConfigError(f"model.record_schema: schema file {path} does not exist")
        return path
    if not path.exists():
        known = sorted(p.stem for p in schema_dir.glob("*.avsc"))
        raise ConfigError(
            f'model.record_schema: unknown schema "{schema_name}"; valid: {", ".join(known)}, '
            "or a path to an .avsc file (relative to the topology file)"
        )
    return path


def schema_fields(schema_name: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """Field name -> Avro type of a record schema (a shipped one's name or an .avsc path)."""
    path = schema_path(schema_name, schema_dir)
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"model.record_schema: {path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "record" or not isinstance(doc.get("fields"), list):
        raise ConfigError(f"model.record_schema: {path} is not an Avro record schema (type record, with fields)")
    return {f["name"]: f["type"] for f in doc["fields"]}


def _check_against_schema(topo: Topology, source: str) -> None:
    try:
        fields = schema_fields(topo.model.record_schema)
    except ConfigError as exc:
        raise ConfigError(f"{source}: invalid topology\n  {exc}") from exc
    problems = []
    for name in topo.model.features.input_fields():
        if name not in fields:
            problems.append(f"  model.features: field {name!r} is not in schema {topo.model.record_schema}")
    if topo.model.label not in fields:
        problems.append(f"  model.label: field {topo.model.label!r} is not in schema {topo.model.record_schema}")
    for key in ("id_field", "site_field"):
        name = getattr(topo.model, key)
        if name is not None and name not in fields:
            problems.append(f"  model.{key}: field {name!r} is not in schema {topo.model.record_schema}")
    if problems:
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: invalid topology\n" + "\n".join(problems) + f"\n  valid fields: {valid}")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(kafka: dict[str, Any], source: str) -> None:
    """Replace ``${VAR}`` in Kafka settings with the environment's value (for secrets such as
    ``sasl.password``, which then never sit in the file)."""
    for group in ("settings", "consumer_settings", "producer_settings"):
        values = kafka.get(group)
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, str) and "${" in value:

                def sub(m: re.Match[str], key: str = key, group: str = group) -> str:
                    var = m.group(1)
                    if var not in os.environ:
                        raise ConfigError(f"{source}: kafka.{group}.{key} refers to ${{{var}}}, which is not set")
                    return os.environ[var]

                values[key] = _ENV.sub(sub, value)


def load_topology(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Topology:
    """Read, merge ``overrides`` into, and validate a topology file.

    Relative paths inside the file (data sources, keys, a record schema given as a path) are
    resolved against the file's folder;
    ``state_dir`` is resolved against the working directory.
    """
    file = resolve_topology_path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a topology is a mapping at the top level")
    data = _merge(raw, overrides or {})
    if isinstance(data.get("kafka"), dict):
        _expand_env(data["kafka"], str(file))
    base = file.resolve().parent
    model = data.get("model")
    schema = model.get("record_schema") if isinstance(model, dict) else None
    if isinstance(schema, str) and is_schema_path(schema) and not Path(schema).is_absolute():
        model["record_schema"] = str((base / schema).resolve())
    for site in data.get("sites") or []:
        if not isinstance(site, dict):
            continue
        src = site.get("source")
        if isinstance(src, dict) and isinstance(src.get("path"), str) and not Path(src["path"]).is_absolute():
            src["path"] = str((base / src["path"]).resolve())
        for key in ("public_key", "private_key"):
            if isinstance(site.get(key), str) and not Path(site[key]).is_absolute():
                site[key] = str(base / site[key])
    try:
        topo = Topology.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(str(file), exc)) from exc
    _check_against_schema(topo, str(file))
    return topo
