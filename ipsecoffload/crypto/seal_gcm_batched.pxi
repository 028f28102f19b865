# Batched AES-GCM (RFC 4106) and AES-GMAC (RFC 4543) for a group of ops sharing one key:
# the counter blocks of the whole group are filled in C, ONE AES-ECB update_into call (OpenSSL
# through cryptography) turns them into keystream and tag masks, then one compiled pass XORs
# and computes GHASH (crypto/ghash.h). NIST SP 800-38D §7.1: J0 = nonce || 0^31 || 1, the
# text uses inc32(J0) onwards, T = MSB_t(GHASH_H(A, C) XOR E_K(J0)). Included by _fastpath.pyx.

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory

# Keystream bytes per ECB call: large enough that the call cost (about 2 us through
# cryptography) vanishes, small enough to stay in L2 between the AES pass and the XOR + GHASH
# pass. 256 KiB measured faster than 64 KiB and 128 KiB at 1400 and 9000 B on a Zen 3 VM
# (512 KiB L2), send and receive alike (docs/benchmarks.md).
cdef enum:
    GCM_CHUNK_BYTES = 262144
GCM_KEYSTREAM_CHUNK = GCM_CHUNK_BYTES

# Above this many text bytes an AES-GCM op with a 16-byte tag goes to OpenSSL's own GCM, one
# AESGCM.encrypt_into / decrypt_into call per op from this loop, on CPUs where that wins:
# with AVX-512 and VPCLMULQDQ OpenSSL runs a stitched VAES AES + GHASH far faster than its
# ECB (which the batched path uses) and pays the ~0.5 us call back from 8 KB (measured with
# `ipsecoffload bench`, docs/benchmarks.md). Without them (AES-NI and 128-bit PCLMULQDQ only,
# as on an AMD Zen 3 VM) batched ECB keystream + our GHASH is as fast per byte and saves the
# call: the batched path wins at every size measured (9000 B: 0.41 -> 0.54 of the raw
# cipher), so no op goes alone. IPSECOFFLOAD_GCM_ONE_CALL_MIN overrides it (0: every such op;
# a huge value: none), which the tests use to run both paths.
GCM_ONE_CALL_ENV = "IPSECOFFLOAD_GCM_ONE_CALL_MIN"
GCM_ONE_CALL_DEFAULT = 8192
# With the XTS engine (crypto/aes_engine.py) the batched keystream runs 1.6x ECB's speed and
# the batched path wins up to about 32 KB (send, Zen 4 VM, one A/B run: 9000 B 1885 -> 1430
# ns a packet batched, 16000 B 2650 -> 2354; 32000 B even; 60000 B one call 8802 against
# 10095)
GCM_ONE_CALL_XTS = 32768
GCM_ONE_CALL_NEVER = 0x7FFFFFFFFFFFFFFF
cdef int64_t _gcm_one_call_min = -1


def gcm_one_call_min():
    """The text length from which an AES-GCM op (16-byte tag) is one OpenSSL call: the
    environment's, else GCM_ONE_CALL_DEFAULT where the 512-bit GHASH path is usable (the CPUs
    where OpenSSL's own GCM is the faster one for large ops), else never."""
    global _gcm_one_call_min
    if _gcm_one_call_min < 0:
        import os
        text = os.environ.get(GCM_ONE_CALL_ENV, "")
        try:
            if text:
                value = int(text)
            else:
                value = GCM_ONE_CALL_NEVER
                if "vpclmul512" in ghash_usable_paths():
                    from ipsecoffload.crypto.aes_engine import engine
                    value = GCM_ONE_CALL_XTS if engine() == "xts" else GCM_ONE_CALL_DEFAULT
        except ValueError:
            raise ValueError(f"{GCM_ONE_CALL_ENV} must be a number of bytes, got "
                             f"{text[:20]!r}") from None
        _gcm_one_call_min = value if value >= 0 else 0
    return _gcm_one_call_min


def gcm_one_call_reset():
    """Reads IPSECOFFLOAD_GCM_ONE_CALL_MIN again at the next group (tests)."""
    global _gcm_one_call_min
    _gcm_one_call_min = -1


