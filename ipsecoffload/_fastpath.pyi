"""Type stubs of the compiled stages and backends (ipsecoffload/_fastpath.pyx); the package
ipsecoffload/datapath/twin/ is the pure-Python twin of every stage."""
import enum
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import numpy.typing as npt

_U8 = npt.NDArray[np.uint8]

class _Batch(Protocol):
    arena: _U8
    nb_off: npt.NDArray[np.int64]
    nb_len: npt.NDArray[np.int64]
    nb_nbl: npt.NDArray[np.int32]
    oob_bytes: _U8

class _Table(Protocol):
    records_bytes: _U8
    keys: tuple[Any, ...]

STRUCT_SIZES: dict[str, int]
BOUNDS_CHECKED: bool
COUNTERS: int
GHASH_PATHS: tuple[str, ...]
GHASH_KEY_BYTES: int
GHASH_ENV: str

def struct_offsets() -> dict[str, dict[str, int]]: ...
def tx_classify(batch: _Batch, records: _U8, config: int, icv_space: int, iv_source: int,
                plans: _U8) -> None: ...
def tx_plan(batch: _Batch, records: _U8, plans: _U8, nbl_status: npt.NDArray[np.uint32],
            lso_done: npt.NDArray[np.uint64],
            counters: npt.NDArray[np.int64]) -> tuple[int, int, int, int]: ...
# tx_plan's first value: output arena bytes, the frames and then the AH scratch
def tx_emit(batch: _Batch, records: _U8, plans: _U8, rand: _U8, out: _U8, frames: _U8,
            ops: _U8, out_of_place: bool = ...) -> None: ...
def tx_fixup(out: _U8, ops: _U8) -> None: ...
def tx_mark(batch: _Batch, records: _U8, plans: _U8,
            marks: npt.NDArray[np.uint64]) -> int: ...
def tx_limit(batch: _Batch, plans: _U8, limits: npt.NDArray[np.int64]) -> int: ...
def tx_run(batch: _Batch, table: _Table, config: int, icv_space: int, iv_source: int,
           backends: Mapping[int, Any], random_source: Callable[[int], bytes],
           marks: Optional[npt.NDArray[np.uint64]] = ..., mark_lock: Any = ...,
           limits: Optional[npt.NDArray[np.int64]] = ...,
           totals: Optional[npt.NDArray[np.int64]] = ..., reuse: Optional[_U8] = ...
           ) -> tuple[_U8, _U8, _U8, _U8, npt.NDArray[np.uint32], npt.NDArray[np.uint64],
                      npt.NDArray[np.int64]]: ...
def output_bounds(batch: _Batch) -> tuple[npt.NDArray[np.int64], int]: ...
def internet_checksum_sum(data: _U8 | bytes, seed: int = ...) -> int: ...
def op_groups(ops: _U8) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def run_op_groups(arena: _U8, ops: _U8, keys: tuple[Any, ...], backends: Mapping[int, Any],
                  direction: str, src: Optional[_U8] = ...) -> None: ...
def ops_gather(arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], src: _U8) -> None: ...

def ghash_cpu_paths() -> tuple[str, ...]: ...
def cpu_has_vaes512() -> bool: ...
def ghash_selftest(name: str) -> bool: ...
def ghash_usable_paths() -> tuple[str, ...]: ...
def ghash_default_path() -> str: ...
def ghash_digest(path: str, h: _U8 | bytes, aad: _U8 | bytes, data: _U8 | bytes) -> bytes: ...
def gcm_seal_raw(path: str, h: bytes, aad: bytes, text: bytes, ks: bytes,
                 ekj0: bytes) -> tuple[bytes, bytes]: ...
def gcm_seal_from_raw(path: str, h: bytes, aad: bytes, text: bytes, src: bytes, at: int,
                      ks: bytes, ekj0: bytes) -> tuple[bytes, bytes]: ...
def gcm_open_raw(path: str, h: bytes, aad: bytes, text: bytes, ks: bytes,
                 ekj0: bytes) -> tuple[bytes, bytes]: ...
def gcm_open_from_raw(path: str, h: bytes, aad: bytes, text: bytes, src: bytes, at: int,
                      ks: bytes, ekj0: bytes) -> tuple[bytes, bytes]: ...
def ghash_key_context(h: _U8 | bytes) -> _U8: ...
def ghash_key_bytes(h: _U8 | bytes) -> bytes: ...
def _ghash_reset_default() -> None: ...

