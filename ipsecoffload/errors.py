"""The exceptions a user of ipsecoffload may have to catch, under one base class.

``except ipsecoffload.IpsecOffloadError`` catches every error this package raises on purpose
for unusable input. Each class keeps the built-in base it had before the hierarchy existed
(``SaFileError`` and ``SequenceNumberExhausted`` are still ``ValueError``s, ``PcapError`` an
``Exception``), so older ``except ValueError`` clauses keep working.

A bad *packet* is never an exception: the miniport completes it with an NDIS_STATUS, and
``ipsecoffload.encrypt`` reports it in ``.status`` (README, "Python API").

This module imports nothing from the package, so that every module can import it.
"""
from __future__ import annotations

import re

__all__ = ["IpsecOffloadError", "SaOffloadRefused", "shown", "shown_name"]

_HEX_RUN = re.compile(r"(0[xX])?[0-9a-fA-F]{16,}")
SHOWN_CHARS = 32  # a value longer than this is described, not quoted
NAME_CHARS = 40  # SA names in messages are cut to this many characters


def shown(value) -> str:
    """A user's value as an error message may quote it: short values as repr, anything that
    may be key material (16 or more hex digits, bytes) or is long only described, so that a
    key typed into the wrong field never reaches a message and a line stays short."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        digits = len(str(abs(value))) if value.bit_length() < 200 else None
        return repr(value) if digits is not None and digits <= 20 else "a very large integer"
    if isinstance(value, str):
        if len(value) > SHOWN_CHARS:
            return f"a string of {len(value)} characters (not shown)"
        if _HEX_RUN.fullmatch(value.strip()):
            return f"a hex string of {len(value)} characters (not shown: it may be a key)"
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes (not shown)"
    if isinstance(value, (list, tuple)) and len(value) <= 4 and all(
            v is None or isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) < 2**64)
            for v in value):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        kind = "an object" if isinstance(value, dict) else "a list"
        return f"{kind} of {len(value)} item{'' if len(value) == 1 else 's'}"
    return f"a value of type {type(value).__name__}"


def shown_name(name) -> str:
    """An SA name for a message: repr, cut to NAME_CHARS characters."""
    if not isinstance(name, str):
        return shown(name)
    if len(name) > NAME_CHARS:
        return repr(name[:NAME_CHARS - 3] + "...")
    return repr(name)


class IpsecOffloadError(Exception):
    """Base class of the errors ipsecoffload raises for unusable input: an SA file or SA
    description that cannot be used, a capture that is not a usable pcap file, an SA out of
    sequence numbers, an SA the miniport refused."""


class SaOffloadRefused(IpsecOffloadError, RuntimeError):
    """The miniport refused an SA OID (ADD_SA, UPDATE_SA, DELETE_SA) the host stack made;
    the message names the SA (by name and SPI, never its keys) and the NDIS_STATUS."""