cdef inline int64_t gcm_one_call_limit() except -1:
    """gcm_one_call_min() without a Python call once it is known."""
    if _gcm_one_call_min >= 0:
        return _gcm_one_call_min
    return gcm_one_call_min()


cdef inline bint gcm_one_call(const CryptoOp* op, int64_t limit) noexcept nogil:
    return (op.suite == SUITE_AES_GCM and op.icv_len == 16 and op.text_len >= limit
            and op.icv_off == op.text_off + op.text_len)


cdef int gcm_ops_one_call(uint8_t* base, CryptoOp* op0, const int32_t* idx, int64_t n,
                          object aead, bint seal) except -1:
    """Each op through AESGCM.encrypt_into / decrypt_into over the arena in place: the text
    and, right after it, the 16-byte tag (RFC 4106 §4-5: nonce salt || IV, AAD SPI || [SN
    high word] || SN). A tag that does not verify is OP_AUTH_FAILED (the receive path puts such
    a text back as received)."""
    from cryptography.exceptions import InvalidTag
    cdef int64_t i
    cdef CryptoOp* op
    cdef uint8_t aad[12]
    cdef int64_t aad_len
    encrypt_into, decrypt_into = aead.encrypt_into, aead.decrypt_into
    for i in range(n):
        op = op0 + idx[i]
        gcm_aad_header(aad, &aad_len, base + op.auth_off, op)
        nonce = PyBytes_FromStringAndSize(<char*>op.nonce, 12)
        aad_bytes = PyBytes_FromStringAndSize(<char*>aad, aad_len)
        if seal:
            encrypt_into(nonce, PyMemoryView_FromMemory(<char*>(base + op.text_off),
                                                        op.text_len, PyBUF_READ),
                         aad_bytes, PyMemoryView_FromMemory(<char*>(base + op.text_off),
                                                            op.text_len + 16, PyBUF_WRITE))
            op.status = OP_DONE
            continue
        try:
            decrypt_into(nonce, PyMemoryView_FromMemory(<char*>(base + op.text_off),
                                                        op.text_len + 16, PyBUF_READ),
                         aad_bytes, PyMemoryView_FromMemory(<char*>(base + op.text_off),
                                                            op.text_len, PyBUF_WRITE))
            op.status = OP_DONE
        except InvalidTag:
            op.status = OP_AUTH_FAILED
    return 0


