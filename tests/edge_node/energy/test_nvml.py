from __future__ import annotations

import ctypes
import inspect

import pytest

from edge_node.energy import EnergyBackendError, EnergySettings, SampledMeter, detect_meter
from edge_node.energy.nvml import build_nvml_meter, nvml_error_name
from tests.edge_node.energy.fake_nvml import FakeFieldValue, FakeNvml, FakeUtilization, jetson_like
from tests.edge_node.energy.fakes import FakeClock

NVML_SETTINGS = EnergySettings(backend="nvml", sample_interval_s=0.01)

# Everything edge_node.energy.nvml touches on the pynvml module.
USED_FUNCTIONS = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetUtilizationRates",
)
USED_CONSTANTS = (
    "NVML_SUCCESS",
    "NVML_ERROR_UNINITIALIZED",
    "NVML_ERROR_INVALID_ARGUMENT",
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_UNKNOWN",
    "NVML_FI_DEV_POWER_INSTANT",
)


def stepping_counter(clock: FakeClock, power_w: int, period_ms: int = 100) -> FakeNvml:
    """An H100-like counter: adds power_w * period worth of mJ every period_ms."""
    return FakeNvml(
        energy_mj=lambda: 5_000_000 + (clock.now_ms // period_ms) * power_w * period_ms,
        power_mw=lambda: power_w * 1000,
    )


def nvml_meter(fake: FakeNvml, clock: FakeClock) -> SampledMeter:
    meter = detect_meter(NVML_SETTINGS, nvml=fake, clock=clock)
    assert isinstance(meter, SampledMeter)
    return meter


def poll_until(meter: SampledMeter, clock: FakeClock, until_ms: int, step_ms: int = 10) -> None:
    while clock.now_ms < until_ms:
        clock.advance_ms(step_ms)
        meter.poll_once()


def test_fake_nvml_matches_real_pynvml() -> None:
    real = pytest.importorskip("pynvml")
    fake = FakeNvml()
    for name in USED_FUNCTIONS:
        assert callable(getattr(real, name)), name
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        fake_params = list(inspect.signature(getattr(fake, name)).parameters)
        assert fake_params == real_params, name
    for name in USED_CONSTANTS:
        assert getattr(fake, name) == getattr(real, name), name
    assert issubclass(real.NVMLError, Exception)
    assert real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED).value == real.NVML_ERROR_NOT_SUPPORTED
    assert fake.NVMLError(fake.NVML_ERROR_NOT_SUPPORTED).value == fake.NVML_ERROR_NOT_SUPPORTED

    def field_names(structure: type[ctypes.Structure | ctypes.Union]) -> list[str]:
        return [field[0] for field in structure._fields_]

    assert field_names(FakeFieldValue) == field_names(real.c_nvmlFieldValue_t)
    assert field_names(FakeUtilization) == field_names(real.c_nvmlUtilization_t)
    assert field_names(type(FakeFieldValue().value)) == field_names(real.c_nvmlValue_t)


def test_real_pynvml_without_driver_reports_library_not_found() -> None:
    real = pytest.importorskip("pynvml")
    error: BaseException | None = None
    try:
        real.nvmlInit()
    except real.NVMLError as err:
        error = err
    else:
        real.nvmlShutdown()
        pytest.skip("a real NVML driver is present")
    assert error is not None
    assert nvml_error_name(real, error).startswith("NVML_ERROR_")


