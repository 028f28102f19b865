"""Plaintext capture to IPsec capture: what ``ipsecoffload encrypt`` and ``demo`` run.

The capture streams through in batches. Each packet of a batch goes to the first SA whose
selector matches it (or passes in clear); each SA's packets go through the host stack and
the miniport together, and the frames that leave are written back in input order.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, cast

import numpy as np

from ..control.miniport import Miniport
from ..datapath.layout import WIRE_FRAME_DTYPE, IvSource
from ..host.packetinfo import TCP, MalformedPacket, parse_packet
from ..io.pcap import (DEFAULT_SNAPLEN, LINKTYPE_ETHERNET, PcapError, PcapReader,
                   PcapWriter, keep_truncation_warnings, l2_length)
from ..io.bulk import PIECES_MIN_FRAME
from ..io.safile import SaFileError, SaPolicy
from ..host.stack import HostStack, SequenceNumberExhausted
from ..ndis import NdisStatus

DEFAULT_BATCH = 4096
# The most packets per batch encrypt, decrypt and their API take: a batch's arrays are
# allocated whole, so an absurd size must be refused, not tried
MAX_BATCH = 1 << 20
_PCAP_NS_RANGE = (1 << 32) * 10**9  # a pcap record's seconds field is 32 bits
_IP_ETHERTYPES = (b"\x08\x00", b"\x86\xdd")
CLEAR = "(clear)"  # the summary's name for packets that no selector matched


@dataclass
class SaStats:
    """What one SA (or the clear path) did with its packets."""
    packets: int = 0  # plain packets in
    lso_packets: int = 0  # of which sent as LSO super-packets
    frames_out: int = 0
    lso_segments: int = 0  # frames out of LSO super-packets
    bytes_in: int = 0  # captured frame bytes
    bytes_out: int = 0
    status: Counter = field(default_factory=Counter)  # NDIS_STATUS name -> NBLs
    dropped: Counter = field(default_factory=Counter)  # refused before the miniport

    def as_dict(self) -> dict:
        return {"packets": self.packets, "lso_packets": self.lso_packets,
                "frames_out": self.frames_out, "lso_segments": self.lso_segments,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "status": dict(self.status), "dropped": dict(self.dropped)}


@dataclass
class EncryptSummary:
    input: str
    output: str
    linktype: int
    mss: Optional[int]
    packets_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    sas: dict = field(default_factory=dict)  # SA name -> SaStats, file order
    clear: SaStats = field(default_factory=SaStats)
    not_ip: int = 0  # Ethernet frames that are not IPv4/IPv6, passed unchanged
    malformed: Counter = field(default_factory=Counter)  # reason -> packets dropped
    warnings: list = field(default_factory=list)
    format: str = "pcap"  # the output's
    # SA name -> the 64-bit sequence number its next packet would get (2**64 or the 32-bit
    # limit + 1 once exhausted); what 'encrypt --update-sa' writes back as the SA's seq
    next_seq: dict = field(default_factory=dict)

    @property
    def packets_per_second(self) -> float:
        return self.packets_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def dropped(self) -> int:
        """Packets that produced no frame: malformed, refused, or failed in the miniport."""
        failed = sum(n for s in (*self.sas.values(), self.clear)
                     for name, n in s.status.items() if name != "SUCCESS")
        refused = sum(sum(s.dropped.values()) for s in (*self.sas.values(), self.clear))
        return sum(self.malformed.values()) + failed + refused

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "linktype": self.linktype,
                "mss": self.mss, "packets_in": self.packets_in, "frames_out": self.frames_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "seconds": self.seconds, "packets_per_second": self.packets_per_second,
                "sas": {name: s.as_dict() for name, s in self.sas.items()},
                "clear": self.clear.as_dict(), "not_ip": self.not_ip,
                "malformed": {"total": sum(self.malformed.values()),
                              "reasons": dict(self.malformed)},
                "dropped": self.dropped, "warnings": list(self.warnings),
                "format": self.format, "version": _version()}


def _version() -> str:
    from .. import __version__
    return __version__


class _Job:
    """One packet on its way: its index in the batch, its plain IP bytes, LSO or not."""
    __slots__ = ("index", "packet", "lso")

    def __init__(self, index: int, packet: bytes, lso: bool):
        self.index, self.packet, self.lso = index, packet, lso


def add_policy_sas(stack: HostStack, policies: Sequence[SaPolicy]) -> list:
    """One StackSa per policy, in order: the tunnel SAs first, so that a ``via`` SA
    (transport over tunnel) is added with the StackSa of the tunnel SA it names."""
    sas: list = [None] * len(policies)
    index = {p.name: i for i, p in enumerate(policies)}
    for i, p in enumerate(policies):
        if getattr(p, "via", None) is None:
            sas[i] = stack.add_sa(p.config)
    for i, p in enumerate(policies):
        if getattr(p, "via", None) is not None:
            if p.via not in index or sas[index[p.via]] is None:
                raise SaFileError(f"SA {p.name!r}: via names {p.via!r}, which is no tunnel SA "
                                  f"of this list")
            sas[i] = stack.add_sa(p.config, via=sas[index[p.via]])
    return sas


class CaptureEncryptor:
    """Holds the stack, the miniport and the running summary for one capture. ``link``
    ("raw"): the stack frames plain IP and ``process`` puts each record's own link header
    back (ViaBulkEncryptor); by default the stack's link is the capture's."""

    def __init__(self, policies: Sequence[SaPolicy], summary: EncryptSummary,
                 miniport: Optional[Miniport] = None, link: Optional[str] = None):
        self.policies = list(policies)
        self.summary = summary
        self.l2 = 0  # with ``link`` given, frames_of is told each record's
        if link is None:
            self.l2 = l2_length(summary.linktype)
            link = "ethernet" if summary.linktype == LINKTYPE_ETHERNET else "raw"
        self.stack_l2 = 14 if link == "ethernet" else 0
        self.stack = HostStack(miniport or Miniport(), link=link)
        self.sas = add_policy_sas(self.stack, self.policies)
        summary.sas = {p.name: SaStats() for p in self.policies}

    def process(self, records) -> list:
        """The output frames of one batch of records, as (frame, ts_ns) in input order."""
        return [(frame, records[index].ts_ns) for frame, index in self.frames_of(records)]

    def frames_of(self, records, l2s: Optional[Sequence[int]] = None) -> list:
        """The output frames of one batch of records, as (frame, record index) in input
        order. ``l2s``: each record's link header length (VLAN tags included), else the
        capture's."""
        summary = self.summary
        if l2s is None and self.l2:  # Ethernet: VLAN tags too, as host_classify reads them
            l2s = [_link_header_len(record.data) for record in records]
        outputs: list[list[bytes]] = [[] for _ in records]
        owners: list[Optional[SaStats]] = [None] * len(records)
        # runs of consecutive packets of one SA, sent in input order: each SA's sequence
        # numbers, and the tunnels' IPv4 IDs, are drawn in the order the packets arrive (a
        # tunnel SA's own packets and those of a transport SA over it share its numbers)
        runs: list[tuple[int, list[_Job]]] = []
        for index, record in enumerate(records):
            frame = record.data
            l2 = self.l2 if l2s is None else l2s[index]
            summary.packets_in += 1
            summary.bytes_in += len(frame)
            if l2:
                if len(frame) < l2:
                    summary.malformed["truncated link header"] += 1
                    continue
                if frame[l2 - 2:l2] not in _IP_ETHERTYPES:
                    summary.not_ip += 1
                    outputs[index].append(frame)
                    continue
            try:
                info = parse_packet(memoryview(frame)[l2:])
            except MalformedPacket as error:
                summary.malformed[error.reason] += 1
                continue
            policy_index = next((k for k, p in enumerate(self.policies)
                                 if p.selector.matches_info(info)), -1)
            if policy_index >= 0 and info.fragment:
                summary.malformed["IP fragment (IPsec is not offloaded for fragments)"] += 1
                continue
            stats = owners[index] = self._stats(policy_index)
            stats.packets += 1
            stats.bytes_in += len(frame)
            lso = (policy_index >= 0 and summary.mss is not None and info.proto == TCP
                   and info.lso_capable and info.tcp_payload is not None
                   and info.tcp_payload > summary.mss
                   and self.policies[policy_index].config.mode == "transport"
                   and getattr(self.policies[policy_index], "via", None) is None)
            packet = frame[l2:l2 + info.length]
            if not runs or runs[-1][0] != policy_index:
                runs.append((policy_index, []))
            runs[-1][1].append(_Job(index, packet, lso))
        for policy_index, jobs in runs:
            self._send(policy_index, jobs, outputs)
        frames = []
        for index, (record, out) in enumerate(zip(records, outputs)):
            l2 = self.l2 if l2s is None else l2s[index]
            for frame in out:
                if l2 and frame is not record.data:
                    # keep the capture's link header (MACs, VLAN tags); the EtherType is the
                    # outer IP version's: the stack wrote it, or it is put here; the SA's
                    # bytes out count the link header the frame leaves with
                    owner = owners[index]
                    if owner is not None:
                        owner.bytes_out += l2 - self.stack_l2
                    frame = record.data[:l2 - 2] + (frame[12:] if self.stack_l2 else (
                        b"\x86\xdd" if frame[0] >> 4 == 6 else b"\x08\x00") + frame)
                frames.append((frame, index))
                summary.frames_out += 1
                summary.bytes_out += len(frame)
        return frames

    def _stats(self, policy_index: int) -> SaStats:
        if policy_index < 0:
            return self.summary.clear
        return self.summary.sas[self.policies[policy_index].name]

    def _send(self, policy_index: int, jobs: list, outputs: list) -> None:
        """Runs of non-LSO packets in one send each, LSO packets one by one, in input order,
        so the sequence numbers rise in output order."""
        sa = self.sas[policy_index] if policy_index >= 0 else None
        stats = self._stats(policy_index)
        run: list[_Job] = []
        for job in jobs:
            if job.lso:
                self._send_run(sa, run, stats, outputs)
                run = []
                self._send_lso(sa, job, stats, outputs)
            else:
                run.append(job)
        self._send_run(sa, run, stats, outputs)

    def _send_run(self, sa, run: list, stats: SaStats, outputs: list) -> None:
        if not run:
            return
        try:
            result = self.stack.send([job.packet for job in run], sa)
        except (SequenceNumberExhausted, ValueError) as error:
            if len(run) == 1:
                stats.dropped[_refusal(error)] += 1
                return
            # the stack refuses a whole send for one bad packet: find it, send the rest
            for job in run:
                self._send_run(sa, [job], stats, outputs)
            return
        self._collect(result, run, stats, outputs)

    def _send_lso(self, sa, job: _Job, stats: SaStats, outputs: list) -> None:
        assert self.summary.mss is not None  # only LSO jobs come here, and only with an MSS
        try:
            result = self.stack.send_lso(job.packet, sa, self.summary.mss)
        except (SequenceNumberExhausted, ValueError) as error:
            stats.dropped[_refusal(error)] += 1
            return
        stats.lso_packets += 1
        stats.lso_segments += self._collect(result, [job], stats, outputs)

    @staticmethod
    def _collect(result, jobs: list, stats: SaStats, outputs: list) -> int:
        wire = result.wire
        frames = wire.frames()
        for frame, nbl in zip(frames, wire.nb_nbl.tolist()):
            outputs[jobs[nbl].index].append(frame)
        stats.status.update(result.status_counts())
        stats.frames_out += len(frames)
        stats.bytes_out += sum(len(f) for f in frames)
        return len(frames)


