# rx_deliver: what the host stack does with the NIC's receive indications (docs/receive-path.md):
# the SA's selector, the anti-replay window (RFC 4303 §3.4.3, updated only for frames the NIC
# verified), then decapsulation — transport: the original IP packet with its protocol and
# lengths restored; tunnel: the inner packet with the RFC 6040 ECN result. Included by
# _fastpath.pyx.


cdef enum:
    RX_WINDOW_BITS = 64 * 64  # RxWindow.bits: 64 words


cdef bint rx_prefix_match(const uint8_t* addr, const uint8_t* prefix, int bits) noexcept nogil:
    cdef int i, whole = bits >> 3, rest = bits & 7
    for i in range(whole):
        if addr[i] != prefix[i]:
            return False
    if rest and ((addr[whole] ^ prefix[whole]) & (0xFF << (8 - rest)) & 0xFF):
        return False
    return True


cdef bint rx_selector_ok(const RxWindow* w, const uint8_t* ip, bint ipv6) noexcept nogil:
    if not w.has_sel:
        return True
    if w.sel_ipv6 != ipv6:
        return False
    if ipv6:
        return rx_prefix_match(ip + 8, w.src, w.src_len) and rx_prefix_match(ip + 24, w.dst,
                                                                              w.dst_len)
    return rx_prefix_match(ip + 12, w.src, w.src_len) and rx_prefix_match(ip + 16, w.dst,
                                                                          w.dst_len)


cdef void rx_window_shift(RxWindow* w, uint64_t shift) noexcept nogil:
    """Move the window forward by ``shift``: offset i becomes i + shift."""
    cdef int nw = (w.size + 63) >> 6, j, src
    cdef int ws, bs
    if shift >= <uint64_t>(nw * 64):
        for j in range(nw):
            w.bits[j] = 0
        return
    ws = <int>(shift >> 6)
    bs = <int>(shift & 63)
    for j in range(nw - 1, -1, -1):
        src = j - ws
        if src < 0:
            w.bits[j] = 0
        elif bs == 0:
            w.bits[j] = w.bits[src]
        elif src >= 1:
            w.bits[j] = (w.bits[src] << bs) | (w.bits[src - 1] >> (64 - bs))
        else:
            w.bits[j] = w.bits[src] << bs


cdef bint rx_window_accept(RxWindow* w, uint64_t sn) noexcept nogil:
    """RFC 4303 §3.4.3: accept a new number or an unseen one inside the window; record it."""
    cdef uint64_t i
    if sn == 0:
        return False  # never sent (RFC 4303 §3.3.3: the first packet carries 1)
    if w.size == 0:
        if sn > w.top:
            w.top = sn
        return True
    if sn > w.top:
        rx_window_shift(w, sn - w.top)
        w.top = sn
        w.bits[0] |= 1
        return True
    i = w.top - sn
    if i >= w.size:
        return False
    if (w.bits[i >> 6] >> (i & 63)) & 1:
        return False
    w.bits[i >> 6] |= (<uint64_t>1) << (i & 63)
    return True


cdef inline int ip_ecn(const uint8_t* ip, bint ipv6) noexcept nogil:
    return ((ip[1] >> 4) & 3) if ipv6 else (ip[1] & 3)


cdef void ipv4_fix_checksum(uint8_t* ip) noexcept nogil:
    cdef int ihl = (ip[0] & 0xF) * 4
    ip[10] = 0
    ip[11] = 0
    st16(ip + 10, (~csum_fold(csum_add(0, ip, ihl))) & 0xFFFF)


