"""A plaintext capture to an IPsec capture with an SA list, then read back.

Run: python examples/pcap_convert.py [OUT_DIR]   (no scapy needed)
"""
from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import ipsecoffload
from ipsecoffload.inet import internet_checksum

SAS = [
    # the SA-file format (README, "SA file"): the first SA whose selector matches protects
    {"name": "web", "selector": {"dst": "198.51.100.0/24", "proto": "tcp"}, "spi": "0x1001",
     "encryption": "aes-gcm-128", "key": "00112233445566778899aabbccddeeff01020304"},
    {"name": "site", "selector": {"dst": "203.0.113.0/24"}, "mode": "tunnel",
     "tunnel": {"src": "192.0.2.254", "dst": "203.0.113.254"}, "spi": "0x1002",
     "encryption": "aes-cbc-128", "key": "2b7e151628aed2a6abf7158809cf4f3c",
     "integrity": "hmac-sha256-128", "auth_key": "5a" * 32},
]


def ipv4(dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000,
                                   64, proto, 0, bytes([192, 0, 2, 1]),
                                   bytes(int(x) for x in dst.split("."))))
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return bytes(header) + payload


def main(out_dir: Path) -> None:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    udp = struct.pack("!HHHH", 40001, 53, 8 + 5, 0)
    packets = [ipv4("198.51.100.7", 6, tcp + b"x" * n, i) for i, n in enumerate((0, 100, 3000))]
    packets += [ipv4("203.0.113.9", 17, udp + b"hello", 7),
                ipv4("192.0.2.9", 17, udp + b"clear", 8)]
    plain, esp = out_dir / "plain.pcap", out_dir / "esp.pcap"
    ipsecoffload.write_pcap(plain, ipsecoffload.LINKTYPE_RAW, packets,
                            [1_700_000_000 * 10**9 + i * 1000 for i in range(len(packets))])

    summary = ipsecoffload.encrypt_pcap(plain, esp, SAS, mss=1000)  # TCP > 1000 B: LSO
    print(f"{summary.packets_in} packets in, {summary.frames_out} frames out")
    for name, stats in summary.sas.items():
        print(f"  {name}: {stats.packets} packets, {stats.lso_segments} LSO segments, "
              f"{dict(stats.status)}")
    print(f"  clear: {summary.clear.packets}")

    with ipsecoffload.PcapReader(esp) as reader:
        protocols = [record.data[9] for record in reader]  # IPv4 protocol byte
    print("protocols out:", protocols)  # 50 = ESP, 17 = the clear UDP packet
    assert protocols.count(50) == 2 + 3 + 1 and protocols[-1] == 17


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
