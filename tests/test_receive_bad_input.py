"""The receive path given bad, hostile or unusual input: a tamper matrix, truncations and
lengths that lie, frames that are not IPsec, replays, the anti-replay window, ESN inference
across 2**32, UPDATE_SA, RFC 6040 ECN decapsulation, deleted SAs.

Frames come from our own send path (which test_interop_scapy checks against scapy) or are
built here byte by byte; expected values come from the RFCs and the NDIS receive rules, not
from the library: CryptoDone / CryptoStatus (the IPSEC_OFFLOAD_V2 receive indication,
docs/protocol.md), the anti-replay window of RFC 4303 §3.4.3 and App. A, RFC 6040 §4.2.
Every frame is indicated, failures included, with its bytes as received (RFC 4303 §3.4.4:
verify before decrypting; docs/spec-gaps.md G18).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
import threading
import zlib
from typing import Optional

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes, hmac

from ipsecoffload import HostStack, Miniport, SaConfig, ndis
from ipsecoffload.datapath.batch import PacketBatch
from ipsecoffload.datapath.layout import Delivery, RxReason
from ipsecoffload.ndis import CryptoStatus, NdisStatus

NAT_T = (4500, 4500)
TUNNEL_ENDPOINTS = {4: ("203.0.113.1", "203.0.113.2"),
                    6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}
SMALL_CAPS = dataclasses.replace(Miniport().capabilities, sa_offload_capacity=16)
OK, NO_INFO = CryptoStatus.SUCCESS, CryptoStatus.SUCCESS
AUTH_T, AUTH_TUN = CryptoStatus.TRANSPORT_ESP_AUTH_FAILED, CryptoStatus.TUNNEL_ESP_AUTH_FAILED
SYNTAX = CryptoStatus.INVALID_PACKET_SYNTAX


def _rng(*parts) -> random.Random:
    return random.Random(zlib.crc32("/".join(map(str, parts)).encode()))


# -- packets, built here --------------------------------------------------------------------------
def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_checksum(header: bytearray) -> None:
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", ~ones_sum(bytes(header)) & 0xFFFF)


def udp_packet(version: int, payload: bytes, *, src: Optional[str] = None,
               dst: Optional[str] = None, ports=(40000, 5201), tos: int = 0,
               ident: int = 0x4242) -> bytes:
    """An IPv4 or IPv6 UDP packet with right lengths and checksums (RFC 768, RFC 8200 §8.1)."""
    src = src or ("192.0.2.1" if version == 4 else "2001:db8:1::1")
    dst = dst or ("198.51.100.2" if version == 4 else "2001:db8:2::2")
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    length = 8 + len(payload)
    pseudo = (s + d + struct.pack("!BBH", 0, 17, length) if version == 4
              else s + d + struct.pack("!IxxxB", length, 17))
    checksum = ~ones_sum(pseudo + struct.pack("!HHHH", *ports, length, 0) + payload) & 0xFFFF
    udp = struct.pack("!HHHH", *ports, length, checksum or 0xFFFF) + payload
    if version == 4:
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(udp), ident, 0x4000,
                                       61, 17, 0, s, d))
        ipv4_checksum(header)
        return bytes(header) + udp
    return struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20) | 0x12345, len(udp), 17, 58,
                       s, d) + udp


def set_ecn(packet: bytes, ecn: int) -> bytes:
    """The same packet with its ECN field (the low 2 bits of TOS / Traffic Class) set."""
    out = bytearray(packet)
    if out[0] >> 4 == 4:
        out[1] = (out[1] & 0xFC) | ecn
        header = out[:20]
        ipv4_checksum(header)
        out[:20] = header
    else:
        out[1] = (out[1] & 0xCF) | (ecn << 4)
    return bytes(out)


def set_ip_length(frame: bytes, delta: int) -> bytes:
    """The IPv4 total length / IPv6 payload length changed by ``delta`` (checksum fixed)."""
    out = bytearray(frame)
    if out[0] >> 4 == 4:
        struct.pack_into("!H", out, 2, struct.unpack_from("!H", out, 2)[0] + delta)
        header = out[:20]
        ipv4_checksum(header)
        out[:20] = header
    else:
        struct.pack_into("!H", out, 4, struct.unpack_from("!H", out, 4)[0] + delta)
    return bytes(out)


# -- SAs -------------------------------------------------------------------------------------------
SUITES = {  # name: SaConfig fields (key lengths per RFC 4106, 4543, 3602 + 2404/4868/2403)
    "aes-gcm-128": dict(encryption="aes-gcm-128", key_len=20),
    "aes-gcm-256-icv8": dict(encryption="aes-gcm-256", key_len=36, icv_len=8),
    "aes-gmac-128": dict(encryption="null", integrity="aes-gmac-128", auth_len=20),
    "aes-cbc-128-hmac-sha1-96": dict(encryption="aes-cbc-128", key_len=16,
                                     integrity="hmac-sha1-96", auth_len=20),
    "aes-cbc-256-hmac-sha256-128": dict(encryption="aes-cbc-256", key_len=32,
                                        integrity="hmac-sha256-128", auth_len=32),
    "null-hmac-md5-96": dict(encryption="null", integrity="hmac-md5-96", auth_len=16),
}
IV_LEN = {"aes-gcm-128": 8, "aes-gcm-256-icv8": 8, "aes-gmac-128": 8,
          "aes-cbc-128-hmac-sha1-96": 16, "aes-cbc-256-hmac-sha256-128": 16,
          "null-hmac-md5-96": 0}
ICV_LEN = {"aes-gcm-128": 16, "aes-gcm-256-icv8": 8, "aes-gmac-128": 16,
           "aes-cbc-128-hmac-sha1-96": 12, "aes-cbc-256-hmac-sha256-128": 16,
           "null-hmac-md5-96": 12}


def make_config(suite: str, *, mode: str = "transport", version: int = 4, udp: bool = False,
                esn: bool = False, seq: int = 1, spi: Optional[int] = None,
                seed: str = "") -> SaConfig:
    rng = _rng("config", suite, mode, version, udp, esn, seq, seed)
    fields = dict(SUITES[suite])
    kw = dict(spi=spi or rng.randrange(0x1000, 0xFFFFFFFF), encryption=fields["encryption"],
              key=rng.randbytes(fields.get("key_len", 0)), esn=esn, seq=seq,
              name=f"{suite}-{mode}-v{version}")
    if "integrity" in fields:
        kw.update(integrity=fields["integrity"], auth_key=rng.randbytes(fields["auth_len"]))
    if "icv_len" in fields:
        kw["icv_len"] = fields["icv_len"]
    if mode == "tunnel":
        kw.update(mode="tunnel", tunnel_src=TUNNEL_ENDPOINTS[version][0],
                  tunnel_dst=TUNNEL_ENDPOINTS[version][1])
    if udp:
        kw["udp_encap"] = NAT_T
    return SaConfig(**kw)


def small_nic(**kw) -> Miniport:
    return Miniport(SMALL_CAPS, **kw)


def send_frames(config: SaConfig, packets: list[bytes], *, seq: Optional[int] = None
                ) -> list[bytes]:
    """Our send path's raw-IP frames for these packets (from ``seq``, default config.seq)."""
    if seq is not None:
        config = dataclasses.replace(config, seq=seq)
    tx = HostStack(small_nic(), link="raw")
    sa = tx.add_sa(config)
    result = tx.send(packets, sa)
    assert not result.status.any()
    return result.wire.frames()


def receiver(config: SaConfig, **kw):
    stack = HostStack(small_nic(), link="raw")
    return stack, stack.add_inbound_sa(config, **kw)


