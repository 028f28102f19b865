# GHASH / AES-GCM XOR+tag kernels (crypto/ghash.h), for `include "crypto/ghash.pxi"` in
# ipsecoffload/_fastpath.pyx. Module-level names start with ghash_ / gcm_ / _ghash_ / GHASH_.
#
# C level, for the batched GCM code of the including module:
#   ipo_ghash_key (IPO_GHASH_KEY_BYTES bytes, alignment 1, memcpy-able), ipo_ghash_key_init,
#   ipo_gcm_seal_xor_ghash, ipo_gcm_seal_xor_ghash_from (out of place), ipo_gcm_open_ghash_xor,
#   ipo_gcm_open_ghash_xor_from (out of place),
#   ipo_ghash_update (all nogil);
#   ghash_active_path() -> the path code to pass them (resolves ghash_default_path() once,
#   needs the GIL the first time); afterwards _ghash_path holds it and nogil code may read it.
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memset

cdef extern from "crypto/ghash.h" nogil:
    enum:
        IPO_GHASH_PORTABLE
        IPO_GHASH_PCLMUL
        IPO_GHASH_PCLMUL_AVX
        IPO_GHASH_VPCLMUL256
        IPO_GHASH_VPCLMUL512
        IPO_GHASH_NPATHS
        IPO_GHASH_KEY_BYTES
    ctypedef struct ipo_ghash_key:
        pass
    void ipo_ghash_key_init(ipo_ghash_key* k, const uint8_t* H)
    int ipo_ghash_cpu_paths()
    int ipo_cpu_has_vaes512()
    int ipo_ghash_selftest(int path)
    void ipo_ghash_update(int path, const ipo_ghash_key* k, uint8_t* X, const uint8_t* data,
                          size_t len)
    void ipo_gcm_seal_xor_ghash(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                size_t aad_len, uint8_t* text, size_t len, const uint8_t* ks,
                                const uint8_t* ekj0, uint8_t* tag)
    void ipo_gcm_open_ghash_xor(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                size_t aad_len, uint8_t* text, size_t len, const uint8_t* ks,
                                const uint8_t* ekj0, uint8_t* tag)
    void ipo_gcm_seal_xor_ghash_from(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                     size_t aad_len, uint8_t* text, size_t len,
                                     const uint8_t* src, size_t at, size_t n,
                                     const uint8_t* ks, const uint8_t* ekj0, uint8_t* tag)
    void ipo_gcm_open_ghash_xor_from(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                     size_t aad_len, uint8_t* text, size_t len,
                                     const uint8_t* src, size_t at, size_t n,
                                     const uint8_t* ks, const uint8_t* ekj0, uint8_t* tag)

import os as _ghash_os

# Index == IPO_GHASH_* code, and the order of preference, slowest first: the default is the
# usable path that comes last here.
GHASH_PATHS = ("portable", "pclmul", "pclmul-avx", "vpclmul256", "vpclmul512")
if (IPO_GHASH_PORTABLE, IPO_GHASH_PCLMUL, IPO_GHASH_PCLMUL_AVX, IPO_GHASH_VPCLMUL256,
        IPO_GHASH_VPCLMUL512, IPO_GHASH_NPATHS) != tuple(range(len(GHASH_PATHS) + 1)):
    raise ImportError("crypto/ghash.h path codes do not match GHASH_PATHS")
GHASH_KEY_BYTES = IPO_GHASH_KEY_BYTES
GHASH_ENV = "IPSECOFFLOAD_GHASH"

# -1 until ghash_default_path() has chosen; then the IPO_GHASH_* code every kernel uses.
cdef int _ghash_path = -1
cdef object _ghash_usable = None
cdef uint8_t _ghash_empty[16]


cdef int _ghash_code(str name) except -1:
    try:
        return GHASH_PATHS.index(name)
    except ValueError:
        raise ValueError(f"unknown GHASH path {name!r}; known: {', '.join(GHASH_PATHS)}") from None


def ghash_cpu_paths():
    """Names of the GHASH paths this CPU and OS can run (CPUID/XGETBV); "portable" always.
    In GHASH_PATHS order (slowest first)."""
    cdef int mask = ipo_ghash_cpu_paths()
    return tuple(name for i, name in enumerate(GHASH_PATHS) if (mask >> i) & 1)


def cpu_has_vaes512():
    """True if this CPU and OS run 512-bit VAES with AVX-512 (CPUID/XGETBV)."""
    return ipo_cpu_has_vaes512() != 0


