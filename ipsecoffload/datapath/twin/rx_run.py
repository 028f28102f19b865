"""Twin of the compiled rx_run (datapath/rx_run.pxi): rx_classify of every frame, the AH
verify ops, then the ESP open ops, through the backends (one call per op group), then
rx_complete — the receive
indication of every frame (CryptoDone, CryptoStatus, the receive header info) and the NIC's
ESN state, with a second open of the frames whose high word was inferred from frames that
did not verify (docs/architecture.md)."""
from __future__ import annotations

import numpy as np

from ...ndis import CryptoStatus
from ..layout import (CRYPTO_OP_DTYPE, NAT_T_PORT, RX_PLAN_DTYPE, RX_REASON_COUNT,
                      RX_SA_KEY_DTYPE, RX_STATE_DTYPE, SA_RECORD_DTYPE, OpStatus, RxReason)
from .common import _batch_view, _buffers, _c_ints
from .ah_mutable import ah_zero_ipv4, ah_zero_ipv6
from .rx_classify import (RX_NEEDS_OPEN, RX_NEEDS_VERIFY, esn_infer_hi, rx_classify_one,
                          rx_fail, rx_ports, rx_provisional)
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


def rx_ah_complete_one(p, aop, st, delete_after: int = 0) -> None:
    """The AH layer's verdict: a failed AH fails the frame (its ESP is never opened); a
    verified one counts for ESN inference; AH alone then succeeds."""
    tunnel = int(p["ah_next_header"]) in (4, 41) or bool(st["tunnel"])
    if aop["status"] != OpStatus.DONE:
        if int(st["auth_failures"]) < 0xFFFFFFFF:
            st["auth_failures"] = int(st["auth_failures"]) + 1
        if delete_after and int(st["auth_failures"]) >= delete_after:
            p["sa_delete_req"] = 1
        p["tunnel"] = int(tunnel)
        rx_fail(p, RxReason.AUTH_FAILED, CryptoStatus.TUNNEL_AH_AUTH_FAILED if tunnel
                else CryptoStatus.TRANSPORT_AH_AUTH_FAILED)
        return
    if delete_after and int(st["auth_failures"]) >= delete_after:
        p["sa_delete_req"] = 1
    _count_up(st, int(p["ah_seq64"]))
    if int(p["ah_next_header"]) in (4, 41):
        st["tunnel"] = 1
    if p["op"] < 0:
        p["seq64"] = p["ah_seq64"]
        p["tunnel"] = int(tunnel)
        p["reason"] = RxReason.OK
        p["crypto_status"] = CryptoStatus.SUCCESS


def rx_mark_misled(op, st, seq_hi: int, seq64: int):
    """An ESN op that failed with a high word inferred from frames that did not verify: the
    committed state's inference for a second try; the new 64-bit number, or None."""
    if op["status"] == OpStatus.DONE or not op["esn"]:
        return None
    low = seq64 & 0xFFFFFFFF
    hi = esn_infer_hi(st, seq_hi, low)
    if hi == int(op["seq_hi"]):
        return None
    op["seq_hi"] = hi
    op["status"] = OpStatus.PENDING
    op["reserved"][0] = 1  # retried
    return (hi << 32) | low


def rx_open_pending(out, ops, keys, backends) -> None:
    """Open the ops still PENDING (a bundle's ESP whose AH failed is not), as one op table."""
    table = ops.view(CRYPTO_OP_DTYPE)
    picked = [i for i in range(len(table)) if table[i]["status"] == OpStatus.PENDING]
    if len(picked) == len(table):
        run_op_groups(out, ops, keys, backends, "open")
        return
    if not picked:
        return
    sub = table[picked].copy()
    run_op_groups(out, sub.view(np.uint8), keys, backends, "open")
    for k, i in enumerate(picked):
        table[i]["status"] = sub[k]["status"]


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


