"""Transport over tunnel on the send path (two handles: OffloadHandle = the transport SA,
TunnelHandle = the tunnel SA; docs/send-path.md "Transport over tunnel").

scapy, an implementation this project did not write, opens every nested packet: the outer
layer with a ``SecurityAssociation(ESP or AH, tunnel_header=...)`` of the tunnel SA, then the
inner one with the transport SA, and the result must be the plain packet. The matrix: the
transport SA in {ESP AES-GCM-128, ESP AES-CBC + HMAC-SHA256, AH HMAC-SHA1, AH+ESP (CBC only +
HMAC-SHA256 AH)} x the tunnel SA in {ESP AES-GCM-256, ESP AES-CBC + HMAC-SHA1, AH HMAC-SHA256}
x inner {IPv4, IPv6} x outer {IPv4, IPv6} x {plain, ESN}, under the compiled kernels and the
twin; plus UdpEspEncapsulation 0x4 (the tunnel UDP-encapsulated) and 0x8 (the transport SA).
The compiled stages and the twin are compared on nested frames, good and damaged.
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.ipsec import AH, ESP, IPSecIntegrityError, SecurityAssociation  # noqa: E402

from ipsecoffload import HostStack, Miniport, PacketBatchBuilder, SaConfig, ndis  # noqa: E402
from ipsecoffload.datapath.layout import Config, Reason  # noqa: E402
from ipsecoffload.inet import ones_complement_sum  # noqa: E402
from ipsecoffload.ndis import NdisStatus  # noqa: E402

import test_kernels as tk  # noqa: E402  (the twin-vs-compiled harness)

KERNELS = [False, True]
KERNEL_IDS = ["compiled", "python"]
TUNNEL = {4: ("198.51.100.1", "198.51.100.2"), 6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}
SCAPY_AUTH = {None: "NULL", "hmac-sha1-96": "HMAC-SHA1-96", "hmac-sha256-128": "SHA2-256-128"}
SCAPY_ENC = {"aes-cbc-128": "AES-CBC", "aes-cbc-256": "AES-CBC"}


def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7 + 3) & 0xFF for i in range(n))


TRANSPORTS = {
    "esp-gcm128": dict(spi=0x1001, encryption="aes-gcm-128", key=_key(20, 1)),
    "esp-cbc-sha256": dict(spi=0x1002, encryption="aes-cbc-128", key=_key(16, 2),
                           integrity="hmac-sha256-128", auth_key=_key(32, 2)),
    "ah-sha1": dict(spi=0x1003, protocol="ah", integrity="hmac-sha1-96", auth_key=_key(20, 3)),
    "ah+esp": dict(spi=0x1004, protocol="ah+esp", encryption="aes-cbc-128", key=_key(16, 4),
                   ah_spi=0x1005, ah_integrity="hmac-sha256-128", ah_auth_key=_key(32, 4)),
}
TUNNELS = {
    "esp-gcm256": dict(spi=0x2001, encryption="aes-gcm-256", key=_key(36, 5)),
    "esp-cbc-sha1": dict(spi=0x2002, encryption="aes-cbc-128", key=_key(16, 6),
                         integrity="hmac-sha1-96", auth_key=_key(20, 6)),
    "ah-sha256": dict(spi=0x2003, protocol="ah", integrity="hmac-sha256-128",
                      auth_key=_key(32, 7)),
}
# a tunnel AH+ESP bundle too (its ESP in pass 2, its AH in pass 3), outside the matrix
ALL_TUNNELS = {**TUNNELS, "ah+esp-gcm": dict(
    spi=0x2004, protocol="ah+esp", encryption="aes-gcm-128", key=_key(20, 8), ah_spi=0x2005,
    ah_integrity="hmac-sha1-96", ah_auth_key=_key(20, 8))}
T_SEQ = {False: 5, True: (3 << 32) | 0x10}
U_SEQ = {False: 9, True: (7 << 32) | 0x20}


def _plain(version: int, udp: bool = False) -> bytes:
    l4 = UDP(sport=1234, dport=53) if udp else TCP(sport=40000, dport=443, flags="PA")
    if version == 4:
        return bytes(IP(src="10.0.0.1", dst="10.1.0.2", ttl=33) / l4 / (b"via-send" * 5))
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8:1::2", hlim=33) / l4 / (b"via-send" * 5))


def _transport(name: str, esn: bool, **extra) -> SaConfig:
    return SaConfig(**TRANSPORTS[name], esn=esn, seq=T_SEQ[esn], name="t-" + name, **extra)


def _tunnel(name: str, outer: int, esn: bool, **extra) -> SaConfig:
    return SaConfig(**ALL_TUNNELS[name], mode="tunnel", tunnel_src=TUNNEL[outer][0],
                    tunnel_dst=TUNNEL[outer][1], esn=esn, seq=U_SEQ[esn], name="u-" + name,
                    **extra)


def _ip(data: bytes):
    return (IPv6 if data[0] >> 4 == 6 else IP)(data)


def _esp_sa(config: SaConfig, tunnel_header=None, nat_t=None):
    hi = config.seq >> 32 if config.esn else 0
    if config.gcm:
        return SecurityAssociation(ESP, spi=config.spi, crypt_algo="AES-GCM",
                                   crypt_key=config.key, tunnel_header=tunnel_header,
                                   nat_t_header=nat_t, esn_en=config.esn, esn=hi)
    return SecurityAssociation(ESP, spi=config.spi, crypt_algo=SCAPY_ENC[config.encryption],
                               crypt_key=config.key, auth_algo=SCAPY_AUTH[config.integrity],
                               auth_key=config.auth_key or None, tunnel_header=tunnel_header,
                               nat_t_header=nat_t, esn_en=config.esn, esn=hi)


def _ah_sa(config: SaConfig, tunnel_header=None):
    spi, integrity, key = config.ah_layer
    return SecurityAssociation(AH, spi=spi, auth_algo=SCAPY_AUTH[integrity], auth_key=key,
                               tunnel_header=tunnel_header, esn_en=config.esn,
                               esn=config.seq >> 32 if config.esn else 0)


def _open(data: bytes, config: SaConfig, outer: int | None = None) -> bytes:
    """One layer opened by scapy: verified (AH) and/or decrypted (ESP); ``outer`` names the
    tunnel header's IP version for a tunnel SA. Returns the IP packet inside."""
    header = None
    if outer is not None:
        header = (IPv6 if outer == 6 else IP)(src=TUNNEL[outer][0], dst=TUNNEL[outer][1])
    pkt = _ip(data)
    nat_t = UDP(sport=4500, dport=4500) if config.udp_encap else None
    if config.protocol == "ah":
        return bytes(_ah_sa(config, header).decrypt(pkt))
    if config.protocol == "ah+esp":
        pkt = _ip(bytes(_ah_sa(config).decrypt(pkt)))  # AH verified and off: ESP next
    return bytes(_esp_sa(config, header, nat_t).decrypt(pkt))


