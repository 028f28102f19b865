# tx_classify: the documented steps of MiniportSendNetBufferLists before any write ("Sending
# Network Data with IPsec Offload Version 2"; docs/send-path.md):
# offload state, handles, IP header, ESP offset, trailer, LSO checks. Included by _fastpath.pyx.

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


cdef int64_t lso_segment_len(int64_t hdr_len, int64_t ptl, int64_t chunk, int64_t align,
                             int64_t icv) noexcept nogil:
    """One ESP LSO segment: ``ptl`` is the protected header bytes each segment repeats
    (the TCP header, and destination options before it), ``chunk`` its TCP payload."""
    return hdr_len + chunk + esp_pad(ptl + chunk + 2, align) + 2 + icv


cdef bint dstopts_to_tcp(const uint8_t* frame, int64_t flen, int64_t start, int nh,
                        int64_t tcp_off, bint ipv6) except -1 nogil:
    """LSO: the TCP header at TcpHeaderOffset is where the IPsec header's protected text
    starts (``start``, named TCP by ``nh``), or past a chain of IPv6 destination-options
    headers that ends exactly there with Next Header TCP (RFC 8200 §4.1: the destination
    options after a routing header follow AH / ESP; docs/send-path.md, step 3). The caller
    has checked tcp_off + 20 against the frame."""
    cdef int64_t off = start
    cdef int k
    for k in range(128):  # TcpHeaderOffset < 1024: at most 128 headers of 8 bytes
        if off == tcp_off:
            return nh == 6
        if not ipv6 or nh != 60 or off + 8 > tcp_off:
            return False
        check(off, 2, flen)
        nh = frame[off]
        off += (<int64_t>frame[off + 1] + 1) * 8
    return False


cdef bint lso_enabled(int lso_kind, bint ipv6, int cfg) noexcept nogil:
    """This LSO kind is on for this IP version; NDIS LSOv1 is IPv4 only
    (NDIS_TCP_LARGE_SEND_OFFLOAD_V1 has IPv4 members only)."""
    if lso_kind == 1:
        return not ipv6 and (cfg & CFG_LSO_V1) != 0
    return (cfg & (CFG_LSO_V2_IPV6 if ipv6 else CFG_LSO_V2_IPV4)) != 0


cdef int plan_without_ipsec(const uint8_t* frame, int64_t flen, int32_t nb_count, uint64_t lso,
                            int32_t l2, int cfg, NbPlan* p, uint8_t reason) except -1 nogil:
    """No IPsec work: the frame leaves unchanged, but an LSO request is still honoured
    (docs/send-path.md, step 1): plain TCP segmentation, no ESP."""
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


cdef int disabled(const uint8_t* frame, int64_t flen, int32_t nb_count, uint64_t lso,
                  int32_t l2, int cfg, NbPlan* p) except -1 nogil:
    """Offload is off for what this frame's handle needs (docs/spec-gaps.md G21): under
    "pass" a non-LSO frame leaves unchanged, but an LSO frame fails, as an ESP-framed
    super-packet can never be segmented as plain TCP; under "fail" every such frame fails."""
    if (cfg & CFG_DISABLED_FAIL) or lso != 0:
        fail(p, STATUS_FAILURE, REASON_DISABLED_WITH_HANDLE)
        return 0
    return plan_without_ipsec(frame, flen, nb_count, lso, l2, cfg, p, REASON_PASS_DISABLED)


