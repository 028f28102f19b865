"""Shared helpers of the twin stages: buffer checks, padding, the IPv6 pseudo-header
destination, per-segment header patches and the plan consistency checks."""
from __future__ import annotations

import struct

import numpy as np

from ...inet import ones_complement_sum as _checksum
from ..layout import PROTO_AH, SA_RECORD_DTYPE, Config

def _pad(unpadded: int, align: int) -> int:
    """Pad bytes so that payload + pad + 2 is a multiple of align (docs/protocol.md)."""
    return -unpadded % align


def _lso_segment_len(hdr_len: int, ptl: int, chunk: int, align: int, icv: int) -> int:
    """One ESP LSO segment: ``ptl`` protected header bytes each segment repeats (the TCP
    header, and destination options before it), ``chunk`` its TCP payload."""
    return hdr_len + chunk + _pad(ptl + chunk + 2, align) + 2 + icv


def _dstopts_to_tcp(frame: bytes, start: int, nh: int, tcp_off: int, ipv6: bool) -> bool:
    """LSO: TCP at TcpHeaderOffset is right at ``start`` (named TCP by ``nh``), or past a
    chain of IPv6 destination-options headers ending exactly there with Next Header TCP
    (RFC 8200 §4.1; docs/send-path.md, step 3). The caller checked tcp_off + 20."""
    off = start
    for _ in range(128):  # TcpHeaderOffset < 1024: at most 128 headers of 8 bytes
        if off == tcp_off:
            return nh == 6
        if not ipv6 or nh != 60 or off + 8 > tcp_off:
            return False
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    return False


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
            # as Cython: a read-only numpy array is a ValueError, another object a BufferError
            error = ValueError if isinstance(value, np.ndarray) else BufferError
            raise error(f"{name} is read-only")


def _lso_enabled(lso_kind: int, ipv6: bool, config: int) -> bool:
    if lso_kind == 1:  # NDIS LSOv1 is IPv4 only
        return not ipv6 and bool(config & Config.LSO_V1)
    return bool(config & (Config.LSO_V2_IPV6 if ipv6 else Config.LSO_V2_IPV4))


def header_named(frame: bytes, l2: int, ipv6: bool, ihl: int, target: int, limit: int) -> int:
    """The Protocol / Next Header value that names the header at ``target``, walking IPv6
    extension headers (RFC 8200 §4) and AH (RFC 4302 §2.2) from the IP header; -1 if no
    header starts there, -2 if it names an IPv6 extension header."""
    off, nh = l2 + ihl, frame[l2 + (6 if ipv6 else 9)]
    for _ in range(64):
        if off == target:
            return -2 if ipv6 and nh in (0, 43, 44, 60) else nh
        if off > target:
            return -1
        if ipv6 and nh in (0, 43, 60):
            if off + 2 > limit:
                return -1
            hlen = (frame[off + 1] + 1) * 8
        elif ipv6 and nh == 44:
            hlen = 8
        elif nh == 51:
            if off + 2 > limit:
                return -1
            hlen = (frame[off + 1] + 2) * 4
        else:
            return -1
        if off + hlen > limit:
            return -1
        nh, off = frame[off], off + hlen
    return -1


def _records(records: np.ndarray) -> np.ndarray:
    if len(records) % SA_RECORD_DTYPE.itemsize:
        raise ValueError("plans / records buffer size does not match the struct layout")
    return np.asarray(records).view(SA_RECORD_DTYPE)


def xf0(rec):
    """The first (ESP) transform of an SA record."""
    return rec["xf"][0]


