# The AH ICV input (RFC 4302 §3.3.3.1, docs/protocol.md "AH"): tx_emit copies the IP header
# region of a frame (IP header, options / extension headers, AH header) into the scratch of the
# output arena and zeroes there what may change in transit, so the real fields stay untouched.
# The AH sign backends then authenticate that copy followed by the rest of the frame.
# Included by _fastpath.pyx (before tx_emit).

cdef inline bint ipv4_option_immutable(uint8_t t) noexcept nogil:
    """RFC 4302 Appendix A.1: EOL, NOP, Security, Extended Security, Commercial Security,
    Router Alert and Sender-Directed Multi-Destination Delivery enter the ICV as they are."""
    return t == 0 or t == 1 or t == 130 or t == 133 or t == 134 or t == 148 or t == 149


cdef void ah_zero_ipv4(uint8_t* c, int64_t ihl) noexcept nogil:
    """IPv4 header copy c of ihl bytes: TOS, flags and fragment offset, TTL and checksum
    zeroed; each mutable option zeroed whole; LSRR / SSRR: the final address replaces the
    destination (RFC 4302 Appendix A.1)."""
    cdef int64_t i = 20, olen
    cdef uint8_t t
    c[1] = 0
    c[6] = 0
    c[7] = 0
    c[8] = 0
    c[10] = 0
    c[11] = 0
    while i < ihl:
        t = c[i]
        if t == 0:  # End of List: what follows is padding
            return
        if t == 1:
            i += 1
            continue
        olen = c[i + 1] if i + 1 < ihl else 0
        if olen < 2 or i + olen > ihl:  # a malformed option: zero the rest, stop
            memset(c + i, 0, ihl - i)
            return
        if not ipv4_option_immutable(t):
            if (t == 131 or t == 137) and olen >= 7:  # source route: the last address
                memcpy(c + 16, c + i + olen - 4, 4)  # is where the packet arrives
            memset(c + i, 0, olen)
        i += olen


cdef void ah_zero_ipv6(uint8_t* c, int64_t ah_rel) noexcept nogil:
    """IPv6 header copy c whose AH header starts at ah_rel: traffic class, flow label and hop
    limit zeroed; the data of every option with the change-en-route bit (0x20) zeroed in
    hop-by-hop and destination options headers; a type 0 / 2 routing header ordered as it
    arrives (Segments Left 0, the final address in the destination) (RFC 4302 Appendix A.2,
    RFC 8200 §4.2, §4.4)."""
    cdef int64_t off = 40, hlen, k, end, n, a
    cdef uint8_t nh = c[6], t, olen
    cdef uint8_t final[16]
    c[0] &= 0xF0
    c[1] = 0
    c[2] = 0
    c[3] = 0
    c[7] = 0
    while off + 8 <= ah_rel and (nh == 0 or nh == 43 or nh == 60):
        hlen = (<int64_t>c[off + 1] + 1) * 8
        if off + hlen > ah_rel:
            return
        if nh == 0 or nh == 60:
            k = off + 2
            end = off + hlen
            while k < end:
                t = c[k]
                if t == 0:  # Pad1
                    k += 1
                    continue
                if k + 2 > end:
                    break
                olen = c[k + 1]
                if k + 2 + olen > end:
                    break
                if t & 0x20:
                    memset(c + k + 2, 0, olen)
                k += 2 + olen
        elif (c[off + 2] == 0 or c[off + 2] == 2) and c[off + 3] != 0 and hlen >= 24:
            n = (hlen - 8) // 16  # addresses in the header
            memcpy(final, c + off + 8 + (n - 1) * 16, 16)
            a = n - 1
            while a > 0:  # addresses[i] = addresses[i - 1]: the list as it arrives
                memcpy(c + off + 8 + a * 16, c + off + 8 + (a - 1) * 16, 16)
                a -= 1
            memcpy(c + off + 8, c + 24, 16)
            memcpy(c + 24, final, 16)
            c[off + 3] = 0
        nh = c[off]
        off += hlen