def payloads(n: int, seed: str = "", version: int = 4) -> list[bytes]:
    rng = _rng("payloads", seed, version)
    return [udp_packet(version, rng.randbytes(rng.randrange(1, 80)), ident=i)
            for i in range(n)]


def esp_offset(frame: bytes, config: SaConfig) -> int:
    return (20 if frame[0] >> 4 == 4 else 40) + (8 if config.udp_encap else 0)


def nic_view(got, i: int = 0) -> tuple[int, int, int]:
    return int(got.nic.crypto_done[i]), int(got.nic.crypto_status[i]), int(got.nic.reasons[i])


# -- 1. the tamper matrix --------------------------------------------------------------------------
TAMPER_SPOTS = ("spi", "sn", "iv", "text_first", "text_middle", "text_last_block", "padding",
                "pad_length", "next_header", "icv_first", "icv_last")
TAMPER_CASES = [(suite, version, mode, udp) for suite in SUITES for version in (4, 6)
                for mode in ("transport", "tunnel") for udp in (False, True)]


def _tamper_at(spot: str, frame: bytes, config: SaConfig, suite: str, pad: int
               ) -> Optional[int]:
    """The byte offset of a tamper spot (None: the frame has no such byte)."""
    esp = esp_offset(frame, config)
    iv, icv = IV_LEN[suite], ICV_LEN[suite]
    text, end = esp + 8 + iv, len(frame) - icv  # end: one past the Next Header byte
    if (spot == "iv" and not iv) or (spot == "padding" and not pad):
        return None
    return {"spi": esp + 1, "sn": esp + 7, "iv": esp + 8, "text_first": text,
            "text_middle": (text + end) // 2,
            "text_last_block": end - 16 if iv == 16 else end - 5,
            "padding": end - 3, "pad_length": end - 2, "next_header": end - 1,
            "icv_first": end, "icv_last": len(frame) - 1}[spot]


@pytest.mark.parametrize("suite, version, mode, udp", TAMPER_CASES,
                         ids=[f"{s}-ipv{v}-{m}{'-udp' if u else ''}"
                              for s, v, m, u in TAMPER_CASES])
def test_tamper_matrix(suite: str, version: int, mode: str, udp: bool):
    """One good frame, then every spot of the next frame flipped in turn, in one batch: a
    changed SPI finds no SA (no IPsec info); any other change fails the ICV — SN, IV, every
    ciphertext region, padding, pad length and next header are all authenticated
    (RFC 4303 §2, §3.4.4) — with the layer's status: tunnel once the SA carried a tunnel
    packet (docs/spec-gaps.md G12). Each failed frame is indicated as it was received, and
    the window did not move for it: the untampered frame still decapsulates."""
    config = make_config(suite, mode=mode, version=version, udp=udp, seq=1000)
    inner = payloads(2, suite, version)
    # a UDP payload of 37 bytes: every suite, mode and IP version pads (1 to 13 bytes)
    inner[1] = udp_packet(version, bytes(range(37)))
    frames = send_frames(config, inner)
    good, target = frames
    body = len(inner[1]) if mode == "tunnel" else len(inner[1]) - (20 if version == 4 else 40)
    pad = -(body + 2) % (16 if IV_LEN[suite] == 16 else 4)
    assert pad >= 1
    batch, spots = [good], []
    for spot in TAMPER_SPOTS:
        where = _tamper_at(spot, target, config, suite, pad)
        if where is None:
            continue
        bad = bytearray(target)
        bad[where] ^= 0x04
        batch.append(bytes(bad))
        spots.append(spot)
    batch.append(target)
    stack, inbound = receiver(config)
    got = stack.receive(batch)
    failed = AUTH_TUN if mode == "tunnel" else AUTH_T
    for k, spot in enumerate(spots, start=1):
        if spot == "spi":
            assert nic_view(got, k) == (0, NO_INFO, RxReason.NO_SA), spot
            assert int(got.delivery[k]) == Delivery.NO_SA
        else:
            assert nic_view(got, k) == (1, failed, RxReason.AUTH_FAILED), spot
            assert int(got.delivery[k]) == Delivery.CRYPTO
        assert got.nic.frame(k) == batch[k], f"{spot}: not indicated as received"
        assert int(got.nic.header_info[k]) == 0  # HeaderInfoSet only for verified frames
        assert got.packet(k) == b""
    assert int(got.delivery[0]) == int(got.delivery[-1]) == Delivery.DECAP
    assert got.packet(len(batch) - 1) == inner[1]
    assert stack.window_top(inbound) == 1001


@pytest.mark.parametrize("suite", SUITES)
def test_first_failure_of_a_tunnel_sa_is_transport_layer(suite: str):
    """Before an SA has carried a tunnel packet its failures are classed transport; after,
    tunnel (docs/spec-gaps.md G12: ADD_SA has no mode)."""
    config = make_config(suite, mode="tunnel", seq=5)
    good, other = send_frames(config, payloads(2, suite))
    bad = bytearray(other)
    bad[-1] ^= 1
    stack, _ = receiver(config)
    assert stack.receive([bytes(bad)]).nic.crypto_status.tolist() == [AUTH_T]
    assert stack.receive([good, bytes(bad)]).nic.crypto_status.tolist() == [OK, AUTH_TUN]


# -- 2. truncations and lengths that lie -----------------------------------------------------------
TRUNC_CASES = [("aes-gcm-128", 4, False), ("aes-gcm-128", 6, True),
               ("aes-cbc-128-hmac-sha1-96", 4, True), ("aes-cbc-256-hmac-sha256-128", 6, False),
               ("null-hmac-md5-96", 4, False), ("aes-gmac-128", 6, False)]


@pytest.mark.parametrize("suite, version, udp", TRUNC_CASES)
def test_truncated_frames(suite: str, version: int, udp: bool):
    """Every cut of a good frame, all in one batch, IP length fields as they were: while
    the SPI is there the SA is found and the frame fails
    INVALID_PACKET_SYNTAX under it; before that, no IPsec info; never a crash; every
    frame indicated as received and nothing delivered from a cut frame."""
    config = make_config(suite, version=version, udp=udp, seq=77)
    (frame,) = send_frames(config, payloads(1, suite, version))
    esp = esp_offset(frame, config)
    cuts = [frame[:n] for n in range(len(frame))]
    stack, _ = receiver(config)
    got = stack.receive(cuts)
    ip_min = 20 if version == 4 else 40
    for n, cut in enumerate(cuts):
        done, status, reason = nic_view(got, n)
        assert got.nic.frame(n) == cut
        if n >= esp + 4:
            assert (done, status) == (1, SYNTAX), n
            assert reason == RxReason.BAD_SYNTAX
            assert int(got.delivery[n]) == Delivery.CRYPTO
        else:
            assert (done, status) == (0, NO_INFO), n
            if n < ip_min:
                assert reason == RxReason.NOT_IP and int(got.delivery[n]) == Delivery.MALFORMED
        # a cut UDP header is not UDP-ESP to the NIC: it passes as it came
        assert got.packet(n) == (cut if int(got.delivery[n]) == Delivery.CLEAR else b"")
    assert stack.receive([frame]).delivery.tolist() == [Delivery.DECAP]  # window untouched


