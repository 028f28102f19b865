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

__all__ = ["IpsecOffloadError", "SaOffloadRefused"]


class IpsecOffloadError(Exception):
    """Base class of the errors ipsecoffload raises for unusable input: an SA file or SA
    description that cannot be used, a capture that is not a usable pcap file, an SA out of
    sequence numbers, an SA the miniport refused."""


class SaOffloadRefused(IpsecOffloadError, RuntimeError):
    """The miniport refused an SA OID (ADD_SA, UPDATE_SA, DELETE_SA) the host stack made;
    the message names the SA (by name and SPI, never its keys) and the NDIS_STATUS."""
