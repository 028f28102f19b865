# Grouping of the op table for the backends: ops of one (pass, kind, suite, key context) run
# as one group, passes in order. Included by _fastpath.pyx.

from libc.stdlib cimport malloc, free


cdef inline uint64_t op_group_key(const CryptoOp* op) noexcept nogil:
    return ((<uint64_t>op.pass_no << 56) | (<uint64_t>op.kind << 48)
            | (<uint64_t>op.suite << 40) | <uint32_t>op.key_row)


cdef void op_merge_sort(int32_t* order, int32_t* tmp, const uint64_t* keys,
                        int64_t n) noexcept nogil:
    """Bottom-up stable merge sort of ``order`` by ``keys[order[i]]``."""
    cdef int64_t width = 1, lo, mid, hi, a, b, k
    cdef int32_t* src = order
    cdef int32_t* dst = tmp
    cdef int32_t* swap
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            a, b, k = lo, mid, lo
            while a < mid and b < hi:
                if keys[src[b]] < keys[src[a]]:
                    dst[k] = src[b]
                    b += 1
                else:
                    dst[k] = src[a]
                    a += 1
                k += 1
            while a < mid:
                dst[k] = src[a]
                a += 1
                k += 1
            while b < hi:
                dst[k] = src[b]
                b += 1
                k += 1
            lo = hi
        swap = src
        src = dst
        dst = swap
        width *= 2
    if src != order:
        memcpy(order, src, n * sizeof(int32_t))


def op_groups(const uint8_t[::1] ops not None):
    """The op table's groups: ``(order, groups)`` where ``order`` (int32) lists op indices
    group by group and each row of ``groups`` (int64) is (start, end, pass, kind, suite,
    key_row) over ``order``."""
    cdef int64_t n = ops.shape[0] // sizeof(CryptoOp), i, g = 0
    if ops.shape[0] % sizeof(CryptoOp):
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    order_arr = np.empty(n, np.int32)
    cdef int32_t[::1] order = order_arr
    cdef const CryptoOp* op0 = <const CryptoOp*>&ops[0] if n else NULL
    cdef uint64_t* keys = <uint64_t*>malloc((n if n else 1) * sizeof(uint64_t))
    cdef int32_t* tmp = <int32_t*>malloc((n if n else 1) * sizeof(int32_t))
    cdef bint sorted_already = True
    if keys == NULL or tmp == NULL:
        free(keys)
        free(tmp)
        raise MemoryError()
    with nogil:
        for i in range(n):
            keys[i] = op_group_key(op0 + i)
            order[i] = <int32_t>i
            if i and keys[i] < keys[i - 1]:
                sorted_already = False
        if not sorted_already:
            op_merge_sort(&order[0], tmp, keys, n)
        for i in range(n):
            if i == 0 or keys[order[i]] != keys[order[i - 1]]:
                g += 1
    groups_arr = np.empty((g, 6), np.int64)
    cdef int64_t[:, ::1] groups = groups_arr
    cdef const CryptoOp* op
    g = -1
    with nogil:
        for i in range(n):
            if i == 0 or keys[order[i]] != keys[order[i - 1]]:
                if g >= 0:
                    groups[g, 1] = i
                g += 1
                op = op0 + order[i]
                groups[g, 0] = i
                groups[g, 2] = op.pass_no
                groups[g, 3] = op.kind
                groups[g, 4] = op.suite
                groups[g, 5] = op.key_row
        if g >= 0:
            groups[g, 1] = n
    free(keys)
    free(tmp)
    return order_arr, groups_arr
