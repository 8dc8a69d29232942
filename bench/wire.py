"""When connections close, as seen on the loopback wire: kernel timestamps of FIN and RST segments.

The ``cancel`` scenario asks how long the relay takes from a client's disconnect to closing
the upstream connection. The mock's record of a disconnect adds the mock's own time to notice
it, on a core it shares with the load generator. This capture takes both ends from the kernel
instead: the client's FIN leaving the load generator, and the relay's FIN or RST leaving for
the mock. It needs a packet socket (root, or CAP_NET_RAW); ``Capture.start`` raises
``PermissionError`` without one.

A classic BPF filter in the kernel passes only IPv4 TCP segments with FIN or RST, so the
capture sees a few packets per stream, not every event.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4

# tcp[tcpflags] & (fin|rst) != 0, on IPv4 over loopback's 14-byte Ethernet header.
_FILTER = [
    (0x28, 0, 0, 12),  # ldh [12]: ethertype
    (0x15, 0, 7, 0x0800),  # IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]: protocol
    (0x15, 0, 5, 6),  # TCP, else drop
    (0x28, 0, 0, 20),  # ldh [20]: fragment offset
    (0x45, 3, 0, 0x1FFF),  # a later fragment: drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
    (0x50, 0, 0, 27),  # ldb [x+27]: TCP flags
    (0x45, 0, 1, 0x05),  # FIN or RST: accept, else drop
    (0x06, 0, 0, 0x40000),  # accept
    (0x06, 0, 0, 0),  # drop
]


@dataclass(frozen=True, slots=True)
class Segment:
    at: float  # CLOCK_REALTIME seconds, from the kernel
    sport: int
    dport: int
    fin: bool
    rst: bool


class Capture:
    """Records every FIN or RST segment sent on ``lo`` while it runs."""

    def __init__(self, interface: str = "lo", core: int | None = None) -> None:
        self._interface = interface
        self._core = core  # keep the capture's thread off the server's core
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.segments: list[Segment] = []

    def start(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        program = b"".join(struct.pack("HBBI", *op) for op in _FILTER)
        buffer = _ctypes_buffer(program)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(_FILTER), buffer))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((self._interface, 0))
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="wire-capture", daemon=True)
        self._thread.start()

    def stop(self) -> list[Segment]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        return self.segments

    def _run(self) -> None:
        assert self._sock is not None
        if self._core is not None:
            os.sched_setaffinity(0, {self._core})  # this thread only
        sock = self._sock
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            data, ancillary, _, address = sock.recvmsg(128, socket.CMSG_SPACE(16))
            if address[2] != PACKET_OUTGOING:  # loopback shows each segment leaving and arriving: keep the send
                continue
            at = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    at = seconds + nanoseconds / 1e9
            if at is None:
                continue
            ihl = (data[14] & 0x0F) * 4
            tcp = 14 + ihl
            sport, dport = struct.unpack("!HH", data[tcp : tcp + 4])
            flags = data[tcp + 13]
            self.segments.append(Segment(at, sport, dport, bool(flags & 0x01), bool(flags & 0x04)))


_keep: list[object] = []  # the filter program must outlive the setsockopt call


def _ctypes_buffer(program: bytes) -> int:
    import ctypes

    buffer = ctypes.create_string_buffer(program)
    _keep.append(buffer)
    return ctypes.addressof(buffer)


@contextlib.contextmanager
def capturing(core: int | None = None) -> Iterator[Capture | None]:
    """A running capture (its thread on ``core``), or ``None`` where packet sockets are not allowed."""
    capture = Capture(core=core)
    try:
        capture.start()
    except PermissionError:
        yield None
        return
    try:
        yield capture
    finally:
        capture.stop()


def first_close(segments: list[Segment], port: int, peer_port: int, after: float = 0.0) -> float | None:
    """When the connection from local ``port`` to ``peer_port`` first sent a FIN or RST at or after ``after``.

    Both ports count: an ephemeral port is unique per destination only, so a client's
    connection to the relay and the relay's to the mock can have the same local port.
    """
    return min((s.at for s in segments if s.sport == port and s.dport == peer_port and s.at >= after), default=None)
