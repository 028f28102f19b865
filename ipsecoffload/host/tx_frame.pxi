# Host stack framing in compiled code (docs/send-path.md, "Host framing"): what
# host/stack.py's Python framer does per packet, done for a whole batch. Included by
# _fastpath.pyx. host/stack.py stays the twin (the tests compare the two byte for byte) and the
# general path for what this one does not frame (caller IVs; transport over tunnel with IVs
# the stack draws).
#
# host_classify: link header (Ethernet with 802.1Q / 802.1ad tags, or raw IP), IPv4/IPv6
#   parse, first-match SA selectors, fragment and LSO decisions, one pass.
# host_frame: per packet the frame the miniport takes (RFC 4303 §2 ESP header, padding and
#   trailer, RFC 4302 §2 AH header with its ICV field zero, RFC 3948 §2.1 UDP header,
#   tunnel outer header with RFC 6040 normal-mode ECN copy, LSO super-packet layout) and its NBL out-of-band info; sequence numbers per SA, checked
#   against the SA's last number (RFC 4303 §3.3.3: never cycled).

# -- structs (mirrored by numpy dtypes in host/tx_frame.py; a test asserts the layout) -------

ctypedef struct HostSelector:
    uint8_t src_net[16]
    uint8_t src_mask[16]
    uint8_t dst_net[16]
    uint8_t dst_mask[16]
    uint16_t sport
    uint16_t dport
    uint8_t src_version       # 0: any source
    uint8_t dst_version
    uint8_t n_protos          # 0: any protocol
    uint8_t protos[2]
    uint8_t has_sport
    uint8_t has_dport
    uint8_t tunnel            # its packets leave in a tunnel (tunnel mode, or via): never LSO
    uint8_t reserved[4]

ctypedef struct HostPkt:
    int64_t off               # the record's first byte (link header) in the input arena
    int64_t ts_ns
    int32_t cap_len           # captured bytes of the record
    int32_t l2_len            # link header bytes
    int32_t ip_len            # the IP packet's length from its header
    int32_t l4_off            # after the IPv4 header / the IPv6 headers ESP follows
    int32_t nh_at             # the byte that names the protocol at l4_off
    int32_t tcp_len           # TCP header bytes (LSO)
    int32_t sa                # SA index; -1: none
    int32_t nsn               # sequence numbers it takes (LSO: one per segment)
    uint64_t sn               # host_frame: its first sequence number
    int32_t nbl               # host_frame: its NBL in the send; -1: none
    int32_t iface             # capture interface
    uint8_t kind              # PKT_*
    uint8_t fault             # FAULT_*: why it was dropped
    uint8_t version
    uint8_t proto             # the protocol at l4_off (the ESP trailer's Next Header)
    uint8_t link              # 0 raw IP, 1 Ethernet
    uint8_t reserved[3]

ctypedef struct HostSa:
    uint64_t handle[2]        # offload handle of the IPv4 [0] / IPv6 [1] bundle; 0: not added
    uint64_t next_seq         # in/out; 0 after 2**64 - 1 was used
    uint64_t limit            # the last usable sequence number
    uint64_t first_sn         # out: first number used by this call (0: none)
    uint64_t last_sn          # out: last number used by this call
    uint32_t spi
    uint16_t udp_sport
    uint16_t udp_dport
    uint8_t tunnel
    uint8_t outer_ipv6
    uint8_t udp_encap
    uint8_t iv_len
    uint8_t icv_len
    uint8_t align
    uint8_t esn
    uint8_t versions          # bit 0: may use an IPv4 bundle, bit 1: an IPv6 bundle
    uint8_t used              # out: bundles used by this call (bits as ``versions``)
    uint8_t ah                # 0: ESP alone; 1: AH alone; 2: AH then ESP (RFC 4302 §3.1)
    uint8_t ah_body           # AH header bytes before padding: 12 + IV + ICV (RFC 4302 §2)
    uint8_t reserved[2]
    uint32_t ah_spi
    uint8_t tun_src[16]
    uint8_t tun_dst[16]
    int32_t via               # transport over tunnel: the row of the tunnel SA; -1: none
    uint8_t reserved2[4]

cpdef enum PktKind:
    PKT_DROP = 0
    PKT_NOT_IP = 1
    PKT_CLEAR = 2
    PKT_ESP = 3
    PKT_LSO = 4

cpdef enum PktFault:
    FAULT_NONE = 0
    FAULT_EMPTY = 1
    FAULT_NOT_IP_VERSION = 2
    FAULT_TRUNCATED = 3
    FAULT_BAD_IPV4 = 4
    FAULT_BAD_TCP = 5
    FAULT_LINK_TRUNCATED = 6
    FAULT_FRAGMENT = 7
    FAULT_WRONG_VERSION = 16   # refusals of the host stack from here on
    FAULT_TOO_LONG = 17
    FAULT_ESP_OFFSET = 18
    FAULT_LSO_PARAMS = 19
    FAULT_NO_BUNDLE = 20
    FAULT_EXHAUSTED = 21
    FAULT_ARENA = 22

HOST_STRUCT_SIZES = {"HostSelector": sizeof(HostSelector), "HostPkt": sizeof(HostPkt),
                     "HostSa": sizeof(HostSa)}


