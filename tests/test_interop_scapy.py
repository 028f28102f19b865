"""Interop with scapy: an independent ESP implementation must open what we emit.

scapy (``scapy.layers.ipsec.SecurityAssociation``, GPL-2.0) is a test-time dependency
only; nothing of it goes into the package. Every frame that ``HostStack`` + ``Miniport``
put on the wire is decrypted by scapy and must give back the input packet byte for byte;
a frame with one byte flipped (SPI, SN, IV, ciphertext, trailer, ICV) must be refused.
The reverse direction checks that, given the same IV, our wire frame is byte-identical to
the one scapy builds (docs/protocol.md sections 2-10; RFC 4303, RFC 4106, RFC 4543, RFC 3948).

Two scapy limits are worked around here, each next to its workaround:
- truncated AES-GCM ICVs (8, 12 bytes): scapy's stock 'AES-GCM' always emits and expects a
  16-byte tag (secdev/scapy#4903), so those cases use a scapy ``CryptAlgo`` built on
  ``modes.GCM``, whose code path honours ``crypt_icv_size``;
- ESN with HMAC integrity: scapy releases before secdev/scapy#3908 leave the ESN high word
  out of the ESP HMAC input (RFC 4303 §2.2.1 puts it in). Those cases are always checked by
  ``open_hmac_esp`` below (plain ``cryptography``), and by scapy too when the installed
  scapy is probed to include it.
"""
from __future__ import annotations

import functools
import hmac as std_hmac
import random
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple, Optional

import pytest

pytest.importorskip("scapy.layers.ipsec")

from cryptography.hazmat.primitives import hashes, hmac  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop  # noqa: E402
from scapy.layers.ipsec import (ESP, CryptAlgo, IPSecIntegrityError,  # noqa: E402
                                SecurityAssociation)
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from ipsecoffload import Miniport, SaConfig  # noqa: E402
from ipsecoffload.host.stack import HostStack  # noqa: E402

NAT_T_PORT = 4500  # scapy binds ESP under UDP only on port 4500 (RFC 3948)
TUNNEL_ENDPOINTS = {4: ("203.0.113.1", "203.0.113.2"),
                    6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}


# -- the suites ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    """One algorithm combination, with its sizes stated here (not read from the package)."""
    name: str
    encryption: str
    integrity: Optional[str]
    icv: int
    key_len: int  # bytes of SaConfig.key (GCM: AES key || 4-byte salt)
    auth_key_len: int  # bytes of SaConfig.auth_key (GMAC: AES key || 4-byte salt)
    iv_len: int
    family: str  # gcm, gmac, cbc, null

    @property
    def hmac(self) -> bool:
        return self.family in ("cbc", "null")


HMACS = {  # name: (key bytes, ICV bytes, hash, scapy name)
    "hmac-sha1-96": (20, 12, hashes.SHA1, "HMAC-SHA1-96"),
    "hmac-sha256-128": (32, 16, hashes.SHA256, "SHA2-256-128"),
    "hmac-md5-96": (16, 12, hashes.MD5, "HMAC-MD5-96"),
}