def _same_packet(got: bytes, plain: bytes) -> None:
    """scapy rebuilds the header it decapsulated: compare it as scapy parses both."""
    a, b = _ip(got), _ip(plain)
    if a.version == 4:
        for p in (a, b):
            del p.chksum
    assert bytes(a.__class__(bytes(a))) == bytes(b.__class__(bytes(b)))


def _stack(pure: bool, **nic):
    return HostStack(Miniport(pure_python=pure, **nic), link="raw")


def _send_via(pure, t_config, u_config, packets):
    stack = _stack(pure)
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    result = stack.send(packets, t)
    assert result.status.tolist() == [NdisStatus.SUCCESS] * len(packets), \
        stack.miniport.counters
    return result.wire.frames(), stack, t, u


MATRIX = [(t, u, i, o, e) for t in TRANSPORTS for u in TUNNELS for i in (4, 6) for o in (4, 6)
          for e in (False, True)]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("t_name,u_name,inner,outer,esn", MATRIX,
                         ids=[f"{t}-over-{u}-in{i}-out{o}-{'esn' if e else 'plain'}"
                              for t, u, i, o, e in MATRIX])
def test_scapy_opens_the_outer_then_the_inner_layer(t_name, u_name, inner, outer, esn, pure):
    t_config, u_config = _transport(t_name, esn), _tunnel(u_name, outer, esn)
    plain = _plain(inner)
    (frame,), *_ = _send_via(pure, t_config, u_config, [plain])
    assert frame[0] >> 4 == outer
    protected = _open(frame, u_config, outer)
    assert protected[0] >> 4 == inner
    _same_packet(_open(protected, t_config), plain)
    # a flipped byte anywhere in the inner layer's ciphertext / ICV fails the outer check
    bad = bytearray(frame)
    bad[-1] ^= 1
    with pytest.raises(IPSecIntegrityError):
        _open(bytes(bad), u_config, outer)


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("inner", (4, 6))
@pytest.mark.parametrize("outer", (4, 6))
@pytest.mark.parametrize("t_name", ("esp-gcm128", "ah+esp", "ah-sha1"))
def test_udp_tunnel_carries_0x4(t_name, inner, outer, pure):
    """The tunnel SA UDP-encapsulated: it carries 0x2 (TUNNEL), the transport bundle 0x4
    when it has ESP (else 0); the outer UDP checksum 0 on IPv4, the real one on IPv6."""
    t_config = _transport(t_name, False)
    u_config = _tunnel("esp-gcm256", outer, False, udp_encap=(4500, 4500))
    seen = []
    stack = _stack(pure)
    real_add = stack.miniport.add_sa

    def add_sa(entry):
        seen.append((entry.sec_assoc[0].spi, entry.udp_esp_encapsulation))
        return real_add(entry)
    stack.miniport.add_sa = add_sa
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    plain = _plain(inner, udp=True)
    result = stack.send([plain], t)
    assert result.status.tolist() == [NdisStatus.SUCCESS]
    (frame,) = result.wire.frames()
    want = 0x4 if t_config.has_esp else 0
    assert seen == [(u_config.spi, 0x2), (t_config.spi, want)]
    pkt = _ip(frame)
    udp = pkt[UDP]
    assert udp.dport == 4500
    if outer == 4:
        assert udp.chksum == 0  # RFC 3948
    else:
        assert udp.chksum != 0 and _udp6_ok(frame)  # over the final ciphertext (G25)
    _same_packet(_open(_open(frame, u_config, outer), t_config), plain)


