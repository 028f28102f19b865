"""numpy dtypes of the kernels' C structs and the codes they share (see _fastpath.pxd).

The compiled kernels and their pure-Python twin both read these layouts; a test checks
them against the C structs (``_fastpath.struct_sizes``).
"""
from __future__ import annotations

import enum
import operator

import numpy as np

NBL_OOB_DTYPE = np.dtype([
    ("offload_handle", np.uint64), ("tunnel_handle", np.uint64), ("lso_info", np.uint64),
    ("checksum_info", np.uint64), ("status", np.uint32), ("first_nb", np.int32),
    ("nb_count", np.int32), ("l2_len", np.uint16), ("next_header", np.uint8),
    ("pad_length", np.uint8), ("ah_off4", np.uint8), ("esp_off4", np.uint8),
    ("reserved", np.uint8, (6,)),
], align=True)

TRANSFORM_DTYPE = np.dtype([
    ("spi", np.uint32), ("seq_hi", np.uint32), ("key_row", np.int32), ("proto", np.uint8),
    ("suite", np.uint8), ("integ", np.uint8), ("iv_len", np.uint8), ("icv_len", np.uint8),
    ("align", np.uint8), ("esn", np.uint8), ("udp_encap", np.uint8), ("salt", np.uint8, (4,)),
], align=True)

SA_RECORD_DTYPE = np.dtype([
    ("handle", np.uint64), ("in_use", np.uint8), ("inbound", np.uint8), ("ipv6", np.uint8),
    ("n_xf", np.uint8), ("udp_type", np.uint8), ("reserved", np.uint8, (3,)),
    ("xf", TRANSFORM_DTYPE, (2,)),
], align=True)

NB_PLAN_DTYPE = np.dtype([
    ("out_len", np.int64), ("body_off", np.int64), ("body_len", np.int64), ("sn64", np.uint64),
    ("out_pos", np.int64), ("frame0", np.int64), ("op0", np.int64), ("rand_off", np.int64),
    ("slot", np.int32), ("nsegs", np.int32), ("nbl", np.int32), ("ip_off", np.int32),
    ("ip_hdr_len", np.int32), ("esp_off", np.int32), ("hdr_len", np.int32),
    ("tcp_off", np.int32), ("mss", np.int32), ("status", np.uint32), ("ipv6", np.uint8),
    ("lso", np.uint8), ("next_header", np.uint8), ("reason", np.uint8), ("fresh_iv", np.uint8),
    ("ah_fresh_iv", np.uint8), ("reserved", np.uint8, (2,)), ("scratch_pos", np.int64), ("ah_off", np.int32),
    ("ah_len", np.int32),
    ("in_sn64", np.uint64), ("in_slot", np.int32), ("in_ip_off", np.int32),
    ("in_ip_hdr_len", np.int32), ("in_end", np.int32), ("in_esp_off", np.int32),
    ("in_ah_off", np.int32), ("in_ah_len", np.int32), ("in_body_len", np.int32),
    ("nested", np.uint8), ("in_ipv6", np.uint8), ("in_fresh_iv", np.uint8),
    ("in_ah_fresh_iv", np.uint8), ("reserved2", np.uint8, (4,)),
], align=True)

WIRE_FRAME_DTYPE = np.dtype([
    ("off", np.int64), ("len", np.int64), ("nbl", np.int32), ("nb", np.int32),
], align=True)

CRYPTO_OP_DTYPE = np.dtype([
    ("auth_off", np.int64), ("text_off", np.int64), ("text_len", np.int64),
    ("icv_off", np.int64), ("ip_off", np.int64), ("key_row", np.int32), ("frame", np.int32),
    ("seq_hi", np.uint32), ("kind", np.uint8), ("pass_no", np.uint8), ("suite", np.uint8),
    ("integ", np.uint8), ("iv_len", np.uint8), ("icv_len", np.uint8), ("esn", np.uint8),
    ("fixup", np.uint8), ("status", np.uint8), ("reserved", np.uint8, (3,)),
    ("nonce", np.uint8, (12,)), ("src_at", np.int32), ("src_off", np.int64),
    ("src_len", np.int32), ("reserved2", np.uint8, (4,)),
], align=True)