cdef int header_named(const uint8_t* frame, int64_t flen, int64_t l2, bint ipv6, int64_t ihl,
                      int64_t target, int64_t limit) except -3 nogil:
    """The Protocol / Next Header value that names the header at ``target``, walking from the
    IP header over IPv6 extension headers (RFC 8200 §4: hop-by-hop 0, routing 43, fragment
    44, destination options 60) and AH (51, RFC 4302 §2.2); -1 if ``target`` is not where a
    header starts, -2 if it names an IPv6 extension header (an offset inside them)."""
    cdef int64_t off = l2 + ihl, hlen
    cdef int nh, k
    check(l2 + (6 if ipv6 else 9), 1, flen)
    nh = frame[l2 + (6 if ipv6 else 9)]
    for k in range(64):
        if off == target:
            return -2 if ipv6 and (nh == 0 or nh == 43 or nh == 44 or nh == 60) else nh
        if off > target:
            return -1
        if ipv6 and (nh == 0 or nh == 43 or nh == 60):
            if off + 2 > limit:
                return -1
            check(off, 2, flen)
            hlen = (<int64_t>frame[off + 1] + 1) * 8
        elif ipv6 and nh == 44:
            hlen = 8
        elif nh == 51:
            if off + 2 > limit:
                return -1
            check(off, 2, flen)
            hlen = (<int64_t>frame[off + 1] + 2) * 4
        else:
            return -1
        if off + hlen > limit:
            return -1
        check(off, 1, flen)
        nh = frame[off]
        off += hlen
    return -1


cdef bint trailer_fits(const uint8_t* frame, int64_t flen, int64_t tend, int64_t text_off,
                       uint8_t padl, uint8_t nh, bint strict) except -1 nogil:
    """The ESP trailer (pad length, next header) ends at ``tend`` and matches slot 12; with
    ``strict`` the padding before it also reads 1, 2, 3, ... (RFC 4303 §2.4)."""
    cdef int64_t k, start
    if tend < text_off + 2:
        return False
    check(tend - 2, 2, flen)
    if frame[tend - 1] != nh or frame[tend - 2] != padl:
        return False
    if strict:
        start = tend - 2 - padl
        if start < text_off:
            return False
        check(start, padl, flen)
        for k in range(padl):
            if frame[start + k] != k + 1:
                return False
    return True


cdef bint zero_room(const uint8_t* frame, int64_t flen, int64_t tend,
                    int64_t icv) except -1 nogil:
    """The ``icv`` bytes after the trailer are all zero (room the stack left for the ICV)."""
    check(tend, icv, flen)
    return icv <= 0 or any_nonzero(frame + tend, <size_t>icv) == 0


cdef inline bint sn_room(uint64_t sn0, int64_t n, bint esn) noexcept nogil:
    """SN0 .. SN0 + n - 1 are all sendable: none is 0, none past 2^32 - 1 (2^64 - 1 with ESN)."""
    if sn0 == 0:
        return False
    if esn:
        return sn0 <= UINT64_MAX - <uint64_t>(n - 1)
    return sn0 + <uint64_t>(n - 1) <= UINT32_MAX


cdef int lso_ah_alone(const uint8_t* frame, int64_t flen, NbPlan* p, const Transform* ah,
                      uint64_t lso, int lso_kind, int32_t nb_count, int cfg, uint8_t padl,
                      uint64_t slot, uint64_t sn64) except -1 nogil:
    """LSO of an AH super-packet without ESP (docs/send-path.md step 3): the TCP header right
    after the AH header (TcpHeaderOffset counts the AH length), or after IPv6 destination
    options that follow it (dstopts_to_tcp), no ESP padding, one AH sequence number per
    segment (G6)."""
    cdef int64_t ah_end = <int64_t>p.ah_off + p.ah_len, thl, L, n
    if not (cfg & CFG_LSO_WITH_IPSEC) or not lso_enabled(lso_kind, p.ipv6, cfg):
        fail(p, STATUS_FAILURE, REASON_LSO_DISABLED)
        return 0
    p.mss = <int32_t>(lso & 0xFFFFF)
    p.tcp_off = <int32_t>((lso >> 20) & 0x3FF)
    check(p.ah_off, 1, flen)
    if (nb_count != 1 or p.mss == 0 or padl != 0
            or (lso_kind == 2 and <int>((lso >> 31) & 1) != p.ipv6)
            or p.tcp_off + 20 > flen
            or not dstopts_to_tcp(frame, flen, ah_end, frame[p.ah_off], p.tcp_off, p.ipv6)):
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    check(p.tcp_off + 12, 1, flen)
    thl = (frame[p.tcp_off + 12] >> 4) * 4
    if thl < 20 or p.tcp_off + thl > flen:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    L = flen - p.tcp_off - thl
    n = 1 if L == 0 else (L + p.mss - 1) // p.mss
    p.hdr_len = <int32_t>(p.tcp_off + thl)
    if p.hdr_len + (L if L < p.mss else p.mss) - p.ip_off - (40 if p.ipv6 else 0) > 0xFFFF:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    if not sn_room(sn64, n, ah.esn):
        fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
        return 0
    p.slot = <int32_t>slot
    p.sn64 = sn64
    p.body_off = p.hdr_len
    p.body_len = L
    p.nsegs = <int32_t>n
    p.out_len = n * p.hdr_len + L
    return 0