def _udp6_ok(frame: bytes) -> bool:
    """The UDP checksum of an IPv6 packet with the UDP header right after the fixed header."""
    length = struct.unpack_from("!H", frame, 4)[0]
    pseudo = frame[8:40] + struct.pack("!IxxxB", length, 17)
    return ones_complement_sum(pseudo + frame[40:40 + length]) == 0xFFFF


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("outer", (4, 6))
def test_udp_transport_over_plain_tunnel_carries_0x8(outer, pure):
    """The transport SA UDP-encapsulated, the tunnel not: the transport bundle carries 0x8,
    the tunnel's 0; the inner UDP header (IPv4) has checksum 0 (RFC 3948)."""
    t_config = _transport("esp-gcm128", False, udp_encap=(4500, 4500))
    u_config = _tunnel("esp-cbc-sha1", outer, False)
    plain = _plain(4)
    (frame,), stack, t, u = _send_via(pure, t_config, u_config, [plain])
    records = stack.miniport.sas.snapshot().records
    types = {int(r["xf"][0]["spi"]): int(r["udp_type"]) for r in records if r["in_use"]}
    assert types == {t_config.spi: 0x8, u_config.spi: 0}
    inner = _open(frame, u_config, outer)
    assert IP(inner)[UDP].chksum == 0 and IP(inner)[UDP].dport == 4500
    _same_packet(_open(inner, t_config), plain)


def test_udp_transport_over_a_tunnel_refuses_inner_ipv6():
    """0x8 over IPv6 inside: its UDP checksum would have to be computed between the two
    seals; the stack refuses it (docs/send-path.md)."""
    stack = _stack(False)
    u = stack.add_sa(_tunnel("esp-gcm256", 4, False))
    t = stack.add_sa(_transport("esp-gcm128", False, udp_encap=(4500, 4500)), via=u)
    with pytest.raises(ValueError, match="IPv4 only"):
        stack.send([_plain(6)], t)
    assert t.next_seq == T_SEQ[False] and u.next_seq == U_SEQ[False]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("t_name", TRANSPORTS)
def test_scapy_opens_a_tunnel_bundle(t_name, pure):
    t_config, u_config = _transport(t_name, True), _tunnel("ah+esp-gcm", 6, True)
    plain = _plain(4)
    (frame,), *_ = _send_via(pure, t_config, u_config, [plain])
    _same_packet(_open(_open(frame, u_config, 6), t_config), plain)


