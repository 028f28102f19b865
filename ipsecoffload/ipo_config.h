/* Compile-time switches of the _fastpath kernels (set by setup.py). */
#ifndef IPO_CONFIG_H
#define IPO_CONFIG_H
#include <stdint.h>
#ifndef IPO_BOUNDS_CHECK
#define IPO_BOUNDS_CHECK 0
#endif

#define IPO_SLOT_MASK ((uint64_t)0xFFFFF)            /* layout.HANDLE_SLOT_MASK */
#define IPO_STATUS_FAILURE ((uint32_t)0xC0000001u)    /* NDIS_STATUS_FAILURE */
#define IPO_STATUS_INVALID_PACKET ((uint32_t)0xC001000Fu)  /* NDIS_STATUS_INVALID_PACKET */
#define IPO_UINT32_MAX ((uint64_t)0xFFFFFFFFu)
#define IPO_UINT64_MAX ((uint64_t)0xFFFFFFFFFFFFFFFFull)

/* Zeroing of small structs. A fixed-size memset of 80-112 bytes becomes `rep stos` under
 * -O2, whose start-up cost on AMD cores is several times the stores themselves. */
#include <string.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
static inline void ipo_zero16n(void* p, size_t n16) {
    __m128i z = _mm_setzero_si128();
    unsigned char* q = (unsigned char*)p;
    size_t i;
    for (i = 0; i < n16; i++) {
        _mm_storeu_si128((__m128i*)(q + 16 * i), z);
#if defined(__GNUC__)
        /* else GCC's loop distribution turns the loop back into memset, hence rep stos */
        __asm__("" : "+r"(q));
#endif
    }
}
#else
static inline void ipo_zero16n(void* p, size_t n16) { memset(p, 0, 16 * n16); }
#endif
/* Zeroing a struct of n bytes: 16-byte stores, then the tail. */
static inline void ipo_zero_struct(void* p, size_t n) {
    unsigned char* q = (unsigned char*)p;
    ipo_zero16n(q, n / 16);
    q += n & ~(size_t)15;
    if (n & 8) {
        memset(q, 0, 8);
        q += 8;
    }
    if (n & 7) memset(q, 0, n & 7);
}
/* Zeroing an ICV field (8, 12 or 16 bytes) with fixed-size stores, for the same reason. */
static inline void ipo_zero_icv(void* p, size_t n) {
    static const unsigned char z[16] = {0};
    if (n == 16) memcpy(p, z, 16);
    else if (n == 12) memcpy(p, z, 12);
    else if (n == 8) memcpy(p, z, 8);
    else memset(p, 0, n);
}
/* Copying an ICV (8, 12 or 16 bytes) with fixed-size moves: a memcpy of a length GCC knows
 * is small becomes `rep movsq`, whose start-up cost is many times the copy. */
static inline void ipo_copy_icv(void* dst, const void* src, size_t n) {
    if (n == 16) memcpy(dst, src, 16);
    else if (n == 12) memcpy(dst, src, 12);
    else if (n == 8) memcpy(dst, src, 8);
    else memcpy(dst, src, n);
}
/* Nonzero iff the n-byte ICVs differ; constant time in their contents (no early exit), with
 * 8-byte words for the 8, 12 and 16-byte ICVs. */
static inline uint64_t ipo_icv_differs(const void* a, const void* b, size_t n) {
    const unsigned char* p = (const unsigned char*)a;
    const unsigned char* q = (const unsigned char*)b;
    uint64_t x, y, d = 0;
    uint32_t u, v;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, p + i, 8);
        memcpy(&y, q + i, 8);
        d |= x ^ y;
    }
    if (i + 4 <= n) {
        memcpy(&u, p + i, 4);
        memcpy(&v, q + i, 4);
        d |= u ^ v;
        i += 4;
    }
    for (; i < n; i++) d |= (uint64_t)(p[i] ^ q[i]);
    return d;
}
/* Nonzero iff some of the n bytes at p is not zero: 8-byte words, no zeros buffer to fill
 * (GCC fills a 32-byte local with rep stosd, slow to start on AMD Zen). */
