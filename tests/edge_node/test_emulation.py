"""Emulated devices: account timing reports what sleep timing waits, energy in device terms."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import grpc
import pytest

from edge_node.client import Energy, Latency, TokenChunk
from edge_node.config import ConfigError, load_settings
from edge_node.emulation import (
    DEVICE_PROFILES,
    STRETCH_METADATA_KEY,
    TIME_DILATION_DECODE,
    TIME_DILATION_PREFILL,
    TIMING_METADATA_KEY,
    DeviceProfile,
    EmulatedEngine,
    EmulateTiming,
)
from edge_node.energy import ModeledEnergyMeter
from edge_node.engine import FakeEngine, GenerateParams
from edge_node.server import RunningNode, build_engine, build_meter
from edge_node.wire import energy_from_pb, latency_from_pb
from protos import edge_node_pb2 as pb
from protos import edge_node_pb2_grpc as pb_grpc
from tests.helpers.nodes import StartNode

AGX = DEVICE_PROFILES["orin-agx"]
NANO = DEVICE_PROFILES["orin-nano"]
AGX_POWER_W = 48.0
CHOICES = (" a b c", " d e f")  # 6 choice tokens: 60 ms of fake compute at 10 ms per token


async def emulated_node(
    node_factory: StartNode, profile: DeviceProfile, timing: EmulateTiming
) -> RunningNode:
    engine = EmulatedEngine(FakeEngine(token_delay_s=0.01), profile, timing=timing)
    return await node_factory(engine, meter=ModeledEnergyMeter(1.0), emulated=True)


def stretch_of(trailing: Sequence[tuple[str, str | bytes]]) -> float:
    values = [float(v) for k, v in trailing if k == STRETCH_METADATA_KEY]
    assert len(values) == 1, trailing
    return values[0]


async def timed_score(
    node: RunningNode, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[float, Latency, Energy, float]:
    """Wall seconds at the caller, the reported latency and energy, and the stretch entry."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        started = time.monotonic()
        call = pb_grpc.EdgeNodeStub(channel).Score(
            pb.ScoreRequest(prompt="q", choices=list(CHOICES)), timeout=30, metadata=metadata
        )
        response = await call
        wall_s = time.monotonic() - started
        trailing = list(await call.trailing_metadata() or ())
    return (
        wall_s,
        latency_from_pb(response.latency),
        energy_from_pb(response.energy),
        stretch_of(trailing),
    )


async def test_account_timing_does_not_sleep_but_reports_what_sleep_timing_waits(
    node_factory: StartNode,
) -> None:
    sleeping = await emulated_node(node_factory, AGX, "sleep")
    accounting = await emulated_node(node_factory, AGX, "account")
    slept_wall_s, slept, slept_energy, slept_stretch_s = await timed_score(sleeping)
    accounted_wall_s, accounted, accounted_energy, accounted_stretch_s = await timed_score(
        accounting
    )
    host_s = 0.06
    assert slept_wall_s >= AGX.prefill_slowdown * host_s * 0.9  # really waited
    assert accounted_wall_s < 0.5 * slept_wall_s  # did not wait
    assert accounted.total_s == pytest.approx(slept.total_s, rel=0.25)
    assert accounted.prefill_s == pytest.approx(AGX.prefill_slowdown * host_s, rel=0.25)
    assert accounted.queue_s + accounted.prefill_s + accounted.decode_s == pytest.approx(
        accounted.total_s, abs=1e-6
    )
    # the stretch entry: 0 when slept; what was not spent when accounted
    assert slept_stretch_s == 0.0
    assert accounted_stretch_s == pytest.approx((AGX.prefill_slowdown - 1) * host_s, rel=0.25)
    assert accounted_wall_s + accounted_stretch_s == pytest.approx(slept_wall_s, rel=0.25)
    # the same device energy either way, labelled estimated and emulated
    assert accounted_energy.energy_j == pytest.approx(slept_energy.energy_j, rel=0.25)
    expected_device_s = host_s * AGX.prefill_slowdown / TIME_DILATION_PREFILL
    for energy in (slept_energy, accounted_energy):
        assert energy.source == "estimated" and energy.method == "model_estimate"
        assert energy.emulated is True and not energy.measured
        assert energy.window_s == pytest.approx(expected_device_s, rel=0.25)
        assert energy.energy_j == pytest.approx(AGX_POWER_W * energy.window_s, rel=1e-9)
        assert "orin-agx" in energy.scope and "not a measurement" in energy.scope


