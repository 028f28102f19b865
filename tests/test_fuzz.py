"""Hypothesis fuzzing of the send kernels: random frames and random out-of-band values through
run_send (classify -> emit -> seal -> finalize), and corrupted plans and job tables straight
into emit and finalize.

What must hold whatever the input: no exception from a packet fault (statuses instead), the
output sizes add up, and a corrupt plan is refused with ValueError before anything is
written. CI reruns this file on the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1),
where a kernel access outside a buffer raises IndexError instead of corrupting memory, so
any such access fails a test there; on the normal build it would crash or go unnoticed.
"""
from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from ipsecoffload import Miniport, PacketBatchBuilder, SaConfig, _fastpath, ndis
from ipsecoffload.datapath import twin as _pykernels
from ipsecoffload.crypto import JobTable
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath.layout import (NB_PLAN_DTYPE, SA_RECORD_DTYPE, Config, IcvSpace, IvSource,
                                 JobPost, Reason)
from ipsecoffload.datapath.tx import _exclusive_cumsum, run_send

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALL_CONFIG = int(Config.ESP_IPV4 | Config.ESP_IPV6 | Config.LSO_V1 | Config.LSO_V2_IPV4
                 | Config.LSO_V2_IPV6 | Config.LSO_WITH_IPSEC)
PASSED = (Reason.PASS_NO_HANDLE, Reason.PASS_DISABLED)


def test_report_the_build(request, record_testsuite_property):
    """Which build ran this file (passes either way): CI runs it on both. Shown in the JUnit
    XML (a test-suite property, and a test property for xunit1), and in the terminal with
    ``-rP`` / ``-rA``."""
    checked = bool(_fastpath.BOUNDS_CHECKED)
    record_testsuite_property("ipsecoffload_bounds_checked", str(checked))
    request.node.user_properties.append(("bounds_checked", checked))
    request.node.add_report_section("call", "build",
                                    f"ipsecoffload._fastpath.BOUNDS_CHECKED = {checked} "
                                    f"({_fastpath.__file__})")
    assert _fastpath.BOUNDS_CHECKED in (True, False)


def random_bytes(n: int) -> bytes:
    return bytes((i * 29 + 1) & 0xFF for i in range(n))


# -- the SA table ------------------------------------------------------------------------------

SAS = [  # (config, ipv6)
    (SaConfig(spi=0x11, encryption="aes-gcm-128", key=bytes(range(20))), False),
    (SaConfig(spi=0x12, encryption="aes-gcm-256", key=bytes(range(36)), icv_len=8, esn=True,
              seq=3 << 32, udp_encap=(4500, 4500)), True),
    (SaConfig(spi=0x13, encryption="null", integrity="aes-gmac-192", auth_key=bytes(28)), False),
    (SaConfig(spi=0x14, encryption="aes-cbc-256", key=bytes(32), integrity="hmac-sha256-128",
              auth_key=bytes(32), udp_encap=(4500, 4500)), False),
    (SaConfig(spi=0x15, encryption="aes-cbc-128", key=bytes(16), integrity="hmac-md5-96",
              auth_key=bytes(16)), True),
    (SaConfig(spi=0x16, encryption="null", integrity="hmac-sha1-96", auth_key=bytes(20),
              udp_encap=(4500, 4500)), True),
]


def _table():
    mp = Miniport(random_source=random_bytes)
    handles = []
    for sa, ipv6 in SAS:
        entry = sa.add_sa_entry(ipv6=ipv6)
        assert mp.add_sa(entry) == ndis.NdisStatus.SUCCESS
        handles.append(entry.offload_handle)
    inbound = SAS[0][0].add_sa_entry(ipv6=False, inbound=True)
    assert mp.add_sa(inbound) == ndis.NdisStatus.SUCCESS
    handles.append(inbound.offload_handle)
    gone = SAS[1][0].add_sa_entry(ipv6=True)
    assert mp.add_sa(gone) == ndis.NdisStatus.SUCCESS
    mp.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=gone.offload_handle))
    handles.append(gone.offload_handle)
    return mp, handles


MINIPORT, HANDLES = _table()
TABLE = MINIPORT.sas.snapshot()


# -- frames ------------------------------------------------------------------------------------

