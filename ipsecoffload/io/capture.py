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
from typing import Callable, Optional, Sequence

from ..control.miniport import Miniport
from ..host.packetinfo import TCP, MalformedPacket, parse_packet
from ..io.pcap import (DEFAULT_SNAPLEN, LINKTYPE_ETHERNET, PcapError, PcapReader,
                   PcapTruncatedWarning, PcapWriter, l2_length)
from ..io.safile import SaPolicy
from ..host.stack import HostStack, SequenceNumberExhausted

DEFAULT_BATCH = 256
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
                "dropped": self.dropped, "warnings": list(self.warnings)}


class _Job:
    """One packet on its way: its index in the batch, its plain IP bytes, LSO or not."""
    __slots__ = ("index", "packet", "lso")

    def __init__(self, index: int, packet: bytes, lso: bool):
        self.index, self.packet, self.lso = index, packet, lso


class CaptureEncryptor:
    """Holds the stack, the miniport and the running summary for one capture."""

    def __init__(self, policies: Sequence[SaPolicy], summary: EncryptSummary,
                 miniport: Optional[Miniport] = None):
        self.policies = list(policies)
        self.summary = summary
        self.l2 = l2_length(summary.linktype)
        self.stack = HostStack(miniport or Miniport(),
                               link="ethernet" if summary.linktype == LINKTYPE_ETHERNET else "raw")
        self.sas = [self.stack.add_sa(p.config) for p in self.policies]
        summary.sas = {p.name: SaStats() for p in self.policies}

    def process(self, records) -> list:
        """The output frames of one batch of records, as (frame, ts_ns) in input order."""
        summary, l2 = self.summary, self.l2
        outputs: list[list[bytes]] = [[] for _ in records]
        groups: dict[int, list[_Job]] = {}
        for index, record in enumerate(records):
            frame = record.data
            summary.packets_in += 1
            summary.bytes_in += len(frame)
            if l2:
                if len(frame) < l2:
                    summary.malformed["truncated link header"] += 1
                    continue
                if frame[12:14] not in _IP_ETHERTYPES:
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
            stats = self._stats(policy_index)
            stats.packets += 1
            stats.bytes_in += len(frame)
            lso = (policy_index >= 0 and summary.mss is not None and info.proto == TCP
                   and info.lso_capable and info.tcp_payload > summary.mss
                   and self.policies[policy_index].config.mode == "transport")
            packet = frame[l2:l2 + info.length]
            groups.setdefault(policy_index, []).append(_Job(index, packet, lso))
        for policy_index, jobs in groups.items():
            self._send(policy_index, jobs, outputs)
        frames = []
        for record, out in zip(records, outputs):
            for frame in out:
                if l2 and frame is not record.data:
                    # keep the capture's MAC addresses; the stack wrote the EtherType
                    frame = record.data[:12] + frame[12:]
                frames.append((frame, record.ts_ns))
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


def encrypt_capture(input_path, output_path, policies: Sequence[SaPolicy], *,
                    mss: Optional[int] = None, batch_size: int = DEFAULT_BATCH,
                    progress: Optional[Callable[[int], None]] = None,
                    miniport: Optional[Miniport] = None) -> EncryptSummary:
    """Encrypt a classic pcap capture with the SA policies; returns the summary.

    Raises ``PcapError`` for an unusable capture and ``OSError`` for file problems; on
    any error the output file is removed. A truncated last record is dropped with a
    warning in ``summary.warnings``.
    """
    if mss is not None and mss < 1:
        raise ValueError(f"mss must be at least 1, got {mss}")
    start = time.perf_counter()
    output_path = os.fspath(output_path)
    with warnings.catch_warnings(record=True) as caught, PcapReader(input_path) as reader:
        warnings.simplefilter("always")
        if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
            raise PcapError(f"{output_path!r} is the input capture; choose another output file")
        summary = EncryptSummary(input=os.fspath(input_path), output=output_path,
                                 linktype=reader.linktype, mss=mss)
        encryptor = CaptureEncryptor(policies, summary, miniport)
        writer = PcapWriter(output_path, reader.linktype, nanosecond=reader.nanosecond,
                            snaplen=max(reader.snaplen, DEFAULT_SNAPLEN))
        try:
            with writer:
                for records in reader.batches(batch_size):
                    for frame, ts_ns in encryptor.process(records):
                        writer.write(frame, ts_ns=ts_ns)
                    if progress is not None:
                        progress(summary.packets_in)
        except BaseException:
            # no half-written capture left behind
            with contextlib.suppress(OSError):
                os.unlink(output_path)
            raise
    for warning in caught:
        if issubclass(warning.category, PcapTruncatedWarning):
            summary.warnings.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    summary.seconds = time.perf_counter() - start
    return summary