def _ipv6_final_dst(ip: bytes, ext_end: int) -> int:
    """Offset from the IPv6 header of the destination a TCP pseudo-header names (docs/protocol.md,
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
    """Header patches of one output segment (docs/send-path.md)."""
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


def _ah_header_len(ah) -> int:
    align = int(ah["align"])
    return -(-(12 + int(ah["iv_len"]) + int(ah["icv_len"])) // align) * align if align else -1


def _ah_plan_is_consistent(p, ah, datagram_end: int) -> bool:
    """The plan's AH header lies after the IP header and inside the datagram, with the
    length its transform gives."""
    ah_off, ah_len = int(p["ah_off"]), int(p["ah_len"])
    return (int(ah["align"]) != 0 and ah_len == _ah_header_len(ah) and ah_len >= 24
            and ah_off >= int(p["ip_off"]) + int(p["ip_hdr_len"])
            and ah_off + ah_len <= datagram_end)


def _plan_is_consistent(p, sa, flen: int) -> bool:
    """Everything emit will touch for this plan lies inside the frame and its out_len, and
    every field it writes can hold its value."""
    rec = xf0(sa)
    ip_off, ihl, esp = int(p["ip_off"]), int(p["ip_hdr_len"]), int(p["esp_off"])
    nsegs, out_len, hdr_len = int(p["nsegs"]), int(p["out_len"]), int(p["hdr_len"])
    body_off, body_len = int(p["body_off"]), int(p["body_len"])
    n_xf = int(sa["n_xf"])
    if (not 1 <= n_xf <= 2 or (p["ipv6"] and ihl != 40) or ip_off < 0 or ihl < 20
            or p["ipv6"] != sa["ipv6"]):
        return False
    if rec["proto"] == PROTO_AH:  # AH alone: the datagram as built, or its TCP segments
        if n_xf != 1 or not p["ah_off"] or esp != 0:
            return False
        if p["lso"]:
            return (_plain_lso_layout_is_consistent(p, flen)
                    and _ah_plan_is_consistent(p, rec, int(p["tcp_off"]))
                    and int(p["tcp_off"]) >= int(p["ah_off"]) + int(p["ah_len"])
                    and int(p["sn64"]) <= 2**64 - 1 - (nsegs - 1))
        return (nsegs == 1 and hdr_len == out_len and body_off == hdr_len and body_len == 0
                and out_len <= flen and _ah_plan_is_consistent(p, rec, out_len)
                and out_len - ip_off - (40 if p["ipv6"] else 0) <= 0xFFFF)
    if n_xf == 2:
        ah = sa["xf"][1]
        if (ah["proto"] != PROTO_AH or not p["ah_off"] or not _ah_plan_is_consistent(p, ah, esp)
                or (not p["lso"] and nsegs != 1)):
            return False
    elif p["ah_off"]:
        return False
    align, icv = int(rec["align"]), int(rec["icv_len"])
    text_off = esp + 8 + int(rec["iv_len"])
    if (esp < ip_off + ihl
            or (rec["udp_encap"] and esp < ip_off + ihl + 8)
            or int(p["sn64"]) > 2**64 - 1 - (nsegs - 1)
            or body_off < 0 or body_len < 0 or body_off > flen or body_len > flen - body_off
            or align == 0):
        return False
    if not p["lso"]:
        if not (nsegs == 1 and hdr_len == text_off and body_off == text_off
                and out_len == text_off + body_len + icv):
            return False
        big = out_len
    else:
        tcp_off, mss = int(p["tcp_off"]), int(p["mss"])
        thl = hdr_len - tcp_off
        if tcp_off < text_off or thl < 20 or thl > 60 or mss <= 0 or body_off != hdr_len:
            return False
        ptl = hdr_len - text_off  # destination options (if any) and TCP header
        full, rem = divmod(body_len, mss)
        n = 1 if body_len == 0 else full + (1 if rem else 0)
        size = full * _lso_segment_len(hdr_len, ptl, mss, align, icv)
        if rem or body_len == 0:
            size += _lso_segment_len(hdr_len, ptl, rem, align, icv)
        if nsegs != n or out_len != size:
            return False
        big = _lso_segment_len(hdr_len, ptl, min(mss, body_len), align, icv)
    return big - ip_off - (40 if p["ipv6"] else 0) <= 0xFFFF  # the IP length field holds it


def _plain_lso_is_consistent(p, flen: int) -> bool:
    """A plain-LSO plan (no SA) stays inside its frame and its out_len."""
    return not p["ah_off"] and _plain_lso_layout_is_consistent(p, flen)


def _plain_lso_layout_is_consistent(p, flen: int) -> bool:
    """TCP segments without ESP (plain LSO, or LSO with AH alone)."""
    ip_off, ihl, tcp_off = int(p["ip_off"]), int(p["ip_hdr_len"]), int(p["tcp_off"])
    hdr_len, mss, body_len = int(p["hdr_len"]), int(p["mss"]), int(p["body_len"])
    thl = hdr_len - tcp_off
    if (int(p["esp_off"]) != 0 or ip_off < 0 or ihl < 20 or (p["ipv6"] and ihl != 40)
            or tcp_off < ip_off + ihl
            or not 20 <= thl <= 60 or mss <= 0 or int(p["body_off"]) != hdr_len
            or body_len < 0 or body_len > flen - hdr_len):
        return False
    n = max(1, -(-body_len // mss))
    return (int(p["nsegs"]) == n and int(p["out_len"]) == n * hdr_len + body_len
            and hdr_len + min(body_len, mss) - ip_off - (40 if p["ipv6"] else 0) <= 0xFFFF)




def _c_ints(**values) -> None:
    """What a C ``int`` argument of the compiled stages accepts."""
    for name, value in values.items():
        if not -2**31 <= int(value) < 2**31:
            raise OverflowError(f"{name} = {value} does not fit a C int")


def _batch_view(batch):
    """What the compiled stages' BatchView checks of a batch: its arrays as numpy arrays
    (arena, nb_off, nb_len, nb_nbl) and its NblOob table."""
    from ..layout import NBL_OOB_DTYPE
    names = ("arena", "nb_off", "nb_len", "nb_nbl", "oob_bytes")
    values = [getattr(batch, name) for name in names]
    for name, value in zip(names, values):
        if value is None:
            raise TypeError(f"batch.{name} must be an array, not None")
    _buffers(**{name: (value, dtype, False) for name, value, dtype in
                zip(names, values, (np.uint8, np.int64, np.int64, np.int32, np.uint8))})
    arena, nb_off, nb_len, nb_nbl, oob_bytes = (np.asarray(v) for v in values)
    n_nb = len(nb_off)
    if not len(nb_len) == len(nb_nbl) == n_nb:
        raise ValueError("nb_off, nb_len and nb_nbl differ in length")
    if len(oob_bytes) % NBL_OOB_DTYPE.itemsize:
        raise ValueError("oob buffer size does not match the NblOob layout")
    oob = oob_bytes.view(NBL_OOB_DTYPE)
    for i in range(n_nb):
        if not 0 <= nb_nbl[i] < len(oob):
            raise ValueError("nb_nbl names an NBL outside the batch")
        if i and nb_nbl[i] < nb_nbl[i - 1]:
            raise ValueError("nb_nbl must be non-decreasing (an NBL's buffers are consecutive)")
        if nb_off[i] < 0 or nb_len[i] < 0 or int(nb_off[i]) + int(nb_len[i]) > len(arena):
            raise ValueError("a NET_BUFFER lies outside the arena")
    return arena, nb_off, nb_len, nb_nbl, oob
