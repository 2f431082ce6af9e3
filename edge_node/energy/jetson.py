"""Jetson module power from the INA3221 shunt monitors, integrated by the sampler.

Two sysfs layouts are read, both under ``<root>/sys/bus/i2c/drivers/ina3221*/<dev>/``:

* hwmon (current kernels): ``hwmon/hwmon*/in{N}_label``, ``in{N}_input`` (bus mV) and
  ``curr{N}_input`` (mA);
* legacy iio (JetPack <= 4): ``iio:device*/rail_name_{N}``, ``in_voltage{N}_input`` (mV),
  ``in_current{N}_input`` (mA) and ``in_power{N}_input`` (mW).

``NC`` channels and channel 7 ("sum of shunt voltages") are skipped. Which rails are summed is
not guessed from substrings: ``VDD_IN`` (Orin NX/Nano module input) alone where present, else
every monitored rail (AGX Orin has no module-input channel: VDD_GPU_SOC + VDD_CPU_CV +
VIN_SYS_5V0 [+ VDDQ_VDD2_1V8AO]), or exactly the rails named in settings.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.energy.settings import EnergySettings
from edge_node.energy.sysinfo import SysfsReader, jetson_model_name, read_sysfs
from edge_node.energy.timeline import SampledMeter
from edge_node.energy.types import EnergyBackendError, MeterInfo

logger = logging.getLogger(__name__)

MODULE_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
"""Rails that measure the whole module's input; summing others with them would double count."""

_SUM_CHANNEL = 7
_HWMON_LABEL = re.compile(r"^in(\d+)_label$")
_IIO_LABEL = re.compile(r"^rail_name_(\d+)$")


@dataclass(frozen=True, slots=True)
class Rail:
    """One INA3221 channel.

    Attributes:
        name: Rail label, e.g. ``VDD_GPU_SOC``.
        voltage_path: Bus voltage file (mV).
        current_path: Current file (mA).
        power_path: Power file (mW), legacy iio layout only.
        update_interval_s: The chip's conversion period, if the driver exposes it.
    """

    name: str
    voltage_path: Path
    current_path: Path
    power_path: Path | None = None
    update_interval_s: float | None = None


def is_tegra(sys_root: Path) -> bool:
    """Whether ``sys_root`` looks like an L4T (Jetson) system."""
    return (sys_root / "etc" / "nv_tegra_release").exists() or (
        sys_root / "usr" / "lib" / "aarch64-linux-gnu" / "tegra"
    ).is_dir()


def _is_skipped(index: int, label: str) -> bool:
    return label.upper() == "NC" or index == _SUM_CHANNEL or "sum of shunt" in label.lower()


def _update_interval_s(hwmon: Path, reader: SysfsReader) -> float | None:
    try:
        return int(reader(hwmon / "update_interval")) / 1000.0
    except (OSError, ValueError):
        return None


def discover_rails(sys_root: Path, *, reader: SysfsReader = read_sysfs) -> list[Rail]:
    """All monitored INA3221 rails in both layouts (hwmon wins on duplicate names)."""
    drivers = sys_root / "sys" / "bus" / "i2c" / "drivers"
    rails: dict[str, Rail] = {}
    for hwmon in sorted(drivers.glob("ina3221*/*/hwmon/hwmon*")):
        interval_s = _update_interval_s(hwmon, reader)
        for label_path in sorted(hwmon.glob("in*_label")):
            match = _HWMON_LABEL.match(label_path.name)
            if match is None:
                continue
            index = int(match.group(1))
            label = reader(label_path)
            current = hwmon / f"curr{index}_input"
            if _is_skipped(index, label) or not current.exists() or label in rails:
                continue
            rails[label] = Rail(label, hwmon / f"in{index}_input", current, None, interval_s)
    for iio in sorted(drivers.glob("ina3221*/*/iio:device*")):
        for label_path in sorted(iio.glob("rail_name_*")):
            match = _IIO_LABEL.match(label_path.name)
            if match is None:
                continue
            index = int(match.group(1))
            label = reader(label_path)
            if _is_skipped(index, label) or label in rails:
                continue
            power = iio / f"in_power{index}_input"
            rails[label] = Rail(
                label,
                iio / f"in_voltage{index}_input",
                iio / f"in_current{index}_input",
                power if power.exists() else None,
            )
    return list(rails.values())


