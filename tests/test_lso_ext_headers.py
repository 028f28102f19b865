"""LSO with IPv6 destination options after a routing header (RFC 8200 §4.1 order).

The host stack places AH / ESP before destination options that follow a routing header
(the placement Linux uses, docs/send-path.md), so the IPsec header's protected text starts
with the destination-options header and TcpHeaderOffset points past it. The NIC accepts
exactly a chain of destination-options headers that ends at TcpHeaderOffset with Next Header
TCP, repeats it in every segment (inside the encrypted text, under the AH ICV) and computes
each segment's TCP checksum over the pseudo-header with the routing header's final
destination (RFC 8200 §8.1).

Every segment is opened by scapy's ``SecurityAssociation`` (ESP: aes-gcm-128, aes-cbc-128 +
hmac-sha256-128; AH: hmac-sha256-128; an AH+ESP bundle: AH verified, then ESP decrypted),
and scapy recomputes each TCP checksum. Both kernels give the same bytes; bad destination
options fail the NBL with LSO_BAD_PARAMS; random byte flips never crash (compiled == twin).
"""
from __future__ import annotations

import random

import pytest

pytest.importorskip("scapy.layers.ipsec")

from scapy.layers.inet import TCP  # noqa: E402
from scapy.layers.inet6 import (HBHOptUnknown, IPv6, IPv6ExtHdrDestOpt,  # noqa: E402
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH, ESP, SecurityAssociation  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from ipsecoffload import HostStack, Miniport, PacketBatchBuilder, SaConfig, ndis  # noqa: E402
from ipsecoffload.datapath.layout import Config, Reason  # noqa: E402
from ipsecoffload.ndis import NdisStatus  # noqa: E402

import test_kernels as tk  # noqa: E402  (the twin-vs-compiled harness)

KERNELS = [pytest.param(False, id="compiled"), pytest.param(True, id="python")]
SRC, FIRST_HOP, MIDDLE, FINAL = "2001:db8::1", "2001:db8:a::1", "2001:db8:b::1", "2001:db8::2"
SEQ0, MSS = 5000, 1000
PAYLOAD = bytes((i * 7 + 3) & 0xFF for i in range(2500))
DEST_OPTIONS = [HBHOptUnknown(otype=0x1E, optdata=b"final-dst"),  # does not change en route
                HBHOptUnknown(otype=0x3E, optdata=b"\x01\x02\x03")]
CONFIG = tk.ALL_CONFIG | int(Config.AH_IPV4 | Config.AH_IPV6)


def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 29 + i * 13 + 1) & 0xFF for i in range(n))


SUITES = {
    "esp-gcm128": SaConfig(spi=0x1101, encryption="aes-gcm-128", key=_key(20, 1), seq=7),
    "esp-cbc128-sha256": SaConfig(spi=0x1102, encryption="aes-cbc-128", key=_key(16, 2),
                                  integrity="hmac-sha256-128", auth_key=_key(32, 3), seq=9),
    "ah-sha256": SaConfig(spi=0x1103, protocol="ah", integrity="hmac-sha256-128",
                          auth_key=_key(32, 4), seq=11),
    "ah+esp-gcm128-sha256": SaConfig(spi=0x1104, protocol="ah+esp", encryption="aes-gcm-128",
                                     key=_key(20, 5), ah_spi=0x2104,
                                     ah_integrity="hmac-sha256-128", ah_auth_key=_key(32, 6),
                                     seq=13),
}


def _packet(*, hop_by_hop: bool = False, flags: str = "PA", payload: bytes = PAYLOAD,
            dest_options: bool = True) -> bytes:
    ip = IPv6(src=SRC, dst=FIRST_HOP, hlim=9)
    if hop_by_hop:
        ip = ip / IPv6ExtHdrHopByHop()
    ip = ip / IPv6ExtHdrRouting(addresses=[MIDDLE, FINAL], segleft=2)
    if dest_options:
        ip = ip / IPv6ExtHdrDestOpt(options=DEST_OPTIONS)
    return bytes(ip / TCP(sport=40000, dport=443, seq=SEQ0, ack=77, flags=flags)
                 / Raw(payload))


def _dest_options_bytes(packet: bytes) -> bytes:
    """The destination-options header of a plain IPv6 packet, as bytes (b"" if none)."""
    pkt = IPv6(packet)
    if IPv6ExtHdrDestOpt not in pkt:
        return b""
    options = bytes(pkt[IPv6ExtHdrDestOpt])
    return options[:len(options) - len(bytes(pkt[TCP]))]


OPTIONS_LEN = len(_dest_options_bytes(_packet()))