def _refusal(error: Exception) -> str:
    if isinstance(error, SequenceNumberExhausted):
        return "sequence numbers exhausted"
    return "refused by the host stack"


def encrypt_capture_python(input_path, output_path, policies: Sequence[SaPolicy], *,
                           mss: Optional[int] = None, batch_size: int = DEFAULT_BATCH,
                           progress: Optional[Callable[[int], None]] = None,
                           miniport: Optional[Miniport] = None, count: Optional[int] = None,
                           protect=()) -> EncryptSummary:
    """The Python twin of ``encrypt_capture`` (classic pcap only): record by record, each
    SA's packets through HostStack.send. The pure-Python mode and SA files with ``via`` SAs
    run it. ``count`` stops after that many packets.

    Raises ``PcapError`` for an unusable capture and ``OSError`` for file problems. The
    output goes to a temporary file renamed into place on success; on any error only that
    file is removed (io/atomic.py), and an output path naming the input (or a path in
    ``protect``) is refused. A truncated last record is dropped with a warning in
    ``summary.warnings``.
    """
    from .atomic import SafeOutput
    if mss is not None and mss < 1:
        raise ValueError(f"mss must be at least 1, got {mss}")
    if count is not None and count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    start = time.perf_counter()
    output_path = os.fspath(output_path)
    with warnings.catch_warnings(record=True) as caught, PcapReader(input_path) as reader:
        warnings.simplefilter("always")
        out = SafeOutput(output_path, protect=[(input_path, "input capture"), *protect])
        summary = EncryptSummary(input=os.fspath(input_path), output=output_path,
                                 linktype=reader.linktype, mss=mss)
        encryptor = CaptureEncryptor(policies, summary, miniport)
        with out:
            assert out.file is not None
            writer = PcapWriter(out.file, reader.linktype, nanosecond=reader.nanosecond,
                                snaplen=max(reader.snaplen, DEFAULT_SNAPLEN))
            with writer:
                left = count
                for records in reader.batches(batch_size):
                    if left is not None:
                        records = records[:left]
                        left -= len(records)
                    for frame, ts_ns in encryptor.process(records):
                        # a record's timestamp past 2106 (a bad record, or a usec field over
                        # 10**6) wraps at 2**32 s as the compiled path's 32-bit field does,
                        # instead of stopping the run with a ValueError
                        writer.write(frame, ts_ns=ts_ns % _PCAP_NS_RANGE)
                    if progress is not None:
                        progress(summary.packets_in)
                    if left is not None and left <= 0:
                        break
    keep_truncation_warnings(caught, summary.warnings)
    summary.next_seq = {p.name: sa.next_seq for p, sa in zip(encryptor.policies, encryptor.sas)}
    summary.seconds = time.perf_counter() - start
    return summary


