"""Emulated network hosts: a link to each edge node (delay, jitter, rate, loss).

Two ways to put a link in front of a node:

* :class:`NetnsHost`: a real host. A network namespace holds the node process (run it with
  :meth:`NetnsHost.wrap`); a point-to-point link with a private /30 (``10.77.<index>.1`` on the
  root side, ``10.77.<index>.2`` inside) joins it to the root namespace. The link is impaired in
  the kernel by ``tc netem`` on both ends of a veth pair (mode ``"netem"``) or, on kernels built
  without ``sch_netem``, by a small relay process that moves IP packets between two TUN devices
  through a timestamped queue per direction (mode ``"tun"``, :mod:`testbed.tun_relay`). Both
  need root and ``ip``.
* :class:`testbed.proxy.DelayProxy`: the in-process fallback. An asyncio TCP proxy on 127.0.0.1
  that delays and paces the byte stream in each direction. It needs no privileges and works for
  gRPC (HTTP/2). All three share :class:`testbed.links.LinkSpec` and
  :class:`testbed.links.LinkSchedule`.

See docs/network.md. Everything created here is named ``moe2-<pid in hex>...`` so that concurrent
runs never collide and :func:`cleanup_stale` can tell a crashed run's leftovers from a live one's.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from testbed.links import QUEUE_LIMIT_PACKETS, LinkSpec
from testbed.tun_relay import open_tun

logger = logging.getLogger(__name__)

LinkMode = Literal["netem", "tun"]

PREFIX = "moe2-"
"""Prefix of every namespace and network device this module creates."""

SUBNET_PREFIX = "10.77"
"""Hosts get ``10.77.<index>.0/30``: ``.1`` on the root side, ``.2`` inside the namespace."""

_COMMAND_TIMEOUT_S = 10.0
_RELAY_READY_TIMEOUT_S = 15.0
_RELAY_STOP_TIMEOUT_S = 5.0


_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class NetworkUnavailableError(RuntimeError):
    """Emulated hosts cannot be created here; the message says why (not root, no ``ip``, ...)."""


# --------------------------------------------------------------------------------------------
# Names, commands, probes


def _token(pid: int | None = None) -> str:
    """The per-process part of our names: the pid in hex (at most 6 digits on Linux)."""
    return f"{os.getpid() if pid is None else pid:x}"


def _namespace_name(name: str) -> str:
    return f"{PREFIX}{_token()}-{name}"


def _device_name(side: Literal["r", "h"], index: int) -> str:
    # "moe2-" + <= 6 hex digits + side + <= 3 digits: at most 15 characters (IFNAMSIZ - 1).
    return f"{PREFIX}{_token()}{side}{index}"


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ``ip``/``tc`` command; raise :class:`NetworkUnavailableError` with its stderr."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NetworkUnavailableError(f"{' '.join(command)}: {err}") from err
    if check and result.returncode != 0:
        raise NetworkUnavailableError(
            f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


_SUBNET_LOCK = Path(tempfile.gettempdir()) / "moe2-netns-subnets.lock"
"""Held while a host picks its subnet and addresses its link, so concurrent runs never share one."""
_ROOT_ADDRESS_RE = re.compile(r"\binet " + re.escape(SUBNET_PREFIX) + r"\.(\d{1,3})\.\d{1,3}/")


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """An exclusive lock across processes (``flock`` on :data:`_SUBNET_LOCK`)."""
    with open(_SUBNET_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def subnets_in_use() -> set[int]:
    """The indices ``i`` of the ``10.77.<i>.0/30`` subnets addressed in the root namespace."""
    listing = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    return {int(found) for found in _ROOT_ADDRESS_RE.findall(listing)}


def _preconditions() -> str | None:
    """Why namespaces cannot be used at all, or ``None``."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (euid 0)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install iproute2)"
    return None


def _list_namespaces() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _list_links() -> list[str]:
    result = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in result.stdout.splitlines():
        fields = line.split(":", 2)
        if len(fields) >= 2:
            names.append(fields[1].strip().split("@")[0])
    return names


