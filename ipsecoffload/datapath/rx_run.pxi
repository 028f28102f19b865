# rx_complete and rx_run: after the verify and open ops, the receive indication of every frame
# (CryptoDone, CryptoStatus, the receive header info) and the NIC's ESN state; rx_run chains
# rx_classify, the backends (AH verify ops first, then ESP open ops: docs/receive-path.md step 8,
# "AH first, then ESP") and rx_complete in one compiled call. Included by _fastpath.pyx.


cdef inline void rx_count_up(RxState* st, uint64_t seq64) noexcept nogil:
    if not st.seen or seq64 > st.top:
        st.top = seq64
    st.seen = 1


cdef void rx_ah_complete_one(RxPlan* p, const CryptoOp* aop, RxState* st,
                             uint32_t delete_after) noexcept nogil:
    """The AH layer's verdict. A failed AH fails the frame (its ESP is never opened); a
    verified one counts for ESN inference; AH alone then succeeds."""
    cdef bint tunnel = p.ah_next_header == 4 or p.ah_next_header == 41 or st.tunnel
    if aop.status != OP_DONE:
        if st.auth_failures < <uint32_t>0xFFFFFFFF:
            st.auth_failures += 1
        if delete_after and st.auth_failures >= delete_after:
            p.sa_delete_req = 1
        p.tunnel = tunnel
        rx_fail(p, RX_AUTH_FAILED, CRYPTO_TUNNEL_AH_AUTH_FAILED if tunnel
                else CRYPTO_TRANSPORT_AH_AUTH_FAILED)
        return
    if delete_after and st.auth_failures >= delete_after:
        p.sa_delete_req = 1
    rx_count_up(st, p.ah_seq64)
    if p.ah_next_header == 4 or p.ah_next_header == 41:
        st.tunnel = 1
    if p.op < 0:
        p.seq64 = p.ah_seq64
        p.tunnel = tunnel
        p.reason = RX_OK
        p.crypto_status = CRYPTO_SUCCESS


cdef int64_t rx_mark_misled(RxPlan* p, CryptoOp* op, const RxState* st, uint32_t seq_hi,
                            uint64_t* seq64) noexcept nogil:
    """An ESN op that failed with a high word inferred from frames that did not verify:
    mark it for a second try with the committed state's inference; 1 if marked."""
    cdef uint32_t hi
    if op.status == OP_DONE or not op.esn:
        return 0
    hi = esn_infer_hi(st, seq_hi, <uint32_t>seq64[0])
    if hi == op.seq_hi:
        return 0
    op.seq_hi = hi
    op.status = OP_PENDING
    op.reserved[0] = 1  # retried
    seq64[0] = (<uint64_t>hi << 32) | <uint32_t>seq64[0]
    return 1


cdef rx_open_pending(out_arr, ops_arr, keys, backends, src):
    """Open the ops still OP_PENDING (a bundle's ESP whose AH failed is not), as one op table;
    ``src``: the received arena, which out-of-place ops read (else None)."""
    cdef int64_t size
    cdef CryptoOp* op0 = <CryptoOp*>bytes_of(ops_arr, &size, True)
    cdef int64_t n = size // sizeof(CryptoOp), i, k = 0
    if n == 0:
        return
    for i in range(n):
        if op0[i].status == OP_PENDING:
            k += 1
    if k == n:
        run_op_groups(out_arr, ops_arr, keys, backends, "open", src)
        return
    if k == 0:
        return
    sub_arr = np.empty(k * sizeof(CryptoOp), np.uint8)
    cdef CryptoOp* s0 = <CryptoOp*>array_data(sub_arr)
    k = 0
    for i in range(n):
        if op0[i].status == OP_PENDING:
            s0[k] = op0[i]
            k += 1
    run_op_groups(out_arr, sub_arr, keys, backends, "open", src)
    k = 0
    for i in range(n):
        if op0[i].status == OP_PENDING:
            op0[i].status = s0[k].status
            k += 1


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


cdef int rx_ports(object nat_t_ports, uint16_t* ports) except -1:
    """The NAT-T ports of rx_run into ``ports`` (NAT_T_MAX_PORTS of room); returns how many."""
    cdef int n = 0
    bad = False
    try:
        values = list(nat_t_ports)
    except TypeError:
        values, bad = [], True
    if len(values) > NAT_T_MAX_PORTS:
        bad = True
    for v in values:
        if bad or isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 0xFFFF:
            bad = True
            break
        ports[n] = <uint16_t>v
        n += 1
    if bad:
        raise ValueError(f"nat_t_ports must be at most {NAT_T_MAX_PORTS} UDP ports from 1 to "
                         f"65535, got {nat_t_ports!r}")
    return n


