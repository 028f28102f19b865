"""Tests for ipsecoffload.ndis: constants, ABI layouts and NBL slot bit layouts (WDK ndis.h,
ntddndis.h, nblinfo.h, nbllso.h; docs/protocol.md sections 12-13)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st


from ipsecoffload import ndis  # an import error fails the module, never a fallback

KEY = bytes.fromhex("deadbeefcafebabe0011223344556677") + b"SECRETKEY"


def u16(buf, off):
    return struct.unpack_from("<H", buf, off)[0]


def u32(buf, off):
    return struct.unpack_from("<I", buf, off)[0]


def ptr(buf, off, ptr_size):
    return struct.unpack_from("<Q" if ptr_size == 8 else "<I", buf, off)[0]


def assert_no_key(text: str, key: bytes = KEY) -> None:
    assert repr(key) not in text
    assert key.hex() not in text
    assert key[:4].hex() not in text
    assert repr(key[:4])[2:-1] not in text
    assert "SECRETKEY" not in text


# --- constants (WDK ndis.h, ntddndis.h) -----------------------------------------------------------

MODULE_CONSTANTS = {
    # the OID_TCP_TASK_IPSEC_OFFLOAD_V2_* and OID_TCP_OFFLOAD_* pages (ntddndis.h)
    "OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA": 0xFC030202,
    "OID_TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA": 0xFC030203,
    "OID_TCP_TASK_IPSEC_OFFLOAD_V2_UPDATE_SA": 0xFC030204,
    "OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX": 0xFC030205,
    "OID_TCP_OFFLOAD_CURRENT_CONFIG": 0xFC01020B,
    "OID_TCP_OFFLOAD_PARAMETERS": 0xFC01020C,
    "OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES": 0xFC01020D,
    "NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG": 0x40020006,
    "NDIS_STATUS_TASK_OFFLOAD_HARDWARE_CAPABILITIES": 0x40020007,
    # flags: "IPSEC_OFFLOAD_V2_ADD_SA", "IPSEC_OFFLOAD_V2_SECURITY_ASSOCIATION", "NDIS_OFFLOAD"
    "IPSEC_OFFLOAD_V2_INBOUND": 0x1,
    "IPSEC_OFFLOAD_V2_IPV6": 0x10,
    "IPSEC_OFFLOAD_V2_ESN_SA": 0x1,
    "IPSEC_OFFLOAD_V2_MAX_EXTENSION_HEADERS": 2,
    "IPSEC_OFFLOAD_V2_AND_TCP_CHECKSUM_COEXISTENCE": 0x2,
    "IPSEC_OFFLOAD_V2_AND_UDP_CHECKSUM_COEXISTENCE": 0x4,
    "NDIS_OFFLOAD_FLAGS_GROUP_CHECKSUM_CAPABILITIES": 0x1,
    # "NDIS_IPSEC_OFFLOAD_V2" Encapsulation; NDIS_OBJECT_HEADER types and revisions (ndis.h)
    "NDIS_ENCAPSULATION_NOT_SUPPORTED": 0x0,
    "NDIS_ENCAPSULATION_NULL": 0x1,
    "NDIS_ENCAPSULATION_IEEE_802_3": 0x2,
    "NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q": 0x4,
    "NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q_IN_OOB": 0x8,
    "NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED": 0x10,
    "NDIS_OBJECT_TYPE_DEFAULT": 0x80,
    "NDIS_OBJECT_TYPE_OFFLOAD": 0xA7,
    "NDIS_IPSEC_OFFLOAD_V2_ADD_SA_REVISION_1": 1,
    "NDIS_IPSEC_OFFLOAD_V2_ADD_SA_EX_REVISION_1": 1,
    "NDIS_IPSEC_OFFLOAD_V2_DELETE_SA_REVISION_1": 1,
    "NDIS_IPSEC_OFFLOAD_V2_UPDATE_SA_REVISION_1": 1,
    # nbllso.h
    "NDIS_TCP_LARGE_SEND_OFFLOAD_V1_TYPE": 0,
    "NDIS_TCP_LARGE_SEND_OFFLOAD_V2_TYPE": 1,
    "NDIS_TCP_LARGE_SEND_OFFLOAD_IPV4": 0,
    "NDIS_TCP_LARGE_SEND_OFFLOAD_IPV6": 1,
    "NDIS_LARGE_SEND_OFFLOAD_MAX_HEADER_LENGTH": 128,
}


@pytest.mark.parametrize("name,value", sorted(MODULE_CONSTANTS.items()))
def test_module_constant(name, value):
    assert getattr(ndis, name) == value


ENUMS = {
    "NdisStatus": {  # NDIS_STATUS values (ndis.h), unsigned 32-bit
        "SUCCESS": 0x00000000, "PENDING": 0x00000103, "NOT_ACCEPTED": 0x00010003,
        "FAILURE": 0xC0000001, "INVALID_PARAMETER": 0xC000000D, "RESOURCES": 0xC000009A,
        "NOT_SUPPORTED": 0xC00000BB, "REQUEST_ABORTED": 0xC001000C, "INVALID_PACKET": 0xC001000F,
        "INVALID_LENGTH": 0xC0010014, "INVALID_DATA": 0xC0010015, "BUFFER_TOO_SHORT": 0xC0010016,
        "INVALID_OID": 0xC0010017,
    },
    "AuthenticationAlgorithm": {  # "NDIS_IPSEC_OFFLOAD_V2" (ntddndis.h)
        "MD5": 0x01, "SHA_1": 0x02, "SHA_256": 0x04, "AES_GCM_128": 0x08, "AES_GCM_192": 0x10,
        "AES_GCM_256": 0x20,
    },
    "EncryptionAlgorithm": {  # "NDIS_IPSEC_OFFLOAD_V2" (ntddndis.h)
        "NONE": 0x001, "DES_CBC": 0x002, "THREE_DES_CBC": 0x004, "AES_GCM_128": 0x008,
        "AES_GCM_192": 0x010, "AES_GCM_256": 0x020, "AES_CBC_128": 0x040, "AES_CBC_192": 0x080,
        "AES_CBC_256": 0x100,
    },
    "IpsecOperation": {"AH": 1, "ESP": 2, "MAX": 3},  # IPSEC_OFFLOAD_V2_OPERATION
    "UdpEspEncapsulation": {  # "UDP-ESP Encapsulation Types"
        "NONE": 0, "TRANSPORT": 1, "TUNNEL": 2, "TRANSPORT_OVER_UDP_ESP_TUNNEL": 4,
        "UDP_ESP_TRANSPORT_OVER_TUNNEL": 8,
    },
    "OffloadIpsecV2": {  # "NDIS_OFFLOAD_PARAMETERS" IPsecV2, IPsecV2IPv4
        "NO_CHANGE": 0, "DISABLED": 1, "AH_ENABLED": 2, "ESP_ENABLED": 3, "AH_AND_ESP_ENABLED": 4,
    },
    "OffloadLso": {"NO_CHANGE": 0, "DISABLED": 1, "ENABLED": 2},  # NDIS_OFFLOAD_PARAMETERS LSO
    "NblInfo": {  # NDIS_NET_BUFFER_LIST_INFO (nblinfo.h)
        "TCP_IP_CHECKSUM": 0, "IPSEC_OFFLOAD_V2": 1, "TCP_LARGE_SEND": 2, "IEEE_8021Q": 4,
        "IPSEC_OFFLOAD_V2_TUNNEL": 11, "IPSEC_OFFLOAD_V2_HEADER": 12,
    },
    "CryptoStatus": {  # "NDIS_IPSEC_OFFLOAD_V2_NET_BUFFER_LIST_INFO", Windows numbering
        "SUCCESS": 0, "GENERIC_ERROR": 1, "TRANSPORT_AH_AUTH_FAILED": 2,
        "TRANSPORT_ESP_AUTH_FAILED": 3, "TUNNEL_AH_AUTH_FAILED": 4, "TUNNEL_ESP_AUTH_FAILED": 5,
        "INVALID_PACKET_SYNTAX": 6, "INVALID_PROTOCOL": 7,
    },
}


@pytest.mark.parametrize("enum_name", sorted(ENUMS))
def test_enum_members(enum_name):
    enum_cls = getattr(ndis, enum_name)
    assert {m.name: m.value for m in enum_cls.__members__.values()} == ENUMS[enum_name]


def test_enum_kinds():
    import enum
    for name in ("NdisStatus", "IpsecOperation", "OffloadIpsecV2", "OffloadLso", "NblInfo",
                 "CryptoStatus"):
        assert issubclass(getattr(ndis, name), enum.IntEnum), name
    for name in ("AuthenticationAlgorithm", "EncryptionAlgorithm", "UdpEspEncapsulation"):
        assert issubclass(getattr(ndis, name), enum.IntFlag), name


def test_ndis_status_is_unsigned():
    assert all(0 <= s <= 0xFFFFFFFF for s in ndis.NdisStatus)
    assert ndis.NdisStatus.FAILURE == 0xC0000001


def test_algorithm_masks_combine():
    mask = ndis.AuthenticationAlgorithm.SHA_1 | ndis.AuthenticationAlgorithm.AES_GCM_256
    assert int(mask) == 0x22
    enc = ndis.EncryptionAlgorithm.AES_GCM_128 | ndis.EncryptionAlgorithm.AES_CBC_256
    assert int(enc) == 0x108


SIZE_MACROS = {  # ndis.h NDIS_SIZEOF_*_REVISION_1 (docs/spec-gaps.md G26)
    "SIZEOF_ADD_SA_REV1": {8: 0xA9, 4: 0x9D},
    "SIZEOF_ADD_SA_EX_REV1": {8: 0xAA, 4: 0xA2},
    "SIZEOF_DELETE_SA_REV1": {8: 0x18, 4: 0x0C},
    "SIZEOF_UPDATE_SA_REV1": {8: 0x1C, 4: 0x14},
}


@pytest.mark.parametrize("name,expected", sorted(SIZE_MACROS.items()))
def test_size_macros(name, expected):
    assert getattr(ndis, name) == expected


def test_size_macro_ndis_aliases():
    assert ndis.NDIS_SIZEOF_IPSEC_OFFLOAD_V2_ADD_SA_REVISION_1 == {8: 0xA9, 4: 0x9D}
    assert ndis.NDIS_SIZEOF_IPSEC_OFFLOAD_V2_ADD_SA_EX_REVISION_1 == {8: 0xAA, 4: 0xA2}
    assert ndis.NDIS_SIZEOF_IPSEC_OFFLOAD_V2_DELETE_SA_REVISION_1 == {8: 0x18, 4: 0x0C}
    assert ndis.NDIS_SIZEOF_IPSEC_OFFLOAD_V2_UPDATE_SA_REVISION_1 == {8: 0x1C, 4: 0x14}


# --- struct sizes (WDK ndis.h, ntddndis.h) --------------------------------------------------------

STRUCT_SIZES = [
    ("NdisIpsecOffloadV2", 8, 32), ("NdisIpsecOffloadV2", 4, 32),
    ("IpsecOffloadV2AlgorithmInfo", 8, 16), ("IpsecOffloadV2AlgorithmInfo", 4, 16),
    ("IpsecOffloadV2SecurityAssociation", 8, 48), ("IpsecOffloadV2SecurityAssociation", 4, 48),
    ("IpsecOffloadV2AddSa", 8, 0xB0), ("IpsecOffloadV2AddSa", 4, 0xA0),
    ("IpsecOffloadV2AddSaEx", 8, 0xB0), ("IpsecOffloadV2AddSaEx", 4, 0xA4),
    ("IpsecOffloadV2DeleteSa", 8, 0x18), ("IpsecOffloadV2DeleteSa", 4, 0x0C),
    ("IpsecOffloadV2UpdateSa", 8, 0x20), ("IpsecOffloadV2UpdateSa", 4, 0x14),
]


@pytest.mark.parametrize("name,ptr_size,size", STRUCT_SIZES, ids=lambda v: str(v))
def test_struct_size(name, ptr_size, size):
    cls = getattr(ndis, name)
    assert cls.size(ptr_size) == size
    assert cls.sizeof(ptr_size) == size
    assert len(cls().to_bytes(ptr_size)) == size  # default instance: no key bytes


def test_object_header_layout():
    hdr = ndis.NdisObjectHeader(type=0xA7, revision=3, size=0x1234)
    for ptr_size in (4, 8):
        assert hdr.to_bytes(ptr_size) == bytes([0xA7, 0x03, 0x34, 0x12])
    assert ndis.NdisObjectHeader.sizeof() == ndis.NdisObjectHeader.SIZE == 4
    assert ndis.NdisObjectHeader() == ndis.NdisObjectHeader(0x80, 1, 0)
    assert ndis.NdisObjectHeader.from_bytes(b"\xa7\x03\x34\x12") == hdr


DEFAULT_HEADER_SIZES = [
    ("IpsecOffloadV2AddSa", 0xB0), ("IpsecOffloadV2AddSaEx", 0xB0),
    ("IpsecOffloadV2DeleteSa", 0x18), ("IpsecOffloadV2UpdateSa", 0x20),
]


@pytest.mark.parametrize("name,size", DEFAULT_HEADER_SIZES)
def test_default_headers(name, size):
    hdr = getattr(ndis, name)().header
    assert (hdr.type, hdr.revision, hdr.size) == (0x80, 1, size)


@pytest.mark.parametrize("ptr_size", [4, 8])
def test_default_header_size_accepted_by_macro(ptr_size):
    # docs/spec-gaps.md G26: a Size >= the NDIS_SIZEOF macro is acceptable
    assert ndis.IpsecOffloadV2AddSa().header.size >= ndis.SIZEOF_ADD_SA_REV1[ptr_size]
    assert ndis.IpsecOffloadV2AddSaEx().header.size >= ndis.SIZEOF_ADD_SA_EX_REV1[ptr_size]
    assert ndis.IpsecOffloadV2DeleteSa().header.size >= ndis.SIZEOF_DELETE_SA_REV1[ptr_size]
    assert ndis.IpsecOffloadV2UpdateSa().header.size >= ndis.SIZEOF_UPDATE_SA_REV1[ptr_size]


def test_default_instances_are_independent():
    a, b = ndis.IpsecOffloadV2AddSa(), ndis.IpsecOffloadV2AddSa()
    assert a.sec_assoc is not b.sec_assoc and a.header is not b.header
    assert len(a.sec_assoc) == 1 and a.sec_assoc[0].operation == ndis.IpsecOperation.ESP
    assert (a.num_ext_hdrs, a.src_address, a.dest_address) == (1, bytes(4), bytes(4))
    assert a.key_data == b"" and a.offload_handle == 0 and a.next is None
    n1, n2 = ndis.NetBufferList(), ndis.NetBufferList()
    assert n1.info is not n2.info and n1.net_buffers is not n2.net_buffers


@pytest.mark.parametrize("cls_name", [
    "NdisIpsecOffloadV2", "IpsecOffloadV2AlgorithmInfo", "IpsecOffloadV2SecurityAssociation",
    "IpsecOffloadV2AddSa", "IpsecOffloadV2AddSaEx", "IpsecOffloadV2DeleteSa",
    "IpsecOffloadV2UpdateSa", "NdisObjectHeader"])
def test_bad_ptr_size(cls_name):
    cls = getattr(ndis, cls_name)
    with pytest.raises(ValueError, match="ptr_size"):
        cls().to_bytes(16)
    with pytest.raises(ValueError, match="ptr_size"):
        cls.from_bytes(bytes(512), 2)


# --- field offsets (WDK ndis.h, ntddndis.h) -------------------------------------------------------

def test_capabilities_offsets():
    caps = ndis.NdisIpsecOffloadV2(
        encapsulation=0x11223344, ipv6_supported=True, ipv4_options=False,
        ipv6_non_ipsec_extension_headers=True, ah=False, esp=True, ah_esp_combined=False,
        transport=True, tunnel=True, transport_tunnel_combined=False, lso_supported=True,
        extended_sequence_numbers=True, udp_esp=0x0F, authentication_algorithms=0x3F,
        encryption_algorithms=0x1FF, sa_offload_capacity=1024)
    for ptr_size in (4, 8):
        raw = caps.to_bytes(ptr_size)
        assert len(raw) == 32
        assert u32(raw, 0) == 0x11223344
        assert list(raw[4:15]) == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1]
        assert raw[15] == 0  # padding
        assert struct.unpack_from("<4I", raw, 16) == (0x0F, 0x3F, 0x1FF, 1024)


@pytest.mark.parametrize("field,offset", [
    ("ipv6_supported", 4), ("ipv4_options", 5), ("ipv6_non_ipsec_extension_headers", 6),
    ("ah", 7), ("esp", 8), ("ah_esp_combined", 9), ("transport", 10), ("tunnel", 11),
    ("transport_tunnel_combined", 12), ("lso_supported", 13), ("extended_sequence_numbers", 14)])
def test_capabilities_boolean_offsets(field, offset):
    raw = ndis.NdisIpsecOffloadV2(**{field: True}).to_bytes()
    assert raw == bytes(offset) + b"\x01" + bytes(31 - offset)


def test_algorithm_info_offsets():
    info = ndis.IpsecOffloadV2AlgorithmInfo(identifier=0x40, key_length=16, key_offset_bytes=0x20,
                                            additional_info=0xA1B2C3D4)
    raw = info.to_bytes()
    assert (u32(raw, 0), u32(raw, 4), u32(raw, 8), u32(raw, 12)) == (0x40, 16, 0x20, 0xA1B2C3D4)
    assert info.to_bytes(4) == raw


def make_sa(seed: int) -> "ndis.IpsecOffloadV2SecurityAssociation":
    return ndis.IpsecOffloadV2SecurityAssociation(
        flags=ndis.IPSEC_OFFLOAD_V2_ESN_SA, operation=ndis.IpsecOperation.ESP,
        spi=0x10000000 + seed,
        authentication_algorithm=ndis.IpsecOffloadV2AlgorithmInfo(0x02, 20, 16, seed + 1),
        encryption_algorithm=ndis.IpsecOffloadV2AlgorithmInfo(0x40, 16, 0, seed + 2),
        sequence_number_high_order=0xABC00000 + seed)


def check_sa_at(raw: bytes, off: int, sa) -> None:
    assert u32(raw, off + 0) == sa.flags
    assert u32(raw, off + 4) == sa.operation
    assert u32(raw, off + 8) == sa.spi
    a, e = sa.authentication_algorithm, sa.encryption_algorithm
    assert struct.unpack_from("<4I", raw, off + 12) == (a.identifier, a.key_length,
                                                        a.key_offset_bytes, a.additional_info)
    assert struct.unpack_from("<4I", raw, off + 28) == (e.identifier, e.key_length,
                                                        e.key_offset_bytes, e.additional_info)
    assert u32(raw, off + 44) == sa.sequence_number_high_order


def test_security_association_offsets():
    sa = make_sa(7)
    raw = sa.to_bytes()
    assert len(raw) == 48
    check_sa_at(raw, 0, sa)
    assert sa.to_bytes(4) == raw


ADD_SA_OFFSETS = {  # "IPSEC_OFFLOAD_V2_ADD_SA" (ndis.h)
    8: dict(next=0x08, num=0x10, flags=0x14, ep=0x18, handle=0x38, udp=0x40, sa=0x44,
            klen=0xA4, kdata=0xA8),
    4: dict(next=0x04, num=0x08, flags=0x0C, ep=0x10, handle=0x30, udp=0x34, sa=0x38,
            klen=0x98, kdata=0x9C),
}


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_offsets_ipv4(ptr_size):
    o = ADD_SA_OFFSETS[ptr_size]
    handle = 0x0102030405060708 if ptr_size == 8 else 0x05060708
    next_ptr = 0x1122334455667788 if ptr_size == 8 else 0x55667788
    sa0, sa1 = make_sa(1), make_sa(2)
    sa1.operation = ndis.IpsecOperation.AH
    entry = ndis.IpsecOffloadV2AddSa(
        header=ndis.NdisObjectHeader(0x80, 1, 0xB0), num_ext_hdrs=2,
        flags=ndis.IPSEC_OFFLOAD_V2_INBOUND, src_address=bytes([10, 0, 0, 1]),
        dest_address=bytes([192, 168, 1, 2]), offload_handle=handle,
        udp_esp_encapsulation=ndis.UdpEspEncapsulation.TRANSPORT, sec_assoc=[sa0, sa1],
        key_data=KEY)
    raw = entry.to_bytes(ptr_size, next_pointer=next_ptr)
    assert raw[:4] == bytes([0x80, 1, 0xB0, 0])
    assert raw[4:o["next"]] == bytes(o["next"] - 4)  # alignment padding
    assert ptr(raw, o["next"], ptr_size) == next_ptr
    assert u32(raw, o["num"]) == 2
    assert u32(raw, o["flags"]) == ndis.IPSEC_OFFLOAD_V2_INBOUND
    assert raw[o["ep"]:o["ep"] + 4] == bytes([10, 0, 0, 1])  # network byte order
    assert raw[o["ep"] + 4:o["ep"] + 8] == bytes([192, 168, 1, 2])
    assert raw[o["ep"] + 8:o["ep"] + 32] == bytes(24)  # rest of the IPv6 union
    assert ptr(raw, o["handle"], ptr_size) == handle
    assert u32(raw, o["udp"]) == 1
    check_sa_at(raw, o["sa"], sa0)
    check_sa_at(raw, o["sa"] + 48, sa1)
    assert o["sa"] + 96 == o["klen"]
    assert u32(raw, o["klen"]) == len(KEY)
    assert raw[o["kdata"]:o["kdata"] + len(KEY)] == KEY
    assert len(raw) == max(ndis.IpsecOffloadV2AddSa.size(ptr_size), o["kdata"] + len(KEY))


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_offsets_ipv6(ptr_size):
    o = ADD_SA_OFFSETS[ptr_size]
    src = bytes(range(0x20, 0x30))
    dst = bytes(range(0x40, 0x50))
    entry = ndis.IpsecOffloadV2AddSa(flags=ndis.IPSEC_OFFLOAD_V2_IPV6, src_address=src,
                                     dest_address=dst)
    raw = entry.to_bytes(ptr_size)
    assert u32(raw, o["flags"]) == 0x10
    assert raw[o["ep"]:o["ep"] + 16] == src
    assert raw[o["ep"] + 16:o["ep"] + 32] == dst
    assert u32(raw, o["klen"]) == 0
    assert raw[o["kdata"]:] == bytes(len(raw) - o["kdata"])  # zero tail padding
    assert len(raw) == ndis.IpsecOffloadV2AddSa.size(ptr_size)


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_single_sa_leaves_second_slot_zero(ptr_size):
    o = ADD_SA_OFFSETS[ptr_size]
    entry = ndis.IpsecOffloadV2AddSa(sec_assoc=[make_sa(3)])
    raw = entry.to_bytes(ptr_size)
    check_sa_at(raw, o["sa"], entry.sec_assoc[0])
    assert raw[o["sa"] + 48:o["sa"] + 96] == bytes(48)


ADD_SA_EX_OFFSETS = {  # "IPSEC_OFFLOAD_V2_ADD_SA_EX" (ndis.h)
    8: dict(num=0x04, flags=0x08, ep=0x0C, handle=0x30, udp=0x38, sa=0x3C, klen=0x9C,
            koff=0xA0, port=0xA4, vlan=0xA8, size=0xB0),
    4: dict(num=0x04, flags=0x08, ep=0x0C, handle=0x2C, udp=0x30, sa=0x34, klen=0x94,
            koff=0x98, port=0x9C, vlan=0xA0, size=0xA4),
}


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_ex_offsets(ptr_size):
    o = ADD_SA_EX_OFFSETS[ptr_size]
    handle = 0x0A0B0C0D0E0F1011 if ptr_size == 8 else 0x0E0F1011
    sa0, sa1 = make_sa(4), make_sa(5)
    entry = ndis.IpsecOffloadV2AddSaEx(
        num_ext_hdrs=2, flags=ndis.IPSEC_OFFLOAD_V2_IPV6 | ndis.IPSEC_OFFLOAD_V2_INBOUND,
        src_address=bytes(range(1, 17)), dest_address=bytes(range(17, 33)),
        offload_handle=handle, udp_esp_encapsulation=ndis.UdpEspEncapsulation.TUNNEL,
        sec_assoc=[sa0, sa1], source_switch_port_id=0x7788, vlan_id=0x0FED, key_data=KEY)
    raw = entry.to_bytes(ptr_size)
    assert raw[:4] == bytes([0x80, 1, 0xB0, 0])
    assert u32(raw, o["num"]) == 2
    assert u32(raw, o["flags"]) == 0x11
    assert raw[o["ep"]:o["ep"] + 32] == bytes(range(1, 33))
    assert raw[o["ep"] + 32:o["handle"]] == bytes(o["handle"] - o["ep"] - 32)  # padding
    assert ptr(raw, o["handle"], ptr_size) == handle
    assert u32(raw, o["udp"]) == 2
    check_sa_at(raw, o["sa"], sa0)
    check_sa_at(raw, o["sa"] + 48, sa1)
    assert u32(raw, o["klen"]) == len(KEY)
    assert u32(raw, o["koff"]) == o["size"] == ndis.IpsecOffloadV2AddSaEx.size(ptr_size)
    assert u32(raw, o["port"]) == 0x7788
    assert u16(raw, o["vlan"]) == 0x0FED
    assert raw[o["vlan"] + 2:o["size"]] == bytes(o["size"] - o["vlan"] - 2)
    assert raw[o["size"]:] == KEY
    assert len(raw) == o["size"] + len(KEY)


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_ex_reads_keys_at_any_key_offset(ptr_size):
    o = ADD_SA_EX_OFFSETS[ptr_size]
    raw = bytearray(ndis.IpsecOffloadV2AddSaEx().to_bytes(ptr_size)) + b"\xee" * 8 + KEY
    struct.pack_into("<II", raw, o["klen"], len(KEY), o["size"] + 8)
    assert ndis.IpsecOffloadV2AddSaEx.from_bytes(bytes(raw), ptr_size).key_data == KEY


@pytest.mark.parametrize("ptr_size,off_next,off_handle", [(8, 0x08, 0x10), (4, 0x04, 0x08)])
def test_delete_sa_offsets(ptr_size, off_next, off_handle):
    handle = 0xFEDCBA9876543210 if ptr_size == 8 else 0x76543210
    entry = ndis.IpsecOffloadV2DeleteSa(offload_handle=handle)
    raw = entry.to_bytes(ptr_size, next_pointer=0x1234)
    assert len(raw) == (0x18 if ptr_size == 8 else 0x0C)
    assert raw[:4] == bytes([0x80, 1, 0x18, 0])
    assert raw[4:off_next] == bytes(off_next - 4)
    assert ptr(raw, off_next, ptr_size) == 0x1234
    assert ptr(raw, off_handle, ptr_size) == handle


@pytest.mark.parametrize("ptr_size,offs,size", [
    (8, (0x08, 0x10, 0x14, 0x18), 0x20), (4, (0x04, 0x08, 0x0C, 0x10), 0x14)])
def test_update_sa_offsets(ptr_size, offs, size):
    handle = 0x1111222233334444 if ptr_size == 8 else 0x33334444
    upd = ndis.IpsecOffloadV2UpdateSa(offload_handle=handle, operation=ndis.IpsecOperation.AH,
                                      spi=0xC0FFEE01, sequence_number_high_order=0x00000007)
    raw = upd.to_bytes(ptr_size)
    assert len(raw) == size
    assert raw[:4] == bytes([0x80, 1, 0x20, 0])
    assert raw[4:offs[0]] == bytes(offs[0] - 4)
    assert ptr(raw, offs[0], ptr_size) == handle
    assert u32(raw, offs[1]) == 1
    assert u32(raw, offs[2]) == 0xC0FFEE01
    assert u32(raw, offs[3]) == 7
    assert raw[offs[3] + 4:] == bytes(size - offs[3] - 4)  # tail padding
    assert ndis.SIZEOF_UPDATE_SA_REV1[ptr_size] == offs[3] + 4


def test_update_sa_has_no_next():
    assert not hasattr(ndis.IpsecOffloadV2UpdateSa(), "next")  # docs/spec-gaps.md G9


# --- round trips ---------------------------------------------------------------------------------

u32s = st.integers(0, 2**32 - 1)
ptr_sizes = st.sampled_from([4, 8])

algorithm_infos = st.builds(ndis.IpsecOffloadV2AlgorithmInfo, u32s, u32s, u32s, u32s)
security_associations = st.builds(
    ndis.IpsecOffloadV2SecurityAssociation, flags=u32s,
    operation=st.sampled_from(list(ndis.IpsecOperation)), spi=u32s,
    authentication_algorithm=algorithm_infos, encryption_algorithm=algorithm_infos,
    sequence_number_high_order=u32s)
headers = st.builds(ndis.NdisObjectHeader, st.integers(0, 255), st.integers(0, 255),
                    st.integers(0, 0xFFFF))


@st.composite
def add_sa_common(draw, ptr_size):
    ipv6 = draw(st.booleans())
    alen = 16 if ipv6 else 4
    n_sa = draw(st.integers(1, 2))
    flags = draw(u32s) & ~ndis.IPSEC_OFFLOAD_V2_IPV6
    flags |= ndis.IPSEC_OFFLOAD_V2_IPV6 if ipv6 else 0
    return dict(
        header=draw(headers), num_ext_hdrs=n_sa, flags=flags,
        src_address=draw(st.binary(min_size=alen, max_size=alen)),
        dest_address=draw(st.binary(min_size=alen, max_size=alen)),
        offload_handle=draw(st.integers(0, 2 ** (8 * ptr_size) - 1)),
        udp_esp_encapsulation=draw(u32s),
        sec_assoc=draw(st.lists(security_associations, min_size=n_sa, max_size=n_sa)),
        key_data=draw(st.binary(max_size=100)))


@given(st.data(), ptr_sizes)
def test_roundtrip_add_sa(data, ptr_size):
    entry = ndis.IpsecOffloadV2AddSa(**data.draw(add_sa_common(ptr_size)))
    back = ndis.IpsecOffloadV2AddSa.from_bytes(entry.to_bytes(ptr_size, next_pointer=8), ptr_size)
    assert back == entry and back.next is None


@given(st.data(), ptr_sizes, u32s, st.integers(0, 0xFFFF))
def test_roundtrip_add_sa_ex(data, ptr_size, port, vlan):
    entry = ndis.IpsecOffloadV2AddSaEx(**data.draw(add_sa_common(ptr_size)),
                                       source_switch_port_id=port, vlan_id=vlan)
    assert ndis.IpsecOffloadV2AddSaEx.from_bytes(entry.to_bytes(ptr_size), ptr_size) == entry


@given(security_associations)
def test_roundtrip_security_association(sa):
    for ptr_size in (4, 8):
        assert ndis.IpsecOffloadV2SecurityAssociation.from_bytes(sa.to_bytes(ptr_size),
                                                                 ptr_size) == sa


@given(algorithm_infos)
def test_roundtrip_algorithm_info(info):
    assert ndis.IpsecOffloadV2AlgorithmInfo.from_bytes(info.to_bytes()) == info


@given(headers, ptr_sizes, st.data())
def test_roundtrip_delete_and_update(header, ptr_size, data):
    handle = data.draw(st.integers(0, 2 ** (8 * ptr_size) - 1))
    d = ndis.IpsecOffloadV2DeleteSa(header=header, offload_handle=handle)
    assert ndis.IpsecOffloadV2DeleteSa.from_bytes(d.to_bytes(ptr_size, 99), ptr_size) == d
    operation = data.draw(st.sampled_from(list(ndis.IpsecOperation)))
    u = ndis.IpsecOffloadV2UpdateSa(header=header, offload_handle=handle, operation=operation,
                                    spi=data.draw(u32s),
                                    sequence_number_high_order=data.draw(u32s))
    assert ndis.IpsecOffloadV2UpdateSa.from_bytes(u.to_bytes(ptr_size), ptr_size) == u


@given(st.builds(ndis.NdisIpsecOffloadV2, u32s, *[st.booleans()] * 11, u32s, u32s, u32s, u32s))
def test_roundtrip_capabilities(caps):
    assert ndis.NdisIpsecOffloadV2.from_bytes(caps.to_bytes()) == caps


@given(headers)
def test_roundtrip_header(header):
    assert ndis.NdisObjectHeader.from_bytes(header.to_bytes()) == header


def test_from_bytes_accepts_bytearray_and_memoryview():
    raw = ndis.IpsecOffloadV2AddSa(key_data=KEY).to_bytes()
    a = ndis.IpsecOffloadV2AddSa.from_bytes(bytearray(raw))
    b = ndis.IpsecOffloadV2AddSa.from_bytes(memoryview(raw))
    assert a == b and isinstance(a.key_data, bytes) and isinstance(a.src_address, bytes)


def test_from_bytes_decodes_unknown_operation_as_int():
    raw = bytearray(ndis.IpsecOffloadV2UpdateSa().to_bytes())
    struct.pack_into("<I", raw, 0x10, 9)
    upd = ndis.IpsecOffloadV2UpdateSa.from_bytes(bytes(raw))
    assert upd.operation == 9
    raw_sa = struct.pack("<III", 0, 2, 5) + bytes(36)
    sa = ndis.IpsecOffloadV2SecurityAssociation.from_bytes(raw_sa)
    assert sa.operation is ndis.IpsecOperation.ESP


def test_from_bytes_second_sa_follows_num_ext_hdrs():
    one = ndis.IpsecOffloadV2AddSa(num_ext_hdrs=1, sec_assoc=[make_sa(1)])
    assert len(ndis.IpsecOffloadV2AddSa.from_bytes(one.to_bytes()).sec_assoc) == 1
    two = ndis.IpsecOffloadV2AddSa(num_ext_hdrs=2, sec_assoc=[make_sa(1)])
    back = ndis.IpsecOffloadV2AddSa.from_bytes(two.to_bytes())
    assert back.sec_assoc == [make_sa(1), ndis.IpsecOffloadV2SecurityAssociation(operation=0)]
    # a non-zero second entry is never dropped, whatever NumExtHdrs says (the OID handler checks)
    odd = ndis.IpsecOffloadV2AddSa(num_ext_hdrs=1, sec_assoc=[make_sa(1), make_sa(2)])
    assert ndis.IpsecOffloadV2AddSa.from_bytes(odd.to_bytes()).sec_assoc == odd.sec_assoc


def test_entries_walks_next_chain():
    c = ndis.IpsecOffloadV2AddSa(offload_handle=3)
    b = ndis.IpsecOffloadV2AddSa(next=c, offload_handle=2)
    a = ndis.IpsecOffloadV2AddSa(next=b, offload_handle=1)
    assert [e.offload_handle for e in a.entries()] == [1, 2, 3]
    assert list(c.entries()) == [c]
    d = ndis.IpsecOffloadV2DeleteSa(offload_handle=5,
                                    next=ndis.IpsecOffloadV2DeleteSa(offload_handle=6))
    assert [e.offload_handle for e in d.entries()] == [5, 6]


# --- encoder / decoder errors --------------------------------------------------------------------

@pytest.mark.parametrize("cls_name,ptr_size,short", [
    ("IpsecOffloadV2AddSa", 8, 0xA7), ("IpsecOffloadV2AddSa", 4, 0x9B),
    ("IpsecOffloadV2AddSaEx", 8, 0xA9), ("IpsecOffloadV2AddSaEx", 4, 0xA1),
    ("IpsecOffloadV2DeleteSa", 8, 0x17), ("IpsecOffloadV2DeleteSa", 4, 0x0B),
    ("IpsecOffloadV2UpdateSa", 8, 0x1B), ("IpsecOffloadV2UpdateSa", 4, 0x13),
    ("IpsecOffloadV2SecurityAssociation", 8, 47), ("IpsecOffloadV2AlgorithmInfo", 8, 15),
    ("NdisIpsecOffloadV2", 8, 31), ("NdisObjectHeader", 8, 3)])
def test_from_bytes_short_buffer(cls_name, ptr_size, short):
    cls = getattr(ndis, cls_name)
    with pytest.raises(ValueError, match="shorter"):
        cls.from_bytes(bytes(short), ptr_size)


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_key_length_out_of_range(ptr_size):
    raw = ndis.IpsecOffloadV2AddSa(key_data=KEY).to_bytes(ptr_size)
    cut = raw[:ADD_SA_OFFSETS[ptr_size]["kdata"] + len(KEY) - 1]
    with pytest.raises(ValueError, match="KeyLength") as exc:
        ndis.IpsecOffloadV2AddSa.from_bytes(cut, ptr_size)
    assert_no_key(str(exc.value))
    assert_no_key(repr(exc.value))


@pytest.mark.parametrize("ptr_size", [8, 4])
def test_add_sa_ex_key_range_out_of_range(ptr_size):
    raw = ndis.IpsecOffloadV2AddSaEx(key_data=KEY).to_bytes(ptr_size)
    with pytest.raises(ValueError, match="key range") as exc:
        ndis.IpsecOffloadV2AddSaEx.from_bytes(raw[:-1], ptr_size)
    assert_no_key(str(exc.value))
    bad = bytearray(raw)
    struct.pack_into("<I", bad, ADD_SA_EX_OFFSETS[ptr_size]["koff"], 0xFFFFFFF0)
    with pytest.raises(ValueError, match="key range") as exc:
        ndis.IpsecOffloadV2AddSaEx.from_bytes(bytes(bad), ptr_size)
    assert_no_key(str(exc.value))


@pytest.mark.parametrize("cls_name", ["IpsecOffloadV2AddSa", "IpsecOffloadV2AddSaEx"])
def test_address_length_must_match_ipv6_flag(cls_name):
    cls = getattr(ndis, cls_name)
    with pytest.raises(ValueError, match="src_address") as exc:
        cls(flags=ndis.IPSEC_OFFLOAD_V2_IPV6, key_data=KEY).to_bytes()
    assert_no_key(str(exc.value))
    with pytest.raises(ValueError, match="dest_address"):
        cls(src_address=bytes(4), dest_address=bytes(16)).to_bytes()


def test_too_many_security_associations():
    with pytest.raises(ValueError, match="sec_assoc") as exc:
        ndis.IpsecOffloadV2AddSa(sec_assoc=[make_sa(i) for i in range(3)], key_data=KEY).to_bytes()
    assert_no_key(str(exc.value))


def test_empty_sec_assoc_writes_zeros():
    raw = ndis.IpsecOffloadV2AddSa(sec_assoc=[]).to_bytes()
    assert raw[0x44:0xA4] == bytes(96)


@pytest.mark.parametrize("obj,field", [
    (lambda: ndis.IpsecOffloadV2AddSa(offload_handle=2**32), "offload_handle"),
    (lambda: ndis.IpsecOffloadV2AddSa(num_ext_hdrs=-1), "num_ext_hdrs"),
    (lambda: ndis.IpsecOffloadV2AddSaEx(vlan_id=0x10000), "vlan_id"),
    (lambda: ndis.IpsecOffloadV2UpdateSa(spi=2**32), "spi"),
    (lambda: ndis.IpsecOffloadV2DeleteSa(offload_handle=2**32), "offload_handle"),
    (lambda: ndis.IpsecOffloadV2SecurityAssociation(sequence_number_high_order=2**32),
     "sequence_number_high_order"),
    (lambda: ndis.IpsecOffloadV2AlgorithmInfo(key_length=2**32), "key_length"),
    (lambda: ndis.NdisIpsecOffloadV2(sa_offload_capacity=-5), "sa_offload_capacity"),
    (lambda: ndis.NdisObjectHeader(size=0x10000), "size"),
])
def test_to_bytes_field_overflow_names_field(obj, field):
    with pytest.raises(ValueError, match=field):
        obj().to_bytes(4)


def test_next_pointer_must_fit_pointer():
    with pytest.raises(ValueError, match="next_pointer"):
        ndis.IpsecOffloadV2AddSa().to_bytes(4, next_pointer=2**32)
    assert len(ndis.IpsecOffloadV2AddSa().to_bytes(8, next_pointer=2**32)) == 0xB0


# --- keys never shown ----------------------------------------------------------------------------

def test_repr_and_str_hide_keys():
    for obj in (ndis.IpsecOffloadV2AddSa(key_data=KEY,
                                         next=ndis.IpsecOffloadV2AddSa(key_data=KEY)),
                ndis.IpsecOffloadV2AddSaEx(key_data=KEY)):
        assert_no_key(repr(obj))
        assert_no_key(str(obj))
        assert_no_key(repr(type(obj).from_bytes(obj.to_bytes())))


# --- NBL info slots (docs/protocol.md section 13) -------------------------------------------------

def test_offload_handle_slot():
    assert ndis.IpsecOffloadV2NblInfo(offload_handle=0x123456789A).value == 0x123456789A
    assert ndis.IpsecOffloadV2NblInfo.from_value(2**64 - 1).offload_handle == 2**64 - 1
    assert ndis.IpsecOffloadV2NblInfo().value == 0
    assert ndis.IpsecOffloadV2TunnelNblInfo(tunnel_handle=77).value == 77
    assert ndis.IpsecOffloadV2TunnelNblInfo.from_value(78) == ndis.IpsecOffloadV2TunnelNblInfo(78)
    with pytest.raises(ValueError, match="offload_handle"):
        _ = ndis.IpsecOffloadV2NblInfo(offload_handle=2**64).value
    with pytest.raises(ValueError, match="tunnel_handle"):
        _ = ndis.IpsecOffloadV2TunnelNblInfo(tunnel_handle=-1).value


@pytest.mark.parametrize("kwargs,value", [
    (dict(sa_delete_req=True), 0x1),
    (dict(crypto_done=True), 0x2),
    (dict(next_crypto_done=True), 0x4),
    (dict(crypto_status=ndis.CryptoStatus.INVALID_PROTOCOL), 7 << 16),
    (dict(crypto_done=True, crypto_status=ndis.CryptoStatus.TRANSPORT_ESP_AUTH_FAILED),
     0x00030002),
    (dict(sa_delete_req=True, crypto_done=True, next_crypto_done=True,
          crypto_status=ndis.CryptoStatus.TUNNEL_ESP_AUTH_FAILED), 0x00050007),
])
def test_receive_slot_bits(kwargs, value):
    info = ndis.IpsecOffloadV2ReceiveNblInfo(**kwargs)
    assert info.value == value
    assert ndis.IpsecOffloadV2ReceiveNblInfo.from_value(value) == info


def test_receive_slot_decoding():
    info = ndis.IpsecOffloadV2ReceiveNblInfo.from_value(0x0003FFFA)  # reserved bits 3-15 set
    assert info == ndis.IpsecOffloadV2ReceiveNblInfo(False, True, False, 3)
    assert info.crypto_status is ndis.CryptoStatus.TRANSPORT_ESP_AUTH_FAILED
    assert isinstance(info.crypto_done, bool)
    assert ndis.IpsecOffloadV2ReceiveNblInfo.from_value(0x00400000).crypto_status == 0x40
    with pytest.raises(ValueError, match="crypto_status"):
        _ = ndis.IpsecOffloadV2ReceiveNblInfo(crypto_status=0x10000).value


@pytest.mark.parametrize("kwargs,value", [
    (dict(esp_header_offset=5), 5 << 24),  # IPv4 + ESP
    (dict(next_header=6, pad_length=2, ah_header_offset=5, esp_header_offset=11), 0x0B050206),
    (dict(next_header=17, esp_header_offset=7), 0x07000011),  # IPv4 + UDP(4500) + ESP
    (dict(next_header=41, pad_length=255, esp_header_offset=10), 0x0A00FF29),  # IPv6 tunnel
])
def test_header_slot_transmit_bits(kwargs, value):
    info = ndis.IpsecOffloadV2HeaderNblInfo(**kwargs)
    assert info.value == value
    assert ndis.IpsecOffloadV2HeaderNblInfo.from_value(value) == info


def test_header_slot_esp_offset_in_bits_24_31():
    v = ndis.IpsecOffloadV2HeaderNblInfo(esp_header_offset=5).value
    assert (v >> 24) & 0xFF == 5 and v & 0xFFFFFF == 0


@pytest.mark.parametrize("field", ["next_header", "pad_length", "ah_header_offset",
                                   "esp_header_offset"])
def test_header_slot_overflow(field):
    with pytest.raises(ValueError, match=field):
        _ = ndis.IpsecOffloadV2HeaderNblInfo(**{field: 256}).value


def test_header_slot_receive_bits():
    info = ndis.IpsecOffloadV2HeaderReceiveNblInfo(next_header=6, pad_length=3,
                                                   header_info_set=True)
    assert info.value == 0x00010306
    assert ndis.IpsecOffloadV2HeaderReceiveNblInfo.from_value(0xFFFE0306) == \
        ndis.IpsecOffloadV2HeaderReceiveNblInfo(6, 3, False)


def test_lso_v2_transmit_exact_value():
    info = ndis.LsoV2Transmit(mss=1448, tcp_header_offset=54,
                              ip_version=ndis.NDIS_TCP_LARGE_SEND_OFFLOAD_IPV6)
    assert info.value == 1448 | (54 << 20) | (1 << 30) | (1 << 31) == 0xC36005A8
    assert ndis.LsoV2Transmit(mss=1460, tcp_header_offset=34).value == 0x422005B4
    assert ndis.LsoV2Transmit.from_value(0xC36005A8) == info
    assert ndis.lso_type_of(info.value) == ndis.NDIS_TCP_LARGE_SEND_OFFLOAD_V2_TYPE


def test_lso_v1_transmit_exact_value():
    info = ndis.LsoV1Transmit(mss=1460, tcp_header_offset=54)
    assert info.value == 1460 | (54 << 20) == 0x036005B4
    assert ndis.lso_type_of(info.value) == ndis.NDIS_TCP_LARGE_SEND_OFFLOAD_V1_TYPE
    assert ndis.LsoV1Transmit.from_value(0x836005B4) == info  # Reserved2 (bit 31) ignored


def test_lso_transmit_complete():
    assert ndis.LsoV1TransmitComplete(tcp_payload=65000).value == 65000
    assert ndis.LsoV1TransmitComplete(tcp_payload=2**30 - 1).value == 0x3FFFFFFF
    assert ndis.LsoV1TransmitComplete.from_value(0x40000010).tcp_payload == 0x10
    assert ndis.LsoV2TransmitComplete().value == 0x40000000
    assert ndis.LsoV2TransmitComplete.from_value(0xFFFFFFFF) == ndis.LsoV2TransmitComplete()
    with pytest.raises(ValueError, match="tcp_payload"):
        _ = ndis.LsoV1TransmitComplete(tcp_payload=2**30).value


@pytest.mark.parametrize("cls_name,kwargs,field", [
    ("LsoV1Transmit", dict(mss=2**20), "mss"),
    ("LsoV2Transmit", dict(mss=2**20), "mss"),
    ("LsoV2Transmit", dict(tcp_header_offset=1024), "tcp_header_offset"),
    ("LsoV1Transmit", dict(mss=-1), "mss"),
    ("LsoV2Transmit", dict(ip_version=2), "ip_version"),
    ("TcpIpChecksumNblInfo", dict(tcp_header_offset=1024), "tcp_header_offset"),
])
def test_lso_and_checksum_overflow(cls_name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        _ = getattr(ndis, cls_name)(**kwargs).value


def test_lso_field_limits_fit():
    full = ndis.LsoV2Transmit(mss=2**20 - 1, tcp_header_offset=1023, ip_version=1)
    assert full.value == 2**32 - 1


@pytest.mark.parametrize("value,expected", [(0, 0), (0x40000000, 1), (0xBFFFFFFF, 0),
                                            (0xC36005A8, 1)])
def test_lso_type_of(value, expected):
    assert ndis.lso_type_of(value) == expected


@pytest.mark.parametrize("field,bit", [("is_ipv4", 0), ("is_ipv6", 1), ("tcp_checksum", 2),
                                       ("udp_checksum", 3), ("ip_header_checksum", 4)])
def test_checksum_transmit_bits(field, bit):
    assert ndis.TcpIpChecksumNblInfo(**{field: True}).value == 1 << bit


def test_checksum_transmit_offset():
    info = ndis.TcpIpChecksumNblInfo(is_ipv4=True, tcp_checksum=True, ip_header_checksum=True,
                                     tcp_header_offset=34)
    assert info.value == 0x1 | 0x4 | 0x10 | (34 << 16) == 0x00220015
    assert ndis.TcpIpChecksumNblInfo.from_value(0x00220015 | 0xFFE0) == info  # reserved ignored


@pytest.mark.parametrize("field,bit", [
    ("tcp_checksum_failed", 0), ("udp_checksum_failed", 1), ("ip_checksum_failed", 2),
    ("tcp_checksum_succeeded", 3), ("udp_checksum_succeeded", 4), ("ip_checksum_succeeded", 5),
    ("loopback", 6), ("tcp_checksum_value_invalid", 7), ("ip_checksum_value_invalid", 8)])
def test_checksum_receive_bits(field, bit):
    info = ndis.TcpIpChecksumReceiveNblInfo(**{field: True})
    assert info.value == 1 << bit
    assert ndis.TcpIpChecksumReceiveNblInfo.from_value(1 << bit) == info


OVERLAYS = ["IpsecOffloadV2NblInfo", "IpsecOffloadV2ReceiveNblInfo", "IpsecOffloadV2HeaderNblInfo",
            "IpsecOffloadV2HeaderReceiveNblInfo", "IpsecOffloadV2TunnelNblInfo", "LsoV1Transmit",
            "LsoV2Transmit", "LsoV1TransmitComplete", "LsoV2TransmitComplete",
            "TcpIpChecksumNblInfo", "TcpIpChecksumReceiveNblInfo"]


@pytest.mark.parametrize("cls_name", OVERLAYS)
@given(v=st.integers(0, 2**64 - 1))
def test_overlay_decode_never_rejects_and_reencodes(cls_name, v):
    cls = getattr(ndis, cls_name)
    decoded = cls.from_value(v)
    assert cls.from_value(decoded.value) == decoded  # value accepts anything from_value made
    assert cls.from_value(0) == cls()


@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFF))
def test_header_slot_roundtrip(nh, pad, ah, esp):
    info = ndis.IpsecOffloadV2HeaderNblInfo(nh, pad, ah, esp)
    assert info.value == nh | pad << 8 | ah << 16 | esp << 24
    assert ndis.IpsecOffloadV2HeaderNblInfo.from_value(info.value) == info


@given(st.integers(0, 2**20 - 1), st.integers(0, 1023), st.integers(0, 1))
def test_lso_v2_roundtrip(mss, off, ipv):
    info = ndis.LsoV2Transmit(mss, off, ipv)
    assert ndis.LsoV2Transmit.from_value(info.value) == info
    assert ndis.lso_type_of(info.value) == 1
    assert ndis.lso_type_of(ndis.LsoV1Transmit(mss, off).value) == 0


# --- offload parameters and NET_BUFFER_LIST ------------------------------------------------------

def test_offload_parameters_defaults():
    p = ndis.NdisOffloadParameters()
    assert (p.ipsec_v2, p.ipsec_v2_ipv4, p.lso_v1, p.lso_v2_ipv4, p.lso_v2_ipv6) == (0, 0, 0, 0, 0)
    p = ndis.NdisOffloadParameters(ipsec_v2=ndis.OffloadIpsecV2.ESP_ENABLED,
                                   lso_v2_ipv4=ndis.OffloadLso.ENABLED)
    assert (p.ipsec_v2, p.lso_v2_ipv4) == (3, 2)


def test_net_buffer_list_defaults_and_info():
    nbl = ndis.NetBufferList(net_buffers=[ndis.NetBuffer(bytearray(b"\x00" * 60))])
    assert nbl.status == ndis.NdisStatus.SUCCESS and nbl.l2_length == 14 and nbl.info == {}
    assert nbl.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2) == 0
    nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2, 5)
    nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER,
                 ndis.IpsecOffloadV2HeaderNblInfo(next_header=6, esp_header_offset=5))
    assert nbl.get_info(1) == 5  # int and NblInfo keys are interchangeable
    assert nbl.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER) == 0x05000006
    nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2, 0)  # 0 = slot not set
    assert ndis.NblInfo.IPSEC_OFFLOAD_V2 not in nbl.info and nbl.get_info(1) == 0
    with pytest.raises(ValueError, match="info"):
        nbl.set_info(ndis.NblInfo.TCP_LARGE_SEND, 2**64)
    with pytest.raises(ValueError, match="mss"):
        nbl.set_info(ndis.NblInfo.TCP_LARGE_SEND, ndis.LsoV2Transmit(mss=2**20))


def test_net_buffer_holds_data():
    assert ndis.NetBuffer(b"abc").data == b"abc"
    assert ndis.NetBuffer().data == b""
    nbl = ndis.NetBufferList(net_buffers=[ndis.NetBuffer(b"x")], info={2: 7},
                             status=ndis.NdisStatus.FAILURE, l2_length=0)
    assert nbl.get_info(ndis.NblInfo.TCP_LARGE_SEND) == 7 and nbl.l2_length == 0