def _scapy_sas(config: SaConfig):
    esp = ah = None
    if config.has_esp:
        if config.gcm:
            esp = SecurityAssociation(ESP, spi=config.spi, crypt_algo="AES-GCM",
                                      crypt_key=config.key)
        else:
            esp = SecurityAssociation(ESP, spi=config.spi, crypt_algo="AES-CBC",
                                      crypt_key=config.key, auth_algo="SHA2-256-128",
                                      auth_key=config.auth_key)
    if config.has_ah:
        spi, _, key = config.ah_layer
        ah = SecurityAssociation(AH, spi=spi, auth_algo="SHA2-256-128", auth_key=key)
    return esp, ah


def _open(frame: bytes, config: SaConfig, index: int):
    """The plain IPv6 packet a segment carries at its final destination: AH verified (and
    removed), ESP decrypted, with the sequence numbers checked."""
    esp_sa, ah_sa = _scapy_sas(config)
    pkt = IPv6(frame)
    routing = pkt[IPv6ExtHdrRouting]
    assert routing.addresses == [MIDDLE, FINAL] and routing.segleft == 2 and pkt.dst == FIRST_HOP
    # as it arrives, after the routers did their part (RFC 8200 §4.4): the AH ICV covers this
    routing.addresses, routing.segleft, pkt.dst = [FIRST_HOP, MIDDLE], 0, FINAL
    pkt = IPv6(bytes(pkt))
    if ah_sa is not None:
        assert pkt[AH].seq == config.seq + index
        pkt = ah_sa.decrypt(pkt)  # raises unless the ICV verifies
        pkt = IPv6(bytes(pkt))
    if esp_sa is not None:
        assert pkt[ESP].seq == config.seq + index
        pkt = esp_sa.decrypt(pkt)
    return IPv6(bytes(pkt))


def _check_segments(frames, config: SaConfig, packet: bytes, mss: int = MSS) -> None:
    want_options = _dest_options_bytes(packet)
    got = b""
    for i, frame in enumerate(frames):
        plain = _open(frame, config, i)
        assert IPv6ExtHdrDestOpt in plain, "every segment carries the destination options"
        assert _dest_options_bytes(bytes(plain)) == want_options
        tcp = plain[TCP]
        assert tcp.seq == SEQ0 + i * mss
        got += bytes(tcp.payload)
        # scapy recomputes the checksum over the pseudo-header with the final destination
        recomputed = plain.copy()
        del recomputed[TCP].chksum
        assert IPv6(bytes(recomputed))[TCP].chksum == tcp.chksum
        assert plain.plen == len(bytes(plain)) - 40
    assert got == bytes(IPv6(packet)[TCP].payload)


def _send_lso(config: SaConfig, packet: bytes, pure: bool, **miniport):
    stack = HostStack(Miniport(pure_python=pure, random_source=tk.random_bytes, **miniport),
                      link="raw")
    sa = stack.add_sa(config)
    result = stack.send_lso(packet, sa, MSS)
    assert result.status.tolist() == [0] * len(result.status), result.reason_counts()
    return result.wire.frames()


