"""Crypto backends behind one batch interface (design §5).

emit() writes a JobTable: one row per protected segment, naming its SA slot and where its
ESP header, text and ICV sit in the output arena. A backend seals every row in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..crypto.keys import SaKeys


@dataclass
class JobTable:
    """Struct of arrays, one entry per protected segment (offsets into the output arena)."""
    slot: np.ndarray  # int32 SA slot
    esp: np.ndarray  # int64 ESP header (SPI, SN); the IV follows it
    text: np.ndarray  # int64 first byte encrypted (after the IV)
    text_len: np.ndarray  # int64 payload + padding + pad length + next header
    icv: np.ndarray  # int64 where the ICV goes
    seq_hi: np.ndarray  # uint32 high-order ESN word of this segment's SN
    post: np.ndarray  # uint8 layout.JobPost: work left after sealing
    udp: np.ndarray  # int64 UDP header (UDP-encapsulated SAs)
    ip: np.ndarray  # int64 IP header

    @classmethod
    def empty(cls, n: int) -> "JobTable":
        return cls(slot=np.zeros(n, np.int32), esp=np.zeros(n, np.int64),
                   text=np.zeros(n, np.int64), text_len=np.zeros(n, np.int64),
                   icv=np.zeros(n, np.int64), seq_hi=np.zeros(n, np.uint32),
                   post=np.zeros(n, np.uint8), udp=np.zeros(n, np.int64),
                   ip=np.zeros(n, np.int64))

    def __len__(self) -> int:
        return len(self.slot)


class CryptoBackend(Protocol):
    name: str

    def seal(self, arena: np.ndarray, jobs: JobTable, keys: Sequence[SaKeys | None]) -> None:
        """Encrypt and write the ICV of every job, in place in ``arena``."""


def default_backend() -> CryptoBackend:
    from ..crypto.reference import ReferenceBackend
    return ReferenceBackend()


__all__ = ["CryptoBackend", "JobTable", "SaKeys", "default_backend"]
