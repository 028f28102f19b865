# Shared helpers of the compiled stages: byte order, RFC 1071 checksums, ESP padding, and the
# bounds checks of the checked build. Included by _fastpath.pyx.

cdef extern from "ipo_config.h":
    const uint64_t SLOT_MASK "IPO_SLOT_MASK"
    const uint32_t STATUS_FAILURE "IPO_STATUS_FAILURE"
    const uint32_t STATUS_INVALID_PACKET "IPO_STATUS_INVALID_PACKET"
    const uint64_t UINT32_MAX "IPO_UINT32_MAX"
    const uint64_t UINT64_MAX "IPO_UINT64_MAX"

cdef extern from "ipo_config.h":
    void zero16n "ipo_zero16n" (void* p, size_t n16) noexcept nogil
    void zero_icv "ipo_zero_icv" (void* p, size_t n) noexcept nogil
    void zero_struct "ipo_zero_struct" (void* p, size_t n) noexcept nogil
    uint64_t icv_differs "ipo_icv_differs" (const void* a, const void* b, size_t n) noexcept nogil
    uint64_t any_nonzero "ipo_any_nonzero" (const void* p, size_t n) noexcept nogil
    void copy_ip_header "ipo_copy_ip_header" (void* dst, const void* src, size_t n) noexcept nogil
    void copy_icv "ipo_copy_icv" (void* dst, const void* src, size_t n) noexcept nogil

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

cdef extern from "ipo_config.h":
    # One's-complement sum of big-endian 16-bit words added to s, not folded; an odd tail byte
    # is zero-padded (RFC 1071).
    uint64_t csum_add "ipo_csum_add" (uint64_t s, const uint8_t* p, int64_t n) noexcept nogil

cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s

cdef inline int64_t mod_align(int64_t x, int64_t align) noexcept nogil:
    """x mod align for x >= 0 and align >= 1; a mask when align is a power of two (the
    alignments are 4, 8 and 16: a 64-bit division costs tens of cycles per packet)."""
    if align & (align - 1) == 0:
        return x & (align - 1)
    return x % align


cdef inline int64_t esp_pad(int64_t unpadded, int64_t align) noexcept nogil:
    """Pad bytes so that payload + pad + 2 is a multiple of align (docs/protocol.md)."""
    return mod_align(align - mod_align(unpadded, align), align)


cdef inline int check(int64_t off, int64_t n, int64_t size) except -1 nogil:
    """Bounds-checked build only: [off, off+n) must lie inside a buffer of `size` bytes."""
    if IPO_BOUNDS_CHECK:
        if off < 0 or n < 0 or off + n > size:
            with gil:
                raise IndexError(f"kernel access [{off}, {off + n}) outside a buffer of "
                                 f"{size} bytes")
    return 0



