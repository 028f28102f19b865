"""Twin of datapath/ah_mutable.pxi: the mutable fields of an AH packet's header region
zeroed in a copy (RFC 4302 §3.3.3.1, Appendix A; docs/protocol.md "AH")."""
from __future__ import annotations

# RFC 4302 Appendix A.1: EOL, NOP, Security, Extended Security, Commercial Security,
# Router Alert, Sender-Directed Multi-Destination Delivery
IMMUTABLE_IPV4_OPTIONS = (0, 1, 130, 133, 134, 148, 149)
SOURCE_ROUTES = (131, 137)  # LSRR, SSRR


def ah_zero_ipv4(c: bytearray, ihl: int) -> None:
    """TOS, flags + fragment offset, TTL, checksum zeroed; each mutable option zeroed whole;
    a source route's last address becomes the destination."""
    c[1] = 0
    c[6:8] = b"\0\0"
    c[8] = 0
    c[10:12] = b"\0\0"
    i = 20
    while i < ihl:
        t = c[i]
        if t == 0:  # End of List: what follows is padding
            return
        if t == 1:
            i += 1
            continue
        olen = c[i + 1] if i + 1 < ihl else 0
        if olen < 2 or i + olen > ihl:  # malformed: zero the rest, stop
            c[i:ihl] = bytes(ihl - i)
            return
        if t not in IMMUTABLE_IPV4_OPTIONS:
            if t in SOURCE_ROUTES and olen >= 7:
                c[16:20] = c[i + olen - 4:i + olen]
            c[i:i + olen] = bytes(olen)
        i += olen


def ah_zero_ipv6(c: bytearray, ah_rel: int) -> None:
    """Traffic class, flow label, hop limit zeroed; option data with the change-en-route bit
    zeroed in hop-by-hop / destination options; a type 0 / 2 routing header as it arrives."""
    c[0] &= 0xF0
    c[1:4] = b"\0\0\0"
    c[7] = 0
    off, nh = 40, c[6]
    while off + 8 <= ah_rel and nh in (0, 43, 60):
        hlen = (c[off + 1] + 1) * 8
        if off + hlen > ah_rel:
            return
        if nh in (0, 60):
            k, end = off + 2, off + hlen
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
                    c[k + 2:k + 2 + olen] = bytes(olen)
                k += 2 + olen
        elif c[off + 2] in (0, 2) and c[off + 3] != 0 and hlen >= 24:
            n = (hlen - 8) // 16
            first = off + 8
            addresses = [bytes(c[first + 16 * a:first + 16 * a + 16]) for a in range(n)]
            final = addresses.pop()
            addresses.insert(0, bytes(c[24:40]))
            c[first:first + 16 * n] = b"".join(addresses)
            c[24:40] = final
            c[off + 3] = 0
        nh = c[off]
        off += hlen
