"""Topology loading: the shipped files load, overrides deep-merge, and every error names the
field path and the valid choices."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfed.errors import ConfigError
from streamfed.topology import Topology, load_topology
from streamfed.topology.loader import REPO_ROOT

FRAUD_YAML = REPO_ROOT / "topologies" / "fraud.yaml"


def _fraud() -> dict[str, Any]:
    return yaml.safe_load(FRAUD_YAML.read_text())


def _write(tmp_path: Path, data: Any, name: str = "variant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _load_error(tmp_path: Path, data: Any) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    return str(info.value)


# -- the shipped topologies ---------------------------------------------------------------------


def test_fraud_loads_by_name() -> None:
    topo = load_topology("fraud")
    assert isinstance(topo, Topology)
    assert topo.name == "fraud"
    assert [s.id for s in topo.sites] == ["bank-north", "bank-south", "bank-east"]
    assert topo.model.record_schema == "card_transaction"
    assert topo.model.label == "is_fraud"
    assert topo.aggregation.rule == "mean" and topo.aggregation.buffer_size == 3
    assert topo.updates_topic == "streamfed.fraud.updates"
    assert topo.transactions_topic(topo.sites[0]) == "streamfed.fraud.transactions.bank-north"
    # hour is cyclic, so it contributes two outputs; 8 categories; one boolean
    assert len(topo.model.features.names()) == 14
    assert [s.simulator.fraud_rate for s in topo.sites if s.simulator] == [0.01, 0.03, 0.06]


def test_heart_loads_by_name_with_sources_resolved_against_the_yaml_folder() -> None:
    topo = load_topology("heart")
    assert topo.name == "heart"
    assert [s.id for s in topo.sites] == ["cleveland", "budapest", "zurich-basel", "va-long-beach"]
    names = []
    for site in topo.sites:
        assert site.source is not None
        assert site.source.path.is_absolute()
        assert site.source.path.exists(), site.source.path
        names.append(site.source.path.name)
    assert names == [
        "processed.cleveland.data",
        "processed.hungarian.data",
        "processed.switzerland.data",
        "processed.va.data",
    ]
    # the YAML anchor merge gave every site the shared settings
    assert {s.source.label_threshold for s in topo.sites if s.source} == {0}
    assert {s.source.header for s in topo.sites if s.source} == {False}


def test_loads_from_a_path(tmp_path: Path) -> None:
    data = _fraud()
    data["name"] = "copy"
    topo = load_topology(_write(tmp_path, data))
    assert topo.name == "copy"
    assert topo.models_topic == "streamfed.copy.models"


def test_relative_key_paths_resolve_against_the_yaml_folder(tmp_path: Path) -> None:
    data = _fraud()
    data["sites"][0]["public_key"] = "keys/north.pub"
    topo = load_topology(_write(tmp_path, data))
    assert topo.public_key_path(topo.sites[0]) == tmp_path.resolve() / "keys" / "north.pub"
    # the other sites default to <state_dir>/<name>/keys/<id>.pub
    assert topo.public_key_path(topo.sites[1]) == Path(".streamfed") / "fraud" / "keys" / "bank-south.pub"


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_deep_merge_and_keep_siblings() -> None:
    base = load_topology("fraud")
    topo = load_topology("fraud", {"kafka": {"bootstrap_servers": "h:1"}})
    assert topo.kafka.bootstrap_servers == "h:1"
    # the sibling keys of the overridden one survive the merge
    assert topo.kafka.consumer_settings == base.kafka.consumer_settings
    assert topo.kafka.consumer_settings["session.timeout.ms"] == 2000
    assert topo.aggregation == base.aggregation


def test_overrides_nested_two_levels_and_lists_replace() -> None:
    topo = load_topology(
        "fraud",
        {"model": {"online": {"learning_rate": 0.5}}, "sites": [{"id": "only"}], "state_dir": "/tmp/x"},
    )
    assert topo.model.online.learning_rate == 0.5
    assert topo.model.online.learner == "logistic"
    assert topo.model.deep.hidden == [8]  # untouched sibling of 'online'
    assert [s.id for s in topo.sites] == ["only"]  # a list is replaced, not merged
    assert topo.home == Path("/tmp/x/fraud")


def test_kafka_settings_expand_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFED_TEST_SECRET", "s3cret")
    topo = load_topology("fraud", {"kafka": {"settings": {"sasl.password": "pw-${STREAMFED_TEST_SECRET}"}}})
    assert topo.kafka.settings["sasl.password"] == "pw-s3cret"


def test_kafka_settings_with_an_unset_variable_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMFED_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"kafka\.settings\.sasl\.password.*STREAMFED_TEST_UNSET"):
        load_topology("fraud", {"kafka": {"settings": {"sasl.password": "${STREAMFED_TEST_UNSET}"}}})


def test_overrides_are_not_mutated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFED_TEST_SECRET", "s3cret")
    overrides = {"kafka": {"settings": {"sasl.password": "${STREAMFED_TEST_SECRET}"}}}
    before = copy.deepcopy(overrides)
    load_topology("fraud", overrides)
    assert overrides == before


# -- errors name the field path and the valid choices ---------------------------------------------


def test_unknown_aggregation_rule_lists_the_rules(tmp_path: Path) -> None:
    data = _fraud()
    data["aggregation"]["rule"] = "krum"
    msg = _load_error(tmp_path, data)
    assert "aggregation.rule" in msg
    assert "'krum'" in msg
    for rule in ("'mean'", "'median'", "'trimmed_mean'", "'norm_bound'"):
        assert rule in msg


@pytest.mark.parametrize(
    ("where", "path", "some_valid"),
    [
        ((), "bogus", ["aggregation", "model", "privacy", "sites", "state_dir"]),
        (("aggregation",), "aggregation.bogus", ["buffer_size", "rule", "max_staleness", "trim_fraction"]),
        (("privacy",), "privacy.bogus", ["epsilon", "delta", "clip_norm", "budget_epsilon"]),
        (("sites", 0, "simulator"), "sites.0.simulator.bogus", ["fraud_rate", "seed", "drift_period_seconds"]),
        (("model", "features", "numeric", 1), "model.features.numeric.1.bogus", ["period", "transform", "missing"]),
    ],
)
def test_unknown_key_lists_the_valid_fields(
    tmp_path: Path, where: tuple[Any, ...], path: str, some_valid: list[str]
) -> None:
    data = _fraud()
    node = data
    for part in where:
        node = node[part]
    node["bogus"] = 1
    msg = _load_error(tmp_path, data)
    line = next(line for line in msg.splitlines() if path in line)
    assert "unknown field; valid:" in line
    valid = line.split("valid:", 1)[1]
    for name in some_valid:
        assert name in valid
    assert "bogus" not in valid


@pytest.mark.parametrize("kind", ["numeric", "boolean", "label"])
def test_field_not_in_the_schema_names_it_and_lists_the_valid_fields(tmp_path: Path, kind: str) -> None:
    data = _fraud()
    if kind == "numeric":
        data["model"]["features"]["numeric"].append({"name": "velocity"})
        where = "model.features"
    elif kind == "boolean":
        data["model"]["features"]["boolean"].append("velocity")
        where = "model.features"
    else:
        data["model"]["label"] = "velocity"
        where = "model.label"
    msg = _load_error(tmp_path, data)
    assert f"{where}: field 'velocity' is not in schema card_transaction" in msg
    valid = msg.split("valid fields:", 1)[1]
    for name in ("amount", "hour", "merchant_category", "is_fraud", "card_present"):
        assert name in valid
    assert "velocity" not in valid


def test_cyclic_without_period(tmp_path: Path) -> None:
    data = _fraud()
    hour = data["model"]["features"]["numeric"][1]
    assert hour["name"] == "hour"
    del hour["period"]
    msg = _load_error(tmp_path, data)
    assert "model.features.numeric.1" in msg
    assert "cyclic" in msg and "period" in msg


def test_duplicate_site_ids(tmp_path: Path) -> None:
    data = _fraud()
    data["sites"][2]["id"] = "bank-north"
    msg = _load_error(tmp_path, data)
    assert "site ids must be unique" in msg
    assert "repeated: bank-north" in msg


def test_norm_bound_rule_without_bound(tmp_path: Path) -> None:
    data = _fraud()
    data["aggregation"]["rule"] = "norm_bound"
    msg = _load_error(tmp_path, data)
    assert "aggregation" in msg
    assert "rule 'norm_bound' needs norm_bound" in msg


def test_norm_bound_rule_with_bound_loads(tmp_path: Path) -> None:
    data = _fraud()
    data["aggregation"].update(rule="norm_bound", norm_bound=2.5)
    topo = load_topology(_write(tmp_path, data))
    assert topo.aggregation.norm_bound == 2.5


def test_unknown_record_schema_lists_the_schemas(tmp_path: Path) -> None:
    data = _fraud()
    data["model"]["record_schema"] = "wire_transfer"
    msg = _load_error(tmp_path, data)
    assert "model.record_schema" in msg
    assert '"wire_transfer"' in msg
    valid = msg.split("valid:", 1)[1]
    for name in ("card_transaction", "clinical_record", "model_update"):
        assert name in valid


def test_unknown_topology_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_topology("no-such-topology")
    msg = str(info.value)
    assert '"no-such-topology"' in msg
    assert "fraud" in msg and "heart" in msg


def test_missing_topology_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_topology(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_topology(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_topology(path)


@pytest.mark.parametrize(
    ("override", "path", "text"),
    [
        ({"privacy": {"epsilon": -1.0}}, "privacy.epsilon", "greater than 0"),
        ({"sites": [{"id": "Bank"}]}, "sites.0.id", "pattern"),
        ({"sites": []}, "sites", "at least 1"),
        ({"model": {"deep": {"device": "tpu"}}}, "model.deep.device", "'cpu'"),
        ({"aggregation": {"max_update_norm": 0.5}}, "max_update_norm", "privacy.clip_norm"),
    ],
)
def test_other_invalid_values_name_the_path(override: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology("fraud", override)
    msg = str(info.value)
    assert path in msg
    assert text in msg


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "topologies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_topology_validates(path: Path) -> None:
    topo = load_topology(path)
    assert topo.name == path.stem
    for site in topo.sites:
        if site.source is not None:
            assert site.source.path.is_absolute()