def host_struct_offsets():
    """Field offsets of the host framing structs (the layout test)."""
    cdef HostSelector s
    cdef HostPkt p
    cdef HostSa a
    return {
        "HostSelector": {"src_net": <char*>&s.src_net - <char*>&s, "dst_mask": <char*>&s.dst_mask - <char*>&s,
                         "sport": <char*>&s.sport - <char*>&s, "src_version": <char*>&s.src_version - <char*>&s,
                         "protos": <char*>&s.protos - <char*>&s, "tunnel": <char*>&s.tunnel - <char*>&s},
        "HostPkt": {"off": <char*>&p.off - <char*>&p, "ts_ns": <char*>&p.ts_ns - <char*>&p,
                    "cap_len": <char*>&p.cap_len - <char*>&p, "sa": <char*>&p.sa - <char*>&p,
                    "sn": <char*>&p.sn - <char*>&p, "nbl": <char*>&p.nbl - <char*>&p,
                    "iface": <char*>&p.iface - <char*>&p, "kind": <char*>&p.kind - <char*>&p,
                    "link": <char*>&p.link - <char*>&p},
        "HostSa": {"handle": <char*>&a.handle - <char*>&a, "next_seq": <char*>&a.next_seq - <char*>&a,
                   "last_sn": <char*>&a.last_sn - <char*>&a, "spi": <char*>&a.spi - <char*>&a,
                   "tunnel": <char*>&a.tunnel - <char*>&a, "used": <char*>&a.used - <char*>&a,
                   "ah": <char*>&a.ah - <char*>&a, "ah_spi": <char*>&a.ah_spi - <char*>&a,
                   "tun_src": <char*>&a.tun_src - <char*>&a, "tun_dst": <char*>&a.tun_dst - <char*>&a,
                   "via": <char*>&a.via - <char*>&a},
    }


cdef inline uint8_t* _host_buf(object array, int64_t itemsize, int64_t n, str name) except? NULL:
    """Data pointer of a writable C-contiguous one-dimensional array of n items."""
    if not isinstance(array, np.ndarray) or array.ndim != 1 \
            or not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError(f"{name} must be a writable contiguous one-dimensional array")
    if array.nbytes < n * itemsize:
        raise ValueError(f"{name} holds {array.nbytes} bytes, {n * itemsize} are needed")
    return <uint8_t*>cnp.PyArray_DATA(array) if n else NULL


# -- classify ---------------------------------------------------------------------------------

cdef inline int _prefix_match(const uint8_t* addr, const uint8_t* net, const uint8_t* mask,
                              int n) noexcept nogil:
    cdef int i
    for i in range(n):
        if (addr[i] & mask[i]) != net[i]:
            return 0
    return 1


