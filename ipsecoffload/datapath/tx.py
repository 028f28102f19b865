"""The send pipeline (docs/architecture.md):
tx_classify -> tx_plan -> tx_emit -> seal (backends, one call per op group) -> tx_fixup.

It orders the stages and allocates their buffers; every per-packet decision and byte is the
stages' (compiled, or their pure-Python twin) and the crypto backends'.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..ndis import NdisStatus
from .arenas import ArenaRecycler
from .batch import PacketBatch, WireFrames
from .layout import NB_PLAN_DTYPE, REASON_COUNT, Reason


def load_kernels(pure: Optional[bool] = None) -> ModuleType:
    """The compiled stages, or their Python twin when ``pure`` (or IPSECOFFLOAD_PURE=1)."""
    if pure is None:
        pure = os.environ.get("IPSECOFFLOAD_PURE", "") not in ("", "0")
    if pure:
        from . import twin
        return twin
    try:
        from .. import _fastpath
    except ImportError as error:
        raise ImportError(
            "ipsecoffload's compiled kernels are not built: install the package with "
            "'python -m pip install -e .' (or set IPSECOFFLOAD_PURE=1 for the slow "
            "pure-Python kernels)") from error
    return _fastpath


class SendResult:
    """What left the NIC, and how each NET_BUFFER_LIST completed."""

    __slots__ = ("wire", "status", "lso_complete", "counters", "_reasons", "_per_slot",
                 "_plans", "_plan_bytes")

    def __init__(self, wire: WireFrames, status: np.ndarray, lso_complete: np.ndarray,
                 counters: np.ndarray, plans: Optional[np.ndarray] = None, *,
                 plan_bytes: Optional[np.ndarray] = None, reasons: Optional[np.ndarray] = None,
                 segments_per_slot: Optional[dict] = None):
        self.wire = wire  # output frames in order; wire.nb_nbl names the source NBL
        self.status = status  # uint32 NDIS_STATUS per NBL
        self.lso_complete = lso_complete  # uint64 slot-2 value per NBL after completion
        self.counters = counters  # int64: REASON_COUNT reason counts, then status counts
        self._plans, self._plan_bytes = plans, plan_bytes
        self._reasons = reasons
        self._per_slot = segments_per_slot

    @property
    def plans(self) -> np.ndarray:
        """The NB_PLAN_DTYPE row of every input NET_BUFFER (viewed on first use)."""
        if self._plans is None:
            assert self._plan_bytes is not None  # one of the two is always given
            self._plans = self._plan_bytes.view(NB_PLAN_DTYPE)
        return self._plans

    @property
    def reasons(self) -> np.ndarray:
        """uint8 layout.Reason per input NET_BUFFER."""
        if self._reasons is None:
            self._reasons = self.plans["reason"].copy()
        return self._reasons

    @property
    def segments_per_slot(self) -> dict[int, int]:
        """SA slot -> protected frames sent."""
        if self._per_slot is None:
            plans = self.plans
            sending = plans[(plans["slot"] >= 0) & (plans["nsegs"] > 0)]
            counts = np.bincount(sending["slot"], weights=sending["nsegs"]) if len(sending) \
                else np.zeros(0)
            self._per_slot = {int(s): int(c) for s, c in enumerate(counts) if c}
        return self._per_slot

    def reason_counts(self) -> dict[str, int]:
        return {Reason(i).name: int(c) for i, c in enumerate(self.counters[:REASON_COUNT]) if c}

    def status_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.status, return_counts=True)
        return {NdisStatus(int(v)).name: int(c) for v, c in zip(values, counts)}

    @classmethod
    def concat(cls, results: Sequence["SendResult"]) -> "SendResult":
        """One SendResult for several sends made in order (NBL order kept)."""
        if not results:
            raise ValueError("SendResult.concat needs at least one SendResult")
        if len(results) == 1:
            return results[0]
        per_slot: dict[int, int] = {}
        for result in results:
            for slot, count in result.segments_per_slot.items():
                per_slot[slot] = per_slot.get(slot, 0) + count
        return cls(WireFrames.concat([r.wire for r in results]),
                   np.concatenate([r.status for r in results]).astype(np.uint32),
                   np.concatenate([r.lso_complete for r in results]).astype(np.uint64),
                   np.sum([r.counters for r in results], axis=0),
                   reasons=np.concatenate([r.reasons for r in results]).astype(np.uint8),
                   segments_per_slot=per_slot)

    def __repr__(self) -> str:
        return f"SendResult({len(self.status)} NBLs, {self.wire!r})"


def run_send(batch: PacketBatch, table, *, config: int, icv_space: int, iv_source: int,
             kernels: ModuleType, backends: Mapping[int, object],
             random_source: Callable[[int], bytes], marks: Optional[np.ndarray] = None,
             mark_lock=None, limits: Optional[np.ndarray] = None,
             totals: Optional[np.ndarray] = None,
             arenas: Optional[ArenaRecycler] = None) -> SendResult:
    """The send stages over ``batch``; with ``limits`` the LSO limits and the output cap
    apply (docs/send-path.md, "Limits"); with ``marks`` (and its lock) AEAD seals are checked
    against the table's sealed high-water marks (docs/send-path.md, "Nonce safety");
    ``totals`` (int64: the counters, then frames and bytes out) gets this send's added;
    ``arenas`` offers the last send's output arena back once nothing holds it."""
    out, frames, ops, plans, status, lso_done, counters = kernels.tx_run(
        batch, table, int(config), int(icv_space), int(iv_source), backends, random_source,
        marks, mark_lock, limits, totals, arenas.offer() if arenas is not None else None)
    if arenas is not None:
        arenas.keep(out)
    wire = WireFrames(out, table_bytes=frames, oob_bytes=batch.oob_bytes.copy(), status=status)
    return SendResult(wire, status, lso_done, counters, plan_bytes=plans)


def run_ops(arena: np.ndarray, op_bytes: np.ndarray, table, backends: Mapping[int, object],
            kernels: ModuleType, direction: str) -> None:
    """Each op group (pass, kind, suite, key context) through its backend, passes in order."""
    kernels.run_op_groups(arena, op_bytes, table.keys, backends, direction)


def _random_bytes(random_source: Callable[[int], bytes], n: int) -> np.ndarray:
    """Random IV bytes for the NIC-drawn IVs (RFC 3602 §2.2: unpredictable CBC IVs)."""
    if not n:
        return np.zeros(0, np.uint8)
    data = random_source(n)
    if len(data) != n:
        raise ValueError(f"random_source returned {len(data)} bytes, {n} were asked for")
    return np.frombuffer(data, np.uint8)


__all__ = ["SendResult", "load_kernels", "run_ops", "run_send"]
