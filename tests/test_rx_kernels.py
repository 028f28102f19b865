"""The compiled receive stages (rx_run: rx_classify, the open ops, rx_complete; the host
stack's rx_deliver) against their pure-Python twin (ipsecoffload.datapath.twin.rx_*).

Both run on the same batches with the same backend (the reference one) and must give the
same bytes: the NIC's output arena, the plans, the op table (every byte of every op), the
reason counters, the NIC's receive state (ESN inference), and from rx_deliver the delivered
bytes, Delivery codes, SA indices, places and the anti-replay windows, bit for bit. The
traffic comes from our own send path (HostStack.send) for every suite, IPv4 / IPv6,
transport / tunnel, UDP-ESP and ESN across 2^32; hypothesis mutates it (truncation, bit
flips, SPI / SN / length / trailer damage, random bytes, IPv6 extension-header chains, IPv4
options, UDP 4500 keepalives and IKE markers, fragments). The anti-replay windows are also
held against a plain model of RFC 4303 §3.4.3 (a set of the numbers accepted).

Runs on the normal and on the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ipsecoffload import Miniport, PacketBatchBuilder, SaConfig, _fastpath
from ipsecoffload.crypto import backends_for
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath import twin
from ipsecoffload.datapath.batch import PacketBatch
from ipsecoffload.datapath.layout import (CRYPTO_OP_DTYPE, HANDLE_SLOT_MASK, RX_PLAN_DTYPE,
                                          RX_WINDOW_DTYPE, RX_WINDOW_MAX, Config, Delivery,
                                          OpStatus, RxConfig, RxReason)
from ipsecoffload.host.stack import HostStack
from ipsecoffload.inet import ones_complement_sum

BACKENDS = backends_for(twin, ReferenceBackend())  # the same backend under both kernels
ALL_RX = int(Config.ESP_IPV4 | Config.ESP_IPV6 | RxConfig.IPV4_OPTIONS
             | RxConfig.IPV6_EXT_HEADERS)
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fixed_random(n: int) -> bytes:
    return bytes((i * 151 + 7) & 0xFF for i in range(n))


# -- SAs and traffic ------------------------------------------------------------------------

def suite_params() -> list[tuple[str, dict]]:
    out = []
    for bits in (128, 192, 256):
        for icv in (8, 12, 16):
            out.append((f"gcm{bits}-icv{icv}", dict(encryption=f"aes-gcm-{bits}",
                                                    key=bytes(range(bits // 8 + 4)),
                                                    icv_len=icv)))
        out.append((f"gmac{bits}", dict(encryption="null", integrity=f"aes-gmac-{bits}",
                                         auth_key=bytes(range(3, 3 + bits // 8 + 4)))))
    macs = {"hmac-md5-96": 16, "hmac-sha1-96": 20, "hmac-sha256-128": 32}
    for bits in (128, 192, 256):
        for mac, size in macs.items():
            out.append((f"cbc{bits}-{mac}", dict(encryption=f"aes-cbc-{bits}",
                                                 key=bytes(range(9, 9 + bits // 8)),
                                                 integrity=mac, auth_key=bytes(range(size)))))
    for mac, size in macs.items():
        out.append((f"null-{mac}", dict(encryption="null", integrity=mac,
                                         auth_key=bytes(range(5, 5 + size)))))
    return out


SUITES = suite_params()


def udp_packet(ipv6: bool, n: int, src=None, dst=None, tos: int = 0) -> bytes:
    payload = bytes((n * 31 + i) & 0xFF for i in range(n % 97 + 1))
    udp = struct.pack("!HHHH", 1000 + n, 53, 8 + len(payload), 0) + payload
    if ipv6:
        src = src or bytes.fromhex("20010db8000000000000000000000001")
        dst = dst or bytes.fromhex("20010db8000000000000000000000002")
        return struct.pack("!IHBB", (6 << 28) | (tos << 20), len(udp), 17, 64) + src + dst + udp
    src, dst = src or bytes([10, 0, 0, 1]), dst or bytes([10, 0, 0, 2])
    head = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(udp), n, 0, 64, 17, 0, src, dst)
    csum = ~ones_complement_sum(head) & 0xFFFF
    return head[:10] + struct.pack("!H", csum) + head[12:] + udp


def variants(suite: dict, spi0: int) -> list[SaConfig]:
    """One SA per shape: transport v4 and v6, tunnel v4 and v6, UDP-ESP transport and
    tunnel, ESN whose numbers cross 2^32."""
    return [
        SaConfig(spi=spi0, **suite, name="transport"),
        SaConfig(spi=spi0 + 1, **suite, mode="tunnel", tunnel_src="192.0.2.1",
                 tunnel_dst="192.0.2.2", name="tunnel4"),
        SaConfig(spi=spi0 + 2, **suite, mode="tunnel", tunnel_src="2001:db8::a",
                 tunnel_dst="2001:db8::b", name="tunnel6"),
        SaConfig(spi=spi0 + 3, **suite, udp_encap=(4500, 4500), name="udp"),
        SaConfig(spi=spi0 + 4, **suite, mode="tunnel", tunnel_src="198.51.100.1",
                 tunnel_dst="198.51.100.2", udp_encap=(4500, 4500), name="udp-tunnel"),
        SaConfig(spi=spi0 + 6, **suite, src="10.0.0.1", dst="10.0.0.2", name="endpoints4"),
        # the same SPI again, told apart by the endpoints (rx_lookup)
        SaConfig(spi=spi0 + 6, **suite, src="2001:db8::1", dst="2001:db8::2",
                 name="endpoints6"),
        SaConfig(spi=spi0 + 5, **suite, esn=True, seq=2**32 - 3, name="esn"),
    ]


def inner_versions(config: SaConfig) -> tuple[bool, ...]:
    """The inner IP versions sent under an SA: one for ESN (the receiver's bundles of one SA
    infer their high words apart) and for SAs with endpoints, else both."""
    if config.esn or config.src:
        return (":" in (config.src or ""),)
    return (False, True)


class Pair:
    """A sending stack and a receiving stack that share SAs (inbound on the receiver)."""

    def __init__(self, configs, *, replay_window: int = 64, link: str = "ethernet",
                 selector=None):
        self.tx = HostStack(Miniport(random_source=fixed_random), link=link)
        self.rx = HostStack(Miniport(), link=link)
        self.out = {c.name: self.tx.add_sa(c) for c in configs}
        self.inb = {c.name: self.rx.add_inbound_sa(c, replay_window=replay_window,
                                                   selector=selector) for c in configs}

    def send(self, name: str, packets) -> list[bytes]:
        return self.tx.send(packets, self.out[name]).wire.frames()

    def traffic(self, count: int = 4) -> list[bytes]:
        """``count`` packets of each inner IP version per SA, the ESN SA's last."""
        frames = []
        for name, sa in self.out.items():
            for ipv6 in inner_versions(sa.config):
                frames += self.send(name, [udp_packet(ipv6, k, tos=k & 3)
                                           for k in range(count)])
        return frames

    def batch(self, frames) -> PacketBatch:
        return PacketBatch.from_frames(list(frames), l2_len=self.rx.l2_length)