@pytest.mark.parametrize("udp", (False, True))
def test_truncated_inside_the_sequence_number(udp: bool):
    config = make_config("aes-gcm-128", udp=udp, seq=9)
    (frame,) = send_frames(config, payloads(1, "sn-cut"))
    esp = esp_offset(frame, config)
    stack, _ = receiver(config)
    got = stack.receive([frame[:esp + k] for k in (4, 5, 6, 7)])
    assert got.nic.crypto_status.tolist() == [SYNTAX] * 4


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("version", (4, 6))
def test_ip_lengths_that_lie(suite: str, version: int):
    """IP length past the end of the frame → INVALID_PACKET_SYNTAX; shorter than ESP header
    + IV + ICV + trailer → INVALID_PACKET_SYNTAX; a CBC text cut to a non-multiple of 16 →
    INVALID_PACKET_SYNTAX (RFC 3602 §3); cut by 4 otherwise → the ICV is read from the wrong
    place and fails; link padding after the datagram (a short Ethernet frame) is ignored."""
    config = make_config(suite, version=version, seq=3)
    frame, spare = send_frames(config, payloads(2, "lengths", version))
    esp = esp_offset(frame, config)
    iv, icv = IV_LEN[suite], ICV_LEN[suite]
    too_short = esp + 8 + iv + icv + 1 - len(frame)  # one byte of text: no trailer
    frames = [set_ip_length(frame, 1), set_ip_length(frame, 4000),
              set_ip_length(frame, too_short), set_ip_length(frame, esp + 4 - len(frame)),
              set_ip_length(frame, -4), spare + bytes(6)]
    stack, _ = receiver(config)
    got = stack.receive(frames)
    cut_by_4 = SYNTAX if iv == 16 else AUTH_T
    assert got.nic.crypto_status.tolist() == [SYNTAX, SYNTAX, SYNTAX, SYNTAX, cut_by_4, OK]
    assert got.nic.crypto_done.tolist() == [1] * 6
    assert got.delivery.tolist() == [Delivery.CRYPTO] * 5 + [Delivery.DECAP]
    assert got.packet(5) == payloads(2, "lengths", version)[1]
    for i, f in enumerate(frames[:5]):  # failures indicated as received
        assert got.nic.frame(i) == f


@pytest.mark.parametrize("version", (4, 6))
def test_cbc_text_not_a_multiple_of_the_block(version: int):
    """Ciphertext bytes removed (lengths consistent): 1..15 extra or missing bytes →
    INVALID_PACKET_SYNTAX before any crypto (RFC 3602 §3)."""
    suite = "aes-cbc-128-hmac-sha1-96"
    config = make_config(suite, version=version, seq=3)
    (frame,) = send_frames(config, [udp_packet(version, bytes(100))])
    esp = esp_offset(frame, config)
    text = esp + 8 + 16
    frames = []
    for k in range(1, 16):
        cut = frame[:text] + frame[text + k:]
        frames.append(set_ip_length(cut, -k))
    stack, _ = receiver(config)
    got = stack.receive(frames)
    assert got.nic.crypto_status.tolist() == [SYNTAX] * 15
    assert got.nic.reasons.tolist() == [RxReason.BAD_SYNTAX] * 15


def _null_sha256_esp(config: SaConfig, seq: int, text: bytes) -> bytes:
    """A NULL-encryption ESP packet with a right HMAC-SHA-256-128 ICV (RFC 4303 §2.7,
    RFC 4868), built here: text is payload || padding || pad length || next header."""
    esp = struct.pack("!II", config.spi, seq & 0xFFFFFFFF) + text
    mac = hmac.HMAC(config.auth_key, hashes.SHA256())
    mac.update(esp + (struct.pack("!I", seq >> 32) if config.esn else b""))
    return esp + mac.finalize()[:16]


def _ipv4(proto: int, body: bytes, *, src="192.0.2.1", dst="198.51.100.2", tos=0) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), 9, 0, 64, proto,
                                   0, ipaddress.ip_address(src).packed,
                                   ipaddress.ip_address(dst).packed))
    ipv4_checksum(header)
    return bytes(header) + body


NULL_SHA256 = dict(encryption="null", integrity="hmac-sha256-128", auth_key=bytes(range(32)))


def test_authentic_frames_with_a_bad_trailer():
    """Frames whose ICV is right but whose decrypted trailer is not usable: a pad length
    larger than the text → INVALID_PACKET_SYNTAX, indicated as received; pad bytes other
    than 1, 2, 3, ... are accepted (RFC 4303 §2.4: a receiver may check them;
    docs/spec-gaps.md G22); next header 59 (a dummy packet, RFC 4303 §2.6) is verified,
    then dropped by the stack; a tunnel next header over a payload that is no packet is
    not delivered."""
    config = SaConfig(spi=0x5151, seq=10, **NULL_SHA256)
    inner = udp_packet(4, b"abcdefgh")
    body = inner[20:]
    frames = [
        _ipv4(50, _null_sha256_esp(config, 10, body + bytes((200, 17)))),  # pad > text
        _ipv4(50, _null_sha256_esp(config, 11, body + b"\x09\x09" + bytes((2, 17)))),
        _ipv4(50, _null_sha256_esp(config, 12, body + bytes((0, 59)))),  # dummy
        _ipv4(50, _null_sha256_esp(config, 13, b"\x45\0\0" + bytes((1, 1, 4)))),
        _ipv4(50, _null_sha256_esp(config, 14, body + bytes((0, 17)))),
    ]
    stack, _ = receiver(config)
    got = stack.receive(frames)
    assert got.nic.crypto_status.tolist() == [SYNTAX, OK, OK, OK, OK]
    assert got.nic.frame(0) == frames[0]
    assert got.nic.plans["pad_ok"].tolist()[1:3] == [0, 1]
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP, Delivery.DUMMY,
                                     Delivery.INNER, Delivery.DECAP]
    # transport decapsulation: protocol, total length and checksum restored (RFC 4303 §3.1.1)
    assert got.packet(1) == got.packet(4) == _ipv4(17, body)


# -- 3. frames that are not IPsec for the NIC ------------------------------------------------------
@pytest.mark.parametrize("version", (4, 6))
def test_not_ipsec_frames_pass_with_no_ipsec_info(version: int):
    """NAT keepalive (one byte 0xFF), IKE (the four-byte non-ESP marker), too little UDP
    payload for ESP, another port, a protocol that is not IPsec: no IPsec info and
    delivered unchanged (RFC 3948 §2.2-2.3, §4)."""
    config = make_config("aes-gcm-128", version=version, udp=True, seq=3)
    ike = bytes(4) + bytes(range(28))  # non-ESP marker + an IKE header's worth of bytes
    frames = [udp_packet(version, b"\xff", ports=NAT_T),
              udp_packet(version, ike, ports=NAT_T),
              udp_packet(version, b"\x01\x02\x03", ports=NAT_T),
              udp_packet(version, bytes(range(1, 40)), ports=(4501, 4501)),
              udp_packet(version, b"\xff", ports=(4500, 1234)),
              udp_packet(version, bytes(4), ports=(1234, 4500))]
    stack, _ = receiver(config)
    got = stack.receive(frames)
    assert got.nic.crypto_done.tolist() == [0] * 6
    assert got.nic.crypto_status.tolist() == [0] * 6
    assert got.nic.header_info.tolist() == [0] * 6
    assert got.nic.reasons.tolist() == [RxReason.KEEPALIVE, RxReason.IKE, RxReason.NOT_IPSEC,
                                        RxReason.NOT_IPSEC, RxReason.KEEPALIVE, RxReason.IKE]
    assert got.delivery.tolist() == [Delivery.CLEAR] * 6
    assert got.packets() == frames


def _ipv6_with_fragment_header(frame: bytes, offset: int = 0, more: bool = True) -> bytes:
    """Insert an IPv6 Fragment header (RFC 8200 §4.5) before the upper layer."""
    nh = frame[6]
    frag = struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), 0x1234)
    out = bytearray(frame[:40] + frag + frame[40:])
    out[6] = 44
    struct.pack_into("!H", out, 4, len(out) - 40)
    return bytes(out)