# -- the compiled path ------------------------------------------------------------------------
class BatchEncryptor:
    """One capture through the compiled host framing: per batch one classify pass, framing
    with sequence numbers per SA, as few miniport sends as ESN allows, and the output records
    laid out in one pass (host/tx_frame.py, io/capture_scan.pxi)."""

    def __init__(self, policies: Sequence[SaPolicy], summary: EncryptSummary,
                 miniport: Optional[Miniport] = None, workers: int = 1):
        from ..host import tx_frame
        self.tx_frame = tx_frame
        self.fp = tx_frame.kernels()
        self.policies = list(policies)
        self.summary = summary
        self.stack = HostStack(miniport or Miniport())
        self.sas = add_policy_sas(self.stack, self.policies)
        self.selectors = tx_frame.selector_table(self.policies)
        self.table = tx_frame.sa_table(self.sas)
        summary.sas = {p.name: SaStats() for p in self.policies}
        self._stats = list(summary.sas.values())
        # capture_account's sums per owner (the SAs, then the clear packets), added up batch
        # after batch and put into the SaStats by _flush (close, or before a rare row)
        self._totals = np.zeros((len(self._stats) + 1, 8), np.int64)
        self._status_names: dict = {}
        self._scratch: dict = {}
        self.workers = workers
        self._sender = ShardedSender(self.stack.miniport, workers, join=False) \
            if workers > 1 else None

    def close(self) -> None:
        self._flush(np.flatnonzero(self._totals[:, 0]).tolist())
        if self._sender is not None:
            self._sender.close()

    def _owner_stats(self, index: int) -> SaStats:
        return self.summary.clear if index == len(self._stats) else self._stats[index]

    def _flush(self, owners) -> None:
        """The summed rows of ``owners`` into their SaStats, and those rows zeroed."""
        for index in owners:
            row = self._totals[index].tolist()
            stats = self._owner_stats(index)
            stats.packets += row[0]
            stats.bytes_in += row[1]
            stats.frames_out += row[2]
            stats.bytes_out += row[3]
            stats.lso_packets += row[4]
            stats.lso_segments += row[5]
            if row[6]:
                stats.status[self._status_name(0)] += row[6]
            self._totals[index] = 0

    def process(self, batch, writer) -> None:
        tf, fp, summary = self.tx_frame, self.fp, self.summary
        arena, pkts = batch.arena, batch.pkts
        n = len(pkts)
        fp.host_classify(arena, pkts.view(np.uint8), n, self.selectors.view(np.uint8),
                         len(self.selectors), summary.mss or 0)
        frames = np.zeros(n, np.int64)
        nbytes = np.zeros(n, np.int64)
        status = np.zeros(n, np.int64)
        pkt_bytes = pkts.view(np.uint8)

        def write(part) -> None:
            # each send's frames are written as it is made: with --mss the output of one
            # batch can be many times its input (docs/send-path.md, "Limits")
            wire = part.result.wire
            table = wire._table_bytes if wire._table is None else wire._table.view(np.uint8)
            count = wire.num_buffers
            frame_bytes = int(wire.nb_len.sum() if count else 0)
            if count and frame_bytes >= PIECES_MIN_FRAME * count and writer.can_write_pieces \
                    and not (pkts["kind"][part.start:part.stop] == tf.PKT_NOT_IP).any():
                # the frames written from the wire arenas, not copied (BulkWriter.write_pieces)
                heads = np.empty(35 * count + 4, np.uint8)
                pieces = np.empty(2 * (2 * count + 1), np.uint64)
                used, total = fp.capture_pieces(writer.code, heads, pieces, pkt_bytes,
                                                part.start, part.stop, wire.arena, table, count,
                                                writer.snaplen, writer.unit_ns, frames, nbytes)
                writer.write_pieces(pieces, used, total, (heads, wire.arena))
            else:
                size = int(pkts["cap_len"][part.start:part.stop].sum()) + frame_bytes + \
                    36 * (part.stop - part.start + count)
                out = writer.emit_buffer(size)
                used = fp.capture_emit(writer.code, out, pkt_bytes, part.start, part.stop,
                                       arena, wire.arena, table, count, writer.snaplen,
                                       writer.unit_ns, frames, nbytes)
                writer.write(out.data[:used])
            sent = pkts["nbl"][part.start:part.stop]
            mask = sent >= 0
            status[part.start:part.stop][mask] = part.result.status[sent[mask]]
        with self.stack._lock:
            tf.frame_and_send(self.stack, arena, pkts, self.sas, self.table, l2_mode=2,
                              mss=summary.mss or 0, scratch=self._scratch, sender=self._sender,
                              on_part=write)
        self._account(pkts, frames, nbytes, status)

    def _account(self, pkts, frames, nbytes, status) -> None:
        """The summary from the batch's arrays: one compiled pass (capture_account) gives each
        owner's sums; the rare rows it cannot name (malformed, refused, a status other than
        success) are counted by value with numpy."""
        summary, tf = self.summary, self.tx_frame
        n, n_sa = len(pkts), len(self._stats)
        sums = np.zeros((n_sa + 1, 8), np.int64)
        bytes_in, frames_out, bytes_out, not_ip, malformed = self.fp.capture_account(
            pkts.view(np.uint8), n, frames, nbytes, status, n_sa, sums.reshape(-1))
        summary.packets_in += n
        summary.bytes_in += bytes_in
        summary.frames_out += frames_out
        summary.bytes_out += bytes_out
        summary.not_ip += not_ip
        kind, fault = pkts["kind"], pkts["fault"]
        if malformed:
            bad = (kind == tf.PKT_DROP) & (fault < tf.FAULT_REFUSED_FIRST)
            codes, counts = np.unique(fault[bad], return_counts=True)
            for code, count in zip(codes.tolist(), counts.tolist()):
                summary.malformed[tf.summary_reason(code)] += count
        self._totals += sums
        rare_rows = np.flatnonzero(sums[:, 7])
        if not len(rare_rows):
            return
        # a rare row's counts go in now, after what its owner summed before (the status
        # names keep the order they were first met in)
        self._flush(rare_rows.tolist())
        rare = [(index, self._owner_stats(index)) for index in rare_rows.tolist()]
        counted = (kind != tf.PKT_NOT_IP) & ~((kind == tf.PKT_DROP)
                                              & (fault < tf.FAULT_REFUSED_FIRST))
        owner = np.where(kind == tf.PKT_CLEAR, n_sa, pkts["sa"])
        sent = pkts["nbl"] >= 0
        for index, stats in rare:
            mine = counted & (owner == index)
            values, counts = np.unique(status[mine & sent & (status != 0)], return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist()):
                stats.status[self._status_name(value)] += count
            codes, counts = np.unique(fault[mine & ~sent], return_counts=True)
            for code, count in zip(codes.tolist(), counts.tolist()):
                stats.dropped[tf.summary_reason(code)] += count

    def _status_name(self, value: int) -> str:
        name = self._status_names.get(value)
        if name is None:
            try:
                name = NdisStatus(value).name
            except ValueError:
                name = f"{value:#010x}"
            self._status_names[value] = name
        return name


