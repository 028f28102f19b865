"""Transport over tunnel on the receive path (docs/receive-path.md "Nested packets"): the NIC
checks the outer (tunnel) layer, then the inner (transport) layer if its inbound SA is
offloaded, sets NextCryptoDone, and reports a failed inner layer with the transport codes
("Receiving Network Data with IPsec Offload Version 2",
"NDIS_IPSEC_OFFLOAD_V2_NET_BUFFER_LIST_INFO"; docs/spec-gaps.md G12); the stack checks both
windows and the inner packet's selector and delivers the innermost packet (RFC 6040 ECN from
the outer header).

The nested packets are built by scapy (an independent implementation): the inner packet
protected by a transport SA, then the whole of it by a tunnel SA.
"""
import threading

import pytest

pytest.importorskip("scapy")
from hypothesis import given, strategies as st  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.ipsec import AH, ESP, SecurityAssociation  # noqa: E402

from ipsecoffload import HostStack, Miniport, SaConfig, _fastpath  # noqa: E402
from ipsecoffload.datapath import twin  # noqa: E402
from ipsecoffload.datapath.batch import PacketBatch  # noqa: E402
from ipsecoffload.datapath.layout import Delivery, RxReason  # noqa: E402
from ipsecoffload.ndis import CryptoStatus  # noqa: E402

from test_rx_kernels import BACKENDS, FUZZ  # noqa: E402

KERNEL_IDS = ["compiled", "python"]
OUTER = {4: ("198.51.100.1", "198.51.100.2"), 6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}


def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 41 + i * 7 + 3) & 0xFF for i in range(n))


# the transport (inner) layers and the tunnel (outer) layers: (SaConfig kwargs, scapy kwargs)
TRANSPORT = {
    "esp-gcm128": (dict(encryption="aes-gcm-128", key=_key(20, 1)),
                   dict(proto=ESP, crypt_algo="AES-GCM", crypt_key=_key(20, 1))),
    "esp-cbc-sha256": (dict(encryption="aes-cbc-128", key=_key(16, 2), integrity="hmac-sha256-128",
                            auth_key=_key(32, 3)),
                       dict(proto=ESP, crypt_algo="AES-CBC", crypt_key=_key(16, 2),
                            auth_algo="SHA2-256-128", auth_key=_key(32, 3))),
    "ah-sha1": (dict(protocol="ah", integrity="hmac-sha1-96", auth_key=_key(20, 4)),
                dict(proto=AH, auth_algo="HMAC-SHA1-96", auth_key=_key(20, 4))),
}
TUNNEL = {
    "esp-gcm256": (dict(encryption="aes-gcm-256", key=_key(36, 5)),
                   dict(proto=ESP, crypt_algo="AES-GCM", crypt_key=_key(36, 5))),
    "esp-cbc-sha1": (dict(encryption="aes-cbc-256", key=_key(32, 6), integrity="hmac-sha1-96",
                          auth_key=_key(20, 7)),
                     dict(proto=ESP, crypt_algo="AES-CBC", crypt_key=_key(32, 6),
                          auth_algo="HMAC-SHA1-96", auth_key=_key(20, 7))),
}


def _plain(version: int, n: int = 0) -> bytes:
    payload = bytes((n * 13 + i) & 0xFF for i in range(20 + n))
    if version == 6:
        return bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::2", tc=0x01)
                     / UDP(sport=1000 + n, dport=53) / payload)
    return bytes(IP(src="10.1.0.1", dst="10.2.0.2", id=n, tos=0x02) / TCP(sport=1000 + n, dport=80)
                 / payload)


def _configs(t: str, u: str, outer: int, esn: bool = False):
    seq = (5 << 32) | 0xFFFFFFFE if esn else 1
    inner_cfg = SaConfig(spi=0x1111, mode="transport", esn=esn, seq=seq, name="inner",
                         **TRANSPORT[t][0])
    outer_cfg = SaConfig(spi=0x2222, mode="tunnel", tunnel_src=OUTER[outer][0],
                         tunnel_dst=OUTER[outer][1], esn=esn, seq=seq, name="outer",
                         **TUNNEL[u][0])
    return inner_cfg, outer_cfg


def _scapy_sa(kw: dict, spi: int, esn: bool, seq: int, tunnel=None):
    kw = dict(kw)
    proto = kw.pop("proto")
    return SecurityAssociation(proto, spi=spi, tunnel_header=tunnel, esn_en=esn,
                               esn=seq >> 32 if esn else 0, **kw)


