"""PacketBatch: a chain of NET_BUFFER_LISTs as one arena plus parallel arrays (design §3).

Frames live back to back in one ``uint8`` arena; each NET_BUFFER is an (offset, length)
pair in it and names the NET_BUFFER_LIST it belongs to. The out-of-band (OOB) info of each
NBL (spec §5) is kept decoded, one array per field. Kernels read these arrays directly; the
``NetBufferList`` dataclasses convert to and from a batch at the edges only.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import ndis

# Per-NBL OOB arrays: name -> dtype. Raw slot values where the kernels decode the bits
# themselves (LSO, checksum), decoded fields where the design names them (§3).
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
    """Frames in one arena plus per-NET_BUFFER and per-NBL arrays.

    ``nb_off``, ``nb_len``, ``nb_nbl`` have one entry per NET_BUFFER (frame); ``nb_nbl`` is
    non-decreasing: the buffers of an NBL are consecutive. Every name in ``NBL_FIELDS`` is
    an array with one entry per NBL.
    """

    __slots__ = ("arena", "nb_off", "nb_len", "nb_nbl", *NBL_FIELDS)

    def __init__(self, arena, nb_off, nb_len, nb_nbl, n_nbl: int | None = None, **nbl_fields):
        self.arena = _as_array(arena, np.uint8, "arena")
        self.nb_off = _as_array(nb_off, np.int64, "nb_off")
        self.nb_len = _as_array(nb_len, np.int64, "nb_len")
        self.nb_nbl = _as_array(nb_nbl, np.int32, "nb_nbl")
        if not (len(self.nb_off) == len(self.nb_len) == len(self.nb_nbl)):
            raise ValueError("nb_off, nb_len and nb_nbl must have the same length")
        if n_nbl is None:
            n_nbl = int(self.nb_nbl[-1]) + 1 if len(self.nb_nbl) else 0
        for name, dtype in NBL_FIELDS.items():
            value = nbl_fields.pop(name, None)
            if value is None:
                array = np.zeros(n_nbl, dtype)
            else:
                array = np.broadcast_to(np.asarray(value, dtype=dtype), (n_nbl,)).copy()
            setattr(self, name, array)
        if nbl_fields:
            raise TypeError(f"unknown NBL field(s): {', '.join(sorted(nbl_fields))}; "
                            f"allowed: {', '.join(NBL_FIELDS)}")
        self._check()

    def _check(self) -> None:
        n_nbl = len(self.status)
        if len(self.nb_nbl) and (int(self.nb_nbl.min()) < 0 or int(self.nb_nbl.max()) >= n_nbl):
            raise ValueError("nb_nbl names an NBL outside the batch")
        if len(self.nb_nbl) > 1 and bool(np.any(np.diff(self.nb_nbl) < 0)):
            raise ValueError("nb_nbl must be non-decreasing (an NBL's buffers are consecutive)")
        if len(self.nb_off) and (int(self.nb_off.min()) < 0 or int(self.nb_len.min()) < 0
                                 or int((self.nb_off + self.nb_len).max()) > len(self.arena)):
            raise ValueError("a NET_BUFFER lies outside the arena")

    # -- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of NET_BUFFER_LISTs."""
        return len(self.status)

    @property
    def num_buffers(self) -> int:
        return len(self.nb_off)

    def nb_count(self) -> np.ndarray:
        """NET_BUFFERs per NBL."""
        return np.bincount(self.nb_nbl, minlength=len(self)).astype(np.int32)

    # -- frames ------------------------------------------------------------------------
    def frame(self, i: int) -> bytes:
        off = int(self.nb_off[i])
        return self.arena[off:off + int(self.nb_len[i])].tobytes()

    def frames(self) -> list[bytes]:
        return [self.frame(i) for i in range(self.num_buffers)]

    def frames_of(self, nbl: int) -> list[bytes]:
        return [self.frame(i) for i in np.flatnonzero(self.nb_nbl == nbl)]

    def __iter__(self) -> Iterator[bytes]:
        return (self.frame(i) for i in range(self.num_buffers))

    def __repr__(self) -> str:
        return (f"PacketBatch({len(self)} NBLs, {self.num_buffers} buffers, "
                f"{int(self.nb_len.sum()) if self.num_buffers else 0} bytes)")

    # -- conversions -------------------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: Sequence[bytes], **nbl_fields) -> "PacketBatch":
        """One NBL of one NET_BUFFER per frame; OOB fields as scalars or per-frame arrays."""
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
        if unknown:  # checked before anything is appended: a refused NBL leaves no trace
            raise TypeError(f"unknown NBL field(s): {', '.join(sorted(unknown))}")
        index = self._n_nbl
        for frame in frames:
            self._chunks.append(bytes(frame))
            self._lengths.append(len(frame))
            self._nbl_of.append(index)
        for name, values in self._fields.items():
            values.append(oob.get(name, 14 if name == "l2_len" else 0))
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


def _as_array(value, dtype, name: str) -> np.ndarray:
    array = np.ascontiguousarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if array.dtype != dtype:
        if array.size and not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {array.dtype}")
        array = array.astype(dtype)
    return array
