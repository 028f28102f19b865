"""scapy packets in, ESP packets out, scapy decrypts them: the one-call API.

Run: python examples/scapy_roundtrip.py   (needs scapy: python -m pip install scapy)
This file is type-checked by mypy in CI (pyproject.toml [tool.mypy]).
"""
from __future__ import annotations

from typing import List, Union

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet

import ipsecoffload

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")  # AES-128 key
SALT = bytes.fromhex("01020304")  # RFC 4106 §4: the 4-byte salt after the key


def main() -> None:
    sa = ipsecoffload.SaConfig(spi=0x1001, encryption="aes-gcm-128", key=KEY + SALT)
    plain: List[Union[Packet, bytes]] = [
        IP(src="192.0.2.1", dst="198.51.100.7") / TCP(dport=443, flags="PA") / b"hello",
        IP(src="192.0.2.1", dst="198.51.100.7") / UDP(dport=53) / b"query",
        b"\x45 this is not an IP packet"]
    out: ipsecoffload.PacketResults = ipsecoffload.encrypt(plain, sa)
    print(out, out.status)
    assert out.status == ("SUCCESS", "SUCCESS", "REFUSED") and out[2] == b""

    # scapy (an independent ESP implementation) opens what left
    peer = SecurityAssociation(ESP, spi=sa.spi, crypt_algo="AES-GCM", crypt_key=sa.key,
                               crypt_icv_size=16)
    esp_packets: List[Packet] = out.to_scapy()
    for original, esp in zip(plain, esp_packets):
        seq = esp[ESP].seq
        clear = peer.decrypt(esp)
        assert bytes(clear) == bytes(original)
        print(f"  SN {seq}: {clear.summary()}")

    # the next call continues the SA's sequence numbers (AES-GCM: SN = IV, never reused)
    again = ipsecoffload.encrypt(plain[:1], sa)
    assert IP(again[0])[ESP].seq == 3
    print("next call starts at SN", IP(again[0])[ESP].seq,
          "; state:", ipsecoffload.encryptor(sa))


if __name__ == "__main__":
    main()
