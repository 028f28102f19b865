"""Pure-Python twin of the compiled kernels in _fastpath.pyx: same signatures, same results.

Slow and plain on purpose: the tests run every kernel test on both and compare. Set
IPSECOFFLOAD_PURE=1 to make the whole library use this module.
"""
from __future__ import annotations

import struct

import numpy as np

from ..inet import ones_complement_sum as _checksum
from ..datapath.layout import (HANDLE_SLOT_MASK, NB_PLAN_DTYPE, REASON_STATUS, SA_RECORD_DTYPE,
                     STATUS_FAILURE, STATUS_INVALID_PACKET, Config, IcvSpace, IvSource,
                     JobPost, Reason, Suite)

STRUCT_SIZES = {"SaRecord": SA_RECORD_DTYPE.itemsize, "NbPlan": NB_PLAN_DTYPE.itemsize}
BOUNDS_CHECKED = True  # Python slicing never reaches outside a buffer


def _pad(unpadded: int, align: int) -> int:
    """Pad bytes so that payload + pad + 2 is a multiple of align (spec §8.1)."""
    return -unpadded % align


def _lso_segment_len(hdr_len: int, thl: int, chunk: int, align: int, icv: int) -> int:
    return hdr_len + chunk + _pad(thl + chunk + 2, align) + 2 + icv


def _buffers(**args) -> None:
    """What the compiled kernels' typed memoryviews (``const T[::1]`` / ``T[::1]``) demand:
    a 1-D C-contiguous buffer of exactly that item type (TypeError if not a buffer at all,
    ValueError otherwise), writable unless const. Each value: (array, dtype, writable)."""
    for name, (value, dtype, writable) in args.items():
        try:
            view = memoryview(value)
        except TypeError:
            raise TypeError(f"{name} must be a buffer of {np.dtype(dtype).name}, "
                            f"got {type(value).__name__}") from None
        try:
            same = np.dtype(view.format) == np.dtype(dtype)
        except TypeError:
            same = False
        if not same or view.ndim != 1 or not view.c_contiguous:
            raise ValueError(f"{name} must be a 1-D contiguous {np.dtype(dtype).name} buffer, "
                             f"got format {view.format!r} with {view.ndim} dimension(s)")
        if writable and view.readonly:
            raise ValueError(f"{name} is read-only")