def _frame_start(sa: SaConfig, ipv6: bool, rest: bytes, l2: int) -> tuple[bytes, int]:
    """L2 | IP | [UDP] | SPI SN | IV room | rest, with the IP length of the whole frame;
    returns the frame and the ESP offset / 4."""
    esp = struct.pack("!II", sa.spi, 1) + bytes(sa.iv_len) + rest
    udp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) if sa.udp_encap else b""
    proto = 17 if udp else 50
    if ipv6:
        ip = struct.pack("!IHBB", 6 << 28, (len(udp) + len(esp)) & 0xFFFF, proto, 64) + bytes(32)
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, (20 + len(udp) + len(esp)) & 0xFFFF, 1, 0, 64,
                         proto, 0, bytes(4), bytes(4))
    return bytes(l2) + ip + udp + esp, (len(ip) + len(udp)) // 4


@st.composite
def frames_and_oob(draw):
    """A frame that is random, or well formed for one of the SAs and then corrupted, with
    OOB values that are random or the ones the frame wants."""
    index = draw(st.integers(0, len(SAS) - 1))
    sa, ipv6 = SAS[index]
    l2 = draw(st.sampled_from([14, 0, 14, 18]))
    shape = draw(st.sampled_from(["esp", "lso", "random"]))
    oob = {"l2_len": l2}
    if shape == "random":
        frame = draw(st.binary(max_size=300))
        if frame and draw(st.booleans()):  # a plausible IP version nibble
            at = min(l2, len(frame) - 1)
            frame = frame[:at] + bytes([draw(st.sampled_from([0x45, 0x46, 0x4F, 0x60]))]) \
                + frame[at + 1:]
        oob["esp_off4"] = draw(st.sampled_from([5, 7, 10, 12, 0, 1, 255]))
        oob["next_header"] = draw(st.integers(0, 255))
        oob["pad_length"] = draw(st.integers(0, 255))
    elif shape == "esp":
        payload = draw(st.binary(max_size=120))
        nh, pad = draw(st.integers(0, 255)), draw(st.integers(0, 20))
        trailer = bytes(range(1, pad + 1)) + bytes([pad, nh])
        icv_room = bytes(sa.icv) if draw(st.booleans()) else b""
        frame, esp_off4 = _frame_start(sa, ipv6, payload + trailer + icv_room, l2)
        oob.update(esp_off4=esp_off4, next_header=nh, pad_length=pad)
    else:
        thl = draw(st.sampled_from([20, 24, 60, 16, 64]))
        tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, ((thl // 4) & 0xF) << 4, 0x18, 0, 0, 0)
        tcp += bytes(max(0, thl - 20))
        padl = draw(st.integers(0, 8))
        body = tcp + draw(st.binary(max_size=600)) + bytes(padl)
        frame, esp_off4 = _frame_start(sa, ipv6, body, l2)
        tcp_off = l2 + esp_off4 * 4 + 8 + sa.iv_len
        mss = draw(st.sampled_from([0, 1, 2, 3, 100, 536, 1460, 0xFFFFF])
                   | st.integers(0, 0xFFFFF))
        lso = mss | (draw(st.sampled_from([tcp_off, tcp_off, 0, tcp_off + 4, 1023])) << 20)
        if draw(st.booleans()):
            lso |= (1 << 30) | (int(ipv6) << 31)
        oob.update(esp_off4=esp_off4, next_header=6, pad_length=padl, lso_info=lso)
    # corruption of bytes and of OOB values
    if frame and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(frame) - 1))
            frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1:]
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    oob["offload_handle"] = draw(st.sampled_from([HANDLES[index]] * 3 + HANDLES + [0])
                                 | st.integers(0, 2**64 - 1))
    for name, values in (("esp_off4", st.integers(0, 255)), ("pad_length", st.integers(0, 255)),
                         ("next_header", st.integers(0, 255)), ("ah_off4", st.integers(0, 255)),
                         ("l2_len", st.integers(0, 0xFFFF)),
                         ("lso_info", st.integers(0, 2**64 - 1)),
                         ("tunnel_handle", st.sampled_from(HANDLES) | st.integers(0, 2**64 - 1))):
        if draw(st.integers(0, 9)) == 9:
            oob[name] = draw(values)
    return frame, oob


@st.composite
def batches(draw):
    builder = PacketBatchBuilder()
    for _ in range(draw(st.integers(0, 6))):
        count = draw(st.sampled_from([1, 1, 1, 2, 3]))
        first_frame, oob = draw(frames_and_oob())
        frames = [first_frame] + [draw(frames_and_oob())[0] for _ in range(count - 1)]
        builder.add_nbl(frames, **oob)
    return builder.build()


class Recorder:
    """Passes through to the compiled kernels, keeping a copy of the plans."""

    def __init__(self, module):
        self.module = module

    def classify(self, *args):
        self.module.classify(*args)
        self.plans = args[16].copy()

    def emit(self, *args):
        self.module.emit(*args)

    def finalize(self, *args):
        self.module.finalize(*args)


