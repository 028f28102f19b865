# tx_plan: NBL-level outcome and the layout of the output, from the classified plans:
# an NBL with a failing NET_BUFFER sends none of them; every sending NET_BUFFER gets its
# output position, first frame, first crypto op and random-IV bytes; each NBL its status
# and LSO completion value; the batch its counters. Included by _fastpath.pyx.

# Status counters that tx_plan fills after the REASON_COUNT reason counters.
cpdef enum StatusCounter:
    COUNT_SUCCESS = 0
    COUNT_FAILURE = 1
    COUNT_INVALID_PACKET = 2
    COUNT_OTHER_STATUS = 3
    STATUS_COUNTERS = 4

cdef enum:
    N_COUNTERS = REASON_COUNT + STATUS_COUNTERS

COUNTERS = N_COUNTERS

cdef extern from *:
    """
    #define IPO_MAX_OUTPUT ((int64_t)1 << 48)
    #define IPO_LSO_TYPE_BIT ((uint64_t)1 << 30)
    #define IPO_LSO_V1_PAYLOAD_MASK (((uint64_t)1 << 30) - 1)
    """
    const int64_t MAX_OUTPUT "IPO_MAX_OUTPUT"  # bytes one batch may produce: sums cannot wrap
    const uint64_t LSO_TYPE_BIT "IPO_LSO_TYPE_BIT"
    const uint64_t LSO_V1_PAYLOAD_MASK "IPO_LSO_V1_PAYLOAD_MASK"


cdef inline bint random_iv(const NbPlan* p, const SaRecord* recs) noexcept nogil:
    """The NIC draws this segment's IV at random (CBC); GCM and GMAC IVs are the SN."""
    cdef uint8_t suite
    if p.slot < 0 or not p.fresh_iv:
        return False
    suite = recs[p.slot].xf[0].suite
    return suite != SUITE_AES_GCM and suite != SUITE_AES_GMAC and suite != SUITE_AH_GMAC


cdef inline bint random_suite(uint8_t suite) noexcept nogil:
    return suite != SUITE_AES_GCM and suite != SUITE_AES_GMAC and suite != SUITE_AH_GMAC


cdef inline int64_t rand_len(const NbPlan* p, const SaRecord* recs) noexcept nogil:
    """Random IV bytes of one segment: its layer's CBC IV, and for transport over tunnel
    the transport layer's after it."""
    cdef int64_t n = 0
    if random_iv(p, recs):
        n = recs[p.slot].xf[0].iv_len
    if p.slot >= 0 and p.nested and p.in_fresh_iv and random_suite(recs[p.in_slot].xf[0].suite):
        n += recs[p.in_slot].xf[0].iv_len
    return n


cdef inline int64_t ops_per_segment(const NbPlan* p, const SaRecord* recs) noexcept nogil:
    """Crypto ops of one protected segment: one per layer (ESP seal, AH sign), of both
    SAs for transport over tunnel."""
    if p.slot < 0:
        return 0
    if p.nested:
        return recs[p.slot].n_xf + recs[p.in_slot].n_xf
    return recs[p.slot].n_xf


cdef inline int64_t outer_scratch_len(const NbPlan* p) noexcept nogil:
    """Scratch bytes of the plan's own AH layer: its IP header region through the AH header."""
    if p.slot < 0 or p.ah_off == 0:
        return 0
    return <int64_t>p.ah_off + p.ah_len - p.ip_off


cdef inline int64_t ah_scratch_len(const NbPlan* p) noexcept nogil:
    """Scratch bytes of one AH segment: its IP header region through the AH header; for
    transport over tunnel the transport layer's region after the tunnel layer's."""
    cdef int64_t n = outer_scratch_len(p)
    if p.slot >= 0 and p.nested and p.in_ah_off != 0:
        n += <int64_t>p.in_ah_off + p.in_ah_len - p.in_ip_off
    return n


ctypedef struct TxTotals:
    int64_t out_bytes
    int64_t frames
    int64_t ops
    int64_t rand_bytes
    int64_t scratch_bytes     # AH ICV-input copies, after the frames in the output arena


