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
    CFG_DISABLED_FAIL = 512         # docs/spec-gaps.md G21: a handle while offload is off fails
    CFG_TRANSPORT_TUNNEL = 4096     # TransportTunnelCombined: both handles = transport over tunnel

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
    REASON_SPI_MISMATCH = 17          # the SPI in the frame is not the SA's
    REASON_PROTOCOL_MISMATCH = 18     # the header before AH / ESP / UDP-ESP does not name it
    REASON_DISABLED_WITH_HANDLE = 19  # offload off, a handle, and G21 "fail" or an LSO request
    REASON_SEQ_REUSED = 20            # an AEAD seal at or below the SA's sealed high-water mark
    REASON_LSO_LIMIT = 21             # over MaxOffLoadSize or under MinSegmentCount (NDIS LSO)
    REASON_OUTPUT_LIMIT = 22          # the batch's output would pass the send's arena cap
    REASON_NESTING = 23               # transport over tunnel: the handle pair or its
                                      # UdpEspEncapsulation values cannot nest (docs/send-path.md)
    REASON_COUNT = 24

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

# Receive: why a frame got no IPsec info, or what the NIC found (counted per batch).
cpdef enum RxReason:
    RX_OK = 0                 # every layer verified (and decrypted)
    RX_OFFLOAD_OFF = 1        # receive offload not enabled for this IP version
    RX_NOT_IP = 2             # not a parseable IPv4/IPv6 header
    RX_NOT_IPSEC = 3          # no AH, ESP or UDP-ESP
    RX_FRAGMENT = 4           # an IP fragment: the stack reassembles and checks it
    RX_KEEPALIVE = 5          # NAT-T keepalive (RFC 3948 §2.3)
    RX_IKE = 6                # non-ESP marker on a NAT-T port (RFC 3948 §2.2)
    RX_SHORT = 7              # AH/ESP header cut short: no SPI to look up
    RX_NO_SA = 8              # no inbound SA for (SPI, destination, source, IP version)
    RX_GATED = 9              # uses something not enabled (capability gate)
    RX_AUTH_FAILED = 10       # ICV mismatch
    RX_BAD_SYNTAX = 11        # lengths that cannot be (INVALID_PACKET_SYNTAX)
    RX_BAD_PROTOCOL = 12      # protocols differ from the bundle (INVALID_PROTOCOL)
    RX_REASON_COUNT = 13

# UDP-ESP on receive (RFC 3948 §2): the NAT-T port, and how many ports one
# NIC parses as UDP-ESP (docs/spec-gaps.md G31).
cpdef enum NatT:
    NAT_T_PORT = 4500
    NAT_T_MAX_PORTS = 8

# CryptoStatus of the receive indication (NDIS_IPSEC_OFFLOAD_V2_NET_BUFFER_LIST_INFO).
cpdef enum CryptoStatusCode:
    CRYPTO_SUCCESS = 0
    CRYPTO_GENERIC_ERROR = 1
    CRYPTO_TRANSPORT_AH_AUTH_FAILED = 2
    CRYPTO_TRANSPORT_ESP_AUTH_FAILED = 3
    CRYPTO_TUNNEL_AH_AUTH_FAILED = 4
    CRYPTO_TUNNEL_ESP_AUTH_FAILED = 5
    CRYPTO_INVALID_PACKET_SYNTAX = 6
    CRYPTO_INVALID_PROTOCOL = 7

# Receive configuration bits beyond the Config ESP bits.
cpdef enum RxConfig:
    RXCFG_IPV4_OPTIONS = 1024
    RXCFG_IPV6_EXT_HEADERS = 2048

# What the host stack did with a received frame (rx_deliver).
cpdef enum Delivery:
    DELIVERY_CLEAR = 0         # not IPsec (or not for the NIC): passed on unchanged
    DELIVERY_DECAP = 1         # verified, in the window, decapsulated
    DELIVERY_MALFORMED = 2        # not parseable IP
    DELIVERY_NO_SA = 3            # IPsec without a matching inbound SA
    DELIVERY_CRYPTO = 4           # CryptoStatus other than SUCCESS
    DELIVERY_REPLAY = 5           # seen before, or left of the window
    DELIVERY_SELECTOR = 6         # the SA's selector does not contain the packet
    DELIVERY_ECN = 7              # RFC 6040 §4.2: outer CE over a Not-ECT inner packet
    DELIVERY_DUMMY = 8            # next header 59: a dummy packet (RFC 4303 §2.6)
    DELIVERY_INNER = 9            # the decrypted inner packet is not a valid IP packet


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
    uint8_t udp_type          # the bundle's UdpEspEncapsulation value (0x0 .. 0x8)
    uint8_t reserved[3]
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
    # transport over tunnel (nested = 1): the fields above describe the tunnel layer
    # (TunnelHandle), these the transport layer (OffloadHandle) inside it
    uint64_t in_sn64          # its ESP SN (or AH SN for AH alone), with the high word
    int32_t in_slot           # its SA slot
    int32_t in_ip_off         # frame offset of the inner IP header
    int32_t in_ip_hdr_len
    int32_t in_end            # frame offset of the inner datagram's end
    int32_t in_esp_off        # 0 = no ESP layer
    int32_t in_ah_off         # 0 = no AH layer
    int32_t in_ah_len
    int32_t in_body_len       # its ESP text incl. trailer
    uint8_t nested
    uint8_t in_ipv6
    uint8_t in_fresh_iv
    uint8_t in_ah_fresh_iv
    uint8_t reserved2[4]


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
    # Out of place (src_len > 0, send only): text bytes [src_at, src_at + src_len) are still
    # in the source arena (the batch's frames) at src_off; the seal reads them from there and
    # writes the ciphertext into the arena (docs/send-path.md, "Out-of-place seal").
    int32_t src_at
    int64_t src_off
    int32_t src_len
    uint8_t reserved2[4]


