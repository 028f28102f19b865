"""pcapng blocks the capture tools read and write (IETF draft-ietf-opsawg-pcapng): the Section
Header Block, Interface Description Blocks with their link type, snap length and if_tsresol,
and Enhanced / Simple Packet Blocks (found by the compiled scan, io/capture_scan.pxi). Every
other block is skipped on read. Files are written little-endian: one section, one IDB per
input interface, EPBs.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from .pcap import PcapError

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 1
SPB_TYPE = 3
EPB_TYPE = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT = 0
OPT_IF_TSRESOL = 9
DEFAULT_TSRESOL = 6  # microseconds, when an IDB has no if_tsresol


class Interface(NamedTuple):
    """One capture interface: its link type, snap length (0: none) and if_tsresol byte."""
    linktype: int
    snaplen: int
    tsresol: int = DEFAULT_TSRESOL

    @property
    def nanosecond_or_finer(self) -> bool:
        """Whether microseconds would lose precision of this interface's timestamps."""
        if self.tsresol & 0x80:
            return (self.tsresol & 0x7F) > 19  # 2**-20 s is finer than 1 us
        return self.tsresol > 6


def section_order(block: bytes, name: str) -> str:
    """The byte order of a Section Header Block ("<" or ">"); PcapError if it is not one."""
    if len(block) < 28:
        raise PcapError(f"{name!r} is corrupt: a pcapng section header of {len(block)} bytes")
    magic = struct.unpack_from("<I", block, 8)[0]
    if magic == BYTE_ORDER_MAGIC:
        order = "<"
    elif magic == 0x4D3C2B1A:
        order = ">"
    else:
        raise PcapError(f"{name!r} is corrupt: pcapng byte-order magic 0x{magic:08X}")
    major = struct.unpack_from(order + "H", block, 12)[0]
    if major != 1:
        raise PcapError(f"{name!r} has pcapng version {major}; only version 1 is supported")
    return order


def block_length(head: bytes, order: str) -> int:
    return struct.unpack_from(order + "I", head, 4)[0]


def parse_idb(block: bytes, order: str, name: str) -> Interface:
    """An Interface Description Block: link type, snap length, if_tsresol."""
    if len(block) < 20:
        raise PcapError(f"{name!r} is corrupt: an interface description of {len(block)} bytes")
    linktype, _, snaplen = struct.unpack_from(order + "HHI", block, 8)
    tsresol = DEFAULT_TSRESOL
    pos, end = 16, len(block) - 4
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", block, pos)
        if code == OPT_ENDOFOPT:
            break
        if code == OPT_IF_TSRESOL and length >= 1 and pos + 5 <= end:
            tsresol = block[pos + 4]
        pos += 4 + ((length + 3) & ~3)
    return Interface(linktype, snaplen, tsresol)


def shb_bytes() -> bytes:
    """A little-endian Section Header Block, version 1.0, section length unknown."""
    return struct.pack("<IIIHHqI", SHB_TYPE, 28, BYTE_ORDER_MAGIC, 1, 0, -1, 28)


def idb_bytes(linktype: int, snaplen: int, tsresol: int) -> bytes:
    """An Interface Description Block with if_tsresol (6: microseconds, 9: nanoseconds)."""
    options = struct.pack("<HHB3x", OPT_IF_TSRESOL, 1, tsresol) + struct.pack("<HH", 0, 0)
    total = 20 + len(options)
    return struct.pack("<IIHHI", IDB_TYPE, total, linktype, 0, snaplen) + options + \
        struct.pack("<I", total)


__all__ = ["BYTE_ORDER_MAGIC", "EPB_TYPE", "IDB_TYPE", "Interface", "SHB_TYPE", "SPB_TYPE",
           "idb_bytes", "parse_idb", "section_order", "shb_bytes"]
