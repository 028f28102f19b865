# tx_emit: segments, header patches, ESP fields and one crypto op per protected segment.
# Included by _fastpath.pyx.

cdef int64_t ipv6_final_dst(const uint8_t* ip, int64_t ext_end) noexcept nogil:
    """Offset from the IPv6 header of the destination a TCP pseudo-header names (docs/protocol.md,
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


cdef int patch_segment(uint8_t* o, int64_t seg_len, const NbPlan* p, const Transform* rec,
                       int64_t i, int64_t chunk, int64_t osize, const uint8_t* body,
                       const uint8_t* hdr) except -1 nogil:
    """Header patches of one output segment (docs/send-path.md); o is its first byte. An LSO
    segment's payload is at ``body`` when it is not in the segment yet (out-of-place seal).
    ``hdr``, when not NULL, holds the bytes the segment's IP header was just copied from."""
    cdef uint8_t* ip = o + p.ip_off
    cdef const uint8_t* src_ip = (hdr if hdr != NULL else o) + p.ip_off
    cdef uint8_t* tcp
    cdef const uint8_t* src_tcp
    cdef int64_t thl, tcp_len, ext_end
    cdef uint64_t s
    cdef uint32_t word, seq
    cdef uint8_t flags
    if p.ipv6:
        check(p.ip_off + 4, 2, osize)
        st16(ip + 4, <uint32_t>(seg_len - p.ip_off - 40))
    else:
        check(p.ip_off, p.ip_hdr_len, osize)
        # The header checksum from the sum of the header as copied, the old length, ID and
        # checksum words taken out and the new ones put in (RFC 1624 §3). The sum reads the
        # copy's source: loads from the copy just stored stall on store forwarding (measured:
        # half of this function's time at 64 B).
        s = csum_add(0, src_ip, p.ip_hdr_len) + (~ld16(src_ip + 10) & 0xFFFF)
        word = <uint32_t>(seg_len - p.ip_off)
        s += (~ld16(src_ip + 2) & 0xFFFF) + word
        st16(ip + 2, word)
        if p.lso:  # docs/send-path.md / G16: LSOv2 IDs stay in 15 bits
            word = (ld16(src_ip + 4) + <uint32_t>i) & (0x7FFF if p.lso == 2 else 0xFFFF)
            s += (~ld16(src_ip + 4) & 0xFFFF) + word
            st16(ip + 4, word)
        st16(ip + 10, ~csum_fold(s) & 0xFFFF)
    # RFC 3948: IPv4 sends checksum 0; IPv6 is finished after sealing (tx_fixup)
    if rec != NULL and rec.udp_encap:
        check(p.esp_off - 8, 8, osize)
        st16(o + p.esp_off - 4, <uint32_t>(seg_len - (p.esp_off - 8)))
        st16(o + p.esp_off - 2, 0)
    if p.lso:
        tcp = o + p.tcp_off
        src_tcp = (hdr if hdr != NULL else o) + p.tcp_off
        thl = <int64_t>p.hdr_len - p.tcp_off
        tcp_len = thl + chunk
        check(p.tcp_off, tcp_len, osize)
        seq = ld32(src_tcp + 4) + <uint32_t>(i * p.mss)
        flags = src_tcp[13]
        if i != p.nsegs - 1:
            flags &= ~0x09  # FIN, PSH only on the last segment
        if i != 0:
            flags &= ~0x80  # CWR only on the first (G17)
        # docs/protocol.md / G23: ignore the seeded partial sum, compute from scratch: the
        # header's sum as copied (read from the source, as above), its sequence number, flags
        # and checksum words taken out and the new ones (checksum 0) put in (RFC 1624 §3)
        s = (csum_add(0, src_tcp, thl) + (~ld16(src_tcp + 4) & 0xFFFF)
             + (~ld16(src_tcp + 6) & 0xFFFF) + (~ld16(src_tcp + 12) & 0xFFFF)
             + (~ld16(src_tcp + 16) & 0xFFFF) + (seq >> 16) + (seq & 0xFFFF)
             + ((<uint32_t>src_tcp[12] << 8) | flags))
        st32(tcp + 4, seq)
        tcp[13] = flags
        st16(tcp + 16, 0)
        if p.ipv6:
            ext_end = (<int64_t>p.esp_off if p.esp_off else p.tcp_off) - p.ip_off  # ESP, else TCP
            check(p.ip_off, ext_end, osize)
            s += (csum_add(0, src_ip + 8, 16)
                  + csum_add(0, src_ip + ipv6_final_dst(src_ip, ext_end), 16)
                  + (<uint64_t>tcp_len >> 16) + (tcp_len & 0xFFFF) + 6)
        else:
            s += csum_add(0, src_ip + 12, 8) + 6 + <uint64_t>tcp_len
        # the TCP header's length is a multiple of 4: the sums add up
        s = csum_add(s, body if body != NULL else tcp + thl, chunk)
        st16(tcp + 16, ~csum_fold(s) & 0xFFFF)
    return 0


