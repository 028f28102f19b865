"""Twin of the compiled tx_classify (datapath/tx_classify.pxi): steps 1-3 of the send
procedure per NET_BUFFER (docs/send-path.md)."""
from __future__ import annotations

import struct

import numpy as np

from ..layout import (HANDLE_SLOT_MASK, NB_PLAN_DTYPE, NBL_OOB_DTYPE, PROTO_AH, PROTO_ESP,
                      SA_RECORD_DTYPE, STATUS_FAILURE,
                      STATUS_INVALID_PACKET, Config, IcvSpace, IvSource, Reason)
from .common import (_buffers, _c_ints, _dstopts_to_tcp, _lso_enabled, _lso_segment_len,
                     _records, header_named, xf0)

def _sn_room(sn0: int, n: int, esn) -> bool:
    """SN0 .. SN0 + n - 1 are all sendable (none 0, none past the SA's last SN)."""
    return sn0 != 0 and sn0 + n - 1 <= (2**64 - 1 if esn else 2**32 - 1)


def _lso_ah_alone(frame: bytes, plan: dict, fail, ah, lso: int, lso_kind: int, nb_count: int,
                  config: int, padl: int, slot: int, sn64: int, ipv6: bool) -> dict:
    """LSO of an AH super-packet without ESP: the TCP header right after AH (or after IPv6
    destination options that follow it), no ESP padding, one AH SN per segment."""
    flen, ah_end = len(frame), plan["ah_off"] + plan["ah_len"]
    if not config & Config.LSO_WITH_IPSEC or not _lso_enabled(lso_kind, ipv6, config):
        return fail(STATUS_FAILURE, Reason.LSO_DISABLED)
    mss, tcp_off = lso & 0xFFFFF, (lso >> 20) & 0x3FF
    plan.update(mss=mss, tcp_off=tcp_off)
    if (nb_count != 1 or mss == 0 or padl != 0
            or (lso_kind == 2 and (lso >> 31) & 1 != int(ipv6)) or tcp_off + 20 > flen
            or not _dstopts_to_tcp(frame, ah_end, frame[plan["ah_off"]], tcp_off, ipv6)):
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    thl = (frame[tcp_off + 12] >> 4) * 4
    if thl < 20 or tcp_off + thl > flen:
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    payload = flen - tcp_off - thl
    nsegs = max(1, -(-payload // mss))
    hdr_len = tcp_off + thl
    plan["hdr_len"] = hdr_len
    if hdr_len + min(payload, mss) - plan["ip_off"] - (40 if ipv6 else 0) > 0xFFFF:
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    if not _sn_room(sn64, nsegs, ah["esn"]):
        return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
    return {**plan, "slot": slot, "sn64": sn64, "body_off": hdr_len, "body_len": payload,
            "nsegs": nsegs, "out_len": nsegs * hdr_len + payload, "reason": Reason.OK,
            "status": 0}


def ah_header_len(ah) -> int:
    """AH bytes: 12 + IV + ICV padded to the transform's alignment (RFC 4302 §2.2); -1 for
    a transform without an alignment."""
    align = int(ah["align"])
    if not align:
        return -1
    return -(-(12 + int(ah["iv_len"]) + int(ah["icv_len"])) // align) * align


def _classify_one(frame: bytes, oob, nbl: int, recs, config: int, icv_space: int,
                  iv_source: int, nested_layer: bool = False) -> dict:
    """Steps 1-3 of the send procedure for one NET_BUFFER; returns the plan's fields.
    ``nested_layer``: ``oob`` is one layer of a transport-over-tunnel frame."""
    nb_count, handle, tunnel_handle = int(oob["nb_count"]), int(oob["offload_handle"]), \
        int(oob["tunnel_handle"])
    nh, padl, ah4, esp4 = (int(oob["next_header"]), int(oob["pad_length"]), int(oob["ah_off4"]),
                           int(oob["esp_off4"]))
    lso, l2 = int(oob["lso_info"]), int(oob["l2_len"])
    flen = len(frame)
    plan = dict(slot=-1, ip_off=l2, next_header=nh, nbl=nbl)

    def fail(status, reason):
        return {**plan, "status": status, "reason": reason, "nsegs": 0, "out_len": 0}

    def passthrough(reason):
        return {**plan, "slot": -1, "reason": reason, "nsegs": 1, "out_len": flen}

    def without_ipsec(reason):
        """No IPsec work: unchanged, but an LSO request is still honoured
        (docs/send-path.md, step 1)."""
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

    def disabled():
        """Offload off for this handle (docs/spec-gaps.md G21): "pass" sends a non-LSO frame
        unchanged and fails an LSO one; "fail" fails every one."""
        if config & Config.DISABLED_FAIL or lso != 0:
            return fail(STATUS_FAILURE, Reason.DISABLED_WITH_HANDLE)
        return without_ipsec(Reason.PASS_DISABLED)

    if handle == 0 and tunnel_handle == 0:
        return without_ipsec(Reason.PASS_NO_HANDLE)
    # docs/send-path.md: step 1 precedes step 2 (G21)
    if not config & (Config.ESP_IPV4 | Config.ESP_IPV6 | Config.AH_IPV4 | Config.AH_IPV6):
        return disabled()
    if tunnel_handle != 0 and handle == 0 and config & Config.TUNNEL_ALONE_SINGLE:
        handle = tunnel_handle  # docs/spec-gaps.md G13, policy "single"
    elif tunnel_handle != 0 and handle != 0 and config & Config.TRANSPORT_TUNNEL:
        return _classify_nested(frame, oob, nbl, recs, config, iv_source, plan, fail)
    elif tunnel_handle != 0:  # G13; or transport over tunnel not offered
        return fail(STATUS_FAILURE, Reason.TUNNEL_HANDLE)
    if flen < l2 + 1:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    version = frame[l2] >> 4
    if version not in (4, 6):
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    ipv6 = version == 6
    plan["ipv6"] = int(ipv6)
    if not config & ((Config.ESP_IPV6 | Config.AH_IPV6) if ipv6
                     else (Config.ESP_IPV4 | Config.AH_IPV4)):  # docs/spec-gaps.md G21
        return disabled()
    slot = handle & HANDLE_SLOT_MASK
    if slot >= len(recs) or not recs[slot]["in_use"] or int(recs[slot]["handle"]) != handle:
        return fail(STATUS_FAILURE, Reason.UNKNOWN_HANDLE)
    sa = recs[slot]
    rec = xf0(sa)
    if sa["inbound"]:
        return fail(STATUS_FAILURE, Reason.INBOUND_HANDLE)
    if bool(sa["ipv6"]) != ipv6:
        return fail(STATUS_FAILURE, Reason.IP_VERSION_MISMATCH)
    if not nested_layer and int(sa["udp_type"]) in (UDP_TRANSPORT_OVER_UDP_TUNNEL,
                                                    UDP_UDP_TRANSPORT_OVER_TUNNEL):
        return fail(STATUS_FAILURE, Reason.NESTING)  # a bundle for a nested frame, alone
    # The SA's layers: AH alone, ESP alone, or ESP then AH
    ah_rec = None
    if rec["proto"] == PROTO_AH:
        ah_rec, rec = rec, None
    elif sa["n_xf"] == 2:
        ah_rec = sa["xf"][1]
    need = 0
    if rec is not None:
        need |= Config.ESP_IPV6 if ipv6 else Config.ESP_IPV4
    if ah_rec is not None:
        need |= Config.AH_IPV6 if ipv6 else Config.AH_IPV4
    if config & need != need:  # docs/send-path.md step 1: a needed protocol is off
        return disabled()
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

    if ah_rec is None:
        if ah4:  # an AH offset on an SA without AH
            return fail(STATUS_FAILURE, Reason.AH_NOT_SUPPORTED)
    else:
        ah = l2 + 4 * ah4
        ah_len = ah_header_len(ah_rec)
        if ah4 == 0 or ah_len < 24 or ah < l2 + ip_hdr_len or ah_len > ip_end - ah:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_AH_OFFSET)
        if frame[ah + 1] != ah_len // 4 - 2:  # Payload Length (RFC 4302 §2.2)
            return fail(STATUS_INVALID_PACKET, Reason.BAD_AH_OFFSET)
        named = header_named(frame, l2, ipv6, ip_hdr_len, ah, ip_end)
        if named < 0:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_AH_OFFSET)
        if named != PROTO_AH:
            return fail(STATUS_FAILURE, Reason.PROTOCOL_MISMATCH)
        if struct.unpack_from("!I", frame, ah + 4)[0] != int(ah_rec["spi"]):
            return fail(STATUS_FAILURE, Reason.SPI_MISMATCH)
        ah_sn = struct.unpack_from("!I", frame, ah + 8)[0]
        if ah_rec["esn"]:
            ah_sn |= int(ah_rec["seq_hi"]) << 32
        if ah_sn == 0:
            return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
        plan.update(ah_off=ah, ah_len=ah_len,
                    ah_fresh_iv=int(iv_source == IvSource.NIC and int(ah_rec["iv_len"]) != 0))
        if rec is None:  # AH alone: the datagram leaves as built, with its ICV
            if esp4:
                return fail(STATUS_INVALID_PACKET, Reason.BAD_ESP_OFFSET)
            if lso_kind:
                return _lso_ah_alone(frame, plan, fail, ah_rec, lso, lso_kind, nb_count,
                                     config, padl, slot, ah_sn, ipv6)
            return {**plan, "slot": slot, "sn64": ah_sn, "hdr_len": ip_end, "body_off": ip_end,
                    "body_len": 0, "nsegs": 1, "out_len": ip_end, "reason": Reason.OK,
                    "status": 0}
    esp = l2 + 4 * esp4
    text_off = esp + 8 + int(rec["iv_len"])
    min_esp = l2 + ip_hdr_len + (8 if rec["udp_encap"] else 0)
    if ah_rec is not None:
        min_esp = max(min_esp, plan["ah_off"] + plan["ah_len"])
    if esp4 == 0 or esp < min_esp or text_off > ip_end:
        return fail(STATUS_INVALID_PACKET, Reason.BAD_ESP_OFFSET)
    named = header_named(frame, l2, ipv6, ip_hdr_len, esp - (8 if rec["udp_encap"] else 0),
                         ip_end)
    if named < 0:  # inside the IPv6 extension headers, as inside the IPv4 header
        return fail(STATUS_INVALID_PACKET, Reason.BAD_ESP_OFFSET)
    if named != (17 if rec["udp_encap"] else PROTO_ESP):
        return fail(STATUS_FAILURE, Reason.PROTOCOL_MISMATCH)
    plan["esp_off"] = esp
    if struct.unpack_from("!I", frame, esp)[0] != int(rec["spi"]):
        return fail(STATUS_FAILURE, Reason.SPI_MISMATCH)
    sn64 = struct.unpack_from("!I", frame, esp + 4)[0]
    if rec["esn"]:
        sn64 |= int(rec["seq_hi"]) << 32
    plan["sn64"] = sn64
    icv, align = int(rec["icv_len"]), int(rec["align"])

    if not lso_kind:
        auto = icv_space == IcvSpace.AUTO

        def trailer_at(end, strict):
            if not (end >= text_off + 2 and frame[end - 1] == nh and frame[end - 2] == padl):
                return False
            start = end - 2 - padl
            return not strict or (start >= text_off
                                  and frame[start:end - 2] == bytes(range(1, padl + 1)))
        reserved = icv_space != IcvSpace.APPEND and trailer_at(ip_end - icv, auto) and (
            icv_space == IcvSpace.RESERVED or frame[ip_end - icv:ip_end] == bytes(icv))
        appended = icv_space != IcvSpace.RESERVED and trailer_at(ip_end, auto)
        if icv == 0:  # no ICV (encryption only, in a bundle): one reading only
            reserved, appended = trailer_at(ip_end, auto), False
        if reserved == appended:  # neither reading, or an ambiguous frame (G4)
            return fail(STATUS_INVALID_PACKET, Reason.BAD_TRAILER)
        trailer_end = ip_end - icv if reserved else ip_end
        text_len = trailer_end - text_off
        if padl + 2 > text_len:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_TRAILER)
        if align <= 0 or text_len % align:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_ALIGNMENT)
        if trailer_end + icv - l2 - (40 if ipv6 else 0) > 0xFFFF:  # an appended ICV overflows
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)  # the IP length field
        if sn64 == 0:
            return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
        fresh = int(iv_source == IvSource.NIC and int(rec["iv_len"]) != 0)
        return {**plan, "slot": slot, "fresh_iv": fresh, "hdr_len": text_off, "body_off": text_off,
                "body_len": text_len, "nsegs": 1, "out_len": trailer_end + icv,
                "reason": Reason.OK, "status": 0}

    if not config & Config.LSO_WITH_IPSEC or not _lso_enabled(lso_kind, ipv6, config):
        return fail(STATUS_FAILURE, Reason.LSO_DISABLED)
    mss, tcp_off = lso & 0xFFFFF, (lso >> 20) & 0x3FF
    plan.update(mss=mss, tcp_off=tcp_off)
    payload_end = flen - padl
    if (nb_count != 1 or mss == 0
            or (lso_kind == 2 and (lso >> 31) & 1 != int(ipv6)) or tcp_off + 20 > payload_end
            or not _dstopts_to_tcp(frame, text_off, nh, tcp_off, ipv6)):
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    thl = (frame[tcp_off + 12] >> 4) * 4
    if thl < 20 or tcp_off + thl > payload_end:
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    payload = payload_end - tcp_off - thl
    nsegs = max(1, -(-payload // mss))
    ptl = tcp_off + thl - text_off  # protected header bytes: destination options, TCP
    if _lso_segment_len(tcp_off + thl, ptl, min(payload, mss), align, icv) - l2 - (
            40 if ipv6 else 0) > 0xFFFF:  # a full segment would overflow the IP length field
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    if not _sn_room(sn64, nsegs, rec["esn"]) or (
            ah_rec is not None and not _sn_room(ah_sn, nsegs, ah_rec["esn"])):
        return fail(STATUS_FAILURE, Reason.SEQ_EXHAUSTED)
    hdr_len = tcp_off + thl
    full, rem = divmod(payload, mss)  # as the compiled stage: no per-segment list
    out_len = full * _lso_segment_len(hdr_len, ptl, mss, align, icv)
    if rem or payload == 0:
        out_len += _lso_segment_len(hdr_len, ptl, rem, align, icv)
    return {**plan, "slot": slot, "fresh_iv": int(int(rec["iv_len"]) != 0), "hdr_len": hdr_len,
            "body_off": hdr_len, "body_len": payload,
            "nsegs": nsegs, "out_len": out_len, "reason": Reason.OK, "status": 0}


UDP_TUNNEL = 0x2  # IPSEC_OFFLOAD_V2_UDP_ESP_ENCAPSULATION_TUNNEL
UDP_TRANSPORT_OVER_UDP_TUNNEL = 0x4  # ..._TRANSPORT_OVER_UDP_ESP_ENCAPSULATION_TUNNEL
UDP_UDP_TRANSPORT_OVER_TUNNEL = 0x8  # ..._UDP_ESP_ENCAPSULATION_TRANSPORT_OVER_TUNNEL


def _nesting_ok(t, u) -> bool:
    """The UdpEspEncapsulation values of transport bundle ``t`` and tunnel bundle ``u``
    agree (docs/send-path.md, "Transport over tunnel")."""
    t_esp = int(t["xf"][0]["proto"]) == PROTO_ESP
    tu, uu = int(t["udp_type"]), int(u["udp_type"])
    if uu == UDP_TUNNEL:
        return tu == (UDP_TRANSPORT_OVER_UDP_TUNNEL if t_esp else 0)
    if uu != 0:
        return False
    return tu == 0 or (tu == UDP_UDP_TRANSPORT_OVER_TUNNEL and t_esp)


def _classify_nested(frame: bytes, oob, nbl: int, recs, config: int, iv_source: int,
                     plan: dict, fail) -> dict:
    """Transport over tunnel: the tunnel layer found by parsing the outer header, the
    transport layer by slot 12 from the inner IP header (G11); both ICVs reserved (G30)."""
    handle, th = int(oob["offload_handle"]), int(oob["tunnel_handle"])
    ts, us = handle & HANDLE_SLOT_MASK, th & HANDLE_SLOT_MASK
    l2, flen = int(oob["l2_len"]), len(frame)
    def live(slot, h):
        return slot < len(recs) and recs[slot]["in_use"] and int(recs[slot]["handle"]) == h
    if not live(us, th) or not live(ts, handle):
        return fail(STATUS_FAILURE, Reason.UNKNOWN_HANDLE)
    t, u = recs[ts], recs[us]
    if u["inbound"] or t["inbound"]:
        return fail(STATUS_FAILURE, Reason.INBOUND_HANDLE)
    if int(oob["lso_info"]) != 0:  # LSO is never combined with tunnel packets (NDIS)
        return fail(STATUS_FAILURE, Reason.LSO_BAD_PARAMS)
    if ts == us or not _nesting_ok(t, u):
        return fail(STATUS_FAILURE, Reason.NESTING)
    if l2 < 0 or flen < l2 + 20:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    version = frame[l2] >> 4
    ipv6 = version == 6
    if version == 4:
        ihl = (frame[l2] & 0xF) * 4
        ip_end = l2 + struct.unpack_from("!H", frame, l2 + 2)[0]
        nh = frame[l2 + 9]
        if ihl < 20 or ip_end < l2 + ihl:
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    elif version == 6:
        ihl = 40
        if flen < l2 + 40:
            return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
        ip_end = l2 + 40 + struct.unpack_from("!H", frame, l2 + 4)[0]
        nh = frame[l2 + 6]
    else:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    if ip_end > flen or l2 + ihl > flen:
        return fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP)
    off = l2 + ihl
    for _ in range(64):
        if not (ipv6 and nh in (0, 43, 44, 60)) or off + 8 > ip_end:
            break
        hlen = 8 if nh == 44 else (frame[off + 1] + 1) * 8
        nh = frame[off]
        off += hlen
    u0 = u["xf"][0]
    ux = u["xf"][1] if int(u0["proto"]) == PROTO_ESP and u["n_xf"] == 2 else u0
    uo = dict(offload_handle=th, tunnel_handle=0, lso_info=0, nb_count=int(oob["nb_count"]),
              l2_len=l2, next_header=0, pad_length=0, ah_off4=0, esp_off4=0)
    if int(ux["proto"]) == PROTO_AH:
        if (off - l2) % 4 or off - l2 > 1020:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_AH_OFFSET)
        uo["ah_off4"] = (off - l2) // 4
        if u["n_xf"] == 2:
            off += ah_header_len(ux)
    if int(u0["proto"]) == PROTO_ESP:
        if u0["udp_encap"]:
            off += 8
        if (off - l2) % 4 or off - l2 > 1020 or off < l2 + ihl:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_ESP_OFFSET)
        uo["esp_off4"] = (off - l2) // 4
        tend = ip_end - int(u0["icv_len"])
        if tend - 2 < off:
            return fail(STATUS_INVALID_PACKET, Reason.BAD_TRAILER)
        uo["pad_length"], uo["next_header"] = frame[tend - 2], frame[tend - 1]
        inner = off + 8 + int(u0["iv_len"])
        limit = tend - 2 - uo["pad_length"]
    else:
        inner = off + ah_header_len(ux)
        limit = ip_end
    p = _classify_one(frame, uo, nbl, recs, config, IcvSpace.RESERVED, iv_source, True)
    if p.get("status", 0) != 0 or p.get("slot", -1) < 0:
        return p
    if p.get("ah_off", 0) and int(u0["proto"]) == PROTO_AH:
        nh = frame[p["ah_off"]]
    else:
        nh = uo["next_header"]
    if inner + 20 > limit or inner > 0xFFFF or nh not in (4, 41):
        return {**p, **_failed(fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP))}
    if frame[inner] >> 4 != (4 if nh == 4 else 6):
        return {**p, **_failed(fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP))}
    to = dict(offload_handle=handle, tunnel_handle=0, lso_info=0, nb_count=int(oob["nb_count"]),
              l2_len=inner, next_header=int(oob["next_header"]),
              pad_length=int(oob["pad_length"]), ah_off4=int(oob["ah_off4"]),
              esp_off4=int(oob["esp_off4"]))
    q = _classify_one(frame[:limit], to, nbl, recs, config, IcvSpace.RESERVED, iv_source, True)
    if q.get("status", 0) != 0:
        return {**p, **_failed(q)}
    if q.get("slot", -1) < 0:  # offload off for the transport layer (G21)
        return {**p, "ah_off": 0, "esp_off": 0, "slot": -1, "reason": q["reason"], "nsegs": 1,
                "out_len": flen}
    if q["out_len"] != limit:  # U's payload is exactly the inner packet
        return {**p, **_failed(fail(STATUS_INVALID_PACKET, Reason.MALFORMED_IP))}
    if int(t["udp_type"]) == UDP_UDP_TRANSPORT_OVER_TUNNEL and q.get("ipv6", 0):
        return {**p, **_failed(fail(STATUS_FAILURE, Reason.NESTING))}
    return {**p, "nested": 1, "in_slot": q["slot"], "in_sn64": q.get("sn64", 0),
            "in_ip_off": q["ip_off"], "in_ip_hdr_len": q.get("ip_hdr_len", 0),
            "in_end": limit, "in_esp_off": q.get("esp_off", 0), "in_ah_off": q.get("ah_off", 0),
            "in_ah_len": q.get("ah_len", 0), "in_body_len": q.get("body_len", 0),
            "in_ipv6": q.get("ipv6", 0), "in_fresh_iv": q.get("fresh_iv", 0),
            "in_ah_fresh_iv": q.get("ah_fresh_iv", 0)}