# -- sequence numbers ---------------------------------------------------------------------------
def _esp_sn(frame: bytes, off: int) -> int:
    return struct.unpack_from("!I", frame, off + 4)[0]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_the_tunnel_counter_is_shared_with_its_own_packets(pure):
    stack = _stack(pure)
    u_config = _tunnel("esp-gcm256", 4, False)
    t_config = _transport("esp-cbc-sha256", False)
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    outer_sns, inner_sns = [], []
    for sa, count in ((u, 2), (t, 3), (u, 1), (t, 2), (u, 2)):
        result = stack.send([_plain(4)] * count, sa)
        assert result.status.tolist() == [NdisStatus.SUCCESS] * count
        for frame in result.wire.frames():
            outer_sns.append(_esp_sn(frame, 20))
            if sa is t:
                inner_sns.append(_esp_sn(_open(frame, u_config, 4), 20))
    assert outer_sns == list(range(U_SEQ[False], U_SEQ[False] + 10))
    assert inner_sns == list(range(T_SEQ[False], T_SEQ[False] + 5))
    assert u.next_seq == U_SEQ[False] + 10 and t.next_seq == T_SEQ[False] + 5


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_esn_crossings_of_both_counters(pure):
    """Both SAs cross into a new ESN high word inside one send: UPDATE_SA for each, and
    every packet opens with the high words it was sealed with."""
    stack = _stack(pure)
    u_config = SaConfig(**TUNNELS["esp-cbc-sha1"], mode="tunnel", tunnel_src=TUNNEL[6][0],
                        tunnel_dst=TUNNEL[6][1], esn=True, seq=(5 << 32) | 0xFFFFFFFE)
    t_config = SaConfig(**TRANSPORTS["esp-gcm128"], esn=True, seq=(2 << 32) | 0xFFFFFFFF)
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    result = stack.send([_plain(4)] * 4, t)
    assert result.status.tolist() == [NdisStatus.SUCCESS] * 4
    for i, frame in enumerate(result.wire.frames()):
        u_sn, t_sn = u_config.seq + i, t_config.seq + i
        inner = _open(frame, _with_seq(u_config, u_sn), 6)
        _same_packet(_open(inner, _with_seq(t_config, t_sn)), _plain(4))


def _with_seq(config: SaConfig, seq: int) -> SaConfig:
    return dataclasses.replace(config, seq=seq)


# -- the stack's checks -------------------------------------------------------------------------
def test_via_errors():
    stack = _stack(False)
    u = stack.add_sa(_tunnel("esp-gcm256", 4, False, udp_encap=(4500, 4500)))
    plain_t = stack.add_sa(_transport("esp-gcm128", False))
    with pytest.raises(ValueError, match="via is for transport SAs"):
        stack.add_sa(_tunnel("esp-cbc-sha1", 4, False), via=u)
    with pytest.raises(ValueError, match="must name a tunnel SA"):
        stack.add_sa(_transport("esp-cbc-sha256", False), via=plain_t)
    with pytest.raises(ValueError, match="both"):
        stack.add_sa(_transport("esp-cbc-sha256", False, udp_encap=(4500, 4500)), via=u)
    with pytest.raises(TypeError):
        stack.add_sa(_transport("esp-cbc-sha256", False), via="u")
    other = _stack(False)
    with pytest.raises(ValueError, match="not registered"):
        other.add_sa(_transport("esp-cbc-sha256", False), via=u)
    t = stack.add_sa(_transport("esp-cbc-sha256", False), via=u)
    with pytest.raises(ValueError):
        stack.send_lso(_plain(4), t, mss=10)
    assert "via=" in repr(t)


# -- the NIC's checks: the documented status, nothing leaves -------------------------------------
def _nested_batch(pure=False, **nic):
    stack = _stack(pure, **nic)
    u = stack.add_sa(_tunnel("esp-cbc-sha1", 4, False))
    t = stack.add_sa(_transport("esp-gcm128", False), via=u)
    batch = stack.build([_plain(4)], t)
    frame = bytes(batch.arena[:batch.nb_len[0]])
    oob = {name: int(batch.oob[0][name]) for name in (
        "offload_handle", "tunnel_handle", "next_header", "pad_length", "esp_off4", "ah_off4",
        "l2_len")}
    return stack, t, u, frame, oob


