"""The node's wire converters: one energy type, absent stays absent, the JSON contract kept."""

from __future__ import annotations

import dataclasses

import pytest

from edge_node import wire
from edge_node.client import Energy
from edge_node.results import EnergyReading, NodeInfo, SourceLabel
from protos import edge_node_pb2 as pb

MEASURED = EnergyReading(
    energy_j=1.5,
    source="measured-nvml",
    method="counter",
    scope="GPU board",
    window_s=0.3,
    resolution_s=0.1,
    approximate=False,
    uncertainty_j=0.02,
)


def test_energy_round_trips_and_unknown_figures_stay_absent() -> None:
    assert wire.energy_from_pb(wire.energy_to_pb(MEASURED)) == MEASURED
    above = dataclasses.replace(MEASURED, idle_power_w=2.0, energy_above_idle_j=0.9)
    assert wire.energy_from_pb(wire.energy_to_pb(above)) == above
    assert not wire.energy_to_pb(MEASURED).HasField("idle_power_w")
    unknown = EnergyReading(None, "unavailable", "unavailable", "", 0.2, 0.0, False, None, True)
    message = wire.energy_to_pb(unknown)
    assert not message.HasField("energy_j") and not message.HasField("uncertainty_j")
    assert wire.energy_from_pb(message) == unknown


def test_every_source_label_has_one_wire_value_and_unknown_values_are_unspecified() -> None:
    labels: list[SourceLabel] = list(wire.SOURCE_TO_PB)
    assert len(set(wire.SOURCE_TO_PB.values())) == len(labels)
    assert all(wire.source_from_pb(wire.source_to_pb(label)) == label for label in labels)
    assert wire.source_from_pb(999) == "unspecified"
    assert wire.source_to_pb("unspecified") == pb.ENERGY_SOURCE_UNSPECIFIED


def test_the_sdk_energy_is_the_one_type_and_joules_is_a_deprecated_alias() -> None:
    assert Energy is EnergyReading
    with pytest.warns(DeprecationWarning, match="energy_j"):
        assert MEASURED.joules == MEASURED.energy_j
    assert (
        MEASURED.measured
        and not EnergyReading(1.0, "estimated", "", "", 1, 1, False, None).measured
    )


def test_the_json_energy_object_keeps_its_published_keys() -> None:
    assert list(MEASURED.to_json()) == [
        "joules",
        "source",
        "method",
        "scope",
        "window_s",
        "resolution_s",
        "approximate",
        "uncertainty_j",
        "emulated",
        "idle_power_w",
        "energy_above_idle_j",
        "parts",
    ]
    assert MEASURED.to_json()["joules"] == 1.5


def test_node_info_round_trips() -> None:
    info = NodeInfo(
        "m", "fam", "q4", 2048, "cpu", "Xeon", "estimated", "process", 0.05, ("nvml: no",),
        "draining", "fake", False, 0, 2, 8, "dev", 10, "ab", False, 30, "cpu",
    )  # fmt: skip
    assert wire.node_info_from_pb(wire.node_info_to_pb(info)) == info
