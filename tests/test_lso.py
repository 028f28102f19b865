"""Combined LSO + ESP on send: the NIC slices one TCP super-packet into ESP-protected segments
(docs/protocol.md section 11, docs/send-path.md step 3; docs/spec-gaps.md G6, G7, G16, G17,
G23).

Every segment is opened with scapy's ``SecurityAssociation`` (with ``cryptography`` directly
only where scapy cannot: AES-GCM with an 8- or 12-byte ICV) and checked field by field; the
TCP stream is reassembled and compared with the original payload. Super-packets are built by
``build_super`` below so the NIC-side tests do not depend on the host stack model; the
end-to-end tests at the bottom go through ``HostStack.build_lso`` / ``send_lso``. NIC-side
tests run on both kernels (compiled and the pure-Python twin); a hypothesis fuzz compares the
two byte for byte.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, replace
from typing import Optional

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation

from ipsecoffload import Miniport, PacketBatchBuilder, Reason, SaConfig, ndis
from ipsecoffload.ndis import NdisStatus

FAILURE = 0xC0000001
INVALID_PACKET = 0xC001000F  # NDIS_STATUS_INVALID_PACKET
assert NdisStatus.FAILURE == FAILURE
LSO_V2_TYPE = 1 << 30
ETH = bytes.fromhex("020000000002020000000001")
ADDRS = {False: ("10.0.0.1", "10.1.0.2"), True: ("2001:db8::1", "2001:db8:1::2")}
SPORT, DPORT, ACK, WINDOW = 40000, 443, 0x01020304, 0xFFFF
TS_OPTIONS = bytes([1, 1, 8, 10]) + struct.pack("!II", 0x11223344, 0x55667788)  # NOP NOP TS

KERNELS = [pytest.param(False, id="compiled"), pytest.param(True, id="python")]


# -- SAs -----------------------------------------------------------------------------------

def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def gcm(bits: int = 128, icv: int = 16, **kw) -> SaConfig:
    return SaConfig(spi=0x1000 + bits + icv, encryption=f"aes-gcm-{bits}",
                    key=_key(bits // 8 + 4, bits), icv_len=icv, **kw)


def gmac(bits: int = 128, **kw) -> SaConfig:
    return SaConfig(spi=0x2000 + bits, encryption="null", integrity=f"aes-gmac-{bits}",
                    auth_key=_key(bits // 8 + 4, bits + 1), **kw)


HMAC_KEY_BYTES = {"hmac-md5-96": 16, "hmac-sha1-96": 20, "hmac-sha256-128": 32}


def cbc(bits: int = 128, integrity: str = "hmac-sha1-96", **kw) -> SaConfig:
    return SaConfig(spi=0x3000 + bits, encryption=f"aes-cbc-{bits}", key=_key(bits // 8, bits),
                    integrity=integrity, auth_key=_key(HMAC_KEY_BYTES[integrity], 5), **kw)


def null(integrity: str = "hmac-sha256-128", **kw) -> SaConfig:
    return SaConfig(spi=0x4000, encryption="null", integrity=integrity,
                    auth_key=_key(HMAC_KEY_BYTES[integrity], 9), **kw)


# every ESP algorithm family: GCM 128/192/256 x ICV 8/12/16, GMAC, CBC + each HMAC, NULL + each
SUITES = {
    **{f"gcm{b}-icv{i}": gcm(b, i) for b in (128, 192, 256) for i in (8, 12, 16)},
    **{f"gmac{b}": gmac(b) for b in (128, 192, 256)},
    **{f"cbc128-{h}": cbc(128, h) for h in HMAC_KEY_BYTES},
    "cbc192-hmac-sha256-128": cbc(192, "hmac-sha256-128"),
    "cbc256-hmac-sha1-96": cbc(256, "hmac-sha1-96"),
    **{f"null-{h}": null(h) for h in HMAC_KEY_BYTES},
}


def offload(miniport: Miniport, cfg: SaConfig, ipv6: bool) -> int:
    """ADD_SA for ``cfg``; returns the offload handle."""
    entry = cfg.add_sa_entry(ipv6)
    assert miniport.add_sa(entry) == NdisStatus.SUCCESS
    assert entry.offload_handle
    return entry.offload_handle


# The segmentation tests below cut single-segment and very large super-packets too: their
# miniport offers MinSegmentCount 1 and no MaxOffLoadSize bound. The NDIS defaults (65535, 2)
# are tested in tests/test_lso_limits.py.
_NO_LSO_LIMITS = dict(
    lso_v1=ndis.NdisTcpLargeSendOffloadV1(max_offload_size=2**32 - 1, min_segment_count=1),
    lso_v2=ndis.NdisTcpLargeSendOffloadV2(ipv4_max_offload_size=2**32 - 1,
                                          ipv4_min_segment_count=1,
                                          ipv6_max_offload_size=2**32 - 1,
                                          ipv6_min_segment_count=1))


def seeded_miniport(pure: bool, seed: int = 7) -> Miniport:
    """A miniport whose CBC IVs come from a seeded generator (reproducible output), without
    LSO limits (see above)."""
    return Miniport(pure_python=pure, random_source=random.Random(seed).randbytes,
                    **_NO_LSO_LIMITS)


# -- checksums -------------------------------------------------------------------------------

def csum_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, folded, not inverted."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def final_destination(ipv6_header: bytes) -> bytes:
    """The destination a TCP pseudo-header names (RFC 8200 §8.1): with a routing
    header that has segments left, the final one: the last address of types 0 and 2,
    Segment List[0] of an SRH (type 4); a type we do not know keeps the header's own."""
    dst, nh, off = ipv6_header[24:40], ipv6_header[6], 40
    while off < len(ipv6_header) and nh in (0, 43, 60):
        length = (ipv6_header[off + 1] + 1) * 8
        if nh == 43 and ipv6_header[off + 3] and ipv6_header[off + 2] in (0, 2, 4):
            addresses = [ipv6_header[a:a + 16] for a in range(off + 8, off + length, 16)]
            dst = addresses[0] if ipv6_header[off + 2] == 4 else addresses[-1]
        nh, off = ipv6_header[off], off + length
    return dst


