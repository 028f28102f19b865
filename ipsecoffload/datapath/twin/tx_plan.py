"""Twin of the compiled tx_plan (datapath/tx_plan.pxi): NBL-level outcome, output layout,
completion values and counters."""
from __future__ import annotations

import numpy as np

from ..layout import (COUNTERS, NB_PLAN_DTYPE, NBL_OOB_DTYPE, REASON_COUNT, SA_RECORD_DTYPE,
                      STATUS_FAILURE, STATUS_INVALID_PACKET, STATUS_RESOURCES, Reason, Suite)
from .common import _buffers, _records, xf0

LSO_TYPE_BIT = 1 << 30
MAX_OUTPUT = 1 << 48  # bytes one batch may produce (as the compiled stage)


def random_iv(p, recs) -> bool:
    """The NIC draws this plan's IVs at random (CBC); GCM and GMAC IVs are the SN."""
    slot = int(p["slot"])
    return (slot >= 0 and bool(p["fresh_iv"])
            and int(xf0(recs[slot])["suite"]) not in (Suite.AES_GCM, Suite.AES_GMAC,
                                                      Suite.AH_GMAC))


def rand_len(p, recs) -> int:
    """Random IV bytes of one segment: its layer's CBC IV, then (nested) the transport
    layer's."""
    n = int(xf0(recs[int(p["slot"])])["iv_len"]) if random_iv(p, recs) else 0
    if p["slot"] >= 0 and p["nested"] and p["in_fresh_iv"]:
        xf = xf0(recs[int(p["in_slot"])])
        if int(xf["suite"]) not in (Suite.AES_GCM, Suite.AES_GMAC, Suite.AH_GMAC):
            n += int(xf["iv_len"])
    return n


def ops_per_segment(p, recs) -> int:
    """Crypto ops of one protected segment: one per layer (ESP seal, AH sign), of both SAs
    for transport over tunnel."""
    if p["slot"] < 0:
        return 0
    n = int(recs[int(p["slot"])]["n_xf"])
    return n + int(recs[int(p["in_slot"])]["n_xf"]) if p["nested"] else n


def outer_scratch_len(p) -> int:
    """Scratch bytes of the plan's own AH layer: its IP header region through the AH header."""
    if p["slot"] < 0 or not p["ah_off"]:
        return 0
    return int(p["ah_off"]) + int(p["ah_len"]) - int(p["ip_off"])


def ah_scratch_len(p) -> int:
    """Scratch bytes of one AH segment; nested: the transport layer's region after it."""
    n = outer_scratch_len(p)
    if p["slot"] >= 0 and p["nested"] and p["in_ah_off"]:
        n += int(p["in_ah_off"]) + int(p["in_ah_len"]) - int(p["in_ip_off"])
    return n