cdef int write_esp_fields(uint8_t* o, const NbPlan* p, const Transform* xf, uint64_t sn,
                          const uint8_t* rand, int64_t rand_size, int64_t rand_pos,
                          int64_t osize) except -1 nogil:
    """ESP SN (low word) and the IV: the 64-bit SN for GCM/GMAC (RFC 4106 §3.1), random for
    CBC (RFC 3602 §2.2); the frame's own IV when the stack supplies it (docs/spec-gaps.md G5)."""
    check(p.esp_off + 4, 4 + xf.iv_len, osize)
    st32(o + p.esp_off + 4, <uint32_t>sn)
    if not p.fresh_iv or xf.iv_len == 0:
        return 0
    if xf.suite == SUITE_AES_GCM or xf.suite == SUITE_AES_GMAC:
        st64(o + p.esp_off + 8, sn)
    else:
        check(rand_pos, xf.iv_len, rand_size)
        memcpy(o + p.esp_off + 8, rand + rand_pos, xf.iv_len)
    return 0


cdef int emit_ah_op(uint8_t* out, int64_t osize, int64_t pos, int64_t seg_len,
                    const NbPlan* p, const Transform* ah, int64_t i, int64_t scratch,
                    int64_t fi, uint8_t pass_no, CryptoOp* op) except -1 nogil:
    """The AH fields of output segment ``i`` and its AH sign op (RFC 4302 §3.3): its SN
    (SN0 + i, G6, the high word carried for the ICV only), ICV field and explicit pad
    zeroed, the GMAC IV written (SN, G5), the header region copied to the scratch at
    ``scratch`` with its mutable fields zeroed (ah_mutable.pxi)."""
    cdef uint8_t* o = out + pos
    cdef int64_t ah_end = <int64_t>p.ah_off + p.ah_len, hdr = ah_end - p.ip_off
    cdef int64_t icv_at = <int64_t>p.ah_off + 12 + ah.iv_len
    cdef uint64_t sn
    check(pos + p.ah_off, p.ah_len, osize)
    check(pos + p.ip_off, hdr, osize)
    check(scratch, hdr, osize)
    memset(o + icv_at, 0, ah_end - icv_at)
    sn = ld32(o + p.ah_off + 8)
    if ah.esn:
        sn |= <uint64_t>ah.seq_hi << 32
    sn += <uint64_t>i
    st32(o + p.ah_off + 8, <uint32_t>sn)
    if (p.ah_fresh_iv or p.lso) and ah.iv_len == 8:  # LSO segments always get NIC IVs
        st64(o + p.ah_off + 12, sn)
    memcpy(out + scratch, o + p.ip_off, hdr)
    if p.ipv6:
        ah_zero_ipv6(out + scratch, <int64_t>p.ah_off - p.ip_off)
    else:
        ah_zero_ipv4(out + scratch, p.ip_hdr_len)
    zero_struct(op, sizeof(CryptoOp))
    op.auth_off = scratch
    op.text_off = pos + ah_end
    op.text_len = seg_len - ah_end
    op.icv_off = pos + icv_at
    op.ip_off = pos + p.ip_off
    op.key_row = ah.key_row
    op.frame = <int32_t>fi
    op.seq_hi = <uint32_t>(sn >> 32)
    op.kind = OP_AH_SIGN
    op.pass_no = pass_no
    op.suite = ah.suite
    op.integ = ah.integ
    op.iv_len = ah.iv_len
    op.icv_len = ah.icv_len
    op.esn = ah.esn
    op.fixup = FIXUP_NONE
    if ah.suite == SUITE_AH_GMAC:
        memcpy(op.nonce, ah.salt, 4)
        memcpy(op.nonce + 4, o + p.ah_off + 12, 8)
    return 0