def _lso_enabled(lso_kind: int, ipv6: bool, config: int) -> bool:
    if lso_kind == 1:
        return bool(config & Config.LSO_V1)
    return bool(config & (Config.LSO_V2_IPV6 if ipv6 else Config.LSO_V2_IPV4))


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

    def without_ipsec(reason):
        """No IPsec work: unchanged, but an LSO request is still honoured (spec §6.1 step 1)."""
        if lso == 0:
            return passthrough(reason)
        plan["lso"] = 2 if (lso >> 30) & 1 else 1
        if flen < l2 + 1 or frame[l2] >> 4 not in (4, 6):
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
        ipv6 = frame[l2] >> 4 == 6
        plan["ipv6"] = int(ipv6)
        if not _lso_enabled(plan["lso"], ipv6, config):
            return fail(STATUS_FAILURE, Reason.LSO_DISABLED)
        ihl = 40 if ipv6 else (frame[l2] & 0xF) * 4
        mss, tcp_off = lso & 0xFFFFF, (lso >> 20) & 0x3FF
        plan.update(ip_hdr_len=ihl, mss=mss, tcp_off=tcp_off)
        if (nb_count != 1 or mss == 0 or ihl < 20 or tcp_off < l2 + ihl or tcp_off + 20 > flen
                or (plan["lso"] == 2 and (lso >> 31) & 1 != int(ipv6))):
            return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
        thl = (frame[tcp_off + 12] >> 4) * 4
        if thl < 20 or tcp_off + thl > flen:
            return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
        payload = flen - tcp_off - thl
        nsegs = max(1, -(-payload // mss))
        plan["hdr_len"] = tcp_off + thl
        if plan["hdr_len"] + min(payload, mss) - l2 - (40 if ipv6 else 0) > 0xFFFF:
            return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
        return {**plan, "reason": reason, "body_off": plan["hdr_len"], "body_len": payload,
                "nsegs": nsegs, "out_len": nsegs * plan["hdr_len"] + payload}

    if handle == 0 and tunnel_handle == 0:
        return without_ipsec(Reason.PASS_NO_HANDLE)
    if not config & (Config.ESP_IPV4 | Config.ESP_IPV6):  # spec §6.1 step 1 precedes step 2 (G21)
        return without_ipsec(Reason.PASS_DISABLED)
    if tunnel_handle != 0:
        return fail(STATUS_FAILURE, Reason.TUNNEL_HANDLE)
    if flen < l2 + 1:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    version = frame[l2] >> 4
    if version not in (4, 6):
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    ipv6 = version == 6
    plan["ipv6"] = int(ipv6)
    if not config & (Config.ESP_IPV6 if ipv6 else Config.ESP_IPV4):  # spec §9 G21
        return without_ipsec(Reason.PASS_DISABLED)
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
        if trailer_end + icv - l2 - (40 if ipv6 else 0) > 0xFFFF:  # an appended ICV overflows
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)  # the IP length field
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
    if _lso_segment_len(tcp_off + thl, thl, min(payload, mss), align, icv) - l2 - (
            40 if ipv6 else 0) > 0xFFFF:  # a full segment would overflow the IP length field
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
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
    _buffers(arena=(arena, np.uint8, False), nb_off=(nb_off, np.int64, False),
             nb_len=(nb_len, np.int64, False), nb_nbl=(nb_nbl, np.int32, False),
             nb_count=(nb_count, np.int32, False),
             offload_handle=(offload_handle, np.uint64, False),
             tunnel_handle=(tunnel_handle, np.uint64, False),
             next_header=(next_header, np.uint8, False), pad_length=(pad_length, np.uint8, False),
             ah_off4=(ah_off4, np.uint8, False), esp_off4=(esp_off4, np.uint8, False),
             lso_info=(lso_info, np.uint64, False), l2_len=(l2_len, np.uint16, False),
             records=(records, np.uint8, False), plans=(plans, np.uint8, True),
             nbl_status=(nbl_status, np.uint32, True))
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
        if nb_off[i] < 0 or nb_len[i] < 0 or int(nb_off[i]) + int(nb_len[i]) > len(arena):
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


def _ipv6_final_dst(ip: bytes, ext_end: int) -> int:
    """Offset from the IPv6 header of the destination a TCP pseudo-header names (spec §8.10,
    RFC 8200 §8.1): with a routing header that has segments left, the final destination (last
    address of type 0/2, Segment List[0] of an SRH, type 4); else the header's destination.
    Walks hop-by-hop, routing and destination-options headers ending by ext_end."""
    off, dst, nh = 40, 24, ip[6]
    while off + 8 <= ext_end and nh in (0, 43, 60):
        hlen = (ip[off + 1] + 1) * 8
        if off + hlen > ext_end:
            break
        if nh == 43 and ip[off + 3] != 0 and hlen >= 24:
            if ip[off + 2] in (0, 2):
                dst = off + 8 + ((hlen - 8) // 16 - 1) * 16
            elif ip[off + 2] == 4:
                dst = off + 8
        nh, off = ip[off], off + hlen
    return dst


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
    if rec is not None and rec["udp_encap"]:
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
            ext_end = (esp if esp else tcp) - ip  # extension headers end at ESP, else TCP
            dst = ip + _ipv6_final_dst(bytes(seg[ip:ip + ext_end]), ext_end)
            pseudo = (bytes(seg[ip + 8:ip + 24]) + bytes(seg[dst:dst + 16])
                      + struct.pack("!IxxxB", tcp_len, 6))
        else:
            pseudo = bytes(seg[ip + 12:ip + 20]) + struct.pack("!xBH", 6, tcp_len)
        csum = _checksum(pseudo + bytes(seg[tcp:tcp + tcp_len]))
        struct.pack_into("!H", seg, tcp + 16, ~csum & 0xFFFF)


def _plan_is_consistent(p, rec, flen: int) -> bool:
    """Everything emit will touch for this plan lies inside the frame and its out_len, and
    every field it writes can hold its value."""
    ip_off, ihl, esp = int(p["ip_off"]), int(p["ip_hdr_len"]), int(p["esp_off"])
    nsegs, out_len, hdr_len = int(p["nsegs"]), int(p["out_len"]), int(p["hdr_len"])
    body_off, body_len = int(p["body_off"]), int(p["body_len"])
    align, icv = int(rec["align"]), int(rec["icv_len"])
    text_off = esp + 8 + int(rec["iv_len"])
    if (ip_off < 0 or ihl < 20 or esp < ip_off + ihl
            or (rec["udp_encap"] and esp < ip_off + ihl + 8)
            or (p["ipv6"] and ihl != 40) or int(p["sn64"]) > 2**64 - 1 - (nsegs - 1)
            or body_off < 0 or body_len < 0 or body_off > flen or body_len > flen - body_off
            or align == 0 or p["ipv6"] != rec["ipv6"]):
        return False
    if not p["lso"]:
        if not (nsegs == 1 and hdr_len == text_off and body_off == text_off
                and out_len == text_off + body_len + icv):
            return False
        big = out_len
    else:
        tcp_off, mss = int(p["tcp_off"]), int(p["mss"])
        thl = hdr_len - tcp_off
        if tcp_off != text_off or thl < 20 or thl > 60 or mss <= 0 or body_off != hdr_len:
            return False
        full, rem = divmod(body_len, mss)
        n = 1 if body_len == 0 else full + (1 if rem else 0)
        size = full * _lso_segment_len(hdr_len, thl, mss, align, icv)
        if rem or body_len == 0:
            size += _lso_segment_len(hdr_len, thl, rem, align, icv)
        if nsegs != n or out_len != size:
            return False
        big = _lso_segment_len(hdr_len, thl, min(mss, body_len), align, icv)
    return big - ip_off - (40 if p["ipv6"] else 0) <= 0xFFFF  # the IP length field holds it


def _plain_lso_is_consistent(p, flen: int) -> bool:
    """A plain-LSO plan (no SA) stays inside its frame and its out_len."""
    ip_off, ihl, tcp_off = int(p["ip_off"]), int(p["ip_hdr_len"]), int(p["tcp_off"])
    hdr_len, mss, body_len = int(p["hdr_len"]), int(p["mss"]), int(p["body_len"])
    thl = hdr_len - tcp_off
    if (ip_off < 0 or ihl < 20 or (p["ipv6"] and ihl != 40) or tcp_off < ip_off + ihl
            or not 20 <= thl <= 60 or mss <= 0 or int(p["body_off"]) != hdr_len
            or body_len < 0 or body_len > flen - hdr_len):
        return False
    n = max(1, -(-body_len // mss))
    return (int(p["nsegs"]) == n and int(p["out_len"]) == n * hdr_len + body_len
            and hdr_len + min(body_len, mss) - ip_off - (40 if p["ipv6"] else 0) <= 0xFFFF)


def emit(arena, nb_off, nb_len, nb_nbl, plans, records, iv_source, rand, nb_out_pos, nb_frame,
         nb_job, out, out_off, out_len, out_nbl, job_slot, job_esp, job_text, job_text_len,
         job_icv, job_seq_hi, job_post, job_udp, job_ip):
    _buffers(arena=(arena, np.uint8, False), nb_off=(nb_off, np.int64, False),
             nb_len=(nb_len, np.int64, False), nb_nbl=(nb_nbl, np.int32, False),
             plans=(plans, np.uint8, False), records=(records, np.uint8, False),
             rand=(rand, np.uint8, False), nb_out_pos=(nb_out_pos, np.int64, False),
             nb_frame=(nb_frame, np.int64, False), nb_job=(nb_job, np.int64, False),
             out=(out, np.uint8, True), out_off=(out_off, np.int64, True),
             out_len=(out_len, np.int64, True), out_nbl=(out_nbl, np.int32, True),
             job_slot=(job_slot, np.int32, True), job_esp=(job_esp, np.int64, True),
             job_text=(job_text, np.int64, True), job_text_len=(job_text_len, np.int64, True),
             job_icv=(job_icv, np.int64, True), job_seq_hi=(job_seq_hi, np.uint32, True),
             job_post=(job_post, np.uint8, True), job_udp=(job_udp, np.int64, True),
             job_ip=(job_ip, np.int64, True))
    n_nb, n_frames, n_jobs = len(nb_off), len(out_off), len(job_slot)
    if len(plans) != n_nb * NB_PLAN_DTYPE.itemsize or len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    recs = _records(records)
    if any(len(a) != n_nb for a in (nb_len, nb_nbl, nb_out_pos, nb_frame, nb_job)):
        raise ValueError("per-buffer arrays differ in length")
    if len(out_len) != n_frames or len(out_nbl) != n_frames:
        raise ValueError("output frame arrays differ in length")
    if any(len(a) != n_jobs for a in (job_esp, job_text, job_text_len, job_icv, job_seq_hi,
                                      job_post, job_udp, job_ip)):
        raise ValueError("job arrays differ in length")
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    # Validate the plan against the buffers before any write: the layout must fit exactly.
    need = frames = jobs = 0
    for i, p in enumerate(plan):
        if nb_off[i] < 0 or nb_len[i] < 0 or int(nb_off[i]) + int(nb_len[i]) > len(arena):
            raise ValueError("a NET_BUFFER lies outside the arena")
        nsegs, slot = int(p["nsegs"]), int(p["slot"])
        if nsegs < 0 or p["out_len"] < 0:
            raise ValueError("corrupt plan")
        if nsegs and slot >= 0:
            if slot >= len(recs) or not _plan_is_consistent(p, recs[slot], int(nb_len[i])):
                raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
            rec = recs[slot]
            if (rec["iv_len"] and rec["suite"] not in (Suite.AES_GCM, Suite.AES_GMAC)
                    and (p["lso"] or iv_source == IvSource.NIC)
                    and (jobs + nsegs) * int(rec["iv_len"]) > len(rand)):
                raise ValueError(f"rand holds {len(rand)} bytes; plan {i} needs "
                                 f"{(jobs + nsegs) * int(rec['iv_len'])} for its random IVs")
        elif nsegs and not (_plain_lso_is_consistent(p, int(nb_len[i])) if p["lso"]
                            else nsegs == 1 and p["out_len"] == nb_len[i]):
            raise ValueError(f"plan {i} is inconsistent with its frame")
        if nb_out_pos[i] != need or nb_frame[i] != frames or nb_job[i] != jobs:
            raise ValueError("nb_out_pos / nb_frame / nb_job disagree with the plan")
        if p["out_len"] > len(out) - need:  # per plan, as in the compiled kernel
            raise ValueError("output arena or tables too small for the plan")
        need += int(p["out_len"])
        frames += nsegs
        if slot >= 0:
            jobs += nsegs
    if need > len(out) or frames != n_frames or jobs != n_jobs:
        raise ValueError("output arena or tables too small for the plan")
    for i, p in enumerate(plan):
        if not p["nsegs"]:
            continue
        frame = bytes(arena[int(nb_off[i]):int(nb_off[i] + nb_len[i])])
        pos, fi, job = int(nb_out_pos[i]), int(nb_frame[i]), int(nb_job[i])
        if p["slot"] < 0 and not p["lso"]:
            out[pos:pos + len(frame)] = np.frombuffer(frame, np.uint8)
            out_off[fi], out_len[fi], out_nbl[fi] = pos, len(frame), nb_nbl[i]
            continue
        hdr_len = int(p["hdr_len"])
        thl = hdr_len - int(p["tcp_off"])
        if p["slot"] < 0:  # plain LSO without IPsec: TCP segments, nothing else
            for s in range(int(p["nsegs"])):
                start = int(p["body_off"]) + s * int(p["mss"])
                chunk = min(int(p["mss"]), int(p["body_len"]) - s * int(p["mss"]))
                seg = bytearray(frame[:hdr_len] + frame[start:start + chunk])
                _patch_segment(seg, p, None, s, chunk)
                out[pos:pos + len(seg)] = np.frombuffer(bytes(seg), np.uint8)
                out_off[fi], out_len[fi], out_nbl[fi] = pos, len(seg), nb_nbl[i]
                pos, fi = pos + len(seg), fi + 1
            continue
        rec = recs[int(p["slot"])]
        iv_len, icv = int(rec["iv_len"]), int(rec["icv_len"])
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
    _buffers(out=(out, np.uint8, True), records=(records, np.uint8, False),
             job_slot=(job_slot, np.int32, False), job_icv=(job_icv, np.int64, False),
             job_post=(job_post, np.uint8, False), job_udp=(job_udp, np.int64, False),
             job_ip=(job_ip, np.int64, False))
    n, osize = len(job_slot), len(out)
    recs = np.asarray(records)[:len(records) - len(records) % SA_RECORD_DTYPE.itemsize].view(
        SA_RECORD_DTYPE)
    if any(len(a) != n for a in (job_icv, job_post, job_udp, job_ip)):
        raise ValueError("job arrays differ in length")
    for j in range(n):
        if job_post[j] == JobPost.UDP6_CHECKSUM:
            if not 0 <= job_slot[j] < len(recs):
                raise ValueError("job names an SA slot outside the record table")
            if not 0 <= job_icv[j] <= osize:
                raise ValueError("job reaches outside the output arena")
            end = int(job_icv[j]) + int(recs[int(job_slot[j])]["icv_len"])
            if (job_ip[j] < 0 or job_ip[j] > osize - 40 or job_udp[j] < int(job_ip[j]) + 40
                    or end > osize or job_udp[j] > end - 8):
                raise ValueError("job reaches outside the output arena")
    for j in range(n):
        if job_post[j] != JobPost.UDP6_CHECKSUM:
            continue
        udp, ip = int(job_udp[j]), int(job_ip[j])
        end = int(job_icv[j]) + int(recs[int(job_slot[j])]["icv_len"])
        out[udp + 6:udp + 8] = 0
        dst = ip + _ipv6_final_dst(bytes(out[ip:udp]), udp - ip)  # spec §8.10
        pseudo = (bytes(out[ip + 8:ip + 24]) + bytes(out[dst:dst + 16])
                  + struct.pack("!IxxxB", end - udp, 17))
        csum = ~_checksum(pseudo + bytes(out[udp:end])) & 0xFFFF
        out[udp + 6:udp + 8] = np.frombuffer(struct.pack("!H", csum or 0xFFFF), np.uint8)


assert set(REASON_STATUS) == set(Reason)
