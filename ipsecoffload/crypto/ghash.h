/* GHASH (NIST SP 800-38D, section 6.4) and the XOR half of AES-GCM (section 7.1 steps 3-6,
 * 7.2 steps 3-7) for ipsecoffload's batched GCM backend (RFC 4106 ESP, RFC 4543 ESP-GMAC).
 * AES itself is done by the caller (OpenSSL's AES-ECB over the counter blocks); this file only
 * XORs the keystream in and computes the tag.
 *
 * Header-only, C99, every function static. Paths:
 *   IPO_GHASH_PORTABLE    plain C, constant time: carry-less multiply built from integer
 *                         multiplies with bit holes (no table indexed by secret data).
 *   IPO_GHASH_PCLMUL      128-bit PCLMULQDQ + SSSE3, 16 blocks per reduction.
 *   IPO_GHASH_PCLMUL_AVX  the same source compiled with AVX (VEX encoding: three-operand
 *                         forms, no register copies), for CPUs with AVX but no VPCLMULQDQ.
 *   IPO_GHASH_VPCLMUL256  VPCLMULQDQ on YMM + AVX2, 16 blocks (8 registers) per reduction.
 *   IPO_GHASH_VPCLMUL512  VPCLMULQDQ on ZMM + AVX512F/BW/VL, 16 blocks (4 registers) per
 *                         reduction.
 * The x86 paths are built per function with __attribute__((target)), so the file needs no
 * -m flags; a path may only be used when ipo_ghash_selftest(path) returned 1 (it checks CPUID).
 * They XOR the keystream and fold the result into GHASH while it is in registers, with
 * aggregated reduction (Gueron & Kounavis, section "aggregated reduction"): a group of g
 * blocks b1..bg updates the state X to (X + b1)*H^g + b2*H^(g-1) + ... + bg*H, so only one
 * reduction per group is on the serial path; products use Karatsuba (3 multiplies per block)
 * with the key's precomputed middle operands. The leftover AAD blocks share a group with the
 * first text blocks, and the text tail with the length block, so a short ESP packet (AAD of
 * 8 or 12 bytes, a few text blocks) costs a single reduction.
 *
 * Representation (Gueron & Kounavis, "Intel Carry-Less Multiplication Instruction and its
 * Usage for Computing the GCM Mode", rev. 2.02, sections on bit reflection): a GCM block is
 * byte-reversed into a 128-bit integer A, so bit 127-i of A is the coefficient of x^i. Read as
 * a polynomial in y = 1/x, A is then a * y^127, and field multiplication becomes a plain
 * carry-less product followed by a Montgomery-style reduction that divides by y^128 modulo
 * Q(y) = y^128 + y^127 + y^126 + y^121 + 1 (the reflected GCM polynomial). Storing every key
 * power as H^i * y^128 (i.e. the byte-reversed H shifted left by one bit, mod Q) makes
 * mul(A, key power) come out in the same representation as A, with no per-block shift.
 * The reduction folds 64 bits at a time by the constant 0xC200000000000000
 * (y^63 + y^62 + y^57), two carry-less multiplies per reduction.
 */
#ifndef IPO_CRYPTO_GHASH_H
#define IPO_CRYPTO_GHASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define IPO_GHASH_PORTABLE 0
/* In order of preference, slowest first: the default is the highest usable code. */
#define IPO_GHASH_PCLMUL 1
#define IPO_GHASH_PCLMUL_AVX 2
#define IPO_GHASH_VPCLMUL256 3
#define IPO_GHASH_VPCLMUL512 4
#define IPO_GHASH_NPATHS 5

/* Powers H^1..H^16 of the hash key, one key for every path. Plain bytes: the struct has
 * alignment 1, no pointers, and may be copied with memcpy anywhere (e.g. into a numpy
 * uint8 array); every access is an unaligned load. */
typedef struct {
    uint8_t pow[16][16]; /* pow[i] = H^(16-i) * y^128, as (low, high) little-endian 64-bit words */
    uint8_t mid[16][16]; /* low ^ high word of pow[i], twice (Karatsuba middle operand) */
    uint8_t rev[32];     /* portable path: bit-reversed 64-bit halves of H^1 (lo, hi), then 0 */
} ipo_ghash_key;

#define IPO_GHASH_KEY_BYTES 544
#define IPO_GHASH_KEY_ALIGN 1

typedef char ipo__ghash_key_size_check[(sizeof(ipo_ghash_key) == IPO_GHASH_KEY_BYTES) ? 1 : -1];

#if defined(__GNUC__) || defined(__clang__)
#define IPO__UNUSED __attribute__((unused))
#define IPO__INLINE static inline __attribute__((always_inline))
#else
#define IPO__UNUSED
#define IPO__INLINE static inline
#endif
#define IPO__API static IPO__UNUSED

/* target attributes that work with the intrinsics headers: GCC 4.9, clang 3.8 */
#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) &&                     \
    (defined(__clang__)                                                                  \
         ? (__clang_major__ > 3 || (__clang_major__ == 3 && __clang_minor__ >= 8))       \
         : (defined(__GNUC__) && (__GNUC__ > 4 || (__GNUC__ == 4 && __GNUC_MINOR__ >= 9))))
#define IPO_GHASH_X86 1
/* VPCLMULQDQ intrinsics and target("vpclmulqdq"): GCC 8, clang 7. */
#if defined(__clang__) ? (__clang_major__ >= 7) : (__GNUC__ >= 8)
#define IPO_GHASH_X86_WIDE 1
#else
#define IPO_GHASH_X86_WIDE 0
#endif
#else
#define IPO_GHASH_X86 0
#define IPO_GHASH_X86_WIDE 0
#endif

/* ---- byte order ------------------------------------------------------------------------ */

IPO__INLINE uint64_t ipo__ld64be(const uint8_t* p) {
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

IPO__INLINE void ipo__st64be(uint8_t* p, uint64_t v) {
    p[0] = (uint8_t)(v >> 56);
    p[1] = (uint8_t)(v >> 48);
    p[2] = (uint8_t)(v >> 40);
    p[3] = (uint8_t)(v >> 32);
    p[4] = (uint8_t)(v >> 24);
    p[5] = (uint8_t)(v >> 16);
    p[6] = (uint8_t)(v >> 8);
    p[7] = (uint8_t)v;
}

IPO__INLINE uint64_t ipo__ld64le(const uint8_t* p) {
    return ((uint64_t)p[7] << 56) | ((uint64_t)p[6] << 48) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[4] << 32) | ((uint64_t)p[3] << 24) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[1] << 8) | (uint64_t)p[0];
}

IPO__INLINE void ipo__st64le(uint8_t* p, uint64_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    p[4] = (uint8_t)(v >> 32);
    p[5] = (uint8_t)(v >> 40);
    p[6] = (uint8_t)(v >> 48);
    p[7] = (uint8_t)(v >> 56);
}

/* GHASH length block: be64(bits of AAD) || be64(bits of text) (SP 800-38D 7.1 step 5). */
IPO__INLINE void ipo__len_block(uint8_t out[16], size_t aad_len, size_t len) {
    ipo__st64be(out, (uint64_t)aad_len << 3);
    ipo__st64be(out + 8, (uint64_t)len << 3);
}

/* The bytes of [from, to) that stand in src (text positions [at, at + n)) copied into text. */
IPO__INLINE void ipo__gather(uint8_t* text, const uint8_t* src, size_t at, size_t n, size_t from,
                             size_t to) {
    size_t lo = from > at ? from : at, hi = to < at + n ? to : at + n;
    if (lo < hi) memcpy(text + lo, src + (lo - at), hi - lo);
}

/* ---- portable path ----------------------------------------------------------------------- */

typedef struct {
    uint64_t lo, hi;
} ipo__u128;

/* Low 64 bits of the carry-less product x*y with ordinary integer multiplies: each operand is
 * split in four masks with one bit in four kept, so the carries of an integer product land
 * in the three-bit holes and never reach a kept bit of the low 64 (the "holes" technique of
 * BearSSL's constant-time GHASH, bearssl.org/constanttime.html). */
IPO__INLINE uint64_t ipo__bmul64(uint64_t x, uint64_t y) {
    const uint64_t m0 = 0x1111111111111111ULL, m1 = m0 << 1, m2 = m0 << 2, m3 = m0 << 3;
    uint64_t x0 = x & m0, x1 = x & m1, x2 = x & m2, x3 = x & m3;
    uint64_t y0 = y & m0, y1 = y & m1, y2 = y & m2, y3 = y & m3;
    uint64_t z0 = (x0 * y0) ^ (x1 * y3) ^ (x2 * y2) ^ (x3 * y1);
    uint64_t z1 = (x0 * y1) ^ (x1 * y0) ^ (x2 * y3) ^ (x3 * y2);
    uint64_t z2 = (x0 * y2) ^ (x1 * y1) ^ (x2 * y0) ^ (x3 * y3);
    uint64_t z3 = (x0 * y3) ^ (x1 * y2) ^ (x2 * y1) ^ (x3 * y0);
    return (z0 & m0) | (z1 & m1) | (z2 & m2) | (z3 & m3);
}

IPO__INLINE uint64_t ipo__rev64(uint64_t x) {
    x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
    x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
    x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((x & 0x0F0F0F0F0F0F0F0FULL) << 4);
    x = ((x >> 8) & 0x00FF00FF00FF00FFULL) | ((x & 0x00FF00FF00FF00FFULL) << 8);
    x = ((x >> 16) & 0x0000FFFF0000FFFFULL) | ((x & 0x0000FFFF0000FFFFULL) << 16);
    return (x >> 32) | (x << 32);
}

/* a * b in the representation described at the top; br0/br1 are ipo__rev64 of b's halves.
 * Karatsuba on 64-bit halves; the high half of each 64x64 product is the bit-reversed low
 * half of the product of the bit-reversed operands, shifted by one. */