def run_both(pair: Pair, batch: PacketBatch, config: int = ALL_RX, deliver: bool = True):
    """rx_run and rx_deliver on both kernels from the same state; asserts every output and
    every state equal, commits the state to the receiving stack and returns the compiled
    results (out, plans, ops, counters, deliveries...)."""
    mp, stack = pair.rx.miniport, pair.rx
    snap = mp.sas.snapshot()
    got = []
    for kernels in (_fastpath, twin):
        state = mp.sas.rx_state.copy()
        out, plans, ops, counters = kernels.rx_run(batch, snap, state, config, BACKENDS,
                                                   threading.Lock())
        windows = stack._rx_windows.copy()
        delivered = kernels.rx_deliver(batch, out, plans, stack._rx_slot_sa,
                                       stack._rx_slot_handle, windows) if deliver else None
        got.append((out, plans, ops, counters, state, delivered, windows))
    (c_out, c_plans, c_ops, c_counters, c_state, c_del, c_win), \
        (p_out, p_plans, p_ops, p_counters, p_state, p_del, p_win) = got
    assert c_plans.tobytes() == p_plans.tobytes(), plan_diff(c_plans, p_plans)
    assert c_ops.tobytes() == p_ops.tobytes(), op_diff(c_ops, p_ops)
    assert c_out.tobytes() == p_out.tobytes()
    assert c_counters.tolist() == p_counters.tolist()
    assert c_state.tobytes() == p_state.tobytes()
    assert int(c_counters.sum()) == len(batch.nb_off)
    if deliver:
        for name, a, b in zip(("delivered", "deliveries", "sa", "off", "len"), c_del, p_del):
            assert a.dtype == b.dtype, name
            assert a.tobytes() == b.tobytes(), name
        assert c_win.tobytes() == p_win.tobytes()
        stack._rx_windows[:] = c_win
    mp.sas.rx_state[:] = c_state
    return c_out, c_plans.view(RX_PLAN_DTYPE), c_ops.view(CRYPTO_OP_DTYPE), c_counters, c_del


def plan_diff(a, b) -> str:
    a, b = a.view(RX_PLAN_DTYPE), b.view(RX_PLAN_DTYPE)
    for i in range(min(len(a), len(b))):
        if a[i].tobytes() != b[i].tobytes():
            return f"plan {i}: " + ", ".join(f"{n}={a[i][n]!r}/{b[i][n]!r}"
                                             for n in a.dtype.names if a[i][n] != b[i][n]
                                             if n != "reserved")
    return f"{len(a)} / {len(b)} plans"


def op_diff(a, b) -> str:
    a, b = a.view(CRYPTO_OP_DTYPE), b.view(CRYPTO_OP_DTYPE)
    for i in range(min(len(a), len(b))):
        if a[i].tobytes() != b[i].tobytes():
            return f"op {i}: " + ", ".join(f"{n}" for n in a.dtype.names
                                           if np.any(a[i][n] != b[i][n]))
    return f"{len(a)} / {len(b)} ops"


# -- (a) valid traffic ----------------------------------------------------------------------

@pytest.mark.parametrize("suite", [s for _, s in SUITES], ids=[n for n, _ in SUITES])
def test_valid_traffic_every_suite(suite):
    pair = Pair(variants(suite, 0x1000))
    frames = pair.traffic(4)
    out, plans, ops, counters, (data, deliveries, sa, off, length) = run_both(
        pair, pair.batch(frames))
    assert plans["reason"].tolist() == [RxReason.OK] * len(frames)
    assert deliveries.tolist() == [Delivery.DECAP] * len(frames)
    assert (ops["status"] == OpStatus.DONE).all()
    # the ESN SA's numbers crossed 2^32 inside the batch and verified with the new high word
    assert plans["seq64"][-4:].tolist() == [2**32 - 3, 2**32 - 2, 2**32 - 1, 2**32]


def test_pure_python_miniport_and_stack_receive():
    """Miniport(pure_python=True) and a HostStack on it receive like the compiled ones (the
    compiled path with its own batched backends)."""
    name, suite = SUITES[0]
    configs = variants(suite, 0x2000)
    results = []
    for pure in (False, True):
        tx = HostStack(Miniport(random_source=fixed_random))
        rx = HostStack(Miniport(pure_python=pure))
        frames = []
        for c in configs:
            rx.add_inbound_sa(c)
            sa = tx.add_sa(c)
            v6 = inner_versions(c)[-1]
            frames += tx.send([udp_packet(v6, k) for k in range(3)], sa).wire.frames()
        frames.append(frames[1])  # a replay
        got = rx.receive(frames)
        assert rx.miniport.kernels is (twin if pure else _fastpath)
        results.append((got.packets(), got.delivery.tolist(), got.nic.frames(),
                        got.nic.plans.tobytes(), rx._rx_windows.tobytes()))
    assert results[0] == results[1]
    assert results[0][1][-1] == Delivery.REPLAY