def tx_plan(batch, records, plans, nbl_status, lso_done, counters):
    _buffers(oob_bytes=(batch.oob_bytes, np.uint8, False), records=(records, np.uint8, False),
             plans=(plans, np.uint8, True), nbl_status=(nbl_status, np.uint32, True),
             lso_done=(lso_done, np.uint64, True), counters=(counters, np.int64, True))
    if (len(plans) % NB_PLAN_DTYPE.itemsize or len(records) % SA_RECORD_DTYPE.itemsize
            or len(batch.oob_bytes) % NBL_OOB_DTYPE.itemsize):
        raise ValueError("plans / records / oob buffer size does not match the struct layout")
    oob = np.asarray(batch.oob_bytes).view(NBL_OOB_DTYPE)
    n_nbl = len(oob)
    if len(nbl_status) != n_nbl or len(lso_done) != n_nbl:
        raise ValueError("nbl_status and lso_done need one entry per NBL")
    if len(counters) != COUNTERS:
        raise ValueError(f"counters needs {COUNTERS} entries")
    recs = _records(records)
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    total = 0
    for i, p in enumerate(plan):
        if (not 0 <= p["nbl"] < n_nbl or p["nsegs"] < 0 or p["out_len"] < 0
                or (p["nsegs"] == 0 and p["out_len"] != 0) or p["reason"] >= REASON_COUNT
                or (p["slot"] >= 0 and (p["slot"] >= len(recs)
                                        or recs[int(p["slot"])]["n_xf"] > 2))
                or (p["slot"] >= 0 and p["nested"] and (
                    p["in_slot"] < 0 or p["in_slot"] >= len(recs)
                    or recs[int(p["in_slot"])]["n_xf"] > 2 or p["in_ah_off"] < 0
                    or p["in_ah_len"] < 0 or p["in_ah_len"] > 1020
                    or p["in_ah_off"] > p["in_end"]))
                or p["ah_off"] < 0 or p["ah_len"] < 0 or p["ah_len"] > 1020
                or int(p["out_len"]) > MAX_OUTPUT - total):
            raise ValueError(f"plan {i} is corrupt")
        total += int(p["out_len"])
    nbl_status[:] = 0
    counters[:] = 0
    payload = [0] * n_nbl
    for p in plan:
        if p["status"] and not nbl_status[p["nbl"]]:
            nbl_status[p["nbl"]] = p["status"]
    out_bytes = frames = ops = rand_bytes = scratch = 0
    for p in plan:
        k = int(p["nbl"])
        if nbl_status[k] and not p["status"]:
            p["status"] = nbl_status[k]
            p["reason"] = Reason.NBL_FAILED
            p["nsegs"] = 0
            p["out_len"] = 0
        counters[int(p["reason"])] += 1
        p["out_pos"], p["frame0"], p["op0"], p["rand_off"] = out_bytes, frames, ops, rand_bytes
        p["scratch_pos"] = scratch
        out_bytes += int(p["out_len"])
        frames += int(p["nsegs"])
        scratch += int(p["nsegs"]) * ah_scratch_len(p)
        if p["slot"] >= 0:
            ops += int(p["nsegs"]) * ops_per_segment(p, recs)
            rand_bytes += int(p["nsegs"]) * rand_len(p, recs)
        lso = int(oob[k]["lso_info"])
        if p["lso"] and not p["status"] and lso and not lso & LSO_TYPE_BIT:
            payload[k] += int(p["body_len"])  # LSOv1 reports the TCP payload sent
    for k in range(n_nbl):
        lso, status = int(oob[k]["lso_info"]), int(nbl_status[k])
        if not lso:
            lso_done[k] = 0
        elif lso & LSO_TYPE_BIT:
            lso_done[k] = LSO_TYPE_BIT  # LSOv2 completion keeps only its type
        else:
            lso_done[k] = 0 if status else payload[k] & (LSO_TYPE_BIT - 1)
        bucket = {0: 0, STATUS_FAILURE: 1, STATUS_INVALID_PACKET: 2}.get(status, 3)
        counters[REASON_COUNT + bucket] += 1
    # the output arena: the frames, then the AH scratch
    return out_bytes + scratch, frames, ops, rand_bytes


_AEAD_SUITES = (Suite.AES_GCM, Suite.AES_GMAC, Suite.AH_GMAC)