cdef extern from *:
    """
    #include <string.h>
    /* J0, inc32(J0), ...: n counter blocks from counter 1 (SP 800-38D 7.1 steps 2-3). */
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    /* The block with counter c: nonce || be32(c). */
    static inline __m128i ipo__gcm_ctr_block(__m128i nonce, uint32_t c) {
        uint32_t be = (c >> 24) | ((c >> 8) & 0xFF00u) | ((c << 8) & 0xFF0000u) | (c << 24);
        return _mm_or_si128(nonce, _mm_slli_si128(_mm_cvtsi32_si128((int)be), 12));
    }
    /* Counters that differ only in their last byte (a run up to the next multiple of 256)
     * are made by byte-wise adds to the run's first block, 4 blocks per step: about 2
     * instructions per block instead of 7. Short ops (< 8 blocks) skip the set-up. */
    static inline void ipo_gcm_counter_blocks(uint8_t* dst, const uint8_t* nonce, int64_t n) {
        uint32_t w[3];
        int64_t b = 0, end;
        __m128i* p = (__m128i*)(void*)dst;
        __m128i base, one, two, three, four;
        memcpy(w, nonce, 12);
        base = _mm_set_epi32(0, (int)w[2], (int)w[1], (int)w[0]);
        if (n < 8) {
            for (; b < n; b++) _mm_storeu_si128(p + b, ipo__gcm_ctr_block(base, (uint32_t)(b + 1)));
            return;
        }
        one = _mm_set_epi32(0x01000000, 0, 0, 0); /* 1 in byte 15 */
        two = _mm_add_epi8(one, one);
        three = _mm_add_epi8(two, one);
        four = _mm_add_epi8(two, two);
        while (b < n) {
            uint32_t c = (uint32_t)(b + 1);
            __m128i v = ipo__gcm_ctr_block(base, c);
            end = b + 256 - (int64_t)(c & 255); /* the run ends at the counter ending in 0xFF */
            if (end > n) end = n;
            for (; b + 4 <= end; b += 4) {
                _mm_storeu_si128(p + b, v);
                _mm_storeu_si128(p + b + 1, _mm_add_epi8(v, one));
                _mm_storeu_si128(p + b + 2, _mm_add_epi8(v, two));
                _mm_storeu_si128(p + b + 3, _mm_add_epi8(v, three));
                v = _mm_add_epi8(v, four);
            }
            for (; b < end; b++) {
                _mm_storeu_si128(p + b, v);
                v = _mm_add_epi8(v, one);
            }
        }
    }
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
    #include <immintrin.h>
    /* The same with AVX-512 (the CPUs of the 512-bit GHASH path, which the caller checks):
     * four blocks per 64-byte store, half the store count of the loop above; the keystream
     * buffer is written once per op, so the stores are the cost. */
    __attribute__((target("avx512f,avx512bw")))
    static void ipo_gcm_counter_blocks_512(uint8_t* dst, const uint8_t* nonce, int64_t n) {
        uint32_t w[3];
        int64_t b = 0, end;
        __m128i* p = (__m128i*)(void*)dst;
        __m128i base, v, one;
        __m512i v4, four4, lanes;
        if (n < 8) {
            ipo_gcm_counter_blocks(dst, nonce, n);
            return;
        }
        memcpy(w, nonce, 12);
        base = _mm_set_epi32(0, (int)w[2], (int)w[1], (int)w[0]);
        one = _mm_set_epi32(0x01000000, 0, 0, 0); /* 1 in byte 15 */
        lanes = _mm512_set_epi32(0x03000000, 0, 0, 0, 0x02000000, 0, 0, 0,
                                 0x01000000, 0, 0, 0, 0, 0, 0, 0); /* 0, 1, 2, 3 in byte 15 */
        four4 = _mm512_set4_epi32(0x04000000, 0, 0, 0);
        while (b < n) {
            uint32_t c = (uint32_t)(b + 1);
            v = ipo__gcm_ctr_block(base, c);
            end = b + 256 - (int64_t)(c & 255); /* the run ends at the counter ending in 0xFF */
            if (end > n) end = n;
            v4 = _mm512_add_epi8(_mm512_broadcast_i32x4(v), lanes);
            for (; b + 4 <= end; b += 4) {
                _mm512_storeu_si512((void*)(p + b), v4);
                v4 = _mm512_add_epi8(v4, four4);
            }
            v = _mm512_castsi512_si128(v4);
            for (; b < end; b++) {
                _mm_storeu_si128(p + b, v);
                v = _mm_add_epi8(v, one);
            }
        }
    }
    #define IPO_GCM_COUNTER_512 1
    #endif
    #else
    static inline void ipo_gcm_counter_blocks(uint8_t* dst, const uint8_t* nonce, int64_t n) {
        int64_t b;
        for (b = 0; b < n; b++) {
            uint32_t c = (uint32_t)(b + 1);
            memcpy(dst + 16 * b, nonce, 12);
            dst[16 * b + 12] = (uint8_t)(c >> 24);
            dst[16 * b + 13] = (uint8_t)(c >> 16);
            dst[16 * b + 14] = (uint8_t)(c >> 8);
            dst[16 * b + 15] = (uint8_t)c;
        }
    }
    #endif
    #ifndef IPO_GCM_COUNTER_512
    static inline void ipo_gcm_counter_blocks_512(uint8_t* dst, const uint8_t* nonce,
                                                  int64_t n) {
        ipo_gcm_counter_blocks(dst, nonce, n);
    }
    #endif
    """
    void gcm_counter_blocks "ipo_gcm_counter_blocks" (uint8_t* dst, const uint8_t* nonce,
                                                      int64_t n) noexcept nogil
    void gcm_counter_blocks_512 "ipo_gcm_counter_blocks_512" (
        uint8_t* dst, const uint8_t* nonce, int64_t n) noexcept nogil


