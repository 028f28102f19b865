# rx_classify: the NIC's receive procedure up to the crypto (docs/receive-path.md): offload
# state, IP and IPv6 extension headers, UDP-ESP, fragments, the inbound SA lookup, the
# capability gate, lengths, ESN inference, and one open op per ESP layer. Included by
# _fastpath.pyx.

cdef enum:
    RX_NEEDS_OPEN = 1         # rx_classify_one wrote an ESP open op
    RX_NEEDS_VERIFY = 2       # ... and / or an AH verify op


cdef inline void rx_no_info(RxPlan* p, uint8_t reason) noexcept nogil:
    p.reason = reason
    p.crypto_done = 0
    p.crypto_status = CRYPTO_SUCCESS


cdef inline void rx_fail(RxPlan* p, uint8_t reason, uint16_t status) noexcept nogil:
    p.reason = reason
    p.crypto_done = 1
    p.crypto_status = status


cdef inline uint32_t esn_infer_hi(const RxState* st, uint32_t seq_hi, uint32_t low) noexcept nogil:
    """The high word of a received ESN sequence number (RFC 4303 App. A2.2) with a window
    of 2^31: the one that puts it closest to the highest authenticated number; the stack
    applies its own (smaller) window afterwards."""
    cdef uint32_t tl, th
    cdef uint32_t w1 = 0x7FFFFFFF  # window - 1
    if not st.seen:
        return seq_hi
    tl = <uint32_t>st.top
    th = <uint32_t>(st.top >> 32)
    if tl >= w1:
        if low >= tl - w1:
            return th
        return th + 1
    if low >= <uint32_t>(tl - w1) and th > 0:
        return th - 1
    return th


cdef enum:
    RX_PROV_SLOTS = 256  # direct-mapped by key row; a collision falls back to the committed state
    # AES-GCM texts from this long are opened out of place (rx_run); a shorter one's copy
    # costs less than the extra memcpy call its gap in the arena copy would
    RX_OPEN_FROM_MIN = 512


cdef inline RxState* rx_provisional(RxState* states, RxState* prov, int32_t* prov_rows,
                                    int32_t row) noexcept nogil:
    """The batch's running copy of a key row's state: ESN numbers of the frames before this
    one count as if they verify (the sender's order), so a batch that crosses 2^32 infers
    the new high word at once; rx_run retries any frame this misled. NULL when the row's
    place is taken by another row (that row then infers from the committed state)."""
    cdef int32_t k = row & (RX_PROV_SLOTS - 1)
    if prov_rows[k] == row:
        return prov + k
    if prov_rows[k] == -1:
        prov_rows[k] = row
        prov[k] = states[row]
        return prov + k
    return NULL


cdef inline bint rx_addr_eq(const uint8_t* a, const uint8_t* b, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef int64_t rx_lookup(const RxSaKey* keys, int64_t nkeys, uint32_t spi, bint ipv6,
                       const uint8_t* src, const uint8_t* dst, bint udp) noexcept nogil:
    """The first inbound transform with this SPI whose endpoints (zero = wildcard), IP
    version and UDP encapsulation match; -1 if none."""
    cdef int64_t lo = 0, hi = nkeys, mid
    cdef int alen = 16 if ipv6 else 4
    cdef const RxSaKey* k
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid].spi < spi:
            lo = mid + 1
        else:
            hi = mid
    while lo < nkeys and keys[lo].spi == spi:
        k = keys + lo
        if (k.ipv6 == ipv6 and (k.udp_encap != 0) == udp
                and (not k.has_dst or rx_addr_eq(k.dst, dst, alen))
                and (not k.has_src or rx_addr_eq(k.src, src, alen))):
            return lo
        lo += 1
    return -1


cdef inline uint32_t rx_seq_hi(const Transform* xf, RxState* states, RxState* prov,
                               int32_t* prov_rows, uint32_t low) noexcept nogil:
    """The ESN high word to check a received number with (0 without ESN)."""
    cdef RxState* pst
    if not xf.esn:
        return 0
    pst = rx_provisional(states, prov, prov_rows, xf.key_row)
    return esn_infer_hi(pst if pst != NULL else states + xf.key_row, xf.seq_hi, low)