def tx_mark(batch, records, plans, marks) -> int:
    """Twin of the compiled tx_mark (datapath/tx_plan.pxi): in batch order, an AEAD seal
    whose first SN is not above its transform's mark fails (SEQ_REUSED), else the mark moves
    to its last SN; NBLs that classify fails are skipped; a mark row of another handle
    fails the NET_BUFFER (UNKNOWN_HANDLE). Returns how many failed."""
    _buffers(records=(records, np.uint8, False), plans=(plans, np.uint8, True),
             marks=(marks, np.uint64, True))
    if len(plans) != len(batch.nb_off) * NB_PLAN_DTYPE.itemsize \
            or len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    if len(marks) % 2:
        raise ValueError("marks holds (handle, mark) pairs")
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    recs = np.asarray(records).view(SA_RECORD_DTYPE)
    arena, nb_off, nb_len, nb_nbl = batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl
    for i in range(len(plan)):
        p = plan[i]
        slot = int(p["slot"])
        if int(p["nbl"]) != int(nb_nbl[i]) or slot >= len(recs) or (
                int(p["status"]) == 0 and slot >= 0 and int(recs[slot]["n_xf"]) == 2
                and (int(p["ah_off"]) < 0 or int(p["ah_off"]) + 12 > int(nb_len[i]))) or (
                int(p["status"]) == 0 and slot >= 0 and p["nested"] and (
                    not 0 <= int(p["in_slot"]) < len(recs) or (
                        int(recs[int(p["in_slot"])]["n_xf"]) == 2 and (
                            int(p["in_ah_off"]) < 0
                            or int(p["in_ah_off"]) + 12 > int(nb_len[i]))))):
            raise ValueError(f"plan {i} is corrupt")
    failed_nbls = {int(p["nbl"]) for p in plan if int(p["status"]) != 0}
    n_rows, failed = len(marks) // 2, 0
    for i in range(len(plan)):
        p = plan[i]
        slot, nsegs = int(p["slot"]), int(p["nsegs"])
        if int(p["nbl"]) in failed_nbls or slot < 0 or nsegs <= 0:
            continue
        moves, reason = [], None
        sides = [(slot, int(p["ah_off"]), int(p["sn64"]))]
        if p["nested"]:  # the transport layer's SA inside
            sides.append((int(p["in_slot"]), int(p["in_ah_off"]), int(p["in_sn64"])))
        for side_slot, ah_off, sn64 in sides:
            rec = recs[side_slot]
            for layer in range(int(rec["n_xf"])):
                xf = rec["xf"][layer]
                if int(xf["suite"]) not in _AEAD_SUITES:
                    continue
                row = 2 * side_slot + layer
                if row >= n_rows or int(marks[2 * row]) != int(rec["handle"]):
                    reason = Reason.UNKNOWN_HANDLE
                    break
                if layer == 1:
                    off = int(nb_off[i]) + ah_off + 8
                    first = int.from_bytes(bytes(arena[off:off + 4]), "big")
                    if xf["esn"]:
                        first |= int(xf["seq_hi"]) << 32
                else:
                    first = sn64
                if first <= int(marks[2 * row + 1]):
                    reason = Reason.SEQ_REUSED
                    break
                moves.append((row, (first + nsegs - 1) & (2**64 - 1)))
            if reason is not None:
                break
        if reason is not None:
            plan[i]["status"], plan[i]["reason"] = STATUS_FAILURE, reason
            plan[i]["nsegs"], plan[i]["out_len"] = 0, 0
            failed += 1
            continue
        for row, last in moves:
            marks[2 * row + 1] = last
    return failed


N_LIMITS = 7


def tx_limit(batch, plans, limits) -> int:
    """Twin of the compiled tx_limit (datapath/tx_plan.pxi): LSO payload above MaxOffLoadSize
    or fewer segments than MinSegmentCount fails (LSO_LIMIT); then NBL by NBL the output must
    stay within the cap, else NDIS_STATUS_RESOURCES (OUTPUT_LIMIT)."""
    _buffers(plans=(plans, np.uint8, True), limits=(limits, np.int64, False))
    if len(plans) != len(batch.nb_off) * NB_PLAN_DTYPE.itemsize:
        raise ValueError("plans buffer size does not match the struct layout")
    if len(limits) != N_LIMITS:
        raise ValueError(f"limits needs {N_LIMITS} entries")
    lim = [int(v) for v in limits]
    if min(lim) < 0:
        raise ValueError("limits must not be negative")
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    for i in range(len(plan)):
        if int(plan[i]["nbl"]) != int(batch.nb_nbl[i]) or not 0 <= int(plan[i]["out_len"]) \
                <= MAX_OUTPUT:
            raise ValueError(f"plan {i} is corrupt")

    def fail(i, status, reason):
        plan[i]["status"], plan[i]["reason"] = status, reason
        plan[i]["nsegs"], plan[i]["out_len"] = 0, 0

    failed = 0
    for i in range(len(plan)):
        p = plan[i]
        if int(p["status"]) or not int(p["lso"]):
            continue
        idx = 0 if int(p["lso"]) == 1 else (4 if p["ipv6"] else 2)
        if int(p["body_len"]) > lim[idx] or int(p["nsegs"]) < lim[idx + 1]:
            fail(i, STATUS_FAILURE, Reason.LSO_LIMIT)
            failed += 1
    total, i = 0, 0
    while i < len(plan):
        j = i
        while j < len(plan) and int(plan[j]["nbl"]) == int(plan[i]["nbl"]):
            j += 1
        if all(int(plan[k]["status"]) == 0 for k in range(i, j)):
            size = sum(int(plan[k]["out_len"]) for k in range(i, j))
            if size > lim[6] - total:
                for k in range(i, j):
                    fail(k, STATUS_RESOURCES, Reason.OUTPUT_LIMIT)
                    failed += 1
            else:
                total += size
        i = j
    return failed
