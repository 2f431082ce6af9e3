"""The TUN relay: an emulated link as a process inside a host's network namespace.

On kernels without ``sch_netem``, :class:`testbed.network.NetnsHost` (mode ``"tun"``) joins the
namespace to the root one through two TUN devices and runs this module inside the namespace as
``python -m testbed.tun_relay --root-fd FD --device NAME ...``: it moves IP packets between the
two devices through a timestamped queue per direction (:class:`testbed.links.LinkSchedule`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import struct
import sys
import time
from collections import deque

from testbed.links import QUEUE_LIMIT_PACKETS, LinkSchedule, LinkSpec

MAX_LIFETIME_S = 24 * 3600.0
"""A relay whose owner never closes it exits after this long."""

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(device: str) -> int:
    """Create TUN device ``device`` in the caller's namespace; returns its fd (non-blocking)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", device.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class PacketQueue:
    """One direction of the relay: packets with release times, written out in order."""

    def __init__(self, link: LinkSpec, out_fd: int) -> None:
        self._schedule = LinkSchedule(link)
        self._out_fd = out_fd
        self._packets: deque[tuple[float, bytes]] = deque()

    def offer(self, packet: bytes, now_s: float) -> None:
        if self._schedule.lost() or len(self._packets) >= QUEUE_LIMIT_PACKETS:
            return
        self._packets.append((self._schedule.release_s(len(packet), now_s), packet))

    def next_release_s(self) -> float | None:
        return self._packets[0][0] if self._packets else None

    def release_due(self, now_s: float) -> None:
        while self._packets and self._packets[0][0] <= now_s:
            _, packet = self._packets.popleft()
            # A write fails only when the device is down (the host is closing): drop the packet,
            # as a real link would.
            with contextlib.suppress(OSError):
                os.write(self._out_fd, packet)


def main(argv: list[str] | None = None) -> int:
    """Relay IP packets between the root-side TUN fd and a new TUN device in this namespace.

    Prints ``ready`` (or ``error: ...``) on stdout once the device exists, then runs until stdin
    reaches EOF (the owning process closed the host or died) or ``--max-lifetime-s`` passes.
    """
    parser = argparse.ArgumentParser(prog="python -m testbed.tun_relay")
    parser.add_argument("--root-fd", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--rate-mbit", type=float, default=0.0, help="0 = unlimited")
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--max-lifetime-s", type=float, default=MAX_LIFETIME_S)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    link = LinkSpec(args.delay_ms, args.jitter_ms, args.rate_mbit or None, args.loss_pct)
    root_fd: int = args.root_fd
    try:
        host_fd = open_tun(args.device)
        os.set_blocking(root_fd, False)
    except OSError as err:
        sys.stdout.write(f"error: {err}\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write("ready\n")  # the readiness protocol with NetnsHost._build_tun
    sys.stdout.flush()
    queues = {root_fd: PacketQueue(link, host_fd), host_fd: PacketQueue(link, root_fd)}
    stdin_fd = sys.stdin.fileno()
    deadline_s = time.monotonic() + args.max_lifetime_s
    while (now_s := time.monotonic()) < deadline_s:
        releases = [r for q in queues.values() if (r := q.next_release_s()) is not None]
        timeout_s = min([0.5, *(r - now_s for r in releases)])
        readable, _, _ = select.select([stdin_fd, *queues], [], [], max(0.0, timeout_s))
        if stdin_fd in readable and not os.read(stdin_fd, 4096):
            break
        arrived_s = time.monotonic()
        for fd in readable:
            if fd == stdin_fd:
                continue
            for _ in range(256):  # bounded batch, so the other direction is served too
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                queues[fd].offer(packet, arrived_s)
        now_s = time.monotonic()
        for queue in queues.values():
            queue.release_due(now_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
