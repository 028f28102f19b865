# tx_fixup: what is left after sealing — the UDP checksum of UDP-encapsulated ESP over IPv6,
# which covers the ciphertext and ICV (RFC 3948 §2.1, RFC 8200 §8.1). Included by _fastpath.pyx.

cdef int tx_fixup_check(const CryptoOp* op0, int64_t n, int64_t osize) except -1:
    cdef int64_t j, end, udp_off
    cdef const CryptoOp* op
    for j in range(n):
        op = op0 + j
        if op.fixup == FIXUP_UDP6_CHECKSUM:
            if op.icv_off < 0 or op.icv_off > osize - op.icv_len:
                raise ValueError("op reaches outside the output arena")
            end = op.icv_off + op.icv_len
            udp_off = op.auth_off - 8
            if op.ip_off < 0 or op.ip_off > osize - 40 or udp_off < op.ip_off + 40 \
                    or udp_off > end - 8:
                raise ValueError("op reaches outside the output arena")
        elif op.fixup != FIXUP_NONE:
            raise ValueError(f"op {j} has an unknown fixup {op.fixup}")
    return 0


cdef void tx_fixup_run(uint8_t* out, const CryptoOp* op0, int64_t n) noexcept nogil:
    cdef int64_t j, ulen, udp_off
    cdef uint64_t s
    cdef uint16_t c
    cdef const CryptoOp* op
    cdef uint8_t* udp
    for j in range(n):
        op = op0 + j
        if op.fixup != FIXUP_UDP6_CHECKSUM:
            continue
        udp_off = op.auth_off - 8
        udp = &out[udp_off]
        ulen = op.icv_off + op.icv_len - udp_off
        st16(udp + 6, 0)
        # pseudo-header: source, and the final destination past any routing header
        s = (csum_add(0, &out[op.ip_off + 8], 16)
             + csum_add(0, &out[op.ip_off + ipv6_final_dst(&out[op.ip_off],
                                                           udp_off - op.ip_off)], 16)
             + (<uint64_t>ulen >> 16) + (ulen & 0xFFFF) + 17)
        c = ~csum_fold(csum_add(s, udp, ulen)) & 0xFFFF
        st16(udp + 6, c if c else 0xFFFF)  # RFC 768: a computed 0 is sent as all ones


def tx_fixup(uint8_t[::1] out not None, const uint8_t[::1] ops not None):
    """Run every op's fixup over the sealed output arena."""
    cdef int64_t n = ops.shape[0] // sizeof(CryptoOp)
    if ops.shape[0] % sizeof(CryptoOp):
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    cdef const CryptoOp* op0 = <const CryptoOp*>&ops[0] if n else NULL
    tx_fixup_check(op0, n, out.shape[0])
    with nogil:
        tx_fixup_run(&out[0] if out.shape[0] else NULL, op0, n)