cdef bint rx_inner_fits(const uint8_t* f, int64_t flen, const uint8_t* dec, int64_t l2,
                        const RxPlan* p, const RxPlan* plan0, int64_t n,
                        int64_t nplans) noexcept nogil:
    """The frame's plan fits (rx_plan_fits) and so does its inner layer's, if it names one: a
    row after the frames' rows, itself not nested, inside the decrypted inner packet."""
    cdef const RxPlan* q
    cdef int64_t pay_off, pay_len
    if not rx_plan_fits(f, flen, l2, p):
        return False
    if p.inner <= 0:
        return True
    if not p.crypto_done or p.inner < n or p.inner >= nplans:
        return False
    q = plan0 + p.inner
    if q.inner != 0 or not q.crypto_done:
        return False
    if p.crypto_status != CRYPTO_SUCCESS or q.crypto_status != CRYPTO_SUCCESS:
        return True  # only the layers' SAs are read
    if p.ah_off and p.op < 0:
        pay_off = p.ah_off + p.ah_len
        pay_len = p.ip_end - pay_off
    else:
        pay_off = p.text_off
        pay_len = p.text_len - 2 - p.pad_length
    if pay_len < 0:
        return False
    return rx_plan_fits(dec + pay_off, pay_len, 0, q)


cdef bint rx_plan_fits(const uint8_t* f, int64_t flen, int64_t l2,
                       const RxPlan* p) noexcept nogil:
    """Everything rx_deliver_one reads and writes for this plan lies inside the frame and
    its share of the output (what rx_run's plans always satisfy)."""
    cdef int64_t hdr, hdr_end
    if not p.crypto_done:
        return True
    hdr = 40 if p.ipv6 else 20
    if p.ip_off < l2 or p.ip_off > flen - hdr:
        return False  # the selector reads the addresses
    if p.crypto_status != CRYPTO_SUCCESS:
        return True
    if not p.ipv6:
        hdr = (f[p.ip_off] & 0xF) * 4  # the checksum covers the whole header
    if p.ah_off:  # AH alone, or an AH+ESP bundle: the headers end where AH starts
        if (p.ah_len < 12 or p.ah_off < p.ip_off + hdr or p.ah_off > p.ip_end - p.ah_len
                or p.ip_end > flen or p.nh_off < p.ip_off or p.nh_off >= p.ah_off):
            return False
        if p.op < 0:
            return True
        return (p.esp_off >= p.ah_off + p.ah_len and p.esp_off + 8 <= p.text_off
                and p.text_len >= 2 + p.pad_length and p.text_off <= flen - p.text_len)
    hdr_end = p.udp_off if p.udp_off else p.esp_off
    return (hdr_end >= p.ip_off + hdr and p.nh_off >= p.ip_off and p.nh_off < hdr_end
            and (not p.udp_off or p.udp_off + 8 <= p.esp_off)
            and p.esp_off + 8 <= p.text_off and p.text_len >= 2 + p.pad_length
            and p.text_off <= flen - p.text_len)


cdef inline int32_t rx_owner(const RxPlan* p, const int32_t* slot_sa, const uint64_t* slot_handle,
                             int64_t nslots, int64_t nwin) noexcept nogil:
    """The stack's SA index of a plan's layer, -1 if none (a stale or foreign handle)."""
    if p.slot < 0 or p.slot >= nslots or slot_handle[p.slot] != p.handle \
            or slot_sa[p.slot] < 0 or slot_sa[p.slot] >= nwin:
        return -1
    return slot_sa[p.slot]


