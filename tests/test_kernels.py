"""The compiled kernels (ipsecoffload._fastpath) against their pure-Python twin
(ipsecoffload.datapath.twin): the struct layouts, the argument checks, emit's refusal of
corrupt plans, and a hypothesis test that runs whole batches of good, damaged and random
frames through both and demands the same bytes.

Runs on the normal and on the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1): there a
kernel access outside a buffer raises IndexError, which fails these tests.
"""
from __future__ import annotations

import struct
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ipsecoffload import Miniport, PacketBatchBuilder, SaConfig, _fastpath, ndis
from ipsecoffload.datapath import twin as _pykernels
from ipsecoffload.crypto import JobTable
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath.layout import (NB_PLAN_DTYPE, SA_RECORD_DTYPE, Config, IcvSpace, IvSource,
                                 Reason)
from ipsecoffload.datapath.tx import _exclusive_cumsum, run_send

KERNELS = [_fastpath, _pykernels]
KERNEL_IDS = ["compiled", "python"]
ALL_CONFIG = int(Config.ESP_IPV4 | Config.ESP_IPV6 | Config.LSO_V1 | Config.LSO_V2_IPV4
                 | Config.LSO_V2_IPV6 | Config.LSO_WITH_IPSEC)


@pytest.fixture(params=KERNELS, ids=KERNEL_IDS)
def kernels(request):
    return request.param


def random_bytes(n: int) -> bytes:
    """A fixed 'random' source: the twins must see the same CBC IVs."""
    return bytes((i * 97 + 13) & 0xFF for i in range(n))


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
    """A non-LSO frame as the stack hands it over (spec §6.2): trailer framed, ICV room."""
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
    """An LSO super-packet (spec §6.8): headers, ESP header, IV room, one TCP header, the
    whole payload, then `padl` discardable bytes; no trailer."""
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


# -- recording what the kernels produce ------------------------------------------------------

class Recorder:
    """Stands in for a kernels module inside run_send and keeps copies of what each kernel
    wrote: the plans, the NBL statuses, the output arena and every job array."""

    def __init__(self, module):
        self.module = module

    def classify(self, *args):
        self.module.classify(*args)
        self.plans, self.nbl_status = args[16].copy(), args[17].copy()

    def emit(self, *args):
        self.module.emit(*args)
        self.emitted = [a.copy() for a in args[11:]]  # out, out_off .. job_ip

    def finalize(self, *args):
        self.module.finalize(*args)
        self.final_out = args[0].copy()


def run_both(batch, *, config=ALL_CONFIG, icv_space=IcvSpace.AUTO, iv_source=IvSource.NIC,
             table=None):
    table = table or TABLE.mp.sas.snapshot()
    results = []
    for module in KERNELS:
        rec = Recorder(module)
        result = run_send(batch, table, config=config, icv_space=icv_space,
                          iv_source=iv_source, kernels=rec, backend=ReferenceBackend(),
                          random_source=random_bytes)
        results.append((rec, result))
    return results


def assert_same(results, batch):
    (rc, c), (rp, p) = results
    assert rc.plans.tobytes() == rp.plans.tobytes()
    assert np.array_equal(rc.nbl_status, rp.nbl_status)
    assert len(rc.emitted) == len(rp.emitted)
    for a, b in zip(rc.emitted, rp.emitted):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(rc.final_out, rp.final_out)
    assert np.array_equal(c.status, p.status)
    assert np.array_equal(c.reasons, p.reasons)
    assert np.array_equal(c.lso_complete, p.lso_complete)
    assert c.segments_per_slot == p.segments_per_slot
    assert np.array_equal(c.wire.arena, p.wire.arena)
    for name in ("nb_off", "nb_len", "nb_nbl"):
        assert np.array_equal(getattr(c.wire, name), getattr(p.wire, name))
    assert_well_formed(c, batch)


def assert_well_formed(result, batch):
    """Every output frame inside the output arena, back to back; no frame of a failed NBL;
    the NBL status is the status of its buffers' plans."""
    wire = result.wire
    assert np.all(wire.nb_off >= 0) and np.all(wire.nb_len >= 0)
    assert np.all(wire.nb_off + wire.nb_len <= len(wire.arena))
    assert int(wire.nb_len.sum()) == len(wire.arena)
    assert np.array_equal(wire.nb_off, _exclusive_cumsum(wire.nb_len))
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


# -- layout ------------------------------------------------------------------------------------