def test_esn_across_batches_and_retry_of_a_misleading_frame():
    """The NIC's ESN state carries from batch to batch; a forged frame whose low number
    would move the inferred high word misleads the frames after it only until rx_complete
    opens them again with the committed state (RFC 4303 Appendix A2.2)."""
    suite = SUITES[0][1]
    pair = Pair([SaConfig(spi=0x3000, **suite, esn=True, seq=1, name="esn")])
    first = pair.send("esn", [udp_packet(False, k) for k in range(5)])  # 1..5
    run_both(pair, pair.batch(first))
    later = pair.send("esn", [udp_packet(False, k) for k in range(5, 9)])  # 6..9
    forged = bytearray(later[0])
    struct.pack_into("!I", forged, 14 + 20 + 4, 0x90000000)  # SN low word
    out, plans, ops, counters, (data, deliveries, *_rest) = run_both(
        pair, pair.batch([bytes(forged)] + later[1:]))
    assert plans["reason"].tolist() == [RxReason.AUTH_FAILED] + [RxReason.OK] * 3
    assert plans["seq64"].tolist()[1:] == [7, 8, 9]
    assert ops["reserved"][:, 0].tolist() == [0, 1, 1, 1]  # opened twice
    assert deliveries.tolist() == [Delivery.CRYPTO] + [Delivery.DECAP] * 3
    # and the ESN numbers cross 2^32 over two batches
    pair.out["esn"].next_seq = 2**32 - 2
    a = pair.send("esn", [udp_packet(False, k) for k in range(2)])
    b = pair.send("esn", [udp_packet(False, k) for k in range(3)])
    run_both(pair, pair.batch(a))
    _out, plans, *_rest = run_both(pair, pair.batch(b))
    assert plans["seq64"].tolist() == [2**32, 2**32 + 1, 2**32 + 2]


def long_udp(ipv6: bool, n: int, size: int) -> bytes:
    """A UDP packet of ``size`` payload bytes (udp_packet's are short)."""
    packet = udp_packet(ipv6, n)
    payload = bytes((n * 7 + i) & 0xFF for i in range(size))
    head = 40 if ipv6 else 20
    udp = struct.pack("!HHHH", 1000 + n, 53, 8 + size, 0) + payload
    if ipv6:
        return packet[:4] + struct.pack("!H", len(udp)) + packet[6:head] + udp
    ip = bytearray(packet[:head])
    struct.pack_into("!HH", ip, 2, head + len(udp), 0)
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, ~ones_complement_sum(bytes(ip)) & 0xFFFF)
    return bytes(ip) + udp


@pytest.mark.parametrize("backends", ["batched", "reference"])
def test_out_of_place_open_of_long_texts(backends):
    """rx_run opens AES-GCM texts of RX_OPEN_FROM_MIN bytes and more out of place (the
    ciphertext read from the received arena, docs/receive-path.md): with the batched backend
    reading the source and with the reference backend through ops_gather, the output arena,
    plans, op table (src fields 0) and state equal the twin's in-place open, forged frames
    come back as received, an ESN frame opened twice (retry) included, and frames out of
    arena order take the whole copy."""
    suite = SUITE_BY_NAME["gcm128-icv16"]
    configs = [SaConfig(spi=0x5000, **suite, name="transport"),
               SaConfig(spi=0x5001, **suite, mode="tunnel", tunnel_src="192.0.2.1",
                        tunnel_dst="192.0.2.2", name="tunnel4"),
               SaConfig(spi=0x5002, **suite, esn=True, seq=1, name="esn")]
    pair = Pair(configs)
    sizes = [100, 470, 490, 496, 600, 1400, 9000, 3000, 511, 2000]
    frames = []
    for name in ("transport", "tunnel4"):
        frames += pair.send(name, [long_udp(k % 2 == 1, k, n) for k, n in enumerate(sizes)])
    esn = pair.send("esn", [long_udp(False, k, n) for k, n in enumerate(sizes[:6])])
    forged = [bytearray(f) for f in frames]
    for i in (4, 5, 16):  # a bit of the ciphertext, deep in the text
        forged[i][len(forged[i]) // 2] ^= 0x10
    misleading = bytearray(esn[2])  # a low word that would move the inferred high word
    struct.pack_into("!I", misleading, 14 + 20 + 4, 0x90000000)
    batch_frames = [bytes(f) for f in forged] + [esn[0], esn[1], bytes(misleading)] + esn[3:]
    mp = pair.rx.miniport
    compiled = mp.backends if backends == "batched" else BACKENDS
    for order in ("arena", "reversed"):
        batch = pair.batch(batch_frames)
        if order == "reversed":  # the same frames, the arena laid out backwards
            ends = np.cumsum(batch.nb_len[::-1])
            off = (ends - batch.nb_len[::-1])[::-1].copy()
            arena = np.zeros(len(batch.arena), np.uint8)
            for i in range(len(off)):
                arena[off[i]:off[i] + batch.nb_len[i]] = \
                    batch.arena[batch.nb_off[i]:batch.nb_off[i] + batch.nb_len[i]]
            batch = PacketBatch(arena, off.astype(np.int64), batch.nb_len.copy(),
                                batch.nb_nbl.copy(), oob=batch.oob.copy())
        snap = mp.sas.snapshot()
        got = []
        for kernels, used in ((_fastpath, compiled), (twin, BACKENDS)):
            state = mp.sas.rx_state.copy()
            out, plans, ops, counters = kernels.rx_run(batch, snap, state, ALL_RX, used,
                                                       threading.Lock())
            got.append((out.tobytes(), plans.tobytes(), ops.tobytes(), counters.tolist(),
                        state.tobytes()))
        assert got[0][1] == got[1][1], plan_diff(np.frombuffer(got[0][1], np.uint8),
                                                 np.frombuffer(got[1][1], np.uint8))
        assert got[0][2] == got[1][2], op_diff(np.frombuffer(got[0][2], np.uint8),
                                               np.frombuffer(got[1][2], np.uint8))
        assert got[0] == got[1], order
        plans = np.frombuffer(got[0][1], np.uint8).view(RX_PLAN_DTYPE)
        ops = np.frombuffer(got[0][2], np.uint8).view(CRYPTO_OP_DTYPE)
        want = [RxReason.OK] * len(batch_frames)
        for i in (4, 5, 16, 22):
            want[i] = RxReason.AUTH_FAILED
        assert plans["reason"].tolist() == want, order
        assert not ops["src_len"].any() and not ops["src_off"].any()
        assert ops["reserved"][:, 0].tolist()[-3:] == [1, 1, 1]  # opened again (retry)
        out = np.frombuffer(got[0][0], np.uint8)
        for i in (4, 5, 16, 22):  # as received
            start, n = int(batch.nb_off[i]), int(batch.nb_len[i])
            assert out[start:start + n].tobytes() == batch_frames[i], (order, i)


# -- (b) mutated frames ---------------------------------------------------------------------

_PAIR = None
SUITE_BY_NAME = dict(SUITES)
FUZZ_SUITES = ("gcm128-icv8", "gmac128", "cbc128-hmac-sha256-128", "null-hmac-sha256-128")
NULL = "null-hmac-sha256-128"


def crafted_esp(config: SaConfig, sn: int, body: bytes, nh: int, padl: int, pad: bytes,
                *, ipv6: bool = False, ecn: int = 0) -> bytes:
    """An ESP frame built here, not by our send path, for a NULL + HMAC-SHA-256-128 SA: any
    payload and trailer (RFC 4303 §2), ICV = the first 16 bytes of HMAC-SHA-256 over SPI ..
    next header (RFC 4868 §2.3). The outer addresses are the SA's (tunnel) endpoints."""
    esp = struct.pack("!II", config.spi, sn & 0xFFFFFFFF) + body + pad + bytes([padl, nh])
    esp += hmac.new(config.auth_key, esp, hashlib.sha256).digest()[:16]
    if config.mode == "tunnel":
        src = ipaddress.ip_address(config.tunnel_src).packed
        dst = ipaddress.ip_address(config.tunnel_dst).packed
        ipv6 = len(src) == 16
    else:
        src = bytes.fromhex("20010db8000000000000000000000001") if ipv6 else bytes([10, 0, 0, 1])
        dst = bytes.fromhex("20010db8000000000000000000000002") if ipv6 else bytes([10, 0, 0, 2])
    if ipv6:
        ip = struct.pack("!IHBB", (6 << 28) | (ecn << 20), len(esp), 50, 64) + src + dst
        link = bytes(12) + b"\x86\xdd"
    else:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, ecn, 20 + len(esp), 7, 0, 64, 50, 0, src, dst)
        ip = head[:10] + struct.pack("!H", ~ones_complement_sum(head) & 0xFFFF) + head[12:]
        link = bytes(12) + b"\x08\x00"
    return link + ip + esp