cdef int emit_nb(const uint8_t* frame, int64_t flen, int64_t frame_off, int32_t nb,
                 const NbPlan* p, const SaRecord* sa, const SaRecord* sa_in, const uint8_t* rand,
                 int64_t rand_size, uint8_t* out, int64_t osize, int64_t scratch0,
                 WireFrame* frames, CryptoOp* ops, bint out_of_place) except -1 nogil:
    """The segments of one NET_BUFFER (``frame``, at ``frame_off`` in the batch's arena).
    ``out_of_place``: an AES-GCM ESP op of a plain (not nested) layer leaves its payload in
    the source arena for the seal to read (CryptoOp.src_*; docs/send-path.md, "Out-of-place
    seal"), and only headers and trailer are written here."""
    cdef int64_t i, chunk, pad, seg_len, ptl, body_done, k, icv, pos = p.out_pos
    cdef int64_t fi = p.frame0, oi = p.op0, base, scratch, text_at = 0
    cdef uint8_t* o
    cdef uint64_t sn
    cdef CryptoOp* op
    cdef const Transform* xf = NULL
    cdef const Transform* ah = NULL
    cdef bint from_src = False
    if p.slot < 0 and not p.lso:  # passthrough: the frame leaves unchanged
        check(pos, flen, osize)
        memcpy(out + pos, frame, flen)
        frames[fi].off = pos
        frames[fi].len = flen
        frames[fi].nbl = p.nbl
        frames[fi].nb = nb
        return 0
    # sa is NULL for plain LSO without IPsec: segments carry no ESP trailer, ICV or op.
    # The layers: ESP alone, AH alone (xf stays NULL) or ESP then AH (docs/send-path.md)
    if sa != NULL:
        if sa.xf[0].proto == PROTO_AH:
            ah = &sa.xf[0]
        else:
            xf = &sa.xf[0]
            if sa.n_xf == 2:
                ah = &sa.xf[1]
    icv = xf.icv_len if xf != NULL else 0
    if xf != NULL:
        text_at = <int64_t>p.esp_off + 8 + xf.iv_len
        from_src = out_of_place and xf.suite == SUITE_AES_GCM and not p.nested
    # the protected header bytes every ESP segment repeats: destination options, TCP header
    ptl = <int64_t>p.hdr_len - text_at if xf != NULL else 0
    for i in range(p.nsegs):
        o = out + pos
        body_done = 0
        if p.lso:
            body_done = i * p.mss
            chunk = p.body_len - body_done
            if chunk > p.mss:
                chunk = p.mss
            pad = esp_pad(ptl + chunk + 2, xf.align) if xf != NULL else 0
            seg_len = p.hdr_len + chunk + (pad + 2 + icv if xf != NULL else 0)
            check(pos, seg_len, osize)
            check(0, p.hdr_len, flen)
            check(p.body_off + body_done, chunk, flen)
            memcpy(o, frame, p.hdr_len)
            if not from_src:
                memcpy(o + p.hdr_len, frame + p.body_off + body_done, chunk)
            if xf != NULL:
                for k in range(pad):  # RFC 4303 §2.4: pad bytes 1, 2, 3, ...
                    o[p.hdr_len + chunk + k] = <uint8_t>(k + 1)
                o[p.hdr_len + chunk + pad] = <uint8_t>pad
                o[p.hdr_len + chunk + pad + 1] = p.next_header
        else:
            chunk = p.body_len
            seg_len = p.hdr_len + chunk + icv
            check(pos, seg_len, osize)
            check(0, p.hdr_len + chunk, flen)
            if from_src:  # headers and IV room; the text (trailer included) stays in the frame
                check(0, text_at, p.hdr_len + chunk)
                memcpy(o, frame, text_at)
            else:
                memcpy(o, frame, p.hdr_len + chunk)
        patch_segment(o, seg_len, p, xf, i, chunk, osize - pos,
                      frame + p.body_off + body_done if from_src and p.lso else NULL, frame)
        frames[fi].off = pos
        frames[fi].len = seg_len
        frames[fi].nbl = p.nbl
        frames[fi].nb = nb
        fi += 1
        if xf != NULL:
            zero_icv(o + seg_len - icv, icv)
            sn = p.sn64 + <uint64_t>i
            write_esp_fields(o, p, xf, sn, rand, rand_size, p.rand_off + i * xf.iv_len,
                             osize - pos)
            emit_esp_op(o, pos, seg_len, p, xf, sn, fi - 1, 2 if p.nested else 0, ops + oi)
            op = ops + oi
            if from_src and (chunk if p.lso else op.text_len) > 0:
                if p.lso:  # the segment's payload, after its TCP header, before its trailer
                    op.src_at = <int32_t>ptl
                    op.src_off = frame_off + p.body_off + body_done
                    op.src_len = <int32_t>chunk
                else:  # the whole text, built with its trailer by the host stack
                    op.src_at = 0
                    op.src_off = frame_off + text_at
                    op.src_len = <int32_t>op.text_len
            oi += 1
        if ah != NULL:  # AH over the result, in the pass after ESP (RFC 4301 §5.1.1)
            scratch = scratch0 + p.scratch_pos + i * (<int64_t>p.ah_off + p.ah_len - p.ip_off)
            emit_ah_op(out, osize, pos, seg_len, p, ah, i, scratch, fi - 1,
                       (1 if xf != NULL else 0) + (2 if p.nested else 0), ops + oi)
            oi += 1
        if p.nested and sa_in != NULL:  # the transport layer inside, in passes 0 and 1
            emit_inner(out, osize, pos, p, sa_in, rand, rand_size,
                       p.rand_off + (xf.iv_len if xf != NULL and p.fresh_iv
                                     and random_suite(xf.suite) else 0),
                       scratch0 + p.scratch_pos + outer_scratch_len(p), fi - 1, ops + oi)
        pos += seg_len
    return 0


