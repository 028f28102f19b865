# rx_complete and rx_run: after the open ops, the receive indication of every frame
# (CryptoDone, CryptoStatus, the receive header info) and the NIC's ESN state; rx_run chains
# rx_classify, the backends and rx_complete in one compiled call. Included by _fastpath.pyx.


cdef int rx_complete_one(const uint8_t* frame_in, uint8_t* frame_out, int64_t flen,
                         RxPlan* p, const CryptoOp* op, RxState* st,
                         uint32_t delete_after) except -1 nogil:
    """Read the verified trailer, or put a failed frame back as it came. With a SaDeleteReq
    policy (``delete_after`` ICV failures), every frame of an SA past it asks for deletion."""
    cdef uint8_t padl, nh
    cdef int64_t k
    if op.status != OP_DONE and st.auth_failures < <uint32_t>0xFFFFFFFF:
        st.auth_failures += 1
    if delete_after and st.auth_failures >= delete_after:
        p.sa_delete_req = 1
    check(p.text_off, p.text_len, flen)
    if op.status != OP_DONE:
        memcpy(frame_out + p.text_off, frame_in + p.text_off, p.text_len)
        rx_fail(p, RX_AUTH_FAILED, CRYPTO_TUNNEL_ESP_AUTH_FAILED if st.tunnel
                else CRYPTO_TRANSPORT_ESP_AUTH_FAILED)
        return 0
    # authenticated: the sequence number counts for ESN inference whatever follows
    if not st.seen or p.seq64 > st.top:
        st.top = p.seq64
    st.seen = 1
    padl = frame_out[p.icv_off - 2]
    nh = frame_out[p.icv_off - 1]
    if padl + 2 > p.text_len:
        memcpy(frame_out + p.text_off, frame_in + p.text_off, p.text_len)
        rx_fail(p, RX_BAD_SYNTAX, CRYPTO_INVALID_PACKET_SYNTAX)
        return 0
    p.pad_ok = 1
    for k in range(padl):
        if frame_out[p.icv_off - 2 - padl + k] != <uint8_t>(k + 1):
            p.pad_ok = 0
            break
    if nh == 4 or nh == 41:
        st.tunnel = 1
    p.tunnel = nh == 4 or nh == 41
    p.next_header = nh
    p.pad_length = padl
    p.header_info_set = 1
    p.reason = RX_OK
    p.crypto_status = CRYPTO_SUCCESS
    return 0


cdef rx_retry(out_arr, ops_arr, int64_t nretry, keys, backends):
    """Open again the ops marked for a retry (status OP_PENDING), as one smaller op table."""
    cdef uint8_t[::1] ops_mv = ops_arr
    cdef CryptoOp* op0 = <CryptoOp*>&ops_mv[0]
    cdef int64_t n = ops_mv.shape[0] // sizeof(CryptoOp), i, k = 0
    retry_arr = np.empty(nretry * sizeof(CryptoOp), np.uint8)
    cdef CryptoOp* r0 = <CryptoOp*>array_data(retry_arr)
    for i in range(n):
        if op0[i].reserved[0] and op0[i].status == OP_PENDING and k < nretry:
            r0[k] = op0[i]
            r0[k].reserved2[0] = 0
            k += 1
    run_op_groups(out_arr, retry_arr[:k * sizeof(CryptoOp)], keys, backends, "open")
    k = 0
    for i in range(n):
        if op0[i].reserved[0] and op0[i].status == OP_PENDING and k < nretry:
            op0[i].status = r0[k].status
            k += 1


