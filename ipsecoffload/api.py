"""The one-call API (README, "Python API"): plain IP packets in, ESP packets out.

``encrypt(packets, sa)`` runs the same host stack and miniport as the NDIS-level interface
(``HostStack``, ``Miniport``), which stays the expert interface; this module only turns
friendly inputs into its calls and its per-NBL statuses into one status per input.

Sequence numbers: every SA has one state, kept in this module and keyed by the SA's value
(its ``SaConfig``, the ``name`` aside), so a later call with an equal SA continues where the
last one stopped instead of reusing sequence numbers (with AES-GCM the sequence number is the
IV, and a repeated IV under one key breaks the cipher; RFC 4106 §3.1). ``encryptor(sa)`` gives
that state (``.next_seq``); ``forget_sa(sa)`` drops it. An ``Encryptor`` made directly holds
its own state instead.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import (TYPE_CHECKING, Any, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union, overload)

import numpy as np

from .control.miniport import Miniport
from .datapath.layout import Reason
from .host.packetinfo import TCP, MalformedPacket, parse_packet
from .host import tx_frame
from .host.saconfig import SaConfig
from .host.stack import MAX_LSO_MSS, HostStack, SequenceNumberExhausted, StackSa
from .io.capture import DEFAULT_BATCH, MAX_BATCH, EncryptSummary, encrypt_capture
from .io.safile import SaFileError, SaPolicy, Selector, load_sa_file, parse_sa_list
from .datapath.layout import Delivery
from .host.receive import DEFAULT_REPLAY_WINDOW
from .io.decrypt import DecryptSummary, decrypt_capture
from .ndis import CryptoStatus, NdisStatus

if TYPE_CHECKING:  # scapy is optional: only for the annotations
    from scapy.packet import Packet

__all__ = ["CLEAR", "Decryptor", "Encryptor", "PacketResults", "REFUSED", "SEQUENCE_EXHAUSTED",
           "SUCCESS", "decrypt", "decrypt_pcap", "decryptor", "encrypt", "encrypt_pcap",
           "encryptor", "forget_decryptors", "forget_sa", "sa_config", "sa_policies",
           "to_scapy"]

#: ``.status`` of a packet that went out protected
SUCCESS = "SUCCESS"
#: ``.status`` of a packet the host stack could not frame (not an IPv4/IPv6 packet, an IP
#: fragment under a transport SA, too long once encapsulated, ...): ``.errors`` says why
REFUSED = "REFUSED"
#: ``.status`` of a packet the SA had no sequence number left for (RFC 4303 §3.3.3: a new SA
#: is needed)
SEQUENCE_EXHAUSTED = "SEQUENCE_EXHAUSTED"

#: ``.status`` of a non-IPsec packet ``decrypt`` passed on unchanged (NAT-T keepalive, IKE too)
CLEAR = "CLEAR"
_FINE = (SUCCESS, CLEAR)

SaLike = Union[SaConfig, SaPolicy, Mapping[str, Any]]
PacketLike = Union[bytes, bytearray, memoryview, "Packet", Any]


# -- results ---------------------------------------------------------------------------------
class PacketResults(Sequence[bytes]):
    """One entry per input packet, in input order: the bytes that left for it (``b""``
    where it failed), with

    - ``status[i]``: ``"SUCCESS"``; an NDIS_STATUS name (``"INVALID_PACKET"``,
      ``"FAILURE"``, ...) when the miniport completed the packet's NET_BUFFER_LIST with it;
      ``"REFUSED"`` or ``"SEQUENCE_EXHAUSTED"`` when the host stack could not frame it;
    - ``errors[i]``: None, or why the packet failed (never key material);
    - ``segments[i]``: the IP packets that left for it: one, or for an LSO super-packet
      (``mss``) its segments, whose concatenation is ``self[i]``; ``()`` where it failed.

    ``flat()`` lists every packet that left, in order (what a capture of the wire holds);
    ``to_scapy()`` the same as scapy packets.
    """

    __slots__ = ("segments", "status", "errors")

    def __init__(self, segments: Sequence[Tuple[bytes, ...]], status: Sequence[str],
                 errors: Sequence[Optional[str]]):
        if not len(segments) == len(status) == len(errors):
            raise ValueError("segments, status and errors need one entry per packet")
        self.segments: Tuple[Tuple[bytes, ...], ...] = tuple(segments)
        self.status: Tuple[str, ...] = tuple(status)
        self.errors: Tuple[Optional[str], ...] = tuple(errors)

    def __len__(self) -> int:
        return len(self.segments)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> List[bytes]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[bytes, List[bytes]]:
        if isinstance(index, slice):
            return [b"".join(s) for s in self.segments[index]]
        return b"".join(self.segments[index])

    def __iter__(self) -> Iterator[bytes]:
        return (b"".join(s) for s in self.segments)

    def __repr__(self) -> str:
        failed = len(self.failed)
        return f"PacketResults({len(self)} packets, {failed} failed)"

    @property
    def ok(self) -> bool:
        """Did every packet succeed (``decrypt``: or pass in clear)?"""
        return all(s in _FINE for s in self.status)

    @property
    def failed(self) -> List[int]:
        """Indexes of the packets that did not succeed (``decrypt``: nor pass in clear)."""
        return [i for i, s in enumerate(self.status) if s not in _FINE]

    def flat(self) -> List[bytes]:
        """Every IP packet that left, in order (LSO segments one by one, failures absent)."""
        return [packet for segments in self.segments for packet in segments]

    def to_scapy(self) -> List["Packet"]:
        """``flat()`` as scapy ``IP`` / ``IPv6`` packets (needs scapy installed)."""
        return to_scapy(self.flat())


def to_scapy(packets: Iterable[bytes]) -> List["Packet"]:
    """Raw IPv4/IPv6 packets as scapy ``IP`` / ``IPv6`` packets (scapy is an optional
    dependency; ImportError names it if missing)."""
    try:
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6
    except ImportError as error:
        raise ImportError("to_scapy needs scapy: python -m pip install scapy") from error
    return [IPv6(p) if p[:1] and p[0] >> 4 == 6 else IP(p) for p in packets]


# -- inputs ----------------------------------------------------------------------------------
def _scapy_ip_bytes(packet: Any) -> Optional[bytes]:
    """The IP layer of a scapy packet as bytes; None if it is no scapy packet. scapy is only
    looked at when the caller already imported it: no import here."""
    scapy_packet = sys.modules.get("scapy.packet")
    if scapy_packet is None or not isinstance(packet, scapy_packet.Packet):
        return None
    ip_classes = tuple(getattr(sys.modules.get(name), cls) for name, cls in
                       (("scapy.layers.inet", "IP"), ("scapy.layers.inet6", "IPv6"))
                       if hasattr(sys.modules.get(name), cls))
    layer = packet
    # Ether / Dot1Q / ... before the IP header: the IP packet is what the stack takes
    while ip_classes and layer is not None and not isinstance(layer, ip_classes):
        payload = layer.payload
        layer = payload if isinstance(payload, scapy_packet.Packet) and payload else None
    return bytes(layer if layer is not None else packet)


def _as_bytes(packet: Any) -> Tuple[Optional[bytes], Optional[str]]:
    """(packet bytes, None) or (None, why it is not a packet)."""
    if isinstance(packet, bytes):
        return packet, None
    scapy_bytes = _scapy_ip_bytes(packet)
    if scapy_bytes is not None:
        return scapy_bytes, None
    if isinstance(packet, str):
        return None, "a str is not a packet (bytes or a scapy packet are)"
    try:
        return memoryview(packet).tobytes(), None
    except TypeError:
        return None, f"a {type(packet).__name__} is not a packet (bytes or a scapy packet are)"


def _packet_list(packets: Iterable[PacketLike]) -> list:
    if isinstance(packets, (bytes, bytearray, memoryview, str)):
        raise TypeError("packets must be a list (or other iterable) of packets, not one "
                        f"{type(packets).__name__} object")
    scapy_packet = sys.modules.get("scapy.packet")
    if scapy_packet is not None and isinstance(packets, scapy_packet.Packet):
        raise TypeError("packets must be a list of packets, not one scapy packet: "
                        "pass [packet]")
    try:
        return list(packets)
    except TypeError:
        raise TypeError(f"packets must be an iterable of packets, got "
                        f"{type(packets).__name__}") from None


def sa_config(sa: SaLike) -> SaConfig:
    """An ``SaConfig`` from an SaConfig, an SaPolicy or one SA object of the SA-file format
    (README, "SA file"; keys as hex strings); raises SaFileError for a bad SA object."""
    if isinstance(sa, SaConfig):
        return sa
    if isinstance(sa, SaPolicy):
        return sa.config
    if isinstance(sa, Mapping):
        return _parsed_state(sa)[0]
    raise TypeError(f"sa must be an SaConfig, an SaPolicy or a dict in the SA-file format, "
                    f"got {type(sa).__name__}")


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) \
            or not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH}, "
                         f"got {batch_size!r}"[:200])


def _check_mss(mss: Optional[int]) -> None:
    if mss is not None and (not isinstance(mss, int) or isinstance(mss, bool)
                            or not 1 <= mss <= MAX_LSO_MSS):
        raise ValueError(f"mss must be None or an integer from 1 to {MAX_LSO_MSS}, got {mss!r}")


# -- one SA's state --------------------------------------------------------------------------
class Encryptor:
    """One outbound SA with its own host stack (raw IP, no link header) and miniport: the
    state behind ``encrypt``. ``next_seq`` is the sequence number the next packet gets.

    Thread-safe: one call at a time runs, so the sequence numbers of a call are consecutive.
    """

    def __init__(self, sa: SaLike, *, miniport: Optional[Miniport] = None):
        self.config = sa_config(sa)
        self.miniport = miniport if miniport is not None else Miniport()
        self.stack = HostStack(self.miniport, link="raw")
        self.sa: StackSa = self.stack.add_sa(self.config)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Encryptor({self.sa!r})"

    @property
    def next_seq(self) -> int:
        return self.sa.next_seq

    def encrypt(self, packets: Iterable[PacketLike], *, mss: Optional[int] = None
                ) -> PacketResults:
        """See ``ipsecoffload.encrypt``."""
        _check_mss(mss)
        items = _packet_list(packets)
        n = len(items)
        segments: List[Tuple[bytes, ...]] = [()] * n
        status = [REFUSED] * n
        errors: List[Optional[str]] = [None] * n
        jobs: List[Tuple[int, bytes, bool]] = []  # (input index, packet, LSO)
        lso_allowed = mss is not None and self.config.mode == "transport"
        if not lso_allowed and set(map(type, items)) <= {bytes}:
            with self._lock:  # the usual call: bytes, no LSO, one send
                self._send_all(items, segments, status, errors)
            return PacketResults(segments, status, errors)
        if lso_allowed and self._lso_in_batches():
            assert mss is not None
            with self._lock:  # super-packets framed and sent with the rest, a batch at once
                for lo in range(0, n, _SEND_CHUNK):
                    self._send_batch(items[lo:lo + _SEND_CHUNK], lo, mss, segments, status,
                                     errors)
            return PacketResults(segments, status, errors)
        for i, item in enumerate(items):
            data, error = _as_bytes(item)
            if data is None:
                errors[i] = error
                continue
            jobs.append((i, data, lso_allowed and _wants_lso(data, mss)))
        with self._lock:
            run: List[Tuple[int, bytes]] = []
            for index, data, lso in jobs:
                if lso:
                    self._send_run(run, segments, status, errors)
                    run = []
                    self._send_lso(index, data, mss, segments, status, errors)
                else:
                    run.append((index, data))
            self._send_run(run, segments, status, errors)
        return PacketResults(segments, status, errors)

    def _lso_in_batches(self) -> bool:
        """Whether ``encrypt(mss=)`` can go through HostStack.send_batch (the compiled framer,
        LSO super-packets batched like any packet): the kernels are built, the framer frames
        this SA, and the LSOv2 limits admit every IP packet (MaxOffLoadSize 65535 or more,
        MinSegmentCount 2 or less), so that no super-packet is cut into pieces the way
        ``send_lso`` cuts one that is outside them (docs/send-path.md, "Limits")."""
        if tx_frame.kernels() is None or not tx_frame.supported(self.sa):
            return False
        return all(size >= 65535 and count <= 2
                   for size, count in (self.stack.lso_limits(2, v6) for v6 in (False, True)))

    def _send_batch(self, items: list, lo: int, mss: int, segments: list, status: list,
                    errors: list) -> None:
        """items[i] is input lo + i: one HostStack.send_batch for those that are packets, its
        faults and completions spread back to the inputs."""
        datas: List[bytes] = []
        index: List[int] = []
        for i, item in enumerate(items, lo):
            data, error = (item, None) if type(item) is bytes else _as_bytes(item)
            if data is None:
                errors[i] = error
                continue
            datas.append(data)
            index.append(i)
        if not datas:
            return
        sent = self.stack.send_batch(datas, self.sa, mss=mss)
        exhausted = tx_frame.fault_text(tx_frame.FAULT_EXHAUSTED)
        for j, reason in sent.faults:
            status[index[j]] = SEQUENCE_EXHAUSTED if reason == exhausted else REFUSED
            errors[index[j]] = f"the host stack refused the packet: {reason}"
        went = np.flatnonzero(sent.nbl >= 0)
        # one NBL per packet that went, numbered in input order: what _collect reads
        assert (sent.nbl[went] == np.arange(len(went))).all()
        self._collect(sent.result, [index[j] for j in went.tolist()], segments, status, errors)

    def _send_all(self, items: List[bytes], segments: list, status: list,
                  errors: list) -> None:
        """_send_run of every packet in sends of at most _SEND_CHUNK packets (a long list
        does not hold its whole arena, framed copy and output at once), without making
        (index, packet) pairs unless the stack refuses a send."""
        for lo in range(0, len(items), _SEND_CHUNK):
            chunk = items[lo:lo + _SEND_CHUNK]
            try:
                result = self.stack.send(chunk, self.sa)
            except (SequenceNumberExhausted, ValueError) as error:
                self._send_run(list(enumerate(chunk, lo)), segments, status, errors,
                               refused=error)
                continue
            self._collect(result, range(lo, lo + len(chunk)), segments, status, errors)

    def _send_run(self, run: List[Tuple[int, bytes]], segments: list, status: list,
                  errors: list, refused: Optional[Exception] = None) -> None:
        """One send for the run; if the stack refuses it (one bad packet refuses the whole
        send, before any sequence number is taken), halves until each bad packet is alone:
        k bad packets cost O(k log n) sends, good batches one. ``refused``: the error a
        send of the whole run already raised."""
        if not run:
            return
        try:
            if refused is not None:
                raise refused
            result = self.stack.send([data for _, data in run], self.sa)
        except (SequenceNumberExhausted, ValueError) as error:
            if len(run) == 1:
                index = run[0][0]
                status[index] = (SEQUENCE_EXHAUSTED if isinstance(error, SequenceNumberExhausted)
                                 else REFUSED)
                errors[index] = str(error)
                return
            half = len(run) // 2
            self._send_run(run[:half], segments, status, errors)
            self._send_run(run[half:], segments, status, errors)
            return
        self._collect(result, [index for index, _ in run], segments, status, errors)

    def _send_lso(self, index: int, data: bytes, mss: Optional[int], segments: list,
                  status: list, errors: list) -> None:
        assert mss is not None
        try:
            result = self.stack.send_lso(data, self.sa, mss)
        except (SequenceNumberExhausted, ValueError) as error:
            status[index] = (SEQUENCE_EXHAUSTED if isinstance(error, SequenceNumberExhausted)
                             else REFUSED)
            errors[index] = str(error)
            return
        if len(result.status) > 1:  # outside the LSO limits: the stack cut it into pieces
            codes = result.status.tolist()
            failed = [nbl for nbl, code in enumerate(codes) if code]
            if not failed:
                status[index] = SUCCESS
                segments[index] = tuple(result.wire.frames())
                return
            name = _status_name(codes[failed[0]])
            status[index] = name
            errors[index] = f"the miniport completed a piece of the packet with " \
                            f"NDIS_STATUS_{name} ({_reason_name(result.reasons[failed[0]])})"
            return
        self._collect(result, [index], segments, status, errors)

    @staticmethod
    def _collect(result: Any, indexes: Sequence[int], segments: list, status: list,
                 errors: list) -> None:
        frames = result.wire.frames()
        if len(frames) == len(indexes) and not result.status.any() and (
                not frames or (result.wire.nb_nbl == np.arange(len(frames))).all()):
            # every packet sent, one frame each, in order: no per-packet bookkeeping
            lo = indexes[0] if indexes else 0
            if indexes and indexes[-1] - lo + 1 == len(indexes):  # a contiguous run
                segments[lo:lo + len(frames)] = list(zip(frames))  # (frame,) each
                status[lo:lo + len(frames)] = [SUCCESS] * len(frames)
            else:
                for index, frame in zip(indexes, frames):
                    segments[index] = (frame,)
                    status[index] = SUCCESS
            return
        per_nbl: List[List[bytes]] = [[] for _ in indexes]
        for frame, nbl in zip(frames, result.wire.nb_nbl.tolist()):
            per_nbl[nbl].append(frame)
        codes = result.status.tolist()
        # one NET_BUFFER per NBL here, so the NB reasons line up with the NBLs (read only
        # when something failed: the view costs more than a good batch's bookkeeping)
        reasons = result.reasons.tolist() if any(codes) else []
        for nbl, (index, code) in enumerate(zip(indexes, codes)):
            name = _status_name(code)
            status[index] = name
            if name == SUCCESS:
                segments[index] = tuple(per_nbl[nbl])
            else:
                errors[index] = f"the miniport completed the packet with NDIS_STATUS_{name} " \
                                f"({_reason_name(reasons[nbl])})"


def _wants_lso(data: bytes, mss: Optional[int]) -> bool:
    """The rule of ``ipsecoffload encrypt --mss``: TCP fit for LSO with more than ``mss``
    payload bytes (docs/send-path.md)."""
    try:
        info = parse_packet(data)
    except MalformedPacket:
        return False  # the stack refuses it with its own message
    return (info.proto == TCP and info.lso_capable and not info.fragment
            and info.tcp_payload is not None and mss is not None and info.tcp_payload > mss)


_STATUS_NAMES: dict = {}
_SEND_CHUNK = 4096  # packets per send of Encryptor._send_all


def _status_name(code: int) -> str:
    name = _STATUS_NAMES.get(code)
    if name is None:
        try:
            name = NdisStatus(code).name
        except ValueError:
            name = f"{code:#010x}"
        if len(_STATUS_NAMES) < 4096:
            _STATUS_NAMES[code] = name
    return name


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return str(code)


# -- the shared per-SA state -----------------------------------------------------------------
_encryptors: dict = {}
_encryptors_lock = threading.Lock()


def _state_key(config: SaConfig) -> SaConfig:
    return dataclasses.replace(config, name="") if config.name else config


# SA objects of the SA-file format met lately: their content (as _frozen makes it) -> their
# SaConfig and its _state_key, so that a call with an SA dict does not parse it again (a
# parse measured about 11 us, 45 ns a packet of a 256-packet call)
_PARSED_MAX = 64
_parsed: dict = {}


def _frozen(value: Any) -> Any:
    """A hashable image of an SA object's content (types kept: True is not 1); TypeError
    for content that has none."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return (kind.__name__, value)
    if kind is dict or isinstance(value, Mapping):
        return ("{", tuple(sorted(((type(k).__name__, k), _frozen(v))
                                  for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("[", tuple(_frozen(v) for v in value))
    hash(value)
    return (type(value).__name__, value)


def _parsed_state(sa: Mapping) -> Tuple[SaConfig, SaConfig]:
    """(SaConfig, its _state_key) of an SA object, parsed once while it is among the last
    _PARSED_MAX met; raises SaFileError for a bad one (never kept)."""
    try:
        image = _frozen(sa)
    except TypeError:
        image = None
    found = _parsed.get(image) if image is not None else None
    if found is None:
        config = parse_sa_list([dict(sa)], "sa")[0].config
        found = (config, _state_key(config))
        if image is not None:
            if len(_parsed) >= _PARSED_MAX:
                _parsed.clear()
            _parsed[image] = found
    return found


def _state_of(sa: SaLike) -> SaConfig:
    return _parsed_state(sa)[1] if isinstance(sa, Mapping) else _state_key(sa_config(sa))


def encryptor(sa: SaLike) -> Encryptor:
    """The ``Encryptor`` that ``encrypt`` uses for this SA (made on first use): an equal SA
    (``name`` aside) gets the same one, so its sequence numbers continue."""
    if isinstance(sa, Mapping):
        config, key = _parsed_state(sa)
    else:
        config = sa_config(sa)
        key = _state_key(config)
    with _encryptors_lock:
        found = _encryptors.get(key)
        if found is None:
            found = _encryptors[key] = Encryptor(config)
        return found


def forget_sa(sa: Optional[SaLike] = None) -> None:
    """Drop the state ``encrypt`` keeps for this SA (every SA when None): the next call
    starts again at the SA's ``seq``. Only for an SA that will not send under the same key
    again (a repeated sequence number repeats the AES-GCM IV)."""
    with _encryptors_lock:
        if sa is None:
            _encryptors.clear()
        else:
            _encryptors.pop(_state_key(sa_config(sa)), None)


def encrypt(packets: Iterable[PacketLike], sa: SaLike, *, mss: Optional[int] = None
            ) -> PacketResults:
    """ESP-protect plain IP packets with one outbound SA; returns one entry per input.

    ``packets``: raw IPv4/IPv6 packets as bytes-like objects, or scapy packets (an Ether or
    other link layer in front of the IP header is dropped). ``sa``: an ``SaConfig``, or one
    SA object of the SA-file format (a dict; its ``selector``, if any, is not applied: every
    packet goes through this SA). ``mss``: TCP packets (transport SAs) with more than ``mss``
    payload bytes go to the NIC as LSO super-packets and leave as ``mss``-byte segments.

    A bad packet never raises: its entry is ``b""`` and ``.status`` says why (see
    ``PacketResults``). An unusable SA raises ``SaFileError`` / ``ValueError`` before any
    work. Successive calls with an equal SA continue its sequence numbers (module docstring).
    """
    return encryptor(sa).encrypt(packets, mss=mss)


# -- decrypt ---------------------------------------------------------------------------------
_DELIVERY_STATUS = {Delivery.CLEAR: CLEAR, Delivery.DECAP: SUCCESS,
                    Delivery.MALFORMED: "MALFORMED", Delivery.NO_SA: "NO_SA",
                    Delivery.SELECTOR: "NO_SA", Delivery.REPLAY: "REPLAYED",
                    Delivery.ECN: "ECN_DROPPED", Delivery.DUMMY: "DUMMY",
                    Delivery.INNER: "INVALID_INNER_PACKET"}
_DELIVERY_WHY = {"MALFORMED": "not an IPv4/IPv6 packet",
                 "NO_SA": "an IPsec packet none of the SAs owns (SPI, endpoints, selector)",
                 "REPLAYED": "its sequence number was seen before or is left of the window",
                 "ECN_DROPPED": "RFC 6040: outer CE over a Not-ECT inner packet",
                 "DUMMY": "a dummy packet (next header 59)",
                 "INVALID_INNER_PACKET": "the decrypted inner packet is not a valid IP packet"}


class Decryptor:
    """Inbound SAs with their own host stack (raw IP) and miniport: the state behind
    ``decrypt`` (each SA's anti-replay window and the NIC's ESN state continue from call to
    call). ``replay_window``: packets (0 turns off only the replay check)."""

    def __init__(self, sas: Union[SaLike, Sequence[SaLike]], *,
                 replay_window: int = DEFAULT_REPLAY_WINDOW,
                 miniport: Optional[Miniport] = None):
        items: Sequence[Any] = [sas] if isinstance(sas, (SaConfig, SaPolicy, Mapping)) else sas
        if not isinstance(items, Sequence) or not items:
            raise TypeError("sa_or_sas must be an SA or a non-empty list of SAs")
        self.configs = [sa_config(sa) for sa in items]
        self.miniport = miniport if miniport is not None else Miniport()
        self.stack = HostStack(self.miniport, link="raw")
        self.inbound = [self.stack.add_inbound_sa(c, replay_window=replay_window)
                        for c in self.configs]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Decryptor({len(self.inbound)} SAs)"

    def decrypt(self, packets: Iterable[PacketLike]) -> PacketResults:
        """See ``ipsecoffload.decrypt``."""
        items = _packet_list(packets)
        n = len(items)
        segments: List[Tuple[bytes, ...]] = [()] * n
        status = ["MALFORMED"] * n
        errors: List[Optional[str]] = [None] * n
        good: Sequence[int]
        datas: List[bytes]
        if set(map(type, items)) <= {bytes}:
            good, datas = range(n), items
        else:
            good, datas = [], []
            for i, item in enumerate(items):
                data, error = _as_bytes(item)
                if data is None:
                    errors[i] = error
                else:
                    good.append(i)
                    datas.append(data)
        if datas:
            with self._lock:
                got = self.stack.receive(datas)
            if isinstance(good, range) and bool((got.delivery == Delivery.DECAP).all()):
                # every packet opened: the results by slices, no step per packet
                segments[:] = list(zip(got.packets()))  # (packet,) each
                status[:] = [_DELIVERY_STATUS[Delivery.DECAP]] * n
                return PacketResults(segments, status, errors)
            deliveries = got.delivery.tolist()
            crypto = got.nic.crypto_status.tolist()
            for k, index in enumerate(good):
                code = Delivery(deliveries[k])
                if code == Delivery.CRYPTO:
                    name = CryptoStatus(crypto[k]).name
                    status[index] = name
                    errors[index] = f"the NIC reported CryptoStatus {name}"
                    continue
                name = _DELIVERY_STATUS[code]
                status[index] = name
                if code in (Delivery.CLEAR, Delivery.DECAP):
                    segments[index] = (got.packet(k),)
                else:
                    errors[index] = _DELIVERY_WHY[name]
        return PacketResults(segments, status, errors)


_decryptors: dict = {}


def decryptor(sa_or_sas: Union[SaLike, Sequence[SaLike]], *,
              replay_window: int = DEFAULT_REPLAY_WINDOW) -> Decryptor:
    """The ``Decryptor`` that ``decrypt`` uses for these SAs and window (made on first use):
    equal SAs (``name`` aside) get the same one, so their windows continue."""
    items: Sequence[Any] = [sa_or_sas] if isinstance(sa_or_sas, (SaConfig, SaPolicy, Mapping)) \
        else sa_or_sas
    if not isinstance(items, Sequence) or not items:
        raise TypeError("sa_or_sas must be an SA or a non-empty list of SAs")
    key = (tuple(_state_of(sa) for sa in items), replay_window)
    with _encryptors_lock:
        found = _decryptors.get(key)
        if found is None:
            found = _decryptors[key] = Decryptor(list(items), replay_window=replay_window)
        return found


def decrypt(packets: Iterable[PacketLike], sa_or_sas: Union[SaLike, Sequence[SaLike]], *,
            replay_window: int = DEFAULT_REPLAY_WINDOW) -> PacketResults:
    """Verify, decrypt and decapsulate received IPsec packets; one entry per input.

    ``packets``: raw IPv4/IPv6 packets (bytes-like or scapy). ``sa_or_sas``: one SA or a list
    (``SaConfig`` or SA-file dicts, as ``encrypt`` takes them), the SAs that encrypted them;
    a packet's SA is found by its SPI (a tunnel SA also by its endpoints). Each entry is the
    decapsulated packet (transport: the original IP packet; tunnel: the inner one) with
    ``.status`` ``"SUCCESS"``; a non-IPsec packet comes back unchanged as ``"CLEAR"``; a
    failure is ``b""`` with a CryptoStatus name (``"TRANSPORT_ESP_AUTH_FAILED"``, ...),
    ``"NO_SA"``, ``"REPLAYED"``, ``"MALFORMED"``, ... Never raises for a bad packet.
    Successive calls with equal SAs continue their anti-replay windows.
    """
    return decryptor(sa_or_sas, replay_window=replay_window).decrypt(packets)


def forget_decryptors() -> None:
    """Drop the windows ``decrypt`` keeps: the next call starts every SA's window again."""
    with _encryptors_lock:
        _decryptors.clear()


# -- captures --------------------------------------------------------------------------------
SasLike = Union[str, "os.PathLike[str]", SaLike, Sequence[SaLike]]


def sa_policies(sas: SasLike) -> List[SaPolicy]:
    """SA policies from an SA-file path, a list of SA-file objects / SaPolicy / SaConfig, or
    one of them. An SaConfig gets an empty selector (it matches every packet)."""
    if isinstance(sas, (str, os.PathLike)):
        return load_sa_file(sas)
    items: Sequence[Any] = [sas] if isinstance(sas, (SaConfig, SaPolicy, Mapping)) else sas
    if not isinstance(items, Sequence) or not items:
        raise TypeError("sas must be an SA-file path, an SA or a non-empty list of SAs")
    if all(isinstance(s, Mapping) for s in items):
        return parse_sa_list([dict(s) for s in items], "sas")
    policies = []
    for index, sa in enumerate(items):
        if isinstance(sa, SaPolicy):
            policies.append(sa)
        elif isinstance(sa, SaConfig):
            policies.append(SaPolicy(sa.name or f"sa{index}", Selector(), sa))
        elif isinstance(sa, Mapping):
            policies.append(parse_sa_list([dict(sa)], f"sas[{index}]")[0])
        else:
            raise TypeError(f"sas[{index}] must be an SaConfig, an SaPolicy or a dict in the "
                            f"SA-file format, got {type(sa).__name__}")
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise SaFileError(f"sas: SA names must differ, got {names}")
    return policies


def encrypt_pcap(input: Union[str, "os.PathLike[str]"], output: Union[str, "os.PathLike[str]"],
                 sas: SasLike, *, mss: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH) -> EncryptSummary:
    """Plaintext capture to IPsec capture, as ``ipsecoffload encrypt`` does it: the first SA
    whose selector matches a packet protects it, unmatched packets pass in clear, malformed
    ones are counted and dropped; the link type and MAC addresses are kept. Returns the
    summary (``.as_dict()`` is the command's ``--json`` object).

    ``sas``: an SA-file path, or SAs as ``sa_policies`` takes them. Like the command line,
    each call starts every SA at its ``seq`` (it does not share ``encrypt``'s state): do not
    encrypt two captures with one AES-GCM SA and the same ``seq``.
    Raises ``PcapError`` / ``SaFileError`` (both ``IpsecOffloadError``, errors.py) or
    ``OSError``.
    """
    _check_mss(mss)
    _check_batch_size(batch_size)
    return encrypt_capture(input, output, sa_policies(sas), mss=mss, batch_size=batch_size)


def decrypt_pcap(input: Union[str, "os.PathLike[str]"], output: Union[str, "os.PathLike[str]"],
                 sas: SasLike, *, replay_window: int = DEFAULT_REPLAY_WINDOW,
                 keep_failed: bool = False, batch_size: int = DEFAULT_BATCH) -> DecryptSummary:
    """IPsec capture to plaintext, as ``ipsecoffload decrypt`` does it (README, "Receive"):
    returns the summary (``.as_dict()`` is the command's ``--json`` object)."""
    _check_batch_size(batch_size)
    if not isinstance(keep_failed, bool):
        raise ValueError(f"keep_failed must be True or False, got {type(keep_failed).__name__}")
    return decrypt_capture(input, output, sa_policies(sas), replay_window=replay_window,
                           keep_failed=keep_failed, batch_size=batch_size)
