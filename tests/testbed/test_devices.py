"""The emulated device profiles against the published figures in docs/devices.md."""

from __future__ import annotations

import pytest

from edge_node.emulation import DEVICE_PROFILES, TIME_DILATION_DECODE, TIME_DILATION_PREFILL

# Published figures (docs/devices.md, "Sources"). Prefill is compute-bound: GPU dense INT8
# tensor TOPS (half the sparse figure of the data sheets). Decode is memory-bound: single-stream
# tokens/s for a ~1B-parameter 4-bit model (TinyLlama-1.1B).
DENSE_INT8_TOPS = {"rtx-4090": 660.6, "orin-agx": 85.0, "orin-nx": 30.0, "orin-nano": 20.0}
DECODE_TOKENS_PER_S = {
    "rtx-4090": 762.37,  # geerlingguy/ai-benchmarks #43, llama.cpp tg128, TinyLlama Q4_K_M
    "orin-agx": 150.0,  # Jetson AI Lab benchmarks, SLM text generation rate (MLC 4-bit)
    "orin-nx": 68.0 * 64.5 / 41.0,  # derived: Orin Nano x the Super (102 GB/s) speed-up
    "orin-nano": 68.0,  # Jetson AI Lab benchmarks, SLM text generation rate (MLC 4-bit)
}
LOAD_POWER_W = {"rtx-4090": 250.0, "orin-agx": 48.0, "orin-nx": 20.0, "orin-nano": 12.0}
DEVICES = tuple(DENSE_INT8_TOPS)
JETSONS = ("orin-agx", "orin-nx", "orin-nano")

ROUNDING = 0.05  # the profiles' constants are the cited ratios, rounded
REAL_WORLD = 0.35  # how far an independent published measurement may sit from a profile


@pytest.mark.parametrize("device", DEVICES)
def test_speed_ratios_are_the_published_ones(device: str) -> None:
    profile = DEVICE_PROFILES[device]
    prefill = DENSE_INT8_TOPS["rtx-4090"] / DENSE_INT8_TOPS[device]
    decode = DECODE_TOKENS_PER_S["rtx-4090"] / DECODE_TOKENS_PER_S[device]
    assert profile.prefill_slowdown == pytest.approx(prefill, rel=ROUNDING)
    assert profile.decode_slowdown == pytest.approx(decode, rel=ROUNDING)
    assert profile.power_w == LOAD_POWER_W[device]


def test_independent_measurements_agree_within_the_stated_tolerance() -> None:
    agx, nano = DEVICE_PROFILES["orin-agx"], DEVICE_PROFILES["orin-nano"]
    # prefill, 8B FP16, 512 tokens: RTX 4090 llama.cpp 9382 tok/s (XiongjieDai 2024) vs AGX Orin
    # ~1200 tok/s (EdgeReasoning's fitted vLLM prefill model, arXiv 2511.01866)
    assert agx.prefill_slowdown == pytest.approx(9382.0 / 1200.0, rel=REAL_WORLD)
    # decode, Llama-2-7B 4-bit, both MLC: RTX 4090 191 tok/s (mlc-ai/llm-perf-bench 2023)
    # vs AGX Orin 47 tok/s (Jetson AI Lab)
    assert agx.decode_slowdown == pytest.approx(191.0 / 47.0, rel=REAL_WORLD)
    # decode, 8B class, both MLC: AGX Orin Llama-3-8B 40 vs Orin Nano Llama-3.1-8B 14 tok/s
    ratio = nano.decode_slowdown / agx.decode_slowdown
    assert ratio == pytest.approx(40.0 / 14.0, rel=REAL_WORLD)


def test_the_fastest_device_runs_at_host_speed_and_the_rest_are_slower() -> None:
    fastest = DEVICE_PROFILES["rtx-4090"]
    assert (fastest.prefill_slowdown, fastest.decode_slowdown) == (1.0, 1.0)
    for device in JETSONS:
        assert DEVICE_PROFILES[device].prefill_slowdown > 1.0
        assert DEVICE_PROFILES[device].decode_slowdown > 1.0
    order = [DEVICE_PROFILES[d].prefill_slowdown for d in ("orin-agx", "orin-nx", "orin-nano")]
    assert order == sorted(order)


@pytest.mark.parametrize("device", JETSONS)
def test_joules_per_request_ratios_follow_the_published_figures(device: str) -> None:
    profile, fastest = DEVICE_PROFILES[device], DEVICE_PROFILES["rtx-4090"]
    host_s = 1.7
    # a classification is prompt processing: power x (compute ratio) between devices
    published = (LOAD_POWER_W[device] / LOAD_POWER_W["rtx-4090"]) * (
        DENSE_INT8_TOPS["rtx-4090"] / DENSE_INT8_TOPS[device]
    )
    mine = profile.energy_j(host_s, 0.0)
    theirs = fastest.energy_j(host_s, 0.0)
    assert mine is not None and theirs is not None
    assert mine / theirs == pytest.approx(published, rel=ROUNDING)
    # a generated token: power / tokens per second, i.e. joules per token
    per_token = {d: LOAD_POWER_W[d] / DECODE_TOKENS_PER_S[d] for d in (device, "rtx-4090")}
    mine, theirs = profile.energy_j(0.0, host_s), fastest.energy_j(0.0, host_s)
    assert mine is not None and theirs is not None
    assert mine / theirs == pytest.approx(per_token[device] / per_token["rtx-4090"], rel=ROUNDING)


@pytest.mark.parametrize("device", JETSONS)
@pytest.mark.parametrize("host_s", [1.0, 3.0])
def test_a_short_classification_on_a_jetson_costs_about_a_joule(device: str, host_s: float) -> None:
    # SmolLM2-135M / Qwen2.5-0.5B score a ~140-token prompt in 1-3 s on the reference host
    profile = DEVICE_PROFILES[device]
    energy_j = profile.energy_j(host_s, 0.0)
    assert energy_j is not None
    assert 0.3 <= energy_j <= 4.0
    device_s = profile.device_s(host_s, 0.0)
    assert 0.01 <= device_s <= 0.25  # tens of milliseconds on the board, not seconds


def test_magnitudes_on_the_4090_are_milliseconds_and_joules() -> None:
    fastest = DEVICE_PROFILES["rtx-4090"]
    # the same classification: a few milliseconds on the GPU
    assert fastest.device_s(1.5, 0.0) == pytest.approx(1.5 / TIME_DILATION_PREFILL)
    assert 0.001 <= fastest.device_s(1.5, 0.0) <= 0.01
    energy_j = fastest.energy_j(1.5, 0.0)
    assert energy_j is not None and energy_j < 5.0
    # generation: SmolLM2 decodes ~49 tok/s on the host -> ~1200 tok/s on a 4090
    assert 1000.0 <= 49.0 * TIME_DILATION_DECODE <= 1500.0


def test_the_host_profile_is_the_machine_as_it_is() -> None:
    host = DEVICE_PROFILES["host"]
    assert not host.modelled and host.energy_j(1.0, 1.0) is None
    assert host.device_s(1.0, 2.0) == 3.0
