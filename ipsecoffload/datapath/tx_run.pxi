# tx_run: the whole send path in one compiled call — tx_classify, tx_plan, tx_emit, the
# backends (one call per op group) and tx_fixup — over one validated view of the batch, so
# that no per-batch bookkeeping runs in Python between the stages. Included by _fastpath.pyx.

def tx_run(batch, table, int config, int icv_space, int iv_source, backends, random_source,
           marks=None, mark_lock=None, limits=None, totals=None, reuse=None):
    """Send ``batch`` through the stages with the SA table snapshot ``table`` (records_bytes,
    keys). With ``limits`` (int64: the LSO limits and the output cap) tx_limit runs after
    classify; with ``marks`` (uint64 (handle, mark) per key row) tx_mark runs next, under
    ``mark_lock``; ``totals`` (int64: N_COUNTERS, then frames and bytes out) gets this send's
    added, with the GIL held (no thread sees half a sum); ``reuse``, an arena the frames may
    be written in (arena_from). Returns (out, frames, ops, plans,
    nbl_status, lso_done, counters) as numpy arrays (frames, ops and plans as struct
    bytes)."""
    cdef BatchView b = BatchView(batch)
    records_obj = table.records_bytes
    cdef const uint8_t[::1] records
    cdef int64_t rec_size
    cdef const SaRecord* recs
    if plain_array(records_obj, cnp.NPY_UINT8, False):
        recs, rec_size = <const SaRecord*>array_data(records_obj), array_len(records_obj)
    else:
        records = records_obj
        rec_size = records.shape[0]
        recs = <const SaRecord*>&records[0] if rec_size else NULL
    cdef int64_t nrec = rec_size // sizeof(SaRecord)
    if rec_size % sizeof(SaRecord):
        raise ValueError("records buffer size does not match the SaRecord layout")
    if nrec == 0:
        recs = NULL
    cdef int64_t* total_of = NULL
    if totals is not None:
        if not plain_array(totals, cnp.NPY_INT64, True) or array_len(totals) != N_COUNTERS + 2:
            raise ValueError(f"totals must be a writable int64 array of {N_COUNTERS + 2}")
        total_of = <int64_t*>array_data(totals)
    plans_arr = new_array(b.n_nb * sizeof(NbPlan), cnp.NPY_UINT8)
    status_arr = new_array(b.n_nbl, cnp.NPY_UINT32)
    lso_arr = new_array(b.n_nbl, cnp.NPY_UINT64)
    counters_arr = new_array(N_COUNTERS, cnp.NPY_INT64)
    # arrays made here: their data pointers are taken as is (docs/architecture.md)
    cdef NbPlan* plan0 = <NbPlan*>array_data(plans_arr) if b.n_nb else NULL
    cdef uint32_t* status = <uint32_t*>array_data(status_arr) if b.n_nbl else NULL
    cdef uint64_t* lso_done = <uint64_t*>array_data(lso_arr) if b.n_nbl else NULL
    cdef int64_t* counters = <int64_t*>array_data(counters_arr)
    cdef TxTotals t
    cdef uint64_t[::1] mark_view
    cdef uint64_t* mark0 = NULL
    cdef int64_t n_rows = 0, n_marks
    if marks is not None:
        if plain_array(marks, cnp.NPY_UINT64, True):
            mark0, n_marks = <uint64_t*>array_data(marks), array_len(marks)
        else:
            mark_view = marks
            n_marks = mark_view.shape[0]
            mark0 = &mark_view[0] if n_marks else NULL
        if n_marks % 2:
            raise ValueError("marks holds (handle, mark) pairs")
        n_rows = n_marks // 2
        if n_rows == 0:
            mark0 = NULL
    cdef const int64_t* limit0
    with nogil:
        tx_classify_run(b, recs, nrec, config, icv_space, iv_source, plan0)
    if limits is not None:
        if not plain_array(limits, cnp.NPY_INT64, False):
            limits = np.ascontiguousarray(limits, np.int64)
        limit0 = <const int64_t*>array_data(limits)
        tx_limit_check(b, plan0, b.n_nb, limit0, array_len(limits))
        with nogil:
            tx_limit_run(b, plan0, b.n_nb, limit0)
    if marks is not None:
        tx_mark_check(b, recs, plan0, b.n_nb, nrec)
        with mark_lock:
            with nogil:
                tx_mark_run(b, recs, plan0, b.n_nb, mark0, n_rows)
    with nogil:
        t = tx_plan_run(b, recs, plan0, b.n_nb, status, lso_done, counters)
    # the frames, then the AH scratch (docs/send-path.md); the wire sees the frames only
    arena_arr = arena_from(reuse, t.out_bytes + t.scratch_bytes)
    out_arr = arena_arr[:t.out_bytes] if t.scratch_bytes else arena_arr
    frames_arr = new_array(t.frames * sizeof(WireFrame), cnp.NPY_UINT8)
    ops_arr = new_array(t.ops * sizeof(CryptoOp), cnp.NPY_UINT8)
    cdef const uint8_t[::1] rand
    cdef const uint8_t* rand0 = NULL
    cdef int64_t rand_len = 0
    if t.rand_bytes:
        rand_bytes = random_source(t.rand_bytes)
        if len(rand_bytes) != t.rand_bytes:
            raise ValueError(f"random_source returned {len(rand_bytes)} bytes, "
                             f"{t.rand_bytes} were asked for")
        rand = rand_bytes
        rand0, rand_len = &rand[0], rand.shape[0]
    cdef int64_t arena_size = t.out_bytes + t.scratch_bytes
    cdef uint8_t* out = <uint8_t*>array_data(arena_arr) if arena_size else NULL
    cdef WireFrame* frames = <WireFrame*>array_data(frames_arr) if t.frames else NULL
    cdef CryptoOp* op0 = <CryptoOp*>array_data(ops_arr) if t.ops else NULL
    cdef int64_t scratch0 = tx_emit_check(b, recs, nrec, plan0, rand_len, arena_size,
                                          t.frames, t.ops)
    with nogil:
        tx_emit_run(b, recs, plan0, rand0, rand_len, out, arena_size, scratch0, frames, op0,
                    True)
    if t.ops:
        run_op_groups(arena_arr, ops_arr, table.keys, backends, "seal", b.keep[0])
        tx_fixup_check(op0, t.ops, t.out_bytes)
        with nogil:
            tx_fixup_run(out, op0, t.ops)
    cdef int64_t i
    if total_of != NULL:
        for i in range(N_COUNTERS):
            total_of[i] += counters[i]
        total_of[N_COUNTERS] += t.frames
        total_of[N_COUNTERS + 1] += t.out_bytes
    return out_arr, frames_arr, ops_arr, plans_arr, status_arr, lso_arr, counters_arr