cdef inline int64_t gcm_blocks_of(const CryptoOp* op) noexcept nogil:
    """Counter blocks an op needs: J0 (tag mask), then the text's keystream (GCM only)."""
    if op.suite == SUITE_AES_GMAC or op.suite == SUITE_AH_GMAC:
        return 1
    return 1 + (op.text_len + 15) // 16


cdef int64_t gcm_check_ops(int64_t size, const CryptoOp* op0, int64_t n_ops, const int32_t* idx,
                           int64_t n, bint seal, int64_t src_size, int64_t limit) except -1:
    """Every op of the group lies inside the arena and is a GCM/GMAC ESP op, or an AH
    AES-GMAC sign (seal) or verify (open) op; an out-of-place op (src_len > 0: AES-GCM only)
    reads inside the source (``src_size`` bytes; -1: none was given). Returns how many go
    to OpenSSL one call each (gcm_one_call with ``limit``)."""
    cdef int64_t i, j, big = 0
    cdef const CryptoOp* op
    for i in range(n):
        j = idx[i]
        if j < 0 or j >= n_ops:
            raise ValueError(f"idx[{i}] = {j} names no op")
        op = op0 + j
        if gcm_one_call(op, limit):
            big += 1
        if op.src_len:
            if op.suite != SUITE_AES_GCM:
                raise ValueError(f"op {j} is out of place but not an AES-GCM op")
            if src_size < 0:
                raise ValueError(f"op {j} is out of place and no source arena was given")
            check_op_source(op, j, size, src_size)
        if op.suite == SUITE_AH_GMAC:  # AH: header copy, rest of packet, IV || ICV
            if op.kind != (OP_AH_SIGN if seal else OP_AH_VERIFY) or op.iv_len != 8 \
                    or op.icv_len != 16:
                raise ValueError(f"op {j} is not an AH AES-GMAC {'sign' if seal else 'verify'}"
                                 f" op")
            if (op.ip_off < 0 or op.text_off < op.ip_off + 36 or op.text_off > size
                    or op.text_len < 0 or op.text_len > 0x7FFFFFFF
                    or op.text_len > size - op.text_off or op.auth_off < 0
                    or op.auth_off > size - (op.text_off - op.ip_off)
                    or op.icv_off < op.ip_off + 28 or op.icv_off > op.text_off - 16):
                raise ValueError(f"op {j} reaches outside the arena or its AH header")
            continue
        if op.suite != SUITE_AES_GCM and op.suite != SUITE_AES_GMAC:
            raise ValueError(f"op {j} is not AES-GCM or AES-GMAC (suite {op.suite})")
        if op.iv_len != 8 or op.icv_len not in (8, 12, 16) or (
                op.suite == SUITE_AES_GMAC and op.icv_len != 16):
            raise ValueError(f"op {j} has IV {op.iv_len} / ICV {op.icv_len} bytes")
        if (op.auth_off < 0 or op.text_len < 0 or op.text_len > 0x7FFFFFFF
                or op.text_off != op.auth_off + 16 or op.text_off > size - op.text_len
                or op.icv_off < 0 or op.icv_off > size - op.icv_len):
            raise ValueError(f"op {j} reaches outside the arena")
    return big


cdef inline void gcm_aad_header(uint8_t* aad, int64_t* aad_len, const uint8_t* esp,
                                const CryptoOp* op) noexcept nogil:
    """RFC 4106 §5 / RFC 4543 §3.2: SPI || [SN high word] || SN low word."""
    memcpy(aad, esp, 4)
    if op.esn:
        aad[4] = <uint8_t>(op.seq_hi >> 24)
        aad[5] = <uint8_t>(op.seq_hi >> 16)
        aad[6] = <uint8_t>(op.seq_hi >> 8)
        aad[7] = <uint8_t>op.seq_hi
        memcpy(aad + 8, esp + 4, 4)
        aad_len[0] = 12
    else:
        memcpy(aad + 4, esp + 4, 4)
        aad_len[0] = 8