def fuzz_pair() -> Pair:
    """One pair for every fuzz example (its windows and state move on from example to
    example, on both kernels alike)."""
    global _PAIR
    if _PAIR is None:
        configs = []
        for k, suite in enumerate(FUZZ_SUITES):
            configs += [SaConfig(**{**c.__dict__, "name": f"{suite}/{c.name}"})
                        for c in variants(SUITE_BY_NAME[suite], 0x5000 + 0x10 * k)]
        _PAIR = Pair(configs, replay_window=32)
        _PAIR.base = _PAIR.traffic(2)
        _PAIR.start = (_PAIR.rx._rx_windows.copy(), _PAIR.rx.miniport.sas.rx_state.copy())
    # every example starts from the same windows and NIC state (a replay is made in-batch)
    _PAIR.rx._rx_windows[:] = _PAIR.start[0]
    _PAIR.rx.miniport.sas.rx_state[:] = _PAIR.start[1]
    return _PAIR


def ipv6_with_ext(frame: bytes, chain, l2: int = 14) -> bytes:
    """The IPv6 frame with extension headers (type, 8-byte units beyond the first) between
    the fixed header and what followed it (RFC 8200 §4)."""
    ip = frame[l2:]
    if ip[0] >> 4 != 6:
        return frame
    nh = ip[6]
    ext = b""
    for k in range(len(chain) - 1, -1, -1):
        kind, units = chain[k]
        body = bytes([nh, units]) + bytes((units + 1) * 8 - 2)
        ext = body + ext
        nh = kind
    head = bytearray(ip[:40])
    head[6] = nh
    struct.pack_into("!H", head, 4, (len(ip) - 40 + len(ext)) & 0xFFFF)
    return frame[:l2] + bytes(head) + ext + ip[40:]


def ipv4_with_options(frame: bytes, words: int, l2: int = 14) -> bytes:
    ip = frame[l2:]
    if ip[0] >> 4 != 4 or (ip[0] & 0xF) != 5 or not words:
        return frame
    head = bytearray(ip[:20])
    head[0] = 0x40 | (5 + words)
    struct.pack_into("!H", head, 2, (len(ip) + 4 * words) & 0xFFFF)
    head[10:12] = b"\0\0"
    options = bytes([1] * (4 * words - 1) + [0])  # NOPs, then End of Option List
    csum = ~ones_complement_sum(bytes(head) + options) & 0xFFFF
    struct.pack_into("!H", head, 10, csum)
    return frame[:l2] + bytes(head) + options + ip[20:]


def udp_special(ipv6: bool, body: bytes, sport: int = 4500, dport: int = 4500) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    if ipv6:
        ip = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + bytes(15) + b"\1" + bytes(15) \
            + b"\2"
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes(4), bytes(4))
    return bytes(14) + ip + udp


