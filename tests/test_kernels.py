"""The compiled stages (ipsecoffload._fastpath) against their pure-Python twin
(ipsecoffload.datapath.twin): the struct layouts and codes, the argument checks of every
stage, tx_emit's refusal of corrupt plans (tx_plan's, where it checks), tx_fixup's refusal of
ops outside the arena, op_groups, and hypothesis tests that run whole batches of good,
damaged and random frames through both, stage by stage and through run_send (one tx_run
call, which must equal the stages chained), and demand the same plans, bytes, frame and op
tables, statuses, completions, counters and sealed output.

Runs on the normal and on the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1): there a
stage access outside a buffer raises IndexError, which fails these tests. Known library bugs
are strict xfails whose reason names the bug: a fix turns them into failures.
"""
from __future__ import annotations

import random
import struct
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ipsecoffload import Miniport, PacketBatchBuilder, SaConfig, _fastpath, ndis
from ipsecoffload.crypto import backends_for
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath import layout, twin
from ipsecoffload.datapath.layout import (COUNTERS, CRYPTO_OP_DTYPE, NB_PLAN_DTYPE, NBL_OOB_DTYPE,
                                          REASON_COUNT, SA_RECORD_DTYPE, STATUS_FAILURE,
                                          STATUS_INVALID_PACKET, TRANSFORM_DTYPE,
                                          WIRE_FRAME_DTYPE, Config, Fixup, IcvSpace, IvSource,
                                          OpKind, OpStatus, Reason, Suite)
from ipsecoffload.datapath.tx import run_send
from ipsecoffload.inet import ones_complement_sum

KERNELS = [_fastpath, twin]
KERNEL_IDS = ["compiled", "python"]
ALL_CONFIG = int(Config.ESP_IPV4 | Config.ESP_IPV6 | Config.LSO_V1 | Config.LSO_V2_IPV4
                 | Config.LSO_V2_IPV6 | Config.LSO_WITH_IPSEC)
POSITION_FIELDS = ("out_pos", "frame0", "op0", "rand_off", "scratch_pos")  # what tx_plan adds
LSO_TYPE_BIT = 1 << 30


@pytest.fixture(params=KERNELS, ids=KERNEL_IDS)
def kernels(request):
    return request.param


def random_bytes(n: int) -> bytes:
    """A fixed 'random' source: the twins must see the same CBC IVs."""
    return bytes((i * 97 + 13) & 0xFF for i in range(n))


def exclusive_cumsum(values) -> np.ndarray:
    values = np.asarray(values, np.int64)
    out = np.zeros(len(values), np.int64)
    if len(values) > 1:
        np.cumsum(values[:-1], out=out[1:])
    return out


def known_bug(request, kernels, case: str, bugs: dict) -> None:
    """Marks this run strict-xfail when (kernels, case) is a known library bug (see the
    reason); strict, so a fix turns it into a failure that asks for the mark to go."""
    reason = bugs.get((KERNEL_IDS[KERNELS.index(kernels)], case))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- frames ------------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_header(ipv6: bool, proto: int, payload_len: int, ident: int = 0x1234) -> bytes:
    if ipv6:
        return (struct.pack("!IHBB", 6 << 28, payload_len & 0xFFFF, proto, 64)
                + bytes.fromhex("20010db8000000000000000000000001")
                + bytes.fromhex("20010db8000000000000000000000002"))
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, (20 + payload_len) & 0xFFFF, ident, 0, 64,
                       proto, 0, bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2]))
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:]


def link_header(ipv6: bool, l2: int) -> bytes:
    return (bytes(range(1, 13)) + struct.pack("!H", 0x86DD if ipv6 else 0x0800)
            + bytes(max(0, l2 - 14)))[:l2]


def esp_frame(sa: SaConfig, *, ipv6: bool, payload: bytes, nh: int = 17, seq: int = 1,
              l2: int = 14, icv_room: bool = True) -> tuple[bytes, dict]:
    """A non-LSO frame as the stack hands it over (docs/protocol.md section 3): trailer framed,
    ICV room."""
    pad = -(len(payload) + 2) % sa.align
    esp = (struct.pack("!II", sa.spi, seq & 0xFFFFFFFF) + bytes(range(0x40, 0x40 + sa.iv_len))
           + payload + bytes(range(1, pad + 1)) + bytes([pad, nh])
           + (bytes(sa.icv) if icv_room else b""))
    udp = b""
    if sa.udp_encap:
        udp = struct.pack("!HHHH", *sa.udp_encap, 8 + len(esp), 0)
    ip = ip_header(ipv6, 17 if udp else 50, len(udp) + len(esp))
    oob = dict(next_header=nh, pad_length=pad, esp_off4=(len(ip) + len(udp)) // 4, l2_len=l2)
    return link_header(ipv6, l2) + ip + udp + esp, oob


def lso_frame(sa: SaConfig, *, ipv6: bool, payload_len: int, mss: int, thl: int = 20,
              padl: int = 0, seq: int = 1, l2: int = 14, v2: bool = True,
              flags: int = 0x18) -> tuple[bytes, dict]:
    """An LSO super-packet (docs/protocol.md section 11): headers, ESP header, IV room, one
    TCP header, the whole payload, then `padl` discardable bytes; no trailer."""
    tcp = (struct.pack("!HHIIBBHHH", 1234, 443, 1000, 2000, (thl // 4) << 4, flags, 8192, 0,
                       0) + bytes(range(thl - 20)))
    body = tcp + bytes((i * 7) & 0xFF for i in range(payload_len)) + bytes(padl)
    esp = struct.pack("!II", sa.spi, seq & 0xFFFFFFFF) + bytes(sa.iv_len) + body
    udp = struct.pack("!HHHH", *sa.udp_encap, 8 + len(esp), 0) if sa.udp_encap else b""
    ip = ip_header(ipv6, 17 if udp else 50, len(udp) + len(esp))
    tcp_off = l2 + len(ip) + len(udp) + 8 + sa.iv_len
    lso = mss | (tcp_off << 20)
    if v2:
        lso |= (1 << 30) | (int(ipv6) << 31)
    oob = dict(next_header=6, pad_length=padl, esp_off4=(len(ip) + len(udp)) // 4, l2_len=l2,
               lso_info=lso)
    return link_header(ipv6, l2) + ip + udp + esp, oob


# -- an SA table with every suite ----------------------------------------------------------

def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 17) & 0xFF for i in range(n))


SUITES = [  # (SaConfig, ipv6 SA?)
    (SaConfig(spi=0x101, encryption="aes-gcm-128", key=_key(20, 1)), False),
    (SaConfig(spi=0x102, encryption="aes-gcm-192", key=_key(28, 2), icv_len=12, esn=True,
              seq=(7 << 32) | 1), True),
    (SaConfig(spi=0x103, encryption="aes-gcm-256", key=_key(36, 3), icv_len=8,
              udp_encap=(4500, 4500)), False),
    (SaConfig(spi=0x104, encryption="null", integrity="aes-gmac-128", auth_key=_key(20, 4)),
     False),
    (SaConfig(spi=0x105, encryption="null", integrity="aes-gmac-256", auth_key=_key(36, 5),
              esn=True, seq=(1 << 32) | 5, udp_encap=(4500, 4500)), True),
    (SaConfig(spi=0x106, encryption="aes-cbc-128", key=_key(16, 6), integrity="hmac-sha1-96",
              auth_key=_key(20, 6)), False),
    (SaConfig(spi=0x107, encryption="aes-cbc-256", key=_key(32, 7),
              integrity="hmac-sha256-128", auth_key=_key(32, 7), esn=True,
              seq=(0xFFFFFFFF << 32) | 9), True),
    (SaConfig(spi=0x108, encryption="aes-cbc-192", key=_key(24, 8), integrity="hmac-md5-96",
              auth_key=_key(16, 8), udp_encap=(4500, 4500)), False),
    (SaConfig(spi=0x109, encryption="null", integrity="hmac-sha1-96", auth_key=_key(20, 9)),
     False),
    (SaConfig(spi=0x10A, encryption="null", integrity="hmac-sha256-128", auth_key=_key(32, 10),
              udp_encap=(4500, 4500)), True),
]


def build_table():
    """A miniport with one SA per entry of SUITES, an inbound SA, and a stale handle whose
    slot now holds another SA."""
    mp = Miniport(random_source=random_bytes)
    stale_entry = SUITES[0][0].add_sa_entry(ipv6=False)
    assert mp.add_sa(stale_entry) == ndis.NdisStatus.SUCCESS
    assert mp.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=stale_entry.offload_handle)) \
        == ndis.NdisStatus.SUCCESS
    handles = []
    for sa, ipv6 in SUITES:
        entry = sa.add_sa_entry(ipv6=ipv6)
        assert mp.add_sa(entry) == ndis.NdisStatus.SUCCESS
        handles.append(entry.offload_handle)
    inbound = SUITES[0][0].add_sa_entry(ipv6=False, inbound=True)
    assert mp.add_sa(inbound) == ndis.NdisStatus.SUCCESS
    # the stale handle's slot was reused (handles differ only in the serial)
    assert stale_entry.offload_handle & 0xFFFFF in {h & 0xFFFFF for h in handles}
    return SimpleNamespace(mp=mp, handles=handles, stale=stale_entry.offload_handle,
                           inbound=inbound.offload_handle)


TABLE = build_table()


# -- recording what the stages produce -------------------------------------------------------

class RecordingBackend:
    """The reference backend, keeping each seal call (op indices, key context) and the
    arena and op table it was handed: the only view into tx_run's op table."""

    name = "recording"

    def __init__(self):
        self.inner = ReferenceBackend()
        self.calls = []
        self.arena = self.ops = None

    def seal(self, arena, ops, idx, keys):
        self.calls.append((np.array(idx, copy=True), keys))
        self.arena, self.ops = arena, ops
        self.inner.seal(arena, ops, idx, keys)


def _backends(backend) -> dict:
    return {int(suite): backend for suite in Suite}


