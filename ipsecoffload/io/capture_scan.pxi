# Capture files in bulk: record boundaries of classic pcap and pcapng found by a compiled scan
# over a large chunk, and output records written from whole arenas (docs/architecture.md,
# "Capture I/O"). Formats: the libpcap file format (pcap-savefile(5)) and the pcapng draft
# (IETF draft-ietf-opsawg-pcapng: SHB, IDB, EPB, SPB). Included by _fastpath.pyx; io/pcap.py's
# record-by-record PcapReader is the twin the tests compare with.

cdef inline uint32_t _ld32x(const uint8_t* p, int big) noexcept nogil:
    if big:
        return ld32(p)
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]

cdef inline void _st32le(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24

cdef inline void _st16le(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF

cdef int64_t[20] _POW10
_POW10[0] = 1
for _i in range(1, 19):
    _POW10[_i] = _POW10[_i - 1] * 10

cpdef enum ScanStatus:
    SCAN_MORE = 0        # the chunk ends inside a record: read on from the returned position
    SCAN_FULL = 1        # max_n records found
    SCAN_CORRUPT = 2     # a record or block that cannot be: the returned position names it
    SCAN_BLOCK = 3       # pcapng: a block the caller handles (SHB, IDB) starts there
    SCAN_OVERSIZE = 4    # a record longer than the limit


def pcap_scan(const uint8_t[::1] buf, int64_t start, int64_t end, int big, int64_t frac_ns,
              int64_t max_incl, int link, pkts, int64_t max_n):
    """Classic pcap records in buf[start:end] into HostPkt rows (off, cap_len, ts_ns, link,
    iface 0). Returns (records, position after the last one, ScanStatus, the length the
    offending record claims)."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), max_n, "pkts")
    cdef int64_t pos = start, n = 0, incl = 0
    cdef const uint8_t* p
    cdef int status = SCAN_MORE
    if start < 0 or end > buf.shape[0] or start > end:
        raise ValueError("scan range outside the buffer")
    with nogil:
        while n < max_n:
            if pos + 16 > end:
                break
            p = &buf[pos]
            incl = _ld32x(p + 8, big)
            if incl > max_incl:
                status = SCAN_OVERSIZE
                break
            if pos + 16 + incl > end:
                break
            k[n].off = pos + 16
            k[n].cap_len = <int32_t>incl
            k[n].ts_ns = <int64_t>_ld32x(p, big) * 1000000000 + <int64_t>_ld32x(p + 4, big) * frac_ns
            k[n].link = <uint8_t>link
            k[n].iface = 0
            n += 1
            pos += 16 + incl
        if n == max_n and status == SCAN_MORE:
            status = SCAN_FULL
    return n, pos, status, incl


cdef inline int64_t _units_ns(uint64_t u, int64_t resol) noexcept nogil:
    """pcapng timestamp units to ns: if_tsresol bit 7 clear = 10**-r s, set = 2**-r s."""
    cdef int64_t r = resol & 0x7F
    cdef uint64_t whole, part
    if resol & 0x80:
        if r > 32:
            u >>= r - 32
            r = 32
        whole = u >> r
        part = u & ((<uint64_t>1 << r) - 1)
        return <int64_t>(whole * 1000000000 + ((part * 1000000000) >> r))
    if r <= 9:
        return <int64_t>(u * <uint64_t>_POW10[9 - r])
    if r > 18:
        return 0
    return <int64_t>(u // <uint64_t>_POW10[r - 9])


def pcapng_scan(const uint8_t[::1] buf, int64_t start, int64_t end, int big,
                const int64_t[::1] iface_link, const int64_t[::1] iface_resol,
                const int64_t[::1] iface_snap, int64_t max_incl, pkts, int64_t max_n):
    """pcapng blocks of one section in buf[start:end]: EPB and SPB become HostPkt rows, other
    blocks but SHB and IDB are skipped. Returns (records, position, ScanStatus, detail): for
    SCAN_BLOCK the block type, for SCAN_OVERSIZE the captured length, for SCAN_CORRUPT the
    block type."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), max_n, "pkts")
    cdef int64_t pos = start, n = 0, nif = iface_link.shape[0], total, incl, orig, iface
    cdef uint32_t btype = 0
    cdef const uint8_t* p
    cdef int status = SCAN_MORE
    cdef int64_t detail = 0
    if start < 0 or end > buf.shape[0] or start > end:
        raise ValueError("scan range outside the buffer")
    if iface_resol.shape[0] != nif or iface_snap.shape[0] != nif:
        raise ValueError("interface tables differ in length")
    with nogil:
        while n < max_n:
            if pos + 12 > end:
                break
            p = &buf[pos]
            btype = _ld32x(p, big)
            total = _ld32x(p + 4, big)
            if btype == 0x0A0D0D0A or btype == 1:
                status, detail = SCAN_BLOCK, btype
                break
            if total < 12 or total % 4:
                status, detail = SCAN_CORRUPT, btype
                break
            if btype == 6 or btype == 3:
                if total > max_incl + 64:
                    status, detail = SCAN_OVERSIZE, total
                    break
            if pos + total > end:
                break
            if btype == 6:  # Enhanced Packet Block
                if total < 32:
                    status, detail = SCAN_CORRUPT, btype
                    break
                iface = _ld32x(p + 8, big)
                incl = _ld32x(p + 20, big)
                if incl > total - 32 or iface >= nif:
                    status, detail = SCAN_CORRUPT, btype
                    break
                if incl > max_incl:
                    status, detail = SCAN_OVERSIZE, incl
                    break
                k[n].off = pos + 28
                k[n].cap_len = <int32_t>incl
                k[n].ts_ns = _units_ns((<uint64_t>_ld32x(p + 12, big) << 32) | _ld32x(p + 16, big),
                                       iface_resol[iface])
                k[n].link = <uint8_t>iface_link[iface]
                k[n].iface = <int32_t>iface
                n += 1
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                if nif < 1 or total < 16:
                    status, detail = SCAN_CORRUPT, btype
                    break
                orig = _ld32x(p + 8, big)
                incl = total - 16
                if orig < incl:
                    incl = orig
                if iface_snap[0] and incl > iface_snap[0]:
                    incl = iface_snap[0]
                if incl > max_incl:
                    status, detail = SCAN_OVERSIZE, incl
                    break
                k[n].off = pos + 12
                k[n].cap_len = <int32_t>incl
                k[n].ts_ns = 0
                k[n].link = <uint8_t>iface_link[0]
                k[n].iface = 0
                n += 1
            pos += total
        if n == max_n and status == SCAN_MORE:
            status = SCAN_FULL
    return n, pos, status, detail


cdef inline int64_t _record_head(uint8_t* o, int fmt, int64_t length, int64_t incl,
                                 int64_t ts_ns, int32_t iface,
                                 const int64_t* unit_ns) noexcept nogil:
    """The header before a record's ``incl`` captured bytes: pcap (fmt 0 microseconds, 1
    nanoseconds; little-endian), 16 bytes, or a pcapng EPB (fmt 2, in the interface's
    units), 28 bytes. Returns its size."""
    cdef int64_t units, unit, sec, frac, padded
    if fmt < 2:
        unit = 1000 if fmt == 0 else 1
        units = (ts_ns + unit // 2) // unit
        sec = units // (1000000 if fmt == 0 else 1000000000)
        frac = units - sec * (1000000 if fmt == 0 else 1000000000)
        _st32le(o, <uint32_t>sec)
        _st32le(o + 4, <uint32_t>frac)
        _st32le(o + 8, <uint32_t>incl)
        _st32le(o + 12, <uint32_t>length)
        return 16
    unit = unit_ns[iface]
    units = (ts_ns + unit // 2) // unit
    padded = (incl + 3) & ~3
    _st32le(o, 6)
    _st32le(o + 4, <uint32_t>(32 + padded))
    _st32le(o + 8, <uint32_t>iface)
    _st32le(o + 12, <uint32_t>(<uint64_t>units >> 32))
    _st32le(o + 16, <uint32_t>units)
    _st32le(o + 20, <uint32_t>incl)
    _st32le(o + 24, <uint32_t>length)
    return 28


cdef inline int64_t _record_tail(uint8_t* o, int fmt, int64_t incl) noexcept nogil:
    """What follows a record's captured bytes: nothing for pcap; for a pcapng EPB the
    padding to 4 bytes and the block's trailing length. Returns its size."""
    cdef int64_t padded = (incl + 3) & ~3
    if fmt < 2:
        return 0
    memset(o, 0, padded - incl)
    _st32le(o + padded - incl, <uint32_t>(32 + padded))
    return padded - incl + 4


cdef inline int64_t _emit_record(uint8_t* o, int fmt, const uint8_t* data, int64_t length,
                                 int64_t ts_ns, int32_t iface, int64_t snaplen,
                                 const int64_t* unit_ns) noexcept nogil:
    """One output record: header, captured bytes, tail. Returns the bytes written."""
    cdef int64_t incl = length if length <= snaplen else snaplen
    cdef int64_t head = _record_head(o, fmt, length, incl, ts_ns, iface, unit_ns)
    memcpy(o + head, data, incl)
    return head + incl + _record_tail(o + head + incl, fmt, incl)


cdef object _frame_addresses(wire, const WireFrame* wf, int64_t nframes):
    """Each wire frame's address (uint64; 0 for an empty frame), its range checked against
    ``wire``: one arena, or a list of arenas the frame offsets address as if joined end to
    end."""
    cdef const uint8_t[::1] part
    cdef int64_t p, f, n_parts, wsize
    parts = list(wire) if isinstance(wire, (list, tuple)) else [wire]
    n_parts = len(parts)
    # each part's first offset and address, as integers: the frames find their part below
    cdef int64_t[::1] part_lo = np.zeros(n_parts + 1, np.int64)
    cdef uint64_t[::1] part_at = np.zeros(n_parts + 1, np.uint64)
    for p in range(n_parts):
        part = parts[p]
        part_at[p] = <uint64_t><size_t>&part[0] if part.shape[0] else 0
        part_lo[p + 1] = part_lo[p] + part.shape[0]
    wsize = part_lo[n_parts]
    frame_at_arr = np.zeros(max(nframes, 1), np.uint64)
    cdef uint64_t[::1] frame_at = frame_at_arr
    p = 0
    for f in range(nframes):
        if wf[f].off < 0 or wf[f].len < 0 or wf[f].off + wf[f].len > wsize:
            raise ValueError(f"wire frame {f} lies outside the wire arena")
        if not part_lo[p] <= wf[f].off < part_lo[p + 1]:  # frames of one part run together
            p = 0
            while p < n_parts - 1 and wf[f].off >= part_lo[p + 1]:
                p += 1
        if wf[f].len and wf[f].off + wf[f].len > part_lo[p + 1]:
            raise ValueError(f"wire frame {f} crosses from one wire arena into the next")
        frame_at[f] = part_at[p] + <uint64_t>(wf[f].off - part_lo[p]) if wf[f].len else 0
    return frame_at_arr


cdef int64_t _check_emit_rows(int fmt, const HostPkt* k, int64_t start, int64_t end,
                              int64_t size, int64_t nif, bint arena_ok) except -1:
    """capture_emit's checks of the rows; returns the bytes their not-IP records need."""
    cdef int64_t i, need = 0, overhead = 16 if fmt < 2 else 35
    for i in range(start, end):
        if k[i].kind == PKT_NOT_IP:
            if not arena_ok:
                raise ValueError(f"packet {i} is a record of the input arena, which "
                                 f"capture_pieces does not read")
            if k[i].off < 0 or k[i].cap_len < 0 or k[i].off + k[i].cap_len > size:
                raise ValueError(f"packet {i} lies outside the arena")
            if fmt == 2 and not 0 <= k[i].iface < nif:
                raise ValueError(f"packet {i} names interface {k[i].iface}")
            need += overhead + k[i].cap_len
        elif k[i].nbl >= 0 and fmt == 2 and not 0 <= k[i].iface < nif:
            raise ValueError(f"packet {i} names interface {k[i].iface}")
    return need


def capture_emit(int fmt, out, pkts, int64_t start, int64_t end, const uint8_t[::1] arena,
                 wire, wire_table, int64_t nframes, int64_t snaplen,
                 const int64_t[::1] unit_ns, frames_per_pkt, bytes_per_pkt):
    """Output records of packets [start, end) in input order: a not-IP record as read, the
    frames the miniport sent for a packet's NBL (wire_table: WireFrame rows), each with the
    packet's timestamp. Counts frames and bytes per packet. Returns the bytes written.
    ``wire``: the wire arena, or a list of arenas the frame offsets address as if joined
    end to end (the sends of --workers shards, not copied into one)."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), end, "pkts")
    cdef const WireFrame* wf = <const WireFrame*>_host_buf(wire_table, sizeof(WireFrame), nframes,
                                                           "wire_table")
    cdef int64_t* fcount = <int64_t*>_host_buf(frames_per_pkt, 8, end, "frames_per_pkt")
    cdef int64_t* bcount = <int64_t*>_host_buf(bytes_per_pkt, 8, end, "bytes_per_pkt")
    cdef int64_t cap = out.shape[0], i, f = 0, pos = 0, need = 0, nif = unit_ns.shape[0]
    cdef uint8_t* o = _host_buf(out, 1, cap, "out") if cap else NULL
    cdef int64_t size = arena.shape[0], overhead = 16 if fmt < 2 else 35
    if snaplen < 1:
        raise ValueError("snaplen must be positive")
    need = _check_emit_rows(fmt, k, start, end, size, nif, True)
    cdef uint64_t[::1] frame_at = _frame_addresses(wire, wf, nframes)
    for f in range(nframes):
        need += overhead + wf[f].len
    if need > cap:
        raise ValueError(f"output buffer of {cap} bytes, {need} needed")
    f = 0
    with nogil:
        for i in range(start, end):
            fcount[i] = 0
            bcount[i] = 0
            if k[i].kind == PKT_NOT_IP:
                pos += _emit_record(o + pos, fmt, &arena[k[i].off] if k[i].cap_len else NULL,
                                    k[i].cap_len, k[i].ts_ns, k[i].iface, snaplen, &unit_ns[0] if nif else NULL)
                fcount[i] = 1
                bcount[i] = k[i].cap_len
            elif k[i].nbl >= 0:
                while f < nframes and wf[f].nbl < k[i].nbl:
                    f += 1
                while f < nframes and wf[f].nbl == k[i].nbl:
                    pos += _emit_record(o + pos, fmt, <const uint8_t*><size_t>frame_at[f],
                                        wf[f].len, k[i].ts_ns, k[i].iface, snaplen,
                                        &unit_ns[0] if nif else NULL)
                    fcount[i] += 1
                    bcount[i] += wf[f].len
                    f += 1
    return pos


cdef int _check_pieces(pieces) except -1:
    if not isinstance(pieces, np.ndarray) or pieces.dtype != np.uint64:
        raise TypeError("pieces must be a uint64 array of (address, length) pairs")
    return 0


cdef inline int64_t _add_piece(uint64_t* pieces, int64_t n, uint64_t at,
                               uint64_t length) noexcept nogil:
    """Appends the piece (at, length) to the n so far, or lengthens the last one if it ends
    where this one starts; an empty piece adds nothing. Returns the new count."""
    if length == 0:
        return n
    if n and pieces[2 * n - 2] + pieces[2 * n - 1] == at:
        pieces[2 * n - 1] += length
        return n
    pieces[2 * n] = at
    pieces[2 * n + 1] = length
    return n + 1


def capture_pieces(int fmt, heads, pieces, pkts, int64_t start, int64_t end, wire, wire_table,
                   int64_t nframes, int64_t snaplen, const int64_t[::1] unit_ns,
                   frames_per_pkt, bytes_per_pkt):
    """capture_emit's records without copying the frames: each record's header (pcapng:
    and the padding and trailer of the record before it) laid out in ``heads``, and
    ``pieces`` (uint64 (address, length) pairs) the output in order, headers from ``heads``,
    frame bytes where they lie in the wire arenas, for write_pieces. Only for packets that
    are all IP: a not-IP record lives in the input arena, which may change before the pieces
    are written. Counts frames and bytes per packet as capture_emit does. ``heads`` needs 35
    bytes per frame (plus 4), ``pieces`` 2 pairs per frame (plus 1). Returns (pieces used,
    bytes of output)."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), end, "pkts")
    cdef const WireFrame* wf = <const WireFrame*>_host_buf(wire_table, sizeof(WireFrame), nframes,
                                                           "wire_table")
    cdef int64_t* fcount = <int64_t*>_host_buf(frames_per_pkt, 8, end, "frames_per_pkt")
    cdef int64_t* bcount = <int64_t*>_host_buf(bytes_per_pkt, 8, end, "bytes_per_pkt")
    _check_pieces(pieces)
    cdef int64_t hcap = heads.shape[0], pcap = pieces.shape[0] // 2, nif = unit_ns.shape[0]
    if snaplen < 1:
        raise ValueError("snaplen must be positive")
    if hcap < 35 * nframes + 4 or pcap < 2 * nframes + 1:
        raise ValueError(f"heads ({hcap} bytes) or pieces ({pcap} pairs) too small for "
                         f"{nframes} frames")
    cdef uint8_t* h = _host_buf(heads, 1, hcap, "heads")
    cdef uint64_t* pc = <uint64_t*>_host_buf(pieces, 16, pcap, "pieces")
    _check_emit_rows(fmt, k, start, end, 0, nif, False)
    cdef uint64_t[::1] frame_at = _frame_addresses(wire, wf, nframes)
    cdef int64_t i, f = 0, hp = 0, hp0 = 0, n = 0, total = 0, incl, size
    cdef uint64_t head0 = <uint64_t><size_t>h
    with nogil:
        for i in range(start, end):
            fcount[i] = 0
            bcount[i] = 0
            if k[i].nbl < 0:
                continue
            while f < nframes and wf[f].nbl < k[i].nbl:
                f += 1
            while f < nframes and wf[f].nbl == k[i].nbl:
                incl = wf[f].len if wf[f].len <= snaplen else snaplen
                size = _record_head(h + hp, fmt, wf[f].len, incl, k[i].ts_ns, k[i].iface,
                                    &unit_ns[0] if nif else NULL)
                n = _add_piece(pc, n, head0 + <uint64_t>hp, <uint64_t>size)
                n = _add_piece(pc, n, frame_at[f], <uint64_t>incl)
                hp += size
                size = _record_tail(h + hp, fmt, incl)  # pcapng: next to the next header
                n = _add_piece(pc, n, head0 + <uint64_t>hp, <uint64_t>size)
                hp += size
                total += hp - hp0 + incl
                hp0 = hp
                fcount[i] += 1
                bcount[i] += wf[f].len
                f += 1
    return n, total


cdef extern from *:
    """
    #include <errno.h>
    #include <stdint.h>
    #if defined(__unix__) || defined(__APPLE__)
    #include <sys/uio.h>
    #define IPO_HAVE_WRITEV 1
    /* pieces: n (address, length) pairs, none empty. writev(2) 256 at a time (under any
       IOV_MAX); a short write resumes where it stopped, EINTR retries. 0 or the errno. */
    static int ipo_write_pieces(int fd, const uint64_t* pieces, int64_t n) {
        struct iovec v[256];
        int64_t i = 0, j;
        uint64_t done = 0, left;  /* done: bytes of piece i already written */
        while (i < n) {
            int m = 0;
            for (j = i; j < n && m < 256; j++, m++) {
                uint64_t skip = j == i ? done : 0;
                v[m].iov_base = (void*)(uintptr_t)(pieces[2 * j] + skip);
                v[m].iov_len = (size_t)(pieces[2 * j + 1] - skip);
            }
            ssize_t r = writev(fd, v, m);
            if (r < 0) {
                if (errno == EINTR) continue;
                return errno;
            }
            if (r == 0) return EIO;
            left = (uint64_t)r;
            while (left && i < n) {
                uint64_t rest = pieces[2 * i + 1] - done;
                if (left >= rest) { left -= rest; i++; done = 0; }
                else { done += left; left = 0; }
            }
        }
        return 0;
    }
    #else
    #define IPO_HAVE_WRITEV 0
    static int ipo_write_pieces(int fd, const uint64_t* pieces, int64_t n) { return ENOSYS; }
    #endif
    """
    int ipo_write_pieces(int fd, const uint64_t* pieces, int64_t n) nogil
    int IPO_HAVE_WRITEV


HAVE_WRITE_PIECES = bool(IPO_HAVE_WRITEV)


def write_pieces(int fd, pieces, int64_t n):
    """Write the n pieces capture_pieces laid out to the file descriptor, in order, whole
    (writev(2)); 0 or the errno (ENOSYS where there is no writev). The memory the pieces
    address must stay as it is until this returns."""
    _check_pieces(pieces)
    cdef int64_t cap = pieces.shape[0] // 2, i
    if n < 0 or n > cap:
        raise ValueError(f"{n} pieces asked for, {cap} given")
    cdef const uint64_t* pc = <const uint64_t*>_host_buf(pieces, 16, n, "pieces")
    for i in range(n):
        if pc[2 * i + 1] == 0 or pc[2 * i] == 0:
            raise ValueError(f"piece {i} is empty")
    cdef int err
    with nogil:
        err = ipo_write_pieces(fd, pc, n)
    return err


# -- the encrypt summary of a batch (io/capture.py BatchEncryptor._account) ---------------------

cdef enum:
    ACCOUNT_FIELDS = 8  # per owner: packets, bytes in, frames, bytes out, LSO packets,
                        # LSO segments, sent with status 0, sent with another status or refused


def capture_account(pkts, int64_t n, frames_per_pkt, bytes_per_pkt, status_per_pkt,
                    int64_t n_sa, sums):
    """One pass over a batch's n HostPkt rows and capture_emit's per-packet counts: adds to
    ``sums`` (int64, (n_sa + 1) rows of ACCOUNT_FIELDS; row n_sa: the packets passed in clear)
    what each owner's summary needs, and returns (bytes in, frames out, bytes out, not IP,
    malformed). A packet dropped with a fault below FAULT_WRONG_VERSION (the first refusal)
    is malformed and has no owner; a not-IP record neither."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef int64_t* fcount = <int64_t*>_host_buf(frames_per_pkt, 8, n, "frames_per_pkt")
    cdef int64_t* bcount = <int64_t*>_host_buf(bytes_per_pkt, 8, n, "bytes_per_pkt")
    cdef int64_t* st = <int64_t*>_host_buf(status_per_pkt, 8, n, "status_per_pkt")
    if n_sa < 0:
        raise ValueError("n_sa must not be negative")
    cdef int64_t* acc = <int64_t*>_host_buf(sums, 8, (n_sa + 1) * ACCOUNT_FIELDS, "sums")
    cdef int64_t i, owner, bytes_in = 0, frames = 0, bytes_out = 0, not_ip = 0, malformed = 0
    cdef int64_t* row
    for i in range(n):
        if k[i].kind != PKT_NOT_IP and k[i].kind != PKT_CLEAR and not (
                k[i].kind == PKT_DROP and k[i].fault < FAULT_WRONG_VERSION) \
                and not 0 <= k[i].sa < n_sa:
            raise ValueError(f"packet {i} names SA {k[i].sa} of {n_sa}")
    with nogil:
        for i in range(n):
            bytes_in += k[i].cap_len
            frames += fcount[i]
            bytes_out += bcount[i]
            if k[i].kind == PKT_NOT_IP:
                not_ip += 1
                continue
            if k[i].kind == PKT_DROP and k[i].fault < FAULT_WRONG_VERSION:
                malformed += 1
                continue
            owner = n_sa if k[i].kind == PKT_CLEAR else k[i].sa
            row = acc + owner * ACCOUNT_FIELDS
            row[0] += 1
            row[1] += k[i].cap_len
            row[2] += fcount[i]
            row[3] += bcount[i]
            if k[i].nbl >= 0:
                if k[i].kind == PKT_LSO:
                    row[4] += 1
                    row[5] += fcount[i]
                if st[i] == 0:
                    row[6] += 1
                else:
                    row[7] += 1
            else:
                row[7] += 1
    return bytes_in, frames, bytes_out, not_ip, malformed


# -- the link headers of a decrypt batch (io/decrypt.py CaptureDecryptor.emit_bulk) ------------

def capture_link_parse(const uint8_t[::1] arena, pkts, int64_t n, const int64_t[::1] vlan_types,
                       int64_t ipv4_type, int64_t ipv6_type):
    """For each of n records (HostPkt rows with off, cap_len and link set): l2_len the link
    header before IP — 0 on a raw IP link; on Ethernet 14 plus 4 per VLAN tag (an EtherType
    in ``vlan_types``, at most three) — or -1 when the record is not IP (too short, or
    another EtherType); kind PKT_NOT_IP and nbl -1 (written as read unless the caller says
    otherwise). Returns how many are IP."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef int64_t i, t, j, size = arena.shape[0], nv = vlan_types.shape[0], ip = 0, l2, cap
    cdef uint32_t kind
    cdef bint tagged
    for i in range(n):
        if k[i].off < 0 or k[i].cap_len < 0 or k[i].off + k[i].cap_len > size:
            raise ValueError(f"packet {i} lies outside the arena")
    with nogil:
        for i in range(n):
            k[i].kind = PKT_NOT_IP
            k[i].nbl = -1
            cap = k[i].cap_len
            if k[i].link != 1:
                k[i].l2_len = 0
                ip += 1
                continue
            k[i].l2_len = -1
            if cap < 14:
                continue
            l2 = 14
            for t in range(4):  # up to three tags, then the EtherType
                kind = (<uint32_t>arena[k[i].off + l2 - 2] << 8) | arena[k[i].off + l2 - 1]
                tagged = False
                if t < 3 and cap >= l2 + 4:
                    for j in range(nv):
                        if kind == vlan_types[j]:
                            tagged = True
                if not tagged:
                    break
                l2 += 4
            if kind == ipv4_type or kind == ipv6_type:
                k[i].l2_len = <int32_t>l2
                ip += 1
    return ip


cdef extern from *:
    """
    #include <errno.h>
    #if defined(__linux__)
    #include <fcntl.h>
    static int ipo_reserve_blocks(int fd, int64_t offset, int64_t length) {
        /* fallocate(2) with FALLOC_FL_KEEP_SIZE: blocks reserved, the file's size unchanged;
           never glibc's posix_fallocate, which writes zeros where the filesystem cannot */
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
    }
    #else
    static int ipo_reserve_blocks(int fd, int64_t offset, int64_t length) { return ENOSYS; }
    #endif
    """
    int ipo_reserve_blocks(int fd, int64_t offset, int64_t length) nogil


def reserve_blocks(int fd, int64_t offset, int64_t length):
    """Allocate the file's blocks for [offset, offset + length) without changing its size
    (Linux fallocate(2), FALLOC_FL_KEEP_SIZE); 0 or the errno (io/atomic.py)."""
    if offset < 0 or length <= 0:
        raise ValueError("reserve_blocks: offset must be >= 0 and length > 0")
    cdef int err
    with nogil:
        err = ipo_reserve_blocks(fd, offset, length)
    return err
