"""Classic libpcap capture files (not pcapng): streaming reader and writer.

Supports microsecond and nanosecond files in either byte order on read, and Ethernet or
raw IP link types. Files are always written little-endian.
"""
from __future__ import annotations

import math
import operator
import os
import struct
import time
import warnings
from typing import (BinaryIO, Iterable, Iterator, List, NamedTuple, Optional, Sized, Tuple,
                    Union, cast)

from ..errors import IpsecOffloadError

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "DEFAULT_SNAPLEN",
    "MAX_RECORD_LEN",
    "PcapError",
    "PcapTruncatedWarning",
    "PcapRecord",
    "PcapReader",
    "PcapWriter",
    "l2_length",
    "read_pcap",
    "write_pcap",
]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229

DEFAULT_SNAPLEN = 262144
# A record longer than this is treated as corruption rather than allocated, whatever the
# file's snap length says (a 4 GiB snap length must not let a 512 MiB record through): the
# largest IP packet without a jumbogram option is 64 KiB, an LSO super-packet rarely more.
MAX_RECORD_LEN = 16 * 1024 * 1024

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
_PCAPNG_MAGIC = 0x0A0D0D0A

_GLOBAL_HEADER_LEN = 24
_RECORD_HEADER_LEN = 16
_READ_CHUNK = 1 << 20

_L2_LENGTH = {LINKTYPE_ETHERNET: 14, LINKTYPE_RAW: 0, LINKTYPE_IPV4: 0, LINKTYPE_IPV6: 0}
_READ_LINKTYPES = {
    LINKTYPE_ETHERNET: LINKTYPE_ETHERNET,
    LINKTYPE_RAW: LINKTYPE_RAW,
    LINKTYPE_IPV4: LINKTYPE_RAW,
    LINKTYPE_IPV6: LINKTYPE_RAW,
}
_WRITE_LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_RAW)
_LINKTYPE_NAMES = {
    LINKTYPE_ETHERNET: "LINKTYPE_ETHERNET",
    LINKTYPE_RAW: "LINKTYPE_RAW",
    LINKTYPE_IPV4: "LINKTYPE_IPV4",
    LINKTYPE_IPV6: "LINKTYPE_IPV6",
}

_GLOBAL_LE = struct.Struct("<IHHiIII")
_RECORD_LE = struct.Struct("<IIII")
_RECORD_BE = struct.Struct(">IIII")
_NS_PER_S = 1_000_000_000

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]
PathLike = Union[str, "os.PathLike[str]"]


class PcapError(IpsecOffloadError):
    """The file is not a usable classic pcap capture, or an argument is unsupported."""


class PcapTruncatedWarning(UserWarning):
    """The last record of a capture was cut short; the complete records were kept."""


def keep_truncation_warnings(caught, kept: list) -> None:
    """After ``warnings.catch_warnings(record=True)`` around a capture run: a truncated last
    record goes into ``kept`` (the run's summary); any other warning is issued again."""
    for warning in caught:
        if issubclass(warning.category, PcapTruncatedWarning):
            kept.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)


class PcapRecord(NamedTuple):
    """One captured frame: timestamp in ns since the epoch, captured bytes, wire length."""

    ts_ns: int
    data: bytes
    orig_len: int

    @property
    def ts(self) -> float:
        """Timestamp in seconds (float; loses sub-microsecond precision)."""
        return self.ts_ns / _NS_PER_S


def l2_length(linktype: int) -> int:
    """Bytes of link-layer header before the IP header: 14 for Ethernet, 0 for raw IP."""
    try:
        return _L2_LENGTH[linktype]
    except KeyError:
        raise PcapError(_unsupported_linktype(linktype)) from None


def _unsupported_linktype(linktype: int, supported=tuple(_LINKTYPE_NAMES), action: str = "") -> str:
    names = ", ".join(f"{_LINKTYPE_NAMES[value]} ({value})" for value in supported)
    return f"unsupported pcap link type {linktype}{action}; supported: {names}"