def _ipv4_fragment(frame: bytes, flags_offset: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into("!H", out, 6, flags_offset)
    header = out[:20]
    ipv4_checksum(header)
    out[:20] = header
    return bytes(out)


@pytest.mark.parametrize("udp", (False, True))
def test_fragments_have_no_ipsec_info(udp: bool):
    """An ESP packet that is an IP fragment (IPv4 MF or an offset, an IPv6 Fragment header)
    is not processed: reassembly comes first (RFC 4303 §3.4.1)."""
    v4 = make_config("aes-cbc-128-hmac-sha1-96", udp=udp, seq=3)  # both IP versions
    (f4,) = send_frames(v4, payloads(1, "frag", 4))
    (f6,) = send_frames(v4, payloads(1, "frag", 6), seq=4)
    frames = [_ipv4_fragment(f4, 0x2000), _ipv4_fragment(f4, 0x0001),
              _ipv4_fragment(f4, 0x6010), _ipv6_with_fragment_header(f6),
              _ipv6_with_fragment_header(f6, 0, False), _ipv6_with_fragment_header(f6, 7)]
    stack = HostStack(small_nic(), link="raw")
    stack.add_inbound_sa(v4)
    got = stack.receive(frames)
    assert got.nic.crypto_done.tolist() == [0] * 6
    assert got.nic.reasons.tolist() == [RxReason.FRAGMENT] * 6
    assert got.delivery.tolist() == [Delivery.CLEAR] * 6
    assert got.packets() == frames
    # the unfragmented frames themselves are fine
    assert stack.receive([f4, f6]).delivery.tolist() == [Delivery.DECAP] * 2


def test_frames_for_no_sa():
    """Unknown SPI; the SA's SPI but another IP version, another destination or source
    (tunnel endpoints are the SA's address pair), UDP encapsulation the SA does not have
    or lacks: no IPsec info, and the stack counts them as having no SA."""
    tunnel = make_config("aes-gcm-128", mode="tunnel", version=4, seq=3)
    (good,) = send_frames(tunnel, payloads(1, "nosa"))
    unknown = bytearray(good)
    unknown[20:24] = b"\x00\x00\x10\x01"
    other_dst, other_src = bytearray(good), bytearray(good)
    other_dst[19] ^= 1
    other_src[15] ^= 1
    for f in (other_dst, other_src):
        header = f[:20]
        ipv4_checksum(header)
        f[:20] = header
    v6 = dataclasses.replace(tunnel, tunnel_src=TUNNEL_ENDPOINTS[6][0],
                             tunnel_dst=TUNNEL_ENDPOINTS[6][1])
    (good6,) = send_frames(v6, payloads(1, "nosa"))
    udp = dataclasses.replace(tunnel, udp_encap=NAT_T)
    (good_udp,) = send_frames(udp, payloads(1, "nosa"))
    frames = [bytes(unknown), bytes(other_dst), bytes(other_src), good6, good_udp, good]
    stack, _ = receiver(tunnel)
    got = stack.receive(frames)
    assert got.nic.crypto_done.tolist() == [0] * 5 + [1]
    assert got.nic.reasons.tolist() == [RxReason.NO_SA] * 5 + [RxReason.OK]
    assert got.delivery.tolist() == [Delivery.NO_SA] * 5 + [Delivery.DECAP]
    for i, f in enumerate(frames[:5]):
        assert got.nic.frame(i) == f and got.packet(i) == b""
    # and an SA with UDP encapsulation does not take the frame without it
    stack2, _ = receiver(udp)
    assert stack2.receive([good, good_udp]).delivery.tolist() == [Delivery.NO_SA, Delivery.DECAP]


def test_deleted_sa_frames_have_no_sa():
    """After remove_inbound_sa (DELETE_SA for its bundles) its frames have no SA; an SA
    added later in the freed slot with another SPI does not take them."""
    config = make_config("aes-gmac-128", seq=3)
    frames = send_frames(config, payloads(3, "deleted"))
    stack, inbound = receiver(config)
    assert stack.receive(frames[:1]).delivery.tolist() == [Delivery.DECAP]
    stack.remove_inbound_sa(inbound)
    got = stack.receive(frames[1:])
    assert got.nic.crypto_done.tolist() == [0, 0]
    assert got.delivery.tolist() == [Delivery.NO_SA] * 2
    stack.add_inbound_sa(make_config("aes-gmac-128", seq=3, seed="other"))
    assert stack.receive(frames[1:]).delivery.tolist() == [Delivery.NO_SA] * 2
    with pytest.raises(ValueError):
        stack.remove_inbound_sa(inbound)


def test_selector_outside_is_not_this_sa():
    """A transport SA's selector must contain the packet's addresses."""
    config = make_config("null-hmac-md5-96", seq=3)
    inside = udp_packet(4, b"in", src="10.1.2.3", dst="10.9.0.1")
    outside = udp_packet(4, b"out", src="10.2.2.3", dst="10.9.0.1")
    frames = send_frames(config, [inside, outside])
    stack, _ = receiver(config, selector=("10.1.0.0/16", "10.9.0.0/24"), versions=(False,))
    got = stack.receive(frames)
    assert got.delivery.tolist() == [Delivery.DECAP, Delivery.SELECTOR]
    assert got.packet(0) == inside


def test_receive_offload_off_and_the_capability_gate():
    """Receive offload switched off by OID_TCP_OFFLOAD_PARAMETERS → no IPsec info; IPv4
    options when the NIC does not report IPv4Options → no IPsec info (the stack's job)."""
    config = make_config("aes-gcm-128", seq=3)
    frames = send_frames(config, payloads(2, "off"))
    stack, _ = receiver(config)
    status = stack.miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.DISABLED))
    assert status == NdisStatus.SUCCESS
    got = stack.miniport.receive(PacketBatch.from_frames(frames[:1], l2_len=0))
    assert (int(got.crypto_done[0]), int(got.reasons[0])) == (0, RxReason.OFFLOAD_OFF)
    no_options = dataclasses.replace(SMALL_CAPS, ipv4_options=False)
    gated = HostStack(Miniport(no_options), link="raw")
    gated.add_inbound_sa(config)
    option = bytearray(frames[1][:20]) + b"\x01\x01\x01\x00" + frames[1][20:]
    option[0] = 0x46
    struct.pack_into("!H", option, 2, len(option))
    header = option[:24]
    ipv4_checksum(header)
    option[:24] = header
    got = gated.receive([bytes(option)])
    assert got.nic.crypto_done.tolist() == [0]
    assert got.nic.reasons.tolist() == [RxReason.GATED]


# -- 4. the anti-replay window ---------------------------------------------------------------------
def test_replays_and_old_numbers():
    """RFC 4303 §3.4.3 with the default 64-packet window: a repeat in the same batch and in
    a later one is dropped; numbers right of the window's left edge that were not seen are
    accepted, those at or left of it are dropped; the NIC verified all of them (it never
    rejects a replay)."""
    config = make_config("aes-cbc-128-hmac-sha1-96", seq=1)
    packets = payloads(1, "replay") * 200
    frames = send_frames(config, packets)  # SNs 1..200
    stack, inbound = receiver(config)
    first = stack.receive([frames[99], frames[99], frames[0]])  # SN 100, 100, 1
    assert first.delivery.tolist() == [Delivery.DECAP, Delivery.REPLAY, Delivery.REPLAY]
    assert first.nic.crypto_status.tolist() == [OK] * 3
    assert stack.window_top(inbound) == 100
    got = stack.receive([frames[36], frames[35], frames[98], frames[98], frames[99],
                         frames[199], frames[136], frames[135]])  # 37 36 99 99 100 200 137 136
    assert got.delivery.tolist() == [Delivery.DECAP, Delivery.REPLAY, Delivery.DECAP,
                                     Delivery.REPLAY, Delivery.REPLAY, Delivery.DECAP,
                                     Delivery.DECAP, Delivery.REPLAY]
    assert got.nic.crypto_status.tolist() == [OK] * 8
    assert stack.window_top(inbound) == 200