def ghash_selftest(name):
    """True if path `name` can run here and gives the known answers (runs the C self test)."""
    cdef int code = _ghash_code(name)
    cdef int ok
    with nogil:
        ok = ipo_ghash_selftest(code)
    return ok == 1


def ghash_usable_paths():
    """The CPU's paths whose self test passes, in GHASH_PATHS order: slowest first (computed
    once)."""
    global _ghash_usable
    if _ghash_usable is None:
        _ghash_usable = tuple(name for name in ghash_cpu_paths() if ghash_selftest(name))
    return _ghash_usable


def ghash_default_path():
    """The path the kernels use: the fastest usable one (the last of GHASH_PATHS, the order of
    preference, that passes its self test), or the one IPSECOFFLOAD_GHASH names (ValueError if
    that one is not usable here). Chosen once; see _ghash_reset_default()."""
    global _ghash_path
    if _ghash_path >= 0:
        return GHASH_PATHS[_ghash_path]
    usable = ghash_usable_paths()
    want = _ghash_os.environ.get(GHASH_ENV, "").strip().lower()
    if want:
        if want not in usable:
            raise ValueError(f"{GHASH_ENV}={want!r} is not a usable GHASH path on this machine; "
                             f"usable: {', '.join(usable)}")
        chosen = want
    else:
        chosen = max(usable, key=GHASH_PATHS.index)
    _ghash_path = _ghash_code(chosen)
    return chosen


def _ghash_reset_default():
    """Forgets the chosen path (tests: after changing IPSECOFFLOAD_GHASH)."""
    global _ghash_path
    _ghash_path = -1


cdef inline int ghash_active_path() except -1:
    """IPO_GHASH_* code for the C calls; chooses it on first use (needs the GIL then)."""
    if _ghash_path < 0:
        ghash_default_path()
    return _ghash_path


cdef int _ghash_checked_code(str path) except -1:
    if path not in ghash_usable_paths():
        _ghash_code(path)
        raise ValueError(f"GHASH path {path!r} is not usable here; "
                         f"usable: {', '.join(ghash_usable_paths())}")
    return _ghash_code(path)


cdef inline const uint8_t* _ghash_ptr(const uint8_t[::1] b) noexcept:
    return &b[0] if b.shape[0] else _ghash_empty


cdef int _ghash_check16(const uint8_t[::1] b, str what) except -1:
    if b.shape[0] != 16:
        raise ValueError(f"{what} must be 16 bytes, not {b.shape[0]}")
    return 0


def ghash_key_bytes(const uint8_t[::1] h):
    """The precomputed key (IPO_GHASH_KEY_BYTES bytes, any path) for H = AES_K(0^128)."""
    _ghash_check16(h, "h")
    out = bytearray(IPO_GHASH_KEY_BYTES)
    cdef uint8_t[::1] o = out
    with nogil:
        ipo_ghash_key_init(<ipo_ghash_key*>&o[0], &h[0])
    return bytes(out)


def ghash_digest(str path, const uint8_t[::1] h, const uint8_t[::1] aad,
                 const uint8_t[::1] data):
    """GHASH_H(aad || 0pad || data || 0pad || be64(8 len aad) || be64(8 len data)): the S of
    SP 800-38D 7.1, the tag before the XOR with AES_K(J0)."""
    cdef int code = _ghash_checked_code(path)
    cdef uint8_t key[IPO_GHASH_KEY_BYTES]
    cdef uint8_t x[16]
    cdef uint8_t lens[16]
    cdef size_t alen = aad.shape[0], dlen = data.shape[0], i
    cdef const uint8_t* ap = _ghash_ptr(aad)
    cdef const uint8_t* dp = _ghash_ptr(data)
    _ghash_check16(h, "h")
    for i in range(8):
        lens[i] = ((<unsigned long long>alen * 8) >> (56 - 8 * i)) & 0xFF
        lens[8 + i] = ((<unsigned long long>dlen * 8) >> (56 - 8 * i)) & 0xFF
    with nogil:
        ipo_ghash_key_init(<ipo_ghash_key*>key, &h[0])
        memset(x, 0, 16)
        ipo_ghash_update(code, <ipo_ghash_key*>key, x, ap, alen)
        ipo_ghash_update(code, <ipo_ghash_key*>key, x, dp, dlen)
        ipo_ghash_update(code, <ipo_ghash_key*>key, x, lens, 16)
    return (<char*>x)[:16]


