"""Host stack framing of whole batches in compiled code (docs/send-path.md, "Host framing").

``host_classify`` (link header, IP parse, first-match selectors, LSO decision) and
``host_frame`` (frames, NBL out-of-band info, sequence numbers per SA) run over a batch in
``_fastpath`` (host/tx_frame.pxi). This module holds their table layouts, builds the per-SA
templates once, and drives the sends: bundles offloaded before framing, ESN high words kept in
step with UPDATE_SA between sends (docs/protocol.md), packets that cannot go reported with their
index, never failing the rest. ``HostStack``'s Python framer (host/stack.py) is the twin the
tests compare with byte for byte, and the path for what is not framed here (caller IVs).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from ..datapath.batch import PacketBatch
from ..datapath.layout import NBL_OOB_DTYPE
from ..datapath.tx import SendResult

HOST_SELECTOR_DTYPE = np.dtype([
    ("src_net", np.uint8, (16,)), ("src_mask", np.uint8, (16,)), ("dst_net", np.uint8, (16,)),
    ("dst_mask", np.uint8, (16,)), ("sport", np.uint16), ("dport", np.uint16),
    ("src_version", np.uint8), ("dst_version", np.uint8), ("n_protos", np.uint8),
    ("protos", np.uint8, (2,)), ("has_sport", np.uint8), ("has_dport", np.uint8),
    ("tunnel", np.uint8), ("reserved", np.uint8, (4,)),
], align=True)

HOST_PKT_DTYPE = np.dtype([
    ("off", np.int64), ("ts_ns", np.int64), ("cap_len", np.int32), ("l2_len", np.int32),
    ("ip_len", np.int32), ("l4_off", np.int32), ("nh_at", np.int32), ("tcp_len", np.int32),
    ("sa", np.int32), ("nsn", np.int32), ("sn", np.uint64), ("nbl", np.int32),
    ("iface", np.int32), ("kind", np.uint8), ("fault", np.uint8), ("version", np.uint8),
    ("proto", np.uint8), ("link", np.uint8), ("reserved", np.uint8, (3,)),
], align=True)

HOST_SA_DTYPE = np.dtype([
    ("handle", np.uint64, (2,)), ("next_seq", np.uint64), ("limit", np.uint64),
    ("first_sn", np.uint64), ("last_sn", np.uint64), ("spi", np.uint32),
    ("udp_sport", np.uint16), ("udp_dport", np.uint16), ("tunnel", np.uint8),
    ("outer_ipv6", np.uint8), ("udp_encap", np.uint8), ("iv_len", np.uint8),
    ("icv_len", np.uint8), ("align", np.uint8), ("esn", np.uint8), ("versions", np.uint8),
    ("used", np.uint8), ("ah", np.uint8), ("ah_body", np.uint8), ("reserved", np.uint8, (2,)),
    ("ah_spi", np.uint32), ("tun_src", np.uint8, (16,)),
    ("tun_dst", np.uint8, (16,)), ("via", np.int32), ("reserved2", np.uint8, (4,)),
], align=True)

PKT_DROP, PKT_NOT_IP, PKT_CLEAR, PKT_ESP, PKT_LSO = range(5)

# fault code -> text; below FAULT_REFUSED_FIRST a malformed packet, from it on a refusal of
# the host stack (the summary's words, kept from the Python capture path)
MALFORMED_TEXT = {1: "empty", 2: "not IPv4 or IPv6", 3: "truncated", 4: "bad IPv4 header",
                  5: "bad TCP header", 6: "truncated link header",
                  7: "IP fragment (IPsec is not offloaded for fragments)"}
FAULT_REFUSED_FIRST = 16
FAULT_EXHAUSTED = 21
REFUSED = "refused by the host stack"
EXHAUSTED = "sequence numbers exhausted"
FAULT_DETAIL = {16: "the SA's bundle cannot carry this IP version",
                17: "the datagram would exceed 65535 bytes",
                18: "ESP would start beyond what EspHeaderOffset can hold",
                19: "LSO parameters that cannot work", 20: "no bundle offloaded",
                21: EXHAUSTED, 22: "output arena full"}


def fault_text(code: int) -> str:
    """Words for a fault code (the summary's, or the detail of a refusal)."""
    return MALFORMED_TEXT.get(code) or FAULT_DETAIL.get(code, f"fault {code}")


def summary_reason(code: int) -> str:
    """The summary's key for a dropped packet's fault."""
    if code < FAULT_REFUSED_FIRST:
        return MALFORMED_TEXT.get(code, "malformed")
    return EXHAUSTED if code == FAULT_EXHAUSTED else REFUSED


_KERNELS: dict = {}


def kernels():
    """The compiled module, or None (pure-Python mode or not built)."""
    key = os.environ.get("IPSECOFFLOAD_PURE", "")
    if key not in _KERNELS:
        from ..datapath.tx import load_kernels
        try:
            module = load_kernels()
        except ImportError:
            module = None
        _KERNELS[key] = module if hasattr(module, "host_frame") else None
    return _KERNELS[key]


# -- tables -----------------------------------------------------------------------------------
def selector_table(policies) -> np.ndarray:
    """HostSelector rows of SA-file policies (io/safile.py Selector), in file order."""
    table = np.zeros(len(policies), HOST_SELECTOR_DTYPE)
    for row, policy in zip(table, policies):
        sel = policy.selector
        for side, net in (("src", sel._src_net), ("dst", sel._dst_net)):
            if net is None:
                continue
            size = 4 if net.version == 4 else 16
            row[f"{side}_version"] = net.version
            row[f"{side}_net"][:size] = np.frombuffer(net.network_address.packed, np.uint8)
            row[f"{side}_mask"][:size] = np.frombuffer(net.netmask.packed, np.uint8)
        if sel._protos is not None:
            row["n_protos"] = len(sel._protos)
            row["protos"][:len(sel._protos)] = sel._protos
        for side in ("sport", "dport"):
            if getattr(sel, side) is not None:
                row[f"has_{side}"] = 1
                row[side] = getattr(sel, side)
        # never LSO: a tunnel SA's packets, and a transport SA's over a tunnel (``via``)
        row["tunnel"] = policy.config.mode == "tunnel" or getattr(policy, "via", None) is not None
    return table


def sa_table(sas: Sequence) -> np.ndarray:
    """HostSa templates of StackSa objects (chosen once per SA: outer header, UDP, AH, ESP).
    A transport SA over a tunnel (``via``) names the tunnel SA's row, which must be in
    ``sas`` too."""
    table = np.zeros(len(sas), HOST_SA_DTYPE)
    rows = {id(sa): k for k, sa in enumerate(sas)}
    for k, sa in enumerate(sas):
        via = getattr(sa, "via", None)
        if via is not None and id(via) not in rows:
            raise ValueError("a via SA's tunnel SA must be in the table too")
        # an SA's row depends on its config and endpoints alone: made once, kept on the SA
        template = getattr(sa, "_host_sa_row", None)
        if template is None:
            template = _sa_row(sa)
            try:
                sa._host_sa_row = template
            except AttributeError:
                pass
        table[k] = template
        table["via"][k] = rows[id(via)] if via is not None else -1
    return table


def _sa_row(sa) -> np.ndarray:
    """One HostSa row of an SA (its ``via`` left to sa_table)."""
    row = np.zeros((), HOST_SA_DTYPE)
    config = sa.config
    row["spi"] = config.spi
    protocol = getattr(config, "protocol", "esp")
    if protocol != "esp":
        row["ah"] = 1 if protocol == "ah" else 2
        row["ah_spi"] = config.ah_layer[0]
        row["ah_body"] = 12 + config.ah_iv_len + config.ah_icv
    row["iv_len"], row["icv_len"], row["align"] = config.iv_len, config.icv, config.align
    row["esn"] = config.esn
    row["limit"] = 2**64 - 1 if config.esn else 2**32 - 1
    row["versions"] = sum(1 << int(v6) for v6 in sa.bundle_versions)
    if config.udp_encap:
        row["udp_encap"] = 1
        row["udp_sport"], row["udp_dport"] = config.udp_encap
    if config.mode == "tunnel":
        row["tunnel"] = 1
        src, dst = sa._tunnel_endpoints
        row["outer_ipv6"] = len(src) == 16
        row["tun_src"][:len(src)] = np.frombuffer(src, np.uint8)
        row["tun_dst"][:len(dst)] = np.frombuffer(dst, np.uint8)
    row.flags.writeable = False
    return row


def _layers_supported(sa) -> bool:
    return getattr(sa.config, "protocol", "esp") in ("esp", "ah", "ah+esp")


def supported(sa) -> bool:
    """Whether the compiled framer frames this SA alone: ESP, AH or AH + ESP. A transport SA
    over a tunnel SA (``via``) is framed with its tunnel SA's row in the same table
    (``stack_send``, the capture path); ``send_batch`` sends it run by run through
    host/stack.py."""
    return (_layers_supported(sa) and getattr(sa.config, "via", None) is None
            and getattr(sa, "via", None) is None)


# -- one framed send --------------------------------------------------------------------------
class FramedPart(NamedTuple):
    """One miniport send: packets [start, stop) of the batch, their NBLs in ``result`` (the
    framed PacketBatch itself when the batch was only framed, not sent)."""
    start: int
    stop: int
    result: Union[SendResult, PacketBatch]


def _ensure_bundles(stack, sas, table: np.ndarray, pkts: np.ndarray) -> None:
    """ADD_SA for every (SA, IP version) the batch's protected packets need (the stack's
    _ensure_bundle, once per pair)."""
    for key in kernels().host_missing_bundles(pkts.view(np.uint8), len(pkts),
                                               table.view(np.uint8), len(sas)):
        s, b = divmod(key, 2)
        table["handle"][s, b] = stack._ensure_bundle(sas[s], bool(b))


def _load_seq(sas, table: np.ndarray) -> None:
    table["next_seq"] = [sa.next_seq if sa.next_seq < 2**64 else 0 for sa in sas]


def _sync_seq_his(stack, sas: Sequence, rows: np.ndarray, table: np.ndarray, field: str) -> None:
    """UPDATE_SA where an ESN SA's bundle the batch used (``rows``) holds another high word than
    the SA number in ``field`` (first_sn / last_sn) has: the stack's _sync_seq_hi, called only
    for the SAs whose high word moves (a capture over many SAs pays a compare per SA)."""
    used = table["used"][rows].tolist()
    his = (table[field][rows] >> np.uint64(32)).tolist()
    for s, bits, hi in zip(rows.tolist(), used, his):
        sa = sas[s]
        known = sa._nic_seq_hi
        if (not bits & 1 or known.get(False) == hi) and (not bits & 2 or known.get(True) == hi):
            continue
        stack._sync_seq_hi(sa, [b for b in (False, True) if (bits >> int(b)) & 1], hi)


def frame_and_send(stack, arena: np.ndarray, pkts: np.ndarray, sas: Sequence,
                   table: np.ndarray, *, l2_mode: int, mss: int = 0,
                   send: bool = True, scratch: Optional[dict] = None,
                   sender=None, on_part=None) -> list:
    """Frame every packet of ``pkts`` (classified HostPkt rows over ``arena``) and send them
    through the stack's miniport in as few sends as ESN allows. Returns the FramedParts (with
    ``send=False`` one part whose ``result`` is the PacketBatch). The caller holds the lock.
    ``scratch`` (a dict the caller keeps) lets batch after batch reuse the same buffers.
    ``sender(batch, pkts, start, stop)`` replaces ``miniport.send`` (io/capture.py's workers
    send shards of the batch at once, between the same UPDATE_SA requests). A framed batch
    whose output could pass the miniport's ``max_send_output`` goes in several sends, one
    part each (docs/send-path.md, "Limits"); ``on_part(part)``, if given, takes every sent
    part as it is made (so the caller can write it and let it go) instead of the list."""
    fp = kernels()
    n = len(pkts)
    _ensure_bundles(stack, sas, table, pkts)
    ip_bytes = int(pkts["cap_len"].sum()) if n else 0
    # per packet at most: Ethernet 14, outer IPv6 40, UDP 8, AH 56 (12 + 8-byte IV + 32-byte
    # ICV, padded to 8), ESP header 8 + IV 16, padding 15, trailer 2, ICV room 32: 191
    # (twice that over a tunnel: ``via``)
    per_packet = 384 if (table["via"] >= 0).any() else 192
    out, nb_off, nb_len, oob = _buffers(scratch, ip_bytes + per_packet * n + 64, n)
    oob_bytes = oob.view(np.uint8)
    macs = stack.dst_mac + stack.src_mac
    df = {"copy": 0, "set": 1, "clear": 2}[stack.tunnel_df]
    pkt_bytes = pkts.view(np.uint8)
    table_bytes = table.view(np.uint8)
    parts = []
    start = 0
    while True:
        _load_seq(sas, table)
        nbls, used, stop, ipv4_id = fp.host_frame(
            arena, pkt_bytes, start, n, table_bytes, len(sas), l2_mode, macs, stack.ttl, df,
            stack.next_ipv4_id, mss, out, nb_off, nb_len, oob_bytes)
        stack.next_ipv4_id = ipv4_id
        touched = np.flatnonzero(table["used"])
        for s, nxt in zip(touched.tolist(), table["next_seq"][touched].tolist()):
            sas[s].next_seq = nxt if nxt else 2**64
        batch = _batch(out[:used], nb_off[:nbls], nb_len[:nbls], oob[:nbls])
        if not send:
            parts.append(FramedPart(start, stop, batch))
        else:
            esn = touched[table["esn"][touched] != 0]
            _sync_seq_his(stack, sas, esn, table, "first_sn")
            if hasattr(stack, "fill_fresh_ivs"):
                stack.fill_fresh_ivs(batch)  # Miniport(iv_source="packet"): fresh IVs
            for part in _send_by_output(stack, batch, pkts, start, stop, sender):
                if on_part is not None:
                    on_part(part)
                else:
                    parts.append(part)
            # an LSO super-packet may end in the next high word (docs/send-path.md)
            _sync_seq_his(stack, sas, esn, table, "last_sn")
        if stop >= n:
            return parts
        start = stop


def _send_by_output(stack, batch, pkts: np.ndarray, start: int, stop: int, sender):
    """The framed ``batch`` of packets start .. stop in sends whose output bound stays within
    the miniport's ``max_send_output``: one FramedPart per send, its packets' ``nbl``
    renumbered to its own NBLs (the FramedPart convention)."""
    from .stack import split_by_output, sub_batch
    cap = getattr(stack.miniport, "max_send_output", None)
    runs = split_by_output(batch, cap) if cap is not None and len(batch.oob) else []
    if len(runs) < 2:
        result = stack.miniport.send(batch) if sender is None \
            else sender(batch, pkts, start, stop)
        yield FramedPart(start, stop, result)
        return
    nbl = pkts["nbl"][start:stop]
    bounds = [start] + [start + int(np.flatnonzero(nbl >= int(run[0]))[0]) for run in runs[1:]]
    bounds.append(stop)
    for r, run in enumerate(runs):
        lo, hi = bounds[r], bounds[r + 1]
        rows = pkts["nbl"][lo:hi]
        rows[rows >= 0] -= int(run[0])
        sub = sub_batch(batch, run)
        result = stack.miniport.send(sub) if sender is None else sender(sub, pkts, lo, hi)
        yield FramedPart(lo, hi, result)


# HostStack.send keeps its framing buffers for the next send up to this size
SCRATCH_KEEP_MAX = 8 << 20


def _buffers(scratch: Optional[dict], size: int, n: int) -> tuple:
    """The framing buffers: fresh, or the caller's kept ones when they are big enough (large
    fresh buffers cost a page fault per page, batch after batch)."""
    if scratch is not None and scratch.get("size", -1) >= size and scratch.get("n", -1) >= n:
        return scratch["out"], scratch["nb_off"], scratch["nb_len"], scratch["oob"]
    bufs = (np.empty(size, np.uint8), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(max(n, 1), NBL_OOB_DTYPE))
    if scratch is not None:
        scratch.update(size=size, n=n, out=bufs[0], nb_off=bufs[1], nb_len=bufs[2],
                       oob=bufs[3])
    return bufs


def _batch(arena: np.ndarray, nb_off: np.ndarray, nb_len: np.ndarray,
           oob: np.ndarray) -> PacketBatch:
    """A PacketBatch of one NET_BUFFER per NBL from arrays host_frame filled and checked
    (frames inside the arena, in order), without the constructor's checks of untrusted input.
    The batch uses ``oob`` itself (the sender copies what it keeps)."""
    n = len(nb_off)
    batch = PacketBatch.__new__(PacketBatch)
    batch.arena, batch.nb_off, batch.nb_len = arena, nb_off, nb_len
    batch.nb_nbl = np.arange(n, dtype=np.int32)
    oob["nb_count"] = 1
    oob["first_nb"] = batch.nb_nbl
    batch._set_oob(oob)
    return batch


def _bundles(table: np.ndarray, s: int) -> list:
    used = int(table["used"][s])
    return [b for b in (False, True) if (used >> int(b)) & 1]


# -- HostStack.send / build dispatch -----------------------------------------------------------
def _pack(packets, scratch: Optional[dict] = None) -> Optional[tuple]:
    """One arena and HostPkt rows for a list of bytes-like packets; None if one is not.
    ``scratch`` (a dict the caller keeps): bytes packets are copied into its buffer, kept for
    the next call up to SCRATCH_KEEP_MAX, instead of a new one."""
    chunks = packets if isinstance(packets, list) else list(packets)
    fp = kernels()
    if fp is not None and chunks:  # bytes packets: the rows (and the copy) in compiled code
        pkts = np.zeros(len(chunks), HOST_PKT_DTYPE)
        total = fp.host_pack_rows(chunks, pkts.view(np.uint8))
        if total >= 0:
            if scratch is None or total > SCRATCH_KEEP_MAX:
                return np.frombuffer(b"".join(chunks), np.uint8), pkts
            buf = scratch.get("packets")
            if buf is None or len(buf) < total:
                buf = scratch["packets"] = np.empty(max(total, 1 << 16), np.uint8)
            fp.host_pack(chunks, buf, pkts.view(np.uint8))
            return buf[:total], pkts
    if set(map(type, chunks)) <= {bytes}:  # len is the size
        lengths = np.fromiter(map(len, chunks), np.int64, len(chunks))
    else:
        if not all(isinstance(packet, (bytes, bytearray, memoryview)) for packet in chunks):
            return None
        lengths = np.fromiter((memoryview(c).nbytes for c in chunks), np.int64, len(chunks))
    pkts = np.zeros(len(chunks), HOST_PKT_DTYPE)
    if not chunks:
        return np.zeros(0, np.uint8), pkts
    pkts["cap_len"] = lengths
    np.cumsum(lengths[:-1], out=pkts["off"][1:])
    return np.frombuffer(b"".join(chunks), np.uint8), pkts


def stack_send(stack, packets, sa, *, send: bool = True):
    """HostStack.send / build of one SA in compiled code (a ``via`` SA with its tunnel SA), or
    None when the Python framer
    must run instead (it then raises what it raises today): a packet it refuses, too few
    sequence numbers, an ESN high-word crossing, pure-Python kernels. Same frames, OOB info,
    sequence numbers, IPv4 IDs and OIDs as the Python framer."""
    fp = kernels()
    tunnel = getattr(sa, "via", None)
    if fp is None or not getattr(stack, "compiled_framing", True) or sa is None \
            or not (supported(sa) or (tunnel is not None and _layers_supported(sa)
                                      and supported(tunnel))) \
            or not getattr(stack.miniport, "kernels", None) is fp:
        return None
    assert fp is not None
    if isinstance(packets, (bytes, bytearray, memoryview)):
        return None
    packets = list(packets)
    if not packets:
        return None
    stack._check_sa(sa)
    if tunnel is not None:
        stack._check_sa(tunnel)
    # a transport SA over a tunnel SA (``via``): both rows, each taking one number a packet
    sas = [sa] if tunnel is None else [sa, tunnel]
    # a send's buffers do not outlive it: kept on the stack for the next send (fresh ones
    # fault in page by page, send after send: docs/send-path.md, "Host framing")
    scratch = stack.__dict__.setdefault("_send_scratch", {}) if send else None
    packed = _pack(packets, scratch)
    if packed is None:
        return None
    arena, pkts = packed
    n = len(pkts)
    firsts = [s.next_seq for s in sas]
    for s, first in zip(sas, firsts):
        limit = 2**64 - 1 if s.config.esn else 2**32 - 1
        if first + n - 1 > limit or (s.config.esn and (first >> 32) != ((first + n - 1) >> 32)):
            return None
    fp.host_parse_for_stack(arena, pkts.view(np.uint8), n)
    if (pkts["kind"] != PKT_ESP).any():
        return None
    table = sa_table(sas)
    bundle_sets = []
    for row, s in enumerate(sas):
        versions = int(table["versions"][row])
        bundles = {int(table["outer_ipv6"][row])} if s.config.mode == "tunnel" \
            else set((pkts["version"] == 6).astype(int).tolist())
        if any(not (versions >> b) & 1 for b in bundles):
            return None  # the Python framer names the packet it cannot carry
        bundle_sets.append(bundles)
    # dry run: anything refused leaves the SAs, the IDs and the miniport untouched
    saved_seq, saved_id = [s.next_seq for s in sas], stack.next_ipv4_id
    for row, (s, bundles) in enumerate(zip(sas, bundle_sets)):
        for b in sorted(bundles):
            stack._ensure_bundle(s, bool(b))
        table["handle"][row] = [s.handles.get(False, 0), s.handles.get(True, 0)]
    l2_mode = 1 if stack.link == "ethernet" else 0
    if arena.nbytes + 384 * n > SCRATCH_KEEP_MAX:
        scratch = None
    parts = frame_and_send(stack, arena, pkts, sas, table, l2_mode=l2_mode, send=False,
                           scratch=scratch)
    if len(parts) != 1 or (pkts["kind"] == PKT_DROP).any():
        for s, seq in zip(sas, saved_seq):
            s.next_seq = seq
        stack.next_ipv4_id = saved_id
        return None
    batch = parts[0].result
    if not send:
        return batch
    for row, (s, first) in enumerate(zip(sas, firsts)):
        if s.config.esn:
            stack._sync_seq_hi(s, _bundles(table, row), first >> 32)
    from .stack import send_within_cap
    result = send_within_cap(stack.miniport, batch)
    for row, s in enumerate(sas):
        if s.config.esn:
            stack._sync_seq_hi(s, _bundles(table, row), (s.next_seq - 1) >> 32)
    return result


# -- the list API: faults reported per packet ------------------------------------------------
class BatchSend(NamedTuple):
    """``HostStack.send_batch``'s result: ``results`` the miniport sends made (in order; one
    unless an ESN high word changed within the batch), ``nbl`` per input packet its NBL
    index across the concatenated results (-1: not sent), ``faults`` (index, reason) of the
    packets that were not sent, ``counts`` reason -> packets."""
    result: SendResult
    nbl: np.ndarray
    faults: list
    counts: dict


def send_batch(stack, packets, sas, *, mss: Optional[int] = None) -> BatchSend:
    """Send a list of plain IP packets (bytes-like or scapy packets), each under its SA
    (``sas``: one StackSa or None for all, or one per packet), LSO super-packets for TCP
    packets with more than ``mss`` payload bytes under transport SAs. A packet that cannot go
    is reported with its index and counted; the others are sent."""
    from ..datapath.tx import SendResult as _Result  # noqa: F401  (type of .result)
    fp = kernels()
    if fp is None:
        raise RuntimeError("send_batch needs the compiled kernels (ipsecoffload._fastpath)")
    if isinstance(packets, (bytes, bytearray, memoryview)):
        raise TypeError("packets must be a sequence of packets, not one bytes object")
    packets = [p if isinstance(p, (bytes, bytearray, memoryview)) else _as_bytes(p)
               for p in packets]
    n = len(packets)
    if sas is None or not isinstance(sas, (list, tuple)):
        per_packet = [sas] * n
    else:
        per_packet = list(sas)
        if len(per_packet) != n:
            raise ValueError(f"sas has {len(per_packet)} entries for {n} packets")
    if mss is not None and (not isinstance(mss, int) or not 1 <= mss <= (1 << 20) - 1):
        raise ValueError(f"mss must be an integer from 1 to {(1 << 20) - 1}, got {mss!r}")
    distinct: list = []
    index: dict = {}
    nested = False
    for sa in per_packet:
        if sa is not None and id(sa) not in index:
            stack._check_sa(sa)
            if getattr(sa, "via", None) is not None and _layers_supported(sa):
                nested = True  # transport over tunnel
            elif not supported(sa):
                raise ValueError("send_batch frames ESP SAs; use send() for this SA")
            index[id(sa)] = len(distinct)
            distinct.append(sa)
    if nested and stack._needs_fresh_ivs():
        return _send_runs(stack, packets, per_packet, mss)  # the Python framer draws the IVs
    for sa in list(distinct):  # a via SA's tunnel SA: a row of the table too
        tunnel = getattr(sa, "via", None)
        if tunnel is not None and id(tunnel) not in index:
            stack._check_sa(tunnel)
            index[id(tunnel)] = len(distinct)
            distinct.append(tunnel)
    arena, pkts = _pack([p if p is not None else b"" for p in packets]) or (None, None)
    if arena is None:
        raise TypeError("every packet must be bytes-like or a scapy packet")
    with stack._lock:
        fp.host_parse_for_stack(arena, pkts.view(np.uint8), n)
        sa_idx = np.fromiter((index[id(s)] if s is not None else -1 for s in per_packet),
                             np.int32, n)
        clear = sa_idx < 0
        # no SA: sent as given (the stack's plain path): only an IP version is needed
        ok_clear = clear & (pkts["version"] > 0)
        tunnel_fragment = ~clear & (pkts["fault"] == 7) & np.isin(
            sa_idx, [i for i, s in enumerate(distinct) if s.config.mode == "tunnel"])
        pkts["kind"][tunnel_fragment] = PKT_ESP
        pkts["fault"][tunnel_fragment] = 0
        pkts["kind"][ok_clear] = PKT_CLEAR
        pkts["fault"][ok_clear] = 0
        pkts["ip_len"][ok_clear] = pkts["cap_len"][ok_clear]
        pkts["sa"] = sa_idx
        table = sa_table(distinct)
        if mss is not None:
            fp.host_mark_lso(arena, pkts.view(np.uint8), n, mss, table.view(np.uint8),
                             len(distinct), lso_limit_array(getattr(stack, "lso_limits", None)))
        parts = frame_and_send(stack, arena, pkts, distinct, table,
                               l2_mode=1 if stack.link == "ethernet" else 0,
                               mss=mss or 0)
    results = [p.result for p in parts]
    nbl = pkts["nbl"].astype(np.int64)
    base = 0
    for part in parts:
        seg = nbl[part.start:part.stop]
        seg[seg >= 0] += base
        base += len(part.result.status)
    faults = [(int(i), fault_text(int(pkts["fault"][i]))) for i in np.flatnonzero(nbl < 0)]
    counts: dict = {}
    for _, reason in faults:
        counts[reason] = counts.get(reason, 0) + 1
    return BatchSend(SendResult.concat(results), nbl, faults, counts)


def _send_runs(stack, packets: list, per_packet: list, mss: Optional[int]) -> BatchSend:
    """send_batch for a list that holds a ``via`` SA (transport over tunnel) on a miniport
    whose IVs the stack draws (host/stack.py frames those with fresh IVs in both layers): runs of consecutive packets of one SA through ``stack.send`` (TCP
    packets over ``mss`` under a transport SA without ``via`` through ``send_lso``); a run
    the stack refuses is sent packet by packet, so only the refused packets are faults."""
    from .stack import SequenceNumberExhausted, parse_ip_packet
    results: list = []
    nbl = np.full(len(packets), -1, np.int64)
    faults: list = []
    base = 0

    def lso(i: int) -> bool:
        sa = per_packet[i]
        if mss is None or sa is None or sa.config.mode != "transport" or sa.via is not None:
            return False
        try:
            parsed = parse_ip_packet(packets[i])
        except ValueError:
            return False
        data, l4 = parsed.data, parsed.l4_offset
        if parsed.protocol != 6 or l4 + 20 > len(data) or data[l4 + 13] & 0x26 \
                or data[l4 + 18] or data[l4 + 19]:
            return False
        return len(data) - l4 - (data[l4 + 12] >> 4) * 4 > mss

    def sent(indices: list, result) -> None:
        nonlocal base
        results.append(result)
        for k, i in enumerate(indices):
            if result.status[k] == 0:
                nbl[i] = base + k
        base += len(result.status)

    with stack._lock:
        i = 0
        while i < len(packets):
            j = i
            while j < len(packets) and per_packet[j] is per_packet[i] and not lso(j):
                j += 1
            run = list(range(i, max(j, i + 1)))
            try:
                if j == i:  # an LSO super-packet alone
                    result = stack.send_lso(packets[i], per_packet[i], mss)
                    results.append(result)
                    if (result.status == 0).all():
                        nbl[i] = base
                    base += len(result.status)
                else:
                    sent(run, stack.send([packets[k] for k in run], per_packet[i]))
            except (ValueError, TypeError, SequenceNumberExhausted) as error:
                if len(run) == 1:
                    faults.append((i, str(error)))
                else:
                    for k in run:
                        try:
                            sent([k], stack.send([packets[k]], per_packet[k]))
                        except (ValueError, TypeError, SequenceNumberExhausted) as one:
                            faults.append((k, str(one)))
            i = run[-1] + 1
    counts: dict = {}
    for _, reason in faults:
        counts[reason] = counts.get(reason, 0) + 1
    return BatchSend(SendResult.concat(results) if results else stack.send([], None), nbl,
                     faults, counts)


def _as_bytes(packet) -> bytes:
    try:
        return bytes(packet)  # scapy packets and other buffer-likes
    except Exception:
        raise TypeError(f"a packet must be bytes-like or a scapy packet, got "
                        f"{type(packet).__name__}") from None


def lso_limit_array(lso_limits=None) -> np.ndarray:
    """host_mark_lso's limits: (MaxOffLoadSize, MinSegmentCount) of LSOv2 for IPv4, then
    IPv6, from ``lso_limits(2, ipv6)`` (HostStack.lso_limits), else the NDIS defaults."""
    pairs = [lso_limits(2, v6) if lso_limits else (65535, 2) for v6 in (False, True)]
    return np.array([value for pair in pairs for value in pair], np.int64)


def _mark_lso(pkts, arena, mss, distinct, per_packet, index, lso_limits=None) -> None:
    """The twin of the compiled host_mark_lso (the tests compare the two): TCP packets with
    more than mss payload bytes under transport SAs: LSO super-packets
    (docs/send-path.md: no SYN, RST, URG, urgent pointer 0), within the miniport's LSOv2
    limits (``lso_limits(2, ipv6)`` -> (MaxOffLoadSize, MinSegmentCount)): a packet outside
    them goes as one ESP packet, as a packet of at most mss payload does."""
    limits = {v6: lso_limits(2, v6) if lso_limits else (65535, 2) for v6 in (False, True)}
    for i in np.flatnonzero(pkts["kind"] == PKT_ESP).tolist():
        sa = per_packet[i]
        proto = int(pkts["proto"][i])
        if sa is None or sa.config.mode != "transport" or proto not in (6, 60) \
                or getattr(sa, "via", None) is not None:  # never LSO in a tunnel
            continue
        l4 = int(pkts["off"][i]) + int(pkts["l4_off"][i])
        end = int(pkts["off"][i]) + int(pkts["ip_len"][i])
        # IPv6 destination options after a routing header stay after ESP: TCP past them
        # (RFC 8200 §4.1; docs/send-path.md, "Where TCP starts")
        while proto == 60 and pkts["version"][i] == 6 and l4 + 8 <= end:
            proto, l4 = int(arena[l4]), l4 + (int(arena[l4 + 1]) + 1) * 8
        if proto != 6 or l4 + 20 > end:
            continue
        tcp_len = (int(arena[l4 + 12]) >> 4) * 4
        if tcp_len < 20 or l4 + tcp_len > end or arena[l4 + 13] & 0x26 \
                or arena[l4 + 18] or arena[l4 + 19]:
            continue
        payload = end - l4 - tcp_len
        max_size, min_segments = limits[bool(pkts["version"][i] == 6)]
        if payload > mss and payload <= max_size and -(-payload // mss) >= min_segments:
            pkts["kind"][i] = PKT_LSO
            pkts["tcp_len"][i] = tcp_len
            pkts["nsn"][i] = -(-payload // mss)


__all__ = ["BatchSend", "HOST_PKT_DTYPE", "HOST_SA_DTYPE", "HOST_SELECTOR_DTYPE",
           "frame_and_send", "selector_table", "sa_table", "send_batch", "stack_send"]
