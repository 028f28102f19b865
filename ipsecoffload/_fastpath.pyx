# cython: freethreading_compatible = True
"""Compiled kernels of the send path (design §4): classify, emit, finalize.

Each kernel takes the batch arrays, checks shapes and sizes at the top, then runs a nogil
loop over raw memory with no Python object inside. Packet faults become statuses in the
plan, never exceptions. In the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1) every
read and write of an arena is range-checked and raises IndexError instead of touching
memory outside it. ipsecoffload/_pykernels.py is the pure-Python twin of every kernel.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

STRUCT_SIZES = {"SaRecord": sizeof(SaRecord), "NbPlan": sizeof(NbPlan)}


def struct_offsets():
    """Field offsets of the C structs, for the layout test against layout.py's dtypes."""
    cdef SaRecord r
    cdef NbPlan p
    cdef char* rb = <char*>&r
    cdef char* pb = <char*>&p
    return {
        "SaRecord": {"handle": <char*>&r.handle - rb, "spi": <char*>&r.spi - rb,
                     "seq_hi": <char*>&r.seq_hi - rb, "in_use": <char*>&r.in_use - rb,
                     "inbound": <char*>&r.inbound - rb, "ipv6": <char*>&r.ipv6 - rb,
                     "esn": <char*>&r.esn - rb, "suite": <char*>&r.suite - rb,
                     "integ": <char*>&r.integ - rb, "iv_len": <char*>&r.iv_len - rb,
                     "icv_len": <char*>&r.icv_len - rb, "align": <char*>&r.align - rb,
                     "udp_encap": <char*>&r.udp_encap - rb, "reserved": <char*>&r.reserved - rb},
        "NbPlan": {"out_len": <char*>&p.out_len - pb, "body_off": <char*>&p.body_off - pb,
                   "body_len": <char*>&p.body_len - pb, "sn64": <char*>&p.sn64 - pb,
                   "slot": <char*>&p.slot - pb, "nsegs": <char*>&p.nsegs - pb,
                   "ip_off": <char*>&p.ip_off - pb, "ip_hdr_len": <char*>&p.ip_hdr_len - pb,
                   "esp_off": <char*>&p.esp_off - pb, "hdr_len": <char*>&p.hdr_len - pb,
                   "tcp_off": <char*>&p.tcp_off - pb, "mss": <char*>&p.mss - pb,
                   "status": <char*>&p.status - pb, "ipv6": <char*>&p.ipv6 - pb,
                   "lso": <char*>&p.lso - pb, "next_header": <char*>&p.next_header - pb,
                   "reason": <char*>&p.reason - pb},
    }
BOUNDS_CHECKED = bool(IPO_BOUNDS_CHECK)

cdef extern from "ipo_config.h":
    const uint64_t SLOT_MASK "IPO_SLOT_MASK"
    const uint32_t STATUS_FAILURE "IPO_STATUS_FAILURE"
    const uint32_t STATUS_INVALID_PACKET "IPO_STATUS_INVALID_PACKET"
    const uint64_t UINT32_MAX "IPO_UINT32_MAX"
    const uint64_t UINT64_MAX "IPO_UINT64_MAX"


# -- byte-order helpers and checksums ------------------------------------------------

cdef inline uint16_t ld16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])

cdef inline uint32_t ld32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void st16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF

cdef inline void st32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF

cdef inline void st64(uint8_t* p, uint64_t v) noexcept nogil:
    st32(p, <uint32_t>(v >> 32))
    st32(p + 4, <uint32_t>v)