GCM_KEYSTREAM_CHUNK: int

class GcmBatchedBackend:
    name: str
    reads_source: bool
    def seal(self, arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any,
             src: Optional[_U8] = ...) -> None: ...
    def open(self, arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any,
             src: Optional[_U8] = ...) -> None: ...

class CbcHmacBackend:
    name: str
    def seal(self, arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any) -> None: ...
    def open(self, arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any) -> None: ...

# -- the cpdef enums of _fastpath.pxd: each one a class, its members also module constants

class Config(enum.IntEnum):
    CFG_ESP_IPV4 = 1
    CFG_ESP_IPV6 = 2
    CFG_LSO_V1 = 4
    CFG_LSO_V2_IPV4 = 8
    CFG_LSO_V2_IPV6 = 16
    CFG_LSO_WITH_IPSEC = 32
    CFG_AH_IPV4 = 64
    CFG_AH_IPV6 = 128
    CFG_TUNNEL_ALONE_SINGLE = 256
    CFG_DISABLED_FAIL = 512
    CFG_TRANSPORT_TUNNEL = 4096

class Fixup(enum.IntEnum):
    FIXUP_NONE = 0
    FIXUP_UDP6_CHECKSUM = 1

class IcvSpace(enum.IntEnum):
    ICV_SPACE_AUTO = 0
    ICV_SPACE_RESERVED = 1
    ICV_SPACE_APPEND = 2

class Integrity(enum.IntEnum):
    INTEG_AEAD = 0
    INTEG_HMAC_MD5_96 = 1
    INTEG_HMAC_SHA1_96 = 2
    INTEG_HMAC_SHA256_128 = 3

class IpProto(enum.IntEnum):
    PROTO_ESP = 50
    PROTO_AH = 51

class IvSource(enum.IntEnum):
    IV_SOURCE_NIC = 0
    IV_SOURCE_PACKET = 1

class OpKind(enum.IntEnum):
    OP_NONE = 0
    OP_ESP_SEAL = 1
    OP_ESP_OPEN = 2
    OP_AH_SIGN = 3
    OP_AH_VERIFY = 4

class OpStatus(enum.IntEnum):
    OP_PENDING = 0
    OP_DONE = 1
    OP_AUTH_FAILED = 2

class Reason(enum.IntEnum):
    REASON_OK = 0
    REASON_PASS_NO_HANDLE = 1
    REASON_PASS_DISABLED = 2
    REASON_TUNNEL_HANDLE = 3
    REASON_UNKNOWN_HANDLE = 4
    REASON_INBOUND_HANDLE = 5
    REASON_IP_VERSION_MISMATCH = 6
    REASON_MALFORMED_IP = 7
    REASON_BAD_ESP_OFFSET = 8
    REASON_AH_NOT_SUPPORTED = 9
    REASON_BAD_TRAILER = 10
    REASON_BAD_ALIGNMENT = 11
    REASON_SEQ_EXHAUSTED = 12
    REASON_LSO_DISABLED = 13
    REASON_LSO_BAD_PARAMS = 14
    REASON_NBL_FAILED = 15
    REASON_BAD_AH_OFFSET = 16
    REASON_SPI_MISMATCH = 17
    REASON_PROTOCOL_MISMATCH = 18
    REASON_DISABLED_WITH_HANDLE = 19
    REASON_SEQ_REUSED = 20
    REASON_LSO_LIMIT = 21
    REASON_OUTPUT_LIMIT = 22
    REASON_NESTING = 23
    REASON_COUNT = 24

class StatusCounter(enum.IntEnum):
    COUNT_SUCCESS = 0
    COUNT_FAILURE = 1
    COUNT_INVALID_PACKET = 2
    COUNT_OTHER_STATUS = 3
    STATUS_COUNTERS = 4

class Suite(enum.IntEnum):
    SUITE_NONE = 0
    SUITE_AES_GCM = 1
    SUITE_AES_GMAC = 2
    SUITE_AES_CBC_HMAC = 3
    SUITE_NULL_HMAC = 4
    SUITE_AH_HMAC = 5
    SUITE_AH_GMAC = 6
    SUITE_AES_CBC = 7

