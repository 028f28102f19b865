"""The NDIS-level use a NIC-driver test harness makes of the model: capabilities, ADD_SA with
the IPSEC_OFFLOAD_V2_ADD_SA structure, a NET_BUFFER_LIST framed as the Windows TCP/IP stack
frames it (ESP header, IV slot, trailer, ICV room; info slots 1 and 12), MiniportSend, the
completion status, and the wire frame checked with plain `cryptography` (RFC 4106).

Run: python examples/ndis_driver_test.py   (no scapy needed)
Names follow the Microsoft NDIS pages "IPSEC_OFFLOAD_V2_ADD_SA", "NET_BUFFER_LIST_INFO" and
"IPSEC_OFFLOAD_V2_HEADER_NET_BUFFER_LIST_INFO"; the rules are in docs/protocol.md.
"""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import Miniport, ndis
from ipsecoffload.inet import internet_checksum

KEY, SALT = bytes(range(16)), b"\xca\xfe\xba\xbe"
SPI = 0x00002001
SRC, DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])


def add_sa(nic: Miniport) -> int:
    """OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA for one outbound AES-GCM-128 SA; the handle."""
    gcm = ndis.IpsecOffloadV2AlgorithmInfo(
        identifier=int(ndis.EncryptionAlgorithm.AES_GCM_128), key_length=len(KEY + SALT),
        key_offset_bytes=0, additional_info=16)  # ICV length in bytes
    entry = ndis.IpsecOffloadV2AddSa(
        src_address=SRC, dest_address=DST,
        sec_assoc=[ndis.IpsecOffloadV2SecurityAssociation(
            operation=ndis.IpsecOperation.ESP, spi=SPI, encryption_algorithm=gcm)],
        key_data=KEY + SALT)
    status = nic.set_information(ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA, entry)
    assert status == ndis.NdisStatus.SUCCESS and entry.offload_handle, status
    return entry.offload_handle


def esp_frame(sn: int, payload: bytes) -> tuple[bytes, int]:
    """Ethernet | IPv4 (protocol 50) | SPI, SN | 8-byte IV slot | payload | padding, pad
    length, next header (TCP) | 16 zero bytes for the ICV; and the pad length."""
    pad = -(len(payload) + 2) % 4  # RFC 4303 §2.4: 4-byte alignment for AES-GCM
    esp = (struct.pack("!II", SPI, sn) + bytes(8) + payload + bytes(range(1, pad + 1))
           + bytes((pad, 6)) + bytes(16))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(esp), 1, 0x4000, 64, 50, 0,
                               SRC, DST))
    struct.pack_into("!H", ip, 10, internet_checksum(bytes(ip)))
    ethernet = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00"
    return ethernet + bytes(ip) + esp, pad


def nbl(frame: bytes, handle: int, pad: int) -> ndis.NetBufferList:
    out = ndis.NetBufferList(net_buffers=[ndis.NetBuffer(bytearray(frame))], l2_length=14)
    out.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2,
                 ndis.IpsecOffloadV2NblInfo(offload_handle=handle))
    out.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER, ndis.IpsecOffloadV2HeaderNblInfo(
        next_header=6, pad_length=pad, esp_header_offset=20 // 4))  # after the IPv4 header
    return out


def main() -> None:
    nic = Miniport()
    status, caps = nic.query_information(ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES)
    print("capabilities:", status.name, caps)
    handle = add_sa(nic)
    print(f"ADD_SA: handle {handle:#x}")

    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + b"payload"
    frame, pad = esp_frame(1, tcp)
    good = nbl(frame, handle, pad)
    stale = nbl(frame, handle + 1, pad)  # a handle the NIC never gave out
    result = nic.send([good, stale])
    print("completion:", ndis.NdisStatus(good.status).name, ndis.NdisStatus(stale.status).name)
    assert good.status == ndis.NdisStatus.SUCCESS and stale.status == ndis.NdisStatus.FAILURE

    [wire] = result.wire.frames()  # only the good NBL left
    esp = wire[14 + 20:]
    iv, sealed = esp[8:16], esp[16:]
    assert iv == struct.pack("!Q", 1)  # the NIC writes the IV: the SN (docs/spec-gaps.md G5)
    clear = AESGCM(KEY).decrypt(SALT + iv, sealed, esp[:8])  # RFC 4106: AAD = SPI || SN
    assert clear[:len(tcp)] == tcp and clear[-1] == 6
    print("wire frame decrypts with cryptography's AESGCM; counters:", dict(nic.counters))

    status = nic.set_information(ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA,
                                 ndis.IpsecOffloadV2DeleteSa(offload_handle=handle))
    print("DELETE_SA:", ndis.NdisStatus(status).name)


if __name__ == "__main__":
    main()