cdef inline uint64_t csum_add(uint64_t s, const uint8_t* p, int64_t n) noexcept nogil:
    """One's-complement sum of big-endian 16-bit words; an odd tail byte is zero-padded."""
    cdef int64_t i = 0
    while i + 1 < n:
        s += (<uint64_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint64_t>p[i] << 8
    return s

cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s

cdef inline int64_t esp_pad(int64_t unpadded, int64_t align) noexcept nogil:
    """Pad bytes so that payload + pad + 2 is a multiple of align (spec §8.1)."""
    return (align - unpadded % align) % align


cdef inline int check(int64_t off, int64_t n, int64_t size) except -1 nogil:
    """Bounds-checked build only: [off, off+n) must lie inside a buffer of `size` bytes."""
    if IPO_BOUNDS_CHECK:
        if off < 0 or n < 0 or off + n > size:
            with gil:
                raise IndexError(f"kernel access [{off}, {off + n}) outside a buffer of {size} bytes")
    return 0


# -- classify ------------------------------------------------------------------------

cdef inline void fail(NbPlan* p, uint32_t status, uint8_t reason) noexcept nogil:
    p.status = status
    p.reason = reason
    p.nsegs = 0
    p.out_len = 0


cdef inline void passthrough(NbPlan* p, int64_t flen, uint8_t reason) noexcept nogil:
    p.slot = -1
    p.reason = reason
    p.nsegs = 1
    p.out_len = flen


cdef int64_t lso_segment_len(int64_t hdr_len, int64_t thl, int64_t chunk, int64_t align,
                             int64_t icv) noexcept nogil:
    return hdr_len + chunk + esp_pad(thl + chunk + 2, align) + 2 + icv


cdef bint lso_enabled(int lso_kind, bint ipv6, int cfg) noexcept nogil:
    if lso_kind == 1:
        return (cfg & CFG_LSO_V1) != 0
    return (cfg & (CFG_LSO_V2_IPV6 if ipv6 else CFG_LSO_V2_IPV4)) != 0


cdef int plan_without_ipsec(const uint8_t* frame, int64_t flen, int32_t nb_count, uint64_t lso,
                            int32_t l2, int cfg, NbPlan* p, uint8_t reason) except -1 nogil:
    """No IPsec work: the frame leaves unchanged, but an LSO request is still honoured
    (spec §6.1 step 1): plain TCP segmentation, no ESP."""
    cdef int64_t thl, L, n, ihl
    cdef int version
    if lso == 0:
        passthrough(p, flen, reason)
        return 0
    p.lso = 2 if (lso >> 30) & 1 else 1
    if flen < l2 + 1:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    version = frame[l2] >> 4
    if version != 4 and version != 6:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    p.ipv6 = version == 6
    if not lso_enabled(p.lso, p.ipv6, cfg):
        fail(p, STATUS_FAILURE, REASON_LSO_DISABLED)
        return 0
    ihl = 40 if p.ipv6 else (frame[l2] & 0xF) * 4
    p.ip_hdr_len = <int32_t>ihl
    p.mss = <int32_t>(lso & 0xFFFFF)
    p.tcp_off = <int32_t>((lso >> 20) & 0x3FF)
    if (nb_count != 1 or p.mss == 0 or ihl < 20 or p.tcp_off < l2 + ihl
            or p.tcp_off + 20 > flen or (p.lso == 2 and <int>((lso >> 31) & 1) != p.ipv6)):
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    thl = (frame[p.tcp_off + 12] >> 4) * 4
    if thl < 20 or p.tcp_off + thl > flen:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    L = flen - p.tcp_off - thl
    n = 1 if L == 0 else (L + p.mss - 1) // p.mss
    p.hdr_len = <int32_t>(p.tcp_off + thl)
    if p.hdr_len + (L if L < p.mss else p.mss) - l2 - (40 if p.ipv6 else 0) > 0xFFFF:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    p.reason = reason
    p.body_off = p.hdr_len
    p.body_len = L
    p.nsegs = <int32_t>n
    p.out_len = n * p.hdr_len + L
    return 0


cdef int classify_one(const uint8_t* frame, int64_t flen, int32_t nb_count, uint64_t handle,
                      uint64_t tunnel_handle, uint8_t nh, uint8_t padl, uint8_t ah4, uint8_t esp4,
                      uint64_t lso, int32_t l2, const SaRecord* recs, int64_t nrec, int cfg,
                      int icv_space, NbPlan* p) except -1 nogil:
    """Spec §6.1 steps 1-3 for one NET_BUFFER: fills *p."""
    cdef int64_t ip_end, ihl, tot, esp, text_off, tend, text_len, pay_end, thl, L, n
    cdef int64_t full, rem, icv, align
    cdef uint64_t slot, sn64
    cdef bint ok_res, ok_app
    cdef const SaRecord* rec
    cdef int version, lso_kind

    memset(p, 0, sizeof(NbPlan))
    p.slot = -1
    p.ip_off = l2
    p.next_header = nh
    if handle == 0 and tunnel_handle == 0:
        return plan_without_ipsec(frame, flen, nb_count, lso, l2, cfg, p, REASON_PASS_NO_HANDLE)
    if not (cfg & (CFG_ESP_IPV4 | CFG_ESP_IPV6)):  # spec §6.1 step 1 precedes step 2 (G21)
        return plan_without_ipsec(frame, flen, nb_count, lso, l2, cfg, p, REASON_PASS_DISABLED)
    if tunnel_handle != 0:  # spec §9 G13; transport-over-tunnel is not offered (caps)
        fail(p, STATUS_FAILURE, REASON_TUNNEL_HANDLE)
        return 0
    if l2 < 0 or flen < l2 + 1:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    check(l2, 1, flen)
    version = frame[l2] >> 4
    if version != 4 and version != 6:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    p.ipv6 = version == 6
    if not (cfg & (CFG_ESP_IPV6 if p.ipv6 else CFG_ESP_IPV4)):  # spec §9 G21
        return plan_without_ipsec(frame, flen, nb_count, lso, l2, cfg, p, REASON_PASS_DISABLED)
    slot = handle & SLOT_MASK
    if slot >= <uint64_t>nrec or not recs[slot].in_use or recs[slot].handle != handle:
        fail(p, STATUS_FAILURE, REASON_UNKNOWN_HANDLE)
        return 0
    rec = &recs[slot]
    if rec.inbound:
        fail(p, STATUS_FAILURE, REASON_INBOUND_HANDLE)
        return 0
    if rec.ipv6 != p.ipv6:
        fail(p, STATUS_FAILURE, REASON_IP_VERSION_MISMATCH)
        return 0
    lso_kind = 0
    if lso != 0:
        lso_kind = 2 if (lso >> 30) & 1 else 1
    p.lso = lso_kind

    # IP header; with LSO the NET_BUFFER length is the datagram's end (spec §6.8)
    if p.ipv6:
        if flen < l2 + 40:
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
            return 0
        p.ip_hdr_len = 40
        check(l2 + 4, 2, flen)
        ip_end = flen if lso_kind else l2 + 40 + ld16(frame + l2 + 4)
    else:
        if flen < l2 + 20:
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
            return 0
        ihl = (frame[l2] & 0xF) * 4
        check(l2 + 2, 2, flen)
        tot = ld16(frame + l2 + 2)
        if ihl < 20 or l2 + ihl > flen or (not lso_kind and tot < ihl):
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
            return 0
        p.ip_hdr_len = <int32_t>ihl
        ip_end = flen if lso_kind else l2 + tot
    if ip_end > flen:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0

    if ah4 != 0:
        fail(p, STATUS_FAILURE, REASON_AH_NOT_SUPPORTED)
        return 0
    esp = l2 + 4 * <int64_t>esp4
    text_off = esp + 8 + rec.iv_len
    if esp4 == 0 or esp < l2 + p.ip_hdr_len + (8 if rec.udp_encap else 0) or text_off > ip_end:
        fail(p, STATUS_INVALID_PACKET, REASON_BAD_ESP_OFFSET)
        return 0
    p.esp_off = <int32_t>esp
    check(esp + 4, 4, flen)
    sn64 = ld32(frame + esp + 4)
    if rec.esn:
        sn64 |= <uint64_t>rec.seq_hi << 32
    p.sn64 = sn64
    icv = rec.icv_len
    align = rec.align

    if not lso_kind:
        # The stack framed the trailer; find it from the IP length (spec §6.3 step 2, G4)
        tend = ip_end - icv
        ok_res = False
        ok_app = False
        if icv_space != ICV_SPACE_APPEND and tend >= text_off + 2:
            check(tend - 2, 2, flen)
            ok_res = frame[tend - 1] == nh and frame[tend - 2] == padl
        if icv_space != ICV_SPACE_RESERVED and not ok_res and ip_end >= text_off + 2:
            check(ip_end - 2, 2, flen)
            ok_app = frame[ip_end - 1] == nh and frame[ip_end - 2] == padl
            if ok_app:
                tend = ip_end
        if not ok_res and not ok_app:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_TRAILER)
            return 0
        text_len = tend - text_off
        if padl + 2 > text_len:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_TRAILER)
            return 0
        if text_len % align != 0:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_ALIGNMENT)
            return 0
        if tend + icv - l2 - (40 if p.ipv6 else 0) > 0xFFFF:  # an appended ICV overflows
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)  # the IP length field
            return 0
        if sn64 == 0:  # the counter wrapped: SN 0 is never sent (spec §8.1)
            fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
            return 0
        p.slot = <int32_t>slot
        p.hdr_len = <int32_t>text_off
        p.body_off = text_off
        p.body_len = text_len
        p.nsegs = 1
        p.out_len = tend + icv
        return 0

    # LSO: the checks of spec §6.1 step 3, then the segment plan of §6.8
    if not (cfg & CFG_LSO_WITH_IPSEC) or (lso_kind == 1 and not (cfg & CFG_LSO_V1)) or (
            lso_kind == 2 and not (cfg & (CFG_LSO_V2_IPV6 if p.ipv6 else CFG_LSO_V2_IPV4))):
        fail(p, STATUS_FAILURE, REASON_LSO_DISABLED)
        return 0
    p.mss = <int32_t>(lso & 0xFFFFF)
    p.tcp_off = <int32_t>((lso >> 20) & 0x3FF)
    pay_end = flen - padl  # spec §9 G7: the discardable pad is dropped
    if (nb_count != 1 or p.mss == 0 or nh != 6 or p.tcp_off != text_off
            or (lso_kind == 2 and <int>((lso >> 31) & 1) != p.ipv6)
            or p.tcp_off + 20 > pay_end):
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    check(p.tcp_off + 12, 1, flen)
    thl = (frame[p.tcp_off + 12] >> 4) * 4
    if thl < 20 or p.tcp_off + thl > pay_end:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    L = pay_end - p.tcp_off - thl
    n = 1 if L == 0 else (L + p.mss - 1) // p.mss
    if lso_segment_len(p.tcp_off + thl, thl, L if L < p.mss else p.mss, align, icv) - l2 - (
            40 if p.ipv6 else 0) > 0xFFFF:  # a full segment would overflow the IP length field
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    # Segment i carries SN0 + i (spec §9 G6): all of them must exist
    if sn64 == 0 or (not rec.esn and sn64 + <uint64_t>(n - 1) > UINT32_MAX) or (
            rec.esn and sn64 > UINT64_MAX - <uint64_t>(n - 1)):
        fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
        return 0
    p.slot = <int32_t>slot
    p.hdr_len = <int32_t>(p.tcp_off + thl)
    p.body_off = p.hdr_len
    p.body_len = L
    p.nsegs = <int32_t>n
    full = L // p.mss
    rem = L - full * p.mss
    p.out_len = full * lso_segment_len(p.hdr_len, thl, p.mss, align, icv)
    if rem or L == 0:
        p.out_len += lso_segment_len(p.hdr_len, thl, rem, align, icv)
    return 0


