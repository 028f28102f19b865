"""What the command line needs to know about a plain IPv4/IPv6 packet: addresses, the
upper-layer protocol and ports (for SA selectors), fragmentation, the TCP payload length
(for LSO), and the packet's own length (captures can carry link padding after it)."""
from __future__ import annotations

from typing import NamedTuple, Optional

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
_TCP_SYN_RST_URG = 0x02 | 0x04 | 0x20
_IPV6_SKIPPED = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44


class MalformedPacket(ValueError):
    """The bytes are not a usable IPv4/IPv6 packet; ``reason`` is a short label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PacketInfo(NamedTuple):
    version: int  # 4 or 6
    src: bytes  # packed address
    dst: bytes
    proto: int  # upper-layer protocol, after IPv6 extension headers
    sport: Optional[int]  # TCP/UDP ports; None when absent (other protocols, later fragments)
    dport: Optional[int]
    length: int  # IP packet length from its header
    fragment: bool
    tcp_payload: Optional[int]  # TCP data bytes, None if not a complete TCP header
    lso_capable: bool  # TCP without SYN, RST, URG and with urgent pointer 0 (docs/send-path.md)


def parse_packet(data) -> PacketInfo:
    """Parse the headers of a plain IP packet; raises MalformedPacket."""
    view = memoryview(data)
    if len(view) < 1:
        raise MalformedPacket("empty")
    version = view[0] >> 4
    if version == 4:
        return _parse_ipv4(view)
    if version == 6:
        return _parse_ipv6(view)
    raise MalformedPacket("not IPv4 or IPv6")


def _parse_ipv4(view: memoryview) -> PacketInfo:
    if len(view) < 20:
        raise MalformedPacket("truncated")
    header_len = (view[0] & 0x0F) * 4
    length = int.from_bytes(view[2:4], "big")
    if header_len < 20 or length < header_len:
        raise MalformedPacket("bad IPv4 header")
    if length > len(view):
        raise MalformedPacket("truncated")
    flags_offset = int.from_bytes(view[6:8], "big")
    more_fragments, offset = bool(flags_offset & 0x2000), flags_offset & 0x1FFF
    proto = view[9]
    return _upper_layer(4, bytes(view[12:16]), bytes(view[16:20]), proto, view, header_len,
                        length, fragment=more_fragments or offset != 0, later_fragment=offset != 0)


def _parse_ipv6(view: memoryview) -> PacketInfo:
    if len(view) < 40:
        raise MalformedPacket("truncated")
    length = 40 + int.from_bytes(view[4:6], "big")
    if length > len(view):
        raise MalformedPacket("truncated")
    proto, pos = view[6], 40
    fragment = later_fragment = False
    while proto in _IPV6_SKIPPED or proto == _IPV6_FRAGMENT:
        if pos + 8 > length:
            raise MalformedPacket("truncated")
        if proto == _IPV6_FRAGMENT:
            offset = int.from_bytes(view[pos + 2:pos + 4], "big") >> 3
            fragment = True
            later_fragment = later_fragment or offset != 0
            proto, pos = view[pos], pos + 8
            if later_fragment:
                break
        else:
            proto, pos = view[pos], pos + (view[pos + 1] + 1) * 8
    if pos > length:
        raise MalformedPacket("truncated")
    return _upper_layer(6, bytes(view[8:24]), bytes(view[24:40]), proto, view, pos, length,
                        fragment=fragment, later_fragment=later_fragment)


def _upper_layer(version: int, src: bytes, dst: bytes, proto: int, view: memoryview, pos: int,
                 length: int, *, fragment: bool, later_fragment: bool) -> PacketInfo:
    sport = dport = tcp_payload = None
    lso_capable = False
    if not later_fragment and proto in (TCP, UDP):
        minimum = 20 if proto == TCP else 8
        if pos + minimum > length:
            raise MalformedPacket("truncated")
        sport = int.from_bytes(view[pos:pos + 2], "big")
        dport = int.from_bytes(view[pos + 2:pos + 4], "big")
        if proto == TCP:
            tcp_header = (view[pos + 12] >> 4) * 4
            if tcp_header < 20 or pos + tcp_header > length:
                raise MalformedPacket("bad TCP header")
            tcp_payload = length - pos - tcp_header
            lso_capable = not (fragment or view[pos + 13] & _TCP_SYN_RST_URG
                               or view[pos + 18] or view[pos + 19])
    return PacketInfo(version, src, dst, proto, sport, dport, length, fragment, tcp_payload,
                      lso_capable)