def _suites() -> list[Suite]:
    suites = []
    for bits in (128, 192, 256):
        for icv in (8, 12, 16):
            suites.append(Suite(f"aes-gcm-{bits}-icv{icv}", f"aes-gcm-{bits}", None, icv,
                                bits // 8 + 4, 0, 8, "gcm"))
    for bits in (128, 192, 256):
        suites.append(Suite(f"aes-gmac-{bits}", "null", f"aes-gmac-{bits}", 16, 0,
                            bits // 8 + 4, 8, "gmac"))
    for bits in (128, 192, 256):
        for mac, (key_len, icv, _, _) in HMACS.items():
            suites.append(Suite(f"aes-cbc-{bits}-{mac}", f"aes-cbc-{bits}", mac, icv,
                                bits // 8, key_len, 16, "cbc"))
    for mac, (key_len, icv, _, _) in HMACS.items():
        suites.append(Suite(f"null-{mac}", "null", mac, icv, 0, key_len, 0, "null"))
    return suites


SUITES = {s.name: s for s in _suites()}
# one per family for the pure-Python twin of the kernels
PURE_SUITES = ("aes-gcm-128-icv16", "aes-gcm-256-icv8", "aes-gmac-192",
               "aes-cbc-256-hmac-sha256-128", "null-hmac-md5-96")

# scapy's AESGCM-based 'AES-GCM' ignores crypt_icv_size (always a 16-byte tag on encrypt,
# and a truncated tag is refused on decrypt: secdev/scapy#4903). The same scapy CryptAlgo
# class on the modes.GCM API truncates and verifies short tags; everything ESP-specific
# (nonce = salt || IV, AAD, padding, parsing) is still scapy's code.
SCAPY_GCM_SHORT_ICV = CryptAlgo("AES-GCM", cipher=algorithms.AES, mode=modes.GCM,
                                key_size=(16, 24, 32), salt_size=4, block_size=1, iv_size=8,
                                icv_size=16,
                                format_mode_iv=lambda sa, iv, **kw: sa.crypt_salt + iv)


def _scapy_hmac_covers_esn() -> bool:
    """Whether this scapy appends the ESN high word to the ESP HMAC input (RFC 4303 §2.2.1);
    it came with secdev/scapy#3908, older releases leave it out."""
    key = bytes(range(20))
    probe = SecurityAssociation(ESP, spi=0x1000, crypt_algo="NULL", auth_algo="HMAC-SHA1-96",
                                auth_key=key, esn_en=True, esn=7)
    esp = bytes(probe.encrypt(IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / b"x")[ESP])
    mac = hmac.HMAC(key, hashes.SHA1())
    mac.update(esp[:-12] + struct.pack("!I", 7))
    return mac.finalize()[:12] == esp[-12:]


SCAPY_HMAC_COVERS_ESN = _scapy_hmac_covers_esn()


# -- the matrix ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    suite: Suite
    version: int  # IP version of the packets (transport) / of the outer header (tunnel)
    mode: str
    variant: str  # plain, esn, udp

    @property
    def id(self) -> str:
        return f"{self.suite.name}-ipv{self.version}-{self.mode}-{self.variant}"


CASES = [Case(suite, version, mode, variant) for suite in SUITES.values()
         for version in (4, 6) for mode in ("transport", "tunnel")
         for variant in ("plain", "esn", "udp")]
PURE_CASES = [c for c in CASES if c.suite.name in PURE_SUITES]


def _rng(*parts) -> random.Random:
    """Random keys and packets, reproducible per case."""
    return random.Random(zlib.crc32("/".join(map(str, parts)).encode()))


def make_config(case: Case, rng: random.Random) -> SaConfig:
    suite = case.suite
    kw = dict(spi=rng.randrange(0x100, 0xFFFFFFFF), encryption=suite.encryption,
              key=rng.randbytes(suite.key_len), name=case.id)
    if suite.integrity:
        kw.update(integrity=suite.integrity, auth_key=rng.randbytes(suite.auth_key_len))
    if suite.family == "gcm":
        kw["icv_len"] = suite.icv
    if case.mode == "tunnel":
        kw.update(mode="tunnel", tunnel_src=TUNNEL_ENDPOINTS[case.version][0],
                  tunnel_dst=TUNNEL_ENDPOINTS[case.version][1])
    if case.variant == "udp":
        kw["udp_encap"] = (NAT_T_PORT, NAT_T_PORT)
    if case.variant == "esn":
        # the high word changes inside the run: SNs 2**32-2 .. 2**32+2
        kw.update(esn=True, seq=2**32 - 2)
    else:
        kw["seq"] = rng.randrange(1, 2**31)
    return SaConfig(**kw)


def plain_packet(rng: random.Random, version: int, proto: str) -> bytes:
    """A plain IP packet with random header fields and a small payload of random length."""
    payload = rng.randbytes(rng.randrange(0, 48))
    if proto == "tcp":
        l4 = TCP(sport=rng.randrange(1024, 65536), dport=rng.choice((80, 443, 5001)),
                 seq=rng.getrandbits(32), ack=rng.getrandbits(32), flags="PA",
                 window=rng.randrange(1, 65536))
    else:
        l4 = UDP(sport=rng.randrange(1024, 65536), dport=rng.choice((53, 123, 5201)))
    if version == 4:
        ip = IP(src=f"192.0.2.{rng.randrange(1, 255)}", dst=f"198.51.100.{rng.randrange(1, 255)}",
                id=rng.getrandbits(16), ttl=rng.randrange(1, 256), tos=rng.getrandbits(8),
                flags=rng.choice(("", "DF")))
    else:
        ip = IPv6(src=f"2001:db8:1::{rng.randrange(1, 0xFFFF):x}",
                  dst=f"2001:db8:2::{rng.randrange(1, 0xFFFF):x}", tc=rng.getrandbits(8),
                  fl=rng.getrandbits(20), hlim=rng.randrange(1, 256))
    return bytes(ip / l4 / Raw(payload))


def plain_packets(case: Case, rng: random.Random) -> list[bytes]:
    """TCP and UDP; in tunnel mode also an inner packet of the other IP version."""
    kinds = [(case.version, "tcp"), (case.version, "udp")]
    if case.mode == "tunnel":
        kinds.append((10 - case.version, "tcp"))
    count = 5 if case.variant == "esn" else 3
    return [plain_packet(rng, *kinds[i % len(kinds)]) for i in range(count)]


class Sent(NamedTuple):
    config: SaConfig
    packets: tuple
    frames: tuple
    first_seq: int


def send_case(case: Case, *, pure: bool = False, random_source=None) -> Sent:
    rng = _rng(case.id)
    config = make_config(case, rng)
    packets = plain_packets(case, rng)
    kw = {"pure_python": pure}
    if random_source is not None:
        kw["random_source"] = random_source
    stack = HostStack(Miniport(**kw), link="raw")
    sa = stack.add_sa(config)
    result = stack.send(packets, sa)
    assert result.status.tolist() == [0] * len(packets), result.reason_counts()
    frames = tuple(result.wire.frames())
    assert len(frames) == len(packets)
    assert sa.next_seq == config.seq + len(packets)
    return Sent(config, tuple(packets), frames, config.seq)


@functools.lru_cache(maxsize=None)
def sent(case: Case) -> Sent:
    """The compiled-kernel run of a case, shared by the decrypt and the tamper tests."""
    return send_case(case)


# -- wire-frame helpers ----------------------------------------------------------------------
def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class Layout(NamedTuple):
    ip_hdr_len: int  # IP header (IPv4 options included); the matrix has no IPv6 ext headers
    esp: int  # ESP header offset
    end: int  # end of the IP datagram


def esp_layout(frame: bytes, config: SaConfig, *, checksums: bool = True) -> Layout:
    """Where ESP sits in a raw-link wire frame, checking the outer headers on the way:
    protocol 50 / 17, RFC 3948 UDP header, and unless ``checksums`` is off (tampered
    frames) the IPv4 header and IPv6 UDP checksums (RFC 3948, docs/spec-gaps.md G25)."""
    if frame[0] >> 4 == 4:
        hdr = (frame[0] & 0xF) * 4
        end = struct.unpack_from("!H", frame, 2)[0]
        proto = frame[9]
        assert not checksums or _ones_sum(frame[:hdr]) == 0xFFFF, "bad IPv4 header checksum"
    else:
        hdr, end, proto = 40, 40 + struct.unpack_from("!H", frame, 4)[0], frame[6]
    assert end == len(frame)
    if not config.udp_encap:
        assert proto == 50
        return Layout(hdr, hdr, end)
    assert proto == 17
    sport, dport, length, checksum = struct.unpack_from("!HHHH", frame, hdr)
    assert (sport, dport) == config.udp_encap and length == end - hdr
    if frame[0] >> 4 == 4:
        assert checksum == 0  # RFC 3948: transmitted as 0 over IPv4
    else:  # IPv6 forbids 0: a real checksum over the final ciphertext (G25)
        pseudo = frame[8:40] + struct.pack("!IxxxB", length, 17)
        assert checksum != 0
        assert not checksums or _ones_sum(pseudo + frame[hdr:end]) == 0xFFFF
    return Layout(hdr, hdr + 8, end)


def parse_wire(frame: bytes):
    return IP(frame) if frame[0] >> 4 == 4 else IPv6(frame)


def scapy_sa(config: SaConfig, suite: Suite, *, spi: Optional[int] = None,
             tunnel_version: Optional[int] = None) -> SecurityAssociation:
    """The scapy SA that mirrors ``config``."""
    # esn=0: scapy takes ``esn or self.esn``, so a per-call high word of 0 must not fall
    # back to something else; callers pass the high word of each frame
    kw = dict(spi=config.spi if spi is None else spi, seq_num=config.seq & 0xFFFFFFFF,
              esn_en=config.esn, esn=0)
    if config.mode == "tunnel":
        outer = IP if (tunnel_version or (6 if ":" in config.tunnel_src else 4)) == 4 else IPv6
        kw["tunnel_header"] = outer(src=config.tunnel_src, dst=config.tunnel_dst)
    if config.udp_encap:
        kw["nat_t_header"] = UDP(sport=config.udp_encap[0], dport=config.udp_encap[1])
    if suite.family == "gcm":
        kw.update(crypt_algo="AES-GCM", crypt_key=config.key, crypt_icv_size=suite.icv)
    elif suite.family == "gmac":
        kw.update(crypt_algo="AES-NULL-GMAC", crypt_key=config.auth_key)
    else:
        kw.update(crypt_algo="AES-CBC" if suite.family == "cbc" else "NULL",
                  crypt_key=config.key or None, auth_algo=HMACS[suite.integrity][3],
                  auth_key=config.auth_key)
    sa = SecurityAssociation(ESP, **kw)
    if suite.family == "gcm" and suite.icv != 16:
        sa.crypt_algo = SCAPY_GCM_SHORT_ICV
    return sa


# -- every test compares at least one frame --------------------------------------------------
_FRAMES_SEEN = {"count": 0, "skipped": False}


def seen(frames, expected: int) -> list:
    """The frames a test is about to compare with scapy's: exactly ``expected`` of them, and
    never none (a comparison over zip() of nothing passes)."""
    frames = list(frames)
    assert expected > 0 and len(frames) == expected, (len(frames), expected)
    _FRAMES_SEEN["count"] += len(frames)
    return frames


@pytest.fixture(autouse=True)
def every_interop_test_sees_a_frame():
    """A check on the suite itself: each test here compared at least one of our frames with
    scapy (through ``seen`` or ``scapy_open``); a test that compared nothing fails."""
    _FRAMES_SEEN.update(count=0, skipped=False)
    yield
    assert _FRAMES_SEEN["skipped"] or _FRAMES_SEEN["count"] > 0, \
        "this interop test compared no frame with scapy"


def scapy_open(oracle: SecurityAssociation, frame: bytes, seq64: int, *,
               verify: bool = True) -> bytes:
    """scapy's decryption of one wire frame: the inner packet (tunnel) or the rebuilt
    packet (transport). Raises IPSecIntegrityError (or TypeError on an SPI mismatch)."""
    _FRAMES_SEEN["count"] += 1
    return bytes(oracle.decrypt(parse_wire(frame), verify=verify, esn_en=oracle.esn_en,
                                esn=seq64 >> 32))


def scapy_plain_esp(oracle: SecurityAssociation, frame: bytes, seq64: int):
    """scapy's _ESPPlain of a frame (padding, pad length, next header exposed)."""
    esp = parse_wire(frame)[ESP]
    icv = oracle.crypt_icv_size or oracle.crypt_algo.icv_size or oracle.auth_algo.icv_size
    return oracle.crypt_algo.decrypt(oracle, esp, oracle.crypt_key, icv,
                                     esn_en=oracle.esn_en, esn=seq64 >> 32)


def _ip_header_len(packet: bytes) -> int:
    return (packet[0] & 0xF) * 4 if packet[0] >> 4 == 4 else 40


class IntegrityFailure(Exception):
    pass


def open_hmac_esp(frame: bytes, config: SaConfig, suite: Suite, seq64: int, *,
                  checksums: bool = True) -> bytes:
    """Our own receiver for AES-CBC / NULL + HMAC, plain ``cryptography``: verify the ICV
    over SPI || SN || IV || ciphertext || SN_hi (the high word only with ESN, RFC 4303
    §2.2.1), then decrypt and rebuild the packet as a receiver would."""
    layout = esp_layout(frame, config, checksums=checksums)
    esp = frame[layout.esp:layout.end]
    _, icv_len, hash_cls, _ = HMACS[suite.integrity]
    mac = hmac.HMAC(config.auth_key, hash_cls())
    mac.update(esp[:-icv_len])
    if config.esn:
        mac.update(struct.pack("!I", seq64 >> 32))
    if not std_hmac.compare_digest(mac.finalize()[:icv_len], esp[-icv_len:]):
        raise IntegrityFailure("ICV mismatch")
    iv, text = esp[8:8 + suite.iv_len], esp[8 + suite.iv_len:-icv_len]
    if suite.family == "cbc":
        assert len(text) % 16 == 0
        decryptor = Cipher(algorithms.AES(config.key), modes.CBC(iv)).decryptor()
        text = decryptor.update(text) + decryptor.finalize()
    pad_len, next_header = text[-2], text[-1]
    assert text[-2 - pad_len:-2] == bytes(range(1, pad_len + 1))
    payload = text[:-2 - pad_len]
    if config.mode == "tunnel":
        assert next_header == (4 if payload[0] >> 4 == 4 else 41)
        return payload
    header = bytearray(frame[:layout.ip_hdr_len])  # a UDP-ESP header is dropped (RFC 3948)
    if header[0] >> 4 == 4:
        header[9] = next_header
        struct.pack_into("!H", header, 2, len(header) + len(payload))
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, ~_ones_sum(bytes(header)) & 0xFFFF)
    else:
        header[6] = next_header
        struct.pack_into("!H", header, 4, len(payload))
    return bytes(header) + payload


def _scapy_verifies(case: Case) -> bool:
    """scapy is the integrity oracle unless ESN + HMAC on a scapy that leaves SN_hi out."""
    return not (case.variant == "esn" and case.suite.hmac and not SCAPY_HMAC_COVERS_ESN)


def check_frames(case: Case, run: Sent) -> None:
    """Every wire frame: outer headers, SPI and SN, then scapy (and for HMAC suites our own
    receiver) gives back the input packet exactly, with minimal RFC 4303 padding."""
    config, suite = run.config, case.suite
    oracle = scapy_sa(config, suite)
    verify = _scapy_verifies(case)
    ivs = set()
    for i, (packet, frame) in enumerate(zip(run.packets, seen(run.frames, len(run.packets)))):
        seq64 = run.first_seq + i
        outer_version = case.version if case.mode == "tunnel" else packet[0] >> 4
        assert frame[0] >> 4 == outer_version
        layout = esp_layout(frame, config)
        spi, sn = struct.unpack_from("!II", frame, layout.esp)
        assert (spi, sn) == (config.spi, seq64 & 0xFFFFFFFF), f"frame {i}"
        ivs.add(frame[layout.esp + 8:layout.esp + 8 + suite.iv_len])
        # Transport: scapy rebuilds the header and recomputes the IPv4 total length and
        # checksum / the IPv6 payload length; the input had them right, so bytes compare.
        assert scapy_open(oracle, frame, seq64, verify=verify) == packet, f"frame {i}"
        plain = scapy_plain_esp(oracle, frame, seq64)
        body = len(packet) if case.mode == "tunnel" else len(packet) - _ip_header_len(packet)
        align = 16 if suite.family == "cbc" else 4  # RFC 4303 §2.4: lcm(block, 4)
        assert plain.padlen == -(body + 2) % align
        assert plain.padding == bytes(range(1, plain.padlen + 1))
        if case.mode == "tunnel":
            assert plain.nh == (4 if packet[0] >> 4 == 4 else 41)
        if suite.hmac:
            assert open_hmac_esp(frame, config, suite, seq64) == packet, f"frame {i}"
    if suite.iv_len:  # fresh IV per packet: GCM/GMAC never repeat one (RFC 4106 §3.1); CBC: random
        assert len(ivs) == len(run.frames)


# -- send direction: scapy decrypts what we emit -------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scapy_decrypts_our_frames(case: Case):
    check_frames(case, sent(case))


@pytest.mark.parametrize("case", [c for c in CASES if c.variant == "esn"],
                         ids=[c.id for c in CASES if c.variant == "esn"])
def test_esn_high_word_is_authenticated(case: Case):
    """A frame past the 2**32 wrap opens only with SN_hi = 1: the high word really is in the
    GCM/GMAC AAD or the HMAC input, though it is never on the wire."""
    run = sent(case)
    i = 2  # SN 2**32: low word 0 on the wire
    frame, seq64 = run.frames[i], run.first_seq + i
    assert seq64 >> 32 == 1
    with pytest.raises((IPSecIntegrityError, IntegrityFailure)):
        if case.suite.hmac:
            open_hmac_esp(frame, run.config, case.suite, seq64 - 2**32)
        else:
            scapy_open(scapy_sa(run.config, case.suite), frame, seq64 - 2**32)
    if case.suite.hmac and SCAPY_HMAC_COVERS_ESN:
        with pytest.raises(IPSecIntegrityError):
            scapy_open(scapy_sa(run.config, case.suite), frame, seq64 - 2**32)


TAMPER_SPOTS = ("spi", "sn", "iv", "ciphertext", "trailer", "icv")


def _tamper_cases():
    for case in CASES:
        for spot in TAMPER_SPOTS:
            if spot == "iv" and not case.suite.iv_len:
                continue
            yield pytest.param(case, spot, id=f"{case.id}-{spot}")


@pytest.mark.parametrize("case, spot", list(_tamper_cases()))
def test_tampered_frame_is_rejected(case: Case, spot: str):
    run = sent(case)
    i = len(run.frames) - 1  # for ESN the last frame carries SN_hi = 1
    frame, seq64, config = run.frames[i], run.first_seq + i, run.config
    layout = esp_layout(frame, config)
    text = layout.esp + 8 + case.suite.iv_len
    icv_at = layout.end - case.suite.icv
    where = {"spi": layout.esp + 3, "sn": layout.esp + 7, "iv": layout.esp + 8,
             "ciphertext": text, "trailer": icv_at - 1, "icv": layout.end - 1}[spot]
    bad = bytearray(frame)
    bad[where] ^= 0x01
    bad = bytes(bad)
    spi = struct.unpack_from("!I", bad, layout.esp)[0]
    if spot == "spi":
        # the untouched SA refuses the SPI outright ...
        with pytest.raises(TypeError, match="spi"):
            scapy_open(scapy_sa(config, case.suite), bad, seq64)
    # ... and an SA that expects the new SPI must fail the integrity check (SPI is in the
    # HMAC input / the AAD)
    if _scapy_verifies(case):
        with pytest.raises(IPSecIntegrityError):
            scapy_open(scapy_sa(config, case.suite, spi=spi), bad, seq64)
    if case.suite.hmac:
        with pytest.raises(IntegrityFailure):
            open_hmac_esp(bad, config, case.suite, seq64, checksums=False)
    # the untampered frame still opens (the flip, not the harness, is what fails)
    assert scapy_open(scapy_sa(config, case.suite), frame, seq64,
                      verify=_scapy_verifies(case)) == run.packets[i]


# -- the pure-Python twin -----------------------------------------------------------------------
def _counter_source(seed: str):
    """A deterministic random_source (CBC IVs) so the two kernel builds can be compared."""
    rng = _rng("random-source", seed)
    return lambda n: rng.randbytes(n)


@pytest.mark.parametrize("case", PURE_CASES, ids=[c.id for c in PURE_CASES])
def test_pure_python_kernels_interoperate(case: Case):
    pure = send_case(case, pure=True, random_source=_counter_source(case.id))
    check_frames(case, pure)
    compiled = send_case(case, pure=False, random_source=_counter_source(case.id))
    assert pure.frames == compiled.frames


# -- more packet shapes ---------------------------------------------------------------------------
SHAPE_SUITES = ("aes-gcm-128-icv16", "aes-gmac-256", "aes-cbc-128-hmac-sha1-96",
                "null-hmac-sha256-128")


@pytest.mark.parametrize("suite_name", SHAPE_SUITES)
@pytest.mark.parametrize("version", (4, 6))
def test_every_pad_length(suite_name: str, version: int):
    """Payload lengths 0..31: every pad length 0..align-1 once per 16 / 4 bytes."""
    suite = SUITES[suite_name]
    case = Case(suite, version, "transport", "plain")
    rng = _rng("pad", suite_name, version)
    config = make_config(case, rng)
    packets = []
    for n in range(32):
        ip = (IP(src="192.0.2.1", dst="192.0.2.2") if version == 4
              else IPv6(src="2001:db8::1", dst="2001:db8::2"))
        packets.append(bytes(ip / UDP(sport=1000 + n, dport=9) / Raw(rng.randbytes(n))))
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(config)
    result = stack.send(packets, sa)
    assert not result.status.any()
    check_frames(case, Sent(config, tuple(packets), tuple(result.wire.frames()), config.seq))


@pytest.mark.parametrize("suite_name", SHAPE_SUITES)
@pytest.mark.parametrize("variant", ("plain", "udp"))
def test_transport_keeps_ipv4_options(suite_name: str, variant: str):
    """ESP goes after the IPv4 options; scapy's rebuilt packet keeps them (RFC 4303 §3.1.1)."""
    suite = SUITES[suite_name]
    case = Case(suite, 4, "transport", variant)
    rng = _rng("options", suite_name, variant)
    config = make_config(case, rng)
    packets = [bytes(IP(src="192.0.2.7", dst="198.51.100.9", id=n, ttl=9,
                        options=[IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(),
                                 IPOption_NOP(), IPOption_NOP()])
                     / TCP(sport=40000 + n, dport=443, flags="A") / Raw(rng.randbytes(n * 7)))
               for n in range(3)]
    hdr = _ip_header_len(packets[0])
    assert hdr > 20
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(config)
    result = stack.send(packets, sa)
    assert not result.status.any()
    frames = result.wire.frames()
    oracle = scapy_sa(config, suite)
    for i, (packet, frame) in enumerate(zip(packets, seen(frames, len(packets)))):
        assert frame[:1] == packet[:1] and frame[20:hdr] == packet[20:hdr]  # options kept
        assert scapy_open(oracle, frame, config.seq + i) == packet


@pytest.mark.parametrize("suite_name", SHAPE_SUITES)
@pytest.mark.parametrize("variant", ("plain", "udp"))
def test_transport_after_ipv6_hop_by_hop(suite_name: str, variant: str):
    """ESP follows the hop-by-hop header, and a destination-options header that comes
    before any routing header (RFC 4303 §3.1.1), where scapy puts it too."""
    suite = SUITES[suite_name]
    case = Case(suite, 6, "transport", variant)
    rng = _rng("hbh", suite_name, variant)
    config = make_config(case, rng)
    packets = []
    for n in range(4):
        headers = IPv6ExtHdrHopByHop()
        if n % 2:
            headers = headers / IPv6ExtHdrDestOpt()
        packets.append(bytes(IPv6(src="2001:db8::7", dst="2001:db8::9", hlim=3) / headers
                             / UDP(sport=40000 + n, dport=53) / Raw(rng.randbytes(n * 5 + 1))))
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(config)
    result = stack.send(packets, sa)
    assert not result.status.any()
    oracle = scapy_sa(config, suite)
    for i, (packet, frame) in enumerate(zip(packets, seen(result.wire.frames(), len(packets)))):
        ext = 8 if i % 2 == 0 else 16  # hop-by-hop [+ destination options]
        last_nh = 40 + ext - 8  # Next Header byte of the last extension header
        assert frame[:4] == packet[:4] and frame[6:last_nh] == packet[6:last_nh]
        assert frame[last_nh + 1:40 + ext] == packet[last_nh + 1:40 + ext]
        assert frame[last_nh] == (17 if variant == "udp" else 50)
        if variant == "udp":
            # scapy's transport NAT-T decrypt over IPv6 sets the IPv6 header's Next Header
            # and drops everything after it, extension headers included (it returns the
            # packet without its hop-by-hop header): check the ESP layer with scapy and
            # the rest by hand
            wire = IPv6(frame)
            plain = oracle.crypt_algo.decrypt(oracle, wire[ESP], oracle.crypt_key, suite.icv)
            assert bytes(plain.data) == packet[40 + ext:] and plain.nh == 17
        else:
            assert scapy_open(oracle, frame, config.seq + i) == packet


@pytest.mark.parametrize("suite_name", SHAPE_SUITES)
def test_ethernet_link(suite_name: str):
    """link='ethernet': scapy reads the Ethernet header and decrypts the IP packet in it."""
    suite = SUITES[suite_name]
    for version in (4, 6):
        case = Case(suite, version, "tunnel", "plain")
        rng = _rng("ether", suite_name, version)
        config = make_config(case, rng)
        packets = plain_packets(case, rng)
        stack = HostStack(Miniport(), link="ethernet")
        sa = stack.add_sa(config)
        result = stack.send(packets, sa)
        assert not result.status.any()
        oracle = scapy_sa(config, suite)
        for i, (packet, frame) in enumerate(zip(packets, seen(result.wire.frames(),
                                                              len(packets)))):
            ether = Ether(frame)
            assert ether.type == (0x0800 if version == 4 else 0x86DD)
            ip = ether.payload
            assert bytes(oracle.decrypt(ip.__class__(bytes(ip)))) == packet


# -- receive direction: scapy encrypts, our frame must be the same bytes --------------------------
def _reverse_packets(version: int) -> list[bytes]:
    rng = _rng("reverse", version)
    return [plain_packet(rng, version, "tcp"), plain_packet(rng, version, "udp")]


def _same_frame(ours: bytes, theirs: bytes, config: SaConfig) -> None:
    """Byte-identical, except the UDP-ESP checksum over IPv6: scapy sends 0 (its nat_t header
    is IPv4-minded), we compute it (docs/spec-gaps.md G25; esp_layout checks ours)."""
    esp_layout(ours, config)
    if config.udp_encap and ours[0] >> 4 == 6:
        ours, theirs = ours[:46] + ours[48:], theirs[:46] + theirs[48:]
    assert ours.hex() == theirs.hex()


REVERSE_SUITES = ("aes-gcm-128-icv16", "aes-gcm-192-icv12", "aes-gcm-256-icv8",
                  "aes-gcm-256-icv16", "aes-gmac-128", "aes-cbc-128-hmac-sha1-96",
                  "aes-cbc-256-hmac-sha256-128", "null-hmac-md5-96")


@pytest.mark.parametrize("variant", ("plain", "esn", "udp"))
@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("suite_name", REVERSE_SUITES)
def test_scapy_encrypts_the_same_transport_frame(suite_name: str, version: int, variant: str):
    """Transport mode, IV policy "packet": we put scapy's IV in the IV slot (HostStack.build
    ivs=...) and the miniport keeps it; the whole frame must equal scapy's — ESP header, SN,
    padding, trailer, lengths, ICV. ESN: the SA starts at 2**32 + 5."""
    suite = SUITES[suite_name]
    if variant == "esn" and suite.hmac and not SCAPY_HMAC_COVERS_ESN:
        _FRAMES_SEEN["skipped"] = True
        pytest.skip("this scapy leaves the ESN high word out of the ESP HMAC (secdev/scapy#3908)")
    case = Case(suite, version, "transport", variant)
    rng = _rng("reverse", case.id)
    config = make_config(case, rng)
    if variant == "esn":
        config = SaConfig(**{**_config_fields(config), "seq": 2**32 + 5})
    packets = _reverse_packets(version)
    theirs, ivs = [], []
    their_sa = scapy_sa(config, suite)
    for i, packet in enumerate(packets):
        iv = rng.randbytes(suite.iv_len)
        ivs.append(iv)
        seq64 = config.seq + i
        theirs.append(bytes(their_sa.encrypt(IP(packet) if version == 4 else IPv6(packet),
                                             seq_num=seq64 & 0xFFFFFFFF,
                                             iv=iv if suite.iv_len else None,
                                             esn_en=config.esn, esn=seq64 >> 32)))
    miniport = Miniport(iv_source="packet")
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config)
    if variant == "esn":
        # send keeps the NIC's ESN high word in step (build does not)
        frames = stack.send(packets, sa, ivs=ivs).wire.frames()
    else:
        result = miniport.send(stack.build(packets, sa, ivs=ivs))
        assert not result.status.any()
        frames = result.wire.frames()
    for ours, their in zip(seen(frames, len(theirs)), theirs):
        _same_frame(ours, their, config)


def _config_fields(config: SaConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.mark.parametrize("suite_name", ("aes-cbc-128-hmac-sha1-96",
                                        "aes-cbc-192-hmac-md5-96"))
@pytest.mark.parametrize("version", (4, 6))
def test_cbc_fixed_nic_iv_matches_scapy(suite_name: str, version: int):
    """IV policy "nic": the CBC IV comes from random_source; fixed, the frame equals
    scapy's with that IV."""
    suite = SUITES[suite_name]
    case = Case(suite, version, "transport", "plain")
    rng = _rng("cbc-fixed", case.id)
    config = make_config(case, rng)
    iv = rng.randbytes(16)
    packets = _reverse_packets(version)
    their_sa = scapy_sa(config, suite)
    theirs = [bytes(their_sa.encrypt(IP(p) if version == 4 else IPv6(p), iv=iv))
              for p in packets]
    stack = HostStack(Miniport(random_source=lambda n: iv * (n // 16)), link="raw")
    sa = stack.add_sa(config)
    frames = stack.send(packets, sa).wire.frames()
    for ours, their in zip(seen(frames, len(theirs)), theirs):
        _same_frame(ours, their, config)


@pytest.mark.parametrize("variant", ("plain", "udp"))
@pytest.mark.parametrize("inner", (4, 6))
@pytest.mark.parametrize("outer", (4, 6))
@pytest.mark.parametrize("suite_name", ("aes-gcm-128-icv16", "aes-cbc-256-hmac-sha256-128"))
def test_scapy_encrypts_the_same_tunnel_frame(suite_name: str, outer: int, inner: int,
                                              variant: str):
    """Tunnel mode: given the outer header RFC 4301 §5.1.2 prescribes (DSCP+ECN and, for IPv6,
    the flow label copied; IPv4 DF copied from an inner IPv4 packet; TTL 64; the stack's
    IPv4 ID counter), scapy's tunnel frame equals ours."""
    suite = SUITES[suite_name]
    case = Case(suite, outer, "tunnel", variant)
    rng = _rng("reverse-tunnel", case.id, inner)
    config = make_config(case, rng)
    packets = _reverse_packets(inner)
    ivs = [rng.randbytes(suite.iv_len) for _ in packets]
    first_id = 0x1234
    theirs = []
    for i, (packet, iv) in enumerate(zip(packets, ivs)):
        plain = IP(packet) if inner == 4 else IPv6(packet)
        if outer == 4:
            tos = plain.tos if inner == 4 else plain.tc
            df = "DF" if inner == 4 and plain.flags.DF else ""
            header = IP(src=config.tunnel_src, dst=config.tunnel_dst, tos=tos, id=first_id + i,
                        flags=df, ttl=64)
        else:
            tc, fl = (plain.tos, 0) if inner == 4 else (plain.tc, plain.fl)
            header = IPv6(src=config.tunnel_src, dst=config.tunnel_dst, tc=tc, fl=fl, hlim=64)
        their_sa = scapy_sa(config, suite)
        their_sa.tunnel_header = header
        theirs.append(bytes(their_sa.encrypt(plain, seq_num=config.seq + i, iv=iv)))
    miniport = Miniport(iv_source="packet")
    stack = HostStack(miniport, link="raw", ipv4_id=first_id)
    sa = stack.add_sa(config)
    result = miniport.send(stack.build(packets, sa, ivs=ivs))
    assert not result.status.any()
    for ours, their in zip(seen(result.wire.frames(), len(theirs)), theirs):
        _same_frame(ours, their, config)


# -- LSO: every segment of a super-packet opens in scapy ------------------------------------------
LSO_SUITES = ("aes-gcm-128-icv16", "aes-gcm-256-icv12", "aes-gmac-128",
              "aes-cbc-128-hmac-sha1-96", "null-hmac-md5-96")


@pytest.mark.parametrize("variant", ("plain", "esn", "udp"))
@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("suite_name", LSO_SUITES)
def test_scapy_decrypts_lso_segments(suite_name: str, version: int, variant: str):
    """send_lso (LSOv2, MSS 1000, 2500 payload bytes): three ESP segments with consecutive SNs
    (ESN: across the 2**32 wrap), each opened by scapy into a valid TCP segment; together
    they carry the payload (docs/protocol.md section 11)."""
    suite = SUITES[suite_name]
    case = Case(suite, version, "transport", variant)
    rng = _rng("lso", case.id)
    config = make_config(case, rng)
    payload = rng.randbytes(2500)
    ip = (IP(src="192.0.2.10", dst="198.51.100.20", id=0x7FFE, flags="DF")
          if version == 4 else IPv6(src="2001:db8::10", dst="2001:db8::20"))
    packet = bytes(ip / TCP(sport=40001, dport=443, seq=0xFFFFFF00, flags="PA") / payload)
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(config)
    result = stack.send_lso(packet, sa, 1000)
    assert not result.status.any()
    frames = result.wire.frames()
    assert len(frames) == 3 and sa.next_seq == config.seq + 3
    oracle = scapy_sa(config, suite)
    verify = _scapy_verifies(case)
    carried = b""
    for i, frame in enumerate(frames):
        seq64 = config.seq + i
        layout = esp_layout(frame, config)
        assert struct.unpack_from("!I", frame, layout.esp + 4)[0] == seq64 & 0xFFFFFFFF
        opened = scapy_open(oracle, frame, seq64, verify=verify)
        if suite.hmac:
            assert open_hmac_esp(frame, config, suite, seq64) == opened
        plain = IP(opened) if version == 4 else IPv6(opened)
        tcp = plain[TCP]
        assert tcp.seq == (0xFFFFFF00 + 1000 * i) & 0xFFFFFFFF
        assert str(tcp.flags) == ("PA" if i == 2 else "A")  # PSH only on the last
        checksum = tcp.chksum
        del tcp.chksum
        assert (IP if version == 4 else IPv6)(bytes(plain))[TCP].chksum == checksum
        if version == 4:
            assert plain.id == (0x7FFE + i) & 0x7FFF and plain.flags.DF
        carried += bytes(tcp.payload)
    assert carried == payload