class _Record(NamedTuple):
    data: bytes
    ts_ns: int


_VLAN_ETHERTYPES = (b"\x81\x00", b"\x88\xa8", b"\x91\x00")  # IEEE 802.1Q / 802.1ad tags


def _link_header_len(data: bytes) -> int:
    """An Ethernet record's link header with its VLAN tags (as host_classify reads it); past
    the record's end when a tag is cut short."""
    l2 = 14
    while len(data) >= l2 and data[l2 - 2:l2] in _VLAN_ETHERTYPES:
        l2 += 4
    return l2


class ViaBulkEncryptor:
    """A capture whose SA file holds a ``via`` SA (transport over tunnel), on a miniport whose
    IVs the stack draws (``iv_source="packet"``: the compiled framer leaves those to the
    Python one), through the bulk reader and writer, so pcapng, standard input and output
    work as on the compiled path: each batch's records are framed by CaptureEncryptor
    (host/stack.py, which draws fresh IVs for both layers) on a raw-IP stack, each record
    keeping its own link header, VLAN tags included; then ``capture_emit`` lays the records
    out."""

    def __init__(self, policies: Sequence[SaPolicy], summary: EncryptSummary,
                 miniport: Optional[Miniport] = None):
        from ..host.tx_frame import PKT_CLEAR, kernels
        self.fp = kernels()
        self.kind = PKT_CLEAR
        self.encryptor = CaptureEncryptor(policies, summary, miniport, link="raw")
        self.policies, self.sas = self.encryptor.policies, self.encryptor.sas

    def close(self) -> None:
        pass

    def process(self, batch, writer) -> None:
        pkts = batch.pkts.copy()
        n = len(pkts)
        links = pkts["link"].tolist()
        records, l2s = [], []
        for i in range(n):
            data = batch.record(i)
            records.append(_Record(data, int(pkts["ts_ns"][i])))
            l2s.append(_link_header_len(data) if links[i] else 0)
        outputs = self.encryptor.frames_of(records, l2s)
        # every record's frames (a record passed unchanged too) as the frames of "NBL" i
        owner = np.fromiter((index for _, index in outputs), np.int32, len(outputs))
        wire = np.frombuffer(b"".join(frame for frame, _ in outputs), np.uint8)
        table = np.zeros(len(outputs), WIRE_FRAME_DTYPE)
        lengths = np.fromiter((len(frame) for frame, _ in outputs), np.int64, len(outputs))
        table["len"] = lengths
        table["off"] = np.cumsum(lengths) - lengths
        table["nbl"] = owner
        pkts["kind"] = self.kind
        pkts["nbl"] = np.arange(n, dtype=np.int32)
        frames, nbytes = np.zeros(n, np.int64), np.zeros(n, np.int64)
        size = len(wire) + 36 * len(outputs) + 64
        out = writer.emit_buffer(size)
        used = self.fp.capture_emit(writer.code, out, pkts.view(np.uint8), 0, n, batch.arena,
                                    wire, table.view(np.uint8), len(outputs), writer.snaplen,
                                    writer.unit_ns, frames, nbytes)
        writer.write(out.data[:used])


