"""AES-GCM / GMAC nonce safety on send (issue 11 item 2; docs/send-path.md, "Nonce
safety"): the NIC refuses an AEAD seal whose 64-bit SN the SA already sealed (a sealed
high-water mark per SA transform), an UPDATE_SA that moves an outbound SA's high word back,
and the stack fills fresh IVs for Miniport(iv_source="packet"). Compiled stages and twin."""
from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

from ipsecoffload import HostStack, Miniport, PacketBatch, SaConfig, _fastpath, ndis
from ipsecoffload.datapath import twin
from ipsecoffload.datapath.layout import NB_PLAN_DTYPE, STATUS_FAILURE, Reason

L2 = 14
GCM = dict(encryption="aes-gcm-128", key=bytes(range(20)))
GMAC = dict(encryption="null", integrity="aes-gmac-128", auth_key=bytes(range(20)))
AH_GMAC = dict(protocol="ah", integrity="aes-gmac-128", auth_key=bytes(range(20)))
CBC = dict(encryption="aes-cbc-128", key=bytes(16), integrity="hmac-sha1-96",
           auth_key=bytes(20))


def _ipv4(n: int = 40, seq: int = 1) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, seq, 0, 5 << 4, 0x18, 65535, 0, 0) + bytes(n)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])) + tcp


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def pure(request):
    return request.param


def _stack(pure: bool, **miniport) -> HostStack:
    return HostStack(Miniport(pure_python=pure, **miniport))


def _reasons(result) -> list:
    return [Reason(int(r)) for r in result.reasons]


def _copy(batch: PacketBatch) -> PacketBatch:
    return PacketBatch(batch.arena.copy(), batch.nb_off.copy(), batch.nb_len.copy(),
                       batch.nb_nbl.copy(), oob=batch.oob.copy())


@pytest.mark.parametrize("suite", [GCM, GMAC, AH_GMAC], ids=["gcm", "gmac", "ah-gmac"])
def test_the_same_nbl_sent_twice_fails_the_second_time(pure, suite):
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5001, **suite))
    batch = stack.build([_ipv4(), _ipv4()], sa)
    first = stack.miniport.send(_copy(batch))
    assert first.status.tolist() == [0, 0]
    again = stack.miniport.send(_copy(batch))
    assert again.status.tolist() == [STATUS_FAILURE] * 2
    assert _reasons(again) == [Reason.SEQ_REUSED] * 2
    assert again.wire.num_buffers == 0
    assert stack.miniport.counters["nb.SEQ_REUSED"] == 2
    # the stack's next frames go on above the mark
    assert stack.miniport.send(stack.build([_ipv4()], sa)).status.tolist() == [0]


def test_within_a_batch_sns_must_rise(pure):
    """Frames are checked in batch order: a repeat or a lower SN after a higher one fails."""
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5002, **GCM))
    three = stack.build([_ipv4(), _ipv4(), _ipv4()], sa)  # SNs 1, 2, 3
    order = [2, 0, 2, 1]  # SN 3, 1, 3, 2
    builder_frames = [three.frame(i) for i in order]
    oob = three.oob[order].copy()
    batch = PacketBatch.from_frames(builder_frames, l2_len=L2)
    batch = PacketBatch(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=oob)
    result = stack.miniport.send(batch)
    assert _reasons(result) == [Reason.OK, Reason.SEQ_REUSED, Reason.SEQ_REUSED,
                                Reason.SEQ_REUSED]
    assert result.status.tolist() == [0] + [STATUS_FAILURE] * 3


def test_cbc_frames_have_no_mark(pure):
    """AES-CBC + HMAC: a random IV per packet (RFC 3602), no nonce to repeat: a resent
    frame is sealed again (docs/send-path.md)."""
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5003, **CBC))
    batch = stack.build([_ipv4()], sa)
    assert stack.miniport.send(_copy(batch)).status.tolist() == [0]
    assert stack.miniport.send(_copy(batch)).status.tolist() == [0]