cdef int tx_plan_check(BatchView b, const SaRecord* recs, const NbPlan* plan0, int64_t n_nb,
                       int64_t nrec) except -1:
    cdef int64_t i, total = 0
    cdef const NbPlan* p
    for i in range(n_nb):
        p = plan0 + i
        if (p.nbl < 0 or p.nbl >= b.n_nbl or p.nsegs < 0 or p.out_len < 0
                or (p.nsegs == 0 and p.out_len != 0) or p.reason >= REASON_COUNT
                or (p.slot >= 0 and (p.slot >= nrec or recs[p.slot].n_xf > 2))
                or (p.slot >= 0 and p.nested and (p.in_slot < 0 or p.in_slot >= nrec
                                                  or recs[p.in_slot].n_xf > 2
                                                  or p.in_ah_off < 0 or p.in_ah_len < 0
                                                  or p.in_ah_len > 1020
                                                  or p.in_ah_off > p.in_end))
                or p.ah_off < 0 or p.ah_len < 0 or p.ah_len > 1020
                or p.out_len > MAX_OUTPUT - total):
            raise ValueError(f"plan {i} is corrupt")
        total += p.out_len
    return 0


cdef TxTotals tx_plan_run(BatchView b, const SaRecord* recs, NbPlan* plan0, int64_t n_nb,
                          uint32_t* nbl_status, uint64_t* lso_done,
                          int64_t* counters) noexcept nogil:
    cdef TxTotals t
    cdef int64_t i, n_nbl = b.n_nbl
    cdef const NblOob* oob = b.c_oob
    cdef NbPlan* p
    cdef uint32_t st
    memset(&t, 0, sizeof(TxTotals))
    for i in range(n_nbl):
        nbl_status[i] = 0
        lso_done[i] = 0
    for i in range(N_COUNTERS):
        counters[i] = 0
    for i in range(n_nb):
        p = plan0 + i
        if p.status != 0 and nbl_status[p.nbl] == 0:
            nbl_status[p.nbl] = p.status
    for i in range(n_nb):
        p = plan0 + i
        if nbl_status[p.nbl] != 0 and p.status == 0:
            p.status = nbl_status[p.nbl]
            p.reason = REASON_NBL_FAILED
            p.nsegs = 0
            p.out_len = 0
        counters[p.reason] += 1
        p.out_pos = t.out_bytes
        p.frame0 = t.frames
        p.op0 = t.ops
        p.rand_off = t.rand_bytes
        p.scratch_pos = t.scratch_bytes
        t.out_bytes += p.out_len
        t.frames += p.nsegs
        t.scratch_bytes += p.nsegs * ah_scratch_len(p)
        if p.slot >= 0:
            t.ops += p.nsegs * ops_per_segment(p, recs)
            t.rand_bytes += p.nsegs * rand_len(p, recs)
        if p.lso and p.status == 0 and oob[p.nbl].lso_info != 0 \
                and not (oob[p.nbl].lso_info & LSO_TYPE_BIT):
            lso_done[p.nbl] += <uint64_t>p.body_len  # LSOv1 reports the TCP payload sent
    for i in range(n_nbl):
        st = nbl_status[i]
        if oob[i].lso_info != 0:
            if oob[i].lso_info & LSO_TYPE_BIT:
                lso_done[i] = LSO_TYPE_BIT  # LSOv2 completion keeps only its type
            elif st != 0:
                lso_done[i] = 0
            else:
                lso_done[i] &= LSO_V1_PAYLOAD_MASK
        if st == 0:
            counters[REASON_COUNT + COUNT_SUCCESS] += 1
        elif st == STATUS_FAILURE:
            counters[REASON_COUNT + COUNT_FAILURE] += 1
        elif st == STATUS_INVALID_PACKET:
            counters[REASON_COUNT + COUNT_INVALID_PACKET] += 1
        else:
            counters[REASON_COUNT + COUNT_OTHER_STATUS] += 1
    return t


