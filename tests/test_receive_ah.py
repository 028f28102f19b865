"""AH and AH+ESP bundles on the receive path (docs/receive-path.md "AH"): the NIC verifies AH
over a copy of the header region with the mutable fields and the ICV zeroed (RFC 4302
§3.3.3.1), AH before ESP (a bundle's ESP is opened only once its AH verified), and reports
CRYPTO_TRANSPORT_AH_AUTH_FAILED / CRYPTO_TUNNEL_AH_AUTH_FAILED; the stack strips AH (and ESP).

Checked against what nobody here wrote: packets signed by scapy's ``SecurityAssociation(AH)``
and bundles built by scapy (ESP, then AH), DPDK's AH packets, and decrypted by us to the
plain packet; round trips through our own send on both kernels; twin == compiled on valid and
mutated AH traffic.
"""
import hmac
import json
import struct
import threading

import pytest

pytest.importorskip("scapy")
from hypothesis import given, strategies as st  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.ipsec import AH, ESP, SecurityAssociation, zero_mutable_fields  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from ipsecoffload import HostStack, Miniport, SaConfig, _fastpath  # noqa: E402
from ipsecoffload.cli.main import main  # noqa: E402
from ipsecoffload.datapath import twin  # noqa: E402
from ipsecoffload.datapath.batch import PacketBatch  # noqa: E402
from ipsecoffload.datapath.layout import Config, Delivery, RxConfig, RxReason  # noqa: E402
from ipsecoffload.io.pcap import LINKTYPE_RAW, read_pcap, write_pcap  # noqa: E402
from ipsecoffload.ndis import CryptoStatus  # noqa: E402

from test_ah import (AH_ALGORITHMS, AH_VECTORS, BUNDLES, KERNEL_IDS, KERNELS, TUNNEL,  # noqa: E402
                     _ah_config, _bundle_config, _key, _mutate, _plain, _send, _vector_config)
from test_rx_kernels import BACKENDS, FUZZ, Pair, run_both, udp_packet  # noqa: E402

ALL_RX_AH = int(Config.ESP_IPV4 | Config.ESP_IPV6 | Config.AH_IPV4 | Config.AH_IPV6
                | RxConfig.IPV4_OPTIONS | RxConfig.IPV6_EXT_HEADERS)
KINDS = ("v4", "v4opt", "v6", "v6ext")
AH_MATRIX = [(i, k, m, e) for i in AH_ALGORITHMS for k in KINDS
             for m in ("transport", "tunnel") for e in (False, True)]


def _version(kind: str) -> int:
    return 6 if kind.startswith("v6") else 4


def _receiver(config: SaConfig, pure: bool = False, **miniport_kw):
    stack = HostStack(Miniport(pure_python=pure, **miniport_kw), link="raw")
    return stack, stack.add_inbound_sa(config)


def _ah_len(frame: bytes, at: int) -> int:
    return (frame[at + 1] + 2) * 4


def _ah_at(frame: bytes) -> int:
    """Where AH starts in one of _plain()'s packets once protected (after the IPv4 header
    with its options, or the IPv6 header and the hop-by-hop / destination options)."""
    if frame[0] >> 4 == 4:
        return (frame[0] & 0xF) * 4
    at, nh = 40, frame[6]
    while nh in (0, 60):
        nh, at = frame[at], at + (frame[at + 1] + 1) * 8
    return at


# -- 1. round trips through our own send, both kernels --------------------------------------------
@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("integrity,kind,mode,esn", AH_MATRIX,
                         ids=[f"{i}-{k}-{m}-{'esn' if e else 'plain'}" for i, k, m, e in AH_MATRIX])
def test_ah_round_trip(integrity, kind, mode, esn, pure):
    config = _ah_config(integrity, mode, _version(kind), esn)
    plain = _plain(kind)
    frames = _send(config, [plain] * 3, pure=pure)
    stack, _ = _receiver(config, pure)
    got = stack.receive(frames)
    assert got.delivery.tolist() == [Delivery.DECAP] * 3, got.nic.reason_counts()
    assert got.packets() == [plain] * 3
    nic = got.nic
    assert nic.crypto_done.tolist() == [1] * 3
    assert nic.crypto_status.tolist() == [CryptoStatus.SUCCESS] * 3
    assert nic.frames() == frames  # AH leaves the frame as received
    assert nic.plans["header_info_set"].tolist() == [0] * 3  # no ESP trailer to report
    assert nic.plans["tunnel"].tolist() == [int(mode == "tunnel")] * 3
    # the ICV of every frame was checked with the sequence number it carries
    seq0 = config.seq
    assert nic.seq64.tolist() == [seq0, seq0 + 1, seq0 + 2]


