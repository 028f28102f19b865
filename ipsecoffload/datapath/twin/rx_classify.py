"""Twin of the compiled rx_classify (datapath/rx_classify.pxi): the NIC's receive procedure
up to the crypto, per frame — offload state, IP and IPv6 extension headers, UDP-ESP,
fragments, the inbound SA lookup, the capability gate, lengths, ESN inference and one open
op per ESP layer (docs/architecture.md).

Same names and arguments as the compiled functions, with Python objects for the C
pointers: a frame is ``bytes`` (its length is ``len``), a plan / op / state is one numpy
record (RX_PLAN_DTYPE, CRYPTO_OP_DTYPE, RX_STATE_DTYPE) written in place, and a table is a
numpy array of its dtype.
"""
from __future__ import annotations

from bisect import bisect_left

from ...ndis import CryptoStatus
from ..layout import (NAT_T_MAX_PORTS, NAT_T_PORT, PROTO_AH, PROTO_ESP, Config, OpKind, OpStatus,
                      RxConfig, RxReason, Suite)

ESN_WINDOW = 1 << 31  # the NIC infers the high word with a window of 2^31
M32 = 0xFFFFFFFF


def _ld16(f: bytes, off: int) -> int:
    return (f[off] << 8) | f[off + 1]


def _ld32(f: bytes, off: int) -> int:
    return (f[off] << 24) | (f[off + 1] << 16) | (f[off + 2] << 8) | f[off + 3]


def _zero(record) -> None:
    """memset of one struct: every field of the numpy record to 0."""
    for name in record.dtype.names:
        record[name] = 0


def rx_no_info(p, reason: int) -> None:
    """No IPsec indication (CryptoDone 0)."""
    p["reason"] = reason
    p["crypto_done"] = 0
    p["crypto_status"] = CryptoStatus.SUCCESS


def rx_fail(p, reason: int, status: int) -> None:
    """CryptoDone 1 with a failing CryptoStatus."""
    p["reason"] = reason
    p["crypto_done"] = 1
    p["crypto_status"] = status


def esn_infer_hi(st, seq_hi: int, low: int) -> int:
    """The high word of a received ESN sequence number (RFC 4303 Appendix A2.2) with a
    window W of 2^31 around the highest authenticated number T (st.top); before any number
    was authenticated, the SA's own high word. Arithmetic on 32-bit words, as in the RFC."""
    if not st["seen"]:
        return int(seq_hi)
    top = int(st["top"])
    tl, th = top & M32, top >> 32
    w = ESN_WINDOW
    if tl >= w - 1:  # Case A: window within one subspace
        if low >= tl - w + 1:
            return th
        return (th + 1) & M32
    # Case B: the window spans two subspaces (Tl - W + 1 wraps modulo 2^32); a high word
    # below 0 does not exist, so th stays 0 there
    if low >= (tl - w + 1) & M32 and th > 0:
        return th - 1
    return th


def rx_provisional(states, prov, touched, row: int):
    """The batch's running copy of key row ``row``'s state (a record of ``prov``): taken
    from the committed state the first time the batch touches the row."""
    if not touched[row]:
        prov[row] = states[row]
        touched[row] = 1
    return prov[row]


def rx_lookup(keys, spi: int, ipv6: bool, src: bytes, dst: bytes, udp: bool) -> int:
    """Index of the first inbound transform (keys sorted by SPI) with this SPI whose
    endpoints (zero = wildcard), IP version and UDP encapsulation match; -1 if none."""
    alen = 16 if ipv6 else 4
    spis = keys["spi"].tolist()
    k = bisect_left(spis, spi)  # the same search as the compiled one, even on unsorted keys
    while k < len(keys) and spis[k] == spi:
        key = keys[k]
        if (int(key["ipv6"]) == int(ipv6) and bool(key["udp_encap"]) == bool(udp)
                and (not key["has_dst"] or bytes(key["dst"][:alen]) == dst[:alen])
                and (not key["has_src"] or bytes(key["src"][:alen]) == src[:alen])):
            return k
        k += 1
    return -1


