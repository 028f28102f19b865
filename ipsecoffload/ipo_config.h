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
#endif