cdef const uint8_t* bytes_of(object a, int64_t* size, bint writable) except? NULL:
    """The bytes of a plain uint8 array by pointer; anything else through a typed
    memoryview (kept alive by ``a``, which must then support the buffer protocol itself)."""
    cdef const uint8_t[::1] view
    if plain_array(a, cnp.NPY_UINT8, writable):
        size[0] = array_len(a)
        return <const uint8_t*>array_data(a) if size[0] else NULL
    view = a
    size[0] = view.shape[0]
    return &view[0] if size[0] else NULL


cdef uint8_t* rx_state_bytes(object rx_state, int64_t* size) except? NULL:
    """The RX_STATE_DTYPE array's bytes, writable: by pointer when it is a plain array of
    RxState rows, else through a uint8 view of it."""
    cdef cnp.ndarray arr
    cdef uint8_t[::1] view
    if type(rx_state) is cnp.ndarray:
        arr = <cnp.ndarray>rx_state
        if (cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_ITEMSIZE(arr) == sizeof(RxState)
                and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISWRITEABLE(arr)
                and cnp.PyArray_ISALIGNED(arr)):
            size[0] = cnp.PyArray_DIM(arr, 0) * <int64_t>sizeof(RxState)
            return <uint8_t*>cnp.PyArray_DATA(arr) if size[0] else NULL
    view = rx_state.view(np.uint8)
    size[0] = view.shape[0]
    return &view[0] if size[0] else NULL