class ShardedSender:
    """``--workers N``: the NBLs of a framed batch sent in N shards at once, threads on the one
    miniport (its stages and backends release the GIL). A shard is a set of SAs (SA index mod
    N, as VPP binds an SA to a thread); the framing before — sequence numbers, IPv4 IDs,
    UPDATE_SA — stays in one place, so the output equals the one-worker output byte for byte
    wherever IVs are deterministic. The frames come back as one WireFrames in NBL order."""

    def __init__(self, miniport: Miniport, workers: int, *, join: bool = True):
        from concurrent.futures import ThreadPoolExecutor
        self.miniport = miniport
        self.workers = workers
        self.join = join  # False: results carry a ShardedWire (BatchEncryptor's writes)
        # a backend's keystream buffer serves one send at a time: each thread its own
        # backends, where the miniport has the default ones (a shard's SAs, and so its key
        # contexts, are sealed by one thread only)
        from ..crypto import backends_for
        fresh = [backends_for(miniport.kernels) for _ in range(workers - 1)]
        same = all({k: type(v) for k, v in b.items()} ==
                   {k: type(v) for k, v in miniport.backends.items()} for b in fresh)
        self.backends = [miniport.backends] + (fresh if same else
                                                [miniport.backends] * (workers - 1))
        self.pool = ThreadPoolExecutor(max_workers=workers - 1,
                                       thread_name_prefix="ipsecoffload-send")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __call__(self, batch, pkts, start: int, stop: int):
        from ..datapath.batch import WireFrames
        from ..datapath.tx import SendResult
        from ..host.tx_frame import _batch
        n_nbl = len(batch.nb_off)
        rows = pkts[start:stop]
        sent = rows["nbl"] >= 0
        shard_of_nbl = np.zeros(n_nbl, np.int64)
        shard_of_nbl[rows["nbl"][sent]] = np.maximum(rows["sa"][sent], 0) % self.workers
        shards = [np.flatnonzero(shard_of_nbl == w) for w in range(self.workers)]
        shards = [j for j in shards if len(j)]
        if len(shards) < 2:
            return self.miniport.send(batch)
        # each shard's OOB rows gathered as bytes: numpy's gather of the structured rows goes
        # field by field (it measured a quarter of the sharding's cost)
        oob_rows = batch.oob_bytes.reshape(n_nbl, -1)
        subs = [_batch(batch.arena, batch.nb_off[j], batch.nb_len[j],
                       oob_rows[j].reshape(-1).view(batch.oob.dtype)) for j in shards]
        send = self.miniport._send_batch
        futures = [self.pool.submit(send, sub, self.backends[w])
                   for w, sub in enumerate(subs) if w]
        results = [send(subs[0], self.backends[0])] + [f.result() for f in futures]
        # one WireFrames in NBL order: frames renumbered to the batch's NBLs, arenas joined
        tables, arenas, base = [], [], 0
        status = np.zeros(n_nbl, np.uint32)
        lso = np.zeros(n_nbl, np.uint64)
        for j, result in zip(shards, results):
            table = result.wire.table.copy()
            table["nbl"] = j[table["nbl"]]
            table["off"] += base
            base += len(result.wire.arena)
            tables.append(table)
            arenas.append(result.wire.arena)
            status[j] = result.status
            lso[j] = result.lso_complete
        table = np.concatenate(tables)
        order = np.argsort(table["nbl"], kind="stable")
        table = table.view(np.uint8).reshape(len(table), -1)[order].reshape(-1).view(table.dtype)
        counters = np.sum([r.counters for r in results], axis=0)
        if not self.join:  # capture_emit reads the arenas as if joined: no copy
            # a ShardedWire has what BatchEncryptor's write reads of a WireFrames
            return SendResult(cast(WireFrames, ShardedWire(arenas, table)), status, lso,
                              counters)
        wire = WireFrames(np.concatenate(arenas), table_bytes=table.view(np.uint8),
                          oob_bytes=batch.oob_bytes.copy(), status=status)
        return SendResult(wire, status, lso, counters)