RX_SA_KEY_DTYPE = np.dtype([
    ("spi", np.uint32), ("slot", np.int32), ("layer", np.uint8), ("proto", np.uint8),
    ("ipv6", np.uint8), ("udp_encap", np.uint8), ("has_dst", np.uint8), ("has_src", np.uint8),
    ("reserved", np.uint8, (2,)), ("dst", np.uint8, (16,)), ("src", np.uint8, (16,)),
], align=True)

RX_STATE_DTYPE = np.dtype([
    ("top", np.uint64), ("seen", np.uint8), ("tunnel", np.uint8), ("reserved", np.uint8, (2,)),
    ("auth_failures", np.uint32),
], align=True)

RX_PLAN_DTYPE = np.dtype([
    ("ip_off", np.int64), ("ip_end", np.int64), ("esp_off", np.int64), ("text_off", np.int64),
    ("text_len", np.int64), ("icv_off", np.int64), ("seq64", np.uint64), ("handle", np.uint64),
    ("slot", np.int32), ("op", np.int32), ("nh_off", np.int32), ("udp_off", np.int32),
    ("crypto_status", np.uint16), ("ipv6", np.uint8), ("reason", np.uint8),
    ("crypto_done", np.uint8), ("tunnel", np.uint8), ("next_header", np.uint8),
    ("pad_length", np.uint8), ("header_info_set", np.uint8), ("layer", np.uint8),
    ("pad_ok", np.uint8), ("sa_delete_req", np.uint8), ("ah_next_header", np.uint8),
    ("ah_layer", np.uint8), ("next_crypto_done", np.uint8), ("reserved", np.uint8, (1,)),
    ("ah_off", np.int64), ("ah_copy", np.int64), ("ah_seq64", np.uint64), ("ah_op", np.int32),
    ("ah_len", np.int32), ("inner", np.int32), ("reserved2", np.int32),
], align=True)

RX_WINDOW_WORDS = 64
RX_WINDOW_MAX = 64 * RX_WINDOW_WORDS  # the largest anti-replay window, in packets
RX_WINDOW_DTYPE = np.dtype([
    ("top", np.uint64), ("size", np.uint32), ("has_sel", np.uint8), ("sel_ipv6", np.uint8),
    ("src_len", np.uint8), ("dst_len", np.uint8), ("src", np.uint8, (16,)),
    ("dst", np.uint8, (16,)), ("bits", np.uint64, (RX_WINDOW_WORDS,)),
], align=True)

# A handle is (serial << HANDLE_SLOT_BITS) | slot: the kernels find the slot without a
# dictionary, and the record's stored handle proves the handle is not stale (docs/protocol.md).
HANDLE_SLOT_BITS = 20
HANDLE_SLOT_MASK = (1 << HANDLE_SLOT_BITS) - 1


class Suite(enum.IntEnum):
    NONE = 0
    AES_GCM = 1
    AES_GMAC = 2
    AES_CBC_HMAC = 3
    NULL_HMAC = 4
    AH_HMAC = 5  # AH with an HMAC (RFC 4302)
    AH_GMAC = 6  # AH with AES-GMAC (RFC 4543)
    AES_CBC = 7  # ESP AES-CBC without integrity: only inside an AH+ESP bundle (G14)


class Integrity(enum.IntEnum):
    AEAD = 0
    HMAC_MD5_96 = 1
    HMAC_SHA1_96 = 2
    HMAC_SHA256_128 = 3