def _ip_length_matches(frame: bytes, l2: int) -> bool:
    version = frame[l2] >> 4
    if version == 4:
        return struct.unpack_from("!H", frame, l2 + 2)[0] == len(frame) - l2
    return struct.unpack_from("!H", frame, l2 + 4)[0] == len(frame) - l2 - 40


@FUZZ
@given(batch=batches(),
       config=st.sampled_from([ALL_CONFIG, ALL_CONFIG]) | st.integers(0, 63),
       icv_space=st.sampled_from(list(IcvSpace)), iv_source=st.sampled_from(list(IvSource)))
def test_fuzz_run_send(batch, config, icv_space, iv_source):
    rec = Recorder(_fastpath)
    result = run_send(batch, TABLE, config=config, icv_space=icv_space, iv_source=iv_source,
                      kernels=rec, backend=ReferenceBackend(), random_source=random_bytes)
    plan = rec.plans.view(NB_PLAN_DTYPE)
    wire = result.wire
    # the output arena is exactly the planned frames, back to back
    assert len(wire.arena) == int(plan["out_len"].sum()) == int(wire.nb_len.sum())
    assert np.array_equal(wire.nb_off, _exclusive_cumsum(wire.nb_len))
    assert wire.num_buffers == int(plan["nsegs"].sum())
    assert len(result.status) == len(batch) and len(result.reasons) == batch.num_buffers
    frame_index = 0
    for i in range(batch.num_buffers):
        k = int(batch.nb_nbl[i])
        reason, p = Reason(int(result.reasons[i])), plan[i]
        mine = range(frame_index, frame_index + int(p["nsegs"]))
        frame_index += int(p["nsegs"])
        assert all(int(wire.nb_nbl[f]) == k for f in mine)
        assert sum(int(wire.nb_len[f]) for f in mine) == int(p["out_len"])
        if result.status[k]:  # a failed NBL sends nothing
            assert int(p["nsegs"]) == 0 and reason not in PASSED + (Reason.OK,)
            continue
        if reason in PASSED:  # no IPsec: unchanged, unless LSO asked for TCP segments
            if not p["lso"]:
                assert [wire.frame(f) for f in mine] == [batch.frame(i)]
            continue
        assert reason == Reason.OK and int(p["slot"]) >= 0
        icv = int(TABLE.records[int(p["slot"])]["icv_len"])
        l2 = int(batch.l2_len[k])
        if not p["lso"]:
            assert len(mine) == 1 and int(p["out_len"]) <= int(batch.nb_len[i]) + icv
        else:
            mss, body = int(p["mss"]), int(p["body_len"])
            assert len(mine) == max(1, -(-body // mss))
        for f in mine:  # every protected frame carries its own length in its IP header
            frame = wire.frame(f)
            assert _ip_length_matches(frame, l2)
            assert int(wire.nb_len[f]) <= l2 + (40 if p["ipv6"] else 0) + 0xFFFF


@settings(max_examples=50, deadline=None)
@given(frames=st.lists(st.binary(max_size=120), max_size=8), esp_off4=st.integers(0, 255))
def test_fuzz_miniport_send_counts_every_buffer(frames, esp_off4):
    """Random bytes through Miniport.send: one nb.* count per buffer, frames add up."""
    builder = PacketBatchBuilder()
    for frame in frames:
        builder.add_nbl([frame], offload_handle=HANDLES[0], esp_off4=esp_off4)
    batch = builder.build()
    before = sum(v for k, v in MINIPORT.counters.items() if k.startswith("nb."))
    result = MINIPORT.send(batch)
    after = sum(v for k, v in MINIPORT.counters.items() if k.startswith("nb."))
    assert after - before == batch.num_buffers
    assert len(result.wire.arena) == int(result.wire.nb_len.sum())
    assert set(int(s) for s in result.status) <= {ndis.NdisStatus.SUCCESS,
                                                  ndis.NdisStatus.FAILURE,
                                                  ndis.NdisStatus.INVALID_PACKET}


# -- emit with corrupted plans -----------------------------------------------------------------

PLAN_FIELDS = list(NB_PLAN_DTYPE.names)
BIG = 1 << 22  # larger outputs are not allocated: emit must then refuse the plan anyway


def _limits(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


@st.composite
def corruptions(draw):
    """1-3 (field, how) pairs: a new value near the old one, at a boundary, or anywhere."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(PLAN_FIELDS))
        lo, hi = _limits(NB_PLAN_DTYPE.fields[name][0])
        how = draw(st.sampled_from(["delta", "delta", "boundary", "any"]))
        if how == "delta":
            out.append((name, "delta", draw(st.integers(-70, 70))))
        elif how == "boundary":
            out.append((name, "set", draw(st.sampled_from(
                [lo, hi, 0, -1 if lo < 0 else 1, hi // 2 + 1, (hi >> 16) or 1]))))
        else:
            out.append((name, "set", draw(st.integers(lo, hi))))
    return out


def _emit_args(batch, plans, rand_len=None):
    """emit's arguments as run_send builds them, for whatever the plans say (sizes capped)."""
    plan = plans.view(NB_PLAN_DTYPE)
    nsegs = np.clip(plan["nsegs"].astype(np.int64), 0, None)
    protected = np.where(plan["slot"] >= 0, nsegs, 0)
    n_frames, n_jobs = int(nsegs.sum()), int(protected.sum())
    need = int(np.clip(plan["out_len"], 0, None).astype(object).sum())
    n_frames, n_jobs = min(n_frames, BIG // 64), min(n_jobs, BIG // 64)
    jobs = JobTable.empty(n_jobs)
    rand = np.frombuffer(random_bytes(16 * n_jobs if rand_len is None else rand_len), np.uint8)
    with np.errstate(over="ignore"):
        out_pos = _exclusive_cumsum(plan["out_len"])
    return [batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, plans, TABLE.records_bytes,
            int(IvSource.NIC), rand, out_pos, _exclusive_cumsum(plan["nsegs"].astype(np.int64)),
            _exclusive_cumsum(protected), np.full(min(need, BIG), 0x5A, np.uint8),
            np.zeros(n_frames, np.int64), np.zeros(n_frames, np.int64),
            np.zeros(n_frames, np.int32), jobs.slot, jobs.esp, jobs.text, jobs.text_len,
            jobs.icv, jobs.seq_hi, jobs.post, jobs.udp, jobs.ip]


def _good_batch(draw_sizes):
    builder = PacketBatchBuilder()
    for (sa, ipv6), handle, (payload, lso) in zip(SAS, HANDLES, draw_sizes):
        body = bytes(range(256)) * 3
        if lso:
            tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 5 << 4, 0x18, 0, 0, 0)
            frame, esp_off4 = _frame_start(sa, ipv6, tcp + body[:payload], 14)
            tcp_off = 14 + esp_off4 * 4 + 8 + sa.iv_len
            builder.add_nbl([frame], offload_handle=handle, esp_off4=esp_off4, next_header=6,
                            lso_info=(1 << 30) | (int(ipv6) << 31) | (tcp_off << 20) | 200)
        else:
            text = body[:payload]
            pad = -(len(text) + 2) % sa.align
            frame, esp_off4 = _frame_start(sa, ipv6, text + bytes(range(1, pad + 1))
                                           + bytes([pad, 17]) + bytes(sa.icv), 14)
            builder.add_nbl([frame], offload_handle=handle, esp_off4=esp_off4, next_header=17,
                            pad_length=pad)
    builder.add_nbl([b"\x45" + bytes(40)])  # a passthrough buffer
    return builder.build()


@FUZZ
@given(sizes=st.lists(st.tuples(st.integers(0, 700), st.booleans()), min_size=len(SAS),
                      max_size=len(SAS)),
       target=st.integers(0, len(SAS)), corruption=corruptions())
def test_fuzz_emit_with_corrupt_plans(sizes, target, corruption):
    """A plan changed after classify: emit either refuses it (ValueError, nothing written)
    or, if it is still self-consistent, both twins write the same bytes."""
    batch = _good_batch(sizes)
    plans = np.zeros(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    status = np.zeros(len(batch), np.uint32)
    _fastpath.classify(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, batch.nb_count(),
                       batch.offload_handle, batch.tunnel_handle, batch.next_header,
                       batch.pad_length, batch.ah_off4, batch.esp_off4, batch.lso_info,
                       batch.l2_len, TABLE.records_bytes, ALL_CONFIG, 0, plans, status)
    assert not status.any()
    plan = plans.view(NB_PLAN_DTYPE)
    for name, how, value in corruption:
        lo, hi = _limits(NB_PLAN_DTYPE.fields[name][0])
        new = int(plan[target][name]) + value if how == "delta" else value
        plan[target][name] = min(max(new, lo), hi)
    outcomes = []
    for module in (_fastpath, _pykernels):
        args = _emit_args(batch, plans.copy())
        before = [np.array(a, copy=True) for a in args[11:]]
        try:
            module.emit(*args)
        except ValueError:
            for a, b in zip(args[11:], before):
                assert np.array_equal(a, b)  # refused before any write
            outcomes.append(None)
        else:
            outcomes.append([np.array(a, copy=True) for a in args[11:]])
    assert (outcomes[0] is None) == (outcomes[1] is None)
    if outcomes[0] is not None:
        for a, b in zip(*outcomes):
            assert np.array_equal(a, b)


# -- finalize with random job tables -----------------------------------------------------------

@FUZZ
@given(size=st.integers(0, 300),
       jobs=st.lists(st.tuples(st.integers(-2, len(TABLE.records) + 1),
                               st.integers(-50, 350) | st.integers(-2**63, 2**63 - 1),
                               st.sampled_from([int(JobPost.UDP6_CHECKSUM), 0, 7]),
                               st.integers(-50, 350) | st.integers(-2**63, 2**63 - 1),
                               st.integers(-50, 350) | st.integers(-2**63, 2**63 - 1)),
                     max_size=6))
def test_fuzz_finalize(size, jobs):
    """Random job tables: finalize refuses what reaches outside the arena (ValueError,
    nothing written) and otherwise both twins write the same checksums."""
    outcomes = []
    for module in (_fastpath, _pykernels):
        out = np.frombuffer(random_bytes(size), np.uint8).copy()
        columns = list(zip(*jobs)) if jobs else [()] * 5
        args = [out, TABLE.records_bytes, np.array(columns[0], np.int32),
                np.array(columns[1], np.int64), np.array(columns[2], np.uint8),
                np.array(columns[3], np.int64), np.array(columns[4], np.int64)]
        try:
            module.finalize(*args)
        except ValueError:
            assert out.tobytes() == random_bytes(size)
            outcomes.append(None)
        else:
            outcomes.append(out.tobytes())
    assert outcomes[0] == outcomes[1]


# -- classify straight from random arrays ------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_fuzz_classify_random_arrays(data):
    """Random buffers and OOB arrays straight into both classify twins: same plans."""
    n_nbl = data.draw(st.integers(0, 5))
    counts = [data.draw(st.integers(1, 3)) for _ in range(n_nbl)]
    nb_nbl = np.repeat(np.arange(n_nbl, dtype=np.int32), counts)
    n_nb = len(nb_nbl)
    arena = np.frombuffer(data.draw(st.binary(max_size=400)), np.uint8).copy()
    cuts = sorted(data.draw(st.integers(0, len(arena))) for _ in range(2 * n_nb))
    nb_off = np.array(cuts[0::2], np.int64)
    nb_len = np.array(cuts[1::2], np.int64) - nb_off

    def per_nbl(dtype, strategy):
        return np.array([data.draw(strategy) for _ in range(n_nbl)], dtype)
    handles = st.sampled_from(HANDLES + [0]) | st.integers(0, 2**64 - 1)
    arrays = [arena, nb_off, nb_len, nb_nbl, np.array(counts, np.int32),
              per_nbl(np.uint64, handles),
              per_nbl(np.uint64, st.sampled_from([0, 0, 0]) | handles),
              per_nbl(np.uint8, st.integers(0, 255)), per_nbl(np.uint8, st.integers(0, 255)),
              per_nbl(np.uint8, st.sampled_from([0, 0, 1])),
              per_nbl(np.uint8, st.integers(0, 255)),
              per_nbl(np.uint64, st.sampled_from([0, 0]) | st.integers(0, 2**64 - 1)),
              per_nbl(np.uint16, st.sampled_from([0, 14]) | st.integers(0, 0xFFFF))]
    config = data.draw(st.integers(0, 63))
    icv_space = data.draw(st.integers(0, 2))
    results = []
    for module in (_fastpath, _pykernels):
        plans = np.full(n_nb * NB_PLAN_DTYPE.itemsize, 0xA5, np.uint8)
        status = np.full(n_nbl, 7, np.uint32)
        module.classify(*arrays, TABLE.records_bytes, config, icv_space, plans, status)
        results.append((plans, status))
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert np.array_equal(results[0][1], results[1][1])
    plan = results[0][0].view(NB_PLAN_DTYPE)
    for i in range(n_nb):
        p = plan[i]
        assert p["nsegs"] >= 0 and p["out_len"] >= 0
        if p["nsegs"] and p["slot"] < 0 and not p["lso"]:  # sent as it is
            assert p["nsegs"] == 1 and p["out_len"] == nb_len[i]
        assert (p["status"] == 0) == (results[0][1][nb_nbl[i]] == 0)


def test_sa_record_dtype_is_what_the_table_publishes():
    assert TABLE.records.dtype == SA_RECORD_DTYPE
    assert len(TABLE.records_bytes) == len(TABLE.records) * SA_RECORD_DTYPE.itemsize