@st.composite
def mutated_frame(draw):
    pair = fuzz_pair()
    frame = bytearray(draw(st.sampled_from(pair.base)))
    kind = draw(st.sampled_from(["keep", "truncate", "flip", "field", "bytes", "random",
                                 "ext", "options", "udp", "fragment", "length", "ah",
                                 "crafted", "crafted"]))
    if kind == "crafted":
        name = draw(st.sampled_from([f"{NULL}/transport", f"{NULL}/tunnel4", f"{NULL}/tunnel6",
                                     f"{NULL}/udp-tunnel"]))
        nh = draw(st.sampled_from([4, 41, 59, 17, 6, 50, 255]))
        inner = b""
        if nh in (4, 41) and draw(st.booleans()):
            inner = udp_packet(nh == 41, draw(st.integers(0, 50)),
                               tos=draw(st.integers(0, 3)))
            inner = inner[:draw(st.integers(0, len(inner)))] if draw(st.booleans()) else inner
        body = inner + draw(st.binary(max_size=40))
        padl = draw(st.integers(0, 255)) if draw(st.booleans()) else draw(st.integers(0, 8))
        pad = (bytes(range(1, padl + 1)) if draw(st.booleans())
               else draw(st.binary(max_size=12)))
        config = pair.out[name].config
        if config.udp_encap:  # the UDP header goes in front of ESP below
            config = SaConfig(**{**config.__dict__, "udp_encap": None})
        crafted = bytearray(crafted_esp(config, draw(st.integers(1, 40)), body, nh, padl, pad,
                                        ipv6=draw(st.booleans()), ecn=draw(st.integers(0, 3))))
        if pair.out[name].config.udp_encap:
            ip = 14 + (40 if crafted[14] >> 4 == 6 else 20)
            crafted[ip:ip] = struct.pack("!HHHH", 4500, 4500, len(crafted) - ip + 8, 0)
            if crafted[14] >> 4 == 6:
                crafted[14 + 6] = 17
                struct.pack_into("!H", crafted, 18, len(crafted) - 54)
            else:
                crafted[14 + 9] = 17
                struct.pack_into("!H", crafted, 16, len(crafted) - 14)
        return bytes(crafted)
    if kind == "ah":
        # protocol 51 in front of an ESP SA's SPI (BAD_PROTOCOL) or of an unknown one
        v6 = frame[14] >> 4 == 6
        if frame[14 + (6 if v6 else 9)] == 50:
            at = 14 + (40 if v6 else 20)
            frame[14 + (6 if v6 else 9)] = 51
            spi = frame[at:at + 4] if draw(st.booleans()) else b"\xde\xad\xbe\xef"
            frame[at:at] = bytes([50, 4, 0, 0])  # AH: next header, length, reserved
            frame[at + 4:at + 8] = spi
        return bytes(frame)
    if kind == "truncate":
        frame = frame[:draw(st.integers(0, len(frame)))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            limit = draw(st.sampled_from([min(len(frame), 90), len(frame)]))
            bit = draw(st.integers(0, 8 * limit - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
    elif kind == "field":
        # SPI, SN, the pad length / next header bytes, the ICV: wherever ESP starts
        ip = 14
        v6 = frame[ip] >> 4 == 6
        esp = ip + (40 if v6 else 20) + (8 if frame[ip + (6 if v6 else 9)] == 17 else 0)
        where = draw(st.sampled_from(["spi", "sn", "trailer", "icv"]))
        at = {"spi": esp, "sn": esp + 4, "trailer": None, "icv": len(frame) - 4}[where]
        if at is None:
            at = len(frame) - draw(st.integers(8, 20))
        value = draw(st.binary(min_size=4, max_size=4))
        frame[at:at + 4] = value
        frame = frame[:max(len(frame), 0)]
    elif kind == "bytes":
        at = draw(st.integers(0, len(frame) - 1))
        value = draw(st.binary(min_size=1, max_size=16))
        frame[at:at + len(value)] = value
    elif kind == "random":
        frame = bytearray(draw(st.binary(min_size=0, max_size=120)))
        if frame and draw(st.booleans()):
            frame[0:14] = bytes(14)[:len(frame)]
            if len(frame) > 14:
                frame[14] = draw(st.sampled_from([0x45, 0x46, 0x60, 0x4F]))
    elif kind == "ext":
        chain = draw(st.lists(st.tuples(st.sampled_from([0, 43, 60, 44]), st.integers(0, 3)),
                              min_size=1, max_size=4))
        frame = bytearray(ipv6_with_ext(bytes(frame), chain))
    elif kind == "options":
        frame = bytearray(ipv4_with_options(bytes(frame), draw(st.integers(1, 10))))
    elif kind == "udp":
        body = draw(st.one_of(st.sampled_from([b"\xff", b"\0\0\0\0" + bytes(20), b"\0\0\0",
                                                b"\1\2", bytes(8), b"\xfe"]),
                              st.binary(max_size=24)))
        frame = bytearray(udp_special(draw(st.booleans()), body,
                                      *draw(st.sampled_from([(4500, 4500), (4500, 1),
                                                             (1, 4500), (500, 500)]))))
    elif kind == "fragment":
        if frame[14] >> 4 == 4:
            struct.pack_into("!H", frame, 14 + 6, draw(st.sampled_from([0x2000, 0x0001,
                                                                        0x4000, 0x3FFF])))
        else:
            frame = bytearray(ipv6_with_ext(bytes(frame), [(44, 0)]))
    elif kind == "length":
        off = 14 + (4 if frame[14] >> 4 == 6 else 2)
        struct.pack_into("!H", frame, off, draw(st.integers(0, 0xFFFF)))
    return bytes(frame)


@FUZZ
@given(st.lists(mutated_frame(), min_size=1, max_size=10),
       st.sampled_from([ALL_RX, int(Config.ESP_IPV4 | Config.ESP_IPV6), int(Config.ESP_IPV6),
                        int(Config.ESP_IPV4 | RxConfig.IPV4_OPTIONS)]),
       st.integers(0, 3))
def test_fuzz_mutated_frames(frames, config, replays):
    pair = fuzz_pair()
    frames = frames + frames[:replays]  # some frames twice: replays within the batch
    run_both(pair, pair.batch(frames), config)


@FUZZ
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=6), st.integers(0, 40))
def test_fuzz_random_bytes_and_link_lengths(frames, l2):
    pair = fuzz_pair()
    batch = PacketBatch.from_frames(frames, l2_len=l2)
    run_both(pair, batch)


@FUZZ
@given(st.lists(st.tuples(st.lists(mutated_frame(), min_size=0, max_size=3),
                          st.sampled_from([0, 14, 14, 18, 200])), min_size=1, max_size=4))
def test_fuzz_nbls_of_several_buffers(nbls):
    """NBLs of several NET_BUFFERs (or none), each NBL with its own link-header length; a
    frame is made to fit the NBL's length by trimming or prefixing its Ethernet header."""
    pair = fuzz_pair()
    builder = PacketBatchBuilder()
    for frames, l2 in nbls:
        builder.add_nbl([bytes(max(0, l2 - 14)) + f[max(0, 14 - l2):] for f in frames],
                        l2_len=l2)
    run_both(pair, builder.build())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.booleans(), st.booleans()),
                min_size=4, max_size=4),
       st.lists(st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers(0, 2**32 - 1),
                                                        st.sampled_from([0, 1, 2**31 - 1,
                                                                         2**31, 2**32 - 1]))),
                min_size=1, max_size=10))
def test_fuzz_esn_inference_from_any_state(states, picks):
    """ESN frames (numbers kept, or a new low word: the ICV then fails) against any NIC
    state (top, seen, tunnel) of the ESN SAs: the high words guessed, the retries and the
    state left behind agree (RFC 4303 Appendix A2.2)."""
    pair = fuzz_pair()
    rows = []
    for name, sa in pair.inb.items():
        if sa.config.esn:
            rows += [2 * (handle & HANDLE_SLOT_MASK) for handle in sa.handles.values()]
    state = pair.rx.miniport.sas.rx_state
    for row, (top, seen, tunnel) in zip(rows, states):
        state[row]["top"], state[row]["seen"], state[row]["tunnel"] = top, seen, tunnel
    esn = [f for f in pair.base if f[14] == 0x45 and f[14 + 9] == 50
           and struct.unpack_from("!I", f, 14 + 20)[0] & 0xF == 5]  # the SAs spi0 + 5
    assert len(esn) == 2 * len(FUZZ_SUITES)
    frames = []
    for index, low in picks:
        frame = bytearray(esn[index % len(esn)])
        if low is not None:
            struct.pack_into("!I", frame, 14 + 20 + 4, low)
        frames.append(bytes(frame))
    run_both(pair, pair.batch(frames))