def test_an_esn_low_word_that_wraps_without_update_sa_fails(pure):
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5004, esn=True, seq=0xFFFFFFFF, **GCM))
    last = stack.build([_ipv4()], sa)  # SN 2^32 - 1 under high word 0
    assert stack.miniport.send(last).status.tolist() == [0]
    wrapped = stack.build([_ipv4()], sa)  # low word 0 .. with the high word still 0
    frame = bytearray(wrapped.frame(0))
    esp = L2 + 4 * int(wrapped.oob["esp_off4"][0])
    struct.pack_into("!I", frame, esp + 4, 5)  # low word 5: 64-bit SN 5 without UPDATE_SA
    result = stack.miniport.send(PacketBatch(np.frombuffer(bytes(frame), np.uint8), [0],
                                             [len(frame)], [0], oob=wrapped.oob.copy()))
    assert _reasons(result) == [Reason.SEQ_REUSED]
    # with UPDATE_SA to high word 1 (what HostStack.send does) it goes
    sa2 = stack.add_sa(SaConfig(spi=0x5005, esn=True, seq=0xFFFFFFFF, **GCM))
    assert stack.send([_ipv4(), _ipv4()], sa2).status.tolist() == [0, 0]


def test_an_lso_super_packet_takes_sn0_to_sn0_plus_n_minus_1(pure):
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5006, seq=10, **GCM))
    sup = stack.build_lso(_ipv4(3000), sa, 1000)  # 3 segments: SNs 10, 11, 12
    assert stack.miniport.send(sup).status.tolist() == [0]
    assert sa.next_seq == 13
    for sn, reason in ((12, Reason.SEQ_REUSED), (13, Reason.OK)):
        batch = stack.build([_ipv4()], sa)
        frame = bytearray(batch.frame(0))
        struct.pack_into("!I", frame, L2 + 20 + 4, sn)
        result = stack.miniport.send(PacketBatch(np.frombuffer(bytes(frame), np.uint8), [0],
                                                 [len(frame)], [0], oob=batch.oob.copy()))
        assert _reasons(result) == [reason]


def test_update_sa_never_moves_an_outbound_high_word_back(pure):
    nic = Miniport(pure_python=pure)
    config = SaConfig(spi=0x5007, esn=True, seq=(5 << 32) + 1, **GCM)

    def update(handle, seq_hi, inbound=False):
        return nic.update_sa(ndis.IpsecOffloadV2UpdateSa(
            offload_handle=handle, operation=ndis.IpsecOperation.ESP, spi=config.spi,
            sequence_number_high_order=seq_hi))
    out = config.add_sa_entry(False)
    assert nic.add_sa(out) == ndis.NdisStatus.SUCCESS
    assert update(out.offload_handle, 6) == ndis.NdisStatus.SUCCESS
    assert update(out.offload_handle, 6) == ndis.NdisStatus.SUCCESS  # the same: harmless
    assert update(out.offload_handle, 5) != ndis.NdisStatus.SUCCESS
    assert int(nic.sas.record(out.offload_handle)["xf"][0]["seq_hi"]) == 6
    inbound = config.add_sa_entry(False, inbound=True)
    assert nic.add_sa(inbound) == ndis.NdisStatus.SUCCESS
    assert update(inbound.offload_handle, 7) == ndis.NdisStatus.SUCCESS
    assert update(inbound.offload_handle, 4) == ndis.NdisStatus.SUCCESS  # receive may go back


def test_a_deleted_sa_has_no_mark_and_a_new_sa_in_its_slot_starts_afresh(pure):
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x5008, **GCM))
    batch = stack.build([_ipv4()], sa)
    assert stack.miniport.send(_copy(batch)).status.tolist() == [0]
    stack.remove_sa(sa)
    sa2 = stack.add_sa(SaConfig(spi=0x5008, **GCM))
    batch2 = stack.build([_ipv4()], sa2)  # SN 1 again, on a new SA (new handle, new key use)
    assert batch2.oob["offload_handle"][0] != batch.oob["offload_handle"][0]
    assert stack.miniport.send(batch2).status.tolist() == [0]


