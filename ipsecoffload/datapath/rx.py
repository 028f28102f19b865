"""The receive pipeline (docs/receive-path.md): rx_classify -> open (backends, one call per op
group) -> rx_complete, in one compiled call (or its pure-Python twin).

Every received frame is indicated, failures included; ``ReceiveResult`` carries the frames as
the NIC leaves them (verified ESP text decrypted in place, headers, IV and ICV as received)
and each frame's receive indication.
"""
from __future__ import annotations

from types import ModuleType
from typing import Mapping, Optional

import numpy as np

from .batch import PacketBatch
from .layout import RX_PLAN_DTYPE, RX_REASON_COUNT, RxReason


class ReceiveResult:
    """What the NIC indicates for a batch of received frames (one per NET_BUFFER)."""

    __slots__ = ("batch", "arena", "counters", "_plans", "_plan_bytes")

    def __init__(self, batch: PacketBatch, arena: np.ndarray, plan_bytes: np.ndarray,
                 counters: np.ndarray):
        self.batch = batch  # the frames as received
        self.arena = arena  # the frames as the NIC leaves them, at the batch's offsets
        self._plan_bytes = plan_bytes
        self._plans: Optional[np.ndarray] = None
        self.counters = counters  # int64 per layout.RxReason

    @property
    def plans(self) -> np.ndarray:
        """The RX_PLAN_DTYPE row of every frame."""
        if self._plans is None:
            self._plans = self._plan_bytes.view(RX_PLAN_DTYPE)
        return self._plans

    def __len__(self) -> int:
        return len(self.batch.nb_off)

    @property
    def crypto_done(self) -> np.ndarray:
        return self.plans["crypto_done"]

    @property
    def crypto_status(self) -> np.ndarray:
        """uint16 ndis.CryptoStatus value per frame (0 where CryptoDone is 0)."""
        return self.plans["crypto_status"]

    @property
    def reasons(self) -> np.ndarray:
        return self.plans["reason"]

    @property
    def sa_delete_req(self) -> np.ndarray:
        return self.plans["sa_delete_req"]

    @property
    def seq64(self) -> np.ndarray:
        """The 64-bit sequence number each verified frame was checked with."""
        return self.plans["seq64"]

    @property
    def ipsec_info(self) -> np.ndarray:
        """uint64 slot IPsecOffloadV2NetBufferListInfo (Receive view) per frame: SaDeleteReq
        bit 0, CryptoDone bit 1, NextCryptoDone bit 2, CryptoStatus bits 16-31."""
        plans = self.plans
        return (plans["sa_delete_req"].astype(np.uint64)
                | (plans["crypto_done"].astype(np.uint64) << np.uint64(1))
                | (plans["crypto_status"].astype(np.uint64) << np.uint64(16)))

    @property
    def header_info(self) -> np.ndarray:
        """uint64 slot IPsecOffloadV2HeaderNetBufferListInfo (Receive view) per frame:
        NextHeader bits 0-7, PadLength bits 8-15, HeaderInfoSet bit 16."""
        plans = self.plans
        return (plans["next_header"].astype(np.uint64)
                | (plans["pad_length"].astype(np.uint64) << np.uint64(8))
                | (plans["header_info_set"].astype(np.uint64) << np.uint64(16)))

    def frame(self, i: int) -> bytes:
        """Frame ``i`` as the NIC leaves it."""
        off, length = int(self.batch.nb_off[i]), int(self.batch.nb_len[i])
        return self.arena[off:off + length].tobytes()

    def frames(self) -> list[bytes]:
        return [self.frame(i) for i in range(len(self))]

    def reason_counts(self) -> dict[str, int]:
        return {RxReason(i).name: int(c) for i, c in enumerate(self.counters[:RX_REASON_COUNT])
                if c}

    def __repr__(self) -> str:
        done = int(np.count_nonzero(self.crypto_done)) if len(self) else 0
        return f"ReceiveResult({len(self)} frames, {done} with CryptoDone)"


def run_receive(batch: PacketBatch, table, rx_state: np.ndarray, lock, *, config: int,
                kernels: ModuleType, backends: Mapping[int, object],
                delete_after: int = 0) -> ReceiveResult:
    out, plans, _ops, counters = kernels.rx_run(batch, table, rx_state, int(config), backends,
                                                lock, int(delete_after))
    return ReceiveResult(batch, out, plans, counters)


__all__ = ["ReceiveResult", "run_receive"]
