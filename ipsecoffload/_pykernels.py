"""Pure-Python twin of the compiled kernels in _fastpath.pyx: same signatures, same results.

Slow and plain on purpose: the tests run every kernel test on both and compare. Set
IPSECOFFLOAD_PURE=1 to make the whole library use this module.
"""
from __future__ import annotations

import struct

import numpy as np

from .layout import (HANDLE_SLOT_MASK, NB_PLAN_DTYPE, REASON_STATUS, SA_RECORD_DTYPE,
                     STATUS_FAILURE, STATUS_INVALID_PACKET, Config, IcvSpace, IvSource,
                     JobPost, Reason, Suite)

STRUCT_SIZES = {"SaRecord": SA_RECORD_DTYPE.itemsize, "NbPlan": NB_PLAN_DTYPE.itemsize}
BOUNDS_CHECKED = True  # Python slicing never reaches outside a buffer


def _pad(unpadded: int, align: int) -> int:
    """Pad bytes so that payload + pad + 2 is a multiple of align (spec §8.1)."""
    return -unpadded % align


def _checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, folded, not yet inverted."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _lso_segment_len(hdr_len: int, thl: int, chunk: int, align: int, icv: int) -> int:
    return hdr_len + chunk + _pad(thl + chunk + 2, align) + 2 + icv


def _records(records: np.ndarray) -> np.ndarray:
    if len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    return np.asarray(records).view(SA_RECORD_DTYPE)