@pytest.mark.parametrize("hop_by_hop", [False, True], ids=["routing", "hbh-routing"])
@pytest.mark.parametrize("name", list(SUITES))
def test_every_segment_opens_and_carries_the_destination_options(name, hop_by_hop):
    config = SUITES[name]
    packet = _packet(hop_by_hop=hop_by_hop)
    frames = {pure: _send_lso(config, packet, pure) for pure in (False, True)}
    assert len(frames[False]) == 3
    assert frames[False] == frames[True], "both kernels give the same bytes"
    _check_segments(frames[False], config, packet)


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("name", list(SUITES))
def test_the_stack_frames_the_destination_options_after_the_ipsec_header(name, pure):
    config = SUITES[name]
    stack = HostStack(Miniport(pure_python=pure, random_source=tk.random_bytes), link="raw")
    sa = stack.add_sa(config)
    packet = _packet()
    batch = stack.build_lso(packet, sa, MSS)
    frame = bytes(batch.arena[:int(batch.nb_len[0])])
    oob = batch.oob[0]
    options = _dest_options_bytes(packet)
    tcp_off = int((int(oob["lso_info"]) >> 20) & 0x3FF)
    assert frame[tcp_off - len(options):tcp_off] == options
    assert frame[tcp_off:tcp_off + 4] == (40000).to_bytes(2, "big") + (443).to_bytes(2, "big")
    if config.has_esp:
        assert int(oob["next_header"]) == 60  # the ESP trailer names the destination options
    else:
        assert frame[int(oob["ah_off4"]) * 4] == 60  # AH Next Header


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("dest_options", [True, False], ids=["dstopts", "routing-only"])
@pytest.mark.parametrize("name", ["esp-cbc128-sha256", "ah+esp-gcm128-sha256"])
def test_pieces_over_max_offload_size_keep_the_destination_options(name, dest_options, pure):
    """The stack cuts a packet over MaxOffLoadSize into super-packets and a piece under
    MinSegmentCount into plain packets: all carry the destination options, and the plain
    pieces' TCP checksums (the stack's) name the final destination too."""
    config = SUITES[name]
    lso_v2 = ndis.NdisTcpLargeSendOffloadV2(ipv6_max_offload_size=2000,
                                            ipv6_min_segment_count=2)
    packet = _packet(payload=bytes((i * 5) & 0xFF for i in range(4500)),
                     dest_options=dest_options)
    stack = HostStack(Miniport(pure_python=pure, random_source=tk.random_bytes, lso_v2=lso_v2),
                      link="raw")
    sa = stack.add_sa(config)
    result = stack.send_lso(packet, sa, MSS)
    assert result.status.tolist() == [0, 0, 0], result.reason_counts()  # 2000, 2000, 500
    frames = result.wire.frames()
    assert len(frames) == 5
    got = b""
    options = _dest_options_bytes(packet)
    for i, frame in enumerate(frames):
        plain = _open(frame, config, i)
        assert _dest_options_bytes(bytes(plain)) == options
        tcp = plain[TCP]
        assert tcp.seq == SEQ0 + i * MSS
        recomputed = plain.copy()
        del recomputed[TCP].chksum
        assert IPv6(bytes(recomputed))[TCP].chksum == tcp.chksum
        got += bytes(tcp.payload)
    assert got == bytes(IPv6(packet)[TCP].payload)


def test_the_stack_refuses_what_is_not_tcp_after_the_destination_options():
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(SUITES["esp-gcm128"])
    udp_after = bytearray(_packet())
    pkt = IPv6(bytes(udp_after))
    at = len(bytes(pkt)) - len(bytes(pkt[IPv6ExtHdrDestOpt]))
    udp_after[at] = 17
    with pytest.raises(ValueError, match="LSO needs a TCP packet; this one carries protocol 17"):
        stack.send_lso(bytes(udp_after), sa, MSS)
    truncated = bytearray(_packet(payload=b""))
    truncated[at + 1] = 200  # runs past the packet
    truncated = truncated[:at + 8 + 20]
    truncated[4:6] = (len(truncated) - 40).to_bytes(2, "big")
    with pytest.raises(ValueError):
        stack.send_lso(bytes(truncated), sa, MSS)


# -- the NIC on damaged frames ---------------------------------------------------------------
def _builds(pure: bool = False):
    """One good LSO NBL per suite (config, frame, OOB fields) and the miniport holding the
    SAs."""
    miniport = Miniport(pure_python=pure, random_source=tk.random_bytes)
    stack = HostStack(miniport, link="ethernet")
    out = []
    for config in SUITES.values():
        sa = stack.add_sa(config)
        batch = stack.build_lso(_packet(), sa, 400)
        frame = bytes(batch.arena[:int(batch.nb_len[0])])
        oob = batch.oob[0]
        fields = {k: int(oob[k]) for k in ("offload_handle", "ah_off4", "esp_off4",
                                           "next_header", "pad_length", "l2_len", "lso_info")}
        out.append((config, frame, fields))
    return miniport, out


def _tcp_off(fields) -> int:
    return (fields["lso_info"] >> 20) & 0x3FF


def _damaged(frame: bytes, fields: dict, what: str) -> tuple[bytes, dict]:
    f = bytearray(frame)
    options_at = _tcp_off(fields) - OPTIONS_LEN
    if what == "length-past-tcp":
        f[options_at + 1] += 1  # 8 bytes more: runs past TcpHeaderOffset
    elif what == "length-short":
        f[options_at + 1] = 0 if f[options_at + 1] else 1
    elif what == "next-not-tcp":
        f[options_at] = 17
    elif what == "chain-not-named":
        fields = dict(fields)
        if fields["esp_off4"]:
            fields["next_header"] = 6  # the trailer says TCP, but options come first
        else:
            f[fields["ah_off4"] * 4 + 14] = 6
    elif what == "tcp-offset-at-options":
        fields = dict(fields, lso_info=fields["lso_info"] - (OPTIONS_LEN << 20))
    return bytes(f), fields


DAMAGE = ["length-past-tcp", "length-short", "next-not-tcp", "chain-not-named",
          "tcp-offset-at-options"]