IPO__INLINE ipo__u128 ipo__gf_mul_portable(ipo__u128 a, uint64_t b0, uint64_t b1, uint64_t br0,
                                           uint64_t br1) {
    uint64_t a0 = a.lo, a1 = a.hi, a2 = a0 ^ a1, b2 = b0 ^ b1, br2 = br0 ^ br1;
    uint64_t ar0 = ipo__rev64(a0), ar1 = ipo__rev64(a1), ar2 = ar0 ^ ar1;
    uint64_t l0 = ipo__bmul64(a0, b0), l1 = ipo__rev64(ipo__bmul64(ar0, br0)) >> 1;
    uint64_t h0 = ipo__bmul64(a1, b1), h1 = ipo__rev64(ipo__bmul64(ar1, br1)) >> 1;
    uint64_t m0 = ipo__bmul64(a2, b2), m1 = ipo__rev64(ipo__bmul64(ar2, br2)) >> 1;
    uint64_t c0, c1, c2, c3;
    ipo__u128 r;
    m0 ^= l0 ^ h0;
    m1 ^= l1 ^ h1;
    c0 = l0;
    c1 = l1 ^ m0;
    c2 = h0 ^ m1;
    c3 = h1;
    /* Divide by y^128 mod Q: c0 == c0*y^128 + (c0 * 0xC2..00)*y^64, then the same for c1. */
    c1 ^= (c0 << 63) ^ (c0 << 62) ^ (c0 << 57);
    c2 ^= c0 ^ (c0 >> 1) ^ (c0 >> 2) ^ (c0 >> 7);
    c2 ^= (c1 << 63) ^ (c1 << 62) ^ (c1 << 57);
    c3 ^= c1 ^ (c1 >> 1) ^ (c1 >> 2) ^ (c1 >> 7);
    r.lo = c2;
    r.hi = c3;
    return r;
}

IPO__INLINE ipo__u128 ipo__ld_block_portable(const uint8_t* p) {
    ipo__u128 r;
    r.hi = ipo__ld64be(p);
    r.lo = ipo__ld64be(p + 8);
    return r;
}

typedef struct {
    uint64_t h0, h1, hr0, hr1;
} ipo__pkey;

IPO__INLINE ipo__pkey ipo__pkey_load(const ipo_ghash_key* k) {
    ipo__pkey q;
    q.h0 = ipo__ld64le(k->pow[15]);
    q.h1 = ipo__ld64le(k->pow[15] + 8);
    q.hr0 = ipo__ld64le(k->rev);
    q.hr1 = ipo__ld64le(k->rev + 8);
    return q;
}

IPO__INLINE ipo__u128 ipo__absorb_portable(ipo__u128 x, const ipo__pkey* q, const uint8_t* p) {
    ipo__u128 b = ipo__ld_block_portable(p);
    x.lo ^= b.lo;
    x.hi ^= b.hi;
    return ipo__gf_mul_portable(x, q->h0, q->h1, q->hr0, q->hr1);
}

static ipo__u128 ipo__hash_portable(ipo__u128 x, const ipo__pkey* q, const uint8_t* p,
                                    size_t len) {
    uint8_t buf[16];
    for (; len >= 16; len -= 16, p += 16) x = ipo__absorb_portable(x, q, p);
    if (len) {
        memset(buf, 0, 16);
        memcpy(buf, p, len);
        x = ipo__absorb_portable(x, q, buf);
    }
    return x;
}

static void ipo__crypt_portable(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                size_t aad_len, uint8_t* text, size_t len, const uint8_t* ks,
                                const uint8_t ekj0[16], uint8_t tag[16]) {
    ipo__pkey q = ipo__pkey_load(k);
    ipo__u128 x = {0, 0};
    uint8_t blk[16];
    size_t i, n;
    x = ipo__hash_portable(x, &q, aad, aad_len);
    for (i = 0; i < len; i += 16) {
        n = len - i < 16 ? len - i : 16;
        memset(blk, 0, 16);
        memcpy(blk, text + i, n);
        if (open) x = ipo__absorb_portable(x, &q, blk);
        for (size_t j = 0; j < n; j++) blk[j] ^= ks[i + j];
        memcpy(text + i, blk, n);
        if (!open) x = ipo__absorb_portable(x, &q, blk);
    }
    ipo__len_block(blk, aad_len, len);
    x = ipo__absorb_portable(x, &q, blk);
    ipo__st64be(blk, x.hi);
    ipo__st64be(blk + 8, x.lo);
    for (i = 0; i < 16; i++) tag[i] = blk[i] ^ ekj0[i];
}

/* ---- x86 common ---------------------------------------------------------------------------- */

#if IPO_GHASH_X86
#include <cpuid.h>
#include <immintrin.h>

#define IPO__TGT_PCL __attribute__((target("pclmul,sse2,ssse3,sse4.1")))
#define IPO__TGT_PCLAVX __attribute__((target("avx,pclmul,sse2,ssse3,sse4.1")))
#define IPO__H128 __attribute__((target("pclmul,sse2,ssse3"), always_inline))

/* Keeps the accumulators in registers, in program order: without it GCC re-associates the
 * XOR chains of a 16-block chunk into a tree with more live values than there are YMM
 * registers, and spills. */
#define IPO__PIN3(a, b, c) __asm__("" : "+x"(a), "+x"(b), "+x"(c))

/* Unrolls the loop that follows by 4 (GCC 8, clang; else no hint). */
#if defined(__clang__)
#define IPO__UNROLL4 _Pragma("unroll 4")
#elif __GNUC__ >= 8
#define IPO__UNROLL4 _Pragma("GCC unroll 4")
#else
#define IPO__UNROLL4
#endif

/* Blocks left over by the wide loops (AAD remainder, text tail, partial and length blocks)
 * are gathered as a list of block pointers and absorbed in one aggregated pass. */
#define IPO__LIST_MAX 20

static inline IPO__H128 __m128i ipo__bswap_mask128(void) {
    return _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

static inline IPO__H128 __m128i ipo__ldx(const uint8_t* p) {
    return _mm_loadu_si128((const __m128i*)(const void*)p);
}

static inline IPO__H128 void ipo__stx(uint8_t* p, __m128i v) {
    _mm_storeu_si128((__m128i*)(void*)p, v);
}

/* lo, mm, hi += a*b by Karatsuba: a0*b0, a1*b1, (a0^a1)*(b0^b1); bm holds b0^b1 in its low
 * word. The middle term is corrected (mm ^ lo ^ hi) once per reduction, not per block. */
static inline IPO__H128 void ipo__kmul128(__m128i a, __m128i b, __m128i bm, __m128i* lo,
                                          __m128i* mm, __m128i* hi) {
    __m128i am = _mm_xor_si128(a, _mm_shuffle_epi32(a, 0x4E));
    *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
    *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
    *mm = _mm_xor_si128(*mm, _mm_clmulepi64_si128(am, bm, 0x00));
}

/* (hi*y^128 + mi*y^64 + lo) / y^128 mod Q with mi = mm ^ lo ^ hi (see the top of the file). */
static inline IPO__H128 __m128i ipo__reduce128(__m128i lo, __m128i mm, __m128i hi) {
    const __m128i gf = _mm_set_epi64x(0, (long long)0xC200000000000000ULL);
    __m128i mi = _mm_xor_si128(mm, _mm_xor_si128(lo, hi));
    __m128i t = _mm_clmulepi64_si128(lo, gf, 0x00);
    mi = _mm_xor_si128(mi, _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4E), t));
    t = _mm_clmulepi64_si128(mi, gf, 0x00);
    return _mm_xor_si128(hi, _mm_xor_si128(_mm_shuffle_epi32(mi, 0x4E), t));
}

/* Absorbs the m blocks bp[0..m-1], at most 16 per reduction (aggregated: the state is added
 * to the first block of a group of g, whose blocks are multiplied by H^g..H^1). */
static inline IPO__H128 __m128i ipo__list128(__m128i x, const ipo_ghash_key* k,
                                             const uint8_t* const* bp, size_t m) {
    const __m128i bs = ipo__bswap_mask128();
    size_t i = 0, j, g;
    while (i < m) {
        __m128i lo = _mm_setzero_si128(), mm = lo, hi = lo, b;
        g = ((m - i - 1) & 15) + 1;
        /* the block carrying the state goes last: it is on the critical path */
        IPO__UNROLL4
        for (j = 17 - g; j < 16; j++) {
            b = _mm_shuffle_epi8(ipo__ldx(bp[i + j - (16 - g)]), bs);
            ipo__kmul128(b, ipo__ldx(k->pow[j]), ipo__ldx(k->mid[j]), &lo, &mm, &hi);
        }
        b = _mm_xor_si128(_mm_shuffle_epi8(ipo__ldx(bp[i]), bs), x);
        ipo__kmul128(b, ipo__ldx(k->pow[16 - g]), ipo__ldx(k->mid[16 - g]), &lo, &mm, &hi);
        x = ipo__reduce128(lo, mm, hi);
        i += g;
    }
    return x;
}