cdef int rx_deliver_one(const uint8_t* f, int64_t flen, const uint8_t* dec, int64_t l2,
                        const RxPlan* p, const RxPlan* q, const int32_t* slot_sa,
                        const uint64_t* slot_handle, int64_t nslots, RxWindow* windows,
                        int64_t nwin, uint8_t* out, int64_t* out_len,
                        int32_t* sa_index) noexcept nogil:
    """One frame; returns its Delivery code and writes what it delivers at out. ``q``: the
    inner (transport) layer of a nested frame, or NULL."""
    cdef int32_t sa, sa_q = -1
    cdef RxWindow* w
    cdef int64_t hdr_end, pay_off, pay_len, hlen, inner_len, ihl
    cdef const uint8_t* ip
    cdef uint8_t* o
    cdef int outer_ecn, inner_ecn, new_ecn, inner_v, nh
    out_len[0] = 0
    sa_index[0] = -1
    if not p.crypto_done:
        if p.reason == RX_NOT_IP:
            return DELIVERY_MALFORMED
        if p.reason == RX_SHORT or p.reason == RX_NO_SA or p.reason == RX_GATED:
            return DELIVERY_NO_SA
        memcpy(out, f, flen)
        out_len[0] = flen
        return DELIVERY_CLEAR
    sa = rx_owner(p, slot_sa, slot_handle, nslots, nwin)
    if sa < 0:
        return DELIVERY_NO_SA
    w = windows + sa
    ip = f + p.ip_off
    if not rx_selector_ok(w, ip, p.ipv6):
        return DELIVERY_SELECTOR
    sa_index[0] = sa
    if q != NULL:
        sa_q = rx_owner(q, slot_sa, slot_handle, nslots, nwin)
    if q != NULL and q.crypto_status != CRYPTO_SUCCESS and sa_q >= 0:
        sa_index[0] = sa_q  # the inner layer failed: its SA's failure
        return DELIVERY_CRYPTO
    if p.crypto_status != CRYPTO_SUCCESS or (q != NULL and q.crypto_status != CRYPTO_SUCCESS):
        return DELIVERY_CRYPTO
    if q != NULL and sa_q < 0:
        return DELIVERY_NO_SA
    if not rx_window_accept(w, p.seq64):
        return DELIVERY_REPLAY
    if p.ah_off and p.op < 0:  # AH alone: what follows the AH header, as received
        nh = p.ah_next_header
        pay_off = p.ah_off + p.ah_len
        pay_len = p.ip_end - pay_off
    else:  # ESP (alone or inside a bundle): the decrypted payload
        nh = p.next_header
        pay_off = p.text_off
        pay_len = p.text_len - 2 - p.pad_length
    if nh == 59:
        return DELIVERY_DUMMY
    memcpy(out, f, l2)
    o = out + l2
    if nh == 4 or nh == 41:
        # tunnel: the inner packet, as sent but for ECN (RFC 4301 §5.1.2.2, RFC 6040 §4.2)
        inner_v = 4 if nh == 4 else 6
        if pay_len < (20 if inner_v == 4 else 40) or (dec[pay_off] >> 4) != inner_v:
            return DELIVERY_INNER
        if inner_v == 4:
            inner_len = ld16(dec + pay_off + 2)
            ihl = (dec[pay_off] & 0xF) * 4
            if ihl < 20 or inner_len < ihl or inner_len > pay_len:
                return DELIVERY_INNER
        else:
            inner_len = 40 + ld16(dec + pay_off + 4)
            if inner_len > pay_len:
                return DELIVERY_INNER
        outer_ecn = ip_ecn(ip, p.ipv6)
        inner_ecn = ip_ecn(dec + pay_off, inner_v == 6)
        new_ecn = inner_ecn
        if outer_ecn == 3:
            if inner_ecn == 0:
                return DELIVERY_ECN
            new_ecn = 3
        elif outer_ecn == 1 and inner_ecn == 2:
            new_ecn = 1
        if q != NULL:
            # transport over tunnel: the inner packet's own layer, its selector and window
            # (RFC 4301 §5.2), then the innermost packet
            if q.ip_end > inner_len or q.next_header == 4 or q.next_header == 41 \
                    or (q.ah_off and q.op < 0 and (q.ah_next_header == 4
                                                    or q.ah_next_header == 41)):
                return DELIVERY_INNER  # one tunnel layer only
            if not rx_selector_ok(windows + sa_q, dec + pay_off + q.ip_off, q.ipv6):
                return DELIVERY_SELECTOR
            sa_index[0] = sa_q
            if not rx_window_accept(windows + sa_q, q.seq64):
                return DELIVERY_REPLAY
            if q.ah_off and q.op < 0:
                nh = q.ah_next_header
                if nh == 59:
                    return DELIVERY_DUMMY
                inner_len = rx_strip_transport(dec + pay_off, dec + pay_off, q, nh,
                                               q.ah_off + q.ah_len,
                                               q.ip_end - (q.ah_off + q.ah_len), o)
            else:
                nh = q.next_header
                if nh == 59:
                    return DELIVERY_DUMMY
                inner_len = rx_strip_transport(dec + pay_off, dec + pay_off, q, nh, q.text_off,
                                               q.text_len - 2 - q.pad_length, o)
            if new_ecn != inner_ecn:
                rx_set_ecn(o, inner_v == 6, new_ecn)
        else:
            memcpy(o, dec + pay_off, inner_len)
            if new_ecn != inner_ecn:
                rx_set_ecn(o, inner_v == 6, new_ecn)
        if l2 >= 14:
            st16(out + l2 - 2, 0x0800 if inner_v == 4 else 0x86DD)
        out_len[0] = l2 + inner_len
        return DELIVERY_DECAP
    if q != NULL:
        return DELIVERY_INNER  # an inner layer under a layer that does not decapsulate
    out_len[0] = l2 + rx_strip_transport(f, dec, p, nh, pay_off, pay_len, o)
    return DELIVERY_DECAP