def _classified(kernels, stack, batch):
    table = stack.miniport.sas.snapshot()
    plans = np.zeros(len(batch.nb_off) * NB_PLAN_DTYPE.itemsize, np.uint8)
    kernels.tx_classify(batch, table.records_bytes, stack.miniport.config_bits(), 0, 0, plans)
    return table, plans


def test_tx_mark_compiled_and_twin_agree():
    """The stage alone, on the same plans and marks: same plans out, same marks, and a
    mark row of another handle fails the frame (UNKNOWN_HANDLE)."""
    stack = HostStack(Miniport())
    gcm = stack.add_sa(SaConfig(spi=0x5009, **GCM))
    cbc = stack.add_sa(SaConfig(spi=0x500A, **CBC))
    a = stack.build([_ipv4(), _ipv4()], gcm)
    b = stack.build([_ipv4()], cbc)
    frames = [a.frame(1), a.frame(0), b.frame(0), a.frame(1)]
    oob = np.concatenate([a.oob[[1, 0]], b.oob, a.oob[[1]]])
    batch = PacketBatch.from_frames(frames, l2_len=L2)
    batch = PacketBatch(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=oob)
    outs = []
    for kernels in (_fastpath, twin):
        table, plans = _classified(kernels, stack, batch)
        marks = stack.miniport.sas.tx_marks.copy()
        failed = kernels.tx_mark(batch, table.records_bytes, plans, marks)
        outs.append((failed, plans.tobytes(), marks.tobytes()))
        reasons = [Reason(int(r)) for r in plans.view(NB_PLAN_DTYPE)["reason"]]
        assert reasons == [Reason.OK, Reason.SEQ_REUSED, Reason.OK, Reason.SEQ_REUSED]
        slot = int(a.oob["offload_handle"][0]) & 0xFFFFF
        assert int(marks[4 * slot + 1]) == 2
        # another handle in the mark row: the SA was deleted after the snapshot
        table, plans = _classified(kernels, stack, batch)
        marks = stack.miniport.sas.tx_marks.copy()
        marks[4 * slot] = 0
        kernels.tx_mark(batch, table.records_bytes, plans, marks)
        reasons = [Reason(int(r)) for r in plans.view(NB_PLAN_DTYPE)["reason"]]
        assert reasons[0] == Reason.UNKNOWN_HANDLE and reasons[2] == Reason.OK
    assert outs[0] == outs[1]


def test_concurrent_sends_on_one_sa_never_seal_an_sn_twice():
    """Two threads send copies of the same frames: each SN leaves once."""
    stack = HostStack(Miniport())
    sa = stack.add_sa(SaConfig(spi=0x500B, **GCM))
    batch = stack.build([_ipv4() for _ in range(64)], sa)
    results = []

    def send():
        for _ in range(20):
            results.append(stack.miniport.send(_copy(batch)).status.tolist())
    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(status.count(0) for status in results) == 64


def _iv(batch: PacketBatch, i: int = 0) -> bytes:
    esp = L2 + 4 * int(batch.oob["esp_off4"][i])
    return batch.frame(i)[esp + 8:esp + 16]


@pytest.mark.parametrize("how", ["build", "send"])
def test_packet_ivs_are_fresh_unless_told_otherwise(pure, how):
    nic = Miniport(pure_python=pure, iv_source="packet")
    stack = HostStack(nic)
    sa = stack.add_sa(SaConfig(spi=0x500C, **GCM))
    if how == "build":
        batch = stack.build([_ipv4(), _ipv4()], sa)
        ivs = [_iv(batch, 0), _iv(batch, 1)]
    else:
        result = stack.send([_ipv4(), _ipv4()], sa)
        assert result.status.tolist() == [0, 0]
        ivs = [f[L2 + 20 + 8:L2 + 20 + 16] for f in result.wire.frames()]
    assert bytes(8) not in ivs and ivs[0] != ivs[1]
    given = stack.build([_ipv4()], sa, ivs=[b"\1" * 8])
    assert _iv(given) == b"\1" * 8  # the caller's IVs are kept
    keep = HostStack(Miniport(pure_python=pure, iv_source="packet"), fresh_ivs=False)
    sa2 = keep.add_sa(SaConfig(spi=0x500D, **GCM))
    assert _iv(keep.build([_ipv4()], sa2)) == bytes(8)
    # with NIC IVs the stack leaves the slot alone (the NIC writes it)
    nic_ivs = HostStack(Miniport(pure_python=pure))
    sa3 = nic_ivs.add_sa(SaConfig(spi=0x500E, **GCM))
    assert _iv(nic_ivs.build([_ipv4()], sa3)) == bytes(8)