cdef inline void rx_op_init(CryptoOp* op, const Transform* xf, int kind, int64_t l2,
                            uint32_t hi) noexcept nogil:
    zero_struct(op, sizeof(CryptoOp))
    op.ip_off = l2
    op.key_row = xf.key_row
    op.seq_hi = hi
    op.kind = kind
    op.suite = xf.suite
    op.integ = xf.integ
    op.iv_len = xf.iv_len
    op.icv_len = xf.icv_len
    op.esn = xf.esn
    op.status = OP_PENDING


cdef inline bint rx_nat_t_port(const uint16_t* ports, int nports, uint16_t port) noexcept nogil:
    cdef int i
    for i in range(nports):
        if ports[i] == port:
            return True
    return False


cdef int rx_classify_one(const uint8_t* f, int64_t flen, int64_t l2, int cfg,
                         const SaRecord* recs, int64_t nrec, const RxSaKey* keys,
                         int64_t nkeys, RxState* states, RxState* prov, int32_t* prov_rows,
                         RxPlan* p, CryptoOp* op, CryptoOp* ah_op, const uint16_t* ports,
                         int nports) except -1 nogil:
    """Fill the plan of one frame; returns RX_NEEDS_OPEN when it needs an ESP open op
    (written to op), plus RX_NEEDS_VERIFY when it needs an AH verify op (written to ah_op;
    rx_run then makes the ICV-input copy its auth_off names). UDP is UDP-ESP when its source
    or destination port is one of the ``nports`` NAT-T ports (docs/spec-gaps.md G31)."""
    cdef int64_t ihl, off, ip_end, end, ext_len, esp_off, k, text_len, ah_len, unpadded
    cdef int version, nh, proto, guard, needs = 0, esp_bit, ah_bit
    cdef bint ipv6, options = False, udp = False
    cdef uint16_t sport, dport
    cdef uint32_t spi, low, hi
    cdef const uint8_t* src
    cdef const uint8_t* dst
    cdef const SaRecord* rec
    cdef const Transform* xf
    cdef const RxSaKey* key
    zero_struct(p, sizeof(RxPlan))
    p.slot = -1
    p.op = -1
    p.ah_op = -1
    p.ip_off = l2
    if l2 < 0 or flen < l2 + 20:
        rx_no_info(p, RX_NOT_IP)
        return 0
    check(l2, 20, flen)
    version = f[l2] >> 4
    if version == 4:
        ipv6 = False
        ihl = (f[l2] & 0xF) * 4
        ip_end = l2 + ld16(f + l2 + 2)
        if ihl < 20 or l2 + ihl > flen or ip_end < l2 + ihl:
            rx_no_info(p, RX_NOT_IP)
            return 0
        esp_bit, ah_bit = CFG_ESP_IPV4, CFG_AH_IPV4
        if not cfg & (esp_bit | ah_bit):
            rx_no_info(p, RX_OFFLOAD_OFF)
            return 0
        if ld16(f + l2 + 6) & 0x3FFF:
            rx_no_info(p, RX_FRAGMENT)
            return 0
        proto = f[l2 + 9]
        p.nh_off = <int32_t>(l2 + 9)
        off = l2 + ihl
        options = ihl > 20
        src = f + l2 + 12
        dst = f + l2 + 16
    elif version == 6:
        ipv6 = True
        if flen < l2 + 40:
            rx_no_info(p, RX_NOT_IP)
            return 0
        check(l2, 40, flen)
        ip_end = l2 + 40 + ld16(f + l2 + 4)
        esp_bit, ah_bit = CFG_ESP_IPV6, CFG_AH_IPV6
        if not cfg & (esp_bit | ah_bit):
            rx_no_info(p, RX_OFFLOAD_OFF)
            return 0
        proto = f[l2 + 6]
        p.nh_off = <int32_t>(l2 + 6)
        off = l2 + 40
        src = f + l2 + 8
        dst = f + l2 + 24
        end = ip_end if ip_end < flen else flen
        # hop-by-hop, routing and destination options before AH/ESP (RFC 8200 §4.1)
        while proto == 0 or proto == 43 or proto == 60:
            if off + 8 > end:
                rx_no_info(p, RX_NOT_IPSEC)
                return 0
            check(off, 2, flen)
            ext_len = (f[off + 1] + 1) * 8
            p.nh_off = <int32_t>off
            proto = f[off]
            off += ext_len
            options = True
        if proto == 44:
            rx_no_info(p, RX_FRAGMENT)
            return 0
    else:
        rx_no_info(p, RX_NOT_IP)
        return 0
    p.ipv6 = ipv6
    p.ip_end = ip_end
    end = ip_end if ip_end < flen else flen
    if proto == 17:
        if off + 8 > end:
            rx_no_info(p, RX_NOT_IPSEC)
            return 0
        check(off, 8, flen)
        sport = ld16(f + off)
        dport = ld16(f + off + 2)
        if not rx_nat_t_port(ports, nports, sport) and not rx_nat_t_port(ports, nports, dport):
            rx_no_info(p, RX_NOT_IPSEC)
            return 0
        # RFC 3948 §2.2-2.3: a keepalive, the non-ESP marker of IKE, or ESP
        if end - (off + 8) == 1 and f[off + 8] == 0xFF:
            rx_no_info(p, RX_KEEPALIVE)
            return 0
        if end - (off + 8) >= 4 and check(off + 8, 4, flen) == 0 and ld32(f + off + 8) == 0:
            rx_no_info(p, RX_IKE)
            return 0
        if end - (off + 8) < 4:
            rx_no_info(p, RX_NOT_IPSEC)
            return 0
        p.udp_off = <int32_t>off
        udp = True
        off += 8
        proto = PROTO_ESP
    elif proto != PROTO_ESP and proto != PROTO_AH:
        rx_no_info(p, RX_NOT_IPSEC)
        return 0
    if not cfg & (ah_bit if proto == PROTO_AH else esp_bit):
        rx_no_info(p, RX_OFFLOAD_OFF)
        return 0
    # the SPI must be readable to find the SA; a frame cut after it is the SA's syntax error
    if off + (8 if proto == PROTO_AH else 4) > flen:
        rx_no_info(p, RX_SHORT)
        return 0
    check(off + (4 if proto == PROTO_AH else 0), 4, flen)
    spi = ld32(f + off + (4 if proto == PROTO_AH else 0))
    k = rx_lookup(keys, nkeys, spi, ipv6, src, dst, udp)
    if k < 0:
        rx_no_info(p, RX_NO_SA)
        return 0
    key = keys + k
    if key.slot < 0 or key.slot >= nrec:
        rx_no_info(p, RX_NO_SA)
        return 0
    rec = recs + key.slot
    # the capability gate: the NIC leaves these to the stack (docs/receive-path.md)
    if options and not cfg & (RXCFG_IPV6_EXT_HEADERS if ipv6 else RXCFG_IPV4_OPTIONS):
        rx_no_info(p, RX_GATED)
        return 0
    p.slot = key.slot
    p.layer = key.layer
    p.handle = rec.handle
    xf = &rec.xf[key.layer]
    if key.proto != proto or (proto == PROTO_ESP and rec.n_xf > 1):
        # an SPI found on the other protocol, or a bundle's ESP without its AH
        rx_fail(p, RX_BAD_PROTOCOL, CRYPTO_INVALID_PROTOCOL)
        return 0
    if rec.n_xf > 1 and not cfg & esp_bit:  # an AH+ESP bundle needs both offloads on
        rx_no_info(p, RX_OFFLOAD_OFF)
        p.slot = -1
        p.handle = 0
        return 0
    p.tunnel = states[xf.key_row].tunnel
    esp_off = off
    if proto == PROTO_AH:
        # RFC 4302 §2: Next Header, Payload Len ((AH length in 32-bit words) - 2), SPI, SN,
        # [IV], ICV, padding to 4 (IPv4) or 8 (IPv6) bytes
        ah_len = (<int64_t>f[off + 1] + 2) * 4
        unpadded = 12 + xf.iv_len + xf.icv_len
        p.ah_off = off
        p.ah_len = <int32_t>ah_len
        p.ah_layer = key.layer
        p.ah_next_header = f[off]
        if f[off] == 4 or f[off] == 41:
            p.tunnel = 1  # docs/spec-gaps.md G12: AH shows its layer without decryption
        if (ip_end > flen or ah_len != (unpadded + (7 if ipv6 else 3)) & ~(7 if ipv6 else 3)
                or off + ah_len > ip_end):
            rx_fail(p, RX_BAD_SYNTAX, CRYPTO_INVALID_PACKET_SYNTAX)
            return 0
        check(off, ah_len, flen)
        low = ld32(f + off + 8)
        hi = rx_seq_hi(xf, states, prov, prov_rows, low)
        p.ah_seq64 = (<uint64_t>hi << 32) | low
        p.seq64 = p.ah_seq64
        rx_op_init(ah_op, xf, OP_AH_VERIFY, l2, hi)
        ah_op.text_off = off + ah_len
        ah_op.text_len = ip_end - (off + ah_len)
        ah_op.icv_off = off + 12 + xf.iv_len
        if xf.suite == SUITE_AH_GMAC:
            memcpy(ah_op.nonce, xf.salt, 4)
            memcpy(ah_op.nonce + 4, f + off + 12, 8)
        p.crypto_done = 1
        needs = RX_NEEDS_VERIFY
        if rec.n_xf == 1:
            p.reason = RX_OK
            return needs
        # the bundle's ESP follows its AH (RFC 4301 §4.5, docs/protocol.md)
        esp_off = off + ah_len
        xf = &rec.xf[0]
        if f[off] != PROTO_ESP:
            rx_fail(p, RX_BAD_PROTOCOL, CRYPTO_INVALID_PROTOCOL)
            return 0
        if esp_off + 8 > ip_end:
            rx_fail(p, RX_BAD_SYNTAX, CRYPTO_INVALID_PACKET_SYNTAX)
            return 0
        check(esp_off, 8, flen)
        if ld32(f + esp_off) != xf.spi:
            rx_fail(p, RX_BAD_PROTOCOL, CRYPTO_INVALID_PROTOCOL)
            return 0
        p.layer = 0
        p.tunnel = states[xf.key_row].tunnel
    p.esp_off = esp_off
    p.text_off = esp_off + 8 + xf.iv_len
    p.icv_off = ip_end - xf.icv_len
    text_len = p.icv_off - p.text_off
    p.text_len = text_len
    if ip_end > flen or text_len < 2 or ((xf.suite == SUITE_AES_CBC_HMAC
                                          or xf.suite == SUITE_AES_CBC) and text_len % 16):
        rx_fail(p, RX_BAD_SYNTAX, CRYPTO_INVALID_PACKET_SYNTAX)
        return 0
    check(esp_off, 8 + xf.iv_len, flen)
    check(p.text_off, text_len + xf.icv_len, flen)
    low = ld32(f + esp_off + 4)
    hi = rx_seq_hi(xf, states, prov, prov_rows, low)
    p.seq64 = (<uint64_t>hi << 32) | low
    p.crypto_done = 1
    rx_op_init(op, xf, OP_ESP_OPEN, l2, hi)
    op.auth_off = esp_off
    op.text_off = p.text_off
    op.text_len = text_len
    op.icv_off = p.icv_off
    if xf.suite == SUITE_AES_GCM or xf.suite == SUITE_AES_GMAC:
        memcpy(op.nonce, xf.salt, 4)
        memcpy(op.nonce + 4, f + esp_off + 8, 8)
    return needs | RX_NEEDS_OPEN