cdef void rx_set_ecn(uint8_t* ip, bint ipv6, int ecn) noexcept nogil:
    if ipv6:
        ip[1] = (ip[1] & 0xCF) | (ecn << 4)
    else:
        ip[1] = (ip[1] & 0xFC) | ecn
        ipv4_fix_checksum(ip)


cdef int64_t rx_strip_transport(const uint8_t* f, const uint8_t* dec, const RxPlan* p, int nh,
                                int64_t pay_off, int64_t pay_len, uint8_t* o) noexcept nogil:
    """Transport: the headers before AH / ESP (or ESP's UDP header) from ``f``, then the
    payload from ``dec``, written at ``o`` (which may hold ``f``'s bytes: the payload moves
    down); protocol / next header, lengths and the IPv4 checksum restored. Returns the
    length."""
    cdef int64_t hdr_end = p.ah_off if p.ah_off else (p.udp_off if p.udp_off else p.esp_off)
    cdef int64_t hlen = hdr_end - p.ip_off
    if o != f + p.ip_off:
        memmove(o, f + p.ip_off, hlen)
    memmove(o + hlen, dec + pay_off, pay_len)
    o[p.nh_off - p.ip_off] = <uint8_t>nh
    if p.ipv6:
        st16(o + 4, <uint32_t>(hlen + pay_len - 40))
    else:
        st16(o + 2, <uint32_t>(hlen + pay_len))
        ipv4_fix_checksum(o)
    return hlen + pay_len


