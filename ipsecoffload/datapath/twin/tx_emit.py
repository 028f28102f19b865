"""Twin of the compiled tx_emit (datapath/tx_emit.pxi): segments, header patches, ESP
fields, one WireFrame per output frame and one CryptoOp per protected segment."""
from __future__ import annotations

import struct

import numpy as np

from ..layout import (CRYPTO_OP_DTYPE, NB_PLAN_DTYPE, PROTO_AH, SA_RECORD_DTYPE,
                      WIRE_FRAME_DTYPE, Fixup, OpKind, Suite)
from .ah_mutable import ah_zero_ipv4, ah_zero_ipv6
from .common import (_buffers, _pad, _patch_segment, _plain_lso_is_consistent,
                     _plan_is_consistent, _records, xf0)
from .tx_plan import ah_scratch_len, ops_per_segment, outer_scratch_len, rand_len, random_iv


def _ah_op(seg: bytearray, pos: int, p, ah, i: int, scratch: int, out, fi: int, pass_no: int,
           otab, oi: int) -> None:
    """The AH fields of output segment ``i`` and its AH sign op (RFC 4302 §3.3): SN0 + i,
    ICV field and pad zeroed, the GMAC IV written (SN, G5), the header region copied to the
    scratch with its mutable fields zeroed."""
    ip, ah_off, ah_len = int(p["ip_off"]), int(p["ah_off"]), int(p["ah_len"])
    iv_len = int(ah["iv_len"])
    ah_end, icv_at = ah_off + ah_len, ah_off + 12 + iv_len
    seg[icv_at:ah_end] = bytes(ah_end - icv_at)
    sn = struct.unpack_from("!I", seg, ah_off + 8)[0]
    if ah["esn"]:
        sn |= int(ah["seq_hi"]) << 32
    sn = (sn + i) & (2**64 - 1)
    struct.pack_into("!I", seg, ah_off + 8, sn & 0xFFFFFFFF)
    if (p["ah_fresh_iv"] or p["lso"]) and iv_len == 8:  # LSO segments always get NIC IVs
        struct.pack_into("!Q", seg, ah_off + 12, sn)
    copy = bytearray(seg[ip:ah_end])
    if p["ipv6"]:
        ah_zero_ipv6(copy, ah_off - ip)
    else:
        ah_zero_ipv4(copy, int(p["ip_hdr_len"]))
    out[scratch:scratch + len(copy)] = np.frombuffer(bytes(copy), np.uint8)
    otab[oi] = np.zeros((), CRYPTO_OP_DTYPE)
    op = otab[oi]
    op["auth_off"] = scratch
    op["text_off"] = pos + ah_end
    op["text_len"] = len(seg) - ah_end
    op["icv_off"] = pos + icv_at
    op["ip_off"] = pos + ip
    op["key_row"] = ah["key_row"]
    op["frame"] = fi
    op["seq_hi"] = sn >> 32
    op["kind"] = OpKind.AH_SIGN
    op["pass_no"] = pass_no
    for name in ("suite", "integ", "iv_len", "icv_len", "esn"):
        op[name] = ah[name]
    op["fixup"] = Fixup.NONE
    if ah["suite"] == Suite.AH_GMAC:
        op["nonce"] = np.frombuffer(bytes(ah["salt"]) + bytes(seg[ah_off + 12:ah_off + 20]),
                                    np.uint8)


def _inner_plan(p, sa):
    """The transport layer of a nested plan as a plan of its own (one non-LSO segment)."""
    q = np.zeros((), NB_PLAN_DTYPE)
    for name in ("nbl",):
        q[name] = p[name]
    q["slot"], q["nsegs"] = p["in_slot"], 1
    q["ip_off"], q["ip_hdr_len"], q["ipv6"] = p["in_ip_off"], p["in_ip_hdr_len"], p["in_ipv6"]
    q["sn64"], q["esp_off"] = p["in_sn64"], p["in_esp_off"]
    q["ah_off"], q["ah_len"] = p["in_ah_off"], p["in_ah_len"]
    q["fresh_iv"], q["ah_fresh_iv"] = p["in_fresh_iv"], p["in_ah_fresh_iv"]
    q["out_len"] = p["in_end"]
    if p["in_esp_off"]:
        q["hdr_len"] = int(p["in_esp_off"]) + 8 + int(xf0(sa)["iv_len"])
        q["body_off"] = q["hdr_len"]
    else:
        q["hdr_len"] = q["body_off"] = p["in_end"]
    q["body_len"] = p["in_body_len"]
    return q