cdef object _read_only_arange(int64_t n):
    a = np.arange(n, dtype=np.int32)
    a.flags.writeable = False
    return a


cdef object _op_orders = _read_only_arange(4096)


cdef object _op_order(int64_t n):
    """0 .. n - 1 as int32: a slice of one array kept between sends (read-only, so that no
    backend can change it for the next)."""
    global _op_orders
    if n > array_len(_op_orders):
        _op_orders = _read_only_arange(max(n, 2 * array_len(_op_orders)))
    return _op_orders[:n]


cdef _run_group(backend, str direction, arena, ops, order, keys, src):
    """One group through its backend. Out-of-place ops (CryptoOp.src_len > 0) go to a
    backend that reads the source itself (``reads_source``) with ``src``; for any other the
    source bytes are first copied into the arena (ops_gather), which makes them in place."""
    if src is not None:
        if getattr(backend, "reads_source", False):
            getattr(backend, direction)(arena, ops, order, keys, src)
            return
        ops_gather(arena, ops, order, src)
    getattr(backend, direction)(arena, ops, order, keys)


def run_op_groups(arena, ops, keys, backends, str direction, src=None):
    """Each op group (pass, kind, suite, key context) through its backend, passes in order.
    The common case, ops already in group order (one SA, or SAs in runs), needs no sort.
    ``src``: the source arena of out-of-place ops (tx_emit's batch arena), else None."""
    cdef const uint8_t[::1] op_bytes
    cdef int64_t size, n, i, start = 0
    cdef const CryptoOp* op0
    if plain_array(ops, cnp.NPY_UINT8, False):  # tx_run's and rx_run's: no view to acquire
        op0, size = <const CryptoOp*>array_data(ops), array_len(ops)
    else:
        op_bytes = ops
        size = op_bytes.shape[0]
        op0 = <const CryptoOp*>&op_bytes[0] if size else NULL
    n = size // sizeof(CryptoOp)
    if size % sizeof(CryptoOp):
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    if n == 0:
        return
    cdef bint in_order = True, out_of_place = False
    cdef uint64_t key, last = op_group_key(op0)
    cdef int64_t changes = 0
    with nogil:
        for i in range(n):
            if op0[i].src_len:
                out_of_place = True
            key = op_group_key(op0 + i)
            if key < last:
                in_order = False
            elif key != last:
                changes += 1
            last = key
    if out_of_place and src is None:
        raise ValueError("the op table has out-of-place ops (src_len > 0) and no source "
                         "arena was given (src)")
    if in_order and changes == 0:  # one group (one SA, one pass): the usual case
        _run_group(backends[op0[0].suite], direction, arena, ops, _op_order(n),
                   keys[op0[0].key_row], src)
        return
    if not in_order:
        order, groups = op_groups(ops)
        for start_, end, _pass, _kind, suite, key_row in groups.tolist():
            _run_group(backends[suite], direction, arena, ops, order[start_:end], keys[key_row],
                       src)
        return
    order = _op_order(n)
    for i in range(1, n + 1):
        if i == n or op_group_key(op0 + i) != op_group_key(op0 + start):
            _run_group(backends[op0[start].suite], direction, arena, ops, order[start:i],
                       keys[op0[start].key_row], src)
            start = i


