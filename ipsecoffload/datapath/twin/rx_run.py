"""Twin of the compiled rx_run (datapath/rx_run.pxi): rx_classify of every frame, the open
ops through the backends (one call per op group), then rx_complete — the receive
indication of every frame (CryptoDone, CryptoStatus, the receive header info) and the NIC's
ESN state, with a second open of the frames whose high word was inferred from frames that
did not verify (docs/architecture.md)."""
from __future__ import annotations

import numpy as np

from ...ndis import CryptoStatus
from ..layout import (CRYPTO_OP_DTYPE, RX_PLAN_DTYPE, RX_REASON_COUNT, RX_SA_KEY_DTYPE,
                      RX_STATE_DTYPE, SA_RECORD_DTYPE, OpStatus, RxReason)
from .common import _batch_view, _buffers, _c_ints
from .rx_classify import esn_infer_hi, rx_classify_one, rx_fail, rx_provisional
from .tx_run import run_op_groups


def _count_up(st, seq64: int) -> None:
    """An authenticated (or, provisionally, an earlier) number raises the state's top."""
    if not st["seen"] or seq64 > int(st["top"]):
        st["top"] = seq64
    st["seen"] = 1


def rx_complete_one(frame_in: bytes, frame_out: np.ndarray, p, op, st,
                    delete_after: int = 0) -> None:
    """Read the verified trailer (RFC 4303 §2.4-2.6), or put a failed frame back as it came.
    ``frame_out`` is the frame's writable view of the output arena; ``st`` the committed
    state of the op's key row. With a SaDeleteReq policy (``delete_after`` ICV failures),
    every frame of an SA past it asks for deletion."""
    text_off, text_len, icv_off = int(p["text_off"]), int(p["text_len"]), int(p["icv_off"])
    if op["status"] != OpStatus.DONE and int(st["auth_failures"]) < 0xFFFFFFFF:
        st["auth_failures"] = int(st["auth_failures"]) + 1
    if delete_after and int(st["auth_failures"]) >= delete_after:
        p["sa_delete_req"] = 1

    def restore():
        frame_out[text_off:text_off + text_len] = np.frombuffer(
            frame_in[text_off:text_off + text_len], np.uint8)

    if op["status"] != OpStatus.DONE:
        restore()
        rx_fail(p, RxReason.AUTH_FAILED, CryptoStatus.TUNNEL_ESP_AUTH_FAILED if st["tunnel"]
                else CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
        return
    # authenticated: the sequence number counts for ESN inference whatever follows
    _count_up(st, int(p["seq64"]))
    padl, nh = int(frame_out[icv_off - 2]), int(frame_out[icv_off - 1])
    if padl + 2 > text_len:
        restore()
        rx_fail(p, RxReason.BAD_SYNTAX, CryptoStatus.INVALID_PACKET_SYNTAX)
        return
    pad = bytes(frame_out[icv_off - 2 - padl:icv_off - 2])
    p["pad_ok"] = int(pad == bytes(range(1, padl + 1)))  # RFC 4303 §2.4: 1, 2, 3, ...
    if nh in (4, 41):
        st["tunnel"] = 1
    p["tunnel"] = int(nh in (4, 41))
    p["next_header"] = nh
    p["pad_length"] = padl
    p["header_info_set"] = 1
    p["reason"] = RxReason.OK
    p["crypto_status"] = CryptoStatus.SUCCESS


def rx_retry(out, ops, nretry: int, keys, backends) -> None:
    """Open again the ops marked for a retry (reserved[0] set, status PENDING), as one
    smaller op table; only their status comes back."""
    table = ops.view(CRYPTO_OP_DTYPE)
    picked = [i for i in range(len(table))
              if table[i]["reserved"][0] and table[i]["status"] == OpStatus.PENDING][:nretry]
    retry = table[picked].copy()
    retry["reserved2"][:, 0] = 0
    run_op_groups(out, retry.view(np.uint8), keys, backends, "open")
    for k, i in enumerate(picked):
        table[i]["status"] = retry[k]["status"]


def rx_run(batch, table, rx_state, config, backends, lock, delete_after=0):
    """Receive ``batch`` with the SA table snapshot ``table`` (records_bytes, rx_keys, keys)
    and the NIC's receive state ``rx_state`` (RX_STATE_DTYPE, updated under ``lock``).
    Returns (out, plans, ops, counters), ``out`` a copy of the arena with every verified ESP
    text decrypted in place."""
    _c_ints(config=config)
    config = int(config)
    arena, nb_off, nb_len, nb_nbl, oob = _batch_view(batch)
    records, key_bytes = table.records_bytes, table.rx_keys
    _buffers(records=(records, np.uint8, False), rx_keys=(key_bytes, np.uint8, False))
    state_bytes = rx_state.view(np.uint8)
    _buffers(rx_state=(state_bytes, np.uint8, True))
    if (len(records) % SA_RECORD_DTYPE.itemsize or len(key_bytes) % RX_SA_KEY_DTYPE.itemsize
            or len(state_bytes) % RX_STATE_DTYPE.itemsize):
        raise ValueError("records, rx_keys or rx_state size does not match its layout")
    recs = np.asarray(records).view(SA_RECORD_DTYPE)
    keys = np.asarray(key_bytes).view(RX_SA_KEY_DTYPE)
    states = np.asarray(state_bytes).view(RX_STATE_DTYPE)  # shares rx_state's memory
    nrows = len(states)
    if nrows < 2 * len(recs):
        raise ValueError("rx_state holds fewer rows than the table's key rows")
    n = len(nb_off)
    plans = np.zeros(n, RX_PLAN_DTYPE)
    ops = np.zeros(n, CRYPTO_OP_DTYPE)
    counters = np.zeros(RX_REASON_COUNT, np.int64)
    prov = np.zeros(nrows, RX_STATE_DTYPE)
    touched = np.zeros(nrows, np.uint8)
    out = np.array(arena, dtype=np.uint8, copy=True)
    frames = [bytes(arena[int(nb_off[i]):int(nb_off[i]) + int(nb_len[i])]) for i in range(n)]
    nops = 0
    for i in range(n):
        l2 = int(oob[int(nb_nbl[i])]["l2_len"])
        p, op = plans[i], ops[nops]
        if rx_classify_one(frames[i], l2, config, recs, keys, states, prov, touched, p, op):
            base = int(nb_off[i])
            p["op"] = nops
            op["frame"] = i
            # the op's offsets are frame-relative until here: make them arena offsets
            for name in ("auth_off", "text_off", "icv_off", "ip_off"):
                op[name] += base
            if op["esn"]:
                # later frames of the batch infer their high word as if this one verifies
                _count_up(rx_provisional(states, prov, touched, int(op["key_row"])),
                          int(p["seq64"]))
            nops += 1
    op_bytes = ops.view(np.uint8)[:nops * CRYPTO_OP_DTYPE.itemsize]
    ops = ops[:nops]
    if nops:
        run_op_groups(out, op_bytes, table.keys, backends, "open")

    def frame_out(i):
        return out[int(nb_off[i]):int(nb_off[i]) + int(nb_len[i])]

    nretry = 0
    with lock:
        for i in range(n):
            p = plans[i]
            if p["op"] < 0:
                continue
            op = ops[int(p["op"])]
            st = states[int(op["key_row"])]
            if op["status"] != OpStatus.DONE and op["esn"]:
                # inferred from frames that did not verify: try the committed state
                low = int(p["seq64"]) & 0xFFFFFFFF
                hi = esn_infer_hi(st, int(recs[int(p["slot"])]["xf"][int(p["layer"])]["seq_hi"]),
                                  low)
                if hi != int(op["seq_hi"]):
                    text_off, text_len = int(p["text_off"]), int(p["text_len"])
                    frame_out(i)[text_off:text_off + text_len] = np.frombuffer(
                        frames[i][text_off:text_off + text_len], np.uint8)
                    op["seq_hi"] = hi
                    op["status"] = OpStatus.PENDING
                    op["reserved"][0] = 1  # retried
                    p["seq64"] = (hi << 32) | low
                    nretry += 1
                    continue
            rx_complete_one(frames[i], frame_out(i), p, op, st, delete_after)
        if nretry:
            rx_retry(out, op_bytes, nretry, table.keys, backends)
            for i in range(n):
                p = plans[i]
                if p["op"] >= 0 and ops[int(p["op"])]["reserved"][0]:
                    op = ops[int(p["op"])]
                    rx_complete_one(frames[i], frame_out(i), p, op, states[int(op["key_row"])],
                                    delete_after)
        for i in range(n):
            counters[int(plans[i]["reason"])] += 1
    return out, plans.view(np.uint8), op_bytes, counters