def rx_run(batch, table, rx_state, config, backends, lock, delete_after=0,
           nat_t_ports=(NAT_T_PORT,), reuse=None):
    """Receive ``batch`` with the SA table snapshot ``table`` (records_bytes, rx_keys, keys)
    and the NIC's receive state ``rx_state`` (RX_STATE_DTYPE, updated under ``lock``); UDP to
    or from one of ``nat_t_ports`` is UDP-ESP.
    Returns (out, plans, ops, counters), ``out`` a copy of the arena with every verified ESP
    text decrypted in place, ``ops`` the ESP open ops, then the AH verify ops."""
    _c_ints(config=config)
    config = int(config)
    ports = rx_ports(nat_t_ports)
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
    asize = len(arena)
    plans = np.zeros(n, RX_PLAN_DTYPE)
    ops = np.zeros(n, CRYPTO_OP_DTYPE)
    ah_ops = np.zeros(n, CRYPTO_OP_DTYPE)
    counters = np.zeros(RX_REASON_COUNT, np.int64)
    prov = np.zeros(nrows, RX_STATE_DTYPE)
    touched = np.zeros(nrows, np.uint8)
    frames = [bytes(arena[int(nb_off[i]):int(nb_off[i]) + int(nb_len[i])]) for i in range(n)]
    nops = nah = copy_len = 0
    for i in range(n):
        l2 = int(oob[int(nb_nbl[i])]["l2_len"])
        p, op, aop = plans[i], ops[nops], ah_ops[nah]
        needs = rx_classify_one(frames[i], l2, config, recs, keys, states, prov, touched, p,
                                op, aop, ports)
        base = int(nb_off[i])
        if needs & RX_NEEDS_VERIFY:
            p["ah_op"] = nah
            aop["frame"] = i
            for name in ("text_off", "icv_off", "ip_off"):
                aop[name] += base
            p["ah_copy"] = asize + copy_len  # the ICV-input copy goes after the frames
            aop["auth_off"] = p["ah_copy"]
            copy_len += int(p["ah_off"]) + int(p["ah_len"]) - int(p["ip_off"])
            if aop["esn"]:
                _count_up(rx_provisional(states, prov, touched, int(aop["key_row"])),
                          int(p["ah_seq64"]))
            nah += 1
        if needs & RX_NEEDS_OPEN:
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
    # the frames, then each AH frame's ICV input: its header region with the mutable fields
    # and the ICV zeroed (RFC 4302 §3.3.3.1)
    out = np.zeros(asize + copy_len, np.uint8)
    out[:asize] = arena
    for i in range(n):
        p = plans[i]
        if p["ah_op"] < 0:
            continue
        aop = ah_ops[int(p["ah_op"])]
        ip_off, ah_rel = int(p["ip_off"]), int(p["ah_off"]) - int(p["ip_off"])
        copy = bytearray(frames[i][ip_off:ip_off + ah_rel + int(p["ah_len"])])
        if p["ipv6"]:
            ah_zero_ipv6(copy, ah_rel)
        else:
            ah_zero_ipv4(copy, (copy[0] & 0xF) * 4)
        icv = ah_rel + 12 + int(aop["iv_len"])
        copy[icv:icv + int(aop["icv_len"])] = bytes(int(aop["icv_len"]))
        at = int(p["ah_copy"])
        out[at:at + len(copy)] = np.frombuffer(bytes(copy), np.uint8)
    ops, ah_ops = ops[:nops], ah_ops[:nah]
    op_bytes = ops.view(np.uint8)
    ah_bytes = ah_ops.view(np.uint8)

    def frame_out(i):
        return out[int(nb_off[i]):int(nb_off[i]) + int(nb_len[i])]

    def ah_failed(p) -> bool:
        return p["ah_op"] >= 0 and ah_ops[int(p["ah_op"])]["status"] != OpStatus.DONE

    if nah:
        run_op_groups(out, ah_bytes, table.keys, backends, "open")
        with lock:
            nretry = 0
            for i in range(n):
                p = plans[i]
                if p["ah_op"] < 0:
                    continue
                aop = ah_ops[int(p["ah_op"])]
                st = states[int(aop["key_row"])]
                again = rx_mark_misled(aop, st, int(
                    recs[int(p["slot"])]["xf"][int(p["ah_layer"])]["seq_hi"]), int(p["ah_seq64"]))
                if again is not None:
                    p["ah_seq64"] = again
                    nretry += 1
                    continue
                rx_ah_complete_one(p, aop, st, delete_after)
            if nretry:
                rx_retry(out, ah_bytes, nretry, table.keys, backends)
                for i in range(n):
                    p = plans[i]
                    if p["ah_op"] >= 0 and ah_ops[int(p["ah_op"])]["reserved"][0]:
                        aop = ah_ops[int(p["ah_op"])]
                        rx_ah_complete_one(p, aop, states[int(aop["key_row"])], delete_after)
            for i in range(n):
                p = plans[i]
                if p["op"] >= 0 and ah_failed(p):
                    ops[int(p["op"])]["status"] = OpStatus.AUTH_FAILED  # never opened
    if nops:
        rx_open_pending(out, op_bytes, table.keys, backends)

    def complete(i, p, op):
        rx_complete_one(frames[i], frame_out(i), p, op, states[int(op["key_row"])],
                        delete_after)
        if p["ah_op"] >= 0 and p["tunnel"]:
            states[int(ah_ops[int(p["ah_op"])]["key_row"])]["tunnel"] = 1

    nretry = 0
    with lock:
        for i in range(n):
            p = plans[i]
            if p["op"] < 0 or ah_failed(p):
                continue
            op = ops[int(p["op"])]
            st = states[int(op["key_row"])]
            again = rx_mark_misled(op, st, int(
                recs[int(p["slot"])]["xf"][int(p["layer"])]["seq_hi"]), int(p["seq64"]))
            if again is not None:
                # inferred from frames that did not verify: try the committed state
                text_off, text_len = int(p["text_off"]), int(p["text_len"])
                frame_out(i)[text_off:text_off + text_len] = np.frombuffer(
                    frames[i][text_off:text_off + text_len], np.uint8)
                p["seq64"] = again
                nretry += 1
                continue
            complete(i, p, op)
        if nretry:
            rx_retry(out, op_bytes, nretry, table.keys, backends)
            for i in range(n):
                p = plans[i]
                if p["op"] >= 0 and ops[int(p["op"])]["reserved"][0] and not ah_failed(p):
                    complete(i, p, ops[int(p["op"])])
        for i in range(n):
            counters[int(plans[i]["reason"])] += 1
            if plans[i]["ah_op"] >= 0:
                plans[i]["ah_op"] += nops
    all_ops = np.concatenate([ops, ah_ops]).view(np.uint8)
    return out[:asize], plans.view(np.uint8), all_ops, counters


def rx_nested_candidates(plans, n: int) -> int:
    """How many of the first ``n`` plans are verified tunnel layers whose inner packet may
    carry a second layer (datapath/rx.py runs those again)."""
    _buffers(plans=(plans, np.uint8, False))
    if len(plans) < n * RX_PLAN_DTYPE.itemsize or n < 0:
        raise ValueError("plans holds fewer than n RxPlan rows")
    count = 0
    for p in np.asarray(plans)[:n * RX_PLAN_DTYPE.itemsize].view(RX_PLAN_DTYPE):
        if p["reason"] != RxReason.OK or not p["crypto_done"]:
            continue
        if p["op"] >= 0:
            nh = int(p["next_header"])
        elif p["ah_off"]:
            nh = int(p["ah_next_header"])
        else:
            continue
        count += nh in (4, 41)
    return count