@pytest.mark.parametrize("window", (1, 32, 100, 1024))
def test_window_sizes(window: int):
    """The left edge moves with the window size: top - window + 1 is the oldest accepted."""
    config = make_config("aes-gcm-128", seq=1)
    frames = send_frames(config, payloads(1, "sizes") * 1100)
    stack, _ = receiver(config, replay_window=window)
    top = 1100
    got = stack.receive([frames[top - 1], frames[top - window], frames[top - window - 1]])
    expect_inside = Delivery.DECAP if window > 1 else Delivery.REPLAY
    assert got.delivery.tolist() == [Delivery.DECAP, expect_inside, Delivery.REPLAY]


def test_window_zero_turns_off_only_the_replay_check():
    """replay_window=0: repeats and old numbers are delivered, tampered frames are still
    refused, and an ESN SA still infers its high word across 2**32."""
    config = make_config("aes-gcm-128", esn=True, seq=2**32 - 2)
    frames = send_frames(config, payloads(1, "w0") * 5)  # 2**32-2 .. 2**32+2
    bad = bytearray(frames[3])
    bad[-1] ^= 1
    stack, _ = receiver(config, replay_window=0)
    got = stack.receive(frames + [frames[4], frames[0], bytes(bad)])
    assert got.delivery.tolist() == [Delivery.DECAP] * 7 + [Delivery.CRYPTO]
    assert got.nic.seq64.tolist()[:7] == [2**32 - 2 + i for i in range(5)] + [2**32 + 2,
                                                                             2**32 - 2]


def test_window_moves_only_for_verified_frames():
    """A forged frame far ahead does not move the window (RFC 4303 §3.4.3: update after the
    ICV verified)."""
    config = make_config("null-hmac-md5-96", seq=1)
    frames = send_frames(config, payloads(1, "forged") * 3)
    forged = bytearray(frames[2])
    forged[20 + 4:20 + 8] = struct.pack("!I", 10**6)
    stack, inbound = receiver(config)
    got = stack.receive([bytes(forged), frames[0], frames[1]])
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP, Delivery.DECAP]
    assert stack.window_top(inbound) == 2


def test_window_starts_below_the_first_sequence_number():
    """The window starts empty just below the SA's seq: seq itself is accepted, and
    numbers below it are old."""
    config = make_config("aes-gcm-128", seq=500)
    frames = [send_frames(config, payloads(1, "start"), seq=seq)[0]
              for seq in (435, 436, 499, 500)]
    stack, inbound = receiver(config)
    assert stack.window_top(inbound) == 499
    got = stack.receive(frames)
    # 435 is at top - 64; 436 inside the (empty) window; 499 = seq - 1 is never a packet
    assert got.delivery.tolist() == [Delivery.REPLAY, Delivery.DECAP, Delivery.REPLAY,
                                     Delivery.DECAP]


# -- 5. ESN: inference, jumps, UPDATE_SA -----------------------------------------------------------
ESN_SUITES = ("aes-gcm-128", "aes-gmac-128", "aes-cbc-256-hmac-sha256-128", "null-hmac-md5-96")


@pytest.mark.parametrize("suite", ESN_SUITES)
def test_esn_crossing_2_32_in_one_batch_and_across_batches(suite: str):
    """SequenceNumberHighOrder 0 from ADD_SA, no UPDATE_SA: the NIC infers the high word of
    2**32-3 .. 2**32+3 (RFC 4303 App. A), within one batch and one frame per batch."""
    config = make_config(suite, esn=True, seq=2**32 - 3)
    frames = send_frames(config, payloads(1, "esn") * 7)
    want = [2**32 - 3 + i for i in range(7)]
    stack, _ = receiver(config)
    got = stack.receive(frames)
    assert got.delivery.tolist() == [Delivery.DECAP] * 7
    assert got.nic.seq64.tolist() == want
    stack, _ = receiver(config)
    for frame, seq64 in zip(frames, want):
        one = stack.receive([frame])
        assert one.delivery.tolist() == [Delivery.DECAP]
        assert one.nic.seq64.tolist() == [seq64]


@pytest.mark.parametrize("suite", ESN_SUITES)
def test_esn_jump_further_than_the_window(suite: str):
    """A jump of 300 (more than the 64-packet window) across 2**32 is accepted as new with
    the right high word; afterwards a number left of the new window is dropped, one inside
    it accepted, and a bigger jump still works."""
    config = make_config(suite, esn=True, seq=2**32 - 10)
    before = send_frames(config, payloads(1, "jump") * 2)  # 2**32-10, -9
    after = send_frames(config, payloads(1, "jump") * 2, seq=2**32 + 290)  # +290, +291
    late = send_frames(config, payloads(1, "jump"), seq=2**32 + 250)  # inside the window
    far = send_frames(config, payloads(1, "jump"), seq=3 * 2**32 + 5)[0]  # another epoch...
    stack, inbound = receiver(config)
    got = stack.receive([before[0], after[0], before[1], late[0], after[1]])
    delivery = got.delivery.tolist()
    # 2**32-9 is now left of the window: dropped, whether the NIC's guess of its high word
    # (2**32-9 verifies; then the window drops it) or RFC 4303 App. A2.2's 64-packet one
    # (2**33-9 does not verify) is taken
    assert delivery[2] in (Delivery.REPLAY, Delivery.CRYPTO)
    assert [delivery[k] for k in (0, 1, 3, 4)] == [Delivery.DECAP] * 4
    assert [got.nic.seq64.tolist()[k] for k in (0, 1, 3, 4)] == [
        2**32 - 10, 2**32 + 290, 2**32 + 250, 2**32 + 291]
    assert stack.window_top(inbound) == 2**32 + 291
    # ... two epochs ahead: not inferable (RFC 4303 App. A3), fails to verify
    assert stack.receive([far]).nic.crypto_status.tolist() == [AUTH_T]


def test_esn_sa_over_both_ip_versions():
    """One ESN SA (one SPI, one counter) carrying IPv4 and IPv6 packets, as HostStack.send
    sends them; the IPv6 packets start after 2**32: every frame verifies."""
    config = make_config("aes-gcm-128", esn=True, seq=2**32 - 2)
    frames = send_frames(config, [udp_packet(4, b"a"), udp_packet(4, b"b"),
                                  udp_packet(6, b"c"), udp_packet(6, b"d"),
                                  udp_packet(4, b"e")])
    stack, _ = receiver(config)
    got = stack.receive(frames)
    assert got.nic.crypto_status.tolist() == [OK] * 5
    assert got.nic.seq64.tolist() == [2**32 - 2 + i for i in range(5)]


def _update(stack: HostStack, inbound, config: SaConfig, high: int) -> int:
    return stack.miniport.update_sa(ndis.IpsecOffloadV2UpdateSa(
        offload_handle=inbound.handles[False], operation=ndis.IpsecOperation.ESP,
        spi=config.spi, sequence_number_high_order=high))