def classify(const uint8_t[::1] arena, const int64_t[::1] nb_off, const int64_t[::1] nb_len,
             const int32_t[::1] nb_nbl, const int32_t[::1] nb_count,
             const uint64_t[::1] offload_handle, const uint64_t[::1] tunnel_handle,
             const uint8_t[::1] next_header, const uint8_t[::1] pad_length,
             const uint8_t[::1] ah_off4, const uint8_t[::1] esp_off4,
             const uint64_t[::1] lso_info, const uint16_t[::1] l2_len,
             const uint8_t[::1] records, int config, int icv_space,
             uint8_t[::1] plans, uint32_t[::1] nbl_status):
    """Plan every NET_BUFFER (spec §6.1); an NBL with a failing buffer sends none of them."""
    cdef Py_ssize_t n_nb = nb_off.shape[0], n_nbl = nbl_status.shape[0], i
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    cdef NbPlan* plan
    cdef int32_t k
    if nb_len.shape[0] != n_nb or nb_nbl.shape[0] != n_nb:
        raise ValueError("nb_off, nb_len and nb_nbl differ in length")
    if any(n != n_nbl for n in (nb_count.shape[0], offload_handle.shape[0],
                                tunnel_handle.shape[0], next_header.shape[0],
                                pad_length.shape[0], ah_off4.shape[0], esp_off4.shape[0],
                                lso_info.shape[0], l2_len.shape[0])):
        raise ValueError("per-NBL arrays must have one entry per NBL")
    if plans.shape[0] != n_nb * sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    for i in range(n_nb):
        if nb_nbl[i] < 0 or nb_nbl[i] >= n_nbl:
            raise ValueError("nb_nbl names an NBL outside the batch")
        if nb_off[i] < 0 or nb_len[i] < 0 or nb_off[i] > arena.shape[0] - nb_len[i]:
            raise ValueError("a NET_BUFFER lies outside the arena")
    cdef const uint8_t* base = &arena[0] if arena.shape[0] else NULL
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef NbPlan* plan0 = <NbPlan*>&plans[0] if n_nb else NULL
    with nogil:
        for i in range(n_nbl):
            nbl_status[i] = 0
        for i in range(n_nb):
            k = nb_nbl[i]
            classify_one(base + nb_off[i] if base != NULL else NULL, nb_len[i], nb_count[k],
                         offload_handle[k], tunnel_handle[k], next_header[k], pad_length[k],
                         ah_off4[k], esp_off4[k], lso_info[k], l2_len[k], recs, nrec, config,
                         icv_space, plan0 + i)
            if plan0[i].status != 0 and nbl_status[k] == 0:
                nbl_status[k] = plan0[i].status
        for i in range(n_nb):
            plan = plan0 + i
            if nbl_status[nb_nbl[i]] != 0 and plan.status == 0:
                plan.status = nbl_status[nb_nbl[i]]
                plan.reason = REASON_NBL_FAILED
                plan.nsegs = 0
                plan.out_len = 0