CFG_ESP_IPV4: int
CFG_ESP_IPV6: int
CFG_LSO_V1: int
CFG_LSO_V2_IPV4: int
CFG_LSO_V2_IPV6: int
CFG_LSO_WITH_IPSEC: int
CFG_AH_IPV4: int
CFG_AH_IPV6: int
CFG_TUNNEL_ALONE_SINGLE: int
CFG_DISABLED_FAIL: int
CFG_TRANSPORT_TUNNEL: int
FIXUP_NONE: int
FIXUP_UDP6_CHECKSUM: int
ICV_SPACE_AUTO: int
ICV_SPACE_RESERVED: int
ICV_SPACE_APPEND: int
INTEG_AEAD: int
INTEG_HMAC_MD5_96: int
INTEG_HMAC_SHA1_96: int
INTEG_HMAC_SHA256_128: int
PROTO_ESP: int
PROTO_AH: int
IV_SOURCE_NIC: int
IV_SOURCE_PACKET: int
OP_NONE: int
OP_ESP_SEAL: int
OP_ESP_OPEN: int
OP_AH_SIGN: int
OP_AH_VERIFY: int
OP_PENDING: int
OP_DONE: int
OP_AUTH_FAILED: int
REASON_OK: int
REASON_PASS_NO_HANDLE: int
REASON_PASS_DISABLED: int
REASON_TUNNEL_HANDLE: int
REASON_UNKNOWN_HANDLE: int
REASON_INBOUND_HANDLE: int
REASON_IP_VERSION_MISMATCH: int
REASON_MALFORMED_IP: int
REASON_BAD_ESP_OFFSET: int
REASON_AH_NOT_SUPPORTED: int
REASON_BAD_TRAILER: int
REASON_BAD_ALIGNMENT: int
REASON_SEQ_EXHAUSTED: int
REASON_LSO_DISABLED: int
REASON_LSO_BAD_PARAMS: int
REASON_NBL_FAILED: int
REASON_BAD_AH_OFFSET: int
REASON_SPI_MISMATCH: int
REASON_PROTOCOL_MISMATCH: int
REASON_DISABLED_WITH_HANDLE: int
REASON_SEQ_REUSED: int
REASON_LSO_LIMIT: int
REASON_OUTPUT_LIMIT: int
REASON_NESTING: int
REASON_COUNT: int
COUNT_SUCCESS: int
COUNT_FAILURE: int
COUNT_INVALID_PACKET: int
COUNT_OTHER_STATUS: int
STATUS_COUNTERS: int
SUITE_NONE: int
SUITE_AES_GCM: int
SUITE_AES_GMAC: int
SUITE_AES_CBC_HMAC: int
SUITE_NULL_HMAC: int
SUITE_AH_HMAC: int
SUITE_AH_GMAC: int
SUITE_AES_CBC: int

class BatchView:
    """A validated C view of a batch (the stages' input); built by the stages."""
    def __init__(self, batch: _Batch) -> None: ...

# -- receive (datapath/rx_*.pxi, host/rx_deliver.pxi)
class _RxTable(Protocol):
    records_bytes: _U8
    rx_keys: _U8
    keys: tuple[Any, ...]

GCM_ONE_CALL_ENV: str
GCM_ONE_CALL_DEFAULT: int
GCM_ONE_CALL_NEVER: int
GCM_ONE_CALL_XTS: int
def gcm_one_call_min() -> int: ...
def gcm_one_call_reset() -> None: ...
def rx_nested_candidates(plans: _U8, n: int) -> int: ...
def rx_run(batch: _Batch, table: _RxTable, rx_state: npt.NDArray[Any], config: int,
           backends: Mapping[int, Any], lock: Any, delete_after: int = ...,
           nat_t_ports: Iterable[int] = ..., reuse: Optional[_U8] = ...
           ) -> tuple[_U8, _U8, _U8, npt.NDArray[np.int64]]: ...
def rx_deliver(batch: _Batch, out: _U8, plans: _U8, slot_sa: npt.NDArray[np.int32],
               slot_handle: npt.NDArray[np.uint64], windows: npt.NDArray[Any],
               reuse: Optional[_U8] = ...
               ) -> tuple[_U8, _U8, npt.NDArray[np.int32], npt.NDArray[np.int64],
                          npt.NDArray[np.int64]]: ...

class RxReason(enum.IntEnum):
    RX_OK = 0
    RX_OFFLOAD_OFF = 1
    RX_NOT_IP = 2
    RX_NOT_IPSEC = 3
    RX_FRAGMENT = 4
    RX_KEEPALIVE = 5
    RX_IKE = 6
    RX_SHORT = 7
    RX_NO_SA = 8
    RX_GATED = 9
    RX_AUTH_FAILED = 10
    RX_BAD_SYNTAX = 11
    RX_BAD_PROTOCOL = 12
    RX_REASON_COUNT = 13