RX_NEEDS_OPEN = 1  # rx_classify_one wrote an ESP open op
RX_NEEDS_VERIFY = 2  # ... and / or an AH verify op


def rx_seq_hi(xf, states, prov, touched, low: int) -> int:
    """The ESN high word to check a received number with (0 without ESN)."""
    if not xf["esn"]:
        return 0
    return esn_infer_hi(rx_provisional(states, prov, touched, int(xf["key_row"])),
                        int(xf["seq_hi"]), low)


def rx_op_init(op, xf, kind: int, l2: int, hi: int) -> None:
    _zero(op)
    op["ip_off"] = l2
    op["key_row"] = xf["key_row"]
    op["seq_hi"] = hi
    op["kind"] = kind
    op["suite"] = xf["suite"]
    op["integ"] = xf["integ"]
    op["iv_len"] = xf["iv_len"]
    op["icv_len"] = xf["icv_len"]
    op["esn"] = xf["esn"]
    op["status"] = OpStatus.PENDING


def rx_ports(nat_t_ports) -> tuple[int, ...]:
    """The NAT-T ports of rx_run, checked as the compiled rx_ports checks them."""
    bad = False
    try:
        values = list(nat_t_ports)
    except TypeError:
        values, bad = [], True
    if len(values) > NAT_T_MAX_PORTS or any(
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 0xFFFF
            for v in values):
        bad = True
    if bad:
        raise ValueError(f"nat_t_ports must be at most {NAT_T_MAX_PORTS} UDP ports from 1 to "
                         f"65535, got {nat_t_ports!r}")
    return tuple(values)