class IcvSpace(enum.IntEnum):
    """Where a non-LSO frame keeps room for the ESP ICV (docs/spec-gaps.md G4)."""
    AUTO = 0  # reserved if the trailer sits before icv_len bytes, else appended
    RESERVED = 1  # the stack left icv_len bytes after the trailer; the ICV overwrites them
    APPEND = 2  # the frame ends at the trailer; the ICV is appended, lengths patched


class IvSource(enum.IntEnum):
    """Who supplies the ESP IV of non-LSO frames (docs/spec-gaps.md G5). LSO segments always
    get NIC IVs."""
    NIC = 0  # fresh per packet: 64-bit SN for GCM/GMAC, random for CBC
    PACKET = 1  # keep the bytes the stack put in the IV slot


class Config(enum.IntFlag):
    """Offload configuration bits handed to classify."""
    ESP_IPV4 = 1
    ESP_IPV6 = 2
    LSO_V1 = 4
    LSO_V2_IPV4 = 8
    LSO_V2_IPV6 = 16
    LSO_WITH_IPSEC = 32
    AH_IPV4 = 64
    AH_IPV6 = 128
    TUNNEL_ALONE_SINGLE = 256  # docs/spec-gaps.md G13: a lone TunnelHandle is the single SA
    DISABLED_FAIL = 512  # docs/spec-gaps.md G21: a handle while offload is off fails the NBL
    TRANSPORT_TUNNEL = 4096  # TransportTunnelCombined: both handles nest (docs/send-path.md)


class Reason(enum.IntEnum):
    """Why a NET_BUFFER passed unchanged, was processed, or failed (counted per batch)."""
    OK = 0
    PASS_NO_HANDLE = 1
    PASS_DISABLED = 2
    TUNNEL_HANDLE = 3
    UNKNOWN_HANDLE = 4
    INBOUND_HANDLE = 5
    IP_VERSION_MISMATCH = 6
    MALFORMED_IP = 7
    BAD_ESP_OFFSET = 8
    AH_NOT_SUPPORTED = 9
    BAD_TRAILER = 10
    BAD_ALIGNMENT = 11
    SEQ_EXHAUSTED = 12
    LSO_DISABLED = 13
    LSO_BAD_PARAMS = 14
    NBL_FAILED = 15
    BAD_AH_OFFSET = 16
    SPI_MISMATCH = 17
    PROTOCOL_MISMATCH = 18
    DISABLED_WITH_HANDLE = 19
    SEQ_REUSED = 20
    LSO_LIMIT = 21
    OUTPUT_LIMIT = 22
    NESTING = 23  # transport over tunnel: the pair cannot nest (docs/send-path.md)


class OpKind(enum.IntEnum):
    NONE = 0
    ESP_SEAL = 1
    ESP_OPEN = 2
    AH_SIGN = 3
    AH_VERIFY = 4


class OpStatus(enum.IntEnum):
    PENDING = 0
    DONE = 1
    AUTH_FAILED = 2


class Fixup(enum.IntEnum):
    NONE = 0
    UDP6_CHECKSUM = 1


PROTO_ESP = 50
PROTO_AH = 51


class RxReason(enum.IntEnum):
    """What the NIC found in a received frame (docs/receive-path.md)."""
    OK = 0
    OFFLOAD_OFF = 1
    NOT_IP = 2
    NOT_IPSEC = 3
    FRAGMENT = 4
    KEEPALIVE = 5
    IKE = 6
    SHORT = 7
    NO_SA = 8
    GATED = 9
    AUTH_FAILED = 10
    BAD_SYNTAX = 11
    BAD_PROTOCOL = 12


class RxConfig(enum.IntFlag):
    """Receive configuration bits beyond Config.ESP_IPV4 / ESP_IPV6."""
    IPV4_OPTIONS = 1024
    IPV6_EXT_HEADERS = 2048