cdef int emit_esp_op(uint8_t* o, int64_t pos, int64_t seg_len, const NbPlan* p,
                     const Transform* xf, uint64_t sn, int64_t fi, uint8_t pass_no,
                     CryptoOp* op) except -1 nogil:
    """The ESP seal op of a segment whose datagram ends at ``seg_len`` (its ICV room last)."""
    cdef int64_t base = pos + p.esp_off, icv = xf.icv_len
    zero_struct(op, sizeof(CryptoOp))
    op.auth_off = base
    op.text_off = base + 8 + xf.iv_len
    op.text_len = seg_len - icv - (p.esp_off + 8 + xf.iv_len)
    op.icv_off = pos + seg_len - icv
    op.ip_off = pos + p.ip_off
    op.key_row = xf.key_row
    op.frame = <int32_t>fi
    op.seq_hi = <uint32_t>(sn >> 32)
    op.kind = OP_ESP_SEAL
    op.pass_no = pass_no
    op.suite = xf.suite
    op.integ = xf.integ
    op.iv_len = xf.iv_len
    op.icv_len = xf.icv_len
    op.esn = xf.esn
    op.fixup = FIXUP_UDP6_CHECKSUM if (xf.udp_encap and p.ipv6) else FIXUP_NONE
    if xf.suite == SUITE_AES_GCM or xf.suite == SUITE_AES_GMAC:
        memcpy(op.nonce, xf.salt, 4)
        memcpy(op.nonce + 4, o + p.esp_off + 8, 8)
    return 0


