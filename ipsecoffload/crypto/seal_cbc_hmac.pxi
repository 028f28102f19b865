# cbc-hmac backend: ESP with AES-CBC + HMAC (RFC 4303, RFC 3602; RFC 2403, RFC 2404,
# RFC 4868) and NULL encryption + HMAC (RFC 2410) for a group of ops sharing one key
# context. The AES block function is cryptography's ECB context; the CBC chaining is done
# here over many packets at once: seal runs one ECB call per block position for the whole
# group, open one ECB call per 128 KiB of ciphertext. The HMAC contexts come from
# ipsecoffload.crypto.hmac_ctx.HmacTemplate. Included by _fastpath.pyx.

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline void cbc_xor16(uint8_t *dst, const uint8_t *a, const uint8_t *b) {
        uint64_t a0, a1, b0, b1;
        memcpy(&a0, a, 8); memcpy(&a1, a + 8, 8);
        memcpy(&b0, b, 8); memcpy(&b1, b + 8, 8);
        a0 ^= b0; a1 ^= b1;
        memcpy(dst, &a0, 8); memcpy(dst + 8, &a1, 8);
    }
    /* ICV check: the time depends on n only, never on where the bytes differ. */
    static int cbc_ct_equal(const uint8_t *a, const uint8_t *b, size_t n) {
        volatile uint8_t acc = 0;
        size_t i;
        for (i = 0; i < n; i++) acc |= (uint8_t)(a[i] ^ b[i]);
        return acc == 0;
    }
    """
    void cbc_xor16(uint8_t* dst, const uint8_t* a, const uint8_t* b) noexcept nogil
    bint cbc_ct_equal(const uint8_t* a, const uint8_t* b, size_t n) noexcept nogil


cdef enum:
    CBC_BLOCK = 16
    # open: ECB-decrypt at most 128 KiB per call, so that the buffers stay in cache and
    # below malloc's mmap threshold (256 KiB ones measured slower: fresh pages each call)
    CBC_CHUNK_BLOCKS = 8192
    # Below this many blocks per round the C work takes less time than handing the GIL
    # over to another thread and getting it back.
    CBC_NOGIL_MIN_BLOCKS = 4096
    CBC_ESP_HEADER = 8              # SPI + low 32 bits of the SN (RFC 4303 §2)
    CBC_FORM_HMAC = 1               # hmac_ctx.FORM_HMAC
    CBC_FORM_PAIR = 2               # hmac_ctx.FORM_PAIR


# One validated op: raw pointers into the arena, nothing left to check.
ctypedef struct cbc_job:
    uint8_t* text             # first byte encrypted; the IV is the 16 bytes before it
    const uint8_t* auth       # the SPI
    uint8_t* icv
    int64_t auth_len          # SPI .. last text byte
    int64_t nblocks           # CBC blocks of text
    int64_t lo                # footprint [lo, hi) in the arena, for the overlap check
    int64_t hi
    int32_t row               # its row in ops
    uint32_t seq_hi
    uint8_t ok                # open: ICV verified


# A run of one op's blocks inside the open buffer.
ctypedef struct cbc_seg:
    uint8_t* dst              # where its first block's plaintext goes
    const uint8_t* iv         # C_0 when the run starts the op, else NULL: the carry
    int64_t pos               # first block in the buffer
    int64_t cnt


# Open: the ciphertext of the verified ops streamed through one buffer.
ctypedef struct cbc_stream:
    cbc_job* jobs
    Py_ssize_t n
    Py_ssize_t k              # next op to gather
    int64_t b                 # next block of it
    uint8_t* x                # ciphertext, cap blocks
    uint8_t* y                # ECB output, cap blocks + 1
    int64_t cap
    int64_t fill
    cbc_seg* segs
    Py_ssize_t nseg
    uint8_t carry[16]         # last ciphertext block of the previous buffer


cdef int cbc_cmp_blocks_desc(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const cbc_job*>a).nblocks
    cdef int64_t y = (<const cbc_job*>b).nblocks
    if x > y:
        return -1
    return 1 if x < y else 0


cdef int cbc_cmp_lo(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const cbc_job*>a).lo
    cdef int64_t y = (<const cbc_job*>b).lo
    if x < y:
        return -1
    return 1 if x > y else 0


cdef int cbc_load_jobs(str what, uint8_t* arena, int64_t arena_len,
                       const uint8_t* ops, Py_ssize_t nrows, const int32_t[::1] idx,
                       int kind, int suite, int integ, int icv_len, int esn,
                       cbc_job* jobs) except -1:
    """Checks every selected op and fills jobs; raises ValueError before anything is written.
    The comparisons never add two unchecked values, so no int64 sum can overflow."""
    cdef Py_ssize_t i, n = idx.shape[0]
    cdef int64_t r, text_end, L = arena_len
    cdef int iv_len = CBC_BLOCK if (suite == SUITE_AES_CBC_HMAC or suite == SUITE_AES_CBC) else 0
    cdef CryptoOp op
    cdef cbc_job* j
    cdef cbc_job* spans
    for i in range(n):
        r = idx[i]
        if r < 0 or r >= nrows:
            raise ValueError(f"{what}: idx[{i}] = {r} is out of range for {nrows} ops")
        memcpy(&op, ops + r * <int64_t>sizeof(CryptoOp), sizeof(CryptoOp))
        if op.kind != kind:
            raise ValueError(f"{what}: op {r}: kind {op.kind}, expected {kind}")
        if op.suite != suite:
            raise ValueError(f"{what}: op {r}: suite {op.suite} differs from the key "
                             f"context's {suite}")
        if op.integ != integ:
            raise ValueError(f"{what}: op {r}: integ {op.integ} differs from the key "
                             f"context's {integ}")
        if op.iv_len != iv_len:
            raise ValueError(f"{what}: op {r}: iv_len {op.iv_len}, expected {iv_len}")
        if op.icv_len != icv_len:
            raise ValueError(f"{what}: op {r}: icv_len {op.icv_len} differs from the key "
                             f"context's {icv_len}")
        if op.esn != esn:
            raise ValueError(f"{what}: op {r}: esn {op.esn} differs from the key "
                             f"context's {esn}")
        if op.auth_off < 0 or op.auth_off > L:
            raise ValueError(f"{what}: op {r}: auth_off {op.auth_off} is outside the "
                             f"arena of {L} bytes")
        if op.text_off < 0 or op.text_off > L:
            raise ValueError(f"{what}: op {r}: text_off {op.text_off} is outside the "
                             f"arena of {L} bytes")
        if op.text_off - op.auth_off < CBC_ESP_HEADER + iv_len:
            raise ValueError(f"{what}: op {r}: text_off {op.text_off} leaves no room for "
                             f"the ESP header and a {iv_len}-byte IV after auth_off "
                             f"{op.auth_off}")
        if op.text_len < 0 or op.text_len > L - op.text_off:
            raise ValueError(f"{what}: op {r}: text_len {op.text_len} at text_off "
                             f"{op.text_off} runs outside the arena of {L} bytes")
        if iv_len and (op.text_len == 0 or op.text_len % CBC_BLOCK != 0):
            raise ValueError(f"{what}: op {r}: text_len {op.text_len} is not a positive "
                             f"multiple of {CBC_BLOCK}")
        text_end = op.text_off + op.text_len
        if op.icv_off < text_end or op.icv_off > L:
            raise ValueError(f"{what}: op {r}: icv_off {op.icv_off} is not between the "
                             f"end of the text ({text_end}) and the end of the arena ({L})")
        if icv_len > L - op.icv_off:
            raise ValueError(f"{what}: op {r}: the {icv_len}-byte ICV at icv_off "
                             f"{op.icv_off} runs outside the arena of {L} bytes")
        j = &jobs[i]
        j.text = arena + op.text_off
        j.auth = arena + op.auth_off
        j.icv = arena + op.icv_off
        j.auth_len = text_end - op.auth_off
        j.nblocks = op.text_len // CBC_BLOCK
        j.lo = op.auth_off
        j.hi = op.icv_off + icv_len
        j.row = <int32_t>r
        j.seq_hi = op.seq_hi
        j.ok = 0
    if n < 2:
        return 0
    # Ops of one group must not share bytes (a row listed twice included): the rounds
    # of one op would read bytes another op has already rewritten.
    spans = <cbc_job*>malloc(n * sizeof(cbc_job))
    if spans == NULL:
        raise MemoryError()
    try:
        memcpy(spans, jobs, n * sizeof(cbc_job))
        qsort(spans, n, sizeof(cbc_job), cbc_cmp_lo)
        for i in range(1, n):
            if spans[i].lo < spans[i - 1].hi:
                raise ValueError(f"{what}: ops {spans[i - 1].row} and {spans[i].row} "
                                 f"overlap in the arena")
    finally:
        free(spans)
    return 0


cdef object hmac_tag(int form, object copy_a, object copy_b, object update, object final,
                     const cbc_job* j, object esn_hi, int icv_len):
    """HMAC over SPI .. ciphertext, then the ESN high word (RFC 4303 §2.2.1, §3.3.2.1);
    the arena is read through a memoryview, never copied."""
    cdef object h = copy_a()
    update(h, PyMemoryView_FromMemory(<char*>j.auth, j.auth_len, PyBUF_READ))
    if esn_hi is not None:
        update(h, esn_hi)
    cdef object d = final(h)
    if form == CBC_FORM_PAIR:
        h = copy_b()
        update(h, d)
        d = final(h)
    if not PyBytes_CheckExact(d) or PyBytes_GET_SIZE(d) < icv_len:
        raise RuntimeError("cbc-hmac: the HMAC context returned no digest")
    return d


cdef object hmac_esn_bytes(uint32_t v):
    cdef uint8_t b[4]
    b[0] = (v >> 24) & 0xFF
    b[1] = (v >> 16) & 0xFF
    b[2] = (v >> 8) & 0xFF
    b[3] = v & 0xFF
    return PyBytes_FromStringAndSize(<char*>b, 4)


cdef void cbc_chain(cbc_job* jobs, Py_ssize_t cnt, int64_t rnd, uint8_t* x,
                    const uint8_t* y) noexcept nogil:
    """Round rnd of cbc_encrypt: y holds E(x) for the first cnt jobs; store it as their
    block rnd and load x with P_(rnd+1) XOR C_rnd for the jobs that have that block.
    rnd = -1 only loads x with P_0 XOR IV."""
    cdef Py_ssize_t i
    cdef uint8_t* c
    for i in range(cnt):
        c = jobs[i].text + rnd * CBC_BLOCK
        if rnd >= 0:
            memcpy(c, y + i * CBC_BLOCK, CBC_BLOCK)
        if jobs[i].nblocks > rnd + 1:
            cbc_xor16(x + i * CBC_BLOCK, c + CBC_BLOCK, c)


cdef int cbc_encrypt(cbc_job* jobs, Py_ssize_t n, object update_into) except -1:
    """CBC encryption of every job in place (RFC 3602 §2), interleaved: round j encrypts
    block j of every job that has one, in one ECB call. jobs must be sorted by nblocks,
    descending, so that the jobs of round j are a prefix of those of round j - 1."""
    cdef uint8_t* x = <uint8_t*>malloc(n * CBC_BLOCK)
    cdef uint8_t* y = <uint8_t*>malloc((n + 1) * CBC_BLOCK)
    cdef Py_ssize_t cnt = n
    cdef int64_t rnd, rounds = jobs[0].nblocks
    cdef object yview, got
    if x == NULL or y == NULL:
        free(x)
        free(y)
        raise MemoryError()
    try:
        # cryptography wants room for len(input) + 15 bytes of output
        yview = PyMemoryView_FromMemory(<char*>y, (n + 1) * CBC_BLOCK, PyBUF_WRITE)
        for rnd in range(-1, rounds):
            if rnd >= 0:
                while jobs[cnt - 1].nblocks <= rnd:
                    cnt -= 1
                got = update_into(PyMemoryView_FromMemory(<char*>x, cnt * CBC_BLOCK,
                                                          PyBUF_READ), yview)
                if got != cnt * CBC_BLOCK:
                    raise RuntimeError("cbc-hmac: the ECB context returned a short block run")
            if cnt >= CBC_NOGIL_MIN_BLOCKS:
                with nogil:
                    cbc_chain(jobs, cnt, rnd, x, y)
            else:
                cbc_chain(jobs, cnt, rnd, x, y)
    finally:
        free(x)
        free(y)
    return 0


cdef void cbc_gather(cbc_stream* s) noexcept nogil:
    """Copies ciphertext of the verified jobs into s.x until it is full or all is in."""
    cdef cbc_job* j
    cdef int64_t take
    cdef cbc_seg* g
    while s.k < s.n and s.fill < s.cap:
        j = &s.jobs[s.k]
        if not j.ok or s.b >= j.nblocks:
            s.k += 1
            s.b = 0
            continue
        take = j.nblocks - s.b
        if take > s.cap - s.fill:
            take = s.cap - s.fill
        memcpy(s.x + s.fill * CBC_BLOCK, j.text + s.b * CBC_BLOCK, take * CBC_BLOCK)
        g = &s.segs[s.nseg]
        g.dst = j.text + s.b * CBC_BLOCK
        g.iv = j.text - CBC_BLOCK if s.b == 0 else NULL
        g.pos = s.fill
        g.cnt = take
        s.nseg += 1
        s.fill += take
        s.b += take


cdef void cbc_unchain(cbc_stream* s) noexcept nogil:
    """P_i = D(C_i) XOR C_(i-1) (RFC 3602 §2) for the buffered blocks, written in place."""
    cdef Py_ssize_t q
    cdef int64_t t
    cdef cbc_seg* g
    cdef const uint8_t* prev
    for q in range(s.nseg):
        g = &s.segs[q]
        prev = g.iv if g.iv != NULL else s.carry
        cbc_xor16(g.dst, s.y + g.pos * CBC_BLOCK, prev)
        for t in range(1, g.cnt):
            cbc_xor16(g.dst + t * CBC_BLOCK, s.y + (g.pos + t) * CBC_BLOCK,
                      s.x + (g.pos + t - 1) * CBC_BLOCK)
    # A job cut at the end of the buffer continues in the next one from this block.
    memcpy(s.carry, s.x + (s.fill - 1) * CBC_BLOCK, CBC_BLOCK)
    s.fill = 0
    s.nseg = 0


cdef int cbc_decrypt(cbc_job* jobs, Py_ssize_t n, object update_into) except -1:
    """CBC decryption in place of the jobs whose ICV verified: blocks are independent, so
    all of them go through ECB decryption in large runs."""
    cdef cbc_stream s
    cdef int64_t total = 0
    cdef Py_ssize_t i
    cdef object got
    for i in range(n):
        if jobs[i].ok:
            total += jobs[i].nblocks
    if total == 0:
        return 0
    s.jobs = jobs
    s.n = n
    s.k = 0
    s.b = 0
    s.cap = total if total < CBC_CHUNK_BLOCKS else CBC_CHUNK_BLOCKS
    s.fill = 0
    s.nseg = 0
    s.x = <uint8_t*>malloc(s.cap * CBC_BLOCK)
    s.y = <uint8_t*>malloc((s.cap + 1) * CBC_BLOCK)
    s.segs = <cbc_seg*>malloc(n * sizeof(cbc_seg))
    if s.x == NULL or s.y == NULL or s.segs == NULL:
        free(s.x)
        free(s.y)
        free(s.segs)
        raise MemoryError()
    try:
        while True:
            if s.cap >= CBC_NOGIL_MIN_BLOCKS:
                with nogil:
                    cbc_gather(&s)
            else:
                cbc_gather(&s)
            if s.fill == 0:
                break
            got = update_into(PyMemoryView_FromMemory(<char*>s.x, s.fill * CBC_BLOCK,
                                                      PyBUF_READ),
                              PyMemoryView_FromMemory(<char*>s.y, (s.fill + 1) * CBC_BLOCK,
                                                      PyBUF_WRITE))
            if got != s.fill * CBC_BLOCK:
                raise RuntimeError("cbc-hmac: the ECB context returned a short block run")
            if s.fill >= CBC_NOGIL_MIN_BLOCKS:
                with nogil:
                    cbc_unchain(&s)
            else:
                cbc_unchain(&s)
    finally:
        free(s.x)
        free(s.y)
        free(s.segs)
    return 0


cdef class CbcHmacBackend:
    """ESP seal and open for AES-CBC + HMAC and NULL + HMAC, one group of ops at a time.

    ``arena`` holds the packets, ``ops`` the raw bytes of a CRYPTO_OP_DTYPE array, ``idx``
    the rows to process; all of them use the SA whose key context is ``keys``. Every op
    is checked before the first byte is written (ValueError). Seal sets OP_DONE; open
    sets OP_DONE and decrypts, or OP_AUTH_FAILED and leaves the packet as it is."""

    name = "cbc-hmac"

    def seal(self, uint8_t[::1] arena, uint8_t[::1] ops, const int32_t[::1] idx,
             object keys):
        """Encrypts the text of every op in place (CBC, C_0 = the IV before it) and writes
        its ICV (OP_ESP_SEAL ops); for an AH key context, writes the AH ICV of every
        OP_AH_SIGN op (ah_sign_hmac)."""
        if int(keys.suite) == SUITE_AH_HMAC:
            ah_sign_hmac(arena, ops, idx, keys)
            return
        if int(keys.suite) == SUITE_AES_CBC:
            cbc_only_seal(arena, ops, idx, keys)
            return
        self._run(arena, ops, idx, keys, OP_ESP_SEAL)

    def open(self, uint8_t[::1] arena, uint8_t[::1] ops, const int32_t[::1] idx,
             object keys):
        """Checks the ICV of every op, then decrypts the text of those that verify
        (OP_ESP_OPEN ops); for an AH key context, checks the AH ICV of every OP_AH_VERIFY op
        (ah_sign_hmac); for encryption-only AES-CBC, decrypts (cbc_only_seal)."""
        if int(keys.suite) == SUITE_AH_HMAC:
            ah_sign_hmac(arena, ops, idx, keys, True)
            return
        if int(keys.suite) == SUITE_AES_CBC:
            cbc_only_seal(arena, ops, idx, keys, True)
            return
        self._run(arena, ops, idx, keys, OP_ESP_OPEN)

    cdef int _run(self, uint8_t[::1] arena, uint8_t[::1] ops, const int32_t[::1] idx,
                  object keys, int kind) except -1:
        cdef str what = "cbc-hmac seal" if kind == OP_ESP_SEAL else "cbc-hmac open"
        cdef Py_ssize_t i, n = idx.shape[0]
        cdef Py_ssize_t op_size = sizeof(CryptoOp)
        cdef CryptoOp probe
        cdef Py_ssize_t status_off = <char*>&probe.status - <char*>&probe
        cdef Py_ssize_t nrows
        cdef int suite, integ, icv_len, esn, form, ds
        cdef uint8_t* arena_p = &arena[0] if arena.shape[0] > 0 else NULL
        cdef uint8_t* ops_p = &ops[0] if ops.shape[0] > 0 else NULL
        cdef cbc_job* jobs
        cdef cbc_job* j
        cdef object tmpl, copy_a, copy_b, update, final, tag, esn_hi = None
        cdef uint32_t last_hi = 0
        cdef bint have_hi = False

        if ops.shape[0] % op_size != 0:
            raise ValueError(f"{what}: ops holds {ops.shape[0]} bytes, not a "
                             f"multiple of the {op_size}-byte CryptoOp")
        nrows = ops.shape[0] // op_size
        suite = int(keys.suite)
        integ = int(keys.integrity)
        icv_len = int(keys.icv_len)
        esn = 1 if keys.esn else 0
        tmpl = keys.hmac_template
        form = int(tmpl._form)
        ds = int(tmpl.digest_size)
        if suite != SUITE_AES_CBC_HMAC and suite != SUITE_NULL_HMAC:
            raise ValueError(f"{what}: key context suite {suite} is not "
                             "AES-CBC-HMAC or NULL-HMAC")
        if (integ != INTEG_HMAC_MD5_96 and integ != INTEG_HMAC_SHA1_96
                and integ != INTEG_HMAC_SHA256_128):
            raise ValueError(f"{what}: key context integrity {integ} is not an HMAC")
        if int(tmpl.integrity) != integ or (form != CBC_FORM_HMAC and form != CBC_FORM_PAIR):
            raise ValueError(f"{what}: the HMAC template does not match the key "
                             "context")
        # RFC 2104 §5: a truncated tag keeps at least half the output and at least 80 bits
        if icv_len > ds or icv_len < 10 or 2 * icv_len < ds:
            raise ValueError(f"{what}: icv_len {icv_len} is not a valid truncation "
                             f"of a {ds}-byte HMAC")
        copy_a, copy_b, update, final = tmpl._copy_a, tmpl._copy_b, tmpl._update, tmpl._final
        if n == 0:
            return 0

        jobs = <cbc_job*>malloc(n * sizeof(cbc_job))
        if jobs == NULL:
            raise MemoryError()
        try:
            cbc_load_jobs(what, arena_p, arena.shape[0], ops_p, nrows, idx, kind, suite,
                          integ, icv_len, esn, jobs)
            if kind == OP_ESP_SEAL:
                if suite == SUITE_AES_CBC_HMAC:
                    qsort(jobs, n, sizeof(cbc_job), cbc_cmp_blocks_desc)
                    cbc_encrypt(jobs, n, keys.aes_encryptor(n * CBC_BLOCK).update_into)
                for i in range(n):
                    j = &jobs[i]
                    if esn and (not have_hi or j.seq_hi != last_hi):
                        esn_hi = hmac_esn_bytes(j.seq_hi)
                        last_hi, have_hi = j.seq_hi, True
                    tag = hmac_tag(form, copy_a, copy_b, update, final, j, esn_hi, icv_len)
                    memcpy(j.icv, PyBytes_AS_STRING(tag), icv_len)
                    ops_p[j.row * op_size + status_off] = OP_DONE
            else:
                for i in range(n):
                    j = &jobs[i]
                    if esn and (not have_hi or j.seq_hi != last_hi):
                        esn_hi = hmac_esn_bytes(j.seq_hi)
                        last_hi, have_hi = j.seq_hi, True
                    tag = hmac_tag(form, copy_a, copy_b, update, final, j, esn_hi, icv_len)
                    j.ok = cbc_ct_equal(<const uint8_t*>PyBytes_AS_STRING(tag), j.icv,
                                        icv_len)
                    if not j.ok:
                        ops_p[j.row * op_size + status_off] = OP_AUTH_FAILED
                if suite == SUITE_AES_CBC_HMAC:
                    cbc_decrypt(jobs, n, keys.aes_decryptor(CBC_CHUNK_BLOCKS * CBC_BLOCK).update_into)
                for i in range(n):
                    if jobs[i].ok:
                        ops_p[jobs[i].row * op_size + status_off] = OP_DONE
        finally:
            free(jobs)
        return 0


cdef int ah_check_op(str what, const CryptoOp* op, int64_t r, int64_t L) except -1:
    """An AH sign op: its header copy, the rest of its packet and its ICV lie in the arena,
    and the ICV inside the header region (so that the copy holds it zeroed)."""
    cdef int64_t hdr = op.text_off - op.ip_off
    if (op.ip_off < 0 or op.text_off < op.ip_off + 32 or op.text_off > L
            or op.text_len < 0 or op.text_len > L - op.text_off
            or op.auth_off < 0 or op.auth_off > L - hdr
            or op.icv_off < op.ip_off + 32 or op.icv_off > op.text_off - op.icv_len):
        raise ValueError(f"{what}: op {r} reaches outside the arena or its AH header")
    return 0


def ah_sign_hmac(uint8_t[::1] arena, uint8_t[::1] ops, const int32_t[::1] idx, object keys,
                 bint verify=False):
    """AH ICVs with HMAC-MD5-96 / SHA1-96 / SHA-256-128 (RFC 4302 §3.3.3, RFC 2404, RFC 4868)
    for the OP_AH_SIGN ops ``idx`` sharing ``keys``: the MAC runs over the zeroed header copy
    tx_emit left in the scratch, then the rest of the packet, then the ESN high word
    (RFC 4302 §2.5.1), from the precomputed keyed contexts; all ops are checked first.
    ``verify``: OP_AH_VERIFY ops (the copy rx_run made), whose ICV is compared in constant
    time with the one received (OP_DONE or OP_AUTH_FAILED), nothing written to the arena."""
    cdef str what = "cbc-hmac ah verify" if verify else "cbc-hmac ah sign"
    cdef int kind = OP_AH_VERIFY if verify else OP_AH_SIGN
    cdef Py_ssize_t i, n = idx.shape[0], op_size = sizeof(CryptoOp)
    cdef int64_t r, L = arena.shape[0], nrows
    cdef CryptoOp op
    cdef uint8_t* arena_p = &arena[0] if arena.shape[0] > 0 else NULL
    cdef uint8_t* ops_p = &ops[0] if ops.shape[0] > 0 else NULL
    cdef CryptoOp* row
    cdef int integ, icv_len, esn, form, ds
    cdef object tmpl, copy_a, copy_b, update, final, h, d, esn_hi = None
    cdef uint32_t last_hi = 0
    cdef bint have_hi = False
    if ops.shape[0] % op_size:
        raise ValueError(f"{what}: ops holds {ops.shape[0]} bytes, not a multiple of the "
                         f"{op_size}-byte CryptoOp")
    nrows = ops.shape[0] // op_size
    integ, icv_len, esn = int(keys.integrity), int(keys.icv_len), 1 if keys.esn else 0
    tmpl = keys.hmac_template
    if int(keys.suite) != SUITE_AH_HMAC or tmpl is None or int(tmpl.integrity) != integ:
        raise ValueError(f"{what}: the key context is not an AH HMAC one")
    form, ds = int(tmpl._form), int(tmpl.digest_size)
    if icv_len > ds or icv_len < 10 or 2 * icv_len < ds:
        raise ValueError(f"{what}: icv_len {icv_len} is not a valid truncation of a "
                         f"{ds}-byte HMAC")
    for i in range(n):
        r = idx[i]
        if r < 0 or r >= nrows:
            raise ValueError(f"{what}: idx[{i}] = {r} is out of range for {nrows} ops")
        memcpy(&op, ops_p + r * op_size, sizeof(CryptoOp))
        if (op.kind != kind or op.suite != SUITE_AH_HMAC or op.integ != integ
                or op.icv_len != icv_len or op.esn != esn or op.iv_len != 0):
            raise ValueError(f"{what}: op {r} does not match the AH HMAC key context")
        ah_check_op(what, &op, r, L)
    copy_a, copy_b, update, final = tmpl._copy_a, tmpl._copy_b, tmpl._update, tmpl._final
    for i in range(n):
        r = idx[i]
        row = <CryptoOp*>(ops_p + r * op_size)
        if esn and (not have_hi or row.seq_hi != last_hi):
            esn_hi = hmac_esn_bytes(row.seq_hi)
            last_hi, have_hi = row.seq_hi, True
        h = copy_a()
        update(h, PyMemoryView_FromMemory(<char*>(arena_p + row.auth_off),
                                          row.text_off - row.ip_off, PyBUF_READ))
        update(h, PyMemoryView_FromMemory(<char*>(arena_p + row.text_off), row.text_len,
                                          PyBUF_READ))
        if esn:
            update(h, esn_hi)
        d = final(h)
        if form == CBC_FORM_PAIR:
            h = copy_b()
            update(h, d)
            d = final(h)
        if not PyBytes_CheckExact(d) or PyBytes_GET_SIZE(d) < icv_len:
            raise RuntimeError(f"{what}: the HMAC context returned no digest")
        if verify:
            row.status = OP_DONE if cbc_ct_equal(<const uint8_t*>PyBytes_AS_STRING(d),
                                                 arena_p + row.icv_off, icv_len) \
                else OP_AUTH_FAILED
            continue
        memcpy(arena_p + row.icv_off, PyBytes_AS_STRING(d), icv_len)
        row.status = OP_DONE


def cbc_only_seal(uint8_t[::1] arena, uint8_t[::1] ops, const int32_t[::1] idx, object keys,
                  bint decrypt=False):
    """AES-CBC without integrity, the ESP of an AH+ESP bundle (docs/spec-gaps.md G14): the
    interleaved CBC encryption of the OP_ESP_SEAL ops ``idx``, no ICV (the bundle's AH, in
    the next pass, authenticates); ``decrypt``: the CBC decryption of OP_ESP_OPEN ops, whose
    AH the receive path verified first. Every op is checked first."""
    cdef str what = ("cbc-hmac open (encryption only)" if decrypt
                     else "cbc-hmac seal (encryption only)")
    cdef Py_ssize_t i, n = idx.shape[0], op_size = sizeof(CryptoOp)
    cdef CryptoOp probe
    cdef Py_ssize_t status_off = <char*>&probe.status - <char*>&probe
    cdef uint8_t* arena_p = &arena[0] if arena.shape[0] > 0 else NULL
    cdef uint8_t* ops_p = &ops[0] if ops.shape[0] > 0 else NULL
    cdef cbc_job* jobs
    if ops.shape[0] % op_size:
        raise ValueError(f"{what}: ops holds {ops.shape[0]} bytes, not a multiple of the "
                         f"{op_size}-byte CryptoOp")
    if int(keys.suite) != SUITE_AES_CBC or int(keys.icv_len) != 0:
        raise ValueError(f"{what}: the key context is not an encryption-only AES-CBC one")
    if n == 0:
        return
    jobs = <cbc_job*>malloc(n * sizeof(cbc_job))
    if jobs == NULL:
        raise MemoryError()
    try:
        cbc_load_jobs(what, arena_p, arena.shape[0], ops_p, ops.shape[0] // op_size, idx,
                      OP_ESP_OPEN if decrypt else OP_ESP_SEAL, SUITE_AES_CBC, INTEG_AEAD, 0,
                      1 if keys.esn else 0, jobs)
        if decrypt:
            for i in range(n):
                jobs[i].ok = 1
            cbc_decrypt(jobs, n, keys.aes_decryptor(CBC_CHUNK_BLOCKS * CBC_BLOCK).update_into)
        else:
            qsort(jobs, n, sizeof(cbc_job), cbc_cmp_blocks_desc)
            cbc_encrypt(jobs, n, keys.aes_encryptor(n * CBC_BLOCK).update_into)
        for i in range(n):
            ops_p[jobs[i].row * op_size + status_off] = OP_DONE
    finally:
        free(jobs)