cdef void gcm_finish_op(uint8_t* arena, CryptoOp* op, const uint8_t* ks, int path,
                        const ipo_ghash_key* key, uint8_t* scratch, bint seal,
                        const uint8_t* src) noexcept nogil:
    """XOR + GHASH of one op with its keystream ``ks`` (J0's block first); the tag goes to the
    ICV (seal) or is compared with it in constant time (open). An out-of-place op's plaintext
    bytes are read from ``src`` (the source arena)."""
    cdef uint8_t aad[12]
    cdef uint8_t tag[16]
    cdef int64_t aad_len, k
    cdef uint8_t* esp = arena + op.auth_off
    cdef int64_t hdr
    if op.suite == SUITE_AH_GMAC:
        # RFC 4543 §3: AAD = the AH ICV input (zeroed header copy, rest of the packet, ESN
        # high word per RFC 4302 §2.5.1); empty plaintext
        hdr = op.text_off - op.ip_off
        memcpy(scratch, arena + op.auth_off, hdr)
        memcpy(scratch + hdr, arena + op.text_off, op.text_len)
        aad_len = hdr + op.text_len
        if op.esn:
            st32(scratch + aad_len, op.seq_hi)
            aad_len += 4
        ipo_gcm_seal_xor_ghash(path, key, scratch, aad_len, NULL, 0, NULL, ks, tag)
    else:
        gcm_aad_header(aad, &aad_len, esp, op)
    if op.suite == SUITE_AH_GMAC:
        pass
    elif op.suite == SUITE_AES_GMAC:
        # Everything after the header is AAD: IV || payload || trailer; the text is empty.
        if op.esn:
            memcpy(scratch, aad, 12)
            memcpy(scratch + 12, esp + 8, 8 + op.text_len)
            ipo_gcm_seal_xor_ghash(path, key, scratch, 20 + op.text_len, NULL, 0, NULL, ks,
                                   tag)
        else:
            ipo_gcm_seal_xor_ghash(path, key, esp, 16 + op.text_len, NULL, 0, NULL, ks, tag)
    elif seal and op.src_len:
        ipo_gcm_seal_xor_ghash_from(path, key, aad, aad_len, arena + op.text_off, op.text_len,
                                    src + op.src_off, op.src_at, op.src_len, ks + 16, ks, tag)
        op_in_place(op)
    elif seal:
        ipo_gcm_seal_xor_ghash(path, key, aad, aad_len, arena + op.text_off, op.text_len,
                               ks + 16, ks, tag)
    elif op.src_len:
        ipo_gcm_open_ghash_xor_from(path, key, aad, aad_len, arena + op.text_off, op.text_len,
                                    src + op.src_off, op.src_at, op.src_len, ks + 16, ks, tag)
        op_in_place(op)
    else:
        ipo_gcm_open_ghash_xor(path, key, aad, aad_len, arena + op.text_off, op.text_len,
                               ks + 16, ks, tag)
    if seal:
        copy_icv(arena + op.icv_off, tag, op.icv_len)
        op.status = OP_DONE
        return
    op.status = OP_DONE if icv_differs(tag, arena + op.icv_off, op.icv_len) == 0 \
        else OP_AUTH_FAILED


