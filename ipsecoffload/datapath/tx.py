"""The send pipeline (design §4): classify -> plan -> emit -> seal -> finalize -> complete.

It orders the stages and owns the buffers; the per-packet work happens in the kernels
(compiled, or their pure-Python twin) and in the crypto backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Optional

import numpy as np

from ..datapath.batch import PacketBatch
from ..crypto import CryptoBackend, JobTable
from ..datapath.layout import NB_PLAN_DTYPE, IcvSpace, IvSource, Reason, Suite
from ..ndis import NdisStatus
from ..control.satable import TableSnapshot

_LSO_TYPE_BIT = 1 << 30  # spec §5.4


def load_kernels(pure: Optional[bool] = None) -> ModuleType:
    """The compiled kernels, or their Python twin when ``pure`` (or IPSECOFFLOAD_PURE=1)."""
    if pure is None:
        pure = os.environ.get("IPSECOFFLOAD_PURE", "") not in ("", "0")
    if pure:
        from . import twin as _pykernels
        return _pykernels
    try:
        from .. import _fastpath
    except ImportError as error:
        raise ImportError(
            "ipsecoffload's compiled kernels are not built: install the package with "
            "'python -m pip install -e .' (or set IPSECOFFLOAD_PURE=1 for the slow "
            "pure-Python kernels)") from error
    return _fastpath


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    if len(values) > 1:
        np.cumsum(values[:-1], out=out[1:])
    return out


@dataclass
class SendResult:
    """What left the NIC, and how each NET_BUFFER_LIST completed (spec §6.1 step 5)."""
    wire: PacketBatch  # output frames in order; wire.nb_nbl names the source NBL
    status: np.ndarray  # uint32 NDIS_STATUS per NBL
    reasons: np.ndarray  # uint8 layout.Reason per input NET_BUFFER
    lso_complete: np.ndarray  # uint64 slot-2 value per NBL after completion (0 if no LSO)
    segments_per_slot: dict = field(default_factory=dict)  # SA slot -> protected frames

    def reason_counts(self) -> dict[str, int]:
        counts = np.bincount(self.reasons, minlength=len(Reason))
        return {Reason(i).name: int(c) for i, c in enumerate(counts) if c}

    def status_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.status, return_counts=True)
        return {NdisStatus(int(v)).name: int(c) for v, c in zip(values, counts)}


def run_send(batch: PacketBatch, table: TableSnapshot, *, config: int, icv_space: IcvSpace,
             iv_source: IvSource, kernels: ModuleType, backend: CryptoBackend,
             random_source: Callable[[int], bytes]) -> SendResult:
    n_nb = batch.num_buffers
    plans = np.zeros(n_nb * NB_PLAN_DTYPE.itemsize, np.uint8)
    status = np.zeros(len(batch), np.uint32)
    kernels.classify(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, batch.nb_count(),
                     batch.offload_handle, batch.tunnel_handle, batch.next_header,
                     batch.pad_length, batch.ah_off4, batch.esp_off4, batch.lso_info,
                     batch.l2_len, table.records_bytes, int(config), int(icv_space), plans,
                     status)

    # plan: where each buffer's output goes, and which jobs it owns
    plan = plans.view(NB_PLAN_DTYPE)
    nsegs = plan["nsegs"].astype(np.int64)
    protected = np.where(plan["slot"] >= 0, nsegs, 0)
    nb_out_pos = _exclusive_cumsum(plan["out_len"])
    nb_frame = _exclusive_cumsum(nsegs)
    nb_job = _exclusive_cumsum(protected)
    n_frames, n_jobs = int(nsegs.sum()), int(protected.sum())
    out = np.empty(int(plan["out_len"].sum()), np.uint8)
    out_off = np.empty(n_frames, np.int64)
    out_len = np.empty(n_frames, np.int64)
    out_nbl = np.empty(n_frames, np.int32)
    jobs = JobTable.empty(n_jobs)
    rand = _random_ivs(plan, table, n_jobs, random_source)

    kernels.emit(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, plans,
                 table.records_bytes, int(iv_source), rand, nb_out_pos, nb_frame, nb_job, out,
                 out_off, out_len, out_nbl, jobs.slot, jobs.esp, jobs.text, jobs.text_len,
                 jobs.icv, jobs.seq_hi, jobs.post, jobs.udp, jobs.ip)
    backend.seal(out, jobs, table.keys)
    kernels.finalize(out, table.records_bytes, jobs.slot, jobs.icv, jobs.post, jobs.udp,
                     jobs.ip)

    wire = PacketBatch(out, out_off, out_len, out_nbl, n_nbl=len(batch),
                       **{name: getattr(batch, name) for name in
                          ("offload_handle", "tunnel_handle", "next_header", "pad_length",
                           "ah_off4", "esp_off4", "lso_info", "checksum_info", "l2_len")},
                       status=status)
    per_slot = np.bincount(jobs.slot, minlength=0) if n_jobs else np.zeros(0, np.int64)
    return SendResult(wire=wire, status=status, reasons=plan["reason"].copy(),
                      lso_complete=_lso_completion(batch, plan, status),
                      segments_per_slot={int(s): int(c) for s, c in enumerate(per_slot) if c})


def _random_ivs(plan: np.ndarray, table: TableSnapshot, n_jobs: int,
                random_source: Callable[[int], bytes]) -> np.ndarray:
    """Random IV bytes, one 16-byte slice per job, when any job needs a CBC IV (spec §8.6)."""
    slots = plan["slot"][plan["slot"] >= 0]
    if not n_jobs or not np.any(table.records["suite"][slots] == Suite.AES_CBC_HMAC):
        return np.zeros(0, np.uint8)
    need = 16 * n_jobs
    data = random_source(need)
    if len(data) != need:
        raise ValueError(f"random_source returned {len(data)} bytes, {need} were asked for")
    return np.frombuffer(data, np.uint8)


def _lso_completion(batch: PacketBatch, plan: np.ndarray, status: np.ndarray) -> np.ndarray:
    """spec §6.8 Completion: LSOv1 reports the TCP payload sent; LSOv2 keeps only its type."""
    done = np.zeros(len(batch), np.uint64)
    lso = batch.lso_info
    if not np.any(lso):
        return done
    v2 = (lso & np.uint64(_LSO_TYPE_BIT)) != 0
    payload = np.zeros(len(batch), np.uint64)
    lso_nb = plan["lso"] != 0
    np.add.at(payload, batch.nb_nbl[lso_nb], plan["body_len"][lso_nb].astype(np.uint64))
    payload[status != 0] = 0
    done[:] = np.where(v2, np.uint64(_LSO_TYPE_BIT), payload & np.uint64((1 << 30) - 1))
    done[lso == 0] = 0
    return done