def test_struct_sizes_match_the_dtypes():
    assert _fastpath.STRUCT_SIZES == {"SaRecord": SA_RECORD_DTYPE.itemsize,
                                      "NbPlan": NB_PLAN_DTYPE.itemsize}
    assert _pykernels.STRUCT_SIZES == _fastpath.STRUCT_SIZES


@pytest.mark.parametrize("struct_name,dtype", [("SaRecord", SA_RECORD_DTYPE),
                                                ("NbPlan", NB_PLAN_DTYPE)])
def test_struct_offsets_match_the_dtypes(struct_name, dtype):
    offsets = _fastpath.struct_offsets()[struct_name]
    assert offsets == {name: dtype.fields[name][1] for name in dtype.names}


def test_reason_codes_fit_the_plan_field():
    assert max(Reason) < 256 and sorted(Reason) == list(range(len(Reason)))


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


def test_empty_batch(kernels):
    batch = PacketBatchBuilder().build()
    result = run_send(batch, TABLE.mp.sas.snapshot(), config=ALL_CONFIG,
                      icv_space=IcvSpace.AUTO, iv_source=IvSource.NIC, kernels=kernels,
                      backend=ReferenceBackend(), random_source=random_bytes)
    assert len(result.status) == 0 and result.wire.num_buffers == 0


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
        # the icv_space=auto probe (spec §9 G4) cannot mistake payload for a trailer
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
                               v2=draw(st.booleans()),
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


# -- emit refuses corrupt plans, before any write ----------------------------------------------

POISON = 0x5A


def emit_args(batch, table, plans, *, rand=None, out_extra=0):
    """emit's arguments for these plans, as run_send builds them; the output arrays are
    filled with a poison pattern so that a write shows."""
    plan = plans.view(NB_PLAN_DTYPE)
    nsegs = plan["nsegs"].astype(np.int64)
    protected = np.where(plan["slot"] >= 0, nsegs, 0)
    n_frames, n_jobs = max(0, int(nsegs.sum())), max(0, int(protected.sum()))
    jobs = JobTable.empty(n_jobs)
    for name in ("slot", "esp", "text", "text_len", "icv", "seq_hi", "post", "udp", "ip"):
        getattr(jobs, name).fill(POISON)
    out = np.full(max(0, int(plan["out_len"].sum())) + out_extra, POISON, np.uint8)
    if rand is None:
        rand = np.frombuffer(random_bytes(16 * n_jobs), np.uint8)
    return dict(arena=batch.arena, nb_off=batch.nb_off, nb_len=batch.nb_len,
                nb_nbl=batch.nb_nbl, plans=plans, records=table.records_bytes,
                iv_source=int(IvSource.NIC), rand=rand,
                nb_out_pos=_exclusive_cumsum(plan["out_len"]), nb_frame=_exclusive_cumsum(nsegs),
                nb_job=_exclusive_cumsum(protected), out=out,
                out_off=np.full(n_frames, POISON, np.int64),
                out_len=np.full(n_frames, POISON, np.int64),
                out_nbl=np.full(n_frames, POISON, np.int32),
                job_slot=jobs.slot, job_esp=jobs.esp, job_text=jobs.text,
                job_text_len=jobs.text_len, job_icv=jobs.icv, job_seq_hi=jobs.seq_hi,
                job_post=jobs.post, job_udp=jobs.udp, job_ip=jobs.ip)


EMIT_ORDER = ["arena", "nb_off", "nb_len", "nb_nbl", "plans", "records", "iv_source", "rand",
              "nb_out_pos", "nb_frame", "nb_job", "out", "out_off", "out_len", "out_nbl",
              "job_slot", "job_esp", "job_text", "job_text_len", "job_icv", "job_seq_hi",
              "job_post", "job_udp", "job_ip"]
OUTPUTS = EMIT_ORDER[11:]


def call_emit(kernels, args):
    kernels.emit(*[args[name] for name in EMIT_ORDER])


def classify_into(kernels, batch, table, config=ALL_CONFIG, icv_space=IcvSpace.AUTO):
    plans = np.zeros(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8)
    status = np.zeros(len(batch), np.uint32)
    kernels.classify(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, batch.nb_count(),
                     batch.offload_handle, batch.tunnel_handle, batch.next_header,
                     batch.pad_length, batch.ah_off4, batch.esp_off4, batch.lso_info,
                     batch.l2_len, table.records_bytes, config, int(icv_space), plans, status)
    return plans, status


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


def _set(field, value):
    def corrupt(plan, batch, table):
        plan[0][field] = value
    return corrupt


def _add(field, delta):
    def corrupt(plan, batch, table):
        plan[0][field] = int(plan[0][field]) + delta
    return corrupt