def rx_run(batch, table, rx_state, int config, backends, lock, uint32_t delete_after=0,
           nat_t_ports=(NAT_T_PORT,), reuse=None):
    """Receive ``batch`` (one frame per NET_BUFFER) with the SA table snapshot ``table``
    (records_bytes, rx_keys, keys) and the NIC's receive state ``rx_state`` (RX_STATE_DTYPE,
    updated under ``lock``); ``delete_after`` > 0 sets SaDeleteReq on the frames of an SA
    with that many ICV failures; UDP to or from one of ``nat_t_ports`` (at most
    NAT_T_MAX_PORTS) is UDP-ESP (RFC 3948 §2). Returns (out, plans, ops, counters): ``out``
    is a copy of the arena with every verified ESP text decrypted in place; ``ops`` the ESP
    open ops, then the AH verify ops (RxPlan.op and RxPlan.ah_op index it). ``reuse``: an
    arena ``out`` may be made in (arena_from)."""
    cdef uint16_t ports[NAT_T_MAX_PORTS]
    cdef int nports = rx_ports(nat_t_ports, ports)
    cdef BatchView b = BatchView(batch)
    cdef int64_t rec_size, key_size, state_size
    cdef const uint8_t* rec_p = bytes_of(table.records_bytes, &rec_size, False)
    cdef const uint8_t* key_p = bytes_of(table.rx_keys, &key_size, False)
    cdef uint8_t* state_p = rx_state_bytes(rx_state, &state_size)
    cdef int64_t nrec = rec_size // sizeof(SaRecord)
    cdef int64_t nkeys = key_size // sizeof(RxSaKey)
    if rec_size % sizeof(SaRecord) or key_size % sizeof(RxSaKey) \
            or state_size % sizeof(RxState):
        raise ValueError("records, rx_keys or rx_state size does not match its layout")
    cdef int64_t nrows = state_size // sizeof(RxState)
    if nrows < 2 * nrec:
        raise ValueError("rx_state holds fewer rows than the table's key rows")
    cdef const SaRecord* recs = <const SaRecord*>rec_p if nrec else NULL
    cdef const RxSaKey* keys = <const RxSaKey*>key_p if nkeys else NULL
    cdef RxState* states = <RxState*>state_p if nrows else NULL
    cdef int64_t n = b.n_nb, i, nops = 0, nah = 0, nretry = 0, l2, copy_len = 0, hdr
    cdef int needs
    plans_arr = new_array(n * sizeof(RxPlan), cnp.NPY_UINT8)
    ops_arr = new_array(2 * n * sizeof(CryptoOp), cnp.NPY_UINT8)
    counters_arr = np.zeros(RX_REASON_COUNT, np.int64)
    cdef RxPlan* plan0 = <RxPlan*>array_data(plans_arr) if n else NULL
    cdef CryptoOp* op0 = <CryptoOp*>array_data(ops_arr) if n else NULL
    cdef CryptoOp* ah0 = op0 + n if n else NULL  # the AH ops, moved after the ESP ops below
    cdef RxState prov[RX_PROV_SLOTS]
    cdef int32_t prov_rows[RX_PROV_SLOTS]
    cdef int64_t* counters = <int64_t*>array_data(counters_arr)
    cdef const uint8_t* arena = b.c_arena
    cdef const int64_t* nb_off = b.c_nb_off
    cdef const int64_t* nb_len = b.c_nb_len
    cdef const int32_t* nb_nbl = b.c_nb_nbl
    cdef const NblOob* oob = b.c_oob
    cdef int64_t asize = b.arena_size
    cdef RxPlan* p
    cdef CryptoOp* op
    cdef CryptoOp* aop
    cdef RxState* st
    cdef uint8_t* c
    cdef bint ordered = True  # frames in arena order, none overlapping: out-of-place opens
    cdef int64_t frames_end = 0, cursor = 0, n_from = 0
    with nogil:
        for i in range(RX_PROV_SLOTS):
            prov_rows[i] = -1
        for i in range(n):
            if nb_off[i] < frames_end:
                ordered = False
            frames_end = nb_off[i] + nb_len[i]
            l2 = oob[nb_nbl[i]].l2_len
            p = plan0 + i
            needs = rx_classify_one(arena + nb_off[i], nb_len[i], l2, config, recs, nrec, keys,
                                    nkeys, states, prov, prov_rows, p, op0 + nops, ah0 + nah,
                                    ports, nports)
            if needs & RX_NEEDS_VERIFY:
                aop = ah0 + nah
                p.ah_op = <int32_t>nah
                aop.frame = <int32_t>i
                # frame-relative offsets made arena offsets; the copy goes after the frames
                aop.text_off += nb_off[i]
                aop.icv_off += nb_off[i]
                aop.ip_off += nb_off[i]
                p.ah_copy = asize + copy_len
                aop.auth_off = p.ah_copy
                copy_len += p.ah_off + p.ah_len - p.ip_off
                if aop.esn:
                    st = rx_provisional(states, prov, prov_rows, aop.key_row)
                    if st != NULL:
                        rx_count_up(st, p.ah_seq64)
                nah += 1
            if needs & RX_NEEDS_OPEN:
                op = op0 + nops
                p.op = <int32_t>nops
                op.frame = <int32_t>i
                # the op's offsets are frame-relative until here: make them arena offsets
                op.auth_off += nb_off[i]
                op.text_off += nb_off[i]
                op.icv_off += nb_off[i]
                op.ip_off += nb_off[i]
                if op.esn:
                    st = rx_provisional(states, prov, prov_rows, op.key_row)
                    if st != NULL:
                        rx_count_up(st, p.seq64)
                nops += 1
    # the frames, then each AH frame's ICV input: its header region with the mutable fields
    # and the ICV zeroed (RFC 4302 §3.3.3.1), the real fields untouched
    out_arr = arena_from(reuse, asize + copy_len)
    cdef uint8_t* out = <uint8_t*>array_data(out_arr) if asize + copy_len else NULL
    with nogil:
        # The arena is copied but for the texts of the long AES-GCM opens of frames without
        # AH (whose ICV covers the ESP text in the copy): those read their ciphertext from
        # the arena and write the plaintext here (docs/receive-path.md, "Out-of-place open")
        for i in range(n):
            p = plan0 + i
            if not ordered or p.op < 0 or p.ah_op >= 0:
                continue
            op = op0 + p.op
            if op.suite != SUITE_AES_GCM or op.text_len < RX_OPEN_FROM_MIN \
                    or op.status != OP_PENDING or op.text_off < cursor \
                    or op.text_off > asize - op.text_len:
                continue
            op.src_off = op.text_off
            op.src_at = 0
            op.src_len = <int32_t>op.text_len
            memcpy(out + cursor, arena + cursor, op.text_off - cursor)
            cursor = op.text_off + op.text_len
            n_from += 1
        if asize > cursor:
            memcpy(out + cursor, arena + cursor, asize - cursor)
        for i in range(n):
            p = plan0 + i
            if p.ah_op < 0:
                continue
            aop = ah0 + p.ah_op
            hdr = p.ah_off + p.ah_len - p.ip_off
            check(p.ah_copy, hdr, asize + copy_len)
            c = out + p.ah_copy
            memcpy(c, arena + nb_off[i] + p.ip_off, hdr)
            if p.ipv6:
                ah_zero_ipv6(c, p.ah_off - p.ip_off)
            else:
                ah_zero_ipv4(c, (c[0] & 0xF) * 4)
            memset(c + (p.ah_off - p.ip_off) + 12 + aop.iv_len, 0, aop.icv_len)
    ah_arr = ops_arr[n * sizeof(CryptoOp):(n + nah) * sizeof(CryptoOp)]
    if nah:
        run_op_groups(out_arr, ah_arr, table.keys, backends, "open")
        with lock:
            with nogil:
                for i in range(n):
                    p = plan0 + i
                    if p.ah_op < 0:
                        continue
                    aop = ah0 + p.ah_op
                    if rx_mark_misled(p, aop, states + aop.key_row,
                                      recs[p.slot].xf[p.ah_layer].seq_hi, &p.ah_seq64):
                        nretry += 1
                        continue
                    rx_ah_complete_one(p, aop, states + aop.key_row, delete_after)
            if nretry:
                rx_retry(out_arr, ah_arr, nretry, table.keys, backends)
                with nogil:
                    for i in range(n):
                        p = plan0 + i
                        if p.ah_op >= 0 and ah0[p.ah_op].reserved[0]:
                            aop = ah0 + p.ah_op
                            rx_ah_complete_one(p, aop, states + aop.key_row, delete_after)
                nretry = 0
            with nogil:
                for i in range(n):
                    p = plan0 + i
                    if p.op >= 0 and p.ah_op >= 0 and ah0[p.ah_op].status != OP_DONE:
                        op0[p.op].status = OP_AUTH_FAILED  # never opened: its AH failed
    esp_arr = ops_arr[:nops * sizeof(CryptoOp)]
    if nops:
        rx_open_pending(out_arr, esp_arr, table.keys, backends, b.keep[0] if n_from else None)
        if n_from:
            with nogil:
                for i in range(nops):  # every text is in out now (a sub-table's copies too)
                    op_in_place(op0 + i)
    with lock:
        with nogil:
            for i in range(n):
                p = plan0 + i
                if p.op < 0 or (p.ah_op >= 0 and ah0[p.ah_op].status != OP_DONE):
                    continue
                op = op0 + p.op
                st = states + op.key_row
                if rx_mark_misled(p, op, st, recs[p.slot].xf[p.layer].seq_hi, &p.seq64):
                    # inferred from frames that did not verify: try the committed state
                    memcpy(out + nb_off[i] + p.text_off, arena + nb_off[i] + p.text_off,
                           p.text_len)
                    nretry += 1
                    continue
                rx_complete_one(arena + nb_off[i], out + nb_off[i], nb_len[i], p, op, st,
                                delete_after)
                if p.ah_op >= 0 and p.tunnel:
                    states[ah0[p.ah_op].key_row].tunnel = 1
        if nretry:
            rx_retry(out_arr, esp_arr, nretry, table.keys, backends)
            with nogil:
                for i in range(n):
                    p = plan0 + i
                    if p.op >= 0 and op0[p.op].reserved[0] and (
                            p.ah_op < 0 or ah0[p.ah_op].status == OP_DONE):
                        rx_complete_one(arena + nb_off[i], out + nb_off[i], nb_len[i], p,
                                        op0 + p.op, states + op0[p.op].key_row, delete_after)
                        if p.ah_op >= 0 and p.tunnel:
                            states[ah0[p.ah_op].key_row].tunnel = 1
        for i in range(n):
            counters[plan0[i].reason] += 1
            if plan0[i].ah_op >= 0:
                plan0[i].ah_op += <int32_t>nops
    if nah and nops < n:  # the AH ops follow the ESP ops in the table returned
        memmove(op0 + nops, ah0, nah * sizeof(CryptoOp))
    ops_out = ops_arr[:(nops + nah) * sizeof(CryptoOp)]
    return out_arr[:asize], plans_arr, ops_out, counters_arr


def rx_nested_candidates(plans not None, int64_t n):
    """How many of the first ``n`` plans are verified tunnel layers whose inner packet may
    carry a second layer (datapath/rx.py runs those again); a compiled count so that batches
    with none cost nothing more."""
    cdef int64_t size
    cdef const uint8_t* data = bytes_of(plans, &size, False)
    if size < n * <int64_t>sizeof(RxPlan) or n < 0:
        raise ValueError("plans holds fewer than n RxPlan rows")
    cdef const RxPlan* p0 = <const RxPlan*>data if n else NULL
    cdef const RxPlan* p
    cdef int64_t i, count = 0
    cdef int nh
    with nogil:
        for i in range(n):
            p = p0 + i
            if p.reason != RX_OK or not p.crypto_done:
                continue
            if p.op >= 0:
                nh = p.next_header
            elif p.ah_off:
                nh = p.ah_next_header
            else:
                continue
            if nh == 4 or nh == 41:
                count += 1
    return count
