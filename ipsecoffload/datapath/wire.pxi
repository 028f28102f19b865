# Shared helpers of the compiled stages: byte order, RFC 1071 checksums, ESP padding, and the
# bounds checks of the checked build. Included by _fastpath.pyx.

cdef extern from "ipo_config.h":
    const uint64_t SLOT_MASK "IPO_SLOT_MASK"
    const uint32_t STATUS_FAILURE "IPO_STATUS_FAILURE"
    const uint32_t STATUS_INVALID_PACKET "IPO_STATUS_INVALID_PACKET"
    const uint64_t UINT32_MAX "IPO_UINT32_MAX"
    const uint64_t UINT64_MAX "IPO_UINT64_MAX"

BOUNDS_CHECKED = bool(IPO_BOUNDS_CHECK)

cdef inline uint16_t ld16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])

cdef inline uint32_t ld32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void st16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF

cdef inline void st32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF

cdef inline void st64(uint8_t* p, uint64_t v) noexcept nogil:
    st32(p, <uint32_t>(v >> 32))
    st32(p + 4, <uint32_t>v)

cdef inline uint64_t csum_add(uint64_t s, const uint8_t* p, int64_t n) noexcept nogil:
    """One's-complement sum of big-endian 16-bit words; an odd tail byte is zero-padded."""
    cdef int64_t i = 0
    while i + 1 < n:
        s += (<uint64_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint64_t>p[i] << 8
    return s

cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s

cdef inline int64_t esp_pad(int64_t unpadded, int64_t align) noexcept nogil:
    """Pad bytes so that payload + pad + 2 is a multiple of align (spec §8.1)."""
    return (align - unpadded % align) % align


cdef inline int check(int64_t off, int64_t n, int64_t size) except -1 nogil:
    """Bounds-checked build only: [off, off+n) must lie inside a buffer of `size` bytes."""
    if IPO_BOUNDS_CHECK:
        if off < 0 or n < 0 or off + n > size:
            with gil:
                raise IndexError(f"kernel access [{off}, {off + n}) outside a buffer of {size} bytes")
    return 0



cdef class BatchView:
    """A validated C view of a batch (arena, nb_off, nb_len, nb_nbl, oob_bytes): the
    memoryviews stay alive with it; the stages read the raw pointers."""
    cdef const uint8_t[::1] arena
    cdef const int64_t[::1] nb_off
    cdef const int64_t[::1] nb_len
    cdef const int32_t[::1] nb_nbl
    cdef const uint8_t[::1] oob_bytes
    cdef const uint8_t* c_arena
    cdef const int64_t* c_nb_off
    cdef const int64_t* c_nb_len
    cdef const int32_t* c_nb_nbl
    cdef const NblOob* c_oob
    cdef int64_t arena_size, n_nb, n_nbl

    def __init__(self, batch):
        for name in ("arena", "nb_off", "nb_len", "nb_nbl", "oob_bytes"):
            if getattr(batch, name) is None:
                raise TypeError(f"batch.{name} must be an array, not None")
        self.arena = batch.arena
        self.nb_off = batch.nb_off
        self.nb_len = batch.nb_len
        self.nb_nbl = batch.nb_nbl
        self.oob_bytes = batch.oob_bytes
        cdef int64_t n_nb = self.nb_off.shape[0], i, size = self.arena.shape[0]
        if self.nb_len.shape[0] != n_nb or self.nb_nbl.shape[0] != n_nb:
            raise ValueError("nb_off, nb_len and nb_nbl differ in length")
        if self.oob_bytes.shape[0] % sizeof(NblOob):
            raise ValueError("oob buffer size does not match the NblOob layout")
        self.n_nb, self.n_nbl, self.arena_size = n_nb, self.oob_bytes.shape[0] // sizeof(NblOob), size
        self.c_arena = &self.arena[0] if size else NULL
        self.c_nb_off = &self.nb_off[0] if n_nb else NULL
        self.c_nb_len = &self.nb_len[0] if n_nb else NULL
        self.c_nb_nbl = &self.nb_nbl[0] if n_nb else NULL
        self.c_oob = <const NblOob*>&self.oob_bytes[0] if self.n_nbl else NULL
        cdef const int64_t* off = self.c_nb_off
        cdef const int64_t* ln = self.c_nb_len
        cdef const int32_t* nbl = self.c_nb_nbl
        for i in range(n_nb):
            if nbl[i] < 0 or nbl[i] >= self.n_nbl:
                raise ValueError("nb_nbl names an NBL outside the batch")
            if i and nbl[i] < nbl[i - 1]:
                raise ValueError("nb_nbl must be non-decreasing (an NBL's buffers are "
                                 "consecutive)")
            if off[i] < 0 or ln[i] < 0 or off[i] > size - ln[i]:
                raise ValueError("a NET_BUFFER lies outside the arena")