def run_stages(module, batch, table, *, config, icv_space, iv_source):
    """The stages one by one, as tx_run chains them, keeping a copy of what each wrote: the
    classified and the planned plans, tx_plan's sizes and NBL outputs, the random bytes,
    tx_emit's arena, frame and op tables, the op groups, the sealed and the final arena."""
    rec = SimpleNamespace(sealed=None, groups=None, backend=RecordingBackend())
    records = table.records_bytes
    plans = np.empty(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    module.tx_classify(batch, records, int(config), int(icv_space), int(iv_source), plans)
    rec.classified = plans.copy()
    n_nbl = len(batch.oob_bytes) // NBL_OOB_DTYPE.itemsize
    status, lso_done = np.empty(n_nbl, np.uint32), np.empty(n_nbl, np.uint64)
    counters = np.empty(COUNTERS, np.int64)
    rec.sizes = tuple(module.tx_plan(batch, records, plans, status, lso_done, counters))
    rec.planned, rec.nbl_status, rec.lso_done, rec.counters = plans, status, lso_done, counters
    out_bytes, n_frames, n_ops, rand_bytes = rec.sizes
    out = np.empty(out_bytes, np.uint8)
    frames = np.empty(n_frames * WIRE_FRAME_DTYPE.itemsize, np.uint8)
    ops = np.empty(n_ops * CRYPTO_OP_DTYPE.itemsize, np.uint8)
    rec.rand = np.frombuffer(random_bytes(rand_bytes), np.uint8)
    module.tx_emit(batch, records, plans, rec.rand, out, frames, ops)
    rec.emitted = (out.copy(), frames.copy(), ops.copy())
    rec.frames = frames
    if n_ops:
        rec.groups = module.op_groups(ops)
        module.run_op_groups(out, ops, table.keys, _backends(rec.backend), "seal")
        rec.sealed = (out.copy(), ops.copy())
        module.tx_fixup(out, ops)
    rec.final = (out, ops)
    return rec


def run_both(batch, *, config=ALL_CONFIG, icv_space=IcvSpace.AUTO, iv_source=IvSource.NIC,
             table=None):
    """The batch through both kernels, stage by stage and through run_send (one tx_run
    call), sealed by the reference backend; checks that run_send is the stages chained.
    Returns (stages, result, table) per kernel."""
    table = table or TABLE.mp.sas.snapshot()
    results = []
    for module in KERNELS:
        rec = run_stages(module, batch, table, config=config, icv_space=icv_space,
                         iv_source=iv_source)
        backend = RecordingBackend()
        result = run_send(batch, table, config=config, icv_space=icv_space,
                          iv_source=iv_source, kernels=module, backends=_backends(backend),
                          random_source=random_bytes)
        rec.run_send_backend = backend
        assert_run_send_is_the_stages(rec, result)
        results.append((rec, result, table))
    return results


def assert_run_send_is_the_stages(rec, result):
    out, ops = rec.final
    # the stages' arena holds the frames, then the AH scratch; the wire the frames
    _same_arrays(result.wire.arena, out[:len(result.wire.arena)])
    assert result.wire.table.tobytes() == rec.frames.tobytes()
    assert result.plans.tobytes() == rec.planned.tobytes()
    _same_arrays(result.status, rec.nbl_status)
    _same_arrays(result.lso_complete, rec.lso_done)
    _same_arrays(result.counters, rec.counters)
    backend = rec.run_send_backend
    assert len(backend.calls) == len(rec.backend.calls)
    for (idx, keys), (want_idx, want_keys) in zip(backend.calls, rec.backend.calls):
        _same_arrays(np.asarray(idx), np.asarray(want_idx))
        assert keys is want_keys
    if backend.calls:  # the op table tx_run sealed and fixed up
        # the wire is the arena, or its frames when an AH scratch follows them
        assert backend.arena is result.wire.arena or result.wire.arena.base is backend.arena
        assert np.asarray(backend.ops).tobytes() == ops.tobytes()
    else:
        assert len(ops) == 0


def _same_arrays(a, b) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same(results, batch):
    """Both kernels made the same plans (every field), bytes, frame and op tables (every
    field), statuses, completions, counters and op groups, and the same sealed output."""
    (rc, c, table), (rp, p, _) = results
    _same_arrays(rc.classified, rp.classified)
    _same_arrays(rc.planned, rp.planned)
    assert rc.sizes == rp.sizes
    for name in ("nbl_status", "lso_done", "counters", "rand"):
        _same_arrays(getattr(rc, name), getattr(rp, name))
    for a, b in zip(rc.emitted, rp.emitted):
        _same_arrays(a, b)
    assert (rc.groups is None) == (rp.groups is None)
    if rc.groups is not None:
        for a, b in zip(rc.groups, rp.groups):
            _same_arrays(a, b)
        _check_groups(rc.emitted[2], *rc.groups)
    for (idx_c, keys_c), (idx_p, keys_p) in zip(rc.backend.calls, rp.backend.calls):
        _same_arrays(np.asarray(idx_c), np.asarray(idx_p))
        assert keys_c is keys_p
    assert len(rc.backend.calls) == len(rp.backend.calls)
    assert (rc.sealed is None) == (rp.sealed is None)
    if rc.sealed is not None:
        for a, b in zip(rc.sealed, rp.sealed):
            _same_arrays(a, b)
    for a, b in zip(rc.final, rp.final):
        _same_arrays(a, b)
    for name in ("status", "reasons", "lso_complete", "counters"):
        _same_arrays(getattr(c, name), getattr(p, name))
    assert c.segments_per_slot == p.segments_per_slot
    _same_arrays(c.wire.arena, p.wire.arena)
    _same_arrays(c.wire.table, p.wire.table)
    _same_arrays(c.wire.oob, p.wire.oob)
    for name in ("nb_off", "nb_len", "nb_nbl", "nb_src"):
        assert np.array_equal(getattr(c.wire, name), getattr(p.wire, name))
    assert_well_formed(c, rc, batch, table)


def random_iv_bytes(p, records) -> int:
    """Random IV bytes a plan takes: NIC IVs of a CBC transform (GCM/GMAC IVs are the SN)."""
    slot = int(p["slot"])
    if slot < 0 or slot >= len(records) or not p["fresh_iv"]:
        return 0
    xf = records[slot]["xf"][0]
    if int(xf["suite"]) in (Suite.AES_GCM, Suite.AES_GMAC, Suite.AH_GMAC):
        return 0
    return int(p["nsegs"]) * int(xf["iv_len"])


def _status_bucket(status: int) -> int:
    return {0: 0, STATUS_FAILURE: 1, STATUS_INVALID_PACKET: 2}.get(int(status), 3)


def assert_well_formed(result, rec, batch, table):
    """What run_send returned is what the plans say: every output frame inside the output
    arena, back to back; tx_plan's positions, NBL failure propagation, completion values and
    counters; one op per protected segment, naming its frame, transform and ICV; no frame of
    a failed NBL; the NBL status is the status of its buffers' plans."""
    wire = result.wire
    assert np.all(wire.nb_off >= 0) and np.all(wire.nb_len >= 0)
    assert np.all(wire.nb_off + wire.nb_len <= len(wire.arena))
    assert int(wire.nb_len.sum()) == len(wire.arena)
    assert np.array_equal(wire.nb_off, exclusive_cumsum(wire.nb_len))
    failed = np.flatnonzero(result.status != 0)
    assert not np.isin(wire.nb_nbl, failed).any()
    assert np.all(np.diff(wire.nb_nbl) >= 0) if len(wire.nb_nbl) > 1 else True
    for i in range(batch.num_buffers):
        k = int(batch.nb_nbl[i])
        reason = Reason(int(result.reasons[i]))
        produced = int(np.count_nonzero(wire.nb_nbl == k))
        if result.status[k]:
            assert reason not in (Reason.OK, Reason.PASS_NO_HANDLE, Reason.PASS_DISABLED)
            assert produced == 0
        else:
            assert reason in (Reason.OK, Reason.PASS_NO_HANDLE, Reason.PASS_DISABLED)
            assert produced >= 1

    records = table.records
    classified = rec.classified.view(NB_PLAN_DTYPE)
    plan = rec.planned.view(NB_PLAN_DTYPE)
    frames = wire.table
    # tx_plan: an NBL with a failing buffer fails whole, with its first failing status
    for k in range(len(batch)):
        mine = np.flatnonzero(batch.nb_nbl == k)
        first = next((int(classified[i]["status"]) for i in mine if classified[i]["status"]), 0)
        assert int(result.status[k]) == int(rec.nbl_status[k]) == first
        for i in mine:
            before, after = classified[i].copy(), plan[i]
            for name in POSITION_FIELDS:
                before[name] = after[name]
            if first and not classified[i]["status"]:
                assert after["reason"] == Reason.NBL_FAILED and after["status"] == first
                for name, value in (("status", first), ("reason", Reason.NBL_FAILED),
                                    ("nsegs", 0), ("out_len", 0)):
                    before[name] = value
            assert before.tobytes() == after.tobytes()  # nothing else changed
            if first:
                assert after["nsegs"] == 0 and after["out_len"] == 0
    # tx_plan: positions, and the sizes it returned
    out_pos = frame0 = op0 = rand_off = scratch = 0
    for i, p in enumerate(plan):
        assert tuple(int(p[name]) for name in POSITION_FIELDS) == (out_pos, frame0, op0,
                                                                    rand_off, scratch)
        nsegs = int(p["nsegs"])
        mine = frames[frame0:frame0 + nsegs]
        assert len(mine) == nsegs
        assert np.all(mine["nb"] == i) and np.all(mine["nbl"] == batch.nb_nbl[i])
        if nsegs:
            assert mine["off"][0] == out_pos and int(mine["len"].sum()) == int(p["out_len"])
        out_pos += int(p["out_len"])
        frame0 += nsegs
        if p["slot"] >= 0:  # one op per layer; AH segments copy their header region
            op0 += nsegs * int(records[int(p["slot"])]["n_xf"])
            if p["ah_off"]:
                scratch += nsegs * (int(p["ah_off"]) + int(p["ah_len"]) - int(p["ip_off"]))
            if p["nested"]:  # transport over tunnel: the transport SA's layers too
                op0 += int(records[int(p["in_slot"])]["n_xf"])
                if p["in_ah_off"]:
                    scratch += int(p["in_ah_off"]) + int(p["in_ah_len"]) - int(p["in_ip_off"])
                xf = records[int(p["in_slot"])]["xf"][0]
                if p["in_fresh_iv"] and int(xf["suite"]) not in (
                        Suite.AES_GCM, Suite.AES_GMAC, Suite.AH_GMAC):
                    rand_off += int(xf["iv_len"])
        rand_off += random_iv_bytes(p, records)
    # tx_plan's output arena: the frames, then the AH scratch
    assert rec.sizes == (out_pos + scratch, frame0, op0, rand_off)
    assert (out_pos, frame0, rand_off) == (len(wire.arena), len(frames), len(rec.rand))
    # tx_plan: counters and LSO completion values
    counters = result.counters
    assert np.array_equal(counters, rec.counters) and len(counters) == COUNTERS
    assert np.array_equal(counters[:REASON_COUNT],
                          np.bincount(plan["reason"], minlength=REASON_COUNT))
    assert np.array_equal(counters[REASON_COUNT:], np.bincount(
        [_status_bucket(s) for s in result.status], minlength=COUNTERS - REASON_COUNT))
    for k in range(len(batch)):
        lso = int(batch.lso_info[k])
        mine = plan[batch.nb_nbl == k]
        if not lso:
            want = 0
        elif lso & LSO_TYPE_BIT:
            want = LSO_TYPE_BIT  # LSOv2 completion keeps only its type
        elif result.status[k]:
            want = 0
        else:  # LSOv1: the TCP payload sent
            want = int(mine["body_len"][mine["lso"] != 0].sum()) & (LSO_TYPE_BIT - 1)
        assert int(result.lso_complete[k]) == int(rec.lso_done[k]) == want
    # tx_emit: one op per protected segment; sealed (status) after the backends
    ops = rec.final[1].view(CRYPTO_OP_DTYPE)
    emitted_ops = rec.emitted[2].view(CRYPTO_OP_DTYPE)
    assert len(ops) == op0
    assert np.all(emitted_ops["status"] == OpStatus.PENDING)
    assert np.all(ops["status"] == OpStatus.DONE)
    for i, p in enumerate(plan):
        if p["slot"] < 0 or not p["nsegs"]:
            continue
        if p["nested"]:  # transport layer in passes 0-1, the tunnel layer in 2-3
            n = int(records[int(p["slot"])]["n_xf"]) + int(records[int(p["in_slot"])]["n_xf"])
            mine = ops[int(p["op0"]):int(p["op0"]) + n]
            assert np.all(mine["frame"] == int(p["frame0"]))
            assert sorted(mine["pass_no"].tolist())[-1] >= 2
            continue
        sa = records[int(p["slot"])]
        n_xf = int(sa["n_xf"])
        xf, ah = sa["xf"][0], None
        if int(xf["proto"]) == layout.PROTO_AH:
            xf, ah = None, xf
        elif n_xf == 2:
            ah = sa["xf"][1]
        for s in range(int(p["nsegs"])):
            f = int(p["frame0"]) + s
            start, end = int(frames[f]["off"]), int(frames[f]["off"] + frames[f]["len"])
            k = int(p["op0"]) + s * n_xf
            if xf is not None:
                _check_esp_op(ops[k], p, xf, s, f, start, end, wire)
                k += 1
            if ah is not None:
                _check_ah_op(ops[k], p, ah, f, start, end, len(wire.arena),
                             1 if xf is not None else 0)


def _check_esp_op(op, p, xf, s, f, start, end, wire):
    iv_len, icv_len = int(xf["iv_len"]), int(xf["icv_len"])
    assert op["kind"] == OpKind.ESP_SEAL and op["pass_no"] == 0 and op["frame"] == f
    assert op["auth_off"] == start + int(p["esp_off"])
    assert op["ip_off"] == start + int(p["ip_off"])
    assert op["text_off"] == op["auth_off"] + 8 + iv_len
    assert op["icv_off"] + icv_len == end
    assert op["text_len"] == op["icv_off"] - op["text_off"]
    for name in ("key_row", "suite", "integ", "iv_len", "icv_len", "esn"):
        assert op[name] == xf[name], name
    assert op["seq_hi"] == (int(p["sn64"]) + s) >> 32
    udp6 = bool(xf["udp_encap"]) and bool(p["ipv6"])
    assert op["fixup"] == (Fixup.UDP6_CHECKSUM if udp6 else Fixup.NONE)
    sn = struct.unpack_from("!I", wire.arena, int(op["auth_off"]) + 4)[0]
    assert sn == (int(p["sn64"]) + s) & 0xFFFFFFFF
    if int(xf["suite"]) in (Suite.AES_GCM, Suite.AES_GMAC):
        iv = wire.arena[int(op["auth_off"]) + 8:int(op["text_off"])].tobytes()
        assert op["nonce"].tobytes() == xf["salt"].tobytes() + iv
    else:
        assert not op["nonce"].any()


def _check_ah_op(op, p, ah, f, start, end, frames_bytes, pass_no):
    """An AH sign op: its zeroed header copy in the scratch after the frames, the rest of
    its frame after the AH header, the ICV after the SPI, SN and IV."""
    ah_off, ah_len, ip = int(p["ah_off"]), int(p["ah_len"]), int(p["ip_off"])
    assert op["kind"] == OpKind.AH_SIGN and op["pass_no"] == pass_no and op["frame"] == f
    assert op["ip_off"] == start + ip
    assert op["text_off"] == start + ah_off + ah_len and op["text_off"] + op["text_len"] == end
    assert op["icv_off"] == start + ah_off + 12 + int(ah["iv_len"])
    assert op["auth_off"] >= frames_bytes  # the scratch
    for name in ("key_row", "suite", "integ", "iv_len", "icv_len", "esn"):
        assert op[name] == ah[name], name
    assert op["fixup"] == Fixup.NONE


# -- layout and codes ------------------------------------------------------------------------

STRUCT_DTYPES = {"NblOob": NBL_OOB_DTYPE, "Transform": TRANSFORM_DTYPE,
                 "SaRecord": SA_RECORD_DTYPE, "NbPlan": NB_PLAN_DTYPE,
                 "WireFrame": WIRE_FRAME_DTYPE, "CryptoOp": CRYPTO_OP_DTYPE,
                 "RxSaKey": layout.RX_SA_KEY_DTYPE, "RxState": layout.RX_STATE_DTYPE,
                 "RxPlan": layout.RX_PLAN_DTYPE, "RxWindow": layout.RX_WINDOW_DTYPE}


def test_structs_pxi_is_generated_from_the_pxd():
    """datapath/structs.pxi lists every struct and field of _fastpath.pxd (tools/gen_structs.py)."""
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "tools" / "gen_structs.py").exists():
        pytest.skip("not a source checkout (tools/ is not installed)")
    done = subprocess.run([sys.executable, "tools/gen_structs.py", "--check"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_struct_sizes_match_the_dtypes():
    assert _fastpath.STRUCT_SIZES == {name: dtype.itemsize
                                      for name, dtype in STRUCT_DTYPES.items()}
    assert twin.STRUCT_SIZES == _fastpath.STRUCT_SIZES


@pytest.mark.parametrize("struct_name", list(STRUCT_DTYPES))
def test_struct_offsets_match_the_dtypes(struct_name):
    dtype = STRUCT_DTYPES[struct_name]
    offsets = _fastpath.struct_offsets()[struct_name]
    assert offsets == {name: dtype.fields[name][1] for name in dtype.names}


def test_struct_offsets_cover_every_struct():
    assert set(_fastpath.struct_offsets()) == set(STRUCT_DTYPES)


def test_the_sa_record_holds_two_transforms():
    xf = SA_RECORD_DTYPE.fields["xf"][0]
    assert xf.base == TRANSFORM_DTYPE and xf.shape == (2,)
    assert xf.itemsize == 2 * _fastpath.STRUCT_SIZES["Transform"]


def test_reason_codes_fit_the_plan_field():
    assert max(Reason) < 256 and sorted(Reason) == list(range(len(Reason)))
    assert REASON_COUNT == len(Reason)


def test_counter_layout_matches():
    assert _fastpath.COUNTERS == twin.COUNTERS == COUNTERS
    assert COUNTERS == REASON_COUNT + len(layout.STATUS_COUNTER_NAMES)
    # tx_plan's status counters, in layout.STATUS_COUNTER_NAMES order
    status_counters = {m.name: int(m) for m in _fastpath.StatusCounter}
    assert status_counters == {"COUNT_SUCCESS": 0, "COUNT_FAILURE": 1,
                               "COUNT_INVALID_PACKET": 2, "COUNT_OTHER_STATUS": 3,
                               "STATUS_COUNTERS": 4}
    assert layout.STATUS_COUNTER_NAMES == ("SUCCESS", "FAILURE", "INVALID_PACKET", "OTHER")


# (cpdef enum of _fastpath.pxd, prefix of its members, the Python enum of layout.py)
ENUMS = [("Suite", "SUITE_", layout.Suite), ("Integrity", "INTEG_", layout.Integrity),
         ("IcvSpace", "ICV_SPACE_", layout.IcvSpace), ("IvSource", "IV_SOURCE_", layout.IvSource),
         ("Config", "CFG_", layout.Config), ("Reason", "REASON_", layout.Reason),
         ("OpKind", "OP_", layout.OpKind), ("OpStatus", "OP_", layout.OpStatus),
         ("Fixup", "FIXUP_", layout.Fixup), ("RxReason", "RX_", layout.RxReason),
         ("CryptoStatusCode", "CRYPTO_", ndis.CryptoStatus), ("RxConfig", "RXCFG_", layout.RxConfig),
         ("Delivery", "DELIVERY_", layout.Delivery)]
# codes with no Python enum: C name -> layout value
EXTRA_CODES = {"Reason": {"REASON_COUNT": layout.REASON_COUNT},
               "RxReason": {"RX_REASON_COUNT": layout.RX_REASON_COUNT},
               "IpProto": {"PROTO_ESP": layout.PROTO_ESP, "PROTO_AH": layout.PROTO_AH},
               "NatT": {"NAT_T_PORT": layout.NAT_T_PORT,
                        "NAT_T_MAX_PORTS": layout.NAT_T_MAX_PORTS}}


def _expected_codes(c_enum: str) -> dict[str, int]:
    """C member name -> the value layout.py gives it."""
    codes = {prefix + member.name: int(member.value)
             for name, prefix, py_enum in ENUMS if name == c_enum for member in py_enum}
    codes.update({name: int(value) for name, value in EXTRA_CODES.get(c_enum, {}).items()})
    return codes


C_ENUMS = [name for name, _, _ in ENUMS] + ["IpProto", "NatT"]


@pytest.mark.parametrize("c_enum", C_ENUMS)
def test_cpdef_enum_codes_equal_the_layout_values(c_enum):
    """Every code of the cpdef enum, by name, has the layout.py value, and the other way
    round: no code on one side only."""
    compiled = {member.name: int(member.value) for member in getattr(_fastpath, c_enum)}
    assert compiled == _expected_codes(c_enum)


def test_every_cpdef_enum_is_checked():
    enums = {name for name in dir(_fastpath)
             if isinstance(getattr(_fastpath, name), type)
             and issubclass(getattr(_fastpath, name), int) and name[0].isupper()}
    # the host framing and capture scan codes: tests/test_e2e.py checks them
    assert enums - {"StatusCounter", "PktKind", "PktFault", "ScanStatus"} == set(C_ENUMS)


@pytest.mark.parametrize("c_enum", C_ENUMS)
def test_cpdef_enum_codes_are_module_attributes(c_enum):
    """Each code is also a module attribute: _fastpath.REASON_OK == layout.Reason.OK."""
    for name, value in _expected_codes(c_enum).items():
        assert getattr(_fastpath, name) == value, name


def test_the_twin_uses_the_layout_codes():
    """The twin has no codes of its own: every enum its stage modules name is layout's."""
    import enum
    import importlib
    layout_enums = {value for value in vars(layout).values()
                    if isinstance(value, type) and issubclass(value, enum.Enum)}
    seen = 0
    for stage in ("common", "tx_classify", "tx_plan", "tx_emit", "tx_fixup", "op_groups"):
        module = importlib.import_module(f"ipsecoffload.datapath.twin.{stage}")
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, enum.Enum):
                assert value in layout_enums, f"{stage}.{name}"
                seen += 1
    assert seen


# -- fixed batches through both twins ----------------------------------------------------------

def _good_batch():
    builder = PacketBatchBuilder()
    for (sa, ipv6), handle in zip(SUITES, TABLE.handles):
        for icv_room in (True, False):
            frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(range(37)), seq=sa.seq,
                                   icv_room=icv_room)
            builder.add_nbl([frame], offload_handle=handle, **oob)
        frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=1000, mss=300, padl=3, seq=sa.seq)
        builder.add_nbl([frame], offload_handle=handle, **oob)
    return builder.build()