def pseudo_header(ipv6: bool, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if ipv6:
        return src + dst + struct.pack("!IxxxB", length, proto)
    return src + dst + struct.pack("!xBH", proto, length)


# -- super-packets (what the stack hands over, docs/protocol.md section 11 "Input") ---------

@dataclass
class Super:
    frame: bytes
    oob: dict  # PacketBatchBuilder.add_nbl keyword arguments
    cfg: SaConfig
    ipv6: bool
    payload: bytes
    mss: int
    tcp_header: bytes  # as given, checksum field included
    ip_header: bytes  # the IP header template (IPv4 options included)
    sn0: int  # 64-bit SN of the first segment
    lso_version: int

    @property
    def tcp_off(self) -> int:
        return (self.oob["lso_info"] >> 20) & 0x3FF

    @property
    def nsegs(self) -> int:
        return max(1, -(-len(self.payload) // self.mss))

    def nbl(self) -> ndis.NetBufferList:
        """The same super-packet as an NDIS NET_BUFFER_LIST."""
        o = self.oob
        header = ndis.IpsecOffloadV2HeaderNblInfo(next_header=o["next_header"],
                                                  pad_length=o["pad_length"],
                                                  esp_header_offset=o["esp_off4"])
        info = {ndis.NblInfo.IPSEC_OFFLOAD_V2: o["offload_handle"],
                ndis.NblInfo.IPSEC_OFFLOAD_V2_TUNNEL: o.get("tunnel_handle", 0),
                ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER: header.value,
                ndis.NblInfo.TCP_LARGE_SEND: o["lso_info"]}
        return ndis.NetBufferList(net_buffers=[ndis.NetBuffer(bytearray(self.frame))],
                                  info={k: v for k, v in info.items() if v},
                                  l2_length=o["l2_len"])


def build_super(cfg: SaConfig, handle: int, payload: bytes, mss: int, *, ipv6: bool = False,
                lso_version: int = 2, options: bytes = b"", pad_length: int = 0,
                ip_id: int = 0x1234, tcp_seq: int = 1000, flags: int = 0x18,
                ip_options=b"", tos: int = 0x28, ttl: int = 61) -> Super:
    """One LSO super-packet: MAC | IP | [UDP] | ESP SPI, SN0 | IV slot | TCP | payload | junk
    pad (no ESP trailer, no ICV), and its OOB info. ``ip_options``: IPv4 options; for IPv6
    extension headers before ESP, as bytes (one hop-by-hop header) or a list of (type,
    header bytes); their Next Header bytes are filled in."""
    src, dst = (ipaddress.ip_address(a).packed for a in ADDRS[ipv6])
    udp = b""
    if cfg.udp_encap:
        udp = struct.pack("!HHHH", *cfg.udp_encap, 0, 0)
    sn0 = cfg.seq
    esp = struct.pack("!II", cfg.spi, sn0 & 0xFFFFFFFF) + b"\xEE" * cfg.iv_len
    thl = 20 + len(options)
    assert thl % 4 == 0
    # G23: the checksum field arrives seeded with the pseudo-header sum without the length
    seed = csum_sum(src + dst + struct.pack("!xB", 6))
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, tcp_seq & 0xFFFFFFFF, ACK, (thl // 4) << 4,
                      flags, WINDOW, seed, 0) + options
    datagram_rest = udp + esp + tcp + payload
    proto = 17 if cfg.udp_encap else 50
    # LSOv2: IPv4 Total Length / IPv6 Payload Length 0; LSOv1: the IPv4 total length of the
    # large packet, which agrees with the NET_BUFFER (junk pad included; docs/spec-gaps.md G7)
    if ipv6:
        chain = [(0, ip_options)] if isinstance(ip_options, bytes) and ip_options else \
            list(ip_options)
        types = [t for t, _ in chain] + [proto]
        ext = b"".join(bytes([types[k + 1]]) + h[1:] for k, (_, h) in enumerate(chain))
        ip = struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20) | 0x12345, 0, types[0], ttl,
                         src, dst) + ext
        eth = ETH + b"\x86\xdd"
    else:
        ihl = 20 + len(ip_options)
        total = 0 if lso_version == 2 else ihl + len(datagram_rest) + pad_length
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, total, ip_id, 0x4000,
                                   ttl, proto, 0, src, dst) + ip_options)
        struct.pack_into("!H", ip, 10, ~csum_sum(bytes(ip)) & 0xFFFF)
        ip = bytes(ip)
        eth = ETH + b"\x08\x00"
    frame = eth + ip + datagram_rest + b"\xAB" * pad_length
    tcp_off = len(eth) + len(ip) + len(udp) + len(esp)
    if lso_version == 2:
        lso = ndis.LsoV2Transmit(mss=mss, tcp_header_offset=tcp_off, ip_version=int(ipv6))
    else:
        lso = ndis.LsoV1Transmit(mss=mss, tcp_header_offset=tcp_off)
    oob = dict(offload_handle=handle, next_header=6, pad_length=pad_length,
               esp_off4=(len(ip) + len(udp)) // 4, l2_len=len(eth), lso_info=lso.value)
    return Super(frame, oob, cfg, ipv6, payload, mss, tcp, ip, sn0, lso_version)


def payload_of(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def send(miniport: Miniport, *supers: Super, extra: Optional[list] = None):
    builder = PacketBatchBuilder()
    for s in supers:
        builder.add_nbl([s.frame], **s.oob)
    for frames, oob in extra or ():
        builder.add_nbl(frames, **oob)
    return miniport.send(builder.build())


# -- opening segments ------------------------------------------------------------------------

SCAPY_AUTH = {"hmac-md5-96": "HMAC-MD5-96", "hmac-sha1-96": "HMAC-SHA1-96",
              "hmac-sha256-128": "SHA2-256-128"}


def scapy_sa(cfg: SaConfig) -> Optional[SecurityAssociation]:
    """scapy's view of ``cfg``; None where scapy cannot decrypt (AES-GCM with ICV 8/12)."""
    nat_t = UDP(sport=cfg.udp_encap[0], dport=cfg.udp_encap[1]) if cfg.udp_encap else None
    if cfg.gcm:
        if cfg.icv != 16:
            return None  # scapy's AESGCM path only takes 16-byte tags
        return SecurityAssociation(ESP, spi=cfg.spi, crypt_algo="AES-GCM", crypt_key=cfg.key,
                                   nat_t_header=nat_t)
    if cfg.integrity.startswith("aes-gmac"):
        return SecurityAssociation(ESP, spi=cfg.spi, crypt_algo="AES-NULL-GMAC",
                                   crypt_key=cfg.auth_key, nat_t_header=nat_t)
    return SecurityAssociation(ESP, spi=cfg.spi,
                               crypt_algo="AES-CBC" if cfg.encryption != "null" else None,
                               crypt_key=cfg.key or None, auth_algo=SCAPY_AUTH[cfg.integrity],
                               auth_key=cfg.auth_key, nat_t_header=nat_t)


class OpenFailed(Exception):
    pass


def open_esp(esp: bytes, cfg: SaConfig, hi: int) -> tuple[bytes, bytes, bytes, int, int]:
    """Verify and decrypt one ESP packet (SPI .. ICV) with the ESN high word ``hi``.

    Returns (iv, payload, padding, pad length, next header); raises OpenFailed."""
    sa = scapy_sa(cfg)
    if sa is None:  # AES-GCM, truncated ICV: RFC 4106 §5-6 by hand
        icv, iv = cfg.icv, esp[8:16]
        aad = esp[:4] + (struct.pack("!I", hi) if cfg.esn else b"") + esp[4:8]
        decryptor = Cipher(algorithms.AES(cfg.key[:-4]),
                           modes.GCM(cfg.key[-4:] + iv, esp[-icv:], min_tag_length=icv)
                           ).decryptor()
        decryptor.authenticate_additional_data(aad)
        try:
            text = decryptor.update(esp[16:-icv]) + decryptor.finalize()
        except InvalidTag as error:
            raise OpenFailed(error) from None
        padlen, nh = text[-2], text[-1]
        return iv, text[:-2 - padlen], text[-2 - padlen:-2], padlen, nh
    packet = ESP(esp)
    try:
        sa.auth_algo.verify(packet, sa.auth_key, esn_en=cfg.esn, esn=hi)
        plain = sa.crypt_algo.decrypt(sa, packet, sa.crypt_key,
                                      sa.crypt_algo.icv_size or sa.auth_algo.icv_size,
                                      esn_en=cfg.esn, esn=hi)
    except IPSecIntegrityError as error:
        raise OpenFailed(error) from None
    return (bytes(plain.iv), bytes(plain.data), bytes(plain.padding), plain.padlen, plain.nh)


def scapy_decrypt_tcp(ip_bytes: bytes, cfg: SaConfig, ipv6: bool, hi: int) -> Optional[bytes]:
    """The whole scapy path: SecurityAssociation.decrypt of the IP datagram; the TCP bytes."""
    sa = scapy_sa(cfg)
    if sa is None:
        return None
    cls = IPv6 if ipv6 else IP
    plain = sa.decrypt(cls(ip_bytes), esn_en=cfg.esn, esn=hi)
    # re-dissect: after an IPv6 extension header scapy guesses the payload class from the
    # fixed header's Next Header, not from the restored one
    return bytes(cls(bytes(plain))[TCP])


@dataclass
class Segment:
    ip_len: int  # IPv4 Total Length / 40 + IPv6 Payload Length
    sn: int  # 32-bit SN on the wire
    tcp_seq: int
    chunk: int
    pad: int
    flags: int
    ip_id: Optional[int]
    iv: bytes


def check_segments(frames: list[bytes], sup: Super, *, full_scapy: bool = True
                   ) -> list[Segment]:
    """Every rule of docs/protocol.md section 11 on the segments of ``sup``; returns what
    each one carried."""
    cfg, ipv6, mss, L = sup.cfg, sup.ipv6, sup.mss, len(sup.payload)
    n = sup.nsegs
    assert len(frames) == n
    l2 = sup.oob["l2_len"]
    tcp_tpl, thl = sup.tcp_header, len(sup.tcp_header)
    tcp_seq0, tcp_flags0 = struct.unpack_from("!I", tcp_tpl, 4)[0], tcp_tpl[13]
    align = cfg.align
    out, chunks, ivs = [], [], []
    for i, frame in enumerate(frames):
        assert frame[:l2] == sup.frame[:l2]
        ip = frame[l2:]
        if ipv6:
            ihl = len(sup.ip_header)  # 40 + extension headers before ESP
            assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40  # Payload Length
            assert ip[:4] == sup.ip_header[:4] and ip[6:ihl] == sup.ip_header[6:]
            ip_id = None
            src, dst = ip[8:24], final_destination(ip[:ihl])
        else:
            ihl = (ip[0] & 0xF) * 4
            assert ip[:ihl][:2] == sup.ip_header[:2] and ihl == len(sup.ip_header)
            assert struct.unpack_from("!H", ip, 2)[0] == len(ip)  # Total Length
            assert csum_sum(ip[:ihl]) == 0xFFFF  # IPv4 header checksum
            ip_id = struct.unpack_from("!H", ip, 4)[0]
            id0 = struct.unpack_from("!H", sup.ip_header, 4)[0]
            assert ip_id == (id0 + i) & (0x7FFF if sup.lso_version == 2 else 0xFFFF)  # G16
            assert ip[6:10] == sup.ip_header[6:10]  # flags/DF, fragment offset, TTL, protocol
            assert ip[12:ihl] == sup.ip_header[12:]  # addresses, options
            src, dst = ip[12:16], ip[16:20]
        off = ihl
        if cfg.udp_encap:
            sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", ip, off)
            assert (sport, dport) == cfg.udp_encap
            assert ulen == len(ip) - off
            if ipv6:
                assert ucsum != 0
                assert csum_sum(pseudo_header(True, src, dst, 17, ulen) + ip[off:]) == 0xFFFF
            else:
                assert ucsum == 0  # RFC 3948
            off += 8
        esp = ip[off:]
        spi, sn = struct.unpack_from("!II", esp)
        sn64 = sup.sn0 + i
        assert spi == cfg.spi
        assert sn == sn64 & 0xFFFFFFFF  # G6: SN0 .. SN0+n-1
        hi = sn64 >> 32 if cfg.esn else 0
        iv, tcp, padding, padlen, nh = open_esp(esp, cfg, hi)
        if cfg.esn and hi != sup.sn0 >> 32:
            # past 2^32 the ICV covers hi+1: the stored high word no longer verifies it
            with pytest.raises(OpenFailed):
                open_esp(esp, cfg, sup.sn0 >> 32)
        assert nh == 6
        assert padlen == -(len(tcp) + 2) % align
        assert padding == bytes(range(1, padlen + 1))
        assert len(esp) == 8 + cfg.iv_len + len(tcp) + padlen + 2 + cfg.icv
        if cfg.gcm or cfg.iv_len == 8:  # GCM / GMAC: the IV is the 64-bit SN (G5)
            assert iv == struct.pack("!Q", sn64)
        # TCP: the template with seq, flags and checksum per segment
        assert tcp[:4] == tcp_tpl[:4] and tcp[8:13] == tcp_tpl[8:13]
        assert tcp[14:16] == tcp_tpl[14:16] and tcp[18:thl] == tcp_tpl[18:thl]  # options
        seq = struct.unpack_from("!I", tcp, 4)[0]
        assert seq == (tcp_seq0 + i * mss) & 0xFFFFFFFF
        flags = tcp[13]
        want = tcp_flags0
        if i != n - 1:
            want &= ~0x09  # FIN, PSH only on the last
        if i != 0:
            want &= ~0x80  # CWR only on the first (G17); ECE, ACK on all
        assert flags == want & 0xFF
        assert csum_sum(pseudo_header(ipv6, src, dst, 6, len(tcp)) + tcp) == 0xFFFF  # G23
        chunk = tcp[thl:]
        assert len(chunk) == min(mss, L - i * mss)
        if full_scapy:
            whole = scapy_decrypt_tcp(ip, cfg, ipv6, hi)
            assert whole is None or whole == tcp
        chunks.append(chunk)
        ivs.append(iv)
        out.append(Segment(len(ip), sn, seq, len(chunk), padlen, flags, ip_id, iv))
    if cfg.iv_len:
        assert len(set(ivs)) == len(ivs)  # a fresh IV per segment
    assert b"".join(chunks) == sup.payload
    return out


def run_ok(miniport: Miniport, sup: Super, **kw) -> list[Segment]:
    result = send(miniport, sup)
    assert list(result.status) == [0], result.reason_counts()
    return check_segments(result.wire.frames_of(0), sup, **kw)


# -- a worked example: IPv4, MSS 1400, 4000 payload bytes, TCP header 20 ---------------------

@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("cfg, lengths, pads", [
    pytest.param(gcm(128, 16, seq=77), (1476, 1476, 1276), (2, 2, 2), id="aes-gcm-128"),
    pytest.param(cbc(128, "hmac-sha1-96", seq=77), (1480, 1480, 1288), (2, 2, 10),
                 id="aes-cbc-128+hmac-sha1-96"),
])
def test_worked_example(pure, cfg, lengths, pads):
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(4000), 1400, tcp_seq=5000)
    segs = run_ok(miniport, sup)
    assert [s.chunk for s in segs] == [1400, 1400, 1200]
    assert [s.sn for s in segs] == [77, 78, 79]
    assert [s.tcp_seq for s in segs] == [5000, 6400, 7800]
    assert [s.pad for s in segs] == list(pads)
    assert tuple(s.ip_len for s in segs) == lengths


# -- every algorithm family, IPv4/IPv6, LSOv1/LSOv2 ---------------------------------------------

@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("lso_version", [1, 2], ids=["lsov1", "lsov2"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("suite", list(SUITES))
def test_round_trip_every_suite(pure, suite, ipv6, lso_version):
    cfg = SUITES[suite]
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, ipv6)
    sup = build_super(cfg, h, payload_of(2 * 700 + 123, seed=len(suite)), 700, ipv6=ipv6,
                      lso_version=lso_version, flags=0xD9)  # CWR ECE ACK PSH FIN
    if ipv6 and lso_version == 1:  # NDIS LSOv1 is IPv4 only: the NBL fails, nothing leaves
        result = send(miniport, sup)
        assert [int(s) for s in result.status] == [FAILURE]
        assert result.reasons[0] == Reason.LSO_DISABLED and result.wire.num_buffers == 0
        return
    segs = run_ok(miniport, sup)
    assert [s.flags for s in segs] == [0xD0, 0x50, 0x59]


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("make", [gcm, cbc, gmac], ids=["gcm", "cbc", "gmac"])
def test_udp_encapsulated(pure, make, ipv6):
    """Transport ESP in UDP: UDP length per segment; checksum 0 (IPv4) / valid (IPv6)."""
    cfg = make(udp_encap=(4500, 4500))
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, ipv6)
    sup = build_super(cfg, h, payload_of(3000), 1000, ipv6=ipv6, pad_length=3)
    assert sup.oob["esp_off4"] == (7 if not ipv6 else 12)
    assert len(run_ok(miniport, sup)) == 3


# -- IP ID, flags, sequence numbers ---------------------------------------------------------

@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("lso_version, id0, ids", [
    (2, 0x7FFE, [0x7FFE, 0x7FFF, 0x0000, 0x0001]),
    (2, 0xFFFE, [0x7FFE, 0x7FFF, 0x0000, 0x0001]),  # 15 bits even if the stack gave more
    (1, 0xFFFE, [0xFFFE, 0xFFFF, 0x0000, 0x0001]),
    (1, 0x7FFE, [0x7FFE, 0x7FFF, 0x8000, 0x8001]),
])
def test_ipv4_id(pure, lso_version, id0, ids):
    cfg = gcm()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(3500), 1000, lso_version=lso_version, ip_id=id0)
    assert [s.ip_id for s in run_ok(miniport, sup)] == ids


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("flags, want", [
    (0xD9, [0xD0, 0x50, 0x50, 0x59]),  # CWR first only; FIN/PSH last only; ECE/ACK all
    (0x10, [0x10] * 4),
    (0x19, [0x10, 0x10, 0x10, 0x19]),
    (0x90, [0x90, 0x10, 0x10, 0x10]),
])
def test_tcp_flags(pure, flags, want):
    cfg = cbc()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, True)
    sup = build_super(cfg, h, payload_of(3100), 1000, ipv6=True, flags=flags)
    assert [s.flags for s in run_ok(miniport, sup)] == want


