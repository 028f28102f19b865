"""SaConfig: one outbound SA (ESP, AH, or an AH+ESP bundle) as a user describes it (the SA-file
names, README), validated, and its translation into the IPSEC_OFFLOAD_V2_ADD_SA entry the
miniport takes (docs/protocol.md)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from .. import ndis
from ..errors import shown, shown_name
from ..ndis import AuthenticationAlgorithm as Auth
from ..ndis import EncryptionAlgorithm as Enc

# name -> (NDIS bit, key bytes as the user gives them)
ENCRYPTIONS = {
    "aes-gcm-128": (Enc.AES_GCM_128, 16 + 4), "aes-gcm-192": (Enc.AES_GCM_192, 24 + 4),
    "aes-gcm-256": (Enc.AES_GCM_256, 32 + 4),
    "aes-cbc-128": (Enc.AES_CBC_128, 16), "aes-cbc-192": (Enc.AES_CBC_192, 24),
    "aes-cbc-256": (Enc.AES_CBC_256, 32),
    "null": (Enc.NONE, 0),
}
# name -> (NDIS bit, key bytes, ICV bytes); GMAC keys are AES key || 4-byte salt
INTEGRITIES = {
    "hmac-md5-96": (Auth.MD5, 16, 12), "hmac-sha1-96": (Auth.SHA_1, 20, 12),
    "hmac-sha256-128": (Auth.SHA_256, 32, 16),
    "aes-gmac-128": (Auth.AES_GCM_128, 16 + 4, 16), "aes-gmac-192": (Auth.AES_GCM_192, 24 + 4, 16),
    "aes-gmac-256": (Auth.AES_GCM_256, 32 + 4, 16),
}
GCM_ICV_LENGTHS = (8, 12, 16)
PROTOCOLS = ("esp", "ah", "ah+esp")


def _choices(names) -> str:
    return ", ".join(repr(n) for n in names)


@dataclass(frozen=True)
class SaConfig:
    """An outbound SA. Keys are bytes and never appear in repr or error messages.

    ``protocol`` "esp" (default): ``encryption``, ``key``, ``integrity``, ``auth_key``.
    "ah": ``integrity`` and ``auth_key`` only (no ``encryption``/``key``). "ah+esp": the ESP
    fields (``integrity`` may be None with AES-CBC: the AH authenticates) plus the AH layer's
    ``ah_spi``, ``ah_integrity`` and ``ah_auth_key``; both layers share ``esn`` and ``seq``.
    """
    spi: int
    encryption: Optional[str] = None
    key: bytes = field(default=b"", repr=False)
    integrity: Optional[str] = None
    auth_key: bytes = field(default=b"", repr=False)
    icv_len: Optional[int] = None  # AES-GCM only: 8, 12 or 16 (default 16)
    mode: str = "transport"
    tunnel_src: Optional[str] = None
    tunnel_dst: Optional[str] = None
    udp_encap: Optional[tuple[int, int]] = None  # (source port, destination port)
    esn: bool = False
    seq: int = 1  # the sequence number of the first packet
    src: Optional[str] = None  # SA endpoints for ADD_SA; None = wildcard (docs/protocol.md)
    dst: Optional[str] = None
    name: str = ""
    protocol: str = "esp"  # "esp", "ah" or "ah+esp" (README)
    ah_spi: Optional[int] = None  # "ah+esp": the AH layer
    ah_integrity: Optional[str] = None
    ah_auth_key: bytes = field(default=b"", repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"SA: name must be a string, got {shown(self.name)}")
        where = f"SA {shown_name(self.name)}: " if self.name else "SA: "

        def bad(field_name: str, message: str) -> ValueError:
            return ValueError(f"{where}{field_name} {message}")

        # types first: a wrong type is a ValueError naming the field, never an AttributeError,
        # a TypeError from a dictionary lookup, or a truthy string taken as True
        for name in ("encryption", "integrity", "tunnel_src", "tunnel_dst", "src", "dst",
                     "ah_integrity"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise bad(name, f"must be a string or None, got {shown(value)}")
        for name in ("mode", "protocol"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, f"must be a string, got {shown(getattr(self, name))}")
        if not isinstance(self.esn, bool):
            raise bad("esn", f"must be True or False, got {shown(self.esn)}")
        for name in ("spi", "seq", "icv_len", "ah_spi"):
            value = getattr(self, name)
            if (value is not None or name in ("spi", "seq")) and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise bad(name, f"must be an integer, got {shown(value)}")
        if self.udp_encap is not None and not isinstance(self.udp_encap, (tuple, list)):
            raise bad("udp_encap", f"must be (sport, dport) with ports 1-65535, "
                                   f"got {shown(self.udp_encap)}")

        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"must be one of {_choices(PROTOCOLS)}, got {shown(self.protocol)}")
        if not isinstance(self.spi, int) or not 1 <= self.spi <= 0xFFFFFFFF:
            raise bad("spi", f"must be an integer from 1 to 0xFFFFFFFF, got {shown(self.spi)}")
        for name in ("key", "auth_key", "ah_auth_key"):
            if not isinstance(getattr(self, name), (bytes, bytearray)):
                raise bad(name, "must be bytes")
        if self.protocol == "ah":
            if self.encryption is not None or self.key:
                raise bad("encryption", "must be absent (null) with protocol 'ah', and so "
                                        "must key")
            _check_ah_layer(self.integrity, self.auth_key, bad, "integrity", "auth_key")
            implied = INTEGRITIES[self._integrity][2]
            if self.icv_len not in (None, implied):
                raise bad("icv_len", f"is fixed at {implied} by {self.integrity!r}, "
                                     f"got {shown(self.icv_len)}")
        else:
            self._check_esp(bad)
        if self.protocol == "ah+esp":
            if not isinstance(self.ah_spi, int) or not 1 <= self.ah_spi <= 0xFFFFFFFF:
                raise bad("ah.spi", f"must be an integer from 1 to 0xFFFFFFFF, "
                                    f"got {shown(self.ah_spi)}")
            _check_ah_layer(self.ah_integrity, self.ah_auth_key, bad, "ah.integrity",
                            "ah.auth_key")
        elif self.ah_spi is not None or self.ah_integrity is not None or self.ah_auth_key:
            raise bad("ah", "is only for protocol 'ah+esp'")
        if self.protocol != "esp" and self.udp_encap is not None:
            raise bad("udp_encap", "is for ESP alone: AH is never UDP-encapsulated (RFC 3948)")
        if self.mode not in ("transport", "tunnel"):
            raise bad("mode", f"must be 'transport' or 'tunnel', got {shown(self.mode)}")
        if self.mode == "tunnel":
            if not self.tunnel_src or not self.tunnel_dst:
                raise bad("tunnel", "needs both src and dst addresses in tunnel mode")
            versions = {_address(self.tunnel_src, bad, "tunnel.src").version,
                        _address(self.tunnel_dst, bad, "tunnel.dst").version}
            if len(versions) != 1:
                raise bad("tunnel", "src and dst must be of the same IP version")
        elif self.tunnel_src or self.tunnel_dst:
            raise bad("tunnel", "is only for mode 'tunnel'")
        endpoints = {name: _address(getattr(self, name), bad, name)
                     for name in ("src", "dst") if getattr(self, name) is not None}
        if len({a.version for a in endpoints.values()}) > 1:
            raise bad("src/dst", "must be of the same IP version")
        if self.udp_encap is not None:
            if (len(self.udp_encap) != 2
                    or not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 0xFFFF
                            for p in self.udp_encap)):
                raise bad("udp_encap", f"must be (sport, dport) with ports 1-65535, "
                                       f"got {shown(self.udp_encap)}")
        limit = 2**64 - 1 if self.esn else 2**32 - 1
        if not isinstance(self.seq, int) or not 1 <= self.seq <= limit:
            raise bad("seq", f"must be from 1 to {limit} ({'with' if self.esn else 'without'} "
                             f"ESN), got {shown(self.seq)}")


    def _check_esp(self, bad) -> None:
        """The ESP layer's fields (protocol 'esp', or the ESP of 'ah+esp')."""
        if self.encryption not in ENCRYPTIONS:
            raise bad("encryption", f"must be one of {_choices(ENCRYPTIONS)}, "
                                    f"got {shown(self.encryption)}")
        gcm = self.encryption.startswith("aes-gcm")
        if gcm:
            if self.integrity is not None:
                raise bad("integrity", "must be null with AES-GCM (it carries its own ICV)")
            if self.icv_len not in (None, *GCM_ICV_LENGTHS):
                raise bad("icv_len", f"must be one of 8, 12, 16 for AES-GCM, got {shown(self.icv_len)}")
        elif self.integrity is None and self.protocol == "ah+esp" \
                and self.encryption.startswith("aes-cbc"):
            if self.icv_len is not None:
                raise bad("icv_len", "must be null without integrity")
        else:
            if self.integrity not in INTEGRITIES:
                raise bad("integrity", f"must be one of {_choices(INTEGRITIES)} with "
                                       f"{self.encryption!r} (every ESP SA needs integrity), "
                                       f"got {shown(self.integrity)}")
            if self.integrity.startswith("aes-gmac") and self.encryption != "null":
                raise bad("integrity", "AES-GMAC goes only with encryption 'null'")
            implied = INTEGRITIES[self.integrity][2]
            if self.icv_len not in (None, implied):
                raise bad("icv_len", f"is fixed at {implied} by {self.integrity!r}, "
                                     f"got {shown(self.icv_len)}")
        want = ENCRYPTIONS[self.encryption][1]
        if len(self.key) != want:
            what = "AES key || 4-byte salt" if gcm else ("empty" if not want else "the AES key")
            raise bad("key", f"must be {want} bytes ({what}) for {self.encryption!r}, "
                             f"got {len(self.key)} bytes")
        if not gcm and self.integrity is None:
            if self.auth_key:
                raise bad("auth_key", "must be empty without integrity")
        elif not gcm:
            want = INTEGRITIES[self._integrity][1]
            if len(self.auth_key) != want:
                what = ("AES key || 4-byte salt" if self._integrity.startswith("aes-gmac")
                        else "the HMAC key")
                raise bad("auth_key", f"must be {want} bytes ({what}) for {self.integrity!r}, "
                                      f"got {len(self.auth_key)} bytes")
        elif self.auth_key:
            raise bad("auth_key", "must be empty with AES-GCM")

    # -- derived ---------------------------------------------------------------------
    @property
    def _encryption(self) -> str:
        """``encryption`` where it is set: every SA with an ESP layer has one (__post_init__)."""
        assert self.encryption is not None
        return self.encryption

    @property
    def _integrity(self) -> str:
        """``integrity`` where it is set: every SA but AES-GCM has one (__post_init__)."""
        assert self.integrity is not None
        return self.integrity

    @property
    def gcm(self) -> bool:
        return (self.encryption or "").startswith("aes-gcm")

    @property
    def iv_len(self) -> int:
        """IV bytes of the first layer: ESP, or the AH-GMAC IV of protocol 'ah'."""
        if self.gcm or (self.integrity or "").startswith("aes-gmac"):
            return 8
        return 16 if (self.encryption or "").startswith("aes-cbc") else 0

    @property
    def icv(self) -> int:
        """ICV bytes on the wire of the first layer (ESP, or AH for protocol 'ah')."""
        if self.gcm:
            return self.icv_len or 16
        return INTEGRITIES[self.integrity][2] if self.integrity else 0

    @property
    def align(self) -> int:
        """ESP padding alignment: lcm(cipher block, 4) (docs/protocol.md)."""
        return 16 if (self.encryption or "").startswith("aes-cbc") else 4

    @property
    def has_esp(self) -> bool:
        return self.protocol != "ah"

    @property
    def has_ah(self) -> bool:
        return self.protocol != "esp"

    @property
    def ah_layer(self) -> tuple[int, str, bytes]:
        """(SPI, integrity, key) of the AH layer; ValueError for an SA without one."""
        if self.protocol == "ah":
            return self.spi, self._integrity, bytes(self.auth_key)
        if self.protocol == "ah+esp" and self.ah_spi is not None and self.ah_integrity:
            return self.ah_spi, self.ah_integrity, bytes(self.ah_auth_key)
        raise ValueError(f"SA {self.name or hex(self.spi)} has no AH layer")

    @property
    def ah_icv(self) -> int:
        return INTEGRITIES[self.ah_layer[1]][2]

    @property
    def ah_iv_len(self) -> int:
        """AES-GMAC carries an 8-byte IV before its tag (RFC 4543 §3)."""
        return 8 if self.ah_layer[1].startswith("aes-gmac") else 0

    def ah_length(self, ipv6: bool) -> int:
        """AH header bytes: 12 + IV + ICV padded to 4 (IPv4) or 8 (IPv6) (RFC 4302 §2.2)."""
        align = 8 if ipv6 else 4
        return -(-(12 + self.ah_iv_len + self.ah_icv) // align) * align

    @property
    def tunnel_ipv6(self) -> Optional[bool]:
        if self.mode != "tunnel" or self.tunnel_src is None:
            return None
        return ipaddress.ip_address(self.tunnel_src).version == 6

    def add_sa_entry(self, ipv6: bool, inbound: bool = False) -> ndis.IpsecOffloadV2AddSa:
        """The ADD_SA entry for this SA; keys in one blob, the ESP encryption key first, then
        the ESP integrity key, then the AH key (docs/protocol.md). An AH+ESP bundle is
        NumExtHdrs 2 with SecAssoc[0] = ESP and SecAssoc[1] = AH."""
        flags_esn = ndis.IPSEC_OFFLOAD_V2_ESN_SA if self.esn else 0
        seq_hi = (self.seq >> 32) if self.esn else 0
        blob, sec_assoc = b"", []
        if self.has_esp:
            enc_bit = ENCRYPTIONS[self._encryption][0]
            enc = ndis.IpsecOffloadV2AlgorithmInfo(
                identifier=int(enc_bit), key_length=len(self.key), key_offset_bytes=0,
                additional_info=self.icv if self.gcm else 0)
            auth = ndis.IpsecOffloadV2AlgorithmInfo()
            if not self.gcm and self.integrity:
                gmac = self.integrity.startswith("aes-gmac")
                auth = ndis.IpsecOffloadV2AlgorithmInfo(
                    identifier=int(INTEGRITIES[self.integrity][0]),
                    key_length=len(self.auth_key), key_offset_bytes=len(self.key),
                    additional_info=16 if gmac else 0)
            sec_assoc.append(ndis.IpsecOffloadV2SecurityAssociation(
                flags=flags_esn, operation=ndis.IpsecOperation.ESP, spi=self.spi,
                authentication_algorithm=auth, encryption_algorithm=enc,
                sequence_number_high_order=seq_hi))
            blob = bytes(self.key) + bytes(self.auth_key)
        if self.has_ah:
            spi, integrity, key = self.ah_layer
            sec_assoc.append(ndis.IpsecOffloadV2SecurityAssociation(
                flags=flags_esn, operation=ndis.IpsecOperation.AH, spi=spi,
                authentication_algorithm=ndis.IpsecOffloadV2AlgorithmInfo(
                    identifier=int(INTEGRITIES[integrity][0]), key_length=len(key),
                    key_offset_bytes=len(blob),
                    additional_info=16 if integrity.startswith("aes-gmac") else 0),
                encryption_algorithm=ndis.IpsecOffloadV2AlgorithmInfo(),
                sequence_number_high_order=seq_hi))
            blob += key
        if self.mode == "tunnel":
            src, dst = self.tunnel_src, self.tunnel_dst
        else:
            src, dst = self.src, self.dst
        size = 16 if ipv6 else 4
        flags = (ndis.IPSEC_OFFLOAD_V2_IPV6 if ipv6 else 0) | (
            ndis.IPSEC_OFFLOAD_V2_INBOUND if inbound else 0)
        udp = ndis.UdpEspEncapsulation.NONE
        if self.udp_encap:
            udp = (ndis.UdpEspEncapsulation.TUNNEL if self.mode == "tunnel"
                   else ndis.UdpEspEncapsulation.TRANSPORT)
        return ndis.IpsecOffloadV2AddSa(
            num_ext_hdrs=len(sec_assoc), flags=flags,
            src_address=_packed(src, size), dest_address=_packed(dst, size),
            udp_esp_encapsulation=int(udp), sec_assoc=sec_assoc, key_data=blob)


def _check_ah_layer(integrity, key, bad, integrity_name: str, key_name: str) -> None:
    """An AH layer: an HMAC or AES-GMAC (key || 4-byte salt) and its key (RFC 4302)."""
    if integrity not in INTEGRITIES:
        raise bad(integrity_name, f"must be one of {_choices(INTEGRITIES)} for AH, "
                                  f"got {shown(integrity)}")
    want = INTEGRITIES[integrity][1]
    if len(key) != want:
        what = "AES key || 4-byte salt" if integrity.startswith("aes-gmac") else "the HMAC key"
        raise bad(key_name, f"must be {want} bytes ({what}) for {integrity!r}, "
                            f"got {len(key)} bytes")


def _address(text: str, bad, name: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise bad(name, f"is not an IP address: {shown(text)}") from None


def _packed(address: Optional[str], size: int) -> bytes:
    if address is None:
        return bytes(size)
    packed = ipaddress.ip_address(address).packed
    return packed if len(packed) == size else bytes(size)