def rx_run(batch, table, rx_state, int config, backends, lock, uint32_t delete_after=0):
    """Receive ``batch`` (one frame per NET_BUFFER) with the SA table snapshot ``table``
    (records_bytes, rx_keys, keys) and the NIC's receive state ``rx_state`` (RX_STATE_DTYPE,
    updated under ``lock``); ``delete_after`` > 0 sets SaDeleteReq on the frames of an SA
    with that many ICV failures. Returns (out, plans, ops, counters): ``out`` is a copy of the
    arena with every verified ESP text decrypted in place."""
    cdef BatchView b = BatchView(batch)
    cdef const uint8_t[::1] records = table.records_bytes
    cdef const uint8_t[::1] key_bytes = table.rx_keys
    cdef uint8_t[::1] state_bytes = rx_state.view(np.uint8)
    cdef int64_t nrec = records.shape[0] // sizeof(SaRecord)
    cdef int64_t nkeys = key_bytes.shape[0] // sizeof(RxSaKey)
    if records.shape[0] % sizeof(SaRecord) or key_bytes.shape[0] % sizeof(RxSaKey) \
            or state_bytes.shape[0] % sizeof(RxState):
        raise ValueError("records, rx_keys or rx_state size does not match its layout")
    cdef int64_t nrows = state_bytes.shape[0] // sizeof(RxState)
    if nrows < 2 * nrec:
        raise ValueError("rx_state holds fewer rows than the table's key rows")
    cdef const SaRecord* recs = <const SaRecord*>&records[0] if nrec else NULL
    cdef const RxSaKey* keys = <const RxSaKey*>&key_bytes[0] if nkeys else NULL
    cdef RxState* states = <RxState*>&state_bytes[0] if nrows else NULL
    cdef int64_t n = b.n_nb, i, nops = 0, nretry = 0, l2
    plans_arr = np.empty(n * sizeof(RxPlan), np.uint8)
    ops_arr = np.empty(n * sizeof(CryptoOp), np.uint8)
    counters_arr = np.zeros(RX_REASON_COUNT, np.int64)
    out_arr = np.array(batch.arena, dtype=np.uint8, copy=True)
    cdef RxPlan* plan0 = <RxPlan*>array_data(plans_arr) if n else NULL
    cdef CryptoOp* op0 = <CryptoOp*>array_data(ops_arr) if n else NULL
    cdef RxState prov[RX_PROV_SLOTS]
    cdef int32_t prov_rows[RX_PROV_SLOTS]
    cdef int64_t* counters = <int64_t*>array_data(counters_arr)
    cdef uint8_t* out = <uint8_t*>array_data(out_arr) if b.arena_size else NULL
    cdef const uint8_t* arena = b.c_arena
    cdef const int64_t* nb_off = b.c_nb_off
    cdef const int64_t* nb_len = b.c_nb_len
    cdef const int32_t* nb_nbl = b.c_nb_nbl
    cdef const NblOob* oob = b.c_oob
    cdef RxPlan* p
    cdef CryptoOp* op
    cdef RxState* st
    with nogil:
        for i in range(RX_PROV_SLOTS):
            prov_rows[i] = -1
        for i in range(n):
            l2 = oob[nb_nbl[i]].l2_len
            if rx_classify_one(arena + nb_off[i], nb_len[i], l2, config, recs, nrec, keys,
                               nkeys, states, prov, prov_rows, plan0 + i, op0 + nops):
                op = op0 + nops
                plan0[i].op = <int32_t>nops
                op.frame = <int32_t>i
                # the op's offsets are frame-relative until here: make them arena offsets
                op.auth_off += nb_off[i]
                op.text_off += nb_off[i]
                op.icv_off += nb_off[i]
                op.ip_off += nb_off[i]
                if op.esn:
                    st = rx_provisional(states, prov, prov_rows, op.key_row)
                    if st != NULL and (not st.seen or plan0[i].seq64 > st.top):
                        st.top = plan0[i].seq64
                    if st != NULL:
                        st.seen = 1
                nops += 1
    ops_arr = ops_arr[:nops * sizeof(CryptoOp)]
    if nops:
        run_op_groups(out_arr, ops_arr, table.keys, backends, "open")
    op0 = <CryptoOp*>array_data(ops_arr) if nops else NULL
    cdef uint32_t hi
    with lock:
        with nogil:
            for i in range(n):
                p = plan0 + i
                if p.op < 0:
                    continue
                op = op0 + p.op
                st = states + op.key_row
                if op.status != OP_DONE and op.esn:
                    # inferred from frames that did not verify: try the committed state
                    hi = esn_infer_hi(st, recs[p.slot].xf[p.layer].seq_hi, <uint32_t>p.seq64)
                    if hi != op.seq_hi:
                        memcpy(out + nb_off[i] + p.text_off, arena + nb_off[i] + p.text_off,
                               p.text_len)
                        op.seq_hi = hi
                        op.status = OP_PENDING
                        op.reserved[0] = 1  # retried
                        p.seq64 = (<uint64_t>hi << 32) | <uint32_t>p.seq64
                        nretry += 1
                        continue
                rx_complete_one(arena + nb_off[i], out + nb_off[i], nb_len[i], p, op, st,
                                delete_after)
        if nretry:
            rx_retry(out_arr, ops_arr, nretry, table.keys, backends)
            with nogil:
                for i in range(n):
                    p = plan0 + i
                    if p.op >= 0 and op0[p.op].reserved[0]:
                        rx_complete_one(arena + nb_off[i], out + nb_off[i], nb_len[i], p,
                                        op0 + p.op, states + op0[p.op].key_row, delete_after)
        for i in range(n):
            counters[plan0[i].reason] += 1
    return out_arr, plans_arr, ops_arr, counters_arr
