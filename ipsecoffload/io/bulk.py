"""Capture files in bulk (docs/architecture.md, "Capture I/O"): classic pcap (microseconds or
nanoseconds, either byte order) and pcapng read in large chunks, record boundaries found by
the compiled scan (io/capture_scan.pxi), and output records written from whole arenas.

``BulkReader.batches(n)`` yields ``RecordBatch``es: one arena (a view of the read buffer, valid
until the next batch is asked for) and HostPkt rows (host/tx_frame.py) with each record's
offset, captured length, timestamp in ns, interface and link (Ethernet or raw IP). From a
regular file the next chunk is read ahead on a thread. Memory is two chunks plus the batch,
whatever the capture's size. ``BulkWriter`` writes pcap or pcapng
records that ``capture_emit`` laid out. io/pcap.py's record-by-record reader is the twin.
"""
from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Callable, Iterator, List, NamedTuple, Optional

import numpy as np

from ..host.tx_frame import HOST_PKT_DTYPE, kernels
from . import pcapng
from .pcap import (_GLOBAL_LE, _READ_LINKTYPES, DEFAULT_SNAPLEN, LINKTYPE_ETHERNET, MAGIC_NS,
                   MAGIC_US, PcapError, _unsupported_linktype)

CHUNK = 4 << 20
# Room before a chunk read ahead (BulkReader): the start of a record or block cut by the end
# of the chunk before is moved there, ahead of the new bytes. A pcapng block is at most 1 MiB
# (and a pcap record at most MAX_RECORD), so a longer start is rare and joined by a copy.
READ_AHEAD_HEAD = 1 << 20
# A record longer than its snap length, or than this when the file sets none, is corruption.
MAX_RECORD = 256 * 1024
# Frames of at least this many bytes on average are written from where they lie (writev,
# BulkWriter.write_pieces) rather than copied into one buffer first; below it the copy costs
# less than the kernel's walk over two pieces per record (docs/architecture.md, "Capture I/O")
PIECES_MIN_FRAME = 512
FORMATS = ("pcap", "pcapng")
SCAN_MORE, SCAN_FULL, SCAN_CORRUPT, SCAN_BLOCK, SCAN_OVERSIZE = range(5)


class RecordBatch(NamedTuple):
    arena: np.ndarray  # uint8
    pkts: np.ndarray  # HOST_PKT_DTYPE rows: off, cap_len, ts_ns, iface, link

    def __len__(self) -> int:
        return len(self.pkts)

    def record(self, i: int) -> bytes:
        off, n = int(self.pkts["off"][i]), int(self.pkts["cap_len"][i])
        return self.arena[off:off + n].tobytes()


def _link_of(linktype: int, name: str) -> int:
    if linktype not in _READ_LINKTYPES:
        raise PcapError(f"{name!r}: {_unsupported_linktype(linktype)}.")
    return 1 if _READ_LINKTYPES[linktype] == LINKTYPE_ETHERNET else 0


