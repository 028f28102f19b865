"""HostStack: what Windows TCP/IP does before the miniport (docs/architecture.md).

From plain IP packets (bytes starting at the IP header) and an outbound SA it builds the
IPsecOV2 frames the miniport expects — headers, SPI, sequence number, IV slot, ESP padding
and trailer, room for the ICV (docs/send-path.md), or an LSO super-packet (docs/send-path.md) —
with their out-of-band info (docs/protocol.md), keeps each SA's sequence number, and drives the
miniport's ADD_SA / DELETE_SA / UPDATE_SA OIDs (docs/protocol.md).

The stack does no crypto: the IV slot and the ICV are left for the NIC.
"""
from __future__ import annotations

import ipaddress
import os
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from .. import ndis
from ..datapath.batch import PacketBatch, PacketBatchBuilder
from ..inet import ones_complement_sum
from ..ndis import NdisStatus
from ..errors import IpsecOffloadError, SaOffloadRefused
from ..host.saconfig import SaConfig
from .receive import ReceiveMixin
from ..datapath.tx import SendResult

IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_IPV6 = 4, 6, 17, 41
IPPROTO_ESP, IPPROTO_AH = 50, 51
IPV6_FRAGMENT = 44
# IPv6 extension headers that come before AH/ESP in transport mode: hop-by-hop, routing, and
# destination options unless a routing header precedes them (RFC 4302 §3.1.1, RFC 4303
# §3.1.1: destination options may go before or after; this is the placement Linux uses)
IPV6_HEADERS_BEFORE_ESP = (0, 43, 60)
IPV6_ROUTING, IPV6_DESTINATION_OPTIONS = 43, 60
ETHERTYPES = {4: 0x0800, 6: 0x86DD}
ETHERNET_HEADER_LEN = 14
UDP_HEADER_LEN = 8
MAX_ESP_OFFSET = 255 * 4  # EspHeaderOffset is 8 bits of 4-byte units (docs/protocol.md)
MAX_LSO_MSS = (1 << 20) - 1  # 20-bit MSS field (docs/protocol.md)
MAX_LSO_TCP_OFFSET = (1 << 10) - 1  # 10-bit TcpHeaderOffset field (docs/protocol.md)
TCP_SYN, TCP_RST, TCP_URG = 0x02, 0x04, 0x20
DF_POLICIES = ("copy", "set", "clear")


class SequenceNumberExhausted(IpsecOffloadError, ValueError):
    """The SA has no sequence numbers left for the packets asked for (docs/protocol.md: an SN
    never wraps; a new SA is needed)."""


def _sa_label(config: SaConfig) -> str:
    return f"SA {config.name!r} (SPI {config.spi:#010x})" if config.name \
        else f"SA SPI {config.spi:#010x}"


def _sequence_limit(config: SaConfig) -> int:
    """The last usable sequence number (docs/protocol.md)."""
    return 2**64 - 1 if config.esn else 2**32 - 1


class EspLayout(NamedTuple):
    """What framing needs of an SA, derived once (style: choose the variant once)."""
    spi: int
    iv_len: int  # IV slot bytes after the SN
    icv: int  # ICV bytes reserved after the trailer
    align: int  # ESP padding alignment (docs/protocol.md)

    @classmethod
    def of(cls, config: SaConfig) -> "EspLayout":
        return cls(spi=config.spi, iv_len=config.iv_len, icv=config.icv, align=config.align)


class StackSa:
    """The stack's view of one outbound SA.

    ``next_seq`` is the 64-bit sequence number the next packet gets; ``handles`` maps the
    IP version of a bundle (``True`` = IPv6) to the offload handle the miniport returned.
    """

    def __init__(self, config: SaConfig):
        self.config = config
        self.layout = EspLayout.of(config)
        self.next_seq = config.seq
        self.handles: dict[bool, int] = {}
        self.removed = False
        # ESN high-order word each bundle's miniport record holds (docs/protocol.md UPDATE_SA)
        self._nic_seq_hi: dict[bool, int] = {}
        self._owner: Optional[HostStack] = None
        # transport over tunnel: the tunnel SA (of the same stack) that carries this one
        self.via: Optional[StackSa] = None
        self._tunnel_endpoints: Optional[tuple[bytes, bytes]] = None
        if config.mode == "tunnel":
            assert config.tunnel_src and config.tunnel_dst  # SaConfig checked them
            self._tunnel_endpoints = (ipaddress.ip_address(config.tunnel_src).packed,
                                      ipaddress.ip_address(config.tunnel_dst).packed)
        # Derived once: the per-packet checks must not parse addresses again
        self.bundle_versions = _bundle_versions(config)

    def __repr__(self) -> str:
        handles = {("ipv6" if v6 else "ipv4"): f"{h:#x}" for v6, h in self.handles.items()}
        return (f"StackSa({_sa_label(self.config)}, mode={self.config.mode}, "
                f"{'via=' + _sa_label(self.via.config) + ', ' if self.via else ''}"
                f"next_seq={self.next_seq}, handles={handles}"
                f"{', removed' if self.removed else ''})")


# -- parsing the plain packets ----------------------------------------------------------------
@dataclass(frozen=True)
class IpPacket:
    """A plain IP packet as the stack sees it."""
    data: bytes  # the packet, trimmed to the length its IP header gives
    version: int  # 4 or 6
    l4_offset: int  # first byte after the IP header, IPv4 options and walked IPv6 headers
    protocol: int  # the protocol found at l4_offset (the ESP trailer's Next Header)
    next_header_at: int  # offset of the byte that names ``protocol``
    fragment: bool  # IPv4 MF or fragment offset set, or an IPv6 fragment header

    @property
    def tos(self) -> int:
        """IPv4 TOS byte or IPv6 Traffic Class: DSCP and ECN."""
        if self.version == 4:
            return self.data[1]
        return ((self.data[0] & 0x0F) << 4) | (self.data[1] >> 4)

    @property
    def flow_label(self) -> int:
        if self.version == 4:
            return 0
        return ((self.data[1] & 0x0F) << 16) | (self.data[2] << 8) | self.data[3]

    @property
    def dont_fragment(self) -> bool:
        return self.version == 4 and bool(self.data[6] & 0x40)


def parse_ip_packet(packet: bytes) -> IpPacket:
    """Parse a plain IPv4 or IPv6 packet; ValueError if it is not one."""
    if not isinstance(packet, (bytes, bytearray, memoryview)):
        raise TypeError(f"a packet must be bytes, got {type(packet).__name__}")
    data = bytes(packet)
    if not data:
        raise ValueError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise ValueError(f"IP version {version} in the first byte; only 4 and 6 are packets")


def _parse_ipv4(data: bytes) -> IpPacket:
    if len(data) < 20:
        raise ValueError(f"IPv4 packet of {len(data)} bytes is shorter than its 20-byte header")
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack_from("!H", data, 2)[0]
    if ihl < 20 or total < ihl or total > len(data):
        raise ValueError(f"IPv4 header length {ihl} / total length {total} do not fit a "
                         f"{len(data)}-byte packet")
    flags_offset = struct.unpack_from("!H", data, 6)[0]
    return IpPacket(data=data[:total], version=4, l4_offset=ihl, protocol=data[9],
                    next_header_at=9, fragment=bool(flags_offset & 0x3FFF))


def _parse_ipv6(data: bytes) -> IpPacket:
    if len(data) < 40:
        raise ValueError(f"IPv6 packet of {len(data)} bytes is shorter than its 40-byte header")
    end = 40 + struct.unpack_from("!H", data, 4)[0]
    if end > len(data):
        raise ValueError(f"IPv6 payload length {end - 40} exceeds the {len(data) - 40} bytes "
                         f"after the header (jumbograms are not supported)")
    data = data[:end]
    next_header_at, offset = 6, 40
    routed = False
    while data[next_header_at] in IPV6_HEADERS_BEFORE_ESP:
        if data[next_header_at] == IPV6_DESTINATION_OPTIONS and routed:
            break  # destination options for the final destination go after AH/ESP
        routed = routed or data[next_header_at] == IPV6_ROUTING
        if offset + 2 > end:
            raise ValueError(f"IPv6 extension header at byte {offset} is truncated")
        length = (data[offset + 1] + 1) * 8
        if offset + length > end:
            raise ValueError(f"IPv6 extension header at byte {offset} ({length} bytes) runs "
                             f"past the packet end ({end})")
        next_header_at, offset = offset, offset + length
    protocol = data[next_header_at]
    return IpPacket(data=data, version=6, l4_offset=offset, protocol=protocol,
                    next_header_at=next_header_at, fragment=protocol == IPV6_FRAGMENT)