def _display_name(path_or_file) -> str:
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        return os.fsdecode(path_or_file)
    name = getattr(path_or_file, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return repr(path_or_file)


def _is_path(path_or_file) -> bool:
    return isinstance(path_or_file, (str, bytes, os.PathLike))


def _as_bytes_view(frame) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


class PcapReader:
    """Streaming reader of a classic pcap file.

    The global header is parsed on construction. Iterating yields ``PcapRecord`` in file
    order, reading one record at a time; ``batches(n)`` groups them in lists of at most
    ``n``. Both consume the same stream, so a record is yielded once overall.

    ``linktype`` is ``LINKTYPE_ETHERNET`` or ``LINKTYPE_RAW`` (``LINKTYPE_IPV4`` and
    ``LINKTYPE_IPV6`` files report ``LINKTYPE_RAW``; ``file_linktype`` keeps the header
    value). ``byte_order`` is ``"little"`` or ``"big"``. A file object is read from its
    current position and is not closed by ``close()``; a path is opened and closed here.
    """

    def __init__(self, path_or_file: PathOrFile):
        self.name = _display_name(path_or_file)
        if _is_path(path_or_file):
            self._file: BinaryIO = open(cast(PathLike, path_or_file), "rb")
            self._owns_file = True
        else:
            if not hasattr(path_or_file, "read"):
                raise TypeError(f"expected a path or a binary file object, got {type(path_or_file).__name__}")
            self._file = cast(BinaryIO, path_or_file)
            self._owns_file = False
        self._done = False
        self.records_read = 0
        try:
            self._read_global_header()
        except BaseException:
            self.close()
            raise

    def _read_global_header(self) -> None:
        header = self._read_exact(_GLOBAL_HEADER_LEN)
        if not isinstance(header, bytes):
            raise TypeError(f"{self.name!r} must be opened in binary mode")
        if not header:
            raise PcapError(f"{self.name!r} is empty, so it is not a pcap capture file.")
        if len(header) >= 4:
            if int.from_bytes(header[:4], "little") in (MAGIC_US, MAGIC_NS):
                order, fmt = "little", "<"
            elif int.from_bytes(header[:4], "big") in (MAGIC_US, MAGIC_NS):
                order, fmt = "big", ">"
            elif int.from_bytes(header[:4], "big") == _PCAPNG_MAGIC:
                raise PcapError(
                    f"{self.name!r} is a pcapng file (magic 0x0A0D0D0A), which is not supported: "
                    f"only classic pcap is (convert it with 'editcap -F pcap')."
                )
            else:
                raise PcapError(
                    # the bytes themselves are not shown: the file may be a key file
                    f"{self.name!r} is not a pcap capture file: it does not start with the "
                    f"magic 0xA1B2C3D4 or 0xA1B23C4D in either byte order."
                )
        if len(header) < _GLOBAL_HEADER_LEN:
            raise PcapError(
                f"{self.name!r} is too short to be a pcap capture file: the global header "
                f"needs {_GLOBAL_HEADER_LEN} bytes but the file has only {len(header)}."
            )
        magic, major, minor, thiszone, sigfigs, snaplen, linktype_field = struct.unpack(
            fmt + "IHHiIII", header
        )
        if major != 2:
            raise PcapError(
                f"{self.name!r} has pcap format version {major}.{minor}; only version 2.x is supported."
            )
        # The upper bits of the link-type field carry FCS information, not the type.
        file_linktype = linktype_field & 0xFFFF
        if file_linktype not in _READ_LINKTYPES:
            raise PcapError(f"{self.name!r}: {_unsupported_linktype(file_linktype)}.")
        self.byte_order = order
        self.nanosecond = magic == MAGIC_NS
        self.version = (major, minor)
        self.thiszone = thiszone
        self.sigfigs = sigfigs
        self.snaplen = snaplen
        self.file_linktype = file_linktype
        self.linktype = _READ_LINKTYPES[file_linktype]
        self._record = _RECORD_LE if order == "little" else _RECORD_BE
        self._frac_ns = 1 if self.nanosecond else 1000
        self._max_incl = MAX_RECORD_LEN

    def _read_exact(self, n: int) -> bytes:
        """Read up to n bytes, fewer only at end of file; large n is read in chunks so a
        lying length in a short file never allocates n bytes at once."""
        data = self._file.read(min(n, _READ_CHUNK))
        if data is None:
            raise PcapError(f"{self.name!r} is a non-blocking stream with no data available.")
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            chunk = self._file.read(min(n - got, _READ_CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _truncated(self, what: str) -> None:
        self._done = True
        warnings.warn(
            f"{self.name!r}: read {self.records_read} complete record(s); the last record was "
            f"truncated ({what}) and was dropped.",
            PcapTruncatedWarning,
            stacklevel=4,
        )

    def read_record(self) -> Optional[PcapRecord]:
        """The next record, or None at end of file (after warning if it was truncated)."""
        if self._done:
            return None
        header = self._read_exact(_RECORD_HEADER_LEN)
        if len(header) < _RECORD_HEADER_LEN:
            if header:
                self._truncated(f"record header has {len(header)} of {_RECORD_HEADER_LEN} bytes")
            else:
                self._done = True
            return None
        ts_sec, ts_frac, incl_len, orig_len = self._record.unpack(header)
        if incl_len > self._max_incl:
            self._done = True
            raise PcapError(
                f"{self.name!r} is corrupt: record {self.records_read + 1} claims {incl_len} "
                f"captured bytes, more than the {MAX_RECORD_LEN} byte limit (snap length "
                f"{self.snaplen})."
            )
        data = self._read_exact(incl_len)
        if len(data) < incl_len:
            self._truncated(f"record data has {len(data)} of {incl_len} bytes")
            return None
        self.records_read += 1
        return PcapRecord(ts_sec * _NS_PER_S + ts_frac * self._frac_ns, data, orig_len)

    def __iter__(self) -> Iterator[PcapRecord]:
        return self

    def __next__(self) -> PcapRecord:
        record = self.read_record()
        if record is None:
            raise StopIteration
        return record

    def batches(self, batch_size: int) -> Iterator[List[PcapRecord]]:
        """Lists of at most batch_size records; only the current batch is held in memory."""
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        while True:
            batch: List[PcapRecord] = []
            while len(batch) < batch_size:
                record = self.read_record()
                if record is None:
                    break
                batch.append(record)
            if batch:
                yield batch
            if len(batch) < batch_size:
                return

    def close(self) -> None:
        self._done = True
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> "PcapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PcapReader({self.name!r}, linktype={getattr(self, 'linktype', None)}, "
                f"nanosecond={getattr(self, 'nanosecond', None)}, "
                f"byte_order={getattr(self, 'byte_order', None)!r})")


class PcapWriter:
    """Writer of a classic little-endian pcap file.

    Frames longer than ``snaplen`` are cut to ``snaplen`` bytes with ``orig_len`` keeping
    the full length. A file object is written at its current position and flushed, not
    closed, by ``close()``; a path is created (truncated) and closed here.
    """

    def __init__(self, path_or_file: PathOrFile, linktype: int, *, nanosecond: bool = False,
                 snaplen: int = DEFAULT_SNAPLEN):
        linktype = operator.index(linktype)
        if linktype not in _WRITE_LINKTYPES:
            raise PcapError(_unsupported_linktype(linktype, _WRITE_LINKTYPES, " for writing"))
        snaplen = operator.index(snaplen)
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen must be between 1 and 2**32-1, got {snaplen}")
        self.name = _display_name(path_or_file)
        self.linktype = linktype
        self.nanosecond = bool(nanosecond)
        self.snaplen = snaplen
        self.records_written = 0
        self._frac_per_s = _NS_PER_S if self.nanosecond else 1_000_000
        self._ns_per_frac = 1 if self.nanosecond else 1000
        if _is_path(path_or_file):
            self._file: BinaryIO = open(cast(PathLike, path_or_file), "wb")
            self._owns_file = True
        else:
            if not hasattr(path_or_file, "write"):
                raise TypeError(f"expected a path or a binary file object, got {type(path_or_file).__name__}")
            self._file = cast(BinaryIO, path_or_file)
            self._owns_file = False
        self._closed = False
        magic = MAGIC_NS if self.nanosecond else MAGIC_US
        try:
            self._file.write(_GLOBAL_LE.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        except BaseException:
            self.close()
            raise

    def _split_ns(self, ts_ns: int) -> Tuple[int, int]:
        # Round to the file's resolution first so a carry moves into the seconds.
        units = (ts_ns + self._ns_per_frac // 2) // self._ns_per_frac
        sec, frac = divmod(units, self._frac_per_s)
        if not 0 <= sec <= 0xFFFFFFFF:
            raise ValueError(f"timestamp {ts_ns} ns is outside the pcap range (1970 to 2106)")
        return sec, frac

    @staticmethod
    def _seconds_to_ns(ts: Union[float, int]) -> int:
        if isinstance(ts, int):
            return ts * _NS_PER_S
        ts = float(ts)
        if not math.isfinite(ts):
            raise ValueError(f"timestamp must be finite, got {ts}")
        # Split first: ts * 1e9 as a float would lose the nanoseconds of current dates.
        sec = math.floor(ts)
        return sec * _NS_PER_S + round((ts - sec) * _NS_PER_S)

    def _write_one(self, frame, ts_ns: int) -> None:
        view = _as_bytes_view(frame)
        orig_len = view.nbytes
        if orig_len > self.snaplen:
            view = view[: self.snaplen]
        sec, frac = self._split_ns(ts_ns)
        self._file.write(_RECORD_LE.pack(sec, frac, view.nbytes, orig_len))
        self._file.write(view)
        self.records_written += 1

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"PcapWriter for {self.name!r} is closed")

    def write(self, frame, ts: Union[float, int, None] = None, *, ts_ns: Optional[int] = None) -> None:
        """Append one frame; ts in seconds, or ts_ns in integer nanoseconds, or now."""
        self._check_open()
        if ts is not None and ts_ns is not None:
            raise ValueError("give ts or ts_ns, not both")
        if ts_ns is not None:
            ns = operator.index(ts_ns)
        elif ts is not None:
            ns = self._seconds_to_ns(ts)
        else:
            ns = time.time_ns()
        self._write_one(frame, ns)

    def write_batch(self, frames: Iterable, timestamps_ns: Optional[Iterable[int]] = None) -> None:
        """Append frames (any iterable of bytes-like); timestamps_ns, if given, is one
        integer nanosecond timestamp per frame (a sequence or numpy integer array)."""
        self._check_open()
        if timestamps_ns is None:
            for frame in frames:
                self._write_one(frame, time.time_ns())
            return
        if hasattr(frames, "__len__") and hasattr(timestamps_ns, "__len__"):
            n_frames, n_ts = len(cast(Sized, frames)), len(cast(Sized, timestamps_ns))
            if n_frames != n_ts:
                raise ValueError(f"got {n_frames} frames but {n_ts} timestamps")
        frame_iter = iter(frames)
        ts_iter = iter(timestamps_ns)
        sentinel = object()
        while True:
            frame = next(frame_iter, sentinel)
            ts = next(ts_iter, sentinel)
            if frame is sentinel and ts is sentinel:
                return
            if frame is sentinel or ts is sentinel:
                raise ValueError("frames and timestamps_ns have different lengths")
            self._write_one(frame, operator.index(cast(int, ts)))

    def flush(self) -> None:
        self._check_open()
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_file:
            self._file.close()
        elif hasattr(self._file, "flush"):
            self._file.flush()

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"PcapWriter({self.name!r}, linktype={self.linktype}, "
                f"nanosecond={self.nanosecond}, {state})")


def read_pcap(path: PathOrFile) -> Tuple[int, List[PcapRecord]]:
    """All records of a capture, as (linktype, records); see PcapReader."""
    with PcapReader(path) as reader:
        return reader.linktype, list(reader)


def write_pcap(path: PathOrFile, linktype: int, frames: Iterable,
               timestamps_ns: Optional[Iterable[int]] = None, *, nanosecond: bool = False,
               snaplen: int = DEFAULT_SNAPLEN) -> int:
    """Write frames to a new capture; returns the number of records written."""
    with PcapWriter(path, linktype, nanosecond=nanosecond, snaplen=snaplen) as writer:
        writer.write_batch(frames, timestamps_ns)
        return writer.records_written
