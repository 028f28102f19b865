"""PacketBatch: a chain of NET_BUFFER_LISTs as one arena plus typed tables
(docs/architecture.md).

Frames live back to back in one ``uint8`` arena; each NET_BUFFER is an (offset, length)
pair in it and names the NET_BUFFER_LIST it belongs to. The out-of-band (OOB) info of each
NBL is one packed struct array (``layout.NBL_OOB_DTYPE``), the same memory the compiled
stages read; each field is also an attribute (a view: writes go through). The
``NetBufferList`` dataclasses convert to and from a batch at the edges only. ``WireFrames``
are what leaves the NIC.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .. import ndis
from .layout import NBL_OOB_DTYPE, WIRE_FRAME_DTYPE

# Per-NBL OOB arrays: name -> dtype. Raw slot values where the kernels decode the bits
# themselves (LSO, checksum), decoded fields where docs/architecture.md ("Typed tables") names them.
NBL_FIELDS = {
    "offload_handle": np.uint64,  # slot 1, Transmit.OffloadHandle
    "tunnel_handle": np.uint64,  # slot 11, Transmit.TunnelHandle
    "next_header": np.uint8,  # slot 12 bits 0-7
    "pad_length": np.uint8,  # slot 12 bits 8-15
    "ah_off4": np.uint8,  # slot 12 bits 16-23, AH offset / 4
    "esp_off4": np.uint8,  # slot 12 bits 24-31, ESP offset / 4
    "lso_info": np.uint64,  # slot 2 raw value, 0 = no LSO
    "checksum_info": np.uint64,  # slot 0 raw value
    "l2_len": np.uint16,  # link header bytes before the IP header
    "status": np.uint32,  # NET_BUFFER_LIST_STATUS after send
}


class PacketBatch:
    """Frames in one arena plus per-NET_BUFFER arrays and the per-NBL OOB table.

    ``nb_off``, ``nb_len``, ``nb_nbl`` have one entry per NET_BUFFER (frame); ``nb_nbl`` is
    non-decreasing: the buffers of an NBL are consecutive. ``oob`` has one NBL_OOB_DTYPE
    row per NBL; every name in ``NBL_FIELDS`` is a view of its column.
    """

    __slots__ = ("arena", "nb_off", "nb_len", "nb_nbl", "oob", "oob_bytes")
    arena: np.ndarray
    nb_off: np.ndarray
    nb_len: np.ndarray
    nb_nbl: np.ndarray
    oob: np.ndarray
    oob_bytes: np.ndarray

    # the OOB columns (NBL_FIELDS), installed as properties below the class
    offload_handle: np.ndarray
    tunnel_handle: np.ndarray
    next_header: np.ndarray
    pad_length: np.ndarray
    ah_off4: np.ndarray
    esp_off4: np.ndarray
    lso_info: np.ndarray
    checksum_info: np.ndarray
    l2_len: np.ndarray
    status: np.ndarray

    def __init__(self, arena, nb_off, nb_len, nb_nbl, n_nbl: int | None = None, **nbl_fields):
        self.arena = _as_array(arena, np.uint8, "arena")
        self.nb_off = _as_array(nb_off, np.int64, "nb_off")
        self.nb_len = _as_array(nb_len, np.int64, "nb_len")
        self.nb_nbl = _as_array(nb_nbl, np.int32, "nb_nbl")
        if not (len(self.nb_off) == len(self.nb_len) == len(self.nb_nbl)):
            raise ValueError("nb_off, nb_len and nb_nbl must have the same length")
        if n_nbl is None:
            n_nbl = int(self.nb_nbl[-1]) + 1 if len(self.nb_nbl) else 0
        oob = nbl_fields.pop("oob", None)
        unknown = set(nbl_fields) - set(NBL_FIELDS)
        if unknown:
            raise TypeError(f"unknown NBL field(s): {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(NBL_FIELDS)}")
        if oob is not None:
            oob = np.asarray(oob)
            if oob.dtype != NBL_OOB_DTYPE or oob.shape != (n_nbl,):
                raise ValueError(f"oob must be {n_nbl} rows of NBL_OOB_DTYPE")
            self._set_oob(oob.copy())
        else:
            self._set_oob(np.zeros(n_nbl, NBL_OOB_DTYPE))
        for name, value in nbl_fields.items():
            if value is not None:
                self.oob[name] = _oob_values(name, value, n_nbl)
        self._check()

    def _set_oob(self, oob: np.ndarray) -> None:
        self.oob = oob
        self.oob_bytes = oob.view(np.uint8)

    def _check(self) -> None:
        n_nbl = len(self.oob)
        if len(self.nb_nbl) and (int(self.nb_nbl.min()) < 0 or int(self.nb_nbl.max()) >= n_nbl):
            raise ValueError("nb_nbl names an NBL outside the batch")
        if len(self.nb_nbl) > 1 and bool(np.any(np.diff(self.nb_nbl) < 0)):
            raise ValueError("nb_nbl must be non-decreasing (an NBL's buffers are consecutive)")
        if len(self.nb_off) and (int(self.nb_off.min()) < 0 or int(self.nb_len.min()) < 0
                                 or int((self.nb_off + self.nb_len).max()) > len(self.arena)):
            raise ValueError("a NET_BUFFER lies outside the arena")
        counts = np.bincount(self.nb_nbl, minlength=n_nbl)[:n_nbl]
        self.oob["nb_count"] = counts
        first = np.zeros(n_nbl, np.int64)
        if n_nbl > 1:
            np.cumsum(counts[:-1], out=first[1:])
        self.oob["first_nb"] = first

    # -- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of NET_BUFFER_LISTs."""
        return len(self.oob)

    @property
    def num_buffers(self) -> int:
        return len(self.nb_off)

    def nb_count(self) -> np.ndarray:
        """NET_BUFFERs per NBL."""
        return self.oob["nb_count"].copy()

    # -- frames ------------------------------------------------------------------------
    def frame(self, i: int) -> bytes:
        off = int(self.nb_off[i])
        return self.arena[off:off + int(self.nb_len[i])].tobytes()

    def frames(self) -> list[bytes]:
        return [self.frame(i) for i in range(self.num_buffers)]

    def frames_of(self, nbl: int) -> list[bytes]:
        return [self.frame(int(i)) for i in np.flatnonzero(self.nb_nbl == nbl)]

    def __iter__(self) -> Iterator[bytes]:
        return (self.frame(i) for i in range(self.num_buffers))

    def __repr__(self) -> str:
        return (f"PacketBatch({len(self)} NBLs, {self.num_buffers} buffers, "
                f"{int(self.nb_len.sum()) if self.num_buffers else 0} bytes)")

    # -- conversions -------------------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: Sequence[bytes], **nbl_fields) -> "PacketBatch":
        """One NBL of one NET_BUFFER per frame; OOB fields as scalars or per-frame arrays."""
        frames = frames if isinstance(frames, list) else list(frames)
        if frames and set(map(type, frames)) == {bytes}:
            # the usual call: the builder's checks per frame and per field, done for all at once
            n = len(frames)
            lengths = np.fromiter(map(len, frames), np.int64, n)
            offsets = np.zeros(n, np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            # bytearray's join: one copy, writable (bytes' join and a copy made two)
            arena = np.frombuffer(bytearray().join(frames), np.uint8)
            # the OOB rows start zeroed: only the fields given, and l2_len's 14, are set
            fields: dict = {"l2_len": 14}
            fields.update({k: v for k, v in nbl_fields.items() if v is not None})
            return cls(arena, offsets, lengths, np.arange(n, dtype=np.int32), n_nbl=n, **fields)
        builder = PacketBatchBuilder()
        for frame in frames:
            builder.add_nbl([frame])
        return builder.build(**nbl_fields)

    @classmethod
    def from_nbls(cls, nbls: Iterable[ndis.NetBufferList]) -> "PacketBatch":
        builder = PacketBatchBuilder()
        for nbl in nbls:
            header = ndis.IpsecOffloadV2HeaderNblInfo.from_value(
                nbl.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER))
            builder.add_nbl(
                [nb.data for nb in nbl.net_buffers],
                offload_handle=nbl.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2),
                tunnel_handle=nbl.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_TUNNEL),
                next_header=header.next_header, pad_length=header.pad_length,
                ah_off4=header.ah_header_offset, esp_off4=header.esp_header_offset,
                lso_info=nbl.get_info(ndis.NblInfo.TCP_LARGE_SEND),
                checksum_info=nbl.get_info(ndis.NblInfo.TCP_IP_CHECKSUM),
                l2_len=nbl.l2_length, status=nbl.status)
        return builder.build()

    def to_nbls(self) -> list[ndis.NetBufferList]:
        nbls = []
        starts = np.searchsorted(self.nb_nbl, np.arange(len(self) + 1))
        for k in range(len(self)):
            header = ndis.IpsecOffloadV2HeaderNblInfo(
                next_header=int(self.next_header[k]), pad_length=int(self.pad_length[k]),
                ah_header_offset=int(self.ah_off4[k]), esp_header_offset=int(self.esp_off4[k]))
            info = {
                ndis.NblInfo.IPSEC_OFFLOAD_V2: int(self.offload_handle[k]),
                ndis.NblInfo.IPSEC_OFFLOAD_V2_TUNNEL: int(self.tunnel_handle[k]),
                ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER: header.value,
                ndis.NblInfo.TCP_LARGE_SEND: int(self.lso_info[k]),
                ndis.NblInfo.TCP_IP_CHECKSUM: int(self.checksum_info[k]),
            }
            nbls.append(ndis.NetBufferList(
                net_buffers=[ndis.NetBuffer(bytearray(self.frame(i)))
                             for i in range(starts[k], starts[k + 1])],
                info={slot: v for slot, v in info.items() if v},
                status=int(self.status[k]), l2_length=int(self.l2_len[k])))
        return nbls