# -- header pieces ----------------------------------------------------------------------------
def _set_ipv4_checksum(datagram: bytearray) -> None:
    ihl = (datagram[0] & 0x0F) * 4
    struct.pack_into("!H", datagram, 10, 0)
    struct.pack_into("!H", datagram, 10, ~ones_complement_sum(bytes(datagram[:ihl])) & 0xFFFF)


def _set_ip_length(datagram: bytearray, length: int) -> None:
    """IPv4 Total Length (checksum recomputed) or IPv6 Payload Length, ``length`` being the
    whole datagram's bytes; 0 leaves the length to the segmenter (docs/send-path.md)."""
    if datagram[0] >> 4 == 4:
        if length > 0xFFFF:
            raise ValueError(f"an IPv4 datagram of {length} bytes exceeds 65535 "
                             f"(IPsec is never offloaded for sends needing fragmentation)")
        struct.pack_into("!H", datagram, 2, length)
        _set_ipv4_checksum(datagram)
    else:
        payload = max(0, length - 40)
        if payload > 0xFFFF:
            raise ValueError(f"an IPv6 payload of {payload} bytes exceeds 65535")
        struct.pack_into("!H", datagram, 4, payload)


def _udp_header(ports: tuple[int, int], length: int) -> bytes:
    """RFC 3948 UDP header; checksum 0 — the NIC computes it for IPv6 (docs/send-path.md)."""
    return struct.pack("!HHHH", ports[0], ports[1], length, 0)


def _pad_length(payload_len: int, align: int) -> int:
    """Smallest pad with payload + pad + 2 a multiple of align (docs/protocol.md)."""
    return -(payload_len + 2) % align


def _esp_packet(layout: EspLayout, sn: int, iv: bytes, payload: bytes,
                next_header: int) -> tuple[bytes, int]:
    """ESP header, IV slot, payload, trailer and the reserved ICV bytes (docs/send-path.md);
    returns the bytes and the pad length."""
    pad = _pad_length(len(payload), layout.align)
    trailer = bytes(range(1, pad + 1)) + bytes((pad, next_header))
    return (struct.pack("!II", layout.spi, sn & 0xFFFFFFFF) + iv + payload + trailer
            + bytes(layout.icv)), pad


def _ah_header(config: SaConfig, sn: int, iv: bytes, next_header: int, ipv6: bool) -> bytes:
    """RFC 4302 §2: Next Header, Payload Length (32-bit words - 2), Reserved, SPI, SN, then
    the ICV field: the AES-GMAC IV (RFC 4543 §3), the ICV and the explicit pad, zero."""
    length = config.ah_length(ipv6)
    fixed = struct.pack("!BBHII", next_header, length // 4 - 2, 0, config.ah_layer[0],
                        sn & 0xFFFFFFFF) + bytes(iv)
    return fixed + bytes(length - len(fixed))


def _ah_offset4(offset: int) -> int:
    """AhHeaderOffset: 4-byte units from the IP header, 8 bits (docs/protocol.md)."""
    if offset % 4 or offset > MAX_ESP_OFFSET:
        raise ValueError(f"AH would start {offset} bytes after the IP header; AhHeaderOffset "
                         f"holds multiples of 4 up to {MAX_ESP_OFFSET}")
    return offset // 4


def _tcp_pseudo_header_seed(packet: IpPacket) -> int:
    """The partial pseudo-header sum (addresses and protocol, no length) that Windows leaves
    in the TCP checksum field of an LSO packet (docs/send-path.md). The IPv6 destination is the
    header's, not a routing header's final one: the NIC ignores the seed (docs/spec-gaps.md G23)."""
    addresses = packet.data[12:20] if packet.version == 4 else packet.data[8:40]
    return ones_complement_sum(addresses + struct.pack("!H", IPPROTO_TCP))


class _Nbl(NamedTuple):
    """One NBL the stack hands to the miniport, before packing into a batch."""
    frame: bytes
    oob: dict  # PacketBatchBuilder fields
    bundle: Optional[bool]  # IP version key of the SA bundle used (None: no IPsec)
    first_sn: int
    last_sn: int


class _ViaNbl(NamedTuple):
    """A nested NBL (transport over tunnel): an _Nbl plus the tunnel layer's SN."""
    frame: bytes
    oob: dict
    bundle: Optional[bool]  # the transport bundle's IP version key
    first_sn: int  # the transport SA's SN
    last_sn: int
    tunnel_sn: int


def _via_udp_type(transport: SaConfig, tunnel: SaConfig) -> int:
    """UdpEspEncapsulation of a transport bundle carried by ``tunnel`` (docs/send-path.md):
    0x4 over a UDP-encapsulated tunnel when the transport SA has ESP, 0x8 when the transport
    SA's ESP is UDP-encapsulated (the tunnel's is not), else 0."""
    if tunnel.udp_encap:
        return int(ndis.UdpEspEncapsulation.TRANSPORT_OVER_UDP_ESP_TUNNEL) if transport.has_esp \
            else 0
    if transport.udp_encap:
        return int(ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL)
    return 0


# -- results ----------------------------------------------------------------------------------
def concat_results(results: Sequence[SendResult]) -> SendResult:
    """One SendResult for several miniport sends made in order (NBL order kept)."""
    return SendResult.concat(results)


def _to_batch(nbls: Iterable[_Nbl]) -> PacketBatch:
    builder = PacketBatchBuilder()
    for nbl in nbls:
        builder.add_nbl([nbl.frame], **nbl.oob)
    return builder.build()


def _split_by_seq_hi(nbls: list[_Nbl]) -> list[list[_Nbl]]:
    """Consecutive runs of NBLs whose first SN has the same ESN high-order word."""
    parts: list[list[_Nbl]] = []
    for nbl in nbls:
        if parts and parts[-1][0].first_sn >> 32 == nbl.first_sn >> 32:
            parts[-1].append(nbl)
        else:
            parts.append([nbl])
    return parts or [[]]