def rx_classify_one(f: bytes, l2: int, cfg: int, recs, keys, states, prov, touched, p,
                    op, ah_op, ports=(NAT_T_PORT,)) -> int:
    """Fill the plan ``p`` of one frame; returns RX_NEEDS_OPEN when it needs an ESP open op
    (written to ``op``), plus RX_NEEDS_VERIFY when it needs an AH verify op (written to
    ``ah_op``; rx_run then makes the ICV-input copy), else 0. UDP is UDP-ESP when its source
    or destination port is one of ``ports`` (docs/spec-gaps.md G31)."""
    flen = len(f)
    _zero(p)
    p["slot"] = -1
    p["op"] = -1
    p["ah_op"] = -1
    p["ip_off"] = l2
    options = udp = False
    if l2 < 0 or flen < l2 + 20:
        rx_no_info(p, RxReason.NOT_IP)
        return 0
    version = f[l2] >> 4
    if version == 4:
        ipv6 = False
        ihl = (f[l2] & 0xF) * 4
        ip_end = l2 + _ld16(f, l2 + 2)
        if ihl < 20 or l2 + ihl > flen or ip_end < l2 + ihl:
            rx_no_info(p, RxReason.NOT_IP)
            return 0
        esp_bit, ah_bit = Config.ESP_IPV4, Config.AH_IPV4
        if not cfg & (esp_bit | ah_bit):
            rx_no_info(p, RxReason.OFFLOAD_OFF)
            return 0
        if _ld16(f, l2 + 6) & 0x3FFF:  # MF or a fragment offset (RFC 791)
            rx_no_info(p, RxReason.FRAGMENT)
            return 0
        proto = f[l2 + 9]
        p["nh_off"] = l2 + 9
        off = l2 + ihl
        options = ihl > 20
        src, dst = f[l2 + 12:l2 + 16], f[l2 + 16:l2 + 20]
    elif version == 6:
        ipv6 = True
        if flen < l2 + 40:
            rx_no_info(p, RxReason.NOT_IP)
            return 0
        ip_end = l2 + 40 + _ld16(f, l2 + 4)
        esp_bit, ah_bit = Config.ESP_IPV6, Config.AH_IPV6
        if not cfg & (esp_bit | ah_bit):
            rx_no_info(p, RxReason.OFFLOAD_OFF)
            return 0
        proto = f[l2 + 6]
        p["nh_off"] = l2 + 6
        off = l2 + 40
        src, dst = f[l2 + 8:l2 + 24], f[l2 + 24:l2 + 40]
        end = min(ip_end, flen)
        # hop-by-hop, routing and destination options before AH/ESP (RFC 8200 §4.1)
        while proto in (0, 43, 60):
            if off + 8 > end:
                rx_no_info(p, RxReason.NOT_IPSEC)
                return 0
            ext_len = (f[off + 1] + 1) * 8
            p["nh_off"] = off
            proto = f[off]
            off += ext_len
            options = True
        if proto == 44:
            rx_no_info(p, RxReason.FRAGMENT)
            return 0
    else:
        rx_no_info(p, RxReason.NOT_IP)
        return 0
    p["ipv6"] = ipv6
    p["ip_end"] = ip_end
    end = min(ip_end, flen)
    if proto == 17:
        if off + 8 > end:
            rx_no_info(p, RxReason.NOT_IPSEC)
            return 0
        sport, dport = _ld16(f, off), _ld16(f, off + 2)
        if sport not in ports and dport not in ports:
            rx_no_info(p, RxReason.NOT_IPSEC)
            return 0
        # RFC 3948 §2.2-2.3: a keepalive, the non-ESP marker of IKE, or ESP
        rest = end - (off + 8)
        if rest == 1 and f[off + 8] == 0xFF:
            rx_no_info(p, RxReason.KEEPALIVE)
            return 0
        if rest >= 4 and _ld32(f, off + 8) == 0:
            rx_no_info(p, RxReason.IKE)
            return 0
        if rest < 4:
            rx_no_info(p, RxReason.NOT_IPSEC)
            return 0
        p["udp_off"] = off
        udp = True
        off += 8
        proto = PROTO_ESP
    elif proto not in (PROTO_ESP, PROTO_AH):
        rx_no_info(p, RxReason.NOT_IPSEC)
        return 0
    if not cfg & (ah_bit if proto == PROTO_AH else esp_bit):
        rx_no_info(p, RxReason.OFFLOAD_OFF)
        return 0
    # the SPI must be readable to find the SA; a frame cut after it is the SA's syntax error
    if off + (8 if proto == PROTO_AH else 4) > flen:
        rx_no_info(p, RxReason.SHORT)
        return 0
    spi = _ld32(f, off + (4 if proto == PROTO_AH else 0))  # AH: SPI after 4 bytes (RFC 4302)
    k = rx_lookup(keys, spi, ipv6, src, dst, udp)
    if k < 0:
        rx_no_info(p, RxReason.NO_SA)
        return 0
    key = keys[k]
    slot, layer = int(key["slot"]), int(key["layer"])
    if slot < 0 or slot >= len(recs):
        rx_no_info(p, RxReason.NO_SA)
        return 0
    rec = recs[slot]
    # the capability gate: the NIC leaves these to the stack
    if options and not cfg & (RxConfig.IPV6_EXT_HEADERS if ipv6 else RxConfig.IPV4_OPTIONS):
        rx_no_info(p, RxReason.GATED)
        return 0
    p["slot"] = slot
    p["layer"] = layer
    p["handle"] = rec["handle"]
    xf = rec["xf"][layer]
    if int(key["proto"]) != proto or (proto == PROTO_ESP and rec["n_xf"] > 1):
        # an SPI found on the other protocol, or a bundle's ESP without its AH
        rx_fail(p, RxReason.BAD_PROTOCOL, CryptoStatus.INVALID_PROTOCOL)
        return 0
    if rec["n_xf"] > 1 and not cfg & esp_bit:  # an AH+ESP bundle needs both offloads on
        rx_no_info(p, RxReason.OFFLOAD_OFF)
        p["slot"] = -1
        p["handle"] = 0
        return 0
    p["tunnel"] = states[int(xf["key_row"])]["tunnel"]
    esp_off = off
    needs = 0
    if proto == PROTO_AH:
        # RFC 4302 §2: Next Header, Payload Len ((AH length in 32-bit words) - 2), SPI, SN,
        # [IV], ICV, padding to 4 (IPv4) or 8 (IPv6) bytes
        ah_len = (f[off + 1] + 2) * 4
        unpadded = 12 + int(xf["iv_len"]) + int(xf["icv_len"])
        align = 8 if ipv6 else 4
        p["ah_off"] = off
        p["ah_len"] = ah_len
        p["ah_layer"] = layer
        p["ah_next_header"] = f[off]
        if f[off] in (4, 41):
            p["tunnel"] = 1  # G12: AH shows its layer without decryption
        if ip_end > flen or ah_len != -(-unpadded // align) * align or off + ah_len > ip_end:
            rx_fail(p, RxReason.BAD_SYNTAX, CryptoStatus.INVALID_PACKET_SYNTAX)
            return 0
        low = _ld32(f, off + 8)
        hi = rx_seq_hi(xf, states, prov, touched, low)
        p["ah_seq64"] = (hi << 32) | low
        p["seq64"] = (hi << 32) | low
        rx_op_init(ah_op, xf, OpKind.AH_VERIFY, l2, hi)
        ah_op["text_off"] = off + ah_len
        ah_op["text_len"] = ip_end - (off + ah_len)
        ah_op["icv_off"] = off + 12 + int(xf["iv_len"])
        if int(xf["suite"]) == Suite.AH_GMAC:
            ah_op["nonce"] = list(bytes(xf["salt"]) + f[off + 12:off + 20])
        p["crypto_done"] = 1
        needs = RX_NEEDS_VERIFY
        if rec["n_xf"] == 1:
            p["reason"] = RxReason.OK
            return needs
        # the bundle's ESP follows its AH
        esp_off = off + ah_len
        xf = rec["xf"][0]
        if f[off] != PROTO_ESP:
            rx_fail(p, RxReason.BAD_PROTOCOL, CryptoStatus.INVALID_PROTOCOL)
            return 0
        if esp_off + 8 > ip_end:
            rx_fail(p, RxReason.BAD_SYNTAX, CryptoStatus.INVALID_PACKET_SYNTAX)
            return 0
        if _ld32(f, esp_off) != int(xf["spi"]):
            rx_fail(p, RxReason.BAD_PROTOCOL, CryptoStatus.INVALID_PROTOCOL)
            return 0
        p["layer"] = 0
        p["tunnel"] = states[int(xf["key_row"])]["tunnel"]
    iv_len, icv_len, suite = int(xf["iv_len"]), int(xf["icv_len"]), int(xf["suite"])
    p["esp_off"] = esp_off
    text_off = esp_off + 8 + iv_len
    icv_off = ip_end - icv_len
    text_len = icv_off - text_off
    p["text_off"], p["icv_off"], p["text_len"] = text_off, icv_off, text_len
    if ip_end > flen or text_len < 2 or (suite in (Suite.AES_CBC_HMAC, Suite.AES_CBC)
                                         and text_len % 16):
        rx_fail(p, RxReason.BAD_SYNTAX, CryptoStatus.INVALID_PACKET_SYNTAX)
        return 0
    low = _ld32(f, esp_off + 4)
    hi = rx_seq_hi(xf, states, prov, touched, low)
    p["seq64"] = (hi << 32) | low
    p["crypto_done"] = 1
    rx_op_init(op, xf, OpKind.ESP_OPEN, l2, hi)
    op["auth_off"] = esp_off
    op["text_off"] = text_off
    op["text_len"] = text_len
    op["icv_off"] = icv_off
    if suite in (Suite.AES_GCM, Suite.AES_GMAC):
        # nonce = salt || IV (RFC 4106 §4, RFC 4543 §3.1)
        op["nonce"] = list(bytes(xf["salt"]) + f[esp_off + 8:esp_off + 16])
    return needs | RX_NEEDS_OPEN
