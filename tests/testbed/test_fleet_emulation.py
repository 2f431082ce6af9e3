"""Recording against emulated fake-engine nodes: account timing is fast and records what
sleep timing (live serving) takes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_node.client import AsyncEdgeNodeClient
from edge_node.emulation import DEVICE_PROFILES
from testbed.categories import Item
from testbed.fleet import Fleet, NodeSpec
from testbed.recording import ResponseStore, record_all, record_expert, stretch_from_metadata

AGX = DEVICE_PROFILES["orin-agx"]
ITEMS = [
    Item("sst2", f"item{i}", f"prompt number {i}", (" a b c", " d e f"), 0, "sum") for i in range(3)
]
HOST_S = 6 * 0.01  # six choice tokens at 10 ms each


async def test_account_recording_matches_sleep_recording_in_a_fraction_of_the_time(
    tmp_path: Path,
) -> None:
    spec = NodeSpec("agx", engine="fake", device="orin-agx", fake_token_delay_s=0.01)
    fleet = Fleet([spec])  # nodes start in the default, real-time sleep mode
    try:
        targets = await fleet.start()
        timings: dict[str, float] = {}
        stores: dict[str, ResponseStore] = {}
        for timing in ("sleep", "account"):
            stores[timing] = ResponseStore(tmp_path / timing)
            started = time.monotonic()
            new = await record_expert(
                stores[timing], "agx", targets["agx"], ITEMS, on_done=lambda _: None, timing=timing
            )
            timings[timing] = time.monotonic() - started
            assert new == len(ITEMS)
        async with AsyncEdgeNodeClient(targets["agx"]) as client:
            info = await client.info()
    finally:
        await fleet.aclose()
    assert info.energy_source == "estimated" and "orin-agx" in info.energy_scope
    slept = stores["sleep"].load("agx", "sst2")
    accounted = stores["account"].load("agx", "sst2")
    assert timings["sleep"] >= len(ITEMS) * AGX.prefill_slowdown * HOST_S * 0.9
    assert timings["account"] < 0.5 * timings["sleep"]
    for key, live in slept.items():
        recorded = accounted[key]
        assert live.stretch_s == 0.0
        assert recorded.stretch_s == pytest.approx((AGX.prefill_slowdown - 1) * HOST_S, rel=0.3)
        # the recorded latency is what live serving takes: caller wall time plus the stretch
        assert recorded.latency_s == pytest.approx(live.latency_s, rel=0.3)
        assert recorded.node_total_s == pytest.approx(live.node_total_s, rel=0.3)
        assert recorded.energy_j == pytest.approx(live.energy_j, rel=0.3)
        assert recorded.energy_emulated and recorded.energy_source == "estimated"
        assert recorded.logprobs == live.logprobs


async def test_fleet_starts_nodes_in_account_timing_when_asked(tmp_path: Path) -> None:
    specs = [
        NodeSpec(
            "nano",
            engine="fake",
            device="orin-nano",
            fake_token_delay_s=0.01,
            emulate_timing="account",
        ),
        NodeSpec("plain", engine="fake", fake_token_delay_s=0.01),
    ]
    store = ResponseStore(tmp_path)
    fleet = Fleet(specs)
    try:
        targets = await fleet.start()
        started = time.monotonic()
        # sleep mode would take 3 x 33 x 60 ms = 6 s on the nano
        await record_all(store, targets, ITEMS, progress=False, timing="account", max_in_flight=1)
        assert time.monotonic() - started < 3.0
    finally:
        await fleet.aclose()
    nano = store.load("nano", "sst2")
    plain = store.load("plain", "sst2")
    for key, response in nano.items():
        assert (
            response.stretch_s > 0.5 * (DEVICE_PROFILES["orin-nano"].prefill_slowdown - 1) * HOST_S
        )
        assert response.latency_s > plain[key].latency_s + response.stretch_s * 0.9
        assert response.energy_emulated
        assert plain[key].stretch_s == 0.0 and not plain[key].energy_emulated


def test_stretch_metadata_is_read_leniently() -> None:
    assert stretch_from_metadata(None) == 0.0
    assert stretch_from_metadata([("other", "1")]) == 0.0
    assert stretch_from_metadata([("moe2-emulated-stretch-s", "0.25")]) == 0.25
    assert stretch_from_metadata([("moe2-emulated-stretch-s", b"1.5")]) == 1.5
    assert stretch_from_metadata([("moe2-emulated-stretch-s", "nan?")]) == 0.0
    assert stretch_from_metadata([("moe2-emulated-stretch-s", "-2")]) == 0.0