class Delivery(enum.IntEnum):
    """What the host stack did with a received frame."""
    CLEAR = 0
    DECAP = 1
    MALFORMED = 2
    NO_SA = 3
    CRYPTO = 4
    REPLAY = 5
    SELECTOR = 6
    ECN = 7
    DUMMY = 8
    INNER = 9


RX_REASON_COUNT = len(RxReason)

# UDP-ESP on receive (RFC 3948 §2): the NAT-T port, and how many ports the NIC parses as
# UDP-ESP (docs/spec-gaps.md G31); _fastpath.pxd's NatT
NAT_T_PORT = 4500
NAT_T_MAX_PORTS = 8


def nat_t_port_set(value, name: str = "nat_t_ports") -> tuple[int, ...]:
    """``value`` as the NIC's NAT-T port set: a tuple of at most NAT_T_MAX_PORTS UDP ports
    (1-65535), duplicates dropped, in order; else ValueError naming ``name``."""
    ports: list[int] = []
    ok = not isinstance(value, (str, bytes))
    try:
        for v in value:
            port = operator.index(v)
            ok = ok and not isinstance(v, bool) and 1 <= port <= 0xFFFF
            ports.append(port)
    except TypeError:
        ok = False
    if not ok or len(set(ports)) > NAT_T_MAX_PORTS:
        raise ValueError(f"{name} must be at most {NAT_T_MAX_PORTS} UDP ports from 1 to 65535, "
                         f"got {value!r}")
    return tuple(dict.fromkeys(ports))


STATUS_SUCCESS = 0x00000000
STATUS_FAILURE = 0xC0000001
STATUS_INVALID_PACKET = 0xC001000F
STATUS_RESOURCES = 0xC000009A

# The NDIS_STATUS each reason completes its NBL with (docs/send-path.md; docs/protocol.md,
# section 15).
REASON_STATUS = {
    Reason.OK: STATUS_SUCCESS,
    Reason.PASS_NO_HANDLE: STATUS_SUCCESS,
    Reason.PASS_DISABLED: STATUS_SUCCESS,
    Reason.TUNNEL_HANDLE: STATUS_FAILURE,
    Reason.UNKNOWN_HANDLE: STATUS_FAILURE,
    Reason.INBOUND_HANDLE: STATUS_FAILURE,
    Reason.IP_VERSION_MISMATCH: STATUS_FAILURE,
    Reason.MALFORMED_IP: STATUS_INVALID_PACKET,
    Reason.BAD_ESP_OFFSET: STATUS_INVALID_PACKET,
    Reason.AH_NOT_SUPPORTED: STATUS_FAILURE,
    Reason.BAD_TRAILER: STATUS_INVALID_PACKET,
    Reason.BAD_ALIGNMENT: STATUS_INVALID_PACKET,
    Reason.SEQ_EXHAUSTED: STATUS_FAILURE,
    Reason.LSO_DISABLED: STATUS_FAILURE,
    Reason.LSO_BAD_PARAMS: STATUS_FAILURE,
    Reason.NBL_FAILED: STATUS_FAILURE,  # replaced by the failing sibling's status
    Reason.BAD_AH_OFFSET: STATUS_INVALID_PACKET,
    Reason.SPI_MISMATCH: STATUS_FAILURE,
    Reason.PROTOCOL_MISMATCH: STATUS_FAILURE,
    Reason.DISABLED_WITH_HANDLE: STATUS_FAILURE,
    Reason.SEQ_REUSED: STATUS_FAILURE,
    Reason.LSO_LIMIT: STATUS_FAILURE,
    Reason.OUTPUT_LIMIT: STATUS_RESOURCES,
    Reason.NESTING: STATUS_FAILURE,
}

# The counters tx_plan fills per batch: one per Reason, then these NBL status counts.
REASON_COUNT = len(Reason)
STATUS_COUNTER_NAMES = ("SUCCESS", "FAILURE", "INVALID_PACKET", "OTHER")
COUNTERS = REASON_COUNT + len(STATUS_COUNTER_NAMES)