def _fields(**values):
    def corrupt(plan, batch, table):
        new = {name: value(plan[0]) for name, value in values.items()}
        for name, value in new.items():
            plan[0][name] = value
    return corrupt


CORRUPTIONS = {
    "out_len_too_small": _add("out_len", -1),
    "out_len_too_big": _add("out_len", 1),
    "negative_out_len": _set("out_len", -5),
    "slot_out_of_range": lambda plan, b, t: plan[0].__setitem__("slot", len(t.records) + 3),
    "slot_of_a_free_record": lambda plan, b, t: plan[0].__setitem__(
        "slot", int(np.flatnonzero(t.records["in_use"] == 0)[0])),
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


def _run_corrupt(kernels, kind, corrupt, suite=0):
    batch = _one(kind, suite)
    table = TABLE.mp.sas.snapshot()
    plans, status = classify_into(kernels, batch, table)
    assert not status.any()
    corrupt(plans.view(NB_PLAN_DTYPE), batch, table)
    args = emit_args(batch, table, plans, out_extra=8192)
    before = {name: args[name].copy() for name in OUTPUTS}
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    for name in OUTPUTS:  # nothing was written
        assert np.array_equal(args[name], before[name]), name


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", ["esp", "lso"])
def test_emit_rejects_corrupt_plans(kernels, kind, corruption):
    _run_corrupt(kernels, kind, CORRUPTIONS[corruption])


@pytest.mark.parametrize("corruption", list(LSO_CORRUPTIONS))
def test_emit_rejects_corrupt_lso_plans(kernels, corruption):
    _run_corrupt(kernels, "lso", LSO_CORRUPTIONS[corruption])


def test_emit_rejects_an_lso_plan_whose_ip_length_overflows(kernels):
    """A plan claiming a single 65535+ byte segment (classify never makes one)."""
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
    plans, status = classify_into(kernels, batch, table)
    assert not status.any()
    corrupt(plans.view(NB_PLAN_DTYPE), batch, table)
    args = emit_args(batch, table, plans)
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    assert np.all(args["out"] == POISON)


@pytest.mark.parametrize("change", [
    "out_too_small", "out_off_short", "out_len_long", "out_nbl_short", "job_short",
    "job_icv_long", "nb_out_pos_shifted", "nb_frame_shifted", "nb_job_shifted", "rand_short",
    "rand_empty", "nb_off_past_arena", "nb_len_overflow", "nb_len_short_array",
    "records_misaligned", "plans_wrong_size"])
def test_emit_rejects_inconsistent_arrays(kernels, change):
    batch = _one("lso", suite=5)  # AES-CBC: random IVs from rand
    table = TABLE.mp.sas.snapshot()
    plans, _ = classify_into(kernels, batch, table)
    args = emit_args(batch, table, plans)
    if change == "out_too_small":
        args["out"] = args["out"][:-1].copy()
    elif change == "out_off_short":
        args["out_off"] = args["out_off"][:-1].copy()
    elif change == "out_len_long":
        args["out_len"] = np.append(args["out_len"], 0)
    elif change == "out_nbl_short":
        args["out_nbl"] = args["out_nbl"][:-1].copy()
    elif change == "job_short":
        args["job_text"] = args["job_text"][:-1].copy()
    elif change == "job_icv_long":
        args["job_icv"] = np.append(args["job_icv"], 0)
    elif change == "nb_out_pos_shifted":
        args["nb_out_pos"] = args["nb_out_pos"] + 1
    elif change == "nb_frame_shifted":
        args["nb_frame"] = args["nb_frame"].copy()
        args["nb_frame"][-1] += 1
    elif change == "nb_job_shifted":
        args["nb_job"] = args["nb_job"].copy()
        args["nb_job"][-1] += 1
    elif change == "rand_short":
        args["rand"] = args["rand"][:-1].copy()
    elif change == "rand_empty":
        args["rand"] = np.zeros(0, np.uint8)
    elif change == "nb_off_past_arena":
        args["nb_off"] = args["nb_off"] + 1
    elif change == "nb_len_overflow":
        args["nb_off"] = np.array([2**62, 2**62], np.int64)
        args["nb_len"] = np.array([2**62, 2**62], np.int64)
    elif change == "nb_len_short_array":
        args["nb_len"] = args["nb_len"][:1].copy()
    elif change == "records_misaligned":
        args["records"] = args["records"][:-1].copy()
    elif change == "plans_wrong_size":
        args["plans"] = np.append(args["plans"], np.uint8(0))
    before = {name: args[name].copy() for name in OUTPUTS}
    with pytest.raises(ValueError):
        call_emit(kernels, args)
    for name in OUTPUTS:
        assert np.array_equal(args[name], before[name]), name


@pytest.mark.parametrize("name,wrong", [
    ("arena", np.zeros(8, np.int8)), ("nb_off", np.zeros(2, np.int32)),
    ("plans", np.zeros(2 * NB_PLAN_DTYPE.itemsize, np.int8)), ("out", np.zeros(4, np.uint16)),
    ("job_seq_hi", np.zeros(1, np.int32)), ("out_nbl", np.zeros(1, np.int64)),
    ("nb_job", np.zeros((2, 1), np.int64)), ("rand", [0] * 64), ("out_off", "frames")])
def test_emit_rejects_wrong_dtypes(kernels, name, wrong):
    batch = _one("esp")
    table = TABLE.mp.sas.snapshot()
    plans, _ = classify_into(kernels, batch, table)
    args = emit_args(batch, table, plans)
    args[name] = wrong
    with pytest.raises((ValueError, TypeError)):
        call_emit(kernels, args)


def test_emit_rejects_read_only_outputs(kernels):
    batch = _one("esp")
    table = TABLE.mp.sas.snapshot()
    plans, _ = classify_into(kernels, batch, table)
    args = emit_args(batch, table, plans)
    args["out"].flags.writeable = False
    with pytest.raises(ValueError):
        call_emit(kernels, args)


CLASSIFY_ORDER = ["arena", "nb_off", "nb_len", "nb_nbl", "nb_count", "offload_handle",
                  "tunnel_handle", "next_header", "pad_length", "ah_off4", "esp_off4",
                  "lso_info", "l2_len", "records", "config", "icv_space", "plans", "nbl_status"]


def classify_args(batch, table):
    return dict(arena=batch.arena, nb_off=batch.nb_off, nb_len=batch.nb_len,
                nb_nbl=batch.nb_nbl, nb_count=batch.nb_count(),
                offload_handle=batch.offload_handle, tunnel_handle=batch.tunnel_handle,
                next_header=batch.next_header, pad_length=batch.pad_length,
                ah_off4=batch.ah_off4, esp_off4=batch.esp_off4, lso_info=batch.lso_info,
                l2_len=batch.l2_len, records=table.records_bytes, config=ALL_CONFIG,
                icv_space=0, plans=np.zeros(batch.num_buffers * NB_PLAN_DTYPE.itemsize, np.uint8),
                nbl_status=np.zeros(len(batch), np.uint32))


@pytest.mark.parametrize("name,wrong", [
    ("arena", np.zeros(8, np.int8)), ("nb_off", np.zeros(2, np.int32)),
    ("nb_len", np.zeros(2, np.uint64)), ("nb_nbl", np.zeros(2, np.int64)),
    ("offload_handle", np.zeros(2, np.int64)), ("l2_len", np.zeros(2, np.uint8)),
    ("lso_info", np.zeros(2, np.uint32)), ("esp_off4", np.zeros(2, np.int16)),
    ("plans", np.zeros(2 * NB_PLAN_DTYPE.itemsize, np.int8)),
    ("nbl_status", np.zeros(2, np.int32)), ("records", [0] * 32), ("next_header", None)])
def test_classify_rejects_wrong_dtypes(kernels, name, wrong):
    args = classify_args(_one("esp"), TABLE.mp.sas.snapshot())
    args[name] = wrong
    with pytest.raises((ValueError, TypeError)):
        kernels.classify(*[args[n] for n in CLASSIFY_ORDER])


@pytest.mark.parametrize("change", ["nb_len_short", "nb_nbl_long", "offload_handle_short",
                                    "l2_len_long", "plans_short", "records_misaligned",
                                    "nb_nbl_outside", "nb_off_past_arena", "nb_off_negative",
                                    "nb_len_overflow", "plans_read_only"])
def test_classify_rejects_inconsistent_arrays(kernels, change):
    args = classify_args(_one("esp"), TABLE.mp.sas.snapshot())
    if change == "nb_len_short":
        args["nb_len"] = args["nb_len"][:1].copy()
    elif change == "nb_nbl_long":
        args["nb_nbl"] = np.append(args["nb_nbl"], np.int32(1))
    elif change == "offload_handle_short":
        args["offload_handle"] = args["offload_handle"][:1].copy()
    elif change == "l2_len_long":
        args["l2_len"] = np.append(args["l2_len"], np.uint16(14))
    elif change == "plans_short":
        args["plans"] = args["plans"][:-1].copy()
    elif change == "records_misaligned":
        args["records"] = args["records"][:-1].copy()
    elif change == "nb_nbl_outside":
        args["nb_nbl"] = np.array([0, 2], np.int32)
    elif change == "nb_off_past_arena":
        args["nb_off"] = args["nb_off"] + 1
    elif change == "nb_off_negative":
        args["nb_off"] = np.array([-1, 0], np.int64)
    elif change == "nb_len_overflow":
        args["nb_off"] = np.array([2**62, 0], np.int64)
        args["nb_len"] = np.array([2**62, 0], np.int64)
    elif change == "plans_read_only":
        args["plans"].flags.writeable = False
    plans_before = args["plans"].copy()
    with pytest.raises(ValueError):
        kernels.classify(*[args[n] for n in CLASSIFY_ORDER])
    assert np.array_equal(args["plans"], plans_before)


FINALIZE_ORDER = ["out", "records", "job_slot", "job_icv", "job_post", "job_udp", "job_ip"]


def _udp6_job():
    """One NBL through UDP-encapsulated ESP over IPv6: its job needs finalize's checksum."""
    index = next(i for i, (sa, ipv6) in enumerate(SUITES) if sa.udp_encap and ipv6)
    sa, ipv6 = SUITES[index]
    frame, oob = esp_frame(sa, ipv6=ipv6, payload=bytes(40), seq=sa.seq)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], offload_handle=TABLE.handles[index], **oob)
    batch = builder.build()
    table = TABLE.mp.sas.snapshot()
    plans, _ = classify_into(_fastpath, batch, table)
    args = emit_args(batch, table, plans)
    call_emit(_fastpath, args)
    return dict(out=args["out"], records=table.records_bytes, job_slot=args["job_slot"],
                job_icv=args["job_icv"], job_post=args["job_post"], job_udp=args["job_udp"],
                job_ip=args["job_ip"])