class NatT(enum.IntEnum):
    NAT_T_PORT = 4500
    NAT_T_MAX_PORTS = 8

class CryptoStatusCode(enum.IntEnum):
    CRYPTO_SUCCESS = 0
    CRYPTO_GENERIC_ERROR = 1
    CRYPTO_TRANSPORT_AH_AUTH_FAILED = 2
    CRYPTO_TRANSPORT_ESP_AUTH_FAILED = 3
    CRYPTO_TUNNEL_AH_AUTH_FAILED = 4
    CRYPTO_TUNNEL_ESP_AUTH_FAILED = 5
    CRYPTO_INVALID_PACKET_SYNTAX = 6
    CRYPTO_INVALID_PROTOCOL = 7

class RxConfig(enum.IntEnum):
    RXCFG_IPV4_OPTIONS = 1024
    RXCFG_IPV6_EXT_HEADERS = 2048

class Delivery(enum.IntEnum):
    DELIVERY_CLEAR = 0
    DELIVERY_DECAP = 1
    DELIVERY_MALFORMED = 2
    DELIVERY_NO_SA = 3
    DELIVERY_CRYPTO = 4
    DELIVERY_REPLAY = 5
    DELIVERY_SELECTOR = 6
    DELIVERY_ECN = 7
    DELIVERY_DUMMY = 8
    DELIVERY_INNER = 9

RX_OK: int
RX_OFFLOAD_OFF: int
RX_NOT_IP: int
RX_NOT_IPSEC: int
RX_FRAGMENT: int
RX_KEEPALIVE: int
RX_IKE: int
RX_SHORT: int
RX_NO_SA: int
RX_GATED: int
RX_AUTH_FAILED: int
RX_BAD_SYNTAX: int
RX_BAD_PROTOCOL: int
RX_REASON_COUNT: int
NAT_T_PORT: int
NAT_T_MAX_PORTS: int
CRYPTO_SUCCESS: int
CRYPTO_GENERIC_ERROR: int
CRYPTO_TRANSPORT_AH_AUTH_FAILED: int
CRYPTO_TRANSPORT_ESP_AUTH_FAILED: int
CRYPTO_TUNNEL_AH_AUTH_FAILED: int
CRYPTO_TUNNEL_ESP_AUTH_FAILED: int
CRYPTO_INVALID_PACKET_SYNTAX: int
CRYPTO_INVALID_PROTOCOL: int
RXCFG_IPV4_OPTIONS: int
RXCFG_IPV6_EXT_HEADERS: int
DELIVERY_CLEAR: int
DELIVERY_DECAP: int
DELIVERY_MALFORMED: int
DELIVERY_NO_SA: int
DELIVERY_CRYPTO: int
DELIVERY_REPLAY: int
DELIVERY_SELECTOR: int
DELIVERY_ECN: int
DELIVERY_DUMMY: int
DELIVERY_INNER: int

# host framing (host/tx_frame.pxi) and capture scans (io/capture_scan.pxi); tables as uint8
# views of the host/tx_frame.py dtypes
HOST_STRUCT_SIZES: dict[str, int]
def host_struct_offsets() -> dict[str, dict[str, int]]: ...
def host_classify(arena: _U8, pkts: _U8, n: int, selectors: _U8, nsel: int, mss: int) -> None: ...
def host_pack(packets: list, out: _U8, pkts: _U8) -> None: ...
def host_pack_rows(packets: list, pkts: _U8) -> int: ...
def host_parse_for_stack(arena: _U8, pkts: _U8, n: int) -> None: ...
def host_mark_lso(arena: _U8, pkts: _U8, n: int, mss: int, sas: _U8, nsa: int,
                  limits: npt.NDArray[np.int64]) -> None: ...
def host_missing_bundles(pkts: _U8, n: int, sas: _U8, nsa: int) -> list[int]: ...
def host_frame(arena: _U8, pkts: _U8, start: int, end: int, sas: _U8, nsa: int, l2_mode: int,
               macs: bytes, ttl: int, df_policy: int, ipv4_id: int, mss: int, out: _U8,
               nb_off: npt.NDArray[np.int64], nb_len: npt.NDArray[np.int64],
               oob: _U8) -> tuple[int, int, int, int]: ...
def pcap_scan(buf: _U8, start: int, end: int, big: int, frac_ns: int, max_incl: int, link: int,
              pkts: _U8, max_n: int) -> tuple[int, int, int, int]: ...