BUNDLE_MATRIX = [(n, k, m, e) for n in BUNDLES for k in ("v4", "v6ext")
                 for m in ("transport", "tunnel") for e in (False, True)]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("name,kind,mode,esn", BUNDLE_MATRIX,
                         ids=[f"{n}-{k}-{m}-{'esn' if e else 'plain'}"
                              for n, k, m, e in BUNDLE_MATRIX])
def test_bundle_round_trip(name, kind, mode, esn, pure):
    config = _bundle_config(name, mode, _version(kind), esn)
    plain = _plain(kind)
    frames = _send(config, [plain] * 2, pure=pure)
    stack, _ = _receiver(config, pure)
    got = stack.receive(frames)
    assert got.delivery.tolist() == [Delivery.DECAP] * 2, got.nic.reason_counts()
    assert got.packets() == [plain] * 2
    plans = got.nic.plans
    assert plans["header_info_set"].tolist() == [1, 1]  # the ESP trailer's
    assert plans["next_header"].tolist() == [
        (4 if _version(kind) == 4 else 41) if mode == "tunnel" else _plain_proto(plain)] * 2


def _plain_proto(packet: bytes) -> int:
    if packet[0] >> 4 == 4:
        return packet[9]
    at, nh = 40, packet[6]
    while nh in (0, 43, 60):
        nh, at = packet[at], at + (packet[at + 1] + 1) * 8
    return nh


def test_esn_ah_crosses_2_32_without_update_sa():
    """An ESN AH SA whose numbers cross 2^32 in one batch and in the next: the NIC infers the
    high word (RFC 4303 App. A, applied to AH's 32-bit field, RFC 4302 §2.5.1)."""
    config = SaConfig(spi=0x4444, protocol="ah", integrity="hmac-sha256-128",
                      auth_key=_key(32, 3), esn=True, seq=2**32 - 3)
    plain = _plain("v4")
    frames = _send(config, [plain] * 8)
    stack, _ = _receiver(config)
    first, second = stack.receive(frames[:5]), stack.receive(frames[5:])
    assert first.packets() + second.packets() == [plain] * 8
    assert (first.nic.seq64.tolist() + second.nic.seq64.tolist()
            == list(range(2**32 - 3, 2**32 + 5)))


# -- 2. what scapy signed, we verify and strip -----------------------------------------------------
SCAPY_AH = [(i, k, m, e) for i in AH_ALGORITHMS if AH_ALGORITHMS[i][0]
            for k in ("v4", "v4opt", "v6") for m in ("transport", "tunnel") for e in (False, True)]


def _scapy_ah_sa(config: SaConfig, mode: str, version: int):
    tunnel = None
    if mode == "tunnel":
        tunnel = (IPv6 if version == 6 else IP)(src=TUNNEL[version][0], dst=TUNNEL[version][1])
    spi, integrity, key = config.ah_layer
    return SecurityAssociation(AH, spi=spi, auth_algo=AH_ALGORITHMS[integrity][0], auth_key=key,
                               tunnel_header=tunnel, esn_en=config.esn,
                               esn=config.seq >> 32 if config.esn else 0)


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("integrity,kind,mode,esn", SCAPY_AH,
                         ids=[f"{i}-{k}-{m}-{'esn' if e else 'plain'}" for i, k, m, e in SCAPY_AH])