def test_finalize_twins_agree():
    outs = []
    for module in KERNELS:
        args = _udp6_job()
        assert args["job_post"][0] == 1
        module.finalize(*[args[n] for n in FINALIZE_ORDER])
        outs.append(args["out"])
    assert np.array_equal(*outs)


@pytest.mark.parametrize("change", ["slot_negative", "slot_past_table", "icv_past_out",
                                    "icv_huge", "ip_past_out", "ip_huge", "ip_negative",
                                    "udp_before_ip_end", "udp_huge", "udp_past_icv",
                                    "icv_short_array", "ip_long_array"])
def test_finalize_rejects_jobs_outside_the_arena(kernels, change):
    args = _udp6_job()
    big = 2**63 - 4
    if change == "slot_negative":
        args["job_slot"][0] = -1
    elif change == "slot_past_table":
        args["job_slot"][0] = len(args["records"]) // SA_RECORD_DTYPE.itemsize
    elif change == "icv_past_out":
        args["job_icv"][0] = len(args["out"]) - 1
    elif change == "icv_huge":
        args["job_icv"][0] = big
    elif change == "ip_past_out":
        args["job_ip"][0] = len(args["out"]) - 39
    elif change == "ip_huge":
        args["job_ip"][0] = big
    elif change == "ip_negative":
        args["job_ip"][0] = -1
    elif change == "udp_before_ip_end":
        args["job_udp"][0] = args["job_ip"][0] + 39
    elif change == "udp_huge":
        args["job_udp"][0] = big
    elif change == "udp_past_icv":
        args["job_udp"][0] = args["job_icv"][0] + 16 - 7
    elif change == "icv_short_array":
        args["job_icv"] = args["job_icv"][:0].copy()
    elif change == "ip_long_array":
        args["job_ip"] = np.append(args["job_ip"], 0)
    before = args["out"].copy()
    with pytest.raises(ValueError):
        kernels.finalize(*[args[n] for n in FINALIZE_ORDER])
    assert np.array_equal(args["out"], before)


@pytest.mark.parametrize("name,wrong", [("out", np.zeros(8, np.int8)),
                                        ("job_slot", np.zeros(1, np.int64)),
                                        ("job_post", [1]), ("job_ip", np.zeros(1, np.uint64))])
def test_finalize_rejects_wrong_dtypes(kernels, name, wrong):
    args = _udp6_job()
    args[name] = wrong
    with pytest.raises((ValueError, TypeError)):
        kernels.finalize(*[args[n] for n in FINALIZE_ORDER])


# -- classify corner cases the fixes above pin down --------------------------------------------

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
    """spec §6.1: step 1 (offload disabled: transmit unchanged) comes before step 2."""
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