def test_counter_interpolates_between_100ms_steps() -> None:
    clock = FakeClock()
    meter = nvml_meter(stepping_counter(clock, power_w=700), clock)
    assert meter.info.source == "measured-nvml"
    assert meter.info.method == "counter"
    assert meter.info.resolution_s == pytest.approx(0.1)
    assert "GPU 0 (NVIDIA H100 80GB HBM3)" in meter.info.scope
    assert meter.info.device_kind == "cuda"
    meter.poll_once()
    poll_until(meter, clock, 1000)

    reading = meter.measure(0.5, 0.8, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(700 * 0.3)
    assert not reading.approximate
    assert reading.window_s == pytest.approx(0.3)
    assert reading.uncertainty_j == pytest.approx(2 * 0.1 * 700)

    # A raw 10 ms counter delta would read 0 J most of the time; interpolation does not.
    short = meter.measure(0.52, 0.53, settle_timeout_s=0.0)
    assert short.energy_j == pytest.approx(7.0)
    assert short.approximate


def test_unsettled_window_is_extrapolated_and_flagged() -> None:
    clock = FakeClock()
    meter = nvml_meter(stepping_counter(clock, power_w=700), clock)
    meter.poll_once()
    poll_until(meter, clock, 850)  # no sample at >= 0.8 + 0.1 yet
    reading = meter.measure(0.5, 0.8, settle_timeout_s=0.0)
    assert reading.approximate
    assert reading.energy_j == pytest.approx(210.0)
    poll_until(meter, clock, 900)
    settled = meter.measure(0.5, 0.8, settle_timeout_s=0.0)
    assert not settled.approximate
    assert settled.energy_j == pytest.approx(210.0)


def test_counter_meter_does_not_read_on_checkpoint() -> None:
    clock = FakeClock()
    reads: list[int] = []

    def energy() -> int:
        reads.append(clock.now_ms)
        return 1000

    meter = nvml_meter(FakeNvml(energy_mj=energy), clock)
    before = len(reads)
    meter.checkpoint()
    assert len(reads) == before


def test_counter_going_backwards_rebaselines() -> None:
    clock = FakeClock()
    offset = {"mj": 9_000_000}
    fake = FakeNvml(energy_mj=lambda: offset["mj"] + (clock.now_ms // 100) * 100 * 100)
    meter = nvml_meter(fake, clock)
    meter.poll_once()
    poll_until(meter, clock, 500)
    offset["mj"] = -(5 * 100 * 100)  # driver reload at 0.5 s: counter restarts near 0
    poll_until(meter, clock, 1200)
    before = meter.measure(0.1, 0.4, settle_timeout_s=0.0)
    assert before.energy_j == pytest.approx(30.0)
    spanning = meter.measure(0.4, 0.7, settle_timeout_s=0.0)
    assert spanning.energy_j is None  # unknown, never 0 and never negative
    after = meter.measure(0.7, 1.0, settle_timeout_s=0.0)
    assert after.energy_j == pytest.approx(30.0)
    total = meter.sample().energy_total_j
    assert total is not None
    assert total >= 0.0


def test_energy_not_supported_but_power_ok_uses_power_integration() -> None:
    clock = FakeClock()
    power = {"mw": 100_000}
    fake = FakeNvml(energy_error=FakeNvml.NVML_ERROR_NOT_SUPPORTED, power_mw=lambda: power["mw"])
    meter = nvml_meter(fake, clock)
    assert meter.info.method == "power_integration"
    assert "POWER_INSTANT" in meter.info.scope
    assert meter.info.rejected == ()  # explicit backend: nothing was tried before it
    meter.poll_once()  # 100 W at 0 s
    clock.advance_ms(100)
    power["mw"] = 300_000
    meter.poll_once()  # 300 W at 0.1 s
    clock.advance_ms(100)
    meter.poll_once()  # 300 W at 0.2 s
    reading = meter.measure(0.0, 0.2, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx((100 + 300) / 2 * 0.1 + 300 * 0.1)
    assert reading.source == "measured-nvml"
    sample = meter.sample()
    assert sample.power_w == pytest.approx(300.0)
    assert sample.gpu_utilization == pytest.approx(0.42)


def test_average_power_is_labelled_when_power_instant_is_missing() -> None:
    fake = FakeNvml(
        energy_error=FakeNvml.NVML_ERROR_NOT_SUPPORTED,
        field_error=FakeNvml.NVML_ERROR_NOT_SUPPORTED,
    )
    meter = nvml_meter(fake, FakeClock())
    assert meter.info.method == "power_integration"
    assert "1 s moving average" in meter.info.scope


def test_power_checkpoint_samples_now() -> None:
    clock = FakeClock()
    fake = FakeNvml(energy_error=FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    meter = nvml_meter(fake, clock)
    meter.checkpoint()
    clock.advance_ms(5)
    meter.checkpoint()
    reading = meter.measure(0.0, 0.005, settle_timeout_s=0.0)
    assert reading.energy_j == pytest.approx(75.0 * 0.005)
    assert reading.approximate  # 5 ms < 10 ms sampler period


def test_jetson_like_nvml_is_rejected_never_zero() -> None:
    fake = jetson_like()
    with pytest.raises(EnergyBackendError) as excinfo:
        detect_meter(NVML_SETTINGS, nvml=fake, clock=FakeClock())
    reason = excinfo.value.reasons[0]
    assert reason.startswith("nvml: GPU 0")
    assert "total-energy counter: NVML_ERROR_NOT_SUPPORTED" in reason
    assert "GetPowerUsage: NVML_ERROR_NOT_SUPPORTED" in reason
    assert fake.shutdown_calls == fake.init_calls == 1


def test_zero_watt_power_is_not_a_measurement() -> None:
    fake = FakeNvml(energy_error=FakeNvml.NVML_ERROR_NOT_SUPPORTED, power_mw=lambda: 0)
    with pytest.raises(EnergyBackendError, match=r"reads 0\.0 W"):
        build_nvml_meter(NVML_SETTINGS, fake)


def test_library_not_found_is_rejected_with_reason() -> None:
    fake = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(EnergyBackendError) as excinfo:
        detect_meter(NVML_SETTINGS, nvml=fake)
    assert excinfo.value.reasons == ("nvml: nvmlInit: NVML_ERROR_LIBRARY_NOT_FOUND",)


def test_missing_gpu_index_is_rejected() -> None:
    settings = EnergySettings(backend="nvml", gpu_index=3)
    fake = FakeNvml(device_count=1)
    with pytest.raises(EnergyBackendError, match="gpu_index 3 but 1 device"):
        detect_meter(settings, nvml=fake)
    assert fake.shutdown_calls == 1


def test_close_shuts_nvml_down_once() -> None:
    fake = FakeNvml(energy_mj=lambda: 1)
    meter = nvml_meter(fake, FakeClock())
    meter.close()
    meter.close()
    assert fake.shutdown_calls == 1
    sample = meter.sample()  # power/utilisation reads now fail: unknown, not an exception
    assert sample.gpu_utilization is None