def _send_one(miniport, frame, **oob):
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], **oob)
    return miniport.send(builder.build())


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_bad_handles_fail(pure):
    stack, t, u, frame, oob = _nested_batch(pure)
    nic = stack.miniport
    assert _send_one(nic, frame, **oob).status.tolist() == [NdisStatus.SUCCESS]
    inbound = u.config.add_sa_entry(False, inbound=True)
    assert nic.add_sa(inbound) == NdisStatus.SUCCESS
    for change, reason in ((dict(tunnel_handle=0xDEAD), Reason.UNKNOWN_HANDLE),
                           (dict(offload_handle=0xBEEF), Reason.UNKNOWN_HANDLE),
                           (dict(tunnel_handle=inbound.offload_handle), Reason.INBOUND_HANDLE),
                           (dict(tunnel_handle=oob["offload_handle"]), Reason.NESTING),
                           (dict(lso_info=(1 << 30) | (54 << 20) | 1000), Reason.LSO_BAD_PARAMS)):
        result = _send_one(nic, frame, **{**oob, **change})
        assert result.status.tolist() == [NdisStatus.FAILURE] and len(result.wire) == 0
        assert result.reasons.tolist() == [reason]
    # the tunnel SA deleted: its handle is dead
    assert nic.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=oob["tunnel_handle"])) \
        == NdisStatus.SUCCESS
    result = _send_one(nic, frame, **oob)
    assert result.status.tolist() == [NdisStatus.FAILURE] and len(result.wire) == 0
    assert result.reasons.tolist() == [Reason.UNKNOWN_HANDLE]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_transport_tunnel_combined_off_fails_both_handles(pure):
    stack, t, u, frame, oob = _nested_batch(pure)
    stack.miniport.capabilities.transport_tunnel_combined = False
    result = _send_one(stack.miniport, frame, **oob)
    assert result.status.tolist() == [NdisStatus.FAILURE]
    assert result.reasons.tolist() == [Reason.TUNNEL_HANDLE]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_a_frame_without_the_inner_layer_fails(pure):
    """The tunnel SA's own frame (no transport ESP inside) sent with both handles, and the
    nested frame with the transport offsets moved: the documented status, nothing leaves."""
    stack, t, u, frame, oob = _nested_batch(pure)
    alone = stack.build([_plain(4)], u)
    u_frame = bytes(alone.arena[:alone.nb_len[0]])
    result = _send_one(stack.miniport, u_frame, **oob)
    assert result.status.tolist()[0] in (NdisStatus.FAILURE, NdisStatus.INVALID_PACKET)
    assert len(result.wire) == 0
    for esp4 in (0, 1, 4, 6, 200):
        result = _send_one(stack.miniport, frame, **{**oob, "esp_off4": esp4})
        assert result.status.tolist()[0] in (NdisStatus.FAILURE, NdisStatus.INVALID_PACKET)
        assert len(result.wire) == 0


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_nesting_bundles_used_alone_or_both_udp_fail(pure):
    stack = _stack(pure)
    nic = stack.miniport
    u = stack.add_sa(_tunnel("esp-gcm256", 4, False, udp_encap=(4500, 4500)))
    t = stack.add_sa(_transport("esp-gcm128", False), via=u)
    batch = stack.build([_plain(4)], t)
    frame = bytes(batch.arena[:batch.nb_len[0]])
    oob = {name: int(batch.oob[0][name]) for name in (
        "offload_handle", "tunnel_handle", "next_header", "pad_length", "esp_off4", "ah_off4",
        "l2_len")}
    # a 0x4 bundle used alone, on a frame of its own
    alone_stack = _stack(pure)
    alone = alone_stack.build([_plain(4)], alone_stack.add_sa(_transport("esp-gcm128", False)))
    a_frame = bytes(alone.arena[:alone.nb_len[0]])
    a_oob = {name: int(alone.oob[0][name]) for name in (
        "next_header", "pad_length", "esp_off4", "l2_len")}
    result = _send_one(nic, a_frame, offload_handle=oob["offload_handle"], **a_oob)
    assert result.status.tolist() == [NdisStatus.FAILURE]
    assert result.reasons.tolist() == [Reason.NESTING] and len(result.wire) == 0
    # the same transport SA as a 0x1 (UDP transport) or 0x8 bundle over the UDP tunnel:
    # both layers UDP-encapsulated, or disagreeing values
    for udp in (0x1, 0x8, 0x0):
        entry = t.config.add_sa_entry(False)
        entry.udp_esp_encapsulation = udp
        assert nic.add_sa(entry) == NdisStatus.SUCCESS
        result = _send_one(nic, frame, **{**oob, "offload_handle": entry.offload_handle})
        assert result.status.tolist() == [NdisStatus.FAILURE], udp
        assert result.reasons.tolist() == [Reason.NESTING] and len(result.wire) == 0


def test_add_sa_refuses_0x4_and_0x8_without_esp():
    nic = Miniport()
    entry = SaConfig(**TRANSPORTS["ah-sha1"]).add_sa_entry(False)
    for udp in (0x4, 0x8):
        entry.udp_esp_encapsulation = udp
        assert nic.add_sa(entry) == NdisStatus.NOT_SUPPORTED


def test_capabilities_offer_transport_over_tunnel():
    caps = Miniport().capabilities
    assert caps.transport_tunnel_combined
    assert caps.udp_esp == 0x1 | 0x2 | 0x4 | 0x8