@pytest.mark.parametrize("pure", KERNELS)
def test_tcp_sequence_wraps(pure):
    cfg = gcm()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(2500), 1000, tcp_seq=0xFFFFFC00)
    assert [s.tcp_seq for s in run_ok(miniport, sup)] == [0xFFFFFC00, 0xFFFFFFE8, 0x3D0]


# -- edges of L, MSS, header shape ----------------------------------------------------------

@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("L, mss, nsegs", [
    pytest.param(500, 1000, 1, id="L<MSS"),
    pytest.param(3000, 1000, 3, id="L=3MSS"),
    pytest.param(3001, 1000, 4, id="L=3MSS+1"),
    pytest.param(1, 1000, 1, id="L=1"),
    pytest.param(50, 1, 50, id="MSS=1"),
    pytest.param(0, 1000, 1, id="L=0"),
    pytest.param(1000, 1000, 1, id="L=MSS"),
])
@pytest.mark.parametrize("make", [gcm, cbc], ids=["gcm", "cbc"])
def test_lengths(pure, make, L, mss, nsegs):
    cfg = make()
    miniport = seeded_miniport(pure)
    for ipv6 in (False, True):
        h = offload(miniport, cfg, ipv6)
        sup = build_super(cfg, h, payload_of(L), mss, ipv6=ipv6, flags=0xD9)
        segs = run_ok(miniport, sup)
        assert len(segs) == nsegs
        if L == 0:  # one header-only segment keeps every flag
            assert segs[0].chunk == 0 and segs[0].flags == 0xD9


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_64k_super_packet(pure, ipv6):
    """The largest super-packet an IPv4 Total Length could describe, into 1448-byte segments."""
    cfg = gcm()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, ipv6)
    L = 65535 - (20 + 8 + 8 + 20)
    sup = build_super(cfg, h, payload_of(L), 1448, ipv6=ipv6, lso_version=1 if not ipv6 else 2)
    segs = run_ok(miniport, sup, full_scapy=False)
    assert len(segs) == 46 and segs[-1].chunk == L - 45 * 1448