def _nbl_field(name: str) -> property:
    def get(self) -> np.ndarray:
        return self.oob[name]

    def set(self, value) -> None:
        self.oob[name] = _oob_values(name, value, len(self.oob))
    return property(get, set, doc=f"OOB column {name!r} (a view of ``oob``)")


for _name in NBL_FIELDS:
    setattr(PacketBatch, _name, _nbl_field(_name))


def _oob_values(name: str, value, n_nbl: int) -> np.ndarray:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = _oob_int(name, value)
    try:
        array = np.asarray(value)
        if array.size and array.dtype.kind not in "iub":
            raise TypeError
        if array.size and array.dtype.kind in "iu":
            info = _field_range(name)
            if int(array.min()) < info.min or int(array.max()) > info.max:
                raise OverflowError
        return np.broadcast_to(array.astype(NBL_FIELDS[name]), (n_nbl,))
    except (TypeError, OverflowError, ValueError):
        info = _field_range(name)
        raise ValueError(f"{name} must be an integer from 0 to {info.max} or {n_nbl} of them"
                         ) from None


class _Range:
    def __init__(self, lo: int, hi: int):
        self.min, self.max = lo, hi


# the value range of each OOB column (all unsigned integers)
_FIELD_RANGES = {name: _Range(0, (1 << (8 * np.dtype(dtype).itemsize)) - 1)
                 for name, dtype in NBL_FIELDS.items()}