def _classify_one(frame: bytes, nb_count: int, handle: int, tunnel_handle: int, nh: int,
                  padl: int, ah4: int, esp4: int, lso: int, l2: int, recs, config: int,
                  icv_space: int) -> dict:
    """Spec §6.1 steps 1-3 for one NET_BUFFER; returns the plan's fields."""
    flen = len(frame)
    plan = dict(slot=-1, ip_off=l2, next_header=nh)

    def fail(status, reason):
        return {**plan, "status": status, "reason": reason, "nsegs": 0, "out_len": 0}

    def passthrough(reason):
        return {**plan, "slot": -1, "reason": reason, "nsegs": 1, "out_len": flen}

    if handle == 0 and tunnel_handle == 0:
        return passthrough(Reason.PASS_NO_HANDLE)
    if tunnel_handle != 0:
        return fail(STATUS_FAILURE, Reason.TUNNEL_HANDLE)
    if flen < l2 + 1:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    version = frame[l2] >> 4
    if version not in (4, 6):
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    ipv6 = version == 6
    plan["ipv6"] = int(ipv6)
    if not config & (Config.ESP_IPV6 if ipv6 else Config.ESP_IPV4):
        return passthrough(Reason.PASS_DISABLED)
    slot = handle & HANDLE_SLOT_MASK
    if slot >= len(recs) or not recs[slot]["in_use"] or int(recs[slot]["handle"]) != handle:
        return fail(STATUS_FAILURE, Reason.UNKNOWN_HANDLE)
    rec = recs[slot]
    if rec["inbound"]:
        return fail(STATUS_FAILURE, Reason.INBOUND_HANDLE)
    if bool(rec["ipv6"]) != ipv6:
        return fail(STATUS_FAILURE, Reason.IP_VERSION_MISMATCH)
    lso_kind = 0 if lso == 0 else (2 if (lso >> 30) & 1 else 1)
    plan["lso"] = lso_kind

    if ipv6:
        if flen < l2 + 40:
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
        ip_hdr_len = 40
        ip_end = flen if lso_kind else l2 + 40 + struct.unpack_from("!H", frame, l2 + 4)[0]
    else:
        if flen < l2 + 20:
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
        ip_hdr_len = (frame[l2] & 0xF) * 4
        total = struct.unpack_from("!H", frame, l2 + 2)[0]
        if ip_hdr_len < 20 or l2 + ip_hdr_len > flen or (not lso_kind and total < ip_hdr_len):
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
        ip_end = flen if lso_kind else l2 + total
    plan["ip_hdr_len"] = ip_hdr_len
    if ip_end > flen:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)

    if ah4:
        return fail(STATUS_FAILURE, Reason.AH_NOT_SUPPORTED)
    esp = l2 + 4 * esp4
    text_off = esp + 8 + int(rec["iv_len"])
    min_esp = l2 + ip_hdr_len + (8 if rec["udp_encap"] else 0)
    if esp4 == 0 or esp < min_esp or text_off > ip_end:
        return fail(STATUS_INVALID_PACKET, Reason.BAD_ESP_OFFSET)
    plan["esp_off"] = esp
    sn64 = struct.unpack_from("!I", frame, esp + 4)[0]
    if rec["esn"]:
        sn64 |= int(rec["seq_hi"]) << 32
    plan["sn64"] = sn64
    icv, align = int(rec["icv_len"]), int(rec["align"])

    if not lso_kind:
        def trailer_at(end):
            return end >= text_off + 2 and frame[end - 1] == nh and frame[end - 2] == padl
        if icv_space != IcvSpace.APPEND and trailer_at(ip_end - icv):
            trailer_end = ip_end - icv
        elif icv_space != IcvSpace.RESERVED and trailer_at(ip_end):
            trailer_end = ip_end
        else:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_TRAILER)
        text_len = trailer_end - text_off
        if padl + 2 > text_len:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_TRAILER)
        if text_len % align:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_ALIGNMENT)
        if sn64 == 0:
            return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
        return {**plan, "slot": slot, "hdr_len": text_off, "body_off": text_off,
                "body_len": text_len, "nsegs": 1, "out_len": trailer_end + icv,
                "reason": Reason.OK, "status": 0}

    enabled = {1: Config.LSO_V1, 2: Config.LSO_V2_IPV6 if ipv6 else Config.LSO_V2_IPV4}
    if not config & Config.LSO_WITH_IPSEC or not config & enabled[lso_kind]:
        return fail(STATUS_FAILURE, Reason.LSO_DISABLED)
    mss, tcp_off = lso & 0xFFFFF, (lso >> 20) & 0x3FF
    plan.update(mss=mss, tcp_off=tcp_off)
    payload_end = flen - padl
    if (nb_count != 1 or mss == 0 or nh != 6 or tcp_off != text_off
            or (lso_kind == 2 and (lso >> 31) & 1 != int(ipv6)) or tcp_off + 20 > payload_end):
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    thl = (frame[tcp_off + 12] >> 4) * 4
    if thl < 20 or tcp_off + thl > payload_end:
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    payload = payload_end - tcp_off - thl
    nsegs = max(1, -(-payload // mss))
    last_sn = sn64 + nsegs - 1
    if sn64 == 0 or last_sn > (2**64 - 1 if rec["esn"] else 2**32 - 1):
        return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
    hdr_len = tcp_off + thl
    chunks = [min(mss, payload - i * mss) for i in range(nsegs)]
    out_len = sum(_lso_segment_len(hdr_len, thl, c, align, icv) for c in chunks)
    return {**plan, "slot": slot, "hdr_len": hdr_len, "body_off": hdr_len, "body_len": payload,
            "nsegs": nsegs, "out_len": out_len, "reason": Reason.OK, "status": 0}


def classify(arena, nb_off, nb_len, nb_nbl, nb_count, offload_handle, tunnel_handle,
             next_header, pad_length, ah_off4, esp_off4, lso_info, l2_len, records, config,
             icv_space, plans, nbl_status):
    n_nb, n_nbl = len(nb_off), len(nbl_status)
    if not len(nb_len) == len(nb_nbl) == n_nb:
        raise ValueError("nb_off, nb_len and nb_nbl differ in length")
    if any(len(a) != n_nbl for a in (nb_count, offload_handle, tunnel_handle, next_header,
                                     pad_length, ah_off4, esp_off4, lso_info, l2_len)):
        raise ValueError("per-NBL arrays must have one entry per NBL")
    if len(plans) != n_nb * NB_PLAN_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    recs = _records(records)
    out = np.asarray(plans).view(NB_PLAN_DTYPE)
    for i in range(n_nb):
        if not 0 <= nb_nbl[i] < n_nbl:
            raise ValueError("nb_nbl names an NBL outside the batch")
        if nb_off[i] < 0 or nb_len[i] < 0 or nb_off[i] + nb_len[i] > len(arena):
            raise ValueError("a NET_BUFFER lies outside the arena")
    nbl_status[:] = 0
    for i in range(n_nb):
        k = int(nb_nbl[i])
        frame = bytes(arena[int(nb_off[i]):int(nb_off[i] + nb_len[i])])
        fields = _classify_one(frame, int(nb_count[k]), int(offload_handle[k]),
                               int(tunnel_handle[k]), int(next_header[k]), int(pad_length[k]),
                               int(ah_off4[k]), int(esp_off4[k]), int(lso_info[k]),
                               int(l2_len[k]), recs, int(config), int(icv_space))
        out[i] = np.zeros((), NB_PLAN_DTYPE)
        for name, value in fields.items():
            out[i][name] = value
        if out[i]["status"] and not nbl_status[k]:
            nbl_status[k] = out[i]["status"]
    for i in range(n_nb):
        k = int(nb_nbl[i])
        if nbl_status[k] and not out[i]["status"]:
            out[i]["status"] = nbl_status[k]
            out[i]["reason"] = Reason.NBL_FAILED
            out[i]["nsegs"] = 0
            out[i]["out_len"] = 0


def _patch_segment(seg: bytearray, p, rec, i: int, chunk: int) -> None:
    """Header patches of one output segment (spec §6.3, §6.7, §6.8)."""
    ip, esp = int(p["ip_off"]), int(p["esp_off"])
    if p["ipv6"]:
        struct.pack_into("!H", seg, ip + 4, len(seg) - ip - 40)
    else:
        ihl = int(p["ip_hdr_len"])
        struct.pack_into("!H", seg, ip + 2, len(seg) - ip)
        if p["lso"]:
            ident = struct.unpack_from("!H", seg, ip + 4)[0] + i
            struct.pack_into("!H", seg, ip + 4, ident & (0x7FFF if p["lso"] == 2 else 0xFFFF))
        struct.pack_into("!H", seg, ip + 10, 0)
        struct.pack_into("!H", seg, ip + 10, ~_checksum(bytes(seg[ip:ip + ihl])) & 0xFFFF)
    if rec["udp_encap"]:
        struct.pack_into("!HH", seg, esp - 4, len(seg) - (esp - 8), 0)
    if p["lso"]:
        tcp, mss = int(p["tcp_off"]), int(p["mss"])
        tcp_len = int(p["hdr_len"]) - tcp + chunk
        seq = struct.unpack_from("!I", seg, tcp + 4)[0]
        struct.pack_into("!I", seg, tcp + 4, (seq + i * mss) & 0xFFFFFFFF)
        flags = seg[tcp + 13]
        if i != p["nsegs"] - 1:
            flags &= ~0x09 & 0xFF  # FIN and PSH only on the last segment
        if i != 0:
            flags &= ~0x80 & 0xFF  # CWR only on the first
        seg[tcp + 13] = flags
        struct.pack_into("!H", seg, tcp + 16, 0)
        if p["ipv6"]:
            pseudo = bytes(seg[ip + 8:ip + 40]) + struct.pack("!IxxxB", tcp_len, 6)
        else:
            pseudo = bytes(seg[ip + 12:ip + 20]) + struct.pack("!xBH", 6, tcp_len)
        csum = _checksum(pseudo + bytes(seg[tcp:tcp + tcp_len]))
        struct.pack_into("!H", seg, tcp + 16, ~csum & 0xFFFF)


def emit(arena, nb_off, nb_len, nb_nbl, plans, records, iv_source, rand, nb_out_pos, nb_frame,
         nb_job, out, out_off, out_len, out_nbl, job_slot, job_esp, job_text, job_text_len,
         job_icv, job_seq_hi, job_post, job_udp, job_ip):
    recs = _records(records)
    if len(plans) != len(nb_off) * NB_PLAN_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    need = sum(int(p["out_len"]) for p in plan)
    if need > len(out) or sum(int(p["nsegs"]) for p in plan) != len(out_off):
        raise ValueError("output arena or tables too small for the plan")
    for i, p in enumerate(plan):
        if not p["nsegs"]:
            continue
        frame = bytes(arena[int(nb_off[i]):int(nb_off[i] + nb_len[i])])
        pos, fi, job = int(nb_out_pos[i]), int(nb_frame[i]), int(nb_job[i])
        if p["slot"] < 0:
            out[pos:pos + len(frame)] = np.frombuffer(frame, np.uint8)
            out_off[fi], out_len[fi], out_nbl[fi] = pos, len(frame), nb_nbl[i]
            continue
        rec = recs[int(p["slot"])]
        iv_len, icv, hdr_len = int(rec["iv_len"]), int(rec["icv_len"]), int(p["hdr_len"])
        thl = hdr_len - int(p["tcp_off"])
        for s in range(int(p["nsegs"])):
            if p["lso"]:
                start = int(p["body_off"]) + s * int(p["mss"])
                chunk = min(int(p["mss"]), int(p["body_len"]) - s * int(p["mss"]))
                pad = _pad(thl + chunk + 2, int(rec["align"]))
                seg = bytearray(frame[:hdr_len] + frame[start:start + chunk]
                                + bytes(range(1, pad + 1)) + bytes([pad, p["next_header"]]))
            else:
                chunk = int(p["body_len"])
                seg = bytearray(frame[:hdr_len + chunk])
            seg += bytes(icv)
            _patch_segment(seg, p, rec, s, chunk)
            sn = int(p["sn64"]) + s
            esp = int(p["esp_off"])
            struct.pack_into("!I", seg, esp + 4, sn & 0xFFFFFFFF)
            if iv_len and (p["lso"] or iv_source == IvSource.NIC):
                if rec["suite"] in (Suite.AES_GCM, Suite.AES_GMAC):
                    struct.pack_into("!Q", seg, esp + 8, sn)
                else:
                    seg[esp + 8:esp + 8 + iv_len] = bytes(rand[job * iv_len:(job + 1) * iv_len])
            out[pos:pos + len(seg)] = np.frombuffer(bytes(seg), np.uint8)
            out_off[fi], out_len[fi], out_nbl[fi] = pos, len(seg), nb_nbl[i]
            job_slot[job] = p["slot"]
            job_esp[job] = pos + esp
            job_text[job] = pos + esp + 8 + iv_len
            job_text_len[job] = len(seg) - icv - (esp + 8 + iv_len)
            job_icv[job] = pos + len(seg) - icv
            job_seq_hi[job] = sn >> 32
            job_post[job] = (JobPost.UDP6_CHECKSUM if rec["udp_encap"] and p["ipv6"]
                             else JobPost.NONE)
            job_udp[job] = pos + esp - 8
            job_ip[job] = pos + int(p["ip_off"])
            pos, fi, job = pos + len(seg), fi + 1, job + 1


def finalize(out, records, job_slot, job_icv, job_post, job_udp, job_ip):
    """After sealing: the UDP checksum of UDP-encapsulated ESP over IPv6 (spec §6.7, G25)."""
    recs = _records(records)
    for j in range(len(job_slot)):
        if job_post[j] != JobPost.UDP6_CHECKSUM:
            continue
        udp, ip = int(job_udp[j]), int(job_ip[j])
        end = int(job_icv[j]) + int(recs[int(job_slot[j])]["icv_len"])
        out[udp + 6:udp + 8] = 0
        pseudo = bytes(out[ip + 8:ip + 40]) + struct.pack("!IxxxB", end - udp, 17)
        csum = ~_checksum(pseudo + bytes(out[udp:end])) & 0xFFFF
        out[udp + 6:udp + 8] = np.frombuffer(struct.pack("!H", csum or 0xFFFF), np.uint8)


assert set(REASON_STATUS) == set(Reason)
