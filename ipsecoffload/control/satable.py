"""The miniport's table of offloaded SAs: OID semantics (docs/protocol.md), opaque handles, and the
compiled per-SA record array the kernels read.

Thread safety: OIDs run on the direct path, concurrently with sends (docs/protocol.md item 8).
Every change builds a new record array and key tuple and publishes both in one reference
assignment; a send takes that pair once per batch and sees one consistent table.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from .. import ndis
from ..crypto.keys import SaKeys
from ..datapath.layout import (HANDLE_SLOT_BITS, HANDLE_SLOT_MASK, PROTO_AH, PROTO_ESP,
                               RX_SA_KEY_DTYPE, RX_STATE_DTYPE, SA_RECORD_DTYPE, Integrity, Suite)
from ..ndis import AuthenticationAlgorithm as Auth
from ..ndis import EncryptionAlgorithm as Enc
from ..ndis import NdisStatus

MAX_CAPACITY = 1 << HANDLE_SLOT_BITS
# docs/spec-gaps.md G27: a handle is (serial << HANDLE_SLOT_BITS) | slot and must fit the 32-bit
# OffloadHandle of the x86 layout, so the serial counts 1 .. MAX_SERIAL and then starts again
MAX_SERIAL = (1 << (32 - HANDLE_SLOT_BITS)) - 1

_GCM_KEY_BYTES = {Enc.AES_GCM_128: 16, Enc.AES_GCM_192: 24, Enc.AES_GCM_256: 32}
_GMAC_KEY_BYTES = {Auth.AES_GCM_128: 16, Auth.AES_GCM_192: 24, Auth.AES_GCM_256: 32}
_CBC_KEY_BYTES = {Enc.AES_CBC_128: 16, Enc.AES_CBC_192: 24, Enc.AES_CBC_256: 32}
# HMAC transforms: (integrity code, ICV bytes, RFC key bytes) — docs/protocol.md
_HMACS = {Auth.MD5: (Integrity.HMAC_MD5_96, 12, 16),
          Auth.SHA_1: (Integrity.HMAC_SHA1_96, 12, 20),
          Auth.SHA_256: (Integrity.HMAC_SHA256_128, 16, 32)}
# AdditionalInfo carries the GCM ICV length, in bytes or bits (docs/spec-gaps.md G2); 0 means 16.
_ICV_FROM_ADDITIONAL_INFO = {0: 16, 8: 8, 12: 12, 16: 16, 64: 8, 96: 12, 128: 16}


class SaRejected(Exception):
    """One ADD_SA entry cannot be offloaded; carries the NDIS_STATUS and the reason."""

    def __init__(self, status: NdisStatus, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class TableSnapshot:
    records: np.ndarray  # SA_RECORD_DTYPE, read-only
    keys: tuple = field(repr=False)  # SaKeys or None per key row (slot * 2 + layer)
    records_bytes: np.ndarray = field(repr=False)  # the same memory as uint8, for the kernels
    rx_keys: Optional[np.ndarray] = field(repr=False, default=None)
    # ^ RX_SA_KEY_DTYPE rows as bytes, sorted by SPI; None until SaTable.snapshot() builds it


def _single_bit(owner: str, value: int) -> None:
    if value & (value - 1):
        raise SaRejected(NdisStatus.INVALID_DATA, f"{owner} holds more than one algorithm bit")


def _key(blob: bytes, info: ndis.IpsecOffloadV2AlgorithmInfo, owner: str) -> bytes:
    """docs/protocol.md: a key is blob[KeyOffsetBytes : KeyOffsetBytes + KeyLength]."""
    start, length = info.key_offset_bytes, info.key_length
    if start < 0 or length < 0 or start + length > len(blob):
        raise SaRejected(NdisStatus.INVALID_DATA,
                         f"{owner} key range [{start}, {start + length}) lies outside the "
                         f"{len(blob)}-byte key material")
    return blob[start:start + length]


def compile_sa(sa: ndis.IpsecOffloadV2SecurityAssociation, blob: bytes,
               caps: ndis.NdisIpsecOffloadV2, strict_salt: bool, *, ipv6: bool = False,
               in_bundle: bool = False) -> tuple[dict, SaKeys]:
    """Validate one SecAssoc (ESP or AH) and choose its variant once (style: 'choose the
    variant once'). ``ipv6``: the bundle's IP version (the AH alignment); ``in_bundle``: the
    ESP entry of an AH+ESP bundle (encryption without integrity is legal there, G14).

    Returns the record fields (``proto`` included) and the keys; raises SaRejected with the
    status docs/protocol.md section 15 gives.
    """
    if sa.operation == ndis.IpsecOperation.AH:
        return compile_ah(sa, blob, caps, strict_salt, ipv6=ipv6)
    if sa.operation != ndis.IpsecOperation.ESP:
        raise SaRejected(NdisStatus.INVALID_DATA, f"Operation {sa.operation} is neither AH nor ESP")
    if not caps.esp:
        raise SaRejected(NdisStatus.NOT_SUPPORTED, "ESP is not enabled in the capabilities")
    if sa.spi == 0:
        raise SaRejected(NdisStatus.INVALID_DATA, "SPI 0 is never valid (RFC 4303)")
    esn = bool(sa.flags & ndis.IPSEC_OFFLOAD_V2_ESN_SA)
    if esn and not caps.extended_sequence_numbers:
        raise SaRejected(NdisStatus.NOT_SUPPORTED, "ESN is not enabled in the capabilities")
    enc, auth = sa.encryption_algorithm, sa.authentication_algorithm
    _single_bit("EncryptionAlgorithm.Identifier", enc.identifier)
    if enc.identifier and not enc.identifier & caps.encryption_algorithms:
        raise SaRejected(NdisStatus.NOT_SUPPORTED,
                         f"encryption algorithm {Enc(enc.identifier)!r} is not enabled")

    if enc.identifier in _GCM_KEY_BYTES:
        # Combined mode: only EncryptionAlgorithm counts (docs/protocol.md)
        key, salt = _aes_key_and_salt(_key(blob, enc, "EncryptionAlgorithm"),
                                      _GCM_KEY_BYTES[Enc(enc.identifier)], strict_salt,
                                      "EncryptionAlgorithm")
        icv = _ICV_FROM_ADDITIONAL_INFO.get(enc.additional_info)
        if icv is None:
            raise SaRejected(NdisStatus.INVALID_DATA,
                             f"EncryptionAlgorithm.AdditionalInfo {enc.additional_info} is not an "
                             f"ICV length (8, 12, 16 bytes or 64, 96, 128 bits)")
        return (dict(proto=PROTO_ESP, suite=Suite.AES_GCM, integ=Integrity.AEAD, iv_len=8, icv_len=icv,
                     align=4, esn=esn),
                SaKeys(Suite.AES_GCM, Integrity.AEAD, icv, esn, enc_key=key, salt=salt))

    _single_bit("AuthenticationAlgorithm.Identifier", auth.identifier)
    if auth.identifier and not auth.identifier & caps.authentication_algorithms:
        raise SaRejected(NdisStatus.NOT_SUPPORTED,
                         f"authentication algorithm {Auth(auth.identifier)!r} is not enabled")
    if not auth.identifier and in_bundle and enc.identifier in _CBC_KEY_BYTES:
        # docs/spec-gaps.md G14: encryption only is legal when the bundle's AH authenticates
        key = _key(blob, enc, "EncryptionAlgorithm")
        want = _CBC_KEY_BYTES[Enc(enc.identifier)]
        if len(key) != want:
            raise SaRejected(NdisStatus.INVALID_DATA,
                             f"EncryptionAlgorithm.KeyLength is {len(key)}; "
                             f"{Enc(enc.identifier).name} takes {want}")
        return (dict(proto=PROTO_ESP, suite=Suite.AES_CBC, integ=Integrity.AEAD, iv_len=16,
                     icv_len=0, align=16, esn=esn),
                SaKeys(Suite.AES_CBC, Integrity.AEAD, 0, esn, enc_key=key))
    if not auth.identifier:
        # docs/protocol.md G14: no IPsec packet without integrity
        raise SaRejected(NdisStatus.NOT_SUPPORTED, "ESP without integrity is not offloaded")
    if enc.identifier in (0, Enc.NONE) and auth.identifier in _GMAC_KEY_BYTES:
        # ESP-GMAC (RFC 4543): the key travels in AuthenticationAlgorithm (docs/spec-gaps.md G3)
        key, salt = _aes_key_and_salt(_key(blob, auth, "AuthenticationAlgorithm"),
                                      _GMAC_KEY_BYTES[Auth(auth.identifier)], strict_salt,
                                      "AuthenticationAlgorithm")
        if auth.additional_info not in (0, 16, 128):
            raise SaRejected(NdisStatus.INVALID_DATA, "AES-GMAC only has a 16-byte ICV")
        return (dict(proto=PROTO_ESP, suite=Suite.AES_GMAC, integ=Integrity.AEAD, iv_len=8, icv_len=16, align=4,
                     esn=esn),
                SaKeys(Suite.AES_GMAC, Integrity.AEAD, 16, esn, enc_key=key, salt=salt))
    if auth.identifier not in _HMACS:
        raise SaRejected(NdisStatus.NOT_SUPPORTED,
                         f"authentication algorithm {Auth(auth.identifier)!r} cannot go with "
                         f"encryption {enc.identifier:#x}")
    integ, icv, rfc_key_len = _HMACS[Auth(auth.identifier)]
    auth_key = _key(blob, auth, "AuthenticationAlgorithm")
    if not auth_key:
        raise SaRejected(NdisStatus.INVALID_DATA, "AuthenticationAlgorithm.KeyLength is 0")
    if len(auth_key) != rfc_key_len:
        warnings.warn(f"HMAC key of {len(auth_key)} bytes; the RFC length is {rfc_key_len}",
                      stacklevel=3)
    if enc.identifier in (0, Enc.NONE):
        return (dict(proto=PROTO_ESP, suite=Suite.NULL_HMAC, integ=integ, iv_len=0, icv_len=icv, align=4,
                     esn=esn),
                SaKeys(Suite.NULL_HMAC, integ, icv, esn, auth_key=auth_key))
    if enc.identifier in _CBC_KEY_BYTES:
        key = _key(blob, enc, "EncryptionAlgorithm")
        want = _CBC_KEY_BYTES[Enc(enc.identifier)]
        if len(key) != want:
            raise SaRejected(NdisStatus.INVALID_DATA,
                             f"EncryptionAlgorithm.KeyLength is {len(key)}; "
                             f"{Enc(enc.identifier).name} takes {want}")
        return (dict(proto=PROTO_ESP, suite=Suite.AES_CBC_HMAC, integ=integ, iv_len=16, icv_len=icv, align=16,
                     esn=esn),
                SaKeys(Suite.AES_CBC_HMAC, integ, icv, esn, enc_key=key, auth_key=auth_key))
    raise SaRejected(NdisStatus.NOT_SUPPORTED,
                     f"encryption algorithm {Enc(enc.identifier)!r} is not offloaded")


def ah_length(iv_len: int, icv_len: int, ipv6: bool) -> int:
    """AH header bytes: 12 + IV + ICV, padded explicitly to 4 (IPv4) or 8 (IPv6) bytes
    (RFC 4302 §2.2, §3.3.3.2.1; RFC 4543 §3 for the GMAC IV)."""
    align = 8 if ipv6 else 4
    return -(-(12 + iv_len + icv_len) // align) * align


def compile_ah(sa: ndis.IpsecOffloadV2SecurityAssociation, blob: bytes,
               caps: ndis.NdisIpsecOffloadV2, strict_salt: bool, *,
               ipv6: bool) -> tuple[dict, SaKeys]:
    """One AH SecAssoc (Operation 1): the algorithm in AuthenticationAlgorithm, the
    EncryptionAlgorithm all zero (docs/protocol.md). HMAC-MD5-96, HMAC-SHA1-96,
    HMAC-SHA-256-128 (RFC 2403, 2404, 4868) or AES-GMAC (RFC 4543, key || 4-byte salt)."""
    if not caps.ah:
        raise SaRejected(NdisStatus.NOT_SUPPORTED, "AH is not enabled in the capabilities")
    if sa.spi == 0:
        raise SaRejected(NdisStatus.INVALID_DATA, "SPI 0 is never valid (RFC 4302)")
    esn = bool(sa.flags & ndis.IPSEC_OFFLOAD_V2_ESN_SA)
    if esn and not caps.extended_sequence_numbers:
        raise SaRejected(NdisStatus.NOT_SUPPORTED, "ESN is not enabled in the capabilities")
    enc, auth = sa.encryption_algorithm, sa.authentication_algorithm
    if enc.identifier or enc.key_length:
        raise SaRejected(NdisStatus.INVALID_DATA,
                         "an AH entry's EncryptionAlgorithm must be all zero")
    _single_bit("AuthenticationAlgorithm.Identifier", auth.identifier)
    if not auth.identifier:
        raise SaRejected(NdisStatus.INVALID_DATA, "an AH entry needs an AuthenticationAlgorithm")
    if not auth.identifier & caps.authentication_algorithms:
        raise SaRejected(NdisStatus.NOT_SUPPORTED,
                         f"authentication algorithm {Auth(auth.identifier)!r} is not enabled")
    align = 8 if ipv6 else 4
    if auth.identifier in _GMAC_KEY_BYTES:
        key, salt = _aes_key_and_salt(_key(blob, auth, "AuthenticationAlgorithm"),
                                      _GMAC_KEY_BYTES[Auth(auth.identifier)], strict_salt,
                                      "AuthenticationAlgorithm")
        if auth.additional_info not in (0, 16, 128):
            raise SaRejected(NdisStatus.INVALID_DATA, "AES-GMAC only has a 16-byte ICV")
        return (dict(proto=PROTO_AH, suite=Suite.AH_GMAC, integ=Integrity.AEAD, iv_len=8,
                     icv_len=16, align=align, esn=esn),
                SaKeys(Suite.AH_GMAC, Integrity.AEAD, 16, esn, enc_key=key, salt=salt))
    if auth.identifier not in _HMACS:
        raise SaRejected(NdisStatus.NOT_SUPPORTED,
                         f"authentication algorithm {Auth(auth.identifier)!r} is not offloaded")
    integ, icv, rfc_key_len = _HMACS[Auth(auth.identifier)]
    auth_key = _key(blob, auth, "AuthenticationAlgorithm")
    if not auth_key:
        raise SaRejected(NdisStatus.INVALID_DATA, "AuthenticationAlgorithm.KeyLength is 0")
    if len(auth_key) != rfc_key_len:
        warnings.warn(f"HMAC key of {len(auth_key)} bytes; the RFC length is {rfc_key_len}",
                      stacklevel=3)
    return (dict(proto=PROTO_AH, suite=Suite.AH_HMAC, integ=integ, iv_len=0, icv_len=icv,
                 align=align, esn=esn),
            SaKeys(Suite.AH_HMAC, integ, icv, esn, auth_key=auth_key))


def _aes_key_and_salt(material: bytes, key_bytes: int, strict_salt: bool,
                      owner: str) -> tuple[bytes, bytes]:
    """docs/protocol.md G1: key || 4-byte salt; a bare key gets a zero salt and a warning."""
    if len(material) == key_bytes + 4:
        return material[:key_bytes], material[key_bytes:]
    if len(material) == key_bytes:
        if strict_salt:
            raise SaRejected(NdisStatus.NOT_SUPPORTED,
                             f"{owner}: key without the 4-byte salt (strict_salt is on)")
        warnings.warn(f"{owner}: AES-GCM/GMAC key without a salt; using a zero salt",
                      stacklevel=4)
        return material, bytes(4)
    raise SaRejected(NdisStatus.INVALID_DATA,
                     f"{owner}.KeyLength is {len(material)}; expected {key_bytes + 4} "
                     f"(key || salt) or {key_bytes}")


# UdpEspEncapsulation values whose bundle's own ESP sits behind a UDP header (0x4: the
# tunnel's ESP is, not this bundle's)
_UDP_ESP_IN_UDP = (ndis.UdpEspEncapsulation.TRANSPORT, ndis.UdpEspEncapsulation.TUNNEL,
                   ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL)


class SaTable:
    """Offloaded SA bundles by handle. A handle fits 32 bits and comes back only after
    MAX_SERIAL more ADDs (docs/protocol.md, docs/spec-gaps.md G27)."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an integer, got {type(capacity).__name__}")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._serial = 0
        self._free = list(range(capacity - 1, -1, -1))
        self._sa_info: dict[int, tuple] = {}  # handle -> ((spi, operation) per layer)
        self._endpoints: dict[int, tuple[bytes, bytes]] = {}  # inbound slot -> (src, dst)
        # docs/spec-gaps.md G28: what a receiver's SA lookup tells apart, per live bundle
        self._lookup_keys: dict[int, tuple] = {}  # handle -> lookup keys of its layers
        self._lookup_owner: dict[tuple, int] = {}  # lookup key -> handle
        self.outbound_duplicates = 0  # outbound ADDs that repeated a live SA's lookup key
        # The NIC's mutable receive state per key row (ESN inference, docs/receive-path.md);
        # reset when a slot is (re)used or UPDATE_SA sets a new high word.
        self.rx_state = np.zeros(2 * capacity, RX_STATE_DTYPE)
        self.rx_lock = threading.Lock()
        # The NIC's sealed high-water mark per key row, (handle, last SN sealed) pairs: an
        # AEAD seal at or below it is refused (docs/send-path.md, "Nonce safety"). Set when
        # a slot is (re)used, handle 0 when it is freed; tx_mark updates it under tx_lock.
        self.tx_marks = np.zeros(4 * capacity, np.uint64)
        self.tx_lock = threading.Lock()
        self._publish(np.zeros(capacity, SA_RECORD_DTYPE), (None,) * (2 * capacity))

    def _records_copy(self) -> np.ndarray:
        """A writable copy of the published records, copied as bytes: numpy copies a nested
        structured dtype field by field, 1 ms for 4096 records where the bytes take 20 us."""
        return self._snapshot.records.view(np.uint8).copy().view(SA_RECORD_DTYPE)

    def _publish(self, records: np.ndarray, keys: tuple, inbound_changed: bool = True) -> None:
        """A new snapshot; its receive index is rebuilt at the next snapshot() that follows a
        change of the inbound SAs (once for a run of ADDs, not once per ADD)."""
        records.flags.writeable = False
        old = getattr(self, "_snapshot", None)
        rx_keys = None if inbound_changed or old is None else old.rx_keys
        self._snapshot = TableSnapshot(records, keys, records.view(np.uint8), rx_keys)

    def _rx_index(self, records: np.ndarray) -> np.ndarray:
        """One RxSaKey per transform of every inbound SA, sorted by SPI: rx_classify finds an
        SA by binary search (SPI, then destination, source and IP version)."""
        rows = []
        for slot, (src, dst) in self._endpoints.items():
            record = records[slot]
            for layer in range(int(record["n_xf"])):
                xf = record["xf"][layer]
                rows.append((int(xf["spi"]), slot, layer, int(xf["proto"]), int(record["ipv6"]),
                             int(xf["udp_encap"]), src, dst))
        # within one SPI the most specific endpoints first: an SA that names the source
        # wins over one that does not, and both over a full wildcard
        rows.sort(key=lambda row: (row[0], -(any(row[6]) + any(row[7])), row[1], row[2]))
        index = np.zeros(len(rows), RX_SA_KEY_DTYPE)
        for i, (spi, slot, layer, proto, ipv6, udp, src, dst) in enumerate(rows):
            entry = index[i]
            entry["spi"], entry["slot"], entry["layer"], entry["proto"] = spi, slot, layer, proto
            entry["ipv6"], entry["udp_encap"] = ipv6, udp
            entry["has_src"], entry["has_dst"] = any(src), any(dst)
            entry["src"] = np.frombuffer(src.ljust(16, b"\0"), np.uint8)
            entry["dst"] = np.frombuffer(dst.ljust(16, b"\0"), np.uint8)
        return index.view(np.uint8)

    def snapshot(self) -> TableSnapshot:
        snap = self._snapshot
        if snap.rx_keys is None:
            with self._lock:
                snap = self._snapshot
                if snap.rx_keys is None:
                    snap = TableSnapshot(snap.records, snap.keys, snap.records_bytes,
                                         self._rx_index(snap.records))
                    self._snapshot = snap
        return snap

    def __len__(self) -> int:
        return len(self._sa_info)

    def handles(self) -> list[int]:
        return list(self._sa_info)

    def add(self, entry: Union[ndis.IpsecOffloadV2AddSa, ndis.IpsecOffloadV2AddSaEx],
            caps: ndis.NdisIpsecOffloadV2, strict_salt: bool = False,
            ptr_size: Optional[int] = None) -> int:
        """Offload one bundle; returns its handle or raises SaRejected (docs/protocol.md step 1).

        ``ptr_size`` is the layout the entry came in (4: x86, 8: x64); None (a structure built
        in Python, no layout) accepts the Size of either (docs/spec-gaps.md G26).
        """
        header = entry.header
        sizes = (ndis.SIZEOF_ADD_SA_EX_REV1 if isinstance(entry, ndis.IpsecOffloadV2AddSaEx)
                 else ndis.SIZEOF_ADD_SA_REV1)
        minimum = sizes[ptr_size] if ptr_size in sizes else min(sizes.values())
        if header.type != ndis.NDIS_OBJECT_TYPE_DEFAULT or header.revision < 1 \
                or header.size < minimum:
            raise SaRejected(NdisStatus.INVALID_DATA,
                             f"bad NDIS_OBJECT_HEADER (type {header.type:#x}, revision "
                             f"{header.revision}, size {header.size:#x}; need 0x80, >=1, "
                             f">={minimum:#x})")
        if entry.num_ext_hdrs not in (1, 2) or len(entry.sec_assoc) < entry.num_ext_hdrs:
            raise SaRejected(NdisStatus.INVALID_DATA,
                             f"NumExtHdrs {entry.num_ext_hdrs} is not 1 or 2")
        ipv6 = bool(entry.flags & ndis.IPSEC_OFFLOAD_V2_IPV6)
        if ipv6 and not caps.ipv6_supported:
            raise SaRejected(NdisStatus.NOT_SUPPORTED, "IPv6 is not enabled in the capabilities")
        udp = entry.udp_esp_encapsulation
        if udp not in (ndis.UdpEspEncapsulation.NONE, ndis.UdpEspEncapsulation.TRANSPORT,
                       ndis.UdpEspEncapsulation.TUNNEL,
                       ndis.UdpEspEncapsulation.TRANSPORT_OVER_UDP_ESP_TUNNEL,
                       ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL) or (
                           udp and not udp & caps.udp_esp):
            raise SaRejected(NdisStatus.NOT_SUPPORTED,
                             f"UdpEspEncapsulation {udp:#x} is not offered")
        blob = bytes(entry.key_data)
        layers = list(entry.sec_assoc[:entry.num_ext_hdrs])
        if entry.num_ext_hdrs == 2:
            # docs/protocol.md: the one two-entry bundle is SecAssoc[0] = ESP, [1] = AH
            if not caps.ah_esp_combined:
                raise SaRejected(NdisStatus.NOT_SUPPORTED, "AH+ESP bundles are not enabled")
            if [sa.operation for sa in layers] != [ndis.IpsecOperation.ESP,
                                                   ndis.IpsecOperation.AH]:
                raise SaRejected(NdisStatus.INVALID_DATA,
                                 "a two-entry bundle must be SecAssoc[0] = ESP, SecAssoc[1] = AH")
            if (layers[0].flags ^ layers[1].flags) & ndis.IPSEC_OFFLOAD_V2_ESN_SA:
                raise SaRejected(NdisStatus.INVALID_DATA,
                                 "the ESP and AH entries of a bundle disagree on ESN")
        if udp in (ndis.UdpEspEncapsulation.TRANSPORT_OVER_UDP_ESP_TUNNEL,
                   ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL):
            # transport over tunnel (docs/send-path.md): 0x4 is an ESP (or AH+ESP) transport
            # bundle over a UDP tunnel, not itself in UDP; 0x8 a UDP-encapsulated ESP one
            if layers[0].operation != ndis.IpsecOperation.ESP or (
                    udp == ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL
                    and len(layers) != 1):
                raise SaRejected(NdisStatus.NOT_SUPPORTED,
                                 f"UdpEspEncapsulation {udp:#x} needs an ESP transport bundle")
        elif udp and any(sa.operation == ndis.IpsecOperation.AH for sa in layers):
            # RFC 3948 encapsulates ESP only; AH cannot cross a NAT
            raise SaRejected(NdisStatus.NOT_SUPPORTED, "AH is never UDP-encapsulated")
        compiled = [compile_sa(sa, blob, caps, strict_salt, ipv6=ipv6,
                               in_bundle=entry.num_ext_hdrs == 2) for sa in layers]
        inbound = bool(entry.flags & ndis.IPSEC_OFFLOAD_V2_INBOUND)
        src, dst = bytes(entry.src_address), bytes(entry.dest_address)
        lookup = tuple((inbound, ipv6, bool(udp) and sa.operation == ndis.IpsecOperation.ESP,
                        sa.spi, src, dst) for sa in layers)
        with self._lock:
            if not self._free or len(self._sa_info) >= caps.sa_offload_capacity:
                raise SaRejected(NdisStatus.RESOURCES, "SA capacity exhausted")
            for key in lookup:
                if key in self._lookup_owner:
                    if inbound:
                        # G28: the receive lookup finds an SA by SPI, destination, source, IP
                        # version and UDP encapsulation; a second one equal in all is unreachable
                        raise SaRejected(NdisStatus.INVALID_DATA,
                                         f"inbound SPI {key[3]:#010x} is already offloaded for "
                                         f"the same endpoints, IP version and UDP "
                                         f"encapsulation")
                    # G28: outbound SAs are found by handle; counted, not refused
                    self.outbound_duplicates += 1
                    break
            slot = self._free.pop()
            # G27: the serial wraps below 2**12, so a handle fits 32 bits; a handle comes back
            # only after MAX_SERIAL more ADDs, and never while its slot is live
            self._serial = self._serial % MAX_SERIAL + 1
            handle = (self._serial << HANDLE_SLOT_BITS) | slot
            records = self._records_copy()
            record = records[slot]
            record["handle"] = handle
            record["in_use"] = 1
            record["inbound"] = bool(entry.flags & ndis.IPSEC_OFFLOAD_V2_INBOUND)
            record["ipv6"] = ipv6
            record["n_xf"] = len(layers)
            record["udp_type"] = int(udp)
            key_list = list(self._snapshot.keys)
            for layer, (sa, (fields, keys)) in enumerate(zip(layers, compiled)):
                xf = record["xf"][layer]
                xf["spi"], xf["seq_hi"] = sa.spi, sa.sequence_number_high_order
                xf["key_row"] = 2 * slot + layer
                xf["udp_encap"] = 1 if udp in _UDP_ESP_IN_UDP and fields["proto"] == PROTO_ESP \
                    else 0
                xf["salt"] = np.frombuffer(keys.salt.ljust(4, b"\0"), np.uint8)
                for name, value in fields.items():
                    xf[name] = value
                key_list[2 * slot + layer] = keys
            self._sa_info[handle] = tuple((sa.spi, sa.operation) for sa in layers)
            self._lookup_keys[handle] = lookup
            for key in lookup:
                self._lookup_owner.setdefault(key, handle)
            if record["inbound"]:
                self._endpoints[slot] = (bytes(entry.src_address), bytes(entry.dest_address))
            self.rx_state[2 * slot:2 * slot + 2] = np.zeros((), RX_STATE_DTYPE)
            with self.tx_lock:
                self.tx_marks[4 * slot:4 * slot + 4] = [handle, 0, handle, 0]
            self._publish(records, tuple(key_list), inbound_changed=bool(record["inbound"]))
        return handle

    def delete(self, handle: int) -> bool:
        """Forget a bundle; returns False when the handle names none (DELETE_SA,
        docs/protocol.md)."""
        with self._lock:
            if self._sa_info.pop(handle, None) is None:
                return False
            for key in self._lookup_keys.pop(handle, ()):
                if self._lookup_owner.get(key) == handle:
                    del self._lookup_owner[key]
                    # an outbound duplicate still live takes the key over
                    for other, keys in self._lookup_keys.items():
                        if key in keys:
                            self._lookup_owner[key] = other
                            break
            slot = handle & HANDLE_SLOT_MASK
            records = self._records_copy()
            records[slot] = np.zeros((), SA_RECORD_DTYPE)
            key_list = list(self._snapshot.keys)
            key_list[2 * slot] = key_list[2 * slot + 1] = None
            inbound = self._endpoints.pop(slot, None) is not None
            with self.tx_lock:
                self.tx_marks[4 * slot:4 * slot + 4] = 0
            self._free.append(slot)
            self._publish(records, tuple(key_list), inbound_changed=inbound)
        return True

    def update_seq_hi(self, handle: int, operation: int, spi: int, seq_hi: int) -> bool:
        """UPDATE_SA (docs/protocol.md): new ESN high-order bits for the SA of the bundle
        that the Operation (AH or ESP) and the SPI name."""
        with self._lock:
            info = self._sa_info.get(handle)
            slot = handle & HANDLE_SLOT_MASK
            if info is None or (spi, operation) not in info or not 0 <= seq_hi <= 0xFFFFFFFF:
                return False
            layer = info.index((spi, operation))
            record = self._snapshot.records[slot]
            if not record["xf"][layer]["esn"]:
                return False
            if not record["inbound"] and seq_hi < int(record["xf"][layer]["seq_hi"]):
                # an outbound SA's high word never moves back: its SNs (the AEAD nonces,
                # RFC 4106 §3.1) would be sent again (docs/send-path.md, "Nonce safety")
                return False
            records = self._records_copy()
            records[slot]["xf"][layer]["seq_hi"] = seq_hi
            # an inbound SA infers its high word again from this one (docs/receive-path.md)
            with self.rx_lock:
                self.rx_state[2 * slot + layer]["seen"] = 0
            self._publish(records, self._snapshot.keys, inbound_changed=False)
        return True

    def reset_tx_marks(self, handles: Optional[Sequence[int]] = None) -> None:
        """Forget what every SA (or the SAs of ``handles``) sealed, so that the same frames
        seal again: only for benchmarks that time one batch over and over (a real stack never
        resends an AEAD SN; docs/send-path.md, "Nonce safety")."""
        with self.tx_lock:
            if handles is None:
                self.tx_marks[1::2] = 0
                return
            marks = self.tx_marks
            for handle in handles:
                slot = int(handle) & HANDLE_SLOT_MASK
                if slot < self.capacity:  # both layers' marks; two scalar stores cost less
                    marks[4 * slot + 1] = 0  # than one strided slice (a timed loop runs this)
                    marks[4 * slot + 3] = 0

    def clear(self) -> None:
        """Delete every SA (adapter halt, docs/protocol.md)."""
        with self._lock:
            self._sa_info.clear()
            self._endpoints.clear()
            with self.tx_lock:
                self.tx_marks[:] = 0
            self._lookup_keys.clear()
            self._lookup_owner.clear()
            self._free = list(range(self.capacity - 1, -1, -1))
            self._publish(np.zeros(self.capacity, SA_RECORD_DTYPE), (None,) * (2 * self.capacity))

    def record(self, handle: int) -> Optional[np.void]:
        if handle not in self._sa_info:
            return None
        return self._snapshot.records[handle & HANDLE_SLOT_MASK]