def pcapng_scan(buf: _U8, start: int, end: int, big: int, iface_link: npt.NDArray[np.int64],
                iface_resol: npt.NDArray[np.int64], iface_snap: npt.NDArray[np.int64],
                max_incl: int, pkts: _U8, max_n: int) -> tuple[int, int, int, int]: ...
def capture_emit(fmt: int, out: _U8, pkts: _U8, start: int, end: int, arena: _U8,
                 wire: _U8 | Sequence[_U8],
                 wire_table: _U8, nframes: int, snaplen: int, unit_ns: npt.NDArray[np.int64],
                 frames_per_pkt: npt.NDArray[np.int64],
                 bytes_per_pkt: npt.NDArray[np.int64]) -> int: ...
def capture_link_parse(arena: _U8, pkts: _U8, n: int, vlan_types: npt.NDArray[np.int64],
                       ipv4_type: int, ipv6_type: int) -> int: ...
def capture_account(pkts: _U8, n: int, frames_per_pkt: npt.NDArray[np.int64],
                    bytes_per_pkt: npt.NDArray[np.int64], status_per_pkt: npt.NDArray[np.int64],
                    n_sa: int, sums: npt.NDArray[np.int64]) -> tuple[int, int, int, int, int]: ...
def reserve_blocks(fd: int, offset: int, length: int) -> int: ...
def capture_pieces(fmt: int, heads: _U8, pieces: npt.NDArray[np.uint64], pkts: _U8,
                   start: int, end: int, wire: _U8 | Sequence[_U8], wire_table: _U8,
                   nframes: int, snaplen: int, unit_ns: npt.NDArray[np.int64],
                   frames_per_pkt: npt.NDArray[np.int64],
                   bytes_per_pkt: npt.NDArray[np.int64]) -> tuple[int, int]: ...
def write_pieces(fd: int, pieces: npt.NDArray[np.uint64], n: int) -> int: ...
HAVE_WRITE_PIECES: bool
def bytes_slices(arena: _U8, off: npt.NDArray[np.int64], length: npt.NDArray[np.int64]) -> list[bytes]: ...

class PktKind(enum.IntEnum):
    PKT_DROP = 0
    PKT_NOT_IP = 1
    PKT_CLEAR = 2
    PKT_ESP = 3
    PKT_LSO = 4

class PktFault(enum.IntEnum):
    FAULT_NONE = 0
    FAULT_EMPTY = 1
    FAULT_NOT_IP_VERSION = 2
    FAULT_TRUNCATED = 3
    FAULT_BAD_IPV4 = 4
    FAULT_BAD_TCP = 5
    FAULT_LINK_TRUNCATED = 6
    FAULT_FRAGMENT = 7
    FAULT_WRONG_VERSION = 16
    FAULT_TOO_LONG = 17
    FAULT_ESP_OFFSET = 18
    FAULT_LSO_PARAMS = 19
    FAULT_NO_BUNDLE = 20
    FAULT_EXHAUSTED = 21
    FAULT_ARENA = 22

class ScanStatus(enum.IntEnum):
    SCAN_MORE = 0
    SCAN_FULL = 1
    SCAN_CORRUPT = 2
    SCAN_BLOCK = 3
    SCAN_OVERSIZE = 4

PKT_DROP: int
PKT_NOT_IP: int
PKT_CLEAR: int
PKT_ESP: int
PKT_LSO: int
FAULT_NONE: int
FAULT_EMPTY: int
FAULT_NOT_IP_VERSION: int
FAULT_TRUNCATED: int
FAULT_BAD_IPV4: int
FAULT_BAD_TCP: int
FAULT_LINK_TRUNCATED: int
FAULT_FRAGMENT: int
FAULT_WRONG_VERSION: int
FAULT_TOO_LONG: int
FAULT_ESP_OFFSET: int
FAULT_LSO_PARAMS: int
FAULT_NO_BUNDLE: int
FAULT_EXHAUSTED: int
FAULT_ARENA: int
SCAN_MORE: int
SCAN_FULL: int
SCAN_CORRUPT: int
SCAN_BLOCK: int
SCAN_OVERSIZE: int

def ah_sign_hmac(arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any,
                 verify: bool = ...) -> None: ...
def cbc_only_seal(arena: _U8, ops: _U8, idx: npt.NDArray[np.int32], keys: Any,
                  decrypt: bool = ...) -> None: ...