def _nested_is_consistent(p, sa, sa_in, flen: int) -> bool:
    """The tunnel layer is one non-LSO segment; the transport layer's plan lies inside the
    tunnel layer's protected text."""
    if p["lso"] or int(p["nsegs"]) != 1 or not sa_in["in_use"] or not 1 <= sa_in["n_xf"] <= 2:
        return False
    x = xf0(sa)
    if x["proto"] != PROTO_AH:
        start = int(p["esp_off"]) + 8 + int(x["iv_len"])
        stop = start + int(p["body_len"])
    else:
        start = int(p["ah_off"]) + int(p["ah_len"])
        stop = int(p["out_len"])
    end = int(p["in_end"])
    return (int(p["in_ip_off"]) >= start and end <= stop and end <= flen
            and int(p["in_ip_off"]) >= 0 and int(p["in_body_len"]) >= 0
            and _plan_is_consistent(_inner_plan(p, sa_in), sa_in, end))


def _esp_op(seg, pos: int, p, rec, sn: int, fi: int, pass_no: int, otab, oi: int) -> None:
    """The ESP seal op of a segment whose datagram is ``seg`` (its ICV room last)."""
    esp, iv_len, icv = int(p["esp_off"]), int(rec["iv_len"]), int(rec["icv_len"])
    otab[oi] = np.zeros((), CRYPTO_OP_DTYPE)
    op = otab[oi]
    op["auth_off"] = pos + esp
    op["text_off"] = pos + esp + 8 + iv_len
    op["text_len"] = len(seg) - icv - (esp + 8 + iv_len)
    op["icv_off"] = pos + len(seg) - icv
    op["ip_off"] = pos + int(p["ip_off"])
    op["key_row"] = rec["key_row"]
    op["frame"] = fi
    op["seq_hi"] = sn >> 32
    op["kind"] = OpKind.ESP_SEAL
    op["pass_no"] = pass_no
    for name in ("suite", "integ", "iv_len", "icv_len", "esn"):
        op[name] = rec[name]
    op["fixup"] = Fixup.UDP6_CHECKSUM if rec["udp_encap"] and p["ipv6"] else Fixup.NONE
    if rec["suite"] in (Suite.AES_GCM, Suite.AES_GMAC):
        op["nonce"] = np.frombuffer(bytes(rec["salt"]) + bytes(seg[esp + 8:esp + 16]),
                                    np.uint8)


def _emit_inner(seg: bytearray, pos: int, p, sa, rand, rand_pos: int, scratch: int, out,
                fi: int, otab, oi: int) -> None:
    """Transport over tunnel: the transport layer inside ``seg`` (passes 0 and 1)."""
    q = _inner_plan(p, sa)
    end = int(p["in_end"])
    rec, ah = xf0(sa), None
    if rec["proto"] == PROTO_AH:
        rec, ah = None, rec
    elif sa["n_xf"] == 2:
        ah = sa["xf"][1]
    sub = bytearray(seg[:end])
    _patch_segment(sub, q, rec, 0, 0)
    if rec is not None:
        iv_len, icv = int(rec["iv_len"]), int(rec["icv_len"])
        sub[end - icv:end] = bytes(icv)
        sn, esp = int(q["sn64"]), int(q["esp_off"])
        struct.pack_into("!I", sub, esp + 4, sn & 0xFFFFFFFF)
        if iv_len and q["fresh_iv"]:
            if rec["suite"] in (Suite.AES_GCM, Suite.AES_GMAC):
                struct.pack_into("!Q", sub, esp + 8, sn)
            else:
                sub[esp + 8:esp + 8 + iv_len] = bytes(rand[rand_pos:rand_pos + iv_len])
        _esp_op(sub, pos, q, rec, sn, fi, 0, otab, oi)
        oi += 1
    if ah is not None:
        _ah_op(sub, pos, q, ah, 0, scratch, out, fi, 1 if rec is not None else 0, otab, oi)
    seg[:end] = sub



