"""AH on the send path (RFC 4302), alone and in AH+ESP bundles, checked against things this
project did not write:

- DPDK's AH known-answer packets (tests/vectors/dpdk_ipsec_packets.json) byte for byte
  through HostStack + Miniport;
- scapy's ``SecurityAssociation(AH, ...)``, whose ``zero_mutable_fields`` is an independent
  reading of RFC 4302 §3.3.3.1, verifies every HMAC algorithm x {IPv4 with and without
  options, IPv6 with and without extension headers} x {transport, tunnel} x {plain, ESN};
  scapy has no AH-GMAC, so AES-GMAC cases are checked with scapy's zeroing and
  ``cryptography``'s AES-GCM (RFC 4543 §3: the ICV input is the AAD, the plaintext empty);
- bundles: scapy verifies AH, then decrypts ESP;
- a flipped covered byte makes the check fail, a changed TTL / hop limit / DSCP does not.

The compiled stages and their twin are compared on AH frames, good and damaged, with the
harness of test_kernels; bad input gets the documented status (docs/protocol.md section 15)
and sends nothing.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scapy.layers.ipsec")

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP, IPOption  # noqa: E402
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop,  # noqa: E402
                                IPv6ExtHdrRouting, HBHOptUnknown)
from scapy.layers.ipsec import (AH, ESP, IPSecIntegrityError, SecurityAssociation,  # noqa: E402
                                zero_mutable_fields)
from scapy.packet import Raw  # noqa: E402

from ipsecoffload import HostStack, Miniport, PacketBatchBuilder, SaConfig, ndis  # noqa: E402
from ipsecoffload.crypto.reference import ReferenceBackend  # noqa: E402
from ipsecoffload.datapath.layout import Config, Reason, Suite  # noqa: E402
from ipsecoffload.ndis import NdisStatus  # noqa: E402

import test_kernels as tk  # noqa: E402  (the twin-vs-compiled harness)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "dpdk_ipsec_packets.json")
                     .read_text())["vectors"]
AH_VECTORS = [v for v in VECTORS if v["proto"] == "ah"]
KERNELS = [False, True]
KERNEL_IDS = ["compiled", "python"]

# name -> (scapy name or None for GMAC, key bytes)
AH_ALGORITHMS = {
    "hmac-sha1-96": ("HMAC-SHA1-96", 20), "hmac-sha256-128": ("SHA2-256-128", 32),
    "hmac-md5-96": ("HMAC-MD5-96", 16), "aes-gmac-128": (None, 20),
    "aes-gmac-192": (None, 28), "aes-gmac-256": (None, 36),
}
TUNNEL = {4: ("198.51.100.1", "198.51.100.2"), 6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}


def _key(n: int, seed: int) -> bytes:
    return bytes((seed * 29 + i * 13 + 1) & 0xFF for i in range(n))


# -- DPDK vectors ------------------------------------------------------------------------------
def _vector_config(v) -> SaConfig:
    key = bytes.fromhex(v["auth_key"]) + bytes.fromhex(v.get("salt", ""))
    integrity = {"SHA256_HMAC": "hmac-sha256-128", "AES_GMAC": f"aes-gmac-{len(key) * 8 - 32}"}
    kwargs = {}
    if v["mode"] == "tunnel":
        out = bytes.fromhex(v["ipsec_packet"])
        kwargs = dict(tunnel_src=".".join(map(str, out[12:16])),
                      tunnel_dst=".".join(map(str, out[16:20])))
    return SaConfig(spi=v["spi"], protocol="ah", integrity=integrity[v["auth_alg"]],
                    auth_key=key, mode=v["mode"], seq=v["seq"], name=v["name"], **kwargs)


def test_the_dpdk_file_has_three_ah_vectors():
    assert sorted(v["name"] for v in AH_VECTORS) == [
        "dpdk-pkt_ah_ipv4_aes_gmac_128", "dpdk-pkt_ah_transport_sha256",
        "dpdk-pkt_ah_tunnel_sha256"]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("vector", AH_VECTORS, ids=[v["name"] for v in AH_VECTORS])
def test_dpdk_ah_vector_through_stack_and_miniport(vector, pure):
    want = bytes.fromhex(vector["ipsec_packet"])
    # iv_source="packet": the GMAC vector's IV goes in through the stack's IV slot
    miniport = Miniport(iv_source="packet", pure_python=pure)
    # DPDK's tunnel packet has outer TTL 0 and ID 1; HostStack's TTL is 1..255, so the
    # stack run uses 64 and the two mutable bytes (TTL, checksum) are compared apart
    stack = HostStack(miniport, link="raw", ipv4_id=1, ttl=64)
    sa = stack.add_sa(_vector_config(vector))
    ivs = [bytes.fromhex(vector["iv"])] if "iv" in vector else None
    result = stack.send([bytes.fromhex(vector["plain_packet"])], sa, ivs=ivs)
    assert result.status.tolist() == [0]
    (got,) = result.wire.frames()
    if vector["mode"] == "tunnel":
        assert got[:8] + got[9:10] + got[12:] == want[:8] + want[9:10] + want[12:]
        assert got[8] == 64 and want[8] == 0
    else:
        assert got == want


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("vector", AH_VECTORS, ids=[v["name"] for v in AH_VECTORS])
def test_dpdk_ah_vector_byte_for_byte_from_its_own_frame(vector, pure):
    """The vector's packet with its ICV zeroed, as a stack would hand it over (outer TTL 0
    included), leaves the miniport as the vector."""
    want = bytes.fromhex(vector["ipsec_packet"])
    config = _vector_config(vector)
    miniport = Miniport(iv_source="packet", pure_python=pure)
    entry = config.add_sa_entry(ipv6=False)
    assert miniport.add_sa(entry) == NdisStatus.SUCCESS
    frame = bytearray(want)
    icv_at = 20 + 12 + config.ah_iv_len
    frame[icv_at:icv_at + config.ah_icv] = bytes(config.ah_icv)
    builder = PacketBatchBuilder()
    builder.add_nbl([bytes(frame)], offload_handle=entry.offload_handle, ah_off4=5, l2_len=0)
    result = miniport.send(builder.build())
    assert result.status.tolist() == [0]
    assert result.wire.frames() == [want]


# -- packets for the scapy matrix --------------------------------------------------------------
def _plain(kind: str) -> bytes:
    payload = Raw(bytes(range(7, 7 + 45)))
    if kind == "v4":
        return bytes(IP(src="10.0.0.1", dst="10.0.1.2", tos=0x28, id=77, flags="DF")
                     / TCP(sport=1234, dport=80) / payload)
    if kind == "v4opt":
        # Router Alert (immutable), then a Record Route (mutable: zeroed for the ICV)
        options = [IPOption(b"\x94\x04\x00\x00"), IPOption(b"\x07\x07\x04\x00\x00\x00\x00"),
                   IPOption(b"\x01")]
        return bytes(IP(src="10.0.0.1", dst="10.0.1.2", tos=0x28, options=options)
                     / UDP(sport=53, dport=5353) / payload)
    if kind == "v6":
        return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28, fl=0x12345)
                     / TCP(sport=1234, dport=443) / payload)
    # hop-by-hop with an option that may change en route (0x3e: bit 0x20 set), then a
    # destination options header (no routing header: both go before AH)
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28, fl=7)
                 / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=b"abcd")])
                 / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"wxyz")])
                 / UDP(sport=53, dport=5353) / payload)


def _ip_class(frame: bytes):
    return IPv6 if frame[0] >> 4 == 6 else IP


def _send(config: SaConfig, packets, *, pure=False, backend=None, **miniport_kw):
    miniport = Miniport(pure_python=pure, backend=backend, **miniport_kw)
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config)
    result = stack.send(packets, sa)
    assert result.status.tolist() == [0] * len(packets), result.reason_counts()
    return result.wire.frames()


def _ah_config(integrity: str, mode: str, version: int, esn: bool, seed: int = 1) -> SaConfig:
    kw = {}
    if mode == "tunnel":
        kw = dict(tunnel_src=TUNNEL[version][0], tunnel_dst=TUNNEL[version][1])
    seq = (3 << 32) | 0xFFFFFFF0 if esn else 5
    return SaConfig(spi=0x4000 + seed, protocol="ah", integrity=integrity,
                    auth_key=_key(AH_ALGORITHMS[integrity][1], seed), mode=mode, esn=esn,
                    seq=seq, **kw)


def _scapy_ah(config_spi: int, integrity: str, key: bytes, esn_hi: int, esn: bool):
    name = AH_ALGORITHMS[integrity][0]
    return SecurityAssociation(AH, spi=config_spi, auth_algo=name, auth_key=key,
                               esn_en=esn, esn=esn_hi)


def _gmac_check(pkt, key_salt: bytes, esn: bool, esn_hi: int) -> None:
    """RFC 4543 §3 with scapy's zeroing: AAD = the packet with mutable fields and the tag
    zeroed (the IV kept, docs/spec-gaps.md G20), then the ESN high word; empty plaintext."""
    ah = pkt[AH]
    iv, tag = bytes(ah.icv)[:8], bytes(ah.icv)[8:24]
    clone = zero_mutable_fields(pkt.copy(), sending=False)
    clone[AH].icv = iv + bytes(len(ah.icv) - 8)
    aad = bytes(clone) + (struct.pack("!I", esn_hi) if esn else b"")
    want = AESGCM(key_salt[:-4]).encrypt(key_salt[-4:] + iv, b"", aad)
    if want != tag:
        raise IPSecIntegrityError("AES-GMAC tag mismatch")


def _verify_ah(frame: bytes, config: SaConfig) -> None:
    """Raises IPSecIntegrityError unless the AH ICV of ``frame`` verifies."""
    spi, integrity, key = config.ah_layer
    esn_hi = config.seq >> 32 if config.esn else 0
    pkt = _ip_class(frame)(frame)
    if AH_ALGORITHMS[integrity][0] is None:
        _gmac_check(pkt, key, config.esn, esn_hi)
    else:
        _scapy_ah(spi, integrity, key, esn_hi, config.esn).decrypt(pkt)


def _mutate(frame: bytes, what: str) -> bytes:
    """Change a mutable field in transit (TTL / hop limit, DSCP), or a covered byte."""
    f = bytearray(frame)
    if what == "ttl":
        if f[0] >> 4 == 4:
            f[8] = (f[8] - 1) & 0xFF
        else:
            f[7] = (f[7] - 1) & 0xFF
    elif what == "dscp":
        if f[0] >> 4 == 4:
            f[1] ^= 0xB8
        else:
            f[0] ^= 0x0B
            f[1] ^= 0x80
    elif what == "payload":
        f[-1] ^= 0x01
    elif what == "source":
        f[13 if f[0] >> 4 == 4 else 9] ^= 0x40
    if f[0] >> 4 == 4:  # a router fixes the checksum it breaks; AH ignores it anyway
        ihl = (f[0] & 0xF) * 4
        f[10:12] = b"\0\0"
        s = sum(struct.unpack(f"!{ihl // 2}H", bytes(f[:ihl])))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        f[10:12] = struct.pack("!H", ~s & 0xFFFF)
    return bytes(f)


MATRIX = [(integrity, kind, mode, esn) for integrity in AH_ALGORITHMS
          for kind in ("v4", "v4opt", "v6", "v6ext") for mode in ("transport", "tunnel")
          for esn in (False, True)]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("integrity,kind,mode,esn", MATRIX,
                         ids=[f"{i}-{k}-{m}-{'esn' if e else 'plain'}" for i, k, m, e in MATRIX])
def test_scapy_verifies_ah(integrity, kind, mode, esn, pure):
    version = 6 if kind.startswith("v6") else 4
    config = _ah_config(integrity, mode, version, esn)
    packets = [_plain(kind)] * 2
    frames = _send(config, packets, pure=pure)
    for frame in frames:
        _verify_ah(frame, config)
        for mutable in ("ttl", "dscp"):
            _verify_ah(_mutate(frame, mutable), config)
        for covered in ("payload", "source"):
            with pytest.raises(IPSecIntegrityError):
                _verify_ah(_mutate(frame, covered), config)
    # the real mutable fields travel untouched: the packet after the AH header is the input
    first = frames[0]
    if mode == "transport":
        plain = packets[0]
        if version == 4:
            ihl = (plain[0] & 0xF) * 4
            assert first[1] == plain[1] and first[6:9] == plain[6:9]  # TOS, flags, TTL
            assert first[ihl + config.ah_length(False):] == plain[ihl:]
        else:
            assert first[:4] == plain[:4] and first[7] == plain[7]  # TC, flow label, hops
    else:
        assert first.endswith(packets[0])


@pytest.mark.parametrize("integrity", list(AH_ALGORITHMS))
def test_compiled_backends_equal_the_reference_backend(integrity):
    for version, kind in ((4, "v4opt"), (6, "v6ext")):
        config = _ah_config(integrity, "transport", version, True)
        packets = [_plain(kind)] * 3
        fast = _send(config, packets)
        slow = _send(config, packets, backend=ReferenceBackend())
        twin = _send(config, packets, pure=True)
        assert fast == slow == twin


def test_ipv6_routing_header_enters_the_icv_as_it_arrives():
    """RFC 4302 §3.3.3.1.2: the routing header and destination as the receiver sees them;
    scapy checks the packet after the routers did their part (Segments Left 0, the final
    address in the destination, the list rotated)."""
    hops = ["2001:db8::a", "2001:db8::b", "2001:db8::99"]
    plain = bytes(IPv6(src="2001:db8::1", dst="2001:db8::5")
                  / IPv6ExtHdrRouting(addresses=hops, segleft=3)
                  / UDP(sport=1, dport=2) / Raw(b"routed" * 5))
    config = _ah_config("hmac-sha256-128", "transport", 6, False)
    for pure in KERNELS:
        (frame,) = _send(config, [plain], pure=pure)
        pkt = IPv6(frame)
        routing = pkt[IPv6ExtHdrRouting]
        assert routing.segleft == 3 and pkt.dst == "2001:db8::5"  # sent as built
        routing.addresses = ["2001:db8::5"] + hops[:-1]  # ... and as it arrives
        routing.segleft = 0
        pkt.dst = hops[-1]
        _verify_ah(bytes(pkt), config)
        with pytest.raises(IPSecIntegrityError):
            _verify_ah(frame, config)  # as sent, it does not verify at the receiver


def test_ipv4_source_route_final_destination_enters_the_icv():
    """RFC 4302 Appendix A.1: LSRR is zeroed, its last address is the destination the ICV
    covers (scapy zeroes the option but keeps the header's destination, so the check here
    is plain HMAC over our reading of the RFC)."""
    import hmac as std_hmac
    import hashlib
    lsrr = bytes([131, 11, 4]) + bytes([10, 0, 9, 1]) + bytes([10, 0, 9, 2]) + b"\x00"
    plain = bytes(IP(src="10.0.0.1", dst="10.0.5.5", options=[IPOption(lsrr)])
                  / UDP(sport=1, dport=2) / Raw(b"x" * 20))
    config = _ah_config("hmac-sha1-96", "transport", 4, False)
    (frame,) = _send(config, [plain])
    ihl = (frame[0] & 0xF) * 4
    copy = bytearray(frame)
    copy[1] = 0
    copy[6:9] = b"\0\0\0"
    copy[10:12] = b"\0\0"
    copy[16:20] = bytes([10, 0, 9, 2])  # the final destination
    copy[20:20 + 11] = bytes(11)  # the option, zeroed whole
    copy[ihl + 12:ihl + 24] = bytes(12)  # the ICV
    want = std_hmac.new(config.auth_key, bytes(copy), hashlib.sha1).digest()[:12]
    assert frame[ihl + 12:ihl + 24] == want
    assert frame[20:32] == lsrr  # the real option travels untouched


# -- bundles -------------------------------------------------------------------------------
BUNDLES = {  # name -> ESP fields, AH integrity
    "gcm128+sha1": (dict(encryption="aes-gcm-128", key=_key(20, 3)), "hmac-sha1-96"),
    "cbc128-only+sha256": (dict(encryption="aes-cbc-128", key=_key(16, 4)), "hmac-sha256-128"),
    "cbc256-sha256+gmac128": (dict(encryption="aes-cbc-256", key=_key(32, 5),
                                   integrity="hmac-sha256-128", auth_key=_key(32, 6)),
                              "aes-gmac-128"),
    "null-sha1+md5": (dict(encryption="null", integrity="hmac-sha1-96", auth_key=_key(20, 7)),
                      "hmac-md5-96"),
}
SCAPY_ESP = {"aes-gcm-128": "AES-GCM", "aes-cbc-128": "AES-CBC", "aes-cbc-256": "AES-CBC",
             "null": "NULL"}
SCAPY_AUTH = {None: "NULL", "hmac-sha1-96": "HMAC-SHA1-96", "hmac-sha256-128": "SHA2-256-128"}


def _bundle_config(name: str, mode: str, version: int, esn: bool) -> SaConfig:
    esp, ah_integrity = BUNDLES[name]
    kw = {}
    if mode == "tunnel":
        kw = dict(tunnel_src=TUNNEL[version][0], tunnel_dst=TUNNEL[version][1])
    return SaConfig(spi=0x5001, protocol="ah+esp", ah_spi=0x6001, ah_integrity=ah_integrity,
                    ah_auth_key=_key(AH_ALGORITHMS[ah_integrity][1], 9), mode=mode, esn=esn,
                    seq=(1 << 32) | 3 if esn else 9, **esp, **kw)


BUNDLE_MATRIX = [(n, k, m, e) for n in BUNDLES for k in ("v4", "v6ext")
                 for m in ("transport", "tunnel") for e in (False, True)]


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("name,kind,mode,esn", BUNDLE_MATRIX,
                         ids=[f"{n}-{k}-{m}-{'esn' if e else 'plain'}"
                              for n, k, m, e in BUNDLE_MATRIX])
def test_scapy_verifies_ah_then_decrypts_esp(name, kind, mode, esn, pure):
    version = 6 if kind.startswith("v6") else 4
    config = _bundle_config(name, mode, version, esn)
    plain = _plain(kind)
    (frame,) = _send(config, [plain], pure=pure)
    _verify_ah(frame, config)
    with pytest.raises(IPSecIntegrityError):
        _verify_ah(_mutate(frame, "payload"), config)  # the ESP ICV / ciphertext is covered
    _verify_ah(_mutate(frame, "ttl"), config)
    pkt = _ip_class(frame)(frame)
    assert pkt[AH].nh == 50 and pkt[AH].spi == 0x6001
    # AH off (as the receiver does after verifying), then ESP
    stripped = SecurityAssociation(AH, spi=0x6001, auth_algo="NULL").decrypt(pkt, verify=False)
    stripped = _ip_class(bytes(stripped))(bytes(stripped))
    tunnel = None
    if mode == "tunnel":
        tunnel = (IPv6 if version == 6 else IP)(src=TUNNEL[version][0], dst=TUNNEL[version][1])
    esp = SecurityAssociation(
        ESP, spi=0x5001, crypt_algo=SCAPY_ESP[config.encryption], crypt_key=config.key[:-4]
        if config.gcm else config.key, auth_algo=SCAPY_AUTH[config.integrity],
        auth_key=config.auth_key or None, tunnel_header=tunnel, esn_en=esn,
        esn=config.seq >> 32 if esn else 0)
    if config.gcm:
        esp = SecurityAssociation(ESP, spi=0x5001, crypt_algo="AES-GCM", crypt_key=config.key,
                                  tunnel_header=tunnel, esn_en=esn,
                                  esn=config.seq >> 32 if esn else 0)
    inner = esp.decrypt(stripped)
    if mode == "tunnel":
        assert bytes(inner) == plain
    else:
        assert bytes(inner)[40 if version == 6 else 20:] == plain[40 if version == 6 else 20:] \
            or bytes(inner).endswith(plain[-45:])


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundle_backends_and_twin_agree(name):
    config = _bundle_config(name, "transport", 4, True)
    packets = [_plain("v4")] * 3
    kw = dict(random_source=lambda n: bytes(range(n % 256)) * (n // 256) + bytes(range(n % 256)))
    fast = _send(config, packets, **kw)
    slow = _send(config, packets, backend=ReferenceBackend(), **kw)
    twin = _send(config, packets, pure=True, **kw)
    assert fast == slow == twin


# -- the SA table: ADD_SA, capabilities, offload parameters, UPDATE_SA -----------------------
def test_capabilities_report_ah_and_bundles():
    caps = Miniport().capabilities
    assert caps.ah and caps.esp and caps.ah_esp_combined


def _ah_entry(**overrides) -> ndis.IpsecOffloadV2AddSa:
    entry = _ah_config("hmac-sha1-96", "transport", 4, False).add_sa_entry(ipv6=False)
    for name, value in overrides.items():
        setattr(entry.sec_assoc[0], name, value)
    return entry


@pytest.mark.parametrize("change,status", [
    (dict(encryption_algorithm=ndis.IpsecOffloadV2AlgorithmInfo(identifier=0x40,
                                                                key_length=16)),
     NdisStatus.INVALID_DATA),
    (dict(authentication_algorithm=ndis.IpsecOffloadV2AlgorithmInfo()), NdisStatus.INVALID_DATA),
    (dict(spi=0), NdisStatus.INVALID_DATA),
], ids=["encryption-set", "no-algorithm", "spi-0"])
def test_bad_ah_entries_are_refused(change, status):
    miniport = Miniport()
    entry = _ah_entry(**change)
    assert miniport.add_sa(entry) == status and entry.offload_handle == 0


def test_bundle_order_and_udp_encapsulation_are_checked():
    miniport = Miniport()
    entry = _bundle_config("gcm128+sha1", "transport", 4, False).add_sa_entry(ipv6=False)
    entry.sec_assoc = entry.sec_assoc[::-1]  # AH first: not the documented bundle
    assert miniport.add_sa(entry) == NdisStatus.INVALID_DATA
    entry = _ah_entry()
    entry.udp_esp_encapsulation = int(ndis.UdpEspEncapsulation.TRANSPORT)
    assert miniport.add_sa(entry) == NdisStatus.NOT_SUPPORTED


def test_encryption_only_esp_needs_the_bundle():
    """docs/spec-gaps.md G14: AES-CBC without integrity only inside an AH+ESP bundle."""
    miniport = Miniport()
    entry = _bundle_config("cbc128-only+sha256", "transport", 4, False).add_sa_entry(False)
    alone = ndis.IpsecOffloadV2AddSa(num_ext_hdrs=1, sec_assoc=[entry.sec_assoc[0]],
                                     key_data=entry.key_data)
    assert miniport.add_sa(alone) == NdisStatus.NOT_SUPPORTED
    assert miniport.add_sa(entry) == NdisStatus.SUCCESS
    record = miniport.sa_record(entry.offload_handle)
    assert record["n_xf"] == 2 and record["suite"] == Suite.AES_CBC
    assert record["ah"]["suite"] == Suite.AH_HMAC and record["ah"]["proto"] == 51


def test_update_sa_picks_the_bundle_entry_by_operation_and_spi():
    miniport = Miniport()
    entry = _bundle_config("gcm128+sha1", "transport", 4, True).add_sa_entry(ipv6=False)
    assert miniport.add_sa(entry) == NdisStatus.SUCCESS
    handle = entry.offload_handle

    def update(operation, spi, hi):
        return miniport.update_sa(ndis.IpsecOffloadV2UpdateSa(
            offload_handle=handle, operation=operation, spi=spi, sequence_number_high_order=hi))
    assert update(ndis.IpsecOperation.AH, 0x6001, 7) == NdisStatus.SUCCESS
    record = miniport.sa_record(handle)
    assert record["ah"]["seq_hi"] == 7 and record["seq_hi"] == 1
    assert update(ndis.IpsecOperation.ESP, 0x5001, 8) == NdisStatus.SUCCESS
    assert miniport.sa_record(handle)["seq_hi"] == 8
    assert update(ndis.IpsecOperation.AH, 0x5001, 9) == NdisStatus.INVALID_PARAMETER
    assert update(ndis.IpsecOperation.ESP, 0x6001, 9) == NdisStatus.INVALID_PARAMETER


def test_esn_carry_keeps_both_layers_in_step():
    """The stack's SNs cross a high-word boundary: UPDATE_SA for ESP and AH, and the
    frames after it verify with the new high word."""
    config = _bundle_config("null-sha1+md5", "transport", 4, True)
    config = SaConfig(**{**config.__dict__, "seq": (1 << 32) | 0xFFFFFFFF})
    miniport = Miniport()
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config)
    frames = stack.send([_plain("v4")] * 2, sa).wire.frames()
    _verify_ah(frames[0], config)
    _verify_ah(frames[1], SaConfig(**{**config.__dict__, "seq": 2 << 32}))


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_offload_parameters_gate_ah_per_ip_version(pure):
    config4 = _ah_config("hmac-sha1-96", "transport", 4, False)
    miniport = Miniport(pure_python=pure)
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config4)
    plain = _plain("v4")
    (frame,) = stack.send([plain], sa).wire.frames()  # offloads the bundle
    _verify_ah(frame, config4)
    # IPsecV2 = ESP only: an AH frame leaves unchanged (docs/send-path.md step 1)
    assert miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.ESP_ENABLED)) == NdisStatus.SUCCESS
    result = stack.send([plain], sa)
    assert result.reasons.tolist() == [Reason.PASS_DISABLED]
    (frame,) = result.wire.frames()
    assert frame[32:44] == bytes(12)  # no ICV
    # AH back on for IPv4 only
    assert miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2_ipv4=ndis.OffloadIpsecV2.AH_AND_ESP_ENABLED)) == NdisStatus.SUCCESS
    assert miniport.config_bits() & Config.AH_IPV4 and not miniport.config_bits() & Config.AH_IPV6
    (frame,) = stack.send([plain], sa).wire.frames()
    _verify_ah(frame, config4)


# -- bad input ------------------------------------------------------------------------------
def _one_frame(config: SaConfig, pure: bool):
    miniport = Miniport(pure_python=pure)
    stack = HostStack(miniport, link="ethernet")
    sa = stack.add_sa(config)
    batch = stack.build([_plain("v4")], sa)
    frame = bytes(batch.arena[batch.nb_off[0]:batch.nb_off[0] + batch.nb_len[0]])
    oob = batch.oob[0]
    return miniport, frame, dict(offload_handle=int(oob["offload_handle"]),
                                 ah_off4=int(oob["ah_off4"]), esp_off4=int(oob["esp_off4"]),
                                 next_header=int(oob["next_header"]),
                                 pad_length=int(oob["pad_length"]), l2_len=14)


BAD = {
    "ah-offset-past-frame": (lambda f, o: (f, {**o, "ah_off4": 250}),
                             NdisStatus.INVALID_PACKET, Reason.BAD_AH_OFFSET),
    "ah-offset-zero": (lambda f, o: (f, {**o, "ah_off4": 0}),
                       NdisStatus.INVALID_PACKET, Reason.BAD_AH_OFFSET),
    "ah-offset-inside-ip": (lambda f, o: (f, {**o, "ah_off4": 4}),
                            NdisStatus.INVALID_PACKET, Reason.BAD_AH_OFFSET),
    "payload-length-disagrees": (lambda f, o: (f[:14 + 21] + bytes([f[14 + 21] + 1])
                                               + f[14 + 22:], o),
                                 NdisStatus.INVALID_PACKET, Reason.BAD_AH_OFFSET),
    "frame-cut-in-ah": (lambda f, o: (f[:14 + 20 + 10], o),
                        NdisStatus.INVALID_PACKET, Reason.MALFORMED_IP),
    "lso-with-ah": (lambda f, o: (f, {**o, "lso_info": 1000 | (54 << 20) | (1 << 30)}),
                    NdisStatus.FAILURE, Reason.LSO_BAD_PARAMS),
}


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_ah_frames_fail_and_send_nothing(case, pure):
    make, status, reason = BAD[case]
    miniport, frame, oob = _one_frame(_ah_config("hmac-sha256-128", "transport", 4, False),
                                      pure)
    frame, oob = make(frame, oob)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], **oob)
    good_frame, good_oob = _one_frame(_ah_config("hmac-sha256-128", "transport", 4, False),
                                      pure)[1:]
    result = miniport.send(builder.build())
    assert result.status.tolist() == [status]
    assert result.reasons.tolist() == [reason]
    assert result.wire.num_buffers == 0


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_bundle_missing_its_ah_header_and_ah_offset_on_an_esp_sa(pure):
    miniport, frame, oob = _one_frame(_bundle_config("gcm128+sha1", "transport", 4, False),
                                      pure)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], **{**oob, "ah_off4": 0})
    result = miniport.send(builder.build())
    assert result.status.tolist() == [NdisStatus.INVALID_PACKET]
    assert result.reasons.tolist() == [Reason.BAD_AH_OFFSET] and result.wire.num_buffers == 0
    esp_only = SaConfig(spi=0x77, encryption="aes-gcm-128", key=_key(20, 1))
    miniport, frame, oob = _one_frame(esp_only, pure)
    builder = PacketBatchBuilder()
    builder.add_nbl([frame], **{**oob, "ah_off4": 5})
    result = miniport.send(builder.build())
    assert result.status.tolist() == [NdisStatus.FAILURE]
    assert result.reasons.tolist() == [Reason.AH_NOT_SUPPORTED]


# -- compiled == twin on AH frames, good and damaged (test_kernels' harness) -----------------
def _ah_table():
    """A miniport with AH SAs (every algorithm, both modes and versions, ESN or not) and
    bundles, and one built batch per SA: two packets each, with and without options /
    extension headers."""
    miniport = Miniport(random_source=tk.random_bytes)
    stack = HostStack(miniport, link="ethernet")
    specs = [(_ah_config(i, m, v, e, seed=n), m, v) for n, (i, m, v, e) in enumerate([
        ("hmac-sha1-96", "transport", 4, False), ("aes-gmac-128", "transport", 6, True),
        ("hmac-sha256-128", "tunnel", 6, False), ("aes-gmac-256", "tunnel", 4, True),
        ("hmac-md5-96", "transport", 6, True), ("aes-gmac-192", "transport", 4, False)])]
    specs += [(_bundle_config(name, mode, version, esn), mode, version)
              for name, mode, version, esn in (
                  ("gcm128+sha1", "transport", 4, False), ("cbc128-only+sha256", "tunnel", 6, True),
                  ("cbc256-sha256+gmac128", "transport", 6, True),
                  ("null-sha1+md5", "tunnel", 4, False))]
    batches = []
    for config, mode, version in specs:
        sa = stack.add_sa(config)
        kinds = ("v6", "v6ext") if mode == "transport" and version == 6 else ("v4", "v4opt")
        batches.append(stack.build([_plain(k) for k in kinds], sa))
    return miniport, batches


AH_CONFIG = tk.ALL_CONFIG | int(Config.AH_IPV4 | Config.AH_IPV6)


def _merged(batches):
    builder = PacketBatchBuilder()
    for batch in batches:
        for i in range(batch.num_buffers):
            frame = bytes(batch.arena[batch.nb_off[i]:batch.nb_off[i] + batch.nb_len[i]])
            oob = batch.oob[int(batch.nb_nbl[i])]
            builder.add_nbl([frame], **{name: int(oob[name]) for name in (
                "offload_handle", "ah_off4", "esp_off4", "next_header", "pad_length",
                "l2_len")})
    return builder.build(), builder


def test_twin_equals_compiled_on_good_ah_frames():
    miniport, batches = _ah_table()
    batch, _ = _merged(batches)
    results = tk.run_both(batch, config=AH_CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)
    result = results[0][1]
    assert (result.reasons == Reason.OK).all()
    kinds = {int(k) for k in results[0][0].emitted[2].view(tk.CRYPTO_OP_DTYPE)["kind"]}
    assert kinds == {tk.OpKind.ESP_SEAL, tk.OpKind.AH_SIGN}


def _damaged(frames_oobs, rng):
    """Random damage to AH frames: their AH offset, the bytes of the AH header, the IP
    length, a truncation."""
    builder = PacketBatchBuilder()
    for frame, oob in frames_oobs:
        f, o = bytearray(frame), dict(oob)
        what = rng.integers(0, 6)
        if what == 0:
            o["ah_off4"] = int(rng.integers(0, 256))
        elif what == 1 and o["ah_off4"]:
            at = 14 + 4 * o["ah_off4"] + int(rng.integers(0, 4))
            if at < len(f):
                f[at] = int(rng.integers(0, 256))
        elif what == 2:
            f = f[:int(rng.integers(0, len(f) + 1))]
        elif what == 3 and len(f) > 18:
            f[16:18] = struct.pack("!H", int(rng.integers(0, 0x10000)))
        elif what == 4:
            o["esp_off4"] = int(rng.integers(0, 256))
        builder.add_nbl([bytes(f)], **o)
    return builder.build()


@pytest.mark.parametrize("seed", range(6))
def test_twin_equals_compiled_on_damaged_ah_frames(seed):
    miniport, batches = _ah_table()
    batch, _ = _merged(batches)
    pairs = []
    for i in range(batch.num_buffers):
        oob = batch.oob[int(batch.nb_nbl[i])]
        pairs.append((bytes(batch.arena[batch.nb_off[i]:batch.nb_off[i] + batch.nb_len[i]]),
                      {name: int(oob[name]) for name in ("offload_handle", "ah_off4", "esp_off4",
                                                         "next_header", "pad_length",
                                                         "l2_len")}))
    damaged = _damaged(pairs, np.random.default_rng(seed))
    results = tk.run_both(damaged, config=AH_CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, damaged)


# -- SA file and command line ------------------------------------------------------------------
AH_FILE = [
    {"name": "ah-web", "selector": {"dst": "10.0.1.0/24", "proto": "tcp"}, "protocol": "ah",
     "mode": "transport", "spi": "0x00003001", "integrity": "hmac-sha256-128",
     "auth_key": "5a" * 32, "esn": True, "seq": (2 << 32) | 7},
    {"name": "bundle", "selector": {"dst": "10.0.1.0/24", "proto": "udp"},
     "protocol": "ah+esp", "mode": "tunnel",
     "tunnel": {"src": "198.51.100.1", "dst": "198.51.100.2"}, "spi": "0x00003002",
     "encryption": "aes-cbc-128", "key": "a1" * 16, "integrity": None,
     "ah": {"spi": "0x00003003", "integrity": "aes-gmac-128", "auth_key": "b2" * 20},
     "esn": False, "seq": 1},
]


def test_sa_file_protocols_ah_and_ah_esp(tmp_path):
    from ipsecoffload.io.safile import load_sa_file, policy_to_dict, save_sa_file
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(AH_FILE))
    policies = load_sa_file(path)
    ah, bundle = (p.config for p in policies)
    assert (ah.protocol, ah.encryption, ah.integrity, ah.esn) == ("ah", None, "hmac-sha256-128",
                                                                  True)
    assert (bundle.protocol, bundle.ah_spi, bundle.ah_integrity) == ("ah+esp", 0x3003,
                                                                     "aes-gmac-128")
    assert bundle.integrity is None and bundle.ah_auth_key == bytes.fromhex("b2" * 20)
    again = tmp_path / "again.json"
    save_sa_file(again, policies)
    assert [p.config for p in load_sa_file(again)] == [ah, bundle]
    assert "key" not in policy_to_dict(policies[0])
    assert policy_to_dict(policies[1])["ah"]["spi"] == "0x00003003"


@pytest.mark.parametrize("change,words", [
    ({"protocol": "ah", "encryption": "aes-gcm-128"}, ["encryption", "absent"]),
    ({"protocol": "ah", "integrity": None}, ["integrity"]),
    ({"protocol": "ah+esp", "encryption": "aes-cbc-128", "key": "a1" * 16}, ["ah is missing"]),
    ({"ah": {"spi": 1, "integrity": "hmac-sha1-96", "auth_key": "00" * 20}},
     ["ah is only for protocol 'ah+esp'"]),
    ({"protocol": "ah", "udp_encap": {"sport": 4500, "dport": 4500}}, ["udp_encap"]),
], ids=["ah-with-encryption", "ah-without-integrity", "bundle-without-ah", "ah-on-ah-sa",
        "ah-udp-encap"])
def test_sa_file_ah_errors(tmp_path, change, words):
    from ipsecoffload.io.safile import SaFileError, load_sa_file
    entry = {**AH_FILE[0], **change}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(SaFileError) as error:
        load_sa_file(path)
    for word in words:
        assert word in str(error.value)
    assert "5a5a" not in str(error.value)  # never a key


def test_encrypt_and_wireshark_sa_with_ah(tmp_path, capsys):
    from ipsecoffload.cli.main import main
    from ipsecoffload.io.pcap import LINKTYPE_RAW, read_pcap, write_pcap
    sa_path = tmp_path / "sa.json"
    sa_path.write_text(json.dumps(AH_FILE))
    plain = [_plain("v4"), _plain("v4opt"), bytes(IP(src="10.0.0.1", dst="10.9.9.9")
                                                   / UDP() / Raw(b"clear"))]
    src = tmp_path / "in.pcap"
    write_pcap(src, LINKTYPE_RAW, plain)
    out = tmp_path / "out.pcap"
    assert main(["encrypt", "-i", str(src), "-o", str(out), "--sa", str(sa_path), "--json",
                 "--mss", "10"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sas"]["ah-web"]["packets"] == 1 and summary["sas"]["bundle"]["packets"] == 1
    linktype, records = read_pcap(out)
    frames = [bytes(r.data) for r in records]
    assert frames[2] == plain[2]
    ah_config = SaConfig(spi=0x3001, protocol="ah", integrity="hmac-sha256-128",
                         auth_key=bytes.fromhex("5a" * 32), esn=True, seq=(2 << 32) | 7)
    _verify_ah(frames[0], ah_config)
    bundle_config = SaConfig(spi=0x3002, protocol="ah+esp", encryption="aes-cbc-128",
                             key=bytes.fromhex("a1" * 16), ah_spi=0x3003,
                             ah_integrity="aes-gmac-128", ah_auth_key=bytes.fromhex("b2" * 20),
                             mode="tunnel", tunnel_src="198.51.100.1",
                             tunnel_dst="198.51.100.2")
    _verify_ah(frames[1], bundle_config)
    assert main(["wireshark-sa", "--sa", str(sa_path)]) == 0
    out_text, err = capsys.readouterr()
    lines = out_text.splitlines()
    assert len(lines) == 1 and '"0x00003002","AES-CBC [RFC3602]"' in lines[0]
    assert "AH (SPI 0x00003001) has no line" in err and "SPI 0x00003003" in err
    assert "5a5a" not in err


def test_ah_goes_where_linux_and_scapy_put_it_in_ipv6():
    """After hop-by-hop, destination options and routing headers, before destination
    options that follow the routing header (RFC 4302 §3.1.1; scapy's split_for_transport
    follows Linux). Verified by scapy in the form the packet arrives in."""
    from scapy.layers.ipsec import split_for_transport
    hops = ["2001:db8::a"]
    plain_pkt = (IPv6(src="2001:db8::1", dst="2001:db8::5") / IPv6ExtHdrHopByHop()
                 / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=hops, segleft=1)
                 / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / Raw(b"final" * 4))
    plain = bytes(plain_pkt)
    header, nh, _ = split_for_transport(IPv6(plain), 51)
    config = _ah_config("hmac-sha1-96", "transport", 6, False)
    (frame,) = _send(config, [plain])
    split = len(bytes(header))
    assert split == 40 + 8 + 8 + 24 and nh == 60
    assert frame[:split] == bytes(header)[:4] + frame[4:6] + bytes(header)[6:split]
    assert frame[split] == 60 and frame[split + 24:] == plain[split:]  # DestOpt after AH
    pkt = IPv6(frame)
    pkt[IPv6ExtHdrRouting].addresses = ["2001:db8::5"]
    pkt[IPv6ExtHdrRouting].segleft = 0
    pkt.dst = hops[-1]
    _verify_ah(bytes(pkt), config)


# -- LSO with AH (AH alone and AH+ESP, transport) ----------------------------------------------
LSO_CASES = [("ah", "hmac-sha256-128", 4, False), ("ah", "aes-gmac-128", 6, True),
             ("ah", "hmac-md5-96", 6, False), ("ah+esp", "gcm128+sha1", 4, True),
             ("ah+esp", "cbc256-sha256+gmac128", 6, False),
             ("ah+esp", "cbc128-only+sha256", 4, False)]


def _lso_packet(version: int, payload: bytes) -> bytes:
    ip = (IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=9) / IPv6ExtHdrHopByHop()
          if version == 6 else IP(src="10.0.0.1", dst="10.0.1.2", ttl=9, id=100))
    return bytes(ip / TCP(sport=1000, dport=2000, seq=5000, flags="PA") / Raw(payload))


def _esp_open(esp: bytes, config: SaConfig, esn_hi: int) -> bytes:
    """Verify and decrypt one ESP packet (RFC 4303, 4106, 3602) with cryptography; returns
    the payload without padding and trailer."""
    import hashlib
    import hmac as std_hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    hi = struct.pack("!I", esn_hi) if config.esn else b""
    if config.gcm:
        aad = esp[:4] + hi + esp[4:8]
        plain = AESGCM(config.key[:-4]).decrypt(config.key[-4:] + esp[8:16], esp[16:], aad)
    else:
        icv = config.icv
        body = esp[:len(esp) - icv]
        if config.integrity:
            digest = {"hmac-sha1-96": hashlib.sha1, "hmac-sha256-128": hashlib.sha256,
                      "hmac-md5-96": hashlib.md5}[config.integrity]
            want = std_hmac.new(config.auth_key, body + hi, digest).digest()[:icv]
            assert want == esp[len(esp) - icv:]
        if config.encryption == "null":
            plain = body[8:]
        else:
            d = Cipher(algorithms.AES(config.key), modes.CBC(body[8:24])).decryptor()
            plain = d.update(body[24:]) + d.finalize()
    return plain[:len(plain) - 2 - plain[-2]]


def _lso_config(protocol, name, version, esn):
    if protocol == "ah":
        config = _ah_config(name, "transport", version, esn)
    else:
        config = _bundle_config(name, "transport", version, esn)
    if esn:  # the segments cross into the next high word
        config = SaConfig(**{**config.__dict__, "seq": (5 << 32) | 0xFFFFFFFE})
    return config


LSO_RUNS = [(*case, lso) for case in LSO_CASES for lso in (1, 2)
            if not (case[2] == 6 and lso == 1)]  # LSOv1 is IPv4 only


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("protocol,name,version,esn,lso_version", LSO_RUNS,
                         ids=[f"{p}-{n}-v{v}-{'esn' if e else 'plain'}-lsov{lso}"
                              for p, n, v, e, lso in LSO_RUNS])
def test_lso_with_ah_segments_verify(protocol, name, version, esn, lso_version, pure):
    config = _lso_config(protocol, name, version, esn)
    payload = bytes((i * 7) & 0xFF for i in range(2500))
    miniport = Miniport(pure_python=pure)
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config)
    result = stack.send_lso(_lso_packet(version, payload), sa, 1000, lso_version=lso_version)
    assert result.status.tolist() == [0], result.reason_counts()
    frames = result.wire.frames()
    assert len(frames) == 3
    got = b""
    for i, frame in enumerate(frames):
        sn = config.seq + i
        _verify_ah(frame, SaConfig(**{**config.__dict__, "seq": sn}))
        pkt = _ip_class(frame)(frame)
        assert pkt[AH].seq == sn & 0xFFFFFFFF
        if protocol == "ah":
            tcp = TCP(bytes(pkt[AH].payload))  # scapy does not bind AH to TCP
            assert tcp.seq == 5000 + 1000 * i
            got += bytes(tcp.payload)
            assert (tcp.flags & 0x08) == (0x08 if i == 2 else 0)  # PSH on the last only
        else:  # the ESP after the AH header, opened with cryptography (scapy's IPv6 ESP
            # decapsulation mis-parses packets with extension headers)
            ah_at = len(bytes(pkt)) - len(bytes(pkt[AH]))
            esp = frame[ah_at + config.ah_length(version == 6):]
            tcp = TCP(_esp_open(esp, config, sn >> 32))
            assert tcp.seq == 5000 + 1000 * i
            got += bytes(tcp.payload)
    assert got == payload
    if esn:  # the stack moved the NIC's high words on (UPDATE_SA, both layers)
        record = miniport.sa_record(sa.handles[version == 6])
        assert record.get("ah", record)["seq_hi"] == 6


def test_lso_with_ah_twin_equals_compiled_and_bad_parameters_fail():
    miniport = Miniport(random_source=tk.random_bytes)
    stack = HostStack(miniport, link="ethernet")
    builder_batches = []
    for protocol, name, version, esn in LSO_CASES:
        sa = stack.add_sa(_lso_config(protocol, name, version, esn))
        builder_batches.append(stack.build_lso(_lso_packet(version, bytes(1500)), sa, 400))
    batch, _ = _merged(builder_batches)
    # keep the LSO info (the merge copies the IPsec fields only)
    builder = PacketBatchBuilder()
    for i in range(batch.num_buffers):
        frame = bytes(batch.arena[batch.nb_off[i]:batch.nb_off[i] + batch.nb_len[i]])
        src = builder_batches[i]
        oob = src.oob[0]
        fields = {name: int(oob[name]) for name in ("offload_handle", "ah_off4", "esp_off4",
                                                    "next_header", "pad_length", "l2_len",
                                                    "lso_info")}
        builder.add_nbl([frame], **fields)
        bad = dict(fields, lso_info=int(oob["lso_info"]) + (4 << 20))  # TcpHeaderOffset off
        builder.add_nbl([frame], **bad)
    batch = builder.build()
    results = tk.run_both(batch, config=AH_CONFIG, table=miniport.sas.snapshot())
    tk.assert_same(results, batch)
    reasons = results[0][1].reasons.tolist()
    assert reasons[0::2] == [Reason.OK] * len(LSO_CASES)
    assert reasons[1::2] == [Reason.LSO_BAD_PARAMS] * len(LSO_CASES)


# -- G13: a TunnelHandle without an OffloadHandle ----------------------------------------------
@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
def test_tunnel_handle_alone_fails_or_names_the_single_sa(pure):
    config = _ah_config("hmac-sha256-128", "tunnel", 4, False)
    for policy, want in (("fail", NdisStatus.FAILURE), ("single", NdisStatus.SUCCESS)):
        miniport = Miniport(pure_python=pure, tunnel_handle_alone=policy)
        stack = HostStack(miniport, link="raw")
        sa = stack.add_sa(config)
        batch = stack.build([_plain("v4")], sa)
        frame = bytes(batch.arena[:batch.nb_len[0]])
        oob = batch.oob[0]
        fields = {name: int(oob[name]) for name in ("ah_off4", "l2_len")}
        builder = PacketBatchBuilder()
        builder.add_nbl([frame], tunnel_handle=int(oob["offload_handle"]), **fields)
        builder.add_nbl([frame], tunnel_handle=int(oob["offload_handle"]),
                        offload_handle=int(oob["offload_handle"]), **fields)
        result = miniport.send(builder.build())
        # both handles naming one SA: it cannot be both layers, under either policy
        assert result.status.tolist() == [want, NdisStatus.FAILURE]
        assert result.reasons.tolist()[1] == Reason.NESTING
        if policy == "single":
            (out,) = result.wire.frames()
            _verify_ah(out, config)
        else:
            assert result.reasons.tolist()[0] == Reason.TUNNEL_HANDLE
            assert result.wire.num_buffers == 0
    with pytest.raises(ValueError, match="tunnel_handle_alone"):
        Miniport(tunnel_handle_alone="maybe")


# -- hypothesis: AH frames, damaged anywhere, through both kernels ------------------------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_FUZZ = {}


def _fuzz_material():
    """The good AH / AH+ESP frames of _ah_table() and LSO super-packets, built once."""
    if not _FUZZ:
        miniport, batches = _ah_table()
        stack = HostStack(miniport, link="ethernet")
        for protocol, name, version, esn in LSO_CASES[:3]:
            sa = stack.add_sa(_lso_config(protocol, name, version, esn))
            batches.append(stack.build_lso(_lso_packet(version, bytes(900)), sa, 300))
        pairs = []
        for batch in batches:
            for i in range(batch.num_buffers):
                oob = batch.oob[int(batch.nb_nbl[i])]
                pairs.append((bytes(batch.arena[batch.nb_off[i]:batch.nb_off[i]
                                                + batch.nb_len[i]]),
                              {name: int(oob[name]) for name in (
                                  "offload_handle", "ah_off4", "esp_off4", "next_header",
                                  "pad_length", "l2_len", "lso_info")}))
        _FUZZ.update(miniport=miniport, pairs=pairs,
                     handles=sorted({o["offload_handle"] for _, o in pairs}))
    return _FUZZ


@st.composite
def _ah_nbl(draw):
    material = _fuzz_material()
    frame, oob = draw(st.sampled_from(material["pairs"]))
    frame, oob = bytearray(frame), dict(oob)
    for _ in range(draw(st.integers(0, 3))):  # bytes flipped anywhere (headers included)
        if frame:
            at = draw(st.integers(0, len(frame) - 1))
            frame[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 5)) == 0:
        frame = frame[:draw(st.integers(0, len(frame)))]
    if draw(st.integers(0, 4)) == 0:
        oob[draw(st.sampled_from(["ah_off4", "esp_off4", "next_header", "pad_length"]))] = \
            draw(st.integers(0, 255))
    if draw(st.integers(0, 8)) == 0:
        oob["offload_handle"] = draw(st.sampled_from(material["handles"] + [0, 12345]))
    if draw(st.integers(0, 8)) == 0:
        oob["lso_info"] = draw(st.integers(0, 2**32 - 1))
    if draw(st.integers(0, 12)) == 0:
        oob["tunnel_handle"] = draw(st.sampled_from(material["handles"]))
    return bytes(frame), oob


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_ah_nbl(), min_size=1, max_size=4))
def test_fuzz_ah_frames_twin_equals_compiled(nbls):
    builder = PacketBatchBuilder()
    for frame, oob in nbls:
        builder.add_nbl([frame], **oob)
    batch = builder.build()
    table = _fuzz_material()["miniport"].sas.snapshot()
    results = tk.run_both(batch, config=AH_CONFIG, table=table)
    tk.assert_same(results, batch)


@pytest.mark.parametrize("pure", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("version", [4, 6])
def test_bundle_with_an_appended_esp_icv_signs_the_final_lengths(version, pure):
    """icv_space="append" (G4): the ESP ICV is appended and the IP length grows; the AH over
    it covers the final packet, lengths included."""
    config = _bundle_config("cbc256-sha256+gmac128", "transport", version, False)
    miniport = Miniport(pure_python=pure, icv_space="append")
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(config)
    batch = stack.build([_plain("v6ext" if version == 6 else "v4")], sa)
    frame = bytearray(batch.arena[:batch.nb_len[0]])[:-config.icv]  # no ICV room
    if version == 4:
        frame[2:4] = struct.pack("!H", len(frame))
        frame[10:12] = b"\0\0"
        s = sum(struct.unpack("!10H", bytes(frame[:20])))
        s = (s & 0xFFFF) + (s >> 16)
        frame[10:12] = struct.pack("!H", ~s & 0xFFFF)
    else:
        frame[4:6] = struct.pack("!H", len(frame) - 40)
    oob = batch.oob[0]
    builder = PacketBatchBuilder()
    builder.add_nbl([bytes(frame)], **{name: int(oob[name]) for name in (
        "offload_handle", "ah_off4", "esp_off4", "next_header", "pad_length", "l2_len")})
    result = miniport.send(builder.build())
    assert result.status.tolist() == [0]
    (out,) = result.wire.frames()
    assert len(out) == len(frame) + config.icv
    _verify_ah(out, config)
    pkt = _ip_class(out)(out)
    ah_at = len(out) - len(bytes(pkt[AH]))
    plain = _esp_open(out[ah_at + config.ah_length(version == 6):], config, 0)
    assert plain == _plain("v6ext" if version == 6 else "v4")[ah_at:]
