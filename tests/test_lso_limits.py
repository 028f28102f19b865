"""NDIS LSO limits on send (issue 11 item 3; docs/send-path.md, "Limits"): MaxOffLoadSize and
MinSegmentCount of NDIS_TCP_LARGE_SEND_OFFLOAD_V1 / _V2 enforced by the NIC, LSOv1 IPv4
only, the output cap of one send, and a host stack that never loses a packet to them
(split super-packets, plain packets, batches split by output size). Segments are decrypted
with cryptography's AESGCM, independently of the project."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import HostStack, Miniport, PacketBatch, SaConfig, _fastpath, ndis
from ipsecoffload.datapath import twin
from ipsecoffload.datapath.layout import NB_PLAN_DTYPE, STATUS_FAILURE, STATUS_RESOURCES, Reason
from ipsecoffload.host.stack import split_by_output

KEY, SALT = bytes(range(16)), b"salt"
L2 = 14
LSO_TYPE_BIT = 1 << 30


def _tcp_packet(n: int, *, ipv6: bool = False, seq: int = 1000, flags: int = 0x18) -> bytes:
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, seq, 0, 5 << 4, flags, 65535, 0, 0) + data
    if ipv6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(15) + b"\1",
                           bytes(15) + b"\2") + tcp
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])) + tcp


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def pure(request):
    return request.param


def _stack(pure: bool, **miniport):
    stack = HostStack(Miniport(pure_python=pure, **miniport))
    sa = stack.add_sa(SaConfig(spi=0x6001, encryption="aes-gcm-128", key=KEY + SALT))
    return stack, sa


def _open(frame: bytes, ipv6: bool = False) -> tuple[int, int, bytes]:
    """(TCP sequence number, TCP flags, TCP payload) of one sealed transport-mode segment."""
    esp = frame[L2 + (40 if ipv6 else 20):]
    plain = AESGCM(KEY).decrypt(SALT + esp[8:16], esp[16:], esp[:8])
    pad = plain[-2]
    tcp = plain[:len(plain) - 2 - pad]
    return struct.unpack_from("!I", tcp, 4)[0], tcp[13], tcp[20:]


def _payload(result, ipv6: bool = False) -> tuple[bytes, list]:
    opened = [_open(f, ipv6) for f in result.wire.frames()]
    seqs = [s for s, _, _ in opened]
    return b"".join(p for _, _, p in opened), seqs


def test_the_defaults_are_the_ndis_ones():
    nic = Miniport()
    assert nic.lso_v1.max_offload_size == 65535 and nic.lso_v1.min_segment_count == 2
    v2 = nic.lso_v2
    assert (v2.ipv4_max_offload_size, v2.ipv4_min_segment_count) == (65535, 2)
    assert (v2.ipv6_max_offload_size, v2.ipv6_min_segment_count) == (65535, 2)
    assert nic.send_limits().tolist() == [65535, 2, 65535, 2, 65535, 2, 256 << 20]


def _with_lso(batch: PacketBatch, lso_info: int) -> PacketBatch:
    oob = batch.oob.copy()
    oob["lso_info"] = lso_info
    return PacketBatch(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=oob)


def test_a_100_mib_super_packet_with_mss_1_fails_fast(pure):
    """Before: the NIC planned 100 million segments and tried to allocate 8.8 GiB."""
    stack, sa = _stack(pure)
    batch = stack.build_lso(_tcp_packet(3000), sa, 1000)
    frame = batch.frame(0)
    big = np.zeros(len(frame) + (100 << 20), np.uint8)
    big[:len(frame)] = np.frombuffer(frame, np.uint8)
    oob = batch.oob.copy()
    lso = int(oob["lso_info"][0])
    oob["lso_info"] = (lso & ~0xFFFFF) | 1  # MSS 1
    huge = PacketBatch(big, [0], [len(big)], [0], oob=oob)
    result = stack.miniport.send(huge)  # refused before anything is sized or allocated
    assert result.status.tolist() == [STATUS_FAILURE]
    assert Reason(int(result.reasons[0])) == Reason.LSO_LIMIT
    assert result.wire.num_buffers == 0 and len(result.wire.arena) == 0
    assert stack.miniport.counters["nb.LSO_LIMIT"] == 1


def test_over_max_offload_size_fails_and_under_min_segment_count_fails(pure):
    nic_opts = dict(lso_v2=ndis.NdisTcpLargeSendOffloadV2(ipv4_max_offload_size=4000,
                                                          ipv4_min_segment_count=3))
    stack, sa = _stack(pure, **nic_opts)
    nic = stack.miniport
    plain = HostStack(Miniport(pure_python=pure))  # builds the NBLs without the limits
    psa = plain.add_sa(SaConfig(spi=0x6001, encryption="aes-gcm-128", key=KEY + SALT))
    plain.build([_tcp_packet(1)], psa)
    stack.build([_tcp_packet(1)], sa)  # offload
    cases = [(5000, 1000, Reason.LSO_LIMIT), (4000, 1000, Reason.OK),
             (2000, 1000, Reason.LSO_LIMIT), (3000, 1000, Reason.OK)]
    for size, mss, reason in cases:
        built = plain.build_lso(_tcp_packet(size), psa, mss)
        oob = built.oob.copy()
        oob["offload_handle"] = sa.handles[False]
        frame = bytearray(built.frame(0))
        struct.pack_into("!I", frame, L2 + 24, sa.next_seq)  # fresh SNs on this SA
        sa.next_seq += -(-size // mss)
        batch = PacketBatch(np.frombuffer(bytes(frame), np.uint8), [0], [len(frame)], [0],
                            oob=oob)
        result = nic.send(batch)
        assert Reason(int(result.reasons[0])) == reason, size
        if reason == Reason.LSO_LIMIT:
            assert result.status.tolist() == [STATUS_FAILURE]
            assert result.wire.num_buffers == 0


def test_lsov1_carrying_ipv6_fails(pure):
    """NDIS LSOv1 is IPv4 only (NDIS_TCP_LARGE_SEND_OFFLOAD_V1 has no IPv6 members)."""
    stack, sa = _stack(pure)
    batch = stack.build_lso(_tcp_packet(3000, ipv6=True), sa, 1000)
    lso = int(batch.oob["lso_info"][0]) & ~(3 << 30)  # the same, as LSOv1
    result = stack.miniport.send(_with_lso(batch, lso))
    assert result.status.tolist() == [STATUS_FAILURE]
    assert Reason(int(result.reasons[0])) == Reason.LSO_DISABLED
    assert result.lso_complete.tolist() == [0]
    # plain LSO (no handle) too
    plain = stack.build_lso(_tcp_packet(3000, ipv6=True), None, 1000)
    result = stack.miniport.send(_with_lso(plain, int(plain.oob["lso_info"][0]) & ~(3 << 30)))
    assert Reason(int(result.reasons[0])) == Reason.LSO_DISABLED
    with pytest.raises(ValueError, match="LSOv1 is IPv4 only"):
        stack.build_lso(_tcp_packet(3000, ipv6=True), sa, 1000, lso_version=1)


def test_the_output_cap_fails_the_nbls_past_it(pure):
    stack, sa = _stack(pure, max_send_output=10000)
    batch = stack.build([_tcp_packet(3500) for _ in range(3)], sa)  # about 3600 bytes each
    result = stack.miniport.send(batch)
    assert result.status.tolist() == [0, 0, STATUS_RESOURCES]
    assert [Reason(int(r)) for r in result.reasons] == [Reason.OK, Reason.OK,
                                                        Reason.OUTPUT_LIMIT]
    assert len(result.wire.arena) <= 10000
    # the host stack splits its sends instead: nothing is lost
    result = stack.send([_tcp_packet(3500) for _ in range(3)], sa)
    assert result.status.tolist() == [0, 0, 0]


def test_the_stack_splits_a_super_packet_over_max_offload_size(pure):
    stack, sa = _stack(pure, lso_v2=ndis.NdisTcpLargeSendOffloadV2(ipv4_max_offload_size=2500))
    packet = _tcp_packet(7000, flags=0x19)  # ACK PSH FIN
    result = stack.send_lso(packet, sa, 1000)
    assert result.status.tolist() == [0, 0, 0, 0]  # 2000 + 2000 + 2000 (LSO) + 1000 (plain)
    assert [Reason(int(r)) for r in result.reasons] == [Reason.OK] * 4
    payload, seqs = _payload(result)
    assert payload == packet[40:]
    assert seqs == [1000 + 1000 * i for i in range(7)]
    flags = [f for _, f, _ in (_open(f) for f in result.wire.frames())]
    assert flags[:-1] == [0x10] * 6 and flags[-1] == 0x19  # FIN, PSH on the last only
    assert sa.next_seq == 8  # one SN per segment


def test_the_stack_sends_plain_packets_under_min_segment_count(pure):
    stack, sa = _stack(pure, lso_v2=ndis.NdisTcpLargeSendOffloadV2(ipv4_min_segment_count=4))
    packet = _tcp_packet(2500)
    result = stack.send_lso(packet, sa, 1000)  # 3 segments < 4: three plain packets
    assert result.status.tolist() == [0, 0, 0]
    assert not result.lso_complete.any()
    payload, seqs = _payload(result)
    assert payload == packet[40:] and seqs == [1000, 2000, 3000]
    # the default MinSegmentCount 2: one segment goes as a plain packet, not as LSO
    stack2, sa2 = _stack(pure)
    batch = stack2.build_lso(_tcp_packet(500), sa2, 1000)
    assert int(batch.oob["lso_info"][0]) == 0
    result = stack2.miniport.send(batch)
    assert result.status.tolist() == [0] and _payload(result)[0] == _tcp_packet(500)[40:]


def test_send_batch_keeps_packets_outside_the_limits():
    """send_batch (encrypt --mss) frames LSO only within the limits; the rest go whole."""
    stack, sa = _stack(False, lso_v2=ndis.NdisTcpLargeSendOffloadV2(ipv4_min_segment_count=3))
    sent = stack.send_batch([_tcp_packet(1500), _tcp_packet(5000)], sa, mss=1000)
    assert not sent.faults
    assert sent.result.status.tolist() == [0, 0]
    frames = sent.result.wire.frames_of(0)
    assert len(frames) == 1  # 2 segments < 3: one ESP packet
    assert len(sent.result.wire.frames_of(1)) == 5


def test_batches_are_split_by_output_size():
    """encrypt --mss 1 on 64 KB packets: each send stays within the cap, no packet lost."""
    cap = 2 << 20
    stack, sa = _stack(False, max_send_output=cap)
    sizes = []
    original = stack.miniport.send

    def send(batch):
        result = original(batch)
        sizes.append(len(result.wire.arena))
        return result
    stack.miniport.send = send  # type: ignore[method-assign]
    packets = [_tcp_packet(20000) for _ in range(4)]  # 20000 segments of ~70 bytes each
    sent = stack.send_batch(packets, sa, mss=1)
    assert not sent.faults and sent.result.status.tolist() == [0] * 4
    assert sent.result.wire.num_buffers == 4 * 20000
    assert len(sizes) >= 2 and max(sizes) <= cap


def test_split_by_output_runs():
    stack, sa = _stack(False)
    batch = stack.build([_tcp_packet(100) for _ in range(10)], sa)
    runs = split_by_output(batch, 500)
    assert [int(i) for run in runs for i in run] == list(range(10))
    assert all(len(run) >= 1 for run in runs) and len(runs) > 1
    assert len(split_by_output(batch, 1 << 30)) == 1


def test_tx_limit_compiled_and_twin_agree():
    stack, sa = _stack(False)
    lso = stack.build_lso(_tcp_packet(5000), sa, 1000)
    plain = stack.build([_tcp_packet(1000)], sa)
    frames = [lso.frame(0), plain.frame(0), plain.frame(0)]
    oob = np.concatenate([lso.oob, plain.oob, plain.oob])
    batch = PacketBatch.from_frames(frames, l2_len=L2)
    batch = PacketBatch(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=oob)
    records = stack.miniport.sas.snapshot().records_bytes
    outs = []
    for limits in ([4000, 2, 4000, 2, 4000, 2, 1 << 30], [65535, 2, 65535, 6, 65535, 2, 1 << 30],
                   [65535, 2, 65535, 2, 65535, 2, 2200]):
        for kernels in (_fastpath, twin):
            plans = np.zeros(3 * NB_PLAN_DTYPE.itemsize, np.uint8)
            kernels.tx_classify(batch, records, stack.miniport.config_bits(), 0, 0, plans)
            failed = kernels.tx_limit(batch, plans, np.array(limits, np.int64))
            outs.append((failed, plans.tobytes()))
        assert outs[-1] == outs[-2]
    reasons = [[Reason(int(r)) for r in np.frombuffer(p, NB_PLAN_DTYPE)["reason"]]
               for _, p in outs[::2]]
    assert reasons[0] == [Reason.LSO_LIMIT, Reason.OK, Reason.OK]  # 5000 > 4000
    assert reasons[1] == [Reason.LSO_LIMIT, Reason.OK, Reason.OK]  # 5 segments < 6
    assert reasons[2][1:] == [Reason.OK, Reason.OUTPUT_LIMIT] or reasons[2][0] == \
        Reason.OUTPUT_LIMIT
    for kernels in (_fastpath, twin):
        plans = np.zeros(3 * NB_PLAN_DTYPE.itemsize, np.uint8)
        with pytest.raises(ValueError):
            kernels.tx_limit(batch, plans, np.zeros(6, np.int64))


@pytest.mark.parametrize("bad", [-1, 2**32, "x"])
def test_limit_values_are_checked(bad):
    with pytest.raises((ValueError, TypeError)):
        Miniport(lso_v1=ndis.NdisTcpLargeSendOffloadV1(max_offload_size=bad))
    with pytest.raises(ValueError):
        Miniport(max_send_output=0)


def test_encrypt_mss_1_writes_each_send_and_stays_within_the_cap(tmp_path):
    """encrypt --mss 1 on 20 KB TCP packets: every miniport send stays within the output cap
    (here 2 MiB), and every segment reaches the output capture."""
    import json

    from ipsecoffload.io.capture import encrypt_capture
    from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, read_pcap, write_pcap
    from ipsecoffload.io.safile import load_sa_file
    sa_file = tmp_path / "sa.json"
    sa_file.write_text(json.dumps([{"name": "gcm", "selector": {"proto": "tcp"},
                                    "spi": "0x6101", "encryption": "aes-gcm-128",
                                    "key": (KEY + SALT).hex()}]))
    ether = b"\x02\0\0\0\0\xbb\x02\0\0\0\0\xaa\x08\x00"
    frames = [ether + _tcp_packet(20000, seq=i) for i in range(6)]
    plain = tmp_path / "plain.pcap"
    write_pcap(plain, LINKTYPE_ETHERNET, frames, [1_700_000_000_000_000_000 + i
                                                  for i in range(6)])
    cap = 2 << 20
    nic = Miniport(max_send_output=cap)
    sizes = []
    original = nic.send

    def send(batch):
        result = original(batch)
        sizes.append(len(result.wire.arena))
        return result
    nic.send = send  # type: ignore[method-assign]
    summary = encrypt_capture(plain, tmp_path / "out.pcap", load_sa_file(sa_file), mss=1,
                              miniport=nic)
    assert summary.as_dict()["packets_in"] == 6
    assert len(sizes) >= 2 and max(sizes) <= cap
    out = read_pcap(tmp_path / "out.pcap")
    records = out[1] if isinstance(out, tuple) else out
    assert len(records) == 6 * 20000


def test_output_bounds_compiled_equals_its_twin():
    """The compiled output_bounds gives host/stack.py output_bound's figures on random batches:
    LSOv1 and LSOv2 NBLs (MSS 0 included), several NET_BUFFERs per NBL, empty ones."""
    import random

    from ipsecoffload.datapath.layout import NBL_OOB_DTYPE
    from ipsecoffload.host import stack as stack_module
    from ipsecoffload.host.tx_frame import kernels
    fast = kernels()
    if fast is None:
        pytest.skip("the compiled kernels are not built (pure-Python mode)")
    rng = random.Random(11)
    arena = np.zeros(262143, np.uint8)
    for _ in range(300):
        n_nbl = rng.randint(0, 12)
        counts = [rng.choice((0, 1, 1, 1, 2, 3)) for _ in range(n_nbl)]
        nb_len = [rng.choice((0, 40, 60, 1500, 9000, 64000, 262143)) for _ in range(sum(counts))]
        oob = np.zeros(n_nbl, NBL_OOB_DTYPE)
        oob["nb_count"] = counts
        oob["first_nb"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32) \
            if n_nbl else []
        for k in range(n_nbl):
            if rng.random() < 0.5:
                mss = rng.choice((0, 1, 536, 1448, 0xFFFFF))
                tcp_off = rng.choice((0, 20, 40, 54, 1023))
                oob["lso_info"][k] = mss | (tcp_off << 20) | (rng.choice((0, 1)) << 31)
        nb_nbl = np.repeat(np.arange(n_nbl, dtype=np.int32), counts)
        batch = PacketBatch(arena, np.zeros(len(nb_len), np.int64), np.asarray(nb_len, np.int64),
                            nb_nbl, n_nbl=n_nbl, oob=oob)
        bounds, total = fast.output_bounds(batch)
        want = stack_module.output_bound(batch)
        assert bounds.tolist() == want.tolist()
        assert total == int(want.sum())


def test_split_by_output_is_the_greedy_split():
    """split_bounds (split_by_output's cut, vectorised) cuts where a plain greedy loop over
    the NBLs cuts."""
    import random

    from ipsecoffload.host import stack as stack_module
    rng = random.Random(5)
    for _ in range(200):
        bounds = [rng.choice((1, 50, 999, 5000, 70000)) for _ in range(rng.randint(1, 40))]
        cap = rng.choice((1, 1000, 6000, 100000, 10**9))
        want, start, total = [], 0, 0
        for k, size in enumerate(bounds):
            if k > start and total + size > cap:
                want.append(list(range(start, k)))
                start, total = k, 0
            total += size
        want.append(list(range(start, len(bounds))))
        got = stack_module.split_bounds(np.asarray(bounds, np.int64), cap)
        assert [r.tolist() for r in got] == want