cdef uint8_t _classify_one(const uint8_t* rec, HostPkt* k, const HostSelector* sel, int nsel,
                           int64_t mss) noexcept nogil:
    """Sets k's link, IP and SA fields; returns the fault (kind PKT_DROP) or 0. Mirrors
    host/packetinfo.py (selectors, fragments, LSO) and host/stack.py (where ESP goes)."""
    cdef int64_t cap = k.cap_len, l2 = 0, n, length, pos, th = 0, payload = -1
    cdef uint32_t et
    cdef const uint8_t* p
    cdef uint8_t proto, version
    cdef int fragment = 0, later = 0, ports = 0, lso_ok = 0, i, j, alen, hit
    cdef uint16_t sport = 0, dport = 0
    cdef const uint8_t* src
    cdef const uint8_t* dst
    cdef int64_t off6, nh6
    cdef bint routed
    k.sa = -1
    k.nsn = 1
    if k.link:
        if cap < 14:
            return FAULT_LINK_TRUNCATED
        et = ld16(rec + 12)
        l2 = 14
        # IEEE 802.1Q / 802.1ad tags: 4 bytes each, then the next EtherType
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if l2 + 4 > cap:
                return FAULT_LINK_TRUNCATED
            et = ld16(rec + l2 + 2)
            l2 += 4
        k.l2_len = <int32_t>l2
        if et != 0x0800 and et != 0x86DD:
            k.kind = PKT_NOT_IP
            return 0
    k.l2_len = <int32_t>l2
    p = rec + l2
    n = cap - l2
    if n < 1:
        return FAULT_EMPTY
    version = p[0] >> 4
    k.version = version
    if version == 4:
        if n < 20:
            return FAULT_TRUNCATED
        pos = (p[0] & 0x0F) * 4
        length = ld16(p + 2)
        if pos < 20 or length < pos:
            return FAULT_BAD_IPV4
        if length > n:
            return FAULT_TRUNCATED
        fragment = (ld16(p + 6) & 0x3FFF) != 0
        later = (ld16(p + 6) & 0x1FFF) != 0
        proto = p[9]
        k.l4_off = <int32_t>pos
        k.nh_at = 9
        k.proto = proto
        src, dst, alen = p + 12, p + 16, 4
    elif version == 6:
        if n < 40:
            return FAULT_TRUNCATED
        length = 40 + ld16(p + 4)
        if length > n:
            return FAULT_TRUNCATED
        proto = p[6]
        pos = 40
        while proto == 0 or proto == 43 or proto == 60 or proto == 44:
            if pos + 8 > length:
                return FAULT_TRUNCATED
            if proto == 44:
                fragment = 1
                later = later or (ld16(p + pos + 2) >> 3) != 0
                proto = p[pos]
                pos += 8
                if later:
                    break
            else:
                proto = p[pos]
                pos += (p[pos + 1] + 1) * 8
        if pos > length:
            return FAULT_TRUNCATED
        # where ESP goes: after hop-by-hop, routing and destination options, but before
        # destination options that follow a routing header (the placement Linux uses;
        # host/stack.py _parse_ipv6)
        nh6, off6 = 6, 40
        routed = False
        while p[nh6] == 0 or p[nh6] == 43 or p[nh6] == 60:
            if p[nh6] == 60 and routed:
                break
            routed = routed or p[nh6] == 43
            if off6 + 2 > length or off6 + (p[off6 + 1] + 1) * 8 > length:
                break  # not reached: the walk above found the packet whole
            nh6, off6 = off6, off6 + (p[off6 + 1] + 1) * 8
        k.l4_off = <int32_t>off6
        k.nh_at = <int32_t>nh6
        k.proto = p[nh6]
        src, dst, alen = p + 8, p + 24, 16
    else:
        return FAULT_NOT_IP_VERSION
    k.ip_len = <int32_t>length
    if not later and (proto == 6 or proto == 17):
        if pos + (20 if proto == 6 else 8) > length:
            return FAULT_TRUNCATED
        sport, dport, ports = ld16(p + pos), ld16(p + pos + 2), 1
        if proto == 6:
            th = (p[pos + 12] >> 4) * 4
            if th < 20 or pos + th > length:
                return FAULT_BAD_TCP
            payload = length - pos - th
            lso_ok = not (fragment or p[pos + 13] & 0x26 or p[pos + 18] or p[pos + 19])
    for i in range(nsel):
        if sel[i].src_version and (sel[i].src_version != version
                                   or not _prefix_match(src, sel[i].src_net, sel[i].src_mask, alen)):
            continue
        if sel[i].dst_version and (sel[i].dst_version != version
                                   or not _prefix_match(dst, sel[i].dst_net, sel[i].dst_mask, alen)):
            continue
        if sel[i].n_protos:
            hit = 0
            for j in range(sel[i].n_protos):
                hit = hit or sel[i].protos[j] == proto
            if not hit:
                continue
        if sel[i].has_sport and (not ports or sport != sel[i].sport):
            continue
        if sel[i].has_dport and (not ports or dport != sel[i].dport):
            continue
        k.sa = i
        break
    if k.sa < 0:
        k.kind = PKT_CLEAR
        return 0
    if fragment:
        return FAULT_FRAGMENT
    k.kind = PKT_ESP
    if mss > 0 and proto == 6 and lso_ok and payload > mss and not sel[k.sa].tunnel:
        k.kind = PKT_LSO
        k.tcp_len = <int32_t>th
        k.nsn = <int32_t>((payload + mss - 1) // mss)
    return 0


def host_classify(const uint8_t[::1] arena, pkts, int64_t n, selectors, int64_t nsel,
                  int64_t mss):
    """Classify n packets (HostPkt rows with off, cap_len and link set) against nsel
    selectors (HostSelector rows, first match wins); mss > 0 makes LSO super-packets of TCP
    packets with more payload under transport SAs. Sets kind, fault, the IP fields, sa, nsn."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef const HostSelector* sel = <const HostSelector*>_host_buf(
        selectors, sizeof(HostSelector), nsel, "selectors")
    cdef int64_t i, size = arena.shape[0]
    cdef const uint8_t* base = &arena[0] if size else NULL
    for i in range(n):
        if k[i].off < 0 or k[i].cap_len < 0 or k[i].off + k[i].cap_len > size:
            raise ValueError(f"packet {i} lies outside the arena")
    with nogil:
        for i in range(n):
            k[i].kind = PKT_DROP
            k[i].nbl = -1
            k[i].fault = _classify_one(base + k[i].off, &k[i], sel, <int>nsel, mss)
            if k[i].fault:
                k[i].kind = PKT_DROP


def host_pack_rows(list packets, pkts):
    """HostPkt rows (off and cap_len; the caller zeroed the rest) for bytes packets laid end
    to end; returns their total length, or -1 at the first packet that is not bytes (or
    longer than a row can say): the caller then takes its general path."""
    cdef int64_t n = len(packets), i, off = 0, m
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef object p
    for i in range(n):
        p = packets[i]
        if not PyBytes_CheckExact(p):
            return -1
        m = PyBytes_GET_SIZE(p)
        if m > 0x7FFFFFFF:
            return -1
        k[i].off = off
        k[i].cap_len = <int32_t>m
        off += m
    return off


def host_pack(list packets, uint8_t[::1] out, pkts):
    """The bytes objects of ``packets`` copied into ``out`` where HostPkt rows ``pkts`` (one
    per packet, off and cap_len set) place them: b"".join's work into a buffer the caller
    keeps (host/tx_frame.py _pack)."""
    cdef int64_t n = len(packets), i, size = out.shape[0]
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef object p
    for i in range(n):
        p = packets[i]
        if not PyBytes_CheckExact(p) or PyBytes_GET_SIZE(p) != k[i].cap_len:
            raise ValueError(f"packet {i} is not bytes of its row's length")
        if k[i].off < 0 or k[i].off + k[i].cap_len > size:
            raise ValueError(f"packet {i} lies outside the arena")
        if k[i].cap_len:
            memcpy(&out[k[i].off], PyBytes_AS_STRING(p), k[i].cap_len)


def host_parse_for_stack(const uint8_t[::1] arena, pkts, int64_t n):
    """HostStack.send's parse (host/stack.py parse_ip_packet) of n raw IP packets: IP fields,
    kind PKT_ESP with sa 0, or PKT_DROP with the fault (the Python framer then says why). A
    fragment keeps its IP fields with FAULT_FRAGMENT (tunnel mode carries fragments)."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef int64_t i, size = arena.shape[0], m, length, off, nh
    cdef bint routed
    cdef const uint8_t* p
    for i in range(n):
        if k[i].off < 0 or k[i].cap_len < 0 or k[i].off + k[i].cap_len > size:
            raise ValueError(f"packet {i} lies outside the arena")
    with nogil:
        for i in range(n):
            k[i].kind, k[i].fault, k[i].sa, k[i].nsn, k[i].nbl, k[i].l2_len = PKT_DROP, 0, 0, 1, -1, 0
            p = &arena[k[i].off] if k[i].cap_len else NULL
            m = k[i].cap_len
            if m < 1 or (p[0] >> 4 != 4 and p[0] >> 4 != 6):
                k[i].fault = FAULT_NOT_IP_VERSION
                continue
            k[i].version = p[0] >> 4
            if k[i].version == 4:
                off = (p[0] & 0x0F) * 4
                if m < 20:
                    k[i].fault = FAULT_TRUNCATED
                    continue
                length = ld16(p + 2)
                if off < 20 or length < off or length > m:
                    k[i].fault = FAULT_BAD_IPV4
                    continue
                nh = 9
                if ld16(p + 6) & 0x3FFF:
                    k[i].fault = FAULT_FRAGMENT  # refused in transport mode only
            else:
                if m < 40:
                    k[i].fault = FAULT_TRUNCATED
                    continue
                length = 40 + ld16(p + 4)
                if length > m:
                    k[i].fault = FAULT_TRUNCATED
                    continue
                nh, off = 6, 40
                routed = False
                while p[nh] == 0 or p[nh] == 43 or p[nh] == 60:
                    if p[nh] == 60 and routed:
                        break  # destination options after a routing header stay after ESP
                    routed = routed or p[nh] == 43
                    if off + 2 > length or off + (p[off + 1] + 1) * 8 > length:
                        k[i].fault = FAULT_TRUNCATED
                        break
                    nh, off = off, off + (p[off + 1] + 1) * 8
                if k[i].fault:
                    continue
                if p[nh] == 44:
                    k[i].fault = FAULT_FRAGMENT
            k[i].ip_len, k[i].l4_off, k[i].nh_at, k[i].proto = <int32_t>length, <int32_t>off, <int32_t>nh, p[nh]
            if not k[i].fault:
                k[i].kind = PKT_ESP


cdef void _mark_lso_one(const uint8_t* base, HostPkt* k, int64_t mss,
                        const int64_t* limits) noexcept nogil:
    """host_mark_lso for one PKT_ESP row of a transport SA."""
    cdef int64_t l4 = k.off + k.l4_off, end = k.off + k.ip_len, tcp_len, payload
    cdef int64_t max_size = limits[2 if k.version == 6 else 0]
    cdef int64_t min_segments = limits[3 if k.version == 6 else 1]
    cdef int proto = k.proto
    # IPv6 destination options after a routing header stay after ESP: TCP past them
    # (RFC 8200 §4.1; docs/send-path.md, "Where TCP starts")
    while proto == 60 and k.version == 6 and l4 + 8 <= end:
        proto, l4 = base[l4], l4 + (base[l4 + 1] + 1) * 8
    if proto != 6 or l4 + 20 > end:
        return
    tcp_len = (base[l4 + 12] >> 4) * 4
    if tcp_len < 20 or l4 + tcp_len > end or base[l4 + 13] & 0x26 or base[l4 + 18] \
            or base[l4 + 19]:
        return  # docs/send-path.md: no SYN, RST, URG, urgent pointer 0
    payload = end - l4 - tcp_len
    if payload > mss and payload <= max_size and (payload + mss - 1) // mss >= min_segments:
        k.kind = PKT_LSO
        k.tcp_len = <int32_t>tcp_len
        k.nsn = <int32_t>((payload + mss - 1) // mss)


def host_mark_lso(const uint8_t[::1] arena, pkts, int64_t n, int64_t mss, sas, int64_t nsa,
                  const int64_t[::1] limits not None):
    """HostStack.send_batch's LSO decision (host/tx_frame.py _mark_lso is the twin): each
    PKT_ESP row of n (host_parse_for_stack's, ``sa`` set) whose SA (a HostSa row of ``sas``)
    is transport mode and not over a tunnel, TCP with more than ``mss`` payload bytes within the LSOv2 limits
    (``limits``: MaxOffLoadSize, MinSegmentCount for IPv4, then for IPv6), becomes PKT_LSO with
    its tcp_len and nsn."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef const HostSa* sa = <const HostSa*>_host_buf(sas, sizeof(HostSa), nsa, "sas")
    cdef int64_t i, size = arena.shape[0]
    cdef const uint8_t* base = &arena[0] if size else NULL
    if mss < 1:
        raise ValueError(f"mss must be at least 1, got {mss}")
    if limits.shape[0] != 4:
        raise ValueError("limits holds MaxOffLoadSize and MinSegmentCount for IPv4 and IPv6")
    for i in range(n):
        if k[i].kind != PKT_ESP:
            continue
        if k[i].sa < 0 or k[i].sa >= nsa:
            raise ValueError(f"packet {i} names SA {k[i].sa}, the table has {nsa}")
        if k[i].off < 0 or k[i].l4_off < 0 or k[i].ip_len < k[i].l4_off \
                or k[i].ip_len > k[i].cap_len or k[i].off + k[i].cap_len > size:
            raise ValueError(f"packet {i} lies outside the arena")
    with nogil:
        for i in range(n):
            if k[i].kind == PKT_ESP and not sa[k[i].sa].tunnel and sa[k[i].sa].via < 0:
                _mark_lso_one(base, &k[i], mss, &limits[0])


# -- frame ------------------------------------------------------------------------------------

cdef inline void _ip_length(uint8_t* d, int64_t length, int64_t ihl) noexcept nogil:
    """IPv4 Total Length and header checksum (RFC 791), or IPv6 Payload Length (RFC 8200)."""
    if d[0] >> 4 == 4:
        st16(d + 2, <uint32_t>length)
        d[10] = 0
        d[11] = 0
        st16(d + 10, (~csum_fold(csum_add(0, d, ihl))) & 0xFFFF)
    else:
        st16(d + 4, <uint32_t>(length - 40 if length > 40 else 0))


cdef int64_t _link(uint8_t* o, const uint8_t* rec, const HostPkt* k, int l2_mode,
                   const uint8_t* macs, int outer_v6) noexcept nogil:
    """The link header of an output frame: none, the stack's MACs, or the record's own (VLAN
    tags included); the EtherType is the outer IP version's. Returns its length."""
    cdef int64_t l2
    if l2_mode == 0 or (l2_mode == 2 and not k.link):
        return 0
    if l2_mode == 1:
        memcpy(o, macs, 12)
        l2 = 14
    else:
        l2 = k.l2_len
        memcpy(o, rec, l2)
    st16(o + l2 - 2, 0x86DD if outer_v6 else 0x0800)
    return l2


def host_missing_bundles(pkts, int64_t n, sas, int64_t nsa):
    """The (SA index, bundle) pairs (bundle 0: IPv4, 1: IPv6; a tunnel's from its outer
    version) that protected packets of the n classified HostPkt rows need and whose SA may
    carry but has no handle for yet, as a sorted list of SA index * 2 + bundle."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), n, "pkts")
    cdef HostSa* t = <HostSa*>_host_buf(sas, sizeof(HostSa), nsa, "sas")
    cdef int64_t i, s, b
    missing = set()
    for i in range(n):
        if k[i].kind < PKT_ESP:
            continue
        s = k[i].sa
        if not 0 <= s < nsa:
            raise ValueError(f"packet {i} names SA {s} of {nsa}")
        if t[s].tunnel == 1:
            b = 1 if t[s].outer_ipv6 else 0
        else:
            b = 1 if k[i].version == 6 else 0
        if (t[s].versions >> b) & 1 and t[s].handle[b] == 0:
            missing.add(2 * s + b)
        if t[s].via >= 0:  # transport over tunnel: the tunnel SA's bundle too
            if t[s].via >= nsa:
                raise ValueError(f"SA {s} names tunnel SA {t[s].via} of {nsa}")
            b = 1 if t[t[s].via].outer_ipv6 else 0
            if (t[t[s].via].versions >> b) & 1 and t[t[s].via].handle[b] == 0:
                missing.add(2 * t[s].via + b)
    return sorted(missing)


cdef inline int64_t _ah_len(const HostSa* s, bint v6) noexcept nogil:
    """AH header bytes with padding (RFC 4302 §2.2: a multiple of 8 over IPv6, of 4 over IPv4)."""
    return (s.ah_body + 7) & ~7 if v6 else (s.ah_body + 3) & ~3


cdef inline void _ah_header(uint8_t* e, uint8_t nxt, int64_t ahl, uint32_t spi,
                            uint64_t sn) noexcept nogil:
    """Next Header, Payload Length, Reserved, SPI, SN; IV, ICV and padding zero (RFC 4302 §2)."""
    e[0] = nxt
    e[1] = <uint8_t>(ahl // 4 - 2)
    e[2], e[3] = 0, 0
    st32(e + 4, spi)
    st32(e + 8, <uint32_t>sn)
    memset(e + 12, 0, ahl - 12)


cdef inline void _esp_trailer(uint8_t* e, int64_t pad, uint8_t nxt, int64_t icv) noexcept nogil:
    """Padding 1, 2, 3, ..., Pad Length, Next Header (RFC 4303 §2.4-2.6), ICV room zero."""
    cdef int64_t m
    for m in range(pad):
        e[m] = <uint8_t>(m + 1)
    e[pad] = <uint8_t>pad
    e[pad + 1] = nxt
    zero_icv(e + pad + 2, icv)


cdef inline bint _too_long(int64_t total, bint v6) noexcept nogil:
    return (not v6 and total > 0xFFFF) or (v6 and total - 40 > 0xFFFF)


cdef inline void _outer_header(uint8_t* d, const uint8_t* ip, bint inner_v6, const HostSa* u,
                               uint8_t proto, int ttl, int df_policy,
                               int* ipv4_id) noexcept nogil:
    """A tunnel SA's outer header over the inner packet ``ip``, but for its lengths and
    checksum (_ip_length): DSCP and ECN copied (RFC 6040 normal mode), the flow label from an
    IPv6 inner packet, the stack's TTL, IPv4 Identification and DF policy (0 copy, 1 set,
    2 clear)."""
    cdef uint8_t tos
    cdef uint32_t flow
    cdef bint df
    if not inner_v6:
        tos = ip[1]
        flow = 0
    else:
        tos = ((ip[0] & 0x0F) << 4) | (ip[1] >> 4)
        flow = ((ip[1] & 0x0F) << 16) | (ip[2] << 8) | ip[3]
    if not u.outer_ipv6:
        df = (not inner_v6 and (ip[6] & 0x40) != 0) if df_policy == 0 else df_policy == 1
        d[0], d[1] = 0x45, tos
        st16(d + 4, <uint32_t>ipv4_id[0])
        ipv4_id[0] = (ipv4_id[0] + 1) & 0xFFFF
        st16(d + 6, 0x4000 if df else 0)
        d[8], d[9] = <uint8_t>ttl, proto
        memcpy(d + 12, u.tun_src, 4)
        memcpy(d + 16, u.tun_dst, 4)
    else:
        st32(d, (6u << 28) | (<uint32_t>tos << 20) | flow)
        d[6], d[7] = proto, <uint8_t>ttl
        memcpy(d + 8, u.tun_src, 16)
        memcpy(d + 24, u.tun_dst, 16)


cdef int64_t _frame_via(uint8_t* o, int64_t room, const uint8_t* rec, const uint8_t* ip,
                        HostPkt* q, HostSa* s, HostSa* u, int l2_mode, const uint8_t* macs,
                        int ttl, int df_policy, int* ipv4_id, NblOob* ob) noexcept nogil:
    """Transport over tunnel, as host/stack.py _prepare_via frames it: the transport SA s's
    frame of the packet (slot 12 from its IP header, its ICV room reserved), then the tunnel
    SA u's frame around that datagram (its ICV room reserved too); OffloadHandle is s's
    bundle, TunnelHandle u's, and each SA takes one sequence number (docs/send-path.md,
    "Transport over tunnel"). Writes at most ``room`` bytes at o. Returns the frame's length;
    -1 with q.kind and q.fault set when the stack refuses the packet (nothing taken); -2 when
    the first ESN number either SA would use here has another high word than the first one
    it used in this call (the caller sends, updates the SA and calls again)."""
    cdef int tb = q.version == 6, ub = u.outer_ipv6
    cdef int64_t udp_t, ahl_t, esph_t, hl_t, esp_off_t, payload_t, pad_t, total_t
    cdef int64_t udp_u, ahl_u, esph_u, hl_u, esp_off_u, pad_u, total_u, l2, l2o
    cdef uint8_t nxt_t, nxt_u, proto_t, proto_u
    cdef uint64_t sn_t, sn_u
    cdef uint8_t* d
    cdef uint8_t* t
    if not (s.versions >> tb) & 1 or not (u.versions >> ub) & 1 or (s.udp_encap and tb):
        # a UDP-encapsulated transport SA over a tunnel carries IPv4 only (docs/send-path.md)
        q.kind, q.fault = PKT_DROP, FAULT_WRONG_VERSION
        return -1
    if not s.handle[tb] or not u.handle[ub]:
        q.kind, q.fault = PKT_DROP, FAULT_NO_BUNDLE
        return -1
    if s.next_seq == 0 or s.next_seq > s.limit or u.next_seq == 0 or u.next_seq > u.limit:
        q.kind, q.fault = PKT_DROP, FAULT_EXHAUSTED
        return -1
    sn_t, sn_u = s.next_seq, u.next_seq
    if (s.esn and s.first_sn and (sn_t >> 32) != (s.first_sn >> 32)) or (
            u.esn and u.first_sn and (sn_u >> 32) != (u.first_sn >> 32)):
        return -2
    # the transport layer: the datagram the tunnel carries
    udp_t = 8 if s.udp_encap else 0
    ahl_t = _ah_len(s, tb) if s.ah else 0
    esph_t = 0 if s.ah == 1 else 8 + s.iv_len
    proto_t = 51 if s.ah else (17 if udp_t else 50)
    hl_t = q.l4_off
    nxt_t = q.proto
    payload_t = q.ip_len - q.l4_off
    esp_off_t = hl_t + udp_t + ahl_t
    if (esph_t and (esp_off_t % 4 or esp_off_t > 1020)) or (ahl_t and (hl_t % 4 or hl_t > 1020)):
        q.kind, q.fault = PKT_DROP, FAULT_ESP_OFFSET
        return -1
    if s.ah == 1:
        pad_t = 0
        total_t = hl_t + ahl_t + payload_t
    else:
        pad_t = esp_pad(payload_t + 2, s.align)
        total_t = esp_off_t + esph_t + payload_t + pad_t + 2 + s.icv_len
    # the tunnel layer around it
    udp_u = 8 if u.udp_encap else 0
    ahl_u = _ah_len(u, ub) if u.ah else 0
    esph_u = 0 if u.ah == 1 else 8 + u.iv_len
    proto_u = 51 if u.ah else (17 if udp_u else 50)
    hl_u = 40 if ub else 20
    nxt_u = 41 if tb else 4
    esp_off_u = hl_u + udp_u + ahl_u
    if u.ah == 1:
        pad_u = 0
        total_u = hl_u + ahl_u + total_t
    else:
        pad_u = esp_pad(total_t + 2, u.align)
        total_u = esp_off_u + esph_u + total_t + pad_u + 2 + u.icv_len
    if _too_long(total_t, tb) or _too_long(total_u, ub):
        q.kind, q.fault = PKT_DROP, FAULT_TOO_LONG
        return -1
    l2o = 0 if l2_mode == 0 or (l2_mode == 2 and not q.link) else (14 if l2_mode == 1 else q.l2_len)
    if l2o + total_u > room:
        q.kind, q.fault = PKT_DROP, FAULT_ARENA
        return -1
    # commit: one sequence number of each SA, then the bytes
    s.next_seq = sn_t + 1  # 0 once 2**64 - 1 is used
    u.next_seq = sn_u + 1
    if not s.first_sn:
        s.first_sn = sn_t
    if not u.first_sn:
        u.first_sn = sn_u
    s.last_sn, u.last_sn = sn_t, sn_u
    s.used |= 1 << tb
    u.used |= 1 << ub
    q.sn = sn_t
    l2 = _link(o, rec, q, l2_mode, macs, ub)
    d = o + l2
    t = d + esp_off_u + esph_u
    copy_ip_header(t, ip, hl_t)
    t[q.nh_at] = proto_t
    memcpy(t + esp_off_t + esph_t, ip + hl_t, payload_t)
    if ahl_t:
        _ah_header(t + hl_t, nxt_t if s.ah == 1 else 50, ahl_t, s.ah_spi, sn_t)
        ob.ah_off4 = <uint8_t>(hl_t // 4)
    if esph_t:
        st32(t + esp_off_t, s.spi)
        st32(t + esp_off_t + 4, <uint32_t>sn_t)
        zero_icv(t + esp_off_t + 8, s.iv_len)
        _esp_trailer(t + esp_off_t + esph_t + payload_t, pad_t, nxt_t, s.icv_len)
        ob.next_header = nxt_t
        ob.pad_length = <uint8_t>pad_t
        ob.esp_off4 = <uint8_t>(esp_off_t // 4)
    if udp_t:
        st16(t + hl_t, s.udp_sport)
        st16(t + hl_t + 2, s.udp_dport)
        st16(t + hl_t + 4, <uint32_t>(total_t - hl_t))
        t[hl_t + 6], t[hl_t + 7] = 0, 0
    _ip_length(t, total_t, hl_t)
    _outer_header(d, ip, tb, u, proto_u, ttl, df_policy, ipv4_id)
    if ahl_u:
        _ah_header(d + hl_u, nxt_u if u.ah == 1 else 50, ahl_u, u.ah_spi, sn_u)
    if esph_u:
        st32(d + esp_off_u, u.spi)
        st32(d + esp_off_u + 4, <uint32_t>sn_u)
        zero_icv(d + esp_off_u + 8, u.iv_len)
        _esp_trailer(t + total_t, pad_u, nxt_u, u.icv_len)
    if udp_u:
        st16(d + hl_u, u.udp_sport)
        st16(d + hl_u + 2, u.udp_dport)
        st16(d + hl_u + 4, <uint32_t>(total_u - hl_u))
        d[hl_u + 6], d[hl_u + 7] = 0, 0
    _ip_length(d, total_u, hl_u)
    ob.offload_handle = s.handle[tb]
    ob.tunnel_handle = u.handle[ub]
    ob.l2_len = <uint16_t>l2
    return l2 + total_u


def host_frame(const uint8_t[::1] arena, pkts, int64_t start, int64_t end, sas, int64_t nsa,
               int l2_mode, const uint8_t[::1] macs, int ttl, int df_policy, int ipv4_id,
               int64_t mss, out, nb_off, nb_len, oob):
    """Frame packets [start, end) (host_classify or host_parse_for_stack output) for the
    miniport: frames into ``out``, one NBL each (nb_off/nb_len int64, oob NblOob rows).
    l2_mode 0: raw IP, 1: Ethernet with ``macs`` (dst, src), 2: the record's own link header.
    df_policy 0 copy / 1 set / 2 clear the outer IPv4 DF bit. Takes sequence numbers from
    ``sas`` (HostSa rows). Stops before a packet whose first ESN sequence number has another
    high word than the first one its SA used in this call (the stack sends UPDATE_SA between).
    Returns (NBLs, output bytes, index of the first packet not framed, next IPv4 ID)."""
    cdef HostPkt* k = <HostPkt*>_host_buf(pkts, sizeof(HostPkt), end, "pkts")
    cdef HostSa* sa_tab = <HostSa*>_host_buf(sas, sizeof(HostSa), nsa, "sas")
    cdef int64_t cap_out = out.shape[0] if isinstance(out, np.ndarray) else 0
    cdef uint8_t* o = _host_buf(out, 1, cap_out, "out") if cap_out else NULL
    cdef int64_t n_max = end - start if end > start else 0
    cdef int64_t* offs = <int64_t*>_host_buf(nb_off, 8, n_max, "nb_off")
    cdef int64_t* lens = <int64_t*>_host_buf(nb_len, 8, n_max, "nb_len")
    cdef NblOob* ob = <NblOob*>_host_buf(oob, sizeof(NblOob), n_max, "oob")
    cdef int64_t size = arena.shape[0], i, j = 0, pos = 0, need, l2, hl, udp, esp_off, ivl
    cdef int64_t payload, pad, total, icv, tcp_off, body, sn_need, ext, ahl, esph
    cdef const uint8_t* rec
    cdef const uint8_t* ip
    cdef uint8_t* d
    cdef uint8_t* e
    cdef HostPkt* q
    cdef HostSa* s
    cdef int bundle, v6out
    cdef uint8_t nxt, nh_ext, proto_out
    cdef uint64_t sn, last, seed
    cdef int64_t l2o, v
    if macs.shape[0] < 12 and l2_mode == 1:
        raise ValueError("macs must hold 12 bytes")
    if start < 0:
        raise ValueError("bad packet range")
    # the rows are checked once here, so that the loop below stays inside every buffer
    for i in range(start, end):
        q = &k[i]
        if q.kind < PKT_CLEAR:
            continue
        if q.off < 0 or q.cap_len < 0 or q.off + q.cap_len > size or q.l2_len < 0 \
                or q.ip_len < 0 or q.l2_len + q.ip_len > q.cap_len \
                or (q.link and l2_mode == 2 and q.l2_len < 14):
            raise ValueError(f"packet {i} lies outside the arena")
        if q.kind >= PKT_ESP:
            if not 0 <= q.sa < nsa:
                raise ValueError(f"packet {i} names SA {q.sa} of {nsa}")
            if q.version not in (4, 6) or q.ip_len < (20 if q.version == 4 else 40) \
                    or not (0 <= q.nh_at < q.l4_off <= q.ip_len) or q.l4_off < 20 or q.nsn < 1 \
                    or (q.kind == PKT_LSO and (q.tcp_len < 20 or q.l4_off + q.tcp_len > q.ip_len)):
                raise ValueError(f"packet {i} has inconsistent header fields")
            v = sa_tab[q.sa].via
            if v >= 0 and (v >= nsa or v == q.sa or not sa_tab[v].tunnel or sa_tab[q.sa].tunnel
                           or sa_tab[v].via >= 0 or q.kind == PKT_LSO):
                raise ValueError(f"packet {i}: SA {q.sa} names no tunnel SA to go over")
    for i in range(nsa):
        sa_tab[i].first_sn = 0
        sa_tab[i].last_sn = 0
        sa_tab[i].used = 0
    with nogil:
        i = start
        while i < end:
            q = &k[i]
            q.nbl = -1
            if q.kind < PKT_CLEAR:
                i += 1
                continue
            rec = &arena[q.off]
            ip = rec + q.l2_len
            zero_struct(&ob[j], sizeof(NblOob))
            l2o = 0 if l2_mode == 0 or (l2_mode == 2 and not q.link) else (
                14 if l2_mode == 1 else q.l2_len)
            if q.kind == PKT_CLEAR:
                need = l2o + q.ip_len
                if pos + need > cap_out:
                    q.kind, q.fault = PKT_DROP, FAULT_ARENA
                    i += 1
                    continue
                l2 = _link(o + pos, rec, q, l2_mode, &macs[0] if macs.shape[0] else NULL,
                           q.version == 6)
                memcpy(o + pos + l2, ip, q.ip_len)
                ob[j].l2_len = <uint16_t>l2
                offs[j], lens[j] = pos, l2 + q.ip_len
                pos += l2 + q.ip_len
                q.nbl = <int32_t>j
                j += 1
                i += 1
                continue
            s = &sa_tab[q.sa]
            if s.via >= 0:
                need = _frame_via(o + pos, cap_out - pos, rec, ip, q, s, &sa_tab[s.via], l2_mode,
                                  &macs[0] if macs.shape[0] else NULL, ttl, df_policy,
                                  &ipv4_id, &ob[j])
                if need == -2:
                    break  # the caller sends, updates the SA's high word, and calls again
                if need >= 0:
                    offs[j], lens[j] = pos, need
                    pos += need
                    q.nbl = <int32_t>j
                    j += 1
                i += 1
                continue
            bundle = s.outer_ipv6 if s.tunnel else q.version == 6
            if not (s.versions >> bundle) & 1:
                q.kind, q.fault = PKT_DROP, FAULT_WRONG_VERSION
                i += 1
                continue
            if not s.handle[bundle]:
                q.kind, q.fault = PKT_DROP, FAULT_NO_BUNDLE
                i += 1
                continue
            sn_need = q.nsn
            if s.next_seq == 0 or s.next_seq > s.limit or <uint64_t>(sn_need - 1) > s.limit - s.next_seq:
                q.kind, q.fault = PKT_DROP, FAULT_EXHAUSTED
                i += 1
                continue
            sn = s.next_seq
            if s.esn and s.first_sn and (sn >> 32) != (s.first_sn >> 32):
                break  # the caller sends, updates the SA's high word, and calls again
            # sizes and the host stack's refusals, before anything is written
            udp = 8 if s.udp_encap else 0
            ivl = s.iv_len
            icv = s.icv_len
            v6out = s.outer_ipv6 if s.tunnel else q.version == 6
            # AH (RFC 4302 §2.2: its length a multiple of 8 bytes over IPv6, of 4 over IPv4)
            # before ESP; an AH alone has no ESP header, trailer or ICV room
            ahl = _ah_len(s, v6out) if s.ah else 0
            esph = 0 if s.ah == 1 else 8 + ivl
            proto_out = 51 if s.ah else (17 if udp else 50)
            if s.tunnel:
                hl = 40 if s.outer_ipv6 else 20
                payload = q.ip_len
                nxt = 4 if q.version == 4 else 41
            else:
                hl = q.l4_off
                nxt = q.proto
                payload = q.ip_len - q.l4_off
            esp_off = hl + udp + ahl
            # EspHeaderOffset and AhHeaderOffset hold 4-byte units in 8 bits
            if (esph and (esp_off % 4 or esp_off > 1020)) or (ahl and (hl % 4 or hl > 1020)):
                q.kind, q.fault = PKT_DROP, FAULT_ESP_OFFSET
                i += 1
                continue
            if q.kind == PKT_LSO:
                body = payload  # [destination options,] TCP header and data
                pad = 0
                total = hl + udp + ahl + esph + body
                # IPv6 destination options after a routing header stay after ESP (l4_off is
                # before them): TCP starts past them (RFC 8200 §4.1; docs/send-path.md)
                ext = 0
                nh_ext = q.proto
                while nh_ext == 60 and q.l4_off + ext + 8 <= q.ip_len:
                    nh_ext = ip[q.l4_off + ext]
                    ext += (<int64_t>ip[q.l4_off + ext + 1] + 1) * 8
                tcp_off = (q.l2_len if l2_mode == 2 else (14 if l2_mode == 1 else 0)) \
                    + esp_off + esph + ext
                if tcp_off > 1023 or mss < 1 or mss > 0xFFFFF or nh_ext != 6 \
                        or q.l4_off + ext + q.tcp_len > q.ip_len:
                    q.kind, q.fault = PKT_DROP, FAULT_LSO_PARAMS
                    i += 1
                    continue
            elif s.ah == 1:
                pad = 0
                total = hl + ahl + payload
                if _too_long(total, v6out):
                    q.kind, q.fault = PKT_DROP, FAULT_TOO_LONG
                    i += 1
                    continue
            else:
                pad = esp_pad(payload + 2, s.align)
                total = hl + udp + ahl + 8 + ivl + payload + pad + 2 + icv
                if _too_long(total, v6out):
                    q.kind, q.fault = PKT_DROP, FAULT_TOO_LONG
                    i += 1
                    continue
            if pos + l2o + total > cap_out:
                q.kind, q.fault = PKT_DROP, FAULT_ARENA
                i += 1
                continue
            # commit: sequence numbers, then the bytes
            last = sn + <uint64_t>(sn_need - 1)
            s.next_seq = last + 1  # 0 once 2**64 - 1 is used
            if not s.first_sn:
                s.first_sn = sn
            s.last_sn = last
            s.used |= 1 << bundle
            q.sn = sn
            l2 = _link(o + pos, rec, q, l2_mode, &macs[0] if macs.shape[0] else NULL, v6out)
            d = o + pos + l2
            if s.tunnel:
                _outer_header(d, ip, q.version == 6, s, proto_out, ttl, df_policy, &ipv4_id)
                memcpy(d + esp_off + esph, ip, q.ip_len)
            else:
                copy_ip_header(d, ip, hl)
                d[q.nh_at] = proto_out
                memcpy(d + esp_off + esph, ip + hl, payload)
            if ahl:
                _ah_header(d + hl, nxt if s.ah == 1 else 50, ahl, s.ah_spi, sn)
                ob[j].ah_off4 = <uint8_t>(hl // 4)
            e = d + esp_off
            if esph:
                st32(e, s.spi)
                st32(e + 4, <uint32_t>sn)
                zero_icv(e + 8, ivl)
            if udp:
                st16(d + hl, s.udp_sport)
                st16(d + hl + 2, s.udp_dport)
                d[hl + 6], d[hl + 7] = 0, 0
            if q.kind == PKT_LSO:
                # TCP checksum seeded with the pseudo-header sum, lengths 0 (LSOv2,
                # docs/send-path.md)
                e = e + esph + ext
                if q.version == 4:
                    seed = csum_fold(csum_add(6, ip + 12, 8))
                else:
                    seed = csum_fold(csum_add(6, ip + 8, 32))
                st16(e + 16, <uint32_t>seed)
                if udp:
                    d[hl + 4], d[hl + 5] = 0, 0
                _ip_length(d, 0, hl)
                if esph:
                    ob[j].next_header = nxt  # TCP, or the destination options before it
                ob[j].lso_info = (<uint64_t>mss | (<uint64_t>tcp_off << 20) | (<uint64_t>1 << 30)
                                  | (<uint64_t>(q.version == 6) << 31))
            elif esph:
                _esp_trailer(d + esp_off + esph + payload, pad, nxt, icv)
                if udp:
                    st16(d + hl + 4, <uint32_t>(total - hl))
                _ip_length(d, total, hl)
                ob[j].next_header = nxt
                ob[j].pad_length = <uint8_t>pad
            else:
                _ip_length(d, total, hl)
            ob[j].offload_handle = s.handle[bundle]
            if esph:
                ob[j].esp_off4 = <uint8_t>(esp_off // 4)
            ob[j].l2_len = <uint16_t>l2
            offs[j], lens[j] = pos, l2 + total
            pos += l2 + total
            q.nbl = <int32_t>j
            j += 1
            i += 1
    return j, pos, i, ipv4_id