PLAN_FIELDS = ("ip_off", "esp_off", "text_off", "text_len", "nh_off", "udp_off",
               "pad_length", "next_header", "crypto_done", "crypto_status", "ipv6", "slot",
               "seq64")


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 15), st.sampled_from(PLAN_FIELDS),
                          st.one_of(st.integers(-70, 200), st.integers(-2**31, 2**31 - 1))),
                min_size=1, max_size=4))
def test_fuzz_rx_deliver_with_corrupt_plans(corruptions):
    """rx_deliver given plans that rx_run cannot make: a ValueError before anything is
    written (windows untouched), or the same deliveries from both kernels."""
    pair = fuzz_pair()
    frames = [f for f in pair.base if f[14] >> 4 == 4][:8] + \
        [f for f in pair.base if f[14] >> 4 == 6][:8]
    batch = pair.batch(frames)
    out, plans, *_rest = _fastpath.rx_run(batch, pair.rx.miniport.sas.snapshot(),
                                          pair.rx.miniport.sas.rx_state.copy(), ALL_RX,
                                          BACKENDS, threading.Lock())
    table = plans.view(RX_PLAN_DTYPE)
    for index, name, value in corruptions:
        info = np.iinfo(table.dtype[name])
        table[index][name] = min(max(value, info.min), info.max)
    got = []
    for kernels in (_fastpath, twin):
        windows = pair.rx._rx_windows.copy()
        try:
            result = kernels.rx_deliver(batch, out, plans, pair.rx._rx_slot_sa,
                                        pair.rx._rx_slot_handle, windows)
        except ValueError:
            assert windows.tobytes() == pair.rx._rx_windows.tobytes()
            result = "ValueError"
        got.append((result if isinstance(result, str) else [r.tobytes() for r in result],
                    windows.tobytes()))
    assert got[0] == got[1]


def bad_argument_cases():
    pair = fuzz_pair()
    batch = pair.batch(pair.base[:3])
    snap, state = pair.rx.miniport.sas.snapshot(), pair.rx.miniport.sas.rx_state
    read_only = state.copy()
    read_only.flags.writeable = False
    out = batch.arena.copy()
    plans = np.zeros(3 * RX_PLAN_DTYPE.itemsize, np.uint8)
    windows = pair.rx._rx_windows
    frozen = windows.copy()
    frozen.flags.writeable = False
    sa, handle = pair.rx._rx_slot_sa, pair.rx._rx_slot_handle
    run = {"state read-only": (batch, snap, read_only, ALL_RX),
           "state short": (batch, snap, state[:4].copy(), ALL_RX),
           "state bytes": (batch, snap, state.view(np.uint8)[:-3].copy(), ALL_RX),
           "config": (batch, snap, state.copy(), 2**40)}
    deliver = {"out length": (batch, out[:-1].copy(), plans, sa, handle, windows.copy()),
               "plans length": (batch, out, plans[:-1].copy(), sa, handle, windows.copy()),
               "slot dtype": (batch, out, plans, sa.astype(np.int64), handle, windows.copy()),
               "slot lengths": (batch, out, plans, sa[:-1].copy(), handle, windows.copy()),
               "windows read-only": (batch, out, plans, sa, handle, frozen),
               "windows bytes": (batch, out, plans, sa, handle,
                                 windows.view(np.uint8)[:-1].copy())}
    return run, deliver


@pytest.mark.parametrize("stage", ["rx_run", "rx_deliver"])
def test_bad_arguments_same_error(stage):
    """The twin refuses what the compiled stages refuse, with the same exception type."""
    run, deliver = bad_argument_cases()
    for name, args in (run if stage == "rx_run" else deliver).items():
        errors = []
        for kernels in (_fastpath, twin):
            with pytest.raises(Exception) as info:
                if stage == "rx_run":
                    kernels.rx_run(*args, BACKENDS, threading.Lock())
                else:
                    kernels.rx_deliver(*args)
            errors.append(type(info.value))
        assert errors[0] is errors[1], (name, errors)
        assert errors[0] in (ValueError, OverflowError, BufferError, TypeError), name


def test_ipv6_extension_chains_deliver_with_their_headers():
    pair = fuzz_pair()
    v6 = [f for f in pair.base if f[14] >> 4 == 6 and f[14 + 6] == 50][:2]
    frames = [ipv6_with_ext(f, [(0, 0), (43, 1), (60, 2)]) for f in v6]
    _out, plans, _ops, _c, (data, deliveries, _sa, off, length) = run_both(
        pair, pair.batch(frames))
    assert plans["reason"].tolist() == [RxReason.OK] * 2
    for i in range(2):
        packet = data[off[i]:off[i] + length[i]].tobytes()[14:]
        assert packet[6] == 0 and packet[40] == 43 and packet[48] == 60  # the chain stays
    _out, plans, *_rest = run_both(pair, pair.batch(frames), int(Config.ESP_IPV6))
    assert plans["reason"].tolist() == [RxReason.GATED] * 2


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_4500_keepalive_ike_and_others(ipv6):
    """RFC 3948 §2.2-2.3 on UDP port 4500: a keepalive (one 0xFF byte), the non-ESP marker
    of IKE, too short for ESP, another port, and ESP behind the UDP header."""
    pair = fuzz_pair()
    esp = [f for f in pair.base if f[14] >> 4 == (6 if ipv6 else 4)
           and f[14 + (6 if ipv6 else 9)] == 17][0]
    frames = [udp_special(ipv6, b"\xff"), udp_special(ipv6, bytes(4) + b"ike"),
              udp_special(ipv6, b"\1\2\3"), udp_special(ipv6, bytes(12), 500, 500),
              udp_special(ipv6, b"\xff", 4500, 9), esp]
    _out, plans, _ops, _c, (_data, deliveries, *_rest) = run_both(pair, pair.batch(frames))
    assert plans["reason"].tolist() == [RxReason.KEEPALIVE, RxReason.IKE, RxReason.NOT_IPSEC,
                                        RxReason.NOT_IPSEC, RxReason.KEEPALIVE,
                                        RxReason.OK]
    assert deliveries.tolist()[:5] == [Delivery.CLEAR] * 5