def test_scapy_signed_ah_is_verified_and_stripped(integrity, kind, mode, esn, pure):
    version = _version(kind)
    config = _ah_config(integrity, mode, version, esn)
    plain = _plain(kind)
    ip_class = IPv6 if version == 6 else IP
    sa = _scapy_ah_sa(config, mode, version)
    low = config.seq & 0xFFFFFFFF
    wires = [bytes(sa.encrypt(ip_class(plain), seq_num=low + k)) for k in range(3)]
    stack, _ = _receiver(config, pure)
    got = stack.receive(wires)
    assert got.nic.crypto_status.tolist() == [CryptoStatus.SUCCESS] * 3, got.nic.reason_counts()
    assert got.delivery.tolist() == [Delivery.DECAP] * 3
    if mode == "tunnel":
        assert got.packets() == [plain] * 3
    else:  # scapy's transport AH keeps every header field; we give back the original packet
        assert got.packets() == [plain] * 3
    # a byte scapy covered, flipped: refused with the AH status of the layer
    bad = bytearray(wires[0])
    bad[-1] ^= 0x04
    again = stack.receive([bytes(bad)])
    assert again.nic.crypto_status.tolist() == [
        CryptoStatus.TUNNEL_AH_AUTH_FAILED if mode == "tunnel"
        else CryptoStatus.TRANSPORT_AH_AUTH_FAILED]
    assert again.delivery.tolist() == [Delivery.CRYPTO]


SCAPY_BUNDLES = [n for n in BUNDLES if "gcm" not in n and "gmac" not in n]


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("name", SCAPY_BUNDLES)
def test_scapy_built_bundle_is_verified_and_decrypted(name, mode):
    """scapy encrypts ESP, then signs AH over the result (RFC 4301 §4.5's order); we verify
    AH, decrypt ESP and give back the plain packet."""
    from test_ah import SCAPY_AUTH, SCAPY_ESP
    config = _bundle_config(name, mode, 4, False)
    plain = _plain("v4")
    tunnel = IP(src=TUNNEL[4][0], dst=TUNNEL[4][1]) if mode == "tunnel" else None
    esp = SecurityAssociation(ESP, spi=config.spi, crypt_algo=SCAPY_ESP[config.encryption],
                              crypt_key=config.key, auth_algo=SCAPY_AUTH[config.integrity],
                              auth_key=config.auth_key or None, tunnel_header=tunnel)
    spi, integrity, key = config.ah_layer
    ah = SecurityAssociation(AH, spi=spi, auth_algo=AH_ALGORITHMS[integrity][0], auth_key=key)
    wires = []
    for k in range(2):
        # scapy's AH sign takes any packet holding an ESP layer for ESP: AH goes over the
        # ESP packet's bytes as an opaque payload
        outer = IP(bytes(esp.encrypt(IP(plain), seq_num=config.seq + k)))
        body = bytes(outer.payload)
        outer.remove_payload()
        unsigned = bytearray(bytes(ah.encrypt(outer / Raw(body), seq_num=config.seq + k)))
        # ... and then, parsing it again as ESP, leaves the ICV zero and appends 16 stray
        # bytes after the datagram: the datagram as its IPv4 length gives it, the ICV from
        # scapy's own zero_mutable_fields and the standard library's HMAC
        unsigned = bytes(unsigned[:struct.unpack_from("!H", unsigned, 2)[0]])
        mac = hmac.new(key, bytes(zero_mutable_fields(IP(unsigned), sending=True)),
                       {"hmac-sha1-96": "sha1", "hmac-sha256-128": "sha256",
                        "hmac-md5-96": "md5"}[integrity]).digest()
        icv = 20 + 12
        size = {"hmac-sha256-128": 16}.get(integrity, 12)
        wires.append(unsigned[:icv] + mac[:size] + unsigned[icv + size:])
    stack, _ = _receiver(config)
    got = stack.receive(wires)
    assert got.nic.crypto_status.tolist() == [CryptoStatus.SUCCESS] * 2, got.nic.reason_counts()
    assert got.packets() == [plain] * 2