cdef void inner_plan(const NbPlan* p, const SaRecord* sa, NbPlan* q) noexcept nogil:
    """The transport layer of a nested plan as a plan of its own (non-LSO, one segment)."""
    zero_struct(q, sizeof(NbPlan))
    q.slot = p.in_slot
    q.nbl = p.nbl
    q.nsegs = 1
    q.ip_off = p.in_ip_off
    q.ip_hdr_len = p.in_ip_hdr_len
    q.ipv6 = p.in_ipv6
    q.sn64 = p.in_sn64
    q.esp_off = p.in_esp_off
    q.ah_off = p.in_ah_off
    q.ah_len = p.in_ah_len
    q.fresh_iv = p.in_fresh_iv
    q.ah_fresh_iv = p.in_ah_fresh_iv
    q.out_len = p.in_end
    if p.in_esp_off:
        q.hdr_len = p.in_esp_off + 8 + sa.xf[0].iv_len
        q.body_off = q.hdr_len
    else:
        q.hdr_len = p.in_end
        q.body_off = p.in_end
    q.body_len = p.in_body_len


cdef int emit_inner(uint8_t* out, int64_t osize, int64_t pos, const NbPlan* p,
                    const SaRecord* sa, const uint8_t* rand, int64_t rand_size,
                    int64_t rand_pos, int64_t scratch, int64_t fi,
                    CryptoOp* ops) except -1 nogil:
    """Transport over tunnel: the transport layer's fields and ops (docs/send-path.md): the
    inner IP header's length and checksum, its UDP header (0x8), ESP SN and IV, ICV room, the
    ESP op in pass 0 and the AH op in pass 1 (pass 0 alone)."""
    cdef NbPlan q
    cdef uint8_t* o = out + pos
    cdef const Transform* xf = NULL
    cdef const Transform* ah = NULL
    cdef int64_t oi = 0
    if sa.xf[0].proto == PROTO_AH:
        ah = &sa.xf[0]
    else:
        xf = &sa.xf[0]
        if sa.n_xf == 2:
            ah = &sa.xf[1]
    inner_plan(p, sa, &q)
    patch_segment(o, p.in_end, &q, xf, 0, 0, osize - pos, NULL, NULL)
    if xf != NULL:
        zero_icv(o + p.in_end - xf.icv_len, xf.icv_len)
        write_esp_fields(o, &q, xf, q.sn64, rand, rand_size, rand_pos, osize - pos)
        emit_esp_op(o, pos, p.in_end, &q, xf, q.sn64, fi, 0, ops)
        oi += 1
    if ah != NULL:
        emit_ah_op(out, osize, pos, p.in_end, &q, ah, 0, scratch, fi, 1 if xf != NULL else 0,
                   ops + oi)
    return 0


cdef bint plain_lso_is_consistent(const NbPlan* p, int64_t flen) noexcept nogil:
    """A plain-LSO plan (no SA) stays inside its frame and its out_len (see plan_without_ipsec)."""
    return p.ah_off == 0 and plain_lso_layout_is_consistent(p, flen)