# -- the stack --------------------------------------------------------------------------------
class HostStack(ReceiveMixin):
    """The host TCP/IP stack in front of a ``Miniport``.

    ``link``: ``"ethernet"`` puts a 14-byte Ethernet header before each IP packet,
    ``"raw"`` none. ``ttl`` is the TTL / Hop Limit of the outer header of tunnel-mode
    packets; ``ipv4_id`` the Identification the next outer IPv4 header gets (then +1 per
    header, modulo 2**16); ``tunnel_df`` sets the outer DF bit: ``"copy"`` it from an inner
    IPv4 packet (clear for inner IPv6), or always ``"set"`` / ``"clear"`` it (RFC 4301
    §8.1's per-SA choices; docs/protocol.md). Transport-mode packets keep their own TTL and ID.

    The stack is thread-safe: one lock orders sequence-number assignment and sends.

    ``fresh_ivs``: with ``Miniport(iv_source="packet")`` the NIC keeps the IV slot's bytes,
    so the stack fills a fresh random IV into every IV slot it frames (ESP, and AH-GMAC of
    protocol 'ah'); an all-zero IV repeated would reuse the AES-GCM / GMAC nonce (RFC 4106
    §3.1). ``ivs=`` given to ``build`` / ``send`` are always kept; ``fresh_ivs=False`` keeps
    the zero IV slot too (for tests that want fixed bytes).
    """

    def __init__(self, miniport, *, link: str = "ethernet",
                 src_mac: bytes = b"\x02\0\0\0\0\x01", dst_mac: bytes = b"\x02\0\0\0\0\x02",
                 ttl: int = 64, ipv4_id: int = 0, tunnel_df: str = "copy",
                 fresh_ivs: bool = True):
        if not all(callable(getattr(miniport, name, None))
                   for name in ("send", "add_sa", "delete_sa", "update_sa")):
            raise TypeError(f"miniport must be a Miniport, got {type(miniport).__name__}")
        if link not in ("ethernet", "raw"):
            raise ValueError(f"link must be 'ethernet' or 'raw', got {link!r}")
        for name, mac in (("src_mac", src_mac), ("dst_mac", dst_mac)):
            if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
                raise ValueError(f"{name} must be 6 bytes, got {mac!r}")
        if not isinstance(ttl, int) or not 1 <= ttl <= 255:
            raise ValueError(f"ttl must be an integer from 1 to 255, got {ttl!r}")
        if tunnel_df not in DF_POLICIES:
            raise ValueError(f"tunnel_df must be one of {', '.join(map(repr, DF_POLICIES))}, "
                             f"got {tunnel_df!r}")
        if not isinstance(fresh_ivs, bool):
            raise TypeError(f"fresh_ivs must be True or False, got {fresh_ivs!r}")
        self.fresh_ivs = fresh_ivs
        self.miniport = miniport
        self.link = link
        self.src_mac, self.dst_mac = bytes(src_mac), bytes(dst_mac)
        self.ttl = ttl
        self.tunnel_df = tunnel_df
        self.next_ipv4_id = ipv4_id
        self.sas: list[StackSa] = []
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"HostStack(link={self.link}, {len(self.sas)} SAs, ttl={self.ttl})"

    @property
    def next_ipv4_id(self) -> int:
        """Identification of the next outer IPv4 header the stack builds."""
        return self._next_ipv4_id

    @next_ipv4_id.setter
    def next_ipv4_id(self, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"ipv4_id must be an integer from 0 to 65535, got {value!r}")
        self._next_ipv4_id = value

    @property
    def l2_length(self) -> int:
        return ETHERNET_HEADER_LEN if self.link == "ethernet" else 0

    # -- SA management (docs/protocol.md) ----------------------------------------------------
    def add_sa(self, config: SaConfig, *, via: Optional[StackSa] = None) -> StackSa:
        """Register an outbound SA. Its bundle is offloaded now when the SA has one IP
        version (tunnel, or transport with endpoints), else the first time a packet of a
        version needs it. ``via``: a tunnel SA of this stack that carries this transport SA
        (transport over tunnel, docs/send-path.md): its packets get both layers and both
        handles; the tunnel SA's sequence numbers are shared with its own packets."""
        if not isinstance(config, SaConfig):
            raise TypeError(f"add_sa takes a SaConfig, got {type(config).__name__}")
        if config.mode == "transport" and len(_endpoint_versions(config)) > 1:
            raise ValueError(f"{_sa_label(config)}: src and dst must be of one IP version")
        if via is not None:
            self._check_via(config, via)
        sa = StackSa(config)
        sa.via = via
        with self._lock:
            versions = _bundle_versions(config)
            if len(versions) == 1:
                self._ensure_bundle(sa, next(iter(versions)))
            sa._owner = self
            self.sas.append(sa)
        return sa

    def _check_via(self, config: SaConfig, via) -> None:
        """A transport SA over a tunnel SA of this stack, never both UDP-encapsulated (NDIS:
        UDP-ESP transport over a UDP-ESP tunnel is unsupported)."""
        label = _sa_label(config)
        if not isinstance(via, StackSa):
            raise TypeError(f"via must be a StackSa from add_sa, got {type(via).__name__}")
        self._check_sa(via)
        if config.mode != "transport":
            raise ValueError(f"{label}: via is for transport SAs; a tunnel SA cannot be "
                             f"carried by another tunnel")
        if via.config.mode != "tunnel" or via.via is not None:
            raise ValueError(f"{label}: via must name a tunnel SA, and "
                             f"{_sa_label(via.config)} is a {via.config.mode} SA")
        if config.udp_encap and via.config.udp_encap:
            raise ValueError(f"{label}: UDP encapsulation on both the transport SA and its "
                             f"tunnel SA {_sa_label(via.config)} is not supported")

    def remove_sa(self, sa: StackSa) -> None:
        """One DELETE_SA request naming every bundle this SA added (docs/protocol.md)."""
        with self._lock:
            self._check_sa(sa)
            carried = [other for other in self.sas if other.via is sa]
            if carried:
                raise ValueError(f"{_sa_label(sa.config)} carries "
                                 f"{_sa_label(carried[0].config)} (via): remove that SA first")
            head = None
            for handle in reversed(list(sa.handles.values())):
                head = ndis.IpsecOffloadV2DeleteSa(next=head, offload_handle=handle)
            if head is not None:
                status = self.miniport.delete_sa(head)
                if status != NdisStatus.SUCCESS:
                    raise SaOffloadRefused(f"DELETE_SA for {_sa_label(sa.config)} failed: "
                                       f"{_status_name(status)}")
            sa.handles.clear()
            sa._nic_seq_hi.clear()
            sa.removed = True
            sa._owner = None
            self.sas.remove(sa)

    def _check_sa(self, sa: StackSa) -> None:
        if not isinstance(sa, StackSa):
            raise TypeError(f"expected a StackSa from add_sa, got {type(sa).__name__}")
        if sa._owner is not self:
            raise ValueError(f"{_sa_label(sa.config)} is not registered with this stack"
                             f"{' (it was removed)' if sa.removed else ''}")

    def _ensure_bundle(self, sa: StackSa, ipv6: bool) -> int:
        """ADD_SA for this IP version unless done (the IPv6 flag is per bundle,
        docs/protocol.md)."""
        handle = sa.handles.get(ipv6)
        if handle:
            return handle
        entry = sa.config.add_sa_entry(ipv6)
        if sa.via is not None:
            entry.udp_esp_encapsulation = int(_via_udp_type(sa.config, sa.via.config))
        status = self.miniport.add_sa(entry)
        if status != NdisStatus.SUCCESS or not entry.offload_handle:
            raise SaOffloadRefused(f"ADD_SA ({'IPv6' if ipv6 else 'IPv4'}) for "
                               f"{_sa_label(sa.config)} refused: {_status_name(status)}")
        sa.handles[ipv6] = entry.offload_handle
        sa._nic_seq_hi[ipv6] = entry.sec_assoc[0].sequence_number_high_order
        return entry.offload_handle

    def _sync_seq_hi(self, sa: StackSa, bundles: Iterable[bool], seq_hi: int) -> None:
        """UPDATE_SA for each ESN bundle whose record holds another high word (docs/protocol.md)."""
        config = sa.config
        layers = []  # UPDATE_SA names the SA of the bundle by Operation + SPI
        if config.has_esp:
            layers.append((ndis.IpsecOperation.ESP, config.spi))
        if config.has_ah:
            layers.append((ndis.IpsecOperation.AH, config.ah_layer[0]))
        for ipv6 in sorted(bundles):
            if sa._nic_seq_hi.get(ipv6) == seq_hi:
                continue
            for operation, spi in layers:
                status = self.miniport.update_sa(ndis.IpsecOffloadV2UpdateSa(
                    offload_handle=sa.handles[ipv6], operation=operation, spi=spi,
                    sequence_number_high_order=seq_hi))
                if status != NdisStatus.SUCCESS:
                    raise SaOffloadRefused(f"UPDATE_SA for {_sa_label(config)} refused: "
                                           f"{_status_name(status)}")
            sa._nic_seq_hi[ipv6] = seq_hi

    # -- sequence numbers (docs/protocol.md) -----------------------------------------------------
    def _check_room(self, sa: StackSa, count: int) -> int:
        """The first of ``count`` consecutive SNs; SequenceNumberExhausted if the SA cannot
        give them all."""
        first = sa.next_seq
        limit = _sequence_limit(sa.config)
        if first + count - 1 > limit:
            raise SequenceNumberExhausted(
                f"{_sa_label(sa.config)} is out of sequence numbers: {count} needed from "
                f"{first}, the last one is {limit}{'' if sa.config.esn else ' (no ESN)'}; "
                f"a new SA is required")
        return first

    def _frame_with_sns(self, sa: StackSa, count: int,
                        make: Callable[[int], list[_Nbl]]) -> list[_Nbl]:
        """``make(first_sn)`` frames NBLs using ``count`` SNs; the SNs (and outer IPv4 IDs)
        are taken only if every frame could be built."""
        first = self._check_room(sa, count)
        next_ipv4_id = self._next_ipv4_id
        try:
            nbls = make(first)
        except Exception:
            self._next_ipv4_id = next_ipv4_id
            raise
        sa.next_seq = first + count
        return nbls

    # -- framing ------------------------------------------------------------------------------
    def _link_header(self, version: int) -> bytes:
        if self.link == "raw":
            return b""
        return self.dst_mac + self.src_mac + struct.pack("!H", ETHERTYPES[version])

    def _take_ipv4_id(self) -> int:
        ident = self._next_ipv4_id
        self._next_ipv4_id = (ident + 1) & 0xFFFF
        return ident

    def _outer_header(self, inner: IpPacket, sa: StackSa, protocol: int) -> bytearray:
        """The tunnel-mode outer header, lengths still 0 (docs/send-path.md, RFC 6040 normal
        mode: DSCP and ECN copied)."""
        assert sa._tunnel_endpoints is not None  # a tunnel SA
        src, dst = sa._tunnel_endpoints
        if len(src) == 4:
            df = {"copy": inner.dont_fragment, "set": True, "clear": False}[self.tunnel_df]
            return bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, inner.tos, 0,
                                         self._take_ipv4_id(), 0x4000 if df else 0, self.ttl,
                                         protocol, 0, src, dst))
        first_word = (6 << 28) | (inner.tos << 20) | inner.flow_label
        return bytearray(struct.pack("!IHBB16s16s", first_word, 0, protocol, self.ttl,
                                     src, dst))

    def _esp_nbl(self, sa: StackSa, packet: IpPacket, bundle: bool, sn: int,
                 iv: bytes) -> _Nbl:
        """One non-LSO frame: transport or tunnel (docs/send-path.md), with or without
        UDP encapsulation (docs/send-path.md)."""
        config = sa.config
        outer_protocol = IPPROTO_UDP if config.udp_encap else IPPROTO_ESP
        if config.mode == "tunnel":
            header = self._outer_header(packet, sa, outer_protocol)
            payload = packet.data
            next_header = IPPROTO_IPIP if packet.version == 4 else IPPROTO_IPV6
        else:
            header = bytearray(packet.data[:packet.l4_offset])
            header[packet.next_header_at] = outer_protocol
            payload = packet.data[packet.l4_offset:]
            next_header = packet.protocol
        esp, pad = _esp_packet(sa.layout, sn, iv, payload, next_header)
        udp = _udp_header(config.udp_encap, UDP_HEADER_LEN + len(esp)) if config.udp_encap \
            else b""
        datagram = header + udp + esp
        _set_ip_length(datagram, len(datagram))
        esp_offset = len(header) + len(udp)
        return _Nbl(frame=self._link_header(datagram[0] >> 4) + bytes(datagram),
                    oob=self._ipsec_oob(sa, bundle, next_header, pad, esp_offset),
                    bundle=bundle, first_sn=sn, last_sn=sn)

    def _ipsec_oob(self, sa: StackSa, bundle: bool, next_header: int, pad: int,
                   esp_offset: int, lso_info: int = 0) -> dict:
        """Slot 1 handle, slot 12 header info (docs/protocol.md), slot 2 LSO info."""
        if esp_offset % 4 or esp_offset > MAX_ESP_OFFSET:
            raise ValueError(f"ESP would start {esp_offset} bytes after the IP header; "
                             f"EspHeaderOffset holds multiples of 4 up to {MAX_ESP_OFFSET}")
        return dict(offload_handle=sa.handles[bundle], next_header=next_header,
                    pad_length=pad, esp_off4=esp_offset // 4, lso_info=lso_info,
                    l2_len=self.l2_length)

    # -- AH and AH+ESP framing (RFC 4302; docs/send-path.md). Separate from the ESP framer so
    # that a faster ESP framer can fall back to these.
    def _ah_split(self, sa: StackSa, packet: IpPacket, protocol: int) -> tuple[bytearray, bytes,
                                                                              int]:
        """(header with ``protocol`` set, payload, AH Next Header): the outer header and the
        whole inner packet in tunnel mode, else the packet split where ESP would go."""
        if sa.config.mode == "tunnel":
            return (self._outer_header(packet, sa, protocol), packet.data,
                    IPPROTO_IPIP if packet.version == 4 else IPPROTO_IPV6)
        header = bytearray(packet.data[:packet.l4_offset])
        header[packet.next_header_at] = protocol
        return header, packet.data[packet.l4_offset:], packet.protocol

    def _ah_nbl(self, sa: StackSa, packet: IpPacket, bundle: bool, sn: int,
                iv: bytes) -> _Nbl:
        """One AH frame: IP | AH (ICV field zero, the NIC fills it) | payload."""
        header, payload, next_header = self._ah_split(sa, packet, IPPROTO_AH)
        ah = _ah_header(sa.config, sn, iv, next_header, header[0] >> 4 == 6)
        datagram = header + ah + payload
        _set_ip_length(datagram, len(datagram))
        oob = dict(offload_handle=sa.handles[bundle], ah_off4=_ah_offset4(len(header)),
                   l2_len=self.l2_length)
        return _Nbl(frame=self._link_header(datagram[0] >> 4) + bytes(datagram), oob=oob,
                    bundle=bundle, first_sn=sn, last_sn=sn)

    def _ah_esp_nbl(self, sa: StackSa, packet: IpPacket, bundle: bool, sn: int,
                    iv: bytes) -> _Nbl:
        """One AH+ESP frame: IP | AH | ESP | payload | ESP trailer | ESP ICV room
        (docs/protocol.md); both layers carry the same sequence number."""
        header, payload, next_header = self._ah_split(sa, packet, IPPROTO_AH)
        esp, pad = _esp_packet(sa.layout, sn, iv, payload, next_header)
        ah = _ah_header(sa.config, sn, bytes(sa.config.ah_iv_len), IPPROTO_ESP,
                        header[0] >> 4 == 6)
        datagram = header + ah + esp
        _set_ip_length(datagram, len(datagram))
        oob = self._ipsec_oob(sa, bundle, next_header, pad, len(header) + len(ah))
        oob["ah_off4"] = _ah_offset4(len(header))
        return _Nbl(frame=self._link_header(datagram[0] >> 4) + bytes(datagram), oob=oob,
                    bundle=bundle, first_sn=sn, last_sn=sn)

    def _plain_nbl(self, packet: bytes) -> _Nbl:
        """No IPsec: the packet as given, handle 0 (docs/send-path.md, step 2)."""
        version = _ip_version(packet)
        return _Nbl(frame=self._link_header(version) + bytes(packet),
                    oob=dict(l2_len=self.l2_length), bundle=None, first_sn=0, last_sn=0)

    # -- validation ---------------------------------------------------------------------------
    def _parse_for(self, sa: StackSa, packet: bytes) -> tuple[IpPacket, bool]:
        """The parsed packet and the IP version of the bundle that will carry it."""
        parsed = parse_ip_packet(packet)
        config = sa.config
        if config.mode == "transport" and parsed.fragment:
            raise ValueError("IPsec is never offloaded for IP fragments (docs/protocol.md); "
                             "a transport-mode packet must not be a fragment")
        if sa._tunnel_endpoints is not None:  # tunnel mode
            bundle = len(sa._tunnel_endpoints[0]) == 16
        else:
            bundle = parsed.version == 6
        if bundle not in sa.bundle_versions:
            raise ValueError(f"{_sa_label(config)} has IPv{4 if bundle else 6} endpoints; "
                             f"it cannot carry an IPv{parsed.version} packet in transport mode")
        return parsed, bundle

    def _check_ivs(self, sa: Optional[StackSa], ivs, count: int) -> list[bytes]:
        if ivs is None:
            return [bytes(sa.layout.iv_len)] * count if sa is not None else [b""] * count
        if sa is None:
            raise ValueError("ivs are only for IPsec packets (sa is None)")
        ivs = list(ivs)
        if len(ivs) != count:
            raise ValueError(f"ivs has {len(ivs)} entries for {count} packets")
        want = sa.layout.iv_len
        for i, iv in enumerate(ivs):
            if not isinstance(iv, (bytes, bytearray)) or len(iv) != want:
                raise ValueError(f"ivs[{i}] must be {want} bytes for "
                                 f"{sa.config.encryption}/{sa.config.integrity}")
        return [bytes(iv) for iv in ivs]

    # -- non-LSO packets --------------------------------------------------------------------------
    def _prepare(self, packets: Sequence[bytes], sa: Optional[StackSa], ivs) -> list[_Nbl]:
        """Validate every packet, offload missing bundles, frame, take the SNs: no SN is
        consumed when any packet is refused."""
        if isinstance(packets, (bytes, bytearray, memoryview)):
            raise TypeError("packets must be a sequence of packets, not one bytes object")
        packets = list(packets)
        if sa is None:
            self._check_ivs(None, ivs, len(packets))
            return [self._plain_nbl(p) for p in packets]
        self._check_sa(sa)
        if sa.via is not None:
            return self._prepare_via(packets, sa, ivs)
        parsed = [self._parse_for(sa, p) for p in packets]
        ivs = self._check_ivs(sa, ivs, len(parsed))
        for bundle in sorted({bundle for _, bundle in parsed}):
            self._ensure_bundle(sa, bundle)
        framer = {"esp": self._esp_nbl, "ah": self._ah_nbl,
                  "ah+esp": self._ah_esp_nbl}[sa.config.protocol]
        return self._frame_with_sns(sa, len(parsed), lambda first: [
            framer(sa, packet, bundle, first + i, iv)
            for i, ((packet, bundle), iv) in enumerate(zip(parsed, ivs))])

    def build(self, packets: Sequence[bytes], sa: Optional[StackSa], *,
              ivs: Optional[Sequence[bytes]] = None) -> PacketBatch:
        """One NBL per packet. ``sa`` None: no IPsec. ``ivs``: per-packet IV slot bytes
        (default zeros; the NIC writes the IV unless ``Miniport(iv_source="packet")``).
        ESN: only ``send`` keeps the miniport's high-order word in step."""
        with self._lock:
            packets, fast = self._compiled(packets, sa, ivs, send=False)
            if fast is not None:
                return self.fill_fresh_ivs(fast) if ivs is None else fast
            batch = _to_batch(self._prepare(packets, sa, ivs))
            return self.fill_fresh_ivs(batch) if ivs is None else batch

    def send(self, packets: Sequence[bytes], sa: Optional[StackSa], *,
             ivs: Optional[Sequence[bytes]] = None) -> SendResult:
        """``build`` then ``miniport.send``; with ESN, UPDATE_SA wherever the high word of
        the SNs changes. Raises before sending anything if the SA lacks SNs."""
        with self._lock:
            packets, fast = self._compiled(packets, sa, ivs, send=True)
            if fast is not None:
                return fast
            return self._transmit(sa, self._prepare(packets, sa, ivs), fill=ivs is None)

    # Frame ESP batches in compiled code (host/tx_frame.py); this Python framer is its twin
    # and frames whatever that one does not. False: always the Python framer.
    compiled_framing = True

    def _compiled(self, packets, sa, ivs, send: bool):
        """(packets as a list, scapy packets as bytes; the compiled framer's batch or send
        result, or None: this Python framer runs)."""
        if isinstance(packets, (bytes, bytearray, memoryview)):
            return packets, None
        packets = list(packets)
        if not set(map(type, packets)) <= {bytes}:  # map and set: no Python per packet
            packets = [p if isinstance(p, (bytes, bytearray, memoryview))
                       or not hasattr(type(p), "__bytes__") else bytes(p) for p in packets]
        if ivs is not None or not self.compiled_framing or (send and self._needs_fresh_ivs()):
            return packets, None
        from . import tx_frame
        return packets, tx_frame.stack_send(self, packets, sa, send=send)

    def send_batch(self, packets, sas, *, mss: Optional[int] = None):
        """Send plain IP packets (bytes-like or scapy), each under its SA (one StackSa or None
        for all, or one per packet); with ``mss``, TCP packets with more payload under
        transport SAs go as LSO super-packets. A packet that cannot go is reported in
        ``.faults`` with its index and counted, the rest are sent (host/tx_frame.py)."""
        from . import tx_frame
        return tx_frame.send_batch(self, packets, sas, mss=mss)

    def _needs_fresh_ivs(self) -> bool:
        return self.fresh_ivs and int(getattr(self.miniport, "iv_source", 0)) == 1  # PACKET

    def fill_fresh_ivs(self, batch: PacketBatch) -> PacketBatch:
        """With ``Miniport(iv_source="packet")`` (and ``fresh_ivs``): a fresh random IV in the
        IV slots of every non-LSO NBL of this stack's SAs (ESP; AH-GMAC, alone or in an
        AH+ESP bundle), in place; LSO segments always get NIC IVs (docs/spec-gaps.md G5). Returns ``batch``."""
        if not self._needs_fresh_ivs() or not len(batch.oob):
            return batch
        slots: dict = {}
        for sa in self.sas:
            # (is the slot AH's, its length): ESP's IV, and AH-GMAC's (alone or in a bundle)
            ivs = []
            if sa.config.protocol == "ah":
                ivs.append((True, sa.layout.iv_len))
            else:
                ivs.append((False, sa.layout.iv_len))
                if sa.config.protocol == "ah+esp":
                    ivs.append((True, sa.config.ah_iv_len))
            ivs = [(ah, n) for ah, n in ivs if n]
            if ivs:
                for handle in sa.handles.values():
                    slots[handle] = ivs
        oob = batch.oob
        arena = batch.arena
        for k, (handle, lso, first, l2, esp4, ah4) in enumerate(zip(
                oob["offload_handle"].tolist(), oob["lso_info"].tolist(),
                oob["first_nb"].tolist(), oob["l2_len"].tolist(), oob["esp_off4"].tolist(),
                oob["ah_off4"].tolist())):
            wanted = slots.get(handle)
            if wanted is None or lso or int(oob["nb_count"][k]) < 1 \
                    or int(oob["tunnel_handle"][k]):  # nested: framed with fresh IVs
                continue
            for nb in range(first, first + int(oob["nb_count"][k])):
                end = int(batch.nb_off[nb]) + int(batch.nb_len[nb])
                for ah, iv_len in wanted:
                    start = int(batch.nb_off[nb]) + l2 + (4 * ah4 + 12 if ah else 4 * esp4 + 8)
                    if (ah4 if ah else esp4) and start + iv_len <= end:
                        arena[start:start + iv_len] = np.frombuffer(os.urandom(iv_len),
                                                                    np.uint8)
        return batch

    def _transmit(self, sa: Optional[StackSa], nbls: list[_Nbl], *,
                  fill: bool = False) -> SendResult:
        if sa is not None and sa.via is not None:
            return self._transmit_via(sa, nbls)
        esn_sa = sa if sa is not None and sa.config.esn else None
        results = []
        for part in (_split_by_seq_hi(nbls) if esn_sa else [nbls]):
            bundles = {nbl.bundle for nbl in part if nbl.bundle is not None}
            if esn_sa and part:
                self._sync_seq_hi(esn_sa, bundles, part[0].first_sn >> 32)
            batch = _to_batch(part)
            results.append(send_within_cap(self.miniport,
                                           self.fill_fresh_ivs(batch) if fill else batch))
            if esn_sa and part:
                # an LSO super-packet may end in the next high word: the NIC carried into
                # it for its segments only (docs/send-path.md); the record must follow
                self._sync_seq_hi(esn_sa, bundles, part[-1].last_sn >> 32)
        return concat_results(results)

    # -- transport over tunnel (docs/send-path.md) -------------------------------------------
    _FRAMERS = {"esp": "_esp_nbl", "ah": "_ah_nbl", "ah+esp": "_ah_esp_nbl"}

    def _prepare_via(self, packets: list, sa: StackSa, ivs) -> list:
        """Nested frames: the transport SA's frame (slot 12 from its IP header, its ICV room
        reserved), then the tunnel SA's frame around that datagram; OffloadHandle = the
        transport bundle, TunnelHandle = the tunnel bundle. Each layer draws its own SN: the
        tunnel SA's counter is the one its own packets use."""
        tunnel = sa.via
        assert tunnel is not None
        self._check_sa(tunnel)
        parsed = [self._parse_for(sa, p) for p in packets]
        fresh = self._needs_fresh_ivs() and ivs is None
        ivs = self._check_ivs(sa, ivs, len(parsed))
        for packet, bundle in parsed:
            if bundle and sa.config.udp_encap:
                raise ValueError(f"{_sa_label(sa.config)}: a UDP-encapsulated transport SA over "
                                 f"a tunnel carries IPv4 only (docs/send-path.md: the NIC would "
                                 f"have to checksum the inner UDP header between the two seals)")
        tunnel_bundle = len(tunnel._tunnel_endpoints[0]) == 16  # type: ignore[index]
        for bundle in sorted({bundle for _, bundle in parsed}):
            self._ensure_bundle(sa, bundle)
        self._ensure_bundle(tunnel, tunnel_bundle)
        n = len(parsed)
        first_t = self._check_room(sa, n)
        first_u = self._check_room(tunnel, n)
        inner_framer = getattr(self, self._FRAMERS[sa.config.protocol])
        outer_framer = getattr(self, self._FRAMERS[tunnel.config.protocol])
        next_ipv4_id = self._next_ipv4_id
        nbls = []
        try:
            for i, ((packet, bundle), iv) in enumerate(zip(parsed, ivs)):
                if fresh:
                    iv = os.urandom(len(iv))
                inner = inner_framer(sa, packet, bundle, first_t + i, iv)
                datagram = inner.frame[self.l2_length:]
                u_iv = bytes(tunnel.layout.iv_len)
                if self._needs_fresh_ivs():
                    u_iv = os.urandom(len(u_iv))
                outer = outer_framer(tunnel, parse_ip_packet(datagram), tunnel_bundle,
                                     first_u + i, u_iv)
                oob = dict(inner.oob)
                oob["offload_handle"] = sa.handles[bundle]
                oob["tunnel_handle"] = tunnel.handles[tunnel_bundle]
                oob["l2_len"] = self.l2_length
                nbls.append(_ViaNbl(frame=outer.frame, oob=oob, bundle=bundle,
                                    first_sn=first_t + i, last_sn=first_t + i,
                                    tunnel_sn=first_u + i))
        except Exception:
            self._next_ipv4_id = next_ipv4_id
            raise
        sa.next_seq = first_t + n
        tunnel.next_seq = first_u + n
        return nbls

    def _transmit_via(self, sa: StackSa, nbls: list) -> SendResult:
        """Send nested NBLs in runs whose two ESN high words stay the same, with UPDATE_SA
        for either SA before a run that crosses into a new high word."""
        tunnel = sa.via
        assert tunnel is not None
        tunnel_bundle = len(tunnel._tunnel_endpoints[0]) == 16  # type: ignore[index]
        parts: list[list] = []
        for nbl in nbls:
            key = (nbl.first_sn >> 32, nbl.tunnel_sn >> 32)
            if parts and (parts[-1][0].first_sn >> 32, parts[-1][0].tunnel_sn >> 32) == key:
                parts[-1].append(nbl)
            else:
                parts.append([nbl])
        results = []
        for part in parts or [[]]:
            if part:
                if sa.config.esn:
                    self._sync_seq_hi(sa, {nbl.bundle for nbl in part}, part[0].first_sn >> 32)
                if tunnel.config.esn:
                    self._sync_seq_hi(tunnel, {tunnel_bundle}, part[0].tunnel_sn >> 32)
            results.append(send_within_cap(self.miniport, _to_batch(part)))
        return concat_results(results)

    # -- LSO super-packets (docs/send-path.md) ----------------------------------------------------
    def build_lso(self, packet: bytes, sa: Optional[StackSa], mss: int, *,
                  lso_version: int = 2, pad_length: int = 0) -> PacketBatch:
        """One LSO super-packet NBL: transport-mode ESP (UDP-encapsulated too), AH or AH+ESP
        over TCP. Within the miniport's LSO limits (docs/send-path.md, "Limits"): a packet
        with more TCP payload than MaxOffLoadSize becomes several super-packets, one with
        fewer segments than MinSegmentCount plain packets (cut by the stack)."""
        with self._lock:
            return self.fill_fresh_ivs(_to_batch(self._prepare_lso(packet, sa, mss, lso_version,
                                                                   pad_length)))

    def send_lso(self, packet: bytes, sa: Optional[StackSa], mss: int, *,
                 lso_version: int = 2, pad_length: int = 0) -> SendResult:
        """``build_lso`` then ``miniport.send``. With ESN the super-packet goes whole even
        when its segments cross into the next high word (the NIC carries, docs/send-path.md)."""
        with self._lock:
            return self._transmit(sa, self._prepare_lso(packet, sa, mss, lso_version,
                                                        pad_length), fill=True)

    def lso_limits(self, lso_version: int, ipv6: bool) -> tuple[int, int]:
        """(MaxOffLoadSize, MinSegmentCount) the miniport offers for this LSO kind (NDIS
        defaults 65535, 2 when it does not say)."""
        if lso_version == 1:
            v1 = getattr(self.miniport, "lso_v1", None)
            return ((v1.max_offload_size, v1.min_segment_count) if v1 is not None
                    else (65535, 2))
        v2 = getattr(self.miniport, "lso_v2", None)
        if v2 is None:
            return 65535, 2
        return ((v2.ipv6_max_offload_size, v2.ipv6_min_segment_count) if ipv6
                else (v2.ipv4_max_offload_size, v2.ipv4_min_segment_count))

    def _prepare_lso(self, packet: bytes, sa: Optional[StackSa], mss: int, lso_version: int,
                     pad_length: int) -> list[_Nbl]:
        """The NBLs of one TCP packet sent with LSO: one super-packet, or within the LSO
        limits several, or plain packets (docs/send-path.md, "Limits")."""
        _check_lso_args(mss, lso_version, pad_length, sa)
        if sa is not None:
            self._check_sa(sa)
            if sa.config.mode == "tunnel" or sa.via is not None:
                raise ValueError("LSO is never combined with tunnel-mode IPsec (docs/send-path.md)"
                                 + ("; this SA goes over a tunnel" if sa.via else ""))
            if sa.config.protocol == "ah" and pad_length:
                raise ValueError("pad_length is ESP padding; an AH SA has none")
            parsed, bundle = self._parse_for(sa, packet)
        else:
            parsed, bundle = parse_ip_packet(packet), None
            if parsed.fragment:
                raise ValueError("an LSO packet must not be an IP fragment (docs/send-path.md)")
        tcp_len = _check_lso_tcp(parsed)
        tcp_at = _lso_tcp_at(parsed)
        if lso_version == 1 and parsed.version == 6:
            raise ValueError("LSOv1 is IPv4 only (NDIS_TCP_LARGE_SEND_OFFLOAD_V1); use "
                             "lso_version=2 for IPv6")
        max_size, min_segments = self.lso_limits(lso_version, parsed.version == 6)
        payload_len = len(parsed.data) - tcp_at - tcp_len
        if payload_len <= max_size and max(1, -(-payload_len // mss)) >= min_segments:
            return [self._one_lso_nbl(parsed, sa, bundle, tcp_len, mss, lso_version,
                                      pad_length)]
        # over MaxOffLoadSize: pieces of whole segments; a piece of fewer segments than
        # MinSegmentCount (or a segment larger than MaxOffLoadSize) goes as plain packets
        chunk = max_size // mss * mss
        step = chunk if chunk and payload_len > max_size else max(payload_len, 1)
        nbls: list[_Nbl] = []
        plain: list[bytes] = []
        for start in range(0, max(payload_len, 1), step):
            length = min(step, payload_len - start)
            n = max(1, -(-length // mss))
            if chunk and n >= min_segments:
                piece = _tcp_piece(parsed, tcp_len, start, length, payload_len, -(-start // mss))
                nbls += self._flush_plain(plain, sa)
                nbls.append(self._one_lso_nbl(parse_ip_packet(piece), sa, bundle, tcp_len, mss,
                                              lso_version, pad_length))
            else:
                plain += [_tcp_piece(parsed, tcp_len, s, min(mss, payload_len - s),
                                     payload_len, s // mss)
                          for s in range(start, start + max(length, 1), mss)]
        return nbls + self._flush_plain(plain, sa)

    def _flush_plain(self, plain: list[bytes], sa: Optional[StackSa]) -> list[_Nbl]:
        """The stack-cut segments so far as non-LSO NBLs (fresh SNs), emptying ``plain``."""
        if not plain:
            return []
        packets = list(plain)
        plain.clear()
        return self._prepare(packets, sa, None)

    def _one_lso_nbl(self, parsed: IpPacket, sa: Optional[StackSa], bundle: Optional[bool],
                     tcp_len: int, mss: int, lso_version: int, pad_length: int) -> _Nbl:
        if sa is None:
            return self._plain_lso_nbl(parsed, tcp_len, mss, lso_version)
        payload_len = len(parsed.data) - _lso_tcp_at(parsed) - tcp_len
        segments = max(1, -(-payload_len // mss))  # one SN per segment (docs/send-path.md G6)
        assert bundle is not None  # _parse_for gave it with the SA
        self._ensure_bundle(sa, bundle)
        return self._frame_with_sns(sa, segments, lambda first: [self._lso_nbl(
            sa, parsed, bundle, tcp_len, mss, lso_version, pad_length, first,
            first + segments - 1)])[0]

    @staticmethod
    def _lso_datagram(parsed: IpPacket, tcp_len: int, lso_version: int, protocol: int,
                      udp: bytes, esp_header: bytes, junk: bytes) -> bytearray:
        """IP header (protocol rewritten) | [UDP] | [ESP header, IV slot] | [IPv6
        destination options after a routing header] | TCP header (checksum seeded) | TCP
        payload | junk, lengths as LSOv1/v2 want them (docs/send-path.md)."""
        tcp_at = _lso_tcp_at(parsed)
        header = bytearray(parsed.data[:parsed.l4_offset])
        header[parsed.next_header_at] = protocol
        tcp = bytearray(parsed.data[tcp_at:tcp_at + tcp_len])
        struct.pack_into("!H", tcp, 16, _tcp_pseudo_header_seed(parsed))
        datagram = (header + udp + esp_header + parsed.data[parsed.l4_offset:tcp_at] + tcp
                    + parsed.data[tcp_at + tcp_len:] + junk)
        # LSOv2: IPv4 Total Length / IPv6 Payload Length 0; LSOv1: the IPv4 total length of
        # the large packet (IPv6 still 0). The UDP length follows the same rule.
        whole = lso_version == 1 and parsed.version == 4
        if udp:
            udp_length = len(datagram) - parsed.l4_offset if whole else 0
            struct.pack_into("!H", datagram, parsed.l4_offset + 4, udp_length & 0xFFFF)
        _set_ip_length(datagram, len(datagram) if whole else 0)
        return datagram

    def _lso_nbl(self, sa: StackSa, parsed: IpPacket, bundle: bool, tcp_len: int, mss: int,
                 lso_version: int, pad_length: int, first_sn: int, last_sn: int) -> _Nbl:
        config = sa.config
        udp = _udp_header(config.udp_encap, 0) if config.udp_encap else b""
        esp_header = b""
        if config.has_esp:
            esp_header = (struct.pack("!II", sa.layout.spi, first_sn & 0xFFFFFFFF)
                          + bytes(sa.layout.iv_len))
        ah = b""
        if config.has_ah:  # AH before ESP; its Next Header ESP in a bundle, else what follows
            ah = _ah_header(config, first_sn, bytes(config.ah_iv_len),
                            IPPROTO_ESP if config.has_esp else parsed.protocol,
                            parsed.version == 6)
        junk = bytes(range(1, pad_length + 1))  # discardable padding (docs/send-path.md G7)
        protocol = IPPROTO_AH if ah else (IPPROTO_UDP if udp else IPPROTO_ESP)
        datagram = self._lso_datagram(parsed, tcp_len, lso_version, protocol, udp,
                                      ah + esp_header, junk)
        esp_offset = parsed.l4_offset + len(udp) + len(ah)
        # TcpHeaderOffset: past the IPsec headers and any destination options after them
        tcp_offset = (self.l2_length + esp_offset + len(esp_header)
                      + _lso_tcp_at(parsed) - parsed.l4_offset)
        lso_info = _lso_info(lso_version, mss, tcp_offset, parsed.version)
        if config.has_esp:  # the ESP trailer names TCP, or the destination options
            oob = self._ipsec_oob(sa, bundle, parsed.protocol, pad_length, esp_offset,
                                  lso_info)
        else:
            oob = dict(offload_handle=sa.handles[bundle], lso_info=lso_info,
                       l2_len=self.l2_length)
        if ah:
            oob["ah_off4"] = _ah_offset4(parsed.l4_offset)
        return _Nbl(frame=self._link_header(parsed.version) + bytes(datagram), oob=oob,
                    bundle=bundle, first_sn=first_sn, last_sn=last_sn)

    def _plain_lso_nbl(self, parsed: IpPacket, tcp_len: int, mss: int,
                       lso_version: int) -> _Nbl:
        datagram = self._lso_datagram(parsed, tcp_len, lso_version, parsed.protocol, b"", b"",
                                      b"")
        tcp_offset = self.l2_length + _lso_tcp_at(parsed)
        return _Nbl(frame=self._link_header(parsed.version) + bytes(datagram),
                    oob=dict(lso_info=_lso_info(lso_version, mss, tcp_offset, parsed.version),
                             l2_len=self.l2_length),
                    bundle=None, first_sn=0, last_sn=0)


# -- helpers without state ----------------------------------------------------------------------
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


def output_bound(batch: PacketBatch) -> np.ndarray:
    """Per NBL an upper bound of the bytes the miniport's send produces for it: an LSO NBL
    n segments of its headers (TCP header up to 60 bytes) plus ESP padding, trailer and
    ICV (at most 16 + 2 + 32 + 8 bytes), a non-LSO one its frames plus an ICV. The twin of
    the compiled ``output_bounds``, which split_by_output uses where it is built."""
    oob = batch.oob
    n_nbl = len(oob)
    sizes = np.zeros(n_nbl, np.int64)
    if not n_nbl:
        return sizes
    if len(batch.nb_len):
        sizes = np.bincount(np.asarray(batch.nb_nbl, np.int64), weights=np.asarray(
            batch.nb_len, np.float64), minlength=n_nbl)[:n_nbl].astype(np.int64)
    lso = oob["lso_info"].astype(np.uint64)
    mss = (lso & np.uint64(0xFFFFF)).astype(np.int64)
    tcp_off = ((lso >> np.uint64(20)) & np.uint64(0x3FF)).astype(np.int64)
    is_lso = (lso != 0) & (mss > 0)
    payload = np.maximum(sizes - tcp_off, 0)
    n = np.where(is_lso, np.maximum(1, -(-payload // np.maximum(mss, 1))), 1)
    segment_extra = tcp_off + 60 + 16 + 2 + 32 + 8
    return np.where(is_lso, n * segment_extra + payload, sizes + 64 * np.maximum(
        oob["nb_count"].astype(np.int64), 1))


def split_by_output(batch: PacketBatch, cap: int) -> list[np.ndarray]:
    """NBL index runs of ``batch`` whose output bound stays within ``cap`` bytes (a single
    NBL over it stands alone): the miniport never has to refuse one for its output cap."""
    from .tx_frame import kernels
    fast = kernels()
    if fast is not None:
        bound, total = fast.output_bounds(batch)
    else:
        bound = output_bound(batch)
        total = int(bound.sum())
    return split_bounds(bound, cap, total)


def split_bounds(bound: np.ndarray, cap: int, total: Optional[int] = None) -> list[np.ndarray]:
    """Index runs of ``bound`` (int64) whose sums stay within ``cap`` (a single item over it
    stands alone), cut greedily; ``total``: bound's sum, if known."""
    n = len(bound)
    if not n:
        return []
    if (int(bound.sum()) if total is None else total) <= cap:
        return [np.arange(n)]
    cum = np.cumsum(bound)
    runs, start = [], 0
    while start < n:  # one step per run, not per NBL
        before = int(cum[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(cum, before + cap, side="right")))
        runs.append(np.arange(start, end))
        start = end
    return runs


def sub_batch(batch: PacketBatch, nbls: np.ndarray) -> PacketBatch:
    """The NBLs ``nbls`` (a consecutive run) of ``batch`` as a batch of their own."""
    oob = batch.oob[nbls].copy()
    first = int(oob["first_nb"][0])
    last = int(oob["first_nb"][-1]) + int(oob["nb_count"][-1])
    oob["first_nb"] -= first
    return PacketBatch(batch.arena, batch.nb_off[first:last], batch.nb_len[first:last],
                       batch.nb_nbl[first:last] - int(nbls[0]), n_nbl=len(nbls), oob=oob)


def send_within_cap(miniport, batch: PacketBatch, send=None) -> SendResult:
    """``miniport.send(batch)``, in several sends when the batch's output could pass the
    miniport's ``max_send_output`` (docs/send-path.md, "Limits"); one SendResult."""
    send = send or miniport.send
    cap = getattr(miniport, "max_send_output", None)
    if cap is None or not len(batch.oob):
        return send(batch)
    runs = split_by_output(batch, cap)
    if len(runs) < 2:
        return send(batch)
    return concat_results([send(sub_batch(batch, run)) for run in runs])


def _tcp_piece(parsed: IpPacket, tcp_len: int, start: int, length: int, total: int,
               index: int) -> bytes:
    """Bytes ``start`` .. ``start + length`` of the TCP payload of ``parsed`` as a packet of
    their own, as a segmenter cuts them (docs/send-path.md): sequence number + start, FIN
    and PSH only on the last piece, CWR only on the first, IPv4 ID + ``index`` (the segments
    before it), lengths and the IPv4 checksum set, the TCP checksum computed (RFC 9293) over
    the pseudo-header with the final destination (RFC 8200 §8.1). Every piece keeps the IP
    header and all extension headers, destination options before TCP included."""
    data = parsed.data
    l4 = _lso_tcp_at(parsed)
    header = bytearray(data[:l4])
    tcp = bytearray(data[l4:l4 + tcp_len])
    seq = struct.unpack_from("!I", tcp, 4)[0]
    struct.pack_into("!I", tcp, 4, (seq + start) & 0xFFFFFFFF)
    if start + length < total:
        tcp[13] &= ~(_TCP_FIN | _TCP_PSH) & 0xFF
    if start:
        tcp[13] &= ~_TCP_CWR & 0xFF
    payload = data[l4 + tcp_len + start:l4 + tcp_len + start + length]
    tcp[16:18] = b"\0\0"
    segment = bytes(tcp) + payload
    if parsed.version == 4:
        pseudo = data[12:20]
    else:
        pseudo = data[8:24] + _ipv6_final_destination(data, parsed.l4_offset)
    seed = ones_complement_sum(pseudo + struct.pack("!H", IPPROTO_TCP)) + len(segment)
    csum = ones_complement_sum(struct.pack("!I", seed) + segment)
    struct.pack_into("!H", tcp, 16, ~csum & 0xFFFF)
    datagram = header + tcp + payload
    if parsed.version == 4:
        ident = struct.unpack_from("!H", datagram, 4)[0]
        struct.pack_into("!H", datagram, 4, (ident + index) & 0xFFFF)
    _set_ip_length(datagram, len(datagram))
    return bytes(datagram)


def _status_name(status: int) -> str:
    try:
        return NdisStatus(int(status)).name
    except ValueError:
        return f"{int(status):#010x}"


def _ip_version(packet: bytes) -> int:
    if not isinstance(packet, (bytes, bytearray, memoryview)):
        raise TypeError(f"a packet must be bytes, got {type(packet).__name__}")
    version = packet[0] >> 4 if len(packet) else 0
    if version not in (4, 6):
        raise ValueError(f"not an IPv4 or IPv6 packet (version {version})")
    return version


def _endpoint_versions(config: SaConfig) -> set[int]:
    return {ipaddress.ip_address(a).version for a in (config.src, config.dst) if a}


def _bundle_versions(config: SaConfig) -> set[bool]:
    """IP versions (True = IPv6) this SA may need a bundle for: the outer one for tunnel
    SAs (docs/send-path.md), its endpoints' for transport SAs that name them, else both."""
    if config.mode == "tunnel":
        return {bool(config.tunnel_ipv6)}
    versions = _endpoint_versions(config)
    if versions:
        return {v == 6 for v in versions}
    return {False, True}


def _check_lso_args(mss: int, lso_version: int, pad_length: int,
                    sa: Optional[StackSa]) -> None:
    if not isinstance(mss, int) or not 1 <= mss <= MAX_LSO_MSS:
        raise ValueError(f"mss must be an integer from 1 to {MAX_LSO_MSS}, got {mss!r}")
    if lso_version not in (1, 2):
        raise ValueError(f"lso_version must be 1 or 2, got {lso_version!r}")
    if not isinstance(pad_length, int) or not 0 <= pad_length <= 255:
        raise ValueError(f"pad_length must be from 0 to 255, got {pad_length!r}")
    if sa is None and pad_length:
        raise ValueError("pad_length is ESP padding; it needs an SA")


def _check_lso_tcp(parsed: IpPacket) -> int:
    """The TCP header length; ValueError unless the packet is TCP fit for LSO (docs/send-path.md:
    URG, RST, SYN clear, urgent pointer 0), right where AH / ESP go or after IPv6 destination
    options there (_lso_tcp_at)."""
    tcp = parsed.data[_lso_tcp_at(parsed):]
    if len(tcp) < 20:
        raise ValueError(f"TCP header truncated ({len(tcp)} bytes)")
    tcp_len = (tcp[12] >> 4) * 4
    if tcp_len < 20 or tcp_len > len(tcp):
        raise ValueError(f"TCP data offset {tcp_len} does not fit the {len(tcp)}-byte segment")
    if tcp[13] & (TCP_SYN | TCP_RST | TCP_URG) or struct.unpack_from("!H", tcp, 18)[0]:
        raise ValueError("LSO packets never carry SYN, RST or URG (docs/send-path.md)")
    return tcp_len


def _lso_tcp_at(parsed: IpPacket) -> int:
    """Where the TCP header of an LSO packet starts: at ``l4_offset`` (where AH / ESP go), or
    past the IPv6 destination-options headers that follow a routing header there (RFC 8200
    §4.1; they stay after AH / ESP, and every segment carries them). ValueError if what
    follows is not TCP or a header runs past the packet."""
    data, offset, protocol = parsed.data, parsed.l4_offset, parsed.protocol
    while parsed.version == 6 and protocol == IPV6_DESTINATION_OPTIONS:
        if offset + 8 > len(data):
            raise ValueError(f"IPv6 destination options at byte {offset} are truncated")
        protocol, offset = data[offset], offset + (data[offset + 1] + 1) * 8
    if protocol != IPPROTO_TCP:
        raise ValueError(f"LSO needs a TCP packet; this one carries protocol {protocol}")
    if offset > len(data):
        raise ValueError(f"IPv6 destination options run past the packet end ({len(data)})")
    return offset


def _ipv6_final_destination(data: bytes, ext_end: int) -> bytes:
    """The destination a TCP pseudo-header names (RFC 8200 §8.1): with a routing header in
    the headers before ``ext_end`` that has segments left, its final address (the last of
    types 0 / 2, Segment List[0] of a type-4 SRH, RFC 8754 §4.3.1); else the header's."""
    dst, nh, offset = data[24:40], data[6], 40
    while nh in IPV6_HEADERS_BEFORE_ESP and offset + 8 <= ext_end:
        length = (data[offset + 1] + 1) * 8
        if offset + length > ext_end:
            break
        if nh == IPV6_ROUTING and data[offset + 3] and length >= 24:
            if data[offset + 2] in (0, 2):
                last = offset + 8 + ((length - 8) // 16 - 1) * 16
                dst = data[last:last + 16]
            elif data[offset + 2] == 4:
                dst = data[offset + 8:offset + 24]
        nh, offset = data[offset], offset + length
    return dst


def _lso_info(lso_version: int, mss: int, tcp_offset: int, ip_version: int) -> int:
    """Slot 2 value (docs/protocol.md)."""
    if tcp_offset > MAX_LSO_TCP_OFFSET:
        raise ValueError(f"the TCP header starts {tcp_offset} bytes into the frame; "
                         f"TcpHeaderOffset holds at most {MAX_LSO_TCP_OFFSET}")
    if lso_version == 1:
        return ndis.LsoV1Transmit(mss=mss, tcp_header_offset=tcp_offset).value
    return ndis.LsoV2Transmit(
        mss=mss, tcp_header_offset=tcp_offset,
        ip_version=(ndis.NDIS_TCP_LARGE_SEND_OFFLOAD_IPV6 if ip_version == 6
                    else ndis.NDIS_TCP_LARGE_SEND_OFFLOAD_IPV4)).value


__all__ = ["EspLayout", "HostStack", "IpPacket", "SequenceNumberExhausted", "StackSa",
           "concat_results", "parse_ip_packet"]