@pytest.mark.parametrize("suite", ESN_SUITES)
def test_update_sa_sets_the_inbound_high_word(suite: str):
    """Traffic of epoch 5 does not verify with ADD_SA's high word 0; UPDATE_SA to 5 makes it
    verify; after that the NIC infers again (epoch 6 in the same batch); a second UPDATE_SA
    to 9 is what the NIC uses until the next authenticated packet: an epoch-6 frame then
    fails, epoch-9 frames verify and inference resumes from them."""
    config = make_config(suite, esn=True, seq=1)
    e5 = send_frames(config, payloads(1, "upd") * 3, seq=(6 << 32) - 2)  # 5:-2 .. 6:0
    e6 = send_frames(config, payloads(1, "upd"), seq=(6 << 32) + 10)[0]
    e9 = send_frames(config, payloads(1, "upd") * 2, seq=(9 << 32) + 7)
    stack = HostStack(small_nic(), link="raw")
    inbound = stack.add_inbound_sa(config, versions=(False,))
    assert stack.receive(e5[:1]).nic.crypto_status.tolist() == [AUTH_T]
    assert _update(stack, inbound, config, 5) == NdisStatus.SUCCESS
    got = stack.receive(e5)
    assert got.nic.crypto_status.tolist() == [OK] * 3
    assert got.nic.seq64.tolist() == [(6 << 32) - 2, (6 << 32) - 1, 6 << 32]
    assert got.delivery.tolist() == [Delivery.DECAP] * 3
    assert _update(stack, inbound, config, 9) == NdisStatus.SUCCESS
    got = stack.receive([e6, e9[0], e9[1]])
    assert got.nic.crypto_status.tolist() == [AUTH_T, OK, OK]
    assert got.nic.seq64.tolist()[1:] == [(9 << 32) + 7, (9 << 32) + 8]
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP, Delivery.DECAP]


def test_update_sa_refusals_on_inbound_sas():
    """UPDATE_SA with the wrong SPI, or on a non-ESN SA, is refused (INVALID_PARAMETER)."""
    esn = make_config("aes-gcm-128", esn=True, seq=1)
    plain = make_config("aes-gcm-128", seq=1, seed="plain")
    stack = HostStack(small_nic(), link="raw")
    a = stack.add_inbound_sa(esn, versions=(False,))
    b = stack.add_inbound_sa(plain, versions=(False,))
    assert stack.miniport.update_sa(ndis.IpsecOffloadV2UpdateSa(
        offload_handle=a.handles[False], operation=ndis.IpsecOperation.ESP, spi=esn.spi + 1,
        sequence_number_high_order=1)) == NdisStatus.INVALID_PARAMETER
    assert _update(stack, b, plain, 1) == NdisStatus.INVALID_PARAMETER


# -- 6. RFC 6040 decapsulation ---------------------------------------------------------------------
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
RFC6040 = {  # (inner, outer) -> result, None = drop (RFC 6040 §4.2, Figure 4)
    (NOT_ECT, NOT_ECT): NOT_ECT, (NOT_ECT, ECT0): NOT_ECT, (NOT_ECT, ECT1): NOT_ECT,
    (NOT_ECT, CE): None,
    (ECT0, NOT_ECT): ECT0, (ECT0, ECT0): ECT0, (ECT0, ECT1): ECT1, (ECT0, CE): CE,
    (ECT1, NOT_ECT): ECT1, (ECT1, ECT0): ECT1, (ECT1, ECT1): ECT1, (ECT1, CE): CE,
    (CE, NOT_ECT): CE, (CE, ECT0): CE, (CE, ECT1): CE, (CE, CE): CE,
}


@pytest.mark.parametrize("outer_v, inner_v", [(4, 4), (4, 6), (6, 4), (6, 6)])
def test_rfc6040_ecn_cells(outer_v: int, inner_v: int):
    """All 16 cells: the outer ECN is set on the wire (the outer header is not covered by
    the ESP ICV), the inner packet comes out with the table's ECN and nothing else changed
    but its IPv4 checksum; the drop cell delivers nothing (Delivery.ECN)."""
    config = make_config("aes-gcm-128", mode="tunnel", version=outer_v, seq=1)
    cells = sorted(RFC6040)
    inners = [set_ecn(udp_packet(inner_v, bytes(range(i + 1)), tos=0xB8), inner)
              for i, (inner, _) in enumerate(cells)]
    frames = send_frames(config, inners)
    wire = [set_ecn(f, outer) for f, (_, outer) in zip(frames, cells)]
    stack, _ = receiver(config)
    got = stack.receive(wire)
    assert got.nic.crypto_status.tolist() == [OK] * 16
    for i, ((inner, outer), packet) in enumerate(zip(cells, inners)):
        result = RFC6040[(inner, outer)]
        if result is None:
            assert int(got.delivery[i]) == Delivery.ECN and got.packet(i) == b""
        else:
            assert int(got.delivery[i]) == Delivery.DECAP, (inner, outer)
            assert got.packet(i) == set_ecn(packet, result), (inner, outer)


# -- 7. the NDIS model and robustness --------------------------------------------------------------
def test_nbl_models_get_their_receive_indication():
    """Miniport.receive on NetBufferList models: slots IPsecOffloadV2 and
    IPsecOffloadV2Header set; a verified frame decrypted in place, a failed one as received,
    a non-IPsec one untouched with no info."""
    config = make_config("aes-cbc-128-hmac-sha1-96", seq=1)
    inner = payloads(2, "nbl")
    good, other = send_frames(config, inner)
    bad = bytearray(other)
    bad[-2] ^= 0x10
    nic = small_nic()
    for entry in (config.add_sa_entry(False, inbound=True),):
        assert nic.add_sa(entry) == NdisStatus.SUCCESS
    nbls = [ndis.NetBufferList(net_buffers=[ndis.NetBuffer(f)], l2_length=0)
            for f in (good, bytes(bad), inner[0])]
    nic.receive(nbls)
    info = [ndis.IpsecOffloadV2ReceiveNblInfo.from_value(n.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2))
            for n in nbls]
    header = [ndis.IpsecOffloadV2HeaderReceiveNblInfo.from_value(
        n.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER)) for n in nbls]
    assert [(i.crypto_done, i.crypto_status) for i in info] == [(True, OK), (True, AUTH_T),
                                                                (False, OK)]
    assert [h.header_info_set for h in header] == [True, False, False]
    assert header[0].next_header == 17
    assert nbls[1].net_buffers[0].data == bytes(bad)
    assert nbls[2].net_buffers[0].data == inner[0]
    plain = bytes(nbls[0].net_buffers[0].data)
    esp_text = 20 + 8 + 16
    assert plain[:esp_text] == good[:esp_text] and plain[-12:] == good[-12:]
    assert plain[esp_text:esp_text + len(inner[0]) - 20] == inner[0][20:]


