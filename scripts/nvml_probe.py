"""Compare NVML counter and power-integration energy on a real NVIDIA GPU; prints JSON.

Usage (from the repository root, with the project installed or ``PYTHONPATH=.``)::

    python scripts/nvml_probe.py [--gpu-index 0] [--repeats 5] [--load auto|none]

It builds the counter meter and the power-integration meter of ``edge_node.energy`` side by
side on the same GPU, times each NVML read, then measures 1 s, 0.3 s and 0.05 s windows with
both meters, first idle and then under a matmul load (torch or cupy, if importable). Each
window is measured after the settle rule, so ``approximate`` shows which figures are below
the counter's update period.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from edge_node.energy import EnergyBackendError, EnergyReading, EnergySettings, SampledMeter
from edge_node.energy.nvml import NvmlDevice, build_nvml_meter, import_pynvml

DEFAULT_WINDOWS_S = (1.0, 0.3, 0.05)


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _load_loop(gpu_index: int, kind: str) -> tuple[str, Callable[[threading.Event], None]] | None:
    """A function that keeps the GPU busy with matmuls until its event is set."""
    if kind == "none":
        return None
    torch = _try_import("torch")
    if torch is not None and torch.cuda.is_available():

        def run_torch(stop: threading.Event) -> None:
            device = f"cuda:{gpu_index}"
            a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
            b = torch.randn(8192, 8192, device=device, dtype=torch.float16)
            while not stop.is_set():
                for _ in range(4):
                    torch.matmul(a, b)
                torch.cuda.synchronize(device)

        return "torch fp16 matmul 8192^2", run_torch
    cupy = _try_import("cupy")
    if cupy is not None:

        def run_cupy(stop: threading.Event) -> None:
            with cupy.cuda.Device(gpu_index):
                a = cupy.random.rand(8192, 8192, dtype=cupy.float32)
                b = cupy.random.rand(8192, 8192, dtype=cupy.float32)
                while not stop.is_set():
                    cupy.matmul(a, b)
                    cupy.cuda.Device(gpu_index).synchronize()

        return "cupy fp32 matmul 8192^2", run_cupy
    return None


def _read_costs_us(nvml: ModuleType, gpu_index: int, reads: int) -> dict[str, Any]:
    """Median microseconds per call of each NVML read the meters use."""
    device = NvmlDevice(nvml, gpu_index)
    calls: dict[str, Callable[[], object]] = {
        "total_energy_consumption": device.read_energy_mj,
        "power_instant_field": device.read_power_instant_w,
        "power_usage": device.read_power_average_w,
        "utilization_rates": device.read_utilization,
    }
    costs: dict[str, Any] = {}
    try:
        for name, call in calls.items():
            samples_us: list[float] = []
            try:
                for _ in range(reads):
                    began = time.perf_counter()
                    call()
                    samples_us.append((time.perf_counter() - began) * 1e6)
            except nvml.NVMLError as err:
                costs[name] = f"unsupported: {err}"
                continue
            costs[name] = round(statistics.median(samples_us), 2)
    finally:
        device.close()
    return costs


def _reading(reading: EnergyReading) -> dict[str, Any]:
    return {
        "energy_j": reading.energy_j,
        "approximate": reading.approximate,
        "uncertainty_j": reading.uncertainty_j,
    }


def _measure_windows(
    meters: dict[str, SampledMeter],
    windows_s: Sequence[float],
    repeats: int,
    settle_timeout_s: float,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for window_s in windows_s:
        for repeat in range(repeats):
            for meter in meters.values():
                meter.checkpoint()
            start_s = time.monotonic()
            time.sleep(window_s)
            end_s = time.monotonic()
            for meter in meters.values():
                meter.checkpoint()
            row: dict[str, Any] = {"window_s": round(end_s - start_s, 6), "repeat": repeat}
            for name, meter in meters.items():
                row[name] = _reading(
                    meter.measure(start_s, end_s, settle_timeout_s=settle_timeout_s)
                )
            counter_j = row.get("counter", {}).get("energy_j")
            power_j = row.get("power_integration", {}).get("energy_j")
            if counter_j and power_j is not None:
                row["power_vs_counter_pct"] = round(100.0 * (power_j - counter_j) / counter_j, 2)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe and print one JSON document on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpu-index", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-interval-s", type=float, default=0.02)
    parser.add_argument("--reads", type=int, default=50, help="calls timed per NVML read")
    parser.add_argument("--load", choices=("auto", "none"), default="auto")
    parser.add_argument("--settle-timeout-s", type=float, default=1.0)
    parser.add_argument("--windows-s", type=float, nargs="+", default=list(DEFAULT_WINDOWS_S))
    args = parser.parse_args(argv)

    settings = EnergySettings(
        backend="nvml", gpu_index=args.gpu_index, sample_interval_s=args.sample_interval_s
    )
    report: dict[str, Any] = {"settings": settings.model_dump()}
    try:
        nvml = import_pynvml()
        meters: dict[str, SampledMeter] = {}
        counter = build_nvml_meter(settings, nvml)
        meters[counter.info.method] = counter
        if counter.info.method == "counter":
            meters["power_integration"] = build_nvml_meter(settings, nvml, prefer="power")
    except EnergyBackendError as err:
        report["error"] = list(err.reasons)
        print(json.dumps(report, indent=2))
        return 1
    report["meters"] = {
        name: {
            "source": m.info.source,
            "scope": m.info.scope,
            "resolution_s": m.info.resolution_s,
            "device_name": m.info.device_name,
        }
        for name, m in meters.items()
    }
    report["read_cost_us"] = _read_costs_us(nvml, args.gpu_index, args.reads)
    for meter in meters.values():
        meter.start()
    phases: dict[str, Any] = {}
    try:
        time.sleep(0.2)  # some history before the first window
        phases["idle"] = _measure_windows(
            meters, args.windows_s, args.repeats, args.settle_timeout_s
        )
        load = _load_loop(args.gpu_index, args.load)
        report["load"] = None if load is None else load[0]
        if load is not None:
            stop = threading.Event()
            worker = threading.Thread(target=load[1], args=(stop,), daemon=True)
            worker.start()
            try:
                time.sleep(1.0)  # ramp up to steady power
                phases["load"] = _measure_windows(
                    meters, args.windows_s, args.repeats, args.settle_timeout_s
                )
            finally:
                stop.set()
                worker.join(timeout=30.0)
    finally:
        for meter in meters.values():
            report.setdefault("read_errors", {})[meter.info.method] = meter.read_errors
            meter.close()
    report["phases"] = phases
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