# -- emit ----------------------------------------------------------------------------

cdef int64_t ipv6_final_dst(const uint8_t* ip, int64_t ext_end) noexcept nogil:
    """Offset from the IPv6 header of the destination a TCP pseudo-header names (spec §8.10,
    RFC 8200 §8.1): with a routing header that has segments left, the final destination (last
    address of type 0/2, Segment List[0] of an SRH, type 4); else the header's destination.
    Walks hop-by-hop, routing and destination-options headers ending by ext_end."""
    cdef int64_t off = 40, hlen, dst = 24
    cdef uint8_t nh = ip[6]
    while off + 8 <= ext_end and (nh == 0 or nh == 43 or nh == 60):
        hlen = (<int64_t>ip[off + 1] + 1) * 8
        if off + hlen > ext_end:
            break
        if nh == 43 and ip[off + 3] != 0 and hlen >= 24:
            if ip[off + 2] == 0 or ip[off + 2] == 2:
                dst = off + 8 + ((hlen - 8) // 16 - 1) * 16
            elif ip[off + 2] == 4:
                dst = off + 8
        nh = ip[off]
        off += hlen
    return dst


cdef int patch_segment(uint8_t* o, int64_t seg_len, const NbPlan* p, const SaRecord* rec,
                       int64_t i, int64_t chunk, int64_t osize) except -1 nogil:
    """Header patches of one output segment (spec §6.3, §6.7, §6.8); o is its first byte."""
    cdef uint8_t* ip = o + p.ip_off
    cdef uint8_t* tcp
    cdef int64_t thl, tcp_len, ext_end
    cdef uint64_t s
    cdef uint32_t ident
    cdef uint8_t flags
    if p.ipv6:
        check(p.ip_off + 4, 2, osize)
        st16(ip + 4, <uint32_t>(seg_len - p.ip_off - 40))
    else:
        check(p.ip_off, p.ip_hdr_len, osize)
        st16(ip + 2, <uint32_t>(seg_len - p.ip_off))
        if p.lso:  # spec §6.8 / G16: LSOv2 IDs stay in 15 bits
            ident = ld16(ip + 4) + <uint32_t>i
            st16(ip + 4, ident & (0x7FFF if p.lso == 2 else 0xFFFF))
        st16(ip + 10, 0)
        st16(ip + 10, ~csum_fold(csum_add(0, ip, p.ip_hdr_len)) & 0xFFFF)
    if rec != NULL and rec.udp_encap:  # RFC 3948: IPv4 sends checksum 0; IPv6 is finished after sealing
        check(p.esp_off - 8, 8, osize)
        st16(o + p.esp_off - 4, <uint32_t>(seg_len - (p.esp_off - 8)))
        st16(o + p.esp_off - 2, 0)
    if p.lso:
        tcp = o + p.tcp_off
        thl = <int64_t>p.hdr_len - p.tcp_off
        tcp_len = thl + chunk
        check(p.tcp_off, tcp_len, osize)
        st32(tcp + 4, ld32(tcp + 4) + <uint32_t>(i * p.mss))
        flags = tcp[13]
        if i != p.nsegs - 1:
            flags &= ~0x09  # FIN, PSH only on the last segment
        if i != 0:
            flags &= ~0x80  # CWR only on the first (G17)
        tcp[13] = flags
        # spec §8.10 / G23: ignore the seeded partial sum, compute from scratch
        st16(tcp + 16, 0)
        if p.ipv6:
            ext_end = (<int64_t>p.esp_off if p.esp_off else p.tcp_off) - p.ip_off  # ESP, else TCP
            check(p.ip_off, ext_end, osize)
            s = (csum_add(0, ip + 8, 16) + csum_add(0, ip + ipv6_final_dst(ip, ext_end), 16)
                 + (<uint64_t>tcp_len >> 16) + (tcp_len & 0xFFFF) + 6)
        else:
            s = csum_add(0, ip + 12, 8) + 6 + <uint64_t>tcp_len
        st16(tcp + 16, ~csum_fold(csum_add(s, tcp, tcp_len)) & 0xFFFF)
    return 0


cdef int write_esp_fields(uint8_t* o, const NbPlan* p, const SaRecord* rec, uint64_t sn,
                          bint fresh_iv, const uint8_t* rand, int64_t rand_size, int64_t job,
                          int64_t osize) except -1 nogil:
    """ESP SN (low word) and the IV (spec §8.4-8.6, G5)."""
    check(p.esp_off + 4, 4 + rec.iv_len, osize)
    st32(o + p.esp_off + 4, <uint32_t>sn)
    if not fresh_iv or rec.iv_len == 0:
        return 0
    if rec.suite == SUITE_AES_GCM or rec.suite == SUITE_AES_GMAC:
        st64(o + p.esp_off + 8, sn)  # unique per SA: the 64-bit SN
    else:
        check(job * rec.iv_len, rec.iv_len, rand_size)
        memcpy(o + p.esp_off + 8, rand + job * rec.iv_len, rec.iv_len)
    return 0


cdef int emit_nb(const uint8_t* frame, int64_t flen, const NbPlan* p, const SaRecord* rec,
                 int32_t nbl, int iv_source, const uint8_t* rand, int64_t rand_size,
                 uint8_t* out, int64_t osize, int64_t out_pos, int64_t frame_idx, int64_t job,
                 int64_t* out_off, int64_t* out_len, int32_t* out_nbl, int32_t* job_slot,
                 int64_t* job_esp, int64_t* job_text, int64_t* job_text_len,
                 int64_t* job_icv, uint32_t* job_seq_hi, uint8_t* job_post,
                 int64_t* job_udp, int64_t* job_ip) except -1 nogil:
    cdef int64_t i, chunk, pad, seg_len, thl, body_done, k, icv
    cdef uint8_t* o
    cdef uint64_t sn
    if p.slot < 0 and not p.lso:  # passthrough: the frame leaves unchanged
        check(out_pos, flen, osize)
        memcpy(out + out_pos, frame, flen)
        out_off[frame_idx] = out_pos
        out_len[frame_idx] = flen
        out_nbl[frame_idx] = nbl
        return 0
    # rec is NULL for plain LSO without IPsec: segments carry no ESP trailer, ICV or job
    icv = rec.icv_len if rec != NULL else 0
    thl = <int64_t>p.hdr_len - p.tcp_off
    for i in range(p.nsegs):
        o = out + out_pos
        if p.lso:
            body_done = i * p.mss
            chunk = p.body_len - body_done
            if chunk > p.mss:
                chunk = p.mss
            pad = esp_pad(thl + chunk + 2, rec.align) if rec != NULL else 0
            seg_len = p.hdr_len + chunk + (pad + 2 + icv if rec != NULL else 0)
            check(out_pos, seg_len, osize)
            check(0, p.hdr_len, flen)
            check(p.body_off + body_done, chunk, flen)
            memcpy(o, frame, p.hdr_len)
            memcpy(o + p.hdr_len, frame + p.body_off + body_done, chunk)
            if rec != NULL:
                for k in range(pad):  # spec §8.1: pad bytes 1, 2, 3, ...
                    o[p.hdr_len + chunk + k] = <uint8_t>(k + 1)
                o[p.hdr_len + chunk + pad] = <uint8_t>pad
                o[p.hdr_len + chunk + pad + 1] = p.next_header
        else:
            chunk = p.body_len
            seg_len = p.hdr_len + chunk + icv
            check(out_pos, seg_len, osize)
            check(0, p.hdr_len + chunk, flen)
            memcpy(o, frame, p.hdr_len + chunk)
        patch_segment(o, seg_len, p, rec, i, chunk, osize - out_pos)
        out_off[frame_idx] = out_pos
        out_len[frame_idx] = seg_len
        out_nbl[frame_idx] = nbl
        out_pos += seg_len
        frame_idx += 1
        if rec == NULL:
            continue
        memset(o + seg_len - icv, 0, icv)
        sn = p.sn64 + <uint64_t>i
        write_esp_fields(o, p, rec, sn, p.lso != 0 or iv_source == IV_SOURCE_NIC, rand,
                         rand_size, job, osize - (o - out))
        job_slot[job] = p.slot
        job_esp[job] = (o - out) + p.esp_off
        job_text[job] = (o - out) + p.esp_off + 8 + rec.iv_len
        job_text_len[job] = seg_len - icv - (p.esp_off + 8 + rec.iv_len)
        job_icv[job] = (o - out) + seg_len - icv
        job_seq_hi[job] = <uint32_t>(sn >> 32)
        job_post[job] = JOB_POST_UDP6_CHECKSUM if (rec.udp_encap and p.ipv6) else JOB_POST_NONE
        job_udp[job] = (o - out) + p.esp_off - 8
        job_ip[job] = (o - out) + p.ip_off
        job += 1
    return 0


cdef bint plain_lso_is_consistent(const NbPlan* p, int64_t flen) noexcept nogil:
    """A plain-LSO plan (no SA) stays inside its frame and its out_len (see plan_without_ipsec)."""
    cdef int64_t thl = <int64_t>p.hdr_len - p.tcp_off, n
    if (p.ip_off < 0 or p.ip_hdr_len < 20 or (p.ipv6 and p.ip_hdr_len != 40)
            or p.tcp_off < <int64_t>p.ip_off + p.ip_hdr_len or thl < 20 or thl > 60
            or p.mss <= 0 or p.body_off != p.hdr_len or p.body_len < 0
            or p.body_len > flen - p.body_off):
        return False
    n = 1 if p.body_len == 0 else (p.body_len + p.mss - 1) // p.mss
    return (p.nsegs == n and p.out_len == n * p.hdr_len + p.body_len
            and p.hdr_len + (p.body_len if p.body_len < p.mss else p.mss) - p.ip_off
            - (40 if p.ipv6 else 0) <= 0xFFFF)


cdef bint plan_is_consistent(const NbPlan* p, const SaRecord* rec, int64_t flen) noexcept nogil:
    """Everything emit will touch for this plan lies inside the frame and its out_len, and
    every field it writes can hold its value. All sums in 64 bits: no field may wrap."""
    cdef int64_t ip_end = <int64_t>p.ip_off + p.ip_hdr_len
    cdef int64_t text_off = <int64_t>p.esp_off + 8 + rec.iv_len, thl, full, rem, n, size, big
    if (p.ip_off < 0 or p.ip_hdr_len < 20 or p.esp_off < ip_end
            or (rec.udp_encap and p.esp_off < ip_end + 8)
            or (p.ipv6 and p.ip_hdr_len != 40) or p.sn64 > UINT64_MAX - <uint64_t>(p.nsegs - 1)
            or p.body_off < 0 or p.body_len < 0 or p.body_off > flen
            or p.body_len > flen - p.body_off
            or rec.align == 0 or p.ipv6 != rec.ipv6):
        return False
    if not p.lso:
        if not (p.nsegs == 1 and p.hdr_len == text_off and p.body_off == text_off
                and p.out_len == text_off + p.body_len + rec.icv_len):
            return False
        big = p.out_len
    else:
        thl = <int64_t>p.hdr_len - p.tcp_off
        if (p.tcp_off != text_off or thl < 20 or thl > 60 or p.mss <= 0
                or p.body_off != p.hdr_len):
            return False
        full = p.body_len // p.mss
        rem = p.body_len - full * p.mss
        n = 1 if p.body_len == 0 else full + (1 if rem else 0)
        size = full * lso_segment_len(p.hdr_len, thl, p.mss, rec.align, rec.icv_len)
        if rem or p.body_len == 0:
            size += lso_segment_len(p.hdr_len, thl, rem, rec.align, rec.icv_len)
        if p.nsegs != n or p.out_len != size:
            return False
        big = lso_segment_len(p.hdr_len, thl, p.mss if p.body_len > p.mss else p.body_len,
                              rec.align, rec.icv_len)
    return big - p.ip_off - (40 if p.ipv6 else 0) <= 0xFFFF  # the IP length field holds it


def emit(const uint8_t[::1] arena, const int64_t[::1] nb_off, const int64_t[::1] nb_len,
         const int32_t[::1] nb_nbl, const uint8_t[::1] plans, const uint8_t[::1] records,
         int iv_source, const uint8_t[::1] rand,
         const int64_t[::1] nb_out_pos, const int64_t[::1] nb_frame, const int64_t[::1] nb_job,
         uint8_t[::1] out, int64_t[::1] out_off, int64_t[::1] out_len, int32_t[::1] out_nbl,
         int32_t[::1] job_slot, int64_t[::1] job_esp, int64_t[::1] job_text,
         int64_t[::1] job_text_len, int64_t[::1] job_icv, uint32_t[::1] job_seq_hi,
         uint8_t[::1] job_post, int64_t[::1] job_udp, int64_t[::1] job_ip):
    """Write every planned segment into `out` and one crypto job per protected segment."""
    cdef Py_ssize_t n_nb = nb_off.shape[0], i
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord), n_frames = out_off.shape[0]
    cdef int64_t n_jobs = job_slot.shape[0]
    cdef const NbPlan* plan0 = <const NbPlan*>&plans[0] if n_nb else NULL
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef const NbPlan* p
    cdef const SaRecord* rec
    cdef int64_t need = 0, frames = 0, jobs = 0
    if plans.shape[0] != n_nb * sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    if nb_len.shape[0] != n_nb or nb_nbl.shape[0] != n_nb or nb_out_pos.shape[0] != n_nb \
            or nb_frame.shape[0] != n_nb or nb_job.shape[0] != n_nb:
        raise ValueError("per-buffer arrays differ in length")
    if out_len.shape[0] != n_frames or out_nbl.shape[0] != n_frames:
        raise ValueError("output frame arrays differ in length")
    if any(n != n_jobs for n in (job_esp.shape[0], job_text.shape[0], job_text_len.shape[0],
                                 job_icv.shape[0], job_seq_hi.shape[0], job_post.shape[0],
                                 job_udp.shape[0], job_ip.shape[0])):
        raise ValueError("job arrays differ in length")
    # Validate the plan against the buffers before any write: the layout must fit exactly.
    for i in range(n_nb):
        p = plan0 + i
        if nb_off[i] < 0 or nb_len[i] < 0 or nb_off[i] > arena.shape[0] - nb_len[i]:
            raise ValueError("a NET_BUFFER lies outside the arena")
        if p.nsegs < 0 or p.out_len < 0:
            raise ValueError("corrupt plan")
        if p.nsegs and p.slot >= 0:
            if p.slot >= nrec or not plan_is_consistent(p, recs + p.slot, nb_len[i]):
                raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
            rec = recs + p.slot
            if (rec.iv_len and rec.suite != SUITE_AES_GCM and rec.suite != SUITE_AES_GMAC
                    and (p.lso or iv_source == IV_SOURCE_NIC)
                    and (jobs + p.nsegs) * rec.iv_len > rand.shape[0]):
                raise ValueError(f"rand holds {rand.shape[0]} bytes; plan {i} needs "
                                 f"{(jobs + p.nsegs) * rec.iv_len} for its random IVs")
        elif p.nsegs and not (plain_lso_is_consistent(p, nb_len[i]) if p.lso
                              else p.nsegs == 1 and p.out_len == nb_len[i]):
            raise ValueError(f"plan {i} is inconsistent with its frame")
        if nb_out_pos[i] != need or nb_frame[i] != frames or nb_job[i] != jobs:
            raise ValueError("nb_out_pos / nb_frame / nb_job disagree with the plan")
        if p.out_len > out.shape[0] - need:  # per plan, so that the running total cannot wrap
            raise ValueError("output arena or tables too small for the plan")
        need += p.out_len
        frames += p.nsegs
        if p.slot >= 0:
            jobs += p.nsegs
    if need > out.shape[0] or frames != n_frames or jobs != n_jobs:
        raise ValueError("output arena or tables too small for the plan")
    cdef const uint8_t* base = &arena[0] if arena.shape[0] else NULL
    cdef uint8_t* obase = &out[0] if out.shape[0] else NULL
    cdef const uint8_t* rbase = &rand[0] if rand.shape[0] else NULL
    cdef int64_t osize = out.shape[0], rsize = rand.shape[0]
    with nogil:
        for i in range(n_nb):
            p = plan0 + i
            if p.nsegs == 0:
                continue
            emit_nb(base + nb_off[i], nb_len[i], p, recs + p.slot if p.slot >= 0 else NULL,
                    nb_nbl[i], iv_source, rbase, rsize, obase, osize, nb_out_pos[i], nb_frame[i],
                    nb_job[i], &out_off[0], &out_len[0], &out_nbl[0],
                    &job_slot[0] if n_jobs else NULL, &job_esp[0] if n_jobs else NULL,
                    &job_text[0] if n_jobs else NULL, &job_text_len[0] if n_jobs else NULL,
                    &job_icv[0] if n_jobs else NULL, &job_seq_hi[0] if n_jobs else NULL,
                    &job_post[0] if n_jobs else NULL, &job_udp[0] if n_jobs else NULL,
                    &job_ip[0] if n_jobs else NULL)