def test_random_damage_never_crashes():
    """Thousands of frames with random bytes flipped, cut or appended, in a few batches:
    every frame gets an indication and a delivery code, nothing is delivered that is
    longer than what came in plus nothing, and every frame the NIC passed verified (or had
    no SA)."""
    rng = _rng("damage")
    configs = [make_config(s, mode=m, version=v, udp=u, esn=e, seq=2**32 - 2 if e else 5)
               for s, v, m, u, e in [("aes-gcm-128", 4, "transport", False, True),
                                     ("aes-cbc-128-hmac-sha1-96", 6, "tunnel", True, False),
                                     ("null-hmac-md5-96", 4, "transport", True, True),
                                     ("aes-gmac-128", 6, "transport", False, False)]]
    clean = []
    for config in configs:
        clean += send_frames(config, payloads(6, config.name, 6 if "v6" in config.name else 4))
    stack = HostStack(small_nic(), link="raw")
    for config in configs:
        stack.add_inbound_sa(config, replay_window=0)
    for _ in range(4):
        batch = []
        for _ in range(500):
            f = bytearray(rng.choice(clean))
            for _ in range(rng.randrange(0, 4)):
                f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
            if rng.random() < 0.3:
                f = f[:rng.randrange(len(f) + 1)]
            if rng.random() < 0.1:
                f += rng.randbytes(rng.randrange(1, 40))
            batch.append(bytes(f))
        got = stack.receive(batch)
        assert len(got) == len(batch)
        for i, f in enumerate(batch):
            assert got.nic.frame(i) is not None and len(got.nic.frame(i)) == len(f)
            assert len(got.packet(i)) <= len(f)
            if int(got.delivery[i]) == Delivery.DECAP:
                assert int(got.nic.crypto_done[i]) == 1
                assert int(got.nic.crypto_status[i]) == OK
            if int(got.nic.crypto_status[i]) != OK:
                assert got.nic.frame(i) == f  # failures indicated as received
        assert set(np.unique(got.delivery).tolist()) <= {d.value for d in Delivery}
        reasons = np.bincount(got.nic.reasons, minlength=len(RxReason))
        assert got.nic.counters[:len(RxReason)].tolist() == reasons.tolist()


def test_pure_python_twin_receives():
    config = make_config("aes-gcm-128", seq=1)
    frames = send_frames(config, payloads(2, "twin"))
    stack = HostStack(Miniport(SMALL_CAPS, pure_python=True), link="raw")
    stack.add_inbound_sa(config)
    got = stack.receive(frames)
    assert got.packets() == payloads(2, "twin")


# -- 8. the window against a plain model, forgeries and ESN, SA lookup, odd frames, threads ------
def _window_model(first_seq: int, window: int, numbers: list[int]) -> list[bool]:
    """RFC 4303 §3.4.3 written plainly: a set of the numbers seen, the highest one, and the
    window's left edge; it starts empty just below ``first_seq`` (that number - 1 taken)."""
    top, seen, out = first_seq - 1, {first_seq - 1}, []
    for sn in numbers:
        ok = sn > top or (top - sn < window and sn not in seen)
        if sn == 0:
            ok = False
        if ok:
            seen.add(sn)
            top = max(top, sn)
        out.append(ok)
    return out