class ShardedWire:
    """The frames of a ShardedSender send: the shards' wire arenas, not joined (``arena``
    is their list, which capture_emit reads as one), and the WireFrame table over them."""

    __slots__ = ("arena", "_table", "_table_bytes")

    def __init__(self, arenas: list, table: np.ndarray):
        self.arena, self._table, self._table_bytes = arenas, table, None

    @property
    def num_buffers(self) -> int:
        return len(self._table)

    @property
    def nb_len(self) -> np.ndarray:
        return self._table["len"]


def encrypt_capture(input_path, output_path, policies: Sequence[SaPolicy], *,
                    mss: Optional[int] = None, batch_size: int = DEFAULT_BATCH,
                    progress: Optional[Callable[..., None]] = None,
                    miniport: Optional[Miniport] = None, output_format: Optional[str] = None,
                    count: Optional[int] = None, protect=(),
                    workers: int = 1) -> EncryptSummary:
    """Encrypt a pcap or pcapng capture with the SA policies; returns the summary.

    ``input_path`` / ``output_path`` may be ``"-"`` (standard input / output). The output is
    in the input's format unless ``output_format`` ("pcap" or "pcapng"); ``count`` stops
    after that many packets. The output is written to a temporary file and renamed into place
    on success; on any error or interrupt only that file is removed (io/atomic.py), and an
    output path naming the input (or a path in ``protect``) is refused. Raises ``PcapError``
    for an unusable capture and ``OSError`` for file problems. A truncated last record is
    dropped with a warning in ``summary.warnings``. ``progress(packets, fraction)`` is called
    after each batch (fraction None when the input size is unknown). ``workers``: the sends of
    each batch spread over that many threads, sharded by SA (``ShardedSender``); a file with
    a ``via`` SA runs on one (a tunnel SA's numbers are shared with the packets it carries).
    """
    from ..host.tx_frame import kernels
    from .atomic import SafeOutput
    from .bulk import BulkReader, BulkWriter, summary_linktype
    if mss is not None and mss < 1:
        raise ValueError(f"mss must be at least 1, got {mss}")
    if output_format not in (None, "pcap", "pcapng"):
        raise ValueError(f"output_format must be 'pcap' or 'pcapng', got {output_format!r}")
    via_sas = any(getattr(p, "via", None) for p in policies)
    if kernels() is None or (miniport is not None and not hasattr(miniport.kernels,
                                                                  "host_frame")):
        if output_format == "pcapng" or input_path == "-" or output_path == "-":
            raise PcapError("pcapng, standard input and standard output need the compiled "
                            "kernels")
        return encrypt_capture_python(input_path, output_path, policies, mss=mss,
                                      batch_size=min(batch_size, 256), progress=progress,
                                      miniport=miniport, count=count, protect=protect)
    start = time.perf_counter()
    output_path = output_path if output_path == "-" else os.fspath(output_path)
    with BulkReader(input_path, limit=count) as reader:
        out = SafeOutput(output_path, protect=[(input_path, "input capture"), *protect])
        fmt = output_format or reader.format
        summary = EncryptSummary(
            input="-" if input_path == "-" else os.fspath(input_path), output=output_path,
            linktype=summary_linktype(reader), mss=mss, format=fmt)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        encryptor: "BatchEncryptor | ViaBulkEncryptor"
        if via_sas and getattr(miniport, "iv_source", None) == IvSource.PACKET:
            encryptor = ViaBulkEncryptor(policies, summary, miniport)
        else:  # a via SA shares its tunnel SA's numbers with that SA's own packets: one shard
            encryptor = BatchEncryptor(policies, summary, miniport,
                                       workers=1 if via_sas else workers)
        with out, contextlib.closing(encryptor):
            assert out.file is not None
            writer = None  # made at the first batch: a pcapng's interfaces come with its blocks
            try:
                for batch in reader.batches(batch_size):
                    if writer is None:
                        writer = BulkWriter(out.file, fmt, reader, background=not out.streamed,
                                            reserve=out.reserve)
                        summary.linktype = summary_linktype(reader)  # a pcapng's, known now
                    writer.interfaces(reader)
                    encryptor.process(batch, writer)
                    if progress is not None:
                        fraction = reader.bytes_consumed / reader.size if reader.size else None
                        progress(summary.packets_in, fraction)
                if writer is None:
                    BulkWriter(out.file, fmt, reader)  # an empty capture: the header alone
                else:
                    writer.close()
            finally:
                if writer is not None:
                    writer.abandon()
        summary.warnings.extend(reader.warnings)
    summary.next_seq = {p.name: sa.next_seq for p, sa in zip(encryptor.policies, encryptor.sas)}
    summary.seconds = time.perf_counter() - start
    return summary