def tx_plan(batch, const uint8_t[::1] records not None, uint8_t[::1] plans not None, uint32_t[::1] nbl_status not None,
            uint64_t[::1] lso_done not None, int64_t[::1] counters not None):
    """Returns (output arena bytes: the frames, then the AH scratch; frames, crypto ops,
    random IV bytes) and fills ``nbl_status``,
    ``lso_done`` (slot TcpLargeSendNetBufferListInfo after completion) and ``counters``
    (REASON_COUNT reason counts, then STATUS_COUNTERS NBL status counts)."""
    cdef BatchView b = BatchView(batch)
    cdef int64_t n_nb = plans.shape[0] // sizeof(NbPlan)
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    if plans.shape[0] % sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    if nbl_status.shape[0] != b.n_nbl or lso_done.shape[0] != b.n_nbl:
        raise ValueError("nbl_status and lso_done need one entry per NBL")
    if counters.shape[0] != N_COUNTERS:
        raise ValueError(f"counters needs {N_COUNTERS} entries")
    cdef NbPlan* plan0 = <NbPlan*>&plans[0] if n_nb else NULL
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    tx_plan_check(b, recs, plan0, n_nb, nrec)
    cdef TxTotals t
    with nogil:
        t = tx_plan_run(b, recs, plan0, n_nb, &nbl_status[0] if b.n_nbl else NULL,
                        &lso_done[0] if b.n_nbl else NULL, &counters[0])
    return t.out_bytes + t.scratch_bytes, t.frames, t.ops, t.rand_bytes


# -- the sealed high-water mark of AEAD SAs (docs/send-path.md, "Nonce safety") ---------------

cdef inline bint aead_suite(uint8_t suite) noexcept nogil:
    """AES-GCM and AES-GMAC: the nonce is salt + the 64-bit SN (RFC 4106 §3.1, RFC 4543 §3.1)."""
    return suite == SUITE_AES_GCM or suite == SUITE_AES_GMAC or suite == SUITE_AH_GMAC


cdef int64_t tx_mark_run(BatchView b, const SaRecord* recs, NbPlan* plan0, int64_t n_nb,
                         uint64_t* marks, int64_t n_rows) noexcept nogil:
    """In batch order, every NET_BUFFER that classify left sending and that seals under an
    AEAD transform: its first SN (segment 0) must lie above the transform's mark (the last
    SN it sealed), else the NET_BUFFER fails with SEQ_REUSED; then the mark moves to its
    last SN. NBLs that classify already fails are skipped. ``marks`` holds (handle, mark)
    per key row; a row whose handle is not the record's (the SA was deleted after the
    snapshot) fails the NET_BUFFER with UNKNOWN_HANDLE. Returns how many failed."""
    cdef int64_t i = 0, j, k, row, failed = 0
    cdef NbPlan* p
    cdef const SaRecord* rec
    cdef const uint8_t* frame
    cdef uint64_t first[4]
    cdef uint64_t last[4]
    cdef int64_t rows[4]
    cdef bint use[4]
    cdef bint bad, skip
    cdef int layer, e
    cdef int32_t sl
    cdef uint64_t ah_sn
    while i < n_nb:
        j = i
        skip = False
        while j < n_nb and plan0[j].nbl == plan0[i].nbl:
            if plan0[j].status != 0:
                skip = True
            j += 1
        if skip:
            i = j
            continue
        for k in range(i, j):
            p = plan0 + k
            if p.slot < 0 or p.nsegs <= 0:
                continue
            rec = recs + p.slot
            if not p.nested and rec.n_xf == 1:  # one layer (the usual case): row 2 * slot
                if not aead_suite(rec.xf[0].suite):
                    continue
                row = 2 * <int64_t>p.slot
                if row >= n_rows or marks[2 * row] != rec.handle:
                    fail(p, STATUS_FAILURE, REASON_UNKNOWN_HANDLE)
                    failed += 1
                elif p.sn64 <= marks[2 * row + 1]:
                    fail(p, STATUS_FAILURE, REASON_SEQ_REUSED)
                    failed += 1
                else:
                    marks[2 * row + 1] = p.sn64 + <uint64_t>(p.nsegs - 1)
                continue
            bad = False
            # the layers: (slot, layer) of the plan's SA, then of the transport SA inside it
            for e in range(4):
                use[e] = False
                if e >= 2 and not p.nested:
                    continue
                sl = p.slot if e < 2 else p.in_slot
                layer = e & 1
                rec = recs + sl
                if layer >= rec.n_xf or not aead_suite(rec.xf[layer].suite):
                    continue
                row = 2 * <int64_t>sl + layer
                if row >= n_rows or marks[2 * row] != rec.handle:
                    fail(p, STATUS_FAILURE, REASON_UNKNOWN_HANDLE)
                    bad = True
                    break
                if layer == 1:  # the AH of an AH + ESP bundle: its own SN, in the frame
                    frame = b.c_arena + b.c_nb_off[k]
                    ah_sn = ld32(frame + (p.ah_off if e < 2 else p.in_ah_off) + 8)
                    if rec.xf[1].esn:
                        ah_sn |= <uint64_t>rec.xf[1].seq_hi << 32
                    first[e] = ah_sn
                else:
                    first[e] = p.sn64 if e < 2 else p.in_sn64
                last[e] = first[e] + <uint64_t>(p.nsegs - 1)
                if first[e] <= marks[2 * row + 1]:
                    fail(p, STATUS_FAILURE, REASON_SEQ_REUSED)
                    bad = True
                    break
                rows[e] = row
                use[e] = True
            if bad:
                failed += 1
                continue
            for e in range(4):
                if use[e]:
                    marks[2 * rows[e] + 1] = last[e]
        i = j
    return failed