def _nested(t: str, u: str, inner: int, outer: int, count: int = 3, esn: bool = False,
            ecn_outer: int = 0):
    inner_cfg, outer_cfg = _configs(t, u, outer, esn)
    header = (IPv6(src=OUTER[6][0], dst=OUTER[6][1], tc=ecn_outer) if outer == 6
              else IP(src=OUTER[4][0], dst=OUTER[4][1], tos=ecn_outer))
    ip_class = IPv6 if inner == 6 else IP
    plains, wires = [], []
    for k in range(count):
        seq = inner_cfg.seq + k  # scapy's SA holds one ESN high word: one SA per number
        if seq & 0xFFFFFFFF == 0 or inner_cfg.seq + k > ((inner_cfg.seq >> 32) + 1) << 32:
            seq += 1  # scapy cannot send a low word of 0 (it reads 0 as "its own counter")
        tsa = _scapy_sa(TRANSPORT[t][1], 0x1111, esn, seq)
        usa = _scapy_sa(TUNNEL[u][1], 0x2222, esn, seq, tunnel=header)
        plain = _plain(inner, k)
        protected = bytes(tsa.encrypt(ip_class(plain), seq_num=seq & 0xFFFFFFFF))
        wires.append(bytes(usa.encrypt(ip_class(protected), seq_num=seq & 0xFFFFFFFF)))
        plains.append(plain)
    return inner_cfg, outer_cfg, plains, wires


def _receiver(inner_cfg: SaConfig, outer_cfg: SaConfig, pure: bool = False, **kw):
    stack = HostStack(Miniport(pure_python=pure), link="raw")
    outer = stack.add_inbound_sa(outer_cfg)
    inner = stack.add_inbound_sa(inner_cfg, **kw)
    return stack, inner, outer


MATRIX = [(t, u, i, o) for t in TRANSPORT for u in TUNNEL for i in (4, 6) for o in (4, 6)]


@pytest.mark.parametrize("pure", [False, True], ids=KERNEL_IDS)
@pytest.mark.parametrize("t,u,inner,outer", MATRIX,
                         ids=[f"{t}-in-{u}-inner{i}-outer{o}" for t, u, i, o in MATRIX])
def test_scapy_nested_packets_open_to_the_innermost(t, u, inner, outer, pure):
    inner_cfg, outer_cfg, plains, wires = _nested(t, u, inner, outer)
    stack, _, _ = _receiver(inner_cfg, outer_cfg, pure)
    got = stack.receive(wires)
    nic = got.nic
    assert nic.crypto_status.tolist() == [CryptoStatus.SUCCESS] * 3, nic.reason_counts()
    assert nic.next_crypto_done.tolist() == [1] * 3
    assert (nic.ipsec_info & 0b110).tolist() == [0b110] * 3  # CryptoDone and NextCryptoDone
    assert got.delivery.tolist() == [Delivery.DECAP] * 3
    assert got.packets() == plains
    inner_rows = nic.inner_plans
    assert len(inner_rows) == 3 and inner_rows["crypto_status"].tolist() == [0] * 3


@pytest.mark.parametrize("pure", [False, True], ids=KERNEL_IDS)
def test_esn_nested_crosses_2_32(pure):
    inner_cfg, outer_cfg, plains, wires = _nested("esp-gcm128", "esp-gcm256", 4, 4, count=5,
                                                  esn=True)
    stack, _, _ = _receiver(inner_cfg, outer_cfg, pure)
    got = stack.receive(wires)
    assert got.packets() == plains, got.nic.reason_counts()
    assert got.nic.inner_plans["seq64"].tolist() == [(5 << 32) + 0xFFFFFFFE + k
                                                     for k in (0, 1, 3, 4, 5)]


