"""Internet checksum helpers shared by the Python-side packet builders (docs/protocol.md)."""
from __future__ import annotations

import struct


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of big-endian 16-bit words, folded, not inverted;
    an odd tail byte is zero-padded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """The value a checksum field carries: the inverted one's-complement sum."""
    return ~ones_complement_sum(data) & 0xFFFF
