"""Twin of the compiled rx_deliver (host/rx_deliver.pxi): what the host stack does with the
NIC's receive indications — the SA's selector, the anti-replay window (RFC 4303 §3.4.3,
updated only for frames the NIC verified), then decapsulation: transport, the original IP
packet with its protocol and lengths restored; tunnel, the inner packet with the RFC 6040
ECN result (docs/architecture.md).

The window bitmap is handled as one Python integer (bit i = top - i was accepted), so a
move of the window is one shift."""
from __future__ import annotations

import struct

import numpy as np

from ...inet import ones_complement_sum
from ...ndis import CryptoStatus
from ..layout import RX_PLAN_DTYPE, RX_WINDOW_DTYPE, RX_WINDOW_WORDS, Delivery, RxReason
from .common import _batch_view, _buffers

M64 = (1 << 64) - 1


def rx_prefix_match(addr: bytes, prefix: bytes, bits: int) -> bool:
    """The first ``bits`` bits of ``addr`` and ``prefix`` agree."""
    whole, rest = bits >> 3, bits & 7
    if addr[:whole] != prefix[:whole]:
        return False
    if rest and (addr[whole] ^ prefix[whole]) & (0xFF << (8 - rest)) & 0xFF:
        return False
    return True


def rx_selector_ok(w, ip: bytes, ipv6: bool) -> bool:
    if not w["has_sel"]:
        return True
    if bool(w["sel_ipv6"]) != bool(ipv6):
        return False
    src, dst = (ip[8:24], ip[24:40]) if ipv6 else (ip[12:16], ip[16:20])
    return (rx_prefix_match(src, bytes(w["src"]), int(w["src_len"]))
            and rx_prefix_match(dst, bytes(w["dst"]), int(w["dst_len"])))


def _window_words(w) -> int:
    return (int(w["size"]) + 63) >> 6


def rx_window_shift(w, shift: int) -> None:
    """Move the window forward by ``shift``: offset i becomes i + shift (the bits that fall
    beyond its words are gone)."""
    nw = _window_words(w)
    if shift >= 64 * nw:  # every bit falls out (and no huge integer is ever built)
        value = 0
    else:
        words = w["bits"][:nw].tolist()
        value = sum(word << (64 * j) for j, word in enumerate(words))
        value = (value << shift) & ((1 << (64 * nw)) - 1)
    w["bits"][:nw] = [(value >> (64 * j)) & M64 for j in range(nw)]


def rx_window_accept(w, sn: int) -> bool:
    """RFC 4303 §3.4.3: accept a number right of the window, or an unseen one inside it;
    record it. 0 is never sent (RFC 4303 §3.3.3: the first packet carries 1)."""
    if sn == 0:
        return False
    top, size = int(w["top"]), int(w["size"])
    if size == 0:  # no replay check
        if sn > top:
            w["top"] = sn
        return True
    if sn > top:
        rx_window_shift(w, sn - top)
        w["top"] = sn
        w["bits"][0] |= np.uint64(1)
        return True
    i = top - sn
    if i >= size:
        return False
    word, bit = i >> 6, i & 63
    if (int(w["bits"][word]) >> bit) & 1:
        return False
    w["bits"][word] = int(w["bits"][word]) | (1 << bit)
    return True


def ip_ecn(ip: bytes, ipv6: bool) -> int:
    return (ip[1] >> 4) & 3 if ipv6 else ip[1] & 3


def ipv4_fix_checksum(o: bytearray, at: int) -> None:
    """The IPv4 header checksum of the header at ``o[at:]`` (RFC 791, RFC 1071)."""
    ihl = (o[at] & 0xF) * 4
    o[at + 10:at + 12] = b"\0\0"
    o[at + 10:at + 12] = struct.pack("!H", ~ones_complement_sum(bytes(o[at:at + ihl])) & 0xFFFF)