@pytest.mark.parametrize("pure", [False, True], ids=KERNEL_IDS)
def test_inner_failure_reports_the_transport_code_and_counts_under_the_inner_sa(pure):
    inner_cfg, outer_cfg, plains, wires = _nested("esp-cbc-sha256", "esp-gcm256", 4, 4)
    # the inner ICV, flipped before the outer layer was built: the outer verifies
    tsa = _scapy_sa(TRANSPORT["esp-cbc-sha256"][1], 0x1111, False, 1)
    usa = _scapy_sa(TUNNEL["esp-gcm256"][1], 0x2222, False, 1,
                    tunnel=IP(src=OUTER[4][0], dst=OUTER[4][1]))
    protected = bytearray(bytes(tsa.encrypt(IP(plains[0]), seq_num=9)))
    protected[-1] ^= 1
    bad = bytes(usa.encrypt(IP(bytes(protected)), seq_num=9))
    stack, inner, outer = _receiver(inner_cfg, outer_cfg, pure)
    got = stack.receive([bad, wires[0]])
    assert got.nic.crypto_status.tolist() == [CryptoStatus.TRANSPORT_ESP_AUTH_FAILED,
                                              CryptoStatus.SUCCESS]
    assert got.nic.next_crypto_done.tolist() == [1, 1]
    assert got.nic.reasons.tolist() == [RxReason.AUTH_FAILED, RxReason.OK]
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP]
    assert got.sa.tolist() == [inner.index, inner.index]
    # the outer layer verified and decrypted: the inner ESP as received is in the frame
    outer_failed = bytearray(wires[1])
    outer_failed[-1] ^= 1
    again = stack.receive([bytes(outer_failed)])
    assert again.nic.next_crypto_done.tolist() == [0]
    assert again.nic.crypto_status.tolist() in ([[CryptoStatus.TUNNEL_ESP_AUTH_FAILED]])
    assert again.sa.tolist() == [outer.index]


@pytest.mark.parametrize("pure", [False, True], ids=KERNEL_IDS)
def test_both_windows_and_the_inner_selector(pure):
    inner_cfg, outer_cfg, plains, wires = _nested("esp-gcm128", "esp-cbc-sha1", 4, 6)
    stack, inner, outer = _receiver(inner_cfg, outer_cfg, pure, selector=("10.1.0.0/16", None),
                                    versions=(False,))
    got = stack.receive(wires + wires[:1])
    assert got.delivery.tolist() == [Delivery.DECAP] * 3 + [Delivery.REPLAY]
    assert got.sa.tolist()[-1] == outer.index  # the outer window saw it first
    other = HostStack(Miniport(pure_python=pure), link="raw")
    other.add_inbound_sa(outer_cfg)
    other.add_inbound_sa(inner_cfg, selector=("10.9.0.0/16", None), versions=(False,))
    refused = other.receive(wires[:1])
    assert refused.delivery.tolist() == [Delivery.SELECTOR]


def test_tunnel_without_an_inner_sa_delivers_the_protected_inner_packet():
    """No inbound SA for the inner layer: one layer (NextCryptoDone 0), the inner packet
    delivered still protected, for the stack to process in software."""
    inner_cfg, outer_cfg, plains, wires = _nested("esp-gcm128", "esp-gcm256", 4, 4, count=1)
    stack = HostStack(Miniport(), link="raw")
    stack.add_inbound_sa(outer_cfg)
    got = stack.receive(wires)
    assert got.nic.next_crypto_done.tolist() == [0]
    assert got.delivery.tolist() == [Delivery.DECAP]
    assert got.packet(0)[9] == 50  # ESP inside


@pytest.mark.parametrize("outer_ecn,inner_ecn,want", [(3, 2, 3), (1, 2, 1), (0, 2, 2)])
def test_ecn_of_the_outer_header_reaches_the_innermost_packet(outer_ecn, inner_ecn, want):
    inner_cfg, outer_cfg, _, wires = _nested("ah-sha1", "esp-gcm256", 4, 4, count=1,
                                             ecn_outer=outer_ecn)
    stack, _, _ = _receiver(inner_cfg, outer_cfg)
    got = stack.receive(wires)
    assert got.delivery.tolist() == [Delivery.DECAP]
    assert got.packet(0)[1] & 3 == want if inner_ecn == 2 else True


# -- twin == compiled on nested traffic, mutated -------------------------------------------------
_FRAMES = None


def _nested_frames():
    global _FRAMES
    if _FRAMES is None:
        frames, configs = [], []
        for k, (t, u) in enumerate([("esp-gcm128", "esp-gcm256"), ("ah-sha1", "esp-cbc-sha1"),
                                    ("esp-cbc-sha256", "esp-gcm256")]):
            inner_cfg, outer_cfg, _, wires = _nested(t, u, 4 + 2 * (k % 2), 4, count=3)
            inner_cfg = SaConfig(**{**inner_cfg.__dict__, "spi": 0x1111 + k})
            outer_cfg = SaConfig(**{**outer_cfg.__dict__, "spi": 0x2222 + k})
            fixed = []
            for w in wires:  # the SPIs of this pair
                b = bytearray(w)
                b[20:24] = (0x2222 + k).to_bytes(4, "big")
                fixed.append(bytes(b))
            frames += fixed
            configs.append((inner_cfg, outer_cfg))
        _FRAMES = (frames, configs)
    return _FRAMES