cdef inline bint plain_array(object a, int typenum, bint writable) noexcept:
    """A 1-D, C-contiguous, aligned, native-order numpy array of exactly that type (and
    writable when asked): its data pointer can be taken as is, without the cost of a
    typed-memoryview acquisition; anything else goes through a typed memoryview."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 1
            and cnp.PyArray_ISCARRAY_RO(arr) and cnp.PyArray_ISNOTSWAPPED(arr)
            and (not writable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline void* array_data(object a) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int64_t array_len(object a) noexcept:
    return cnp.PyArray_DIM(<cnp.ndarray>a, 0)


cdef object arena_from(object reuse, int64_t n):
    """An n-byte uint8 output arena: the first n bytes of ``reuse`` when it is a writable
    plain uint8 array that long (a caller's arena that nothing else holds any more:
    datapath/arenas.py), else a new one. Its bytes are undefined either way."""
    if reuse is not None and plain_array(reuse, cnp.NPY_UINT8, True) and array_len(reuse) >= n:
        return reuse[:n]
    return new_array(n, cnp.NPY_UINT8)


cdef inline object new_array(int64_t n, int typenum):
    """np.empty(n, dtype) through numpy's C API: a Python-level np.empty call costs about
    0.4 us more, and a send makes seven arrays."""
    cdef cnp.npy_intp dim = <cnp.npy_intp>n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef class BatchView:
    """A validated C view of a batch (arena, nb_off, nb_len, nb_nbl, oob_bytes): the arrays
    (or the memoryviews of other buffers) stay alive with it; the stages read the raw
    pointers."""
    cdef object keep
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
        arena, nb_off, nb_len = batch.arena, batch.nb_off, batch.nb_len
        nb_nbl, oob_bytes = batch.nb_nbl, batch.oob_bytes
        self.keep = (arena, nb_off, nb_len, nb_nbl, oob_bytes)
        for name, value in zip(("arena", "nb_off", "nb_len", "nb_nbl", "oob_bytes"), self.keep):
            if value is None:
                raise TypeError(f"batch.{name} must be an array, not None")
        cdef int64_t n_nb, i, size, n_oob
        if plain_array(arena, cnp.NPY_UINT8, False):
            self.c_arena, size = <const uint8_t*>array_data(arena), array_len(arena)
        else:
            self.arena = arena
            size = self.arena.shape[0]
            self.c_arena = &self.arena[0] if size else NULL
        if plain_array(nb_off, cnp.NPY_INT64, False):
            self.c_nb_off, n_nb = <const int64_t*>array_data(nb_off), array_len(nb_off)
        else:
            self.nb_off = nb_off
            n_nb = self.nb_off.shape[0]
            self.c_nb_off = &self.nb_off[0] if n_nb else NULL
        if plain_array(nb_len, cnp.NPY_INT64, False) and array_len(nb_len) == n_nb:
            self.c_nb_len = <const int64_t*>array_data(nb_len)
        else:
            self.nb_len = nb_len
            if self.nb_len.shape[0] != n_nb:
                raise ValueError("nb_off, nb_len and nb_nbl differ in length")
            self.c_nb_len = &self.nb_len[0] if n_nb else NULL
        if plain_array(nb_nbl, cnp.NPY_INT32, False) and array_len(nb_nbl) == n_nb:
            self.c_nb_nbl = <const int32_t*>array_data(nb_nbl)
        else:
            self.nb_nbl = nb_nbl
            if self.nb_nbl.shape[0] != n_nb:
                raise ValueError("nb_off, nb_len and nb_nbl differ in length")
            self.c_nb_nbl = &self.nb_nbl[0] if n_nb else NULL
        if plain_array(oob_bytes, cnp.NPY_UINT8, False):
            self.c_oob, n_oob = <const NblOob*>array_data(oob_bytes), array_len(oob_bytes)
        else:
            self.oob_bytes = oob_bytes
            n_oob = self.oob_bytes.shape[0]
            self.c_oob = <const NblOob*>&self.oob_bytes[0] if n_oob else NULL
        if n_oob % sizeof(NblOob):
            raise ValueError("oob buffer size does not match the NblOob layout")
        self.n_nb, self.n_nbl, self.arena_size = n_nb, n_oob // sizeof(NblOob), size
        if self.n_nbl == 0:
            self.c_oob = NULL
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


def internet_checksum_sum(const uint8_t[::1] data, uint64_t seed=0):
    """The folded RFC 1071 one's-complement sum of ``data`` (big-endian 16-bit words, an odd
    tail byte zero-padded) plus ``seed``: the kernels' csum_add, for the tests."""
    cdef int64_t n = data.shape[0]
    cdef uint64_t s
    with nogil:
        s = csum_add(seed, &data[0] if n else NULL, n)
    return csum_fold(s)


from cpython.bytes cimport PyBytes_FromStringAndSize as _bytes_of_size


def bytes_slices(const uint8_t[::1] arena, const int64_t[::1] off, const int64_t[::1] length):
    """[bytes(arena[off[i]:off[i] + length[i]]) for each i]: the frames of a send as bytes
    objects, made in one compiled loop (WireFrames.frames). ValueError if a slice leaves the
    arena."""
    cdef Py_ssize_t i, n = off.shape[0]
    cdef int64_t size = arena.shape[0]
    if length.shape[0] != n:
        raise ValueError("bytes_slices: off and length differ in length")
    for i in range(n):
        if off[i] < 0 or length[i] < 0 or off[i] > size - length[i]:
            raise ValueError(f"bytes_slices: slice {i} leaves the {size}-byte arena")
    cdef list out = [None] * n
    cdef const char* base = <const char*>&arena[0] if size else <const char*>NULL
    for i in range(n):
        out[i] = _bytes_of_size(base + off[i] if base != NULL else NULL, length[i])
    return out