def rx_plan_fits(f: bytes, l2: int, p) -> bool:
    """Everything rx_deliver_one reads and writes for this plan lies inside the frame and
    its share of the output (what rx_run's plans always satisfy)."""
    if not p["crypto_done"]:
        return True
    flen, ip_off = len(f), int(p["ip_off"])
    hdr = 40 if p["ipv6"] else 20
    if ip_off < l2 or ip_off > flen - hdr:
        return False  # the selector reads the addresses
    if p["crypto_status"] != CryptoStatus.SUCCESS:
        return True
    if not p["ipv6"]:
        hdr = (f[ip_off] & 0xF) * 4  # the checksum covers the whole header
    udp_off, esp_off, nh_off = int(p["udp_off"]), int(p["esp_off"]), int(p["nh_off"])
    text_off, text_len = int(p["text_off"]), int(p["text_len"])
    ah_off, ah_len, ip_end = int(p["ah_off"]), int(p["ah_len"]), int(p["ip_end"])
    if ah_off:  # AH alone, or an AH+ESP bundle: the headers end where AH starts
        if (ah_len < 12 or ah_off < ip_off + hdr or ah_off > ip_end - ah_len or ip_end > flen
                or not ip_off <= nh_off < ah_off):
            return False
        if p["op"] < 0:
            return True
        return (esp_off >= ah_off + ah_len and esp_off + 8 <= text_off
                and text_len >= 2 + int(p["pad_length"]) and text_off <= flen - text_len)
    hdr_end = udp_off or esp_off
    return (hdr_end >= ip_off + hdr and ip_off <= nh_off < hdr_end
            and (not udp_off or udp_off + 8 <= esp_off)
            and esp_off + 8 <= text_off and text_len >= 2 + int(p["pad_length"])
            and text_off <= flen - text_len)


def rx_owner(p, slot_sa, slot_handle, windows) -> int:
    """The stack's SA index of a plan's layer, -1 if none (a stale or foreign handle)."""
    slot = int(p["slot"])
    if (slot < 0 or slot >= len(slot_sa) or int(slot_handle[slot]) != int(p["handle"])
            or not 0 <= int(slot_sa[slot]) < len(windows)):
        return -1
    return int(slot_sa[slot])


def rx_inner_fits(f: bytes, dec: bytes, l2: int, p, plan, n: int) -> bool:
    """The frame's plan fits and so does its inner layer's, if it names one: a row after the
    frames' rows, itself not nested, inside the decrypted inner packet."""
    if not rx_plan_fits(f, l2, p):
        return False
    k = int(p["inner"])
    if k <= 0:
        return True
    if not p["crypto_done"] or k < n or k >= len(plan):
        return False
    q = plan[k]
    if int(q["inner"]) != 0 or not q["crypto_done"]:
        return False
    if p["crypto_status"] != CryptoStatus.SUCCESS or q["crypto_status"] != CryptoStatus.SUCCESS:
        return True
    pay_off, pay_len = _payload(p)
    if pay_len < 0:
        return False
    return rx_plan_fits(dec[pay_off:pay_off + pay_len], 0, q)


def _payload(p) -> tuple[int, int]:
    """What follows a layer: after AH alone, as received; else the decrypted ESP payload."""
    if p["ah_off"] and p["op"] < 0:
        pay_off = int(p["ah_off"]) + int(p["ah_len"])
        return pay_off, int(p["ip_end"]) - pay_off
    return int(p["text_off"]), int(p["text_len"]) - 2 - int(p["pad_length"])


def _next_header(p) -> int:
    return int(p["ah_next_header"]) if p["ah_off"] and p["op"] < 0 else int(p["next_header"])


def rx_strip_transport(f: bytes, dec: bytes, p, nh: int, pay_off: int, pay_len: int) -> bytes:
    """Transport: the headers before AH / ESP (or ESP's UDP header) from ``f``, then the
    payload from ``dec``; protocol / next header, lengths and the IPv4 checksum restored."""
    ip_off, ipv6 = int(p["ip_off"]), bool(p["ipv6"])
    hdr_end = int(p["ah_off"]) or int(p["udp_off"]) or int(p["esp_off"])
    hlen = hdr_end - ip_off
    o = bytearray(f[ip_off:ip_off + hlen] + dec[pay_off:pay_off + pay_len])
    o[int(p["nh_off"]) - ip_off] = nh
    if ipv6:
        o[4:6] = struct.pack("!H", (hlen + pay_len - 40) & 0xFFFF)
    else:
        o[2:4] = struct.pack("!H", (hlen + pay_len) & 0xFFFF)
        ipv4_fix_checksum(o, 0)
    return bytes(o)