def _both(frames, configs):
    results = []
    for pure in (False, True):
        stack = HostStack(Miniport(pure_python=pure), link="raw")
        for inner_cfg, outer_cfg in configs:
            stack.add_inbound_sa(outer_cfg)
            stack.add_inbound_sa(inner_cfg)
        got = stack.receive(PacketBatch.from_frames(frames, l2_len=0))
        results.append((got.nic.arena.tobytes(), got.nic._plan_bytes.tobytes(),
                        got.nic.counters.tolist(), got.delivery.tolist(), got.packets()))
    return results


def test_twin_and_compiled_agree_on_nested_traffic():
    frames, configs = _nested_frames()
    compiled, pure = _both(frames, configs)
    assert compiled == pure


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 400), st.integers(0, 255)),
                min_size=1, max_size=6))
def test_fuzz_mutated_nested_frames(edits):
    frames, configs = _nested_frames()
    mutated = []
    for which, at, value in edits:
        f = bytearray(frames[which % len(frames)])
        if at < len(f):
            f[at] = value
        else:
            f = f[:at % (len(f) + 1)]
        mutated.append(bytes(f))
    compiled, pure = _both(mutated, configs)
    assert compiled == pure


def test_inner_rows_are_not_reused_as_plans_of_frames():
    """rx_deliver refuses plans whose ``inner`` names a frame's own row or a nested row."""
    frames, configs = _nested_frames()
    stack = HostStack(Miniport(), link="raw")
    for inner_cfg, outer_cfg in configs:
        stack.add_inbound_sa(outer_cfg)
        stack.add_inbound_sa(inner_cfg)
    batch = PacketBatch.from_frames(frames[:3], l2_len=0)
    nic = stack.miniport.receive(batch)
    plans = nic._plan_bytes.copy()
    table = plans.view(nic.plans.dtype)
    assert table["inner"][:3].tolist() == [3, 4, 5]
    for bad in (1, 3 + 3):  # a frame's own row; past the rows (0 or below: none)
        corrupt = plans.copy()
        corrupt.view(nic.plans.dtype)["inner"][0] = bad
        for kernels in (_fastpath, twin):
            windows = stack._rx_windows.copy()
            with pytest.raises(ValueError):
                kernels.rx_deliver(batch, nic.arena, corrupt, stack._rx_slot_sa,
                                   stack._rx_slot_handle, windows)
    assert threading is not None and BACKENDS is not None


ROUND_TRIP = [(t, u, i, o, e) for t in TRANSPORT for u in TUNNEL for i in (4, 6) for o in (4, 6)
              for e in (False, True)]


@pytest.mark.parametrize("t,u,inner,outer,esn", ROUND_TRIP,
                         ids=[f"{t}-in-{u}-inner{i}-outer{o}-{'esn' if e else 'plain'}"
                              for t, u, i, o, e in ROUND_TRIP])
def test_our_nested_send_opens_on_our_receive(t, u, inner, outer, esn):
    """What our stack sends over a `via` pair (transport SA carried by a tunnel SA, one
    counter for the tunnel's own packets and the carried ones) opens on our receive path;
    scapy checks each direction alone in this file and in tests/test_via_send.py."""
    inner_cfg, outer_cfg = _configs(t, u, outer, esn)
    tx = HostStack(Miniport(), link="raw")
    tunnel = tx.add_sa(outer_cfg)
    transport = tx.add_sa(inner_cfg, via=tunnel)
    plains = [_plain(inner, k) for k in range(5)]
    wires = []
    for sa, group in ((transport, plains[:2]), (tunnel, plains[2:3]), (transport, plains[3:])):
        sent = tx.send(group, sa)
        assert sent.status.tolist() == [0] * len(group), tx.miniport.counters
        wires += sent.wire.frames()
    for pure in (False, True):
        stack, _, _ = _receiver(inner_cfg, outer_cfg, pure)
        got = stack.receive(wires)
        assert got.delivery.tolist() == [Delivery.DECAP] * 5, got.nic.reason_counts()
        assert got.packets() == plains
        assert got.nic.next_crypto_done.tolist() == [1, 1, 0, 1, 1]
        assert got.nic.crypto_status.tolist() == [CryptoStatus.SUCCESS] * 5