def test_fresh_ivs_is_checked():
    with pytest.raises(TypeError, match="fresh_ivs"):
        HostStack(Miniport(), fresh_ivs="yes")


def test_send_batch_fills_fresh_packet_ivs_too():
    nic = Miniport(iv_source="packet")
    stack = HostStack(nic)
    sa = stack.add_sa(SaConfig(spi=0x500F, **GCM))
    sent = stack.send_batch([_ipv4(), _ipv4(), _ipv4()], sa)
    assert sent.result.status.tolist() == [0, 0, 0]
    ivs = [f[L2 + 20 + 8:L2 + 20 + 16] for f in sent.result.wire.frames()]
    assert bytes(8) not in ivs and len(set(ivs)) == 3


def test_bench_resend_times_sealing_not_refusals():
    """ipsecoffload bench and the benchmarks send one batch over and over: they clear the
    marks first (SaTable.reset_tx_marks), so every round seals."""
    from ipsecoffload.cli import bench
    miniport, frames = bench.prepared_send(64, 8)
    for _ in range(3):
        result = bench.resend(miniport, frames)
        assert result.status.tolist() == [0] * 8
    assert miniport.send(frames).status.tolist() == [STATUS_FAILURE] * 8  # without: refused


def test_fresh_ivs_fill_the_ah_gmac_iv_of_a_bundle(pure):
    """An AH+ESP bundle whose AH is AES-GMAC has two IV slots: with iv_source="packet" both
    get fresh IVs (a zero AH-GMAC IV in every packet would repeat the GMAC nonce, RFC 4543
    §3.1)."""
    nic = Miniport(pure_python=pure, iv_source="packet")
    stack = HostStack(nic)
    sa = stack.add_sa(SaConfig(spi=0x5010, protocol="ah+esp", **GCM, ah_spi=0x5011,
                               ah_integrity="aes-gmac-128", ah_auth_key=bytes(range(20))))
    result = stack.send([_ipv4(), _ipv4()], sa)
    assert result.status.tolist() == [0, 0]
    frames = result.wire.frames()
    ah = L2 + 20
    ah_ivs = [f[ah + 12:ah + 20] for f in frames]
    ah_len = (frames[0][ah + 1] + 2) * 4
    esp_ivs = [f[ah + ah_len + 8:ah + ah_len + 16] for f in frames]
    assert bytes(8) not in ah_ivs + esp_ivs
    assert len(set(ah_ivs)) == 2 and len(set(esp_ivs)) == 2


def test_reset_tx_marks_of_some_handles_only():
    nic = Miniport()
    stack = HostStack(nic)
    a = stack.add_sa(SaConfig(spi=0x5020, **GCM, src="10.0.0.1", dst="10.0.0.2"))
    b = stack.add_sa(SaConfig(spi=0x5021, **GCM, src="10.0.0.1", dst="10.0.0.2"))
    stack.send([_ipv4()], a)
    stack.send([_ipv4()], b)
    (ha,), (hb,) = a.handles.values(), b.handles.values()
    marks = nic.sas.tx_marks.reshape(-1, 4)
    slot_a, slot_b = ha & 0xFFFFF, hb & 0xFFFFF
    assert marks[slot_a][1] and marks[slot_b][1]
    nic.sas.reset_tx_marks([ha])
    assert marks[slot_a][1] == 0 and marks[slot_b][1] != 0
    assert marks[slot_a][0] == ha  # the handle stays: only what it sealed is forgotten
