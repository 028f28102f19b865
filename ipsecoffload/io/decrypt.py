"""IPsec capture to plaintext: what ``ipsecoffload decrypt`` runs (docs/receive-path.md).

The SA file that encrypted a capture describes its inbound SAs: each is offloaded to the
miniport as an inbound bundle (found by SPI, and for a tunnel SA by its endpoints); the host
stack then checks a transport SA's selector prefixes, the anti-replay window (starting
empty just below the file's ``seq``) and decapsulates. Order is kept.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .. import ndis
from ..control.miniport import Miniport
from ..datapath.batch import PacketBatch
from ..datapath.layout import WIRE_FRAME_DTYPE, Delivery
from ..host.receive import DEFAULT_REPLAY_WINDOW
from ..host.stack import HostStack
from ..host.tx_frame import PKT_CLEAR, PKT_DROP, PKT_NOT_IP, kernels
from .bulk import PIECES_MIN_FRAME
from .pcap import (DEFAULT_SNAPLEN, LINKTYPE_ETHERNET, PcapError, PcapReader, PcapWriter,
                   keep_truncation_warnings)
from .safile import SaPolicy

DEFAULT_BATCH = 4096  # as encrypt's (io/capture.py): the per-batch cost is paid once per 4096
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, (0x8100, 0x88A8, 0x9100)
_ETH_VLAN_TYPES = np.asarray(_ETH_VLAN, np.int64)
_CRYPTO_NAMES = {int(s): s.name for s in ndis.CryptoStatus}
_ATTRIBUTED = np.array([d not in (Delivery.CLEAR, Delivery.MALFORMED, Delivery.NO_SA,
                                  Delivery.SELECTOR) for d in Delivery], bool)


@dataclass
class DecryptSaStats:
    packets: int = 0  # every frame attributed to this SA, whatever its fate
    crypto_status: Counter = field(default_factory=Counter)  # CryptoStatus name -> frames
    replayed: int = 0  # frames the window dropped
    decapsulated: int = 0
    dropped: Counter = field(default_factory=Counter)  # other drops after the NIC (ECN ...)

    def as_dict(self) -> dict:
        return {"packets": self.packets, "crypto_status": dict(self.crypto_status),
                "replayed": self.replayed}


@dataclass
class DecryptSummary:
    input: str
    output: str
    linktype: int
    packets_in: int = 0
    packets_out: int = 0
    clear: int = 0
    no_sa: int = 0
    malformed: int = 0
    sas: dict = field(default_factory=dict)  # SA name -> DecryptSaStats, file order
    seconds: float = 0.0
    warnings: list = field(default_factory=list)

    @property
    def packets_per_second(self) -> float:
        return self.packets_in / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        """The ``decrypt --json`` object (README "Receive" contract: these keys and ``version``)."""
        from .. import __version__
        return {"version": __version__, "packets_in": self.packets_in,
                "packets_out": self.packets_out, "clear": self.clear, "no_sa": self.no_sa,
                "malformed": self.malformed,
                "sas": {name: s.as_dict() for name, s in self.sas.items()}}


def _versions(policy: SaPolicy) -> tuple:
    config = policy.config
    if config.mode == "tunnel":
        return (bool(config.tunnel_ipv6),)
    return tuple(v == 6 for v in policy.selector.versions)


def _spi_groups(policies: Sequence[SaPolicy]) -> list:
    """The policies' indices in groups that share no SPI with another group (a bundle's AH SPI
    counts too): one NIC lookup can never match SAs of two groups. A ``via`` SA joins its
    tunnel SA's group: the stack that opens the outer layer opens the inner one."""
    parent = list(range(len(policies)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    owner: dict = {}
    for i, policy in enumerate(policies):
        config = policy.config
        for spi in (config.spi, config.ah_spi):
            if spi is None:
                continue
            if spi in owner:
                parent[root(i)] = root(owner[spi])
            else:
                owner[spi] = i
    names = {policy.name: i for i, policy in enumerate(policies)}
    for i, policy in enumerate(policies):
        if policy.via is not None and policy.via in names:
            parent[root(i)] = root(names[policy.via])
    groups: dict = {}
    for i in range(len(policies)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


class _Shard:
    """One worker's stack: the inbound SAs of some SPI groups (``index`` maps its SA indices
    to the file's)."""

    def __init__(self, stack: HostStack, index: list):
        self.stack = stack
        self.index = np.asarray(index, np.int32)


class _MergedIndication:
    """The part of a ReceiveResult that the summary reads."""

    __slots__ = ("crypto_status",)

    def __init__(self, crypto_status: np.ndarray):
        self.crypto_status = crypto_status


class _Merged:
    """The deliveries of several shards' stacks, one per frame (the shard that owns the frame's
    SA, else the first), with the file's SA index."""

    __slots__ = ("delivery", "sa", "nic", "_picked", "_gots")

    def __init__(self, gots: list, shards: list):
        deliveries = np.stack([g.delivery for g in gots])
        owned = ~np.isin(deliveries, (Delivery.NO_SA, Delivery.SELECTOR))
        selector = deliveries == Delivery.SELECTOR
        picked = np.where(owned.any(axis=0), owned.argmax(axis=0),
                          np.where(selector.any(axis=0), selector.argmax(axis=0), 0))
        cols = np.arange(deliveries.shape[1])
        self.delivery = deliveries[picked, cols]
        local = np.stack([g.sa for g in gots])[picked, cols]
        sa = np.full(len(cols), -1, np.int32)
        for w, shard in enumerate(shards):
            mine = (picked == w) & (local >= 0)
            sa[mine] = shard.index[local[mine]]
        self.sa = sa
        self.nic = _MergedIndication(np.stack([g.nic.crypto_status for g in gots])[picked, cols])
        self._picked, self._gots = picked, gots

    def packet(self, i: int) -> bytes:
        return self._gots[int(self._picked[i])].packet(i)

    def frames_of(self, mask: np.ndarray):
        """(arena, off, length) of the frames ``mask`` selects: the shards' arenas joined."""
        bases = np.cumsum([0] + [len(g.data) for g in self._gots[:-1]])
        picked = self._picked[mask]
        cols = np.flatnonzero(mask)
        offs = np.stack([g.off for g in self._gots])[picked, cols] + bases[picked]
        lens = np.stack([g.length for g in self._gots])[picked, cols]
        return np.concatenate([g.data for g in self._gots]), offs, lens


class CaptureDecryptor:
    """The stack, the miniport and the running summary of one capture. ``workers`` > 1: the
    SAs in that many stacks (SPI groups dealt round-robin, so each SA's window stays in one
    place), each receiving every batch on its own thread; the output and the summary are the
    one-worker ones."""

    def __init__(self, policies: Sequence[SaPolicy], summary: DecryptSummary, *,
                 replay_window: int = DEFAULT_REPLAY_WINDOW, keep_failed: bool = False,
                 miniport: Optional[Miniport] = None, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.policies = list(policies)
        self.summary = summary
        self.keep_failed = keep_failed
        # the record path reads one link type; the bulk path has one per record (pcapng)
        self.ethernet = summary.linktype == LINKTYPE_ETHERNET
        self.l2 = 14 if self.ethernet else 0
        link = "ethernet" if self.ethernet else "raw"
        groups = _spi_groups(self.policies)
        workers = max(1, min(workers, len(groups)))
        dealt: list = [[] for _ in range(workers)]
        for k, group in enumerate(groups):
            dealt[k % workers] += group
        self.shards = []
        for w, members in enumerate(dealt):
            nic = miniport if (w == 0 and miniport is not None) else Miniport()
            self.shards.append(_Shard(HostStack(nic, link=link), sorted(members)))
        self.stack = self.shards[0].stack
        self.inbound: list = [None] * len(self.policies)
        for shard in self.shards:
            for i in shard.index.tolist():
                policy = self.policies[i]
                selector = None
                if policy.config.mode == "transport":
                    selector = (policy.selector.src, policy.selector.dst)
                self.inbound[i] = shard.stack.add_inbound_sa(
                    policy.config, replay_window=replay_window, selector=selector,
                    versions=_versions(policy))
        if len(self.shards) > 1:
            # every shard's NIC parses the same UDP-ESP ports (docs/spec-gaps.md G31): a frame
            # on a port one shard added would otherwise pass as clear through the others
            ports: dict = {}
            for shard in self.shards:
                ports.update(dict.fromkeys(shard.stack.miniport.nat_t_ports))
            for shard in self.shards:
                shard.stack.miniport.nat_t_ports = tuple(ports)
        self._pool = None
        if len(self.shards) > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=len(self.shards) - 1,
                                            thread_name_prefix="ipsecoffload-decrypt")
        summary.sas = {p.name: DecryptSaStats() for p in self.policies}
        self._names = [p.name for p in self.policies]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _receive(self, batch: PacketBatch):
        if self._pool is None:
            return self.stack.receive(batch)
        futures = [self._pool.submit(shard.stack.receive, batch) for shard in self.shards[1:]]
        gots = [self.stack.receive(batch)] + [f.result() for f in futures]
        return _Merged(gots, self.shards)

    def _link_length(self, frame: bytes) -> int:
        """The link header before IP (802.1Q / 802.1ad tags understood), or -1: not IP."""
        if not self.ethernet:
            return 0
        off = 12
        while len(frame) >= off + 2:
            ethertype = (frame[off] << 8) | frame[off + 1]
            if ethertype in _ETH_VLAN:
                off += 4
                continue
            return off + 2 if ethertype in (_ETH_IPV4, _ETH_IPV6) else -1
        return -1

    def process(self, records) -> list:
        """The frames to write for one batch of records, as (frame, ts_ns) in input order."""
        summary = self.summary
        summary.packets_in += len(records)
        frames, l2s, to_nic = [], [], []
        for index, record in enumerate(records):
            l2 = self._link_length(record.data)
            if l2 >= 0:
                to_nic.append(index)
                frames.append(record.data)
                l2s.append(l2)
        outputs: list[Optional[bytes]] = [record.data for record in records]
        passed_clear = len(records) - len(to_nic)
        got = None  # a Received, or _Merged with --workers
        if frames:
            batch = PacketBatch.from_frames(frames, l2_len=np.array(l2s, np.uint16))
            got = self._receive(batch)
            self._count(got)
            delivery = got.delivery.tolist()
            for k, index in enumerate(to_nic):
                code = delivery[k]
                if code == Delivery.DECAP:
                    outputs[index] = got.packet(k)
                elif code != Delivery.CLEAR and not self.keep_failed:
                    outputs[index] = None
        summary.clear += passed_clear
        out = [(frame, record.ts_ns) for frame, record in zip(outputs, records)
               if frame is not None]
        summary.packets_out += len(out)
        return out

    def emit_bulk(self, batch, writer) -> None:
        """One RecordBatch of the bulk reader (io/bulk.py) to the output records, in input
        order, laid out by one ``capture_emit`` pass (io/capture_scan.pxi) and handed to
        ``writer``: a record that is not IP, passes in clear or (``keep_failed``) failed as
        read, a decapsulated packet with the record's timestamp, a dropped one not at all.
        Link headers are found in one compiled pass (capture_link_parse): Ethernet (802.1Q /
        802.1ad tags understood) or raw IP, per record. A batch whose records are all
        decapsulated or dropped, 512 B or more a frame, is written from the delivered arena
        with writev (``capture_pieces``, as ``encrypt`` does; docs/architecture.md, "Capture
        I/O"): records as read live in the reader's buffer, which the next batch reuses."""
        arena, pkts = batch.arena, batch.pkts
        n = len(pkts)
        summary = self.summary
        summary.packets_in += n
        # the reader's rows become the records as capture_emit reads them: PKT_NOT_IP = as
        # read, nbl >= 0 = the decapsulated frame of that number, PKT_DROP = nothing
        n_ip = kernels().capture_link_parse(arena, pkts.view(np.uint8), n, _ETH_VLAN_TYPES,
                                            _ETH_IPV4, _ETH_IPV6)
        summary.clear += n - n_ip
        l2 = pkts["l2_len"]
        picked = np.flatnonzero(l2 >= 0) if n_ip < n else np.arange(n)
        off, cap = pkts["off"], pkts["cap_len"].astype(np.int64)
        wire, table = np.zeros(0, np.uint8), np.zeros(0, WIRE_FRAME_DTYPE)
        if len(picked):
            frames = PacketBatch(arena, off[picked], cap[picked],
                                 np.arange(len(picked), dtype=np.int32),
                                 l2_len=l2[picked].astype(np.uint16))
            got = self._receive(frames)
            self._count(got)
            delivery = got.delivery
            decap = delivery == Delivery.DECAP
            if not self.keep_failed:
                pkts["kind"][picked[~decap & (delivery != Delivery.CLEAR)]] = PKT_DROP
            mine = picked[decap]
            number = np.arange(len(mine), dtype=np.int32)
            pkts["kind"][mine] = PKT_CLEAR
            pkts["nbl"][mine] = number
            wire, frame_off, frame_len = got.frames_of(decap)
            table = np.zeros(len(mine), WIRE_FRAME_DTYPE)
            table["off"], table["len"], table["nbl"] = frame_off, frame_len, number
        count = len(table)
        frame_bytes = int(table["len"].sum()) if count else 0
        counts = (np.empty(n, np.int64), np.empty(n, np.int64))
        wire = np.ascontiguousarray(wire, np.uint8)
        if count and frame_bytes >= PIECES_MIN_FRAME * count and writer.can_write_pieces \
                and not (pkts["kind"] == PKT_NOT_IP).any():
            heads = np.empty(35 * count + 4, np.uint8)
            pieces = np.empty(2 * (2 * count + 1), np.uint64)
            used, total = kernels().capture_pieces(
                writer.code, heads, pieces, pkts.view(np.uint8), 0, n, wire,
                table.view(np.uint8), count, writer.snaplen, writer.unit_ns, counts[0],
                counts[1])
            writer.write_pieces(pieces, used, total, (heads, wire))
        else:
            out = writer.emit_buffer(int(cap.sum()) + frame_bytes + 36 * n)
            used = kernels().capture_emit(writer.code, out, pkts.view(np.uint8), 0, n, arena,
                                          wire, table.view(np.uint8), count, writer.snaplen,
                                          writer.unit_ns, counts[0], counts[1])
            writer.write(out.data[:used])
        summary.packets_out += int(np.count_nonzero(counts[0]))

    def _count(self, got) -> None:
        summary = self.summary
        delivery = got.delivery
        counts = np.bincount(delivery, minlength=len(Delivery))
        summary.clear += int(counts[Delivery.CLEAR])
        summary.malformed += int(counts[Delivery.MALFORMED])
        summary.no_sa += int(counts[Delivery.NO_SA] + counts[Delivery.SELECTOR])
        attributed = _ATTRIBUTED[delivery] & (got.sa >= 0)
        if not attributed.any():
            return
        # one np.unique per count over (SA, value) keys: a Python step per pair the batch
        # holds, not a pass over the batch per SA; each SA meets its values in ascending order
        sas = got.sa[attributed].astype(np.int64)
        codes = delivery[attributed].astype(np.int64)
        status = got.nic.crypto_status[attributed].astype(np.int64)
        stats_of = [summary.sas[name] for name in self._names]
        ks, n = np.unique(sas, return_counts=True)
        for k, c in zip(ks.tolist(), n.tolist()):
            stats_of[k].packets += c
        keys, n = np.unique((sas << 32) | status, return_counts=True)
        for key, c in zip(keys.tolist(), n.tolist()):
            v = key & 0xFFFFFFFF
            stats_of[key >> 32].crypto_status[_CRYPTO_NAMES.get(v, str(v))] += c
        keys, n = np.unique((sas << 32) | codes, return_counts=True)
        for key, c in zip(keys.tolist(), n.tolist()):
            stats, v = stats_of[key >> 32], key & 0xFFFFFFFF
            if v == Delivery.REPLAY:
                stats.replayed += c
            elif v == Delivery.DECAP:
                stats.decapsulated += c
            elif v != Delivery.CRYPTO:
                stats.dropped[Delivery(v).name.lower()] += c


def decrypt_capture(input_path, output_path, policies: Sequence[SaPolicy], *,
                    replay_window: int = DEFAULT_REPLAY_WINDOW, keep_failed: bool = False,
                    batch_size: int = DEFAULT_BATCH, count: Optional[int] = None,
                    progress: Optional[Callable[[int], None]] = None,
                    miniport: Optional[Miniport] = None, output_format: Optional[str] = None,
                    protect=(), workers: int = 1) -> DecryptSummary:
    """Decrypt a pcap or pcapng capture with the SA policies; returns the summary.

    ``input_path`` / ``output_path`` may be ``"-"`` (standard input / output); the output is
    in the input's format unless ``output_format``. It goes to a temporary file beside
    ``output_path``, renamed into place on success; on any error only that temporary file is
    removed (io/atomic.py), and an output path naming the input (or a path in ``protect``)
    is refused. ``workers``: the SAs spread over that many stacks on as many threads
    (CaptureDecryptor). Raises ``PcapError`` for an unusable capture and ``OSError`` for file
    problems.
    """
    if output_format not in (None, "pcap", "pcapng"):
        raise ValueError(f"output_format must be 'pcap' or 'pcapng', got {output_format!r}")
    if kernels() is not None and (miniport is None or hasattr(miniport.kernels, "rx_run")):
        return _decrypt_bulk(input_path, output_path, policies, replay_window=replay_window,
                             keep_failed=keep_failed, batch_size=batch_size, count=count,
                             progress=progress, miniport=miniport, output_format=output_format,
                             protect=protect, workers=workers)
    if output_format == "pcapng" or input_path == "-" or output_path == "-":
        raise PcapError("pcapng, standard input and standard output need the compiled kernels")
    return _decrypt_records(input_path, output_path, policies, replay_window=replay_window,
                            keep_failed=keep_failed, batch_size=batch_size, count=count,
                            progress=progress, miniport=miniport, workers=workers)


def _decrypt_bulk(input_path, output_path, policies, *, replay_window, keep_failed, batch_size,
                  count, progress, miniport, output_format, protect,
                  workers: int = 1) -> DecryptSummary:
    from .atomic import SafeOutput
    from .bulk import BulkReader, BulkWriter, summary_linktype
    start = time.perf_counter()
    output_path = output_path if output_path == "-" else os.fspath(output_path)
    with warnings.catch_warnings(record=True) as caught, \
            BulkReader(input_path, limit=count) as reader:
        warnings.simplefilter("always")
        out = SafeOutput(output_path, protect=[(input_path, "input capture"), *protect])
        fmt = output_format or reader.format
        summary = DecryptSummary(
            input="-" if input_path == "-" else os.fspath(input_path), output=output_path,
            linktype=summary_linktype(reader))
        decryptor = CaptureDecryptor(policies, summary, replay_window=replay_window,
                                     keep_failed=keep_failed, miniport=miniport,
                                     workers=workers)
        with out, _closing(decryptor):
            assert out.file is not None
            writer = None  # made at the first batch: a pcapng's interfaces come with its blocks
            try:
                for batch in reader.batches(batch_size):
                    if writer is None:
                        writer = BulkWriter(out.file, fmt, reader, background=not out.streamed,
                                            reserve=out.reserve)
                        summary.linktype = summary_linktype(reader)  # a pcapng's, known now
                    writer.interfaces(reader)
                    decryptor.emit_bulk(batch, writer)
                    if progress is not None:
                        progress(summary.packets_in)
                if writer is None:
                    BulkWriter(out.file, fmt, reader)  # an empty capture: the header alone
                else:
                    writer.close()
            finally:
                if writer is not None:
                    writer.abandon()
            out.commit()
    keep_truncation_warnings(caught, summary.warnings)
    summary.seconds = time.perf_counter() - start
    return summary


def _decrypt_records(input_path, output_path, policies: Sequence[SaPolicy], *,
                     replay_window: int = DEFAULT_REPLAY_WINDOW, keep_failed: bool = False,
                     batch_size: int = DEFAULT_BATCH, count: Optional[int] = None,
                     progress: Optional[Callable[[int], None]] = None,
                     miniport: Optional[Miniport] = None, workers: int = 1) -> DecryptSummary:
    """The record-by-record path for the pure-Python kernels (classic pcap files only)."""
    start = time.perf_counter()
    output_path = os.fspath(output_path)
    with warnings.catch_warnings(record=True) as caught, PcapReader(input_path) as reader:
        warnings.simplefilter("always")
        if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
            raise PcapError(f"{output_path!r} is the input capture; choose another output file")
        summary = DecryptSummary(input=os.fspath(input_path), output=output_path,
                                 linktype=reader.linktype)
        decryptor = CaptureDecryptor(policies, summary, replay_window=replay_window,
                                     keep_failed=keep_failed, miniport=miniport,
                                     workers=workers)
        directory = os.path.dirname(os.path.abspath(output_path))
        fd, temp = tempfile.mkstemp(prefix=".ipsecoffload-", suffix=".pcap.part", dir=directory)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as handle, PcapWriter(
                    handle, reader.linktype, nanosecond=reader.nanosecond,
                    snaplen=max(reader.snaplen, DEFAULT_SNAPLEN)) as writer:
                left = count
                for records in reader.batches(batch_size):
                    if left is not None:
                        records = records[:left]
                        left -= len(records)
                    for frame, ts_ns in decryptor.process(records):
                        writer.write(frame, ts_ns=ts_ns)
                    if progress is not None:
                        progress(summary.packets_in)
                    if left is not None and left <= 0:
                        break
            os.replace(temp, output_path)
        except BaseException:
            decryptor.close()
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
    decryptor.close()
    keep_truncation_warnings(caught, summary.warnings)
    summary.seconds = time.perf_counter() - start
    return summary


class _closing:
    def __init__(self, decryptor: CaptureDecryptor):
        self.decryptor = decryptor

    def __enter__(self) -> CaptureDecryptor:
        return self.decryptor

    def __exit__(self, *exc) -> None:
        self.decryptor.close()


__all__ = ["CaptureDecryptor", "DecryptSaStats", "DecryptSummary", "decrypt_capture"]
