"""Combined large-send offload (LSO) + ESP: one big TCP packet in, MSS-sized protected
segments out, each with its own sequence number, IV, trailer and ICV (docs/send-path.md).

Run: python examples/lso.py   (no scapy needed)
"""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import ipsecoffload
from ipsecoffload import HostStack, Miniport, SaConfig, ndis
from ipsecoffload.inet import internet_checksum

KEY, SALT = bytes(16), b"salt"
MSS = 1400


def big_tcp_packet(payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1000, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    struct.pack_into("!H", ip, 10, internet_checksum(bytes(ip)))
    return bytes(ip) + tcp


def open_segment(segment: bytes) -> bytes:
    """The TCP payload of one protected segment (raw IPv4 | ESP), checked with AESGCM."""
    esp = segment[20:]
    plain = AESGCM(KEY).decrypt(SALT + esp[8:16], esp[16:], esp[:8])
    pad = plain[-2]
    return plain[:-2 - pad][20:]  # drop the trailer and the TCP header


def main() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes: 8 segments at MSS 1400
    packet = big_tcp_packet(data)
    sa = SaConfig(spi=0x3001, encryption="aes-gcm-128", key=KEY + SALT)

    # one call: the super-packet goes to the NIC whole, the segments come back
    out = ipsecoffload.encrypt([packet], sa, mss=MSS)
    segments = out.segments[0]
    print(f"one {len(packet)}-byte packet -> {len(segments)} segments "
          f"of {[len(s) for s in segments]} bytes")
    assert b"".join(open_segment(s) for s in segments) == data

    # the NDIS level: the host stack frames the LSOv2 super-packet; slot 2 carries MSS and
    # TcpHeaderOffset in, the completion info (LsoV2TransmitComplete) out
    nic = Miniport()
    stack = HostStack(nic, link="raw")
    stack_sa = stack.add_sa(SaConfig(spi=0x3002, encryption="aes-gcm-128", key=KEY + SALT))
    [nbl] = stack.build_lso(packet, stack_sa, MSS).to_nbls()
    slot2 = nbl.get_info(ndis.NblInfo.TCP_LARGE_SEND)
    print("slot 2 in:", ndis.LsoV2Transmit.from_value(slot2))
    result = nic.send([nbl])
    print("status:", ndis.NdisStatus(nbl.status).name, "; slot 2 out:",
          hex(nbl.get_info(ndis.NblInfo.TCP_LARGE_SEND)), "; frames:", len(result.wire))
    sns = [struct.unpack_from("!I", frame, 24)[0] for frame in result.wire.frames()]
    assert sns == list(range(1, len(sns) + 1))  # segment i uses SN0 + i (docs/spec-gaps.md G6)


if __name__ == "__main__":
    main()