# Inbound lookup entry: one per transform of an inbound SA, sorted by SPI (rx_classify).
ctypedef struct RxSaKey:
    uint32_t spi
    int32_t slot
    uint8_t layer             # index of the transform in SaRecord.xf
    uint8_t proto             # PROTO_ESP or PROTO_AH
    uint8_t ipv6
    uint8_t udp_encap         # the bundle's UdpEspEncapsulation is not NONE
    uint8_t has_dst           # a zero endpoint is a wildcard
    uint8_t has_src
    uint8_t reserved[2]
    uint8_t dst[16]
    uint8_t src[16]


# The NIC's receive state of one inbound transform (by key row): ESN inference.
ctypedef struct RxState:
    uint64_t top              # highest authenticated 64-bit sequence number
    uint8_t seen              # top is valid: the high word is inferred from it
    uint8_t tunnel            # once carried next header 4 or 41 (tunnel layer)
    uint8_t reserved[2]
    uint32_t auth_failures    # ICV failures since the SA was added (SaDeleteReq policy)


# What rx_classify and rx_complete found for one received frame.
ctypedef struct RxPlan:
    int64_t ip_off
    int64_t ip_end            # end of the IP datagram by its length field
    int64_t esp_off           # ESP header; 0 = none
    int64_t text_off          # first encrypted byte (after the IV)
    int64_t text_len
    int64_t icv_off
    uint64_t seq64            # 64-bit sequence number the ICV was checked with
    uint64_t handle           # inbound SA that matched; 0 = none
    int32_t slot
    int32_t op                # its crypto op; -1 = none
    int32_t nh_off            # the protocol / next-header byte that names AH/ESP/UDP
    int32_t udp_off           # UDP-ESP header; 0 = none
    uint16_t crypto_status    # CRYPTO_*
    uint8_t ipv6
    uint8_t reason            # RX_*
    uint8_t crypto_done
    uint8_t tunnel            # the layer is a tunnel layer (docs/spec-gaps.md G12)
    uint8_t next_header       # from the decrypted trailer
    uint8_t pad_length
    uint8_t header_info_set
    uint8_t layer
    uint8_t pad_ok            # the padding reads 1, 2, 3, ... (RFC 4303 §2.4)
    uint8_t sa_delete_req     # the NIC asks the stack to delete this inbound SA
    uint8_t ah_next_header    # AH's Next Header (readable without decryption)
    uint8_t ah_layer          # index of the AH transform in SaRecord.xf
    uint8_t next_crypto_done  # a second (transport) layer inside this tunnel layer was checked
    uint8_t reserved[1]
    int64_t ah_off            # AH header; 0 = none
    int64_t ah_copy           # output-arena offset of its zeroed ICV-input copy
    uint64_t ah_seq64         # 64-bit sequence number the AH ICV was checked with
    int32_t ah_op             # its verify op; -1 = none
    int32_t ah_len            # AH header bytes: (Payload Len + 2) * 4 (RFC 4302 §2.2)
    int32_t inner             # plan row of the inner (transport) layer (after the frames' rows); 0 = none
    int32_t reserved2


# The host stack's anti-replay window and selector of one inbound SA (rx_deliver).
ctypedef struct RxWindow:
    uint64_t top              # highest accepted 64-bit sequence number
    uint32_t size             # window bits (0 = no replay check)
    uint8_t has_sel           # check the selector prefixes below
    uint8_t sel_ipv6
    uint8_t src_len           # prefix lengths in bits
    uint8_t dst_len
    uint8_t src[16]
    uint8_t dst[16]
    uint64_t bits[64]         # bit i = top - i was accepted (RFC 4303 §3.4.3)