cdef inline int64_t ah_header_len(const Transform* ah) noexcept nogil:
    """AH bytes: 12 + IV + ICV padded to the transform's alignment, 4 on IPv4 and 8 on IPv6
    (RFC 4302 §2.2; docs/protocol.md). -1 for a transform without an alignment."""
    if ah.align == 0:
        return -1
    return (12 + <int64_t>ah.iv_len + ah.icv_len + ah.align - 1) // ah.align * ah.align


cdef int classify_one(const uint8_t* frame, int64_t flen, const NblOob* oob, int32_t nbl,
                      const SaRecord* recs, int64_t nrec, int cfg, int icv_space, int iv_source,
                      NbPlan* p, bint nested_layer=False) except -1 nogil:
    """Steps 1-3 of the send procedure for one NET_BUFFER (docs/send-path.md): fills *p.
    ``nested_layer``: *oob is one layer of a transport-over-tunnel frame (classify_nested)."""
    cdef int32_t nb_count = oob.nb_count, l2 = oob.l2_len
    cdef uint64_t handle = oob.offload_handle, tunnel_handle = oob.tunnel_handle
    cdef uint64_t lso = oob.lso_info
    cdef uint8_t nh = oob.next_header, padl = oob.pad_length, ah4 = oob.ah_off4
    cdef uint8_t esp4 = oob.esp_off4
    cdef const Transform* xf
    cdef const Transform* ah_xf = NULL
    cdef int64_t ah, ah_len, need
    cdef uint64_t ah_sn = 0
    cdef int64_t ip_end, ihl, tot, esp, text_off, tend, text_len, pay_end, thl, L, n
    cdef int64_t full, rem, icv, align, ptl
    cdef uint64_t slot, sn64
    cdef bint ok_res, ok_app
    cdef const SaRecord* rec
    cdef int version, lso_kind, named

    zero_struct(p, sizeof(NbPlan))
    p.slot = -1
    p.nbl = nbl
    p.ip_off = l2
    p.next_header = nh
    if handle == 0 and tunnel_handle == 0:
        return plan_without_ipsec(frame, flen, nb_count, lso, l2, cfg, p, REASON_PASS_NO_HANDLE)
    if not (cfg & (CFG_ESP_IPV4 | CFG_ESP_IPV6 | CFG_AH_IPV4 | CFG_AH_IPV6)):  # docs/send-path.md, step 1 precedes step 2 (G21)
        return disabled(frame, flen, nb_count, lso, l2, cfg, p)
    if tunnel_handle != 0 and handle == 0 and (cfg & CFG_TUNNEL_ALONE_SINGLE):
        handle = tunnel_handle  # docs/spec-gaps.md G13, policy "single"
    elif tunnel_handle != 0 and handle != 0 and (cfg & CFG_TRANSPORT_TUNNEL):
        return classify_nested(frame, flen, oob, nbl, recs, nrec, cfg, iv_source, p)
    elif tunnel_handle != 0:  # G13; or transport over tunnel not offered (caps)
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
    if not (cfg & ((CFG_ESP_IPV6 | CFG_AH_IPV6) if p.ipv6 else (CFG_ESP_IPV4 | CFG_AH_IPV4))):  # G21
        return disabled(frame, flen, nb_count, lso, l2, cfg, p)
    slot = handle & SLOT_MASK
    if slot >= <uint64_t>nrec or not recs[slot].in_use or recs[slot].handle != handle:
        fail(p, STATUS_FAILURE, REASON_UNKNOWN_HANDLE)
        return 0
    rec = &recs[slot]
    xf = &rec.xf[0]
    if rec.inbound:
        fail(p, STATUS_FAILURE, REASON_INBOUND_HANDLE)
        return 0
    if rec.ipv6 != p.ipv6:
        fail(p, STATUS_FAILURE, REASON_IP_VERSION_MISMATCH)
        return 0
    if not nested_layer and (rec.udp_type == UDP_ESP_TRANSPORT_OVER_UDP_TUNNEL
                             or rec.udp_type == UDP_ESP_UDP_TRANSPORT_OVER_TUNNEL):
        fail(p, STATUS_FAILURE, REASON_NESTING)  # a bundle for a nested frame, alone
        return 0
    # The SA's layers: AH alone (xf[0]), ESP alone, or ESP + AH (xf[0], xf[1])
    if xf.proto == PROTO_AH:
        ah_xf = xf
        xf = NULL
    elif rec.n_xf == 2:
        ah_xf = &rec.xf[1]
    # docs/send-path.md step 1: a protocol this SA needs is off for this IP version
    need = 0
    if xf != NULL:
        need |= CFG_ESP_IPV6 if p.ipv6 else CFG_ESP_IPV4
    if ah_xf != NULL:
        need |= CFG_AH_IPV6 if p.ipv6 else CFG_AH_IPV4
    if (cfg & need) != need:
        return disabled(frame, flen, nb_count, lso, l2, cfg, p)
    lso_kind = 0
    if lso != 0:
        lso_kind = 2 if (lso >> 30) & 1 else 1
    p.lso = lso_kind

    # IP header; with LSO the NET_BUFFER length is the datagram's end (docs/send-path.md)
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

    if ah_xf == NULL:
        if ah4 != 0:  # an AH offset on an SA without AH
            fail(p, STATUS_FAILURE, REASON_AH_NOT_SUPPORTED)
            return 0
    else:
        # docs/send-path.md: the AH header the stack built, where slot 12 says
        ah = l2 + 4 * <int64_t>ah4
        ah_len = ah_header_len(ah_xf)
        if ah4 == 0 or ah_len < 24 or ah < l2 + p.ip_hdr_len or ah_len > ip_end - ah:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_AH_OFFSET)
            return 0
        check(ah, 12, flen)
        if frame[ah + 1] != ah_len // 4 - 2:  # Payload Length (RFC 4302 §2.2)
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_AH_OFFSET)
            return 0
        named = header_named(frame, flen, l2, p.ipv6, p.ip_hdr_len, ah, ip_end)
        if named < 0:  # inside the IP or extension headers (docs/send-path.md)
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_AH_OFFSET)
            return 0
        if named != PROTO_AH:  # the frame does not say AH where the SA has it
            fail(p, STATUS_FAILURE, REASON_PROTOCOL_MISMATCH)
            return 0
        check(ah + 4, 4, flen)
        if ld32(frame + ah + 4) != ah_xf.spi:
            fail(p, STATUS_FAILURE, REASON_SPI_MISMATCH)
            return 0
        ah_sn = ld32(frame + ah + 8)
        if ah_xf.esn:
            ah_sn |= <uint64_t>ah_xf.seq_hi << 32
        if ah_sn == 0:  # the counter wrapped: SN 0 is never sent (RFC 4302 §2.5)
            fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
            return 0
        p.ah_off = <int32_t>ah
        p.ah_len = <int32_t>ah_len
        p.ah_fresh_iv = iv_source == IV_SOURCE_NIC and ah_xf.iv_len != 0
        if xf == NULL:  # AH alone: the datagram leaves as built, with its ICV
            if esp4 != 0:
                fail(p, STATUS_INVALID_PACKET, REASON_BAD_ESP_OFFSET)
                return 0
            if lso_kind:
                return lso_ah_alone(frame, flen, p, ah_xf, lso, lso_kind, nb_count, cfg, padl,
                                    slot, ah_sn)
            p.slot = <int32_t>slot
            p.sn64 = ah_sn
            p.hdr_len = <int32_t>ip_end
            p.body_off = ip_end
            p.nsegs = 1
            p.out_len = ip_end
            return 0
    esp = l2 + 4 * <int64_t>esp4
    text_off = esp + 8 + xf.iv_len
    if esp4 == 0 or esp < l2 + p.ip_hdr_len + (8 if xf.udp_encap else 0) or text_off > ip_end \
            or (ah_xf != NULL and esp < <int64_t>p.ah_off + p.ah_len):
        fail(p, STATUS_INVALID_PACKET, REASON_BAD_ESP_OFFSET)
        return 0
    # the header before ESP (or before its UDP header) names it, and the SPI is the SA's
    named = header_named(frame, flen, l2, p.ipv6, p.ip_hdr_len, esp - (8 if xf.udp_encap else 0),
                         ip_end)
    if named < 0:  # inside the IPv6 extension headers, as inside the IPv4 header
        fail(p, STATUS_INVALID_PACKET, REASON_BAD_ESP_OFFSET)
        return 0
    if named != (17 if xf.udp_encap else PROTO_ESP):
        fail(p, STATUS_FAILURE, REASON_PROTOCOL_MISMATCH)
        return 0
    p.esp_off = <int32_t>esp
    check(esp, 8, flen)
    if ld32(frame + esp) != xf.spi:
        fail(p, STATUS_FAILURE, REASON_SPI_MISMATCH)
        return 0
    sn64 = ld32(frame + esp + 4)
    if xf.esn:
        sn64 |= <uint64_t>xf.seq_hi << 32
    p.sn64 = sn64
    icv = xf.icv_len
    align = xf.align

    if not lso_kind:
        # The stack framed the trailer; find it from the IP length (docs/send-path.md, step 2, G4)
        # "auto" takes the room as reserved only if it is all zero and the padding before the
        # trailer reads 1, 2, 3, ...; when both readings fit (only possible with next header
        # 0 and no padding) the frame is refused: docs/spec-gaps.md G4.
        tend = ip_end - icv
        ok_res = icv_space != ICV_SPACE_APPEND and trailer_fits(
            frame, flen, tend, text_off, padl, nh, icv_space == ICV_SPACE_AUTO) and (
            icv_space == ICV_SPACE_RESERVED or zero_room(frame, flen, tend, icv))
        ok_app = icv_space != ICV_SPACE_RESERVED and trailer_fits(
            frame, flen, ip_end, text_off, padl, nh, icv_space == ICV_SPACE_AUTO)
        if icv == 0:  # no ICV (encryption only, in a bundle): one reading only
            ok_res = trailer_fits(frame, flen, ip_end, text_off, padl, nh,
                                  icv_space == ICV_SPACE_AUTO)
            ok_app = False
        if ok_res == ok_app:  # neither reading, or an ambiguous frame
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_TRAILER)
            return 0
        if ok_app:
            tend = ip_end
        text_len = tend - text_off
        if padl + 2 > text_len:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_TRAILER)
            return 0
        if align <= 0 or mod_align(text_len, align) != 0:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_ALIGNMENT)
            return 0
        if tend + icv - l2 - (40 if p.ipv6 else 0) > 0xFFFF:  # an appended ICV overflows
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)  # the IP length field
            return 0
        if sn64 == 0:  # the counter wrapped: SN 0 is never sent (docs/protocol.md)
            fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
            return 0
        p.slot = <int32_t>slot
        p.fresh_iv = iv_source == IV_SOURCE_NIC and xf.iv_len != 0
        p.hdr_len = <int32_t>text_off
        p.body_off = text_off
        p.body_len = text_len
        p.nsegs = 1
        p.out_len = tend + icv
        return 0

    # LSO: the checks of docs/send-path.md, step 3, then the segment plan of docs/protocol.md,
    # section 11
    if not (cfg & CFG_LSO_WITH_IPSEC) or not lso_enabled(lso_kind, p.ipv6, cfg):
        fail(p, STATUS_FAILURE, REASON_LSO_DISABLED)
        return 0
    p.mss = <int32_t>(lso & 0xFFFFF)
    p.tcp_off = <int32_t>((lso >> 20) & 0x3FF)
    pay_end = flen - padl  # docs/spec-gaps.md G7: the discardable pad is dropped
    if (nb_count != 1 or p.mss == 0
            or (lso_kind == 2 and <int>((lso >> 31) & 1) != p.ipv6)
            or p.tcp_off + 20 > pay_end
            or not dstopts_to_tcp(frame, flen, text_off, nh, p.tcp_off, p.ipv6)):
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    check(p.tcp_off + 12, 1, flen)
    thl = (frame[p.tcp_off + 12] >> 4) * 4
    if thl < 20 or p.tcp_off + thl > pay_end:
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    L = pay_end - p.tcp_off - thl
    n = 1 if L == 0 else (L + p.mss - 1) // p.mss
    ptl = p.tcp_off + thl - text_off  # protected header bytes: destination options, TCP
    if lso_segment_len(p.tcp_off + thl, ptl, L if L < p.mss else p.mss, align, icv) - l2 - (
            40 if p.ipv6 else 0) > 0xFFFF:  # a full segment would overflow the IP length field
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    # Segment i carries SN0 + i (docs/spec-gaps.md G6): all of them must exist, in the AH of
    # a bundle too
    if not sn_room(sn64, n, xf.esn) or (ah_xf != NULL and not sn_room(ah_sn, n, ah_xf.esn)):
        fail(p, STATUS_FAILURE, REASON_SEQ_EXHAUSTED)
        return 0
    p.slot = <int32_t>slot
    p.fresh_iv = xf.iv_len != 0  # LSO segments always get NIC IVs (G5)
    p.hdr_len = <int32_t>(p.tcp_off + thl)
    p.body_off = p.hdr_len
    p.body_len = L
    p.nsegs = <int32_t>n
    full = L // p.mss
    rem = L - full * p.mss
    p.out_len = full * lso_segment_len(p.hdr_len, ptl, p.mss, align, icv)
    if rem or L == 0:
        p.out_len += lso_segment_len(p.hdr_len, ptl, rem, align, icv)
    return 0


