# Structs, codes and kernel signatures of ipsecoffload._fastpath (design §3-4).
# Every struct here has a numpy dtype twin in ipsecoffload/layout.py; a test asserts
# that the two agree field by field.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "ipo_config.h":
    # 1 in the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1), else 0.
    const int IPO_BOUNDS_CHECK


# One offloaded SA as the kernels see it: the variant is chosen once, at ADD_SA time.
ctypedef struct SaRecord:
    uint64_t handle        # 0 = free slot
    uint32_t spi
    uint32_t seq_hi        # ESN high-order word (UPDATE_SA)
    uint8_t in_use
    uint8_t inbound
    uint8_t ipv6
    uint8_t esn
    uint8_t suite          # SUITE_*
    uint8_t integ          # INTEG_*
    uint8_t iv_len
    uint8_t icv_len
    uint8_t align          # ESP padding alignment: lcm(block, 4)
    uint8_t udp_encap      # 1 = ESP sits behind a UDP header
    uint8_t reserved[6]


# What classify decided for one NET_BUFFER, and what emit needs to produce it.
ctypedef struct NbPlan:
    int64_t out_len        # bytes this NET_BUFFER produces in the output arena
    int64_t body_off       # frame offset of the sliced body (LSO payload / ESP text)
    int64_t body_len       # LSO: payload bytes L; else ESP text incl. trailer
    uint64_t sn64          # 64-bit sequence number of the first segment
    int32_t slot           # SA slot; -1 when no crypto is done
    int32_t nsegs          # output frames: 0 failed, 1 passthrough or plain ESP, n with LSO
    int32_t ip_off
    int32_t ip_hdr_len     # IPv4 IHL*4, IPv6 40
    int32_t esp_off        # frame offset of the ESP header
    int32_t hdr_len        # template bytes copied into every segment
    int32_t tcp_off        # LSO: TCP header offset, else 0
    int32_t mss
    uint32_t status        # NDIS_STATUS of this NET_BUFFER
    uint8_t ipv6
    uint8_t lso            # 0 none, 1 LSOv1, 2 LSOv2
    uint8_t next_header
    uint8_t reason         # REASON_*: why it passed, or why it failed


cdef enum:
    SUITE_NONE = 0
    SUITE_AES_GCM = 1
    SUITE_AES_GMAC = 2
    SUITE_AES_CBC_HMAC = 3
    SUITE_NULL_HMAC = 4

cdef enum:
    INTEG_AEAD = 0
    INTEG_HMAC_MD5_96 = 1
    INTEG_HMAC_SHA1_96 = 2
    INTEG_HMAC_SHA256_128 = 3

cdef enum:
    ICV_SPACE_AUTO = 0
    ICV_SPACE_RESERVED = 1
    ICV_SPACE_APPEND = 2

cdef enum:
    IV_SOURCE_NIC = 0
    IV_SOURCE_PACKET = 1

# Offload configuration bits handed to classify.
cdef enum:
    CFG_ESP_IPV4 = 1
    CFG_ESP_IPV6 = 2
    CFG_LSO_V1 = 4
    CFG_LSO_V2_IPV4 = 8
    CFG_LSO_V2_IPV6 = 16
    CFG_LSO_WITH_IPSEC = 32

# Per-NET_BUFFER outcome; ipsecoffload.send.Reason mirrors these numbers.
cdef enum:
    REASON_OK = 0
    REASON_PASS_NO_HANDLE = 1
    REASON_PASS_DISABLED = 2
    REASON_TUNNEL_HANDLE = 3
    REASON_UNKNOWN_HANDLE = 4
    REASON_INBOUND_HANDLE = 5
    REASON_IP_VERSION_MISMATCH = 6
    REASON_MALFORMED_IP = 7
    REASON_BAD_ESP_OFFSET = 8
    REASON_AH_NOT_SUPPORTED = 9
    REASON_BAD_TRAILER = 10
    REASON_BAD_ALIGNMENT = 11
    REASON_SEQ_EXHAUSTED = 12
    REASON_LSO_DISABLED = 13
    REASON_LSO_BAD_PARAMS = 14
    REASON_NBL_FAILED = 15

cdef enum:
    JOB_POST_NONE = 0
    JOB_POST_UDP6_CHECKSUM = 1