# -- finalize ------------------------------------------------------------------------

def finalize(uint8_t[::1] out, const uint8_t[::1] records, const int32_t[::1] job_slot,
             const int64_t[::1] job_icv, const uint8_t[::1] job_post,
             const int64_t[::1] job_udp, const int64_t[::1] job_ip):
    """After sealing: the UDP checksum of UDP-encapsulated ESP over IPv6 (spec §6.7, G25)."""
    cdef Py_ssize_t n = job_slot.shape[0], j
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord), osize = out.shape[0]
    cdef int64_t end, ulen
    cdef uint64_t s
    cdef uint16_t c
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef uint8_t* udp
    if job_icv.shape[0] != n or job_post.shape[0] != n or job_udp.shape[0] != n \
            or job_ip.shape[0] != n:
        raise ValueError("job arrays differ in length")
    for j in range(n):
        if job_post[j] == JOB_POST_UDP6_CHECKSUM:
            if job_slot[j] < 0 or job_slot[j] >= nrec:
                raise ValueError("job names an SA slot outside the record table")
            if job_icv[j] < 0 or job_icv[j] > osize:
                raise ValueError("job reaches outside the output arena")
            end = job_icv[j] + recs[job_slot[j]].icv_len
            if job_ip[j] < 0 or job_ip[j] > osize - 40 or job_udp[j] < job_ip[j] + 40 \
                    or end > osize or job_udp[j] > end - 8:
                raise ValueError("job reaches outside the output arena")
    with nogil:
        for j in range(n):
            if job_post[j] != JOB_POST_UDP6_CHECKSUM:
                continue
            udp = &out[job_udp[j]]
            ulen = job_icv[j] + recs[job_slot[j]].icv_len - job_udp[j]
            st16(udp + 6, 0)
            # pseudo-header: source, and the final destination past any routing header (§8.10)
            s = (csum_add(0, &out[job_ip[j] + 8], 16)
                 + csum_add(0, &out[job_ip[j] + ipv6_final_dst(&out[job_ip[j]],
                                                               job_udp[j] - job_ip[j])], 16)
                 + (<uint64_t>ulen >> 16) + (ulen & 0xFFFF) + 17)
            c = ~csum_fold(csum_add(s, udp, ulen)) & 0xFFFF
            st16(udp + 6, c if c else 0xFFFF)  # RFC 768: a computed 0 is sent as all ones