@pytest.mark.parametrize("icv_space", list(IcvSpace), ids=lambda v: v.name.lower())
@pytest.mark.parametrize("iv_source", list(IvSource), ids=lambda v: v.name.lower())
def test_good_frames_every_suite(icv_space, iv_source):
    batch = _good_batch()
    results = run_both(batch, icv_space=icv_space, iv_source=iv_source)
    assert_same(results, batch)
    result = results[0][1]
    ok = result.reasons == Reason.OK
    if icv_space == IcvSpace.AUTO:
        assert ok.all()
    else:  # one of each pair of non-LSO frames has the ICV room the policy does not expect
        assert ok.sum() == len(SUITES) * 2
        assert set(Reason(r) for r in result.reasons[~ok]) == {Reason.BAD_TRAILER}
    # each LSO super-packet of 1000 bytes at MSS 300 leaves as 4 segments
    lso = batch.lso_info != 0
    counts = np.bincount(result.wire.nb_nbl, minlength=len(batch))
    assert set(counts[lso & (result.status == 0)]) <= {4}
    # every suite was sealed, so every backend group ran
    suites = {int(row[4]) for row in results[0][0].groups[1]}
    assert suites == {int(s) for s in Suite if s not in (Suite.NONE, Suite.AH_HMAC,
                                                          Suite.AH_GMAC, Suite.AES_CBC)}


def test_empty_batch(kernels):
    batch = PacketBatchBuilder().build()
    result = run_send(batch, TABLE.mp.sas.snapshot(), config=ALL_CONFIG,
                      icv_space=IcvSpace.AUTO, iv_source=IvSource.NIC, kernels=kernels,
                      backends=backends_for(kernels, ReferenceBackend()),
                      random_source=random_bytes)
    assert len(result.status) == 0 and result.wire.num_buffers == 0
    assert len(result.wire.arena) == 0 and not result.counters.any()
    assert len(result.counters) == COUNTERS


# -- hypothesis: random batches through both twins --------------------------------------------

U64 = st.integers(0, 2**64 - 1)