cdef enum:
    UDP_ESP_TUNNEL = 0x2                      # IPSEC_OFFLOAD_V2_UDP_ESP_ENCAPSULATION_TUNNEL
    UDP_ESP_TRANSPORT_OVER_UDP_TUNNEL = 0x4   # ..._TRANSPORT_OVER_UDP_ESP_ENCAPSULATION_TUNNEL
    UDP_ESP_UDP_TRANSPORT_OVER_TUNNEL = 0x8   # ..._UDP_ESP_ENCAPSULATION_TRANSPORT_OVER_TUNNEL


cdef int nesting_ok(const SaRecord* t, const SaRecord* u) noexcept nogil:
    """The UdpEspEncapsulation values of a transport bundle ``t`` and a tunnel bundle ``u``
    agree (docs/send-path.md, "Transport over tunnel"): ``u`` carries 0 or TUNNEL (0x2);
    over a UDP tunnel ``t`` carries 0x4 when it has ESP, else 0; over a plain tunnel 0x8
    (its ESP in UDP) or 0. Both UDP-encapsulated is unsupported (NDIS)."""
    cdef bint t_esp = t.xf[0].proto == PROTO_ESP
    if u.udp_type == UDP_ESP_TUNNEL:
        return t.udp_type == (UDP_ESP_TRANSPORT_OVER_UDP_TUNNEL if t_esp else 0)
    if u.udp_type != 0:
        return False
    return t.udp_type == 0 or (t.udp_type == UDP_ESP_UDP_TRANSPORT_OVER_TUNNEL and t_esp)