def rx_deliver(batch, out, plans, slot_sa, slot_handle, windows, reuse=None):
    """Deliver the frames of ``batch`` as the NIC left them (``out``, ``plans`` from rx_run):
    ``slot_sa`` (int32) and ``slot_handle`` (uint64) map an SA slot to the stack's SA index
    into ``windows`` (RX_WINDOW_DTYPE, updated); ``reuse``: an arena the delivered bytes may
    be written in (arena_from). Returns (delivered, deliveries, sa_index,
    out_off, out_len): the delivered bytes (link header kept), a Delivery code, the SA index
    (-1 for none) and the place of each frame's output."""
    cdef BatchView b = BatchView(batch)
    cdef const uint8_t[::1] dec = out
    cdef const uint8_t[::1] plan_bytes = plans
    cdef const int32_t[::1] sas = slot_sa
    cdef const uint64_t[::1] handles = slot_handle
    cdef uint8_t[::1] win_bytes = windows.view(np.uint8)
    cdef int64_t n = b.n_nb, i, pos = 0, nslots = sas.shape[0]
    if dec.shape[0] != b.arena_size or plan_bytes.shape[0] < n * sizeof(RxPlan) \
            or plan_bytes.shape[0] % sizeof(RxPlan) or handles.shape[0] != nslots \
            or win_bytes.shape[0] % sizeof(RxWindow):
        raise ValueError("rx_deliver: out, plans, slot maps or windows do not match the batch")
    cdef int64_t nplans = plan_bytes.shape[0] // sizeof(RxPlan)
    cdef int64_t nwin = win_bytes.shape[0] // sizeof(RxWindow)
    cdef const RxWindow* row = <const RxWindow*>&win_bytes[0] if nwin else NULL
    cdef int limit
    for i in range(nwin):
        # rx_window_shift and rx_prefix_match stay inside the row only for these
        limit = 128 if row[i].sel_ipv6 else 32
        if row[i].size > RX_WINDOW_BITS or (row[i].has_sel and (row[i].src_len > limit
                                                                or row[i].dst_len > limit)):
            raise ValueError(f"rx_deliver: window {i} holds more than {RX_WINDOW_BITS} "
                             f"packets or a selector prefix longer than its address")
    cdef int64_t total = 0
    for i in range(n):
        total += b.c_nb_len[i]
    delivered_arr = arena_from(reuse, total)
    deliveries_arr = np.empty(n, np.uint8)
    sa_arr = np.empty(n, np.int32)
    off_arr = np.empty(n, np.int64)
    len_arr = np.empty(n, np.int64)
    cdef uint8_t* delivered = <uint8_t*>array_data(delivered_arr) if total else NULL
    cdef uint8_t* deliveries = <uint8_t*>array_data(deliveries_arr) if n else NULL
    cdef int32_t* sa_index = <int32_t*>array_data(sa_arr) if n else NULL
    cdef int64_t* out_off = <int64_t*>array_data(off_arr) if n else NULL
    cdef int64_t* out_len = <int64_t*>array_data(len_arr) if n else NULL
    cdef const RxPlan* plan0 = <const RxPlan*>&plan_bytes[0] if n else NULL
    cdef RxWindow* win = <RxWindow*>&win_bytes[0] if nwin else NULL
    cdef const int32_t* sas_p = &sas[0] if nslots else NULL
    cdef const uint64_t* handles_p = &handles[0] if nslots else NULL
    cdef const uint8_t* dec_p = &dec[0] if b.arena_size else NULL
    cdef int64_t l2
    cdef int64_t bad = -1
    with nogil:
        # the plans against their frames before any write (as tx_emit checks its plans)
        for i in range(n):
            l2 = b.c_oob[b.c_nb_nbl[i]].l2_len
            if l2 > b.c_nb_len[i]:
                l2 = b.c_nb_len[i]
            if not rx_inner_fits(b.c_arena + b.c_nb_off[i], b.c_nb_len[i],
                                 dec_p + b.c_nb_off[i], l2, plan0 + i, plan0, n, nplans):
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"rx_deliver: plan {bad} does not fit its frame")
    with nogil:
        for i in range(n):
            l2 = b.c_oob[b.c_nb_nbl[i]].l2_len
            if l2 > b.c_nb_len[i]:
                l2 = b.c_nb_len[i]
            out_off[i] = pos
            deliveries[i] = rx_deliver_one(b.c_arena + b.c_nb_off[i], b.c_nb_len[i],
                                           dec_p + b.c_nb_off[i], l2, plan0 + i,
                                           plan0 + plan0[i].inner if plan0[i].inner > 0
                                           else NULL, sas_p, handles_p, nslots, win, nwin,
                                           delivered + pos, out_len + i, sa_index + i)
            pos += out_len[i]
    # only what was delivered: the rest of the allocation was never written
    return delivered_arr[:pos], deliveries_arr, sa_arr, off_arr, len_arr
