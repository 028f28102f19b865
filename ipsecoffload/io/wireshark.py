"""What Wireshark can and cannot check in our captures, SA by SA.

``wireshark_esp_sa`` (io/safile.py) writes the ``esp_sa`` table; these notes say where that
table is not enough. They describe Wireshark's ESP dissector (epan/dissectors/packet-ipsec.c):
its SA table has no extended-sequence-number field, so the high-order 32 bits that RFC 4303
§2.2.1 puts into the ICV (and RFC 4106 §5 into the AES-GCM AAD) are missing; it has no
AES-GMAC (RFC 4543) and checks no AH ICV. AES-GCM (ICV 8, 12, 16), AES-CBC with the HMACs and
NULL with the HMACs it decrypts and checks. Tested with tshark 4.0 (tests/test_cli.py).
"""
from __future__ import annotations

from typing import List, Sequence

from .safile import SaPolicy

__all__ = ["TSHARK_OPTIONS", "wireshark_notes"]

#: the preferences that make tshark decrypt ESP and check its ICVs (then add one
#: ``-o uat:esp_sa:LINE`` per line of the esp_sa table)
TSHARK_OPTIONS = ("-o", "esp.enable_encryption_decode:TRUE",
                  "-o", "esp.enable_authentication_check:TRUE")


def wireshark_notes(policies: Sequence[SaPolicy]) -> List[str]:
    """One line per SA whose packets Wireshark cannot fully check, saying what it cannot
    (never key material)."""
    notes = []
    for policy in policies:
        config = policy.config
        label = f"SA {policy.name!r} (SPI 0x{config.spi:08x})"
        protocol = getattr(config, "protocol", "esp")
        if protocol != "esp":
            notes.append(f"{label}: Wireshark checks no AH ICV; its esp_sa table is for ESP "
                         f"only")
        if config.esn:
            shown = ("the AES-CBC payload still decrypts" if config.encryption.startswith(
                "aes-cbc") else "the AES-GCM payload still decrypts (CTR mode)"
                     if config.gcm else "the payload is in clear")
            notes.append(f"{label}: ESN — Wireshark's esp_sa table has no extended sequence "
                         f"numbers, so it reports every ICV of this SA bad; {shown}")
        if (config.integrity or "").startswith("aes-gmac"):
            notes.append(f"{label}: AES-GMAC — Wireshark has no GMAC: the table gives it as NULL "
                         f"encryption with an unchecked 128-bit ICV, so Wireshark checks no ICV "
                         f"and reads the 8-byte IV as the first payload bytes")
    return notes
