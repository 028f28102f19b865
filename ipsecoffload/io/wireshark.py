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
        if protocol == "ah":
            notes.append(f"SA {policy.name!r}: AH (SPI 0x{config.spi:08x}) has no line: "
                         f"Wireshark's ESP SA table holds ESP only; AH packets dissect without "
                         f"a key and their ICV is not checked")
        elif protocol == "ah+esp":
            notes.append(f"{label}: the line is the bundle's ESP layer; its AH (SPI "
                         f"0x{config.ah_spi:08x}) ICV is not checked by Wireshark")
        if config.esn and getattr(config, "has_esp", True):
            encryption = config.encryption or ""
            shown = ("the AES-CBC payload still decrypts" if encryption.startswith("aes-cbc")
                     else "the AES-GCM payload still decrypts (CTR mode)" if config.gcm
                     else "the payload is in clear")
            notes.append(f"{label}: ESN — Wireshark's esp_sa table has no extended sequence "
                         f"numbers, so it reports every ICV of this SA bad; {shown}")
        if protocol != "ah" and (config.integrity or "").startswith("aes-gmac"):
            notes.append(f"{label}: AES-GMAC — Wireshark has no GMAC: the table gives it as NULL "
                         f"encryption with an unchecked 128-bit ICV, so Wireshark checks no ICV "
                         f"and reads the 8-byte IV as the first payload bytes")
    return notes