def rx_set_ecn(o: bytearray, at: int, ipv6: bool, ecn: int) -> None:
    if ipv6:
        o[at + 1] = (o[at + 1] & 0xCF) | (ecn << 4)
    else:
        o[at + 1] = (o[at + 1] & 0xFC) | ecn
        ipv4_fix_checksum(o, at)


def rx_deliver_one(f: bytes, dec: bytes, l2: int, p, slot_sa, slot_handle,
                   windows, q=None) -> tuple[int, bytes, int]:
    """One frame: its Delivery code, what it delivers and its SA index (-1 for none). ``q``:
    the inner (transport) layer of a nested frame, or None."""
    if not p["crypto_done"]:
        reason = int(p["reason"])
        if reason == RxReason.NOT_IP:
            return Delivery.MALFORMED, b"", -1
        if reason in (RxReason.SHORT, RxReason.NO_SA, RxReason.GATED):
            return Delivery.NO_SA, b"", -1
        return Delivery.CLEAR, f, -1
    sa = rx_owner(p, slot_sa, slot_handle, windows)
    if sa < 0:
        return Delivery.NO_SA, b"", -1
    w = windows[sa]
    ip_off, ipv6 = int(p["ip_off"]), bool(p["ipv6"])
    ip = f[ip_off:]
    if not rx_selector_ok(w, ip, ipv6):
        return Delivery.SELECTOR, b"", -1
    sa_q = rx_owner(q, slot_sa, slot_handle, windows) if q is not None else -1
    if q is not None and q["crypto_status"] != CryptoStatus.SUCCESS and sa_q >= 0:
        return Delivery.CRYPTO, b"", sa_q  # the inner layer failed: its SA's failure
    if p["crypto_status"] != CryptoStatus.SUCCESS or (
            q is not None and q["crypto_status"] != CryptoStatus.SUCCESS):
        return Delivery.CRYPTO, b"", sa
    if q is not None and sa_q < 0:
        return Delivery.NO_SA, b"", sa
    if not rx_window_accept(w, int(p["seq64"])):
        return Delivery.REPLAY, b"", sa
    pay_off, pay_len = _payload(p)
    nh = _next_header(p)
    if nh == 59:  # a dummy packet (RFC 4303 §2.6)
        return Delivery.DUMMY, b"", sa
    payload = dec[pay_off:pay_off + pay_len]
    if nh in (4, 41):
        # tunnel: the inner packet, as sent but for ECN (RFC 4301 §5.1.2.2, RFC 6040 §4.2)
        inner_v = 4 if nh == 4 else 6
        if pay_len < (20 if inner_v == 4 else 40) or payload[0] >> 4 != inner_v:
            return Delivery.INNER, b"", sa
        if inner_v == 4:
            inner_len, ihl = struct.unpack_from("!H", payload, 2)[0], (payload[0] & 0xF) * 4
            if ihl < 20 or inner_len < ihl or inner_len > pay_len:
                return Delivery.INNER, b"", sa
        else:
            inner_len = 40 + struct.unpack_from("!H", payload, 4)[0]
            if inner_len > pay_len:
                return Delivery.INNER, b"", sa
        outer_ecn, inner_ecn = ip_ecn(ip, ipv6), ip_ecn(payload, inner_v == 6)
        new_ecn = inner_ecn
        if outer_ecn == 3:  # CE
            if inner_ecn == 0:  # over Not-ECT: drop
                return Delivery.ECN, b"", sa
            new_ecn = 3
        elif outer_ecn == 1 and inner_ecn == 2:  # ECT(1) over ECT(0)
            new_ecn = 1
        if q is not None:
            # transport over tunnel: the inner packet's own layer, its selector and window
            # (RFC 4301 §5.2), then the innermost packet
            if int(q["ip_end"]) > inner_len or _next_header(q) in (4, 41):
                return Delivery.INNER, b"", sa  # one tunnel layer only
            if not rx_selector_ok(windows[sa_q], payload[int(q["ip_off"]):], bool(q["ipv6"])):
                return Delivery.SELECTOR, b"", sa
            if not rx_window_accept(windows[sa_q], int(q["seq64"])):
                return Delivery.REPLAY, b"", sa_q
            sa = sa_q
            nh_q = _next_header(q)
            if nh_q == 59:
                return Delivery.DUMMY, b"", sa
            q_off, q_len = _payload(q)
            o = bytearray(f[:l2] + rx_strip_transport(payload, payload, q, nh_q, q_off, q_len))
        else:
            o = bytearray(f[:l2] + payload[:inner_len])
        if new_ecn != inner_ecn:
            rx_set_ecn(o, l2, inner_v == 6, new_ecn)
        if l2 >= 14:  # the EtherType names the inner IP version
            o[l2 - 2:l2] = struct.pack("!H", 0x0800 if inner_v == 4 else 0x86DD)
        return Delivery.DECAP, bytes(o), sa
    if q is not None:
        return Delivery.INNER, b"", sa  # an inner layer under a layer that does not decapsulate
    return Delivery.DECAP, f[:l2] + rx_strip_transport(f, dec, p, nh, pay_off, pay_len), sa