@pytest.mark.parametrize("pure", KERNELS)
def test_tcp_options_copied(pure):
    """Timestamps (12 option bytes) on every segment, unaltered ("Offloading the Segmentation of
    Large TCP Packets")."""
    cfg = cbc(256, "hmac-sha256-128")
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    options = TS_OPTIONS + bytes([1, 1, 1, 0])  # 16 bytes: timestamps, NOPs, EOL
    for opts in (TS_OPTIONS, options, bytes(40)):
        sup = build_super(cfg, h, payload_of(4000), 1388, options=opts)
        assert len(run_ok(miniport, sup)) == 3  # check_segments compares the option bytes


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("udp", [False, True], ids=["esp", "udp-esp"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_ip_options_copied(pure, ipv6, udp):
    """IPv4 options / an IPv6 hop-by-hop header before ESP: copied to every segment."""
    cfg = gcm(udp_encap=(4500, 4500) if udp else None)
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, ipv6)
    if ipv6:  # hop-by-hop: Next Header, length 0, PadN of 4 bytes
        ip_options = bytes([0, 0, 1, 4, 0, 0, 0, 0])
    else:  # Router Alert
        ip_options = bytes([148, 4, 0, 0])
    sup = build_super(cfg, h, payload_of(2100), 1000, ipv6=ipv6, ip_options=ip_options)
    assert sup.oob["esp_off4"] == (48 if ipv6 else 24) // 4 + (2 if udp else 0)
    assert len(run_ok(miniport, sup)) == 3


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("pad_length", [1, 3, 16, 255])
def test_pad_length_discarded(pure, pad_length):
    """G7: exactly PadLength bytes of junk leave the super-packet; none reach the wire."""
    cfg = cbc()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, True)
    sup = build_super(cfg, h, payload_of(2500), 1000, ipv6=True, pad_length=pad_length)
    assert len(run_ok(miniport, sup)) == 3


@pytest.mark.parametrize("pure", KERNELS)
def test_several_super_packets_in_one_batch(pure):
    miniport = seeded_miniport(pure)
    sups = []
    for k, (cfg, ipv6) in enumerate([(gcm(), False), (cbc(), True), (gmac(), False),
                                     (null(), True)]):
        h = offload(miniport, cfg, ipv6)
        sups.append(build_super(cfg, h, payload_of(1000 + 900 * k, seed=k), 600 + k,
                                ipv6=ipv6, lso_version=2 if ipv6 else 1 + k % 2))
    result = send(miniport, *sups)
    assert list(result.status) == [0] * 4
    for k, sup in enumerate(sups):
        check_segments(result.wire.frames_of(k), sup)
    assert list(result.wire.nb_nbl) == sorted(result.wire.nb_nbl)  # NBL order kept


# -- ESP sequence numbers around 2^32 (G6) --------------------------------------------------

@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("make", [gcm, cbc, gmac, lambda **kw: gcm(256, 8, **kw),
                                  lambda **kw: null("hmac-md5-96", **kw)],
                         ids=["gcm", "cbc", "gmac", "gcm256-icv8", "null-md5"])
def test_esn_crossing(pure, make):
    """SN0 .. SN0+3 straddle 2^32: past it the ICV covers hi+1; the NIC's hi stays put."""
    hi = 7
    cfg = make(esn=True, seq=(hi << 32) | 0xFFFFFFFE)
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(3500), 1000)
    segs = run_ok(miniport, sup)  # opens each segment with its own high word
    assert [s.sn for s in segs] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    assert miniport.sa_record(h)["seq_hi"] == hi