# RFC 6040 §4.2, Figure 4: (inner, outer) -> the inner packet's ECN after decapsulation;
# None = drop. ECN field values: Not-ECT 0, ECT(1) 1, ECT(0) 2, CE 3.
RFC6040 = {(0, 0): 0, (0, 2): 0, (0, 1): 0, (0, 3): None,
           (2, 0): 2, (2, 2): 2, (2, 1): 1, (2, 3): 3,
           (1, 0): 1, (1, 2): 1, (1, 1): 1, (1, 3): 3,
           (3, 0): 3, (3, 2): 3, (3, 1): 3, (3, 3): 3}


@pytest.mark.parametrize("outer_v6", [False, True], ids=["outer4", "outer6"])
def test_tunnel_ecn_decapsulation_rfc6040(outer_v6):
    pair = fuzz_pair()
    config = pair.out[f"{NULL}/tunnel6" if outer_v6 else f"{NULL}/tunnel4"].config
    frames, cases, sn = [], [], 1
    for inner_v6 in (False, True):
        for (inner, outer), want in RFC6040.items():
            packet = udp_packet(inner_v6, sn, tos=inner)
            pad = -(len(packet) + 2) % 4
            frames.append(crafted_esp(config, sn, packet, 41 if inner_v6 else 4, pad,
                                      bytes(range(1, pad + 1)), ecn=outer))
            cases.append((packet, inner_v6, want))
            sn += 1
    _out, plans, _ops, _c, (data, deliveries, _sa, off, length) = run_both(
        pair, pair.batch(frames))
    assert plans["reason"].tolist() == [RxReason.OK] * len(frames)
    for i, (packet, inner_v6, want) in enumerate(cases):
        if want is None:
            assert deliveries[i] == Delivery.ECN
            continue
        assert deliveries[i] == Delivery.DECAP
        got = data[off[i]:off[i] + length[i]].tobytes()
        assert got[12:14] == (b"\x86\xdd" if inner_v6 else b"\x08\x00")
        ip = got[14:]
        assert len(ip) == len(packet)
        ecn = (ip[1] >> 4) & 3 if inner_v6 else ip[1] & 3
        assert ecn == want
        if not inner_v6:
            assert ones_complement_sum(ip[:20]) == 0xFFFF  # the checksum follows the change
            assert ip[:1] + ip[2:10] + ip[12:] == packet[:1] + packet[2:10] + packet[12:]
        else:
            assert ip[2:] == packet[2:]


@pytest.mark.parametrize("selector,delivered", [
    (("192.0.2.0/31", "192.0.2.2/32"), True), (("192.0.2.0/30", None), True),
    ((None, "192.0.2.3/32"), False), (("192.0.2.2/31", None), False),
    (("0.0.0.0/0", "192.0.0.0/13"), True), (("192.0.4.0/23", None), False),
    (("192.0.2.0/23", "192.0.2.0/29"), True)])
def test_selector(selector, delivered):
    """The SA's selector prefixes hold the tunnel endpoints (or not): SELECTOR, and the
    window untouched."""
    suite = SUITE_BY_NAME[NULL]
    config = SaConfig(spi=0x7100, **suite, mode="tunnel", tunnel_src="192.0.2.1",
                      tunnel_dst="192.0.2.2", name="sel")
    pair = Pair([config], selector=selector)
    frames = pair.send("sel", [udp_packet(False, k) for k in range(3)])
    before = pair.rx._rx_windows.copy()
    _out, _plans, _ops, _c, (_data, deliveries, sa, *_rest) = run_both(pair, pair.batch(frames))
    want = Delivery.DECAP if delivered else Delivery.SELECTOR
    assert deliveries.tolist() == [want] * 3
    assert sa.tolist() == [0 if delivered else -1] * 3
    if not delivered:
        assert pair.rx._rx_windows.tobytes() == before.tobytes()


def test_crafted_trailers():
    """Authenticated frames with trailers that cannot be: a pad length beyond the text
    (INVALID_PACKET_SYNTAX), padding that does not read 1, 2, 3, ... (pad_ok 0, delivered),
    a dummy packet (next header 59), a tunnel next header over a bad inner packet."""
    pair = fuzz_pair()
    config = pair.out[f"{NULL}/transport"].config
    tunnel = pair.out[f"{NULL}/tunnel4"].config
    udp = udp_packet(False, 3)[20:]
    frames = [crafted_esp(config, 1, udp, 17, 60, b""),             # padl + 2 > text
              crafted_esp(config, 2, udp, 17, 3, b"\x01\x02\x04"),  # bad padding
              crafted_esp(config, 3, udp, 59, 0, b""),              # dummy
              crafted_esp(tunnel, 4, bytes(30), 4, 0, b""),          # not IPv4 inside
              crafted_esp(tunnel, 5, udp_packet(False, 9)[:25], 4, 0, b""),  # cut short
              crafted_esp(tunnel, 6, udp_packet(True, 9), 4, 0, b"")]  # IPv6 named IPv4
    _out, plans, _ops, _c, (_data, deliveries, *_rest) = run_both(pair, pair.batch(frames))
    assert plans["reason"].tolist() == [RxReason.BAD_SYNTAX] + [RxReason.OK] * 5
    assert plans["pad_ok"].tolist()[1:3] == [0, 1]
    assert deliveries.tolist() == [Delivery.CRYPTO, Delivery.DECAP, Delivery.DUMMY,
                                   Delivery.INNER, Delivery.INNER, Delivery.INNER]


# -- (c) anti-replay windows ------------------------------------------------------------------

def model_accept(seen: set, top: int, size: int, sn: int) -> tuple[bool, int]:
    """RFC 4303 §3.4.3 as a set: right of the window is new; inside it, new if unseen."""
    if sn == 0:
        return False, top
    if size == 0 or sn > top:
        return True, max(top, sn)
    if top - sn >= size or sn in seen:
        return False, top
    return True, top


WINDOW_SIZES = [0, 32, 64, 100, 1024, 4096]