def _field_range(name: str) -> _Range:
    return _FIELD_RANGES[name]


def _oob_int(name: str, value) -> int:
    """One OOB value as add_nbl takes it: an integer within its field's range."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    info = _field_range(name)
    if not info.min <= int(value) <= info.max:
        raise ValueError(f"{name} must be from 0 to {info.max}, got {int(value)}")
    return int(value)


class WireFrames:
    """The frames that left the NIC, in order: ``len()`` and iteration both count frames.

    ``table`` (``layout.WIRE_FRAME_DTYPE``: offset, length, source NBL and NET_BUFFER of each
    frame) indexes ``arena``; ``nb_off``/``nb_len``/``nb_nbl``/``nb_src`` are its columns.
    ``oob`` is the sent batch's OOB table with the completion status, so the per-NBL fields
    read as on a PacketBatch.
    """

    __slots__ = ("arena", "_table", "_table_bytes", "_oob", "_oob_bytes", "_status")

    # the OOB columns (NBL_FIELDS), installed as properties below the class
    offload_handle: np.ndarray
    tunnel_handle: np.ndarray
    next_header: np.ndarray
    pad_length: np.ndarray
    ah_off4: np.ndarray
    esp_off4: np.ndarray
    lso_info: np.ndarray
    checksum_info: np.ndarray
    l2_len: np.ndarray
    status: np.ndarray

    def __init__(self, arena: np.ndarray, table: Optional[np.ndarray] = None,
                 oob: Optional[np.ndarray] = None, *, table_bytes: Optional[np.ndarray] = None,
                 oob_bytes: Optional[np.ndarray] = None, status: Optional[np.ndarray] = None):
        self.arena = arena
        self._table, self._table_bytes = table, table_bytes
        self._oob, self._oob_bytes, self._status = oob, oob_bytes, status

    @property
    def table(self) -> np.ndarray:
        """One WIRE_FRAME_DTYPE row per frame (viewed on first use: a structured view costs
        microseconds, which a send of small packets does not spend unasked)."""
        if self._table is None:
            assert self._table_bytes is not None  # one of the two is always given
            self._table = self._table_bytes.view(WIRE_FRAME_DTYPE)
        return self._table

    @property
    def oob(self) -> np.ndarray:
        if self._oob is None:
            assert self._oob_bytes is not None  # one of the two is always given
            oob = self._oob_bytes.view(NBL_OOB_DTYPE)
            if self._status is not None:
                oob["status"] = self._status
            self._oob = oob
        return self._oob

    @property
    def nb_off(self) -> np.ndarray:
        return self.table["off"]

    @property
    def nb_len(self) -> np.ndarray:
        return self.table["len"]

    @property
    def nb_nbl(self) -> np.ndarray:
        return self.table["nbl"]

    @property
    def nb_src(self) -> np.ndarray:
        return self.table["nb"]

    @classmethod
    def concat(cls, parts: Sequence["WireFrames"]) -> "WireFrames":
        """One WireFrames for several sends in order (NBL indices renumbered)."""
        arenas, tables, oobs = [], [], []
        byte_base = nbl_base = 0
        for part in parts:
            table = part.table.copy()
            table["off"] += byte_base
            table["nbl"] += nbl_base
            arenas.append(part.arena)
            tables.append(table)
            oobs.append(part.oob)
            byte_base += len(part.arena)
            nbl_base += len(part.oob)
        return cls(np.concatenate(arenas) if arenas else np.zeros(0, np.uint8),
                   np.concatenate(tables) if tables else np.zeros(0, WIRE_FRAME_DTYPE),
                   np.concatenate(oobs) if oobs else np.zeros(0, NBL_OOB_DTYPE))

    @property
    def num_buffers(self) -> int:
        if self._table is None:
            assert self._table_bytes is not None
            return len(self._table_bytes) // WIRE_FRAME_DTYPE.itemsize
        return len(self._table)

    @property
    def num_nbls(self) -> int:
        return len(self.oob)

    def __len__(self) -> int:
        return self.num_buffers

    def frame(self, i: int) -> bytes:
        off, length = int(self.table[i]["off"]), int(self.table[i]["len"])
        return self.arena[off:off + length].tobytes()

    def frames(self) -> list[bytes]:
        from ..host.tx_frame import kernels
        fp = kernels()
        if fp is not None:  # the bytes objects made in one compiled loop
            return fp.bytes_slices(np.ascontiguousarray(self.arena, np.uint8),
                                   np.ascontiguousarray(self.nb_off, np.int64),
                                   np.ascontiguousarray(self.nb_len, np.int64))
        arena = self.arena
        return [arena[off:off + n].tobytes()
                for off, n in zip(self.nb_off.tolist(), self.nb_len.tolist())]

    def frames_of(self, nbl: int) -> list[bytes]:
        return [self.frame(int(i)) for i in np.flatnonzero(self.nb_nbl == nbl)]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.frames())

    def __repr__(self) -> str:
        return (f"WireFrames({len(self.table)} frames from {len(self.oob)} NBLs, "
                f"{int(self.nb_len.sum()) if len(self.table) else 0} bytes)")


def _wire_field(name: str) -> property:
    def get(self: WireFrames) -> np.ndarray:
        return self.oob[name]
    return property(get, doc=f"OOB column {name!r} of the sent batch")


for _name in NBL_FIELDS:
    setattr(WireFrames, _name, _wire_field(_name))


class PacketBatchBuilder:
    """Collects frames and OOB values, then packs them into one PacketBatch."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lengths: list[int] = []
        self._nbl_of: list[int] = []
        self._fields: dict[str, list[int]] = {name: [] for name in NBL_FIELDS}
        self._n_nbl = 0

    def add_nbl(self, frames: Sequence[bytes], **oob: int) -> int:
        """Append one NBL holding ``frames``; returns its index."""
        unknown = set(oob) - set(NBL_FIELDS)
        # everything is checked before anything is appended: a refused NBL leaves no trace,
        # and the builder stays usable
        if unknown:
            raise TypeError(f"unknown NBL field(s): {', '.join(sorted(unknown))}")
        values_of = {name: _oob_int(name, oob.get(name, 14 if name == "l2_len" else 0))
                     for name in self._fields}
        if isinstance(frames, (bytes, bytearray, memoryview, str)):
            raise TypeError("frames must be a sequence of frames (bytes-like), not one "
                            f"{type(frames).__name__}")
        try:
            chunks = [_frame_bytes(frame) for frame in frames]
        except TypeError as error:
            raise TypeError(f"frames: {error}") from None
        index = self._n_nbl
        for chunk in chunks:
            self._chunks.append(chunk)
            self._lengths.append(len(chunk))
            self._nbl_of.append(index)
        for name, values in self._fields.items():
            values.append(values_of[name])
        self._n_nbl += 1
        return index

    def __len__(self) -> int:
        return self._n_nbl

    def build(self, **overrides) -> PacketBatch:
        """Pack; ``overrides`` replace whole OOB fields (a scalar or one value per NBL)."""
        lengths = np.asarray(self._lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths):
            np.cumsum(lengths[:-1], out=offsets[1:])
        arena = np.frombuffer(b"".join(self._chunks), dtype=np.uint8).copy()
        fields = {name: np.asarray(values, dtype=NBL_FIELDS[name])
                  for name, values in self._fields.items()}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return PacketBatch(arena, offsets, lengths, np.asarray(self._nbl_of, dtype=np.int32),
                           n_nbl=self._n_nbl, **fields)


def _frame_bytes(frame) -> bytes:
    """A frame's bytes; an int or str is refused (bytes(5) would be five zero bytes)."""
    if isinstance(frame, (int, str)):
        raise TypeError(f"a frame must be bytes-like, got {type(frame).__name__}")
    try:
        return bytes(memoryview(frame).cast("B"))
    except TypeError:
        raise TypeError(f"a frame must be bytes-like, got {type(frame).__name__}") from None


def _as_array(value, dtype, name: str) -> np.ndarray:
    array = np.ascontiguousarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if array.dtype != dtype:
        if array.size and not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {array.dtype}")
        array = array.astype(dtype)
    return array
