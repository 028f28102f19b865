# Structs, codes and stage signatures of ipsecoffload._fastpath (docs/architecture.md).
# Every struct here has a numpy dtype twin in ipsecoffload/datapath/layout.py; a test asserts
# that the two agree field by field, and that every code below has the same value there.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "ipo_config.h":
    # 1 in the bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1), else 0.
    const int IPO_BOUNDS_CHECK


# -- codes -----------------------------------------------------------------------------

cpdef enum Suite:
    SUITE_NONE = 0
    SUITE_AES_GCM = 1
    SUITE_AES_GMAC = 2
    SUITE_AES_CBC_HMAC = 3
    SUITE_NULL_HMAC = 4
    SUITE_AH_HMAC = 5         # AH with HMAC-MD5-96 / SHA1-96 / SHA-256-128 (RFC 4302, RFC 2404)
    SUITE_AH_GMAC = 6         # AH with AES-GMAC (RFC 4543 §3)
    SUITE_AES_CBC = 7         # ESP AES-CBC without integrity: only inside an AH+ESP bundle (G14)

cpdef enum Integrity:
    INTEG_AEAD = 0
    INTEG_HMAC_MD5_96 = 1
    INTEG_HMAC_SHA1_96 = 2
    INTEG_HMAC_SHA256_128 = 3

cpdef enum IcvSpace:
    ICV_SPACE_AUTO = 0
    ICV_SPACE_RESERVED = 1
    ICV_SPACE_APPEND = 2

cpdef enum IvSource:
    IV_SOURCE_NIC = 0
    IV_SOURCE_PACKET = 1

# Offload configuration bits handed to tx_classify.
cpdef enum Config:
    CFG_ESP_IPV4 = 1
    CFG_ESP_IPV6 = 2
    CFG_LSO_V1 = 4
    CFG_LSO_V2_IPV4 = 8
    CFG_LSO_V2_IPV6 = 16
    CFG_LSO_WITH_IPSEC = 32
    CFG_AH_IPV4 = 64
    CFG_AH_IPV6 = 128
    CFG_TUNNEL_ALONE_SINGLE = 256   # docs/spec-gaps.md G13: a lone TunnelHandle is the SA

# Per-NET_BUFFER outcome (counted per batch).
cpdef enum Reason:
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
    REASON_BAD_AH_OFFSET = 16
    REASON_COUNT = 17

# What a crypto op does; the pass orders the ops of one packet (inner before outer, ESP
# before AH on send; the reverse on receive).
cpdef enum OpKind:
    OP_NONE = 0
    OP_ESP_SEAL = 1
    OP_ESP_OPEN = 2
    OP_AH_SIGN = 3
    OP_AH_VERIFY = 4

cpdef enum OpStatus:
    OP_PENDING = 0
    OP_DONE = 1
    OP_AUTH_FAILED = 2

# Work left after sealing.
cpdef enum Fixup:
    FIXUP_NONE = 0
    FIXUP_UDP6_CHECKSUM = 1

cpdef enum IpProto:
    PROTO_ESP = 50
    PROTO_AH = 51


# -- tables ----------------------------------------------------------------------------

# Out-of-band info of one NET_BUFFER_LIST (NET_BUFFER_LIST_INFO slots, decoded where the
# kernels use fields) plus where its NET_BUFFERs sit.
ctypedef struct NblOob:
    uint64_t offload_handle   # slot IPsecOffloadV2 (Transmit.OffloadHandle)
    uint64_t tunnel_handle    # slot IPsecOffloadV2Tunnel
    uint64_t lso_info         # slot TcpLargeSendNetBufferListInfo, raw; 0 = no LSO
    uint64_t checksum_info    # slot TcpIpChecksumNetBufferListInfo, raw
    uint32_t status           # NET_BUFFER_LIST status after send
    int32_t first_nb          # index of its first NET_BUFFER in the batch
    int32_t nb_count          # how many NET_BUFFERs it has
    uint16_t l2_len           # link header bytes before the IP header
    uint8_t next_header       # IPsecOffloadV2HeaderNetBufferListInfo fields
    uint8_t pad_length
    uint8_t ah_off4           # AH header offset / 4
    uint8_t esp_off4          # ESP header offset / 4
    uint8_t reserved[6]


