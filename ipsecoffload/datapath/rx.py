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

from ..ndis import CryptoStatus
from .arenas import ArenaRecycler
from .batch import PacketBatch
from .layout import NAT_T_PORT, RX_PLAN_DTYPE, RX_REASON_COUNT, RxReason


class ReceiveResult:
    """What the NIC indicates for a batch of received frames (one per NET_BUFFER)."""

    __slots__ = ("batch", "arena", "counters", "_plans", "_plan_bytes")

    def __init__(self, batch: PacketBatch, arena: np.ndarray, plan_bytes: np.ndarray,
                 counters: np.ndarray):
        self.batch = batch  # the frames as received
        self.arena = arena  # the frames as the NIC leaves them, at the batch's offsets
        self._plan_bytes = plan_bytes  # a row per frame, then the inner layers' rows
        self._plans: Optional[np.ndarray] = None
        self.counters = counters  # int64 per layout.RxReason

    @property
    def plans(self) -> np.ndarray:
        """The RX_PLAN_DTYPE row of every frame (its outer layer, and the frame's result)."""
        if self._plans is None:
            self._plans = self._plan_bytes.view(RX_PLAN_DTYPE)[:len(self.batch.nb_off)]
        return self._plans

    @property
    def inner_plans(self) -> np.ndarray:
        """The rows of the inner (transport) layers of nested frames; a frame's ``inner``
        field indexes them from len(self)."""
        return self._plan_bytes.view(RX_PLAN_DTYPE)[len(self.batch.nb_off):]

    @property
    def next_crypto_done(self) -> np.ndarray:
        return self.plans["next_crypto_done"]

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
                | (plans["next_crypto_done"].astype(np.uint64) << np.uint64(2))
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


# a failed inner layer is the transport layer of a nested packet (docs/receive-path.md, "Nested packets")
_TRANSPORT_CODE = {int(CryptoStatus.TUNNEL_AH_AUTH_FAILED): int(CryptoStatus.TRANSPORT_AH_AUTH_FAILED),
                   int(CryptoStatus.TUNNEL_ESP_AUTH_FAILED):
                       int(CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)}


def run_receive(batch: PacketBatch, table, rx_state: np.ndarray, lock, *, config: int,
                kernels: ModuleType, backends: Mapping[int, object],
                delete_after: int = 0,
                nat_t_ports: tuple[int, ...] = (NAT_T_PORT,),
                arenas: Optional[ArenaRecycler] = None) -> ReceiveResult:
    """rx_run over the frames, then once more over the inner packets of the tunnel layers that
    verified (docs/receive-path.md: the outer layer, then the inner one if its SA is offloaded);
    both passes parse UDP to or from ``nat_t_ports`` as UDP-ESP. ``arenas`` offers the last
    receive's arena back once nothing holds it."""
    ports = tuple(nat_t_ports)
    out, plans, _ops, counters = kernels.rx_run(batch, table, rx_state, int(config), backends,
                                                lock, int(delete_after), ports,
                                                arenas.offer() if arenas is not None else None)
    out, plans = _inner_layers(batch, table, rx_state, lock, int(config), kernels, backends,
                               int(delete_after), out, plans, counters, ports)
    if arenas is not None:
        arenas.keep(out)
    return ReceiveResult(batch, out, plans, counters)


def _inner_layers(batch, table, rx_state, lock, config, kernels, backends, delete_after,
                  out, plan_bytes, counters, nat_t_ports):
    """Nested packets (transport over tunnel): the inner packet of every verified tunnel layer
    through rx_run as a batch of its own, over the decrypted arena. A frame whose inner packet
    has an inbound SA gets NextCryptoDone, its inner layer's row appended after the frames'
    rows (``inner`` names it) and, when that layer fails, its status (transport codes) and
    reason; the inner text is decrypted in place. One level: the inner rows are never nested
    (their ``inner`` is 0, which no inner row can be: they follow the frames' rows)."""
    if not kernels.rx_nested_candidates(plan_bytes, len(batch.nb_off)):
        return out, plan_bytes
    plans = plan_bytes.view(RX_PLAN_DTYPE)
    esp = plans["op"] >= 0
    nh = np.where(esp, plans["next_header"], plans["ah_next_header"])
    picked = np.flatnonzero((plans["reason"] == RxReason.OK) & (plans["crypto_done"] == 1)
                            & np.isin(nh, (4, 41)) & (esp | (plans["ah_off"] > 0)))
    if not len(picked):
        return out, plan_bytes
    rows = plans[picked]
    start = np.where(esp[picked], rows["text_off"], rows["ah_off"] + rows["ah_len"])
    length = np.where(esp[picked], rows["text_len"] - 2 - rows["pad_length"].astype(np.int64),
                      rows["ip_end"] - start)
    base = batch.nb_off[picked].astype(np.int64)
    inner = PacketBatch(out, base + start, length, np.arange(len(picked), dtype=np.int32),
                        l2_len=np.zeros(len(picked), np.uint16))
    out2, inner_bytes, _ops, _counters = kernels.rx_run(inner, table, rx_state, config, backends,
                                                         lock, delete_after, nat_t_ports)
    inner_plans = inner_bytes.view(RX_PLAN_DTYPE)
    checked = np.flatnonzero(inner_plans["crypto_done"] == 1)
    if not len(checked):
        return out, plan_bytes
    n = len(plans)
    plans = plans.copy()
    outer = picked[checked]
    sub = inner_plans[checked].copy()
    sub["inner"] = 0
    plans["next_crypto_done"][outer] = 1
    plans["inner"][outer] = n + np.arange(len(checked), dtype=np.int32)
    plans["sa_delete_req"][outer] |= sub["sa_delete_req"]
    failed = sub["crypto_status"] != CryptoStatus.SUCCESS
    if failed.any():
        frames = outer[failed]
        np.subtract.at(counters, plans["reason"][frames].astype(np.int64), 1)
        np.add.at(counters, sub["reason"][failed].astype(np.int64), 1)
        plans["reason"][frames] = sub["reason"][failed]
        codes = sub["crypto_status"][failed]
        for tunnel_code, transport_code in _TRANSPORT_CODE.items():
            codes = np.where(codes == tunnel_code, transport_code, codes)
        plans["crypto_status"][frames] = codes
    joined = np.concatenate([plans, sub])
    return out2, joined.view(np.uint8)


__all__ = ["ReceiveResult", "run_receive"]