async def timed_generate(node: RunningNode) -> tuple[float, list[TokenChunk], pb.GenerateResult]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        started = time.monotonic()
        chunks: list[TokenChunk] = []
        result: pb.GenerateResult | None = None
        async for message in pb_grpc.EdgeNodeStub(channel).Generate(
            pb.GenerateRequest(prompt="q", max_tokens=5), timeout=30
        ):
            if message.HasField("chunk"):
                c = message.chunk
                chunks.append(TokenChunk(c.text, c.tokens, c.elapsed_s))
            else:
                result = message.result
        wall_s = time.monotonic() - started
    assert result is not None
    return wall_s, chunks, result


async def test_account_timing_stretches_streamed_generation_per_phase(
    node_factory: StartNode,
) -> None:
    slept_wall_s, slept_chunks, slept = await timed_generate(
        await emulated_node(node_factory, AGX, "sleep")
    )
    accounted_wall_s, accounted_chunks, accounted = await timed_generate(
        await emulated_node(node_factory, AGX, "account")
    )
    # 1 token of prefill (10 ms x 7.8), 4 of decode (40 ms x 5.1)
    expected_s = 0.01 * AGX.prefill_slowdown + 0.04 * AGX.decode_slowdown
    assert slept_wall_s >= 0.9 * expected_s
    assert accounted_wall_s < 0.5 * slept_wall_s
    # Both modes stretch the fake engine's real phase times, so a few milliseconds of scheduling
    # jitter in either run come back multiplied by the slowdown (x 7.8 for prefill): the
    # absolute slack, in the phases and in the streamed timestamps alike, is 8 ms of real time
    # at that slowdown (CI runs have seen 4-6 ms on the first token).
    jitter_s = 0.008 * AGX.prefill_slowdown
    for name in ("prefill_s", "decode_s", "total_s"):
        assert getattr(accounted.latency, name) == pytest.approx(
            getattr(slept.latency, name), rel=0.3, abs=jitter_s
        ), name
    assert accounted.latency.decode_s == pytest.approx(0.04 * AGX.decode_slowdown, rel=0.3)
    # streamed timestamps follow the device's pace in both modes
    assert [c.elapsed_s for c in accounted_chunks] == pytest.approx(
        [c.elapsed_s for c in slept_chunks], rel=0.3, abs=jitter_s
    )
    device_s = 0.01 * AGX.prefill_slowdown / TIME_DILATION_PREFILL
    device_s += 0.04 * AGX.decode_slowdown / TIME_DILATION_DECODE
    for result in (slept, accounted):
        assert result.energy.window_s == pytest.approx(device_s, rel=0.3)
        assert result.energy.energy_j == pytest.approx(AGX_POWER_W * device_s, rel=0.3)
        assert result.energy.emulated and result.energy.source == pb.ENERGY_SOURCE_ESTIMATED


async def test_a_request_chooses_its_timing_with_metadata(node_factory: StartNode) -> None:
    node = await emulated_node(node_factory, NANO, "sleep")  # sleeping would take ~2 s
    wall_s, latency, _, stretch_s = await timed_score(node, ((TIMING_METADATA_KEY, "account"),))
    assert wall_s < 0.6
    assert latency.prefill_s == pytest.approx(NANO.prefill_slowdown * 0.06, rel=0.25)
    assert stretch_s == pytest.approx((NANO.prefill_slowdown - 1) * 0.06, rel=0.25)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await pb_grpc.EdgeNodeStub(channel).Score(
                pb.ScoreRequest(prompt="q", choices=[" a"]),
                timeout=5,
                metadata=((TIMING_METADATA_KEY, "fast"),),
            )
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (excinfo.value.details() or "").startswith(TIMING_METADATA_KEY)