def rarely(draw, n: int) -> bool:
    """True about once in n draws (hypothesis favours early list items: False first)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


@st.composite
def nbls(draw, damage: bool = True):
    """One NBL: a good ESP or LSO frame of a random SA, then (``damage``) damaged at
    random, or bytes."""
    index = draw(st.integers(0, len(SUITES) - 1))
    sa, sa_ipv6 = SUITES[index]
    ipv6 = not sa_ipv6 if damage and rarely(draw, 20) else sa_ipv6
    l2 = draw(st.sampled_from([14, 14, 0, 18]))
    kinds = ["esp", "lso", "esp", "lso", "esp", "lso"] + (["bytes"] if damage else [])
    kind = draw(st.sampled_from(kinds))
    seq = draw(st.sampled_from([sa.seq] * 12 + [0, 1, 0xFFFFFFFF, 0xFFFFFFFE])) if damage \
        else sa.seq
    if kind == "esp":
        # the buffers of one NBL share its OOB info: same next header and pad length
        frames, oob = [], {}
        nh, size = draw(st.sampled_from([6, 17, 4, 41, 59])), draw(st.integers(0, 90))
        # good frames: payload bytes >= 0x80 never look like (pad length, next header), so
        # the icv_space=auto probe (docs/spec-gaps.md G4) cannot mistake payload for a trailer
        byte = st.integers(0, 255) if damage else st.integers(0x80, 0xFF)
        for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
            payload = bytes(draw(st.lists(byte, min_size=size, max_size=size)))
            frame, oob = esp_frame(sa, ipv6=ipv6, payload=payload, seq=seq, l2=l2, nh=nh,
                                   icv_room=draw(st.booleans()))
            frames.append(frame)
    elif kind == "lso":
        mss = draw(st.sampled_from([536, 100, 1460, 64, 7, 2, 1, 0xFFFFF]
                                   + ([0] if damage else [])))
        payload_len = draw(st.integers(0, 160 if mss < 8 else 1500))
        frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=payload_len, mss=mss,
                               thl=draw(st.sampled_from([20, 32, 60])),
                               padl=draw(st.integers(0, 5)), seq=seq, l2=l2,
                               # NDIS LSOv1 is IPv4 only: a good IPv6 frame uses LSOv2
                               v2=draw(st.booleans()) or (ipv6 and not damage),
                               flags=draw(st.integers(0, 255)))
        frames = [frame]
    else:
        frames = [draw(st.binary(min_size=0, max_size=200))]
        oob = dict(next_header=draw(st.integers(0, 255)), pad_length=draw(st.integers(0, 255)),
                   esp_off4=draw(st.integers(0, 255)), l2_len=l2)
    if not damage:
        oob["offload_handle"] = TABLE.handles[index]
        return frames, oob
    if rarely(draw, 8):
        cut = draw(st.integers(0, len(frames[-1])))
        frames[-1] = frames[-1][:cut]
    if rarely(draw, 4):
        for _ in range(draw(st.integers(1, 3))):
            target = draw(st.integers(0, len(frames) - 1))
            if frames[target]:
                pos = draw(st.integers(0, len(frames[target]) - 1))
                frames[target] = (frames[target][:pos] + bytes([draw(st.integers(0, 255))])
                                  + frames[target][pos + 1:])
    handle = draw(st.sampled_from(
        [TABLE.handles[index]] * 8 + [0, TABLE.stale, TABLE.inbound,
                                      TABLE.handles[(index + 1) % len(SUITES)]]))
    if rarely(draw, 20):
        handle = draw(U64)
    oob["offload_handle"] = handle
    if rarely(draw, 20):
        oob["tunnel_handle"] = draw(st.sampled_from([TABLE.handles[index], 1, 2**64 - 1]))
    if rarely(draw, 10):
        oob["esp_off4"] = draw(st.integers(0, 255))
    if rarely(draw, 10):
        oob["pad_length"] = draw(st.integers(0, 255))
    if rarely(draw, 10):
        oob["next_header"] = draw(st.integers(0, 255))
    if rarely(draw, 20):
        oob["ah_off4"] = draw(st.integers(1, 255))
    if rarely(draw, 12):
        oob["lso_info"] = draw(st.one_of(U64, st.integers(0, 2**32 - 1)))
    if rarely(draw, 20):
        oob["l2_len"] = draw(st.sampled_from([0, 1, 13, 15, 64, 65535]))
    if rarely(draw, 12):
        oob["checksum_info"] = draw(U64)
    return frames, oob


@st.composite
def batches(draw, damage: bool = True):
    builder = PacketBatchBuilder()
    for frames, oob in draw(st.lists(nbls(damage), min_size=1, max_size=5)):
        builder.add_nbl(frames, **oob)
    return builder.build()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), config=st.one_of(st.just(ALL_CONFIG), st.just(ALL_CONFIG),
                                         st.integers(0, 63)),
       icv_space=st.sampled_from(list(IcvSpace)), iv_source=st.sampled_from(list(IvSource)))
def test_twins_agree_on_random_batches(batch, config, icv_space, iv_source):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy overflow inside the twin
        results = run_both(batch, config=config, icv_space=icv_space, iv_source=iv_source)
    assert_same(results, batch)
    for reason in results[0][1].reasons:
        event(f"reason {Reason(int(reason)).name}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(damage=False), iv_source=st.sampled_from(list(IvSource)))
def test_twins_agree_on_good_batches(batch, iv_source):
    """Well-formed frames of every suite, LSO included: all sent, and sent alike."""
    results = run_both(batch, iv_source=iv_source)
    assert_same(results, batch)
    result = results[0][1]
    assert np.all(result.reasons == Reason.OK) and not result.status.any()
    lso = batch.lso_info != 0
    assert np.all(result.lso_complete[~lso] == 0)


def _send(kernels, batch, backends):
    return run_send(batch, TABLE.mp.sas.snapshot(), config=ALL_CONFIG, icv_space=IcvSpace.AUTO,
                    iv_source=IvSource.NIC, kernels=kernels, backends=backends,
                    random_source=random_bytes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_out_of_place_seal_equals_the_in_place_twin(batch):
    """tx_run seals AES-GCM ESP out of place (docs/send-path.md, "Out-of-place seal"): the
    batched backend reads the payloads from the batch's arena on its default GHASH path, the
    reference backend gets them copied in first (ops_gather). Both send exactly what the twin
    sends, which copies every payload and seals in place, LSO segments included."""
    want = _send(twin, batch, backends_for(twin, ReferenceBackend()))
    for backends in (backends_for(_fastpath), backends_for(_fastpath, ReferenceBackend())):
        got = _send(_fastpath, batch, backends)
        _same_arrays(got.status, want.status)
        _same_arrays(got.lso_complete, want.lso_complete)
        assert got.wire.table.tobytes() == want.wire.table.tobytes()
        _same_arrays(got.wire.arena, want.wire.arena)


def test_tx_emit_out_of_place_leaves_gcm_payloads_in_the_batch():
    """tx_emit(out_of_place=True) names each AES-GCM ESP op's payload in the source and does
    not write it; ops_gather then makes the op table and arena tx_emit writes in place."""
    batch = _good_batch()
    snap = TABLE.mp.sas.snapshot()
    records = snap.records_bytes
    plans = np.empty(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    _fastpath.tx_classify(batch, records, ALL_CONFIG, int(IcvSpace.AUTO), int(IvSource.NIC),
                          plans)
    n_nbl = len(batch.oob_bytes) // NBL_OOB_DTYPE.itemsize
    status, lso_done = np.empty(n_nbl, np.uint32), np.empty(n_nbl, np.uint64)
    counters = np.empty(COUNTERS, np.int64)
    out_bytes, n_frames, n_ops, rand_bytes = _fastpath.tx_plan(batch, records, plans, status,
                                                               lso_done, counters)
    rand = np.frombuffer(random_bytes(rand_bytes), np.uint8)
    emitted = []
    for out_of_place in (False, True):
        out = np.full(out_bytes, POISON, np.uint8)
        frames = np.empty(n_frames * WIRE_FRAME_DTYPE.itemsize, np.uint8)
        ops = np.empty(n_ops * CRYPTO_OP_DTYPE.itemsize, np.uint8)
        _fastpath.tx_emit(batch, records, plans, rand, out, frames, ops, out_of_place)
        emitted.append((out, ops))
    (out_in, ops_in), (out_oop, ops_oop) = emitted
    table = ops_oop.view(CRYPTO_OP_DTYPE)
    gcm = table["suite"] == Suite.AES_GCM
    assert gcm.any() and np.all(table["src_len"][gcm] > 0) and not table["src_len"][~gcm].any()
    assert not ops_in.view(CRYPTO_OP_DTYPE)["src_len"].any()
    for op in table[gcm]:  # the text's source part is left unwritten
        start = int(op["text_off"]) + int(op["src_at"])
        assert np.all(out_oop[start:start + int(op["src_len"])] == POISON)
        assert batch.arena[int(op["src_off"]):int(op["src_off"]) + int(op["src_len"])].tobytes() \
            == out_in[start:start + int(op["src_len"])].tobytes()
    _fastpath.ops_gather(out_oop, ops_oop, np.arange(n_ops, dtype=np.int32), batch.arena)
    assert ops_oop.tobytes() == ops_in.tobytes()
    _same_arrays(out_oop, out_in)


def test_out_of_place_ops_are_checked_before_any_copy():
    arena, src = np.zeros(64, np.uint8), np.arange(32, dtype=np.uint8)
    ops = np.zeros(1, CRYPTO_OP_DTYPE)
    ops["text_off"], ops["text_len"], ops["suite"] = 16, 32, Suite.AES_GCM
    for field, value in (("src_len", 33), ("src_at", 1), ("src_off", 1), ("src_len", -1)):
        bad = ops.copy()
        bad["src_len"] = 32
        bad[field] = value
        with pytest.raises(ValueError, match="source range"):
            _fastpath.ops_gather(arena, bad.view(np.uint8), np.zeros(1, np.int32), src)
        assert not arena.any()
    with pytest.raises(ValueError, match="names no op"):
        _fastpath.ops_gather(arena, ops.view(np.uint8), np.ones(1, np.int32), src)
    ops["src_len"] = 32  # out of place, but no source given: refused, not sealed as garbage
    with pytest.raises(ValueError, match="no source"):
        _fastpath.run_op_groups(arena, ops.view(np.uint8), (None,),
                                {int(Suite.AES_GCM): ReferenceBackend()}, "seal")
    assert not arena.any()


# -- the stages one by one -------------------------------------------------------------------

POISON = 0x5A
BIG = 1 << 22  # larger outputs are not allocated: tx_emit must then refuse the plan anyway


def batch_view(batch, **changes):
    """What the stages read of a batch, as a plain object (any such object will do)."""
    fields = dict(arena=batch.arena, nb_off=batch.nb_off, nb_len=batch.nb_len,
                  nb_nbl=batch.nb_nbl, oob_bytes=batch.oob_bytes)
    fields.update(changes)
    return SimpleNamespace(**fields)


def classify_into(kernels, batch, table, config=ALL_CONFIG, icv_space=IcvSpace.AUTO,
                  iv_source=IvSource.NIC):
    plans = np.zeros(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    kernels.tx_classify(batch, table.records_bytes, int(config), int(icv_space),
                        int(iv_source), plans)
    return plans


def plan_into(kernels, batch, table, plans):
    status = np.zeros(len(batch.oob_bytes) // NBL_OOB_DTYPE.itemsize, np.uint32)
    lso_done = np.zeros(len(status), np.uint64)
    counters = np.zeros(COUNTERS, np.int64)
    sizes = kernels.tx_plan(batch, table.records_bytes, plans, status, lso_done, counters)
    return sizes, status


def planned(kernels, batch, table, **classify):
    plans = classify_into(kernels, batch, table, **classify)
    sizes, status = plan_into(kernels, batch, table, plans)
    return plans, sizes, status


def _wrap64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def relayout(plans, table) -> tuple[int, int, int, int]:
    """Positions of every plan as tx_plan lays them out for the plans' own fields (so that a
    corrupt field meets tx_emit's own check, not a position mismatch); returns the sizes."""
    plan = plans.view(NB_PLAN_DTYPE)
    out = frames = ops = rand = 0
    for p in plan:
        p["out_pos"], p["frame0"], p["op0"], p["rand_off"] = (_wrap64(out), _wrap64(frames),
                                                              _wrap64(ops), _wrap64(rand))
        out += int(p["out_len"])
        frames += int(p["nsegs"])
        if p["slot"] >= 0:
            ops += int(p["nsegs"])
        rand += random_iv_bytes(p, table.records)
    return out, frames, ops, rand


def emit_args(batch, table, plans, sizes=None, *, rand=None, out_extra=0):
    """tx_emit's arguments for these plans, as run_send builds them (sizes capped); the
    outputs are filled with a poison pattern so that a write shows."""
    if sizes is None:
        plan = plans.view(NB_PLAN_DTYPE)
        nsegs = plan["nsegs"].astype(object)
        sizes = (int(np.clip(plan["out_len"], 0, None).astype(object).sum()),
                 int(np.clip(nsegs, 0, None).sum()),
                 int(np.clip(np.where(plan["slot"] >= 0, nsegs, 0), 0, None).sum()),
                 sum(max(0, random_iv_bytes(p, table.records)) for p in plan))
    out_bytes, n_frames, n_ops, rand_bytes = (max(0, min(int(v), BIG)) for v in sizes)
    n_frames, n_ops = min(n_frames, BIG // 64), min(n_ops, BIG // 64)
    if rand is None:
        rand = np.frombuffer(random_bytes(rand_bytes), np.uint8)
    return dict(batch=batch, records=table.records_bytes, plans=plans, rand=rand,
                out=np.full(out_bytes + out_extra, POISON, np.uint8),
                frames=np.full(n_frames * WIRE_FRAME_DTYPE.itemsize, POISON, np.uint8),
                ops=np.full(n_ops * CRYPTO_OP_DTYPE.itemsize, POISON, np.uint8))


EMIT_ORDER = ["batch", "records", "plans", "rand", "out", "frames", "ops"]
OUTPUTS = ["out", "frames", "ops"]


def call_emit(kernels, args):
    kernels.tx_emit(*[args[name] for name in EMIT_ORDER])


def _snapshot(args, names):
    return {name: np.array(args[name], copy=True) for name in names}


def _unchanged(args, before):
    for name, value in before.items():
        assert np.array_equal(np.asarray(args[name]), value), name


def test_emit_args_are_what_the_pipeline_hands_over(kernels):
    """The stage helpers below call the stages as tx_run does: same bytes."""
    batch = _one("lso", suite=5)
    table = TABLE.mp.sas.snapshot()
    plans, sizes, status = planned(kernels, batch, table)
    assert not status.any()
    args = emit_args(batch, table, plans, sizes)
    assert (len(args["out"]), len(args["frames"]) // WIRE_FRAME_DTYPE.itemsize,
            len(args["ops"]) // CRYPTO_OP_DTYPE.itemsize, len(args["rand"])) == sizes
    call_emit(kernels, args)
    again = plans.copy()
    assert relayout(again, table) == sizes and again.tobytes() == plans.tobytes()
    rec = run_stages(kernels, batch, table, config=ALL_CONFIG, icv_space=IcvSpace.AUTO,
                     iv_source=IvSource.NIC)
    assert rec.planned.tobytes() == plans.tobytes()
    for name, value in zip(OUTPUTS, rec.emitted):
        assert value.tobytes() == args[name].tobytes(), name


def _one(kind: str, suite: int = 0):
    sa, ipv6 = SUITES[suite]
    builder = PacketBatchBuilder()
    if kind == "esp":
        frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(50), seq=sa.seq)
    else:
        frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=900, mss=400, seq=sa.seq)
    builder.add_nbl([frame], offload_handle=TABLE.handles[suite], **oob)
    # and a passthrough NBL after it
    builder.add_nbl([b"\x00" * 60])
    return builder.build()


def _set(field, value, target=0):
    def corrupt(plan, batch, table):
        plan[target][field] = value
    return corrupt


