"""CPU package energy from Intel/AMD RAPL through the Linux powercap sysfs tree.

Reads ``<root>/sys/class/powercap/intel-rapl:N`` package zones (and their ``dram`` subzones),
skipping the duplicate ``intel-rapl-mmio:*`` zones and ``psys``. The counters are 32-bit
hardware registers scaled to µJ that wrap at ``max_energy_range_uj`` within minutes, so the
sampler must poll at least every ~10 s. Since Linux 5.10 ``energy_uj`` is root-only
(CVE-2020-8694), so a PermissionError is the common failure and is reported by name.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.energy.settings import EnergySettings
from edge_node.energy.sysinfo import SysfsReader, cpu_model_name, read_sysfs
from edge_node.energy.timeline import SampledMeter
from edge_node.energy.types import EnergyBackendError, MeterInfo, SampleInvalidError

logger = logging.getLogger(__name__)

RAPL_UPDATE_PERIOD_S = 0.001
"""The RAPL MSRs update about every millisecond."""

_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE = re.compile(r"^intel-rapl:(\d+):(\d+)$")


@dataclass(slots=True)
class RaplZone:
    """One powercap zone and its wrap-tracking state (mutable, owned by :class:`RaplCounter`).

    Attributes:
        label: ``"intel-rapl:0"`` or ``"intel-rapl:0:2"``.
        name: The zone's ``name`` attribute (``package-0``, ``dram``, ...).
        path: The zone directory.
        max_range_uj: Wrap point, or None when ``max_energy_range_uj`` was unreadable.
        last_uj: Last raw ``energy_uj``.
        total_uj: Wrap-corrected µJ since the first read.
    """

    label: str
    name: str
    path: Path
    max_range_uj: int | None
    last_uj: int | None = None
    total_uj: int = 0


class RaplCounter:
    """Sum of RAPL zones as one cumulative counter, wrap-corrected per zone."""

    def __init__(self, zones: Sequence[RaplZone], *, reader: SysfsReader = read_sysfs) -> None:
        """Wrap already discovered zones; the first read sets the baseline.

        Args:
            zones: Package zones and optional dram subzones (never overlapping).
            reader: Reads one sysfs attribute.
        """
        self.zones = tuple(zones)
        self._reader = reader

    def read_joules(self) -> float:
        """Joules since the first read, summed over the zones.

        A zone whose counter went backwards is a wrap: ``delta = e1 + max_range - e0``. With
        an unknown range that delta cannot be computed; subtracting as if the range were 0
        would give negative energy (CodeCarbon #1309), so the sample is invalid instead.

        Raises:
            SampleInvalidError: A zone wrapped and its range is unknown (re-baselined).
            OSError: A zone could not be read; no state was changed.
        """
        raws = [int(self._reader(zone.path / "energy_uj")) for zone in self.zones]
        invalid: list[str] = []
        for zone, raw_uj in zip(self.zones, raws, strict=True):
            last_uj = zone.last_uj
            zone.last_uj = raw_uj
            if last_uj is None:
                continue
            if raw_uj >= last_uj:
                zone.total_uj += raw_uj - last_uj
            elif zone.max_range_uj is not None:
                zone.total_uj += raw_uj + zone.max_range_uj - last_uj
            else:
                invalid.append(zone.label)
        if invalid:
            raise SampleInvalidError(
                f"RAPL wrap in {', '.join(invalid)} with unreadable max_energy_range_uj"
            )
        return sum(zone.total_uj for zone in self.zones) / 1e6

    def close(self) -> None:
        """Nothing to release (files are opened per read)."""


def _zone_name(path: Path, reader: SysfsReader) -> str:
    try:
        return reader(path / "name")
    except OSError:
        return "?"


def discover_rapl_zones(
    sys_root: Path, *, reader: SysfsReader = read_sysfs
) -> tuple[list[RaplZone], list[str]]:
    """Find package zones and dram subzones; returns ``(zones, notes)``.

    Raises:
        EnergyBackendError: No package zone exists, or a package counter cannot be read
            (the reason names the exception and file, e.g. ``PermissionError on
            intel-rapl:0/energy_uj``).
    """
    powercap = sys_root / "sys" / "class" / "powercap"
    if not powercap.is_dir():
        raise EnergyBackendError((f"rapl: no {powercap}",))
    packages = sorted(
        (p for p in powercap.iterdir() if _PACKAGE_ZONE.match(p.name)),
        key=lambda p: int(p.name.split(":")[1]),
    )
    zones: list[RaplZone] = []
    notes: list[str] = []
    for package in packages:
        name = _zone_name(package, reader)
        if not name.startswith("package"):
            notes.append(f"{package.name} ({name}) skipped")  # psys would double count
            continue
        zones.append(_open_zone(package, name, reader=reader, notes=notes))
        for sub in sorted(p for p in _subzone_dirs(powercap, package) if p.is_dir()):
            if _zone_name(sub, reader) == "dram":
                try:
                    zones.append(_open_zone(sub, "dram", reader=reader, notes=notes))
                except EnergyBackendError as err:  # dram is optional: note it and go on
                    notes.append(str(err))
    if not zones:
        raise EnergyBackendError((f"rapl: no intel-rapl package zones under {powercap}",))
    return zones, notes


def _subzone_dirs(powercap: Path, package: Path) -> list[Path]:
    nested = [p for p in package.iterdir() if _SUBZONE.match(p.name)]
    if nested:
        return nested
    index = package.name.split(":")[1]
    return [
        p for p in powercap.iterdir() if _SUBZONE.match(p.name) and p.name.split(":")[1] == index
    ]


def _open_zone(path: Path, name: str, *, reader: SysfsReader, notes: list[str]) -> RaplZone:
    """Two real counter reads plus the wrap range; raises EnergyBackendError with a reason."""
    label = path.name
    try:
        first = int(reader(path / "energy_uj"))
        int(reader(path / "energy_uj"))
    except (OSError, ValueError) as err:
        raise EnergyBackendError((f"rapl: {type(err).__name__} on {label}/energy_uj",)) from err
    max_range_uj: int | None
    try:
        max_range_uj = int(reader(path / "max_energy_range_uj"))
    except (OSError, ValueError) as err:
        max_range_uj = None
        notes.append(
            f"{label}/max_energy_range_uj unreadable ({type(err).__name__}): wraps invalid"
        )
    return RaplZone(label, name, path, max_range_uj, last_uj=first)


def build_rapl_meter(
    settings: EnergySettings,
    *,
    sys_root: Path = Path("/"),
    clock: Callable[[], float] = time.monotonic,
    reader: SysfsReader = read_sysfs,
    rejected: tuple[str, ...] = (),
) -> SampledMeter:
    """Probe RAPL under ``sys_root`` and build a counter meter over the package(s).

    Raises:
        EnergyBackendError: No readable package zone.
    """
    zones, notes = discover_rapl_zones(sys_root, reader=reader)
    for note in notes:
        logger.info("rapl: %s", note)
    parts = [f"{z.label} {z.name}" for z in zones]
    scope = "CPU " + " + ".join(parts) + " (RAPL; excludes GPU, disks, fans, PSU losses)"
    if not any(z.name == "dram" for z in zones):
        scope += "; no DRAM zone"
    if any(z.max_range_uj is None for z in zones):
        scope += "; max_energy_range_uj unreadable, so windows spanning a wrap are unknown"
    info = MeterInfo(
        source="measured-rapl",
        method="counter",
        scope=scope,
        resolution_s=RAPL_UPDATE_PERIOD_S,
        device_kind="cpu",
        device_name=cpu_model_name(sys_root),
        rejected=rejected,
    )
    return SampledMeter(
        info,
        counter=RaplCounter(zones, reader=reader),
        sample_interval_s=settings.sample_interval_s,
        timeline_seconds=settings.timeline_seconds,
        cheap_reads=True,
        clock=clock,
    )
