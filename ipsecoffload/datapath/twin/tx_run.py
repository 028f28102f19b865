"""Twin of the compiled tx_run (datapath/tx_run.pxi): the send stages in order."""
from __future__ import annotations

import numpy as np

from ..layout import COUNTERS, CRYPTO_OP_DTYPE, NB_PLAN_DTYPE, NBL_OOB_DTYPE, WIRE_FRAME_DTYPE
from .op_groups import op_groups
from .tx_classify import tx_classify
from .tx_emit import tx_emit
from .tx_fixup import tx_fixup
from .tx_plan import tx_limit, tx_mark, tx_plan


def tx_run(batch, table, config, icv_space, iv_source, backends, random_source, marks=None,
           mark_lock=None, limits=None, totals=None, reuse=None):
    records = table.records_bytes
    plans = np.empty(len(batch.nb_off) * NB_PLAN_DTYPE.itemsize, np.uint8)
    tx_classify(batch, records, config, icv_space, iv_source, plans)
    if limits is not None:
        tx_limit(batch, plans, limits)
    if marks is not None:
        with mark_lock:
            tx_mark(batch, records, plans, marks)
    n_nbl = len(batch.oob_bytes) // NBL_OOB_DTYPE.itemsize
    status = np.empty(n_nbl, np.uint32)
    lso_done = np.empty(n_nbl, np.uint64)
    counters = np.empty(COUNTERS, np.int64)
    out_bytes, n_frames, n_ops, rand_bytes = tx_plan(batch, records, plans, status, lso_done,
                                                     counters)
    arena = np.empty(out_bytes, np.uint8)  # the frames, then the AH scratch
    frames = np.empty(n_frames * WIRE_FRAME_DTYPE.itemsize, np.uint8)
    ops = np.empty(n_ops * CRYPTO_OP_DTYPE.itemsize, np.uint8)
    rand = b""
    if rand_bytes:
        rand = random_source(rand_bytes)
        if len(rand) != rand_bytes:
            raise ValueError(f"random_source returned {len(rand)} bytes, {rand_bytes} were "
                             f"asked for")
    tx_emit(batch, records, plans, np.frombuffer(rand, np.uint8), arena, frames, ops)
    if n_ops:
        run_op_groups(arena, ops, table.keys, backends, "seal")
        tx_fixup(arena, ops)
    plan = plans.view(NB_PLAN_DTYPE)
    frames_bytes = int(plan["out_len"].sum()) if len(plan) else 0
    out = arena[:frames_bytes] if frames_bytes != len(arena) else arena
    if totals is not None:  # the counters, then frames and bytes out
        totals[:COUNTERS] += counters
        totals[COUNTERS] += n_frames
        totals[COUNTERS + 1] += frames_bytes
    return out, frames, ops, plans, status, lso_done, counters


def run_op_groups(arena, ops, keys, backends, direction):
    order, groups = op_groups(ops)
    for start, end, _pass, _kind, suite, key_row in groups.tolist():
        getattr(backends[suite], direction)(arena, ops, order[start:end], keys[key_row])
