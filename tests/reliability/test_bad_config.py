"""Every field of the topology with a wrong value: an error naming the field (and the valid choices
of a choice field) before anything starts."""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml
from pydantic import BaseModel

from streamfed.errors import ConfigError
from streamfed.topology import load_topology
from streamfed.topology.loader import resolve_topology_path
from streamfed.topology.spec import SecureAggregationSpec, SourceSpec, Topology
from tests.integration.helpers import cli

pytestmark = pytest.mark.reliability

# Optional sections the shipped topology leaves out, with the least that makes them valid.
MINIMAL: dict[type[BaseModel], dict[str, Any]] = {
    SourceSpec: {"path": "data.csv", "label_column": "y", "label_positive": ["1"]},
    SecureAggregationSpec: {},
}


def _base() -> dict[str, Any]:
    data = yaml.safe_load(resolve_topology_path("fraud").read_text())
    data["sites"][0].setdefault("source", MINIMAL[SourceSpec])
    return data


def _unwrap(ann: Any) -> list[Any]:
    """The non-None members of an annotation (``X | None`` -> [X]); Annotated is stripped."""
    if typing.get_origin(ann) is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if typing.get_origin(ann) in (Union, types.UnionType):
        return [m for a in typing.get_args(ann) if a is not type(None) for m in _unwrap(a)]
    return [ann]


def _wrong_value(ann: Any) -> Any:
    """A value of the wrong type (or outside the choices) for a field of annotation ``ann``."""
    members = _unwrap(ann)
    first = members[0]
    origin = typing.get_origin(first)
    if origin is Literal:
        return "no-such-choice"
    if origin is list:
        return "not a list"
    if origin is dict:
        return ["not", "a", "mapping"]
    if isinstance(first, type) and issubclass(first, BaseModel):
        return "not a mapping"
    if first is bool:
        return "perhaps"
    if first in (int, float):
        return "many"
    if first is str or first is Path:
        return {"not": "a string"}
    return object()  # pragma: no cover - a new kind of field makes the walk fail loudly below


def _cases() -> list[tuple[str, list[Any], Any, list[str]]]:
    """(dotted path, path parts, wrong value, valid choices) for every field reachable from Topology."""
    out: list[tuple[str, list[Any], Any, list[str]]] = []

    def walk(model: type[BaseModel], prefix: list[Any], present: Any) -> None:
        for name, field in model.model_fields.items():
            parts = [*prefix, name]
            ann = field.annotation
            choices = [str(c) for m in _unwrap(ann) if typing.get_origin(m) is Literal for c in typing.get_args(m)]
            out.append((".".join(map(str, parts)), parts, _wrong_value(ann), choices))
            value = present.get(name) if isinstance(present, dict) else None
            for member in _unwrap(ann):
                if isinstance(member, type) and issubclass(member, BaseModel):
                    walk(member, parts, value if isinstance(value, dict) else MINIMAL.get(member, {}))
                elif typing.get_origin(member) is list:
                    (item,) = typing.get_args(member)
                    if isinstance(item, type) and issubclass(item, BaseModel):
                        first = value[0] if isinstance(value, list) and value else MINIMAL.get(item, {})
                        walk(item, [*parts, 0], first)

    walk(Topology, [], _base())
    return out


CASES = _cases()


def _set(data: dict[str, Any], parts: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[part]
            continue
        if node.get(part) is None:
            node[part] = [{}] if isinstance(nxt, int) else {}
        node = node[part]
    node[parts[-1]] = value
    return out


def test_the_walk_covers_every_section() -> None:
    paths = {c[0] for c in CASES}
    for expected in (
        "name",
        "model.deep.device",
        "model.features.numeric.0.transform",
        "model.features.categorical.0.values",
        "aggregation.rule",
        "aggregation.secure.threshold",
        "kafka.producer_settings",
        "sites.0.simulator.rate",
        "sites.0.source.format",
        "energy.cpu_watts",
        "metrics.aggregator_port",
        "state_dir",
    ):
        assert expected in paths
    assert len(CASES) > 100


@pytest.mark.parametrize(("path", "parts", "value", "choices"), CASES, ids=[c[0] for c in CASES])
def test_a_wrong_value_names_the_field_and_the_choices(
    tmp_path: Path, path: str, parts: list[Any], value: Any, choices: list[str]
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_set(_base(), parts, value), sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_topology(file)
    msg = str(info.value)
    assert msg.startswith(f"{file}: invalid topology"), msg
    lines = [line.strip() for line in msg.splitlines()[1:]]
    assert any(line.startswith(f"{path}:") for line in lines), f"no line for {path} in:\n{msg}"
    for choice in choices:
        assert f"'{choice}'" in msg, f"choice {choice!r} of {path} not listed in:\n{msg}"


def test_duplicate_site_ids_are_located_at_sites(tmp_path: Path) -> None:
    data = _base()
    data["sites"][1]["id"] = data["sites"][0]["id"]
    file = tmp_path / "dup.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_topology(file)
    msg = str(info.value)
    assert f"sites: Value error, site ids must be unique; repeated: {data['sites'][0]['id']}" in msg
    assert "(top level)" not in msg


def test_an_unknown_record_schema_error_names_the_file_and_the_schemas(tmp_path: Path) -> None:
    data = _base()
    data["model"]["record_schema"] = "no_such_schema"
    file = tmp_path / "schema.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_topology(file)
    msg = str(info.value)
    assert msg.startswith(f"{file}: invalid topology")
    assert 'model.record_schema: unknown schema "no_such_schema"; valid: ' in msg
    assert "card_transaction" in msg.split("valid:", 1)[1]


@pytest.mark.parametrize("command", ["site", "aggregator"])
def test_services_refuse_a_bad_topology_before_touching_kafka(tmp_path: Path, command: str) -> None:
    """Nothing listens on the bootstrap address: the error must come from the topology, at once."""
    import subprocess

    data = _base()
    data["aggregation"]["rule"] = "majority_vote"
    data["kafka"]["bootstrap_servers"] = "127.0.0.1:1"
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["--topology", str(file)] + (["--site", data["sites"][0]["id"]] if command == "site" else [])
    done = subprocess.run(cli(command, *args), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "aggregation.rule" in out
    for choice in ("mean", "median", "trimmed_mean", "norm_bound"):
        assert choice in out
    assert "no Kafka broker answers" not in out