cdef bint plain_lso_layout_is_consistent(const NbPlan* p, int64_t flen) noexcept nogil:
    """TCP segments without ESP (plain LSO, or LSO with AH alone): every segment is the
    template of hdr_len bytes and a chunk of the body."""
    cdef int64_t thl = <int64_t>p.hdr_len - p.tcp_off, n
    if (p.esp_off != 0 or p.ip_off < 0 or p.ip_hdr_len < 20 or (p.ipv6 and p.ip_hdr_len != 40)
            or p.tcp_off < <int64_t>p.ip_off + p.ip_hdr_len or thl < 20 or thl > 60
            or p.mss <= 0 or p.body_off != p.hdr_len or p.body_len < 0
            or p.body_len > flen - p.body_off):
        return False
    n = 1 if p.body_len == 0 else (p.body_len + p.mss - 1) // p.mss
    return (p.nsegs == n and p.out_len == n * p.hdr_len + p.body_len
            and p.hdr_len + (p.body_len if p.body_len < p.mss else p.mss) - p.ip_off
            - (40 if p.ipv6 else 0) <= 0xFFFF)


cdef bint ah_plan_is_consistent(const NbPlan* p, const Transform* ah,
                                int64_t datagram_end) noexcept nogil:
    """The AH header of the plan lies after the IP header and inside the datagram, with the
    length its transform gives (tx_classify's ah_header_len)."""
    return (ah.align != 0 and p.ah_len == ah_header_len(ah) and p.ah_len >= 24
            and p.ah_off >= <int64_t>p.ip_off + p.ip_hdr_len
            and <int64_t>p.ah_off + p.ah_len <= datagram_end)


cdef bint nested_is_consistent(const NbPlan* p, const SaRecord* sa, const SaRecord* sa_in,
                               int64_t flen) noexcept nogil:
    """Transport over tunnel: the tunnel layer is a single non-LSO tunnel plan, and the
    transport layer's plan lies inside the tunnel layer's protected text."""
    cdef NbPlan q
    cdef int64_t start, stop
    if p.lso or p.nsegs != 1 or not sa_in.in_use or sa_in.n_xf < 1 or sa_in.n_xf > 2:
        return False
    if sa.xf[0].proto == PROTO_ESP:
        start = <int64_t>p.esp_off + 8 + sa.xf[0].iv_len
        stop = start + p.body_len
    else:
        start = <int64_t>p.ah_off + p.ah_len
        stop = p.out_len
    inner_plan(p, sa_in, &q)
    return (p.in_ip_off >= start and p.in_end <= stop and p.in_end <= flen
            and p.in_ip_off >= 0 and p.in_body_len >= 0
            and plan_is_consistent(&q, sa_in, p.in_end))