# -- compiled == twin on nested frames, good and damaged --------------------------------------
NESTED_CONFIG = tk.ALL_CONFIG | int(Config.AH_IPV4 | Config.AH_IPV6 | Config.TRANSPORT_TUNNEL)
PAIRS = [("esp-gcm128", "esp-cbc-sha1", 4, 6, False), ("esp-cbc-sha256", "ah-sha256", 6, 4, True),
         ("ah-sha1", "esp-gcm256", 4, 4, True), ("ah+esp", "ah-sha256", 6, 6, False),
         ("ah+esp", "esp-cbc-sha1", 4, 4, False), ("esp-cbc-sha256", "ah+esp-gcm", 4, 6, True)]


def _nested_table():
    miniport = Miniport(random_source=tk.random_bytes)
    stack = HostStack(miniport, link="ethernet")
    pairs = []
    for n, (t_name, u_name, inner, outer, esn) in enumerate(PAIRS):
        u = stack.add_sa(_tunnel(u_name, outer, esn))
        # distinct SPIs per pair: one stack holds them all
        t = stack.add_sa(SaConfig(**{**TRANSPORTS[t_name], "spi": 0x3000 + n}, esn=esn,
                                  seq=T_SEQ[esn]), via=u)
        batch = stack.build([_plain(inner), _plain(inner, udp=True)], t)
        for i in range(batch.num_buffers):
            o = batch.oob[int(batch.nb_nbl[i])]
            pairs.append((bytes(batch.arena[batch.nb_off[i]:batch.nb_off[i] + batch.nb_len[i]]),
                          {name: int(o[name]) for name in (
                              "offload_handle", "tunnel_handle", "ah_off4", "esp_off4",
                              "next_header", "pad_length", "l2_len")}))
    return miniport, pairs


def _build(pairs):
    builder = PacketBatchBuilder()
    for frame, oob in pairs:
        builder.add_nbl([frame], **oob)
    return builder.build()


def test_twin_equals_compiled_on_good_nested_frames():
    miniport, pairs = _nested_table()
    batch = _build(pairs)
    results = tk.run_both(batch, config=NESTED_CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)
    assert (results[0][1].reasons == Reason.OK).all()
    passes = set(results[0][0].emitted[2].view(tk.CRYPTO_OP_DTYPE)["pass_no"].tolist())
    assert passes == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(8))
def test_twin_equals_compiled_on_damaged_nested_frames(seed):
    miniport, pairs = _nested_table()
    rng = np.random.default_rng(seed)
    damaged = []
    for frame, oob in pairs:
        f, o = bytearray(frame), dict(oob)
        what = int(rng.integers(0, 7))
        if what == 0:
            o["esp_off4"] = int(rng.integers(0, 256))
        elif what == 1:
            o["ah_off4"] = int(rng.integers(0, 256))
        elif what == 2:
            f = f[:int(rng.integers(0, len(f) + 1))]
        elif what == 3:
            at = int(rng.integers(14, len(f)))
            f[at] = int(rng.integers(0, 256))
        elif what == 4 and len(f) > 18:
            f[16:18] = struct.pack("!H", int(rng.integers(0, 0x10000)))
        elif what == 5:
            o["pad_length"] = int(rng.integers(0, 256))
        damaged.append((bytes(f), o))
    batch = _build(damaged)
    results = tk.run_both(batch, config=NESTED_CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)


# -- SA file and ``ipsecoffload encrypt`` ---------------------------------------------------------
VIA_FILE = [
    {"name": "site", "selector": {"dst": "10.9.0.0/16"}, "mode": "tunnel",
     "tunnel": {"src": "198.51.100.1", "dst": "198.51.100.2"}, "spi": "0x00002001",
     "encryption": "aes-cbc-128", "key": "11" * 16, "integrity": "hmac-sha1-96",
     "auth_key": "22" * 20, "seq": 1},
    {"name": "inner", "selector": {"dst": "10.1.0.0/16", "proto": "tcp"}, "mode": "transport",
     "spi": "0x00001001", "encryption": "aes-gcm-128", "key": "33" * 20, "seq": 1,
     "via": "site"},
]


def test_sa_file_reads_via_and_writes_it_back(tmp_path):
    from ipsecoffload.io.safile import load_sa_file, parse_sa_list, save_sa_file
    policies = parse_sa_list(VIA_FILE)
    assert [p.via for p in policies] == [None, "site"]
    assert policies[1]._fields[-1] == "via"
    save_sa_file(tmp_path / "sa.json", policies)
    assert [p.via for p in load_sa_file(tmp_path / "sa.json")] == [None, "site"]


