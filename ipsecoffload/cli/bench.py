"""Send-path throughput with its references from the same run (design §8).

- limit: ``AESGCM.encrypt_into`` over one 1 MiB buffer, the cipher's own speed here;
- naive: a plain Python loop of one ``encrypt_into`` per packet of the same size;
- ours: ``Miniport.send`` over prebuilt frames (classify .. complete), one core.

Used by ``ipsecoffload bench`` and by the pytest-benchmark suites in benchmarks/.
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..datapath.batch import PacketBatch
from ..control.miniport import Miniport
from ..host.saconfig import SaConfig
from ..host.stack import HostStack

DEFAULT_SIZES = (64, 512, 1400, 9000)
DEFAULT_BATCH = 256
_KEY = bytes(range(16)) + b"salt"


def tcp_packet(size: int, *, ipv6: bool = False, seq: int = 1, sport: int = 40000,
               dport: int = 443) -> bytes:
    """A plain IPv4 (or IPv6) TCP packet of exactly ``size`` bytes (at least the headers)."""
    header = 40 if ipv6 else 20
    if size < header + 20:
        raise ValueError(f"size must be at least {header + 20} bytes, got {size}")
    data = bytes(i & 0xFF for i in range(size - header - 20))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0) + data
    if ipv6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(15) + b"\1",
                           bytes(15) + b"\2") + tcp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0x4000, 64, 6, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])))
    return bytes(ip) + tcp


def prepared_send(size: int, batch: int = DEFAULT_BATCH,
                  encryption: str = "aes-gcm-128") -> tuple[Miniport, PacketBatch]:
    """A miniport with one transport SA and a batch of prebuilt frames of ``size``-byte packets."""
    miniport = Miniport()
    stack = HostStack(miniport)
    key = _KEY if encryption.startswith("aes-gcm") else bytes(int(encryption[-3:]) // 8)
    integrity = None if encryption.startswith("aes-gcm") else "hmac-sha256-128"
    sa = stack.add_sa(SaConfig(spi=0x1000, encryption=encryption, key=key, integrity=integrity,
                               auth_key=b"" if integrity is None else bytes(32)))
    frames = stack.build([tcp_packet(size)] * batch, sa)
    return miniport, frames


def _rate(run: Callable[[], None], min_time: float) -> float:
    """Calls per second of ``run``, timed over at least ``min_time`` seconds."""
    run()  # warm up
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls / elapsed


def limit_bytes_per_second(min_time: float = 0.3) -> float:
    aead, nonce, aad = AESGCM(_KEY[:16]), bytes(12), bytes(8)
    data = memoryview(bytearray(1 << 20))
    out = bytearray((1 << 20) + 16)
    return _rate(lambda: aead.encrypt_into(nonce, data, aad, out), min_time) * (1 << 20)


def naive_packets_per_second(size: int, batch: int = DEFAULT_BATCH,
                             min_time: float = 0.3) -> float:
    """One encrypt_into per packet in a Python loop: what a plain program gets."""
    aead, aad = AESGCM(_KEY[:16]), bytes(8)
    packets = [bytearray(os.urandom(size)) for _ in range(batch)]
    outs = [bytearray(size + 16) for _ in range(batch)]

    def run() -> None:
        for i, packet in enumerate(packets):
            aead.encrypt_into(i.to_bytes(12, "big"), packet, aad, outs[i])
    return _rate(run, min_time) * batch


def send_packets_per_second(size: int, batch: int = DEFAULT_BATCH,
                            min_time: float = 0.3) -> float:
    miniport, frames = prepared_send(size, batch)
    return _rate(lambda: miniport.send(frames), min_time) * batch


@dataclass
class BenchRow:
    size: int  # plain IP packet bytes in
    pps: float
    gbps: float  # IP bytes in
    limit_gbps: float
    naive_pps: float
    ratio_limit: float  # ours / limit (Gbit/s)
    ratio_naive: float  # ours / naive (packets/s)

    def as_dict(self) -> dict:
        return asdict(self)


def run(sizes: Sequence[int] = DEFAULT_SIZES, batch: int = DEFAULT_BATCH,
        min_time: float = 0.3) -> list[BenchRow]:
    """One row per size; every figure comes from this one run (design §8)."""
    limit_gbps = limit_bytes_per_second(min_time) * 8 / 1e9
    rows = []
    for size in sizes:
        pps = send_packets_per_second(size, batch, min_time)
        naive = naive_packets_per_second(size, batch, min_time)
        gbps = pps * size * 8 / 1e9
        rows.append(BenchRow(size=size, pps=pps, gbps=gbps, limit_gbps=limit_gbps,
                             naive_pps=naive, ratio_limit=gbps / limit_gbps,
                             ratio_naive=pps / naive))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    lines = [f"{'size':>6} {'Mpps':>8} {'Gbit/s':>8} {'limit':>8} {'naive Mpps':>11} "
             f"{'ours/limit':>11} {'ours/naive':>11}"]
    for r in rows:
        lines.append(f"{r.size:>6} {r.pps / 1e6:>8.3f} {r.gbps:>8.2f} {r.limit_gbps:>8.2f} "
                     f"{r.naive_pps / 1e6:>11.3f} {r.ratio_limit:>11.3f} {r.ratio_naive:>11.3f}")
    return "\n".join(lines)