async def test_a_node_that_emulates_nothing_ignores_the_timing_metadata(
    node_factory: StartNode,
) -> None:
    node = await node_factory(FakeEngine(token_delay_s=0.01))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        call = pb_grpc.EdgeNodeStub(channel).Score(
            pb.ScoreRequest(prompt="q", choices=list(CHOICES)),
            timeout=5,
            metadata=((TIMING_METADATA_KEY, "whatever"),),
        )
        response = await call
        trailing = list(await call.trailing_metadata() or ())
    assert response.latency.prefill_s == pytest.approx(0.06, rel=0.5)
    assert all(key != STRETCH_METADATA_KEY for key, _ in trailing)
    assert response.energy.emulated is False


async def test_the_host_profile_keeps_host_speed_and_the_real_meter(
    node_factory: StartNode,
) -> None:
    engine = EmulatedEngine(FakeEngine(token_delay_s=0.01), DEVICE_PROFILES["host"])
    node = await node_factory(engine, meter=ModeledEnergyMeter(10.0), emulated=True)
    wall_s, latency, energy, stretch_s = await timed_score(node)
    assert wall_s < 0.5 and stretch_s == 0.0
    assert latency.prefill_s == pytest.approx(0.06, rel=0.5)
    assert energy.energy_j == pytest.approx(10.0 * energy.window_s, rel=1e-6)  # the node's meter
    assert energy.emulated is True


def test_account_generation_keeps_first_token_on_the_host_clock() -> None:
    engine = EmulatedEngine(FakeEngine(token_delay_s=0.01), NANO, timing="account")
    stamps: list[float] = []
    started = time.monotonic()
    generation, charge = engine.generate_charged(
        GenerateParams(prompt="q", max_tokens=3),
        lambda text, tokens, at_s: stamps.append(at_s),
        threading.Event(),
    )
    finished = time.monotonic()
    assert finished - started < 0.3  # 30 ms of fake compute, no waiting
    assert generation.first_token_s is not None and generation.first_token_s <= finished
    assert charge.accounted and charge.stretch_s > 0
    assert stamps[0] == pytest.approx(generation.first_token_s + charge.prefill_extra_s, abs=5e-3)
    # the last chunk's timestamp: its host time (3 tokens x 10 ms) plus every accounted second
    assert stamps[-1] == pytest.approx(started + 0.03 + charge.stretch_s, abs=0.02)


def test_the_agx_profile_draws_the_documented_power() -> None:
    assert AGX.power_w == AGX_POWER_W


def test_profiles_cannot_speed_the_host_up() -> None:
    with pytest.raises(ValueError, match="prefill_slowdown must be >= 1"):
        EmulatedEngine(FakeEngine(), DeviceProfile("x", "faster than the host", 0.5, 1.0, 1.0))


def test_settings_and_server_wire_the_timing_mode() -> None:
    assert load_settings(None).emulate_timing == "sleep"
    settings = load_settings(
        None, engine="fake", emulate_device="orin-nx", emulate_timing="account"
    )
    meter = build_meter(settings)
    engine = build_engine(settings, meter)
    try:
        assert isinstance(engine.engine, EmulatedEngine)
        assert engine.engine.timing == "account"
        assert engine.engine.profile is DEVICE_PROFILES["orin-nx"]
        assert meter.info.source == "estimated" and "orin-nx" in meter.info.scope
    finally:
        engine.close()
    with pytest.raises(ConfigError, match="emulate_timing"):
        load_settings(None, emulate_timing="fast")
    with pytest.raises(ConfigError, match="emulate_device"):
        load_settings(None, emulate_device="orin-nope")
    for name in ("rtx-4090", "orin-agx", "orin-nano", "host", "orin-nx"):  # names kept working
        assert load_settings(None, emulate_device=name).emulate_device == name