@pytest.mark.parametrize("change,message", [
    ({1: {"via": "nowhere"}}, "no SA of this file"),
    ({1: {"via": "inner"}}, "the SA itself"),
    ({1: {"via": 7}}, "must be the name"),
    ({0: {"via": "inner"}}, "via is for mode 'transport'"),
    ({2: {"via": "inner"}}, "must name a mode 'tunnel' SA"),
    ({2: {"via": "site"}, 1: {"via": "x"}}, None),
    ({0: {"udp_encap": {"sport": 4500, "dport": 4500}},
      1: {"udp_encap": {"sport": 4500, "dport": 4500}}}, "udp_encap on both"),
])
def test_sa_file_via_errors(change, message):
    from ipsecoffload.io.safile import SaFileError, parse_sa_list
    document = [dict(entry) for entry in VIA_FILE] + [
        {"name": "x", "mode": "tunnel", "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"},
         "spi": 9, "encryption": "aes-gcm-128", "key": "44" * 20, "via": "site"}
        if message is None else
        {"name": "plain", "spi": 8, "encryption": "aes-gcm-128", "key": "44" * 20}]
    for index, fields in change.items():
        document[index] = {**document[index], **fields}
    with pytest.raises(SaFileError) as caught:
        parse_sa_list(document)
    text = str(caught.value)
    assert "\n" not in text and "33" * 8 not in text and "44" * 8 not in text
    if message is None:  # a chain: 'inner' via 'x', a tunnel SA that has a via itself
        message = "tunnels do not chain"
    assert message in text


def test_wireshark_lines_of_a_via_file():
    from ipsecoffload.io.safile import parse_sa_list, wireshark_esp_sa
    lines = wireshark_esp_sa(parse_sa_list(VIA_FILE))
    assert len(lines) == 2 and '"0x00001001"' in lines[1] and '"0x00002001"' in lines[0]


def _capture(tmp_path):
    from ipsecoffload.io.pcap import LINKTYPE_RAW, write_pcap
    packets = [bytes(IP(src="10.0.0.1", dst="10.1.0.2") / TCP(sport=1000 + i, dport=80)
                     / (b"x" * (20 + i))) for i in range(3)]
    packets.insert(1, bytes(IP(src="10.0.0.1", dst="10.9.0.3") / UDP(sport=5, dport=6) / b"own"))
    path = tmp_path / "plain.pcap"
    write_pcap(path, LINKTYPE_RAW, packets)
    (tmp_path / "sa.json").write_text(__import__("json").dumps(VIA_FILE))
    return path, packets


def test_encrypt_command_with_a_via_sa_file(tmp_path, capsys):
    from ipsecoffload.cli.main import main
    from ipsecoffload.io.pcap import read_pcap
    from ipsecoffload.io.safile import load_sa_file
    path, packets = _capture(tmp_path)
    code = main(["encrypt", "-i", str(path), "-o", str(tmp_path / "esp.pcap"), "--sa",
                 str(tmp_path / "sa.json"), "--json", "-q"])
    assert code == 0, capsys.readouterr()
    _, records = read_pcap(tmp_path / "esp.pcap")
    assert len(records) == 4
    site, inner = (p.config for p in load_sa_file(tmp_path / "sa.json"))
    for record, plain in zip(records, packets):
        data = record.data
        opened = _open(data, site, 4)
        if plain == packets[1]:  # the tunnel SA's own packet
            _same_packet(opened, plain)
        else:
            _same_packet(_open(opened, inner), plain)
    # one counter for the tunnel SA: its own packet and the three it carries
    assert sorted(_esp_sn(r.data, 20) for r in records) == [1, 2, 3, 4]