def select_rails(rails: Sequence[Rail], wanted: Sequence[str] | None) -> tuple[list[Rail], str]:
    """Pick the rails to sum and describe the scope in words.

    Raises:
        EnergyBackendError: A configured rail does not exist.
    """
    by_name = {rail.name: rail for rail in rails}
    if wanted is not None:
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise EnergyBackendError(
                (f"jetson: rails {missing} not found (have {sorted(by_name)})",)
            )
        chosen = [by_name[name] for name in wanted]
    else:
        inputs = [by_name[name] for name in MODULE_INPUT_RAILS if name in by_name]
        if inputs:
            rail = inputs[0]
            return [rail], f"Jetson module input {rail.name} (whole module; excludes carrier board)"
        chosen = list(rails)
    names = " + ".join(rail.name for rail in chosen)
    return chosen, f"Jetson sum of monitored rails {names} (module only; excludes carrier board)"


class JetsonRails:
    """Summed power of the chosen INA3221 rails, in watts."""

    def __init__(self, rails: Sequence[Rail], *, reader: SysfsReader = read_sysfs) -> None:
        """Wrap discovered rails.

        Args:
            rails: Rails to sum (non-overlapping).
            reader: Reads one sysfs attribute.
        """
        self.rails = tuple(rails)
        self._reader = reader

    def rail_watts(self, rail: Rail) -> float:
        """Power of one rail: ``in_power`` mW where the driver has it, else mV x mA."""
        if rail.power_path is not None:
            return int(self._reader(rail.power_path)) / 1000.0
        millivolts = int(self._reader(rail.voltage_path))
        milliamps = int(self._reader(rail.current_path))
        return millivolts * milliamps / 1e6

    def read_watts(self) -> float:
        """Sum over the rails, in watts."""
        return sum(self.rail_watts(rail) for rail in self.rails)

    def close(self) -> None:
        """Nothing to release (files are opened per read)."""


def build_jetson_meter(
    settings: EnergySettings,
    *,
    sys_root: Path = Path("/"),
    clock: Callable[[], float] = time.monotonic,
    reader: SysfsReader = read_sysfs,
    rejected: tuple[str, ...] = (),
) -> SampledMeter:
    """Probe the INA3221 rails under ``sys_root`` and build a power-integration meter.

    Raises:
        EnergyBackendError: Not a Tegra system, no rails, or a rail cannot be read.
    """
    if not is_tegra(sys_root):
        raise EnergyBackendError(
            ("jetson: not a Tegra system (no /etc/nv_tegra_release or tegra lib dir)",)
        )
    try:
        rails = discover_rails(sys_root, reader=reader)
    except (OSError, ValueError) as err:
        raise EnergyBackendError((f"jetson: {type(err).__name__} reading rail labels",)) from err
    if not rails:
        raise EnergyBackendError(("jetson: no INA3221 rails under /sys/bus/i2c/drivers",))
    chosen, scope = select_rails(rails, settings.jetson_rails)
    source = JetsonRails(chosen, reader=reader)
    for rail in chosen:
        try:
            source.rail_watts(rail)
        except (OSError, ValueError) as err:
            where = rail.voltage_path.parent.name + "/" + rail.voltage_path.name
            raise EnergyBackendError(
                (f"jetson: {type(err).__name__} on {rail.name} ({where})",)
            ) from err
    intervals = [r.update_interval_s for r in chosen if r.update_interval_s is not None]
    resolution_s = max([settings.sample_interval_s, *intervals])
    info = MeterInfo(
        source="measured-jetson",
        method="power_integration",
        scope=scope,
        resolution_s=resolution_s,
        device_kind="jetson",
        device_name=jetson_model_name(sys_root),
        rejected=rejected,
    )
    logger.info("jetson: summing %s", [rail.name for rail in chosen])
    return SampledMeter(
        info,
        power=source,
        sample_interval_s=settings.sample_interval_s,
        timeline_seconds=settings.timeline_seconds,
        cheap_reads=True,
        clock=clock,
    )
