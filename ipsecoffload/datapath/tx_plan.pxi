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


cdef inline int64_t ops_per_segment(const NbPlan* p, const SaRecord* recs) noexcept nogil:
    """Crypto ops of one protected segment: one per layer (ESP seal, AH sign)."""
    if p.slot < 0:
        return 0
    return recs[p.slot].n_xf


cdef inline int64_t ah_scratch_len(const NbPlan* p) noexcept nogil:
    """Scratch bytes of one AH segment: its IP header region through the AH header."""
    if p.slot < 0 or p.ah_off == 0:
        return 0
    return <int64_t>p.ah_off + p.ah_len - p.ip_off


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
            if random_iv(p, recs):
                t.rand_bytes += p.nsegs * <int64_t>recs[p.slot].xf[0].iv_len
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