@pytest.mark.parametrize("workers", [1, 2])
def test_decrypt_command_opens_what_encrypt_sent_with_a_via_file(tmp_path, capsys, workers):
    import json

    from ipsecoffload.cli.main import main
    from ipsecoffload.io.pcap import read_pcap
    path, packets = _capture(tmp_path)
    sa = str(tmp_path / "sa.json")
    assert main(["encrypt", "-i", str(path), "-o", str(tmp_path / "esp.pcap"), "--sa", sa,
                 "-q"]) == 0
    capsys.readouterr()
    document = json.loads((tmp_path / "sa.json").read_text())
    # a second SPI group, so that two workers have a shard each: the via SA stays with its tunnel
    document.append({"name": "other", "spi": 7, "encryption": "aes-gcm-128", "key": "44" * 20})
    (tmp_path / "sa.json").write_text(json.dumps(document))
    assert main(["decrypt", "-i", str(tmp_path / "esp.pcap"), "-o", str(tmp_path / "back.pcap"),
                 "--sa", sa, "--json", "--workers", str(workers)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["packets_out"] == 4
    assert summary["sas"]["inner"]["crypto_status"] == {"SUCCESS": 3}
    assert summary["sas"]["site"]["crypto_status"] == {"SUCCESS": 1}
    assert [r.data for r in read_pcap(tmp_path / "back.pcap")[1]] == packets


def test_tshark_dissects_nested_packets_with_both_lines(tmp_path, capsys):
    import subprocess

    from test_cli import tshark_or_skip

    from ipsecoffload.cli.main import main
    from ipsecoffload.io.wireshark import TSHARK_OPTIONS
    tshark = tshark_or_skip()
    path, packets = _capture(tmp_path)
    assert main(["encrypt", "-i", str(path), "-o", str(tmp_path / "esp.pcap"), "--sa",
                 str(tmp_path / "sa.json"), "-q"]) == 0
    assert main(["wireshark-sa", "--sa", str(tmp_path / "sa.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('"')]
    options = list(TSHARK_OPTIONS)
    for line in lines:
        options += ["-o", f"uat:esp_sa:{line}"]
    done = subprocess.run([tshark, "-n", "-r", str(tmp_path / "esp.pcap"), *options,
                           "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good",
                           "-e", "frame.protocols"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == 4
    for row, plain in zip(rows, packets):
        spis, good, protocols = row.split("\t")
        if plain == packets[1]:
            assert spis == "0x00002001" and protocols.endswith("ip:esp:ip:udp:data")
        else:  # the outer ESP decrypted, then the inner ESP, down to TCP
            assert spis.split(",") == ["0x00002001", "0x00001001"], row
            assert "esp:ip:esp:tcp" in protocols, row
            assert good.split(",") == ["1", "1"], row


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_send_batch_with_a_via_sa(pure):
    """send_batch frames via SAs run by run (host/stack.py); refused packets are faults,
    the others are sent in order, and the tunnel SA's counter is shared."""
    stack = _stack(pure)
    u_config = _tunnel("esp-gcm256", 4, False)
    t_config = _transport("esp-cbc-sha256", False)
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    plain = _plain(4)
    packets = [plain, plain, b"\x00junk", plain, plain, _plain(6)]
    sas = [t, u, t, t, None, t]
    sent = stack.send_batch(packets, sas, mss=20)
    assert [i for i, _ in sent.faults] == [2]
    assert (sent.nbl >= 0).tolist() == [True, True, False, True, True, True]
    frames = sent.result.wire.frames()
    assert len(frames) == 5
    assert frames[3] == plain  # no SA: as given
    _same_packet(_open(_open(frames[0], u_config, 4), t_config), plain)
    _same_packet(_open(frames[1], u_config, 4), plain)
    outer = [_esp_sn(f, 20) for k, f in enumerate(frames) if k != 3]
    assert outer == [U_SEQ[False] + k for k in range(4)]
    # a plain transport SA in the same list: its big TCP packets still go as LSO
    e = stack.add_sa(_transport("esp-gcm128", False))
    sent = stack.send_batch([plain, plain], [e, t], mss=20)
    assert sent.faults == [] and sent.nbl.tolist() == [0, 1]
    assert len(sent.result.wire.frames()) == 3  # 40 payload bytes in 20-byte segments, + 1


def test_a_tunnel_sa_that_carries_another_is_removed_last():
    stack = _stack(False)
    u = stack.add_sa(_tunnel("esp-gcm256", 4, False))
    t = stack.add_sa(_transport("esp-gcm128", False), via=u)
    with pytest.raises(ValueError, match="remove that SA first"):
        stack.remove_sa(u)
    stack.remove_sa(t)
    stack.remove_sa(u)
    assert stack.sas == []


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_packet_ivs_are_fresh_in_both_layers(pure):
    """Miniport(iv_source="packet") keeps the frame's IVs: the stack fills fresh random ones
    into both layers of a nested frame (an all-zero IV would repeat the GCM nonce)."""
    stack = _stack(pure, iv_source="packet")
    u_config, t_config = _tunnel("esp-gcm256", 6, False), _transport("esp-gcm128", False)
    u = stack.add_sa(u_config)
    t = stack.add_sa(t_config, via=u)
    result = stack.send([_plain(4)] * 2, t)
    assert result.status.tolist() == [NdisStatus.SUCCESS] * 2
    ivs = set()
    for frame in result.wire.frames():
        ivs.add(frame[48:56])  # the tunnel ESP's IV after the outer IPv6 header
        inner = _open(frame, u_config, 6)
        ivs.add(inner[28:36])
        _same_packet(_open(inner, t_config), _plain(4))
    assert len(ivs) == 4 and bytes(8) not in ivs