@pytest.mark.parametrize("pure", KERNELS)
def test_esn_crossing_scapy_whole_path(pure):
    """The same via SecurityAssociation.decrypt with esn_en and esn=hi / hi+1."""
    hi = 0x1234
    cfg = gcm(esn=True, seq=(hi << 32) | 0xFFFFFFFF)
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, True)
    sup = build_super(cfg, h, payload_of(2000), 1000, ipv6=True)
    frames = send(miniport, sup).wire.frames_of(0)
    sa = scapy_sa(cfg)
    first, second = (IPv6(f[14:]) for f in frames)
    assert bytes(sa.decrypt(first, esn_en=True, esn=hi)[TCP])[20:] == sup.payload[:1000]
    assert bytes(sa.decrypt(second, esn_en=True, esn=hi + 1)[TCP])[20:] == sup.payload[1000:]
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(IPv6(frames[1][14:]), esn_en=True, esn=hi)


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("seq, L, ok", [
    (0xFFFFFFFD, 3000, True),  # last segment SN 2^32-1
    (0xFFFFFFFE, 3000, False),  # the third would need 2^32
    (0xFFFFFFFF, 1, True),
    (0xFFFFFFFF, 1001, False),
])
def test_no_esn_exhaustion(pure, seq, L, ok):
    """Without ESN an NBL whose segments would pass 2^32-1 fails whole (nothing leaves)."""
    cfg = cbc(seq=seq)
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(L), 1000)
    g = gcm()
    hg = offload(miniport, g, False)
    good = build_super(g, hg, payload_of(1500), 1000)
    good2 = build_super(replace(g, seq=g.seq + 100), hg, payload_of(1500), 1000)  # fresh SNs
    result = send(miniport, good, sup, good2)
    if ok:
        assert list(result.status) == [0, 0, 0]
        check_segments(result.wire.frames_of(1), sup)
    else:
        assert list(result.status) == [0, FAILURE, 0]
        assert result.wire.frames_of(1) == []
        assert Reason.SEQ_EXHAUSTED in set(result.reasons)
    check_segments(result.wire.frames_of(0), good)
    check_segments(result.wire.frames_of(2), good2)


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("seq, L, ok", [
    (2**64 - 3, 3000, True),  # last segment SN 2^64-1
    (2**64 - 3, 3001, False),
])
def test_esn_exhaustion(pure, seq, L, ok):
    """With ESN the segments may not pass 2^64-1 either."""
    cfg = gcm(esn=True, seq=seq)
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(L), 1000)
    result = send(miniport, sup)
    if ok:
        assert [s.sn for s in check_segments(result.wire.frames(), sup)] == [
            0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF]
    else:
        assert int(result.status[0]) == FAILURE and result.wire.num_buffers == 0


def _routing(rtype: int, segments_left: int, addresses: list[str], extra: bytes = b"") -> bytes:
    packed = b"".join(ipaddress.ip_address(a).packed for a in addresses)
    return bytes([0, 2 * len(addresses), rtype, segments_left]) + extra.ljust(4, b"\0") + packed


FINAL, VIA = "2001:db8:f::1", "2001:db8:e::1"
HBH = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # PadN
DSTOPT = bytes([0, 0, 1, 4, 0, 0, 0, 0])


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("chain, final", [
    pytest.param([(43, _routing(0, 1, [FINAL]))], FINAL, id="type0"),
    pytest.param([(0, HBH), (60, DSTOPT), (43, _routing(0, 2, [VIA, FINAL])), (60, DSTOPT)],
                 FINAL, id="hbh-dst-type0x2-dst"),
    pytest.param([(43, _routing(2, 1, [FINAL]))], FINAL, id="type2"),
    pytest.param([(43, _routing(4, 1, [FINAL, VIA], bytes([1, 0, 0, 0])))], FINAL, id="srh"),
    pytest.param([(43, _routing(0, 0, [VIA]))], ADDRS[True][1], id="segments-left-0"),
    pytest.param([(43, _routing(253, 1, [VIA]))], ADDRS[True][1], id="unknown-type"),
])
def test_ipv6_routing_header_final_destination(pure, chain, final):
    """RFC 8200 §8.1: segment TCP checksums use the routing header's final destination. A NIC
    may instead refuse such a super-packet (FAILURE, nothing sent); it may never send a
    segment checksummed against the first hop. Without segments left nothing changes."""
    cfg = cbc()
    miniport = seeded_miniport(pure)
    h = offload(miniport, cfg, True)
    sup = build_super(cfg, h, payload_of(2100), 1000, ipv6=True, ip_options=chain)
    assert final_destination(sup.ip_header) == ipaddress.ip_address(final).packed
    result = send(miniport, sup)
    if final == ADDRS[True][1] and not routed(sup):
        assert int(result.status[0]) == 0
    check_or_refused(result, sup)


def routed(sup: Super) -> bool:
    """An IPv6 routing header with Segments Left > 0 before ESP."""
    header, nh, off = sup.ip_header, sup.ip_header[6] if sup.ipv6 else None, 40
    while sup.ipv6 and off < len(header) and nh in (0, 43, 60):
        if nh == 43 and header[off + 3]:
            return True
        nh, off = header[off], off + (header[off + 1] + 1) * 8
    return False


def check_or_refused(result, sup: Super, **kw) -> None:
    """Either every segment is right, or (routed IPv6 only) the NBL failed whole."""
    if int(result.status[0]) == 0:
        check_segments(result.wire.frames_of(0), sup, **kw)
    else:
        assert routed(sup), result.reason_counts()
        assert int(result.status[0]) == FAILURE and result.wire.frames_of(0) == []
        assert Reason(result.reasons[0]) == Reason.LSO_BAD_PARAMS


# -- bad input: FAILURE, nothing of the NBL leaves --------------------------------------------

def _with_lso(sup: Super, **fields) -> Super:
    """``sup`` with slot-2 fields replaced (mss, tcp_header_offset, ip_version)."""
    cls = ndis.LsoV2Transmit if sup.lso_version == 2 else ndis.LsoV1Transmit
    lso = cls.from_value(sup.oob["lso_info"])
    for name, value in fields.items():
        setattr(lso, name, value)
    return replace(sup, oob={**sup.oob, "lso_info": lso.value})


def _with_oob(sup: Super, **oob) -> Super:
    return replace(sup, oob={**sup.oob, **oob})


def _set_tcp_offset_byte(sup: Super, value: int) -> Super:
    frame = bytearray(sup.frame)
    frame[sup.tcp_off + 12] = value
    return replace(sup, frame=bytes(frame))


BAD = {
    "mss-0": lambda s: _with_lso(s, mss=0),
    "tcp-offset-past-frame": lambda s: _with_lso(s, tcp_header_offset=1000),
    "tcp-offset-0": lambda s: _with_lso(s, tcp_header_offset=0),
    "tcp-offset-disagrees-with-esp+4": lambda s: _with_lso(s, tcp_header_offset=s.tcp_off + 4),
    "tcp-offset-disagrees-with-esp-4": lambda s: _with_lso(s, tcp_header_offset=s.tcp_off - 4),
    "esp-offset-disagrees": lambda s: _with_oob(s, esp_off4=s.oob["esp_off4"] + 1),
    "tunnel-handle": lambda s: _with_oob(s, tunnel_handle=s.oob["offload_handle"]),
    "ip-version-bit": lambda s: _with_lso(s, ip_version=int(not s.ipv6)),  # LSOv2 only
    "next-header-17": lambda s: _with_oob(s, next_header=17),
    "next-header-0": lambda s: _with_oob(s, next_header=0),
    "tcp-data-offset-4": lambda s: _set_tcp_offset_byte(s, 4 << 4),
    "tcp-data-offset-0": lambda s: _set_tcp_offset_byte(s, 0),
    "tcp-header-past-end": lambda s: _set_tcp_offset_byte(s, 15 << 4),
    "pad-length-eats-tcp-header": lambda s: _with_oob(s, pad_length=255),  # small frame
    "frame-ends-in-tcp-header": lambda s: replace(s, frame=s.frame[:s.tcp_off + 10],
                                                  oob={**s.oob, "pad_length": 0}),
    "unknown-handle": lambda s: _with_oob(s, offload_handle=s.oob["offload_handle"] + (1 << 20)),
}


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_lso_input_fails_whole_nbl(pure, bad):
    miniport = seeded_miniport(pure)
    cfg = gcm()
    h = offload(miniport, cfg, False)
    good = build_super(cfg, h, payload_of(2500), 1000)
    # the second good one with fresh SNs: an SN is sealed once (docs/send-path.md)
    good2 = build_super(replace(cfg, seq=cfg.seq + 100), h, payload_of(2500), 1000)
    small = build_super(cfg, h, payload_of(30), 1000)  # 60-byte TCP header / 255 pad overrun it
    sup = BAD[bad](small if bad in ("tcp-header-past-end", "pad-length-eats-tcp-header")
                   else good)
    result = send(miniport, good, sup, good2)
    # an ESP offset off the header chain is refused as in a non-LSO frame (INVALID_PACKET)
    status = INVALID_PACKET if bad == "esp-offset-disagrees" else FAILURE
    assert [int(s) for s in result.status] == [0, status, 0]
    assert result.wire.frames_of(1) == []
    assert list(result.lso_complete) == [LSO_V2_TYPE] * 3
    check_segments(result.wire.frames_of(0), good, full_scapy=False)
    check_segments(result.wire.frames_of(2), good2, full_scapy=False)