@pytest.mark.parametrize("esn", (False, True), ids=("32-bit", "esn"))
@pytest.mark.parametrize("window", (32, 100, 1024, 4096))
def test_window_against_a_plain_model(window: int, esn: bool):
    """1000 sequence numbers — in order mostly, some jumps ahead, frames at the window's
    edge, late and repeated ones — in batches of random sizes: the stack's decisions equal
    the plain model's.
    ESN: the numbers cross 2**32 and the NIC infers every high word."""
    rng = _rng("model", window, esn)
    base = 2**32 - 800 if esn else 1
    config = make_config("null-hmac-md5-96", esn=esn, seq=base)
    highest, walk = 0, []
    for _ in range(1000):
        r = rng.random()
        if r < 0.6:  # the stream in order
            highest += 1
            walk.append(highest)
        elif r < 0.62:  # a loss burst: a jump ahead
            highest += rng.randrange(2, min(2 * window, 300))
            walk.append(highest)
        elif r < 0.7:  # right at the window's edge
            walk.append(max(0, highest - window + rng.choice((-1, 0, 1))))
        else:  # a late or repeated frame
            walk.append(max(0, highest - rng.randrange(0, window + window // 2 + 2)))
    frames = send_frames(config, [udp_packet(4, b"m")] * (highest + 1))  # base .. base+highest
    want = _window_model(base, window, [base + k for k in walk])
    stack, _ = receiver(config, replay_window=window)
    got, i = [], 0
    while i < len(walk):
        n = rng.randrange(1, 300)
        part = stack.receive([frames[k] for k in walk[i:i + n]])
        assert part.nic.crypto_status.tolist() == [OK] * len(part)
        assert part.nic.seq64.tolist() == [base + k for k in walk[i:i + n]]
        got += [d == Delivery.DECAP for d in part.delivery.tolist()]
        i += n
    assert got == want
    assert sum(want) > 450 and len(want) - sum(want) > 100  # both outcomes exercised
    if esn:
        assert base + highest > 2**32 + 100


def test_tunnel_inner_packet_with_tfc_padding():
    """Traffic-flow-confidentiality padding after the inner packet (RFC 4303 §2.4, §2.7):
    the inner packet is delivered by its own length; the padding is dropped."""
    config = SaConfig(spi=0x6161, seq=10, mode="tunnel", tunnel_src=TUNNEL_ENDPOINTS[4][0],
                      tunnel_dst=TUNNEL_ENDPOINTS[4][1], **NULL_SHA256)
    inner = udp_packet(6, b"tfc")
    text = inner + bytes(13) + bytes((1, 2)) + bytes((2, 41))
    frame = _ipv4(50, _null_sha256_esp(config, 10, text), src=config.tunnel_src,
                  dst=config.tunnel_dst)
    stack, _ = receiver(config)
    got = stack.receive([frame])
    assert got.delivery.tolist() == [Delivery.DECAP]
    assert got.packet(0) == inner


def test_forged_frames_do_not_disturb_esn_inference():
    """Forged frames whose SNs would pull the NIC's guess of the high word ahead, mixed into
    a batch that crosses 2**32: the genuine frames all verify with the right numbers."""
    config = make_config("aes-gcm-128", esn=True, seq=2**32 - 3)
    frames = send_frames(config, payloads(1, "forged-esn") * 6)  # 2**32-3 .. 2**32+2
    forged = []
    for low in (0x7FFFFFF0, 0x80000005, 0xFFFFFF00, 0x40000000):
        f = bytearray(frames[0])
        f[24:28] = struct.pack("!I", low)
        forged.append(bytes(f))
    batch = [frames[0], forged[0], frames[1], forged[1], frames[2], forged[2], frames[3],
             forged[3], frames[4], frames[5]]
    stack, inbound = receiver(config)
    got = stack.receive(batch)
    genuine = [0, 2, 4, 6, 8, 9]
    assert [int(got.delivery[k]) for k in genuine] == [Delivery.DECAP] * 6
    assert [int(got.nic.seq64[k]) for k in genuine] == [2**32 - 3 + i for i in range(6)]
    assert [int(got.nic.crypto_status[k]) for k in (1, 3, 5, 7)] == [AUTH_T] * 4
    assert stack.window_top(inbound) == 2**32 + 2


def test_transport_sa_endpoints_are_matched():
    """A transport SA with endpoints (the sender's source and destination) takes only
    frames between them; zero endpoints are wildcards."""
    config = dataclasses.replace(make_config("aes-gcm-128", seq=3), src="192.0.2.1",
                                 dst="198.51.100.2")
    frames = send_frames(config, [udp_packet(4, b"a"), udp_packet(4, b"b", src="192.0.2.9"),
                                  udp_packet(4, b"c", dst="198.51.100.9")])
    stack, _ = receiver(config)
    assert stack.receive(frames).delivery.tolist() == [Delivery.DECAP, Delivery.NO_SA,
                                                       Delivery.NO_SA]


@pytest.mark.parametrize("order", [
    "wildcard-first",
    "specific-first"])
def test_lookup_prefers_the_most_specific_sa(order: str):
    """Two inbound SAs with one SPI: a wildcard transport SA and a tunnel SA with both
    endpoints. A frame between the tunnel endpoints is the tunnel SA's, whichever was added
    first (RFC 4301 §4.1: SPI + destination + source, then SPI + destination, then SPI);
    other frames go to the wildcard SA."""
    tunnel = make_config("aes-gcm-128", mode="tunnel", seq=3, spi=0x4444, seed="t")
    wildcard = make_config("aes-cbc-128-hmac-sha1-96", seq=3, spi=0x4444, seed="w")
    (to_tunnel,) = send_frames(tunnel, payloads(1, "lookup"))
    (to_wildcard,) = send_frames(wildcard, payloads(1, "lookup"))
    stack = HostStack(small_nic(), link="raw")
    for config in ((wildcard, tunnel) if order == "wildcard-first" else (tunnel, wildcard)):
        stack.add_inbound_sa(config, versions=(False,))
    got = stack.receive([to_tunnel, to_wildcard])
    assert got.nic.crypto_status.tolist() == [OK, OK]
    assert got.delivery.tolist() == [Delivery.DECAP] * 2


@pytest.mark.parametrize("suite", ESN_SUITES)
def test_esn_guess_misled_by_a_forgery_is_retried(suite: str):
    """A forged frame half the number space ahead pulls the NIC's in-batch guess of the high
    word forward, so the late genuine frames after it are first tried with the wrong high
    word; they must still verify with the right one (the guess from authenticated frames
    only) and be delivered."""
    config = make_config(suite, esn=True, seq=2**32 + 10)
    frames = send_frames(config, payloads(1, "retry") * 2)  # 2**32+10, +11
    late = [send_frames(config, payloads(1, "retry"), seq=2**32 + k)[0] for k in (5, 7)]
    stack, inbound = receiver(config)
    assert stack.receive(frames).delivery.tolist() == [Delivery.DECAP] * 2
    forged = bytearray(frames[0])
    esp = esp_offset(forged, config)
    forged[esp + 4:esp + 8] = struct.pack("!I", 0x80000009)
    got = stack.receive([bytes(forged), late[0], late[1]])
    assert got.nic.crypto_status.tolist() == [AUTH_T, OK, OK]
    assert got.nic.seq64.tolist()[1:] == [2**32 + 5, 2**32 + 7]
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP, Delivery.DECAP]


def test_spi_of_an_esp_sa_found_on_ah():
    """An AH header (protocol 51) carrying the SPI of an ESP-only SA: the packet's IPsec
    protocol differs from the bundle's → INVALID_PROTOCOL (the IPSEC_OFFLOAD_V2 receive
    CryptoStatus for a protocol mismatch), indicated as received."""
    config = make_config("aes-gcm-128", seq=3)
    inner = udp_packet(4, b"ah")
    # RFC 4302 §2: Next Header, Payload Len (in 4-byte words - 2), reserved, SPI, SN, ICV
    ah = struct.pack("!BBHII", 17, 4, 0, config.spi, 3) + bytes(12)
    frame = _ipv4(51, ah + inner[20:])
    stack, _ = receiver(config)
    got = stack.receive([frame])
    assert nic_view(got) == (1, CryptoStatus.INVALID_PROTOCOL, RxReason.BAD_PROTOCOL)
    assert got.delivery.tolist() == [Delivery.CRYPTO]
    assert got.nic.frame(0) == frame


def test_offload_off_for_ipv4_only_and_the_ipv6_extension_header_gate():
    """IPsecV2IPv4 disabled leaves IPv6 receive offload on; an IPv6 hop-by-hop header when
    the NIC does not report IPv6 extension-header support → no IPsec info."""
    config = make_config("aes-gmac-128", seq=3)
    f4, f6 = send_frames(config, [udp_packet(4, b"v4"), udp_packet(6, b"v6")])
    stack, _ = receiver(config)
    assert stack.miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2_ipv4=ndis.OffloadIpsecV2.DISABLED)) == NdisStatus.SUCCESS
    got = stack.miniport.receive(PacketBatch.from_frames([f4, f6], l2_len=0))
    assert got.reasons.tolist() == [RxReason.OFFLOAD_OFF, RxReason.OK]
    assert got.crypto_done.tolist() == [0, 1]
    hop_by_hop = bytearray(f6[:40] + bytes((50, 0, 1, 4, 0, 0, 0, 0)) + f6[40:])
    hop_by_hop[6] = 0
    struct.pack_into("!H", hop_by_hop, 4, len(hop_by_hop) - 40)
    no_ext = dataclasses.replace(SMALL_CAPS, ipv6_non_ipsec_extension_headers=False)
    gated = HostStack(Miniport(no_ext), link="raw")
    gated.add_inbound_sa(config)
    got = gated.receive([bytes(hop_by_hop)])
    assert (int(got.nic.crypto_done[0]), int(got.nic.reasons[0])) == (0, RxReason.GATED)
    # the NIC that does report them verifies the same frame (the header is not in the ICV)
    with_ext = HostStack(small_nic(), link="raw")
    with_ext.add_inbound_sa(config)
    got = with_ext.receive([bytes(hop_by_hop)])
    assert got.nic.crypto_status.tolist() == [OK]
    original = udp_packet(6, b"v6")
    assert got.packet(0) == (original[:4] + struct.pack("!HB", len(original) - 40 + 8, 0)
                             + original[7:40] + bytes((17, 0, 1, 4, 0, 0, 0, 0))
                             + original[40:])


def test_tiny_and_empty_frames():
    """Empty frames, frames shorter than the link header or than an IP header: not IP,
    nothing delivered, no crash (raw IP and Ethernet links); an empty batch is fine."""
    config = make_config("aes-gcm-128", seq=3)
    for link in ("raw", "ethernet"):
        stack = HostStack(small_nic(), link=link)
        stack.add_inbound_sa(config)
        assert len(stack.receive([])) == 0
        frames = [b"", b"\x45", b"\x60" * 13, bytes(14), b"\x45" + bytes(18),
                  bytes(12) + b"\x08\x00" + b"\x45" + bytes(5)]
        got = stack.receive(frames)
        assert got.nic.crypto_done.tolist() == [0] * len(frames)
        assert got.nic.reasons.tolist() == [RxReason.NOT_IP] * len(frames)
        assert got.delivery.tolist() == [Delivery.MALFORMED] * len(frames)
        assert got.packets() == [b""] * len(frames)


@pytest.mark.parametrize("window", (-1, 64 * 64 + 1, 1.5, "64"))
def test_bad_replay_window_is_refused(window):
    """replay_window must be an integer from 0 to the largest window (4096 packets)."""
    stack = HostStack(small_nic(), link="raw")
    with pytest.raises((ValueError, TypeError)):
        stack.add_inbound_sa(make_config("aes-gcm-128"), replay_window=window)
    assert stack.inbound_sas == []


def test_concurrent_receives_share_one_window():
    """Two threads receive disjoint halves of one SA's traffic at once, batch by batch:
    every frame is delivered once, then all of them are replays."""
    config = make_config("aes-cbc-128-hmac-sha1-96", seq=1)
    frames = send_frames(config, [udp_packet(4, b"t")] * 400)
    stack, inbound = receiver(config, replay_window=1024)
    results, errors = [[], []], []

    def worker(k: int) -> None:
        try:
            mine = frames[k::2]
            for i in range(0, len(mine), 20):
                results[k] += stack.receive(mine[i:i + 20]).delivery.tolist()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] + results[1] == [Delivery.DECAP] * 400
    assert stack.window_top(inbound) == 400
    assert stack.receive(frames).delivery.tolist() == [Delivery.REPLAY] * 400
