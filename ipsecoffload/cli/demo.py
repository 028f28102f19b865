"""``ipsecoffload demo``: synthetic traffic and built-in SAs, run through the same capture
encryption as ``ipsecoffload encrypt``.

The SA keys here are fixed and public (derived from the SA names): demo keys, never keys
for real traffic.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import struct
from dataclasses import dataclass
from typing import Optional

from ..io.capture import EncryptSummary, encrypt_capture
from ..inet import internet_checksum
from ..host.packetinfo import ICMP, TCP, UDP
from ..io.pcap import LINKTYPE_ETHERNET, PcapWriter
from ..io.safile import SaPolicy, Selector, save_sa_file, wireshark_esp_sa
from ..host.saconfig import ENCRYPTIONS, INTEGRITIES, SaConfig

DEMO_MSS = 1400
DEMO_KEY_NOTE = "demo keys: fixed and public, never use them for real traffic"
_T0_NS = 1_700_000_000 * 10**9
_CLIENT_MAC, _SERVER_MAC = b"\x02\x00\x00\x00\x0a\x01", b"\x02\x00\x00\x00\x0a\x02"


def demo_key(name: str, purpose: str, length: int) -> bytes:
    """A fixed, public key for demo SA ``name``."""
    seed = hashlib.sha256(f"ipsecoffload demo key/{name}/{purpose}".encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


def _config(name: str, spi: int, encryption: str, integrity: Optional[str] = None,
            **kwargs) -> SaConfig:
    return SaConfig(spi=spi, encryption=encryption,
                    key=demo_key(name, "encryption", ENCRYPTIONS[encryption][1]),
                    integrity=integrity,
                    auth_key=demo_key(name, "integrity", INTEGRITIES[integrity][1])
                    if integrity else b"",
                    name=name, **kwargs)


def demo_policies() -> list:
    """The built-in SAs: AES-GCM transport over IPv4, AES-CBC + HMAC tunnel IPv6 in IPv6,
    an ESN SA whose sequence numbers cross 2**32, and a UDP-encapsulated (NAT-T) tunnel."""
    return [
        SaPolicy("web4", Selector(src="10.0.0.0/24", dst="10.1.0.0/16", proto="tcp"),
                 _config("web4", 0x1001, "aes-gcm-128")),
        SaPolicy("site6", Selector(src="2001:db8:1::/48"),
                 _config("site6", 0x1002, "aes-cbc-256", "hmac-sha256-128", mode="tunnel",
                         tunnel_src="2001:db8:ffff::1", tunnel_dst="2001:db8:ffff::2")),
        SaPolicy("esn6", Selector(src="2001:db8:3::/48", proto="tcp"),
                 _config("esn6", 0x1003, "aes-gcm-256", esn=True, seq=2**32 - 64)),
        SaPolicy("natt4", Selector(src="192.168.1.0/24", proto="udp"),
                 _config("natt4", 0x1004, "aes-cbc-128", "hmac-sha1-96", mode="tunnel",
                         tunnel_src="198.51.100.1", tunnel_dst="203.0.113.1",
                         udp_encap=(4500, 4500))),
    ]


# -- packets --------------------------------------------------------------------------------
def _ip_packet(src: str, dst: str, proto: int, l4: bytearray, checksum_at: Optional[int],
               ident: int) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if checksum_at is not None:
        if len(s) == 4:
            pseudo = s + d + struct.pack("!BBH", 0, proto, len(l4))
        else:
            pseudo = s + d + struct.pack("!I3xB", len(l4), proto)
        struct.pack_into("!H", l4, checksum_at, internet_checksum(pseudo + bytes(l4)) or 0xFFFF)
    if len(s) == 4:
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF,
                                       0x4000, 64, proto, 0, s, d))
        struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
        return bytes(header) + bytes(l4)
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, s, d) + bytes(l4)


class _Flow:
    """One direction of a TCP or UDP conversation, numbering its packets."""

    def __init__(self, src: str, dst: str, proto: int, sport: int, dport: int):
        self.src, self.dst, self.proto, self.sport, self.dport = src, dst, proto, sport, dport
        self.seq, self.ident = 1000, 1

    def packet(self, payload: bytes) -> bytes:
        self.ident += 1
        if self.proto == TCP:
            l4 = bytearray(struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq, 1,
                                       5 << 4, 0x18, 65535, 0, 0) + payload)
            self.seq = (self.seq + len(payload)) & 0xFFFFFFFF
            return _ip_packet(self.src, self.dst, TCP, l4, 16, self.ident)
        l4 = bytearray(struct.pack("!HHHH", self.sport, self.dport, 8 + len(payload), 0)
                       + payload)
        return _ip_packet(self.src, self.dst, UDP, l4, 6, self.ident)


def _echo(src: str, dst: str, ident: int, payload: bytes) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 7, ident) + payload)
    struct.pack_into("!H", icmp, 2, internet_checksum(bytes(icmp)))
    return _ip_packet(src, dst, ICMP, icmp, None, ident)


def demo_packets(seed: int = 4) -> list:
    """About 300 plain IP packets, interleaved: what each demo SA carries (LSO-sized TCP
    packets of 8-16 KiB among them) and some traffic no SA matches."""
    rng = random.Random(seed)
    web = _Flow("10.0.0.1", "10.1.0.2", TCP, 40000, 443)
    site_tcp = _Flow("2001:db8:1::10", "2001:db8:2::20", TCP, 40001, 22)
    site_udp = _Flow("2001:db8:1::10", "2001:db8:2::20", UDP, 40002, 53)
    esn = _Flow("2001:db8:3::5", "2001:db8:4::6", TCP, 40003, 8443)
    natt = _Flow("192.168.1.7", "10.9.0.1", UDP, 40004, 5000)
    dns = _Flow("10.0.0.1", "192.0.2.53", UDP, 40005, 53)
    streams = [
        [web.packet(rng.randbytes(rng.choice((0, 64, 512, 1400)))) for _ in range(90)]
        + [web.packet(rng.randbytes(rng.randrange(8192, 16385))) for _ in range(10)],
        [site_tcp.packet(rng.randbytes(rng.randrange(0, 1300))) for _ in range(40)]
        + [site_udp.packet(rng.randbytes(rng.randrange(20, 600))) for _ in range(20)],
        [esn.packet(rng.randbytes(rng.choice((100, 1000)))) for _ in range(52)]
        + [esn.packet(rng.randbytes(rng.randrange(8192, 16385))) for _ in range(8)],
        [natt.packet(rng.randbytes(rng.randrange(16, 1200))) for _ in range(50)],
        [_echo("172.16.0.1", "172.16.0.2", i, rng.randbytes(56)) for i in range(15)]
        + [dns.packet(rng.randbytes(40)) for _ in range(15)],
    ]
    for stream in streams:
        rng.shuffle(stream)  # LSO packets spread through their flow, order within it random
    packets = []
    while any(streams):
        stream = rng.choice([s for s in streams if s])
        packets.append(stream.pop(0))
    return packets


def _frame(packet: bytes) -> bytes:
    ethertype = b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd"
    return _SERVER_MAC + _CLIENT_MAC + ethertype + packet


@dataclass
class DemoResult:
    directory: str
    plain_packets: int
    plain_bytes: int
    policies: list
    summary: EncryptSummary
    esp_sa_lines: int


def run_demo(directory: str, *, progress=None) -> DemoResult:
    """Write plain.pcap, sa.json, esp.pcap and esp_sa into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    plain = os.path.join(directory, "plain.pcap")
    packets = demo_packets()
    with PcapWriter(plain, LINKTYPE_ETHERNET) as writer:
        for i, packet in enumerate(packets):
            writer.write(_frame(packet), ts_ns=_T0_NS + i * 100_000)
    policies = demo_policies()
    save_sa_file(os.path.join(directory, "sa.json"), policies)
    summary = encrypt_capture(plain, os.path.join(directory, "esp.pcap"), policies,
                              mss=DEMO_MSS, progress=progress)
    lines = wireshark_esp_sa(policies)
    with open(os.path.join(directory, "esp_sa"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return DemoResult(directory=directory, plain_packets=len(packets),
                      plain_bytes=sum(len(p) + 14 for p in packets), policies=policies,
                      summary=summary, esp_sa_lines=len(lines))