def _add(field, delta, target=0):
    def corrupt(plan, batch, table):
        plan[target][field] = int(plan[target][field]) + delta
    return corrupt


def _fields(**values):
    def corrupt(plan, batch, table):
        new = {name: value(plan[0]) for name, value in values.items()}
        for name, value in new.items():
            plan[0][name] = value
    return corrupt


def _free_slot(table) -> int:
    return int(np.flatnonzero(table.records["in_use"] == 0)[0])


CORRUPTIONS = {
    "out_len_too_small": _add("out_len", -1),
    "out_len_too_big": _add("out_len", 1),
    "negative_out_len": _set("out_len", -5),
    "slot_out_of_range": lambda plan, b, t: plan[0].__setitem__("slot", len(t.records) + 3),
    "slot_of_a_free_record": lambda plan, b, t: plan[0].__setitem__("slot", _free_slot(t)),
    "nsegs_plus_one": _add("nsegs", 1),
    "negative_nsegs": _set("nsegs", -1),
    "esp_off_past_frame": lambda plan, b, t: plan[0].__setitem__("esp_off", int(b.nb_len[0])),
    "esp_off_inside_ip_header": _set("esp_off", 20),
    "body_len_past_frame": _add("body_len", 4096),
    "body_len_huge": _set("body_len", 2**63 - 1),
    "body_off_negative": _set("body_off", -8),
    "hdr_len_off": _add("hdr_len", 4),
    "ip_off_plus_ip_hdr_len_past_int32": _fields(ip_off=lambda p: 2**31 - 16,
                                                 ip_hdr_len=lambda p: 2**31 - 16),
    "esp_off_int32_max": _set("esp_off", 2**31 - 1),
    # no frame, but a size that makes the running output position wrap past 2**63
    "nsegs_zero_out_len_huge": _fields(nsegs=lambda p: 0, out_len=lambda p: 2**63 - 1),
    "ip_hdr_len_19": _set("ip_hdr_len", 19),
    "ipv6_flag_flipped": lambda plan, b, t: plan[0].__setitem__("ipv6", 1 - int(plan[0]["ipv6"])),
    # a passthrough plan that claims the size of another frame
    "passthrough_out_len_off": _add("out_len", 1, target=1),
    "passthrough_two_segments": _set("nsegs", 2, target=1),
}
LSO_CORRUPTIONS = {
    "mss_zero": _set("mss", 0),
    "mss_changed": _add("mss", 300),
    "sn64_wraps": _set("sn64", 2**64 - 1),
    "tcp_off_moved": _add("tcp_off", 4),
    "thl_past_60": _fields(hdr_len=lambda p: int(p["tcp_off"]) + 64,
                           body_off=lambda p: int(p["tcp_off"]) + 64),
    "mss_raised_nsegs_one": _fields(mss=lambda p: 0xFFFFF, nsegs=lambda p: 1),
}
# tx_plan's positions themselves wrong: tx_emit checks them against its own running totals
POSITION_CORRUPTIONS = {
    "out_pos_plus_one": _add("out_pos", 1),
    "out_pos_minus_one": _add("out_pos", -1),
    "frame0_plus_one": _add("frame0", 1),
    "frame0_minus_one": _add("frame0", -1),
    "op0_plus_one": _add("op0", 1),
    "op0_minus_one": _add("op0", -1),
    "passthrough_out_pos_plus_one": _add("out_pos", 1, target=1),
    "passthrough_out_pos_minus_one": _add("out_pos", -1, target=1),
    "passthrough_frame0_plus_one": _add("frame0", 1, target=1),
    "passthrough_frame0_minus_one": _add("frame0", -1, target=1),
    "passthrough_op0_plus_one": _add("op0", 1, target=1),
    "passthrough_op0_minus_one": _add("op0", -1, target=1),
    "out_pos_huge": _set("out_pos", 2**63 - 1),
    "frame0_negative": _set("frame0", -2**63),
}


def _run_corrupt(kernels, kind, corrupt, suite=0, *, keep_positions=False):
    batch = _one(kind, suite)
    table = TABLE.mp.sas.snapshot()
    plans, _, status = planned(kernels, batch, table)
    assert not status.any()
    corrupt(plans.view(NB_PLAN_DTYPE), batch, table)
    if not keep_positions:
        relayout(plans, table)
    args = emit_args(batch, table, plans, out_extra=8192)
    before = _snapshot(args, OUTPUTS + ["plans"])
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)  # nothing was written


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", ["esp", "lso"])
def test_emit_rejects_corrupt_plans(kernels, kind, corruption):
    _run_corrupt(kernels, kind, CORRUPTIONS[corruption])


@pytest.mark.parametrize("corruption", list(LSO_CORRUPTIONS))
def test_emit_rejects_corrupt_lso_plans(kernels, corruption):
    _run_corrupt(kernels, "lso", LSO_CORRUPTIONS[corruption])


@pytest.mark.parametrize("corruption", list(POSITION_CORRUPTIONS))
@pytest.mark.parametrize("kind", ["esp", "lso"])
def test_emit_rejects_wrong_positions(kernels, kind, corruption):
    _run_corrupt(kernels, kind, POSITION_CORRUPTIONS[corruption], suite=5, keep_positions=True)


def _cbc_batch():
    """Two AES-CBC NBLs (random IVs: rand_off matters), an LSO one and a plain one."""
    sa, ipv6 = SUITES[5]
    builder = PacketBatchBuilder()
    frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=900, mss=400, seq=sa.seq)
    builder.add_nbl([frame], offload_handle=TABLE.handles[5], **oob)
    builder.add_nbl([b"\x00" * 60])
    frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(50), seq=sa.seq)
    builder.add_nbl([frame], offload_handle=TABLE.handles[5], **oob)
    return builder.build()


@pytest.mark.parametrize("target", [0, 2], ids=["first", "second"])
@pytest.mark.parametrize("delta", [-16, -1, 1, 16, 2**62])
def test_emit_rejects_a_wrong_rand_off(kernels, target, delta):
    batch = _cbc_batch()
    table = TABLE.mp.sas.snapshot()
    plans, sizes, status = planned(kernels, batch, table)
    assert not status.any() and sizes[3] == 4 * 16  # 3 LSO segments and one frame
    plan = plans.view(NB_PLAN_DTYPE)
    plan[target]["rand_off"] = int(plan[target]["rand_off"]) + delta
    args = emit_args(batch, table, plans, sizes)
    before = _snapshot(args, OUTPUTS)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)


def test_rand_off_of_a_plan_without_random_ivs_is_not_read(kernels):
    """GCM IVs are the SN and a passthrough frame has none: their rand_off is not read."""
    batch = _one("lso", suite=0)
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    call_emit(kernels, args)
    changed = plans.copy()
    changed.view(NB_PLAN_DTYPE)["rand_off"] = [12345, -1]
    other = emit_args(batch, table, changed, sizes)
    call_emit(kernels, other)
    for name in OUTPUTS:
        assert np.array_equal(args[name], other[name]), name


def test_emit_rejects_an_lso_plan_whose_ip_length_overflows(kernels):
    """A plan claiming a single 65535+ byte segment (tx_classify never makes one)."""
    def corrupt(plan, batch, table):
        p = plan[0]
        p["body_len"] = int(batch.nb_len[0]) - int(p["body_off"])
        p["mss"] = 0xFFFFF
        p["nsegs"] = 1
        thl = int(p["hdr_len"]) - int(p["tcp_off"])
        chunk = int(p["body_len"])
        p["out_len"] = int(p["hdr_len"]) + chunk + (-(thl + chunk + 2) % 4) + 2 + 16
    sa, ipv6 = SUITES[0]
    frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=70000, mss=1000)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[0], **oob)
    batch = builder.build()
    table = TABLE.mp.sas.snapshot()
    plans, _, status = planned(kernels, batch, table)
    assert not status.any()
    corrupt(plans.view(NB_PLAN_DTYPE), batch, table)
    args = emit_args(batch, table, plans, relayout(plans, table))
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    assert np.all(args["out"] == POISON)


ITEM = {"frames": WIRE_FRAME_DTYPE.itemsize, "ops": CRYPTO_OP_DTYPE.itemsize}


@pytest.mark.parametrize("change", [
    "out_too_small", "frames_one_short", "frames_one_long", "frames_misaligned",
    "ops_one_short", "ops_one_long", "ops_misaligned", "out_pos_shifted",
    "frame0_last_shifted", "op0_last_shifted", "rand_short", "rand_empty",
    "nb_off_past_arena", "nb_off_negative", "nb_len_negative", "nb_len_overflow",
    "nb_len_short_array", "records_misaligned", "records_empty", "plans_wrong_size",
    "plans_one_short"])
def test_emit_rejects_inconsistent_arrays(kernels, change):
    batch = _one("lso", suite=5)  # AES-CBC: random IVs from rand
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    plan = plans.view(NB_PLAN_DTYPE)
    if change == "out_too_small":
        args["out"] = args["out"][:-1].copy()
    elif change in ("frames_one_short", "ops_one_short"):
        name = change.split("_")[0]
        args[name] = args[name][:-ITEM[name]].copy()
    elif change in ("frames_one_long", "ops_one_long"):
        name = change.split("_")[0]
        args[name] = np.append(args[name], np.full(ITEM[name], POISON, np.uint8))
    elif change in ("frames_misaligned", "ops_misaligned"):
        name = change.split("_")[0]
        args[name] = np.append(args[name], np.uint8(POISON))
    elif change == "out_pos_shifted":
        plan["out_pos"] += 1
    elif change == "frame0_last_shifted":
        plan[-1]["frame0"] += 1
    elif change == "op0_last_shifted":
        plan[-1]["op0"] += 1
    elif change == "rand_short":
        args["rand"] = args["rand"][:-1].copy()
    elif change == "rand_empty":
        args["rand"] = np.zeros(0, np.uint8)
    elif change == "nb_off_past_arena":
        args["batch"] = batch_view(batch, nb_off=batch.nb_off + 1)
    elif change == "nb_off_negative":
        args["batch"] = batch_view(batch, nb_off=np.array([-1, 0], np.int64))
    elif change == "nb_len_negative":
        args["batch"] = batch_view(batch, nb_len=np.array([int(batch.nb_len[0]), -1], np.int64))
    elif change == "nb_len_overflow":
        args["batch"] = batch_view(batch, nb_off=np.array([2**62, 2**62], np.int64),
                                   nb_len=np.array([2**62, 2**62], np.int64))
    elif change == "nb_len_short_array":
        args["batch"] = batch_view(batch, nb_len=batch.nb_len[:1].copy())
    elif change == "records_misaligned":
        args["records"] = args["records"][:-1].copy()
    elif change == "records_empty":
        args["records"] = np.zeros(0, np.uint8)
    elif change == "plans_wrong_size":
        args["plans"] = np.append(args["plans"], np.uint8(0))
    elif change == "plans_one_short":
        args["plans"] = args["plans"][:NB_PLAN_DTYPE.itemsize].copy()
    before = _snapshot(args, OUTPUTS)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)


EMIT_WRONG = {  # case: (argument, wrong value, exception both stages raise)
    "arena_int8": ("arena", np.zeros(8, np.int8), ValueError),
    "arena_list": ("arena", [0] * 8, TypeError),
    "arena_2d": ("arena", np.zeros((2, 4), np.uint8), ValueError),
    "nb_off_int32": ("nb_off", np.zeros(2, np.int32), ValueError),
    "nb_len_strided": ("nb_len", np.zeros(4, np.int64)[::2], ValueError),
    "plans_int8": ("plans", np.zeros(2 * NB_PLAN_DTYPE.itemsize, np.int8), ValueError),
    "plans_struct": ("plans", np.zeros(2, NB_PLAN_DTYPE), ValueError),
    "records_struct": ("records", np.zeros(4, SA_RECORD_DTYPE), ValueError),
    "out_uint16": ("out", np.zeros(4, np.uint16), ValueError),
    "frames_struct": ("frames", np.zeros(4, WIRE_FRAME_DTYPE), ValueError),
    "ops_struct": ("ops", np.zeros(3, CRYPTO_OP_DTYPE), ValueError),
    "ops_int64": ("ops", np.zeros(30, np.int64), ValueError),
    "rand_list": ("rand", [0] * 64, TypeError),
    "frames_string": ("frames", "frames", TypeError),
    "rand_none": ("rand", None, TypeError),
    "ops_none": ("ops", None, TypeError),
}
EMIT_BUGS: dict = {}