cdef int classify_nested(const uint8_t* frame, int64_t flen, const NblOob* oob, int32_t nbl,
                         const SaRecord* recs, int64_t nrec, int cfg, int iv_source,
                         NbPlan* p) except -1 nogil:
    """Transport over tunnel (docs/send-path.md): OffloadHandle T, TunnelHandle U. The
    tunnel layer is found by parsing the outer header (its trailer from the datagram end
    with U's ICV length), the transport layer by slot 12 from the inner IP header
    (docs/spec-gaps.md G11); both ICV rooms reserved (G30). *p describes U's layer as a
    single tunnel frame would, its in_* fields T's layer."""
    cdef uint64_t handle = oob.offload_handle, th = oob.tunnel_handle
    cdef uint64_t ts = handle & SLOT_MASK, us = th & SLOT_MASK
    cdef int32_t l2 = oob.l2_len
    cdef const SaRecord* t
    cdef const SaRecord* u
    cdef NblOob uo, to
    cdef NbPlan q
    cdef int64_t off, ihl, ip_end, hlen, tend, inner, inner_end, limit
    cdef int nh, k, version
    cdef bint ipv6
    cdef const Transform* ux
    if us >= <uint64_t>nrec or not recs[us].in_use or recs[us].handle != th \
            or ts >= <uint64_t>nrec or not recs[ts].in_use or recs[ts].handle != handle:
        fail(p, STATUS_FAILURE, REASON_UNKNOWN_HANDLE)
        return 0
    if recs[us].inbound or recs[ts].inbound:
        fail(p, STATUS_FAILURE, REASON_INBOUND_HANDLE)
        return 0
    t = &recs[ts]
    u = &recs[us]
    if oob.lso_info != 0:  # LSO is never combined with tunnel packets (NDIS)
        fail(p, STATUS_FAILURE, REASON_LSO_BAD_PARAMS)
        return 0
    if ts == us or not nesting_ok(t, u):
        fail(p, STATUS_FAILURE, REASON_NESTING)
        return 0
    # the outer header and U's first header, past any IPv6 extension headers
    if l2 < 0 or flen < l2 + 20:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    check(l2, 20, flen)
    version = frame[l2] >> 4
    ipv6 = version == 6
    if version == 4:
        ihl = (frame[l2] & 0xF) * 4
        ip_end = l2 + ld16(frame + l2 + 2)
        nh = frame[l2 + 9]
        if ihl < 20 or ip_end < l2 + ihl:
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
            return 0
    elif version == 6:
        ihl = 40
        if flen < l2 + 40:
            fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
            return 0
        ip_end = l2 + 40 + ld16(frame + l2 + 4)
        nh = frame[l2 + 6]
    else:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    if ip_end > flen or l2 + ihl > flen:
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    off = l2 + ihl
    for k in range(64):
        if not (ipv6 and (nh == 0 or nh == 43 or nh == 44 or nh == 60)):
            break
        if off + 8 > ip_end:
            break
        check(off, 2, flen)
        hlen = 8 if nh == 44 else (<int64_t>frame[off + 1] + 1) * 8
        nh = frame[off]
        off += hlen
    ux = &u.xf[0]  # U's first header: its AH (AH alone, or the AH of an AH + ESP bundle)
    if u.xf[0].proto == PROTO_ESP and u.n_xf == 2:
        ux = &u.xf[1]
    # the tunnel layer as a single tunnel frame: slot 12 as parsing finds it, ICV reserved
    memset(&uo, 0, sizeof(NblOob))
    uo.offload_handle = th
    uo.nb_count = oob.nb_count
    uo.l2_len = oob.l2_len
    if ux.proto == PROTO_AH:  # AH first: its offset here; ESP (bundle) right after it
        if (off - l2) % 4 or off - l2 > 1020:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_AH_OFFSET)
            return 0
        uo.ah_off4 = <uint8_t>((off - l2) // 4)
        if u.n_xf == 2:
            off += ah_header_len(ux)
    if u.xf[0].proto == PROTO_ESP:
        if u.xf[0].udp_encap:
            off += 8
        if (off - l2) % 4 or off - l2 > 1020 or off < l2 + ihl:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_ESP_OFFSET)
            return 0
        uo.esp_off4 = <uint8_t>((off - l2) // 4)
        tend = ip_end - u.xf[0].icv_len
        if tend - 2 < off:
            fail(p, STATUS_INVALID_PACKET, REASON_BAD_TRAILER)
            return 0
        check(tend - 2, 2, flen)
        uo.pad_length = frame[tend - 2]
        uo.next_header = frame[tend - 1]
        inner = off + 8 + u.xf[0].iv_len
        limit = tend - 2 - uo.pad_length
    else:
        inner = off + ah_header_len(ux)
        limit = ip_end
    classify_one(frame, flen, &uo, nbl, recs, nrec, cfg, ICV_SPACE_RESERVED, iv_source, p,
                 True)
    if p.status != 0 or p.slot < 0:  # failed, or offload off for it (G21): as it says
        return 0
    if p.ah_off:
        check(p.ah_off, 1, flen)
        nh = frame[p.ah_off] if u.xf[0].proto == PROTO_AH else uo.next_header
    else:
        nh = uo.next_header
    # the inner IP header: what U's next header names, where its protected text starts
    if inner + 20 > limit or inner > 0xFFFF or (nh != 4 and nh != 41):
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    check(inner, 1, flen)
    if (frame[inner] >> 4) != (4 if nh == 4 else 6):
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    memset(&to, 0, sizeof(NblOob))
    to.offload_handle = handle
    to.nb_count = oob.nb_count
    to.l2_len = <uint16_t>inner
    to.next_header = oob.next_header
    to.pad_length = oob.pad_length
    to.ah_off4 = oob.ah_off4
    to.esp_off4 = oob.esp_off4
    classify_one(frame, limit, &to, nbl, recs, nrec, cfg, ICV_SPACE_RESERVED, iv_source, &q,
                 True)
    if q.status != 0:
        fail(p, q.status, q.reason)
        return 0
    if q.slot < 0:  # offload off for the transport layer (G21): the frame as it says
        p.ah_off = 0
        p.esp_off = 0
        passthrough(p, flen, q.reason)
        return 0
    inner_end = q.out_len  # the inner datagram as the transport layer leaves it
    if inner_end != limit:  # U's payload is exactly the inner packet
        fail(p, STATUS_INVALID_PACKET, REASON_MALFORMED_IP)
        return 0
    if t.udp_type == UDP_ESP_UDP_TRANSPORT_OVER_TUNNEL and q.ipv6:
        # its UDP checksum would have to be computed between T's and U's seal: not done
        fail(p, STATUS_FAILURE, REASON_NESTING)
        return 0
    p.nested = 1
    p.in_slot = q.slot
    p.in_sn64 = q.sn64
    p.in_ip_off = q.ip_off
    p.in_ip_hdr_len = q.ip_hdr_len
    p.in_end = <int32_t>inner_end
    p.in_esp_off = q.esp_off
    p.in_ah_off = q.ah_off
    p.in_ah_len = q.ah_len
    p.in_body_len = <int32_t>q.body_len
    p.in_ipv6 = q.ipv6
    p.in_fresh_iv = q.fresh_iv
    p.in_ah_fresh_iv = q.ah_fresh_iv
    return 0


cdef void tx_classify_run(BatchView b, const SaRecord* recs, int64_t nrec, int config,
                          int icv_space, int iv_source, NbPlan* plans) noexcept nogil:
    cdef int64_t i
    cdef const int64_t* nb_off = b.c_nb_off
    cdef int32_t k
    for i in range(b.n_nb):
        k = b.c_nb_nbl[i]
        classify_one(b.c_arena + nb_off[i] if b.c_arena != NULL else NULL, b.c_nb_len[i],
                     b.c_oob + k, k, recs, nrec, config, icv_space, iv_source, plans + i)


def tx_classify(batch, const uint8_t[::1] records not None, int config, int icv_space,
                int iv_source,
                uint8_t[::1] plans not None):
    """Plan every NET_BUFFER of ``batch`` (arena, nb_off, nb_len, nb_nbl, oob_bytes) into
    ``plans`` (NB_PLAN_DTYPE bytes). NBL-level failure and positions are tx_plan's."""
    cdef BatchView b = BatchView(batch)
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    if plans.shape[0] != b.n_nb * sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef NbPlan* plan0 = <NbPlan*>&plans[0] if b.n_nb else NULL
    with nogil:
        tx_classify_run(b, recs, nrec, config, icv_space, iv_source, plan0)