# -- 3. DPDK's AH packets --------------------------------------------------------------------------
@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("vector", AH_VECTORS, ids=[v["name"] for v in AH_VECTORS])
def test_dpdk_ah_packet_received(vector, pure):
    """DPDK's AH packet verifies and strips to its plain packet; with its ICV flipped it is
    refused with the AH status of its layer (the tunnel vector's AH names IPv4 inside)."""
    config = _vector_config(vector)
    wire = bytes.fromhex(vector["ipsec_packet"])
    plain = bytes.fromhex(vector["plain_packet"])
    stack, _ = _receiver(config, pure)
    bad = bytearray(wire)
    bad[20 + 12 + config.ah_iv_len] ^= 0x80
    first = stack.receive([bytes(bad)])
    assert first.nic.crypto_status.tolist() == [
        CryptoStatus.TUNNEL_AH_AUTH_FAILED if vector["mode"] == "tunnel"
        else CryptoStatus.TRANSPORT_AH_AUTH_FAILED]
    assert first.nic.frame(0) == bytes(bad)
    got = stack.receive([wire])
    assert got.delivery.tolist() == [Delivery.DECAP], got.nic.reason_counts()
    assert got.packet(0) == plain


# -- 4. tampering, mutable fields, bad input ---------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["ttl", "dscp"])
def test_mutable_fields_changed_in_transit_still_verify(kind, what):
    config = _ah_config("hmac-sha1-96", "transport", _version(kind), False)
    plain = _plain(kind)
    (frame,) = _send(config, [plain])
    stack, _ = _receiver(config)
    got = stack.receive([_mutate(frame, what)])
    assert got.nic.crypto_status.tolist() == [CryptoStatus.SUCCESS]
    assert got.delivery.tolist() == [Delivery.DECAP]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_covered_byte_flipped_is_refused(kind, pure):
    """Each byte of the packet that AH covers (immutable IP fields, options that do not
    change, AH's own header, IV, ICV and the payload), flipped, fails with the AH status;
    SPI bytes make the SA unknown instead."""
    config = _ah_config("aes-gmac-128" if pure else "hmac-sha256-128", "transport",
                        _version(kind), False)
    plain = _plain(kind)
    (frame,) = _send(config, [plain], pure=pure)
    stack, _ = _receiver(config, pure)
    ah = _ah_at(frame)
    ipv6 = frame[0] >> 4 == 6
    mutable = {1, 6, 7, 8, 10, 11} if not ipv6 else {0, 1, 2, 3, 7}
    if kind == "v4opt":
        mutable |= set(range(24, 31))  # the Record Route option (zeroed for the ICV)
    if kind == "v6ext":
        mutable |= {44, 45, 46, 47}  # the change-en-route hop-by-hop option's data
    frames, expect = [], []
    for at in range(len(frame)):
        if at in mutable or (not ipv6 and at in (2, 3)) or (ipv6 and at in (4, 5)):
            continue  # lengths: a different frame, tested below
        if not ipv6 and at == 0:
            continue
        bad = bytearray(frame)
        bad[at] ^= 0x01
        frames.append(bytes(bad))
        if ah + 4 <= at < ah + 8:
            expect.append(None)  # another SPI: no SA
        elif at == ah + 1 or (not ipv6 and at == 9) or (ipv6 and at == 6) or \
                (ipv6 and kind == "v6ext" and at in (40, 41, 48, 49)):
            expect.append(None)  # AH length, or the protocol chain: not AH any more / syntax
        else:
            expect.append(CryptoStatus.TRANSPORT_AH_AUTH_FAILED)
    got = stack.receive(frames)
    for i, want in enumerate(expect):
        if want is None:
            assert got.delivery[i] != Delivery.DECAP
        else:
            assert got.nic.crypto_status[i] == want, (i, got.nic.plans[i])
    assert (got.delivery == Delivery.DECAP).sum() == 0


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_ah_lengths_and_truncation(pure):
    config = _ah_config("hmac-sha256-128", "transport", 4, False)
    (frame,) = _send(config, [_plain("v4")])
    stack, _ = _receiver(config, pure)
    ah = _ah_at(frame)
    longer, shorter = bytearray(frame), bytearray(frame)
    longer[ah + 1] += 1
    shorter[ah + 1] -= 1
    past_end = bytearray(frame)
    past_end[ah + 1] = 0xFF
    cases = [bytes(longer), bytes(shorter), bytes(past_end)]
    cases += [frame[:n] for n in (ah + 9, ah + 12, ah + 20, len(frame) - 1)]
    got = stack.receive(cases)
    assert got.nic.crypto_status.tolist() == [CryptoStatus.INVALID_PACKET_SYNTAX] * len(cases)
    assert got.nic.reasons.tolist() == [RxReason.BAD_SYNTAX] * len(cases)
    assert got.delivery.tolist() == [Delivery.CRYPTO] * len(cases)
    cut_at_spi = stack.receive([frame[:ah + 7]])  # the SPI is not readable: not this SA's
    assert cut_at_spi.nic.crypto_done.tolist() == [0]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_bundle_protocol_mismatches(pure):
    """A bundle SA receiving ESP alone, an AH whose next header is not ESP, an inner ESP
    with another SPI: CRYPTO_INVALID_PROTOCOL (docs/receive-path.md step 5), found before
    any crypto."""
    config = _bundle_config("cbc256-sha256+gmac128", "transport", 4, False)
    plain = _plain("v4")
    (frame,) = _send(config, [plain], pure=pure)
    stack, _ = _receiver(config, pure)
    ah = _ah_at(frame)
    ah_len = _ah_len(frame, ah)
    esp_alone = bytearray(frame[:ah] + frame[ah + ah_len:])
    esp_alone[9] = 50
    struct.pack_into("!H", esp_alone, 2, len(esp_alone))
    not_esp, other_spi = bytearray(frame), bytearray(frame)
    not_esp[ah] = 17
    other_spi[ah + ah_len + 3] ^= 0x01
    got = stack.receive([bytes(esp_alone), bytes(not_esp), bytes(other_spi)])
    assert got.nic.crypto_status.tolist() == [CryptoStatus.INVALID_PROTOCOL] * 3
    assert got.nic.reasons.tolist() == [RxReason.BAD_PROTOCOL] * 3


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_bundle_ah_failure_leaves_esp_unopened(mode, pure):
    config = _bundle_config("cbc256-sha256+gmac128", mode, 4, False)
    (frame,) = _send(config, [_plain("v4")], pure=pure)
    stack, _ = _receiver(config, pure)
    bad = bytearray(frame)
    bad[-1] ^= 0x01  # the ESP ICV: covered by AH, checked by AH first
    got = stack.receive([bytes(bad), frame])
    # before the SA has carried a tunnel packet its AH layer reads as transport (G12)
    assert got.nic.crypto_status.tolist() == [CryptoStatus.TRANSPORT_AH_AUTH_FAILED,
                                              CryptoStatus.SUCCESS]
    assert got.nic.frame(0) == bytes(bad)  # indicated as received, nothing decrypted
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP]
    later = stack.receive([bytes(bad)])
    assert later.nic.crypto_status.tolist() == [
        CryptoStatus.TUNNEL_AH_AUTH_FAILED if mode == "tunnel"
        else CryptoStatus.TRANSPORT_AH_AUTH_FAILED]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_bundle_esp_failure_after_ah_verified(pure):
    """AH verifies but the ESP ICV does not (the receiver holds another ESP integrity key):
    the ESP status, the text left as received."""
    config = _bundle_config("cbc256-sha256+gmac128", "transport", 4, False)
    (frame,) = _send(config, [_plain("v4")], pure=pure)
    wrong = SaConfig(**{**config.__dict__, "auth_key": bytes(len(config.auth_key))})
    stack, _ = _receiver(wrong, pure)
    got = stack.receive([frame])
    assert got.nic.crypto_status.tolist() == [CryptoStatus.TRANSPORT_ESP_AUTH_FAILED]
    assert got.nic.frame(0) == frame