def rx_deliver(batch, out, plans, slot_sa, slot_handle, windows, reuse=None):
    """Deliver the frames of ``batch`` as the NIC left them (``out``, ``plans`` from rx_run):
    ``slot_sa`` (int32) and ``slot_handle`` (uint64) map an SA slot to the stack's SA index
    into ``windows`` (RX_WINDOW_DTYPE, updated). Returns (delivered, deliveries, sa_index,
    out_off, out_len)."""
    arena, nb_off, nb_len, nb_nbl, oob = _batch_view(batch)
    _buffers(out=(out, np.uint8, False), plans=(plans, np.uint8, False),
             slot_sa=(slot_sa, np.int32, False), slot_handle=(slot_handle, np.uint64, False))
    win_bytes = windows.view(np.uint8)
    _buffers(windows=(win_bytes, np.uint8, True))
    n = len(nb_off)
    if (len(out) != len(arena) or len(plans) < n * RX_PLAN_DTYPE.itemsize
            or len(plans) % RX_PLAN_DTYPE.itemsize or len(slot_handle) != len(slot_sa) or len(win_bytes) % RX_WINDOW_DTYPE.itemsize):
        raise ValueError("rx_deliver: out, plans, slot maps or windows do not match the batch")
    plan = np.asarray(plans).view(RX_PLAN_DTYPE)
    rows = np.asarray(win_bytes).view(RX_WINDOW_DTYPE)  # shares the windows' memory
    for i, row in enumerate(rows):
        # a window larger than its bitmap, or a prefix longer than the address: refused
        limit = 128 if row["sel_ipv6"] else 32
        if int(row["size"]) > 64 * RX_WINDOW_WORDS or (
                row["has_sel"] and (row["src_len"] > limit or row["dst_len"] > limit)):
            raise ValueError(f"rx_deliver: window {i} holds more than {64 * RX_WINDOW_WORDS} "
                             f"packets or a selector prefix longer than its address")
    slot_sa, slot_handle = np.asarray(slot_sa).tolist(), np.asarray(slot_handle).tolist()
    dec_all = bytes(np.asarray(out))
    frames, l2s = [], []
    for i in range(n):
        start, length = int(nb_off[i]), int(nb_len[i])
        frames.append(bytes(arena[start:start + length]))
        l2s.append(min(int(oob[int(nb_nbl[i])]["l2_len"]), length))
        # the plans against their frames before any write (as tx_emit checks its plans)
        if not rx_inner_fits(frames[i], dec_all[start:start + length], l2s[i], plan[i], plan,
                             n):
            raise ValueError(f"rx_deliver: plan {i} does not fit its frame")
    parts, deliveries, sa_index, out_off, out_len = [], [], [], [], []
    pos = 0
    for i in range(n):
        start, length = int(nb_off[i]), int(nb_len[i])
        inner = int(plan[i]["inner"])
        code, data, sa = rx_deliver_one(frames[i], dec_all[start:start + length], l2s[i],
                                        plan[i], slot_sa, slot_handle, rows,
                                        plan[inner] if inner > 0 else None)
        parts.append(data)
        deliveries.append(int(code))
        sa_index.append(sa)
        out_off.append(pos)
        out_len.append(len(data))
        pos += len(data)
    delivered = np.frombuffer(b"".join(parts), np.uint8).copy()
    return (delivered, np.asarray(deliveries, np.uint8), np.asarray(sa_index, np.int32),
            np.asarray(out_off, np.int64), np.asarray(out_len, np.int64))