cdef inline void op_in_place(CryptoOp* op) noexcept nogil:
    """The op, its source bytes now in its text: as tx_emit writes it in place."""
    op.src_off = 0
    op.src_at = 0
    op.src_len = 0


cdef inline void op_gather_one(uint8_t* arena, const uint8_t* src, CryptoOp* op) noexcept nogil:
    """An out-of-place op's source bytes copied into its text (ranges checked before)."""
    memcpy(arena + op.text_off + op.src_at, src + op.src_off, op.src_len)
    op_in_place(op)


cdef int check_op_source(const CryptoOp* op, int64_t j, int64_t size,
                         int64_t src_size) except -1:
    """An out-of-place op's source range lies inside the source arena and its text."""
    if op.src_len < 0 or op.src_at < 0 or op.src_at > op.text_len - op.src_len \
            or op.src_off < 0 or op.src_off > src_size - op.src_len \
            or op.text_off < 0 or op.text_off > size - op.text_len:
        raise ValueError(f"op {j}'s source range reaches outside its text or the source")
    return 0


def ops_gather(uint8_t[::1] arena not None, uint8_t[::1] ops not None,
               const int32_t[::1] idx not None, const uint8_t[::1] src not None):
    """The source bytes of the out-of-place ops ``idx`` copied into their text in ``arena``;
    each is in place afterwards (its src fields 0)."""
    cdef int64_t n_ops = ops.shape[0] // sizeof(CryptoOp), i, j, size = arena.shape[0]
    if ops.shape[0] % sizeof(CryptoOp):
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    cdef CryptoOp* op0 = <CryptoOp*>&ops[0] if n_ops else NULL
    for i in range(idx.shape[0]):
        j = idx[i]
        if j < 0 or j >= n_ops:
            raise ValueError(f"idx[{i}] = {j} names no op")
        if op0[j].src_len:
            check_op_source(op0 + j, j, size, src.shape[0])
    with nogil:
        for i in range(idx.shape[0]):
            if op0[idx[i]].src_len:
                op_gather_one(&arena[0], &src[0], op0 + idx[i])


def output_bounds(batch):
    """Per NBL an upper bound of the bytes a send makes of it (host/stack.py output_bound,
    its twin): an LSO NBL its segments' headers (TCP header up to 60 bytes) plus ESP
    padding, trailer and ICV (at most 16 + 2 + 32 + 8 bytes) each, and its payload; another
    its frames plus 64 bytes per NET_BUFFER (one at least). Returns (int64 bounds, total)."""
    cdef BatchView b = BatchView(batch)
    bounds_arr = np.zeros(b.n_nbl, np.int64)
    cdef int64_t* bound = <int64_t*>array_data(bounds_arr) if b.n_nbl else NULL
    cdef int64_t i, total = 0, payload, mss, tcp_off, segs
    cdef uint64_t lso
    for i in range(b.n_nb):
        if not 0 <= b.c_nb_nbl[i] < b.n_nbl:
            raise ValueError(f"NET_BUFFER {i} names NBL {b.c_nb_nbl[i]}")
    with nogil:
        for i in range(b.n_nb):
            bound[b.c_nb_nbl[i]] += b.c_nb_len[i]
        for i in range(b.n_nbl):
            lso = b.c_oob[i].lso_info
            mss = <int64_t>(lso & 0xFFFFF)
            tcp_off = <int64_t>((lso >> 20) & 0x3FF)
            if lso != 0 and mss > 0:
                payload = bound[i] - tcp_off if bound[i] > tcp_off else 0
                segs = (payload + mss - 1) // mss if payload else 1
                bound[i] = segs * (tcp_off + 60 + 16 + 2 + 32 + 8) + payload
            else:
                bound[i] += 64 * (b.c_oob[i].nb_count if b.c_oob[i].nb_count > 1 else 1)
            total += bound[i]
    return bounds_arr, total