# One protocol layer of an offloaded SA: the variant is chosen once, at ADD_SA time.
ctypedef struct Transform:
    uint32_t spi
    uint32_t seq_hi           # ESN high-order word (UPDATE_SA)
    int32_t key_row           # slot * 2 + layer: names the key context of this transform
    uint8_t proto             # PROTO_ESP or PROTO_AH; 0 = unused layer
    uint8_t suite             # SUITE_*
    uint8_t integ             # INTEG_*
    uint8_t iv_len
    uint8_t icv_len
    uint8_t align             # ESP padding alignment: lcm(block, 4)
    uint8_t esn
    uint8_t udp_encap         # 1 = ESP sits behind a UDP header
    uint8_t salt[4]           # AES-GCM / GMAC nonce salt (RFC 4106 §4, RFC 4543 §3.1)


# One offloaded SA bundle (one or two transforms).
ctypedef struct SaRecord:
    uint64_t handle           # 0 = free slot
    uint8_t in_use
    uint8_t inbound
    uint8_t ipv6
    uint8_t n_xf              # transforms in use
    uint8_t reserved[4]
    Transform xf[2]           # [0] = ESP, or the single transform (ESP or AH); [1] = AH of a bundle


# What tx_classify and tx_plan decided for one NET_BUFFER, and what tx_emit needs.
ctypedef struct NbPlan:
    int64_t out_len           # bytes this NET_BUFFER produces in the output arena
    int64_t body_off          # frame offset of the sliced body (LSO payload / ESP text)
    int64_t body_len          # LSO: payload bytes L; else ESP text incl. trailer
    uint64_t sn64             # 64-bit sequence number of the first segment
    int64_t out_pos           # tx_plan: where its output starts
    int64_t frame0            # tx_plan: index of its first output frame
    int64_t op0               # tx_plan: index of its first crypto op
    int64_t rand_off          # tx_plan: offset of its random IV bytes
    int32_t slot              # SA slot; -1 when no crypto is done
    int32_t nsegs             # output frames: 0 failed, 1 passthrough or plain ESP, n with LSO
    int32_t nbl               # the NET_BUFFER_LIST it belongs to
    int32_t ip_off
    int32_t ip_hdr_len        # IPv4 IHL*4, IPv6 40
    int32_t esp_off           # frame offset of the ESP header
    int32_t hdr_len           # template bytes copied into every segment
    int32_t tcp_off           # LSO: TCP header offset, else 0
    int32_t mss
    uint32_t status           # NDIS_STATUS of this NET_BUFFER
    uint8_t ipv6
    uint8_t lso               # 0 none, 1 LSOv1, 2 LSOv2
    uint8_t next_header
    uint8_t reason            # REASON_*: why it passed, or why it failed
    uint8_t fresh_iv          # tx_emit writes the IV (NIC IVs)
    uint8_t ah_fresh_iv       # tx_emit writes the AH-GMAC IV (NIC IVs)
    uint8_t reserved[2]
    int64_t scratch_pos       # tx_plan: where its AH ICV-input copies start in the scratch
    int32_t ah_off            # frame offset of the AH header; 0 = no AH layer
    int32_t ah_len            # AH header bytes: 12 + IV + ICV + explicit pad


# One output frame.
ctypedef struct WireFrame:
    int64_t off
    int64_t len
    int32_t nbl               # source NET_BUFFER_LIST
    int32_t nb                # source NET_BUFFER


# One unit of crypto work: all a backend sees, besides the arena and the key context.
ctypedef struct CryptoOp:
    int64_t auth_off          # first authenticated byte (ESP: the SPI; AH: its zeroed copy)
    int64_t text_off          # first byte encrypted (after the IV)
    int64_t text_len          # bytes encrypted: payload, padding, pad length, next header
    int64_t icv_off           # where the ICV goes
    int64_t ip_off            # the frame's IP header (fixups)
    int32_t key_row           # Transform.key_row: which key context
    int32_t frame             # output frame index
    uint32_t seq_hi           # ESN high-order word of this op's sequence number
    uint8_t kind              # OP_*
    uint8_t pass_no           # ops of one packet run in pass order
    uint8_t suite             # SUITE_*
    uint8_t integ             # INTEG_*
    uint8_t iv_len
    uint8_t icv_len
    uint8_t esn
    uint8_t fixup             # FIXUP_*
    uint8_t status            # OP_PENDING -> OP_DONE (or OP_AUTH_FAILED on receive)
    uint8_t reserved[3]
    uint8_t nonce[12]         # GCM / GMAC: salt || IV (RFC 4106 §4, RFC 4543 §3.1)
    uint8_t reserved2[4]