@pytest.mark.parametrize("pure", KERNELS)
def test_two_net_buffers_in_lso_nbl(pure):
    """An LSO NBL always has exactly one NET_BUFFER ("Offloading the Segmentation of
    Large TCP Packets"): neither buffer leaves."""
    miniport = seeded_miniport(pure)
    cfg = gcm()
    h = offload(miniport, cfg, False)
    sup = build_super(cfg, h, payload_of(2500), 1000)
    result = send(miniport, sup, extra=[([sup.frame, sup.frame], sup.oob)])
    assert [int(s) for s in result.status] == [0, FAILURE]
    assert result.wire.frames_of(1) == []
    assert {Reason(r) for r in result.reasons[1:]} <= {Reason.LSO_BAD_PARAMS, Reason.NBL_FAILED}
    check_segments(result.wire.frames_of(0), sup, full_scapy=False)


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("disable, ipv6, lso_version", [
    ("lso_v2_ipv4", False, 2),
    ("lso_v2_ipv6", True, 2),
    ("lso_v1", False, 1),
])
def test_lso_disabled(pure, disable, ipv6, lso_version):
    miniport = seeded_miniport(pure)
    cfg = cbc()
    handles = {v6: offload(miniport, cfg, v6) for v6 in (False, True)}

    def sup_of(v6, version):
        return build_super(cfg, handles[v6], payload_of(2500), 1000, ipv6=v6,
                           lso_version=version)

    others = [(v6, v) for v6, v in [(False, 2), (True, 2), (False, 1)]
              if (v6, v) != (ipv6, lso_version)]
    assert miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        **{disable: ndis.OffloadLso.DISABLED})) == NdisStatus.SUCCESS
    target = sup_of(ipv6, lso_version)
    result = send(miniport, target, *[sup_of(*o) for o in others])
    assert [int(s) for s in result.status] == [FAILURE, 0, 0]
    assert result.wire.frames_of(0) == [] and result.reasons[0] == Reason.LSO_DISABLED
    assert result.lso_complete[0] == (LSO_V2_TYPE if lso_version == 2 else 0)
    # switched on again, the same NBL goes out
    miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        **{disable: ndis.OffloadLso.ENABLED}))
    run_ok(miniport, target, full_scapy=False)


@pytest.mark.parametrize("pure", KERNELS)
def test_lso_without_lso_supported_capability(pure):
    caps = replace(Miniport().capabilities, lso_supported=False)
    miniport = Miniport(caps, pure_python=pure)
    cfg = gcm()
    sup = build_super(cfg, offload(miniport, cfg, False), payload_of(2500), 1000)
    result = send(miniport, sup)
    assert int(result.status[0]) == FAILURE and result.wire.num_buffers == 0


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("make", [gcm, cbc], ids=["gcm", "cbc"])
def test_segment_larger_than_an_ip_datagram_fails(pure, ipv6, make):
    """MSS >= L ~ 64 KiB: the one segment would need an IPv4 Total Length / IPv6 Payload
    Length above 65535; the NIC must not send a frame whose length field wrapped."""
    miniport = seeded_miniport(pure)
    cfg = make()
    h = offload(miniport, cfg, ipv6)
    L = 65535 - (20 + 8 + 8 + 20)
    sup = build_super(cfg, h, payload_of(L), 65535, ipv6=ipv6)
    result = send(miniport, sup)
    assert int(result.status[0]) == FAILURE and result.wire.num_buffers == 0
    # the largest segment that still fits is sent
    budget = 65535 - (0 if ipv6 else 20) - 8 - cfg.iv_len - cfg.icv
    fits = budget - budget % cfg.align - 22  # TCP header + payload + pad + 2 fill the budget
    sup = build_super(cfg, h, payload_of(fits), 65535, ipv6=ipv6)
    segs = run_ok(miniport, sup, full_scapy=False)
    assert len(segs) == 1 and segs[0].ip_len <= 65535 + (40 if ipv6 else 0)


# -- LSO completion info ("NDIS_TCP_LARGE_SEND_OFFLOAD_NET_BUFFER_LIST_INFO") ----------------

@pytest.mark.parametrize("pure", KERNELS)
def test_completion_info(pure):
    miniport = seeded_miniport(pure)
    cfg = gcm()
    h4, h6 = offload(miniport, cfg, False), offload(miniport, cfg, True)
    v1 = build_super(cfg, h4, payload_of(3333), 1000, lso_version=1)
    v2 = build_super(cfg, h6, payload_of(3333), 1000, ipv6=True)
    v1_bad = _with_lso(v1, mss=0)
    v2_bad = _with_oob(v2, next_header=17)
    v1_empty = build_super(replace(cfg, seq=cfg.seq + 100), h4, b"", 1000, lso_version=1)
    result = send(miniport, v1, v2, v1_bad, v2_bad, v1_empty)
    assert [int(s) for s in result.status] == [0, 0, FAILURE, FAILURE, 0]
    assert [int(v) for v in result.lso_complete] == [3333, LSO_V2_TYPE, 0, LSO_V2_TYPE, 0]
    done = ndis.LsoV1TransmitComplete.from_value(int(result.lso_complete[0]))
    assert done.tcp_payload == 3333 and ndis.lso_type_of(result.lso_complete[0]) == 0
    assert ndis.lso_type_of(result.lso_complete[1]) == 1


@pytest.mark.parametrize("pure", KERNELS)
def test_send_net_buffer_lists_writes_completion_back(pure):
    miniport = seeded_miniport(pure)
    cfg = cbc()
    h4, h6 = offload(miniport, cfg, False), offload(miniport, cfg, True)
    v1 = build_super(cfg, h4, payload_of(2500), 1000, lso_version=1)
    v2 = build_super(cfg, h6, payload_of(2500), 1000, ipv6=True)
    v1_bad = _with_lso(v1, tcp_header_offset=3)
    plain = ndis.NetBufferList(net_buffers=[ndis.NetBuffer(bytearray(v1.frame))])
    nbls = [v1.nbl(), v2.nbl(), v1_bad.nbl(), plain]
    result = miniport.send(nbls)
    assert [n.status for n in nbls] == [0, 0, FAILURE, 0]
    lso = ndis.NblInfo.TCP_LARGE_SEND
    assert nbls[0].get_info(lso) == ndis.LsoV1TransmitComplete(tcp_payload=2500).value == 2500
    assert nbls[1].get_info(lso) == ndis.LsoV2TransmitComplete().value == LSO_V2_TYPE
    assert nbls[2].get_info(lso) == 0  # v1 failure: TcpPayload 0
    assert nbls[3].get_info(lso) == 0
    check_segments(result.wire.frames_of(0), v1, full_scapy=False)
    check_segments(result.wire.frames_of(1), v2, full_scapy=False)
    assert result.wire.frames_of(2) == [] and result.wire.frames_of(3) == [v1.frame]