cdef bint plan_is_consistent(const NbPlan* p, const SaRecord* sa, int64_t flen) noexcept nogil:
    """Everything emit will touch for this plan lies inside the frame and its out_len, and
    every field it writes can hold its value. All sums in 64 bits: no field may wrap."""
    cdef const Transform* rec = &sa.xf[0]
    cdef const Transform* ah = NULL
    cdef int64_t ip_end = <int64_t>p.ip_off + p.ip_hdr_len
    cdef int64_t text_off, thl, ptl, full, rem, n, size, big
    if sa.n_xf < 1 or sa.n_xf > 2 or (p.ipv6 and p.ip_hdr_len != 40) or p.ip_off < 0 \
            or p.ip_hdr_len < 20 or p.ipv6 != sa.ipv6:
        return False
    if rec.proto == PROTO_AH:  # AH alone: the datagram as built, or cut into TCP segments
        if sa.n_xf != 1 or p.ah_off == 0 or p.esp_off != 0:
            return False
        if p.lso:
            return (plain_lso_layout_is_consistent(p, flen) and ah_plan_is_consistent(p, rec, p.tcp_off)
                    and p.tcp_off >= <int64_t>p.ah_off + p.ah_len
                    and p.sn64 <= UINT64_MAX - <uint64_t>(p.nsegs - 1))
        return (p.nsegs == 1 and p.hdr_len == p.out_len and p.body_off == p.hdr_len
                and p.body_len == 0 and p.out_len <= flen
                and ah_plan_is_consistent(p, rec, p.out_len)
                and p.out_len - p.ip_off - (40 if p.ipv6 else 0) <= 0xFFFF)
    if sa.n_xf == 2:
        ah = &sa.xf[1]
        if (ah.proto != PROTO_AH or p.ah_off == 0 or not ah_plan_is_consistent(p, ah, p.esp_off)
                or (not p.lso and p.nsegs != 1)):
            return False
    elif p.ah_off != 0:
        return False
    text_off = <int64_t>p.esp_off + 8 + rec.iv_len
    if (p.esp_off < ip_end
            or (rec.udp_encap and p.esp_off < ip_end + 8)
            or p.sn64 > UINT64_MAX - <uint64_t>(p.nsegs - 1)
            or p.body_off < 0 or p.body_len < 0 or p.body_off > flen
            or p.body_len > flen - p.body_off
            or rec.align == 0):
        return False
    if not p.lso:
        if not (p.nsegs == 1 and p.hdr_len == text_off and p.body_off == text_off
                and p.out_len == text_off + p.body_len + rec.icv_len):
            return False
        big = p.out_len
    else:
        thl = <int64_t>p.hdr_len - p.tcp_off
        if (p.tcp_off < text_off or thl < 20 or thl > 60 or p.mss <= 0
                or p.body_off != p.hdr_len):
            return False
        ptl = <int64_t>p.hdr_len - text_off  # destination options (if any) and TCP header
        full = p.body_len // p.mss
        rem = p.body_len - full * p.mss
        n = 1 if p.body_len == 0 else full + (1 if rem else 0)
        size = full * lso_segment_len(p.hdr_len, ptl, p.mss, rec.align, rec.icv_len)
        if rem or p.body_len == 0:
            size += lso_segment_len(p.hdr_len, ptl, rem, rec.align, rec.icv_len)
        if p.nsegs != n or p.out_len != size:
            return False
        big = lso_segment_len(p.hdr_len, ptl, p.mss if p.body_len > p.mss else p.body_len,
                              rec.align, rec.icv_len)
    return big - p.ip_off - (40 if p.ipv6 else 0) <= 0xFFFF  # the IP length field holds it


cdef int64_t tx_emit_check(BatchView b, const SaRecord* recs, int64_t nrec,
                           const NbPlan* plan0, int64_t rand_size, int64_t out_size,
                           int64_t n_frames, int64_t n_ops) except -1:
    """Validate the plans against the buffers before any write: the layout must fit exactly.
    Returns where the AH scratch starts in ``out`` (after the frames)."""
    cdef int64_t i, need = 0, nframes = 0, nops = 0, nrand = 0, flen, nscratch = 0
    cdef const NbPlan* p
    for i in range(b.n_nb):
        p = plan0 + i
        flen = b.c_nb_len[i]
        if p.nsegs < 0 or p.out_len < 0 or (p.nsegs == 0 and p.out_len != 0):
            raise ValueError("corrupt plan")
        if p.slot >= 0 and p.nested and (p.in_slot < 0 or p.in_slot >= nrec or p.slot >= nrec):
            raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
        if p.nsegs and p.slot >= 0:
            if p.slot >= nrec or not recs[p.slot].in_use \
                    or not plan_is_consistent(p, recs + p.slot, flen) or (p.nested and (
                        p.in_slot < 0 or p.in_slot >= nrec
                        or not nested_is_consistent(p, recs + p.slot, recs + p.in_slot, flen))):
                raise ValueError(f"plan {i} is inconsistent with its frame or SA record")
            if rand_len(p, recs):
                if p.rand_off != nrand:
                    raise ValueError("rand_off disagrees with the plans")
                nrand += p.nsegs * rand_len(p, recs)
                if nrand > rand_size:
                    raise ValueError(f"rand holds {rand_size} bytes; plan {i} needs "
                                     f"{nrand} for its random IVs")
        elif p.nsegs and not (plain_lso_is_consistent(p, flen) if p.lso
                              else p.nsegs == 1 and p.out_len == flen):
            raise ValueError(f"plan {i} is inconsistent with its frame")
        if p.out_pos != need or p.frame0 != nframes or p.op0 != nops \
                or p.scratch_pos != nscratch:
            raise ValueError("out_pos / frame0 / op0 / scratch_pos disagree with the plans")
        if p.out_len > out_size - need:  # per plan, so that the running total cannot wrap
            raise ValueError("output arena or tables too small for the plans")
        need += p.out_len
        nframes += p.nsegs
        nscratch += p.nsegs * ah_scratch_len(p)
        if nscratch > out_size:
            raise ValueError("output arena too small for the AH scratch")
        if p.slot >= 0:
            nops += p.nsegs * ops_per_segment(p, recs)
    if nframes != n_frames or nops != n_ops or nscratch > out_size - need:
        raise ValueError("output arena or tables too small for the plans")
    return need