cdef class GcmBatchedBackend:
    """AES-GCM and AES-GMAC over a group of ops that share one key context."""
    cdef readonly str name
    # One keystream buffer reused call after call (fresh pages cost more than the AES):
    # taken under the GIL by one call at a time; a concurrent call allocates its own.
    # seal and open take the source arena of out-of-place ops (run_op_groups)
    cdef readonly bint reads_source
    cdef object _ks_cache
    cdef bint _ks_busy

    def __init__(self):
        self.name = "gcm-batched"
        self.reads_source = True
        self._ks_cache = None
        self._ks_busy = False

    def __repr__(self):
        return f"GcmBatchedBackend(ghash={ghash_default_path()})"

    def seal(self, arena, ops, idx, keys, src=None):
        """Seal the ops ``idx`` (int32) of ``ops`` (CryptoOp bytes) in ``arena`` (uint8);
        out-of-place ops read their plaintext from ``src`` (and are in place afterwards)."""
        self._run(arena, ops, idx, keys, True, src)

    def open(self, arena, ops, idx, keys, src=None):
        """Verify and decrypt the ops ``idx``; each gets OP_DONE or OP_AUTH_FAILED.
        Out-of-place ops read their ciphertext from ``src``; the plaintext goes to the arena
        whatever the tag (a failed frame is restored by its caller)."""
        self._run(arena, ops, idx, keys, False, src)

    cdef _run(self, arena, ops, idx, object keys, bint seal, src):
        # numpy arrays as tx_run makes them: their pointers as is; else typed memoryviews
        cdef uint8_t[::1] arena_mv
        cdef uint8_t[::1] ops_mv
        cdef const int32_t[::1] idx_mv
        cdef uint8_t* base
        cdef int64_t size, ops_size, n
        cdef const int32_t* ix
        cdef CryptoOp* op0
        cdef const uint8_t[::1] src_mv
        cdef const uint8_t* sbase = NULL
        cdef int64_t src_size = -1
        if src is not None:
            if plain_array(src, cnp.NPY_UINT8, False):
                sbase, src_size = <const uint8_t*>array_data(src), array_len(src)
            else:
                src_mv = src
                src_size = src_mv.shape[0]
                sbase = &src_mv[0] if src_size else NULL
            if src_size == 0:
                sbase = NULL
        if plain_array(arena, cnp.NPY_UINT8, True):
            base, size = <uint8_t*>array_data(arena), array_len(arena)
        else:
            arena_mv = arena
            size = arena_mv.shape[0]
            base = &arena_mv[0] if size else NULL
        if plain_array(ops, cnp.NPY_UINT8, True):
            op0, ops_size = <CryptoOp*>array_data(ops), array_len(ops)
        else:
            ops_mv = ops
            ops_size = ops_mv.shape[0]
            op0 = <CryptoOp*>&ops_mv[0] if ops_size else NULL
        if plain_array(idx, cnp.NPY_INT32, False):
            ix, n = <const int32_t*>array_data(idx), array_len(idx)
        else:
            idx_mv = idx
            n = idx_mv.shape[0]
            ix = &idx_mv[0] if n else NULL
        if ops_size % sizeof(CryptoOp):
            raise ValueError("ops buffer size does not match the CryptoOp layout")
        if n == 0:
            return
        cdef int64_t limit = gcm_one_call_limit(), i
        cdef int64_t big = gcm_check_ops(size, op0, ops_size // sizeof(CryptoOp), ix, n, seal,
                                         src_size, limit)
        aead = getattr(keys, "aead", None) if big else None
        if aead is None:
            big = 0
        if big == 0:
            self._group(base, op0, ix, n, keys, seal, sbase)
            return
        # the large AES-GCM ops one OpenSSL call each, the rest batched
        split = np.empty(n, np.int32)
        cdef int32_t[::1] sp = split
        cdef int64_t lo = 0, hi = big
        for i in range(n):
            if gcm_one_call(op0 + ix[i], limit):
                sp[lo] = ix[i]
                lo += 1
                if op0[ix[i]].src_len:  # OpenSSL seals in place: the plaintext goes there first
                    op_gather_one(base, sbase, op0 + ix[i])
            else:
                sp[hi] = ix[i]
                hi += 1
        gcm_ops_one_call(base, op0, &sp[0], big, aead, seal)
        if big < n:
            self._group(base, op0, &sp[big], n - big, keys, seal, sbase)

    cdef _group(self, uint8_t* base, CryptoOp* op0, const int32_t* idx, int64_t n,
                object keys, bint seal, const uint8_t* sbase):
        key_arr = keys.ghash_key
        if not plain_array(key_arr, cnp.NPY_UINT8, False) \
                or array_len(key_arr) < <int64_t>sizeof(ipo_ghash_key):
            raise ValueError("the key context holds no GHASH key")
        cdef const ipo_ghash_key* key = <const ipo_ghash_key*>array_data(key_arr)
        cdef int path = ghash_active_path()
        cdef int64_t max_blocks = 0, total_blocks = 0, blocks, scratch_len = 0, i
        for i in range(n):
            blocks = gcm_blocks_of(op0 + idx[i])
            total_blocks += blocks
            if blocks > max_blocks:
                max_blocks = blocks
            if op0[idx[i]].suite == SUITE_AES_GMAC and op0[idx[i]].text_len + 20 > scratch_len:
                scratch_len = op0[idx[i]].text_len + 20
            if op0[idx[i]].suite == SUITE_AH_GMAC and op0[idx[i]].text_off - op0[idx[i]].ip_off \
                    + op0[idx[i]].text_len + 4 > scratch_len:
                scratch_len = op0[idx[i]].text_off - op0[idx[i]].ip_off + op0[idx[i]].text_len + 4
        cdef int64_t chunk_blocks = GCM_CHUNK_BYTES // 16
        if total_blocks < chunk_blocks:
            chunk_blocks = total_blocks
        if max_blocks > chunk_blocks:
            chunk_blocks = max_blocks
        # counter blocks become keystream in place: OpenSSL's ECB (and XTS) allow in == out
        encryptor = keys.aes_encryptor(chunk_blocks * 16)
        cdef int64_t ks_len = chunk_blocks * 16 + 16 + scratch_len
        cdef bint cached = False
        if not self._ks_busy and self._ks_cache is not None \
                and array_len(self._ks_cache) >= ks_len:
            ks_arr, cached = self._ks_cache, True
        elif not self._ks_busy and ks_len <= 4 * GCM_CHUNK_BYTES:
            ks_arr = self._ks_cache = np.empty(max(ks_len, GCM_CHUNK_BYTES + 4096), np.uint8)
            cached = True
        else:
            ks_arr = np.empty(ks_len, np.uint8)
        if cached:
            self._ks_busy = True
        try:
            self._chunks(base, op0, idx, n, key, path, encryptor, ks_arr, chunk_blocks, seal,
                         sbase)
        finally:
            if cached:
                self._ks_busy = False

    cdef _chunks(self, uint8_t* base, CryptoOp* op0, const int32_t* idx, int64_t n,
                 const ipo_ghash_key* key, int path, object encryptor, object ks_arr,
                 int64_t chunk_blocks, bint seal, const uint8_t* sbase):
        cdef int64_t blocks, i
        cdef uint8_t* ks = <uint8_t*>array_data(ks_arr)
        cdef uint8_t* scratch = ks + chunk_blocks * 16 + 16
        cdef int64_t start = 0, end, used
        while start < n:
            # the ops [start, end) whose keystream fits one chunk
            used = 0
            end = start
            with nogil:
                while end < n:
                    blocks = gcm_blocks_of(op0 + idx[end])
                    if used + blocks > chunk_blocks:
                        break
                    if path == IPO_GHASH_VPCLMUL512:
                        gcm_counter_blocks_512(ks + used * 16, op0[idx[end]].nonce, blocks)
                    else:
                        gcm_counter_blocks(ks + used * 16, op0[idx[end]].nonce, blocks)
                    used += blocks
                    end += 1
            # memoryviews of the buffer: cryptography reads them faster than numpy arrays
            # (about 0.2 us a call)
            encryptor.update_into(PyMemoryView_FromMemory(<char*>ks, used * 16, PyBUF_READ),
                                  PyMemoryView_FromMemory(<char*>ks, array_len(ks_arr),
                                                          PyBUF_WRITE))
            used = 0
            with nogil:
                for i in range(start, end):
                    gcm_finish_op(base, op0 + idx[i], ks + used * 16, path, key, scratch, seal,
                                  sbase)
                    used += gcm_blocks_of(op0 + idx[i])
            start = end


def ghash_key_context(const uint8_t[::1] h):
    """The GHASH key (precomputed powers of H = E_K(0^128)) as bytes for a key context."""
    if h.shape[0] != 16:
        raise ValueError("H must be 16 bytes")
    out = np.zeros(sizeof(ipo_ghash_key), np.uint8)
    cdef uint8_t[::1] view = out
    ipo_ghash_key_init(<ipo_ghash_key*>&view[0], &h[0])
    out.flags.writeable = False
    return out