# -- compiled kernels vs the pure-Python twin, byte for byte -----------------------------------

SUITE_MAKERS = [lambda **kw: gcm(128, 16, **kw), lambda **kw: gcm(256, 12, **kw),
                lambda **kw: cbc(128, "hmac-sha1-96", **kw),
                lambda **kw: gmac(192, **kw), lambda **kw: null("hmac-md5-96", **kw)]


# damage that fails an NBL whatever the super-packet (the other two entries depend on L)
ALWAYS_BAD = sorted(set(BAD) - {"tcp-header-past-end", "pad-length-eats-tcp-header"})


@st.composite
def lso_cases(draw):
    mss = draw(st.one_of(st.integers(1, 2000), st.integers(1, 64)))
    max_segments = draw(st.sampled_from([1, 4, 48]))
    L = draw(st.integers(0, min(12000, mss * max_segments)))
    n = max(1, -(-L // mss))
    esn = draw(st.booleans())
    low = draw(st.one_of(st.integers(1, 0xFFFFFFFF),  # near 2^32 half of the time
                         st.integers(max(1, 0xFFFFFFFF - n - 2), 0xFFFFFFFF)))
    hi = draw(st.integers(0, 0xFFFFFFFE)) if esn else 0
    options = draw(st.binary(max_size=40))
    return dict(
        make=draw(st.sampled_from(range(len(SUITE_MAKERS)))), esn=esn, seq=(hi << 32) | low,
        udp=draw(st.booleans()), ipv6=draw(st.booleans()),
        lso_version=draw(st.sampled_from([1, 2])), L=L, mss=mss,
        options=options + bytes(-len(options) % 4),  # thl 20..60
        pad_length=draw(st.integers(0, 20)), ip_id=draw(st.integers(0, 0xFFFF)),
        tcp_seq=draw(st.integers(0, 0xFFFFFFFF)),
        flags=draw(st.integers(0, 0xFF)) & ~0x26,  # URG, RST, SYN never set in LSO input
        seed=draw(st.integers(0, 2**32)),
        damage=draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(list(BAD)))),
        ext=draw(st.sampled_from(list(IPV6_CHAINS))))


# IPv6 extension headers before ESP for the fuzz; "bogus" claims more bytes than it has
IPV6_CHAINS = {
    "none": [],
    "hbh": [(0, HBH)],
    "type0": [(60, DSTOPT), (43, _routing(0, 2, [VIA, FINAL]))],
    "srh": [(43, _routing(4, 1, [FINAL, VIA], bytes([1, 0, 0, 0])))],
    "bogus": [(43, bytes([0, 9, 0, 1]) + bytes(4) + ipaddress.ip_address(FINAL).packed)],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=lso_cases())
def test_fuzz_compiled_matches_twin(case):
    """Random L, MSS 1..2000, TCP header 20..60, PadLength 0..20, SN near 2^32, ESN on/off,
    LSOv1/v2, IPv4/IPv6, UDP-ESP, sometimes damaged OOB info: both kernels, same bytes."""
    cfg = SUITE_MAKERS[case["make"]](esn=case["esn"], seq=case["seq"],
                                    udp_encap=(4500, 4500) if case["udp"] else None)
    results, sup = [], None
    for pure in (False, True):
        miniport = seeded_miniport(pure, case["seed"])
        h = offload(miniport, cfg, case["ipv6"])
        sup = build_super(cfg, h, payload_of(case["L"], case["seed"]), case["mss"],
                          ipv6=case["ipv6"], lso_version=case["lso_version"],
                          options=case["options"], pad_length=case["pad_length"],
                          ip_id=case["ip_id"], tcp_seq=case["tcp_seq"], flags=case["flags"],
                          ip_options=IPV6_CHAINS[case["ext"]] if case["ipv6"] else b"")
        if case["damage"]:
            sup = BAD[case["damage"]](sup)
        results.append(send(miniport, sup))
    compiled, twin = results
    assert list(compiled.status) == list(twin.status)
    assert list(compiled.reasons) == list(twin.reasons)
    assert list(compiled.lso_complete) == list(twin.lso_complete)
    assert compiled.wire.frames() == twin.wire.frames()
    damage = case["damage"]
    if damage == "ip-version-bit" and sup.lso_version == 1:
        damage = None  # LSOv1 has no IPVersion bit
    exhausted = not cfg.esn and cfg.seq + sup.nsegs - 1 > 0xFFFFFFFF
    if sup.ipv6 and case["ext"] == "bogus":
        # the extension header claims more bytes than it has: ESP is not where the header
        # chain says (INVALID_PACKET, as in a non-LSO frame), whatever else is damaged
        assert int(compiled.status[0]) in (FAILURE, INVALID_PACKET)
        assert compiled.wire.num_buffers == 0
    elif sup.ipv6 and sup.lso_version == 1:  # NDIS LSOv1 is IPv4 only
        assert int(compiled.status[0]) in (FAILURE, INVALID_PACKET)
        assert compiled.wire.num_buffers == 0
    elif exhausted or damage in ALWAYS_BAD:
        # an ESP offset off the header chain is INVALID_PACKET (as without LSO)
        expect = (FAILURE, INVALID_PACKET) if damage == "esp-offset-disagrees" else (FAILURE,)
        assert int(compiled.status[0]) in expect and compiled.wire.num_buffers == 0
    elif not damage and not (sup.ipv6 and case["ext"] == "bogus"):
        check_or_refused(compiled, sup, full_scapy=False)


# -- end to end through the host stack model -----------------------------------------------------

def plain_tcp(payload: bytes, *, ipv6: bool = False, options: bytes = b"", flags: int = 0xD9,
              tcp_seq: int = 1000, ip_id: int = 0x7FFE) -> bytes:
    """A plain TCP/IP packet as the host stack's LSO path takes it."""
    from scapy.packet import Raw
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, tcp_seq, ACK, (thl // 4) << 4, flags,
                      WINDOW, 0, 0) + options
    src, dst = ADDRS[ipv6]
    if ipv6:
        ip = IPv6(src=src, dst=dst, nh=6, hlim=61, tc=0x28, fl=0x12345)
    else:
        ip = IP(src=src, dst=dst, proto=6, ttl=61, tos=0x28, id=ip_id, flags="DF")
    return bytes(ip / Raw(tcp + payload))


def super_from_batch(batch, cfg: SaConfig, payload: bytes, mss: int, lso_version: int,
                     sn0: int) -> Super:
    """The ``Super`` description of the one NBL in ``batch`` (HostStack.build_lso output)."""
    assert len(batch) == 1 and batch.num_buffers == 1
    frame = batch.frame(0)
    oob = {name: int(getattr(batch, name)[0]) for name in
           ("offload_handle", "tunnel_handle", "next_header", "pad_length", "ah_off4",
            "esp_off4", "lso_info", "l2_len")}
    l2, tcp_off = oob["l2_len"], (oob["lso_info"] >> 20) & 0x3FF
    ipv6 = frame[l2] >> 4 == 6
    ihl = 40 if ipv6 else (frame[l2] & 0xF) * 4
    thl = (frame[tcp_off + 12] >> 4) * 4
    return Super(frame, oob, cfg, ipv6, payload, mss, frame[tcp_off:tcp_off + thl],
                 frame[l2:l2 + ihl], sn0, lso_version)


def stack_pair(cfg: SaConfig, link: str = "ethernet"):
    """(stack, sa) that sends, and a twin (stack, sa) on its own miniport whose build_lso
    shows the super-packet the first one hands to its miniport."""
    from ipsecoffload import HostStack
    pairs = []
    for _ in range(2):
        stack = HostStack(seeded_miniport(False), link=link)
        pairs.append((stack, stack.add_sa(cfg)))
    return pairs