@pytest.mark.parametrize("case", list(EMIT_WRONG))
def test_emit_rejects_wrong_dtypes(request, kernels, case):
    known_bug(request, kernels, case, EMIT_BUGS)
    name, wrong, error = EMIT_WRONG[case]
    batch = _one("lso", suite=5)
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    if name in ("arena", "nb_off", "nb_len"):
        args["batch"] = batch_view(batch, **{name: wrong})
    else:
        args[name] = wrong
    before = _snapshot(args, [n for n in OUTPUTS if n != name])
    with pytest.raises((ValueError, TypeError)) as raised:
        call_emit(kernels, args)
    assert raised.type is error  # the same exception on both
    _unchanged(args, before)


@pytest.mark.parametrize("name", OUTPUTS)
def test_emit_rejects_read_only_outputs(kernels, name):
    batch = _one("esp")
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    args[name].flags.writeable = False
    before = _snapshot(args, OUTPUTS)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)


@pytest.mark.parametrize("case", ["out", "frames"])
def test_emit_rejects_bytes_as_an_output(request, kernels, case):
    batch = _one("esp")
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    args[case] = bytes(args[case])
    with pytest.raises(BufferError):  # what Cython raises for a read-only non-array buffer
        call_emit(kernels, args)


def test_emit_takes_read_only_inputs(kernels):
    """Inputs are const: read-only arena, records, plans and rand are fine."""
    batch = _one("lso", suite=5)
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(kernels, batch, table)
    args = emit_args(batch, table, plans, sizes)
    want = dict(args, out=args["out"].copy(), frames=args["frames"].copy(),
                ops=args["ops"].copy())
    call_emit(kernels, want)
    view = batch_view(batch, arena=batch.arena.copy())
    view.arena.flags.writeable = False
    for name in ("plans", "rand"):
        args[name] = args[name].copy()
        args[name].flags.writeable = False
    args["batch"] = view
    assert not args["records"].flags.writeable
    call_emit(kernels, args)
    for name in OUTPUTS:
        assert np.array_equal(args[name], want[name]), name


# -- LSO without IPsec: tx_emit checks plain TCP segmentation plans too ----------------------

def _one_plain_lso(ipv6: bool, zeros: bool = False):
    """A plain-LSO NBL (no handle: TCP segmentation only, docs/send-path.md step 1) and a
    passthrough NBL after it; the IPv6 one carries a hop-by-hop header before TCP. ``zeros``: the
    hop-by-hop header names another one next, and ports, ACK and payload are zero, so that
    the bytes after it read as a chain of 8-byte hop-by-hop headers too."""
    tcp = struct.pack("!HHIIBBHHH", 0 if zeros else 1234, 0 if zeros else 443, 1000,
                      0 if zeros else 2000, 5 << 4, 0x18, 8192, 0, 0)
    payload = bytes(900) if zeros else bytes((i * 7) & 0xFF for i in range(900))
    ext = bytes([0 if zeros else 6, 0]) + bytes(6) if ipv6 else b""
    if ipv6:
        ip = ip_header(True, 0, len(ext) + len(tcp) + len(payload))
    else:
        ip = ip_header(False, 6, len(tcp) + len(payload))
    tcp_off = 14 + len(ip) + len(ext)
    lso = 400 | (tcp_off << 20) | (1 << 30) | (int(ipv6) << 31)
    builder = PacketBatchBuilder()
    builder.add_nbl([link_header(ipv6, 14) + ip + ext + tcp + payload], lso_info=lso)
    builder.add_nbl([b"\x00" * 60])
    return builder.build()


PLAIN_LSO_CORRUPTIONS = {
    "mss_zero": _set("mss", 0),
    "mss_changed": _add("mss", 100),
    "nsegs_plus_one": _add("nsegs", 1),
    "out_len_too_big": _add("out_len", 1),
    "out_len_too_small": _add("out_len", -1),
    "tcp_off_moved": _add("tcp_off", 4),
    "tcp_off_inside_ip_header": _set("tcp_off", 20),
    "thl_past_60": _fields(hdr_len=lambda p: int(p["tcp_off"]) + 64,
                           body_off=lambda p: int(p["tcp_off"]) + 64),
    "body_len_past_frame": _add("body_len", 4096),
    "body_off_moved": _add("body_off", 1),
    "ip_hdr_len_19": _set("ip_hdr_len", 19),
    "ip_off_negative": _set("ip_off", -1),
    "lso_flag_cleared": _set("lso", 0),
    "slot_of_a_free_record": lambda plan, b, t: plan[0].__setitem__("slot", _free_slot(t)),
}


def _planned_plain_lso(kernels, ipv6, zeros=False):
    batch = _one_plain_lso(ipv6, zeros)
    table = TABLE.mp.sas.snapshot()
    plans, sizes, status = planned(kernels, batch, table)
    p = plans.view(NB_PLAN_DTYPE)[0]
    assert not status.any() and p["reason"] == Reason.PASS_NO_HANDLE and p["lso"] == 2
    assert p["slot"] == -1 and p["nsegs"] == 3 and p["esp_off"] == 0
    return batch, table, plans, sizes


# An IPv4 plan marked IPv6 (its 20-byte header is no IPv6 header). The other way round is no
# corruption tx_emit can see: with no SA record to compare with, a 40-byte header read as
# IPv4 stays inside the header.
PLAIN_LSO_IPV4_ONLY = {"ipv4_marked_ipv6": _set("ipv6", 1)}


@pytest.mark.parametrize("ipv6,corruption", [
    pytest.param(ipv6, name, id=f"{'ipv6' if ipv6 else 'ipv4'}-{name}")
    for ipv6 in (False, True)
    for name in list(PLAIN_LSO_CORRUPTIONS) + ([] if ipv6 else list(PLAIN_LSO_IPV4_ONLY))])
def test_emit_rejects_corrupt_plain_lso_plans(kernels, ipv6, corruption):
    batch, table, plans, _ = _planned_plain_lso(kernels, ipv6)
    {**PLAIN_LSO_CORRUPTIONS, **PLAIN_LSO_IPV4_ONLY}[corruption](plans.view(NB_PLAN_DTYPE),
                                                                 batch, table)
    relayout(plans, table)
    args = emit_args(batch, table, plans, out_extra=8192)
    before = _snapshot(args, OUTPUTS + ["plans"])
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)




@pytest.mark.parametrize("esp_off", [300, 2**31 - 1])
def test_emit_does_not_read_past_a_plain_lso_segment(request, kernels, esp_off):
    """A plain-LSO segment has no ESP header: a corrupt esp_off is refused (ValueError,
    nothing written) or has no effect on the bytes."""
    batch, table, plans, sizes = _planned_plain_lso(kernels, True, zeros=True)
    want = emit_args(batch, table, plans, sizes)
    call_emit(kernels, want)
    plans.view(NB_PLAN_DTYPE)[0]["esp_off"] = esp_off
    args = emit_args(batch, table, plans, sizes)
    before = _snapshot(args, OUTPUTS)
    try:
        call_emit(kernels, args)
    except ValueError:
        _unchanged(args, before)
    else:
        for name in OUTPUTS:
            assert np.array_equal(args[name], want[name]), name




@pytest.mark.parametrize("target", [0, 1], ids=["protected", "passthrough"])
def test_emit_rejects_output_bytes_without_frames(request, kernels, target):
    batch = _one("esp")
    table = TABLE.mp.sas.snapshot()
    plans, _, _ = planned(kernels, batch, table)
    plan = plans.view(NB_PLAN_DTYPE)
    plan[target]["nsegs"], plan[target]["out_len"] = 0, 16
    args = emit_args(batch, table, plans, relayout(plans, table))
    before = _snapshot(args, OUTPUTS)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)


def classify_args(batch, table):
    return dict(batch=batch_view(batch), records=table.records_bytes, config=ALL_CONFIG,
                icv_space=int(IcvSpace.AUTO), iv_source=int(IvSource.NIC),
                plans=np.full(batch.num_buffers * NB_PLAN_DTYPE.itemsize, POISON, np.uint8))


CLASSIFY_ORDER = ["batch", "records", "config", "icv_space", "iv_source", "plans"]
BATCH_FIELDS = ("arena", "nb_off", "nb_len", "nb_nbl", "oob_bytes")


def call_classify(kernels, args):
    kernels.tx_classify(*[args[name] for name in CLASSIFY_ORDER])


CLASSIFY_WRONG = {  # case: (argument, wrong value, exception both stages raise)
    "arena_int8": ("arena", np.zeros(8, np.int8), ValueError),
    "arena_list": ("arena", [0] * 8, TypeError),
    "nb_off_int32": ("nb_off", np.zeros(2, np.int32), ValueError),
    "nb_len_uint64": ("nb_len", np.zeros(2, np.uint64), ValueError),
    "nb_nbl_int64": ("nb_nbl", np.zeros(2, np.int64), ValueError),
    "nb_nbl_2d": ("nb_nbl", np.zeros((2, 1), np.int32), ValueError),
    "oob_struct": ("oob_bytes", np.zeros(2, NBL_OOB_DTYPE), ValueError),
    "oob_int8": ("oob_bytes", np.zeros(2 * NBL_OOB_DTYPE.itemsize, np.int8), ValueError),
    "oob_strided": ("oob_bytes", np.zeros(4 * NBL_OOB_DTYPE.itemsize, np.uint8)[::2],
                    ValueError),
    "plans_int8": ("plans", np.zeros(2 * NB_PLAN_DTYPE.itemsize, np.int8), ValueError),
    "plans_struct": ("plans", np.zeros(2, NB_PLAN_DTYPE), ValueError),
    "records_list": ("records", [0] * 32, TypeError),
    "records_struct": ("records", np.zeros(4, SA_RECORD_DTYPE), ValueError),
    # the old per-NBL array set to None: now the whole OOB table
    "oob_none": ("oob_bytes", None, TypeError),
    "records_none": ("records", None, TypeError),
}
CLASSIFY_BUGS: dict = {}


@pytest.mark.parametrize("case", list(CLASSIFY_WRONG))
def test_classify_rejects_wrong_dtypes(request, kernels, case):
    known_bug(request, kernels, case, CLASSIFY_BUGS)
    name, wrong, error = CLASSIFY_WRONG[case]
    args = classify_args(_one("esp"), TABLE.mp.sas.snapshot())
    if name in BATCH_FIELDS:
        setattr(args["batch"], name, wrong)
    else:
        args[name] = wrong
    plans_before = np.array(args["plans"], copy=True)
    with pytest.raises((ValueError, TypeError)) as raised:
        call_classify(kernels, args)
    assert raised.type is error  # the same exception on both
    if name != "plans":
        assert np.array_equal(args["plans"], plans_before)


@pytest.mark.parametrize("change", [
    "nb_len_short", "nb_nbl_long", "oob_one_nbl_short", "oob_misaligned", "plans_short",
    "plans_long", "records_misaligned", "nb_nbl_outside", "nb_nbl_negative",
    "nb_nbl_decreasing", "nb_off_past_arena", "nb_off_negative", "nb_len_negative",
    "nb_len_overflow", "plans_read_only"])
def test_classify_rejects_inconsistent_arrays(kernels, change):
    batch = _one("esp")
    args = classify_args(batch, TABLE.mp.sas.snapshot())
    view = args["batch"]
    if change == "nb_len_short":
        view.nb_len = batch.nb_len[:1].copy()
    elif change == "nb_nbl_long":
        view.nb_nbl = np.append(batch.nb_nbl, np.int32(1))
    elif change == "oob_one_nbl_short":  # the last buffer names an NBL the table lacks
        view.oob_bytes = batch.oob_bytes[:NBL_OOB_DTYPE.itemsize].copy()
    elif change == "oob_misaligned":
        view.oob_bytes = np.append(batch.oob_bytes, np.uint8(0))
    elif change == "plans_short":
        args["plans"] = args["plans"][:-1].copy()
    elif change == "plans_long":
        args["plans"] = np.append(args["plans"], np.full(NB_PLAN_DTYPE.itemsize, POISON,
                                                          np.uint8))
    elif change == "records_misaligned":
        args["records"] = args["records"][:-1].copy()
    elif change == "nb_nbl_outside":
        view.nb_nbl = np.array([0, 2], np.int32)
    elif change == "nb_nbl_negative":
        view.nb_nbl = np.array([-1, 0], np.int32)
    elif change == "nb_nbl_decreasing":
        view.nb_nbl = np.array([1, 0], np.int32)
    elif change == "nb_off_past_arena":
        view.nb_off = batch.nb_off + 1
    elif change == "nb_off_negative":
        view.nb_off = np.array([-1, 0], np.int64)
    elif change == "nb_len_negative":
        view.nb_len = np.array([int(batch.nb_len[0]), -1], np.int64)
    elif change == "nb_len_overflow":
        view.nb_off = np.array([2**62, 0], np.int64)
        view.nb_len = np.array([2**62, 0], np.int64)
    elif change == "plans_read_only":
        args["plans"].flags.writeable = False
    plans_before = args["plans"].copy()
    with pytest.raises(ValueError):
        call_classify(kernels, args)
    assert np.array_equal(args["plans"], plans_before)


