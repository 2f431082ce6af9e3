"""Fake clock and fake sysfs trees (RAPL powercap, Jetson INA3221) for the energy tests."""

from __future__ import annotations

from pathlib import Path


class FakeClock:
    """A monotonic clock in integer milliseconds, advanced only by the test."""

    def __init__(self, now_ms: int = 0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000.0

    def advance_ms(self, delta_ms: int) -> float:
        self.now_ms += delta_ms
        return self()


def write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def rapl_zone(
    root: Path,
    label: str,
    name: str,
    energy_uj: int,
    max_range_uj: int | None = 262_143_328_850,
    parent: str | None = None,
) -> Path:
    """Create ``<root>/sys/class/powercap/[parent/]label`` with name/energy_uj/max range."""
    base = root / "sys" / "class" / "powercap"
    zone = base / parent / label if parent else base / label
    write(zone / "name", name)
    write(zone / "energy_uj", energy_uj)
    if max_range_uj is not None:
        write(zone / "max_energy_range_uj", max_range_uj)
    return zone


def tegra(root: Path) -> None:
    write(root / "etc" / "nv_tegra_release", "# R36 (release), REVISION: 4.3")


def hwmon_device(
    root: Path,
    device: str,
    channels: dict[int, tuple[str, int, int]],
    *,
    driver: str = "ina3221",
    hwmon: str = "hwmon3",
    update_interval_ms: int | None = None,
) -> Path:
    """INA3221 hwmon channels: index -> (label, bus mV, mA)."""
    directory = root / "sys" / "bus" / "i2c" / "drivers" / driver / device / "hwmon" / hwmon
    for index, (label, millivolts, milliamps) in channels.items():
        write(directory / f"in{index}_label", label)
        write(directory / f"in{index}_input", millivolts)
        write(directory / f"curr{index}_input", milliamps)
    if update_interval_ms is not None:
        write(directory / "update_interval", update_interval_ms)
    return directory


def set_hwmon(directory: Path, index: int, millivolts: int, milliamps: int) -> None:
    write(directory / f"in{index}_input", millivolts)
    write(directory / f"curr{index}_input", milliamps)


def iio_device(
    root: Path, device: str, channels: dict[int, tuple[str, int, int, int | None]]
) -> Path:
    """Legacy iio layout: index -> (rail name, mV, mA, mW or None)."""
    directory = root / "sys" / "bus" / "i2c" / "drivers" / "ina3221x" / device / "iio:device0"
    for index, (label, millivolts, milliamps, milliwatts) in channels.items():
        write(directory / f"rail_name_{index}", label)
        write(directory / f"in_voltage{index}_input", millivolts)
        write(directory / f"in_current{index}_input", milliamps)
        if milliwatts is not None:
            write(directory / f"in_power{index}_input", milliwatts)
    return directory