cdef int tx_emit_run(BatchView b, const SaRecord* recs, const NbPlan* plan0,
                     const uint8_t* rand, int64_t rand_size, uint8_t* out, int64_t out_size,
                     int64_t scratch0, WireFrame* frames, CryptoOp* ops,
                     bint out_of_place) except -1 nogil:
    cdef int64_t i
    cdef const NbPlan* p
    for i in range(b.n_nb):
        p = plan0 + i
        if p.nsegs == 0:
            continue
        emit_nb(b.c_arena + b.c_nb_off[i], b.c_nb_len[i], b.c_nb_off[i], <int32_t>i, p,
                recs + p.slot if p.slot >= 0 else NULL,
                recs + p.in_slot if p.slot >= 0 and p.nested else NULL, rand, rand_size, out,
                out_size, scratch0, frames, ops, out_of_place)
    return 0


def tx_emit(batch, const uint8_t[::1] records not None, const uint8_t[::1] plans not None,
            const uint8_t[::1] rand not None, uint8_t[::1] out not None,
            uint8_t[::1] frames not None, uint8_t[::1] ops not None, bint out_of_place=False):
    """Write every planned segment into ``out``, one WireFrame per output frame into
    ``frames`` and one CryptoOp per protected segment and layer into ``ops`` (both as struct
    bytes). The AH ICV-input copies go after the frames in ``out`` (docs/send-path.md).
    ``out_of_place``: AES-GCM ESP payloads are left in ``batch.arena`` for the seal, which must
    then be given it as its source (run_op_groups' ``src``)."""
    cdef BatchView b = BatchView(batch)
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    cdef int64_t n_frames = frames.shape[0] // sizeof(WireFrame)
    cdef int64_t n_ops = ops.shape[0] // sizeof(CryptoOp)
    if plans.shape[0] != b.n_nb * sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    if frames.shape[0] % sizeof(WireFrame) or ops.shape[0] % sizeof(CryptoOp):
        raise ValueError("frames / ops buffer size does not match the struct layout")
    cdef const NbPlan* plan0 = <const NbPlan*>&plans[0] if b.n_nb else NULL
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef int64_t scratch0 = tx_emit_check(b, recs, nrec, plan0, rand.shape[0], out.shape[0],
                                          n_frames, n_ops)
    cdef uint8_t* obase = &out[0] if out.shape[0] else NULL
    cdef const uint8_t* rbase = &rand[0] if rand.shape[0] else NULL
    cdef WireFrame* fbase = <WireFrame*>&frames[0] if n_frames else NULL
    cdef CryptoOp* obase_ops = <CryptoOp*>&ops[0] if n_ops else NULL
    with nogil:
        tx_emit_run(b, recs, plan0, rbase, rand.shape[0], obase, out.shape[0], scratch0, fbase,
                    obase_ops, out_of_place)