def test_classify_fills_every_plan_byte(kernels):
    """Plans are written whole (reserved bytes too), whatever the buffer held before."""
    batch = _good_batch()
    table = TABLE.mp.sas.snapshot()
    outs = []
    for fill in (0x00, 0xFF):
        args = classify_args(batch, table)
        args["plans"][:] = fill
        call_classify(kernels, args)
        outs.append(args["plans"])
    assert outs[0].tobytes() == outs[1].tobytes()
    assert not outs[0].view(NB_PLAN_DTYPE)["reserved"].any()
    for name in POSITION_FIELDS:  # tx_plan's fields: zero until tx_plan sets them
        assert not outs[0].view(NB_PLAN_DTYPE)[name].any(), name


def plan_args(batch, table, plans):
    n = len(batch)
    return dict(batch=batch_view(batch), records=table.records_bytes, plans=plans,
                nbl_status=np.full(n, 0x5A5A5A5A, np.uint32),
                lso_done=np.full(n, 0x5A5A5A5A, np.uint64),
                counters=np.full(COUNTERS, 0x5A5A5A5A, np.int64))


PLAN_ORDER = ["batch", "records", "plans", "nbl_status", "lso_done", "counters"]
PLAN_OUTPUTS = ["plans", "nbl_status", "lso_done", "counters"]


def call_plan(kernels, args):
    return kernels.tx_plan(*[args[name] for name in PLAN_ORDER])


def _classified(kernels, kind="esp", suite=0):
    batch = _one(kind, suite)
    table = TABLE.mp.sas.snapshot()
    return batch, table, classify_into(kernels, batch, table)


# Plans tx_plan refuses (it indexes NBLs, counters and records by these fields).
PLAN_CORRUPTIONS = {
    "nbl_past_batch": _set("nbl", 2),
    "nbl_negative": _set("nbl", -1),
    "nbl_int32_max": _set("nbl", 2**31 - 1),
    "passthrough_nbl_past_batch": _set("nbl", 2, target=1),
    "negative_nsegs": _set("nsegs", -1),
    "negative_out_len": _set("out_len", -5),
    "reason_past_count": _set("reason", REASON_COUNT),
    "reason_255": _set("reason", 255),
    "slot_past_table": lambda plan, b, t: plan[0].__setitem__("slot", len(t.records)),
    "slot_int32_max": _set("slot", 2**31 - 1),
}


@pytest.mark.parametrize("corruption", list(PLAN_CORRUPTIONS))
def test_plan_rejects_corrupt_plans(kernels, corruption):
    batch, table, plans = _classified(kernels)
    PLAN_CORRUPTIONS[corruption](plans.view(NB_PLAN_DTYPE), batch, table)
    args = plan_args(batch, table, plans)
    before = _snapshot(args, PLAN_OUTPUTS)
    with pytest.raises(ValueError):
        call_plan(kernels, args)
    _unchanged(args, before)




@pytest.mark.parametrize("out_lens", [(2**63 - 1, 60), (2**62, 2**62)], ids=["max", "halves"])
def test_plan_refuses_sizes_past_int64(request, kernels, out_lens):
    batch, table, plans = _classified(kernels)
    plan = plans.view(NB_PLAN_DTYPE)
    plan["out_len"] = out_lens  # each one fine, not their sum
    args = plan_args(batch, table, plans)
    before = _snapshot(args, PLAN_OUTPUTS)
    with pytest.raises(ValueError):
        call_plan(kernels, args)
    _unchanged(args, before)


def test_a_free_slot_passes_tx_plan_and_is_refused_by_tx_emit(kernels):
    """tx_plan only bounds the slot; tx_emit refuses a slot whose record is free."""
    batch, table, plans = _classified(kernels)
    plans.view(NB_PLAN_DTYPE)[0]["slot"] = _free_slot(table)
    sizes = call_plan(kernels, plan_args(batch, table, plans))
    args = emit_args(batch, table, plans, sizes)
    before = _snapshot(args, OUTPUTS)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    _unchanged(args, before)


PLAN_WRONG = {  # case: (argument, wrong value, exception both stages raise)
    "nbl_status_int32": ("nbl_status", np.zeros(2, np.int32), ValueError),
    "lso_done_int64": ("lso_done", np.zeros(2, np.int64), ValueError),
    "counters_uint64": ("counters", np.zeros(COUNTERS, np.uint64), ValueError),
    "counters_list": ("counters", [0] * COUNTERS, TypeError),
    "plans_int8": ("plans", np.zeros(2 * NB_PLAN_DTYPE.itemsize, np.int8), ValueError),
    "records_list": ("records", [0] * 64, TypeError),
    "oob_struct": ("oob_bytes", np.zeros(2, NBL_OOB_DTYPE), ValueError),
    "nbl_status_read_only": ("nbl_status", np.zeros(2, np.uint32), ValueError),
    "lso_done_read_only": ("lso_done", np.zeros(2, np.uint64), ValueError),
    "counters_read_only": ("counters", np.zeros(COUNTERS, np.int64), ValueError),
    "plans_read_only": ("plans", None, ValueError),
    "records_none": ("records", None, TypeError),
}
PLAN_BUGS: dict = {}


@pytest.mark.parametrize("case", list(PLAN_WRONG))
def test_plan_rejects_wrong_dtypes(request, kernels, case):
    known_bug(request, kernels, case, PLAN_BUGS)
    name, wrong, error = PLAN_WRONG[case]
    batch, table, plans = _classified(kernels)
    args = plan_args(batch, table, plans)
    if case == "plans_read_only":
        wrong = plans.copy()
    if case.endswith("read_only"):
        wrong.flags.writeable = False
    if name == "oob_bytes":
        setattr(args["batch"], name, wrong)
    else:
        args[name] = wrong
    before = _snapshot(args, [n for n in PLAN_OUTPUTS if n != name])
    with pytest.raises((ValueError, TypeError)) as raised:
        call_plan(kernels, args)
    assert raised.type is error  # the same exception on both
    _unchanged(args, before)


@pytest.mark.parametrize("change", ["nbl_status_short", "nbl_status_long", "lso_done_short",
                                    "lso_done_long", "counters_short", "counters_long",
                                    "plans_misaligned", "records_misaligned",
                                    "oob_misaligned", "oob_one_nbl_short"])
def test_plan_rejects_inconsistent_arrays(kernels, change):
    batch, table, plans = _classified(kernels)
    args = plan_args(batch, table, plans)
    name = change.rsplit("_", 1)[0]
    if change == "plans_misaligned":
        args["plans"] = np.append(plans, np.uint8(0))
    elif change == "records_misaligned":
        args["records"] = args["records"][:-1].copy()
    elif change == "oob_misaligned":
        args["batch"].oob_bytes = np.append(batch.oob_bytes, np.uint8(0))
    elif change == "oob_one_nbl_short":  # and nbl_status, lso_done to match it
        args["batch"].oob_bytes = batch.oob_bytes[:NBL_OOB_DTYPE.itemsize].copy()
        args["nbl_status"] = args["nbl_status"][:1].copy()
        args["lso_done"] = args["lso_done"][:1].copy()
    elif change.endswith("_short"):
        args[name] = args[name][:-1].copy()
    else:
        args[name] = np.append(args[name], args[name][:1])
    before = _snapshot(args, PLAN_OUTPUTS)
    with pytest.raises(ValueError):
        call_plan(kernels, args)
    _unchanged(args, before)


def _udp6_op():
    """One NBL through UDP-encapsulated ESP over IPv6, sealed: its op needs tx_fixup's
    checksum. Returns (out, ops bytes)."""
    index = next(i for i, (sa, ipv6) in enumerate(SUITES) if sa.udp_encap and ipv6)
    sa, ipv6 = SUITES[index]
    frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(range(40)), seq=sa.seq)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[index], **oob)
    batch = builder.build()
    table = TABLE.mp.sas.snapshot()
    plans, sizes, _ = planned(_fastpath, batch, table)
    args = emit_args(batch, table, plans, sizes)
    call_emit(_fastpath, args)
    ops = args["ops"].view(CRYPTO_OP_DTYPE)
    ReferenceBackend().seal(args["out"], args["ops"], [0], table.keys[int(ops[0]["key_row"])])
    return args["out"], args["ops"]


def _udp_checksum_verifies(out, op) -> bool:
    ip, udp = int(op["ip_off"]), int(op["auth_off"]) - 8
    end = int(op["icv_off"]) + int(op["icv_len"])
    pseudo = out[ip + 8:ip + 40].tobytes() + struct.pack("!IxxxB", end - udp, 17)
    return ones_complement_sum(pseudo + out[udp:end].tobytes()) == 0xFFFF


def test_fixup_twins_agree():
    outs = []
    for module in KERNELS:
        out, ops = _udp6_op()
        op = ops.view(CRYPTO_OP_DTYPE)[0]
        assert op["fixup"] == Fixup.UDP6_CHECKSUM and op["status"] == OpStatus.DONE
        assert out[int(op["auth_off"]) - 2:int(op["auth_off"])].tobytes() == b"\0\0"
        ops_before = ops.copy()
        module.tx_fixup(out, ops)
        assert np.array_equal(ops, ops_before)  # ops are const
        assert _udp_checksum_verifies(out, op)
        outs.append(out)
    assert np.array_equal(*outs)


def test_fixup_skips_ops_without_a_fixup(kernels):
    """FIXUP_NONE ops are not read, wherever their offsets point."""
    out, ops = _udp6_op()
    table = ops.view(CRYPTO_OP_DTYPE)
    table[0]["fixup"] = Fixup.NONE
    for name in ("icv_off", "auth_off", "ip_off"):
        table[0][name] = -2**63
    before = out.copy()
    kernels.tx_fixup(out, ops)
    assert np.array_equal(out, before)


BIG_OFF = 2**63 - 4


@pytest.mark.parametrize("change", [
    "icv_len_huge", "icv_len_past_out", "icv_past_out", "icv_huge", "icv_negative",
    "ip_past_out", "ip_huge", "ip_negative", "udp_before_ip_end", "udp_huge", "udp_negative",
    "udp_past_icv", "ops_misaligned_short", "ops_misaligned_long",
    "second_op_outside"])
def test_fixup_rejects_ops_outside_the_arena(kernels, change):
    out, ops = _udp6_op()
    op = ops.view(CRYPTO_OP_DTYPE)[0]
    if change == "icv_len_huge":
        op["icv_len"] = 255
    elif change == "icv_len_past_out":
        op["icv_len"] = len(out) - int(op["icv_off"]) + 1
    elif change == "icv_past_out":
        op["icv_off"] = len(out) - 1
    elif change == "icv_huge":
        op["icv_off"] = BIG_OFF
    elif change == "icv_negative":
        op["icv_off"] = -1
    elif change == "ip_past_out":
        op["ip_off"] = len(out) - 39
    elif change == "ip_huge":
        op["ip_off"] = BIG_OFF
    elif change == "ip_negative":
        op["ip_off"] = -1
    elif change == "udp_before_ip_end":
        op["auth_off"] = int(op["ip_off"]) + 40 + 8 - 1
    elif change == "udp_huge":
        op["auth_off"] = BIG_OFF
    elif change == "udp_negative":
        op["auth_off"] = -2**63
    elif change == "udp_past_icv":
        op["auth_off"] = int(op["icv_off"]) + int(op["icv_len"]) + 1
    elif change == "ops_misaligned_short":
        ops = ops[:-1].copy()
    elif change == "ops_misaligned_long":
        ops = np.append(ops, np.uint8(0))
    elif change == "second_op_outside":  # refused before the first op's write
        extra = ops.copy().view(CRYPTO_OP_DTYPE)
        extra[0]["ip_off"] = len(out)
        ops = np.concatenate([ops, extra.view(np.uint8)])
    before = out.copy()
    with pytest.raises(ValueError):
        kernels.tx_fixup(out, ops)
    assert np.array_equal(out, before)


@pytest.mark.parametrize("code", [2, 7, 255])
def test_fixup_rejects_unknown_fixup_codes(kernels, code):
    out, ops = _udp6_op()
    good = ops.copy()
    bad = ops.copy().view(CRYPTO_OP_DTYPE)
    bad[0]["fixup"] = code
    before = out.copy()
    with pytest.raises(ValueError):  # before the good op's write too
        kernels.tx_fixup(out, np.concatenate([good, bad.view(np.uint8)]))
    assert np.array_equal(out, before)


FIXUP_WRONG = {  # case: (argument, wrong value, exception both stages raise)
    "out_int8": ("out", np.zeros(8, np.int8), ValueError),
    "out_list": ("out", [0] * 8, TypeError),
    "out_read_only": ("out", None, ValueError),
    "ops_struct": ("ops", np.zeros(1, CRYPTO_OP_DTYPE), ValueError),
    "ops_list": ("ops", [1], TypeError),
    "ops_uint64": ("ops", np.zeros(10, np.uint64), ValueError),
    "ops_none": ("ops", None, TypeError),
    "out_none": ("out", None, TypeError),
    "out_bytes": ("out", None, BufferError),
}
FIXUP_BUGS: dict = {}