cdef tuple _gcm_raw(int open_, str path, const uint8_t[::1] h, const uint8_t[::1] aad,
                    const uint8_t[::1] text, const uint8_t[::1] ks, const uint8_t[::1] ekj0):
    cdef int code = _ghash_checked_code(path)
    cdef uint8_t key[IPO_GHASH_KEY_BYTES]
    cdef uint8_t tag[16]
    cdef size_t n = text.shape[0]
    _ghash_check16(h, "h")
    _ghash_check16(ekj0, "ekj0")
    if <size_t>ks.shape[0] < n:
        raise ValueError(f"ks has {ks.shape[0]} bytes, text {n}")
    out = bytearray(text)
    cdef uint8_t[::1] o = out
    cdef uint8_t* op = &o[0] if n else _ghash_empty
    cdef const uint8_t* ap = _ghash_ptr(aad)
    cdef const uint8_t* kp = _ghash_ptr(ks)
    cdef size_t alen = aad.shape[0]
    with nogil:
        ipo_ghash_key_init(<ipo_ghash_key*>key, &h[0])
        if open_:
            ipo_gcm_open_ghash_xor(code, <ipo_ghash_key*>key, ap, alen, op, n, kp, &ekj0[0], tag)
        else:
            ipo_gcm_seal_xor_ghash(code, <ipo_ghash_key*>key, ap, alen, op, n, kp, &ekj0[0], tag)
    return bytes(out), (<char*>tag)[:16]


def gcm_seal_raw(str path, h, aad, text, ks, ekj0):
    """(ciphertext, 16-byte tag): text ^ ks, tag = GHASH_H(aad, ciphertext) ^ ekj0."""
    return _gcm_raw(0, path, h, aad, text, ks, ekj0)


def gcm_open_raw(str path, h, aad, text, ks, ekj0):
    """(plaintext, 16-byte tag): tag = GHASH_H(aad, text) ^ ekj0 over the ciphertext given,
    plaintext = text ^ ks. The caller compares the tag."""
    return _gcm_raw(1, path, h, aad, text, ks, ekj0)


def gcm_seal_from_raw(str path, h, aad, text, src, size_t at, ks, ekj0):
    """gcm_seal_raw out of place: the plaintext is ``text`` with ``src`` in place of its bytes
    from ``at`` on (as many as src holds, up to the end); ``text`` itself keeps whatever it has
    there, which the kernel must not read."""
    return _gcm_from_raw(0, path, h, aad, text, src, at, ks, ekj0)


def gcm_open_from_raw(str path, h, aad, text, src, size_t at, ks, ekj0):
    """gcm_open_raw out of place: the ciphertext is ``text`` with ``src`` in place of its bytes
    from ``at`` on; returns (plaintext, tag over that ciphertext)."""
    return _gcm_from_raw(1, path, h, aad, text, src, at, ks, ekj0)


cdef _gcm_from_raw(int open_, str path, const uint8_t[::1] h, const uint8_t[::1] aad,
                   const uint8_t[::1] text, const uint8_t[::1] src, size_t at,
                   const uint8_t[::1] ks, const uint8_t[::1] ekj0):
    cdef int code = _ghash_checked_code(path)
    cdef uint8_t key[IPO_GHASH_KEY_BYTES]
    cdef uint8_t tag[16]
    cdef size_t n = text.shape[0], sn = src.shape[0]
    _ghash_check16(h, "h")
    _ghash_check16(ekj0, "ekj0")
    if <size_t>ks.shape[0] < n:
        raise ValueError(f"ks has {ks.shape[0]} bytes, text {n}")
    if at > n or sn > n - at:
        raise ValueError(f"src ({sn} bytes at {at}) does not fit the text ({n} bytes)")
    out = bytearray(text)
    cdef uint8_t[::1] o = out
    cdef uint8_t* op = &o[0] if n else _ghash_empty
    cdef const uint8_t* ap = _ghash_ptr(aad)
    cdef const uint8_t* kp = _ghash_ptr(ks)
    cdef const uint8_t* sp = _ghash_ptr(src)
    cdef size_t alen = aad.shape[0]
    with nogil:
        ipo_ghash_key_init(<ipo_ghash_key*>key, &h[0])
        if open_:
            ipo_gcm_open_ghash_xor_from(code, <ipo_ghash_key*>key, ap, alen, op, n, sp, at, sn,
                                        kp, &ekj0[0], tag)
        else:
            ipo_gcm_seal_xor_ghash_from(code, <ipo_ghash_key*>key, ap, alen, op, n, sp, at, sn,
                                        kp, &ekj0[0], tag)
    return bytes(out), (<char*>tag)[:16]