def test_ah_offload_off_gives_no_ipsec_info():
    config = _ah_config("hmac-sha1-96", "transport", 4, False)
    (frame,) = _send(config, [_plain("v4")])
    stack, _ = _receiver(config)
    stack.miniport.offload.ah_ipv4 = False
    got = stack.receive([frame])
    assert got.nic.crypto_done.tolist() == [0]
    assert got.nic.reasons.tolist() == [RxReason.OFFLOAD_OFF]


def test_sa_delete_request_counts_ah_failures():
    config = _ah_config("hmac-md5-96", "transport", 4, False)
    (frame,) = _send(config, [_plain("v4")])
    stack, inbound = _receiver(config, sa_delete_after=2)
    bad = bytearray(frame)
    bad[-1] ^= 1
    got = stack.receive([bytes(bad), bytes(bad)])
    assert got.nic.sa_delete_req.tolist() == [0, 1]
    assert got.deleted == [inbound]


# -- 5. twin == compiled --------------------------------------------------------------------------
_AH_PAIR = None


def ah_pair() -> Pair:
    global _AH_PAIR
    if _AH_PAIR is None:
        configs = []
        for k, integrity in enumerate(AH_ALGORITHMS):
            configs += [
                SaConfig(spi=0x7000 + 8 * k, protocol="ah", integrity=integrity,
                         auth_key=_key(AH_ALGORITHMS[integrity][1], k), name=f"{integrity}/t"),
                SaConfig(spi=0x7001 + 8 * k, protocol="ah", integrity=integrity,
                         auth_key=_key(AH_ALGORITHMS[integrity][1], k), mode="tunnel",
                         tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2", name=f"{integrity}/4"),
                SaConfig(spi=0x7002 + 8 * k, protocol="ah", integrity=integrity,
                         auth_key=_key(AH_ALGORITHMS[integrity][1], k), esn=True,
                         seq=2**32 - 2, name=f"{integrity}/esn"),
            ]
        for k, name in enumerate(BUNDLES):
            config = _bundle_config(name, "transport", 4, False)
            configs.append(SaConfig(**{**config.__dict__, "spi": 0x7100 + k,
                                       "ah_spi": 0x7200 + k, "name": f"bundle/{name}"}))
        _AH_PAIR = Pair(configs, replay_window=32)
        _AH_PAIR.base = _AH_PAIR.traffic(3)
        _AH_PAIR.start = (_AH_PAIR.rx._rx_windows.copy(),
                          _AH_PAIR.rx.miniport.sas.rx_state.copy())
    _AH_PAIR.rx._rx_windows[:] = _AH_PAIR.start[0]
    _AH_PAIR.rx.miniport.sas.rx_state[:] = _AH_PAIR.start[1]
    return _AH_PAIR


def test_twin_and_compiled_agree_on_valid_ah_traffic():
    pair = ah_pair()
    out, plans, ops, counters, delivered = run_both(pair, pair.batch(pair.base), ALL_RX_AH)
    assert counters[RxReason.OK] == len(pair.base)
    assert (delivered[1] == Delivery.DECAP).all()


@st.composite
def mutated_ah_frame(draw):
    frame = bytearray(draw(st.sampled_from(ah_pair().base)))
    kind = draw(st.sampled_from(["keep", "truncate", "flip", "ahlen", "nh", "bytes"]))
    v6 = frame[14] >> 4 == 6
    ah = 14 + (40 if v6 else 20)
    if kind == "truncate":
        frame = frame[:draw(st.integers(0, len(frame)))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            bit = draw(st.integers(0, 8 * len(frame) - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
    elif kind == "ahlen":
        frame[ah + 1] = draw(st.integers(0, 255))
    elif kind == "nh":
        frame[ah] = draw(st.sampled_from([4, 41, 50, 51, 59, 6, 17]))
    elif kind == "bytes":
        at = draw(st.integers(0, len(frame) - 1))
        value = draw(st.binary(min_size=1, max_size=16))
        frame[at:at + len(value)] = value
    return bytes(frame)


@FUZZ
@given(st.lists(mutated_ah_frame(), min_size=1, max_size=10), st.integers(0, 3),
       st.sampled_from([ALL_RX_AH, int(Config.AH_IPV4 | Config.AH_IPV6),
                        int(Config.ESP_IPV4 | Config.AH_IPV4)]))
def test_fuzz_mutated_ah_frames(frames, replays, config):
    pair = ah_pair()
    run_both(pair, pair.batch(frames + frames[:replays]), config)


def test_backends_agree_with_the_reference_on_ah_verify():
    """The batched GMAC and CBC-HMAC backends' AH verify ops give the reference backend's
    verdict on valid and forged frames."""
    from ipsecoffload.crypto.reference import ReferenceBackend
    pair = ah_pair()
    frames = list(pair.base)
    for i in range(0, len(frames), 3):
        bad = bytearray(frames[i])
        bad[-2] ^= 0x10
        frames[i] = bytes(bad)
    batch = pair.batch(frames)
    snap = pair.rx.miniport.sas.snapshot()
    reference = {suite: ReferenceBackend() for suite in BACKENDS}
    results = []
    for backends in (BACKENDS, reference):
        state = pair.rx.miniport.sas.rx_state.copy()
        out, plans, ops, counters = _fastpath.rx_run(batch, snap, state, ALL_RX_AH, backends,
                                                     threading.Lock())
        results.append((out.tobytes(), plans.tobytes(), ops.tobytes(), counters.tolist()))
    assert results[0] == results[1]
    assert results[0][3][RxReason.AUTH_FAILED] > 0


# -- 6. decrypt and the SA file forms ---------------------------------------------------------------
def test_decrypt_cli_opens_ah_and_bundle_captures(tmp_path, capsys):
    sas = [
        {"name": "ah4", "protocol": "ah", "selector": {"src": "10.1.0.0/16"}, "spi": "0x100",
         "integrity": "hmac-sha256-128", "auth_key": "11" * 32, "mode": "transport"},
        {"name": "ahtun", "protocol": "ah", "selector": {"src": "10.2.0.0/16"}, "spi": 257,
         "integrity": "aes-gmac-128", "auth_key": "22" * 20, "mode": "tunnel",
         "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "esn": True, "seq": 2**32 - 2},
        {"name": "both", "protocol": "ah+esp", "selector": {"src": "10.3.0.0/16"},
         "spi": "0x102", "encryption": "aes-gcm-128", "key": "33" * 20,
         "ah": {"spi": "0x103", "integrity": "hmac-sha1-96", "auth_key": "44" * 20}},
    ]
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps(sas))
    plain = []
    for i in range(6):
        for net in (1, 2, 3, 9):
            plain.append(bytes(IP(src=f"10.{net}.0.1", dst="10.8.0.1", id=i) / UDP(dport=53)
                               / bytes(i + 3)))
    write_pcap(tmp_path / "plain.pcap", LINKTYPE_RAW, plain, [10**9 * i for i in range(len(plain))])
    assert main(["encrypt", "-i", str(tmp_path / "plain.pcap"), "-o", str(tmp_path / "ah.pcap"),
                 "--sa", str(sa)]) == 0
    capsys.readouterr()
    code = main(["decrypt", "-i", str(tmp_path / "ah.pcap"), "-o", str(tmp_path / "dec.pcap"),
                 "--sa", str(sa), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["packets_in"] == summary["packets_out"] == len(plain)
    assert summary["no_sa"] == 0 and summary["clear"] == 6
    for name in ("ah4", "ahtun", "both"):
        assert summary["sas"][name] == {"packets": 6, "crypto_status": {"SUCCESS": 6},
                                        "replayed": 0}
    _, records = read_pcap(tmp_path / "dec.pcap")
    assert [r.data for r in records] == plain


def test_api_decrypt_ah():
    import ipsecoffload
    config = _ah_config("hmac-sha1-96", "transport", 4, False)
    plain = _plain("v4")
    frames = _send(config, [plain, plain])
    got = ipsecoffload.decrypt(frames, config)
    assert list(got) == [plain, plain]
    assert [str(s) for s in got.status] == ["SUCCESS", "SUCCESS"]


def test_batch_of_mixed_protocols_keeps_order():
    """ESP, AH and bundle frames interleaved with clear ones, one batch: each delivered in
    place."""
    ah = _ah_config("hmac-sha1-96", "transport", 4, False)
    bundle = _bundle_config("cbc256-sha256+gmac128", "transport", 4, False)
    esp = SaConfig(spi=0x9999, encryption="aes-gcm-128", key=_key(20, 8))
    plain = _plain("v4")
    tx = HostStack(Miniport(), link="raw")
    sas = [tx.add_sa(c) for c in (ah, bundle, esp)]
    frames, expect = [], []
    for k in range(9):
        if k % 4 == 3:
            frames.append(plain)
        else:
            frames += tx.send([plain], sas[k % 4]).wire.frames()
        expect.append(plain)
    rx = HostStack(Miniport(), link="raw")
    for c in (ah, bundle, esp):
        rx.add_inbound_sa(c)
    got = rx.receive(PacketBatch.from_frames(frames, l2_len=0))
    assert got.packets() == expect
    assert twin is not None and udp_packet is not None  # the shared harness is importable