static inline uint64_t ipo_any_nonzero(const void* p, size_t n) {
    const unsigned char* q = (const unsigned char*)p;
    uint64_t x, d = 0;
    uint32_t u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, q + i, 8);
        d |= x;
    }
    if (i + 4 <= n) {
        memcpy(&u, q + i, 4);
        d |= u;
        i += 4;
    }
    for (; i < n; i++) d |= q[i];
    return d;
}
/* Copying an IP header (20 or 40 bytes, more with IPv4 options) with fixed-size moves in the
 * common cases, for the same reason. */
static inline void ipo_copy_ip_header(void* dst, const void* src, size_t n) {
    if (n == 20) memcpy(dst, src, 20);
    else if (n == 40) memcpy(dst, src, 40);
    else memcpy(dst, src, n);
}
/* RFC 1071 one's-complement sum of big-endian 16-bit words added to s (not folded); an odd
 * tail byte is zero-padded. Eight bytes at a time: the sum is byte-order independent (RFC
 * 1071 §2(B)), so the words are added as little-endian 32-bit halves, folded to 16 bits and
 * byte-swapped once; 2^16 = 1 mod (2^16 - 1) makes 32-bit words as good as 16-bit ones. */
#if defined(__SSE2__) || defined(_M_X64)
/* 32 bytes a step with PMADDWD: each 16-bit word XOR 0x8000 is a signed word w - 32768, which
 * PMADDWD (times 1) adds in pairs into signed 32-bit lanes; 32768 per word is added back
 * after. IPO__CSUM_STEPS steps keep a lane within 2^31. About 3 times the 8-byte loop's speed
 * on a 1448-byte segment; SSE2 is in every x86-64. */
#define IPO__CSUM_STEPS 16384
static inline uint64_t ipo__csum_wide(const uint8_t* p, int64_t n, int64_t* done) {
    const __m128i bias = _mm_set1_epi16((short)0x8000), ones = _mm_set1_epi16(1);
    int64_t total = 0, i = 0, start, end;
    int32_t lanes[4];
    while (i + 32 <= n) {
        __m128i a = _mm_setzero_si128(), b = a;
        start = i;
        end = i + 32 * (int64_t)IPO__CSUM_STEPS;
        if (end > n) end = n;
        for (; i + 32 <= end; i += 32) {
            __m128i x = _mm_loadu_si128((const __m128i*)(const void*)(p + i));
            __m128i y = _mm_loadu_si128((const __m128i*)(const void*)(p + i + 16));
            a = _mm_add_epi32(a, _mm_madd_epi16(_mm_xor_si128(x, bias), ones));
            b = _mm_add_epi32(b, _mm_madd_epi16(_mm_xor_si128(y, bias), ones));
        }
        _mm_storeu_si128((__m128i*)(void*)lanes, _mm_add_epi32(a, b));
        total += (int64_t)lanes[0] + lanes[1] + lanes[2] + lanes[3] + 32768 * ((i - start) / 2);
    }
    *done = i;
    return (uint64_t)total;
}
#endif
static inline uint64_t ipo_csum_add(uint64_t s, const uint8_t* p, int64_t n) {
    uint64_t acc = 0, w;
    int64_t i = 0;
#if defined(__SSE2__) || defined(_M_X64)
    if (n >= 64) acc = ipo__csum_wide(p, n, &i);
#endif
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    while (acc >> 16) acc = (acc & 0xFFFF) + (acc >> 16);
    /* acc holds the sum of the words as read in memory order: swap it to big-endian */
    {
        const uint16_t one = 1;
        if (*(const uint8_t*)&one) acc = ((acc & 0xFF) << 8) | (acc >> 8);
    }
    s += acc;
    for (; i + 1 < n; i += 2) s += ((uint64_t)p[i] << 8) | p[i + 1];
    if (i < n) s += (uint64_t)p[i] << 8;
    return s;
}
#endif