def tx_mark(batch, const uint8_t[::1] records not None, uint8_t[::1] plans not None,
            uint64_t[::1] marks not None):
    """The sealed high-water mark check of classified ``plans`` (between tx_classify and
    tx_plan; the caller holds the table's mark lock). ``marks``: (handle, mark) per key row
    (slot * 2 + layer). Returns how many NET_BUFFERs it failed."""
    cdef BatchView b = BatchView(batch)
    cdef int64_t n_nb = plans.shape[0] // sizeof(NbPlan)
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    if plans.shape[0] != b.n_nb * <int64_t>sizeof(NbPlan) or records.shape[0] % sizeof(SaRecord):
        raise ValueError("plans / records buffer size does not match the struct layout")
    if marks.shape[0] % 2:
        raise ValueError("marks holds (handle, mark) pairs")
    cdef NbPlan* plan0 = <NbPlan*>&plans[0] if n_nb else NULL
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    tx_mark_check(b, recs, plan0, n_nb, nrec)
    cdef uint64_t* m = &marks[0] if marks.shape[0] else NULL
    cdef int64_t failed
    with nogil:
        failed = tx_mark_run(b, recs, plan0, n_nb, m, marks.shape[0] // 2)
    return failed


cdef int tx_mark_check(BatchView b, const SaRecord* recs, const NbPlan* plan0, int64_t n_nb,
                       int64_t nrec) except -1:
    """What tx_mark_run reads: slots inside the table, an AH offset of a bundle inside its
    frame, NBLs in order."""
    cdef int64_t i
    cdef const NbPlan* p
    for i in range(n_nb):
        p = plan0 + i
        if p.nbl != b.c_nb_nbl[i] or (p.slot >= nrec) or (
                p.status == 0 and p.slot >= 0 and recs[p.slot].n_xf == 2
                and (p.ah_off < 0 or p.ah_off + 12 > b.c_nb_len[i])) or (
                p.status == 0 and p.slot >= 0 and p.nested and (
                    p.in_slot < 0 or p.in_slot >= nrec or (recs[p.in_slot].n_xf == 2 and (
                        p.in_ah_off < 0 or p.in_ah_off + 12 > b.c_nb_len[i])))):
            raise ValueError(f"plan {i} is corrupt")
    return 0


# -- LSO capability limits and the output cap (docs/send-path.md, "Limits") --------------------

cdef extern from *:
    """
    #define IPO_STATUS_RESOURCES ((uint32_t)0xC000009AU)
    """
    const uint32_t STATUS_RESOURCES "IPO_STATUS_RESOURCES"

cdef enum:
    N_LIMITS = 7   # (MaxOffLoadSize, MinSegmentCount) of LSOv1, LSOv2 IPv4, LSOv2 IPv6; cap


cdef int64_t tx_limit_run(BatchView b, NbPlan* plan0, int64_t n_nb,
                          const int64_t* limits) noexcept nogil:
    """Every LSO NET_BUFFER classify left sending: its TCP payload at most MaxOffLoadSize and
    at least MinSegmentCount segments of its LSO kind (NDIS_TCP_LARGE_SEND_OFFLOAD_V1 / _V2),
    else LSO_LIMIT. Then, NBL by NBL in order, the output so far plus this NBL's must stay
    within ``limits[6]`` bytes, else its NET_BUFFERs fail with NDIS_STATUS_RESOURCES
    (OUTPUT_LIMIT): one send never allocates more. Returns how many it failed."""
    cdef int64_t i, j, k, idx, total = 0, nbl_bytes, failed = 0
    cdef NbPlan* p
    cdef bint ok
    for i in range(n_nb):
        p = plan0 + i
        if p.status != 0 or p.lso == 0:
            continue
        idx = 0 if p.lso == 1 else (4 if p.ipv6 else 2)
        if p.body_len > limits[idx] or p.nsegs < limits[idx + 1]:
            fail(p, STATUS_FAILURE, REASON_LSO_LIMIT)
            failed += 1
    i = 0
    while i < n_nb:
        j = i
        ok = True
        nbl_bytes = 0
        while j < n_nb and plan0[j].nbl == plan0[i].nbl:
            if plan0[j].status != 0:
                ok = False
            nbl_bytes += plan0[j].out_len
            j += 1
        if ok:
            if nbl_bytes > limits[6] - total:
                for k in range(i, j):
                    fail(plan0 + k, STATUS_RESOURCES, REASON_OUTPUT_LIMIT)
                    failed += 1
            else:
                total += nbl_bytes
        i = j
    return failed


cdef int tx_limit_check(BatchView b, const NbPlan* plan0, int64_t n_nb,
                        const int64_t* limits, int64_t n_limits) except -1:
    cdef int64_t i
    if n_limits != N_LIMITS:
        raise ValueError(f"limits needs {N_LIMITS} entries")
    for i in range(N_LIMITS):
        if limits[i] < 0:
            raise ValueError("limits must not be negative")
    for i in range(n_nb):
        if plan0[i].nbl != b.c_nb_nbl[i] or plan0[i].out_len < 0 or plan0[i].out_len > MAX_OUTPUT:
            raise ValueError(f"plan {i} is corrupt")
    return 0


def tx_limit(batch, uint8_t[::1] plans not None, const int64_t[::1] limits not None):
    """The LSO limits and the output cap over classified ``plans`` (between tx_classify and
    tx_mark). ``limits``: MaxOffLoadSize, MinSegmentCount of LSOv1, LSOv2 IPv4, LSOv2 IPv6,
    then the output cap in bytes. Returns how many NET_BUFFERs it failed."""
    cdef BatchView b = BatchView(batch)
    cdef int64_t n_nb = plans.shape[0] // sizeof(NbPlan)
    if plans.shape[0] != b.n_nb * <int64_t>sizeof(NbPlan):
        raise ValueError("plans buffer size does not match the struct layout")
    cdef NbPlan* plan0 = <NbPlan*>&plans[0] if n_nb else NULL
    tx_limit_check(b, plan0, n_nb, &limits[0] if limits.shape[0] else NULL, limits.shape[0])
    cdef int64_t failed
    with nogil:
        failed = tx_limit_run(b, plan0, n_nb, &limits[0])
    return failed