STACK_SUITES = {name: SUITES[name] for name in
                ("gcm128-icv16", "gcm256-icv8", "gmac256", "cbc128-hmac-sha1-96",
                 "cbc256-hmac-sha1-96", "null-hmac-sha256-128")}


@pytest.mark.parametrize("lso_version", [1, 2], ids=["lsov1", "lsov2"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("suite", list(STACK_SUITES))
def test_stack_send_lso(suite, ipv6, lso_version):
    cfg = replace(STACK_SUITES[suite], seq=1000)
    (stack, sa), (twin, twin_sa) = stack_pair(cfg)
    payload = payload_of(5000, seed=3)
    packet = plain_tcp(payload, ipv6=ipv6, options=TS_OPTIONS)
    if ipv6 and lso_version == 1:  # NDIS LSOv1 is IPv4 only: the stack refuses to frame it
        with pytest.raises(ValueError, match="LSOv1"):
            stack.send_lso(packet, sa, 1200, lso_version=1)
        assert sa.next_seq == 1000
        return
    sup = super_from_batch(twin.build_lso(packet, twin_sa, 1200, lso_version=lso_version,
                                          pad_length=6), cfg, payload, 1200, lso_version, 1000)
    assert sup.oob["pad_length"] == 6 and sup.oob["next_header"] == 6
    assert sup.tcp_off == 14 + (40 if ipv6 else 20) + 8 + cfg.iv_len
    result = stack.send_lso(packet, sa, 1200, lso_version=lso_version, pad_length=6)
    assert list(result.status) == [0]
    segs = check_segments(result.wire.frames_of(0), sup)
    assert len(segs) == 5 and sa.next_seq == 1005  # the stack advanced its counter by n
    assert [s.sn for s in segs] == [1000, 1001, 1002, 1003, 1004]
    assert int(result.lso_complete[0]) == (5000 if lso_version == 1 else LSO_V2_TYPE)
    # the next super-packet continues at SN0 + n
    result = stack.send_lso(packet, sa, 2500, lso_version=lso_version)
    assert [struct.unpack_from("!I", f, 14 + (40 if ipv6 else 20) + 4)[0]
            for f in result.wire.frames()] == [1005, 1006]


def test_stack_build_lso_matches_the_nic_side_helper():
    """HostStack.build_lso and build_super describe the same super-packet to the NIC."""
    for ipv6 in (False, True):
        for lso_version in ((2,) if ipv6 else (1, 2)):  # LSOv1 is IPv4 only
            for cfg in (gcm(), cbc(udp_encap=(4500, 4500))):
                (_, _), (twin, twin_sa) = stack_pair(cfg)
                payload = payload_of(3000)
                packet = plain_tcp(payload, ipv6=ipv6, options=TS_OPTIONS, ip_id=0x1234)
                batch = twin.build_lso(packet, twin_sa, 1000, lso_version=lso_version,
                                       pad_length=4)
                theirs = super_from_batch(batch, cfg, payload, 1000, lso_version, cfg.seq)
                mine = build_super(cfg, twin_sa.handles[ipv6], payload, 1000, ipv6=ipv6,
                                   lso_version=lso_version, options=TS_OPTIONS, pad_length=4,
                                   flags=0xD9)
                assert theirs.oob == {**mine.oob, "tunnel_handle": 0, "ah_off4": 0}
                assert len(theirs.frame) == len(mine.frame)
                assert theirs.tcp_header == mine.tcp_header  # same seeded checksum (G23)
                if not ipv6:  # same lengths: 0 for LSOv2, the large packet's for LSOv1
                    assert theirs.ip_header[2:4] == mine.ip_header[2:4]


@pytest.mark.parametrize("link", ["ethernet", "raw"])
@pytest.mark.parametrize("make", [gcm, cbc, gmac], ids=["gcm", "cbc", "gmac"])
def test_stack_esn_crossing(make, link):
    """A super-packet straddling 2^32: the NIC carries into hi+1 for those segments only;
    the stack then moves the miniport's high word with UPDATE_SA; the next packet uses it."""
    hi = 41
    cfg = make(esn=True, seq=(hi << 32) | 0xFFFFFFFE)
    (stack, sa), (twin, twin_sa) = stack_pair(cfg, link)
    payload = payload_of(3500)
    packet = plain_tcp(payload, ipv6=True)
    sup = super_from_batch(twin.build_lso(packet, twin_sa, 1000), cfg, payload, 1000, 2,
                           cfg.seq)
    result = stack.send_lso(packet, sa, 1000)
    handle = sa.handles[True]  # the IPv6 bundle, offloaded on first use
    segs = check_segments(result.wire.frames_of(0), sup)
    assert [s.sn for s in segs] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    assert sa.next_seq == ((hi + 1) << 32) | 2
    assert stack.miniport.sa_record(handle)["seq_hi"] == hi + 1  # UPDATE_SA from the stack
    small = plain_tcp(b"after the carry", ipv6=True)
    frame = stack.send([small], sa).wire.frame(0)
    l2 = 14 if link == "ethernet" else 0
    esp = frame[l2 + 40:]
    assert struct.unpack_from("!I", esp, 4)[0] == 2
    _, tcp, _, _, nh = open_esp(esp, cfg, hi + 1)
    assert nh == 6 and tcp.endswith(b"after the carry")


def test_stack_lso_64k():
    cfg = gcm()
    (stack, sa), (twin, twin_sa) = stack_pair(cfg)
    for lso_version, L in ((1, 65535 - 20 - 8 - 8 - 20), (2, 65535 - 20 - 20)):
        # LSOv1 states the large packet's IPv4 Total Length, ESP header and IV included;
        # LSOv2 (length 0) takes the largest plain IPv4 TCP packet
        payload = payload_of(L)
        packet = plain_tcp(payload)
        sn0 = sa.next_seq
        sup = super_from_batch(twin.build_lso(packet, twin_sa, 1448, lso_version=lso_version),
                               cfg, payload, 1448, lso_version, sn0)
        result = stack.send_lso(packet, sa, 1448, lso_version=lso_version)
        segs = check_segments(result.wire.frames_of(0), sup, full_scapy=False)
        assert len(segs) == -(-L // 1448) and sa.next_seq == sn0 + len(segs)


@pytest.mark.parametrize("pure", KERNELS)
def test_stack_mixed_batch(pure):
    """Ordinary ESP frames and super-packets in one send: each keeps its place and SNs."""
    from ipsecoffload import HostStack
    cfg = cbc(seq=10)
    stack = HostStack(seeded_miniport(pure))
    sa = stack.add_sa(cfg)
    payload = payload_of(2500)
    small = [plain_tcp(b"small %d" % i, ipv6=True) for i in range(2)]
    parts = [stack.build(small[:1], sa), stack.build_lso(plain_tcp(payload, ipv6=True), sa, 1000),
             stack.build(small[1:], sa)]
    builder = PacketBatchBuilder()
    for part in parts:
        builder.add_nbl([part.frame(0)], **{name: int(getattr(part, name)[0]) for name in
                                            ("offload_handle", "next_header", "pad_length",
                                             "esp_off4", "lso_info", "l2_len")})
    result = stack.miniport.send(builder.build())
    assert list(result.status) == [0, 0, 0]
    sup = super_from_batch(parts[1], cfg, payload, 1000, 2, 11)
    assert [s.sn for s in check_segments(result.wire.frames_of(1), sup)] == [11, 12, 13]
    for k, sn, data in ((0, 10, b"small 0"), (2, 14, b"small 1")):
        (frame,) = result.wire.frames_of(k)
        assert struct.unpack_from("!I", frame, 14 + 40 + 4)[0] == sn
        _, tcp, _, _, nh = open_esp(frame[14 + 40:], cfg, 0)
        assert nh == 6 and tcp.endswith(data)
    assert list(result.wire.nb_nbl) == [0, 1, 1, 1, 2]