def netns_available() -> tuple[bool, str]:
    """Whether :class:`NetnsHost` can be used here, and why (not).

    Checks root, ``ip`` and ``tc``, then creates and removes a probe namespace. The reason also
    says which link mode ``"auto"`` will pick (``netem`` if the kernel has ``sch_netem``, else
    the TUN relay).

    Returns:
        ``(usable, reason)``; ``reason`` is suitable for ``pytest.skip``.
    """
    problem = _preconditions()
    if problem is not None:
        return False, problem
    probe = _namespace_name("probe")
    try:
        _run(["ip", "netns", "add", probe])
    except NetworkUnavailableError as err:
        return False, f"cannot create a network namespace: {err}"
    try:
        netem_ok, netem_reason = _probe_netem(probe)
    finally:
        _run(["ip", "netns", "delete", probe], check=False)
    if probe in _list_namespaces():
        return False, f"cannot remove the probe namespace {probe}"
    if netem_ok:
        return True, "network namespaces and tc netem available"
    if not os.path.exists("/dev/net/tun"):
        return False, f"tc netem unavailable ({netem_reason}) and no /dev/net/tun for the relay"
    return True, f"network namespaces available; tc netem is not ({netem_reason}): TUN relay"


def _probe_netem(namespace: str) -> tuple[bool, str]:
    """Whether ``tc netem`` can be attached, tried on a dummy veth inside ``namespace``."""
    commands = [
        ["ip", "-n", namespace, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
        ["tc", "-n", namespace, "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms"],
    ]
    for command in commands:
        result = _run(command, check=False)
        if result.returncode != 0:
            return False, result.stderr.strip() or f"exit {result.returncode}"
    return True, "ok"


def netem_available() -> bool:
    """Whether the kernel can attach ``tc netem`` (needs root; creates a probe namespace)."""
    if _preconditions() is not None:
        return False
    probe = _namespace_name("netem-probe")
    try:
        _run(["ip", "netns", "add", probe])
        return _probe_netem(probe)[0]
    except NetworkUnavailableError:
        return False
    finally:
        _run(["ip", "netns", "delete", probe], check=False)


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> int:
    """Remove namespaces and devices left by crashed runs of this module.

    A name ``<prefix><pid hex>...`` belongs to process ``pid``; it is removed only when that
    process no longer exists, so live concurrent runs (and this process) are left alone.

    Args:
        prefix: The name prefix to look for.

    Returns:
        How many namespaces and devices were removed.
    """
    if _preconditions() is not None:
        return 0
    owned = re.compile(re.escape(prefix) + r"([0-9a-f]{1,8})(?:-.+|[rh]\d{1,3})$")
    removed = 0
    for namespace in _list_namespaces():
        match = owned.match(namespace)
        if match is None or _owner_alive(int(match.group(1), 16)):
            continue
        if _run(["ip", "netns", "delete", namespace], check=False).returncode == 0:
            logger.info("removed stale namespace %s", namespace)
            removed += 1
    for device in _list_links():
        match = owned.match(device)
        if match is None or _owner_alive(int(match.group(1), 16)):
            continue
        if _run(["ip", "link", "delete", device], check=False).returncode == 0:
            logger.info("removed stale device %s", device)
            removed += 1
    return removed


class _OpenHosts:
    """Hosts not yet closed, so that an ``atexit`` hook can close them.

    This is the one piece of module state: a namespace outlives the process that made it, so
    something process-wide must remember to delete it on a normal exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, NetnsHost] = {}
        self._registered = False

    def add(self, host: NetnsHost) -> None:
        with self._lock:
            self._hosts[host.namespace] = host
            if not self._registered:
                atexit.register(self.close_all)
                self._registered = True

    def discard(self, host: NetnsHost) -> None:
        with self._lock:
            self._hosts.pop(host.namespace, None)

    def close_all(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
        for host in hosts:
            host.close()


_OPEN_HOSTS = _OpenHosts()


# --------------------------------------------------------------------------------------------
# NetnsHost


def _netem_arguments(link: LinkSpec) -> list[str]:
    arguments = ["netem", "limit", str(QUEUE_LIMIT_PACKETS), "delay", f"{link.delay_ms:g}ms"]
    if link.jitter_ms > 0:
        arguments.append(f"{link.jitter_ms:g}ms")
    if link.loss_pct > 0:
        arguments += ["loss", f"{link.loss_pct:g}%"]
    if link.rate_mbit is not None:
        arguments += ["rate", f"{link.rate_mbit * 1000:g}kbit"]
    return arguments


class NetnsHost:
    """An emulated host: a network namespace joined to the root namespace by an impaired link.

    The root side of the link is ``10.77.<index>.1/30`` and the namespace side
    ``10.77.<index>.2/30`` (:attr:`address`); the namespace has no other route, so processes in
    it reach only the root side of their own link. The link adds ``link`` in each direction:

    * mode ``"netem"``: a veth pair with ``tc netem`` (delay, jitter, loss, rate) on both ends;
    * mode ``"tun"``: two TUN devices and a relay process, started inside the namespace, that
      moves IP packets between them through a timestamped queue per direction
      (:class:`LinkSchedule`, the same rules as netem). The relay exits when this process does
      (its stdin closes), which also removes both devices.

    Methods are blocking (they run ``ip``/``tc``); call them from a thread in async code.
    """

    def __init__(
        self,
        name: str,
        index: int,
        link: LinkSpec,
        mode: LinkMode,
        namespace: str,
        root_device: str,
        host_device: str,
    ) -> None:
        self.name = name
        self.index = index
        self.link = link
        self.mode: LinkMode = mode
        self.namespace = namespace
        self.root_device = root_device
        self.host_device = host_device
        self.address = f"{SUBNET_PREFIX}.{index}.2"
        self.root_address = f"{SUBNET_PREFIX}.{index}.1"
        self._relay: subprocess.Popen[bytes] | None = None
        self._closed = False

    @classmethod
    def create(
        cls,
        name: str,
        index: int | None,
        link: LinkSpec,
        mode: LinkMode | Literal["auto"] = "auto",
    ) -> NetnsHost:
        """Create the namespace and its link.

        Args:
            name: Short name, ``[a-z0-9][a-z0-9_-]{0,31}``; the namespace is
                ``moe2-<pid hex>-<name>``.
            index: 0..255, the subnet ``10.77.<index>.0/30``, which must not be addressed in the
                root namespace yet (:func:`subnets_in_use`); None picks the lowest free one from 1
                (under a lock shared with every other process, so concurrent runs get different
                subnets).
            link: The impairment, applied in each direction.
            mode: ``"netem"``, ``"tun"``, or ``"auto"`` (netem where the kernel has it).

        Returns:
            The running host; close it (or use it as a context manager).

        Raises:
            NetworkUnavailableError: Not root, no ``ip``/``tc``, the subnet is in use (or none
                is free), or a step failed. Whatever was created before the failure is removed
                first, so a failure leaves nothing behind.
            ValueError: ``name`` or ``index`` is malformed.
        """
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"host name {name!r} must match {_NAME_RE.pattern}")
        if index is not None and not 0 <= index <= 255:
            raise ValueError(f"index {index} must be in 0..255")
        problem = _preconditions()
        if problem is not None:
            raise NetworkUnavailableError(problem)
        namespace = _namespace_name(name)
        if namespace in _list_namespaces():
            raise NetworkUnavailableError(f"namespace {namespace} already exists")
        if mode == "auto":
            mode = "netem" if netem_available() else "tun"
        with _subnet_lock():
            used = subnets_in_use()
            if index is None:
                index = next((i for i in range(1, 256) if i not in used), None)
                if index is None:
                    raise NetworkUnavailableError(f"every subnet {SUBNET_PREFIX}.1-255 is in use")
            elif index in used:
                raise NetworkUnavailableError(
                    f"subnet {SUBNET_PREFIX}.{index}.0/30 is in use by another host"
                )
            host = cls(
                name,
                index,
                link,
                mode,
                namespace,
                _device_name("r", index),
                _device_name("h", index),
            )
            try:
                if mode == "netem":
                    host._build_netem()
                else:
                    host._build_tun()
            except BaseException as err:
                host.close()
                if isinstance(err, OSError):
                    raise NetworkUnavailableError(f"creating {namespace}: {err}") from err
                raise
        _OPEN_HOSTS.add(host)
        logger.info("host %s at %s (%s link: %s)", namespace, host.address, mode, link.describe())
        return host

    def _build_common_start(self) -> None:
        _run(["ip", "netns", "add", self.namespace])
        _run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])

    def _address_both_ends(self) -> None:
        _run(["ip", "addr", "add", f"{self.root_address}/30", "dev", self.root_device])
        _run(["ip", "link", "set", self.root_device, "up"])
        _run(
            [
                "ip", "-n", self.namespace, "addr", "add", f"{self.address}/30",
                "dev", self.host_device,
            ]
        )  # fmt: skip
        _run(["ip", "-n", self.namespace, "link", "set", self.host_device, "up"])

    def _build_netem(self) -> None:
        self._build_common_start()
        _run(
            [
                "ip", "link", "add", self.root_device, "type", "veth",
                "peer", "name", self.host_device, "netns", self.namespace,
            ]
        )  # fmt: skip
        self._address_both_ends()
        netem = _netem_arguments(self.link)
        _run(["tc", "qdisc", "add", "dev", self.root_device, "root", *netem])
        _run(["tc", "-n", self.namespace, "qdisc", "add", "dev", self.host_device, "root", *netem])

    def _build_tun(self) -> None:
        self._build_common_start()
        root_fd = open_tun(self.root_device)
        try:
            self._relay = subprocess.Popen(
                self.wrap(self._relay_command(root_fd)),
                pass_fds=(root_fd,),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": _python_path()},
            )
        finally:
            os.close(root_fd)  # the relay holds it now; the device lives as long as the relay
        line = _read_line(self._relay, _RELAY_READY_TIMEOUT_S)
        if line != "ready":
            raise NetworkUnavailableError(f"TUN relay for {self.namespace} failed: {line!r}")
        self._address_both_ends()

    def _relay_command(self, root_fd: int) -> list[str]:
        link = self.link
        return [
            *(sys.executable, "-m", "testbed.tun_relay"),
            *("--root-fd", str(root_fd), "--device", self.host_device),
            *("--delay-ms", repr(link.delay_ms), "--jitter-ms", repr(link.jitter_ms)),
            *("--rate-mbit", repr(link.rate_mbit or 0.0), "--loss-pct", repr(link.loss_pct)),
        ]

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` to run inside the namespace (prefixed with ``ip netns exec NAMESPACE``)."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def close(self) -> None:
        """Stop the relay, delete the namespace and the root-side device. Idempotent.

        Errors are logged, not raised: close runs in ``finally`` blocks and at exit, where an
        exception would hide the original one; :func:`cleanup_stale` removes what is left.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN_HOSTS.discard(self)
        if self._relay is not None:
            relay, self._relay = self._relay, None
            for stream in (relay.stdin, relay.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()  # stdin EOF tells the relay to exit
            try:
                relay.wait(timeout=_RELAY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(timeout=_RELAY_STOP_TIMEOUT_S)
        if self.namespace in _list_namespaces():
            result = _run(["ip", "netns", "delete", self.namespace], check=False)
            if result.returncode != 0:
                logger.warning("deleting %s: %s", self.namespace, result.stderr.strip())
        # The veth peer dies with the namespace and TUN devices with the relay, both
        # asynchronously; delete the root side explicitly so it is gone when close returns.
        if self.root_device in _list_links():
            _run(["ip", "link", "delete", self.root_device], check=False)
        logger.info("host %s closed", self.namespace)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsHost({self.namespace!r}, address={self.address!r}, mode={self.mode!r})"


def _python_path() -> str:
    """``PYTHONPATH`` that lets ``python -m testbed.tun_relay`` find this very package."""
    root = str(Path(__file__).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else f"{root}{os.pathsep}{existing}"


def _read_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """One line from ``process``'s stdout, or a reason if none came within ``timeout_s``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data and len(data) < 4096:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return f"no answer within {timeout_s:g} s"
        readable, _, _ = select.select([fd], [], [], remaining_s)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                return f"exited {process.wait(timeout=_RELAY_STOP_TIMEOUT_S)}: {data!r}"
            data += chunk
    return data.decode(errors="replace").strip()