def tx_emit(batch, records, plans, rand, out, frames, ops):
    arena, nb_off, nb_len = batch.arena, batch.nb_off, batch.nb_len
    _buffers(arena=(arena, np.uint8, False), nb_off=(nb_off, np.int64, False),
             nb_len=(nb_len, np.int64, False), records=(records, np.uint8, False),
             plans=(plans, np.uint8, False), rand=(rand, np.uint8, False),
             out=(out, np.uint8, True), frames=(frames, np.uint8, True),
             ops=(ops, np.uint8, True))
    n_nb = len(nb_off)
    if len(plans) != n_nb * NB_PLAN_DTYPE.itemsize or len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    if len(frames) % WIRE_FRAME_DTYPE.itemsize or len(ops) % CRYPTO_OP_DTYPE.itemsize:
        raise ValueError("frames / ops buffer size does not match the struct layout")
    if len(nb_len) != n_nb:
        raise ValueError("per-buffer arrays differ in length")
    recs = _records(records)
    plan = np.asarray(plans).view(NB_PLAN_DTYPE)
    ftab = np.asarray(frames).view(WIRE_FRAME_DTYPE)
    otab = np.asarray(ops).view(CRYPTO_OP_DTYPE)
    # Validate the plans against the buffers before any write: the layout must fit exactly.
    need = nframes = nops = nrand = nscratch = 0
    for i, p in enumerate(plan):
        if nb_off[i] < 0 or nb_len[i] < 0 or int(nb_off[i]) + int(nb_len[i]) > len(arena):
            raise ValueError("a NET_BUFFER lies outside the arena")
        nsegs, slot = int(p["nsegs"]), int(p["slot"])
        if nsegs < 0 or p["out_len"] < 0 or (nsegs == 0 and p["out_len"] != 0):
            raise ValueError("corrupt plan")
        if slot >= 0 and p["nested"] and not (0 <= int(p["in_slot"]) < len(recs)
                                              and slot < len(recs)):
            raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
        if nsegs and slot >= 0:
            if (slot >= len(recs) or not recs[slot]["in_use"]
                    or not _plan_is_consistent(p, recs[slot], int(nb_len[i])) or (p["nested"] and (
                        not 0 <= int(p["in_slot"]) < len(recs) or not _nested_is_consistent(
                            p, recs[slot], recs[int(p["in_slot"])], int(nb_len[i]))))):
                raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
            if rand_len(p, recs):
                if int(p["rand_off"]) != nrand:
                    raise ValueError("rand_off disagrees with the plans")
                nrand += nsegs * rand_len(p, recs)
                if nrand > len(rand):
                    raise ValueError(f"rand holds {len(rand)} bytes; plan {i} needs "
                                     f"{nrand} for its random IVs")
        elif nsegs and not (_plain_lso_is_consistent(p, int(nb_len[i])) if p["lso"]
                            else nsegs == 1 and p["out_len"] == nb_len[i]):
            raise ValueError(f"plan {i} is inconsistent with its frame")
        if (p["out_pos"] != need or p["frame0"] != nframes or p["op0"] != nops
                or p["scratch_pos"] != nscratch):
            raise ValueError("out_pos / frame0 / op0 / scratch_pos disagree with the plans")
        if p["out_len"] > len(out) - need:  # per plan, as in the compiled stage
            raise ValueError("output arena or tables too small for the plans")
        need += int(p["out_len"])
        nframes += nsegs
        nscratch += nsegs * ah_scratch_len(p)
        if nscratch > len(out):
            raise ValueError("output arena too small for the AH scratch")
        if slot >= 0:
            nops += nsegs * ops_per_segment(p, recs)
    if nframes != len(ftab) or nops != len(otab) or nscratch > len(out) - need:
        raise ValueError("output arena or tables too small for the plans")
    scratch0 = need  # the AH scratch follows the frames
    for i, p in enumerate(plan):
        if not p["nsegs"]:
            continue
        frame = bytes(arena[int(nb_off[i]):int(nb_off[i] + nb_len[i])])
        pos, fi, oi = int(p["out_pos"]), int(p["frame0"]), int(p["op0"])
        nbl = int(p["nbl"])

        def put(seg: bytes | bytearray) -> None:
            nonlocal pos, fi
            out[pos:pos + len(seg)] = np.frombuffer(bytes(seg), np.uint8)
            ftab[fi] = (pos, len(seg), nbl, i)
            pos, fi = pos + len(seg), fi + 1

        if p["slot"] < 0 and not p["lso"]:
            put(frame)
            continue
        hdr_len = int(p["hdr_len"])
        if p["slot"] < 0:  # plain LSO without IPsec: TCP segments, nothing else
            for s in range(int(p["nsegs"])):
                start = int(p["body_off"]) + s * int(p["mss"])
                chunk = min(int(p["mss"]), int(p["body_len"]) - s * int(p["mss"]))
                seg = bytearray(frame[:hdr_len] + frame[start:start + chunk])
                _patch_segment(seg, p, None, s, chunk)
                put(seg)
            continue
        sa = recs[int(p["slot"])]
        rec, ah = xf0(sa), None
        if rec["proto"] == PROTO_AH:
            rec, ah = None, rec
        elif sa["n_xf"] == 2:
            ah = sa["xf"][1]
        if rec is None:  # AH alone: the datagram as built (or its TCP segments), AH op each
            for s in range(int(p["nsegs"])):
                if p["lso"]:
                    start = int(p["body_off"]) + s * int(p["mss"])
                    chunk = min(int(p["mss"]), int(p["body_len"]) - s * int(p["mss"]))
                    seg = bytearray(frame[:hdr_len] + frame[start:start + chunk])
                else:
                    chunk, seg = 0, bytearray(frame[:hdr_len])
                _patch_segment(seg, p, None, s, chunk)
                scratch = scratch0 + int(p["scratch_pos"]) + s * ah_scratch_len(p)
                _ah_op(seg, pos, p, ah, s, scratch, out, fi, 2 if p["nested"] else 0, otab, oi)
                oi += 1
                if p["nested"]:
                    _emit_inner(seg, pos, p, recs[int(p["in_slot"])], rand, int(p["rand_off"]),
                                scratch0 + int(p["scratch_pos"]) + outer_scratch_len(p), out,
                                fi, otab, oi)
                put(seg)
            continue
        iv_len, icv = int(rec["iv_len"]), int(rec["icv_len"])
        # the protected header bytes every segment repeats: destination options, TCP header
        ptl = hdr_len - (int(p["esp_off"]) + 8 + iv_len)
        for s in range(int(p["nsegs"])):
            if p["lso"]:
                start = int(p["body_off"]) + s * int(p["mss"])
                chunk = min(int(p["mss"]), int(p["body_len"]) - s * int(p["mss"]))
                pad = _pad(ptl + chunk + 2, int(rec["align"]))
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
            if iv_len and p["fresh_iv"]:
                if rec["suite"] in (Suite.AES_GCM, Suite.AES_GMAC):
                    struct.pack_into("!Q", seg, esp + 8, sn)
                else:
                    r = int(p["rand_off"]) + s * iv_len
                    seg[esp + 8:esp + 8 + iv_len] = bytes(rand[r:r + iv_len])
            _esp_op(seg, pos, p, rec, sn, fi, 2 if p["nested"] else 0, otab, oi)
            oi += 1
            if ah is not None:  # AH over the result, in the pass after ESP
                scratch = scratch0 + int(p["scratch_pos"]) + s * ah_scratch_len(p)
                _ah_op(seg, pos, p, ah, s, scratch, out, fi, 3 if p["nested"] else 1, otab, oi)
                oi += 1
            if p["nested"]:  # the transport layer inside, in passes 0 and 1
                _emit_inner(seg, pos, p, recs[int(p["in_slot"])], rand,
                            int(p["rand_off"]) + (iv_len if iv_len and p["fresh_iv"]
                                                  and random_iv(p, recs) else 0),
                            scratch0 + int(p["scratch_pos"]) + outer_scratch_len(p), out, fi,
                            otab, oi)
            put(seg)