class BulkReader:
    """A pcap or pcapng capture read in chunks. ``source``: a path, ``"-"`` (standard
    input) or a binary file object. ``interfaces`` grows as pcapng IDBs are met (every
    section's interfaces, numbered in file order); a pcap file has one."""

    def __init__(self, source, *, chunk: int = CHUNK, limit: Optional[int] = None,
                 background: Optional[bool] = None):
        self.name = "<stdin>" if source == "-" else (
            os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike))
            else str(getattr(source, "name", repr(source))))
        if source == "-":
            import sys
            self._file: BinaryIO = sys.stdin.buffer
            self._owns = False
        elif isinstance(source, (str, bytes, os.PathLike)):
            self._file = open(source, "rb")
            self._owns = True
        else:
            self._file, self._owns = source, False
        self.size: Optional[int] = None  # bytes, when the input is a regular file
        try:
            st = os.fstat(self._file.fileno())
            import stat
            if stat.S_ISREG(st.st_mode):
                self.size = st.st_size
        except (OSError, AttributeError, ValueError):
            pass
        self._chunk = chunk
        self._head = min(chunk, READ_AHEAD_HEAD)
        self._buf = np.empty(self._head + chunk, np.uint8)
        self._pos = self._end = 0
        self._eof = False
        # read-ahead (a regular file unless told): the next chunk is read into the spare
        # buffer on a thread while the current one is scanned and encrypted (the read
        # releases the GIL, so the kernel's copy runs on another core)
        self._pool: Optional[Any] = None
        self._pending: Optional[Any] = None  # the Future of the read in flight
        self._spare = self._buf
        if background is None:
            background = self.size is not None
        if background and hasattr(self._file, "readinto"):
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipsecoffload-read")
            self._spare = np.empty_like(self._buf)
        self.bytes_read = 0
        self.records_read = 0
        self.limit = limit
        self.warnings: List[str] = []
        self.interfaces: List[pcapng.Interface] = []
        self._section: List[int] = []  # this section's interface numbers
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- buffer ----------------------------------------------------------------------------
    def _fill(self, need: int) -> bool:
        """At least ``need`` bytes from _pos in the buffer, unless the file ends first."""
        while self._end - self._pos < need and not self._eof:
            if self._pending is not None:
                self._take_read_ahead()
            else:
                self._read(need)
            if self._pool is not None and self._pending is None and not self._eof:
                view = self._spare.data[self._head:self._head + self._chunk]
                self._pending = self._pool.submit(getattr(self._file, "readinto"), view)
        return self._end - self._pos >= need

    def _read(self, need: int) -> None:
        """One read into the buffer after its bytes from _pos (moved to the front)."""
        if self._pos:
            left = self._end - self._pos
            self._buf[:left] = self._buf[self._pos:self._end]
            self._pos, self._end = 0, left
        if need > len(self._buf):
            grown = np.empty(max(need, 2 * len(self._buf)), np.uint8)
            grown[:self._end] = self._buf[:self._end]
            self._buf = grown
        view = self._buf.data[self._end:]
        got = self._file.readinto(view) if hasattr(self._file, "readinto") else None
        if got is None:
            data = self._file.read(len(view))
            got = len(data)
            view[:got] = data
        self._got(got)

    def _take_read_ahead(self) -> None:
        """The chunk read ahead into the spare buffer becomes the buffer, after the bytes
        from _pos (a record or block the chunk before cut short)."""
        pending, self._pending = self._pending, None
        assert pending is not None
        got = pending.result() or 0
        head, left = self._head, self._end - self._pos
        if left <= head:
            self._spare[head - left:head] = self._buf[self._pos:self._end]
            self._buf, self._spare = self._spare, self._buf
            self._pos, self._end = head - left, head
        else:  # a long start: joined in the buffer, the spare's bytes copied after it
            if self._pos:
                self._buf[:left] = self._buf[self._pos:self._end]
                self._pos, self._end = 0, left
            if left + got > len(self._buf):
                grown = np.empty(max(left + got, 2 * len(self._buf)), np.uint8)
                grown[:left] = self._buf[:left]
                self._buf = grown
            self._buf[left:left + got] = self._spare[head:head + got]
        self._got(got)

    def _got(self, got: int) -> None:
        if not got:
            self._eof = True
        self._end += got
        self.bytes_read += got

    def _take(self, n: int) -> bytes:
        data = self._buf[self._pos:self._pos + n].tobytes()
        self._pos += n
        return data

    # -- headers ---------------------------------------------------------------------------
    def _open(self) -> None:
        self._fill(24)
        head = self._buf[self._pos:self._end][:24].tobytes()
        if not head:
            raise PcapError(f"{self.name!r} is empty, so it is not a capture file.")
        if len(head) >= 4 and int.from_bytes(head[:4], "big") == pcapng.SHB_TYPE:
            self.format = "pcapng"
            self._section_header()
            return
        if len(head) >= 4 and int.from_bytes(head[:4], "little") in (MAGIC_US, MAGIC_NS):
            order = "<"
        elif len(head) >= 4 and int.from_bytes(head[:4], "big") in (MAGIC_US, MAGIC_NS):
            order = ">"
        else:
            # the bytes themselves are not shown: the file may be a key file
            raise PcapError(f"{self.name!r} is not a pcap or pcapng capture file: it does not "
                            f"start with a pcap or pcapng magic number.")
        if len(head) < 24:
            raise PcapError(f"{self.name!r} is too short to be a pcap capture file: the "
                            f"global header needs 24 bytes but the file has only {len(head)}.")
        magic, major, minor, _, _, snaplen, linktype = struct.unpack(order + "IHHiIII", head)
        if major != 2:
            raise PcapError(f"{self.name!r} has pcap format version {major}.{minor}; only "
                            f"version 2.x is supported.")
        self._pos += 24
        self.format = "pcap"
        self.big = order == ">"
        self.nanosecond = magic == MAGIC_NS
        self.snaplen = snaplen
        linktype &= 0xFFFF
        self._pcap_link = _link_of(linktype, self.name)
        self.interfaces.append(pcapng.Interface(linktype, snaplen, 9 if self.nanosecond else 6))
        self._max = snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD

    def _block(self, what: str) -> bytes:
        if not self._fill(12):
            raise PcapError(f"{self.name!r} is corrupt: the file ends inside a pcapng {what}")
        order = self._order
        if what == "section header":
            # the block length is read in the byte order the block itself declares
            self._fill(28)
            order = pcapng.section_order(self._buf[self._pos:self._pos + 28].tobytes(),
                                         self.name)
        total = struct.unpack_from(order + "I", self._buf[self._pos:self._pos + 8].tobytes(), 4)[0]
        if total < 12 or total % 4 or total > 1 << 20:
            raise PcapError(f"{self.name!r} is corrupt: a pcapng {what} of {total} bytes")
        if not self._fill(total):
            raise PcapError(f"{self.name!r} is corrupt: the file ends inside a pcapng {what}")
        return self._take(total)

    def _section_header(self) -> None:
        self._order = "<"
        block = self._block("section header")
        self._order = pcapng.section_order(block, self.name)
        self.big = self._order == ">"
        self._section = []

    def _interface(self) -> None:
        block = self._block("interface description")
        iface = pcapng.parse_idb(block, self._order, self.name)
        _link_of(iface.linktype, self.name)
        self._section.append(len(self.interfaces))
        self.interfaces.append(iface)

    @property
    def bytes_consumed(self) -> int:
        """Bytes of the file behind the records handed out (for a progress percentage)."""
        return self.bytes_read - (self._end - self._pos)

    @property
    def snaplen_out(self) -> int:
        """The snap length output files get: room for what encryption adds."""
        snaps = [i.snaplen for i in self.interfaces] or [0]
        return max(max(snaps), DEFAULT_SNAPLEN)

    # -- records ---------------------------------------------------------------------------
    def batches(self, max_n: int) -> Iterator[RecordBatch]:
        """RecordBatches of at most max_n records; the arena of each is valid until the next."""
        fp = kernels()
        if fp is None:
            raise RuntimeError("bulk capture reading needs the compiled kernels")
        pkts = np.zeros(max_n, HOST_PKT_DTYPE)
        pkt_bytes = pkts.view(np.uint8)
        while True:
            want = max_n
            if self.limit is not None:
                want = min(want, self.limit - self.records_read)
                if want <= 0:
                    return
            n, pos, status, detail = self._scan(fp, pkt_bytes, want)
            self._pos = pos
            if n:
                self.records_read += n
                rows = pkts[:n]  # rewritten by the next scan, like the arena
                if self.format == "pcapng" and self._section:
                    rows["iface"] = np.asarray(self._section, np.int32)[rows["iface"]]
                yield RecordBatch(self._buf, rows)
                continue
            if status == SCAN_OVERSIZE:
                raise PcapError(
                    f"{self.name!r} is corrupt: record {self.records_read + 1} claims {detail} "
                    f"captured bytes, more than the snap length or the {self._max} byte limit.")
            if status == SCAN_CORRUPT:
                raise PcapError(f"{self.name!r} is corrupt: a malformed pcapng block (type "
                                f"{detail}) after record {self.records_read}.")
            if status == SCAN_BLOCK:
                if detail == pcapng.SHB_TYPE:
                    self._section_header()
                else:
                    self._interface()
                continue
            # SCAN_MORE with nothing found: read on, or the file ends
            if self._fill(max(self._record_need(), self._end - self._pos + 1)):
                continue
            if self._end > self._pos:
                self._truncated(self._end - self._pos)
            return

    def _scan(self, fp, pkt_bytes, want):
        if self.format == "pcap":
            return fp.pcap_scan(self._buf, self._pos, self._end, self.big,
                                1 if self.nanosecond else 1000, self._max, self._pcap_link,
                                pkt_bytes, want)
        links = np.asarray([_link_of(self.interfaces[g].linktype, self.name)
                            for g in self._section], np.int64)
        resol = np.asarray([self.interfaces[g].tsresol for g in self._section], np.int64)
        snaps = np.asarray([self.interfaces[g].snaplen for g in self._section], np.int64)
        self._max = max([s for s in snaps.tolist() if 0 < s <= MAX_RECORD] or [MAX_RECORD])
        return fp.pcapng_scan(self._buf, self._pos, self._end, self.big, links, resol, snaps,
                              self._max, pkt_bytes, want)

    def _record_need(self) -> int:
        """Bytes the record (or block) at _pos needs, as far as its header tells."""
        head = self._buf[self._pos:self._end].tobytes()[:28]
        if self.format == "pcap":
            if len(head) < 16:
                return 16
            return 16 + struct.unpack_from(">I" if self.big else "<I", head, 8)[0]
        if len(head) < 12:
            return 12
        return struct.unpack_from(self._order + "I", head, 4)[0]

    def _truncated(self, left: int) -> None:
        self.warnings.append(
            f"{self.name!r}: read {self.records_read} complete record(s); the last record was "
            f"truncated ({left} bytes at the end of the file) and was dropped.")

    def close(self) -> None:
        """Waits for the read in flight (its outcome no longer matters) and closes the file
        if the reader opened it."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                try:
                    pending.result()
                except Exception:
                    pass
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        finally:
            if self._owns:
                self._file.close()

    def __enter__(self) -> "BulkReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary_linktype(reader: "BulkReader") -> int:
    """The link type a summary names: the first interface's (LINKTYPE_IPV4 / IPV6 as
    LINKTYPE_RAW), 0 while a pcapng has shown none."""
    if not reader.interfaces:
        return 0
    linktype = reader.interfaces[0].linktype & 0xFFFF
    return 101 if linktype in (228, 229) else linktype


class BulkWriter:
    """Writes the records ``capture_emit`` lays out, after the file header: pcap
    (little-endian; nanoseconds when the input has them) or pcapng (one IDB per input
    interface, written before the first record that needs it).

    ``background``: each ``write`` is handed to one writer thread (the file's write releases
    the GIL, so the copy into the OS overlaps the next batch's work on another core) and
    returns at once; writes keep their order, at most one is in flight, and the caller must
    not change a buffer until the write after it has been handed over (``capture_emit``
    output alternates between two buffers: ``emit_buffer``). ``close()`` waits for the last
    write; an error in the thread is raised by the next ``write`` or by ``close``. Only for
    regular files: a write to a pipe or terminal may block as long as its reader does, and an
    interrupt must not then wait for it."""

    def __init__(self, file: BinaryIO, fmt: str, reader: BulkReader, *,
                 background: bool = False, reserve: Optional[Callable[[int], None]] = None):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.file, self.format = file, fmt
        self._reserve = reserve  # SafeOutput.reserve: blocks ahead of the writes
        self.bytes_written = 0
        self._pool: Optional[Any] = None
        self._pending: Optional[Any] = None  # the Future of the write in flight
        self._buffers: list = [np.zeros(0, np.uint8), np.zeros(0, np.uint8)]
        self._turn = 0
        if background:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="ipsecoffload-write")
        self.snaplen = reader.snaplen_out
        self.records_written = 0
        self._ifaces = 0
        self.unit_ns = np.zeros(0, np.int64)
        if fmt == "pcap":
            if not reader.interfaces:
                raise PcapError(f"{reader.name!r} describes no interface; it cannot be "
                                f"written as pcap (use --format pcapng)")
            first = reader.interfaces[0]
            self.linktype = _READ_LINKTYPES[first.linktype]
            self.nanosecond = first.nanosecond_or_finer
            self.code = 1 if self.nanosecond else 0
            magic = MAGIC_NS if self.nanosecond else MAGIC_US
            file.write(_GLOBAL_LE.pack(magic, 2, 4, 0, 0, self.snaplen, self.linktype))
        else:
            self.code = 2
            file.write(pcapng.shb_bytes())
        self.interfaces(reader)

    def interfaces(self, reader: BulkReader) -> None:
        """Account for the reader's interfaces met so far (pcapng: write their IDBs)."""
        new = reader.interfaces[self._ifaces:]
        if not new:
            return
        if self.format == "pcap":
            for iface in new:
                if _READ_LINKTYPES[iface.linktype] != self.linktype:
                    raise PcapError(f"{reader.name!r} has interfaces of different link types; "
                                    f"it cannot be written as pcap (use --format pcapng)")
        else:
            units = []
            for iface in new:
                resol = 6 if not iface.nanosecond_or_finer else 9
                self.write(pcapng.idb_bytes(_READ_LINKTYPES[iface.linktype],
                                                 self.snaplen, resol))
                units.append(1000 if resol == 6 else 1)
            self.unit_ns = np.concatenate([self.unit_ns, np.asarray(units, np.int64)])
        self._ifaces = len(reader.interfaces)

    def emit_buffer(self, size: int) -> np.ndarray:
        """A buffer of at least ``size`` bytes to lay records out in: two used in turn, so
        that one can be filled while the other is written."""
        self._turn ^= 1
        if len(self._buffers[self._turn]) < size:
            self._wait()  # the buffer replaced may be the one in flight
            self._buffers[self._turn] = np.empty(size + (size >> 2), np.uint8)
        return self._buffers[self._turn]

    @property
    def can_write_pieces(self) -> bool:
        """Whether write_pieces is available: a background writer (a regular file) and
        writev(2)."""
        return self._pool is not None and bool(getattr(kernels(), "HAVE_WRITE_PIECES", False))

    def write_pieces(self, pieces: np.ndarray, count: int, nbytes: int, keep: Any) -> None:
        """Writes the ``count`` pieces ``capture_pieces`` laid out (``nbytes`` in all) from
        where they lie, on the writer thread, in order with every other write; ``keep`` holds
        the memory they address (the headers, the wire arenas) until then. Saves the copy
        into an emit buffer that ``write`` of capture_emit's output makes."""
        if self._pool is None or not self.can_write_pieces:
            raise RuntimeError("write_pieces needs a background writer and writev")
        self.bytes_written += nbytes
        if self._reserve is not None:
            self._reserve(self.bytes_written)
        self._wait()
        self._pending = self._pool.submit(self._write_pieces, pieces, count, keep)

    def _write_pieces(self, pieces: np.ndarray, count: int, keep: Any) -> None:
        file = self.file
        file.flush()  # what file.write buffered goes first
        fd = file.fileno()
        err = kernels().write_pieces(fd, pieces, count)
        # the file object's position (tell(), SafeOutput.commit) follows the descriptor's
        file.seek(os.lseek(fd, 0, os.SEEK_CUR))
        if err:
            raise OSError(err, os.strerror(err))

    def write(self, data) -> None:
        self.bytes_written += len(data)
        if self._reserve is not None:
            self._reserve(self.bytes_written)
        if self._pool is None:
            self.file.write(data)
            return
        self._wait()
        self._pending = self._pool.submit(self.file.write, data)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Waits for the write in flight (and raises its error); stops the thread."""
        if self._pool is None:
            return
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None

    def abandon(self) -> None:
        """On an error path: waits for the write in flight, whatever its outcome (the output
        is about to be discarded), so that nothing writes to the file once it is closed."""
        try:
            self.close()
        except Exception:
            pass


__all__ = ["BulkReader", "BulkWriter", "CHUNK", "FORMATS", "MAX_RECORD", "PIECES_MIN_FRAME",
           "RecordBatch"]