@pytest.mark.parametrize("case", list(FIXUP_WRONG))
def test_fixup_rejects_wrong_dtypes(request, kernels, case):
    known_bug(request, kernels, case, FIXUP_BUGS)
    out, ops = _udp6_op()
    args = dict(out=out, ops=ops)
    name, wrong, error = FIXUP_WRONG[case]
    if case == "out_read_only":
        wrong = out.copy()
        wrong.flags.writeable = False
    elif case == "out_bytes":
        wrong = out.tobytes()
    args[name] = wrong
    with pytest.raises((ValueError, TypeError, BufferError)) as raised:
        kernels.tx_fixup(args["out"], args["ops"])
    assert raised.type is error  # the same exception on both


def test_fixup_takes_read_only_ops(kernels):
    out, ops = _udp6_op()
    want = out.copy()
    _fastpath.tx_fixup(want, ops)
    ops.flags.writeable = False
    kernels.tx_fixup(out, ops)
    assert np.array_equal(out, want)


# -- op_groups -------------------------------------------------------------------------------

def _check_groups(ops: np.ndarray, order: np.ndarray, groups: np.ndarray) -> None:
    """order is a stable sort of the ops by (pass, kind, suite, key row as unsigned), and
    each groups row (start, end, pass, kind, suite, key_row) covers one run of equal keys."""
    table = ops.view(CRYPTO_OP_DTYPE)
    n = len(table)
    assert order.dtype == np.int32 and groups.dtype == np.int64
    assert groups.ndim == 2 and groups.shape[1] == 6
    assert sorted(order.tolist()) == list(range(n))
    keys = [(int(op["pass_no"]), int(op["kind"]), int(op["suite"]),
             int(op["key_row"]) & 0xFFFFFFFF) for op in table]
    assert order.tolist() == sorted(range(n), key=lambda i: keys[i])  # stable
    starts = [0] + [pos for pos in range(1, n) if keys[order[pos]] != keys[order[pos - 1]]]
    assert groups[:, 0].tolist() == (starts if n else [])
    assert groups[:, 1].tolist() == (starts[1:] + [n] if n else [])
    for start, end, pass_no, kind, suite, key_row in groups.tolist():
        first = table[order[start]]
        assert (pass_no, kind, suite, key_row) == (int(first["pass_no"]), int(first["kind"]),
                                                   int(first["suite"]), int(first["key_row"]))


def _groups_both(ops: np.ndarray):
    results = [module.op_groups(ops) for module in KERNELS]
    (order_c, groups_c), (order_p, groups_p) = results
    _same_arrays(order_c, order_p)
    _same_arrays(groups_c, groups_p)
    _check_groups(ops, order_c, groups_c)
    return order_c, groups_c


def _op_table(rows, fill: int = 0) -> np.ndarray:
    ops = np.zeros(len(rows), CRYPTO_OP_DTYPE)
    ops.view(np.uint8)[:] = np.frombuffer(random_bytes(ops.nbytes), np.uint8) if fill else 0
    for op, (pass_no, kind, suite, key_row) in zip(ops, rows):
        op["pass_no"], op["kind"], op["suite"], op["key_row"] = pass_no, kind, suite, key_row
    return ops.view(np.uint8)


key_rows = st.sampled_from([0, 2, 4, 6, 20, -1, -2**31, 2**31 - 1]) | st.integers(-2**31,
                                                                                    2**31 - 1)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3) | st.integers(0, 255),
                               st.sampled_from(list(OpKind)) | st.integers(0, 255),
                               st.sampled_from(list(Suite)) | st.integers(0, 255), key_rows),
                     max_size=80),
       presort=st.booleans(), fill=st.booleans())
def test_op_groups_twins_agree(rows, presort, fill):
    """Random op tables (sorted already or not, other bytes zero or not): same groups."""
    if presort:
        rows = sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3] & 0xFFFFFFFF))
    _groups_both(_op_table(rows, fill))


@pytest.mark.parametrize("n,n_keys", [(4096, 1500), (3000, 3), (1025, 1025), (2, 1)])
def test_op_groups_many_key_rows(n, n_keys):
    rng = np.random.default_rng(n * 7 + n_keys)
    rows = list(zip(rng.integers(0, 2, n).tolist(), [int(OpKind.ESP_SEAL)] * n,
                    rng.integers(1, 5, n).tolist(),
                    (rng.integers(0, n_keys, n) * 2).tolist()))
    order, groups = _groups_both(_op_table(rows))
    assert len(groups) == len(set(rows))
    order, groups = _groups_both(_op_table(sorted(rows)))
    assert order.tolist() == list(range(n))  # a sorted table keeps its order


@pytest.mark.parametrize("distinct", [1, 2, 8, 63, 64, 65, 200])
@pytest.mark.parametrize("n", [256, 1000])
def test_op_groups_interleaved_sas(n, distinct):
    """Ops of ``distinct`` keys in turn (a gateway's SAs round robin), the keys in a shuffled
    order: one group per key, the ops of each in table order, as the twin groups them."""
    rng = np.random.default_rng(n + distinct)
    keys = [(int(rng.integers(0, 2)), int(OpKind.ESP_SEAL), int(rng.integers(1, 5)),
             int(k) * 3 - 90) for k in rng.permutation(distinct)]
    keys = list(dict.fromkeys(keys))
    rows = [keys[i % len(keys)] for i in range(n)]
    order, groups = _groups_both(_op_table(rows))
    assert len(groups) == len(keys)


def test_op_groups_of_an_empty_table(kernels):
    order, groups = kernels.op_groups(np.zeros(0, np.uint8))
    assert order.shape == (0,) and order.dtype == np.int32
    assert groups.shape == (0, 6) and groups.dtype == np.int64


OP_GROUPS_WRONG = {  # case: (wrong value, exception both stages raise)
    "misaligned": (np.zeros(CRYPTO_OP_DTYPE.itemsize + 1, np.uint8), ValueError),
    "2d": (np.zeros((2, CRYPTO_OP_DTYPE.itemsize), np.uint8), ValueError),
    "int8": (np.zeros(CRYPTO_OP_DTYPE.itemsize, np.int8), ValueError),
    "struct": (np.zeros(2, CRYPTO_OP_DTYPE), ValueError),
    "list": ([0] * CRYPTO_OP_DTYPE.itemsize, TypeError),
}
OP_GROUPS_BUGS: dict = {}


@pytest.mark.parametrize("case", list(OP_GROUPS_WRONG))
def test_op_groups_rejects_wrong_buffers(request, kernels, case):
    known_bug(request, kernels, case, OP_GROUPS_BUGS)
    wrong, error = OP_GROUPS_WRONG[case]
    with pytest.raises((ValueError, TypeError)) as raised:
        kernels.op_groups(wrong)
    assert raised.type is error  # the same exception on both


def test_op_groups_takes_read_only_ops(kernels):
    ops = _op_table([(0, 1, 3, 4), (0, 1, 1, 2), (0, 1, 3, 4)])
    ops.flags.writeable = False
    order, groups = kernels.op_groups(ops)
    assert order.tolist() == [1, 0, 2] and groups[:, :2].tolist() == [[0, 1], [1, 3]]


# -- tx_classify corner cases the fixes above pin down --------------------------------------------

def test_an_appended_icv_may_not_overflow_the_ipv4_length(kernels):
    sa, _ = SUITES[0]
    payload = bytes(65494)  # total length 65532 without ICV room
    frame, oob = esp_frame(sa, ipv6=False, payload=payload, icv_room=False)
    assert struct.unpack_from("!H", frame, 16)[0] == 65532
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[0], **oob)
    batch = builder.build()
    results = run_both(batch)
    assert_same(results, batch)
    assert Reason(int(results[0][1].reasons[0])) == Reason.MALFORMED_IP
    # with ICV room the same frame fits
    frame, oob = esp_frame(sa, ipv6=False, payload=payload[:-16], icv_room=True)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[0], **oob)
    batch = builder.build()
    results = run_both(batch)
    assert_same(results, batch)
    assert Reason(int(results[0][1].reasons[0])) == Reason.OK
    wire = results[0][1].wire.frame(0)
    assert len(wire) == 14 + 65532 and struct.unpack_from("!H", wire, 16)[0] == 65532


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_an_lso_segment_may_not_overflow_the_ip_length(ipv6):
    index = 0 if not ipv6 else 1
    sa, _ = SUITES[index]
    frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=70000, mss=66000, seq=sa.seq)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[index], **oob)
    frame, oob = lso_frame(sa, ipv6=ipv6, payload_len=70000, mss=65000, seq=sa.seq)
    builder.add_nbl([frame], offload_handle=TABLE.handles[index], **oob)
    batch = builder.build()
    results = run_both(batch)
    assert_same(results, batch)
    result = results[0][1]
    assert [Reason(int(r)) for r in result.reasons] == [Reason.LSO_BAD_PARAMS, Reason.OK]
    for frame in result.wire.frames():
        length = struct.unpack_from("!H", frame, 14 + (4 if ipv6 else 2))[0]
        assert length == len(frame) - 14 - (40 if ipv6 else 0)


def test_offload_disabled_passes_before_looking_at_handles_or_bytes():
    """docs/send-path.md: step 1 (offload disabled: transmit unchanged) comes before step 2
    ("Sending Network Data with IPsec Offload Version 2")."""
    sa, ipv6 = SUITES[0]
    good, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(20))
    builder = PacketBatchBuilder()
    builder.add_nbl([good], offload_handle=TABLE.handles[0], **oob)
    builder.add_nbl([good], offload_handle=TABLE.handles[0], tunnel_handle=TABLE.handles[1],
                    **oob)
    builder.add_nbl([b"\xff" * 9], offload_handle=12345, **oob)
    batch = builder.build()
    config = ALL_CONFIG & ~(Config.ESP_IPV4 | Config.ESP_IPV6)
    results = run_both(batch, config=config)
    assert_same(results, batch)
    result = results[0][1]
    assert set(Reason(int(r)) for r in result.reasons) == {Reason.PASS_DISABLED}
    assert result.wire.frames() == batch.frames()


def test_a_record_with_alignment_0_fails_its_frames_in_both_kernels():
    """A record whose ESP alignment is 0 (no ADD_SA makes one: a corrupt table) fails the
    non-LSO frames with BAD_ALIGNMENT in both kernels, never a division by zero."""
    table = TABLE.mp.sas.snapshot()
    records = np.frombuffer(table.records_bytes, SA_RECORD_DTYPE).copy()
    records["xf"]["align"][:] = 0
    corrupt = SimpleNamespace(records_bytes=records.view(np.uint8), keys=table.keys)
    builder = PacketBatchBuilder()
    sa, ipv6 = SUITES[0]
    frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(range(37)), seq=sa.seq, icv_room=True)
    builder.add_nbl([frame], offload_handle=TABLE.handles[0], **oob)
    batch = builder.build()
    for module in KERNELS:
        result = run_send(batch, corrupt, config=ALL_CONFIG, icv_space=IcvSpace.AUTO,
                          iv_source=IvSource.NIC, kernels=module,
                          backends=_backends(RecordingBackend()), random_source=random_bytes)
        assert result.reasons.tolist() == [Reason.BAD_ALIGNMENT]


def _rfc1071_sum(data: bytes, seed: int = 0) -> int:
    s = seed + sum(int.from_bytes(data[i:i + 2].ljust(2, b"\0"), "big")
                   for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_internet_checksum_equals_rfc1071():
    """csum_add (its wide 32-bytes-a-step loop from 64 bytes on, the 8-byte and 2-byte tails)
    against a plain RFC 1071 sum: every length to 300 at every offset mod 16, random longer
    ones, all-0xFF data past one lane block (16384 steps) and the seed."""
    rng = random.Random(7)
    buf = bytes(rng.getrandbits(8) for _ in range(1 << 16))
    for n in range(300):
        off = n % 16
        assert _fastpath.internet_checksum_sum(buf[off:off + n]) == _rfc1071_sum(buf[off:off + n])
    for _ in range(200):
        n, off, seed = rng.randrange(60000), rng.randrange(17), rng.randrange(1 << 20)
        data = buf[off:off + n]
        assert _fastpath.internet_checksum_sum(data, seed) == _rfc1071_sum(data, seed)
    ones = b"\xff" * (32 * 16384 * 2 + 77)
    assert _fastpath.internet_checksum_sum(ones) == _rfc1071_sum(ones)
    assert _fastpath.internet_checksum_sum(b"\x80\x00" * 40000) == _rfc1071_sum(b"\x80\x00" * 40000)