@pytest.mark.parametrize("size", WINDOW_SIZES)
def test_window_real_frames(size):
    """Replays, old numbers and jumps with real frames of one SA (no ESN)."""
    suite = SUITES[-1][1]  # NULL + HMAC-SHA256
    pair = Pair([SaConfig(spi=0x7000, **suite, name="w")], replay_window=size)
    sa = pair.out["w"]
    frames = {}
    for sn in (1, 2, 3, 5, 40, 100, 1100, 5000, 5001, 4990):
        sa.next_seq = sn
        frames[sn] = pair.send("w", [udp_packet(False, sn)])[0]
    order = [1, 2, 2, 1, 5, 3, 40, 5, 100, 40, 3, 1100, 100, 5000, 1100, 4990, 5001, 4990, 1]
    seen, top = set(), 0
    _out, plans, _ops, _c, (data, deliveries, *_rest) = run_both(
        pair, pair.batch([frames[sn] for sn in order]))
    for sn, got in zip(order, deliveries.tolist()):
        ok, top = model_accept(seen, top, size, sn)
        seen.add(sn) if ok else None
        assert got == (Delivery.DECAP if ok else Delivery.REPLAY), (sn, size)


def synthetic(n: int, seqs, slots_handle: int):
    """Frames and plans of verified dummy packets (next header 59, RFC 4303 §2.6): the
    window is all rx_deliver touches for them."""
    frame = bytes(14) + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 50, 0,
                                    bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + bytes(20)
    batch = PacketBatch.from_frames([frame] * n, l2_len=14)
    plans = np.zeros(n, RX_PLAN_DTYPE)
    plans["ip_off"], plans["esp_off"], plans["text_off"], plans["text_len"] = 14, 34, 42, 10
    plans["nh_off"] = 14 + 9
    plans["ip_end"], plans["icv_off"] = len(frame), 52
    plans["crypto_done"], plans["next_header"], plans["header_info_set"] = 1, 59, 1
    plans["slot"], plans["handle"], plans["op"] = 0, slots_handle, -1
    plans["seq64"] = seqs
    return batch, batch.arena.copy(), plans.view(np.uint8)


@st.composite
def window_case(draw):
    size = draw(st.sampled_from(WINDOW_SIZES))
    top = draw(st.sampled_from([0, 1, 63, 64, 2**32 - 1, 2**63, 2**64 - 5000])) \
        + draw(st.integers(0, 200))
    bits = draw(st.lists(st.integers(0, 2**64 - 1), min_size=64, max_size=64))
    steps = draw(st.lists(st.one_of(
        st.integers(-size - 70, 70),  # old, inside, just outside, just right of the window
        st.sampled_from([0, -1, size, size - 1, size + 1, 63, 64, 65, 4096, 4097]),
        st.integers(-2**40, 2**40)), min_size=1, max_size=30))
    return size, min(top, 2**64 - 1), bits, steps


@FUZZ
@given(window_case(), st.booleans())
def test_fuzz_windows_bit_for_bit(case, replay_some):
    size, top, bits, steps = case
    seqs, t = [], top
    for step in steps:
        sn = min(max(t + step, 0), 2**64 - 1)
        seqs.append(sn)
        t = max(t, sn)
    if replay_some:
        seqs += seqs[::2]
    handle = 0x100001
    batch, out, plans = synthetic(len(seqs), seqs, handle)
    slot_sa, slot_handle = np.zeros(1, np.int32), np.full(1, handle, np.uint64)
    windows = np.zeros(2, RX_WINDOW_DTYPE)
    windows[0]["size"], windows[0]["top"], windows[0]["bits"] = size, top, bits
    windows[1] = windows[0]  # a row nobody uses must stay as it is
    got = []
    for kernels in (_fastpath, twin):
        w = windows.copy()
        result = kernels.rx_deliver(batch, out, plans, slot_sa, slot_handle, w)
        got.append((result, w))
    (c_res, c_win), (p_res, p_win) = got
    assert c_win.tobytes() == p_win.tobytes()
    assert c_win[1].tobytes() == windows[1].tobytes()
    for a, b in zip(c_res, p_res):
        assert a.tobytes() == b.tobytes()
    # the RFC model, seeded with the window's bits
    seen = {top - i for i in range(min(size, top + 1))
            if (bits[i >> 6] >> (i & 63)) & 1} if size else set()
    t = top
    for sn, code in zip(seqs, c_res[1].tolist()):
        ok, t = model_accept(seen, t, size, sn)
        if ok:
            seen.add(sn)
        assert code == (Delivery.DUMMY if ok else Delivery.REPLAY), (sn, size)
    assert int(c_win[0]["top"]) == t


@pytest.mark.parametrize("size", [64, 100, 4096])
def test_window_huge_jumps(size):
    """Jumps far beyond any window (up to the last 64-bit number) clear it in one step."""
    handle = 0x100001
    seqs = [5, 4, 2**40, 2**40 - 1, 2**63, 2**64 - 1, 2**64 - 2, 2**63]
    batch, out, plans = synthetic(len(seqs), seqs, handle)
    windows = np.zeros(1, RX_WINDOW_DTYPE)
    windows[0]["size"], windows[0]["bits"] = size, 2**64 - 1
    got = []
    for kernels in (_fastpath, twin):
        w = windows.copy()
        got.append((kernels.rx_deliver(batch, out, plans, np.zeros(1, np.int32),
                                       np.full(1, handle, np.uint64), w)[1].tolist(),
                    w.tobytes()))
    assert got[0] == got[1]
    assert got[0][0] == [Delivery.DUMMY] * 4 + [Delivery.DUMMY] * 3 + [Delivery.REPLAY]


@pytest.mark.parametrize("kernels", [_fastpath, twin], ids=["compiled", "python"])
@pytest.mark.parametrize("field,value", [("size", RX_WINDOW_MAX + 1), ("size", 2**32 - 1),
                                         ("src_len", 129), ("dst_len", 33)])
def test_rx_deliver_refuses_impossible_windows(kernels, field, value):
    """A window larger than its bitmap, or a selector prefix longer than the address, is a
    ValueError, not a write past the row."""
    handle = 0x100001
    batch, out, plans = synthetic(2, [5, 9], handle)
    windows = np.zeros(1, RX_WINDOW_DTYPE)
    windows[0]["has_sel"] = 1
    windows[0][field] = value
    with pytest.raises(ValueError):
        kernels.rx_deliver(batch, out, plans, np.zeros(1, np.int32),
                           np.full(1, handle, np.uint64), windows)