def _failed(p: dict) -> dict:
    """The status fields of a failed plan (the compiled fail() keeps the other fields)."""
    return {"status": p["status"], "reason": p["reason"], "nsegs": 0, "out_len": 0}


def tx_classify(batch, records, config, icv_space, iv_source, plans):
    _c_ints(config=config, icv_space=icv_space, iv_source=iv_source)
    arena, nb_off, nb_len, nb_nbl = batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl
    _buffers(arena=(arena, np.uint8, False), nb_off=(nb_off, np.int64, False),
             nb_len=(nb_len, np.int64, False), nb_nbl=(nb_nbl, np.int32, False),
             oob_bytes=(batch.oob_bytes, np.uint8, False),
             records=(records, np.uint8, False), plans=(plans, np.uint8, True))
    n_nb = len(nb_off)
    if not len(nb_len) == len(nb_nbl) == n_nb:
        raise ValueError("nb_off, nb_len and nb_nbl differ in length")
    if len(batch.oob_bytes) % NBL_OOB_DTYPE.itemsize:
        raise ValueError("oob buffer size does not match the NblOob layout")
    oob = np.asarray(batch.oob_bytes).view(NBL_OOB_DTYPE)
    n_nbl = len(oob)
    if len(plans) != n_nb * NB_PLAN_DTYPE.itemsize or len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    recs = _records(records)
    out = np.asarray(plans).view(NB_PLAN_DTYPE)
    for i in range(n_nb):
        if not 0 <= nb_nbl[i] < n_nbl:
            raise ValueError("nb_nbl names an NBL outside the batch")
        if i and nb_nbl[i] < nb_nbl[i - 1]:
            raise ValueError("nb_nbl must be non-decreasing (an NBL's buffers are consecutive)")
        if nb_off[i] < 0 or nb_len[i] < 0 or int(nb_off[i]) + int(nb_len[i]) > len(arena):
            raise ValueError("a NET_BUFFER lies outside the arena")
    for i in range(n_nb):
        k = int(nb_nbl[i])
        frame = bytes(arena[int(nb_off[i]):int(nb_off[i] + nb_len[i])])
        fields = _classify_one(frame, oob[k], k, recs, int(config), int(icv_space),
                               int(iv_source))
        out[i] = np.zeros((), NB_PLAN_DTYPE)
        for name, value in fields.items():
            out[i][name] = value
