"""NDIS constants and structures for IPsec Offload Version 2 (docs/protocol.md).

Every value and offset follows the Microsoft NDIS pages these structures are named after
(docs/protocol.md). Structures are dataclasses with
``to_bytes(ptr_size)`` / ``from_bytes(buf, ptr_size)`` for the x64 (``ptr_size=8``) and x86
(``ptr_size=4``) layouts: little-endian, addresses as raw network-order bytes, padding zero.
NET_BUFFER_LIST info slots are pointer-sized integers; the ``*NblInfo`` classes are overlays
of one slot value with ``value`` / ``from_value``.

Key material (``key_data``) never appears in a repr, str or exception message.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Optional, Union

# --- docs/protocol.md: OIDs and status indications -----------------------------------------------
OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA = 0xFC030202
OID_TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA = 0xFC030203
OID_TCP_TASK_IPSEC_OFFLOAD_V2_UPDATE_SA = 0xFC030204
OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX = 0xFC030205
OID_TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01020B
OID_TCP_OFFLOAD_PARAMETERS = 0xFC01020C
OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020D
NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG = 0x40020006
NDIS_STATUS_TASK_OFFLOAD_HARDWARE_CAPABILITIES = 0x40020007


class NdisStatus(enum.IntEnum):
    """NDIS_STATUS values (docs/protocol.md), stored as unsigned 32-bit."""

    SUCCESS = 0x00000000
    PENDING = 0x00000103
    NOT_ACCEPTED = 0x00010003
    FAILURE = 0xC0000001
    INVALID_PARAMETER = 0xC000000D
    RESOURCES = 0xC000009A
    NOT_SUPPORTED = 0xC00000BB
    REQUEST_ABORTED = 0xC001000C
    INVALID_PACKET = 0xC001000F
    INVALID_LENGTH = 0xC0010014
    INVALID_DATA = 0xC0010015
    BUFFER_TOO_SHORT = 0xC0010016
    INVALID_OID = 0xC0010017


# --- docs/protocol.md: algorithm bits (mask bits and ALGORITHM_INFO.Identifier) ------------------
class AuthenticationAlgorithm(enum.IntFlag):
    MD5 = 0x01
    SHA_1 = 0x02
    SHA_256 = 0x04
    AES_GCM_128 = 0x08  # AES-GMAC
    AES_GCM_192 = 0x10
    AES_GCM_256 = 0x20


class EncryptionAlgorithm(enum.IntFlag):
    NONE = 0x001
    DES_CBC = 0x002
    THREE_DES_CBC = 0x004
    AES_GCM_128 = 0x008
    AES_GCM_192 = 0x010
    AES_GCM_256 = 0x020
    AES_CBC_128 = 0x040
    AES_CBC_192 = 0x080
    AES_CBC_256 = 0x100


# --- docs/protocol.md: flags and the operation enum ----------------------------------------------
class IpsecOperation(enum.IntEnum):
    AH = 1
    ESP = 2
    MAX = 3  # reserved


IPSEC_OFFLOAD_V2_INBOUND = 0x1  # ADD_SA(_EX).Flags
IPSEC_OFFLOAD_V2_IPV6 = 0x10  # ADD_SA(_EX).Flags
IPSEC_OFFLOAD_V2_ESN_SA = 0x1  # SECURITY_ASSOCIATION.Flags
IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS = 2  # size of SecAssoc[]


class UdpEspEncapsulation(enum.IntFlag):
    NONE = 0x0
    TRANSPORT = 0x1
    TUNNEL = 0x2
    TRANSPORT_OVER_UDP_ESP_TUNNEL = 0x4
    UDP_ESP_TRANSPORT_OVER_TUNNEL = 0x8


# NDIS_OFFLOAD.Flags
NDIS_OFFLOAD_FLAGS_GROUP_CHECKSUM_CAPABILITIES = 0x1
IPSEC_OFFLOAD_V2_AND_TCP_CHECKSUM_COEXISTENCE = 0x2
IPSEC_OFFLOAD_V2_AND_UDP_CHECKSUM_COEXISTENCE = 0x4


# --- docs/protocol.md: encapsulation, offload parameters, object headers -------------------------
NDIS_ENCAPSULATION_NOT_SUPPORTED = 0x0
NDIS_ENCAPSULATION_NULL = 0x1
NDIS_ENCAPSULATION_IEEE_802_3 = 0x2  # mandatory
NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q = 0x4
NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q_IN_OOB = 0x8
NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED = 0x10


class OffloadIpsecV2(enum.IntEnum):
    """NDIS_OFFLOAD_PARAMETERS.IPsecV2 / .IPsecV2IPv4."""

    NO_CHANGE = 0
    DISABLED = 1
    AH_ENABLED = 2
    ESP_ENABLED = 3
    AH_AND_ESP_ENABLED = 4


class OffloadLso(enum.IntEnum):
    """NDIS_OFFLOAD_PARAMETERS.LsoV1 / .LsoV2IPv4 / .LsoV2IPv6."""

    NO_CHANGE = 0
    DISABLED = 1
    ENABLED = 2


NDIS_OBJECT_TYPE_DEFAULT = 0x80
NDIS_OBJECT_TYPE_OFFLOAD = 0xA7
NDIS_IPSEC_OFFLOAD_V2_ADD_SA_REVISION_1 = 1
NDIS_IPSEC_OFFLOAD_V2_ADD_SA_EX_REVISION_1 = 1
NDIS_IPSEC_OFFLOAD_V2_DELETE_SA_REVISION_1 = 1
NDIS_IPSEC_OFFLOAD_V2_UPDATE_SA_REVISION_1 = 1

# docs/protocol.md: NDIS_SIZEOF_*_REVISION_1 (size through the last field), keyed by pointer size.
# A received Header.Size is acceptable when it is >= this value.
SIZEOF_ADD_SA_REV1 = {8: 0xA9, 4: 0x9D}
SIZEOF_ADD_SA_EX_REV1 = {8: 0xAA, 4: 0xA2}
SIZEOF_DELETE_SA_REV1 = {8: 0x18, 4: 0x0C}
SIZEOF_UPDATE_SA_REV1 = {8: 0x1C, 4: 0x14}
NDIS_SIZEOF_IPSEC_OFFLOAD_V2_ADD_SA_REVISION_1 = SIZEOF_ADD_SA_REV1
NDIS_SIZEOF_IPSEC_OFFLOAD_V2_ADD_SA_EX_REVISION_1 = SIZEOF_ADD_SA_EX_REV1
NDIS_SIZEOF_IPSEC_OFFLOAD_V2_DELETE_SA_REVISION_1 = SIZEOF_DELETE_SA_REV1
NDIS_SIZEOF_IPSEC_OFFLOAD_V2_UPDATE_SA_REVISION_1 = SIZEOF_UPDATE_SA_REV1


# --- docs/protocol.md: NBL info slots, receive CryptoStatus, LSO -----------------------
class NblInfo(enum.IntEnum):
    """NDIS_NET_BUFFER_LIST_INFO slot indices."""

    TCP_IP_CHECKSUM = 0
    IPSEC_OFFLOAD_V2 = 1  # same slot as IPsecOffloadV1NetBufferListInfo
    TCP_LARGE_SEND = 2
    IEEE_8021Q = 4
    IPSEC_OFFLOAD_V2_TUNNEL = 11
    IPSEC_OFFLOAD_V2_HEADER = 12


class CryptoStatus(enum.IntEnum):
    """Receive.CryptoStatus, Windows numbering (not the Linux xfrm bit flags)."""

    SUCCESS = 0
    GENERIC_ERROR = 1
    TRANSPORT_AH_AUTH_FAILED = 2
    TRANSPORT_ESP_AUTH_FAILED = 3
    TUNNEL_AH_AUTH_FAILED = 4
    TUNNEL_ESP_AUTH_FAILED = 5
    INVALID_PACKET_SYNTAX = 6
    INVALID_PROTOCOL = 7


NDIS_TCP_LARGE_SEND_OFFLOAD_V1_TYPE = 0
NDIS_TCP_LARGE_SEND_OFFLOAD_V2_TYPE = 1
NDIS_TCP_LARGE_SEND_OFFLOAD_IPV4 = 0
NDIS_TCP_LARGE_SEND_OFFLOAD_IPV6 = 1
NDIS_LARGE_SEND_OFFLOAD_MAX_HEADER_LENGTH = 128


# --- helpers -----------------------------------------------------------------------------------
def _ptr_fmt(ptr_size: int) -> str:
    if ptr_size == 8:
        return "Q"
    if ptr_size == 4:
        return "I"
    raise ValueError(f"ptr_size must be 4 or 8, not {ptr_size!r}")


def _uint(owner: str, name: str, value: int, bits: int) -> int:
    """Check that ``value`` fits an unsigned field of ``bits`` bits; return it as int."""
    v = int(value)
    if not 0 <= v < (1 << bits):
        raise ValueError(f"{owner}.{name}={v} does not fit in {bits} bits")
    return v


def _need(owner: str, buf: bytes, size: int) -> None:
    if len(buf) < size:
        raise ValueError(f"{owner}: buffer of {len(buf)} bytes is shorter than {size}")


def _enum_or_int(enum_cls, value: int):
    """Decode to the enum member when the value names one; keep other values as plain ints."""
    try:
        return enum_cls(value)
    except ValueError:
        return value


def _check_addresses(owner: str, flags: int, src: bytes, dest: bytes) -> int:
    """Return the address length (4 or 16) after checking it agrees with the IPv6 flag."""
    length = 16 if flags & IPSEC_OFFLOAD_V2_IPV6 else 4
    for name, addr in (("src_address", src), ("dest_address", dest)):
        if len(addr) != length:
            raise ValueError(f"{owner}.{name} must be {length} bytes for flags=0x{flags:x}, "
                             f"got {len(addr)}")
    return length


def _pack_endpoints(owner: str, flags: int, src: bytes, dest: bytes) -> bytes:
    # docs/protocol.md: IPv4Endpoints {SrcAddr, DestAddr} /
    # IPv6Endpoints {SrcAddr[16], DestAddr[16]}
    # share one 32-byte union; an IPv4 pair leaves the remaining 24 bytes zero.
    _check_addresses(owner, flags, src, dest)
    return (bytes(src) + bytes(dest)).ljust(32, b"\0")


def _unpack_endpoints(flags: int, raw: bytes) -> tuple[bytes, bytes]:
    if flags & IPSEC_OFFLOAD_V2_IPV6:
        return bytes(raw[0:16]), bytes(raw[16:32])
    return bytes(raw[0:4]), bytes(raw[4:8])


# --- docs/protocol.md: object header -------------------------------------------------------------
@dataclass
class NdisObjectHeader:
    """NDIS_OBJECT_HEADER {Type u8, Revision u8, Size u16}; 4 bytes on x86 and x64.

    ``size`` is the Header.Size field, so the struct size is ``SIZE`` / ``sizeof()``.
    """

    type: int = NDIS_OBJECT_TYPE_DEFAULT
    revision: int = 1
    size: int = 0

    SIZE: ClassVar[int] = 4
    _FMT: ClassVar[str] = "<BBH"

    @classmethod
    def sizeof(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return cls.SIZE

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        _ptr_fmt(ptr_size)
        n = "NdisObjectHeader"
        return struct.pack(self._FMT, _uint(n, "type", self.type, 8),
                           _uint(n, "revision", self.revision, 8), _uint(n, "size", self.size, 16))

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "NdisObjectHeader":
        _ptr_fmt(ptr_size)
        _need(cls.__name__, buf, cls.SIZE)
        return cls(*struct.unpack_from(cls._FMT, buf, 0))


# --- LSO capabilities (NDIS_TCP_LARGE_SEND_OFFLOAD_V1 / _V2, ntddndis.h) --------------------------
@dataclass
class NdisTcpLargeSendOffloadV1:
    """NDIS_TCP_LARGE_SEND_OFFLOAD_V1: IPv4 only ("NDIS_TCP_LARGE_SEND_OFFLOAD_V1 structure").
    ``max_offload_size``: the most TCP payload bytes of one large packet; ``min_segment_count``:
    the fewest segments a large packet must be cut into."""

    encapsulation: int = NDIS_ENCAPSULATION_IEEE_802_3
    max_offload_size: int = 65535
    min_segment_count: int = 2
    tcp_options: bool = True
    ip_options: bool = True


@dataclass
class NdisTcpLargeSendOffloadV2:
    """NDIS_TCP_LARGE_SEND_OFFLOAD_V2: its IPv4 and IPv6 members
    ("NDIS_TCP_LARGE_SEND_OFFLOAD_V2 structure")."""

    ipv4_encapsulation: int = NDIS_ENCAPSULATION_IEEE_802_3
    ipv4_max_offload_size: int = 65535
    ipv4_min_segment_count: int = 2
    ipv6_encapsulation: int = NDIS_ENCAPSULATION_IEEE_802_3
    ipv6_max_offload_size: int = 65535
    ipv6_min_segment_count: int = 2
    ipv6_extension_headers_supported: bool = True
    tcp_options_supported: bool = True


# --- docs/protocol.md: capabilities --------------------------------------------------------------
_CAPS_BOOLS = ("ipv6_supported", "ipv4_options", "ipv6_non_ipsec_extension_headers", "ah", "esp",
               "ah_esp_combined", "transport", "tunnel", "transport_tunnel_combined",
               "lso_supported", "extended_sequence_numbers")


@dataclass
class NdisIpsecOffloadV2:
    """NDIS_IPSEC_OFFLOAD_V2 (docs/protocol.md): 32 bytes, no pointers, same on x86 and x64."""

    encapsulation: int = 0
    ipv6_supported: bool = False
    ipv4_options: bool = False
    ipv6_non_ipsec_extension_headers: bool = False
    ah: bool = False
    esp: bool = False
    ah_esp_combined: bool = False
    transport: bool = False
    tunnel: bool = False
    transport_tunnel_combined: bool = False
    lso_supported: bool = False
    extended_sequence_numbers: bool = False
    udp_esp: int = 0
    authentication_algorithms: int = 0
    encryption_algorithms: int = 0
    sa_offload_capacity: int = 0

    # docs/protocol.md: Encapsulation @0, 11 BOOLEANs @4..14, pad @15, UdpEsp @16,
    # AuthenticationAlgorithms
    # @20, EncryptionAlgorithms @24, SaOffloadCapacity @28
    _FMT: ClassVar[str] = "<I11BxIIII"

    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return struct.calcsize(cls._FMT)

    sizeof = size

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        _ptr_fmt(ptr_size)
        n = type(self).__name__
        return struct.pack(
            self._FMT, _uint(n, "encapsulation", self.encapsulation, 32),
            *(1 if getattr(self, name) else 0 for name in _CAPS_BOOLS),
            _uint(n, "udp_esp", self.udp_esp, 32),
            _uint(n, "authentication_algorithms", self.authentication_algorithms, 32),
            _uint(n, "encryption_algorithms", self.encryption_algorithms, 32),
            _uint(n, "sa_offload_capacity", self.sa_offload_capacity, 32))

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "NdisIpsecOffloadV2":
        _need(cls.__name__, buf, cls.size(ptr_size))
        v = struct.unpack_from(cls._FMT, buf, 0)
        bools = {name: bool(b) for name, b in zip(_CAPS_BOOLS, v[1:12])}
        return cls(encapsulation=v[0], **bools, udp_esp=v[12], authentication_algorithms=v[13],
                   encryption_algorithms=v[14], sa_offload_capacity=v[15])


# --- docs/protocol.md: algorithm info and security association ---------------------------------
@dataclass
class IpsecOffloadV2AlgorithmInfo:
    """IPSEC_OFFLOAD_V2_ALGORITHM_INFO (docs/protocol.md): 16 bytes."""

    identifier: int = 0
    key_length: int = 0
    key_offset_bytes: int = 0
    additional_info: int = 0

    # docs/protocol.md: Identifier @0, KeyLength @4, KeyOffsetBytes @8, AdditionalInfo @12
    _FMT: ClassVar[str] = "<IIII"
    _NAMES: ClassVar[tuple] = ("identifier", "key_length", "key_offset_bytes", "additional_info")

    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return 16

    sizeof = size

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        _ptr_fmt(ptr_size)
        n = type(self).__name__
        return struct.pack(self._FMT, *(_uint(n, f, getattr(self, f), 32) for f in self._NAMES))

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2AlgorithmInfo":
        _need(cls.__name__, buf, cls.size(ptr_size))
        return cls(*struct.unpack_from(cls._FMT, buf, 0))


@dataclass
class IpsecOffloadV2SecurityAssociation:
    """IPSEC_OFFLOAD_V2_SECURITY_ASSOCIATION (docs/protocol.md): 48 bytes."""

    flags: int = 0
    operation: int = IpsecOperation.ESP
    spi: int = 0
    authentication_algorithm: IpsecOffloadV2AlgorithmInfo = field(
        default_factory=IpsecOffloadV2AlgorithmInfo)
    encryption_algorithm: IpsecOffloadV2AlgorithmInfo = field(
        default_factory=IpsecOffloadV2AlgorithmInfo)
    sequence_number_high_order: int = 0

    # docs/protocol.md: Flags @0, Operation @4, Spi @8, AuthenticationAlgorithm @12,
    # EncryptionAlgorithm @28, SequenceNumberHighOrder @44
    _HEAD: ClassVar[str] = "<III"

    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return 48

    sizeof = size

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        n = type(self).__name__
        return (struct.pack(self._HEAD, _uint(n, "flags", self.flags, 32),
                            _uint(n, "operation", self.operation, 32),
                            _uint(n, "spi", self.spi, 32))
                + self.authentication_algorithm.to_bytes(ptr_size)
                + self.encryption_algorithm.to_bytes(ptr_size)
                + struct.pack("<I", _uint(n, "sequence_number_high_order",
                                          self.sequence_number_high_order, 32)))

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2SecurityAssociation":
        _need(cls.__name__, buf, cls.size(ptr_size))
        buf = memoryview(buf)
        flags, operation, spi = struct.unpack_from(cls._HEAD, buf, 0)
        return cls(flags=flags, operation=_enum_or_int(IpsecOperation, operation), spi=spi,
                   authentication_algorithm=IpsecOffloadV2AlgorithmInfo.from_bytes(buf[12:28]),
                   encryption_algorithm=IpsecOffloadV2AlgorithmInfo.from_bytes(buf[28:44]),
                   sequence_number_high_order=struct.unpack_from("<I", buf, 44)[0])


def _pack_sec_assoc(owner: str, sec_assoc: list, ptr_size: int) -> bytes:
    """SecAssoc[IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS]: always two entries, unused ones zero."""
    if len(sec_assoc) > IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS:
        raise ValueError(f"{owner}.sec_assoc has {len(sec_assoc)} entries, at most "
                         f"{IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS} fit")
    raw = b"".join(sa.to_bytes(ptr_size) for sa in sec_assoc)
    return raw.ljust(IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS * 48, b"\0")


def _unpack_sec_assoc(raw, num_ext_hdrs: int) -> list:
    """Decode SecAssoc[2]; the second entry is kept when NumExtHdrs says 2 or it is not zero,
    so nothing the caller wrote is lost (validation of NumExtHdrs is the OID handler's job)."""
    raw = memoryview(raw)
    entries = [IpsecOffloadV2SecurityAssociation.from_bytes(raw[0:48])]
    if num_ext_hdrs >= 2 or any(raw[48:96]):
        entries.append(IpsecOffloadV2SecurityAssociation.from_bytes(raw[48:96]))
    return entries


def _default_sec_assoc() -> list:
    return [IpsecOffloadV2SecurityAssociation()]


# --- docs/protocol.md: ADD_SA --------------------------------------------------------------------
@dataclass
class IpsecOffloadV2AddSa:
    """IPSEC_OFFLOAD_V2_ADD_SA (docs/protocol.md), one entry of a ``Next``-linked list.

    ``to_bytes`` writes this entry only (``Next`` = ``next_pointer``) with ``KeyData`` inline,
    zero-padded to at least ``size()``. ``from_bytes`` leaves ``next`` as None.
    """

    header: NdisObjectHeader = field(default_factory=lambda: NdisObjectHeader(
        NDIS_OBJECT_TYPE_DEFAULT, NDIS_IPSEC_OFFLOAD_V2_ADD_SA_REVISION_1, 0xB0))
    next: Optional["IpsecOffloadV2AddSa"] = None
    num_ext_hdrs: int = 1
    flags: int = 0
    src_address: bytes = b"\0\0\0\0"
    dest_address: bytes = b"\0\0\0\0"
    offload_handle: int = 0
    udp_esp_encapsulation: int = 0
    sec_assoc: list = field(default_factory=_default_sec_assoc)
    key_data: bytes = field(default=b"", repr=False)

    # docs/protocol.md offsets by pointer size: Next, NumExtHdrs, Flags, endpoints, OffloadHandle,
    # UdpEspEncapsulation, SecAssoc, KeyLength, KeyData; sizeof
    OFFSETS: ClassVar[dict] = {
        8: dict(next=0x08, num_ext_hdrs=0x10, flags=0x14, endpoints=0x18, offload_handle=0x38,
                udp_esp_encapsulation=0x40, sec_assoc=0x44, key_length=0xA4, key_data=0xA8,
                sizeof=0xB0),
        4: dict(next=0x04, num_ext_hdrs=0x08, flags=0x0C, endpoints=0x10, offload_handle=0x30,
                udp_esp_encapsulation=0x34, sec_assoc=0x38, key_length=0x98, key_data=0x9C,
                sizeof=0xA0),
    }

    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return cls.OFFSETS[ptr_size]["sizeof"]

    sizeof = size

    def entries(self) -> Iterator["IpsecOffloadV2AddSa"]:
        entry: Optional[IpsecOffloadV2AddSa] = self
        while entry is not None:
            yield entry
            entry = entry.next

    def to_bytes(self, ptr_size: int = 8, next_pointer: int = 0) -> bytes:
        p = _ptr_fmt(ptr_size)
        n = type(self).__name__
        bits = ptr_size * 8
        body = (self.header.to_bytes(ptr_size)
                + bytes(ptr_size - 4)  # Next is pointer-aligned
                + struct.pack("<" + p + "II", _uint(n, "next_pointer", next_pointer, bits),
                              _uint(n, "num_ext_hdrs", self.num_ext_hdrs, 32),
                              _uint(n, "flags", self.flags, 32))
                + _pack_endpoints(n, self.flags, self.src_address, self.dest_address)
                + struct.pack("<" + p + "I", _uint(n, "offload_handle", self.offload_handle, bits),
                              _uint(n, "udp_esp_encapsulation", self.udp_esp_encapsulation, 32))
                + _pack_sec_assoc(n, self.sec_assoc, ptr_size)
                + struct.pack("<I", len(self.key_data))
                + bytes(self.key_data))
        return body.ljust(self.size(ptr_size), b"\0")

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2AddSa":
        p = _ptr_fmt(ptr_size)
        off = cls.OFFSETS[ptr_size]
        _need(cls.__name__, buf, off["key_data"])
        buf = memoryview(buf)
        num_ext_hdrs, flags = struct.unpack_from("<II", buf, off["num_ext_hdrs"])
        handle, udp = struct.unpack_from("<" + p + "I", buf, off["offload_handle"])
        (key_length,) = struct.unpack_from("<I", buf, off["key_length"])
        start = off["key_data"]
        if start + key_length > len(buf):
            raise ValueError(f"{cls.__name__}: KeyLength {key_length} at offset {start} runs past "
                             f"the {len(buf)}-byte buffer")
        src, dest = _unpack_endpoints(flags, buf[off["endpoints"]:off["endpoints"] + 32])
        return cls(header=NdisObjectHeader.from_bytes(buf), next=None, num_ext_hdrs=num_ext_hdrs,
                   flags=flags, src_address=src, dest_address=dest, offload_handle=handle,
                   udp_esp_encapsulation=udp,
                   sec_assoc=_unpack_sec_assoc(buf[off["sec_assoc"]:off["sec_assoc"] + 96],
                                               num_ext_hdrs),
                   key_data=bytes(buf[start:start + key_length]))


# --- docs/protocol.md: ADD_SA_EX -----------------------------------------------------------------
@dataclass
class IpsecOffloadV2AddSaEx:
    """IPSEC_OFFLOAD_V2_ADD_SA_EX (docs/protocol.md): one bundle; keys at ``KeyOffset`` from the
    start of the structure. ``to_bytes`` writes the structure then the keys
    (``KeyOffset = size()``)."""

    header: NdisObjectHeader = field(default_factory=lambda: NdisObjectHeader(
        NDIS_OBJECT_TYPE_DEFAULT, NDIS_IPSEC_OFFLOAD_V2_ADD_SA_EX_REVISION_1, 0xB0))
    num_ext_hdrs: int = 1
    flags: int = 0
    src_address: bytes = b"\0\0\0\0"
    dest_address: bytes = b"\0\0\0\0"
    offload_handle: int = 0
    udp_esp_encapsulation: int = 0
    sec_assoc: list = field(default_factory=_default_sec_assoc)
    source_switch_port_id: int = 0
    vlan_id: int = 0
    key_data: bytes = field(default=b"", repr=False)

    # docs/protocol.md offsets by pointer size
    OFFSETS: ClassVar[dict] = {
        8: dict(num_ext_hdrs=0x04, flags=0x08, endpoints=0x0C, offload_handle=0x30,
                udp_esp_encapsulation=0x38, sec_assoc=0x3C, key_length=0x9C, key_offset=0xA0,
                source_switch_port_id=0xA4, vlan_id=0xA8, sizeof=0xB0),
        4: dict(num_ext_hdrs=0x04, flags=0x08, endpoints=0x0C, offload_handle=0x2C,
                udp_esp_encapsulation=0x30, sec_assoc=0x34, key_length=0x94, key_offset=0x98,
                source_switch_port_id=0x9C, vlan_id=0xA0, sizeof=0xA4),
    }

    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return cls.OFFSETS[ptr_size]["sizeof"]

    sizeof = size

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        p = _ptr_fmt(ptr_size)
        n = type(self).__name__
        off = self.OFFSETS[ptr_size]
        body = (self.header.to_bytes(ptr_size)
                + struct.pack("<II", _uint(n, "num_ext_hdrs", self.num_ext_hdrs, 32),
                              _uint(n, "flags", self.flags, 32))
                + _pack_endpoints(n, self.flags, self.src_address, self.dest_address))
        body = body.ljust(off["offload_handle"], b"\0")  # OffloadHandle is pointer-aligned
        body += (struct.pack("<" + p + "I",
                             _uint(n, "offload_handle", self.offload_handle, ptr_size * 8),
                             _uint(n, "udp_esp_encapsulation", self.udp_esp_encapsulation, 32))
                 + _pack_sec_assoc(n, self.sec_assoc, ptr_size)
                 + struct.pack("<IIIH", len(self.key_data), off["sizeof"],
                               _uint(n, "source_switch_port_id", self.source_switch_port_id, 32),
                               _uint(n, "vlan_id", self.vlan_id, 16)))
        return body.ljust(off["sizeof"], b"\0") + bytes(self.key_data)

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2AddSaEx":
        p = _ptr_fmt(ptr_size)
        off = cls.OFFSETS[ptr_size]
        _need(cls.__name__, buf, off["vlan_id"] + 2)
        buf = memoryview(buf)
        num_ext_hdrs, flags = struct.unpack_from("<II", buf, off["num_ext_hdrs"])
        handle, udp = struct.unpack_from("<" + p + "I", buf, off["offload_handle"])
        key_length, key_offset, port, vlan = struct.unpack_from("<IIIH", buf, off["key_length"])
        if key_offset + key_length > len(buf):
            raise ValueError(f"{cls.__name__}: key range [{key_offset}, {key_offset + key_length})"
                             f" runs past the {len(buf)}-byte buffer")
        src, dest = _unpack_endpoints(flags, buf[off["endpoints"]:off["endpoints"] + 32])
        return cls(header=NdisObjectHeader.from_bytes(buf), num_ext_hdrs=num_ext_hdrs,
                   flags=flags, src_address=src, dest_address=dest, offload_handle=handle,
                   udp_esp_encapsulation=udp,
                   sec_assoc=_unpack_sec_assoc(buf[off["sec_assoc"]:off["sec_assoc"] + 96],
                                               num_ext_hdrs),
                   source_switch_port_id=port, vlan_id=vlan,
                   key_data=bytes(buf[key_offset:key_offset + key_length]))


# --- docs/protocol.md: DELETE_SA and UPDATE_SA ---------------------------------------------------
@dataclass
class IpsecOffloadV2DeleteSa:
    """IPSEC_OFFLOAD_V2_DELETE_SA (docs/protocol.md), one entry of a ``Next``-linked list."""

    header: NdisObjectHeader = field(default_factory=lambda: NdisObjectHeader(
        NDIS_OBJECT_TYPE_DEFAULT, NDIS_IPSEC_OFFLOAD_V2_DELETE_SA_REVISION_1, 0x18))
    next: Optional["IpsecOffloadV2DeleteSa"] = None
    offload_handle: int = 0

    # docs/protocol.md: Header @0, Next @ptr_size, OffloadHandle @2*ptr_size; size 3*ptr_size
    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return 3 * ptr_size

    sizeof = size

    def entries(self) -> Iterator["IpsecOffloadV2DeleteSa"]:
        entry: Optional[IpsecOffloadV2DeleteSa] = self
        while entry is not None:
            yield entry
            entry = entry.next

    def to_bytes(self, ptr_size: int = 8, next_pointer: int = 0) -> bytes:
        p = _ptr_fmt(ptr_size)
        n = type(self).__name__
        bits = ptr_size * 8
        return (self.header.to_bytes(ptr_size) + bytes(ptr_size - 4)
                + struct.pack("<" + p + p, _uint(n, "next_pointer", next_pointer, bits),
                              _uint(n, "offload_handle", self.offload_handle, bits)))

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2DeleteSa":
        p = _ptr_fmt(ptr_size)
        _need(cls.__name__, buf, cls.size(ptr_size))
        (handle,) = struct.unpack_from("<" + p, buf, 2 * ptr_size)
        return cls(header=NdisObjectHeader.from_bytes(buf), next=None, offload_handle=handle)


@dataclass
class IpsecOffloadV2UpdateSa:
    """IPSEC_OFFLOAD_V2_UPDATE_SA (docs/protocol.md): a single structure, no ``Next`` (gap G9)."""

    header: NdisObjectHeader = field(default_factory=lambda: NdisObjectHeader(
        NDIS_OBJECT_TYPE_DEFAULT, NDIS_IPSEC_OFFLOAD_V2_UPDATE_SA_REVISION_1, 0x20))
    offload_handle: int = 0
    operation: int = IpsecOperation.ESP
    spi: int = 0
    sequence_number_high_order: int = 0

    # docs/protocol.md: Header @0, OffloadHandle @ptr_size, Operation, Spi, SequenceNumberHighOrder
    # follow; sizeof 0x20 (x64, tail-padded to 8) / 0x14 (x86)
    @classmethod
    def size(cls, ptr_size: int = 8) -> int:
        _ptr_fmt(ptr_size)
        return {8: 0x20, 4: 0x14}[ptr_size]

    sizeof = size

    def to_bytes(self, ptr_size: int = 8) -> bytes:
        p = _ptr_fmt(ptr_size)
        n = type(self).__name__
        body = (self.header.to_bytes(ptr_size) + bytes(ptr_size - 4)
                + struct.pack("<" + p + "III",
                              _uint(n, "offload_handle", self.offload_handle, ptr_size * 8),
                              _uint(n, "operation", self.operation, 32),
                              _uint(n, "spi", self.spi, 32),
                              _uint(n, "sequence_number_high_order",
                                    self.sequence_number_high_order, 32)))
        return body.ljust(self.size(ptr_size), b"\0")

    @classmethod
    def from_bytes(cls, buf, ptr_size: int = 8) -> "IpsecOffloadV2UpdateSa":
        p = _ptr_fmt(ptr_size)
        _need(cls.__name__, buf, SIZEOF_UPDATE_SA_REV1[ptr_size])
        handle, operation, spi, high = struct.unpack_from("<" + p + "III", buf, ptr_size)
        return cls(header=NdisObjectHeader.from_bytes(buf), offload_handle=handle,
                   operation=_enum_or_int(IpsecOperation, operation), spi=spi,
                   sequence_number_high_order=high)


# --- docs/protocol.md: offload parameters (only the fields the emulator uses) --------------------
@dataclass
class NdisOffloadParameters:
    """NDIS_OFFLOAD_PARAMETERS subset: IPsecV2, IPsecV2IPv4, LsoV1, LsoV2IPv4, LsoV2IPv6."""

    ipsec_v2: int = OffloadIpsecV2.NO_CHANGE
    ipsec_v2_ipv4: int = OffloadIpsecV2.NO_CHANGE
    lso_v1: int = OffloadLso.NO_CHANGE
    lso_v2_ipv4: int = OffloadLso.NO_CHANGE
    lso_v2_ipv6: int = OffloadLso.NO_CHANGE


# --- docs/protocol.md: NET_BUFFER_LIST info slot overlays ----------------------------------------
class _SlotOverlay:
    """Bit-field overlay of one pointer-sized NBL info slot (MSVC order, LSB first,
    docs/protocol.md).

    Subclasses list ``_BITS`` as (field, lowest bit, width, decoder) and the constant bits
    ``_CONST`` (e.g. the LSO Type bit). ``from_value`` decodes any integer; ``value`` raises
    ValueError naming the field that does not fit.
    """

    _BITS: ClassVar[tuple] = ()
    _CONST: ClassVar[int] = 0

    @property
    def value(self) -> int:
        v = self._CONST
        for name, lsb, width, _ in self._BITS:
            v |= _uint(type(self).__name__, name, getattr(self, name), width) << lsb
        return v

    @classmethod
    def from_value(cls, v: int):
        v = int(v)
        return cls(**{name: decode((v >> lsb) & ((1 << width) - 1))
                      for name, lsb, width, decode in cls._BITS})


def _crypto_status(v: int):
    return _enum_or_int(CryptoStatus, v)


@dataclass
class IpsecOffloadV2NblInfo(_SlotOverlay):
    """Slot 1, Transmit view: the whole slot is the outbound OffloadHandle (docs/protocol.md)."""

    offload_handle: int = 0
    _BITS: ClassVar[tuple] = (("offload_handle", 0, 64, int),)


@dataclass
class IpsecOffloadV2ReceiveNblInfo(_SlotOverlay):
    """Slot 1, Receive view (docs/protocol.md)."""

    sa_delete_req: bool = False
    crypto_done: bool = False
    next_crypto_done: bool = False
    crypto_status: int = CryptoStatus.SUCCESS
    _BITS: ClassVar[tuple] = (("sa_delete_req", 0, 1, bool), ("crypto_done", 1, 1, bool),
                              ("next_crypto_done", 2, 1, bool),
                              ("crypto_status", 16, 16, _crypto_status))


@dataclass
class IpsecOffloadV2HeaderNblInfo(_SlotOverlay):
    """Slot 12, Transmit view (docs/protocol.md); header offsets in 4-byte units, 0 = absent."""

    next_header: int = 0
    pad_length: int = 0
    ah_header_offset: int = 0
    esp_header_offset: int = 0
    _BITS: ClassVar[tuple] = (("next_header", 0, 8, int), ("pad_length", 8, 8, int),
                              ("ah_header_offset", 16, 8, int), ("esp_header_offset", 24, 8, int))


@dataclass
class IpsecOffloadV2HeaderReceiveNblInfo(_SlotOverlay):
    """Slot 12, Receive view (docs/protocol.md)."""

    next_header: int = 0
    pad_length: int = 0
    header_info_set: bool = False
    _BITS: ClassVar[tuple] = (("next_header", 0, 8, int), ("pad_length", 8, 8, int),
                              ("header_info_set", 16, 1, bool))


@dataclass
class IpsecOffloadV2TunnelNblInfo(_SlotOverlay):
    """Slot 11, Transmit.TunnelHandle (docs/protocol.md)."""

    tunnel_handle: int = 0
    _BITS: ClassVar[tuple] = (("tunnel_handle", 0, 64, int),)


_LSO_TYPE_BIT = 30  # docs/protocol.md


def lso_type_of(value: int) -> int:
    """The LSO ``Type`` bit of a slot-2 value: NDIS_TCP_LARGE_SEND_OFFLOAD_V1/V2_TYPE."""
    return (int(value) >> _LSO_TYPE_BIT) & 1


@dataclass
class LsoV1Transmit(_SlotOverlay):
    """Slot 2, LsoV1Transmit (docs/protocol.md): MSS 0-19, TcpHeaderOffset 20-29, Type 30 = 0."""

    mss: int = 0
    tcp_header_offset: int = 0
    _BITS: ClassVar[tuple] = (("mss", 0, 20, int), ("tcp_header_offset", 20, 10, int))
    _CONST: ClassVar[int] = NDIS_TCP_LARGE_SEND_OFFLOAD_V1_TYPE << _LSO_TYPE_BIT


@dataclass
class LsoV2Transmit(_SlotOverlay):
    """Slot 2, LsoV2Transmit (docs/protocol.md): MSS 0-19, TcpHeaderOffset 20-29, Type 30 = 1,
    IPVersion 31 (NDIS_TCP_LARGE_SEND_OFFLOAD_IPV4/IPV6)."""

    mss: int = 0
    tcp_header_offset: int = 0
    ip_version: int = NDIS_TCP_LARGE_SEND_OFFLOAD_IPV4
    _BITS: ClassVar[tuple] = (("mss", 0, 20, int), ("tcp_header_offset", 20, 10, int),
                              ("ip_version", 31, 1, int))
    _CONST: ClassVar[int] = NDIS_TCP_LARGE_SEND_OFFLOAD_V2_TYPE << _LSO_TYPE_BIT


@dataclass
class LsoV1TransmitComplete(_SlotOverlay):
    """Slot 2, LsoV1TransmitComplete (docs/protocol.md): TcpPayload 0-29, Type 30 = 0."""

    tcp_payload: int = 0
    _BITS: ClassVar[tuple] = (("tcp_payload", 0, 30, int),)
    _CONST: ClassVar[int] = NDIS_TCP_LARGE_SEND_OFFLOAD_V1_TYPE << _LSO_TYPE_BIT


@dataclass
class LsoV2TransmitComplete(_SlotOverlay):
    """Slot 2, LsoV2TransmitComplete (docs/protocol.md): only Type 30 = 1."""

    _CONST: ClassVar[int] = NDIS_TCP_LARGE_SEND_OFFLOAD_V2_TYPE << _LSO_TYPE_BIT


@dataclass
class TcpIpChecksumNblInfo(_SlotOverlay):
    """Slot 0, Transmit view (docs/protocol.md)."""

    is_ipv4: bool = False
    is_ipv6: bool = False
    tcp_checksum: bool = False
    udp_checksum: bool = False
    ip_header_checksum: bool = False
    tcp_header_offset: int = 0
    _BITS: ClassVar[tuple] = (("is_ipv4", 0, 1, bool), ("is_ipv6", 1, 1, bool),
                              ("tcp_checksum", 2, 1, bool), ("udp_checksum", 3, 1, bool),
                              ("ip_header_checksum", 4, 1, bool),
                              ("tcp_header_offset", 16, 10, int))


@dataclass
class TcpIpChecksumReceiveNblInfo(_SlotOverlay):
    """Slot 0, Receive view (docs/protocol.md)."""

    tcp_checksum_failed: bool = False
    udp_checksum_failed: bool = False
    ip_checksum_failed: bool = False
    tcp_checksum_succeeded: bool = False
    udp_checksum_succeeded: bool = False
    ip_checksum_succeeded: bool = False
    loopback: bool = False
    tcp_checksum_value_invalid: bool = False
    ip_checksum_value_invalid: bool = False
    _BITS: ClassVar[tuple] = (("tcp_checksum_failed", 0, 1, bool),
                              ("udp_checksum_failed", 1, 1, bool),
                              ("ip_checksum_failed", 2, 1, bool),
                              ("tcp_checksum_succeeded", 3, 1, bool),
                              ("udp_checksum_succeeded", 4, 1, bool),
                              ("ip_checksum_succeeded", 5, 1, bool), ("loopback", 6, 1, bool),
                              ("tcp_checksum_value_invalid", 7, 1, bool),
                              ("ip_checksum_value_invalid", 8, 1, bool))


# --- NET_BUFFER / NET_BUFFER_LIST ---------------------------------------------------------------
@dataclass
class NetBuffer:
    """One frame (NET_BUFFER): link header (``NetBufferList.l2_length`` bytes) then IP."""

    data: Union[bytes, bytearray] = b""


@dataclass
class NetBufferList:
    """NET_BUFFER_LIST: frames, info slots (slot index -> pointer-sized int, 0 = not set),
    completion status, and the link-header length (our addition: 14 Ethernet, 0 raw IP)."""

    net_buffers: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    status: int = NdisStatus.SUCCESS
    l2_length: int = 14

    def get_info(self, slot: int) -> int:
        return self.info.get(slot, 0)

    def set_info(self, slot: int, value: Union[int, _SlotOverlay]) -> None:
        """Set a slot from an int or an overlay object; 0 clears the slot."""
        v = value.value if isinstance(value, _SlotOverlay) else int(value)
        _uint("NetBufferList", f"info[{int(slot)}]", v, 64)
        if v:
            self.info[slot] = v
        else:
            self.info.pop(slot, None)