static inline IPO__H128 uint64_t ipo__ldu64(const uint8_t* p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline IPO__H128 uint32_t ipo__ldu32(const uint8_t* p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The n (1..15) bytes at p, zero-padded to a block, without touching p[n..]: overlapping
 * loads chosen by n (a public length), and no narrow stores for a wide load to wait on. */
static inline IPO__H128 __m128i ipo__ld_partial(const uint8_t* p, size_t n) {
    uint64_t lo, hi = 0;
    if (n >= 8) {
        lo = ipo__ldu64(p);
        if (n > 8) hi = ipo__ldu64(p + n - 8) >> (8 * (16 - n));
    } else if (n >= 4) {
        lo = ipo__ldu32(p) | (((uint64_t)ipo__ldu32(p + n - 4) >> (8 * (8 - n))) << 32);
    } else {
        lo = (uint64_t)p[0] | (uint64_t)p[n >> 1] << (8 * (n >> 1)) |
             (uint64_t)p[n - 1] << (8 * (n - 1));
    }
    return _mm_set_epi64x((long long)hi, (long long)lo);
}

/* v with its bytes moved down by s (the low 16 - s bytes are meaningful). */
static inline IPO__H128 __m128i ipo__bytes_down(__m128i v, size_t s) {
    const __m128i iota = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm_shuffle_epi8(v, _mm_add_epi8(iota, _mm_set1_epi8((char)s)));
}

/* Stores the first n (1..15) bytes of v at p, the same way round. */
static inline IPO__H128 void ipo__st_partial(uint8_t* p, __m128i v, size_t n) {
    if (n >= 8) {
        _mm_storel_epi64((__m128i*)(void*)p, v);
        if (n > 8) _mm_storel_epi64((__m128i*)(void*)(p + n - 8), ipo__bytes_down(v, n - 8));
    } else if (n >= 4) {
        uint32_t a = (uint32_t)_mm_cvtsi128_si32(v);
        uint32_t b = (uint32_t)_mm_cvtsi128_si32(ipo__bytes_down(v, n - 4));
        memcpy(p, &a, 4);
        memcpy(p + n - 4, &b, 4);
    } else {
        uint32_t a = (uint32_t)_mm_cvtsi128_si32(v);
        p[0] = (uint8_t)a;
        p[n >> 1] = (uint8_t)(a >> (8 * (n >> 1)));
        p[n - 1] = (uint8_t)(a >> (8 * (n - 1)));
    }
}

/* The length block, as it is in memory. */
static inline IPO__H128 __m128i ipo__len_block128(size_t aad_len, size_t len) {
    return _mm_shuffle_epi8(_mm_set_epi64x((long long)((uint64_t)aad_len << 3),
                                           (long long)((uint64_t)len << 3)),
                            ipo__bswap_mask128());
}

/* t = in ^ s, n blocks (in may be t). */
static inline IPO__H128 void ipo__xor_blocks(uint8_t* t, const uint8_t* in, const uint8_t* s,
                                             size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        ipo__stx(t + 16 * i, _mm_xor_si128(ipo__ldx(in + 16 * i), ipo__ldx(s + 16 * i)));
}

/* Appends to bp the blocks of a run of len bytes: the full ones in place, a partial one
 * zero-padded in pad (16 bytes). */
static inline IPO__H128 size_t ipo__list_add(const uint8_t** bp, size_t m, const uint8_t* p,
                                             size_t len, uint8_t* pad) {
    size_t i, n = len >> 4, part = len & 15;
    for (i = 0; i < n; i++) bp[m++] = p + 16 * i;
    if (part) {
        ipo__stx(pad, ipo__ld_partial(p + 16 * n, part));
        bp[m++] = pad;
    }
    return m;
}

/* The text tail (< 16 full blocks, from done on), read from in (the text itself, or the
 * source of an out-of-place op): sealing XORs it into text first. Appends its blocks (the
 * ciphertext: text's sealing, in's opening), the partial one (ext) and the length block
 * (ext + 16) to bp. */
static inline IPO__H128 size_t ipo__tail_list(int open, const uint8_t** bp, size_t m,
                                              const uint8_t* in, uint8_t* text,
                                              const uint8_t* ks, size_t len, size_t aad_len,
                                              size_t done, uint8_t ext[32]) {
    size_t i, n = (len - done) >> 4, part = len & 15;
    uint8_t* t = text + done;
    const uint8_t* r = in + done;
    const uint8_t* s = ks + done;
    if (!open) ipo__xor_blocks(t, r, s, n);
    for (i = 0; i < n; i++) bp[m++] = (open ? r : t) + 16 * i;
    if (part) {
        __m128i c = ipo__ld_partial(r + 16 * n, part);
        if (!open) {
            c = _mm_xor_si128(c, ipo__ld_partial(s + 16 * n, part));
            ipo__st_partial(t + 16 * n, c, part);
        }
        ipo__stx(ext, c);
        bp[m++] = ext;
    }
    ipo__stx(ext + 16, ipo__len_block128(aad_len, len));
    bp[m++] = ext + 16;
    return m;
}

/* Unless the whole message fits one group, the m (<= 16) leftover AAD blocks in bp are
 * hashed with the first 16 - m text blocks, read from in and appended to bp (sealing XORs
 * them into text first, opening must XOR them after the hash). Returns the number of blocks
 * of this head group, 0 if none. */
static inline IPO__H128 size_t ipo__head(int open, const uint8_t** bp, size_t m,
                                         const uint8_t* in, uint8_t* text, const uint8_t* ks,
                                         size_t len) {
    size_t i, n = len >> 4;
    if (!m || m + n + ((len & 15) ? 1 : 0) + 1 <= 16) return 0;
    if (n > 16 - m) n = 16 - m;
    if (!open) ipo__xor_blocks(text, in, ks, n);
    for (i = 0; i < n; i++) bp[m + i] = (open ? in : text) + 16 * i;
    return m + n;
}

/* The receiving side's tail: XOR after the tail was hashed (ext: its partial block). */
static inline IPO__H128 void ipo__tail_open(const uint8_t* in, uint8_t* text,
                                            const uint8_t* ks, size_t len, size_t done,
                                            uint8_t ext[32]) {
    size_t n = (len - done) >> 4, part = len & 15;
    uint8_t* t = text + done;
    const uint8_t* s = ks + done;
    ipo__xor_blocks(t, in + done, s, n);
    if (part)
        ipo__st_partial(t + 16 * n, _mm_xor_si128(ipo__ldx(ext), ipo__ld_partial(s + 16 * n, part)),
                        part);
}

/* ---- x86: PCLMULQDQ, 16 blocks per reduction ----------------------------------------------- */

/* One block of ipo__chunk_pcl: block j of the chunk, xz added to it (the state or zero).
 * mode 0: hash in; 1: out = in ^ ks, hash out (seal); 2: hash in, out = in ^ ks (open). */
static inline IPO__H128 void ipo__step128p(const ipo_ghash_key* k, const uint8_t* in,
                                           uint8_t* out, const uint8_t* ks, int mode, int j,
                                           int p, __m128i xz, __m128i* lo, __m128i* mm,
                                           __m128i* hi) {
    __m128i c = ipo__ldx(in + 16 * j), d = c;
    if (mode) {
        __m128i o = _mm_xor_si128(c, ipo__ldx(ks + 16 * j));
        ipo__stx(out + 16 * j, o);
        if (mode == 1) d = o;
    }
    d = _mm_xor_si128(_mm_shuffle_epi8(d, ipo__bswap_mask128()), xz);
    ipo__kmul128(d, ipo__ldx(k->pow[p]), ipo__ldx(k->mid[p]), lo, mm, hi);
    IPO__PIN3(*lo, *mm, *hi);
}

/* Block j of an 8-block chunk: times H^(8-j). */
static inline IPO__H128 void ipo__step128(const ipo_ghash_key* k, const uint8_t* in,
                                          uint8_t* out, const uint8_t* ks, int mode, int j,
                                          __m128i xz, __m128i* lo, __m128i* mm, __m128i* hi) {
    ipo__step128p(k, in, out, ks, mode, j, 8 + j, xz, lo, mm, hi);
}

/* 8 blocks, one reduction, unrolled (a rolled loop costs a counter, index arithmetic and a
 * branch per block); the accumulators pinned as in ipo__step256, else GCC re-associates the
 * XOR chains and spills. Block 0, carrying the state, goes last. */
static inline IPO__H128 __m128i ipo__chunk_pcl(__m128i x, const ipo_ghash_key* k,
                                               const uint8_t* in, uint8_t* out,
                                               const uint8_t* ks, int mode) {
    __m128i lo = _mm_setzero_si128(), mm = lo, hi = lo, z = lo;
    ipo__step128(k, in, out, ks, mode, 1, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 2, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 3, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 4, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 5, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 6, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 7, z, &lo, &mm, &hi);
    ipo__step128(k, in, out, ks, mode, 0, x, &lo, &mm, &hi);
    return ipo__reduce128(lo, mm, hi);
}

/* 16 blocks (256 bytes), one reduction: block j times H^(16-j); half the reductions of two
 * 8-block chunks, the PCLMULQDQ port being what bounds this loop. */
static inline IPO__H128 __m128i ipo__chunk16_pcl(__m128i x, const ipo_ghash_key* k,
                                                 const uint8_t* in, uint8_t* out,
                                                 const uint8_t* ks, int mode) {
    __m128i lo = _mm_setzero_si128(), mm = lo, hi = lo, z = lo;
    ipo__step128p(k, in, out, ks, mode, 1, 1, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 2, 2, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 3, 3, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 4, 4, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 5, 5, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 6, 6, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 7, 7, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 8, 8, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 9, 9, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 10, 10, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 11, 11, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 12, 12, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 13, 13, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 14, 14, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 15, 15, z, &lo, &mm, &hi);
    ipo__step128p(k, in, out, ks, mode, 0, 0, x, &lo, &mm, &hi);
    return ipo__reduce128(lo, mm, hi);
}

/* Where the chunk of `size` bytes at text offset done is read from: src when the chunk lies
 * inside the source range [at, at + sn), else text, after the source bytes it holds are
 * gathered. */
static inline IPO__H128 const uint8_t* ipo__chunk_src(uint8_t* text, const uint8_t* src,
                                                      size_t at, size_t sn, size_t done,
                                                      size_t size) {
    if (done >= at && done + size <= at + sn) return src + (done - at);
    ipo__gather(text, src, at, sn, done, done + size);
    return text + done;
}

/* The whole 128-byte chunks of the text from *done on, 256 bytes a step while they last;
 * mode as in ipo__step128, a constant at each call (the loops specialize). */
static inline IPO__H128 __m128i ipo__chunks_pcl(__m128i x, const ipo_ghash_key* k,
                                                uint8_t* text, size_t len, size_t* done,
                                                const uint8_t* src, size_t at, size_t sn,
                                                const uint8_t* ks, int mode) {
    size_t d = *done;
    for (; d + 256 <= len; d += 256)
        x = ipo__chunk16_pcl(x, k, src ? ipo__chunk_src(text, src, at, sn, d, 256) : text + d,
                             text + d, ks + d, mode);
    if (d + 128 <= len) {
        x = ipo__chunk_pcl(x, k, src ? ipo__chunk_src(text, src, at, sn, d, 128) : text + d,
                           text + d, ks + d, mode);
        d += 128;
    }
    *done = d;
    return x;
}

/* The bodies of the two 128-bit paths: inlined into a function per path, compiled under that
 * function's target (SSE encoding for IPO_GHASH_PCLMUL, VEX for IPO_GHASH_PCLMUL_AVX). */
/* src != NULL: the text's bytes [at, at + sn) are read from src, the rest from text
 * (ipo_gcm_seal_xor_ghash_from, ipo_gcm_open_ghash_xor_from). Whole chunks inside that range are XORed
 * straight from src; the head, the tail and a chunk that straddles an end are gathered into
 * text first. src == NULL is folded away where the in-place paths inline this. */
static inline IPO__H128 void ipo__crypt128(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                           size_t aad_len, uint8_t* text, size_t len,
                                           const uint8_t* src, size_t at, size_t sn,
                                           const uint8_t* ks, const uint8_t ekj0[16],
                                           uint8_t tag[16]) {
    const uint8_t* bp[IPO__LIST_MAX];
    const uint8_t* in;
    uint8_t apad[16], ext[32];
    size_t m, done, a = aad_len & ~(size_t)127;
    int whole;
    __m128i x = _mm_setzero_si128();
    for (done = 0; done < a; done += 128) x = ipo__chunk_pcl(x, k, aad + done, NULL, NULL, 0);
    m = ipo__list_add(bp, 0, aad + a, aad_len - a, apad);
    /* the text all in src (an ESP op the stack framed whole): head and tail read it there */
    whole = src && at == 0 && sn >= len;
    in = whole ? src : text;
    if (src && !whole) ipo__gather(text, src, at, sn, 0, 256); /* ipo__head: <= 16 blocks */
    done = ipo__head(open, bp, m, in, text, ks, len);
    if (done) {
        x = ipo__list128(x, k, bp, done);
        done = 16 * (done - m);
        if (open) ipo__xor_blocks(text, in, ks, done >> 4);
        m = 0;
    }
    if (!m) { /* else it all fits the tail's group, AAD blocks first */
        if (open && !src)
            x = ipo__chunks_pcl(x, k, text, len, &done, NULL, 0, 0, ks, 2);
        else if (!src)
            x = ipo__chunks_pcl(x, k, text, len, &done, NULL, 0, 0, ks, 1);
        else if (open)
            x = ipo__chunks_pcl(x, k, text, len, &done, src, at, sn, ks, 2);
        else
            x = ipo__chunks_pcl(x, k, text, len, &done, src, at, sn, ks, 1);
    }
    if (src && !whole) ipo__gather(text, src, at, sn, done, len);
    m = ipo__tail_list(open, bp, m, in, text, ks, len, aad_len, done, ext);
    x = ipo__list128(x, k, bp, m);
    if (open) ipo__tail_open(in, text, ks, len, done, ext);
    ipo__stx(tag, _mm_xor_si128(_mm_shuffle_epi8(x, ipo__bswap_mask128()), ipo__ldx(ekj0)));
}

static inline IPO__H128 void ipo__update128(const ipo_ghash_key* k, uint8_t X[16],
                                            const uint8_t* data, size_t len) {
    const __m128i bs = ipo__bswap_mask128();
    const uint8_t* bp[IPO__LIST_MAX];
    uint8_t pad[16];
    size_t done, a = len & ~(size_t)127;
    __m128i x = _mm_shuffle_epi8(ipo__ldx(X), bs);
    for (done = 0; done < a; done += 128) x = ipo__chunk_pcl(x, k, data + done, NULL, NULL, 0);
    x = ipo__list128(x, k, bp, ipo__list_add(bp, 0, data + a, len - a, pad));
    ipo__stx(X, _mm_shuffle_epi8(x, bs));
}

/* Short messages (ipo__crypt_short_512's limits: an AAD of at most one block, at most
 * IPO__SHORT_TEXT text bytes, so at most 16 blocks and one reduction) in one pass over the
 * blocks, without the block lists of the general body: the source bytes gathered into the
 * text, then each block XORed, stored and multiplied by the power its position needs
 * (H^T .. H^1 for the message's T blocks: pow[16 - T] .. pow[15]). */
#define IPO__SHORT_TEXT 224

static inline IPO__H128 void ipo__crypt_short128(int open, const ipo_ghash_key* k,
                                                 const uint8_t* aad, size_t aad_len,
                                                 uint8_t* text, size_t len, const uint8_t* src,
                                                 size_t at, size_t sn, const uint8_t* ks,
                                                 const uint8_t ekj0[16], uint8_t tag[16]) {
    const __m128i bs = ipo__bswap_mask128();
    size_t a = aad_len ? 1 : 0, n = len >> 4, part = len & 15, j;
    size_t first = 16 - (a + ((len + 15) >> 4) + 1) + a;
    __m128i lo = _mm_setzero_si128(), mm = lo, hi = lo, c, o;
    const uint8_t* in = text;
    if (src && at == 0 && sn >= len)
        in = src; /* the whole text in src: read it there */
    else if (src)
        ipo__gather(text, src, at, sn, 0, len);
    for (j = 0; j < n; j++) {
        c = ipo__ldx(in + 16 * j);
        o = _mm_xor_si128(c, ipo__ldx(ks + 16 * j));
        ipo__stx(text + 16 * j, o);
        ipo__kmul128(_mm_shuffle_epi8(open ? c : o, bs), ipo__ldx(k->pow[first + j]),
                     ipo__ldx(k->mid[first + j]), &lo, &mm, &hi);
    }
    if (part) {
        c = ipo__ld_partial(in + 16 * n, part);
        o = _mm_xor_si128(c, ipo__ld_partial(ks + 16 * n, part));
        ipo__st_partial(text + 16 * n, o, part);
        ipo__kmul128(_mm_shuffle_epi8(open ? c : o, bs), ipo__ldx(k->pow[first + n]),
                     ipo__ldx(k->mid[first + n]), &lo, &mm, &hi);
    }
    if (a) {
        c = _mm_shuffle_epi8(aad_len == 16 ? ipo__ldx(aad) : ipo__ld_partial(aad, aad_len), bs);
        ipo__kmul128(c, ipo__ldx(k->pow[first - 1]), ipo__ldx(k->mid[first - 1]), &lo, &mm, &hi);
    }
    c = _mm_shuffle_epi8(ipo__len_block128(aad_len, len), bs);
    ipo__kmul128(c, ipo__ldx(k->pow[15]), ipo__ldx(k->mid[15]), &lo, &mm, &hi);
    c = ipo__reduce128(lo, mm, hi);
    ipo__stx(tag, _mm_xor_si128(_mm_shuffle_epi8(c, bs), ipo__ldx(ekj0)));
}

IPO__TGT_PCL static void ipo__crypt_short_pcl(int open, const ipo_ghash_key* k,
                                              const uint8_t* aad, size_t aad_len,
                                              uint8_t* text, size_t len, const uint8_t* src,
                                              size_t at, size_t n, const uint8_t* ks,
                                              const uint8_t ekj0[16], uint8_t tag[16]) {
    ipo__crypt_short128(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

IPO__TGT_PCLAVX static void ipo__crypt_short_pclavx(int open, const ipo_ghash_key* k,
                                                    const uint8_t* aad, size_t aad_len,
                                                    uint8_t* text, size_t len,
                                                    const uint8_t* src, size_t at, size_t n,
                                                    const uint8_t* ks, const uint8_t ekj0[16],
                                                    uint8_t tag[16]) {
    ipo__crypt_short128(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

IPO__TGT_PCL static void ipo__crypt_pcl(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                        size_t aad_len, uint8_t* text, size_t len,
                                        const uint8_t* ks, const uint8_t ekj0[16],
                                        uint8_t tag[16]) {
    ipo__crypt128(open, k, aad, aad_len, text, len, NULL, 0, 0, ks, ekj0, tag);
}

IPO__TGT_PCL static void ipo__crypt_from_pcl(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                             size_t aad_len, uint8_t* text, size_t len,
                                             const uint8_t* src, size_t at, size_t n,
                                             const uint8_t* ks, const uint8_t ekj0[16],
                                             uint8_t tag[16]) {
    ipo__crypt128(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

IPO__TGT_PCL static void ipo__update_pcl(const ipo_ghash_key* k, uint8_t X[16],
                                         const uint8_t* data, size_t len) {
    ipo__update128(k, X, data, len);
}

IPO__TGT_PCLAVX static void ipo__crypt_pclavx(int open, const ipo_ghash_key* k,
                                              const uint8_t* aad, size_t aad_len,
                                              uint8_t* text, size_t len, const uint8_t* ks,
                                              const uint8_t ekj0[16], uint8_t tag[16]) {
    ipo__crypt128(open, k, aad, aad_len, text, len, NULL, 0, 0, ks, ekj0, tag);
}

IPO__TGT_PCLAVX static void ipo__crypt_from_pclavx(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                                   size_t aad_len, uint8_t* text, size_t len,
                                                   const uint8_t* src, size_t at, size_t n,
                                                   const uint8_t* ks, const uint8_t ekj0[16],
                                                   uint8_t tag[16]) {
    ipo__crypt128(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

IPO__TGT_PCLAVX static void ipo__update_pclavx(const ipo_ghash_key* k, uint8_t X[16],
                                               const uint8_t* data, size_t len) {
    ipo__update128(k, X, data, len);
}

/* ---- x86: VPCLMULQDQ on YMM, 16 blocks per reduction ----------------------------------------- */

#if IPO_GHASH_X86_WIDE
#define IPO__TGT_256 __attribute__((target("avx2,vpclmulqdq,pclmul,sse4.1")))
#define IPO__H256 __attribute__((target("avx2,vpclmulqdq,pclmul"), always_inline))

static inline IPO__H256 __m256i ipo__ldy(const uint8_t* p) {
    return _mm256_loadu_si256((const __m256i*)(const void*)p);
}

static inline IPO__H256 void ipo__sty(uint8_t* p, __m256i v) {
    _mm256_storeu_si256((__m256i*)(void*)p, v);
}

static inline IPO__H256 __m256i ipo__bswap_mask256(void) {
    return _mm256_broadcastsi128_si256(ipo__bswap_mask128());
}

/* x in the low lane, zero in the high one (_mm256_zextsi128_si256 needs GCC 10). */
static inline IPO__H256 __m256i ipo__zext256(__m128i x) {
    return _mm256_inserti128_si256(_mm256_setzero_si256(), x, 0);
}

static inline IPO__H256 void ipo__kmul256(__m256i a, __m256i b, __m256i bm, __m256i* lo,
                                          __m256i* mm, __m256i* hi) {
    __m256i am = _mm256_xor_si256(a, _mm256_shuffle_epi32(a, 0x4E));
    *lo = _mm256_xor_si256(*lo, _mm256_clmulepi64_epi128(a, b, 0x00));
    *hi = _mm256_xor_si256(*hi, _mm256_clmulepi64_epi128(a, b, 0x11));
    *mm = _mm256_xor_si256(*mm, _mm256_clmulepi64_epi128(am, bm, 0x00));
}

/* Reduces both lanes, then adds them (the reduction is linear). */
static inline IPO__H256 __m128i ipo__reduce256(__m256i lo, __m256i mm, __m256i hi) {
    const __m256i gf = _mm256_set1_epi64x((long long)0xC200000000000000ULL);
    __m256i mi = _mm256_xor_si256(mm, _mm256_xor_si256(lo, hi));
    __m256i t = _mm256_clmulepi64_epi128(lo, gf, 0x00), r;
    mi = _mm256_xor_si256(mi, _mm256_xor_si256(_mm256_shuffle_epi32(lo, 0x4E), t));
    t = _mm256_clmulepi64_epi128(mi, gf, 0x00);
    r = _mm256_xor_si256(hi, _mm256_xor_si256(_mm256_shuffle_epi32(mi, 0x4E), t));
    return _mm_xor_si128(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* ipo__list128 with two blocks per YMM register (the tails of both wide paths). */
static inline IPO__H256 __m128i ipo__list256(__m128i x, const ipo_ghash_key* k,
                                             const uint8_t* const* bp, size_t m) {
    const __m128i bs = ipo__bswap_mask128();
    const __m256i bs2 = ipo__bswap_mask256();
    size_t i = 0, j, g, h;
    while (i < m) {
        __m256i lo = _mm256_setzero_si256(), mm = lo, hi = lo;
        __m128i l1, m1, h1;
        g = ((m - i - 1) & 15) + 1;
        h = 2 - (g & 1); /* the head (the blocks carrying the state) goes last */
        for (j = 16 - g + h; j < 16; j += 2) {
            const uint8_t* const* q = bp + i + j - (16 - g);
            __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(ipo__ldx(q[0])),
                                                ipo__ldx(q[1]), 1);
            ipo__kmul256(_mm256_shuffle_epi8(b, bs2), ipo__ldy(k->pow[j]),
                         ipo__ldy(k->mid[j]), &lo, &mm, &hi);
        }
        j = 16 - g;
        if (h == 2) {
            __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(ipo__ldx(bp[i])),
                                                ipo__ldx(bp[i + 1]), 1);
            b = _mm256_xor_si256(_mm256_shuffle_epi8(b, bs2), ipo__zext256(x));
            ipo__kmul256(b, ipo__ldy(k->pow[j]), ipo__ldy(k->mid[j]), &lo, &mm, &hi);
            l1 = _mm_setzero_si128();
            m1 = l1;
            h1 = l1;
        } else {
            __m128i b = _mm_xor_si128(_mm_shuffle_epi8(ipo__ldx(bp[i]), bs), x);
            l1 = _mm_setzero_si128();
            m1 = l1;
            h1 = l1;
            ipo__kmul128(b, ipo__ldx(k->pow[j]), ipo__ldx(k->mid[j]), &l1, &m1, &h1);
        }
        l1 = _mm_xor_si128(l1, _mm_xor_si128(_mm256_castsi256_si128(lo),
                                             _mm256_extracti128_si256(lo, 1)));
        m1 = _mm_xor_si128(m1, _mm_xor_si128(_mm256_castsi256_si128(mm),
                                             _mm256_extracti128_si256(mm, 1)));
        h1 = _mm_xor_si128(h1, _mm_xor_si128(_mm256_castsi256_si128(hi),
                                             _mm256_extracti128_si256(hi, 1)));
        x = ipo__reduce128(l1, m1, h1);
        i += g;
    }
    return x;
}

/* One register pair step of ipo__chunk256: blocks 2j, 2j+1 of the chunk. */
static inline IPO__H256 void ipo__step256(const ipo_ghash_key* k, const uint8_t* in,
                                          uint8_t* out, const uint8_t* ks, int mode, int j,
                                          __m256i xz, __m256i* lo, __m256i* mm, __m256i* hi) {
    __m256i c = ipo__ldy(in + 32 * j), d = c;
    if (mode) {
        __m256i o = _mm256_xor_si256(c, ipo__ldy(ks + 32 * j));
        ipo__sty(out + 32 * j, o);
        if (mode == 1) d = o;
    }
    d = _mm256_xor_si256(_mm256_shuffle_epi8(d, ipo__bswap_mask256()), xz);
    ipo__kmul256(d, ipo__ldy(k->pow[2 * j]), ipo__ldy(k->mid[2 * j]), lo, mm, hi);
    IPO__PIN3(*lo, *mm, *hi);
}

/* 16 blocks, modes as ipo__chunk_pcl. */
static inline IPO__H256 __m128i ipo__chunk256(__m128i x, const ipo_ghash_key* k,
                                              const uint8_t* in, uint8_t* out,
                                              const uint8_t* ks, int mode) {
    __m256i lo = _mm256_setzero_si256(), mm = lo, hi = lo, z = lo;
    ipo__step256(k, in, out, ks, mode, 1, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 2, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 3, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 4, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 5, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 6, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 7, z, &lo, &mm, &hi);
    ipo__step256(k, in, out, ks, mode, 0, ipo__zext256(x), &lo, &mm, &hi);
    return ipo__reduce256(lo, mm, hi);
}

/* The body of both wide paths' crypt, as ipo__crypt128 (src != NULL: the text's bytes
 * [at, at + sn) are read from src; whole chunks inside that range are XORed straight from src,
 * the head, the tail and a chunk that straddles an end gathered into text first). CHUNK is the
 * path's 16-block step (ipo__chunk256, ipo__chunk512); the AAD tail, the head and the text
 * tail go through ipo__list256 on both. One body, expanded in each path's own function, so
 * that each is compiled under its own target. */
#define IPO__CRYPT_WIDE_BODY(CHUNK)                                                             \
    const uint8_t* bp[IPO__LIST_MAX];                                                           \
    uint8_t apad[16], ext[32];                                                                  \
    size_t m, done, a = aad_len & ~(size_t)255;                                                 \
    int whole = src && at == 0 && sn >= len; /* the text all in src: as in ipo__crypt128 */     \
    const uint8_t* in = whole ? src : text;                                                     \
    __m128i x = _mm_setzero_si128();                                                            \
    for (done = 0; done < a; done += 256) x = CHUNK(x, k, aad + done, NULL, NULL, 0);           \
    m = ipo__list_add(bp, 0, aad + a, aad_len - a, apad);                                       \
    if (src && !whole) ipo__gather(text, src, at, sn, 0, 256); /* ipo__head: <= 16 blocks */    \
    done = ipo__head(open, bp, m, in, text, ks, len);                                           \
    if (done) {                                                                                 \
        x = ipo__list256(x, k, bp, done);                                                       \
        done = 16 * (done - m);                                                                 \
        if (open) ipo__xor_blocks(text, in, ks, done >> 4);                                     \
        m = 0;                                                                                  \
    }                                                                                           \
    if (!m) { /* else it all fits the tail's group, AAD blocks first */                         \
        if (open)                                                                               \
            for (; done + 256 <= len; done += 256)                                              \
                x = CHUNK(x, k, src ? ipo__chunk_src(text, src, at, sn, done, 256)              \
                                    : text + done, text + done, ks + done, 2);                  \
        else                                                                                    \
            for (; done + 256 <= len; done += 256)                                              \
                x = CHUNK(x, k, src ? ipo__chunk_src(text, src, at, sn, done, 256)              \
                                    : text + done, text + done, ks + done, 1);                  \
    }                                                                                           \
    if (src && !whole) ipo__gather(text, src, at, sn, done, len);                               \
    m = ipo__tail_list(open, bp, m, in, text, ks, len, aad_len, done, ext);                     \
    x = ipo__list256(x, k, bp, m);                                                              \
    if (open) ipo__tail_open(in, text, ks, len, done, ext);                                     \
    ipo__stx(tag, _mm_xor_si128(_mm_shuffle_epi8(x, ipo__bswap_mask128()), ipo__ldx(ekj0)));

static inline IPO__H256 void ipo__crypt256(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                           size_t aad_len, uint8_t* text, size_t len,
                                           const uint8_t* src, size_t at, size_t sn,
                                           const uint8_t* ks, const uint8_t ekj0[16],
                                           uint8_t tag[16]) {
    IPO__CRYPT_WIDE_BODY(ipo__chunk256);
}

IPO__TGT_256 static void ipo__crypt_256(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                        size_t aad_len, uint8_t* text, size_t len,
                                        const uint8_t* ks, const uint8_t ekj0[16],
                                        uint8_t tag[16]) {
    ipo__crypt256(open, k, aad, aad_len, text, len, NULL, 0, 0, ks, ekj0, tag);
}

IPO__TGT_256 static void ipo__crypt_from_256(int open, const ipo_ghash_key* k,
                                             const uint8_t* aad, size_t aad_len, uint8_t* text,
                                             size_t len, const uint8_t* src, size_t at,
                                             size_t n, const uint8_t* ks,
                                             const uint8_t ekj0[16], uint8_t tag[16]) {
    ipo__crypt256(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

IPO__TGT_256 static void ipo__update_256(const ipo_ghash_key* k, uint8_t X[16],
                                         const uint8_t* data, size_t len) {
    const __m128i bs = ipo__bswap_mask128();
    const uint8_t* bp[IPO__LIST_MAX];
    uint8_t pad[16];
    size_t done, a = len & ~(size_t)255;
    __m128i x = _mm_shuffle_epi8(ipo__ldx(X), bs);
    for (done = 0; done < a; done += 256) x = ipo__chunk256(x, k, data + done, NULL, NULL, 0);
    x = ipo__list256(x, k, bp, ipo__list_add(bp, 0, data + a, len - a, pad));
    ipo__stx(X, _mm_shuffle_epi8(x, bs));
}

/* ---- x86: VPCLMULQDQ on ZMM, 16 blocks per reduction ----------------------------------------- */
/* The YMM path's structure with four blocks per register; the tails use ipo__list256. */

#define IPO__TGT_512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,vpclmulqdq,pclmul,sse4.1")))
#define IPO__H512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,vpclmulqdq,pclmul"), always_inline))

static inline IPO__H512 __m512i ipo__ldz(const uint8_t* p) {
    return _mm512_loadu_si512((const void*)p);
}

static inline IPO__H512 void ipo__stz(uint8_t* p, __m512i v) {
    _mm512_storeu_si512((void*)p, v);
}

static inline IPO__H512 __m512i ipo__xor3_512(__m512i a, __m512i b, __m512i c) {
    return _mm512_ternarylogic_epi64(a, b, c, 0x96);
}

static inline IPO__H512 void ipo__kmul512(__m512i a, __m512i b, __m512i bm, __m512i* lo,
                                          __m512i* mm, __m512i* hi) {
    __m512i am = _mm512_xor_si512(a, _mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0x4E));
    *lo = _mm512_xor_si512(*lo, _mm512_clmulepi64_epi128(a, b, 0x00));
    *hi = _mm512_xor_si512(*hi, _mm512_clmulepi64_epi128(a, b, 0x11));
    *mm = _mm512_xor_si512(*mm, _mm512_clmulepi64_epi128(am, bm, 0x00));
}

static inline IPO__H512 __m128i ipo__reduce512(__m512i lo, __m512i mm, __m512i hi) {
    const __m512i gf = _mm512_set1_epi64((long long)0xC200000000000000ULL);
    __m512i mi = ipo__xor3_512(mm, lo, hi);
    __m512i t = _mm512_clmulepi64_epi128(lo, gf, 0x00), r;
    __m256i r2;
    mi = ipo__xor3_512(mi, _mm512_shuffle_epi32(lo, (_MM_PERM_ENUM)0x4E), t);
    t = _mm512_clmulepi64_epi128(mi, gf, 0x00);
    r = ipo__xor3_512(hi, _mm512_shuffle_epi32(mi, (_MM_PERM_ENUM)0x4E), t);
    r2 = _mm256_xor_si256(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64(r, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(r2), _mm256_extracti128_si256(r2, 1));
}

static inline IPO__H512 void ipo__step512(const ipo_ghash_key* k, const uint8_t* in,
                                          uint8_t* out, const uint8_t* ks, int mode, int j,
                                          __m512i xz, __m512i* lo, __m512i* mm, __m512i* hi) {
    const __m512i bs4 = _mm512_broadcast_i32x4(ipo__bswap_mask128());
    __m512i c = ipo__ldz(in + 64 * j), d = c;
    if (mode) {
        __m512i o = _mm512_xor_si512(c, ipo__ldz(ks + 64 * j));
        ipo__stz(out + 64 * j, o);
        if (mode == 1) d = o;
    }
    d = _mm512_xor_si512(_mm512_shuffle_epi8(d, bs4), xz);
    ipo__kmul512(d, ipo__ldz(k->pow[4 * j]), ipo__ldz(k->mid[4 * j]), lo, mm, hi);
}

static inline IPO__H512 __m128i ipo__chunk512(__m128i x, const ipo_ghash_key* k,
                                              const uint8_t* in, uint8_t* out,
                                              const uint8_t* ks, int mode) {
    __m512i lo = _mm512_setzero_si512(), mm = lo, hi = lo, z = lo;
    ipo__step512(k, in, out, ks, mode, 1, z, &lo, &mm, &hi);
    ipo__step512(k, in, out, ks, mode, 2, z, &lo, &mm, &hi);
    ipo__step512(k, in, out, ks, mode, 3, z, &lo, &mm, &hi);
    ipo__step512(k, in, out, ks, mode, 0, _mm512_inserti32x4(z, x, 0), &lo, &mm, &hi);
    return ipo__reduce512(lo, mm, hi);
}

/* The body of the ZMM path: IPO__CRYPT_WIDE_BODY with four blocks per register. */
static inline IPO__H512 void ipo__crypt512(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                           size_t aad_len, uint8_t* text, size_t len,
                                           const uint8_t* src, size_t at, size_t sn,
                                           const uint8_t* ks, const uint8_t ekj0[16],
                                           uint8_t tag[16]) {
    IPO__CRYPT_WIDE_BODY(ipo__chunk512);
}

IPO__TGT_512 static void ipo__crypt_512(int open, const ipo_ghash_key* k, const uint8_t* aad,
                                        size_t aad_len, uint8_t* text, size_t len,
                                        const uint8_t* ks, const uint8_t ekj0[16],
                                        uint8_t tag[16]) {
    ipo__crypt512(open, k, aad, aad_len, text, len, NULL, 0, 0, ks, ekj0, tag);
}

IPO__TGT_512 static void ipo__crypt_from_512(int open, const ipo_ghash_key* k,
                                             const uint8_t* aad, size_t aad_len, uint8_t* text,
                                             size_t len, const uint8_t* src, size_t at,
                                             size_t n, const uint8_t* ks,
                                             const uint8_t ekj0[16], uint8_t tag[16]) {
    ipo__crypt512(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

/* Short messages (the limits of ipo__crypt_short128) in one pass: each 64-byte chunk of the
 * text is loaded under a byte mask (its bytes [at, at + sn) from src), XORed with the
 * keystream, stored under the same mask and multiplied by the four consecutive powers of H
 * that its blocks' positions need. The message's T blocks
 * take H^T .. H^1, that is pow[16 - T] .. pow[15]; the zero lanes of a last, partial chunk
 * read powers past pow[15] (still inside the key) and add nothing. Masked-off bytes are
 * neither read nor written: AVX-512 masked loads and stores do not fault on them. */
static inline IPO__H512 uint64_t ipo__mask_below(size_t n) {
    return n >= 64 ? ~0ULL : (1ULL << n) - 1;
}

IPO__TGT_512 static void ipo__crypt_short_512(int open, const ipo_ghash_key* k,
                                              const uint8_t* aad, size_t aad_len,
                                              uint8_t* text, size_t len, const uint8_t* src,
                                              size_t at, size_t sn, const uint8_t* ks,
                                              const uint8_t ekj0[16], uint8_t tag[16]) {
    const __m512i bs4 = _mm512_broadcast_i32x4(ipo__bswap_mask128());
    const __m128i bs = ipo__bswap_mask128();
    size_t a = aad_len ? 1 : 0, first = 16 - (a + ((len + 15) >> 4) + 1) + a, o, c;
    __m512i lo = _mm512_setzero_si512(), mm = lo, hi = lo;
    __m256i l2, m2, h2;
    __m128i l1 = _mm_setzero_si128(), m1 = l1, h1 = l1, b;
    const uint8_t* base = text;
    if (src && at == 0 && sn >= len) { /* the whole text in src: plain loads from there */
        base = src;
        src = NULL;
    }
    for (c = 0, o = 0; o < len; c++, o += 64) {
        __mmask64 mv = ipo__mask_below(len - o), ms = 0;
        __m512i in, out;
        if (src) {
            size_t from = at > o ? at - o : 0, to = at + sn > o ? at + sn - o : 0;
            ms = mv & ipo__mask_below(to) & ~ipo__mask_below(from);
        }
        in = _mm512_maskz_loadu_epi8(mv & ~ms, base + o);
        if (ms) in = _mm512_mask_loadu_epi8(in, ms, (const void*)((uintptr_t)src + o - at));
        out = _mm512_xor_si512(in, _mm512_maskz_loadu_epi8(mv, ks + o));
        _mm512_mask_storeu_epi8(text + o, mv, out);
        ipo__kmul512(_mm512_shuffle_epi8(open ? in : out, bs4), ipo__ldz(k->pow[first + 4 * c]),
                     ipo__ldz(k->mid[first + 4 * c]), &lo, &mm, &hi);
    }
    if (a) {
        b = _mm_shuffle_epi8(aad_len == 16 ? ipo__ldx(aad) : ipo__ld_partial(aad, aad_len), bs);
        ipo__kmul128(b, ipo__ldx(k->pow[first - 1]), ipo__ldx(k->mid[first - 1]), &l1, &m1, &h1);
    }
    b = _mm_shuffle_epi8(ipo__len_block128(aad_len, len), bs);
    ipo__kmul128(b, ipo__ldx(k->pow[15]), ipo__ldx(k->mid[15]), &l1, &m1, &h1);
    l2 = _mm256_xor_si256(_mm512_castsi512_si256(lo), _mm512_extracti64x4_epi64(lo, 1));
    m2 = _mm256_xor_si256(_mm512_castsi512_si256(mm), _mm512_extracti64x4_epi64(mm, 1));
    h2 = _mm256_xor_si256(_mm512_castsi512_si256(hi), _mm512_extracti64x4_epi64(hi, 1));
    l1 = _mm_xor_si128(l1, _mm_xor_si128(_mm256_castsi256_si128(l2), _mm256_extracti128_si256(l2, 1)));
    m1 = _mm_xor_si128(m1, _mm_xor_si128(_mm256_castsi256_si128(m2), _mm256_extracti128_si256(m2, 1)));
    h1 = _mm_xor_si128(h1, _mm_xor_si128(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1)));
    b = ipo__reduce128(l1, m1, h1);
    ipo__stx(tag, _mm_xor_si128(_mm_shuffle_epi8(b, bs), ipo__ldx(ekj0)));
}

IPO__TGT_512 static void ipo__update_512(const ipo_ghash_key* k, uint8_t X[16],
                                         const uint8_t* data, size_t len) {
    const __m128i bs = ipo__bswap_mask128();
    const uint8_t* bp[IPO__LIST_MAX];
    uint8_t pad[16];
    size_t done, a = len & ~(size_t)255;
    __m128i x = _mm_shuffle_epi8(ipo__ldx(X), bs);
    for (done = 0; done < a; done += 256) x = ipo__chunk512(x, k, data + done, NULL, NULL, 0);
    x = ipo__list256(x, k, bp, ipo__list_add(bp, 0, data + a, len - a, pad));
    ipo__stx(X, _mm_shuffle_epi8(x, bs));
}
#endif /* IPO_GHASH_X86_WIDE */

static IPO__UNUSED uint64_t ipo__xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif /* IPO_GHASH_X86 */

/* ---- public API -------------------------------------------------------------------------- */

/* H = AES_K(0^128). Constant time (portable arithmetic only), about 16 field multiplies. */
IPO__API void ipo_ghash_key_init(ipo_ghash_key* k, const uint8_t H[16]) {
    ipo__u128 h, p;
    uint64_t mask;
    int i;
    h.hi = ipo__ld64be(H);
    h.lo = ipo__ld64be(H + 8);
    /* H * y mod Q: shift left one bit, fold bit 128 back as y^127 + y^126 + y^121 + 1. */
    mask = 0 - (h.hi >> 63);
    h.hi = (h.hi << 1) | (h.lo >> 63);
    h.lo <<= 1;
    h.hi ^= mask & 0xC200000000000000ULL;
    h.lo ^= mask & 1;
    memset(k, 0, sizeof(*k));
    ipo__st64le(k->rev, ipo__rev64(h.lo));
    ipo__st64le(k->rev + 8, ipo__rev64(h.hi));
    p = h;
    for (i = 15; i >= 0; i--) {
        ipo__st64le(k->pow[i], p.lo);
        ipo__st64le(k->pow[i] + 8, p.hi);
        ipo__st64le(k->mid[i], p.lo ^ p.hi);
        ipo__st64le(k->mid[i] + 8, p.lo ^ p.hi);
        if (i) p = ipo__gf_mul_portable(p, h.lo, h.hi, ipo__rev64(h.lo), ipo__rev64(h.hi));
    }
}

/* Bitmask (1 << path) of the paths this CPU and OS can run; the portable one always. */
IPO__API int ipo_ghash_cpu_paths(void) {
    int paths = 1 << IPO_GHASH_PORTABLE;
#if IPO_GHASH_X86
    unsigned int a, b, c, d, maxleaf;
    uint64_t xcr0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return paths;
    maxleaf = a;
    __cpuid(1, a, b, c, d);
    /* leaf 1 ECX: 1 PCLMULQDQ, 9 SSSE3, 19 SSE4.1, 27 OSXSAVE, 28 AVX */
    if (!((c >> 1) & 1) || !((c >> 9) & 1) || !((c >> 19) & 1)) return paths;
    paths |= 1 << IPO_GHASH_PCLMUL;
    /* XCR0: 1 SSE, 2 AVX (YMM upper halves), 5-7 opmask, ZMM upper halves, ZMM16-31 */
    if (!((c >> 27) & 1) || !((c >> 28) & 1)) return paths;
    xcr0 = ipo__xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return paths;
    paths |= 1 << IPO_GHASH_PCLMUL_AVX;
#if IPO_GHASH_X86_WIDE
    if (maxleaf < 7) return paths;
    __cpuid_count(7, 0, a, b, c, d);
    /* leaf 7 EBX: 5 AVX2, 16 AVX512F, 30 AVX512BW, 31 AVX512VL; ECX: 10 VPCLMULQDQ */
    if (!((b >> 5) & 1) || !((c >> 10) & 1)) return paths;
    paths |= 1 << IPO_GHASH_VPCLMUL256;
    if ((xcr0 & 0xE6) == 0xE6 && ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1))
        paths |= 1 << IPO_GHASH_VPCLMUL512;
#else
    (void)maxleaf;
#endif
#endif
    return paths;
}

/* 1 if the CPU and OS run 512-bit VAES (leaf 7 ECX bit 9) with the AVX-512 state the
 * 512-bit GHASH path needs: where OpenSSL can have 512-bit VAES AES (crypto/aes_engine.py). */
IPO__API int ipo_cpu_has_vaes512(void) {
#if IPO_GHASH_X86 && IPO_GHASH_X86_WIDE
    unsigned int a, b, c, d;
    if (!((ipo_ghash_cpu_paths() >> IPO_GHASH_VPCLMUL512) & 1)) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (int)((c >> 9) & 1);
#else
    return 0;
#endif
}

/* X (16 bytes, GHASH state as in NIST SP 800-38D) absorbs len bytes; a final partial block is
 * zero-padded. path must have passed ipo_ghash_selftest. */
IPO__API void ipo_ghash_update(int path, const ipo_ghash_key* k, uint8_t X[16],
                               const uint8_t* data, size_t len) {
    ipo__pkey q;
    ipo__u128 x;
    if (!len) return;
    switch (path) {
#if IPO_GHASH_X86
    case IPO_GHASH_PCLMUL:
        ipo__update_pcl(k, X, data, len);
        return;
    case IPO_GHASH_PCLMUL_AVX:
        ipo__update_pclavx(k, X, data, len);
        return;
#if IPO_GHASH_X86_WIDE
    case IPO_GHASH_VPCLMUL256:
        ipo__update_256(k, X, data, len);
        return;
    case IPO_GHASH_VPCLMUL512:
        ipo__update_512(k, X, data, len);
        return;
#endif
#endif
    default:
        break;
    }
    q = ipo__pkey_load(k);
    x = ipo__ld_block_portable(X);
    x = ipo__hash_portable(x, &q, data, len);
    ipo__st64be(X, x.hi);
    ipo__st64be(X + 8, x.lo);
}

/* A short message (an AAD of at most 16 bytes, at most IPO__SHORT_TEXT text bytes) on an
 * x86 path: its one-pass code (src as ipo__crypt_from's, or NULL). Returns 0 when the
 * message is longer or the path has none (portable), and does nothing then. Inlined, as
 * ipo__crypt and ipo__crypt_from, into the API functions: a 64 B packet's op spent about
 * 4 ns in the three calls of twelve arguments each (measured in C). */
IPO__INLINE int ipo__crypt_short(int open, int path, const ipo_ghash_key* k,
                                 const uint8_t* aad, size_t aad_len, uint8_t* text, size_t len,
                                 const uint8_t* src, size_t at, size_t n, const uint8_t* ks,
                                 const uint8_t ekj0[16], uint8_t tag[16]) {
    if (aad_len > 16 || len > IPO__SHORT_TEXT) return 0;
    switch (path) {
#if IPO_GHASH_X86
    case IPO_GHASH_PCLMUL:
        ipo__crypt_short_pcl(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return 1;
    case IPO_GHASH_PCLMUL_AVX:
#if IPO_GHASH_X86_WIDE
    case IPO_GHASH_VPCLMUL256: /* the 128-bit code, VEX-encoded (AVX2 CPUs have AVX) */
#endif
        ipo__crypt_short_pclavx(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return 1;
#if IPO_GHASH_X86_WIDE
    case IPO_GHASH_VPCLMUL512:
        ipo__crypt_short_512(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return 1;
#endif
#endif
    default:
        return 0;
    }
}

IPO__INLINE void ipo__crypt(int open, int path, const ipo_ghash_key* k, const uint8_t* aad,
                            size_t aad_len, uint8_t* text, size_t len, const uint8_t* ks,
                            const uint8_t ekj0[16], uint8_t tag[16]) {
    uint8_t none[16]; /* stands for NULL pointers given with a zero length */
    if (!aad_len) aad = none;
    if (!len) {
        text = none;
        ks = none;
    }
    if (ipo__crypt_short(open, path, k, aad, aad_len, text, len, NULL, 0, 0, ks, ekj0, tag))
        return;
    switch (path) {
#if IPO_GHASH_X86
    case IPO_GHASH_PCLMUL:
        ipo__crypt_pcl(open, k, aad, aad_len, text, len, ks, ekj0, tag);
        return;
    case IPO_GHASH_PCLMUL_AVX:
        ipo__crypt_pclavx(open, k, aad, aad_len, text, len, ks, ekj0, tag);
        return;
#if IPO_GHASH_X86_WIDE
    case IPO_GHASH_VPCLMUL256:
        ipo__crypt_256(open, k, aad, aad_len, text, len, ks, ekj0, tag);
        return;
    case IPO_GHASH_VPCLMUL512:
        ipo__crypt_512(open, k, aad, aad_len, text, len, ks, ekj0, tag);
        return;
#endif
#endif
    default:
        ipo__crypt_portable(open, k, aad, aad_len, text, len, ks, ekj0, tag);
    }
}

/* Send side, in place: text ^= ks (len bytes of AES_K(J0+1), AES_K(J0+2), ...), then
 * tag = GHASH_H(aad, ciphertext) ^ ekj0 (SP 800-38D 7.1 steps 5-6). Any alignment; aad, text
 * and ks may be NULL when their length is 0 (GMAC, RFC 4543: len 0, all in the AAD); tag may
 * be ekj0. path must have passed ipo_ghash_selftest (another one may fault). */
IPO__API void ipo_gcm_seal_xor_ghash(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                     size_t aad_len, uint8_t* text, size_t len,
                                     const uint8_t* ks, const uint8_t ekj0[16],
                                     uint8_t tag[16]) {
    ipo__crypt(0, path, k, aad, aad_len, text, len, ks, ekj0, tag);
}

/* Out of place, either direction: the text's bytes [at, at + n) are read from src instead of
 * text (the rest is in text already); the result goes to text. The x86 paths XOR (and,
 * opening, hash) straight from src; the portable one gathers first. */
IPO__INLINE void ipo__crypt_from(int open, int path, const ipo_ghash_key* k,
                                 const uint8_t* aad, size_t aad_len, uint8_t* text, size_t len,
                                 const uint8_t* src, size_t at, size_t n, const uint8_t* ks,
                                 const uint8_t ekj0[16], uint8_t tag[16]) {
    uint8_t none[16];
    if (!n || !len || at >= len) {
        ipo__crypt(open, path, k, aad, aad_len, text, len, ks, ekj0, tag);
        return;
    }
    if (n > len - at) n = len - at;
    if (!aad_len) aad = none;
    if (ipo__crypt_short(open, path, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag))
        return;
    switch (path) {
#if IPO_GHASH_X86
    case IPO_GHASH_PCLMUL:
        ipo__crypt_from_pcl(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return;
    case IPO_GHASH_PCLMUL_AVX:
        ipo__crypt_from_pclavx(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return;
#if IPO_GHASH_X86_WIDE
    case IPO_GHASH_VPCLMUL256:
        ipo__crypt_from_256(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return;
    case IPO_GHASH_VPCLMUL512:
        ipo__crypt_from_512(open, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
        return;
#endif
#endif
    default:
        ipo__gather(text, src, at, n, 0, len);
        ipo__crypt(open, path, k, aad, aad_len, text, len, ks, ekj0, tag);
    }
}

/* Send side, out of place: as ipo_gcm_seal_xor_ghash, with the plaintext's bytes
 * [at, at + n) of the text read from src instead of text (the rest is in text already); the
 * ciphertext goes to text. */
IPO__API void ipo_gcm_seal_xor_ghash_from(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                          size_t aad_len, uint8_t* text, size_t len,
                                          const uint8_t* src, size_t at, size_t n,
                                          const uint8_t* ks, const uint8_t ekj0[16],
                                          uint8_t tag[16]) {
    ipo__crypt_from(0, path, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

/* Receive side, out of place: as ipo_gcm_open_ghash_xor, with the ciphertext's bytes
 * [at, at + n) read from src instead of text; the tag is over the ciphertext so read, and
 * the plaintext goes to text (whatever the tag: the caller restores a frame that fails). */
IPO__API void ipo_gcm_open_ghash_xor_from(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                          size_t aad_len, uint8_t* text, size_t len,
                                          const uint8_t* src, size_t at, size_t n,
                                          const uint8_t* ks, const uint8_t ekj0[16],
                                          uint8_t tag[16]) {
    ipo__crypt_from(1, path, k, aad, aad_len, text, len, src, at, n, ks, ekj0, tag);
}

/* Receive side, in place: tag from the ciphertext as given, then text ^= ks. The caller
 * compares the tag in constant time (SP 800-38D 7.2 step 8). */
IPO__API void ipo_gcm_open_ghash_xor(int path, const ipo_ghash_key* k, const uint8_t* aad,
                                     size_t aad_len, uint8_t* text, size_t len,
                                     const uint8_t* ks, const uint8_t ekj0[16],
                                     uint8_t tag[16]) {
    ipo__crypt(1, path, k, aad, aad_len, text, len, ks, ekj0, tag);
}

/* ---- self test --------------------------------------------------------------------------- */

#define IPO__ST_MAX 4096
static const uint16_t ipo__st_lens[14] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 255, 256,
                                          1000, 4096};
static const uint8_t ipo__st_aads[14] = {0, 12, 1, 20, 33, 16, 0, 12, 40, 12, 250, 241, 8, 255};
/* McGrew & Viega test case 4: H, A, C and GHASH_H(A, C). */
static const uint8_t ipo__kat_tc4_h[16] = {
    0xb8, 0x3b, 0x53, 0x37, 0x08, 0xbf, 0x53, 0x5d, 0x0a, 0xa6, 0xe5, 0x29, 0x80, 0xd5, 0x3b, 0x78,
};
static const uint8_t ipo__kat_tc4_a[20] = {
    0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed, 0xfa, 0xce,
    0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2,
};
static const uint8_t ipo__kat_tc4_c[60] = {
    0x42, 0x83, 0x1e, 0xc2, 0x21, 0x77, 0x74, 0x24, 0x4b, 0x72, 0x21, 0xb7,
    0x84, 0xd0, 0xd4, 0x9c, 0xe3, 0xaa, 0x21, 0x2f, 0x2c, 0x02, 0xa4, 0xe0,
    0x35, 0xc1, 0x7e, 0x23, 0x29, 0xac, 0xa1, 0x2e, 0x21, 0xd5, 0x14, 0xb2,
    0x54, 0x66, 0x93, 0x1c, 0x7d, 0x8f, 0x6a, 0x5a, 0xac, 0x84, 0xaa, 0x05,
    0x1b, 0xa3, 0x0b, 0x39, 0x6a, 0x0a, 0xac, 0x97, 0x3d, 0x58, 0xe0, 0x91,
};
static const uint8_t ipo__kat_tc4_ghash[16] = {
    0x69, 0x8e, 0x57, 0xf7, 0x0e, 0x6e, 0xcc, 0x7f, 0xd9, 0x46, 0x3b, 0x72, 0x60, 0xa9, 0xae, 0x5f,
};
/* Tags for ipo__st_lens/ipo__st_aads over the splitmix64 data below, computed with an
 * independent bit-serial GHASH (SP 800-38D Algorithm 1). */
static const uint8_t ipo__kat_tags[14][16] = {
    {0xce, 0x56, 0x97, 0x1c, 0xde, 0x35, 0x58, 0x97,
     0x42, 0x1e, 0xfc, 0x0b, 0x10, 0x46, 0xc8, 0xbf},
    {0x5d, 0x8d, 0x39, 0x56, 0xae, 0x75, 0xd1, 0x62,
     0x63, 0x40, 0xec, 0x9d, 0x62, 0xcb, 0x3f, 0xdd},
    {0x67, 0x3f, 0x69, 0x0c, 0xca, 0x02, 0x7c, 0xc4,
     0x1e, 0xdf, 0x3f, 0x57, 0x08, 0x9f, 0x98, 0x89},
    {0x80, 0x70, 0xe5, 0xd7, 0xe1, 0xf0, 0x30, 0xf5,
     0x45, 0xb9, 0x34, 0xf3, 0x8e, 0xe6, 0x73, 0x95},
    {0xb9, 0x68, 0xb7, 0xce, 0x1c, 0x2a, 0xb2, 0x6d,
     0x5d, 0xbb, 0x13, 0xc8, 0x3e, 0x50, 0x24, 0xf6},
    {0x0a, 0xb4, 0xe7, 0x0c, 0xd2, 0x5a, 0x33, 0x48,
     0xfe, 0x02, 0xd3, 0xcf, 0x9e, 0x75, 0xdc, 0x98},
    {0xdd, 0x60, 0xe3, 0x07, 0x02, 0xa2, 0x36, 0x43,
     0xdf, 0xcf, 0x14, 0xcf, 0x4d, 0x58, 0xe2, 0xe6},
    {0x7d, 0xb3, 0xa8, 0x82, 0x6d, 0xc0, 0x43, 0x11,
     0xbc, 0x9f, 0x02, 0x65, 0x83, 0xb4, 0x6d, 0x5b},
    {0xd3, 0x76, 0x8e, 0x7b, 0x67, 0x55, 0x2f, 0x92,
     0xc1, 0x86, 0x26, 0x99, 0x86, 0x69, 0x2c, 0x37},
    {0x1f, 0xc4, 0x61, 0x38, 0xce, 0x81, 0xaf, 0x46,
     0x8a, 0xdf, 0xd7, 0xa7, 0xec, 0x59, 0x98, 0x74},
    {0xcd, 0x10, 0xa9, 0x62, 0x20, 0x40, 0x70, 0x59,
     0x8f, 0xe4, 0xd7, 0xb3, 0x74, 0xed, 0x13, 0xec},
    {0x0f, 0x76, 0xc4, 0xc6, 0x82, 0x68, 0xd0, 0x13,
     0x8a, 0xfb, 0x99, 0xb6, 0x14, 0x90, 0xbb, 0xd6},
    {0x98, 0x9d, 0x91, 0x5e, 0x36, 0x18, 0x8f, 0xce,
     0x8e, 0xa5, 0xb9, 0x40, 0x5e, 0x58, 0x11, 0x6f},
    {0x04, 0x9d, 0xec, 0x68, 0xc0, 0x83, 0x8b, 0xe3,
     0x87, 0x25, 0x34, 0xc9, 0x26, 0xf1, 0x29, 0x8f},
};

static void ipo__st_fill(uint8_t* out, size_t n, uint64_t seed) {
    /* splitmix64 */
    uint64_t s = seed, z = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if ((i & 7) == 0) {
            z = (s += 0x9E3779B97F4A7C15ULL);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
            z ^= z >> 31;
        }
        out[i] = (uint8_t)(z >> (8 * (i & 7)));
    }
}

/* 1 if path is runnable here (CPUID) and gives the known answers, else 0. */
IPO__API int ipo_ghash_selftest(int path) {
    ipo_ghash_key key;
    uint8_t h[16], ekj0[16], aad[256], tag[16], tag2[16], x1[16], x2[16];
    uint8_t ks[IPO__ST_MAX], buf[IPO__ST_MAX], ref[IPO__ST_MAX];
    size_t t, i, len, alen, split;
    if (path < 0 || path >= IPO_GHASH_NPATHS || !((ipo_ghash_cpu_paths() >> path) & 1)) return 0;

    /* McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4: with an all-zero
     * keystream and EK(J0) the tag is GHASH_H(A, C) itself and the text is left as is. */
    ipo_ghash_key_init(&key, ipo__kat_tc4_h);
    memset(ks, 0, 64);
    memset(ekj0, 0, 16);
    memcpy(buf, ipo__kat_tc4_c, 60);
    ipo_gcm_seal_xor_ghash(path, &key, ipo__kat_tc4_a, 20, buf, 60, ks, ekj0, tag);
    if (memcmp(tag, ipo__kat_tc4_ghash, 16) || memcmp(buf, ipo__kat_tc4_c, 60)) return 0;
    ipo_gcm_open_ghash_xor(path, &key, ipo__kat_tc4_a, 20, buf, 60, ks, ekj0, tag);
    if (memcmp(tag, ipo__kat_tc4_ghash, 16) || memcmp(buf, ipo__kat_tc4_c, 60)) return 0;

    ipo__st_fill(h, 16, 1);
    ipo__st_fill(ekj0, 16, 2);
    ipo__st_fill(aad, 256, 3);
    ipo__st_fill(ks, IPO__ST_MAX, 4);
    ipo_ghash_key_init(&key, h);
    for (t = 0; t < 14; t++) {
        len = ipo__st_lens[t];
        alen = ipo__st_aads[t];
        ipo__st_fill(ref, len, 5);
        memcpy(buf, ref, len);
        ipo_gcm_seal_xor_ghash(path, &key, aad, alen, buf, len, ks, ekj0, tag);
        if (memcmp(tag, ipo__kat_tags[t], 16)) return 0;
        for (i = 0; i < len; i++)
            if (buf[i] != (uint8_t)(ref[i] ^ ks[i])) return 0;
        /* GHASH of the ciphertext in two pieces on this path == in one on the portable one */
        split = (len / 32) * 16;
        memset(x1, 0, 16);
        memset(x2, 0, 16);
        ipo_ghash_update(path, &key, x1, buf, split);
        ipo_ghash_update(path, &key, x1, buf + split, len - split);
        ipo_ghash_update(IPO_GHASH_PORTABLE, &key, x2, buf, len);
        if (memcmp(x1, x2, 16)) return 0;
        ipo_gcm_open_ghash_xor(path, &key, aad, alen, buf, len, ks, ekj0, tag2);
        if (memcmp(tag2, tag, 16) || (len && memcmp(buf, ref, len))) return 0;
    }
    return 1;
}

#endif /* IPO_CRYPTO_GHASH_H */