@pytest.mark.parametrize("pure", KERNELS)
@pytest.mark.parametrize("what", DAMAGE)
def test_bad_destination_options_fail_with_lso_bad_params(what, pure):
    miniport, builds = _builds(pure)
    for config, frame, fields in builds:
        bad, bad_fields = _damaged(frame, fields, what)
        builder = PacketBatchBuilder()
        builder.add_nbl([bad], **bad_fields)
        result = miniport.send(builder.build())
        assert result.status.tolist() == [NdisStatus.FAILURE], (config.protocol, what)
        assert result.reasons.tolist() == [Reason.LSO_BAD_PARAMS], (config.protocol, what)
        assert result.wire.frames() == []


def test_compiled_and_twin_agree_on_good_and_damaged_frames():
    miniport, builds = _builds()
    builder = PacketBatchBuilder()
    for _, frame, fields in builds:
        builder.add_nbl([frame], **fields)
        for what in DAMAGE:
            bad, bad_fields = _damaged(frame, fields, what)
            builder.add_nbl([bad], **bad_fields)
    batch = builder.build()
    results = tk.run_both(batch, config=CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)
    reasons = results[0][1].reasons.tolist()
    step = 1 + len(DAMAGE)
    assert reasons[0::step] == [Reason.OK] * len(builds)
    for k in range(1, step):
        assert reasons[k::step] == [Reason.LSO_BAD_PARAMS] * len(builds)


def test_random_flips_in_the_extension_headers_never_crash():
    """A few hundred frames, each with 1-3 random bytes of its IPv6 extension headers, AH /
    ESP header or TCP header changed: both kernels agree on every status and byte."""
    miniport, builds = _builds()
    rng = random.Random(9)
    builder = PacketBatchBuilder()
    for _ in range(40):
        for _, frame, fields in builds:
            f = bytearray(frame)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(14 + 40, _tcp_off(fields) + 20)
                f[at] = rng.choice([rng.randrange(256), f[at] ^ (1 << rng.randrange(8)),
                                    0, 6, 17, 43, 44, 50, 51, 60, 0xFF])
            builder.add_nbl([bytes(f)], **fields)
    batch = builder.build()
    results = tk.run_both(batch, config=CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)


# -- encrypt (the capture path): the compiled framer and the Python one ----------------------
@pytest.mark.parametrize("framer", ["compiled", "python"])
def test_encrypt_frames_lso_with_destination_options(tmp_path, framer):
    """encrypt --mss: the compiled capture framer puts TcpHeaderOffset past the destination
    options (it took them for the TCP header before) and agrees byte for byte with the
    Python framer (HostStack)."""
    import json

    from ipsecoffload.io.capture import encrypt_capture, encrypt_capture_python
    from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, read_pcap, write_pcap
    from ipsecoffload.io.safile import load_sa_file
    config = SUITES["esp-gcm128"]
    (tmp_path / "sa.json").write_text(json.dumps([{
        "name": "gcm", "selector": {"proto": "tcp"}, "spi": hex(config.spi),
        "encryption": "aes-gcm-128", "key": config.key.hex(), "seq": config.seq}]))
    ether = bytes.fromhex("0200000000bb0200000000aa86dd")
    packet = _packet()
    write_pcap(tmp_path / "plain.pcap", LINKTYPE_ETHERNET, [ether + packet],
               [1_700_000_000_000_000_000])
    outputs = {}
    for name, encrypt in (("compiled", encrypt_capture), ("python", encrypt_capture_python)):
        encrypt(tmp_path / "plain.pcap", tmp_path / f"{name}.pcap",
                load_sa_file(tmp_path / "sa.json"), mss=MSS, miniport=Miniport())
        outputs[name] = [bytes(r.data) for r in read_pcap(tmp_path / f"{name}.pcap")[1]]
    frames = outputs[framer]
    assert len(frames) == 3
    _check_segments([f[14:] for f in frames], config, packet)
    assert outputs["compiled"] == outputs["python"]


@pytest.mark.parametrize("name", ["esp-gcm128", "esp-cbc128-sha256"])
def test_send_batch_with_mss_segments_past_destination_options(name):
    """HostStack.send_batch(mss=) turns such a packet into an LSO super-packet too (it went
    as one large ESP packet before), with the same segments as send_lso."""
    config = SUITES[name]
    packet = _packet()
    stack = HostStack(Miniport(random_source=tk.random_bytes), link="raw")
    sa = stack.add_sa(config)
    sent = stack.send_batch([packet], sa, mss=MSS)
    assert not sent.faults, sent.counts
    frames = sent.result.wire.frames()
    assert len(frames) == 3
    _check_segments(frames, config, packet)
